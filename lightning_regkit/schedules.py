"""Schedules: a value as a function of training time, shared by dropout and penalty strength.

Pure Python; no Lightning import. A schedule is called as ``schedule(t, total)`` where ``t``
is the current step (or epoch) counted from 0 and ``total`` the number of steps (or epochs)
of the whole run, or ``None`` when the length of training is unknown. Schedules that need
``total`` raise a ``ValueError`` when called without it.

Example:
    >>> s = Linear(start=0.0, end=0.5)
    >>> [s(t, total=4) for t in range(5)]
    [0.0, 0.125, 0.25, 0.375, 0.5]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

__all__ = ["Constant", "Linear", "Schedule", "as_schedule"]


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
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
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


ScheduleLike = float | Schedule | Callable[[int, int | None], float]


def as_schedule(value: ScheduleLike, name: str = "value") -> Schedule:
    """Turn a number, a :class:`Schedule` or a callable ``f(t, total)`` into a :class:`Schedule`.

    Example:
        >>> as_schedule(0.1)(7)
        0.1
        >>> as_schedule(lambda t, total: t / 10)(3)
        0.3
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Constant(value)
    if callable(value):
        return _FunctionSchedule(value)
    raise TypeError(f"{name} must be a number, a Schedule or a callable f(t, total), got {value!r}")


class _FunctionSchedule(Schedule):
    def __init__(self, fn: Callable[[int, int | None], float]) -> None:
        self.fn = fn

    def value(self, t: int, total: int | None) -> float:
        return float(self.fn(t, total))
