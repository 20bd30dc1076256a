"""The training clock: the one definition of a schedule's time ``t`` and length ``total``.

Every adapter that follows a schedule (penalty strength, dropout p) reads its time here, so
all of them agree in every kind of run:

* ``interval="step"``, automatic optimization: ``t`` is ``trainer.global_step`` (optimizer
  steps taken, so every micro-batch of an accumulated step sees the same ``t``) and ``total``
  is ``trainer.estimated_stepping_batches`` (accumulation and ``max_steps`` included).
* ``interval="step"``, manual optimization: ``t`` counts *training batches* of the fit (0 on the
  first batch), whatever the number of optimizers and however often each steps in a batch
  (``global_step`` would advance once per ``optimizer.step()`` of every optimizer: 2x fast with
  a generator and a discriminator). ``total`` is ``num_training_batches * max_epochs``. Lightning's
  ``max_steps`` counts optimizer steps of every optimizer, so it cannot say how many batches a
  manual run has: when ``max_epochs`` is unlimited ``total`` is unknown (``None``), and when
  ``max_steps`` ends the run first the schedule does not reach its end (a warning says so).
* ``interval="epoch"``: ``t`` is ``trainer.current_epoch``, ``total`` is ``max_epochs``.

``total`` is ``None`` when the length of training is unknown (``max_epochs=-1`` without
``max_steps``, or an iterable dataset without a length); ``max_epochs=0`` gives ``total=0``
(no step runs). A resumed fit continues ``t``: Lightning restores ``global_step``, the epoch
and the batch count from the checkpoint.

Example:
    >>> from types import SimpleNamespace as NS
    >>> trainer = NS(current_epoch=3, max_epochs=10)
    >>> clock = TrainingClock("epoch")
    >>> clock.start(trainer, NS(automatic_optimization=True))
    >>> clock.now(trainer), clock.total
    (3, 10)
"""

from __future__ import annotations

import math
from typing import Any, Literal

from lightning_regkit._compat import batches_completed

__all__ = ["Interval", "TrainingClock"]

Interval = Literal["step", "epoch"]
_INTERVALS = ("step", "epoch")


class TrainingClock:
    """``t`` and ``total`` of a schedule for the run a Trainer drives (see the module docstring).

    Call :meth:`start` once the training data is set up (``on_train_start``), then :meth:`now`
    whenever the schedule is evaluated.

    Args:
        interval: ``"step"`` or ``"epoch"``.
        owner: the name used in error messages.

    Example:
        >>> TrainingClock("batch")
        Traceback (most recent call last):
        ...
        ValueError: TrainingClock: interval must be one of ['step', 'epoch'], got 'batch'
    """

    def __init__(self, interval: Interval, owner: str = "TrainingClock") -> None:
        if interval not in _INTERVALS:
            raise ValueError(f"{owner}: interval must be one of {list(_INTERVALS)}, got {interval!r}")
        self.interval = interval
        self.owner = owner
        self.total: int | None = None
        self.manual = False
        self.started = False

    def start(self, trainer: Any, pl_module: Any) -> None:
        """Read the run's length and kind (automatic or manual optimization)."""
        self.manual = not bool(pl_module.automatic_optimization)
        self.total = self._total(trainer)
        self.started = True

    def _total(self, trainer: Any) -> int | None:
        max_epochs = trainer.max_epochs
        if self.interval == "epoch":
            return int(max_epochs) if max_epochs is not None and max_epochs >= 0 else None
        if not self.manual:  # Lightning gives inf, or max_steps (-1: unlimited) for a loader without a length
            total = trainer.estimated_stepping_batches
            return int(total) if math.isfinite(total) and total >= 0 else None
        batches = trainer.num_training_batches
        if max_epochs is None or max_epochs < 0 or not math.isfinite(batches):
            return None
        total = int(batches) * int(max_epochs)
        max_steps = getattr(trainer, "max_steps", -1)
        if max_steps is not None and 0 <= max_steps < total * max(len(trainer.optimizers), 1):
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"{self.owner}: under manual optimization the schedule's step clock counts training "
                f"batches (total={total} = {int(batches)} batches x {max_epochs} epochs), while max_steps="
                f"{max_steps} counts optimizer steps of every optimizer; if max_steps ends the run first, "
                "the schedule does not reach its end. Bound the run with max_epochs (or "
                "limit_train_batches), or use interval='epoch'."
            )
        return total

    def now(self, trainer: Any) -> int:
        """The current ``t``: the step (or batch, or epoch) being trained, counted from 0."""
        if self.interval == "epoch":
            return int(trainer.current_epoch)
        if self.manual:
            return batches_completed(trainer)
        return int(trainer.global_step)
