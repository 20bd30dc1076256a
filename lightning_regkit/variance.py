"""Variance by source of randomness: one seed sweep per source, and the spread each one causes.

:func:`variance_by_source` runs :func:`~lightning_regkit.sweep.seed_sweep` once per source of
randomness (``init``, ``data``, ``train``; see :mod:`lightning_regkit.sources`), each varying that
source alone and holding the others fixed, and once with every source varying. For each metric and
each sweep it reports the sample standard deviation (``ddof=1``) over the seeds with its
chi-square confidence interval:

    ``[ s * sqrt((n - 1) / chi2_{(1 + c)/2, n - 1}),  s * sqrt((n - 1) / chi2_{(1 - c)/2, n - 1}) ]``

(``chi2_{q, k}`` the ``q`` quantile of the chi-square distribution with ``k`` degrees of freedom;
exact when the metric is normally distributed over seeds, approximate otherwise). The per-source
spreads are shown next to the spread with all sources varying, not as shares of it: sources
interact, so per-source variances need not add up to the total. Pure Python; matplotlib only for
:meth:`VarianceBySource.plot`; no Lightning import.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing.pool
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_regkit.sources import SOURCES, SourceSeeds, parse_vary
from lightning_regkit.sweep import SweepResult, seed_sweep, write_csv

__all__ = ["SpreadSummary", "VarianceBySource", "chi2_ppf", "std_interval", "variance_by_source"]


# ----------------------------------------------------------------------------- chi-square
def _gammainc_lower(a: float, x: float) -> float:
    """Regularized lower incomplete gamma function ``P(a, x)`` (series below ``a + 1``, else Lentz)."""
    if x <= 0.0:
        return 0.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return total * math.exp(log_front)
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = b + an / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return 1.0 - math.exp(log_front) * h


def chi2_ppf(q: float, df: float) -> float:
    """Quantile function (inverse CDF) of the chi-square distribution with ``df`` degrees of freedom.

    Args:
        q: Probability in ``(0, 1)``.
        df: Degrees of freedom, ``> 0``.

    Returns:
        ``x`` with ``P(X <= x) = q`` (agrees with ``scipy.stats.chi2.ppf`` to ~1e-10, relative).

    Raises:
        ValueError: If ``q`` is not in ``(0, 1)`` or ``df <= 0``.

    Example:
        >>> round(chi2_ppf(0.975, 4), 6), round(chi2_ppf(0.025, 4), 6)
        (11.143287, 0.484419)
    """
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 < q < 1.0:
        raise ValueError(f"chi2_ppf: q must be in (0, 1), got {q!r}")
    if isinstance(df, bool) or not isinstance(df, numbers.Real) or not df > 0:
        raise ValueError(f"chi2_ppf: df must be > 0, got {df!r}")
    a = df / 2.0
    lo, hi = 0.0, max(1.0, float(df))
    while _gammainc_lower(a, hi / 2.0) < q:
        lo, hi = hi, hi * 2.0
    for _ in range(2000):  # bisection: the CDF is monotone; stop at a relative width of 1e-15
        mid = 0.5 * (lo + hi)
        if _gammainc_lower(a, mid / 2.0) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


def std_interval(std: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Chi-square confidence interval of a standard deviation ``std`` (``ddof=1``) from ``n`` values.

    ``(s * sqrt((n-1) / chi2_ppf((1+c)/2, n-1)), s * sqrt((n-1) / chi2_ppf((1-c)/2, n-1)))``; exact
    for normally distributed values. NaN bounds for ``n < 2`` or a NaN ``std``.

    Args:
        std: The sample standard deviation (``ddof=1``), ``>= 0``.
        n: How many values it was computed from.
        confidence: Confidence level, in ``(0, 1)``.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: If ``std`` is negative, ``n`` is not an int ``>= 1`` or ``confidence`` is not
            in ``(0, 1)``.

    Example:
        >>> low, high = std_interval(1.0, 10)
        >>> round(low, 4), round(high, 4)
        (0.6878, 1.8256)
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"std_interval: n must be an int >= 1, got {n!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise ValueError(f"std_interval: confidence must be in (0, 1), got {confidence!r}")
    if not isinstance(std, numbers.Real) or std < 0:
        raise ValueError(f"std_interval: std must be a number >= 0, got {std!r}")
    if n < 2 or math.isnan(std):
        return math.nan, math.nan
    df = n - 1
    low = std * math.sqrt(df / chi2_ppf(0.5 + confidence / 2.0, df))
    high = std * math.sqrt(df / chi2_ppf(0.5 - confidence / 2.0, df))
    return low, high


# ----------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class SpreadSummary:
    """The spread of one metric over one sweep's seeds: the standard deviation and its interval.

    ``std`` is the sample standard deviation (``ddof=1``) over the ``n`` seeds that succeeded with a
    finite value, ``std_ci_low``/``std_ci_high`` its chi-square confidence interval
    (:func:`std_interval`); ``failed`` counts the sweep's seeds left out. With one value the std and
    its interval are NaN.

    Example:
        >>> s = SpreadSummary.of("acc", "data", [1.0, 2.0, 3.0, 4.0])
        >>> s.n, round(s.mean, 3), round(s.std, 4), round(s.std_ci_low, 4), round(s.std_ci_high, 4)
        (4, 2.5, 1.291, 0.7313, 4.8135)
    """

    metric: str
    varied: str
    n: int
    mean: float
    std: float
    std_ci_low: float
    std_ci_high: float
    confidence: float = 0.95
    failed: int = 0

    @classmethod
    def of(
        cls, metric: str, varied: str, values: Sequence[float], confidence: float = 0.95, failed: int = 0
    ) -> SpreadSummary:
        """Summarise ``values`` (at least one, all finite).

        Args:
            metric: The metric's name.
            varied: What varied across the values (a source, ``"data+train"``, ``"all"``).
            values: The metric's value for each seed.
            confidence: Confidence level of the interval, in ``(0, 1)``.
            failed: Seeds of the sweep without a value (reported, not used).

        Returns:
            The summary.

        Raises:
            ValueError: If ``values`` is empty or holds a NaN or an infinity, or ``confidence`` is
                not in ``(0, 1)``.

        Example:
            >>> SpreadSummary.of("acc", "init", [0.5, 0.5]).std
            0.0
        """
        n = len(values)
        if n == 0:
            raise ValueError(f"SpreadSummary: values of {metric!r} must not be empty")
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise ValueError(
                    f"SpreadSummary: values of {metric!r} must be finite, got {v!r} at index {i}"
                )
        if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
            raise ValueError(f"SpreadSummary: confidence must be in (0, 1), got {confidence!r}")
        if min(values) == max(values):  # no spread: exactly 0 (a rounded mean would leave ~1e-16)
            mean, std = float(values[0]), (0.0 if n > 1 else math.nan)
        else:
            mean = math.fsum(values) / n
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        low, high = std_interval(std, n, confidence)
        return cls(metric, varied, n, mean, std, low, high, float(confidence), int(failed))


def _label(vary: tuple[str, ...]) -> str:
    return "all" if vary == SOURCES else "+".join(vary)


@dataclass(frozen=True)
class VarianceBySource:
    """Sweeps that each vary some sources of randomness, and the spread of every metric in each.

    ``sweeps`` maps a label (``"init"``, ``"data"``, ``"train"``, ``"data+train"``, ``"all"``) to
    the :class:`~lightning_regkit.SweepResult` of the sweep that varied those sources.
    ``str(result)`` is the table: for each metric and each sweep, ``n``, mean, std and the std's
    confidence interval; the ``all`` row is the spread with every source varying, next to (not
    split into) the per-source rows.

    Example:
        >>> from lightning_regkit.sweep import SeedResult
        >>> def sweep(values):
        ...     return SweepResult([SeedResult(i, {"acc": v}) for i, v in enumerate(values)])
        >>> table = VarianceBySource({"init": sweep([0.5, 0.5, 0.5]), "all": sweep([0.4, 0.5, 0.6])})
        >>> table.spread("acc", "all").std
        0.09999999999999998
        >>> print(table)
        metric  varied  n  mean  std  std ci95 low  std ci95 high
        ------  ------  -  ----  ---  ------------  -------------
        acc     init    3  0.5   0    0             0
        acc     all     3  0.5   0.1  0.0520658     0.628473
    """

    sweeps: Mapping[str, SweepResult]
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not isinstance(self.sweeps, Mapping) or not self.sweeps:
            raise ValueError(f"VarianceBySource: sweeps must be a non-empty mapping, got {self.sweeps!r}")
        for label, sweep in self.sweeps.items():
            if not isinstance(label, str) or not isinstance(sweep, SweepResult):
                raise TypeError(
                    f"VarianceBySource: sweeps must map labels (str) to SweepResult, got {label!r}: "
                    f"{type(sweep).__name__}"
                )
        c = self.confidence
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 < c < 1:
            raise ValueError(f"VarianceBySource: confidence must be in (0, 1), got {c!r}")

    @property
    def labels(self) -> list[str]:
        """The sweeps' labels, in order (the rows of each metric)."""
        return list(self.sweeps)

    @property
    def metric_names(self) -> list[str]:
        """Every metric returned in any sweep, in first-seen order."""
        names: dict[str, None] = {}
        for sweep in self.sweeps.values():
            names.update(dict.fromkeys(sweep.metric_names))
        return list(names)

    def spread(self, metric: str, varied: str) -> SpreadSummary | None:
        """The spread of ``metric`` in the sweep labelled ``varied`` (None if no seed has a value).

        Args:
            metric: A metric name.
            varied: A sweep's label (see :attr:`labels`).

        Returns:
            The :class:`SpreadSummary`, or None.

        Raises:
            KeyError: If there is no sweep with that label or no such metric.
        """
        if varied not in self.sweeps:
            raise KeyError(f"VarianceBySource: no sweep {varied!r}; the sweeps are {self.labels}")
        if metric not in self.metric_names:
            raise KeyError(f"VarianceBySource: no metric {metric!r}; the metrics are {self.metric_names}")
        sweep = self.sweeps[varied]
        values = [
            r.metrics[metric]
            for r in sweep.results
            if r.ok and metric in r.metrics and math.isfinite(r.metrics[metric])
        ]
        if not values:
            return None
        return SpreadSummary.of(metric, varied, values, self.confidence, len(sweep.results) - len(values))

    def rows(self, precise: bool = False) -> list[list[str]]:
        """Header and one row per (metric, sweep): metric, varied, n, mean, std, std CI low, high.

        Args:
            precise: Write floats with ``repr`` (round-trip exact) instead of 6 significant digits.

        Returns:
            The table as strings; a ``failed`` column is added when some seed failed.
        """
        pct = f"{round(self.confidence * 100):d}"
        spreads = [(m, v, self.spread(m, v)) for m in self.metric_names for v in self.labels]
        any_failed = any(s is None or s.failed for _, _, s in spreads) or any(
            s.failures for s in self.sweeps.values()
        )
        head = ["metric", "varied", "n", "mean", "std", f"std ci{pct} low", f"std ci{pct} high"]
        out = [head + (["failed"] if any_failed else [])]
        for metric, varied, s in spreads:
            if s is None:
                cells = [metric, varied, "0", "", "", "", ""]
                failed = len(self.sweeps[varied].results)
            else:
                nums = (s.mean, s.std, s.std_ci_low, s.std_ci_high)
                cells = [metric, varied, str(s.n), *(_fmt(v, precise) for v in nums)]
                failed = s.failed
            out.append(cells + ([str(failed)] if any_failed else []))
        return out

    def table(self) -> str:
        """The rows as an aligned plain-text table.

        Returns:
            The table.
        """
        rows = self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def markdown(self, digits: int = 4) -> str:
        """The table in Markdown, the std with its interval in one cell: ``0.0123 [0.0081, 0.0254]``.

        Args:
            digits: Decimal places.

        Returns:
            A Markdown table with one row per sweep and one column per metric.

        Example:
            >>> from lightning_regkit.sweep import SeedResult
            >>> sweep = SweepResult([SeedResult(i, {"acc": v}) for i, v in enumerate([0.4, 0.5, 0.6])])
            >>> print(VarianceBySource({"all": sweep}).markdown(3))
            | varied | n | std of acc (95% CI) |
            |---|---:|---:|
            | all | 3 | 0.100 [0.052, 0.628] |
        """
        pct = f"{round(self.confidence * 100):d}"
        names = self.metric_names
        lines = [
            "| varied | n | " + " | ".join(f"std of {m} ({pct}% CI)" for m in names) + " |",
            "|---|---:|" + "---:|" * len(names),
        ]
        for varied in self.labels:
            cells = []
            ns = set()
            for m in names:
                s = self.spread(m, varied)
                if s is None:
                    cells.append("")
                    continue
                ns.add(s.n)
                cells.append(f"{s.std:.{digits}f} [{s.std_ci_low:.{digits}f}, {s.std_ci_high:.{digits}f}]")
            n = "/".join(str(k) for k in sorted(ns))
            lines.append(f"| {varied} | {n} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_csv(self, path: str | Path | None = None) -> str:
        """Write the table as CSV (floats at full precision) to ``path`` (if given); return the text.

        Args:
            path: File to write, or ``None`` to only return the text.

        Returns:
            The CSV text.
        """
        return write_csv(self.rows(precise=True), path)

    def plot(
        self, metrics: Sequence[str] | None = None, ax: Any = None, labels: Sequence[str] | None = None
    ) -> Any:
        """Bar chart of the std of each metric per sweep, with the confidence interval as whiskers.

        Args:
            metrics: The metrics to draw, one bar per sweep each (grouped); default every metric.
            ax: A matplotlib ``Axes`` to draw into; default a new figure's.
            labels: Legend labels of the metrics (default their names).

        Returns:
            The ``Axes``.
        """
        import matplotlib.pyplot as plt

        names = list(metrics) if metrics is not None else self.metric_names
        shown = list(labels) if labels is not None else names
        if len(shown) != len(names):
            raise ValueError(f"VarianceBySource.plot: labels must name each metric, got {shown} for {names}")
        if ax is None:
            _, ax = plt.subplots(figsize=(6.5, 3.8))
        width = 0.8 / max(len(names), 1)
        for k, (metric, label) in enumerate(zip(names, shown, strict=True)):
            xs, heights, lows, highs = [], [], [], []
            for i, varied in enumerate(self.labels):
                s = self.spread(metric, varied)
                if s is None or math.isnan(s.std):
                    continue
                xs.append(i + (k - (len(names) - 1) / 2) * width)
                heights.append(s.std)
                lows.append(s.std - s.std_ci_low)
                highs.append(s.std_ci_high - s.std)
            ax.bar(xs, heights, width * 0.9, yerr=[lows, highs], capsize=3, label=label)
            for x, h in zip(xs, heights, strict=True):
                if h == 0.0:  # an empty bar: say that it is an exact 0, not a missing one
                    ax.annotate(
                        "0", (x, 0.0), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7
                    )
        ax.set_xticks(range(len(self.labels)))
        ax.set_xticklabels(
            [f"{v}\n(all sources)" if v == "all" else f"{v}\n(only this varies)" for v in self.labels]
        )
        pct = round(self.confidence * 100)
        ax.set_ylabel(f"std across seeds ({pct}% CI)")
        ax.grid(axis="y", alpha=0.3)
        if len(names) > 1 or labels is not None:
            ax.legend(fontsize=8)
        return ax


def _fmt(value: float, precise: bool) -> str:
    if math.isnan(value):
        return ""
    return repr(value) if precise else f"{value:.6g}"


# ----------------------------------------------------------------------------- sweeps
def variance_by_source(
    train_fn: Callable[[SourceSeeds], Mapping[str, Any]],
    seeds: Iterable[int],
    sources: Iterable[str | tuple[str, ...]] = SOURCES,
    *,
    include_all: bool = True,
    map: Callable[..., Iterable[Any]] | concurrent.futures.Executor | multiprocessing.pool.Pool | None = None,
    confidence: float = 0.95,
    fixed: int = 0,
    results: str | os.PathLike[str] | None = None,
) -> VarianceBySource:
    """Run one seed sweep per source of randomness (and one with all varying); tabulate the spread.

    For each entry of ``sources`` (a source or a tuple of sources) this runs
    ``seed_sweep(train_fn, seeds, vary=entry, fixed=fixed, map=map)``, so ``train_fn`` receives a
    :class:`~lightning_regkit.sources.SourceSeeds` (pass it on as ``SeedEverything(**seeds)``):
    the varied sources change from seed to seed, the others keep the seeds derived from ``fixed``.
    With ``include_all`` a last sweep varies every source (its seeds are the run seeds
    themselves). The sweeps run one after the other, each through ``map``.

    Args:
        train_fn: ``SourceSeeds -> {metric: number}``; picklable for a process pool.
        seeds: The sweep seeds (distinct ints in ``[0, 2**32 - 1]``), the same for every sweep.
        sources: The sweeps: sources or tuples of sources, e.g. ``("init", "data", "train")``.
        include_all: Add the sweep that varies every source (label ``"all"``).
        map: What runs the seeds of each sweep (see :func:`~lightning_regkit.seed_sweep`).
        confidence: Confidence level of the intervals, in ``(0, 1)``.
        fixed: The seed the fixed sources derive from.
        results: A folder: each sweep writes its results, as they arrive, to
            ``<folder>/vary-<label>.jsonl`` and resumes from it (see ``seed_sweep(results=)``).

    Returns:
        A :class:`VarianceBySource`; ``print`` it for the table, ``.plot()`` for the figure.

    Raises:
        ValueError: If ``sources`` is empty or names something that is not a source, or two
            entries vary the same sources; and whatever :func:`~lightning_regkit.seed_sweep` raises.

    Example:
        >>> def train(seeds):  # a toy run: its metric depends on the init and train seeds only
        ...     return {"acc": 0.9 + (seeds.init % 7) / 1000 + (seeds.train % 3) / 1000}
        >>> table = variance_by_source(train, seeds=range(6))
        >>> table.labels
        ['init', 'data', 'train', 'all']
        >>> table.spread("acc", "data").std  # the data seed changes nothing here
        0.0
    """
    if isinstance(sources, str):
        sources = [sources]
    entries = [parse_vary(s, owner="variance_by_source") for s in sources]
    if not entries and not include_all:
        raise ValueError("variance_by_source: sources must not be empty")
    if not isinstance(include_all, bool):
        raise TypeError(f"variance_by_source: include_all must be a bool, got {include_all!r}")
    if include_all and SOURCES not in entries:
        entries.append(SOURCES)
    labels = [_label(e) for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"variance_by_source: sources must differ, got {labels}")
    seed_list = list(seeds)
    folder = None if results is None else Path(os.fspath(results))
    if folder is not None and folder.exists() and not folder.is_dir():
        raise ValueError(f"variance_by_source: results must be a folder, got the file {str(folder)!r}")
    sweeps: dict[str, SweepResult] = {}
    for vary, label in zip(entries, labels, strict=True):
        path = None if folder is None else folder / f"vary-{label}.jsonl"
        sweeps[label] = seed_sweep(train_fn, seed_list, map, confidence, results=path, vary=vary, fixed=fixed)
    return VarianceBySource(sweeps, confidence)
