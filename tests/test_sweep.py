"""seed_sweep: statistics against numpy/scipy, failures, map-like executors, table and CSV, bad input."""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch

from lightning_regkit.sweep import MetricSummary, SeedResult, SweepResult, seed_sweep, student_t_ppf

# scipy >= 1.13 computes t.ppf with Boost (agrees with ours to ~1e-12); older scipy (cdflib, e.g. 1.10,
# the dev extra's lower bound) only to ~1e-9 relative, so with it the scipy comparisons allow 1e-8.
_SCIPY_MAJOR_MINOR = tuple(int(x) for x in scipy.__version__.split(".")[:2])
SCIPY_TOL = 1e-10 if _SCIPY_MAJOR_MINOR >= (1, 13) else 1e-8
CI_TOL = 1e-12 if _SCIPY_MAJOR_MINOR >= (1, 13) else 1e-8

KNOWN = {0: 0.81, 1: 0.84, 2: 0.79, 3: 0.90, 4: 0.86}


def known_metrics(seed: int) -> dict[str, Any]:
    """Module level so process pools can pickle it."""
    return {"acc": KNOWN[seed], "loss": torch.tensor(1.0 - KNOWN[seed]), "seed_sq": seed**2}


def fails_on_two(seed: int) -> dict[str, float]:
    if seed == 2:
        raise RuntimeError("diverged at step 7")
    return {"acc": KNOWN[seed]}


@pytest.mark.parametrize("confidence", [0.95, 0.9, 0.99])
def test_statistics_match_numpy_and_scipy(confidence: float) -> None:
    result = seed_sweep(known_metrics, seeds=list(KNOWN), confidence=confidence)
    values = np.array(list(KNOWN.values()))
    acc = result.summary["acc"]
    assert acc.n == 5
    assert acc.mean == pytest.approx(values.mean(), abs=1e-15)
    assert acc.std == pytest.approx(values.std(ddof=1), abs=1e-15)
    assert (acc.min, acc.max) == (0.79, 0.90)
    low, high = scipy.stats.t.interval(
        confidence, len(values) - 1, loc=values.mean(), scale=scipy.stats.sem(values)
    )
    assert acc.ci_low == pytest.approx(low, abs=CI_TOL)
    assert acc.ci_high == pytest.approx(high, abs=CI_TOL)
    # tensors are accepted as metric values; integers too
    assert result.summary["loss"].mean == pytest.approx(
        float(np.mean(1.0 - values.astype(np.float32))), abs=1e-7
    )
    assert result.summary["seed_sq"].std == pytest.approx(np.std([0, 1, 4, 9, 16], ddof=1), abs=1e-12)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29, 100, 1000])
@pytest.mark.parametrize("q", [0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.025])
def test_student_t_ppf_matches_scipy(q: float, df: int) -> None:
    assert student_t_ppf(q, df) == pytest.approx(scipy.stats.t.ppf(q, df), rel=SCIPY_TOL, abs=SCIPY_TOL)


@pytest.mark.parametrize("q", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_student_t_ppf_matches_closed_forms(q: float) -> None:
    """df = 1 (Cauchy) and df = 2 have closed-form quantiles: exact to float precision."""
    assert student_t_ppf(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-13)
    assert student_t_ppf(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-13)


def test_single_seed_has_nan_spread() -> None:
    s = seed_sweep(known_metrics, seeds=[3]).summary["acc"]
    assert (s.n, s.mean, s.min, s.max) == (1, 0.9, 0.9, 0.9)
    assert math.isnan(s.std)
    assert math.isnan(s.ci_low)
    assert math.isnan(s.ci_high)


def test_failing_seed_is_reported_and_others_kept() -> None:
    result = seed_sweep(fails_on_two, seeds=[0, 1, 2, 3])
    assert result.seeds == [0, 1, 2, 3]
    assert [f.seed for f in result.failures] == [2]
    failure = result.failures[0]
    assert failure.error == "RuntimeError: diverged at step 7"
    assert failure.traceback is not None
    assert "fails_on_two" in failure.traceback
    assert result.summary["acc"].n == 3
    assert result.summary["acc"].mean == pytest.approx(np.mean([0.81, 0.84, 0.90]), abs=1e-15)
    assert "RuntimeError: diverged at step 7" in result.table()


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        (0.5, "must return a dict of metrics, got float"),
        ({"acc": "high"}, "metric 'acc' must be a real number"),
    ],
)
def test_bad_train_fn_output_is_a_failure(returned: Any, match: str) -> None:
    result = seed_sweep(lambda seed: returned, seeds=[0, 1])
    assert len(result.failures) == 2
    assert all(match in (f.error or "") for f in result.failures)


@pytest.mark.parametrize("executor", ["pool", "process", "thread"])
def test_map_like_executors(executor: str) -> None:
    expected = seed_sweep(known_metrics, seeds=[4, 0, 2])
    if executor == "pool":
        with multiprocessing.get_context("fork").Pool(2) as pool:
            result = seed_sweep(known_metrics, seeds=[4, 0, 2], map=pool.map)
    else:
        cls = ProcessPoolExecutor if executor == "process" else ThreadPoolExecutor
        with cls(2) as ex:
            result = seed_sweep(fails_on_two, seeds=[4, 0, 2], map=ex.map)
            expected = seed_sweep(fails_on_two, seeds=[4, 0, 2])
    assert result.seeds == [4, 0, 2]  # in the order given
    assert [r.metrics for r in result.results] == [r.metrics for r in expected.results]
    assert [r.error for r in result.results] == [r.error for r in expected.results]


