"""seed_sweep: statistics against numpy/scipy, failures, map-like executors, table and CSV, bad input."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import scipy.stats
import torch

from lightning_regkit.sources import SOURCES, SourceSeeds, source_seed
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
        ({"map": 4}, TypeError, r"map must be None, a map-like callable, .* got int 4"),
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
    from helpers import LitClassifier, SyntheticDataModule

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


# ----------------------------------------------------------------------------- issue 14: lose nothing
# A sweep keeps every finished seed's result whatever happens to the others: each record is appended to the
# results file (JSON lines or CSV) as it arrives, a resume runs only the seeds missing from it, sys.exit in
# train_fn fails that seed only, a dead worker never hangs the sweep, and a non-finite metric is a failure.
SEEDS = list(range(6))


def ran(marker: Path) -> list[int]:
    """The seeds ``train_fn`` was called with, in call order (``train_with_marker`` appends them)."""
    return [int(line) for line in marker.read_text().split()] if marker.exists() else []


def saved_seeds(path: Path) -> list[int]:
    """The seeds recorded in a results file, read without the kit (JSON lines or CSV)."""
    if not path.exists():
        return []
    text = path.read_text()
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        return [int(r[0]) for r in rows[1:] if r]
    return [json.loads(line)["seed"] for line in text.splitlines() if line.endswith("}")]


def train_with_marker(marker: str, seed: int) -> dict[str, float]:
    with open(marker, "a") as f:
        f.write(f"{seed}\n")
    return {"acc": seed / 10, "loss": 1 - seed / 10}


def exits_on_two(seed: int) -> dict[str, float]:
    if seed == 2:
        sys.exit(3)
    return {"acc": KNOWN[seed]}


def returns_value_on_two(value: Any, seed: int) -> dict[str, Any]:
    return {"acc": KNOWN[seed], "loss": value if seed == 2 else 1.0 - KNOWN[seed]}


def count_saved_then_train(results: str, seed: int) -> dict[str, float]:
    """Seed ``i`` (of 0, 1, 2, ...) on one worker waits until the ``i`` seeds before it are saved."""
    deadline = time.monotonic() + 10
    while len(saved_seeds(Path(results))) < seed and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"saved_before": float(len(saved_seeds(Path(results))))}


def victim_train(marker: str, results: str, victim: int | None, seed: int) -> dict[str, float]:
    """The ``victim`` seed waits until two other seeds are saved, writes its pid and waits to be SIGKILLed."""
    with open(marker, "a") as f:
        f.write(f"{seed}\n")
    if seed == victim:
        deadline = time.monotonic() + 20
        while len(saved_seeds(Path(results))) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        Path(results + ".victim").write_text(str(os.getpid()))
        time.sleep(30)  # the test's killer thread SIGKILLs this worker long before
    else:
        time.sleep(0.2)
    return {"acc": seed / 10}


def _kill_victim_when_ready(pid_file: Path) -> None:
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)


@contextlib.contextmanager
def parallel(kind: str, workers: int = 2) -> Iterator[Any]:
    """The ``map=`` argument for ``kind``: fork-context pools (the tests' own functions need no re-import)."""
    ctx = multiprocessing.get_context("fork")
    if kind == "sequential":
        yield None
    elif kind in ("executor", "executor.map"):
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            yield ex if kind == "executor" else ex.map
    elif kind in ("pool", "pool.map", "pool.imap_unordered"):
        with ctx.Pool(workers) as pool:
            yield pool if kind == "pool" else getattr(pool, kind.split(".")[1])
    elif kind in ("thread", "thread.map"):
        with ThreadPoolExecutor(workers) as tex:
            yield tex if kind == "thread" else tex.map
    elif kind == "threadpool":
        with multiprocessing.pool.ThreadPool(workers) as tpool:
            yield tpool
    elif kind == "generic":  # an imap_unordered-style callable whose pool seed_sweep cannot see
        with ctx.Pool(workers) as gpool:
            yield lambda fn, seeds: gpool.imap_unordered(fn, seeds)
    else:
        raise AssertionError(kind)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kind",
    ["sequential", "thread.map", "threadpool", "executor.map", "pool.map", "pool", "executor", "generic"],
)
def test_sys_exit_fails_that_seed_only(kind: str, tmp_path: Path) -> None:
    """Before: SystemExit escaped seed_sweep (sequential, executors) or hung Pool.map (the worker exited)."""
    with parallel(kind) as mapper:
        result = seed_sweep(exits_on_two, seeds=[0, 1, 2, 3], map=mapper)
    assert [r.seed for r in result.results] == [0, 1, 2, 3]
    assert [f.seed for f in result.failures] == [2]
    assert result.failures[0].error == "SystemExit: 3"
    assert result.summary["acc"].n == 3
    assert result.summary["acc"].mean == math.fsum([0.81, 0.84, 0.90]) / 3


