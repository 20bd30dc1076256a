"""``compare``: is run A better than run B? Bouthillier et al.'s test over paired seeds.

Bouthillier et al., "Accounting for Variance in Machine Learning Benchmarks" (MLSys 2021), recommend
comparing two learning pipelines by the *probability of outperforming*: over ``N`` pairs of runs
that share everything random (the same seed for A and B in each pair),

    ``P(A > B) = (1/N) * sum_i 1[a_i > b_i]``                       (their Eq. 9, Appendix C.4)

with a percentile-bootstrap confidence interval ``[CI_min, CI_max]`` (Appendix C.5: resample the
``N`` pairs with replacement ``K`` times, take the ``alpha/2`` and ``1 - alpha/2`` percentiles of the
``K`` estimates). The decision (Appendix C.6):

- ``CI_min <= 0.5``: not statistically significant; the result could be noise alone.
- ``CI_max <= gamma``: not statistically meaningful (even if significant).
- ``CI_min > 0.5`` and ``CI_max > gamma``: significant and meaningful: A is better than B.

``gamma = 0.75`` is their recommended threshold (Section 4.2, Appendix I); ``alpha = 0.05``.

**How many pairs** (their Appendix C.3): the estimate of ``P(A > B)`` is a Mann-Whitney statistic
(Perme & Manevski, 2019), so they size it with Noether's (1987) method. The paper's formula is an
image that the stored text we could read does not contain, so what is implemented here is Noether's
sample size for the Mann-Whitney test with two equal groups, per group:

    ``N = ceil( ((z_{1-alpha} + z_{power}) / (sqrt(6) * (gamma - 1/2)))**2 )``

(``z_q`` the standard normal quantile, ``alpha = 1 - confidence``, ``power = 1 - beta``). With the
paper's settings (``gamma = 0.75``, ``alpha = beta = 0.05``) it gives 29, the number the paper states
("29 trainings"), and 722 for ``gamma = 0.55`` where the paper states "more than 700 trainings below
0.55"; the tests check both. Below that many pairs the test's rate of false negatives is not
controlled (and a percentile bootstrap over a handful of pairs is unreliable), so :class:`Comparison`
says the comparison is undecided and how many more pairs it needs.

Ties (``a_i == b_i``, common with accuracies on small test sets) count 1/2 by default, the
Mann-Whitney convention; ``ties="strict"`` counts only strict wins, as the authors' simulation code
does (``(pa > pb).mean()``).

Alongside, the mean paired difference ``A - B`` (in the metric's units) with its Student-t interval,
as :class:`~lightning_regkit.sweep.MetricSummary` computes it. Pure Python and NumPy; no Lightning
import.
"""

from __future__ import annotations

import math
import numbers
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lightning_regkit.sweep import MetricSummary, SweepResult

__all__ = ["Comparison", "compare", "pairs_needed"]

Ties = Literal["half", "strict"]
_TIES: tuple[str, ...] = ("half", "strict")


