"""Prechelt's criteria (lightning_regkit.criteria) on hand-computed sequences, without Lightning."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from lightning_regkit.criteria import GL, PQ, UP, generalization_loss, progress_quotient, training_progress


def run(criterion, errors, train=None):
    """The 1-based update index at which the criterion first says stop (None if never)."""
    for t, e in enumerate(errors, start=1):
        if criterion.update(e, None if train is None else train[t - 1]):
            return t
    return None


@pytest.mark.parametrize(
    ("e_va", "e_opt", "expected"),
    [(0.5, 0.5, 0.0), (0.55, 0.5, 10.0), (1.0, 0.8, 25.0), (0.0, 0.0, 0.0), (0.1, 0.0, math.inf)],
)
def test_generalization_loss(e_va, e_opt, expected):
    assert generalization_loss(e_va, e_opt) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("strip", "expected"),
    [
        ([1.0, 1.0, 1.0, 1.0, 1.0], 0.0),
        ([1.2, 1.1, 1.0, 0.9, 0.8], 250.0),  # 1000 * (5.0 / (5 * 0.8) - 1)
        ([2.0, 1.0], 500.0),  # 1000 * (3 / 2 - 1)
        ([0.0, 0.0], 0.0),
        ([0.5, 0.0], math.inf),
    ],
)
def test_training_progress(strip, expected):
    assert training_progress(strip) == pytest.approx(expected, rel=1e-12)


def test_progress_quotient_edges():
    assert progress_quotient(0.0, 0.0) == 0.0
    assert progress_quotient(3.0, 0.0) == math.inf
    assert progress_quotient(3.0, 1.5) == 2.0


@pytest.mark.parametrize(
    ("alpha", "errors", "stop_at"),
    [
        # E_opt = 0.7 from t=3; GL(4) = 100*(0.72/0.7-1) = 2.857, GL(5) = 5.714, GL(6) = 8.571
        (5.0, [1.0, 0.8, 0.7, 0.72, 0.74, 0.76], 5),
        (8.0, [1.0, 0.8, 0.7, 0.72, 0.74, 0.76], 6),
        (10.0, [1.0, 0.8, 0.7, 0.72, 0.74, 0.76], None),
        # GL must exceed alpha strictly: GL(2) = 100 * (1.05 / 1.0 - 1) = 5.000000000000004 > 5
        (5.0, [1.0, 1.05], 2),
        (0.0, [1.0, 1.0, 1.01], 3),  # GL = 0 at equal values; any rise above E_opt stops
    ],
)
def test_gl_stops_at_hand_computed_update(alpha, errors, stop_at):
    assert run(GL(alpha), errors) == stop_at


def test_gl_uses_lowest_error_so_far():
    gl = GL(alpha=50.0)
    for e in [1.0, 0.4, 0.9]:
        gl.update(e)
    assert gl.e_opt == 0.4
    assert gl.gl == pytest.approx(125.0)  # 100 * (0.9 / 0.4 - 1)


@pytest.mark.parametrize(
    ("alpha", "strip", "stop_at", "quotient"),
    [
        # strip ends t=2,4,6. t=2: GL 0. t=4: GL = 100*(0.75/0.7-1) = 7.142857,
        # P_2 = 1000*((0.8+0.79)/(2*0.79)-1) = 6.329114, quotient = 1.128571
        (1.0, 2, 4, 7.142857142857 / 6.329113924050),
        # t=6: GL = 100*(0.9/0.7-1) = 28.571429, P_2 = 1000*((0.78+0.779)/(2*0.779)-1) = 0.641849,
        # quotient = 44.514
        (2.0, 2, 6, 28.571428571429 / 0.641848523748),
        # strip 3 ends t=3 (GL 0) and t=6: P_3 = 1000*((0.79+0.78+0.779)/(3*0.779)-1) = 5.1348
        # GL/P = 28.571/5.1348 = 5.564 > 5
        (5.0, 3, 6, 28.571428571429 / 5.134788189987),
        (50.0, 3, None, None),
    ],
)
def test_pq_stops_at_end_of_strip(alpha, strip, stop_at, quotient):
    e_va = [1.0, 0.8, 0.7, 0.75, 0.8, 0.9]
    e_tr = [1.0, 0.9, 0.8, 0.79, 0.78, 0.779]
    pq = PQ(alpha, strip=strip)
    assert run(pq, e_va, e_tr) == stop_at
    if quotient is not None:
        assert pq.quotient == pytest.approx(quotient, rel=1e-9)


def test_pq_checks_only_at_end_of_strip():
    pq = PQ(alpha=0.0, strip=5)
    # a big GL at t=2 is ignored: only t=5, 10, ... are ends of strip
    assert [pq.update(e, 1.0 - 0.01 * i) for i, e in enumerate([1.0, 2.0, 2.0, 2.0, 0.5])] == [False] * 5
    assert pq.update(0.6, 0.9) is False  # t=6, not an end of strip


def test_pq_needs_training_error():
    with pytest.raises(ValueError, match=r"PQ: e_tr \(the training error\) is required"):
        PQ(alpha=1.0).update(0.5)


@pytest.mark.parametrize(
    ("s", "strip", "errors", "stop_at"),
    [
        # strip 1: rises at t=3 (0.9>0.8), reset at t=4, rises at t=5, t=6 -> UP_2 stops at t=6
        (2, 1, [1.0, 0.8, 0.9, 0.85, 0.9, 0.95, 1.0], 6),
        (1, 1, [1.0, 0.8, 0.9, 0.85, 0.9, 0.95, 1.0], 3),
        (3, 1, [1.0, 0.8, 0.9, 0.85, 0.9, 0.95, 1.0], 7),
        # strip 2: ends t=2 (0.9), t=4 (1.0: rise), t=6 (1.2: rise) -> UP_2 at t=6;
        # the dip to 0.7 at t=5 is inside a strip and is not looked at
        (2, 2, [1.0, 0.9, 0.95, 1.0, 0.7, 1.2], 6),
        # an isolated early rise does not disable UP_2 (the literal "first" reading would)
        (2, 2, [1.0, 1.0, 1.0, 1.1, 1.0, 0.9, 1.0, 1.2, 1.0, 1.3], 10),
        # the first end of strip has no E_va(t - k): never a rise
        (1, 2, [0.1, 0.2], None),
    ],
)
def test_up_stops_after_s_successive_rising_strips(s, strip, errors, stop_at):
    assert run(UP(s, strip=strip), errors) == stop_at


@pytest.mark.parametrize(
    "criterion",
    [GL(alpha=5.0), PQ(alpha=1.0, strip=2), UP(s=2, strip=2)],
    ids=["GL", "PQ", "UP"],
)
def test_state_round_trip_continues_identically(criterion, tmp_path):
    e_va = [1.0, 0.8, 0.7, 0.75, 0.8, 0.9, 0.95, 1.0]
    e_tr = [1.0, 0.9, 0.8, 0.79, 0.78, 0.779, 0.778, 0.777]
    reference = pickle.loads(pickle.dumps(criterion))
    expected = [reference.update(a, b) for a, b in zip(e_va, e_tr, strict=True)]
    for a, b in zip(e_va[:3], e_tr[:3], strict=True):
        criterion.update(a, b)
    torch.save(criterion.state_dict(), tmp_path / "c.pt")
    fresh = pickle.loads(pickle.dumps(type(criterion)(**_config(criterion))))
    fresh.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True))
    assert fresh == criterion
    assert [fresh.update(a, b) for a, b in zip(e_va[3:], e_tr[3:], strict=True)] == expected[3:]


def _config(c):
    if isinstance(c, GL):
        return {"alpha": c.alpha}
    if isinstance(c, PQ):
        return {"alpha": c.alpha, "strip": c.strip}
    return {"s": c.s, "strip": c.strip}


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: GL(alpha=-1.0), ValueError, r"GL: alpha must be a finite number >= 0, got -1.0"),
        (lambda: GL(alpha=math.nan), ValueError, r"GL: alpha must be a finite number >= 0"),
        (lambda: GL(alpha="5"), TypeError, r"GL: alpha must be a real number, got '5'"),
        (lambda: PQ(alpha=1.0, strip=0), ValueError, r"PQ: strip must be >= 1, got 0"),
        (lambda: PQ(alpha=-0.5), ValueError, r"PQ: alpha must be a finite number >= 0"),
        (lambda: UP(s=0), ValueError, r"UP: s must be >= 1, got 0"),
        (lambda: UP(s=2, strip=1.5), TypeError, r"UP: strip must be an int, got 1.5"),
        (lambda: GL(alpha=1.0).update(-0.1), ValueError, r"GL: validation error must be a finite error >= 0"),
        (lambda: GL(alpha=1.0).update(math.nan), ValueError, r"GL: validation error must be a finite error"),
        (
            lambda: PQ(alpha=1.0).update(0.1, -1.0),
            ValueError,
            r"PQ: training error must be a finite error >= 0",
        ),
        (lambda: UP(s=1).update(math.inf), ValueError, r"UP: validation error must be a finite number"),
        (lambda: training_progress([]), ValueError, r"training_progress: strip must not be empty"),
    ],
)
def test_bad_input(factory, error, match):
    with pytest.raises(error, match=match):
        factory()
