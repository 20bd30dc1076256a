"""variance_by_source and its table: chi-square interval of a std against scipy, spreads against numpy."""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats

from lightning_regkit.sources import SOURCES, SourceSeeds
from lightning_regkit.sweep import SeedResult, SweepResult
from lightning_regkit.variance import (
    SpreadSummary,
    VarianceBySource,
    chi2_ppf,
    std_interval,
    variance_by_source,
)


def scipy_interval(values: list[float], confidence: float) -> tuple[float, float, float]:
    """std (ddof=1) and its chi-square interval, computed with numpy and scipy."""
    v = np.asarray(values, dtype=np.float64)
    s, df = float(v.std(ddof=1)), len(v) - 1
    low = s * math.sqrt(df / scipy.stats.chi2.ppf(0.5 + confidence / 2, df))
    high = s * math.sqrt(df / scipy.stats.chi2.ppf(0.5 - confidence / 2, df))
    return s, low, high


# ----------------------------------------------------------------------------- chi-square
@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7, 9, 19, 29, 99, 1000, 2.5])
@pytest.mark.parametrize("q", [1e-6, 0.005, 0.025, 0.05, 0.5, 0.95, 0.975, 0.995, 1 - 1e-6])
def test_chi2_ppf_matches_scipy(q: float, df: float) -> None:
    assert chi2_ppf(q, df) == pytest.approx(scipy.stats.chi2.ppf(q, df), rel=1e-9)


def test_chi2_ppf_closed_forms() -> None:
    # df = 2: exponential with mean 2, ppf = -2 ln(1 - q)
    for q in (0.01, 0.3, 0.9, 0.999):
        assert chi2_ppf(q, 2) == pytest.approx(-2 * math.log1p(-q), rel=1e-12)


@pytest.mark.parametrize(("q", "df"), [(0.0, 3), (1.0, 3), (0.5, 0), (0.5, -1), (True, 3), ("0.5", 3)])
def test_chi2_ppf_bad_input(q: Any, df: Any) -> None:
    with pytest.raises(ValueError, match=r"chi2_ppf: (q|df) must be"):
        chi2_ppf(q, df)


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize(
    "values",
    [[0.91, 0.93, 0.9, 0.94], [1.0, 2.0], [0.5, 0.52, 0.49, 0.51, 0.5, 0.47, 0.53, 0.5, 0.52, 0.48]],
)
def test_std_interval_matches_scipy(values: list[float], confidence: float) -> None:
    s, low, high = scipy_interval(values, confidence)
    got = std_interval(s, len(values), confidence)
    assert got == pytest.approx((low, high), rel=1e-10)
    assert got[0] < s < got[1]


def test_std_interval_edge_cases() -> None:
    assert std_interval(0.0, 5) == (0.0, 0.0)  # no spread at all: the interval collapses
    assert all(math.isnan(x) for x in std_interval(0.3, 1))
    assert all(math.isnan(x) for x in std_interval(math.nan, 4))
    for kwargs, match in (
        ({"std": -1.0, "n": 3}, "std must be a number >= 0"),
        ({"std": 1.0, "n": 0}, "n must be an int >= 1"),
        ({"std": 1.0, "n": 3, "confidence": 1.0}, r"confidence must be in \(0, 1\)"),
    ):
        with pytest.raises(ValueError, match=f"std_interval: {match}"):
            std_interval(**kwargs)


# ----------------------------------------------------------------------------- the table
KNOWN = {  # label -> per-seed values of two metrics
    "init": {"acc": [0.91, 0.92, 0.92, 0.93, 0.91], "loss": [0.31, 0.3, 0.29, 0.3, 0.32]},
    "data": {"acc": [0.88, 0.95, 0.9, 0.93, 0.91], "loss": [0.4, 0.25, 0.33, 0.28, 0.31]},
    "train": {"acc": [0.92, 0.92, 0.92, 0.92, 0.92], "loss": [0.3, 0.3, 0.3, 0.3, 0.3]},
    "all": {"acc": [0.87, 0.95, 0.91, 0.94, 0.9], "loss": [0.42, 0.24, 0.33, 0.26, 0.35]},
}


