"""WeightPenalty: L1/L2 penalties, proximal L1 and max-norm as a Lightning callback.

The Lightning adapter around :mod:`lightning_regkit.penalties`, shared with
:class:`lightning_regkit.module.RegularizedModule`. It works through Lightning's hooks only: it
never patches or replaces a method of the user's module. Where each part runs:

- **Which parameters**: at every optimizer step, the selected parameters (``include``/``exclude``,
  judged on names) that currently require grad and that the stepping optimizer owns. Layers built
  in ``configure_model``, a backbone unfrozen by ``BackboneFinetuning``, a param group added with
  ``add_param_group`` are penalized from the step they train; a frozen weight is never touched.
  Selection errors (a pattern that matches no parameter name) are raised at ``on_fit_start``,
  once the model is complete.
- **When** (the schedule's ``t``): the kit's one training clock
  (:class:`~lightning_regkit.clock.TrainingClock`): optimizer steps under automatic optimization,
  training batches under manual optimization (whatever the number of optimizers), or epochs.
- **Gradient** (``mode="fast"``, default): in ``on_before_optimizer_step``, which Lightning 2.x
  calls after backward and gradient accumulation, after AMP unscaling, and *before* gradient
  clipping, once per optimizer step and for that optimizer only. The penalty's gradient is added
  to ``.grad`` with multi-tensor kernels: the same gradient as autograd through the loss, at the
  cost of about one optimizer step.
- **Gradient** (``mode="compiled"``): as ``"fast"``, but L1 (with L2) runs as one ``torch.compile``
  kernel per dtype and device (:mod:`lightning_regkit.compiled`): one pass over memory instead of
  three, after a compilation on the first step (needs a C++ compiler on CPU; falls back to the
  foreach kernels with a warning). L2 alone is already one foreach call and is not compiled.
- **Gradient** (``mode="autograd"``): the exact autograd path. The callback differentiates the
  penalty with ``torch.autograd.grad`` in ``on_before_optimizer_step`` and adds it to ``.grad``
  (so it also works under manual optimization); the module form adds the penalty, with its graph,
  to the loss ``training_step`` returns (automatic optimization).
- **Value**: logged as ``regkit/l1``, ``regkit/l2`` (``regkit/l2_0``, ... when a kind repeats;
  ``regkit/penalty`` is the sum when there are several), on logging steps only, unless
  ``value_every_step=True``. The module form also adds it (detached in fast mode) to the loss
  ``training_step`` returns; the callback cannot change that loss through hooks, so it only logs.
- **Projections** (``L1(proximal=True)``, ``MaxNorm``): a ``register_step_post_hook`` on every
  optimizer, after each real step (a step that ``GradScaler`` skips is not projected).
- **Closure optimizers** (``torch.optim.LBFGS``): LBFGS re-evaluates the loss in its line search,
  so the objective it sees must include the penalty. The module form adds the value at every
  closure evaluation; the callback, which cannot change the loss, refuses LBFGS at the start of
  ``fit`` and names the module form.

Mixed precision: with ``16-mixed`` Lightning unscales the gradients before
``on_before_optimizer_step``, so the penalty gradient is added in true units and ``GradScaler``'s
inf check (made at unscale time) is unaffected; ``bf16-mixed`` has no scaler. Values are
accumulated in float32 at least, so ``16-true`` models do not overflow.

One instance may serve several fits, also nested ones (a Trainer started inside another's
``fit``): the state of each run is kept per Trainer and dropped when its fit ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_zero_debug
from torch import Tensor
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_regkit._compat import should_update_logs
from lightning_regkit.clock import Interval, TrainingClock
from lightning_regkit.penalties import L1, L2, Penalty, PenaltyPlan, make_penalty
from lightning_regkit.schedules import ScheduleLike
from lightning_regkit.validation import check_bool, check_choice

__all__ = ["Mode", "WeightPenalty"]

#: How the penalty's gradient is made (see the module docstring).
Mode = Literal["fast", "compiled", "autograd"]


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


@dataclass
class _Run:
    """What one fit (one Trainer) needs; created at ``on_fit_start``, dropped when the fit ends."""

    trainer: Any
    plan: PenaltyPlan
    clock: TrainingClock
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    handles: list[RemovableHandle] = field(default_factory=list)
    always_value: bool = False

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class _PenaltyHooks(Callback):
    """The shared adapter: everything but the public name (see the module docstring).

    ``_joins_loss`` is True for the module form, whose class wraps ``training_step`` so that the
    returned loss carries the penalty; the callback form works through hooks only.
    """

    _joins_loss = False

    def __init__(
        self,
        l1: ScheduleLike = 0.0,
        l2: ScheduleLike = 0.0,
        penalties: Sequence[Penalty | Mapping[str, Any]] | None = None,
        mode: Mode = "fast",
        interval: Interval = "step",
        value_every_step: bool = False,
        owner: str = "WeightPenalty",
    ) -> None:
        self.owner = owner
        self.mode: Mode = check_choice(owner, "mode", mode, Mode)
        self.interval: Interval = check_choice(owner, "interval", interval, Interval)
        self.value_every_step = check_bool(owner, "value_every_step", value_every_step)
        self.penalties = _build_penalties(owner, l1, l2, penalties)
        #: the plan of the latest fit (kept after it for inspection: ``plan.live_names()``)
        self.plan: PenaltyPlan | None = None
        self._runs: dict[int, _Run] = {}  # id(trainer) -> run; several when Trainers nest
        self._stack: list[int] = []  # the runs in the order they started (penalty_loss uses the last)

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles of a module (SWA, EMA, spawn) must not drag a run (model, hook handles) along
        state = dict(self.__dict__)
        state.update(plan=None, _runs={}, _stack=[])
        return state

    @property
    def state_key(self) -> str:
        """Identifies this instance among several in a checkpoint."""
        kinds = [(p.name, p.include, p.exclude) for p in self.penalties]  # no schedule reprs (addresses)
        # "compiled" is "fast" with another kernel: a checkpoint resumes under either
        mode = "autograd" if self.mode == "autograd" else "fast"
        return self._generate_state_key(penalties=repr(kinds), mode=mode)

    # ------------------------------------------------------------------ runs
    def _run(self, trainer: Any) -> _Run | None:
        return self._runs.get(id(trainer)) if trainer is not None else None

    def _close(self, trainer: pl.Trainer) -> None:
        run = self._runs.pop(id(trainer), None)
        if run is not None:
            run.close()
            self._stack = [k for k in self._stack if k != id(trainer)]

    # ------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(trainer)  # a run left by an interrupted fit of the same Trainer
        if not self.penalties:
            return
        plan = PenaltyPlan(self.penalties, pl_module, compiled=self.mode == "compiled")
        names = plan.check_selection(self.owner)  # the model is complete now (after configure_model)
        for key, selected in zip(plan.keys, names, strict=True):
            rank_zero_info(
                f"{self.owner}: {key} selects {len(selected)} parameter tensors (frozen ones included)"
            )
            rank_zero_debug(f"{self.owner}: {key} parameters: {selected}")
        self._runs[id(trainer)] = _Run(trainer, plan, TrainingClock(self.interval, self.owner))
        self._stack.append(id(trainer))
        self.plan = plan

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self._run(trainer)
        if run is None:
            return
        run.clock.start(trainer, pl_module)
        total = run.clock.total
        for t in sorted({0} if total is None else {0, total // 2, total}):
            run.plan.strengths(t, total)  # a schedule that goes negative fails now, not mid-run
        run.optimizers = [_raw(o) for o in trainer.optimizers]
        lbfgs = any(isinstance(o, torch.optim.LBFGS) for o in run.optimizers)
        if lbfgs and run.plan.adds_gradient and not self._joins_loss:
            raise ValueError(
                f"{self.owner}: torch.optim.LBFGS re-evaluates the loss in its line search, and a callback "
                "cannot add the penalty to the loss your training_step returns, so LBFGS would see an "
                "objective without it while the gradient has it. Use the module form, RegularizedModule "
                "(it adds the penalty to the returned loss at every closure evaluation)"
            )
        run.always_value = lbfgs
        if run.plan.projects:
            for opt in run.optimizers:
                run.handles.append(opt.register_step_post_hook(self._make_post_hook(trainer)))

    def _make_post_hook(self, trainer: pl.Trainer) -> Callable[[torch.optim.Optimizer, Any, Any], None]:
        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            run = self._run(trainer)
            if run is not None:
                run.plan.project_(run.clock.now(trainer), run.clock.total, optimizer)

        return hook

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        run = self._run(trainer)
        if run is None or not run.plan.adds_gradient:
            return
        t, total = run.clock.now(trainer), run.clock.total
        if self.mode != "autograd":
            run.plan.add_grads_(t, total, _raw(optimizer))
        elif not (self._joins_loss and pl_module.automatic_optimization):  # else: in the loss graph
            run.plan.add_autograd_grads_(t, total, _raw(optimizer))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        run = self._run(trainer)
        if self._joins_loss or run is None or not (self.value_every_step or should_update_logs(trainer)):
            return  # the module form logs in training_step, where the value joins the loss
        self._log(pl_module, run.plan.values(run.clock.now(trainer), run.clock.total, run.optimizers))

    def _log(self, pl_module: pl.LightningModule, values: dict[str, Tensor]) -> Tensor | None:
        if not values:
            return None
        total_value = torch.stack([v.to(torch.float32) for v in values.values()]).sum()
        for key, v in values.items():
            pl_module.log(f"regkit/{key}", v, on_step=True, on_epoch=False, batch_size=1)
        if len(values) > 1:
            pl_module.log("regkit/penalty", total_value, on_step=True, on_epoch=False, batch_size=1)
        return total_value

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close(trainer)

    # ------------------------------------------------------------------ loss (module form)
    def penalty_loss(self) -> Tensor:
        """The penalty value at the current step of the running fit (0 outside a fit).

        With its graph under automatic optimization; detached under manual optimization, where the
        kit adds the penalty's gradient itself at every ``optimizer.step()`` (adding this value to
        your loss then changes nothing, so no penalty is counted twice).
        """
        run = self._runs.get(self._stack[-1]) if self._stack else None
        if run is None or not run.clock.started:
            return torch.zeros(())
        value = run.plan.loss(run.clock.now(run.trainer), run.clock.total, run.optimizers)
        return value.detach() if run.clock.manual else value

    @torch.compiler.disable  # eager, outside a compiled training_step: no graph break guards on t or values
    def after_training_step(self, pl_module: pl.LightningModule, output: Any) -> Any:
        """Add the penalty to what ``training_step`` returned (tensor, dict with ``"loss"``, None); log it."""
        trainer = pl_module._trainer
        run = self._run(trainer)
        if run is None or trainer is None or not trainer.training:
            return output
        plan = run.plan
        logging = should_update_logs(trainer)
        automatic = pl_module.automatic_optimization
        loss = output.get("loss") if isinstance(output, Mapping) else output
        if not isinstance(loss, Tensor):
            loss = None
        need_value = logging or (
            automatic and loss is not None and (self.value_every_step or run.always_value)
        )
        t, total = run.clock.now(trainer), run.clock.total
        values = plan.values(t, total, run.optimizers) if need_value else {}
        total_value = self._log(pl_module, values) if logging else None
        if total_value is None and values:
            total_value = torch.stack([v.to(torch.float32) for v in values.values()]).sum()
        if not automatic or loss is None:
            return output
        if self.mode == "autograd":
            graph_part = plan.loss(t, total, run.optimizers)
            # the gradient flows through graph_part; the detached rest makes the value complete
            extra = (total_value - graph_part.detach()) if total_value is not None else 0.0
            new_loss = loss + graph_part.to(loss.device) + extra
        elif total_value is not None:
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
    The callback works through Lightning's hooks only: it adds the penalty's gradient before each
    optimizer step and logs its value, and leaves your module untouched, so the loss your
    ``training_step`` returns (and logs) does not include the penalty. Use the module form when it
    should (or with ``torch.optim.LBFGS``, which the callback refuses).

    Args:
        l1: strength of an L1 penalty on the default selection (a number, a Schedule, ``f(progress)``
            or ``f(t, total)``).
        l2: strength of an L2 penalty on the default selection.
        penalties: further penalties, each with its own strength and selection: ``L1``, ``L2``,
            ``MaxNorm`` or dicts ``{"name": "l2", "strength": 1e-4, "include": [...]}``.
        mode: ``"fast"`` (gradient added to ``.grad`` before the optimizer step), ``"compiled"``
            (the same, with one ``torch.compile`` pass for L1+L2; compiles on the first step) or
            ``"autograd"`` (the gradient of the penalty computed by autograd, exact path).
        interval: the schedule's time: ``"step"`` (optimizer steps; training batches under manual
            optimization) or ``"epoch"``.
        value_every_step: compute and log the value at every step, not only on logging steps.

    Manual optimization: the gradient is added by each ``opt.step()`` for that optimizer's
    parameters, in every mode; nothing else to call.

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
        mode: Mode = "fast",
        interval: Interval = "step",
        value_every_step: bool = False,
    ) -> None:
        super().__init__(l1, l2, penalties, mode, interval, value_every_step, owner="WeightPenalty")
        if not self.penalties:
            raise ValueError(
                f"WeightPenalty: no penalty given; set l1, l2 or penalties, got l1={l1!r}, l2={l2!r}, "
                f"penalties={penalties!r}"
            )
