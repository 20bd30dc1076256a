"""``compare``: P(A > B) over paired seeds, its percentile bootstrap, the mean difference, the power analysis.

Reference values come from outside the module: P(A > B) counted by hand, the bootstrap redone as
Bouthillier et al. (2021, Appendix C.5) describe it (K groups of N pairs drawn with replacement, one
at a time, the alpha/2 and 1 - alpha/2 percentiles) with the same generator, the Student-t interval
from scipy, the sample size from scipy's normal quantiles and the numbers the paper states.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import re
from typing import Any

import numpy as np
import pytest
import scipy.stats
from helpers import ROOT

from lightning_regkit.compare import Comparison, compare, pairs_needed
from lightning_regkit.sweep import SeedResult, SweepResult

A5 = [3.0, 2.0, 2.0, 5.0, 1.0]
B5 = [1.0, 2.0, 3.0, 4.0, 1.0]  # A wins pairs 0 and 3, B wins pair 2, pairs 1 and 4 are ties


# ----------------------------------------------------------------------------- P(A > B)
@pytest.mark.parametrize(
    ("higher_is_better", "ties", "expected"),
    [
        (True, "half", (1 + 0.5 + 0 + 1 + 0.5) / 5),  # 0.6
        (True, "strict", 2 / 5),
        (False, "half", (0 + 0.5 + 1 + 0 + 0.5) / 5),  # lower is better: A wins only pair 2
        (False, "strict", 1 / 5),
    ],
)
def test_p_a_better_counted_by_hand(higher_is_better: bool, ties: str, expected: float) -> None:
    c = compare(A5, B5, "acc", higher_is_better=higher_is_better, ties=ties)  # type: ignore[arg-type]
    assert c.p_a_better == expected
    assert c.n == 5 and c.seeds == (0, 1, 2, 3, 4) and c.a == tuple(A5) and c.b == tuple(B5)


def test_direction_flips_p_without_ties() -> None:
    a, b = [0.3, 0.9, 0.5, 0.7], [0.2, 0.8, 0.6, 0.1]
    up = compare(a, b, higher_is_better=True)
    down = compare(a, b, higher_is_better=False)
    assert (up.p_a_better, down.p_a_better) == (0.75, 0.25)
    assert up.mean_diff == down.mean_diff  # A - B in the metric's units, whatever the direction


# ----------------------------------------------------------------------------- bootstrap
def paper_bootstrap(
    a: list[float], b: list[float], confidence: float, k: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Appendix C.5, written out: K groups of N pairs drawn with replacement, P(A > B) of each group."""
    n = len(a)
    stats = []
    for _ in range(k):
        idx = rng.integers(0, n, size=n)
        stats.append(sum(1.0 if a[i] > b[i] else 0.5 if a[i] == b[i] else 0.0 for i in idx) / n)
    alpha = 1 - confidence
    low, high = np.percentile(np.sort(stats), [alpha / 2 * 100, (1 - alpha / 2) * 100])
    return float(low), float(high)


@pytest.mark.parametrize(("seed", "confidence", "k"), [(0, 0.95, 2000), (7, 0.9, 500), (123, 0.99, 1000)])
def test_bootstrap_ci_equals_the_papers_procedure_with_the_same_generator(
    seed: int, confidence: float, k: int
) -> None:
    values = np.random.default_rng(99)
    a = np.round(values.normal(0.80, 0.02, 23), 2).tolist()  # rounded: some ties
    b = np.round(values.normal(0.79, 0.02, 23), 2).tolist()
    assert any(x == y for x, y in zip(a, b, strict=True))
    expected = paper_bootstrap(a, b, confidence, k, np.random.default_rng(seed))
    by_int = compare(a, b, higher_is_better=True, confidence=confidence, n_bootstrap=k, rng=seed)
    generator = np.random.default_rng(seed)
    by_generator = compare(a, b, higher_is_better=True, confidence=confidence, n_bootstrap=k, rng=generator)
    assert (by_int.p_ci_low, by_int.p_ci_high) == expected
    assert (by_generator.p_ci_low, by_generator.p_ci_high) == expected
    assert by_int.p_ci_low <= by_int.p_a_better <= by_int.p_ci_high