@pytest.mark.parametrize(
    ("value", "shown"),
    [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), (torch.tensor(math.nan), "nan")],
)
def test_non_finite_metric_is_a_failure(value: Any, shown: str) -> None:
    """Before: a NaN loss counted as a success: mean NaN, min/max dependent on the seed order."""
    result = seed_sweep(functools.partial(returns_value_on_two, value), seeds=[0, 1, 2, 3])
    assert [f.seed for f in result.failures] == [2]
    assert result.failures[0].error == f"non-finite metric: 'loss' = {shown}"
    assert result.summary["loss"].n == 3
    assert result.summary["loss"].max == pytest.approx(1 - 0.81, abs=1e-15)
    assert math.isfinite(result.summary["loss"].mean)
    assert result.summary["acc"].n == 3  # the seed's finite metrics do not count either: the run failed


def test_summary_is_independent_of_seed_order() -> None:
    """Every permutation of the seeds (one of them NaN) gives the same summary, exactly.

    Before: the NaN counted, and ``min``/``max`` depended on where it stood (``min([nan, 1.0]) is nan``).
    """
    train = functools.partial(returns_value_on_two, math.nan)
    finite = [1.0 - KNOWN[s] for s in (0, 1, 3, 4)]
    loss_min_max = set()
    summaries = set()
    for p in itertools.permutations(list(KNOWN)):
        summary = seed_sweep(train, seeds=list(p)).summary
        loss_min_max.add((summary["loss"].min, summary["loss"].max))
        summaries.add(tuple(sorted(summary.items())))  # MetricSummary is frozen: hashable, exact equality
    assert loss_min_max == {(min(finite), max(finite))}
    assert len(summaries) == 1
    (loss,) = (s for name, s in next(iter(summaries)) if name == "loss")
    assert loss.n == 4
    assert loss.mean == pytest.approx(np.mean(finite), abs=1e-15)
    assert loss.std == pytest.approx(np.std(finite, ddof=1), abs=1e-15)