# ----------------------------------------------------------------------------- power analysis
def _check_probability(owner: str, name: str, value: Any, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low < float(value) < high:
        raise ValueError(f"{owner}: {name} must be a number in {what}, got {value!r}")
    return float(value)


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def pairs_needed(gamma: float = 0.75, confidence: float = 0.95, power: float = 0.95) -> int:
    """Number of paired runs needed to detect ``P(A > B) >= gamma`` (Noether's sample size, see module).

    ``N = ceil(((z_{1-alpha} + z_{power}) / (sqrt(6) * (gamma - 1/2)))**2)`` with
    ``alpha = 1 - confidence``: Noether's (1987) per-group sample size for a one-sided Mann-Whitney
    test at level ``alpha`` with power ``power`` against ``P(A > B) = gamma``. It reproduces the
    numbers Bouthillier et al. (2021, Appendix C.3) state: 29 for their settings, more than 700 for
    ``gamma = 0.55``.

    Args:
        gamma: The smallest ``P(A > B)`` that counts as a meaningful improvement, in ``(0.5, 1)``.
        confidence: ``1 - alpha``, in ``(0.5, 1)``.
        power: ``1 - beta``, the probability of detecting ``P(A > B) = gamma``, in ``(0.5, 1)``.

    Returns:
        The number of pairs (runs of A and of B, paired by seed).

    Raises:
        ValueError: If an argument is outside its range.

    Example:
        >>> pairs_needed()  # gamma 0.75, alpha 0.05, beta 0.05: the paper's 29
        29
        >>> pairs_needed(gamma=0.55)
        722
    """
    owner = "pairs_needed"
    gamma = _check_probability(owner, "gamma", gamma, 0.5, 1.0, "(0.5, 1)")
    confidence = _check_probability(owner, "confidence", confidence, 0.5, 1.0, "(0.5, 1)")
    power = _check_probability(owner, "power", power, 0.5, 1.0, "(0.5, 1)")
    normal = statistics.NormalDist()
    z = normal.inv_cdf(confidence) + normal.inv_cdf(power)
    return max(1, math.ceil((z / (math.sqrt(6.0) * (gamma - 0.5))) ** 2))


# ----------------------------------------------------------------------------- result
@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare`: ``P(A > B)`` with its bootstrap CI, the mean difference, a verdict.

    ``significant`` is ``p_ci_low > 0.5`` and ``meaningful`` is ``p_ci_high > gamma`` (Bouthillier
    et al. 2021, Appendix C.6); both are computed whatever the number of pairs, but the verdict
    counts only when ``enough_pairs``: with fewer than ``pairs_needed`` pairs the comparison is
    undecided (``decided`` is False) and ``more_pairs_needed`` says how many more paired seeds to
    run. ``mean_diff`` is ``mean(A - B)`` in the metric's units (positive: A is higher), with a
    Student-t interval over the paired differences (NaN with one pair).

    Example:
        >>> c = compare([0.9, 0.8, 0.7], [0.8, 0.8, 0.6], "acc", higher_is_better=True)
        >>> c.n, round(c.p_a_better, 4), c.decided, c.more_pairs_needed
        (3, 0.8333, False, 26)
    """

    metric: str
    higher_is_better: bool
    seeds: tuple[int, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]
    p_a_better: float
    p_ci_low: float
    p_ci_high: float
    mean_diff: float
    diff_ci_low: float
    diff_ci_high: float
    gamma: float
    confidence: float
    power: float
    pairs_needed: int
    n_bootstrap: int
    ties: str
    dropped: dict[int, str] = field(default_factory=dict, hash=False)

    @property
    def n(self) -> int:
        """The number of pairs compared."""
        return len(self.seeds)

    @property
    def significant(self) -> bool:
        """The CI's lower bound is above 0.5: the result is not explained by noise alone."""
        return self.p_ci_low > 0.5

    @property
    def meaningful(self) -> bool:
        """The CI's upper bound is above ``gamma``: ``P(A > B) >= gamma`` is not ruled out."""
        return self.p_ci_high > self.gamma

    @property
    def enough_pairs(self) -> bool:
        """At least ``pairs_needed`` pairs: the power analysis is satisfied."""
        return self.n >= self.pairs_needed

    @property
    def decided(self) -> bool:
        """Whether the verdict counts (same as ``enough_pairs``)."""
        return self.enough_pairs

    @property
    def more_pairs_needed(self) -> int:
        """How many more paired seeds (runs of both A and B) the power analysis asks for."""
        return max(0, self.pairs_needed - self.n)

    @property
    def a_better(self) -> bool:
        """Decided, significant and meaningful: A is better than B."""
        return self.decided and self.significant and self.meaningful

    @property
    def verdict(self) -> str:
        """One sentence: the conclusion, or why there is none."""
        if not self.decided:
            return (
                f"too few pairs to decide: {self.n} paired seed{_s(self.n)}, the power "
                f"analysis asks for {self.pairs_needed}; run {self.more_pairs_needed} more "
                f"seed{_s(self.more_pairs_needed)} of both A and B"
            )
        if self.p_ci_high < 0.5:
            return "A is not better than B; B is significantly better than A (see compare(B, A))"
        if not self.significant:
            return "no conclusion: the CI of P(A > B) includes 0.5 (not significant)"
        if not self.meaningful:
            return f"A beats B more often than not, but not meaningfully (CI high <= gamma {self.gamma:g})"
        return "A is better than B (significant and meaningful)"

    def summary(self) -> str:
        """A few lines to paste: pairs, ``P(A > B)`` and its CI, the mean difference, the verdict.

        Returns:
            The text.
        """
        pct = f"{self.confidence * 100:g}%"
        direction = "higher" if self.higher_is_better else "lower"
        dropped = ""
        if self.dropped:
            listed = "; ".join(f"seed {s}: {why}" for s, why in sorted(self.dropped.items())[:5])
            more = f"; {len(self.dropped) - 5} more" if len(self.dropped) > 5 else ""
            dropped = f"\ndropped {len(self.dropped)} seed{_s(len(self.dropped))}: {listed}{more}"
        ties = "ties count 1/2" if self.ties == "half" else "ties count 0"
        df = f"{self.n - 1} df" if self.n > 1 else "needs 2 pairs"
        return (
            f"compare {self.metric!r} ({direction} is better): {self.n} paired seed{_s(self.n)}"
            f"{dropped}\n"
            f"P(A > B) = {self.p_a_better:.4g}  {pct} CI [{self.p_ci_low:.4g}, {self.p_ci_high:.4g}]"
            f"  (percentile bootstrap, {self.n_bootstrap} resamples, {ties})\n"
            f"mean(A - B) = {self.mean_diff:.6g}  {pct} CI [{self.diff_ci_low:.6g}, {self.diff_ci_high:.6g}]"
            f"  (Student t, {df})\n"
            f"significant (CI low > 0.5): {'yes' if self.significant else 'no'}; "
            f"meaningful (CI high > gamma {self.gamma:g}): {'yes' if self.meaningful else 'no'}; "
            f"pairs needed: {self.pairs_needed} (alpha {1 - self.confidence:.3g}, power {self.power:g})\n"
            f"verdict: {self.verdict}"
        )

    def __str__(self) -> str:
        return self.summary()


# ----------------------------------------------------------------------------- inputs
def _number(value: Any) -> float | None:
    """``value`` as a float if it is a real number (or a one-element tensor/array), else None."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, numbers.Real):
        try:
            value = item()
        except (ValueError, RuntimeError):
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _by_seed(name: str, results: Any, metric: str | None) -> tuple[dict[int, float], dict[int, str]]:
    """Values by seed (finite, successful) and the reason each other seed is left out."""
    values: dict[int, float] = {}
    left_out: dict[int, str] = {}
    if isinstance(results, SweepResult):
        if metric is None:
            raise ValueError(
                f"compare: metric must name one of {results.metric_names} of {name} (a SweepResult), got None"
            )
        if metric not in results.metric_names:
            raise ValueError(f"compare: metric {metric!r} is not in {name}: it has {results.metric_names}")
        for r in results.results:
            if r.seed in values or r.seed in left_out:
                raise ValueError(f"compare: {name} has seed {r.seed} more than once")
            if not r.ok:
                left_out[r.seed] = f"failed in {name[-1].upper()} ({r.error})"
            elif metric not in r.metrics:
                left_out[r.seed] = f"no {metric!r} in {name[-1].upper()}"
            elif not math.isfinite(r.metrics[metric]):
                left_out[r.seed] = f"{metric!r} is {r.metrics[metric]!r} in {name[-1].upper()}"
            else:
                values[r.seed] = float(r.metrics[metric])
        return values, left_out
    if isinstance(results, Mapping):
        for seed, raw in results.items():
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
                raise TypeError(f"compare: {name}'s keys must be int seeds, got {seed!r}")
            value = _number(raw)
            if value is None:
                raise TypeError(f"compare: {name}[{seed!r}] must be a real number, got {raw!r}")
            if math.isfinite(value):
                values[int(seed)] = value
            else:
                left_out[int(seed)] = f"{value!r} in {name[-1].upper()}"
        return values, left_out
    raise AssertionError(f"compare: {name} is neither a SweepResult nor a mapping")  # _pairs checked it


def _as_sequence(results: Any) -> list[Any] | None:
    if isinstance(results, np.ndarray):
        return list(results.tolist()) if results.ndim == 1 else None
    if isinstance(results, Sequence) and not isinstance(results, (str, bytes)):
        return list(results)
    return None


def _pairs(
    results_a: Any, results_b: Any, metric: str | None
) -> tuple[list[int], list[float], list[float], dict[int, str]]:
    seq_a, seq_b = _as_sequence(results_a), _as_sequence(results_b)
    for name, results, seq in (("results_a", results_a, seq_a), ("results_b", results_b, seq_b)):
        if seq is None and not isinstance(results, (SweepResult, Mapping)):
            shape = f" of shape {results.shape}" if isinstance(results, np.ndarray) else ""
            raise TypeError(
                f"compare: {name} must be a SweepResult, a mapping {{seed: value}} or a sequence of values "
                f"(a 1-D array included), got {type(results).__name__}{shape}"
            )
    if (seq_a is None) != (seq_b is None):
        positional, other = ("results_a", "results_b") if seq_a is not None else ("results_b", "results_a")
        raise TypeError(
            f"compare: {positional} is a sequence (paired by position) but {other} is a "
            f"{type(results_a if positional == 'results_b' else results_b).__name__} (paired by seed); "
            "give both as sequences, or both with seeds (SweepResult or {seed: value})"
        )
    if seq_a is not None and seq_b is not None:
        if len(seq_a) != len(seq_b):
            raise ValueError(
                f"compare: results_a and results_b are paired by position and must have the same length, "
                f"got {len(seq_a)} and {len(seq_b)}"
            )
        return _pairs(dict(enumerate(seq_a)), dict(enumerate(seq_b)), metric)
    a, left_a = _by_seed("results_a", results_a, metric)
    b, left_b = _by_seed("results_b", results_b, metric)
    dropped: dict[int, str] = {}
    for seed in sorted(set(a) | set(b) | set(left_a) | set(left_b)):
        reasons = [r for r in (left_a.get(seed), left_b.get(seed)) if r is not None]
        if seed not in a and seed not in left_a:
            reasons.append("missing in A")
        if seed not in b and seed not in left_b:
            reasons.append("missing in B")
        if reasons:
            dropped[seed] = " and ".join(reasons)
    seeds = sorted(set(a) & set(b))
    return seeds, [a[s] for s in seeds], [b[s] for s in seeds], dropped


# ----------------------------------------------------------------------------- compare
def compare(
    results_a: Any,
    results_b: Any,
    metric: str | None = None,
    *,
    higher_is_better: bool,
    gamma: float = 0.75,
    confidence: float = 0.95,
    power: float = 0.95,
    n_bootstrap: int = 10_000,
    ties: Ties = "half",
    rng: int | np.random.Generator = 0,
) -> Comparison:
    """Compare run A with run B over paired seeds: ``P(A > B)``, its bootstrap CI, the mean difference.

    Bouthillier et al.'s (MLSys 2021) test: A is better than B when the CI of ``P(A > B)`` lies above
    0.5 at its low end (significant) and reaches above ``gamma`` at its high end (meaningful), with
    at least as many pairs as their power analysis asks for (:func:`pairs_needed`; 29 with the
    defaults). See the module's docstring for the formulas.

    Args:
        results_a: A's results: a :class:`~lightning_regkit.SweepResult`, a mapping
            ``{seed: value}`` or a sequence of values (1-D array included). Results with seeds are
            paired by seed: only seeds present, successful and finite in both count, and the others
            are listed in ``Comparison.dropped`` with the reason. Sequences are paired by position
            (both must be sequences of the same length; a NaN or infinite value drops its pair).
        results_b: B's results, in the same form.
        metric: The metric to compare; required for a ``SweepResult``, a label otherwise.
        higher_is_better: Whether a higher value is better (accuracy: True; loss, error: False).
            Required: there is no safe guess.
        gamma: The smallest ``P(A > B)`` that counts as meaningful, in ``(0.5, 1)``; 0.75 is the
            paper's recommendation.
        confidence: Confidence level of both intervals, and ``1 - alpha`` of the power analysis, in
            ``(0.5, 1)``.
        power: ``1 - beta`` of the power analysis, in ``(0.5, 1)``; the paper recommends 0.95.
        n_bootstrap: Bootstrap resamples of the pairs, an int in ``[100, 10_000_000]``.
        ties: How a pair with ``a == b`` counts: ``"half"`` (1/2, the Mann-Whitney convention) or
            ``"strict"`` (0: only strict wins count, as in the authors' simulation code).
        rng: Seed (an int ``>= 0``) or ``numpy.random.Generator`` of the bootstrap. The resample
            indices are ``rng.integers(0, n, size=(n_bootstrap, n))``; the same seed gives the same
            interval.

    Returns:
        A :class:`Comparison`; ``print`` it for a summary.

    Raises:
        TypeError: If the results are not of the forms above, hold a value that is not a real
            number, or ``higher_is_better`` is not a bool, or ``rng`` is neither an int nor a
            ``Generator``.
        ValueError: If no seed is usable in both, sequences differ in length, ``metric`` is missing
            from a ``SweepResult``, a seed repeats, or a number is outside its range.

    Example:
        >>> a = {seed: (800 + seed % 7) / 1000 for seed in range(40)}  # {seed: accuracy}
        >>> b = {seed: (799 + seed % 5) / 1000 for seed in range(40)}
        >>> c = compare(a, b, "val_acc", higher_is_better=True)
        >>> c.n, c.p_a_better, (c.p_ci_low, c.p_ci_high), c.a_better
        (40, 0.8, (0.6875, 0.9125), True)
        >>> print(c.verdict)
        A is better than B (significant and meaningful)
    """
    if not isinstance(higher_is_better, bool):
        raise TypeError(f"compare: higher_is_better must be a bool, got {higher_is_better!r}")
    if metric is not None and not isinstance(metric, str):
        raise TypeError(f"compare: metric must be a str or None, got {metric!r}")
    gamma = _check_probability("compare", "gamma", gamma, 0.5, 1.0, "(0.5, 1)")
    confidence = _check_probability("compare", "confidence", confidence, 0.5, 1.0, "(0.5, 1)")
    power = _check_probability("compare", "power", power, 0.5, 1.0, "(0.5, 1)")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral):
        raise TypeError(f"compare: n_bootstrap must be an int in [100, 10_000_000], got {n_bootstrap!r}")
    if not 100 <= n_bootstrap <= 10_000_000:
        raise ValueError(f"compare: n_bootstrap must be an int in [100, 10_000_000], got {n_bootstrap!r}")
    if not isinstance(ties, str) or ties not in _TIES:
        raise ValueError(f"compare: ties must be one of {list(_TIES)}, got {ties!r}")
    if isinstance(rng, np.random.Generator):
        generator = rng
    elif isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"compare: rng must be an int >= 0 or a numpy.random.Generator, got {rng!r}")
        generator = np.random.default_rng(int(rng))
    else:
        raise TypeError(f"compare: rng must be an int >= 0 or a numpy.random.Generator, got {rng!r}")

    seeds, a, b, dropped = _pairs(results_a, results_b, metric)
    if not seeds:
        shown = "; ".join(f"seed {s}: {why}" for s, why in list(dropped.items())[:5]) or "both are empty"
        raise ValueError(f"compare: no seed is usable in both results_a and results_b ({shown})")

    n = len(seeds)
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    wins = (va > vb) if higher_is_better else (va < vb)
    scores = wins.astype(np.float64) + (0.5 * (va == vb) if ties == "half" else 0.0)
    p_a_better = math.fsum(scores.tolist()) / n
    idx = generator.integers(0, n, size=(int(n_bootstrap), n))
    boot = scores[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])

    diff = MetricSummary.of(f"{metric or 'value'} (A - B)", (va - vb).tolist(), confidence)
    return Comparison(
        metric=metric if metric is not None else "value",
        higher_is_better=higher_is_better,
        seeds=tuple(seeds),
        a=tuple(a),
        b=tuple(b),
        p_a_better=p_a_better,
        p_ci_low=float(low),
        p_ci_high=float(high),
        mean_diff=diff.mean,
        diff_ci_low=diff.ci_low,
        diff_ci_high=diff.ci_high,
        gamma=gamma,
        confidence=confidence,
        power=power,
        pairs_needed=pairs_needed(gamma, confidence, power),
        n_bootstrap=int(n_bootstrap),
        ties=ties,
        dropped=dropped,
    )
