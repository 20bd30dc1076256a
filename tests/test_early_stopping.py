"""EarlyStopping (lightning_regkit.callbacks.early_stopping) driven through a real Trainer.

A module logs a scripted value per epoch and keeps a snapshot of its weights at every
validation, so each test asserts the exact stop epoch and that the restored weights are
exactly (max_abs_diff == 0) those of the best epoch.
"""

from __future__ import annotations

import logging
import math
from unittest import mock

import ddp_battery
import pytest
import torch
import torchmetrics
from helpers import LitClassifier, SyntheticDataModule, max_abs_diff, trainer_kwargs, weights_of
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_regkit.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason, RegkitStoppingReason

NAN = math.nan


class Scripted(LitClassifier):
    """Trains for real (so weights change every epoch) but logs ``values[current_epoch]`` as ``key``."""

    def __init__(self, values, key="val_loss", train_values=None, train_key="train_err"):
        super().__init__()
        self.values, self.key = list(values), key
        self.train_values, self.train_key = train_values, train_key
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.first_epoch: int | None = None

    def on_train_epoch_start(self):
        if self.first_epoch is None:
            self.first_epoch = self.current_epoch

    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self):
        self.log(self.key, float(self.values[self.current_epoch]))
        self.snapshots[self.current_epoch] = weights_of(self)

    def on_train_epoch_end(self):
        if self.train_values is not None:
            self.log(self.train_key, float(self.train_values[self.current_epoch]))


def fit(tmp_path, values, es, max_epochs=None, module=None, ckpt_path=None, **kw):
    model = module if module is not None else Scripted(values, key=es.monitor)
    kwargs = trainer_kwargs(tmp_path, max_epochs=max_epochs or len(values), num_sanity_val_steps=0)
    kwargs.update(kw)
    callbacks = kwargs.pop("callbacks", [])
    trainer = Trainer(callbacks=[es, *callbacks], **kwargs)
    trainer.fit(model, datamodule=SyntheticDataModule(n_train=32, batch_size=16), ckpt_path=ckpt_path)
    return trainer, model


def assert_restored(model, epoch):
    assert max_abs_diff(weights_of(model), model.snapshots[epoch]) == 0.0


def assert_not_restored_elsewhere(model, epoch, last):
    # the weights did move after the best epoch, so the restore is visible
    assert max_abs_diff(model.snapshots[epoch], model.snapshots[last]) > 0.0


# ----------------------------------------------------------------------------- patience + restore
@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize(
    ("values", "patience", "stop_epoch", "best_epoch"),
    [
        ([5, 4, 3, 3.5, 3.2, 3.1, 4, 4], 3, 5, 2),
        ([5, 4, 3, 3, 3, 3, 3, 3], 1, 3, 2),  # equal is not an improvement
        ([1, 2, 3, 4, 5, 6], 2, 2, 0),  # nothing improved after the first check: it is restored
    ],
)
def test_patience_stop_epoch_and_restored_weights(tmp_path, mode, values, patience, stop_epoch, best_epoch):
    sign = 1 if mode == "min" else -1
    es = EarlyStopping("val_metric", patience=patience, mode=mode, restore_best_weights=True)
    trainer, model = fit(tmp_path, [sign * v for v in values], es)
    assert es.stopped_epoch == stop_epoch == trainer.current_epoch - 1
    assert es.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert es.best_epoch == best_epoch
    assert_restored(model, best_epoch)
    assert_not_restored_elsewhere(model, best_epoch, stop_epoch)
    assert es.best_weights is not None and all(t.device.type == "cpu" for t in es.best_weights.values())


def test_without_restore_the_weights_are_the_last_ones(tmp_path):
    es = EarlyStopping("val_loss", patience=3)
    _, model = fit(tmp_path, [5, 4, 3, 3.5, 3.2, 3.1, 4, 4], es)
    assert es.stopped_epoch == 5
    assert_restored(model, 5)  # plain Lightning behaviour: patience epochs past the best
    assert max_abs_diff(weights_of(model), model.snapshots[2]) > 0.0


