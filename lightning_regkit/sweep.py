"""``seed_sweep``: the same run over several seeds, with summary statistics.

Results vary across seeds (Bouthillier et al., MLSys 2021; Picard, 2021); report the variance.
:func:`seed_sweep` calls ``train_fn(seed) -> {metric: value}`` once per seed, in this process or
through ``map=`` (a ``concurrent.futures`` executor, a ``multiprocessing`` pool, or any
``map``-like callable such as ``ray.util.multiprocessing.Pool().imap_unordered``), and summarises
each metric: mean, sample standard deviation (``ddof=1``), min, max and a Student-t confidence
interval for the mean, over the seeds that succeeded with finite values.

Sources of randomness: with ``vary=`` (a source, a tuple of sources or ``"all"``) the sweep varies
only those sources and holds the others fixed: ``train_fn`` receives a
:class:`~lightning_regkit.sources.SourceSeeds` (the keyword arguments of ``SeedEverything``), see
:func:`seed_sweep`.

Nothing that finished is lost. With ``results=`` each seed's record is appended to a JSON-lines or
CSV file (flushed and fsynced) the moment it arrives, and a later call with the same file runs only
the seeds missing from it. A seed whose ``train_fn`` raises, calls ``sys.exit`` or returns a
non-finite metric is a failure of that seed alone; a worker that dies never hangs the sweep (its
seed is reported as not finished and is not saved, so a resume runs it); Ctrl-C stops the sweep.
Pure Python; no Lightning import.

Layout, for whoever extends it: :func:`_run_one` runs one seed and returns its record;
:class:`_ResultsFile` is the one reader and writer of the results file; :class:`_Collector`
receives the records as they arrive; ``_run_map``, ``_run_executor`` and ``_run_pool`` schedule the
seeds.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import csv
import dataclasses
import functools
import io
import json
import logging
import math
import multiprocessing
import multiprocessing.pool
import numbers
import os
import pickle
import queue
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_regkit.sources import SEED_KEYS, SourceSeeds, parse_vary

__all__ = ["MetricSummary", "SeedResult", "SweepResult", "seed_sweep", "student_t_ppf"]

_MAX_SEED = 2**32 - 1
_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- Student t
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _student_t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_ppf(q: float, df: float) -> float:
    """Quantile function (inverse CDF) of Student's t distribution with ``df`` degrees of freedom.

    Args:
        q: Probability in ``(0, 1)``.
        df: Degrees of freedom, ``> 0``.

    Returns:
        ``t`` such that ``P(T <= t) = q`` (agrees with ``scipy.stats.t.ppf`` to ~1e-10).

    Raises:
        ValueError: If ``q`` is not in ``(0, 1)`` or ``df <= 0``.

    Example:
        >>> round(student_t_ppf(0.975, 4), 6)
        2.776445
        >>> round(student_t_ppf(0.5, 3), 12)
        0.0
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"student_t_ppf: q must be in (0, 1), got {q}")
    if not df > 0:
        raise ValueError(f"student_t_ppf: df must be > 0, got {df}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -student_t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while _student_t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2.0
    for _ in range(200):  # bisection: robust for every df; the CDF is monotone
        mid = 0.5 * (lo + hi)
        if _student_t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SeedResult:
    """The outcome of one seed: its metrics, or the reason it failed.

    A failed seed has an ``error``: what ``train_fn`` raised (or ``SystemExit: <code>``), the
    non-finite metric it returned (its ``metrics`` are kept), or, starting with ``"not finished: "``,
    why it never returned (its worker died; such a seed is not saved, so a resume runs it).
    In a sweep that varies sources (``seed_sweep(vary=...)``), ``sources`` holds the run's seeds
    by source (``{"seed", "init", "data", "train"}``).

    Example:
        >>> SeedResult(seed=1, metrics={"acc": 0.9}).ok
        True
        >>> SeedResult(seed=2, metrics={"loss": float("nan")}, error="non-finite metric: 'loss' = nan").ok
        False
    """

    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    sources: dict[str, int] | None = None

    @property
    def ok(self) -> bool:
        """Whether the seed succeeded: ``train_fn`` returned finite metrics."""
        return self.error is None


@dataclass(frozen=True)
class MetricSummary:
    """Summary of one metric over the seeds that returned it.

    ``std`` is the sample standard deviation (``ddof=1``); ``ci_low``/``ci_high`` the Student-t
    confidence interval for the mean, ``mean -/+ t_{(1+c)/2, n-1} * std / sqrt(n)``. With one
    value ``std`` and the interval are NaN. Every statistic is independent of the order of the
    values (``math.fsum`` is exactly rounded).

    Example:
        >>> s = MetricSummary.of("acc", [1.0, 2.0, 3.0])
        >>> (s.n, s.mean, s.std, s.min, s.max)
        (3, 2.0, 1.0, 1.0, 3.0)
        >>> round(s.ci_low, 4), round(s.ci_high, 4)
        (-0.4841, 4.4841)
    """

    name: str
    n: int
    mean: float
    std: float
    min: float
    max: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95

    @classmethod
    def of(cls, name: str, values: Sequence[float], confidence: float = 0.95) -> MetricSummary:
        """Summarise ``values`` (at least one, all finite).

        Args:
            name: The metric's name.
            values: The metric's value for each seed.
            confidence: Confidence level of the interval, in ``(0, 1)``.

        Returns:
            The summary.

        Raises:
            ValueError: If ``values`` is empty or holds a NaN or an infinity, or ``confidence`` is
                not in ``(0, 1)``.

        Example:
            >>> MetricSummary.of("loss", [2.0]).mean
            2.0
        """
        n = len(values)
        if n == 0:
            raise ValueError(f"MetricSummary: values of {name!r} must not be empty, got {list(values)!r}")
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise ValueError(f"MetricSummary: values of {name!r} must be finite, got {v!r} at index {i}")
        if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
            raise ValueError(f"MetricSummary: confidence must be in (0, 1), got {confidence!r}")
        mean = float(values[0]) if min(values) == max(values) else math.fsum(values) / n  # equal: exact
        if n > 1:
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
            half = student_t_ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
        else:
            std = half = math.nan
        return cls(name, n, mean, std, min(values), max(values), mean - half, mean + half, confidence)


_SUMMARY_ROWS = ("mean", "std", "min", "max", "ci_low", "ci_high")


@dataclass(frozen=True)
class SweepResult:
    """Per-seed results of :func:`seed_sweep` and their summary.

    ``str(result)`` is a table; :meth:`to_csv` writes the same rows. Failed seeds keep their
    error (``result.failures``); statistics use only the seeds that succeeded, so they do not
    depend on the order of the seeds. ``vary`` and ``fixed`` are the sweep's (``None`` for a
    sweep that passed plain seeds).

    Example:
        >>> ok = [SeedResult(0, {"acc": 0.5}), SeedResult(1, {"acc": 0.7})]
        >>> r = SweepResult([*ok, SeedResult(2, error="ValueError: boom")])
        >>> round(r.summary["acc"].mean, 3), [f.seed for f in r.failures]
        (0.6, [2])
    """

    results: list[SeedResult]
    confidence: float = 0.95
    vary: tuple[str, ...] | None = None
    fixed: int | None = None

    @property
    def seeds(self) -> list[int]:
        """The seeds, in the order given."""
        return [r.seed for r in self.results]

    @property
    def failures(self) -> list[SeedResult]:
        """The seeds that failed (raised, exited, returned a non-finite metric or did not finish)."""
        return [r for r in self.results if not r.ok]

    @property
    def metric_names(self) -> list[str]:
        """Every metric name returned by any seed, in first-seen order."""
        names: dict[str, None] = {}
        for r in self.results:
            names.update(dict.fromkeys(r.metrics))
        return list(names)

    @property
    def summary(self) -> dict[str, MetricSummary]:
        """One :class:`MetricSummary` per metric, over the successful seeds' finite values of it.

        A metric that no successful seed returned has no entry.
        """
        out = {}
        for name in self.metric_names:
            values = [
                r.metrics[name]
                for r in self.results
                if r.ok and name in r.metrics and math.isfinite(r.metrics[name])
            ]
            if values:
                out[name] = MetricSummary.of(name, values, self.confidence)
        return out

    def rows(self, precise: bool = False) -> list[list[str]]:
        """Header, one row per seed, then the summary rows (``mean``, ``std``, ..., ``ci_high``).

        Args:
            precise: Write floats with ``repr`` (round-trip exact) instead of 6 significant digits.

        Returns:
            The table as strings; empty cells for missing values.
        """
        names = self.metric_names
        pct = f"{round(self.confidence * 100):d}"
        errors = [[r.error or ""] for r in self.results] if self.failures else [[] for _ in self.results]
        out = [["seed", *names, *(["error"] if self.failures else [])]]
        for r, err in zip(self.results, errors, strict=True):
            out.append([str(r.seed), *(_fmt(r.metrics.get(n), precise) for n in names), *err])
        summary = self.summary
        labels = {"ci_low": f"ci{pct}_low", "ci_high": f"ci{pct}_high"}
        blank = [""] if self.failures else []
        for row in _SUMMARY_ROWS:
            values = (_fmt(getattr(summary[n], row) if n in summary else None, precise) for n in names)
            out.append([labels.get(row, row), *values, *blank])
        return out

    def table(self) -> str:
        """The results as an aligned plain-text table.

        Returns:
            The table.
        """
        rows = self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_csv(self, path: str | Path | None = None) -> str:
        """Write the table as CSV (floats at full precision) to ``path`` (if given) and return the text.

        This is the summary table; the per-seed file a sweep resumes from is ``seed_sweep(results=)``.

        Args:
            path: File to write, or ``None`` to only return the text.

        Returns:
            The CSV text.
        """
        return write_csv(self.rows(precise=True), path)


def write_csv(rows: Iterable[Sequence[object]], path: str | Path | None = None) -> str:
    r"""The CSV text of ``rows`` (``\n`` line ends), also written to ``path`` if given.

    Example:
        >>> write_csv([["metric", "mean"], ["acc", 0.5]])
        'metric,mean\nacc,0.5\n'
    """
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    text = buf.getvalue()
    if path is not None:
        Path(path).write_text(text)
    return text


def _fmt(value: float | None, precise: bool = False) -> str:
    if value is None:
        return ""
    return repr(value) if precise else f"{value:.6g}"


# ----------------------------------------------------------------------------- one seed
def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _is_interrupt(err: SystemExit) -> bool:
    """A ``sys.exit`` raised while handling Ctrl-C (what Lightning's ``Trainer`` does on Ctrl-C)."""
    return isinstance(err.__context__, KeyboardInterrupt)


def _as_metrics(out: Any) -> dict[str, float]:
    if not isinstance(out, Mapping):
        raise TypeError(f"train_fn must return a dict of metrics, got {type(out).__name__}")
    metrics: dict[str, float] = {}
    for key, value in out.items():
        item = getattr(value, "item", None)
        value = item() if callable(item) else value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"metric {key!r} must be a real number, got {value!r}")
        metrics[str(key)] = float(value)
    return metrics