def test_table_and_csv(tmp_path: Path) -> None:
    result = seed_sweep(fails_on_two, seeds=[0, 1, 2, 3])
    lines = str(result).splitlines()
    assert lines[0].split() == ["seed", "acc", "error"]
    assert lines[1].startswith("----")
    assert lines[2].split() == ["0", "0.81"]
    assert [line.split()[0] for line in lines[-6:]] == ["mean", "std", "min", "max", "ci95_low", "ci95_high"]
    text = result.to_csv(tmp_path / "sweep.csv")
    assert (tmp_path / "sweep.csv").read_text() == text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["seed", "acc", "error"]
    assert rows[3] == ["2", "", "RuntimeError: diverged at step 7"]
    by_label = {r[0]: r for r in rows}
    s = result.summary["acc"]
    assert float(by_label["mean"][1]) == s.mean  # full precision in the CSV
    assert float(by_label["ci95_high"][1]) == s.ci_high
    assert float(by_label["3"][1]) == 0.90


def test_metric_summary_of_matches_doc() -> None:
    s = MetricSummary.of("x", [1.0, 2.0, 3.0], confidence=0.95)
    half = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)  # t_{0.975, 2}: closed form
    assert s.ci_low == pytest.approx(2.0 - half, abs=1e-12)
    assert SweepResult([SeedResult(0, {"x": 1.0})]).metric_names == ["x"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seeds": []}, ValueError, r"seeds must not be empty"),
        ({"seeds": [1, 1, 2]}, ValueError, r"seeds must be distinct, got duplicates \[1\]"),
        ({"seeds": [-1]}, ValueError, r"seeds must be in \[0, 2\*\*32 - 1\], got -1"),
        ({"seeds": [2**32]}, ValueError, r"seeds must be in \[0, 2\*\*32 - 1\], got 4294967296"),
        ({"seeds": [1.5]}, TypeError, r"seeds must be ints, got 1.5"),
        ({"seeds": [True]}, TypeError, r"seeds must be ints, got True"),
        ({"seeds": "012"}, TypeError, r"seeds must be an iterable of ints, got str"),
        ({"seeds": 3}, TypeError, r"seeds must be an iterable of ints, got int"),
        ({"train_fn": "train"}, TypeError, r"train_fn must be callable, got str"),
        ({"map": 4}, TypeError, r"map must be a map-like callable or None, got int"),
        ({"confidence": 1.0}, ValueError, r"confidence must be in \(0, 1\), got 1.0"),
        ({"confidence": 0}, ValueError, r"confidence must be in \(0, 1\), got 0"),
    ],
)
def test_bad_inputs(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    args: dict[str, Any] = {"train_fn": known_metrics, "seeds": [0, 1]}
    args.update(kwargs)
    with pytest.raises(error, match="seed_sweep: " + match):
        seed_sweep(**args)


def test_map_returning_wrong_shape_raises() -> None:
    with pytest.raises(TypeError, match="map must return one result per seed"):
        seed_sweep(known_metrics, seeds=[0, 1], map=lambda fn, seeds: [fn(seeds[0])])


@pytest.mark.parametrize(("q", "df"), [(0.0, 3), (1.0, 3), (0.5, 0)])
def test_student_t_ppf_bad_input(q: float, df: float) -> None:
    with pytest.raises(ValueError, match="student_t_ppf: "):
        student_t_ppf(q, df)


def test_readme_quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README snippet, verbatim (LitClassifier / SyntheticDataModule stand in for the user's own)."""
    from conftest import LitClassifier, SyntheticDataModule

    monkeypatch.chdir(tmp_path)
    # --- README snippet start
    import lightning.pytorch as pl

    from lightning_regkit.callbacks.seed import SeedEverything
    from lightning_regkit.sweep import seed_sweep

    def train(seed: int) -> dict[str, float]:
        seeder = SeedEverything(seed)  # seed=None draws, logs and records a fresh seed
        seeder.seed_now()  # seed before building the model, so the initial weights repeat too
        model, data = LitClassifier(), SyntheticDataModule()
        trainer = pl.Trainer(max_epochs=2, callbacks=[seeder], enable_progress_bar=False)
        trainer.fit(model, data)  # every checkpoint now holds the RNG states: resume is bit-identical
        return {"val_acc": trainer.callback_metrics["val_acc"].item()}

    result = seed_sweep(train, seeds=[0, 1, 2])  # map=pool.map runs the seeds in parallel
    print(result)  # per-seed rows, then mean, std, min, max and the 95% confidence interval
    result.to_csv("seeds.csv")
    # --- README snippet end
    assert not result.failures
    assert result.summary["val_acc"].n == 3
    assert (tmp_path / "seeds.csv").read_text().startswith("seed,val_acc\n")
    assert train(1) == result.results[1].metrics  # same seed, same result