def test_restore_when_training_runs_to_max_epochs(tmp_path):
    es = EarlyStopping("val_loss", patience=10, restore_best_weights=True)
    trainer, model = fit(tmp_path, [5, 4, 2, 3, 4, 5], es)
    assert es.stopped_epoch == 0 and es.stopping_reason == EarlyStoppingReason.NOT_STOPPED
    assert trainer.current_epoch == 6
    assert_restored(model, 2)


def test_snapshot_copied_only_on_improvement_in_place(tmp_path):
    es = EarlyStopping("val_loss", patience=10, restore_best_weights=True)
    pointers = []
    original = EarlyStopping._snapshot

    def spy(self, pl_module):
        original(self, pl_module)
        pointers.append({k: v.data_ptr() for k, v in self.best_weights.items()})

    with mock.patch.object(EarlyStopping, "_snapshot", spy):
        _, model = fit(tmp_path, [5, 4, 4.5, 3, 3.5, 3.6], es)
    assert len(pointers) == 3  # improvements at epochs 0, 1, 3
    assert pointers[0] == pointers[1] == pointers[2]  # refreshed in place, no new allocation
    assert_restored(model, 3)


# ----------------------------------------------------------------------------- Keras options
@pytest.mark.parametrize(
    ("start_from_epoch", "stop_epoch", "best_epoch"),
    [
        (0, 2, 0),  # epoch 0 (0.1) is the best; two bad checks -> stop at 2
        (2, 4, 2),  # epochs 0-1 are ignored: 4.0 at epoch 2 is the first best
    ],
)
def test_start_from_epoch(tmp_path, start_from_epoch, stop_epoch, best_epoch):
    es = EarlyStopping("val_loss", patience=2, start_from_epoch=start_from_epoch, restore_best_weights=True)
    _, model = fit(tmp_path, [0.1, 5, 4, 4.5, 4.6, 4.7, 4.8], es)
    assert es.stopped_epoch == stop_epoch
    assert es.best_epoch == best_epoch
    assert_restored(model, best_epoch)


def test_start_from_epoch_beyond_training_restores_nothing(tmp_path, caplog):
    es = EarlyStopping("val_loss", patience=1, start_from_epoch=10, restore_best_weights=True)
    with caplog.at_level(logging.INFO):
        _, model = fit(tmp_path, [3, 4, 5], es)
    assert es.best_epoch == -1 and es.best_weights is None
    assert_restored(model, 2)  # last weights kept
    assert "no finite value of the monitored metric was seen" in caplog.text


@pytest.mark.parametrize(
    ("values", "baseline", "stop_epoch", "best_epoch"),
    [
        # improves every check but never beats 2.0: wait = 1, 2, 3 -> stop at epoch 2 (Keras docs)
        ([5, 4, 3, 2.5, 2.2, 2.1], 2.0, 2, 2),
        # beats the baseline at epoch 1, then three checks without improvement
        ([5, 1.5, 1.6, 1.7, 1.8, 1.9], 2.0, 4, 1),
        # no baseline: keeps improving, runs to max_epochs
        ([5, 4, 3, 2.5, 2.2, 2.1], None, None, 5),
    ],
)
def test_baseline(tmp_path, values, baseline, stop_epoch, best_epoch):
    es = EarlyStopping("val_loss", patience=3, baseline=baseline, restore_best_weights=True)
    _, model = fit(tmp_path, values, es)
    assert es.stopped_epoch == (stop_epoch or 0)
    assert es.best_epoch == best_epoch
    assert_restored(model, best_epoch)  # restored whatever the baseline
    if baseline is not None and stop_epoch == 2:
        assert "No check beat baseline 2" in es.stopping_reason_message