def _run_one(train_fn: Callable[[int], Mapping[str, Any]], seed: int) -> SeedResult:
    """Run one seed and return its record (module level, so pools can pickle it).

    A failure of the seed is a record with an ``error``: an exception, ``sys.exit`` in
    ``train_fn``, an output that is not a mapping of real numbers, or a non-finite metric (its
    metrics kept). ``KeyboardInterrupt``, and a ``SystemExit`` raised while handling one, propagate:
    they stop the sweep.
    """
    try:
        metrics = _as_metrics(train_fn(seed))
    except SystemExit as err:  # sys.exit in train_fn: this seed failed, the others go on
        if _is_interrupt(err):
            raise
        return SeedResult(seed, error=_describe(err), traceback=traceback.format_exc())
    except Exception as err:  # report every failure with its seed; keep the other seeds
        return SeedResult(seed, error=_describe(err), traceback=traceback.format_exc())
    bad = [f"{key!r} = {value!r}" for key, value in metrics.items() if not math.isfinite(value)]
    if bad:
        return SeedResult(
            seed, metrics, error=f"non-finite metric{'s' if len(bad) > 1 else ''}: {', '.join(bad)}"
        )
    return SeedResult(seed, metrics)


@dataclass(frozen=True)
class _VaryCall:
    """``train_fn`` of a sweep that varies sources: called with a seed, calls ``train_fn(SourceSeeds)``.

    Module level and plain data, so a process pool pickles it (with ``train_fn``).
    """

    train_fn: Callable[[SourceSeeds], Mapping[str, Any]]
    vary: tuple[str, ...]
    fixed: int

    def seeds(self, seed: int) -> SourceSeeds:
        return SourceSeeds.for_sweep(seed, self.vary, self.fixed)

    def __call__(self, seed: int) -> Mapping[str, Any]:
        return self.train_fn(self.seeds(seed))

    def __repr__(self) -> str:
        return f"{self.train_fn!r} (vary={self.vary!r})"


