"""RegularizedModule: a LightningModule whose training loss carries L1/L2 penalties.

Subclass it instead of ``LightningModule`` and pass the penalty arguments to
``super().__init__(l2=..., ...)``; your ``training_step`` stays as it is. The work is done by the
same adapter as the :class:`~lightning_regkit.callbacks.weight_penalty.WeightPenalty` callback,
which the module registers through ``configure_callbacks`` (if you override that hook, include
``super().configure_callbacks()``); the module form adds one thing the callback cannot: the
penalty joins the loss ``training_step`` returns.

It is a mixin that also works *beside* another LightningModule of yours, in either order:
``class M(RegularizedModule, MyBase)`` and ``class M(MyBase, RegularizedModule)`` behave the same.
Its metaclass places the kit's class right after your subclasses in the MRO, so
``super().__init__(l2=1e-4, **my_base_kwargs)`` hands the penalty arguments to the kit and the rest
to ``MyBase``. ``RegularizedModule`` is a ``lightning.pytorch.LightningModule``; the same class for
``pytorch_lightning`` is ``lightning_regkit.pytorch_lightning.RegularizedModule``.
"""

from __future__ import annotations

from abc import ABCMeta
from collections.abc import Mapping, Sequence
from functools import wraps
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_regkit.callbacks.weight_penalty import Mode, _PenaltyHooks
from lightning_regkit.clock import Interval
from lightning_regkit.penalties import Penalty
from lightning_regkit.schedules import ScheduleLike

__all__ = ["RegularizationMixin", "RegularizedModule"]

_WRAPPED = "__regkit_wrapped__"


class _ModulePenaltyHooks(_PenaltyHooks):
    """The module's own adapter: the module's class wraps ``training_step`` so the loss has the penalty."""

    _joins_loss = True


class _KitFirst(ABCMeta):
    """Puts the kit's mixin right after the user's own subclasses of it in every MRO.

    ``class M(MyBase, RegularizedModule)`` would otherwise resolve ``super().__init__`` (and
    ``configure_callbacks``) to ``MyBase`` first, which knows nothing of the penalty arguments.
    The declared order among the user's classes is kept; if a user subclass of the kit comes after
    another base (``class B(MyBase, MyRegularized)``), the MRO is left as Python computes it.
    A subclass of ``ABCMeta`` so that it also combines with ``ABC`` bases.
    """

    def mro(cls) -> list[type]:
        order = super().mro()
        kit = [c for c in order if c.__dict__.get("_regkit_kit_class", False)]
        if not kit:
            return order
        first = order.index(kit[0])
        others = [i for i in range(1, first) if kit[0] not in order[i].__mro__]
        if not others or any(kit[0] in order[i].__mro__ for i in range(others[0], first)):
            return order
        i = others[0]
        return order[:i] + kit + [c for c in order[i:] if c not in kit]


def _wrap_training_step(fn: Any) -> Any:
    @wraps(fn)
    def training_step(self: RegularizationMixin, *args: Any, **kwargs: Any) -> Any:
        if self.__dict__.get("_regkit_in_step", False):  # super().training_step() from a subclass
            return fn(self, *args, **kwargs)
        self.__dict__["_regkit_in_step"] = True
        try:
            output = fn(self, *args, **kwargs)
        finally:
            self.__dict__["_regkit_in_step"] = False
        hooks = self._regkit
        trainer = self._trainer
        if trainer is not None and hooks._run(trainer) is None and hooks.penalties and trainer.training:
            raise RuntimeError(
                f"{type(self).__name__}: the penalty hooks are not attached to the Trainer; if you override "
                "configure_callbacks, return super().configure_callbacks() among your callbacks"
            )
        return hooks.after_training_step(self, output)

    setattr(training_step, _WRAPPED, True)
    return training_step