def test_metric_summary_rejects_non_finite_values() -> None:
    with pytest.raises(
        ValueError, match=r"MetricSummary: values of 'acc' must be finite, got nan at index 1"
    ):
        MetricSummary.of("acc", [1.0, math.nan])


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["executor", "pool.map", "pool"])
def test_sigkill_of_a_pool_worker_then_resume_runs_only_missing_seeds(kind: str, tmp_path: Path) -> None:
    """A real pool worker is SIGKILLed mid-sweep; the sweep returns (no hang) with every finished seed saved,
    and a resume from the results file runs exactly the seeds that are missing from it."""
    results, marker = tmp_path / "sweep.jsonl", tmp_path / "ran.txt"
    killer = threading.Thread(target=_kill_victim_when_ready, args=(Path(f"{results}.victim"),))
    killer.start()
    start = time.monotonic()
    with parallel(kind) as mapper:
        first = seed_sweep(
            functools.partial(victim_train, str(marker), str(results), 2), SEEDS, map=mapper, results=results
        )
    killer.join()
    assert time.monotonic() - start < 30  # the victim would have slept 30 s: it was killed, not waited for
    finished = [r.seed for r in first.results if r.ok]
    assert sorted(saved_seeds(results)) == finished  # every finished seed is on disk, nothing else
    assert len(finished) >= 2 and 2 not in finished
    lost = [f.seed for f in first.failures]
    assert sorted(finished + lost) == SEEDS
    assert all((f.error or "").startswith("not finished: ") for f in first.failures)
    if kind != "executor":  # multiprocessing.Pool replaces the dead worker: only its seed is lost
        assert lost == [2]
        assert "worker process" in (first.failures[0].error or "")
    else:  # a dead worker breaks a ProcessPoolExecutor: the seeds not yet finished are all lost
        assert "BrokenProcessPool" in (first.failures[0].error or "")
    assert set(ran(marker)) >= {*finished, 2}  # the killed seed had started

    marker.unlink()
    with parallel(kind) as mapper:
        second = seed_sweep(
            functools.partial(victim_train, str(marker), str(results), None),
            SEEDS,
            map=mapper,
            results=results,
        )
    assert sorted(ran(marker)) == lost  # only the missing seeds ran
    assert not second.failures
    assert sorted(saved_seeds(results)) == SEEDS
    assert [r.metrics for r in second.results] == [{"acc": s / 10} for s in SEEDS]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kind", ["sequential", "executor", "pool.map", "pool.imap_unordered", "thread", "threadpool", "generic"]
)
def test_each_result_is_saved_as_it_arrives(kind: str, tmp_path: Path) -> None:
    """On one worker, seed i starts only after seeds 0..i-1 finished: each sees them already on disk."""
    results = tmp_path / "sweep.csv"
    with parallel(kind, workers=1) as mapper:
        result = seed_sweep(
            functools.partial(count_saved_then_train, str(results)), [0, 1, 2, 3], map=mapper, results=results
        )
    assert [r.metrics["saved_before"] for r in result.results] == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_runs_only_missing_seeds(suffix: str, tmp_path: Path) -> None:
    results, marker = tmp_path / f"sweep{suffix}", tmp_path / "ran.txt"
    train = functools.partial(train_with_marker, str(marker))
    seed_sweep(train, seeds=[0, 2, 1], results=results)
    assert sorted(saved_seeds(results)) == [0, 1, 2]
    resumed = seed_sweep(train, seeds=[4, 0, 1, 2, 3], results=results)
    assert ran(marker) == [0, 2, 1, 4, 3]  # the second call ran only 4 and 3
    fresh = seed_sweep(train, seeds=[4, 0, 1, 2, 3])
    assert resumed.seeds == [4, 0, 1, 2, 3]
    assert [r.metrics for r in resumed.results] == [r.metrics for r in fresh.results]  # exact round trip
    assert resumed.summary == fresh.summary
    # seeds saved but not asked for stay in the file and are not reported; nothing runs
    only = seed_sweep(train, seeds=[3, 1], results=results)
    assert only.seeds == [3, 1]
    assert len(ran(marker)) == 10
    assert sorted(saved_seeds(results)) == [0, 1, 2, 3, 4]


def fails_first_then_ok(marker: str, seed: int) -> dict[str, float]:
    with open(marker, "a") as f:
        f.write(f"{seed}\n")
    if seed == 0 or (seed == 1 and ran(Path(marker)).count(1) == 1):
        raise RuntimeError(f"seed {seed} failed")
    return {"acc": seed / 10}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_failures_are_saved_and_rerun_only_with_retry_failed(suffix: str, tmp_path: Path) -> None:
    """A failing first seed (no metrics yet: the CSV learns its columns later), then resume and retry."""
    results, marker = tmp_path / f"sweep{suffix}", tmp_path / "ran.txt"
    train = functools.partial(fails_first_then_ok, str(marker))
    first = seed_sweep(train, seeds=[0, 1, 2], results=results)
    assert [f.seed for f in first.failures] == [0, 1]
    again = seed_sweep(train, seeds=[0, 1, 2], results=results)
    assert ran(marker) == [0, 1, 2]  # failures are results too: not re-run
    assert [(r.seed, r.error) for r in again.failures] == [
        (0, "RuntimeError: seed 0 failed"),
        (1, "RuntimeError: seed 1 failed"),
    ]
    retried = seed_sweep(train, seeds=[0, 1, 2], results=results, retry_failed=True)
    assert ran(marker) == [0, 1, 2, 0, 1]
    assert [f.seed for f in retried.failures] == [0]
    assert retried.results[1].metrics == {"acc": 0.1}
    assert seed_sweep(train, seeds=[0, 1, 2], results=results).results[1].ok  # the last record wins
    if suffix == ".csv":
        rows = list(csv.reader(io.StringIO(results.read_text())))
        assert rows[0] == ["seed", "acc", "error"]
        assert [r[0] for r in rows[1:]] == ["0", "1", "2", "0", "1"]