@dataclass(frozen=True)
class _Interrupted:
    """A worker's seed was interrupted (Ctrl-C): sent back as a value, so that no pool loses the task."""

    seed: int
    error: str


def _run_remote(train_fn: Callable[[int], Mapping[str, Any]], seed: int) -> SeedResult | _Interrupted:
    """:func:`_run_one` in a worker: nothing escapes it, so no worker exits and no pool waits forever."""
    try:
        return _run_one(train_fn, seed)
    except BaseException as err:  # Ctrl-C in the worker: the parent stops the sweep
        return _Interrupted(seed, _describe(err))


def _pool_task(payload: Any, seed: int, marker_dir: str | None) -> SeedResult | _Interrupted:
    """A ``multiprocessing`` pool's task: first write ``<marker_dir>/<seed>`` holding this worker's pid.

    ``payload`` is ``train_fn`` pickled by the parent, unpickled only after the marker is written, so
    that a worker killed at any point after it took the task is known to have held this seed.
    """
    if marker_dir is not None:
        with contextlib.suppress(OSError):  # the sweep may have ended (and removed the folder)
            tmp = os.path.join(marker_dir, f"{seed}.tmp")
            with open(tmp, "w") as f:
                f.write(str(os.getpid()))
            os.replace(tmp, os.path.join(marker_dir, str(seed)))
    train_fn = pickle.loads(payload) if isinstance(payload, bytes) else payload
    return _run_remote(train_fn, seed)