@pytest.mark.parametrize(
    ("min_delta_mode", "stop_epoch", "best_epoch"),
    [
        # rel 0.04: 9.5 < 10*0.96 yes; 9.2 < 9.12 no; 9.0 < 9.12 yes; 8.9 < 8.64 no; 8.85 no -> stop at 5
        ("rel", 5, 3),
        # abs 0.04: every step beats the best by more than 0.04 -> runs to the end
        ("abs", None, 5),
    ],
)
def test_relative_min_delta(tmp_path, min_delta_mode, stop_epoch, best_epoch):
    es = EarlyStopping(
        "val_loss", patience=2, min_delta=0.04, min_delta_mode=min_delta_mode, restore_best_weights=True
    )
    _, model = fit(tmp_path, [10, 9.5, 9.2, 9.0, 8.9, 8.85], es)
    assert es.stopped_epoch == (stop_epoch or 0)
    assert es.best_epoch == best_epoch
    assert_restored(model, best_epoch)


@pytest.mark.parametrize(
    ("mode", "current", "best", "improved"),
    [
        ("min", -10.5, -10.0, True),  # needs < -10 - 0.04*10 = -10.4
        ("min", -10.3, -10.0, False),
        ("max", -9.5, -10.0, True),  # needs > -10 + 0.4 = -9.6
        ("max", -9.7, -10.0, False),
        ("max", 10.5, 10.0, True),
        ("max", 10.3, 10.0, False),
    ],
)
def test_relative_min_delta_direction_with_negative_values(mode, current, best, improved):
    es = EarlyStopping("m", mode=mode, min_delta=0.04, min_delta_mode="rel")
    assert es._is_improvement(torch.tensor(current), torch.tensor(best)) is improved


# ----------------------------------------------------------------------------- Prechelt criteria
def test_gl_criterion(tmp_path, caplog):
    # GL(3) = 100*(0.72/0.7-1) = 2.86 %, GL(4) = 5.71 % > 5 -> stop at epoch 4; best 0.7 at epoch 2
    es = EarlyStopping("val_loss", criterion="GL", alpha=5.0, restore_best_weights=True)
    with caplog.at_level(logging.INFO):
        _, model = fit(tmp_path, [1.0, 0.8, 0.7, 0.72, 0.74, 0.76, 0.8], es)
    assert es.stopped_epoch == 4
    assert es.stopping_reason == RegkitStoppingReason.GENERALIZATION_LOSS
    assert_restored(model, 2)
    msg = es.stopping_reason_message
    assert msg.startswith("GL_5 (Prechelt 1998): generalization loss GL = 5.71% > alpha = 5")
    assert msg.endswith("[GL rule] Stopped at epoch 4. Best val_loss = 0.7 at epoch 2.")
    assert msg in caplog.text  # in the log, without verbose


@pytest.mark.parametrize(
    ("alpha", "stop_epoch"),
    [
        # strips of 2 checks end at epochs 1, 3, 5. Epoch 3: GL = 7.143 %, P_2 = 1000*(1.59/1.58-1)
        # = 6.329, GL/P = 1.129 > 1. Epoch 5: GL = 28.57 %, P_2 = 0.6418, GL/P = 44.5 > 2.
        (1.0, 3),
        (2.0, 5),
    ],
)
def test_pq_criterion_reads_train_monitor(tmp_path, alpha, stop_epoch):
    values = [1.0, 0.8, 0.7, 0.75, 0.8, 0.9]
    train = [1.0, 0.9, 0.8, 0.79, 0.78, 0.779]
    es = EarlyStopping(
        "val_loss", criterion="PQ", alpha=alpha, strip=2, train_monitor="train_err", restore_best_weights=True
    )
    model = Scripted(values, train_values=train)
    _, model = fit(tmp_path, values, es, module=model)
    assert es.stopped_epoch == stop_epoch
    assert es.stopping_reason == RegkitStoppingReason.PROGRESS_QUOTIENT
    assert es.stopping_reason_message.startswith(f"PQ_{alpha:g} (Prechelt 1998): GL / P_2 = ")
    assert_restored(model, 2)


