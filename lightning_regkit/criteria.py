"""Prechelt's early-stopping criteria GL, PQ and UP, as small stateful classes.

Pure Python, no Lightning import: feed one validation error per check with
:meth:`StoppingCriterion.update` and it answers whether to stop. The callback
:class:`lightning_regkit.callbacks.early_stopping.EarlyStopping` is a thin adapter over them.

Definitions, from L. Prechelt, "Early Stopping — But When?", in *Neural Networks: Tricks of
the Trade*, LNCS 1524, Springer, 1998, pp. 55-69 (section 2.2). ``E_va(t)`` is the validation
error after epoch ``t`` (``t`` counts updates from 1), ``E_opt(t)`` the lowest ``E_va`` up to
``t``, ``E_tr`` the training error, and a *strip* of length ``k`` the epochs ``n+1 .. n+k``
with ``n`` divisible by ``k`` (so strips end at ``t = k, 2k, 3k, ...``):

* generalization loss ``GL(t) = 100 * (E_va(t) / E_opt(t) - 1)`` (percent);
  **GL_alpha** stops after the first epoch with ``GL(t) > alpha``;
* training progress ``P_k(t) = 1000 * (sum(E_tr over the strip ending at t) /
  (k * min(E_tr over that strip)) - 1)`` (per mille); **PQ_alpha** stops after the first end
  of strip with ``GL(t) / P_k(t) > alpha``;
* **UP_s** stops after the end of strip ``t`` iff UP_(s-1) stops after ``t - k`` and
  ``E_va(t) > E_va(t - k)``; UP_1 stops after the first end of strip with
  ``E_va(t) > E_va(t - k)``.

Reading of UP_s: taken literally, the word *first* in UP_1 would make UP_2 depend on the first
rise ever, so an isolated early rise would disable UP_2 for good. Prechelt states the intent
right after the definition: stop when the validation error has increased in ``s`` successive
strips. Unrolling the recursion gives exactly that: ``E_va(t - i*k) > E_va(t - (i+1)*k)`` for
``i = 0 .. s-1``, ``s`` consecutive strip-to-strip rises. :class:`UP` counts consecutive rises
and stops when the count reaches ``s`` (the same reading as ``Patience``/``UP`` of the Julia
package EarlyStopping.jl). The first end of strip has no ``E_va(t - k)`` (there is no
measurement before training), so it cannot count as a rise.

Errors must be non-negative (losses, error rates): the ratios of GL and PQ need it. Edge cases:
``GL = 0`` when ``E_va = E_opt = 0`` and ``inf`` when ``E_opt = 0 < E_va``; ``P_k = inf`` when
the strip's minimum training error is 0 and its sum is not (``0`` when all are 0); the
quotient ``GL / P_k`` is ``0`` when ``GL = 0`` and ``inf`` when ``P_k = 0 < GL``.

Example:
    >>> gl = GL(alpha=5.0)
    >>> [gl.update(e) for e in [1.0, 0.8, 0.82, 0.85]]  # GL = 0, 0, 2.5, 6.25 percent
    [False, False, False, True]
    >>> up = UP(s=2, strip=1)
    >>> [up.update(e) for e in [1.0, 0.9, 1.0, 1.1]]  # rises at the 3rd and 4th updates
    [False, False, False, True]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GL",
    "PQ",
    "UP",
    "StoppingCriterion",
    "generalization_loss",
    "progress_quotient",
    "training_progress",
]

PRECHELT_1998 = (
    'L. Prechelt, "Early Stopping - But When?", Neural Networks: Tricks of the Trade, LNCS 1524, 1998'
)


def _check_error(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: {name} must be a finite error >= 0, got {value!r}")
    return value


def generalization_loss(e_va: float, e_opt: float) -> float:
    """Prechelt's generalization loss ``GL = 100 * (E_va / E_opt - 1)``, in percent.

    Args:
        e_va: the current validation error (>= 0).
        e_opt: the lowest validation error so far (>= 0, <= ``e_va``).

    Returns:
        ``GL`` in percent; ``0.0`` when both are 0, ``inf`` when only ``e_opt`` is 0.

    Example:
        >>> generalization_loss(0.55, 0.5)  # doctest: +ELLIPSIS
        10.0000...
        >>> generalization_loss(0.2, 0.0)
        inf
    """
    if e_opt == 0.0:
        return 0.0 if e_va == 0.0 else math.inf
    return 100.0 * (e_va / e_opt - 1.0)


def training_progress(strip: Sequence[float]) -> float:
    """Prechelt's training progress ``P_k = 1000 * (sum(strip) / (k * min(strip)) - 1)``, per mille.

    Args:
        strip: the training errors of the ``k`` epochs of one strip (non-empty, each >= 0).

    Returns:
        ``P_k``; ``0.0`` for a strip of zeros, ``inf`` when the minimum is 0 and the sum is not.

    Example:
        >>> training_progress([1.0, 1.0, 1.0])
        0.0
        >>> round(training_progress([1.2, 1.1, 1.0, 0.9, 0.8]), 9)
        250.0
    """
    if len(strip) == 0:
        raise ValueError("training_progress: strip must not be empty, got []")
    lo, total = min(strip), sum(strip)
    if lo == 0.0:
        return 0.0 if total == 0.0 else math.inf
    return 1000.0 * (total / (len(strip) * lo) - 1.0)


def progress_quotient(gl: float, p: float) -> float:
    """The quotient ``GL / P_k`` of PQ_alpha, with ``0`` when ``GL = 0`` and ``inf`` when ``P_k = 0 < GL``.

    Example:
        >>> progress_quotient(10.0, 4.0)
        2.5
        >>> progress_quotient(10.0, 0.0)
        inf
    """
    if gl == 0.0:
        return 0.0
    if p == 0.0:
        return math.inf
    return gl / p


class StoppingCriterion(ABC):
    """A stopping rule fed one validation error per check.

    Subclasses keep their progress as plain data (:meth:`state_dict`), say whether they need
    the training error (``needs_train``) and explain their last decision (:meth:`describe`).

    Example:
        >>> c = GL(alpha=1.0)
        >>> c.update(2.0), c.update(2.1)
        (False, True)
        >>> c.describe()  # doctest: +ELLIPSIS
        'GL_1 (Prechelt 1998): generalization loss GL = 5.00% > alpha = 1 (error 2.1, lowest 2)'
    """

    name: str = ""
    needs_train: bool = False

    @abstractmethod
    def update(self, e_va: float, e_tr: float | None = None) -> bool:
        """Record one validation error (and training error) and answer whether to stop."""

    @abstractmethod
    def describe(self) -> str:
        """A readable account of the last decision (which rule, which values)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The criterion's progress as plain data."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress saved by :meth:`state_dict`.

        Checks every field (type, range, consistency) before it changes anything, and raises a
        ``TypeError``/``ValueError`` naming the criterion and the field.
        """


def _check_alpha(owner: str, alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"{owner}: alpha must be a real number, got {alpha!r}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{owner}: alpha must be a finite number >= 0, got {alpha!r}")
    return float(alpha)


def _check_positive_int(owner: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value!r}")
    return value


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


# ----------------------------------------------------------------------------- validated loads
def _state(owner: str, state: Any) -> Mapping[str, Any]:
    """``state`` as a mapping written by ``owner`` (its ``name``, when present, must be ``owner``)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{owner}: state must be a dict, got {type(state).__name__}")
    name = state.get("name", owner)  # written since the states were validated; older ones lack it
    if name != owner:
        raise ValueError(
            f"{owner}: state field 'name' must be {owner!r} (a state of another criterion?), got {name!r}"
        )
    return state