def sweep_of(values: dict[str, list[float]], failed: tuple[int, ...] = ()) -> SweepResult:
    n = len(next(iter(values.values())))
    results = [
        SeedResult(i, error="RuntimeError: x")
        if i in failed
        else SeedResult(i, {m: v[i] for m, v in values.items()})
        for i in range(n)
    ]
    return SweepResult(results)


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_table_values_match_numpy_and_scipy(confidence: float) -> None:
    table = VarianceBySource({label: sweep_of(v) for label, v in KNOWN.items()}, confidence)
    assert table.labels == ["init", "data", "train", "all"] and table.metric_names == ["acc", "loss"]
    rows = table.rows(precise=True)
    pct = round(confidence * 100)
    assert rows[0] == ["metric", "varied", "n", "mean", "std", f"std ci{pct} low", f"std ci{pct} high"]
    body = {(r[0], r[1]): r[2:] for r in rows[1:]}
    assert list(body) == [(m, label) for m in ("acc", "loss") for label in KNOWN]
    for (metric, label), cells in body.items():
        values = KNOWN[label][metric]
        s, low, high = scipy_interval(values, confidence)
        assert int(cells[0]) == 5
        assert float(cells[1]) == pytest.approx(np.mean(values), rel=1e-14)
        if s == 0.0:  # "train" varies nothing here
            assert [float(c) for c in cells[2:]] == [0.0, 0.0, 0.0]
        else:
            assert float(cells[2]) == pytest.approx(s, rel=1e-12)
            assert [float(c) for c in cells[3:]] == pytest.approx([low, high], rel=1e-10)
    spread = table.spread("acc", "data")
    assert isinstance(spread, SpreadSummary) and (spread.metric, spread.varied, spread.failed) == (
        "acc",
        "data",
        0,
    )
    # the per-source variances are reported as they are: here they do not add up to the total
    total = sum(table.spread("acc", s).std ** 2 for s in SOURCES)  # type: ignore[union-attr]
    assert total != pytest.approx(table.spread("acc", "all").std ** 2)  # type: ignore[union-attr]


def test_failed_seeds_are_left_out_and_counted() -> None:
    table = VarianceBySource({"data": sweep_of(KNOWN["data"], failed=(1,)), "all": sweep_of(KNOWN["all"])})
    spread = table.spread("acc", "data")
    assert spread is not None and (spread.n, spread.failed) == (4, 1)
    kept = [v for i, v in enumerate(KNOWN["data"]["acc"]) if i != 1]
    assert spread.std == pytest.approx(np.std(kept, ddof=1), rel=1e-12)
    assert table.rows()[0][-1] == "failed" and [r[-1] for r in table.rows()[1:]] == ["1", "0", "1", "0"]
    csv_rows = [line.split(",") for line in table.to_csv().splitlines()]
    assert csv_rows[1][:3] == ["acc", "data", "4"] and float(csv_rows[1][4]) == spread.std


def test_markdown_and_text_tables() -> None:
    table = VarianceBySource({label: sweep_of(v) for label, v in KNOWN.items()})
    md = table.markdown(3).splitlines()
    assert md[0] == "| varied | n | std of acc (95% CI) | std of loss (95% CI) |"
    s, low, high = scipy_interval(KNOWN["data"]["acc"], 0.95)
    assert md[3].startswith(f"| data | 5 | {s:.3f} [{low:.3f}, {high:.3f}] |")
    text = str(table).splitlines()
    assert text[0].split() == [
        "metric",
        "varied",
        "n",
        "mean",
        "std",
        "std",
        "ci95",
        "low",
        "std",
        "ci95",
        "high",
    ]
    assert len(text) == 2 + 8


def test_plot_draws_one_bar_per_sweep_and_metric(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = VarianceBySource({label: sweep_of(v) for label, v in KNOWN.items()})
    ax = table.plot(["acc", "loss"], labels=["accuracy", "loss"])
    heights = [p.get_height() for p in ax.patches]
    expected = [float(np.std(KNOWN[label][m], ddof=1)) for m in ("acc", "loss") for label in KNOWN]
    assert heights == pytest.approx(expected, rel=1e-12)
    ax.figure.savefig(tmp_path / "v.png")
    plt.close(ax.figure)
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="labels must name each metric"):
        table.plot(["acc"], labels=["a", "b"])


