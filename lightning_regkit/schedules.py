"""Schedules: a value as a function of training time, shared by dropout and penalty strength.

Pure Python; no Lightning import. A schedule is called as ``schedule(t, total)`` where ``t``
is the current step (or epoch) counted from 0 and ``total`` the number of steps (or epochs)
of the whole run, or ``None`` when the length of training is unknown. Schedules that need
``total`` raise a ``ValueError`` when called without it.

How time is measured:

* *Progress* is ``t / total`` clipped to [0, 1] (:meth:`Schedule.progress`). Because ``t``
  counts the steps already taken, the last step of a run sees ``(total - 1) / total``; the
  value at progress 1 is what the schedule would give after training.
* Schedules of progress (``Linear``, ``Cosine``, ``FromProgress``, and ``Step``,
  ``Piecewise``, ``EarlyDropout``, ``LateDropout`` with ``unit="progress"``) need ``total``.
* Schedules of absolute time (``Constant``, ``Exponential``, ``Curriculum``, and the ones above
  with ``unit="absolute"``) read ``t`` alone and run when the length of training is unknown.
* A fraction of training is turned into a step count rounded half up,
  ``floor(fraction * total + 0.5)`` (the milestones of ``Step``, ``EarlyDropout`` and
  ``LateDropout``), so the switch happens at an exact step whatever the floating point
  rounding of ``t / total``.
* A plain callable is accepted by :func:`as_schedule`: ``f(t, total)`` (two arguments), or a
  function of progress alone, ``f(progress)`` (one argument, wrapped by :class:`FromProgress`).
  The arity is checked when the schedule is made.

Example:
    >>> s = Linear(start=0.0, end=0.5)
    >>> [s(t, total=4) for t in range(5)]
    [0.0, 0.125, 0.25, 0.375, 0.5]
    >>> Curriculum(p_final=0.5, gamma=0.001)(1000)  # doctest: +ELLIPSIS
    0.316...
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable

__all__ = [
    "Constant",
    "Cosine",
    "Curriculum",
    "EarlyDropout",
    "Exponential",
    "FromProgress",
    "LateDropout",
    "Linear",
    "Piecewise",
    "Schedule",
    "Step",
    "as_schedule",
]


def _check_finite(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    return float(value)


class Schedule(ABC):
    """A value as a function of the step ``t`` (0-based) and the run's length ``total``.

    Subclasses implement :meth:`value`. ``needs_total`` tells adapters whether the schedule
    can run when the length of training is unknown.

    Example:
        >>> class Half(Schedule):
        ...     def value(self, t, total):
        ...         return 0.5
        >>> Half()(3, None)
        0.5
    """

    needs_total: bool = False

    @abstractmethod
    def value(self, t: int, total: int | None) -> float:
        """The value at step ``t`` of ``total``."""

    def __call__(self, t: int, total: int | None = None) -> float:
        """The value at step ``t``; raises if the schedule needs ``total`` and it is None."""
        if self.needs_total and total is None:
            raise ValueError(
                f"{type(self).__name__} needs the length of training (total steps or epochs), "
                "but it is unknown; set max_epochs/max_steps or use a schedule of absolute time"
            )
        return float(self.value(t, total))

    @staticmethod
    def progress(t: int, total: int | None) -> float:
        """``t / total`` clipped to [0, 1] (1.0 when total is 0)."""
        assert total is not None
        return 1.0 if total <= 0 else min(max(t / total, 0.0), 1.0)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "needs_total")
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """The same value at every step.

    Example:
        >>> Constant(0.3)(100)
        0.3
    """

    def __init__(self, value: float) -> None:
        self.constant = _check_finite("Constant", "value", value)

    def value(self, t: int, total: int | None) -> float:
        """Return the constant."""
        return self.constant


class Linear(Schedule):
    """Straight line from ``start`` at progress 0 to ``end`` at progress 1.

    Example:
        >>> Linear(1.0, 0.0)(1, total=4)
        0.75
    """

    needs_total = True

    def __init__(self, start: float, end: float) -> None:
        self.start = _check_finite("Linear", "start", start)
        self.end = _check_finite("Linear", "end", end)

    def value(self, t: int, total: int | None) -> float:
        """Interpolate linearly."""
        return self.start + (self.end - self.start) * self.progress(t, total)


_UNITS = ("progress", "absolute")


def _check_unit(owner: str, unit: str) -> str:
    if unit not in _UNITS:
        raise ValueError(f"{owner}: unit must be one of {list(_UNITS)}, got {unit!r}")
    return unit


def _check_probability(owner: str, name: str, value: float) -> float:
    value = _check_finite(owner, name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1], got {value!r}")
    return value


def _check_time(owner: str, name: str, value: float, unit: str) -> float:
    """A point in time: a fraction in [0, 1] (unit="progress") or a step count >= 0 (unit="absolute")."""
    value = _check_finite(owner, name, value)
    if unit == "progress" and not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: {name} must be a fraction of training in [0, 1], got {value!r}")
    if unit == "absolute" and value < 0:
        raise ValueError(f"{owner}: {name} must be a step (or epoch) count >= 0, got {value!r}")
    return value


def _to_steps(point: float, total: int | None, unit: str) -> float:
    """A point in time as a number of steps: ``floor(fraction * total + 0.5)`` for fractions."""
    if unit == "absolute":
        return point
    assert total is not None
    return float(math.floor(point * total + 0.5))


class Cosine(Schedule):
    """Half a cosine from ``start`` at progress 0 to ``end`` at progress 1.

    ``value = end + (start - end) * (1 + cos(pi * progress)) / 2``.

    Example:
        >>> s = Cosine(1.0, 0.0)
        >>> [round(s(t, total=4), 4) for t in range(5)]
        [1.0, 0.8536, 0.5, 0.1464, 0.0]
    """

    needs_total = True

    def __init__(self, start: float, end: float) -> None:
        self.start = _check_finite("Cosine", "start", start)
        self.end = _check_finite("Cosine", "end", end)

    def value(self, t: int, total: int | None) -> float:
        """Cosine interpolation."""
        return self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * self.progress(t, total))) / 2.0


class Exponential(Schedule):
    """``start * gamma ** t``: geometric change per step (or epoch), as ``torch.optim`` ``ExponentialLR``.

    Absolute time: needs no ``total``.

    Example:
        >>> s = Exponential(0.5, gamma=0.5)
        >>> [s(t) for t in range(4)]
        [0.5, 0.25, 0.125, 0.0625]
    """

    def __init__(self, start: float, gamma: float) -> None:
        self.start = _check_finite("Exponential", "start", start)
        self.gamma = _check_finite("Exponential", "gamma", gamma)
        if self.gamma <= 0:
            raise ValueError(f"Exponential: gamma must be > 0, got {gamma!r}")

    def value(self, t: int, total: int | None) -> float:
        """Geometric sequence."""
        return self.start * self.gamma ** max(t, 0)


class Curriculum(Schedule):
    """Curriculum dropout (Morerio et al., ICCV 2017): ``p(t) = p_final * (1 - exp(-gamma * t))``.

    The paper schedules the *retain* probability
    ``theta(t) = (1 - theta_bar) * exp(-gamma * t) + theta_bar``; the drop probability is
    ``1 - theta(t)`` with ``p_final = 1 - theta_bar``. ``t`` is the iteration (absolute time:
    no ``total`` needed); the paper used ``gamma = 0.001`` on MNIST. Starts at 0 and rises to
    ``p_final``, reaching ``1 - 1/e`` (63 %) of it at ``t = 1 / gamma``.

    Example:
        >>> s = Curriculum(p_final=0.5, gamma=0.001)
        >>> s(0), round(s(1000), 6), round(s(10**6), 6)
        (0.0, 0.31606, 0.5)
    """

    def __init__(self, p_final: float, gamma: float) -> None:
        self.p_final = _check_probability("Curriculum", "p_final", p_final)
        self.gamma = _check_finite("Curriculum", "gamma", gamma)
        if self.gamma <= 0:
            raise ValueError(f"Curriculum: gamma must be > 0, got {gamma!r}")

    def value(self, t: int, total: int | None) -> float:
        """Rise towards ``p_final``."""
        return self.p_final * (1.0 - math.exp(-self.gamma * max(t, 0)))


class Step(Schedule):
    """Piecewise constant: ``values[i]`` from ``milestones[i - 1]`` (inclusive) to ``milestones[i]``.

    ``len(values) == len(milestones) + 1``; ``values[0]`` holds before the first milestone.
    Milestones are fractions of training (``unit="progress"``, converted to steps rounded half
    up) or step (epoch) counts (``unit="absolute"``, no ``total`` needed).

    Example:
        >>> s = Step(milestones=[0.5, 0.75], values=[0.3, 0.2, 0.0])
        >>> [s(t, total=8) for t in range(8)]
        [0.3, 0.3, 0.3, 0.3, 0.2, 0.2, 0.0, 0.0]
        >>> Step([10], [0.1, 0.0], unit="absolute")(10)
        0.0
    """

    def __init__(self, milestones: list[float], values: list[float], unit: str = "progress") -> None:
        self.unit = _check_unit("Step", unit)
        self.milestones = [_check_time("Step", "milestones", m, self.unit) for m in milestones]
        self.values = [_check_finite("Step", "values", v) for v in values]
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError(f"Step: milestones must be strictly increasing, got {list(milestones)!r}")
        if len(self.values) != len(self.milestones) + 1:
            raise ValueError(
                f"Step: values must have len(milestones) + 1 = {len(self.milestones) + 1} entries, "
                f"got {len(self.values)}"
            )
        self.needs_total = self.unit == "progress"

    def value(self, t: int, total: int | None) -> float:
        """The value of the interval that holds ``t``."""
        i = sum(1 for m in self.milestones if t >= _to_steps(m, total, self.unit))
        return self.values[i]


class Piecewise(Schedule):
    """Piecewise linear through the knots ``(points[i], values[i])``, constant outside them.

    Points are fractions of training (``unit="progress"``) or step (epoch) counts
    (``unit="absolute"``, no ``total`` needed), strictly increasing.

    Example:
        >>> s = Piecewise(points=[0.0, 0.5, 1.0], values=[0.0, 0.4, 0.1])
        >>> [round(s(t, total=4), 6) for t in range(5)]
        [0.0, 0.2, 0.4, 0.25, 0.1]
    """

    def __init__(self, points: list[float], values: list[float], unit: str = "progress") -> None:
        self.unit = _check_unit("Piecewise", unit)
        self.points = [_check_time("Piecewise", "points", x, self.unit) for x in points]
        self.values = [_check_finite("Piecewise", "values", v) for v in values]
        if not self.points:
            raise ValueError("Piecewise: points must not be empty, got []")
        if len(self.points) != len(self.values):
            raise ValueError(
                f"Piecewise: points and values must have the same length, got {len(self.points)} "
                f"and {len(self.values)}"
            )
        if any(b <= a for a, b in zip(self.points, self.points[1:], strict=False)):
            raise ValueError(f"Piecewise: points must be strictly increasing, got {list(points)!r}")
        self.needs_total = self.unit == "progress"

    def value(self, t: int, total: int | None) -> float:
        """Linear interpolation between the surrounding knots."""
        x = self.progress(t, total) if self.unit == "progress" else float(t)
        xs, ys = self.points, self.values
        if x <= xs[0]:
            return ys[0]
        for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False):
            if x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return ys[-1]


class EarlyDropout(Schedule):
    """Early dropout (Liu et al., ICML 2023, "Dropout Reduces Underfitting"): ``p`` until a cutoff, then 0.

    ``until`` is a fraction of training (``unit="progress"``) or a step (epoch) count
    (``unit="absolute"``); with ``N`` the cutoff in steps, steps ``t < N`` are on. With
    ``linear=True`` the value decays linearly from ``p`` at ``t = 0`` to 0 at ``t = N - 1``,
    exactly as the authors' ``np.linspace(p, 0, N)`` (their ``drop_scheduler(mode="early",
    schedule="linear")``); they used ``p = 0.1`` and a cutoff of 50 of 300 epochs for ViT-T.

    Example:
        >>> [EarlyDropout(0.1, until=0.5)(t, total=6) for t in range(6)]
        [0.1, 0.1, 0.1, 0.0, 0.0, 0.0]
        >>> [round(EarlyDropout(0.1, until=0.5, linear=True)(t, total=6), 6) for t in range(6)]
        [0.1, 0.05, 0.0, 0.0, 0.0, 0.0]
    """

    def __init__(self, p: float, until: float, linear: bool = False, unit: str = "progress") -> None:
        self.p = _check_probability("EarlyDropout", "p", p)
        self.unit = _check_unit("EarlyDropout", unit)
        self.until = _check_time("EarlyDropout", "until", until, self.unit)
        if not isinstance(linear, bool):
            raise TypeError(f"EarlyDropout: linear must be a bool, got {linear!r}")
        self.linear = linear
        self.needs_total = self.unit == "progress"

    def value(self, t: int, total: int | None) -> float:
        """``p`` (or its linear decay) before the cutoff, 0 after."""
        n = _to_steps(self.until, total, self.unit)
        if t >= n:
            return 0.0
        if not self.linear or n <= 1:
            return self.p
        return self.p * (1.0 - t / (math.ceil(n) - 1))


class LateDropout(Schedule):
    """Late dropout (Liu et al., ICML 2023): 0 before ``start``, then ``p`` to the end of training.

    ``start`` is a fraction of training (``unit="progress"``) or a step (epoch) count
    (``unit="absolute"``); the authors used late stochastic depth 0.4 from epoch 50 (ViT-B).

    Example:
        >>> [LateDropout(0.4, start=0.5)(t, total=4) for t in range(4)]
        [0.0, 0.0, 0.4, 0.4]
    """

    def __init__(self, p: float, start: float, unit: str = "progress") -> None:
        self.p = _check_probability("LateDropout", "p", p)
        self.unit = _check_unit("LateDropout", unit)
        self.start = _check_time("LateDropout", "start", start, self.unit)
        self.needs_total = self.unit == "progress"

    def value(self, t: int, total: int | None) -> float:
        """0 before the start, ``p`` from it."""
        return self.p if t >= _to_steps(self.start, total, self.unit) else 0.0


class FromProgress(Schedule):
    """Any user function of progress in [0, 1]: ``value = fn(t / total)``.

    Example:
        >>> s = FromProgress(lambda x: 0.2 * x**2)
        >>> [round(s(t, total=2), 6) for t in range(3)]
        [0.0, 0.05, 0.2]
    """

    needs_total = True

    def __init__(self, fn: Callable[[float], float]) -> None:
        if not callable(fn):
            raise TypeError(f"FromProgress: fn must be a callable f(progress) -> float, got {fn!r}")
        self.fn = fn

    def value(self, t: int, total: int | None) -> float:
        """Call the function on progress."""
        return float(self.fn(self.progress(t, total)))


ScheduleLike = float | Schedule | Callable[[int, int | None], float] | Callable[[float], float]


def _positional_arity(fn: Callable[..., float]) -> int | None:
    """How many positional arguments ``fn`` takes: 1 or 2 (``*args`` counts as 2); None if unknown."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: take them as f(t, total)
        return None
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) == 1 and len(positional) == 1:
        return 1
    if len(required) <= 2 <= len(positional):
        return 2
    if len(required) == 1:  # f(progress, scale=2.0): the second positional has a default
        return 1
    return len(positional)


