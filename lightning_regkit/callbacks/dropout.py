"""``DropoutScheduler``: the drop probability of a model's dropout-like modules follows a schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_regkit import dropout as _dropout
from lightning_regkit._compat import should_update_logs
from lightning_regkit.clock import Interval, TrainingClock
from lightning_regkit.dropout import (
    DEFAULT_KINDS,
    KINDS,
    DropoutDriver,
    DropTarget,
    TypeKey,
    describe_dropout_modules,
    find_dropout_modules,
)
from lightning_regkit.schedules import Schedule, as_schedule
from lightning_regkit.validation import check_bool, check_choice

__all__ = ["DropoutScheduler"]

_OWNER = "DropoutScheduler"
#: ``"absolute"``: the schedule gives p; ``"relative"``: a factor of each module's initial p.
DropoutMode = Literal["absolute", "relative"]
_STATE_KEYS = ("t", "value", "base")


def _as_patterns(owner: str, name: str, value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, (str, Sequence)):
        raise TypeError(f"{owner}: {name} must be a glob string or a non-empty list of them, got {value!r}")
    patterns = [value] if isinstance(value, str) else list(value)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise TypeError(f"{owner}: {name} must be a glob string or a non-empty list of them, got {value!r}")
    return patterns


def _field_error(name: str, expected: str, value: Any, exc: type[Exception] = ValueError) -> Exception:
    return exc(f"{_OWNER}: checkpoint field {name!r} must be {expected}, got {value!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validated_state(state: Any, mode: str) -> tuple[int | None, float | None, dict[str, float]]:
    """Check a loaded state field by field; returns ``(t, value, base)``.

    Raises ``TypeError`` (wrong type or structure) or ``ValueError`` (out of range, missing or
    unknown key), naming the callback and the field.
    """
    if not isinstance(state, Mapping):
        raise TypeError(
            f"{_OWNER}: checkpoint state must be a dict with keys {list(_STATE_KEYS)}, got {state!r}"
        )
    unknown = sorted(map(str, set(state) - set(_STATE_KEYS)))
    if unknown:
        raise ValueError(
            f"{_OWNER}: checkpoint state has unknown key(s) {unknown}; expected {list(_STATE_KEYS)}"
        )
    missing = [key for key in _STATE_KEYS if key not in state]  # all three exist since the first version
    if missing:
        raise ValueError(
            f"{_OWNER}: checkpoint state lacks the field(s) {missing}; expected {list(_STATE_KEYS)}"
        )

    t = state["t"]
    if t is not None and not (isinstance(t, int) and not isinstance(t, bool)):
        raise _field_error("t", "an int >= 0 or None", t, TypeError)
    if t is not None and t < 0:
        raise _field_error("t", "an int >= 0 or None", t)

    value = state["value"]
    if value is not None and not _is_real(value):
        raise _field_error("value", "a real number or None", value, TypeError)
    if value is not None:
        value = float(value)
        if mode == "absolute" and not 0.0 <= value < 1.0:
            raise _field_error("value", "a drop probability in [0, 1) (mode='absolute')", value)
        if mode == "relative" and not (math.isfinite(value) and value >= 0.0):
            raise _field_error("value", "a finite scale >= 0 (mode='relative')", value)
    if (t is None) != (value is None):
        raise ValueError(
            f"{_OWNER}: checkpoint fields 't' and 'value' must both be None (no step yet) or both be set, "
            f"got t={t!r}, value={value!r}"
        )

    base = state["base"]
    if not isinstance(base, Mapping):
        raise _field_error("base", "a dict {module name: initial p}", base, TypeError)
    checked: dict[str, float] = {}
    for name, p in base.items():
        if not isinstance(name, str) or not name:
            raise _field_error("base", "a dict whose keys are module names (non-empty str)", name, TypeError)
        if not _is_real(p):
            raise TypeError(
                f"{_OWNER}: checkpoint field 'base' must map module names to initial p (a real number), "
                f"got {p!r} for {name!r}"
            )
        if not 0.0 <= p < 1.0:
            raise ValueError(
                f"{_OWNER}: checkpoint field 'base' must hold drop probabilities in [0, 1), "
                f"got {p!r} for {name!r}"
            )
        checked[name] = float(p)
    return t, value, checked


class DropoutScheduler(Callback):
    """Set the drop probability of the selected dropout-like modules from a schedule during ``fit``.

    Before each training step (``interval="step"``) or epoch (``interval="epoch"``) the schedule
    is evaluated at ``t`` of ``total`` and written to every selected module. ``t`` and ``total``
    come from the kit's one training clock (:class:`~lightning_regkit.clock.TrainingClock`):

    * ``interval="step"``, automatic optimization: ``t = trainer.global_step`` (optimizer steps
      taken so far, so every micro-batch of one accumulated step sees the same ``t``), ``total =
      trainer.estimated_stepping_batches`` (accumulation and ``max_steps`` included).
    * ``interval="step"``, manual optimization: ``t`` counts training batches (0 on the first),
      however many optimizers step in a batch and however often (``global_step`` would run k times
      fast with k optimizer steps per batch), ``total = num_training_batches * max_epochs``.
    * ``interval="epoch"``: ``t = trainer.current_epoch``, ``total = trainer.max_epochs``.

    When the length is unknown (``max_epochs=-1`` and ``max_steps=-1``, or an iterable dataset
    without ``__len__`` and ``max_steps=-1`` for ``interval="step"``; under manual optimization
    also ``max_epochs=-1``), ``total`` is ``None``: schedules of progress (``Linear``, ``Cosine``,
    ``f(progress)``, ...) raise a ``ValueError`` when training starts, before any step; schedules
    of absolute time (``Constant``, ``Curriculum``, ``Exponential``, ``unit="absolute"`` ones) run;
    a plain callable ``f(t, total)`` then gets ``total=None``. Absolute-time parameters are per
    ``interval`` unit: ``Curriculum(gamma=...)`` counts steps with ``interval="step"`` and epochs
    with ``interval="epoch"``. If training stops before ``total`` (early stopping, or ``max_steps``
    shorter than ``max_epochs`` with ``interval="epoch"``), the schedule does not reach its end.
    ``max_epochs=0`` trains nothing and changes nothing.

    A drop probability must lie in [0, 1): ``p == 1`` zeroes every activation (or skips every
    residual branch) so nothing trains through that path; a schedule reaching it is a mistake,
    and is reported with the step at which it happened.

    ``torch.compile``: modules of torch's own classes (``nn.Dropout`` and its 1d/2d/3d/alpha
    variants, ``nn.MultiheadAttention``) hold their p during ``fit`` as a 0-d float64 tensor that
    is updated in place (see :class:`~lightning_regkit.dropout.DropoutDriver`), so a compiled
    model is traced once, not once per value; it reads like a number (``float(module.p)``).
    Eagerly the module runs with the exact float: the same output as plain dropout with that p.
    Before torch 2.6 the compiled graph breaks around each such module instead (warned at fit
    start when the model is compiled); a new p still never recompiles.
    At the end of ``fit`` every attribute gets a plain number back (its original value and type
    with ``restore=True``).

    Args:
        schedule: A number, a :class:`~lightning_regkit.schedules.Schedule`, a callable of
            progress ``f(progress)`` (progress in [0, 1]) or a callable ``f(t, total)``. In
            ``absolute`` mode it gives p itself; in ``relative`` mode a factor applied to each
            module's initial p (keeps a model's per-layer proportions).
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
            ``False`` keeps the last scheduled values (as plain floats).
        log_p: Log ``regkit/dropout_p`` (in ``relative`` mode also ``regkit/dropout_scale``, and
            ``regkit/dropout_p`` is the mean p over the modules) on the trainer's logging steps.

    Raises:
        ValueError: Bad argument values, no module matching the selection (the message lists
            the model's dropout-like modules), a module already driven by another
            ``DropoutScheduler`` of the same trainer, a schedule needing ``total`` when it is
            unknown, a schedule value outside [0, 1) (the message names the step), an invalid
            checkpoint state (at load, naming the field).
        TypeError: Arguments of the wrong type; a callable taking neither one nor two arguments.

    Resuming: the schedule is a function of the clock, which a checkpoint restores (global step,
    epoch, batch count), so a resumed run continues exactly. The callback's ``state_dict`` keeps
    the last ``t``, the last value and the modules' initial p (used by ``relative`` mode and by
    ``restore``), all plain data, checked field by field when loaded. An instance may serve
    several fits: each starts afresh from its model (state carries over only through
    ``ckpt_path``).

    Example:
        >>> from lightning_regkit.schedules import Linear
        >>> cb = DropoutScheduler(Linear(0.0, 0.3), interval="epoch")
        >>> cb.interval, cb.modules, cb.mode
        ('epoch', ['dropout', 'attention'], 'absolute')
        >>> DropoutScheduler(lambda progress: 0.3 * progress).schedule(2, 4)  # f(progress)
        0.15
    """

    def __init__(
        self,
        schedule: float | Schedule | Callable[[float], float] | Callable[[int, int | None], float],
        interval: Interval = "step",
        modules: str | type | Sequence[str | type] = DEFAULT_KINDS,
        names: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        custom: Mapping[str | type, str] | None = None,
        mode: DropoutMode = "absolute",
        restore: bool = True,
        log_p: bool = True,
    ) -> None:
        owner = _OWNER
        check_choice(owner, "mode", mode, DropoutMode)
        check_choice(owner, "interval", interval, Interval)
        if isinstance(schedule, bool) or not (
            isinstance(schedule, (int, float, Schedule)) or callable(schedule)
        ):
            raise TypeError(
                f"{owner}: schedule must be a number, a Schedule or a callable f(progress) or f(t, total), "
                f"got {schedule!r}"
            )
        if isinstance(schedule, (int, float)) and (
            not math.isfinite(schedule) or schedule < 0 or (mode == "absolute" and schedule >= 1)
        ):
            allowed = "[0, 1)" if mode == "absolute" else ">= 0 (a factor of the initial p)"
            raise ValueError(f"{owner}: schedule must be in {allowed}, got {schedule!r}")
        self.schedule = as_schedule(schedule, f"{owner}: schedule")

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
        self.interval: Interval = interval
        self.mode: DropoutMode = mode
        self.restore = check_bool(owner, "restore", restore)
        check_bool(owner, "log_p", log_p)
        # not `self.log`: Lightning overwrites `callback.log` with the LightningModule's `log`
        self.log_p = log_p

        self._active = False
        self._reset()

    def _reset(self) -> None:
        """Forget everything of a previous fit (a reused instance starts afresh)."""
        if self._active:
            self._restore()
        self.targets: list[DropTarget] = []
        self._drivers: list[DropoutDriver] = []
        self._base: list[float] = []
        self._loaded_base: dict[str, float] | None = None
        self._clock = TrainingClock(self.interval, _OWNER)
        self._t: int | None = None
        self._value: float | None = None

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
        t, value, base = _validated_state(state_dict, self.mode)  # raises before anything is kept
        self._loaded_base = base or None
        if not self._active:  # reported by state_dict until fit starts (on_fit_start recomputes both)
            self._t, self._value = t, value
        if self._active and self._loaded_base:  # strategies that restore after on_fit_start
            self._apply_loaded_base()

    def _apply_loaded_base(self) -> None:
        assert self._loaded_base is not None
        loaded, self._loaded_base = self._loaded_base, None
        unknown = sorted(set(loaded) - {t.name for t in self.targets})
        if unknown:
            rank_zero_warn(
                f"{_OWNER}: the checkpoint's initial p (field 'base') names module(s) {unknown} that this "
                "selection does not drive; they are ignored (the model or the selection changed?)"
            )
        self._base = [loaded.get(t.name, b) for t, b in zip(self.targets, self._base, strict=True)]

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # before Lightning restores a checkpoint: only ckpt_path carries state
            self._reset()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        owner = _OWNER
        targets = find_dropout_modules(pl_module, self.modules, self.names, self.exclude, self.custom)
        if not targets:
            raise ValueError(
                f"{owner}: no module matches modules={self._selectors_repr()}, names={self.names!r}, "
                f"exclude={self.exclude!r}; the model has {describe_dropout_modules(pl_module, self.custom)}"
            )
        for other in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(other, DropoutScheduler) and other is not self and other._active:
                shared = {t.name for t in other.targets} & {t.name for t in targets}
                if shared:
                    raise ValueError(
                        f"{owner}: module {sorted(shared)[0]!r} is already driven by another "
                        f"DropoutScheduler ({len(shared)} shared); give each instance a disjoint selection "
                        "(modules/names/exclude)"
                    )
        self.targets = targets
        self._drivers = [DropoutDriver(target) for target in targets]
        self._base = [driver.value for driver in self._drivers]
        if self._loaded_base:
            self._apply_loaded_base()
        self._clock = TrainingClock(self.interval, owner)
        self._t = None
        self._value = None
        for driver in self._drivers:
            driver.attach()
        self._active = True
        held = [d.target.name for d in self._drivers if d.tensor is not None]
        if held and not _dropout.TENSOR_P_TRACEABLE and _dropout.uses_torch_compile(pl_module):
            shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
            rank_zero_warn(
                f"{owner}: torch {torch.__version__} cannot compile the tensor-held p of the {len(held)}"
                f" driven module(s) ({shown}) into the model's graph (torch >= 2.6 can): torch.compile breaks"
                " the graph around each of them and runs them eagerly. A new p still never recompiles; for"
                " one graph, use torch>=2.6"
            )

    @property
    def _total(self) -> int | None:
        total = self._clock.total
        # Lightning's estimated_stepping_batches is max_steps (-1) for a loader without a length and
        # max_steps=-1, which TrainingClock (lightning_regkit/clock.py) passes on: -1 means unknown.
        return None if total is None or total < 0 else total

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock.start(trainer, pl_module)
        if self.schedule.needs_total and self._total is None:
            if self.interval == "epoch":
                what = "trainer.max_epochs is -1"
            elif self._clock.manual:
                what = (
                    "under manual optimization the step clock counts training batches, and max_epochs is -1 "
                    "or the training dataloader has no length (max_steps counts optimizer steps, not batches)"
                )
            else:
                what = (
                    "trainer.estimated_stepping_batches is unknown (max_steps=-1 with infinite max_epochs "
                    "or a dataloader without a length)"
                )
            raise ValueError(
                f"{_OWNER}: the schedule {self.schedule!r} needs the length of training, but {what}; "
                "set max_epochs/max_steps, or use a schedule of absolute time (Constant, Curriculum, "
                "Exponential, unit='absolute')"
            )

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
        if self.mode == "absolute":
            for driver in self._drivers:
                driver.set(value)
        else:
            for driver, base in zip(self._drivers, self._base, strict=True):
                driver.set(value * base)
        self._value = value

    def _check(self, value: float, t: int) -> None:
        where = f"at {self.interval} {t} (total={self._total})"
        if self.mode == "absolute":
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{_OWNER}: the schedule gave p={value!r} {where}; p must be in [0, 1)")
            return
        bad = [
            (target.name, base)
            for target, base in zip(self.targets, self._base, strict=True)
            if not (value >= 0.0 and 0.0 <= value * base < 1.0)
        ]
        if bad or not math.isfinite(value):
            name, base = bad[0] if bad else (self.targets[0].name, self._base[0])
            raise ValueError(
                f"{_OWNER}: the schedule gave scale={value!r} {where}, so p={value * base!r} for "
                f"module {name!r} (initial p {base!r}); the scale must be >= 0 and every p in [0, 1)"
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            self._update(self._clock.now(trainer))

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            self._update(self._clock.now(trainer))
        if self.log_p and self._value is not None and should_update_logs(trainer):
            value = self._value
            if self.mode == "relative":
                pl_module.log("regkit/dropout_scale", value, on_step=True, on_epoch=False, batch_size=1)
                value = value * sum(self._base) / len(self._base)
            pl_module.log("regkit/dropout_p", value, on_step=True, on_epoch=False, batch_size=1)

    def _restore(self) -> None:
        if self._active:
            for driver, base in zip(self._drivers, self._base, strict=True):
                if not self.restore:
                    driver.detach(driver.value)
                elif base == float(driver.original):
                    driver.detach(driver.original)  # the very object: value and type as before fit
                else:
                    driver.detach(base)  # the initial p of the run a checkpoint resumed
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