def _field(owner: str, state: Mapping[str, Any], key: str) -> Any:
    if key not in state:
        raise ValueError(f"{owner}: state field {key!r} is missing (the state has {sorted(state)})")
    return state[key]


def _state_int(owner: str, state: Mapping[str, Any], key: str, maximum: int | None = None) -> int:
    value = _field(owner, state, key)
    allowed = "an int >= 0" if maximum is None else f"an int in [0, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: state field {key!r} must be {allowed}, got {value!r}")
    if value < 0 or (maximum is not None and value > maximum):
        raise ValueError(f"{owner}: state field {key!r} must be {allowed}, got {value!r}")
    return value


def _state_number(
    owner: str, key: str, value: Any, *, error: bool = True, infinite: bool = False, optional: bool = False
) -> float | None:
    """A real number from a state: an error (>= 0) or any finite value; ``inf`` only if ``infinite``."""
    if value is None and optional:
        return None
    allowed = "an error >= 0" if error else "a finite number"
    if infinite:
        allowed += " (or inf)"
    if optional:
        allowed += " or None"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: state field {key!r} must be {allowed}, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not (infinite and value > 0)) or (error and value < 0):
        raise ValueError(f"{owner}: state field {key!r} must be {allowed}, got {value!r}")
    return value


def _state_errors(owner: str, state: Mapping[str, Any]) -> tuple[int, float, float | None, float]:
    """``t``, ``e_opt``, ``e_va`` and ``gl`` of GL and PQ, checked against each other."""
    t = _state_int(owner, state, "t")
    e_opt = _state_number(owner, "e_opt", _field(owner, state, "e_opt"), infinite=True)
    e_va = _state_number(owner, "e_va", _field(owner, state, "e_va"), optional=True)
    gl = _state_number(owner, "gl", _field(owner, state, "gl"), infinite=True)
    assert e_opt is not None and gl is not None
    if t == 0 and (e_va is not None or e_opt != math.inf):
        raise ValueError(
            f"{owner}: state fields 'e_va' and 'e_opt' must be None and inf before the first update "
            f"(t=0), got e_va={e_va!r}, e_opt={e_opt!r}"
        )
    if t > 0 and e_va is None:
        raise ValueError(f"{owner}: state field 'e_va' must be an error >= 0 once t > 0, got None (t={t})")
    if e_va is not None and not e_opt <= e_va:
        raise ValueError(
            f"{owner}: state field 'e_opt' (the lowest error) must be <= 'e_va' (the last, {e_va!r}), "
            f"got {e_opt!r}"
        )
    return t, e_opt, e_va, gl