def test_pq_missing_train_monitor_lists_keys(tmp_path):
    es = EarlyStopping("val_loss", criterion="PQ", alpha=1.0, train_monitor="train_los")
    with pytest.raises(RuntimeError, match=r"reads the training loss `train_los`.*`train_loss`"):
        fit(tmp_path, [1.0, 0.9], es)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_up_criterion(tmp_path, mode):
    # strip 1: rises at epochs 2 and 4, 5 -> UP_2 stops at epoch 5; patience=3 would stop at 4
    sign = 1 if mode == "min" else -1
    values = [sign * v for v in [1.0, 0.8, 0.9, 0.85, 0.9, 0.95, 1.0]]
    es = EarlyStopping("val_metric", mode=mode, criterion="UP", s=2, strip=1, restore_best_weights=True)
    _, model = fit(tmp_path, values, es)
    assert es.stopped_epoch == 5
    assert es.stopping_reason == RegkitStoppingReason.UP_SUCCESSIVE_STRIPS
    assert "UP_2 (Prechelt 1998): the error rose in 2 successive strips" in es.stopping_reason_message
    assert_restored(model, 1)


# ----------------------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("bad", [NAN, math.inf])
def test_non_finite_stops_and_restores_best_finite(tmp_path, bad):
    es = EarlyStopping("val_loss", patience=3, restore_best_weights=True)
    _, model = fit(tmp_path, [1.0, 0.5, bad, 0.3, 0.2], es)
    assert es.stopped_epoch == 2
    assert es.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC
    assert "is not finite" in es.stopping_reason_message
    assert es.stopping_reason_message.endswith("Stopped at epoch 2. Best val_loss = 0.5 at epoch 1.")
    assert_restored(model, 1)


def test_non_finite_without_check_finite_is_never_best(tmp_path):
    es = EarlyStopping("val_loss", patience=2, check_finite=False, restore_best_weights=True)
    _, model = fit(tmp_path, [1.0, 0.5, -math.inf, NAN, 0.7], es)
    assert es.stopped_epoch == 3
    assert_restored(model, 1)


def test_first_check_non_finite_keeps_last_weights(tmp_path, caplog):
    es = EarlyStopping("val_loss", restore_best_weights=True)
    with caplog.at_level(logging.INFO):
        fit(tmp_path, [NAN, 1.0], es)
    assert es.stopped_epoch == 0 and es.best_weights is None
    assert "No finite val_loss was seen" in es.stopping_reason_message
    assert "keeping the last weights" in caplog.text


# ----------------------------------------------------------------------------- torchmetrics, every n epochs
class MetricObjectModule(Scripted):
    def __init__(self, values):
        super().__init__(values, key="val_acc")
        self.val_acc = torchmetrics.MeanMetric()

    def validation_step(self, batch, batch_idx):
        self.val_acc.update(torch.tensor(float(self.values[self.current_epoch])))
        self.log("val_acc", self.val_acc, on_epoch=True)

    def on_validation_epoch_end(self):
        self.snapshots[self.current_epoch] = weights_of(self)


