"""EarlyStopping: Lightning's callback plus best-weight restore, Keras options and Prechelt's criteria.

A drop-in subclass of :class:`lightning.pytorch.callbacks.EarlyStopping`: with the new options
left at their defaults it stops at the same check, for the same reason, as Lightning's class
(``tests/test_early_stopping_lightning_compat.py`` runs Lightning's own test cases on both).

Example:
    >>> from lightning_regkit.callbacks.early_stopping import EarlyStopping
    >>> es = EarlyStopping("val_loss", patience=5, restore_best_weights=True, min_delta_mode="rel")
    >>> es.state_key
    "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_regkit._compat import EarlyStoppingReason, reduce_enum_by_value
from lightning_regkit.criteria import GL, PQ, UP, StoppingCriterion

__all__ = ["CRITERIA", "EarlyStopping", "EarlyStoppingReason", "RegkitStoppingReason"]

CRITERIA = ("patience", "GL", "PQ", "UP")


class RegkitStoppingReason(Enum):
    """Stopping reasons added by the kit; Lightning's own reasons stay :class:`EarlyStoppingReason`.

    The values are strings, so they never collide with Lightning's integer values, today's or
    those of reasons a later Lightning adds. Checkpoints store a reason by name
    (``"RegkitStoppingReason.GENERALIZATION_LOSS"``); the integers 5, 6 and 7 that the kit
    wrote before are still read as GL, PQ and UP.

    Example:
        >>> RegkitStoppingReason.GENERALIZATION_LOSS.value
        'generalization_loss'
    """

    GENERALIZATION_LOSS = "generalization_loss"
    PROGRESS_QUOTIENT = "progress_quotient"
    UP_SUCCESSIVE_STRIPS = "up_successive_strips"

    __reduce_ex__ = reduce_enum_by_value  # as ``cls(value)`` on every Python: loads with weights_only=True


_CRITERION_REASON = {
    "GL": RegkitStoppingReason.GENERALIZATION_LOSS,
    "PQ": RegkitStoppingReason.PROGRESS_QUOTIENT,
    "UP": RegkitStoppingReason.UP_SUCCESSIVE_STRIPS,
}
# what the kit wrote for its reasons before they were stored by name (only in states that have "best_epoch")
_LEGACY_REASON_VALUES = {5: "GENERALIZATION_LOSS", 6: "PROGRESS_QUOTIENT", 7: "UP_SUCCESSIVE_STRIPS"}
_Reason = EarlyStoppingReason | RegkitStoppingReason


def _reason_name(reason: _Reason) -> str:
    """The unambiguous name a checkpoint stores: ``"<EarlyStoppingReason|RegkitStoppingReason>.<member>"``."""
    family = "RegkitStoppingReason" if isinstance(reason, RegkitStoppingReason) else "EarlyStoppingReason"
    return f"{family}.{reason.name}"


def _reason_from_name(name: str) -> _Reason | None:
    family, _, member = name.partition(".")
    # EarlyStoppingReason is looked up when called: whatever reasons the installed Lightning has
    if family == "EarlyStoppingReason":
        return EarlyStoppingReason.__members__.get(member)
    return RegkitStoppingReason.__members__.get(member) if family == "RegkitStoppingReason" else None


def _is_swa(callback: Any) -> bool:
    """Whether ``callback`` is a StochasticWeightAveraging (of either Lightning namespace)."""
    return any(cls.__name__ == "StochasticWeightAveraging" for cls in type(callback).__mro__)


class _ModeError(MisconfigurationException, ValueError):
    """Bad ``mode``: a ``ValueError`` that is still Lightning's ``MisconfigurationException``."""


def _real(name: str, value: Any, *, optional: bool = False, minimum: float | None = None) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"EarlyStopping: {name} must be a real number, got {value!r}")
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        allowed = "a finite number" if minimum is None else f"a finite number >= {minimum:g}"
        raise ValueError(f"EarlyStopping: {name} must be {allowed}, got {value!r}")
    return float(value)


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"EarlyStopping: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"EarlyStopping: {name} must be >= {minimum}, got {value!r}")
    return value


