"""``DropoutScheduler``: the drop probability of a model's dropout-like modules follows a schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_regkit.dropout import (
    DEFAULT_KINDS,
    KINDS,
    DropTarget,
    TypeKey,
    describe_dropout_modules,
    find_dropout_modules,
)
from lightning_regkit.schedules import Schedule, as_schedule

__all__ = ["DropoutScheduler"]

_INTERVALS = ("step", "epoch")
_MODES = ("absolute", "relative")


def _as_patterns(owner: str, name: str, value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, (str, Sequence)):
        raise TypeError(f"{owner}: {name} must be a glob string or a non-empty list of them, got {value!r}")
    patterns = [value] if isinstance(value, str) else list(value)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise TypeError(f"{owner}: {name} must be a glob string or a non-empty list of them, got {value!r}")
    return patterns


class DropoutScheduler(Callback):
    """Set the drop probability of the selected dropout-like modules from a schedule during ``fit``.

    Before each training step (``interval="step"``) or epoch (``interval="epoch"``) the schedule
    is evaluated at ``t`` and written to every selected module:

    * ``interval="step"``: ``t = trainer.global_step`` (optimizer steps taken so far, so every
      micro-batch of one accumulated step sees the same ``t``), ``total =
      trainer.estimated_stepping_batches``.
    * ``interval="epoch"``: ``t = trainer.current_epoch``, ``total = trainer.max_epochs``.

    When the length is unknown (``max_epochs=-1`` and ``max_steps=-1``, or an iterable dataset
    without ``__len__`` and ``max_steps=-1`` for ``interval="step"``), ``total`` is ``None``:
    schedules of progress (``Linear``, ``Cosine``, ...) raise a ``ValueError`` at the start of
    ``fit``, before any step; schedules of absolute time (``Constant``, ``Curriculum``,
    ``Exponential``, ``unit="absolute"`` ones) run; a plain callable ``f(t, total)`` then gets
    ``total=None``. Absolute-time parameters are per ``interval`` unit: ``Curriculum(gamma=...)``
    counts optimizer steps with ``interval="step"`` and epochs with ``interval="epoch"``. If
    training stops before ``total`` (early stopping, or ``max_steps`` shorter than
    ``max_epochs`` with ``interval="epoch"``), the schedule simply does not reach its end.

    A drop probability must lie in [0, 1): ``p == 1`` zeroes every activation (or skips every
    residual branch) so nothing trains through that path; a schedule reaching it is a mistake,
    and is reported with the step at which it happened.

    Args:
        schedule: A number, a :class:`~lightning_regkit.schedules.Schedule` or a callable
            ``f(t, total)``. In ``absolute`` mode it gives p itself; in ``relative`` mode a
            factor applied to each module's initial p (keeps a model's per-layer proportions).
        interval: ``"step"`` or ``"epoch"``.
        modules: What to drive: kind names ``"dropout"`` (``nn.Dropout``, ``Dropout1d/2d/3d``,
            ``AlphaDropout``, ``FeatureAlphaDropout``), ``"attention"`` (the float ``dropout`` of
            ``nn.MultiheadAttention``, also inside ``TransformerEncoderLayer``/``DecoderLayer``),
            ``"stochastic_depth"`` (classes named ``DropPath``/``StochasticDepth``, attribute
            ``drop_prob``/``p``); module types; or class names. Default: dropout and attention.
        names: Glob pattern(s) over qualified module names (e.g. ``"encoder.*"``); default all.
        exclude: Glob pattern(s) of qualified module names to leave alone.
        custom: Extra module types (or class names) mapped to the attribute holding their drop
            probability, e.g. ``{MyDrop: "rate"}``; always driven (subject to ``names``/``exclude``).
        mode: ``"absolute"`` or ``"relative"``.
        restore: Write the initial values back at the end of ``fit`` (also after an exception).
            ``False`` keeps the last scheduled values.
        log_p: Log ``regkit/dropout_p`` (in ``relative`` mode also ``regkit/dropout_scale``, and
            ``regkit/dropout_p`` is the mean p over the modules) on the trainer's logging steps.

    Raises:
        ValueError: Bad argument values, no module matching the selection (the message lists
            the model's dropout-like modules), a module already driven by another
            ``DropoutScheduler`` of the same trainer, a schedule needing ``total`` when it is
            unknown, a schedule value outside [0, 1) (the message names the step).
        TypeError: Arguments of the wrong type.

    Resuming: the schedule is a function of ``trainer.global_step``/``current_epoch``, which a
    checkpoint restores, so a resumed run continues exactly. The callback's ``state_dict`` keeps
    the last ``t``, the last value and the modules' initial p (used by ``relative`` mode and by
    ``restore``), all plain data.

    Example:
        >>> from lightning_regkit.schedules import Linear
        >>> cb = DropoutScheduler(Linear(0.0, 0.3), interval="epoch")
        >>> cb.interval, cb.modules, cb.mode
        ('epoch', ['dropout', 'attention'], 'absolute')
    """

    def __init__(
        self,
        schedule: float | Schedule | Callable[[int, int | None], float],
        interval: str = "step",
        modules: str | type | Sequence[str | type] = DEFAULT_KINDS,
        names: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        custom: Mapping[str | type, str] | None = None,
        mode: str = "absolute",
        restore: bool = True,
        log_p: bool = True,
    ) -> None:
        owner = "DropoutScheduler"
        if mode not in _MODES:
            raise ValueError(f"{owner}: mode must be one of {list(_MODES)}, got {mode!r}")
        if interval not in _INTERVALS:
            raise ValueError(f"{owner}: interval must be one of {list(_INTERVALS)}, got {interval!r}")
        if isinstance(schedule, bool) or not (
            isinstance(schedule, (int, float, Schedule)) or callable(schedule)
        ):
            raise TypeError(
                f"{owner}: schedule must be a number, a Schedule or a callable f(t, total), got {schedule!r}"
            )
        if isinstance(schedule, (int, float)) and (
            not math.isfinite(schedule) or schedule < 0 or (mode == "absolute" and schedule >= 1)
        ):
            allowed = "[0, 1)" if mode == "absolute" else ">= 0 (a factor of the initial p)"
            raise ValueError(f"{owner}: schedule must be in {allowed}, got {schedule!r}")
        self.schedule = as_schedule(schedule, "schedule")

        selectors = [modules] if isinstance(modules, (str, type)) else list(modules)
        if not selectors:
            raise ValueError(f"{owner}: modules must not be empty, got {modules!r}")
        for sel in selectors:
            if isinstance(sel, type):
                continue
            if not isinstance(sel, str) or not sel:
                raise TypeError(
                    f"{owner}: modules must hold kind names, module types or class names, got {sel!r}"
                )
            if sel.islower() and sel not in KINDS:
                raise ValueError(
                    f"{owner}: modules has unknown kind {sel!r}; kinds are {list(KINDS)} "
                    "(or give a module type or class name)"
                )
        self.modules: list[TypeKey] = selectors
        self.names = _as_patterns(owner, "names", names)
        self.exclude = _as_patterns(owner, "exclude", exclude)
        custom = dict(custom or {})
        for key, attribute in custom.items():
            if not isinstance(key, (str, type)) or not key:
                raise TypeError(f"{owner}: custom keys must be module types or class names, got {key!r}")
            if not isinstance(attribute, str) or not attribute.isidentifier():
                raise ValueError(f"{owner}: custom[{key!r}] must be an attribute name, got {attribute!r}")
        self.custom: dict[TypeKey, str] = custom
        self.interval = interval
        self.mode = mode
        for name, flag in (("restore", restore), ("log_p", log_p)):
            if not isinstance(flag, bool):
                raise TypeError(f"{owner}: {name} must be a bool, got {flag!r}")
        self.restore = restore
        # not `self.log`: Lightning overwrites `callback.log` with the LightningModule's `log`
        self.log_p = log_p

        self.targets: list[DropTarget] = []
        self._base: list[float] = []
        self._loaded_base: dict[str, float] | None = None
        self._total: int | None = None
        self._t: int | None = None
        self._value: float | None = None
        self._active = False

    # ------------------------------------------------------------------ identity and state
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            modules=[m if isinstance(m, str) else m.__qualname__ for m in self.modules],
            names=self.names,
            exclude=self.exclude,
            mode=self.mode,
        )

    @property
    def current_value(self) -> float | None:
        """The last scheduled value written (p, or the factor in relative mode); None before fit."""
        return self._value

    @override
    def state_dict(self) -> dict[str, Any]:
        base = {target.name: base for target, base in zip(self.targets, self._base, strict=True)}
        if not self._active and not base and self._loaded_base:  # loaded, fit not started: pass it on
            base = dict(self._loaded_base)
        return {"t": self._t, "value": self._value, "base": base}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        base = state_dict.get("base")
        self._loaded_base = {str(k): float(v) for k, v in base.items()} if base else None
        if not self._active:  # reported by state_dict until fit starts (on_fit_start recomputes both)
            self._t, self._value = state_dict.get("t"), state_dict.get("value")
        if self._active and self._loaded_base:  # strategies that restore after on_fit_start
            self._apply_loaded_base()

    def _apply_loaded_base(self) -> None:
        assert self._loaded_base is not None
        self._base = [self._loaded_base.get(t.name, b) for t, b in zip(self.targets, self._base, strict=True)]
        self._loaded_base = None

    # ------------------------------------------------------------------ time
    def _trainer_total(self, trainer: pl.Trainer) -> int | None:
        if self.interval == "epoch":
            max_epochs = trainer.max_epochs
            return max_epochs if max_epochs is not None and max_epochs > 0 else None
        total = trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) and total > 0 else None

    # ------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        owner = "DropoutScheduler"
        self.targets = find_dropout_modules(pl_module, self.modules, self.names, self.exclude, self.custom)
        if not self.targets:
            raise ValueError(
                f"{owner}: no module matches modules={self._selectors_repr()}, names={self.names!r}, "
                f"exclude={self.exclude!r}; the model has {describe_dropout_modules(pl_module, self.custom)}"
            )
        for other in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(other, DropoutScheduler) and other is not self and other._active:
                shared = {t.name for t in other.targets} & {t.name for t in self.targets}
                if shared:
                    raise ValueError(
                        f"{owner}: module {sorted(shared)[0]!r} is already driven by another "
                        f"DropoutScheduler ({len(shared)} shared); give each instance a disjoint selection "
                        "(modules/names/exclude)"
                    )
        self._base = [target.get() for target in self.targets]
        if self._loaded_base:
            self._apply_loaded_base()
        self._total = self._trainer_total(trainer)
        if self.schedule.needs_total and self._total is None:
            what = (
                "trainer.max_epochs is -1"
                if self.interval == "epoch"
                else "trainer.estimated_stepping_batches "
                "is unknown (max_steps=-1 with infinite max_epochs or a dataloader without a length)"
            )
            raise ValueError(
                f"{owner}: the schedule {self.schedule!r} needs the length of training, but {what}; "
                "set max_epochs/max_steps, or use a schedule of absolute time (Constant, Curriculum, "
                "Exponential, unit='absolute')"
            )
        self._t = None
        self._value = None
        self._active = True

    def _selectors_repr(self) -> list[str]:
        return [m if isinstance(m, str) else m.__qualname__ for m in self.modules]

    def _update(self, t: int) -> None:
        if t == self._t:
            return
        self._t = t
        value = self.schedule(t, self._total)
        if value == self._value:
            return
        self._check(value, t)
        # object.__setattr__ skips nn.Module's parameter/buffer/submodule checks (the attribute is a
        # plain number, checked at setup) and still honours properties.
        if self.mode == "absolute":
            for target in self.targets:
                object.__setattr__(target.module, target.attribute, value)
        else:
            for target, base in zip(self.targets, self._base, strict=True):
                object.__setattr__(target.module, target.attribute, value * base)
        self._value = value

    def _check(self, value: float, t: int) -> None:
        where = f"at {self.interval} {t} (total={self._total})"
        if self.mode == "absolute":
            if not 0.0 <= value < 1.0:
                raise ValueError(
                    f"DropoutScheduler: the schedule gave p={value!r} {where}; p must be in [0, 1)"
                )
            return
        bad = [
            (target.name, base)
            for target, base in zip(self.targets, self._base, strict=True)
            if not (value >= 0.0 and 0.0 <= value * base < 1.0)
        ]
        if bad or not math.isfinite(value):
            name, base = bad[0] if bad else (self.targets[0].name, self._base[0])
            raise ValueError(
                f"DropoutScheduler: the schedule gave scale={value!r} {where}, so p={value * base!r} for "
                f"module {name!r} (initial p {base!r}); the scale must be >= 0 and every p in [0, 1)"
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            self._update(trainer.current_epoch)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            self._update(trainer.global_step)
        if self.log_p and self._value is not None and trainer._logger_connector.should_update_logs:
            value = self._value
            if self.mode == "relative":
                pl_module.log("regkit/dropout_scale", value, on_step=True, on_epoch=False, batch_size=1)
                value = value * sum(self._base) / len(self._base)
            pl_module.log("regkit/dropout_p", value, on_step=True, on_epoch=False, batch_size=1)

    def _restore(self) -> None:
        if self._active and self.restore:
            for target, base in zip(self.targets, self._base, strict=True):
                target.set(base)
        self._active = False

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restore()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