# ----------------------------------------------------------------------------- results file
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _seed_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SEED:
        hint = (
            " (a table written by SweepResult.to_csv() is not a results file)"
            if value in _SUMMARY_ROWS or (isinstance(value, str) and value.startswith("ci"))
            else ""
        )
        return f"seed must be an int in [0, 2**32 - 1], got {value!r}{hint}"
    return None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not possible on every platform (Windows)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _ResultsFile:
    """The results file: one record per finished seed, appended, flushed and fsynced as it arrives.

    JSON lines (``.jsonl``, ``.ndjson``, ``.json``): one object per line,
    ``{"seed": 3, "metrics": {"acc": 0.9}, "error": null, "traceback": null}``, non-finite values
    as the strings ``"nan"``, ``"inf"``, ``"-inf"``; unknown keys are ignored when read. CSV:
    ``seed,<metric>,...,error`` (no traceback); its columns are fixed by the first record with
    metrics (if failures without metrics came first, the file is rewritten once, atomically). A
    later record of a seed replaces an earlier one. Every record with metrics (and every success)
    has the same metric names: others were written for other settings and are refused. A last
    record cut short by a crash (no final newline) is dropped with a warning.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.csv = _FORMATS[path.suffix.lower()] == "csv"
        self.names: list[str] | None = None  # metric names of the file, once a record has told them
        self.records: dict[int, SeedResult] = {}  # the last record of each seed
        self._rows: list[SeedResult] = []  # every record, in file order (to rewrite a CSV)
        self._columns: list[str] | None = None  # the CSV header's metric columns; None: no header yet
        self._load()

    # -- reading
    def _fail(self, line: int, problem: str) -> ValueError:
        return ValueError(f"seed_sweep: results file {self.path}, line {line}: {problem}")

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        keep = self._complete_prefix(data)
        text = data[:keep].decode("utf-8")
        for line, record in self._parse_csv(text) if self.csv else self._parse_jsonl(text):
            if (names := self._differs(record)) is not None:
                raise self._fail(
                    line,
                    f"metrics {names} differ from {self.names} of the records before it: the file mixes runs "
                    "of different settings",
                )
            self._keep(record)
        if keep < len(data):
            warnings.warn(
                f"seed_sweep: results file {self.path}: dropped an incomplete last record "
                f"({len(data) - keep} bytes; a write cut short by a crash), its seed runs again",
                UserWarning,
                stacklevel=3,
            )
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())

    def _complete_prefix(self, data: bytes) -> int:
        """Length of the records that end with a newline (outside CSV quotes); the rest is a torn write."""
        if not self.csv:
            return data.rfind(b"\n") + 1
        end = pos = quotes = 0
        while (nl := data.find(b"\n", pos)) >= 0:
            quotes += data.count(b'"', pos, nl + 1)
            pos = nl + 1
            if quotes % 2 == 0:
                end = pos
        return end

    def _parse_jsonl(self, text: str) -> Iterable[tuple[int, SeedResult]]:
        for i, line in enumerate(text.split("\n")[:-1], start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if not isinstance(obj, dict) or "seed" not in obj:
                raise self._fail(i, f"not a JSON object with a 'seed': {line[:80]!r}")
            if (problem := _seed_problem(obj["seed"])) is not None:
                raise self._fail(i, problem)
            metrics, error, tb = obj.get("metrics", {}), obj.get("error"), obj.get("traceback")
            sources = obj.get("sources")
            if sources is not None and (
                not isinstance(sources, dict)
                or set(sources) != set(SEED_KEYS)
                or any(_seed_problem(v) is not None for v in sources.values())
            ):
                raise self._fail(
                    i,
                    f"'sources' must be null or an object of {list(SEED_KEYS)} seeds, got {sources!r}",
                )
            if not isinstance(metrics, dict):
                raise self._fail(i, f"'metrics' must be an object, got {metrics!r}")
            values = {}
            for key, value in metrics.items():
                if isinstance(value, str) and value in _NON_FINITE:
                    value = _NON_FINITE[value]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise self._fail(
                        i, f"metric {key!r} must be a number, 'nan', 'inf' or '-inf', got {value!r}"
                    )
                values[key] = float(value)
            for key, value in (("error", error), ("traceback", tb)):
                if value is not None and not isinstance(value, str):
                    raise self._fail(i, f"{key!r} must be a string or null, got {value!r}")
            yield i, self._valid(i, SeedResult(obj["seed"], values, error, tb, sources))

    def _parse_csv(self, text: str) -> Iterable[tuple[int, SeedResult]]:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = next(reader, None)
        if header is None:
            return
        names = header[1:-1]
        if (
            len(header) < 2
            or header[0] != "seed"
            or header[-1] != "error"
            or len(set(names)) != len(names)
            or ({"seed", "error"} & set(names))
        ):
            raise self._fail(1, f"the header must be seed, the metric names, error; got {header}")
        self._columns = names
        if names:
            self.names = list(names)
        for row in reader:
            i = reader.line_num
            if len(row) != len(header):
                raise self._fail(i, f"expected {len(header)} cells ({header}), got {len(row)}: {row}")
            try:
                seed: Any = int(row[0])
            except ValueError:
                seed = row[0]
            if (problem := _seed_problem(seed)) is not None:
                raise self._fail(i, problem)
            values = {}
            for name, cell in zip(names, row[1:-1], strict=True):
                if cell:
                    try:
                        values[name] = float(cell)
                    except ValueError:
                        raise self._fail(i, f"metric {name!r} must be a number, got {cell!r}") from None
            yield i, self._valid(i, SeedResult(seed, values, row[-1] or None))

    def _valid(self, line: int, record: SeedResult) -> SeedResult:
        if record.ok:
            bad = [k for k, v in record.metrics.items() if not math.isfinite(v)]
            if bad:
                raise self._fail(
                    line, f"a record without error must have finite metrics, got {bad} non-finite"
                )
            if self.csv and self._columns is not None and len(record.metrics) != len(self._columns):
                raise self._fail(line, f"a record without error must have every metric {self._columns}")
        return record

    def _differs(self, record: SeedResult) -> list[str] | None:
        """The record's metric names if they differ from the file's (else ``None``).

        Every success and every record with metrics has the same metric names; the first such record
        (or a CSV header) sets them.
        """
        if not (record.ok or record.metrics):
            return None
        names = list(record.metrics)
        if self.names is not None and set(names) != set(self.names):
            return names
        return None

    # -- writing
    def append(self, record: SeedResult) -> None:
        """Append ``record`` to the file (flushed and fsynced), after checking its metric names.

        Raises:
            ValueError: If the record's metric names differ from the file's, or name a CSV column.
        """
        if (names := self._differs(record)) is not None:
            raise ValueError(
                f"seed_sweep: results file {self.path} holds metrics {self.names} but "
                f"train_fn({record.seed}) returned {names}: it was written for other settings (another "
                "train_fn or other metrics); give another results path, or delete the file to start again"
            )
        if self.csv and {"seed", "error"} & set(record.metrics):
            raise ValueError(
                f"seed_sweep: train_fn({record.seed}) returned a metric named 'seed' or 'error', the columns "
                f"of a CSV results file; use a .jsonl results file instead of {self.path}"
            )
        created = not self.path.exists()
        if created:  # a new file (or one deleted during the sweep): it starts with its header
            self._columns = None
        new_names = self.names is None and (record.ok or bool(record.metrics))
        names = list(record.metrics) if new_names else self.names
        if not self.csv:
            text = json.dumps(self._json(record), allow_nan=False) + "\n"
        elif self._columns is None:  # a new file: the header, then the record
            self._columns = list(names or [])
            text = self._csv([["seed", *self._columns, "error"], self._csv_row(record)])
        elif not self._columns and names:  # failures without metrics came first: the columns, now
            self._columns = list(names)
            self._rewrite([*self._rows, record])
            self._keep(record)
            return
        else:
            text = self._csv([self._csv_row(record)])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if created:
            _fsync_dir(self.path.parent)
        self._keep(record)

    def _keep(self, record: SeedResult) -> None:
        if self.names is None and (record.ok or record.metrics):
            self.names = list(record.metrics)
        self.records[record.seed] = record
        self._rows.append(record)

    @staticmethod
    def _json(record: SeedResult) -> dict[str, Any]:
        metrics = {k: v if math.isfinite(v) else repr(v) for k, v in record.metrics.items()}
        out = {"seed": record.seed, "metrics": metrics, "error": record.error, "traceback": record.traceback}
        if record.sources is not None:  # a sweep that varies sources: the run's seeds by source
            out["sources"] = record.sources
        return out

    def _csv_row(self, record: SeedResult) -> list[str]:
        cells = [repr(record.metrics[n]) if n in record.metrics else "" for n in self._columns or []]
        return [str(record.seed), *cells, record.error or ""]

    @staticmethod
    def _csv(rows: list[list[str]]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue()

    def _rewrite(self, records: list[SeedResult]) -> None:
        """Write the whole CSV anew (header with the metric columns), atomically: temp file, fsync, rename."""
        text = self._csv([["seed", *(self._columns or []), "error"], *(self._csv_row(r) for r in records)])
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.path.parent)


# ----------------------------------------------------------------------------- collecting, scheduling
class _Collector:
    """Receives the records as they arrive: appends each to the results file, keeps it."""

    def __init__(
        self,
        todo: list[int],
        file: _ResultsFile | None,
        sources_of: Callable[[int], dict[str, int]] | None = None,
    ) -> None:
        self.todo = todo
        self.file = file
        self.sources_of = sources_of  # a sweep that varies sources: each record carries its seeds
        self.done: dict[int, SeedResult] = {}
        self.lost: dict[int, SeedResult] = {}

    def pending(self) -> list[int]:
        """The seeds with no record yet, neither finished nor lost."""
        return [s for s in self.todo if s not in self.done and s not in self.lost]

    def receive(self, out: object) -> None:
        """Take a record (a late one for a seed given up as lost too); an interrupted seed stops the sweep."""
        if isinstance(out, _Interrupted):
            where = f" in {self.file.path}" if self.file is not None else ""
            raise KeyboardInterrupt(
                f"seed_sweep: seed {out.seed} was interrupted in its worker ({out.error}); the seeds that "
                f"finished are kept{where}"
            )
        if not isinstance(out, SeedResult) or out.seed not in self.todo or out.seed in self.done:
            raise TypeError(
                f"seed_sweep: map must return one result per seed (like the builtin map), got {out!r}"
            )
        if self.sources_of is not None:
            out = dataclasses.replace(out, sources=self.sources_of(out.seed))
        if self.file is not None:
            self.file.append(out)
        self.done[out.seed] = out
        self.lost.pop(out.seed, None)

    def lose(self, seed: int, reason: str) -> None:
        """Report ``seed`` as not finished (not saved: a resume runs it)."""
        if seed not in self.done:
            sources = None if self.sources_of is None else self.sources_of(seed)
            self.lost[seed] = SeedResult(seed, error=f"not finished: {reason}", sources=sources)

    def receive_quietly(self, out: object) -> None:
        """On the way out of an interrupted sweep: keep a finished record if possible, never raise."""
        if isinstance(out, SeedResult):
            with contextlib.suppress(Exception):
                self.receive(out)


def _picklable(train_fn: Callable[..., Any]) -> bytes:
    try:
        return pickle.dumps(train_fn)
    except Exception as err:
        raise TypeError(
            "seed_sweep: train_fn must be picklable to run in a process pool (a module-level function, or a "
            f"functools.partial of one), got {train_fn!r}: {_describe(err)}"
        ) from err


def _run_map(
    mapper: Callable[..., Iterable[Any]], train_fn: Callable[[int], Any], col: _Collector, in_process: bool
) -> None:
    """Any ``map``-like callable: records are taken in the order it yields them (any order)."""
    fn = functools.partial(_run_one if in_process else _run_remote, train_fn)
    try:
        outputs = iter(mapper(fn, list(col.todo)))
    except Exception as err:
        for seed in col.pending():
            col.lose(seed, f"map raised {_describe(err)}")
        return
    while True:
        try:
            out = next(outputs)
        except StopIteration:
            break
        except Exception as err:  # e.g. a broken pool behind the map: keep what arrived, report the rest
            for seed in col.pending():
                col.lose(seed, f"map raised {_describe(err)}")
            return
        col.receive(out)
    if col.pending():
        raise TypeError(
            "seed_sweep: map must return one result per seed (like the builtin map), got none for seeds "
            f"{col.pending()}"
        )


def _take_future(col: _Collector, seed: int, future: concurrent.futures.Future[Any]) -> None:
    if future.cancelled():
        col.lose(seed, "cancelled")
    elif (err := future.exception()) is not None:  # e.g. BrokenProcessPool: a worker died
        col.lose(seed, _describe(err))
    else:
        col.receive(future.result())


def _run_executor(
    executor: concurrent.futures.Executor, train_fn: Callable[[int], Any], col: _Collector
) -> None:
    """``executor.submit`` per seed; records are taken as the futures complete."""
    if isinstance(executor, concurrent.futures.ProcessPoolExecutor):
        _picklable(train_fn)
    futures: dict[concurrent.futures.Future[Any], int] = {}
    try:
        for seed in col.todo:
            try:
                futures[executor.submit(_run_remote, train_fn, seed)] = seed
            except Exception as err:  # a broken or shut-down executor
                col.lose(seed, _describe(err))
        for future in concurrent.futures.as_completed(futures):
            _take_future(col, futures[future], future)
    except BaseException:
        for future in futures:
            future.cancel()
        for future in futures:  # what finished meanwhile is kept too
            if future.done() and not future.cancelled() and future.exception() is None:
                col.receive_quietly(future.result())
        raise


#: The pool path polls for dead workers this often, and gives a dead worker's result this long to arrive.
_POLL_S = 0.2
_GRACE_S = 1.0


def _arrived(box: queue.Queue[tuple[int, Any, BaseException | None]], seed: int, out: Any) -> None:
    box.put((seed, out, None))


def _failed(box: queue.Queue[tuple[int, Any, BaseException | None]], seed: int, err: BaseException) -> None:
    box.put((seed, None, err))


def _check_workers(marker_dir: str, col: _Collector, suspects: dict[int, float]) -> None:
    """Report as lost each running seed whose worker process is no longer alive (after a grace period)."""
    pending = set(col.pending())
    started = [int(name) for name in os.listdir(marker_dir) if name.isdigit() and int(name) in pending]
    if not started:
        return
    live = {p.pid for p in multiprocessing.active_children()}
    now = time.monotonic()
    for seed in started:
        try:
            pid = int(Path(marker_dir, str(seed)).read_text())
        except (OSError, ValueError):
            continue
        if pid in live or pid == os.getpid():
            suspects.pop(seed, None)
        elif now - suspects.setdefault(seed, now) >= _GRACE_S:
            col.lose(seed, f"worker process {pid} died while running this seed (killed, e.g. out of memory?)")


def _run_pool(pool: multiprocessing.pool.Pool, train_fn: Callable[[int], Any], col: _Collector) -> None:
    """``pool.apply_async`` per seed; records are taken as they arrive, dead workers are watched.

    ``multiprocessing.Pool`` replaces a worker that dies but never completes the task it held, so its
    ``map`` waits forever. Each task first writes its worker's pid to a marker file; a running seed
    whose worker is no longer among this process's children is reported as lost.
    """
    threads = isinstance(pool, multiprocessing.pool.ThreadPool)
    payload: Any = train_fn if threads else _picklable(train_fn)
    marker_dir = None if threads else tempfile.mkdtemp(prefix="seed_sweep-")
    box: queue.Queue[tuple[int, Any, BaseException | None]] = queue.Queue()
    try:
        for seed in col.todo:
            try:
                pool.apply_async(
                    _pool_task,
                    (payload, seed, marker_dir),
                    callback=functools.partial(_arrived, box, seed),
                    error_callback=functools.partial(_failed, box, seed),
                )
            except Exception as err:  # a closed or terminated pool
                col.lose(seed, _describe(err))
        suspects: dict[int, float] = {}
        while col.pending():
            try:
                seed, out, error = box.get(timeout=_POLL_S)
            except queue.Empty:
                if marker_dir is not None:
                    _check_workers(marker_dir, col, suspects)
                continue
            if marker_dir is not None:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(marker_dir, str(seed)))
            if error is not None:
                col.lose(seed, _describe(error))
            else:
                col.receive(out)
    except BaseException:
        while True:  # what finished meanwhile is kept too
            try:
                _, out, _ = box.get_nowait()
            except queue.Empty:
                break
            col.receive_quietly(out)
        raise
    finally:
        if marker_dir is not None:
            shutil.rmtree(marker_dir, ignore_errors=True)


def _scheduler(map: Any) -> tuple[str, Any]:
    """What runs the seeds: ``("sequential" | "executor" | "pool" | "map", the object to use)``."""
    if map is None:
        return "sequential", builtins.map
    if isinstance(map, concurrent.futures.Executor):
        return "executor", map
    if isinstance(map, multiprocessing.pool.Pool):
        return "pool", map
    owner, name = getattr(map, "__self__", None), getattr(map, "__name__", "")
    if isinstance(owner, concurrent.futures.Executor) and name == "map":
        return "executor", owner  # executor.map returns only in order: submit keeps each result as it arrives
    if isinstance(owner, multiprocessing.pool.Pool) and name in ("map", "imap", "imap_unordered"):
        return "pool", owner  # Pool.map returns only at the end and hangs on a dead worker
    if callable(map):
        return "map", map
    raise TypeError(
        "seed_sweep: map must be None, a map-like callable, a concurrent.futures.Executor or a "
        f"multiprocessing Pool, got {type(map).__name__} {map!r}"
    )


# ----------------------------------------------------------------------------- sweep
def seed_sweep(
    train_fn: Callable[..., Mapping[str, Any]],
    seeds: Iterable[int],
    map: Callable[..., Iterable[Any]] | concurrent.futures.Executor | multiprocessing.pool.Pool | None = None,
    confidence: float = 0.95,
    *,
    results: str | os.PathLike[str] | None = None,
    retry_failed: bool = False,
    vary: str | Iterable[str] | None = None,
    fixed: int = 0,
) -> SweepResult:
    """Run ``train_fn(seed)`` for each seed and summarise the metrics it returns.

    Args:
        train_fn: ``seed -> {metric name: number}`` (numbers or 0-d tensors). To run it in a
            process pool it must be picklable (a module-level function, or a ``functools.partial``
            of one).
        seeds: Distinct integer seeds in ``[0, 2**32 - 1]``.
        map: What runs the seeds. ``None``: one after the other, in this process. A
            ``concurrent.futures.Executor`` (``ProcessPoolExecutor``, ``ThreadPoolExecutor``, ...) or
            its ``.map``: one ``submit`` per seed, each result taken as it completes. A
            ``multiprocessing`` ``Pool`` (or its ``.map``/``.imap``/``.imap_unordered``): one
            ``apply_async`` per seed, a worker that dies is detected (its seed is lost, the others go
            on). Any other ``map``-like callable ``map(fn, seeds) -> iterable of fn's results`` (in
            any order; e.g. ``ray.util.multiprocessing.Pool().imap_unordered``): results are taken
            as it yields them.
        confidence: Confidence level of the Student-t interval, in ``(0, 1)``.
        results: A file (``.jsonl``, ``.ndjson``, ``.json``: JSON lines; ``.csv``) that receives
            each seed's record (metrics or error) the moment it arrives, flushed and fsynced. If it
            exists, the sweep resumes from it: seeds already recorded there are not run again, their
            records are reported. A record whose metric names differ from the file's is refused
            with a ``ValueError`` (the file was written for other settings).
        retry_failed: With ``results``, run again the seeds whose saved record is a failure (the
            new record is appended and wins).
        vary: Vary only these sources of randomness and hold the others fixed: ``"init"``,
            ``"data"``, ``"train"``, a tuple of them, or ``"all"``. Then ``train_fn`` is called
            with a :class:`~lightning_regkit.sources.SourceSeeds` instead of an int: a mapping
            ``seed``, ``init``, ``data``, ``train`` -> int, the keyword arguments of
            ``SeedEverything`` (``SeedEverything(**seeds)``), with ``seeds.sweep_seed`` the sweep's
            seed. For the sweep's seed ``s`` a varied source gets ``source_seed(s, source)`` and a
            fixed one ``source_seed(fixed, source)``, the same in every run; ``seed`` is ``s`` when
            every source varies (then the run is ``SeedEverything(s)`` with separate sources) and
            ``fixed`` otherwise. ``None`` (the default): ``train_fn(seed)`` as without sources.
            Each record of a JSON-lines results file then holds the run's ``sources``, and a
            resume refuses records of other sources.
        fixed: The seed the fixed sources derive from (only with ``vary``).

    Returns:
        A :class:`SweepResult`, in the order of ``seeds``: per-seed metrics or errors,
        ``summary`` (over the successful seeds' finite values), ``table()``, ``to_csv()``.
        A seed fails, and is listed in ``failures`` with its error, when its ``train_fn`` raises or
        calls ``sys.exit``, returns a NaN or infinite metric, or never returns because its worker
        died (error ``"not finished: ..."``; not saved, so a resume runs it). The other seeds'
        results are kept.

    Raises:
        TypeError: If ``train_fn`` is not callable (or not picklable for a process pool), ``map``
            is none of the above, a seed is not an int, ``results`` is not a path or
            ``retry_failed`` not a bool.
        ValueError: If ``seeds`` is empty, has duplicates or values outside ``[0, 2**32 - 1]``,
            ``confidence`` is not in ``(0, 1)``, ``results`` has another suffix, is a folder or is
            not a valid results file, or a record's metric names differ from the file's.
        KeyboardInterrupt: On Ctrl-C (also when Lightning's ``Trainer`` turned it into
            ``sys.exit(1)``, re-raised as is): the sweep stops; what finished is already saved.

    Example:
        >>> def train(seed):
        ...     return {"acc": 0.5 + seed / 10}
        >>> result = seed_sweep(train, seeds=[0, 1, 2])
        >>> round(result.summary["acc"].mean, 6), round(result.summary["acc"].std, 6)
        (0.6, 0.1)
        >>> print(result)
        seed       acc
        ---------  --------
        0          0.5
        1          0.6
        2          0.7
        mean       0.6
        std        0.1
        min        0.5
        max        0.7
        ci95_low   0.351586
        ci95_high  0.848414
    """
    if not callable(train_fn):
        raise TypeError(f"seed_sweep: train_fn must be callable, got {type(train_fn).__name__} {train_fn!r}")
    kind, runner = _scheduler(map)
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise ValueError(f"seed_sweep: confidence must be in (0, 1), got {confidence!r}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise TypeError(
            f"seed_sweep: seeds must be an iterable of ints, got {type(seeds).__name__} {seeds!r}"
        )
    seed_list = list(seeds)
    if not seed_list:
        raise ValueError("seed_sweep: seeds must not be empty, got []")
    for s in seed_list:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"seed_sweep: seeds must be ints, got {s!r} ({type(s).__name__})")
        if not 0 <= s <= _MAX_SEED:
            raise ValueError(f"seed_sweep: seeds must be in [0, 2**32 - 1], got {s}")
    if len(set(seed_list)) != len(seed_list):
        dupes = sorted({s for s in seed_list if seed_list.count(s) > 1})
        raise ValueError(f"seed_sweep: seeds must be distinct, got duplicates {dupes} in {seed_list!r}")
    if not isinstance(retry_failed, bool):
        raise TypeError(
            f"seed_sweep: retry_failed must be a bool, got {type(retry_failed).__name__} {retry_failed!r}"
        )
    if isinstance(fixed, bool) or not isinstance(fixed, numbers.Integral):
        raise TypeError(f"seed_sweep: fixed must be an int in [0, 2**32 - 1], got {fixed!r}")
    if not 0 <= fixed <= _MAX_SEED:
        raise ValueError(f"seed_sweep: fixed must be in [0, 2**32 - 1], got {fixed}")
    varied = None if vary is None else parse_vary(vary)
    if varied is None and fixed != 0:
        raise ValueError(f"seed_sweep: fixed={fixed} applies only to a sweep that varies sources (vary=...)")
    fn: Callable[[int], Mapping[str, Any]] = (
        train_fn if varied is None else _VaryCall(train_fn, varied, int(fixed))
    )

    def sources_of(seed: int) -> dict[str, int]:
        assert varied is not None
        return SourceSeeds.for_sweep(seed, varied, int(fixed)).as_dict()

    file = _ResultsFile(_results_path(results)) if results is not None else None

    seed_list = [int(s) for s in seed_list]
    saved = file.records if file is not None else {}
    kept = {s: saved[s] for s in seed_list if s in saved and (saved[s].ok or not retry_failed)}
    if file is not None:
        kept = {s: _check_sources(file, record, varied, sources_of) for s, record in kept.items()}
    col = _Collector([s for s in seed_list if s not in kept], file, None if varied is None else sources_of)
    if file is not None:
        _log.info(
            "seed_sweep: %d of %d seeds read from %s; running %d",
            len(kept),
            len(seed_list),
            file.path,
            len(col.todo),
        )
    if col.todo:
        if kind == "executor":
            _run_executor(runner, fn, col)
        elif kind == "pool":
            _run_pool(runner, fn, col)
        else:
            _run_map(runner, fn, col, in_process=kind == "sequential")
    for seed in col.pending():  # every scheduler accounts for every seed; never report a seed silently
        col.lose(seed, "no result came back")
    out = [kept[s] if s in kept else col.done[s] if s in col.done else col.lost[s] for s in seed_list]
    return SweepResult(out, float(confidence), varied, None if varied is None else int(fixed))


def _check_sources(
    file: _ResultsFile,
    record: SeedResult,
    varied: tuple[str, ...] | None,
    sources_of: Callable[[int], dict[str, int]],
) -> SeedResult:
    """A saved record, checked against this sweep's sources (JSON lines; CSV holds none) and completed."""
    expected = None if varied is None else sources_of(record.seed)
    if file.csv:
        return record if expected is None else dataclasses.replace(record, sources=expected)
    if record.sources != expected:
        this = "passes plain seeds" if varied is None else f"gives it {expected} (vary={varied!r})"
        was = "as a plain seed" if record.sources is None else f"with sources {record.sources}"
        raise ValueError(
            f"seed_sweep: results file {file.path}: seed {record.seed} was run {was}, but this sweep {this}:"
            " the file was written for other settings; give another results path, or delete the file to"
            " start again"
        )
    return record


def _results_path(results: Any) -> Path:
    if not isinstance(results, (str, os.PathLike)):
        raise TypeError(
            f"seed_sweep: results must be a path (str or os.PathLike) or None, got {type(results).__name__} "
            f"{results!r}"
        )
    path = Path(os.fsdecode(os.fspath(results)))
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(
            f"seed_sweep: results must end in .jsonl, .json, .ndjson or .csv, got {str(results)!r}"
        )
    if path.is_dir():
        raise ValueError(f"seed_sweep: results must be a file path, got the directory {str(path)!r}")
    return path
