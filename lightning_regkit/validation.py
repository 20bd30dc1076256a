"""Argument checks shared by the adapters: one message naming owner, argument, value and what is allowed.

Example:
    >>> from typing import Literal
    >>> check_choice("WeightPenalty", "mode", "slow", Literal["fast", "autograd"])
    Traceback (most recent call last):
    ...
    ValueError: WeightPenalty: mode must be one of ['fast', 'autograd'], got 'slow'
"""

from __future__ import annotations

from typing import Any, TypeVar, get_args

__all__ = ["check_bool", "check_choice"]

T = TypeVar("T")


def check_choice(owner: str, name: str, value: T, choices: Any) -> T:
    """``value`` if it is one of ``choices`` (a ``Literal[...]`` type or a sequence), else ``ValueError``.

    Example:
        >>> check_choice("DropoutScheduler", "interval", "epoch", ("step", "epoch"))
        'epoch'
    """
    allowed = list(get_args(choices) or choices)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{owner}: {name} must be one of {allowed}, got {value!r}")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``value`` if it is a bool, else ``TypeError``.

    Example:
        >>> check_bool("WeightPenalty", "value_every_step", 1)
        Traceback (most recent call last):
        ...
        TypeError: WeightPenalty: value_every_step must be a bool, got 1
    """
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {value!r}")
    return value
