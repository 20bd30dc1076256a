"""WeightPenalty: L1/L2 penalties, proximal L1 and max-norm as a Lightning callback.

The Lightning adapter around :mod:`lightning_regkit.penalties`, shared with
:class:`lightning_regkit.module.RegularizedModule`. Where each part runs:

- **Gradient** (``mode="fast"``, default): in ``on_before_optimizer_step``, which Lightning 2.x
  calls after backward and gradient accumulation, after AMP unscaling, and *before* gradient
  clipping, once per optimizer step and for that optimizer only. The penalty's gradient is added
  to ``.grad`` with multi-tensor kernels: the same gradient as autograd through the loss, at the
  cost of about one optimizer step. Lightning calls the hook inside the closure it hands to
  ``optimizer.step``, so closures evaluated several times (LBFGS) get the gradient every time.
- **Gradient** (``mode="compiled"``): as ``"fast"``, but L1 (with L2) runs as one ``torch.compile``
  kernel per dtype and device (:mod:`lightning_regkit.compiled`): one pass over memory instead of
  three, after a compilation on the first step (needs a C++ compiler on CPU; falls back to the
  foreach kernels with a warning). L2 alone is already one foreach call and is not compiled.
- **Gradient** (``mode="autograd"``): the penalty is added, with its graph, to the loss returned by
  ``training_step`` (exact autograd path).
- **Value**: added (detached in fast mode) to the loss ``training_step`` returns, and logged as
  ``regkit/l1``, ``regkit/l2`` (``regkit/l2_0``, ... when a kind repeats; ``regkit/penalty`` is the
  sum when there are several), on logging steps only, unless ``value_every_step=True``. With LBFGS it
  is computed at every closure evaluation, so its line search sees a consistent objective.
- **Projections** (``L1(proximal=True)``, ``MaxNorm``): a ``register_step_post_hook`` on every
  optimizer, after each real step (a step that ``GradScaler`` skips is not projected).

Mixed precision: with ``16-mixed`` Lightning unscales the gradients before
``on_before_optimizer_step``, so the penalty gradient is added in true units and ``GradScaler``'s
inf check (made at unscale time) is unaffected; ``bf16-mixed`` has no scaler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import wraps
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_zero_debug
from torch import Tensor
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_regkit.penalties import L1, L2, Penalty, PenaltyPlan, make_penalty, resolve_penalties
from lightning_regkit.schedules import ScheduleLike

__all__ = ["WeightPenalty"]

_MODES = ("fast", "compiled", "autograd")
_INTERVALS = ("step", "epoch")


def _build_penalties(
    owner: str,
    l1: ScheduleLike,
    l2: ScheduleLike,
    penalties: Sequence[Penalty | Mapping[str, Any]] | None,
) -> list[Penalty]:
    out: list[Penalty] = []
    for name, cls, value in (("l1", L1, l1), ("l2", L2, l2)):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            continue
        try:
            out.append(cls(value))
        except (TypeError, ValueError) as err:
            raise type(err)(f"{owner}: {name}: {err}") from None
    if penalties is not None:
        if isinstance(penalties, (str, Mapping, Penalty)) or not isinstance(penalties, Sequence):
            raise TypeError(
                f"{owner}: penalties must be a list of L1/L2/MaxNorm (or dicts), got {penalties!r}"
            )
        for spec in penalties:
            try:
                out.append(make_penalty(spec))
            except (TypeError, ValueError) as err:
                raise type(err)(f"{owner}: penalties: {err}") from None
    return out


def _raw(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "_optimizer", optimizer)


class _PenaltyHooks(Callback):
    """The shared adapter: everything but the public name (see the module docstring)."""

    _patch_training_step = True

    def __init__(
        self,
        l1: ScheduleLike = 0.0,
        l2: ScheduleLike = 0.0,
        penalties: Sequence[Penalty | Mapping[str, Any]] | None = None,
        mode: str = "fast",
        interval: str = "step",
        value_every_step: bool = False,
        owner: str = "WeightPenalty",
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"{owner}: mode must be one of {_MODES}, got {mode!r}")
        if interval not in _INTERVALS:
            raise ValueError(f"{owner}: interval must be one of {_INTERVALS}, got {interval!r}")
        if not isinstance(value_every_step, bool):
            raise TypeError(f"{owner}: value_every_step must be a bool, got {value_every_step!r}")
        self.owner = owner
        self.penalties = _build_penalties(owner, l1, l2, penalties)
        self.mode = mode
        self.interval = interval
        self.value_every_step = value_every_step
        self.plan: PenaltyPlan | None = None
        self._trainer: pl.Trainer | None = None
        self._total: int | None = None
        self._always_value = False
        self._handles: list[RemovableHandle] = []
        self._patched: pl.LightningModule | None = None

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles of a module (SWA, EMA, spawn) must not drag the Trainer or hook handles along
        state = dict(self.__dict__)
        state.update(_trainer=None, _handles=[], _patched=None)
        return state

    @property
    def state_key(self) -> str:
        """Identifies this instance among several in a checkpoint."""
        kinds = [(p.name, p.include, p.exclude) for p in self.penalties]  # no schedule reprs (addresses)
        # "compiled" is "fast" with another kernel: a checkpoint resumes under either
        mode = "autograd" if self.mode == "autograd" else "fast"
        return self._generate_state_key(penalties=repr(kinds), mode=mode)

    # ------------------------------------------------------------------ time
    def _time(self) -> tuple[int, int | None]:
        trainer = self._trainer
        if trainer is None:
            return 0, None
        return (trainer.global_step if self.interval == "step" else trainer.current_epoch), self._total

    def _run_total(self, trainer: pl.Trainer) -> int | None:
        if self.interval == "epoch":
            return trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        total = trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) else None

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage != "fit" or not self.penalties:
            return
        self.plan = resolve_penalties(self.penalties, pl_module, compiled=self.mode == "compiled")
        for key, names in zip(self.plan.keys, self.plan.names, strict=True):
            rank_zero_info(f"{self.owner}: {key} applies to {len(names)} parameter tensors")
            rank_zero_debug(f"{self.owner}: {key} parameters: {names}")
        if self._patch_training_step and self._patched is None:
            original = pl_module.training_step

            @wraps(original)
            def training_step(*args: Any, **kwargs: Any) -> Any:
                return self.after_training_step(pl_module, original(*args, **kwargs))

            pl_module.training_step = training_step  # type: ignore[method-assign]
            self._patched = pl_module

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        self._by_optimizer_reset()
        if self.plan is None:
            return
        self._total = self._run_total(trainer)
        probes = {0} if self._total is None else {0, self._total // 2, self._total}
        for t in sorted(probes):
            self.plan.strengths(t, self._total)  # a schedule that goes negative fails now, not mid-run
        optimizers = [_raw(o) for o in trainer.optimizers]
        self._always_value = any(isinstance(o, torch.optim.LBFGS) for o in optimizers)
        if self.plan.projects:
            for opt in optimizers:
                self._handles.append(opt.register_step_post_hook(self._make_post_hook()))

    def _by_optimizer_reset(self) -> None:
        if self.plan is not None:
            self.plan._by_optimizer.clear()
        for h in self._handles:
            h.remove()
        self._handles = []

    def _make_post_hook(self) -> Callable[[torch.optim.Optimizer, Any, Any], None]:
        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if self.plan is not None:
                t, total = self._time()
                self.plan.project_(t, total, optimizer)

        return hook

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.mode != "autograd" and self.plan is not None and self.plan.adds_gradient:
            t, total = self._time()
            self.plan.add_grads_(t, total, _raw(optimizer))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._by_optimizer_reset()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._by_optimizer_reset()
        if self._patched is not None:
            self._patched.__dict__.pop("training_step", None)
            self._patched = None

    # ------------------------------------------------------------------ loss and logging
    def penalty_loss(self) -> Tensor:
        """The differentiable penalty at the current step (for manual optimization in autograd mode).

        Contains the gradient-adding penalties only (not proximal L1, not MaxNorm).
        """
        if self.plan is None:
            return torch.zeros(())
        t, total = self._time()
        return self.plan.loss(t, total)

    def after_training_step(self, pl_module: pl.LightningModule, output: Any) -> Any:
        """Add the penalty to what ``training_step`` returned (tensor, dict with ``"loss"``, None); log it."""
        plan, trainer = self.plan, self._trainer
        if plan is None or trainer is None or not trainer.training:
            return output
        logging = bool(getattr(trainer._logger_connector, "should_update_logs", True))
        automatic = pl_module.automatic_optimization
        loss = output.get("loss") if isinstance(output, Mapping) else output
        if not isinstance(loss, Tensor):
            loss = None
        need_value = logging or (
            automatic and loss is not None and (self.value_every_step or self._always_value)
        )
        t, total = self._time()
        values = plan.values(t, total) if need_value else {}
        if values:
            total_value = torch.stack([v.to(torch.float32) for v in values.values()]).sum()
            if logging:
                for key, v in values.items():
                    pl_module.log(f"regkit/{key}", v, on_step=True, on_epoch=False)
                if len(values) > 1:
                    pl_module.log("regkit/penalty", total_value, on_step=True, on_epoch=False)
        if not automatic or loss is None:
            return output
        if self.mode == "autograd":
            graph_part = plan.loss(t, total)
            # the gradient flows through graph_part; the detached rest makes the value complete
            extra = (total_value - graph_part.detach()) if values else 0.0
            new_loss = loss + graph_part.to(loss.device) + extra
        elif values:
            new_loss = loss + total_value.to(loss.device)
        else:
            return output
        if isinstance(output, Mapping):
            out = dict(output)
            out["loss"] = new_loss
            return out
        return new_loss


class WeightPenalty(_PenaltyHooks):
    """L1/L2 penalties, proximal L1 and max-norm for any LightningModule, as a callback.

    Same arguments as :class:`~lightning_regkit.module.RegularizedModule`. ``L1(l)`` adds
    ``l * sum(|w|)`` and ``L2(l)`` adds ``l * sum(w**2)``; biases, 1-d tensors and normalization
    layers are excluded by default (see :func:`~lightning_regkit.penalties.select_parameters`).
    The module's ``training_step`` is wrapped during ``fit`` so the loss it returns includes the
    penalty value (every step in autograd mode; on logging steps in fast mode, or every step with
    ``value_every_step=True``).

    Args:
        l1: strength of an L1 penalty on the default selection (number, Schedule or ``f(t, total)``).
        l2: strength of an L2 penalty on the default selection.
        penalties: further penalties, each with its own strength and selection: ``L1``, ``L2``,
            ``MaxNorm`` or dicts ``{"name": "l2", "strength": 1e-4, "include": [...]}``.
        mode: ``"fast"`` (gradient added to ``.grad`` before the optimizer step), ``"compiled"``
            (the same, with one ``torch.compile`` pass for L1+L2; compiles on the first step) or
            ``"autograd"`` (penalty inside the loss graph).
        interval: the schedule's time: ``"step"`` (optimizer steps) or ``"epoch"``.
        value_every_step: compute the value (and add it to the returned loss) at every step, not only
            on logging steps.

    Manual optimization: in fast mode the gradient is added by ``opt.step()`` (the
    ``LightningOptimizer``) for that optimizer's parameters; in autograd mode add
    :meth:`penalty_loss` to your loss before ``manual_backward``.

    Example:
        >>> from lightning_regkit.penalties import L1, MaxNorm
        >>> cb = WeightPenalty(l2=1e-4, penalties=[L1(1e-5, include=["*.weight"]), MaxNorm(3.0)])
        >>> [p.name for p in cb.penalties]
        ['l2', 'l1', 'maxnorm']
    """

    def __init__(
        self,
        l1: ScheduleLike = 0.0,
        l2: ScheduleLike = 0.0,
        penalties: Sequence[Penalty | Mapping[str, Any]] | None = None,
        mode: str = "fast",
        interval: str = "step",
        value_every_step: bool = False,
    ) -> None:
        super().__init__(l1, l2, penalties, mode, interval, value_every_step, owner="WeightPenalty")
        if not self.penalties:
            raise ValueError(
                f"WeightPenalty: no penalty given; set l1, l2 or penalties, got l1={l1!r}, l2={l2!r}, "
                f"penalties={penalties!r}"
            )