def test_torchmetrics_metric_mode_max_every_n_epochs(tmp_path):
    # validation at epochs 1, 3, 5, 7, 9; best 0.7 at epoch 3; checks 5 and 7 are worse -> stop at 7
    values = [0.0, 0.5, 0.0, 0.7, 0.0, 0.6, 0.0, 0.65, 0.0, 0.9]
    es = EarlyStopping("val_acc", mode="max", patience=2, restore_best_weights=True)
    trainer, model = fit(tmp_path, values, es, module=MetricObjectModule(values), check_val_every_n_epoch=2)
    assert sorted(model.snapshots) == [1, 3, 5, 7]
    assert es.stopped_epoch == 7 and trainer.current_epoch == 8
    assert es.best_epoch == 3 and float(es.best_score) == pytest.approx(0.7)
    assert_restored(model, 3)


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize(
    ("patience_on_resume", "checkpoint_best_weights", "stop_epoch"),
    [(3, True, 5), (4, True, 6), (3, False, 5)],
)
def test_resume_mid_patience_continues_count(
    tmp_path, patience_on_resume, checkpoint_best_weights, stop_epoch
):
    values = [5, 4, 3, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 4.1]
    ckpt_dir = tmp_path / "ckpt"
    es1 = EarlyStopping(
        "val_loss", patience=3, restore_best_weights=True, checkpoint_best_weights=checkpoint_best_weights
    )
    last = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)
    _, model1 = fit(tmp_path, values, es1, max_epochs=4, callbacks=[last], enable_checkpointing=True)
    assert es1.stopped_epoch == 0 and es1.wait_count == 1  # interrupted mid-patience

    ckpt = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    state = ckpt["callbacks"][es1.state_key]
    # "epoch": epochs completed when last.ckpt was written: Lightning 2.6's ModelCheckpoint writes it again
    # in on_train_end (4); older releases last wrote it at the end of epoch 3, before that epoch counted (3)
    last_at_train_end = "on_train_end" in vars(ModelCheckpoint)
    assert ckpt["epoch"] == (4 if last_at_train_end else 3)
    assert state["wait_count"] == 1 and state["best_epoch"] == 2
    assert ("best_weights" in state) is checkpoint_best_weights

    es2 = EarlyStopping(
        "val_loss",
        patience=patience_on_resume,
        restore_best_weights=True,
        checkpoint_best_weights=checkpoint_best_weights,
    )
    model2 = Scripted(values)
    _, model2 = fit(tmp_path, values, es2, max_epochs=10, module=model2, ckpt_path=ckpt_dir / "last.ckpt")
    assert model2.first_epoch == 4  # it resumed
    assert es2.patience == patience_on_resume  # the new argument wins over the checkpoint's
    assert es2.stopped_epoch == stop_epoch  # a fresh count would stop at epoch 7 (best 3.6 at 4)
    if checkpoint_best_weights:
        # the best epoch (2) happened before the resume: its weights came from the checkpoint
        assert max_abs_diff(weights_of(model2), model1.snapshots[2]) == 0.0
    else:
        assert es2.best_weights is None
        assert_restored(model2, stop_epoch)


def test_state_dict_round_trip_weights_only(tmp_path):
    es = EarlyStopping("val_loss", criterion="UP", s=2, strip=1, restore_best_weights=True)
    fit(tmp_path, [1.0, 0.8, 0.9, 0.85, 0.9, 0.95, 1.0], es)
    torch.save(es.state_dict(), tmp_path / "es.pt")
    loaded = torch.load(tmp_path / "es.pt", weights_only=True)
    assert "patience" in loaded  # still written, so Lightning's own class can load the file
    fresh = EarlyStopping("val_loss", criterion="UP", s=2, strip=1, restore_best_weights=True, patience=7)
    fresh.load_state_dict(loaded)
    assert fresh.patience == 7
    assert fresh.stopping_reason == RegkitStoppingReason.UP_SUCCESSIVE_STRIPS
    assert fresh.stopping_reason_message == es.stopping_reason_message
    assert (fresh.wait_count, fresh.stopped_epoch, fresh.best_epoch) == (es.wait_count, es.stopped_epoch, 1)
    assert fresh._criterion == es._criterion
    assert max_abs_diff(fresh.best_weights, es.best_weights) == 0.0
    assert fresh.state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min', 'criterion': 'UP'}"