class EarlyStopping(_LightningEarlyStopping):
    r"""Stop when a monitored metric stops improving; optionally give back the best weights.

    Every argument of Lightning's ``EarlyStopping`` keeps its meaning (``monitor``, ``min_delta``,
    ``patience``, ``verbose``, ``mode``, ``strict``, ``check_finite``, ``stopping_threshold``,
    ``divergence_threshold``, ``check_on_train_epoch_end``, ``log_rank_zero_only``). Patience
    counts validation *checks*, not epochs, as in Lightning.

    New options:

    * ``restore_best_weights``: at the end of ``fit`` (``on_fit_end``, after every callback's
      ``on_train_end``), load the module's ``state_dict`` (parameters and buffers) from the best
      monitored check, whether training
      stopped early, ran to ``max_epochs`` or was stopped by another callback. As in Keras the
      first watched check is the first best, so when nothing improved afterwards its weights
      come back, and they come back whatever the ``baseline``. The copy lives on the CPU and is
      refreshed only when the metric improves (in place, no new allocation); nothing is written
      to disk. Differences from Keras: only *finite* values can be best (Keras snapshots the
      first watched epoch even when its metric is NaN), so with NaN/inf the best finite weights
      come back, and when no finite value was ever seen nothing is restored (a warning says so);
      the optimizer state is not restored (as Keras). Under DDP the decision to snapshot is
      rank 0's (its metric value is broadcast), so every rank copies the same step's weights,
      which DDP keeps identical. ``ModelCheckpoint`` files written during training still hold
      the weights of their own epoch, and ``trainer.test(ckpt_path="best")`` loads such a file:
      test the restored weights with ``trainer.test(model)``. With ``StochasticWeightAveraging``
      the best *validated* weights win over SWA's (unvalidated) average, whatever the callback
      order (a warning says so at fit start; ``restore_best_weights=False`` keeps the average).
    * ``checkpoint_best_weights`` (with ``restore_best_weights``): also put the best weights in
      the callback's checkpoint state, so a resumed run restores them exactly. Costs one more
      copy of the model's ``state_dict`` in every checkpoint (the file roughly doubles for a
      model without optimizer state); turn it off for large models, and after resume the best
      weights are then those seen since the resume (a warning says so).
    * ``start_from_epoch`` (Keras): checks at epochs ``< start_from_epoch`` are ignored
      entirely (no best, no count, no stop, thresholds and ``check_finite`` included).
    * ``baseline`` (Keras): the wait count resets only when the value beats both the best and
      the baseline (by ``min_delta``), so training stops after ``patience`` checks that do not
      beat the baseline, as Keras documents. Keras's code skips the patience test on a check
      that improves the best without beating the baseline; here every such check counts.
    * ``min_delta_mode="rel"``: an improvement must beat the best by ``min_delta * |best|``
      (Ignite/skorch ``threshold_mode="rel"``; ``|best|`` keeps the direction right for
      negative values). ``"abs"`` is Lightning's rule.
    * ``criterion``: ``"patience"`` (Lightning's rule) or one of Prechelt's criteria
      (L. Prechelt, "Early Stopping - But When?", 1998; see :mod:`lightning_regkit.criteria`),
      which then replace the patience rule (``patience`` is ignored):
      ``"GL"`` stops when ``GL = 100 * (E_va / E_opt - 1) > alpha``; ``"PQ"`` when
      ``GL / P_k > alpha`` at the end of a strip of ``strip`` checks, with ``P_k`` from the
      training loss logged under ``train_monitor`` (default ``"train_loss"``; read from
      ``trainer.callback_metrics`` at each check: with validation every epoch the check runs at
      the end of the training epoch, so it is that epoch's loss; when the check runs at
      validation end it is the last epoch-level value); ``"UP"`` when the monitored value got
      worse at the ends of ``s`` successive strips of ``strip`` checks. GL and PQ are defined
      for errors (>= 0) and need ``mode="min"``; UP works in both modes. The criteria see the
      raw values (``min_delta`` only affects which check is "best"); ``stopping_threshold``,
      ``divergence_threshold`` and ``check_finite`` still apply before them.

    Stopping reasons: ``stopping_reason`` is Lightning's :class:`EarlyStoppingReason` for
    Lightning's reasons (on Lightning < 2.6, which has none, the kit's copy in
    ``lightning_regkit._compat``: same names and values) and :class:`RegkitStoppingReason` for GL, PQ and UP;
    ``stopping_reason_message`` starts with Lightning's message (for Lightning's reasons) and
    adds the stop epoch and the best value and its epoch. The message of a stop is always
    logged (INFO, Lightning's early-stopping logger); improvements only with ``verbose``.

    Checkpoints: progress only, loadable with ``torch.load(weights_only=True)``: wait count,
    best score and epoch, stop epoch and reason (by name, ``stopping_reason_name``, so it stays
    unambiguous whatever reasons Lightning adds; the kit's old integers 5-7 still load), the
    criterion's history and (optionally) the best weights. ``patience`` is still written, for
    Lightning's own class to load the file, but is not read back, so a new ``patience`` wins on
    resume. ``state_key`` equals Lightning's (``monitor``, ``mode``) for ``criterion="patience"``
    and adds the criterion otherwise. :meth:`load_state_dict` validates every field and raises
    at load, naming the callback and the field; loaded best weights are checked against the
    model (keys, shapes, dtypes) at ``on_fit_start``, before any training step.

    Reuse: each ``fit`` starts afresh (no best score, wait count or best weights of an earlier
    fit); state carries over only through ``ckpt_path`` or a ``load_state_dict`` called before
    the fit. The user guide is ``docs/early_stopping.md``.

    Args:
        monitor: the logged key to watch.
        min_delta: minimum improvement (>= 0); absolute, or a fraction of ``|best|`` with
            ``min_delta_mode="rel"``.
        patience: checks without improvement before stopping (>= 0).
        verbose: log improvements too.
        mode: ``"min"`` or ``"max"``.
        strict: raise when ``monitor`` (or ``train_monitor`` for PQ) is missing, listing the
            logged keys.
        check_finite: stop when the monitored value is NaN or infinite.
        stopping_threshold: stop as soon as the value is better than this.
        divergence_threshold: stop as soon as the value is worse than this.
        check_on_train_epoch_end: run the check at the end of the training epoch (default:
            when validation runs once per epoch) instead of at the end of validation.
        log_rank_zero_only: log only on rank 0.
        restore_best_weights: load the best check's weights at the end of fit.
        checkpoint_best_weights: keep the best weights in checkpoints (with restore).
        start_from_epoch: ignore checks before this epoch (>= 0).
        baseline: value to beat for the wait count to reset.
        min_delta_mode: ``"abs"`` or ``"rel"``.
        criterion: ``"patience"``, ``"GL"``, ``"PQ"`` or ``"UP"``.
        alpha: threshold of GL (percent) or PQ (quotient); required for them (>= 0).
        strip: strip length ``k`` of PQ and UP, in checks (>= 1; Prechelt used 5).
        s: successive rising strips for UP (>= 1).
        train_monitor: the logged training-loss key PQ reads.

    Example:
        >>> es = EarlyStopping("val_loss", criterion="GL", alpha=5.0, restore_best_weights=True)
        >>> es.state_key
        "EarlyStopping{'monitor': 'val_loss', 'mode': 'min', 'criterion': 'GL'}"
        >>> EarlyStopping("val_loss", patience=-1)
        Traceback (most recent call last):
        ...
        ValueError: EarlyStopping: patience must be >= 0, got -1
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        restore_best_weights: bool = False,
        checkpoint_best_weights: bool = True,
        start_from_epoch: int = 0,
        baseline: float | None = None,
        min_delta_mode: str = "abs",
        criterion: str = "patience",
        alpha: float | None = None,
        strip: int = 5,
        s: int = 2,
        train_monitor: str = "train_loss",
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"EarlyStopping: monitor must be a non-empty str, got {monitor!r}")
        if mode not in self.mode_dict:
            raise _ModeError(f"EarlyStopping: `mode` can be {', '.join(self.mode_dict)}, got {mode}")
        _real("min_delta", min_delta, minimum=0.0)
        _int("patience", patience, 0)
        _real("stopping_threshold", stopping_threshold, optional=True)
        _real("divergence_threshold", divergence_threshold, optional=True)
        _int("start_from_epoch", start_from_epoch, 0)
        self.baseline = _real("baseline", baseline, optional=True)
        if min_delta_mode not in ("abs", "rel"):
            raise ValueError(f"EarlyStopping: min_delta_mode must be 'abs' or 'rel', got {min_delta_mode!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"EarlyStopping: criterion must be one of {CRITERIA}, got {criterion!r}")
        if criterion in ("GL", "PQ"):
            if alpha is None:
                raise ValueError(
                    f"EarlyStopping: criterion={criterion!r} needs alpha (a number >= 0), got None"
                )
            if mode != "min":
                raise ValueError(
                    f"EarlyStopping: criterion={criterion!r} needs mode='min' (Prechelt's ratios are "
                    f"defined on errors >= 0), got mode={mode!r}"
                )
        if criterion != "patience" and baseline is not None:
            raise ValueError(
                f"EarlyStopping: baseline applies to criterion='patience' only, got criterion={criterion!r}"
            )
        flags = {
            "verbose": verbose,
            "strict": strict,
            "check_finite": check_finite,
            "log_rank_zero_only": log_rank_zero_only,
            "restore_best_weights": restore_best_weights,
            "checkpoint_best_weights": checkpoint_best_weights,
        }
        for name, flag in flags.items():
            if not isinstance(flag, bool):
                raise TypeError(f"EarlyStopping: {name} must be a bool, got {flag!r}")
        if check_on_train_epoch_end is not None and not isinstance(check_on_train_epoch_end, bool):
            raise TypeError(
                "EarlyStopping: check_on_train_epoch_end must be a bool or None, got "
                f"{check_on_train_epoch_end!r}"
            )
        if not isinstance(train_monitor, str) or not train_monitor:
            raise TypeError(f"EarlyStopping: train_monitor must be a non-empty str, got {train_monitor!r}")
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.restore_best_weights = bool(restore_best_weights)
        self.checkpoint_best_weights = bool(checkpoint_best_weights)
        self.start_from_epoch = start_from_epoch
        self.min_delta_mode = min_delta_mode
        self.criterion = criterion
        self.alpha = alpha
        self.strip = strip
        self.s = s
        self.train_monitor = train_monitor
        self._check_on_train_epoch_end_arg = check_on_train_epoch_end  # decided again at every fit's setup
        try:  # the criteria validate alpha, strip and s; the message names this class too
            self._make_criterion()
        except (TypeError, ValueError) as err:
            raise type(err)(f"EarlyStopping: {err}") from None
        self._reset_progress()

    def _make_criterion(self) -> StoppingCriterion | None:
        if self.criterion == "GL":
            return GL(alpha=self.alpha)  # type: ignore[arg-type]
        if self.criterion == "PQ":
            return PQ(alpha=self.alpha, strip=self.strip)  # type: ignore[arg-type]
        if self.criterion == "UP":
            return UP(s=self.s, strip=self.strip)
        return None

    def _reset_progress(self) -> None:
        """Forget every check: a new callback's state (where a fit starts unless a state was loaded)."""
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if self.mode == "min" else -math.inf)
        self.stopping_reason: _Reason = EarlyStoppingReason.NOT_STOPPED  # type: ignore[assignment]
        self.stopping_reason_message = None
        self.best_epoch: int = -1
        self._criterion: StoppingCriterion | None = self._make_criterion()
        self._best_weights: dict[str, Tensor] | None = None
        self._epoch = 0
        self._train_value: float | None = None
        self._improved = False
        self._missing_best: str | None = None  # why a resumed run has no best weights to restore
        self._loaded = False  # a state was loaded for the coming fit (ckpt_path or load_state_dict)
        self._weights_unchecked = False  # loaded best weights not yet compared with the model

    @property
    def _owner(self) -> str:
        return f"EarlyStopping(monitor={self.monitor!r})"

    # ------------------------------------------------------------------ identity and state
    @property
    @override
    def state_key(self) -> str:
        if self.criterion == "patience":
            return self._generate_state_key(monitor=self.monitor, mode=self.mode)
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, criterion=self.criterion)

    @property
    def best_weights(self) -> dict[str, Tensor] | None:
        """The CPU copy of the best check's ``state_dict`` (``None`` before any finite check)."""
        return self._best_weights

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # Lightning's integer for its own reasons (its class can read this state), the kit's reasons
        # as strings; the name is what the kit reads back (unambiguous whatever Lightning adds later)
        state["stopping_reason"] = self.stopping_reason.value
        state["stopping_reason_name"] = _reason_name(self.stopping_reason)
        state["stopping_reason_message"] = self.stopping_reason_message
        state["best_epoch"] = self.best_epoch
        if self._criterion is not None:
            state["criterion_state"] = self._criterion.state_dict()
        if self.restore_best_weights and self.checkpoint_best_weights:
            state["best_weights"] = self._best_weights
        return state

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning calls load_state_dict only for callbacks that have a state in the checkpoint
        states = checkpoint.get("callbacks") or {}
        if states and self.state_key not in states and self._legacy_state_key not in states:
            rank_zero_warn(
                f"EarlyStopping: the checkpoint holds no state for {self.state_key} (it was written without"
                " this callback, or with another monitor/mode/criterion): early stopping starts afresh"
                " after the resume (wait count 0, no best score, no best weights)"
            )

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state, validated first: a malformed one raises here and leaves the callback as it was.

        Every field is checked (type, shape, range, consistency); the error names the callback and
        the field. Best weights are compared with the model (keys, shapes, dtypes) as soon as the
        model is known, at ``on_fit_start``, before any training step. ``patience`` is configuration:
        the value passed to ``__init__`` wins (it is written only for Lightning's own class).

        Example:
            >>> es = EarlyStopping("e")
            >>> es.load_state_dict({"wait_count": -3, "stopped_epoch": 0, "best_score": 1.0})
            Traceback (most recent call last):
            ...
            ValueError: EarlyStopping(monitor='e'): checkpoint field 'wait_count' must be an int >= 0, got -3
        """
        owner = self._owner
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{owner}: checkpoint state must be a dict, got {type(state_dict).__name__}")
        state = state_dict  # a Mapping from here on
        wait_count = self._state_int(state, "wait_count", 0)
        stopped_epoch = self._state_int(state, "stopped_epoch", 0)
        best_score = self._state_best_score(state)
        self._state_int(state, "patience", 0, default=0)  # not read back, but Lightning's class reads it
        best_epoch = self._state_int(state, "best_epoch", -1, default=-1)
        if best_epoch >= 0 and not bool(torch.isfinite(best_score)):
            raise ValueError(
                f"{owner}: checkpoint field 'best_score' must be finite when 'best_epoch' is set "
                f"(best_epoch={best_epoch}), got {float(best_score)}"
            )
        reason = self._state_reason(state)
        message = state.get("stopping_reason_message")
        if message is not None and not isinstance(message, str):
            raise TypeError(
                f"{owner}: checkpoint field 'stopping_reason_message' must be a str or None, got {message!r}"
            )
        criterion = self._state_criterion(state)
        weights = self._state_weights(state)
        if weights is not None and best_epoch < 0:
            raise ValueError(
                f"{owner}: checkpoint field 'best_epoch' must be >= 0 when 'best_weights' are present, "
                f"got {best_epoch}"
            )

        # everything is valid: only now does the callback change
        self.wait_count, self.stopped_epoch, self.best_score = wait_count, stopped_epoch, best_score
        self.stopping_reason, self.stopping_reason_message = reason, message
        self.best_epoch = best_epoch
        self._criterion = criterion
        self._best_weights = weights if self.restore_best_weights else None
        self._weights_unchecked = self._best_weights is not None
        self._loaded = True
        self._missing_best = None
        if self._best_weights is None and self.restore_best_weights and "best_epoch" not in state:
            self._missing_best = (
                "the checkpoint was written by Lightning's EarlyStopping, which keeps no best weights"
            )
            rank_zero_warn(
                "EarlyStopping: the checkpoint's early-stopping state was written by Lightning's"
                " EarlyStopping: wait count and best score are restored, but it holds no best epoch and no"
                " best weights, so restore_best_weights can only give back weights of a check after this"
                f" resume that beats the restored best score ({float(self.best_score):.6g});"
                " otherwise the last weights are kept"
            )
        elif self._best_weights is None and self.restore_best_weights and best_epoch >= 0:
            self._missing_best = "the best weights were not in the checkpoint (checkpoint_best_weights=False)"

    # ------------------------------------------------------------------ validation of a loaded state
    def _state_int(self, state: Mapping[str, Any], key: str, minimum: int, default: int | None = None) -> int:
        """``state[key]``, an int >= ``minimum``; ``default`` if missing (None: the key is required)."""
        if key not in state:
            if default is None:
                raise ValueError(
                    f"{self._owner}: checkpoint field {key!r} is missing (the state has {sorted(state)})"
                )
            return default
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"{self._owner}: checkpoint field {key!r} must be an int >= {minimum}, got {value!r}"
            )
        if value < minimum:
            raise ValueError(
                f"{self._owner}: checkpoint field {key!r} must be an int >= {minimum}, got {value!r}"
            )
        return value

    def _state_best_score(self, state: Mapping[str, Any]) -> Tensor:
        if "best_score" not in state:
            raise ValueError(
                f"{self._owner}: checkpoint field 'best_score' is missing (the state has {sorted(state)})"
            )
        value = state["best_score"]
        expected = "a one-element float tensor or a number, not NaN"
        if isinstance(value, Tensor):
            if not value.is_floating_point():
                raise TypeError(
                    f"{self._owner}: checkpoint field 'best_score' must be {expected}, "
                    f"got a {value.dtype} tensor"
                )
            if value.numel() != 1:
                raise ValueError(
                    f"{self._owner}: checkpoint field 'best_score' must be {expected}, got a tensor of shape "
                    f"{tuple(value.shape)}"
                )
            score = value.detach().reshape(())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            score = torch.tensor(float(value))
        else:
            raise TypeError(f"{self._owner}: checkpoint field 'best_score' must be {expected}, got {value!r}")
        if bool(torch.isnan(score)):
            raise ValueError(f"{self._owner}: checkpoint field 'best_score' must be {expected}, got nan")
        return score

    def _state_reason(self, state: Mapping[str, Any]) -> _Reason:
        owner = self._owner
        value = state.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED.value)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(
                f"{owner}: checkpoint field 'stopping_reason' must be an int (Lightning's reasons) or a str "
                f"(the kit's), got {value!r}"
            )
        known = [_reason_name(r) for enum in (EarlyStoppingReason, RegkitStoppingReason) for r in enum]
        name = state.get("stopping_reason_name")
        if name is not None:  # written by the kit since reasons are stored by name: the name decides
            if not isinstance(name, str):
                raise TypeError(
                    f"{owner}: checkpoint field 'stopping_reason_name' must be a str, got {name!r}"
                )
            reason = _reason_from_name(name)
            if reason is None:
                raise ValueError(
                    f"{owner}: checkpoint field 'stopping_reason_name' must be one of {known}, got {name!r}"
                )
            if value != reason.value:
                raise ValueError(
                    f"{owner}: checkpoint field 'stopping_reason' must be {reason.value!r}, the value of "
                    f"'stopping_reason_name' {name!r}, got {value!r}"
                )
            return reason
        if isinstance(value, str):
            if value in {r.value for r in RegkitStoppingReason}:
                return RegkitStoppingReason(value)
        elif "best_epoch" in state and value in _LEGACY_REASON_VALUES:  # the kit's integers before names
            return RegkitStoppingReason[_LEGACY_REASON_VALUES[value]]
        else:
            for reason in EarlyStoppingReason:  # written by Lightning: its own numbering
                if reason.value == value:
                    return reason
        raise ValueError(
            f"{owner}: checkpoint field 'stopping_reason' must be the value of one of {known}, got {value!r}"
        )

    def _state_criterion(self, state: Mapping[str, Any]) -> StoppingCriterion | None:
        value = state.get("criterion_state")
        if self.criterion == "patience":
            if value is not None:
                raise ValueError(
                    f"{self._owner}: checkpoint field 'criterion_state' holds a criterion's progress, but"
                    " this callback has criterion='patience' (the state of another EarlyStopping?)"
                )
            return None
        if value is None:
            raise ValueError(
                f"{self._owner}: checkpoint field 'criterion_state' is missing "
                f"(criterion={self.criterion!r} keeps its progress there)"
            )
        criterion = self._make_criterion()
        assert criterion is not None
        try:
            criterion.load_state_dict(value)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{self._owner}: checkpoint field 'criterion_state' is invalid: {err}") from None
        return criterion

    def _state_weights(self, state: Mapping[str, Any]) -> dict[str, Tensor] | None:
        weights = state.get("best_weights")
        if weights is None:
            return None
        expected = "None or the model's state_dict (a non-empty dict of name -> Tensor)"
        if not isinstance(weights, Mapping):
            raise TypeError(
                f"{self._owner}: checkpoint field 'best_weights' must be {expected}, "
                f"got {type(weights).__name__}"
            )
        if not weights:
            raise ValueError(
                f"{self._owner}: checkpoint field 'best_weights' must be {expected}, got an empty dict"
            )
        for key, value in weights.items():
            if not isinstance(key, str) or not isinstance(value, Tensor):
                raise TypeError(
                    f"{self._owner}: checkpoint field 'best_weights' must be {expected}, "
                    f"got the entry {key!r}: {type(value).__name__}"
                )
        return {k: v.detach().cpu() for k, v in weights.items()}

    def _check_best_weights(self, pl_module: pl.LightningModule) -> None:
        """Loaded best weights must fit the model (keys, shapes, dtypes): checked before training."""
        if not self._weights_unchecked or self._best_weights is None:
            return
        best, model = self._best_weights, pl_module.state_dict()
        problems = []
        extra, missing = sorted(best.keys() - model.keys()), sorted(model.keys() - best.keys())
        if extra:
            problems.append(f"in the checkpoint but not in the model: {extra}")
        if missing:
            problems.append(f"in the model but not in the checkpoint: {missing}")
        for key in (k for k in model if k in best):
            ours, theirs = best[key], model[key]
            if ours.shape != theirs.shape:
                problems.append(
                    f"{key!r} has shape {tuple(ours.shape)} in the checkpoint "
                    f"and {tuple(theirs.shape)} in the model"
                )
            elif ours.dtype != theirs.dtype:
                problems.append(
                    f"{key!r} has dtype {ours.dtype} in the checkpoint and {theirs.dtype} in the model"
                )
        if problems:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise ValueError(
                f"{self._owner}: checkpoint field 'best_weights' does not match the model: "
                f"{'; '.join(problems[:5])}{more}. Resume with the model the checkpoint was written for"
            )
        self._weights_unchecked = False

    # ------------------------------------------------------------------ one fit
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            # a new fit starts afresh: state carries over only through ckpt_path (loaded after setup)
            # or a load_state_dict made by hand before this fit
            if not self._loaded:
                self._reset_progress()
            self._check_on_train_epoch_end = self._check_on_train_epoch_end_arg
        super().setup(trainer, pl_module, stage)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_best_weights(pl_module)
        if self.restore_best_weights and any(_is_swa(cb) for cb in trainer.callbacks):  # type: ignore[attr-defined]
            rank_zero_warn(
                "EarlyStopping: StochasticWeightAveraging is among the callbacks and"
                " restore_best_weights=True: at the end of fit the model gets the weights of the best"
                " validated check, restored in on_fit_end, after SWA has written its average in"
                " on_train_end (whatever the callback order). SWA's average is kept only if it was validated"
                " and was the best (SWA validates it only for models with BatchNorm). To keep SWA's average,"
                " pass restore_best_weights=False."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_best_weights(pl_module)  # strategies that restore the checkpoint after on_fit_start
        self._loaded = False  # every restore is done: the next fit starts afresh

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._loaded = False

    # ------------------------------------------------------------------ the check
    def _read_train_value(self, trainer: pl.Trainer) -> float | None:
        if self._criterion is None or not self._criterion.needs_train:
            return None
        logs = trainer.callback_metrics
        value = logs.get(self.train_monitor)
        if value is None:
            msg = (
                f"EarlyStopping: criterion='PQ' reads the training loss `{self.train_monitor}` (argument "
                f"train_monitor), which is not available. Log it or pass train_monitor= one of: "
                f"`{'`, `'.join(list(logs.keys()))}`"
            )
            if self.strict:
                raise RuntimeError(msg)
            return None
        return float(value.squeeze())

    @override
    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        logs = trainer.callback_metrics
        if getattr(trainer, "fast_dev_run", False) or not self._validate_condition_metric(logs):
            return
        epoch = trainer.current_epoch
        if epoch < self.start_from_epoch:
            return
        current = logs[self.monitor].squeeze()
        self._train_value = self._read_train_value(trainer)
        if self.restore_best_weights and trainer.world_size > 1:
            # rank 0's value decides, so every rank snapshots the same step's weights
            current = trainer.strategy.broadcast(current.detach().cpu(), src=0).to(current.device)
            self._train_value = trainer.strategy.broadcast(self._train_value, src=0)
        self._epoch = epoch
        self._improved = False
        local_stop, reason = self._evaluate_stopping_criteria(current)
        if self._improved and self.restore_best_weights:
            self._snapshot(trainer.lightning_module)

        # stop every ddp process if any world process decides to stop
        should_stop = trainer.strategy.reduce_boolean_decision(local_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = epoch
            if not local_stop:
                reason = "Another process signalled the Trainer to stop."
            reason = f"{reason} {self._context(epoch)}"
            self.stopping_reason_message = reason
            self._log_info(trainer, reason, self.log_rank_zero_only)
        elif reason and self.verbose:
            self._log_info(trainer, reason, self.log_rank_zero_only)

    def _context(self, epoch: int) -> str:
        where = f"[{self.criterion} rule] Stopped at epoch {epoch}."
        if self.best_epoch < 0:
            return f"{where} No finite {self.monitor} was seen, so there is no best epoch."
        return f"{where} Best {self.monitor} = {float(self.best_score):.6g} at epoch {self.best_epoch}."

    def _is_improvement(self, current: Tensor, reference: Tensor) -> bool:
        reference = reference.to(current.device)
        if self.min_delta_mode == "abs" or not torch.isfinite(reference):
            return bool(self.monitor_op(current - self.min_delta, reference))
        delta = abs(self.min_delta) * reference.abs()
        return bool(self.monitor_op(current - (delta if self.mode == "max" else -delta), reference))

    @override
    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        epoch = self._epoch
        finite = bool(torch.isfinite(current))
        if self.check_finite and not finite:
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, (
                f"Monitored metric {self.monitor} = {current} is not finite."
                f" Previous best value was {self.best_score:.3f}. Signaling Trainer to stop."
            )
        improved = finite and self._is_improvement(current, self.best_score)
        message = self._improvement_message(current) if improved else None
        if improved:
            self.best_score = current
            self.best_epoch = epoch
            self._improved = True
        if self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            return True, (
                "Stopping threshold reached:"
                f" {self.monitor} = {current} {self.order_dict[self.mode]} {self.stopping_threshold}."
                " Signaling Trainer to stop."
            )
        if self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            return True, (
                "Divergence threshold reached:"
                f" {self.monitor} = {current} {self.order_dict[self.mode]} {self.divergence_threshold}."
                " Signaling Trainer to stop."
            )
        beats_baseline = self.baseline is None or self._is_improvement(current, torch.tensor(self.baseline))
        reset = improved and beats_baseline
        if reset:
            self.wait_count = 0
        else:
            self.wait_count += 1
        if self._criterion is not None:
            if finite:
                value = float(current) if self.mode == "min" else -float(current)
                if self._criterion.update(value, self._train_value):
                    self.stopping_reason = _CRITERION_REASON[self.criterion]
                    return True, f"{self._criterion.describe()}. Signaling Trainer to stop."
            return False, message
        if not reset and self.wait_count >= self.patience:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            extra = "" if self.baseline is None else f" No check beat baseline {self.baseline:g}."
            return True, (
                f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records."
                f" Best score: {self.best_score:.3f}. Signaling Trainer to stop.{extra}"
            )
        return False, message

    # ------------------------------------------------------------------ best weights
    @torch.no_grad()
    def _snapshot(self, pl_module: pl.LightningModule) -> None:
        state = pl_module.state_dict()
        best = self._best_weights
        if (
            best is None
            or best.keys() != state.keys()
            or any(best[k].shape != v.shape for k, v in state.items())
        ):
            self._best_weights = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
            return
        for k, v in state.items():
            best[k].copy_(v.detach())

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_fit_end, not on_train_end: after every callback's on_train_end (StochasticWeightAveraging
        # writes its average there), so the weights restored here are the ones the fit ends with
        if not self.restore_best_weights:
            return
        if self._best_weights is None:
            why = self._missing_best or "no finite value of the monitored metric was seen"
            self._log_info(
                trainer,
                f"EarlyStopping: restore_best_weights is on but {why}; keeping the last weights.",
                self.log_rank_zero_only,
            )
            return
        pl_module.load_state_dict(self._best_weights)
        self._log_info(
            trainer,
            f"EarlyStopping: restored the weights of epoch {self.best_epoch}"
            f" ({self.monitor} = {float(self.best_score):.6g}).",
            self.log_rank_zero_only,
        )
