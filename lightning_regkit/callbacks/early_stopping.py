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
from enum import Enum
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_regkit.criteria import GL, PQ, UP, StoppingCriterion

__all__ = ["CRITERIA", "EarlyStopping", "EarlyStoppingReason", "RegkitStoppingReason"]

CRITERIA = ("patience", "GL", "PQ", "UP")


class RegkitStoppingReason(Enum):
    """Stopping reasons added by the kit; Lightning's own reasons stay :class:`EarlyStoppingReason`.

    The values continue Lightning's numbering, so ``stopping_reason.value`` is unique across both.

    Example:
        >>> RegkitStoppingReason.GENERALIZATION_LOSS.value
        5
    """

    GENERALIZATION_LOSS = 5
    PROGRESS_QUOTIENT = 6
    UP_SUCCESSIVE_STRIPS = 7


_CRITERION_REASON = {
    "GL": RegkitStoppingReason.GENERALIZATION_LOSS,
    "PQ": RegkitStoppingReason.PROGRESS_QUOTIENT,
    "UP": RegkitStoppingReason.UP_SUCCESSIVE_STRIPS,
}


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

    * ``restore_best_weights``: at the end of ``fit`` (``on_train_end``), load the module's
      ``state_dict`` (parameters and buffers) from the best monitored check, whether training
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
      the weights of their own epoch.
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
    Lightning's reasons and :class:`RegkitStoppingReason` for GL, PQ and UP;
    ``stopping_reason_message`` starts with Lightning's message (for Lightning's reasons) and
    adds the stop epoch and the best value and its epoch. The message of a stop is always
    logged (INFO, Lightning's early-stopping logger); improvements only with ``verbose``.

    Checkpoints: progress only, loadable with ``torch.load(weights_only=True)``: wait count,
    best score and epoch, stop epoch and reason, the criterion's history and (optionally) the
    best weights. ``patience`` is still written, for Lightning's own class to load the file,
    but is not read back, so a new ``patience`` wins on resume. ``state_key`` equals
    Lightning's (``monitor``, ``mode``) for ``criterion="patience"`` and adds the criterion
    otherwise.

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
        self._criterion: StoppingCriterion | None = None
        try:  # the criteria validate alpha, strip and s; the message names this class too
            if criterion == "GL":
                self._criterion = GL(alpha=alpha)  # type: ignore[arg-type]
            elif criterion == "PQ":
                self._criterion = PQ(alpha=alpha, strip=strip)  # type: ignore[arg-type]
            elif criterion == "UP":
                self._criterion = UP(s=s, strip=strip)
        except (TypeError, ValueError) as err:
            raise type(err)(f"EarlyStopping: {err}") from None
        self.best_epoch: int = -1
        self.stopping_reason: EarlyStoppingReason | RegkitStoppingReason = EarlyStoppingReason.NOT_STOPPED  # type: ignore[assignment]
        self._best_weights: dict[str, Tensor] | None = None
        self._epoch = 0
        self._train_value: float | None = None
        self._improved = False
        self._missing_best: str | None = None  # why a resumed run has no best weights to restore

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
        state["stopping_reason"] = self.stopping_reason.value
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
        # ``patience`` is configuration: the value passed to __init__ wins (Lightning reads it back).
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        value = state_dict.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED.value)
        lightning_values = {r.value for r in EarlyStoppingReason}
        self.stopping_reason = (
            EarlyStoppingReason(value) if value in lightning_values else RegkitStoppingReason(value)
        )
        self.stopping_reason_message = state_dict.get("stopping_reason_message")
        self.best_epoch = int(state_dict.get("best_epoch", -1))
        if self._criterion is not None and "criterion_state" in state_dict:
            self._criterion.load_state_dict(state_dict["criterion_state"])
        weights = state_dict.get("best_weights")
        self._missing_best = None
        if weights is not None:
            self._best_weights = {k: v.detach().cpu() for k, v in weights.items()}
        elif self.restore_best_weights and "best_epoch" not in state_dict:
            self._best_weights = None
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
        elif self.restore_best_weights and self.best_epoch >= 0:
            self._best_weights = None  # on_train_end says why nothing is restored
            self._missing_best = "the best weights were not in the checkpoint (checkpoint_best_weights=False)"

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
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
