"""RegularizedModule: a LightningModule whose training loss carries L1/L2 penalties.

Subclass it instead of ``LightningModule`` and call ``super().__init__(l1=..., l2=...)``; your
``training_step`` stays as it is. The work is done by the same adapter as the
:class:`~lightning_regkit.callbacks.weight_penalty.WeightPenalty` callback, which the module
registers through ``configure_callbacks`` (if you override that hook, include
``super().configure_callbacks()``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import wraps
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lightning_regkit.callbacks.weight_penalty import _PenaltyHooks
from lightning_regkit.penalties import Penalty
from lightning_regkit.schedules import ScheduleLike

__all__ = ["RegularizedModule"]

_WRAPPED = "__regkit_wrapped__"


class _ModulePenaltyHooks(_PenaltyHooks):
    """The module's own adapter; the module's class wraps ``training_step`` instead of patching it."""

    _patch_training_step = False


def _wrap_training_step(fn: Any) -> Any:
    @wraps(fn)
    def training_step(self: RegularizedModule, *args: Any, **kwargs: Any) -> Any:
        if self.__dict__.get("_regkit_in_step", False):  # super().training_step() from a subclass
            return fn(self, *args, **kwargs)
        self.__dict__["_regkit_in_step"] = True
        try:
            output = fn(self, *args, **kwargs)
        finally:
            self.__dict__["_regkit_in_step"] = False
        hooks = self._regkit
        trainer = self._trainer
        if trainer is not None and hooks.plan is None and hooks.penalties and trainer.training:
            raise RuntimeError(
                f"{type(self).__name__}: the penalty hooks are not attached to the Trainer; if you override "
                "configure_callbacks, return super().configure_callbacks() among your callbacks"
            )
        return hooks.after_training_step(self, output)

    setattr(training_step, _WRAPPED, True)
    return training_step


class RegularizedModule(pl.LightningModule):
    """A LightningModule with L1/L2 penalties, proximal L1 and max-norm added to its training.

    ``L1(l)`` adds ``l * sum(|w|)`` and ``L2(l)`` adds ``l * sum(w**2)`` to the loss that
    ``training_step`` returns (a tensor, a dict with ``"loss"``, or ``None`` to skip). By default
    biases, 1-d tensors and normalization layers are excluded and frozen parameters are never
    penalized. In the default ``mode="fast"`` the gradient is added to ``.grad`` right before each
    optimizer step (after accumulation, before clipping) and the value is computed on logging steps
    only (logged as ``regkit/l1``, ``regkit/l2`` and added, detached, to the returned loss); see
    :mod:`lightning_regkit.callbacks.weight_penalty` for the details and ``mode="autograd"``.

    Args:
        l1: strength of an L1 penalty on the default selection (number, Schedule or ``f(t, total)``).
        l2: strength of an L2 penalty on the default selection.
        penalties: further penalties, each with its own strength and selection:
            ``[L2(1e-4), L1(1e-5, include=["encoder.*"]), MaxNorm(3.0, include=["*.weight"])]``.
        mode: ``"fast"``, ``"compiled"`` (fast, with one ``torch.compile`` pass for L1+L2; compiles
            on the first step) or ``"autograd"`` (penalty in the loss graph).
        interval: the schedule's time: ``"step"`` (optimizer steps) or ``"epoch"``.
        value_every_step: compute the value (and add it to the returned loss) at every step.
        *args: passed to ``LightningModule``.
        **kwargs: passed to ``LightningModule``.

    Manual optimization: fast mode works through ``opt.step()``; in autograd mode add
    :meth:`penalty_loss` to your loss before ``self.manual_backward``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Model(RegularizedModule):
        ...     def __init__(self):
        ...         super().__init__(l1=1e-5, l2=1e-4)
        ...         self.net = nn.Linear(4, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return nn.functional.mse_loss(self.net(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> [p.name for p in Model().penalties]
        ['l1', 'l2']
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fn = getattr(cls, "training_step", None)
        if fn is not None and fn is not pl.LightningModule.training_step and not getattr(fn, _WRAPPED, False):
            cls.training_step = _wrap_training_step(fn)  # type: ignore[method-assign]

    def __init__(
        self,
        l1: ScheduleLike = 0.0,
        l2: ScheduleLike = 0.0,
        penalties: Sequence[Penalty | Mapping[str, Any]] | None = None,
        mode: str = "fast",
        interval: str = "step",
        value_every_step: bool = False,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._regkit = _ModulePenaltyHooks(
            l1, l2, penalties, mode, interval, value_every_step, owner=type(self).__name__
        )

    @property
    def penalties(self) -> list[Penalty]:
        """The penalties this module trains with."""
        return self._regkit.penalties

    def penalty_loss(self) -> Tensor:
        """The differentiable penalty at the current step (add it to your loss in manual optimization).

        Only needed with ``mode="autograd"``; holds the gradient-adding penalties (not proximal L1,
        not MaxNorm, which act after the optimizer step).
        """
        return self._regkit.penalty_loss()

    @override
    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Register the penalty hooks (include this in an override).

        Returns nothing when the hooks are already attached (``validate``/``test`` after ``fit``
        on the same Trainer), so Lightning does not report them as overriding themselves.
        """
        trainer = self._trainer
        if trainer is not None and any(cb is self._regkit for cb in getattr(trainer, "callbacks", [])):
            return []
        return [self._regkit]