class RegularizationMixin(metaclass=_KitFirst):
    """The namespace-free part of :class:`RegularizedModule` (combine it with a ``LightningModule``).

    Example:
        >>> import lightning.pytorch as pl
        >>> class Model(RegularizationMixin, pl.LightningModule):
        ...     pass
        >>> [p.name for p in Model(l2=1e-4).penalties]
        ['l2']
    """

    _regkit_kit_class = True
    _regkit: _ModulePenaltyHooks
    _trainer: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fn = getattr(cls, "training_step", None)
        base = next(
            (
                c.__dict__["training_step"]
                for c in cls.__mro__
                if c.__name__ == "LightningModule" and "training_step" in c.__dict__
            ),
            None,
        )
        if fn is not None and fn is not base and not getattr(fn, _WRAPPED, False):
            cls.training_step = _wrap_training_step(fn)  # type: ignore[attr-defined]

    def __init__(
        self,
        *args: Any,
        l1: ScheduleLike = 0.0,
        l2: ScheduleLike = 0.0,
        penalties: Sequence[Penalty | Mapping[str, Any]] | None = None,
        mode: Mode = "fast",
        interval: Interval = "step",
        value_every_step: bool = False,
        **kwargs: Any,
    ) -> None:
        if (
            "_parameters" not in self.__dict__
        ):  # else: called again after the module was built (explicit init)
            super().__init__(*args, **kwargs)
        elif args or kwargs:
            raise TypeError(
                f"{type(self).__name__}: RegularizedModule.__init__ called on a module that is already "
                f"initialized takes only the penalty arguments, got {args!r}, {sorted(kwargs)}"
            )
        self._regkit = _ModulePenaltyHooks(
            l1, l2, penalties, mode, interval, value_every_step, owner=type(self).__name__
        )

    @property
    def penalties(self) -> list[Penalty]:
        """The penalties this module trains with."""
        return self._regkit.penalties

    def penalty_loss(self) -> Tensor:
        """The penalty value at the current step (0 outside ``fit``).

        Not needed for training: under automatic optimization the module adds it to the loss
        ``training_step`` returns; under manual optimization the kit adds the penalty's gradient at
        every ``optimizer.step()`` and this value is detached (adding it to your loss changes
        nothing). Holds the gradient-adding penalties (not proximal L1, not MaxNorm).
        """
        return self._regkit.penalty_loss()

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Register the penalty hooks (include this in an override).

        Returns nothing when the hooks are already attached (``validate``/``test`` after ``fit``
        on the same Trainer), so Lightning does not report them as overriding themselves.
        """
        trainer = self._trainer
        if trainer is not None and any(cb is self._regkit for cb in getattr(trainer, "callbacks", [])):
            return []
        return [self._regkit]


class RegularizedModule(RegularizationMixin, pl.LightningModule):
    """A LightningModule with L1/L2 penalties, proximal L1 and max-norm added to its training.

    ``L1(l)`` adds ``l * sum(|w|)`` and ``L2(l)`` adds ``l * sum(w**2)`` to the loss that
    ``training_step`` returns (a tensor, a dict with ``"loss"``, or ``None`` to skip). By default
    biases, 1-d tensors and normalization layers are excluded and frozen parameters are never
    penalized (a parameter unfrozen later is, from the step it trains). In the default
    ``mode="fast"`` the gradient is added to ``.grad`` right before each optimizer step (after
    accumulation, before clipping) and the value is computed on logging steps only (logged as
    ``regkit/l1``, ``regkit/l2`` and added, detached, to the returned loss); see
    :mod:`lightning_regkit.callbacks.weight_penalty` for the details and ``mode="autograd"``.

    A mixin: ``class M(RegularizedModule)``, ``class M(RegularizedModule, MyBase)`` and
    ``class M(MyBase, RegularizedModule)`` all work, the penalty arguments (keyword-only) going to
    the kit and the rest to ``MyBase`` (see :mod:`lightning_regkit.module`).

    Args:
        *args: passed on to the next class (``LightningModule`` or your base).
        l1: strength of an L1 penalty on the default selection (a number, a Schedule, ``f(progress)``
            or ``f(t, total)``).
        l2: strength of an L2 penalty on the default selection.
        penalties: further penalties, each with its own strength and selection:
            ``[L2(1e-4), L1(1e-5, include=["encoder.*"]), MaxNorm(3.0, include=["*.weight"])]``.
        mode: ``"fast"``, ``"compiled"`` (fast, with one ``torch.compile`` pass for L1+L2; compiles
            on the first step) or ``"autograd"`` (penalty in the loss graph).
        interval: the schedule's time: ``"step"`` (optimizer steps; training batches under manual
            optimization) or ``"epoch"``.
        value_every_step: compute the value (and add it to the returned loss) at every step.
        **kwargs: passed on to the next class.

    Manual optimization: the penalty's gradient is added by every ``opt.step()`` for that
    optimizer's parameters, in every mode.

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

    _regkit_kit_class = True