@pytest.mark.parametrize(
    ("sweeps", "error", "match"),
    [
        ({}, ValueError, "sweeps must be a non-empty mapping"),
        ({"init": [1, 2]}, TypeError, "sweeps must map labels"),
        ({3: sweep_of(KNOWN["init"])}, TypeError, "sweeps must map labels"),
    ],
)
def test_bad_tables(sweeps: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=f"VarianceBySource: {match}"):
        VarianceBySource(sweeps)


def test_spread_of_unknown_names() -> None:
    table = VarianceBySource({"init": sweep_of(KNOWN["init"])})
    with pytest.raises(KeyError, match="no sweep 'data'"):
        table.spread("acc", "data")
    with pytest.raises(KeyError, match="no metric 'f1'"):
        table.spread("f1", "init")


# ----------------------------------------------------------------------------- the sweeps
def toy(seeds: SourceSeeds) -> dict[str, float]:
    """A toy run (module level: process pools): init moves it a lot, data a little, train not at all."""
    return {"acc": 0.9 + (seeds.init % 101) / 1e3 + (seeds.data % 7) / 1e4, "noise": float(seeds.train % 5)}


def toy_with_marker(marker: str, seeds: SourceSeeds) -> dict[str, float]:
    with open(marker, "a") as f:
        f.write(f"{seeds.vary} {seeds.sweep_seed}\n")
    return toy(seeds)


@pytest.mark.parametrize("parallel", [False, True])
def test_variance_by_source_runs_one_sweep_per_source(parallel: bool) -> None:
    seeds = [3, 1, 4, 15, 9]
    if parallel:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
            table = variance_by_source(toy, seeds, map=ex)
    else:
        table = variance_by_source(toy, seeds)
    assert table.labels == ["init", "data", "train", "all"]
    for label in table.labels:
        vary = "all" if label == "all" else label
        sweep = table.sweeps[label]
        assert sweep.vary == (SOURCES if label == "all" else (label,)) and sweep.seeds == seeds
        expected = [toy(SourceSeeds.for_sweep(s, vary)) for s in seeds]
        assert [r.metrics for r in sweep.results] == expected
        for metric in ("acc", "noise"):
            values = [e[metric] for e in expected]
            spread = table.spread(metric, label)
            assert spread is not None and spread.std == pytest.approx(
                np.std(values, ddof=1), rel=1e-12, abs=1e-15
            )
    assert table.spread("acc", "train").std == 0.0  # type: ignore[union-attr]
    assert table.spread("noise", "init").std == table.spread("noise", "data").std == 0.0  # type: ignore[union-attr]


def test_variance_by_source_tuples_results_folder_and_resume(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    train = functools.partial(toy_with_marker, str(marker))
    folder = tmp_path / "sweeps"
    first = variance_by_source(train, [1, 2], [("data", "train"), "init"], include_all=False, results=folder)
    assert first.labels == ["data+train", "init"]
    assert sorted(p.name for p in folder.iterdir()) == ["vary-data+train.jsonl", "vary-init.jsonl"]
    record = json.loads((folder / "vary-init.jsonl").read_text().splitlines()[0])
    assert record["sources"] == SourceSeeds.for_sweep(1, "init").as_dict()
    assert len(marker.read_text().splitlines()) == 4
    again = variance_by_source(
        train, [1, 2, 3], [("data", "train"), "init"], include_all=False, results=folder
    )
    assert len(marker.read_text().splitlines()) == 6  # only seed 3 of each sweep ran
    assert (
        again.rows()[1:3]
        == variance_by_source(toy, [1, 2, 3], [("data", "train"), "init"], include_all=False).rows()[1:3]
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sources": ["init", "weights"]}, ValueError, "variance_by_source: vary must be one of"),
        ({"sources": ["data", ("data",)]}, ValueError, r"sources must differ, got \['data', 'data', 'all'\]"),
        ({"sources": [], "include_all": False}, ValueError, "sources must not be empty"),
        ({"include_all": 1}, TypeError, "include_all must be a bool"),
        ({"seeds": [1, 1]}, ValueError, "seeds must be distinct"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    kwargs.setdefault("seeds", [1, 2])
    with pytest.raises(error, match=match):
        variance_by_source(toy, **kwargs)


def test_results_must_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "f.jsonl").write_text("")
    with pytest.raises(ValueError, match="results must be a folder"):
        variance_by_source(toy, [1, 2], results=tmp_path / "f.jsonl")