def raises_interrupt_on_two(marker: str, lightning_style: bool, seed: int) -> dict[str, float]:
    if seed != 2:
        return train_with_marker(marker, seed)
    with open(marker, "a") as f:
        f.write(f"{seed}\n")
    if seed == 2:
        if not lightning_style:
            raise KeyboardInterrupt
        try:  # what lightning.pytorch's Trainer does on Ctrl-C: catch it, tear down, sys.exit(1)
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)
    raise AssertionError("unreachable")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kind", "lightning_style"),
    [("sequential", False), ("sequential", True), ("thread", False), ("pool", True)],
)
def test_keyboard_interrupt_stops_the_sweep_and_keeps_what_finished(
    kind: str, lightning_style: bool, tmp_path: Path
) -> None:
    results, marker = tmp_path / "sweep.jsonl", tmp_path / "ran.txt"
    train = functools.partial(raises_interrupt_on_two, str(marker), lightning_style)
    with pytest.raises((KeyboardInterrupt, SystemExit)), parallel(kind, workers=1) as mapper:
        seed_sweep(train, seeds=[0, 1, 2, 3, 4], map=mapper, results=results)
    saved = saved_seeds(results)
    if kind == "sequential":
        assert ran(marker) == [0, 1, 2]  # stopped: the sweep did not go on to the next seeds
        assert saved == [0, 1]
    else:  # the one worker may have finished a seed or two more before the parent saw the interrupt
        assert saved[:2] == [0, 1]
        assert 2 not in saved
    marker.unlink()
    rest = seed_sweep(
        functools.partial(train_with_marker, str(marker)), seeds=[0, 1, 2, 3, 4], results=results
    )
    assert sorted(ran(marker)) == sorted({0, 1, 2, 3, 4} - set(saved))
    assert not rest.failures