def test_lightning_class_loads_our_patience_state():
    ours = EarlyStopping("val_loss", patience=2)
    ours.wait_count, ours.best_score = 1, torch.tensor(0.25)
    theirs = LightningEarlyStopping("val_loss", patience=2)
    theirs.load_state_dict(ours.state_dict())
    assert theirs.wait_count == 1 and float(theirs.best_score) == 0.25
    assert theirs.state_key == ours.state_key


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "maximum"}, ValueError, r"EarlyStopping: `mode` can be min, max, got maximum"),
        ({"criterion": "gl"}, ValueError, r"EarlyStopping: criterion must be one of .*got 'gl'"),
        ({"patience": -1}, ValueError, r"EarlyStopping: patience must be >= 0, got -1"),
        ({"patience": 2.5}, TypeError, r"EarlyStopping: patience must be an int, got 2.5"),
        ({"criterion": "GL", "alpha": -1.0}, ValueError, r"GL: alpha must be a finite number >= 0, got -1.0"),
        ({"criterion": "PQ"}, ValueError, r"EarlyStopping: criterion='PQ' needs alpha"),
        ({"criterion": "GL", "alpha": 1.0, "mode": "max"}, ValueError, r"criterion='GL' needs mode='min'"),
        ({"criterion": "UP", "s": 0}, ValueError, r"UP: s must be >= 1, got 0"),
        ({"criterion": "UP", "strip": 0}, ValueError, r"UP: strip must be >= 1, got 0"),
        ({"criterion": "UP", "baseline": 1.0}, ValueError, r"baseline applies to criterion='patience' only"),
        ({"min_delta": -0.1}, ValueError, r"EarlyStopping: min_delta must be a finite number >= 0, got -0.1"),
        (
            {"min_delta_mode": "relative"},
            ValueError,
            r"min_delta_mode must be 'abs' or 'rel', got 'relative'",
        ),
        ({"start_from_epoch": -2}, ValueError, r"EarlyStopping: start_from_epoch must be >= 0, got -2"),
        ({"baseline": math.nan}, ValueError, r"EarlyStopping: baseline must be a finite number, got nan"),
        ({"baseline": "1"}, TypeError, r"EarlyStopping: baseline must be a real number, got '1'"),
        ({"stopping_threshold": math.inf}, ValueError, r"stopping_threshold must be a finite number"),
        ({"train_monitor": ""}, TypeError, r"EarlyStopping: train_monitor must be a non-empty str"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        EarlyStopping("val_loss", **kwargs)


def test_missing_monitor_lists_logged_keys(tmp_path):
    es = EarlyStopping("val_los")
    with pytest.raises(RuntimeError, match=r"Early stopping conditioned on metric `val_los`.*`val_loss`"):
        fit(tmp_path, [1.0, 0.9], es, module=Scripted([1.0, 0.9], key="val_loss"))


# ----------------------------------------------------------------------------- DDP
@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_ranks_stop_together_with_same_weights(tmp_path_factory):
    # 2 ranks, Scripted val_loss [5, 4, 3, 3.5, 3.2, 3.1, 4, 4], patience=3, restore_best_weights:
    # ddp_battery.early_stopping, in the suite's DDP launch
    r0, r1 = ddp_battery.load_ranks(tmp_path_factory, "early_stopping")
    assert r0["stopped_epoch"] == r1["stopped_epoch"] == 5
    assert r0["epoch"] == r1["epoch"] == 6
    assert r0["best_epoch"] == r1["best_epoch"] == 2
    assert max_abs_diff(r0["weights"], r1["weights"]) == 0.0
    assert max_abs_diff(r0["weights"], r0["snapshot"]) == 0.0
    assert max_abs_diff(r1["weights"], r1["snapshot"]) == 0.0
    assert max_abs_diff(r0["snapshot"], r0["last"]) > 0.0


# ----------------------------------------------------------------------------- README quick start
def test_readme_quickstart(tmp_path):
    torch.manual_seed(0)
    model, dm = LitClassifier(lr=0.5), SyntheticDataModule(n_train=64, n_val=32)
    quiet = {k: v for k, v in trainer_kwargs(tmp_path).items() if k != "max_epochs"}
    # --- README snippet (.notes/readme_early_stopping.md) ---
    early_stop = EarlyStopping(
        monitor="val_loss",
        patience=3,
        restore_best_weights=True,  # the model ends at its best epoch
        min_delta=0.01,
        min_delta_mode="rel",  # an improvement must beat the best by 1 %
        start_from_epoch=2,  # warm-up: no decision before epoch 2
    )
    trainer = Trainer(max_epochs=30, callbacks=[early_stop], **quiet)
    trainer.fit(model, datamodule=dm)
    print(early_stop.stopping_reason_message)
    # --- end of snippet ---
    assert early_stop.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert early_stop.stopped_epoch == early_stop.best_epoch + early_stop.wait_count
    (metrics,) = trainer.validate(model, datamodule=dm, verbose=False)
    assert metrics["val_loss"] == pytest.approx(
        float(early_stop.best_score), abs=1e-6
    )  # the best model came back