def as_schedule(value: ScheduleLike, name: str = "value") -> Schedule:
    """Turn a number, a :class:`Schedule` or a callable into a :class:`Schedule`.

    A callable of one argument is a function of progress in [0, 1] (wrapped by
    :class:`FromProgress`); a callable of two is ``f(t, total)`` (``total`` may be ``None`` when
    the length of training is unknown). Any other arity is refused here, at construction, not at
    the first training step.

    Example:
        >>> as_schedule(0.1)(7)
        0.1
        >>> as_schedule(lambda t, total: t / 10)(3)
        0.3
        >>> as_schedule(lambda progress: 0.5 * progress)(1, total=4)
        0.125
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Constant(value)
    if callable(value):
        arity = _positional_arity(value)
        if arity == 1:
            return FromProgress(value)  # type: ignore[arg-type]
        if arity in (None, 2):
            return _FunctionSchedule(value)  # type: ignore[arg-type]
        raise TypeError(
            f"{name} must be a callable of one argument, f(progress) with progress in [0, 1], or of two, "
            f"f(t, total); got {value!r}, which takes {arity} positional arguments"
        )
    raise TypeError(
        f"{name} must be a number, a Schedule or a callable f(progress) or f(t, total), got {value!r}"
    )


class _FunctionSchedule(Schedule):
    """A user's ``f(t, total)``."""

    def __init__(self, fn: Callable[[int, int | None], float]) -> None:
        self.fn = fn

    def value(self, t: int, total: int | None) -> float:
        return float(self.fn(t, total))
