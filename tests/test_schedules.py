"""Schedules: hand-computed values at known points, the published formulas, and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_regkit.schedules import (
    Constant,
    Cosine,
    Curriculum,
    EarlyDropout,
    Exponential,
    FromProgress,
    LateDropout,
    Linear,
    Piecewise,
    Schedule,
    Step,
    as_schedule,
)


def values(schedule: Schedule, total: int | None, n: int | None = None) -> list[float]:
    return [schedule(t, total) for t in range(total if n is None else n)]


# ----------------------------------------------------------------------------- shared interface stays stable
def test_existing_interface_unchanged():
    assert Constant(0.3)(100) == 0.3
    assert values(Linear(0.0, 0.5), 4, 5) == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert as_schedule(0.1)(7) == 0.1
    assert as_schedule(lambda t, total: t / 10)(3) == 0.3
    s = Linear(1.0, 0.0)
    assert as_schedule(s) is s
    with pytest.raises(TypeError, match="must be a number"):
        as_schedule("0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("schedule", "needs_total"),
    [
        (Constant(0.1), False),
        (Linear(0, 1), True),
        (Cosine(0, 1), True),
        (Exponential(0.5, 0.9), False),
        (Curriculum(0.5, 0.01), False),
        (Step([0.5], [0.1, 0.0]), True),
        (Step([5], [0.1, 0.0], unit="absolute"), False),
        (Piecewise([0, 1], [0, 1]), True),
        (Piecewise([0, 10], [0, 1], unit="absolute"), False),
        (EarlyDropout(0.1, 0.5), True),
        (EarlyDropout(0.1, 5, unit="absolute"), False),
        (LateDropout(0.1, 0.5), True),
        (LateDropout(0.1, 5, unit="absolute"), False),
        (FromProgress(lambda x: x), True),
    ],
)
def test_needs_total(schedule, needs_total):
    assert schedule.needs_total is needs_total
    if needs_total:
        with pytest.raises(ValueError, match="needs the length of training"):
            schedule(3, None)
    else:
        assert math.isfinite(schedule(3, None))


# ----------------------------------------------------------------------------- values at known points
def test_cosine_known_points():
    s = Cosine(start=0.4, end=0.0)
    # 0.4 * (1 + cos(pi * t / 4)) / 2 at t = 0..4
    expected = [0.4, 0.2 * (1 + math.sqrt(0.5)), 0.2, 0.2 * (1 - math.sqrt(0.5)), 0.0]
    assert values(s, 4, 5) == pytest.approx(expected, abs=1e-15)
    assert Cosine(0.0, 1.0)(2, 4) == pytest.approx(0.5)
    assert Cosine(0.0, 1.0)(10, 4) == 1.0  # progress clipped at 1


def test_exponential_known_points():
    assert values(Exponential(0.8, gamma=0.5), None, 4) == [0.8, 0.4, 0.2, 0.1]
    assert Exponential(0.1, gamma=1.1)(2) == pytest.approx(0.121)


def test_curriculum_published_formula():
    """Morerio et al. 2017: theta(t) = (1 - theta_bar) exp(-gamma t) + theta_bar is the retain prob."""
    theta_bar, gamma = 0.5, 0.001  # their MNIST setting: gamma = 1e-3
    s = Curriculum(p_final=1 - theta_bar, gamma=gamma)
    for t in [0, 1, 10, 100, 693, 1000, 5000, 100_000]:
        theta = (1 - theta_bar) * math.exp(-gamma * t) + theta_bar
        assert s(t) == pytest.approx(1 - theta, abs=1e-15)
    assert s(0) == 0.0
    assert s(1000) == pytest.approx(0.5 * (1 - math.exp(-1)))  # 63 % of p_final at t = 1 / gamma
    assert s(1000) == pytest.approx(0.31606027941427883)
    assert s(10**7) == pytest.approx(0.5)
    # absolute time: the length of training is irrelevant
    assert s(1000, None) == s(1000, 10) == s(1000, 10**9)


@pytest.mark.parametrize(
    ("schedule", "total", "expected"),
    [
        (Step([0.5, 0.75], [0.3, 0.2, 0.0]), 8, [0.3, 0.3, 0.3, 0.3, 0.2, 0.2, 0.0, 0.0]),
        # 0.3 * 10 = 3.0000000000000004 in floating point: still switches exactly at t = 3
        (Step([0.3], [0.1, 0.2]), 10, [0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]),
        # fractions rounded half up: 0.5 * 5 = 2.5 -> step 3
        (Step([0.5], [1.0, 2.0]), 5, [1.0, 1.0, 1.0, 2.0, 2.0]),
        (Step([2, 4], [0.1, 0.2, 0.3], unit="absolute"), None, [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]),
        (Piecewise([0.0, 0.5, 1.0], [0.0, 0.4, 0.1]), 4, [0.0, 0.2, 0.4, 0.25]),
        (Piecewise([0.25, 0.75], [0.2, 0.0]), 8, [0.2, 0.2, 0.2, 0.15, 0.1, 0.05, 0.0, 0.0]),
        (Piecewise([2, 4], [0.0, 1.0], unit="absolute"), None, [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]),
        (Piecewise([0.5], [0.3]), 4, [0.3, 0.3, 0.3, 0.3]),
        (EarlyDropout(0.1, until=0.5), 6, [0.1, 0.1, 0.1, 0.0, 0.0, 0.0]),
        (EarlyDropout(0.1, until=0.5, linear=True), 6, [0.1, 0.05, 0.0, 0.0, 0.0, 0.0]),
        (EarlyDropout(0.3, until=4, linear=True, unit="absolute"), None, [0.3, 0.2, 0.1, 0.0, 0.0, 0.0]),
        (EarlyDropout(0.3, until=1, linear=True, unit="absolute"), None, [0.3, 0.0, 0.0]),
        (EarlyDropout(0.3, until=0.0), 3, [0.0, 0.0, 0.0]),
        (LateDropout(0.4, start=0.5), 4, [0.0, 0.0, 0.4, 0.4]),
        (LateDropout(0.4, start=3, unit="absolute"), None, [0.0, 0.0, 0.0, 0.4, 0.4]),
        (LateDropout(0.4, start=0.0), 2, [0.4, 0.4]),
        (FromProgress(lambda x: 0.2 * x**2), 4, [0.0, 0.0125, 0.05, 0.1125]),
    ],
)
def test_known_points(schedule, total, expected):
    n = len(expected)
    assert [schedule(t, total) for t in range(n)] == pytest.approx(expected, abs=1e-15)


def _liu_drop_scheduler(drop_rate, epochs, niter_per_ep, cutoff_epoch, mode, schedule):
    """The authors' reference (Liu et al. 2023, `drop_scheduler`), rewritten from its published logic."""
    early_iters = cutoff_epoch * niter_per_ep
    late_iters = (epochs - cutoff_epoch) * niter_per_ep
    if mode == "early":
        early = (
            np.full(early_iters, drop_rate)
            if schedule == "constant"
            else np.linspace(drop_rate, 0, early_iters)
        )
        return np.concatenate((early, np.full(late_iters, 0)))
    return np.concatenate((np.full(early_iters, 0), np.full(late_iters, drop_rate)))