def test_lightning_ctrl_c_in_a_real_trainer_stops_the_sweep(tmp_path: Path) -> None:
    """Lightning turns Ctrl-C into sys.exit(1) (and ignores SIGINT): the sweep must stop, not go on."""
    from helpers import LitClassifier, SyntheticDataModule, trainer_kwargs

    class CtrlC(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            raise KeyboardInterrupt

    started: list[int] = []

    def train(seed: int) -> dict[str, float]:
        started.append(seed)
        pl.seed_everything(seed, verbose=False)
        trainer = pl.Trainer(
            **trainer_kwargs(tmp_path, max_epochs=1, callbacks=[CtrlC()] if seed == 1 else [])
        )
        trainer.fit(LitClassifier(), SyntheticDataModule())
        return {"val_acc": trainer.callback_metrics["val_acc"].item()}

    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            seed_sweep(train, seeds=[0, 1, 2], results=tmp_path / "sweep.jsonl")
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning left SIGINT ignored
    assert started == [0, 1]
    assert saved_seeds(tmp_path / "sweep.jsonl") == [0]


def only_loss(seed: int) -> dict[str, float]:
    return {"loss": 0.5}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_results_of_other_settings_are_refused(suffix: str, tmp_path: Path) -> None:
    results = tmp_path / f"sweep{suffix}"
    seed_sweep(known_metrics, seeds=[0, 1], results=results)
    before = results.read_bytes()
    with pytest.raises(
        ValueError,
        match=r"seed_sweep: results file .* holds metrics \['acc', 'loss', 'seed_sq'\]"
        r" but train_fn\(3\) returned \['loss'\]",
    ):
        seed_sweep(only_loss, seeds=[0, 1, 3], results=results)
    assert results.read_bytes() == before


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_torn_last_record_is_dropped_and_rerun(suffix: str, tmp_path: Path) -> None:
    """A crash mid-write leaves a last line without its newline: it is dropped, with a warning."""
    results, marker = tmp_path / f"sweep{suffix}", tmp_path / "ran.txt"
    train = functools.partial(train_with_marker, str(marker))
    seed_sweep(train, seeds=[0, 1], results=results)
    text = results.read_text()
    results.write_text(text + text.splitlines()[-1][:-3])  # seed 1's record again, cut short
    with pytest.warns(UserWarning, match="incomplete last record"):
        resumed = seed_sweep(train, seeds=[0, 1, 2], results=results)
    assert ran(marker) == [0, 1, 2]
    assert not resumed.failures
    assert sorted(saved_seeds(results)) == [0, 1, 2]
    assert results.read_text().startswith(text)


@pytest.mark.parametrize(
    ("suffix", "content", "match"),
    [
        (
            ".jsonl",
            '{"seed": 0, "metrics": {"acc": 1.0}, "error": null}\nnot json\n',
            r"line 2: not a JSON object",
        ),
        (".jsonl", '{"seed": -1, "metrics": {}, "error": null}\n', r"line 1: seed must be an int in"),
        (
            ".jsonl",
            '{"seed": 1, "metrics": {"acc": "high"}, "error": null}\n',
            r"line 1: metric 'acc' must be",
        ),
        (
            ".jsonl",
            '{"seed": 1, "metrics": {"acc": 1.0}}\n{"seed": 2, "metrics": {"f1": 1.0}}\n',
            r"line 2: metrics \['f1'\] differ from \['acc'\]",
        ),
        (
            ".csv",
            "seed,acc,error\n0,0.5,\nmean,0.5,\n",
            r"line 3: seed must be an int in .*SweepResult.to_csv",
        ),
        (".csv", "epoch,acc\n1,0.5\n", r"line 1: the header must be seed, the metric names, error"),
    ],
)
def test_invalid_results_file_is_refused(suffix: str, content: str, match: str, tmp_path: Path) -> None:
    results = tmp_path / f"sweep{suffix}"
    results.write_text(content)
    with pytest.raises(ValueError, match=r"seed_sweep: results file .*" + match):
        seed_sweep(known_metrics, seeds=[0], results=results)
    assert results.read_text() == content


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"results": 3}, TypeError, r"results must be a path \(str or os.PathLike\) or None, got int 3"),
        (
            {"results": "sweep.txt"},
            ValueError,
            r"results must end in .jsonl, .json, .ndjson or .csv, got 'sweep.txt'",
        ),
        ({"retry_failed": "yes"}, TypeError, r"retry_failed must be a bool, got str 'yes'"),
        (
            {"map": 4},
            TypeError,
            r"map must be None, a map-like callable, a concurrent.futures.Executor or a "
            r"multiprocessing Pool, got int 4",
        ),
    ],
)
def test_bad_inputs_of_results(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    args: dict[str, Any] = {"train_fn": known_metrics, "seeds": [0, 1]}
    args.update(kwargs)
    with pytest.raises(error, match="seed_sweep: " + match):
        seed_sweep(**args)


def test_results_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sweep.jsonl").mkdir()
    with pytest.raises(ValueError, match=r"seed_sweep: results must be a file path, got the directory"):
        seed_sweep(known_metrics, seeds=[0], results=tmp_path / "sweep.jsonl")


def test_lambda_train_fn_in_a_process_pool_is_refused_up_front() -> None:
    with (
        parallel("executor") as ex,
        pytest.raises(TypeError, match=r"seed_sweep: train_fn must be picklable"),
    ):
        seed_sweep(lambda seed: {"acc": 1.0}, seeds=[0, 1], map=ex)


# ----------------------------------------------------------------------------- vary= (issue 16)
def seeds_as_metrics(seeds: SourceSeeds) -> dict[str, float]:
    """Module level (process pools): the run's seeds by source, returned as metrics."""
    assert isinstance(seeds, SourceSeeds)
    return {"seed": seeds.seed, "init": seeds.init, "data": seeds.data, "train": seeds.train}


def failing_on_data(seeds: SourceSeeds) -> dict[str, float]:
    if seeds.sweep_seed == 2:
        raise RuntimeError("boom")
    return {"acc": (seeds.data % 100) / 100}


@pytest.mark.parametrize("kind", ["sequential", "executor", "pool", "generic"])
@pytest.mark.parametrize(
    ("vary", "varied"), [("data", ("data",)), (("train", "init"), ("init", "train")), ("all", SOURCES)]
)
def test_vary_hands_train_fn_the_seeds_of_each_source(kind: str, vary: Any, varied: tuple[str, ...]) -> None:
    with parallel(kind) as mapper:
        result = seed_sweep(seeds_as_metrics, [5, 6, 7], map=mapper, vary=vary, fixed=3)
    assert (result.vary, result.fixed) == (varied, 3)
    for r in result.results:
        expected = {s: source_seed(r.seed if s in varied else 3, s) for s in SOURCES}
        expected["seed"] = r.seed if varied == SOURCES else 3
        assert r.metrics == {k: float(v) for k, v in expected.items()}
        assert r.sources == expected
    held = [s for s in SOURCES if s not in varied]
    assert all(result.summary[s].std == 0.0 for s in held)  # held sources: one value
    assert all(len({r.metrics[s] for r in result.results}) == 3 for s in varied)


def test_plain_sweep_is_unchanged() -> None:
    result = seed_sweep(known_metrics, [0, 1])
    assert (result.vary, result.fixed) == (None, None)
    assert all(r.sources is None for r in result.results)


def test_vary_records_sources_in_the_results_file_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    first = seed_sweep(failing_on_data, [1, 2], results=path, vary="data")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["sources"] for line in lines] == [SourceSeeds.for_sweep(s, "data").as_dict() for s in (1, 2)]
    assert lines[1]["error"] == "RuntimeError: boom" and first.failures[0].sources == lines[1]["sources"]
    resumed = seed_sweep(failing_on_data, [1, 2, 3], results=path, vary="data")
    assert [r.sources for r in resumed.results] == [
        SourceSeeds.for_sweep(s, "data").as_dict() for s in (1, 2, 3)
    ]
    assert len(path.read_text().splitlines()) == 3  # only seed 3 ran
    # the same file for other sources, another fixed seed or a plain sweep: refused before anything runs
    for kwargs in ({"vary": "init"}, {"vary": "data", "fixed": 1}, {}):
        with pytest.raises(ValueError, match=r"seed 1 was run with sources \{'seed': 0, "):
            seed_sweep(failing_on_data if kwargs else known_metrics, [1], results=path, **kwargs)
    plain = tmp_path / "plain.jsonl"
    seed_sweep(known_metrics, [1], results=plain)
    with pytest.raises(ValueError, match=r"seed 1 was run as a plain seed, but this sweep gives it"):
        seed_sweep(failing_on_data, [1], results=plain, vary="data")
    assert len(path.read_text().splitlines()) == 3