@dataclass
class GL(StoppingCriterion):
    """GL_alpha: stop after the first epoch whose generalization loss exceeds ``alpha`` percent.

    ``GL(t) = 100 * (E_va(t) / E_opt(t) - 1)`` (Prechelt 1998, section 2.2; see the module
    docstring). Prechelt evaluated alpha in 1..5.

    Args:
        alpha: threshold in percent (>= 0).

    Example:
        >>> gl = GL(alpha=10.0)
        >>> [gl.update(e) for e in [0.5, 0.4, 0.43, 0.45]]  # GL: 0, 0, 7.5, 12.5
        [False, False, False, True]
        >>> round(gl.gl, 6), gl.t
        (12.5, 4)
    """

    alpha: float
    t: int = 0
    e_opt: float = math.inf
    e_va: float | None = None
    gl: float = 0.0
    name: str = field(default="GL", init=False)

    def __post_init__(self) -> None:
        self.alpha = _check_alpha("GL", self.alpha)

    def update(self, e_va: float, e_tr: float | None = None) -> bool:
        """Record ``E_va(t)``; stop when ``GL(t) > alpha``."""
        e_va = _check_error("GL", "validation error", e_va)
        self.t += 1
        self.e_va = e_va
        self.e_opt = min(self.e_opt, e_va)
        self.gl = generalization_loss(e_va, self.e_opt)
        return self.gl > self.alpha

    def describe(self) -> str:
        """Which rule and values decided."""
        return (
            f"GL_{self.alpha:g} (Prechelt 1998): generalization loss GL = {self.gl:.2f}% > alpha = "
            f"{self.alpha:g} (error {_fmt(self.e_va)}, lowest {_fmt(self.e_opt)})"
        )

    def state_dict(self) -> dict[str, Any]:
        """Progress: update count, lowest error, last error and GL."""
        return {"name": self.name, "t": self.t, "e_opt": self.e_opt, "e_va": self.e_va, "gl": self.gl}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress, validated first.

        Example:
            >>> gl = GL(alpha=5.0)
            >>> gl.load_state_dict({"t": 2, "e_opt": 0.5, "e_va": 0.4, "gl": 0.0})
            Traceback (most recent call last):
            ...
            ValueError: GL: state field 'e_opt' (the lowest error) must be <= 'e_va' (the last, 0.4), got 0.5
        """
        self.t, self.e_opt, self.e_va, self.gl = _state_errors("GL", _state("GL", state))


@dataclass
class PQ(StoppingCriterion):
    """PQ_alpha: stop at the first end of strip where ``GL(t) / P_k(t) > alpha``.

    Needs the training error of every update (``e_tr``). Strips end at updates
    ``k, 2k, ...``; ``P_k`` uses the training errors of the ``k`` updates of the strip
    (Prechelt 1998, section 2.2). Prechelt evaluated alpha in 0.5..3 with ``k = 5``.

    Args:
        alpha: threshold on the quotient (>= 0).
        strip: strip length ``k`` (>= 1).

    Example:
        >>> pq = PQ(alpha=0.1, strip=2)
        >>> pq.update(1.0, e_tr=1.0), pq.update(1.1, e_tr=0.9)  # GL 10, P_2 = 1000*(1.9/1.8-1)
        (False, True)
        >>> round(pq.quotient, 4)
        0.18
    """

    alpha: float
    strip: int = 5
    t: int = 0
    e_opt: float = math.inf
    e_va: float | None = None
    train_strip: list[float] = field(default_factory=list)
    gl: float = 0.0
    progress: float | None = None
    quotient: float | None = None
    name: str = field(default="PQ", init=False)
    needs_train: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        self.alpha = _check_alpha("PQ", self.alpha)
        self.strip = _check_positive_int("PQ", "strip", self.strip)

    def update(self, e_va: float, e_tr: float | None = None) -> bool:
        """Record ``E_va(t)`` and ``E_tr(t)``; at the end of a strip stop when ``GL / P_k > alpha``."""
        if e_tr is None:
            raise ValueError("PQ: e_tr (the training error) is required, got None")
        e_va = _check_error("PQ", "validation error", e_va)
        e_tr = _check_error("PQ", "training error", e_tr)
        self.t += 1
        self.e_va = e_va
        self.e_opt = min(self.e_opt, e_va)
        self.gl = generalization_loss(e_va, self.e_opt)
        self.train_strip = [*self.train_strip, e_tr][-self.strip :]
        if self.t % self.strip != 0:
            return False
        self.progress = training_progress(self.train_strip)
        self.quotient = progress_quotient(self.gl, self.progress)
        return self.quotient > self.alpha

    def describe(self) -> str:
        """Which rule and values decided."""
        return (
            f"PQ_{self.alpha:g} (Prechelt 1998): GL / P_{self.strip} = {self.gl:.3g}% / "
            f"{_fmt(self.progress)} = {_fmt(self.quotient)} > alpha = {self.alpha:g} at the end of a "
            f"strip of {self.strip} checks (error {_fmt(self.e_va)}, lowest {_fmt(self.e_opt)})"
        )

    def state_dict(self) -> dict[str, Any]:
        """Progress: update count, lowest error, the current strip's training errors, last values."""
        return {
            "name": self.name,
            "t": self.t,
            "e_opt": self.e_opt,
            "e_va": self.e_va,
            "train_strip": list(self.train_strip),
            "gl": self.gl,
            "progress": self.progress,
            "quotient": self.quotient,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress, validated first.

        ``train_strip`` may hold more values than a new, shorter ``strip``: the last ones are kept.

        Example:
            >>> pq = PQ(alpha=1.0, strip=2)
            >>> pq.load_state_dict({"t": 1, "e_opt": 0.5, "e_va": 0.5, "gl": 0.0, "train_strip": [0.9, 0.8],
            ...                     "progress": None, "quotient": None})
            Traceback (most recent call last):
            ...
            ValueError: PQ: state field 'train_strip' holds 2 training errors, more than the t=1 updates made
        """
        fields = _state("PQ", state)
        t, e_opt, e_va, gl = _state_errors("PQ", fields)
        values = _field("PQ", fields, "train_strip")
        if not isinstance(values, (list, tuple)):
            raise TypeError(
                f"PQ: state field 'train_strip' must be a list of training errors >= 0, got {values!r}"
            )
        train_strip = [_state_number("PQ", "train_strip", x) for x in values]
        if len(train_strip) > t or (t > 0 and not train_strip):
            raise ValueError(
                f"PQ: state field 'train_strip' holds {len(train_strip)} training errors, "
                f"{'more than' if train_strip else 'none of'} the t={t} updates made"
            )
        progress = _state_number(
            "PQ", "progress", _field("PQ", fields, "progress"), infinite=True, optional=True
        )
        quotient = _state_number(
            "PQ", "quotient", _field("PQ", fields, "quotient"), infinite=True, optional=True
        )
        if (progress is None) != (quotient is None) or (progress is not None and t == 0):
            raise ValueError(
                "PQ: state field 'quotient' must be set exactly when 'progress' is (both at the end of a "
                f"strip, t > 0), got quotient={quotient!r}, progress={progress!r}, t={t}"
            )
        self.t, self.e_opt, self.e_va, self.gl = t, e_opt, e_va, gl
        self.train_strip = [float(x) for x in train_strip[-self.strip :]]  # type: ignore[arg-type]
        self.progress, self.quotient = progress, quotient


@dataclass
class UP(StoppingCriterion):
    """UP_s: stop when the validation error rose in ``s`` successive strips.

    At each end of strip (updates ``k, 2k, ...``) compare ``E_va(t)`` with ``E_va(t - k)``;
    stop when that rose ``s`` times in a row (Prechelt 1998, section 2.2; the module docstring
    explains the reading of the recursive definition). Prechelt evaluated s in 2..4 with
    ``k = 5``. Works on any "lower is better" value (the callback negates "higher is better"
    metrics); no sign requirement.

    Args:
        s: number of successive rises (>= 1).
        strip: strip length ``k`` (>= 1).

    Example:
        >>> up = UP(s=2, strip=2)
        >>> [up.update(e) for e in [1.0, 0.9, 0.95, 1.0, 0.7, 1.2]]  # strip ends: 0.9, 1.0, 1.2
        [False, False, False, False, False, True]
    """

    s: int
    strip: int = 5
    t: int = 0
    previous: float | None = None
    e_va: float | None = None
    rises: int = 0
    name: str = field(default="UP", init=False)

    def __post_init__(self) -> None:
        self.s = _check_positive_int("UP", "s", self.s)
        self.strip = _check_positive_int("UP", "strip", self.strip)

    def update(self, e_va: float, e_tr: float | None = None) -> bool:
        """Record ``E_va(t)``; at the end of a strip count a rise over ``E_va(t - k)``."""
        if isinstance(e_va, bool) or not isinstance(e_va, (int, float)) or not math.isfinite(e_va):
            raise ValueError(f"UP: validation error must be a finite number, got {e_va!r}")
        self.t += 1
        if self.t % self.strip != 0:
            return False
        e_va = float(e_va)
        rose = self.previous is not None and e_va > self.previous
        self.rises = self.rises + 1 if rose else 0
        self.e_va, self.previous = e_va, e_va
        return self.rises >= self.s

    def describe(self) -> str:
        """Which rule and values decided."""
        return (
            f"UP_{self.s} (Prechelt 1998): the error rose in {self.rises} successive strips of "
            f"{self.strip} checks (last strip end {_fmt(self.e_va)})"
        )

    def state_dict(self) -> dict[str, Any]:
        """Progress: update count, error at the last end of strip, consecutive rises."""
        return {
            "name": self.name,
            "t": self.t,
            "previous": self.previous,
            "e_va": self.e_va,
            "rises": self.rises,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress, validated first.

        Example:
            >>> UP(s=2).load_state_dict({"t": 3, "previous": 0.5, "e_va": 0.5, "rises": 4})
            Traceback (most recent call last):
            ...
            ValueError: UP: state field 'rises' must be an int in [0, 3], got 4
        """
        fields = _state("UP", state)
        t = _state_int("UP", fields, "t")
        rises = _state_int("UP", fields, "rises", maximum=t)
        previous = _state_number(
            "UP", "previous", _field("UP", fields, "previous"), error=False, optional=True
        )
        e_va = _state_number("UP", "e_va", _field("UP", fields, "e_va"), error=False, optional=True)
        if (
            (previous is None) != (e_va is None)
            or (previous is None and rises > 0)
            or (previous is not None and t == 0)
        ):
            raise ValueError(
                "UP: state field 'previous' (the error at the last end of strip) must be set exactly when "
                f"'e_va' is, and after a first end of strip, got previous={previous!r}, e_va={e_va!r}, "
                f"t={t}, rises={rises}"
            )
        self.t, self.rises, self.previous, self.e_va = t, rises, previous, e_va