def test_bootstrap_of_two_pairs_spans_everything() -> None:
    # one win, one loss: a resample is two wins, two losses or one of each: P* in {0, 0.5, 1}
    c = compare([1.0, 0.0], [0.0, 1.0], higher_is_better=True, n_bootstrap=1000)
    assert (c.p_a_better, c.p_ci_low, c.p_ci_high) == (0.5, 0.0, 1.0)


def test_same_rng_same_interval_and_a_generator_is_consumed() -> None:
    a, b = [0.1, 0.5, 0.3, 0.9, 0.4, 0.6], [0.2, 0.4, 0.3, 0.5, 0.6, 0.1]
    assert compare(a, b, higher_is_better=True, rng=3) == compare(a, b, higher_is_better=True, rng=3)
    g = np.random.default_rng(3)
    first = compare(a, b, higher_is_better=True, rng=g, n_bootstrap=100)
    second = compare(a, b, higher_is_better=True, rng=g, n_bootstrap=100)
    assert first == compare(a, b, higher_is_better=True, rng=3, n_bootstrap=100)
    assert second != first  # the generator moved on


# ----------------------------------------------------------------------------- mean difference
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_difference_ci_matches_scipy_t(confidence: float) -> None:
    a = [0.81, 0.79, 0.84, 0.80, 0.83, 0.78, 0.82]
    b = [0.80, 0.80, 0.81, 0.77, 0.82, 0.78, 0.79]
    d = np.array(a) - np.array(b)
    half = scipy.stats.t.ppf((1 + confidence) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    c = compare(a, b, "acc", higher_is_better=True, confidence=confidence)
    assert c.mean_diff == pytest.approx(d.mean(), abs=1e-15)
    assert c.diff_ci_low == pytest.approx(d.mean() - half, rel=1e-9)
    assert c.diff_ci_high == pytest.approx(d.mean() + half, rel=1e-9)


def test_one_pair_has_no_mean_difference_interval() -> None:
    c = compare({4: 0.9}, {4: 0.8}, "acc", higher_is_better=True)
    assert c.n == 1 and math.isnan(c.diff_ci_low) and math.isnan(c.diff_ci_high)
    assert "needs 2 pairs" in c.summary()


# ----------------------------------------------------------------------------- power analysis
def test_pairs_needed_reproduces_the_papers_numbers() -> None:
    # Appendix C.3: gamma 0.75, alpha = beta = 0.05 -> "29 trainings"; "more than 700 trainings below 0.55"
    assert pairs_needed(0.75, 0.95, 0.95) == 29
    assert pairs_needed(0.55, 0.95, 0.95) > 700
    assert pairs_needed(0.549, 0.95, 0.95) > pairs_needed(0.55, 0.95, 0.95)


@pytest.mark.parametrize(
    ("gamma", "confidence", "power"),
    [(0.75, 0.95, 0.95), (0.6, 0.95, 0.8), (0.9, 0.99, 0.9), (0.7, 0.9, 0.95)],
)
def test_pairs_needed_is_noethers_formula(gamma: float, confidence: float, power: float) -> None:
    z = scipy.stats.norm.ppf(confidence) + scipy.stats.norm.ppf(power)
    assert pairs_needed(gamma, confidence, power) == math.ceil(z**2 / (6 * (gamma - 0.5) ** 2))


# ----------------------------------------------------------------------------- too few seeds
def test_too_few_pairs_is_undecided_and_says_how_many_more() -> None:
    # five wins out of five: the bootstrap CI is [1, 1], significant and meaningful, yet undecided
    c = compare([0.9] * 5, [0.8] * 5, "acc", higher_is_better=True)
    assert (c.p_a_better, c.p_ci_low, c.p_ci_high) == (1.0, 1.0, 1.0)
    assert c.significant and c.meaningful
    assert (c.pairs_needed, c.enough_pairs, c.decided, c.more_pairs_needed, c.a_better) == (
        29,
        False,
        False,
        24,
        False,
    )
    expected = (
        "too few pairs to decide: 5 paired seeds, the power analysis asks for 29; "
        "run 24 more seeds of both A and B"
    )
    assert c.verdict == expected
    assert f"verdict: {expected}" in str(c)


def test_enough_pairs_decides() -> None:
    c = compare([0.9] * 29, [0.8] * 29, "acc", higher_is_better=True)
    assert (c.decided, c.more_pairs_needed, c.a_better) == (True, 0, True)
    assert c.verdict == "A is better than B (significant and meaningful)"
    one_short = compare([0.9] * 28, [0.8] * 28, "acc", higher_is_better=True)
    assert one_short.verdict.endswith("run 1 more seed of both A and B")


def test_a_looser_test_needs_fewer_pairs() -> None:
    c = compare([0.9] * 12, [0.8] * 12, "acc", higher_is_better=True, gamma=0.8, power=0.8)
    assert c.pairs_needed == pairs_needed(0.8, 0.95, 0.8) == 12 and c.a_better


@pytest.mark.parametrize(
    ("wins", "expected"),
    [
        (20, "no conclusion: the CI of P(A > B) includes 0.5 (not significant)"),
        (0, "A is not better than B; B is significantly better than A (see compare(B, A))"),
    ],
)
def test_verdicts_with_enough_pairs(wins: int, expected: str) -> None:
    n = 40
    a = [1.0] * wins + [0.0] * (n - wins)
    c = compare(a, [0.5] * n, higher_is_better=True)
    assert c.decided and c.verdict == expected


def test_significant_but_not_meaningful() -> None:
    # P(A > B) = 0.6 over 400 pairs: the CI is about [0.55, 0.65]: above 0.5, below gamma 0.75
    a = [1.0] * 240 + [0.0] * 160
    c = compare(a, [0.5] * 400, higher_is_better=True)
    assert c.significant and not c.meaningful and not c.a_better
    assert c.verdict == "A beats B more often than not, but not meaningfully (CI high <= gamma 0.75)"


def test_meaningful_is_the_upper_end_of_the_interval_as_in_the_paper() -> None:
    # Appendix C.6: meaningful when CI_max > gamma. P(A > B) = 0.7 < gamma over 200 pairs, CI about
    # [0.64, 0.76]: still meaningful, and significant, so A is better
    a = [1.0] * 140 + [0.0] * 60
    c = compare(a, [0.5] * 200, higher_is_better=True)
    assert c.p_a_better == 0.7 < c.gamma < c.p_ci_high
    assert c.significant and c.meaningful and c.a_better


# ----------------------------------------------------------------------------- pairing by seed
def sweep(records: list[SeedResult]) -> SweepResult:
    return SweepResult(records)


def test_pairing_by_seed_drops_missing_and_failed_seeds() -> None:
    a = sweep(
        [
            SeedResult(0, {"acc": 0.90, "loss": 0.3}),
            SeedResult(1, {"acc": 0.80, "loss": 0.4}),
            SeedResult(2, error="RuntimeError: CUDA out of memory"),
            SeedResult(3, {"acc": 0.85, "loss": 0.2}),
            SeedResult(4, {"loss": 0.1}),  # ran, but did not report acc
            SeedResult(5, {"acc": 0.70, "loss": 0.5}),
        ]
    )
    b = sweep(
        [
            SeedResult(6, {"acc": 0.99}),
            SeedResult(5, {"acc": 0.75}),
            SeedResult(3, {"acc": math.nan}, error="non-finite metric: 'acc' = nan"),
            SeedResult(2, {"acc": 0.60}),
            SeedResult(1, {"acc": 0.80}),
            SeedResult(0, {"acc": 0.85}),
            SeedResult(4, {"acc": 0.81}),
        ]
    )
    c = compare(a, b, "acc", higher_is_better=True)
    assert c.seeds == (0, 1, 5) and c.a == (0.90, 0.80, 0.70) and c.b == (0.85, 0.80, 0.75)
    assert c.p_a_better == (1 + 0.5 + 0) / 3
    assert c.dropped == {
        2: "failed in A (RuntimeError: CUDA out of memory)",
        3: "failed in B (non-finite metric: 'acc' = nan)",
        4: "no 'acc' in A",
        6: "missing in A",
    }
    text = c.summary()
    assert "dropped 4 seeds: seed 2: failed in A (RuntimeError: CUDA out of memory); seed 3:" in text
    # a plain mapping pairs with a SweepResult by seed; the order of the records does not matter
    as_mapping = {0: 0.85, 1: 0.80, 2: 0.60, 5: 0.75, 6: 0.99, 4: 0.81}
    shuffled = sweep(random.Random(0).sample(a.results, len(a.results)))
    assert compare(shuffled, as_mapping, "acc", higher_is_better=True).seeds == (0, 1, 5)
    assert compare(a, as_mapping, "acc", higher_is_better=True) == compare(
        shuffled, as_mapping, "acc", higher_is_better=True
    )


def test_mapping_non_finite_values_and_missing_seeds_are_dropped() -> None:
    c = compare(
        {0: 1.0, 1: math.nan, 2: 3.0, 7: 1.0}, {0: 0.0, 1: 1.0, 2: math.inf, 3: 1.0}, higher_is_better=False
    )
    assert c.seeds == (0,) and c.metric == "value"
    assert c.dropped == {1: "nan in A", 2: "inf in B", 3: "missing in A", 7: "missing in B"}


def test_sequences_pair_by_position_and_arrays_and_scalars_are_accepted() -> None:
    a = np.array([0.5, 0.7, math.nan, 0.9])
    b = [np.float32(0.25), 0.5, 0.1, np.float64(1.0)]
    c = compare(a, b, higher_is_better=True)
    assert c.seeds == (0, 1, 3) and c.dropped == {2: "nan in A"}
    assert c.a == (0.5, 0.7, 0.9) and c.b == (0.25, 0.5, 1.0)


def test_summary_is_a_few_readable_lines() -> None:
    a = {seed: (800 + seed % 7) / 1000 for seed in range(40)}
    b = {seed: (799 + seed % 5) / 1000 for seed in range(40)}
    c = compare(a, b, "val_acc", higher_is_better=True)
    assert isinstance(c, Comparison)
    assert str(c).splitlines() == [
        "compare 'val_acc' (higher is better): 40 paired seeds",
        "P(A > B) = 0.8  95% CI [0.6875, 0.9125]  (percentile bootstrap, 10000 resamples, ties count 1/2)",
        "mean(A - B) = 0.001875  95% CI [0.00112518, 0.00262482]  (Student t, 39 df)",
        "significant (CI low > 0.5): yes; meaningful (CI high > gamma 0.75): yes; pairs needed: 29 "
        "(alpha 0.05, power 0.95)",
        "verdict: A is better than B (significant and meaningful)",
    ]


# ----------------------------------------------------------------------------- bad arguments
OK_A, OK_B = [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]
RESULT = SweepResult([SeedResult(0, {"acc": 0.5}), SeedResult(1, {"acc": 0.6})])


def call(**overrides: Any) -> Comparison:
    kwargs: dict[str, Any] = {"results_a": OK_A, "results_b": OK_B, "higher_is_better": True}
    kwargs.update(overrides)
    return compare(**kwargs)


@pytest.mark.parametrize(
    ("overrides", "exc", "shown"),
    [
        ({"higher_is_better": 1}, TypeError, ["higher_is_better", "got 1"]),
        ({"higher_is_better": "auto"}, TypeError, ["higher_is_better", "'auto'"]),
        ({"metric": 3}, TypeError, ["metric", "got 3"]),
        ({"gamma": 0.5}, ValueError, ["gamma", "(0.5, 1)", "got 0.5"]),
        ({"gamma": 1.0}, ValueError, ["gamma", "got 1.0"]),
        ({"gamma": "0.75"}, ValueError, ["gamma", "'0.75'"]),
        ({"gamma": True}, ValueError, ["gamma", "got True"]),
        ({"confidence": 0.3}, ValueError, ["confidence", "(0.5, 1)", "got 0.3"]),
        ({"confidence": math.nan}, ValueError, ["confidence", "got nan"]),
        ({"power": 1.5}, ValueError, ["power", "got 1.5"]),
        ({"n_bootstrap": 10}, ValueError, ["n_bootstrap", "[100, 10_000_000]", "got 10"]),
        ({"n_bootstrap": 1000.0}, TypeError, ["n_bootstrap", "got 1000.0"]),
        ({"ties": "zero"}, ValueError, ["ties", "['half', 'strict']", "'zero'"]),
        ({"rng": -1}, ValueError, ["rng", "got -1"]),
        ({"rng": 1.5}, TypeError, ["rng", "got 1.5"]),
        ({"rng": np.random.RandomState(0)}, TypeError, ["rng", "numpy.random.Generator", "RandomState"]),
        ({"results_a": "0.1 0.2"}, TypeError, ["results_a", "got str"]),
        ({"results_b": None}, TypeError, ["results_b", "got NoneType"]),
        ({"results_b": np.zeros((3, 2))}, TypeError, ["results_b", "1-D array", "shape (3, 2)"]),
        ({"results_a": {"s1": 0.5}, "results_b": {0: 0.5}}, TypeError, ["results_a", "int seeds", "'s1'"]),
        (
            {"results_a": {0: "high"}, "results_b": {0: 0.5}},
            TypeError,
            ["results_a[0]", "real number", "'high'"],
        ),
        ({"results_a": [0.1, "x", 0.3]}, TypeError, ["results_a[1]", "'x'"]),
        ({"results_b": [0.1, 0.2]}, ValueError, ["same length", "got 3 and 2"]),
        ({"results_b": {0: 0.1}}, TypeError, ["results_a is a sequence", "results_b is a dict"]),
        ({"results_a": RESULT}, TypeError, ["results_b is a sequence", "results_a is a SweepResult"]),
        ({"results_a": RESULT, "results_b": RESULT}, ValueError, ["metric", "['acc']", "got None"]),
        ({"results_a": RESULT, "results_b": RESULT, "metric": "loss"}, ValueError, ["'loss'", "['acc']"]),
        ({"results_a": {0: 0.1}, "results_b": {1: 0.2}}, ValueError, ["no seed", "seed 0: missing in B"]),
        ({"results_a": [], "results_b": []}, ValueError, ["no seed", "both are empty"]),
        (
            {
                "results_a": SweepResult([SeedResult(3, {"acc": 0.5}), SeedResult(3, {"acc": 0.6})]),
                "results_b": {3: 0.4},
                "metric": "acc",
            },
            ValueError,
            ["results_a", "seed 3 more than once"],
        ),
    ],
)
def test_bad_arguments_are_named_with_their_value(
    overrides: dict[str, Any], exc: type, shown: list[str]
) -> None:
    with pytest.raises(exc) as info:
        call(**overrides)
    message = str(info.value)
    assert message.startswith("compare: "), message
    for text in shown:
        assert text in message, (text, message)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [({"gamma": 0.5}, "gamma"), ({"confidence": 1.0}, "confidence"), ({"power": 0.0}, "power")],
)
def test_pairs_needed_rejects_bad_arguments(kwargs: dict[str, float], shown: str) -> None:
    with pytest.raises(ValueError, match=rf"^pairs_needed: {shown} must be a number in \(0.5, 1\), got"):
        pairs_needed(**kwargs)


# ----------------------------------------------------------------------------- the docs page
def test_docs_page_prints_what_it_shows() -> None:
    """Every ```text block after a ```python block of the page is what that code prints."""
    page = (ROOT / "docs" / "is_my_improvement_real.md").read_text()
    blocks = re.findall(r"```(python|text)\n(.*?)```", page, re.S)
    namespace: dict[str, Any] = {"__name__": "docs_is_my_improvement_real"}
    printed, checked = "", 0
    for kind, body in blocks:
        if kind == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(body, "is_my_improvement_real.md", "exec"), namespace)
            printed = out.getvalue()
        else:
            assert printed == body, (printed, body)
            printed, checked = "", checked + 1
    assert checked == 5