@pytest.mark.parametrize(
    ("mode", "schedule"), [("early", "constant"), ("early", "linear"), ("late", "constant")]
)
def test_early_late_match_authors_reference(mode, schedule):
    epochs, niter, cutoff, p = 12, 7, 5, 0.1
    total = epochs * niter
    reference = _liu_drop_scheduler(p, epochs, niter, cutoff, mode, schedule)
    if mode == "early":
        ours = EarlyDropout(p, until=cutoff / epochs, linear=schedule == "linear")
        ours_abs = EarlyDropout(p, until=cutoff * niter, linear=schedule == "linear", unit="absolute")
    else:
        ours = LateDropout(p, start=cutoff / epochs)
        ours_abs = LateDropout(p, start=cutoff * niter, unit="absolute")
    np.testing.assert_allclose([ours(t, total) for t in range(total)], reference, atol=1e-15)
    np.testing.assert_allclose([ours_abs(t) for t in range(total)], reference, atol=1e-15)


def test_repr_names_arguments():
    assert repr(Curriculum(0.5, 0.001)) == "Curriculum(p_final=0.5, gamma=0.001)"
    assert repr(EarlyDropout(0.1, 0.5)) == "EarlyDropout(p=0.1, unit='progress', until=0.5, linear=False)"


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: Cosine(float("nan"), 0.0), r"Cosine: start must be finite, got nan"),
        (lambda: Exponential(0.5, 0.0), r"Exponential: gamma must be > 0, got 0.0"),
        (lambda: Exponential(0.5, -1), r"Exponential: gamma must be > 0, got -1"),
        (lambda: Curriculum(1.5, 0.001), r"Curriculum: p_final must be in \[0, 1\], got 1.5"),
        (lambda: Curriculum(0.5, 0.0), r"Curriculum: gamma must be > 0, got 0.0"),
        (lambda: Step([0.5, 0.5], [0, 1, 2]), r"Step: milestones must be strictly increasing"),
        (lambda: Step([0.5], [0.1]), r"Step: values must have len\(milestones\) \+ 1 = 2 entries, got 1"),
        (lambda: Step([1.5], [0.1, 0.2]), r"Step: milestones must be a fraction of training in \[0, 1\]"),
        (lambda: Step([-1], [0.1, 0.2], unit="absolute"), r"Step: milestones must be a step \(or epoch\)"),
        (
            lambda: Step([0.5], [0.1, 0.2], unit="epochs"),
            r"Step: unit must be one of \['progress', 'absolute'\]",
        ),
        (lambda: Piecewise([], []), r"Piecewise: points must not be empty"),
        (lambda: Piecewise([0, 1], [0.1]), r"Piecewise: points and values must have the same length"),
        (lambda: Piecewise([1, 0], [0.1, 0.2]), r"Piecewise: points must be strictly increasing"),
        (lambda: EarlyDropout(-0.1, 0.5), r"EarlyDropout: p must be in \[0, 1\], got -0.1"),
        (lambda: EarlyDropout(0.1, 2.0), r"EarlyDropout: until must be a fraction of training in \[0, 1\]"),
        (lambda: LateDropout(0.1, float("inf")), r"LateDropout: start must be finite, got inf"),
        (lambda: LateDropout(2.0, 0.5), r"LateDropout: p must be in \[0, 1\], got 2.0"),
    ],
)
def test_bad_arguments_value_error(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: Cosine("0", 1.0), r"Cosine: start must be a real number, got '0'"),
        (lambda: Curriculum(True, 0.1), r"Curriculum: p_final must be a real number, got True"),
        (lambda: EarlyDropout(0.1, 0.5, linear="yes"), r"EarlyDropout: linear must be a bool, got 'yes'"),
        (lambda: FromProgress(0.5), r"FromProgress: fn must be a callable"),
    ],
)
def test_bad_arguments_type_error(factory, match):
    with pytest.raises(TypeError, match=match):
        factory()
