"""``seed_sweep``: the same run over several seeds, with summary statistics.

Results vary across seeds (Bouthillier et al., MLSys 2021; Picard, 2021); report the variance.
:func:`seed_sweep` calls ``train_fn(seed) -> {metric: value}`` once per seed through any
``map``-like callable (the builtin sequential ``map`` by default; ``multiprocessing.Pool().map``,
a ``concurrent.futures`` executor's ``map`` or ``ray.util.multiprocessing.Pool().map`` to run in
parallel or across machines) and summarises each metric: mean, sample standard deviation
(``ddof=1``), min, max and a Student-t confidence interval for the mean. Pure Python; no
Lightning import.
"""

from __future__ import annotations

import builtins
import csv
import functools
import io
import math
import numbers
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MetricSummary", "SeedResult", "SweepResult", "seed_sweep", "student_t_ppf"]

_MAX_SEED = 2**32 - 1


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
    """The outcome of one seed: its metrics, or the error it raised.

    Example:
        >>> SeedResult(seed=1, metrics={"acc": 0.9}).ok
        True
    """

    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        """Whether ``train_fn`` returned metrics for this seed."""
        return self.error is None


@dataclass(frozen=True)
class MetricSummary:
    """Summary of one metric over the seeds that returned it.

    ``std`` is the sample standard deviation (``ddof=1``); ``ci_low``/``ci_high`` the Student-t
    confidence interval for the mean, ``mean -/+ t_{(1+c)/2, n-1} * std / sqrt(n)``. With one
    value ``std`` and the interval are NaN.

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
        """Summarise ``values`` (at least one).

        Args:
            name: The metric's name.
            values: The metric's value for each seed.
            confidence: Confidence level of the interval, in ``(0, 1)``.

        Returns:
            The summary.

        Raises:
            ValueError: If ``values`` is empty.

        Example:
            >>> MetricSummary.of("loss", [2.0]).mean
            2.0
        """
        n = len(values)
        if n == 0:
            raise ValueError(f"MetricSummary: values of {name!r} must not be empty, got {list(values)!r}")
        if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
            raise ValueError(f"MetricSummary: confidence must be in (0, 1), got {confidence!r}")
        mean = math.fsum(values) / n
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
    error (``result.failures``); statistics use the seeds that succeeded.

    Example:
        >>> ok = [SeedResult(0, {"acc": 0.5}), SeedResult(1, {"acc": 0.7})]
        >>> r = SweepResult([*ok, SeedResult(2, error="ValueError: boom")])
        >>> round(r.summary["acc"].mean, 3), [f.seed for f in r.failures]
        (0.6, [2])
    """

    results: list[SeedResult]
    confidence: float = 0.95

    @property
    def seeds(self) -> list[int]:
        """The seeds, in the order given."""
        return [r.seed for r in self.results]

    @property
    def failures(self) -> list[SeedResult]:
        """The seeds whose ``train_fn`` raised, with their errors."""
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
        """One :class:`MetricSummary` per metric, over the successful seeds that returned it."""
        return {
            name: MetricSummary.of(
                name, [r.metrics[name] for r in self.results if r.ok and name in r.metrics], self.confidence
            )
            for name in self.metric_names
        }

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
            values = (_fmt(getattr(summary[n], row), precise) for n in names)
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

        Args:
            path: File to write, or ``None`` to only return the text.

        Returns:
            The CSV text.
        """
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(self.rows(precise=True))
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text


def _fmt(value: float | None, precise: bool = False) -> str:
    if value is None:
        return ""
    return repr(value) if precise else f"{value:.6g}"


# ----------------------------------------------------------------------------- sweep
def _run_one(train_fn: Callable[[int], Mapping[str, Any]], seed: int) -> SeedResult:
    """Run one seed and capture its metrics or its error (module level, so pools can pickle it)."""
    try:
        out = train_fn(seed)
        if not isinstance(out, Mapping):
            raise TypeError(f"train_fn must return a dict of metrics, got {type(out).__name__}")
        metrics: dict[str, float] = {}
        for key, value in out.items():
            item = getattr(value, "item", None)
            value = item() if callable(item) else value
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"metric {key!r} must be a real number, got {value!r}")
            metrics[str(key)] = float(value)
        return SeedResult(seed, metrics)
    except Exception as err:  # report every failure with its seed; keep the other seeds
        return SeedResult(seed, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())


def seed_sweep(
    train_fn: Callable[[int], Mapping[str, Any]],
    seeds: Iterable[int],
    map: Callable[..., Iterable[Any]] | None = None,
    confidence: float = 0.95,
) -> SweepResult:
    """Run ``train_fn(seed)`` for each seed and summarise the metrics it returns.

    Args:
        train_fn: ``seed -> {metric name: number}`` (numbers or 0-d tensors). To run it in a
            process pool it must be picklable (a module-level function).
        seeds: Distinct integer seeds in ``[0, 2**32 - 1]``.
        map: A ``map``-like callable ``map(fn, seeds) -> iterable of results`` in the order of
            ``seeds``: ``None`` (builtin ``map``, sequential), ``multiprocessing.Pool().map``,
            ``concurrent.futures.ProcessPoolExecutor().map``, ``ray.util.multiprocessing.Pool().map``.
        confidence: Confidence level of the Student-t interval, in ``(0, 1)``.

    Returns:
        A :class:`SweepResult`: per-seed metrics or errors, ``summary``, ``table()``, ``to_csv()``.
        A seed whose ``train_fn`` raises is reported in ``failures`` with its error.

    Raises:
        TypeError: If ``train_fn`` or ``map`` is not callable, or a seed is not an int.
        ValueError: If ``seeds`` is empty, has duplicates or values outside ``[0, 2**32 - 1]``, or
            ``confidence`` is not in ``(0, 1)``.

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
    if map is not None and not callable(map):
        raise TypeError(
            f"seed_sweep: map must be a map-like callable or None, got {type(map).__name__} {map!r}"
        )
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
    mapper = map if map is not None else builtins.map
    results = list(mapper(functools.partial(_run_one, train_fn), [int(s) for s in seed_list]))
    if len(results) != len(seed_list) or not all(isinstance(r, SeedResult) for r in results):
        raise TypeError("seed_sweep: map must return one result per seed, in order (like the builtin map)")
    return SweepResult(results, float(confidence))