def test_vary_with_a_csv_results_file(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    seed_sweep(failing_on_data, [1, 3], results=path, vary="data")
    assert path.read_text().splitlines()[0] == "seed,acc,error"  # the CSV format holds no sources
    resumed = seed_sweep(failing_on_data, [1, 3], results=path, vary="data")
    assert [r.sources for r in resumed.results] == [
        SourceSeeds.for_sweep(s, "data").as_dict() for s in (1, 3)
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"vary": "weights"},
            ValueError,
            r"seed_sweep: vary must be one of \['init', 'data', 'train'\], 'all'",
        ),
        ({"vary": ()}, ValueError, "seed_sweep: vary must be one of"),
        (
            {"vary": "data", "fixed": -1},
            ValueError,
            r"seed_sweep: fixed must be in \[0, 2\*\*32 - 1\], got -1",
        ),
        ({"vary": "data", "fixed": 1.5}, TypeError, "seed_sweep: fixed must be an int"),
        ({"fixed": 3}, ValueError, r"seed_sweep: fixed=3 applies only to a sweep that varies sources"),
    ],
)
def test_bad_vary_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        seed_sweep(seeds_as_metrics, [1], **kwargs)


def test_vary_train_fn_must_be_picklable_for_a_process_pool() -> None:
    with parallel("executor") as ex, pytest.raises(TypeError, match="train_fn must be picklable"):
        seed_sweep(lambda seeds: {"a": 1.0}, [1], map=ex, vary="data")


@pytest.mark.parametrize(("value", "n"), [(0.9354, 5), (0.1, 3), (0.7, 3)])
def test_equal_values_have_exactly_zero_spread(value: float, n: int) -> None:
    """A held source gives one value per seed: its std is 0, not the ~1e-16 of a rounded mean."""
    s = MetricSummary.of("acc", [value] * n)
    assert (s.mean, s.std, s.ci_low, s.ci_high) == (value, 0.0, value, value)
