"""Lightning's own EarlyStopping test cases, run on Lightning's class and on ours side by side.

Lightning's test file is not installed, so its key cases are re-created here from
``tests/tests_pytorch/callbacks/test_early_stopping.py`` of Lightning 2.6 (same parameters,
same expected epochs). Every case runs both classes with our new options off and asserts they
agree (stop epoch, reason, state) and that both give Lightning's expected answer. Lightning's
helpers ``ClassificationModel``/``ClassifDataModule`` are replaced by helpers'
``LitClassifier``/``SyntheticDataModule``; training batches are limited to keep it fast (the
scripted metrics do not depend on them).
"""

from __future__ import annotations

import copy
import math
import pickle
from unittest import mock
from unittest.mock import Mock

import cloudpickle
import pytest
import torch
from helpers import LitClassifier, SyntheticDataModule
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_regkit._compat import LIGHTNING_HAS_STOPPING_REASON, EarlyStoppingReason
from lightning_regkit.callbacks.early_stopping import EarlyStopping

pytestmark = pytest.mark.integration  # whole fits through Lightning: make test, not make test-fast

CLASSES = [LightningEarlyStopping, EarlyStopping]
# Lightning's class has stopping_reason / stopping_reason_message only from Lightning 2.6 on
NO_REASONS = "Lightning < 2.6: its EarlyStopping has no stopping_reason (the kit's has, from _compat)"
REASON_CLASSES = [
    pytest.param(
        LightningEarlyStopping, marks=pytest.mark.skipif(not LIGHTNING_HAS_STOPPING_REASON, reason=NO_REASONS)
    ),
    EarlyStopping,
]
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}


def both(run):
    """Run ``run(cls)`` for Lightning's class and ours; return both results."""
    return run(LightningEarlyStopping), run(EarlyStopping)


def assert_same_outcome(lightning_es, ours):
    assert ours.stopped_epoch == lightning_es.stopped_epoch
    assert ours.wait_count == lightning_es.wait_count
    if not LIGHTNING_HAS_STOPPING_REASON:  # nothing of Lightning's to compare the reason with
        return
    assert ours.stopping_reason == lightning_es.stopping_reason
    if lightning_es.stopping_reason_message is None:
        assert ours.stopping_reason_message is None
    else:  # ours starts with Lightning's message and adds the epoch and best value
        assert ours.stopping_reason_message.startswith(lightning_es.stopping_reason_message)


def test_early_stopping_state_key():
    for cls in CLASSES:
        assert cls(monitor="val_loss").state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"


def test_resume_early_stopping_from_checkpoint(tmp_path):
    """Per-epoch states are what the checkpoint holds, and a new callback reloads them."""

    def run(cls):
        class Restore(cls):
            def __init__(self, expected_state, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.expected_state, self.saved_states = expected_state, []

            def on_train_start(self, trainer, pl_module):
                if self.expected_state:
                    assert self.state_dict() == self.expected_state

            def on_train_epoch_end(self, trainer, pl_module):
                super().on_train_epoch_end(trainer, pl_module)
                self.saved_states.append(self.state_dict().copy())

        seed_everything(42)
        model, dm = LitClassifier(), SyntheticDataModule()
        root = tmp_path / cls.__module__
        ckpt = ModelCheckpoint(dirpath=root, monitor="train_loss", save_top_k=1)
        es = Restore(None, monitor="train_loss")
        trainer = Trainer(
            default_root_dir=root, callbacks=[es, ckpt], num_sanity_val_steps=0, max_epochs=4, **QUIET
        )
        trainer.fit(model, datamodule=dm)
        assert len(es.saved_states) == 4
        checkpoint = torch.load(ckpt.kth_best_model_path, weights_only=True)
        state = es.saved_states[checkpoint["epoch"]]  # the checkpoint saves "epoch + 1"
        assert es.state_key.endswith("Restore{'monitor': 'train_loss', 'mode': 'min'}")
        assert checkpoint["callbacks"][es.state_key] == state
        es2 = Restore(state, monitor="train_loss")
        new_trainer = Trainer(default_root_dir=root, max_epochs=1, callbacks=[es2], **QUIET)
        with pytest.raises(MisconfigurationException, match=r"You restored a checkpoint with current_epoch"):
            new_trainer.fit(model, datamodule=dm, ckpt_path=ckpt.kth_best_model_path)
        return state

    lightning_state, our_state = both(run)
    assert {k: our_state[k] for k in lightning_state} == lightning_state


@pytest.mark.parametrize("cls", CLASSES)
def test_early_stopping_no_extraneous_invocations(tmp_path, cls):
    es = cls(monitor="train_loss")
    es._run_early_stopping_check = Mock()
    trainer = Trainer(
        default_root_dir=tmp_path,
        callbacks=[es],
        limit_train_batches=4,
        limit_val_batches=4,
        max_epochs=4,
        enable_checkpointing=False,
        **QUIET,
    )
    trainer.fit(LitClassifier(), datamodule=SyntheticDataModule())
    assert trainer.early_stopping_callback == es
    assert trainer.early_stopping_callbacks == [es]
    assert es._run_early_stopping_check.call_count == 4


PATIENCE_CASES = [([6, 5, 5, 5, 5, 5], 3, 4), ([6, 5, 4, 4, 3, 3], 1, 3), ([6, 5, 6, 5, 5, 5], 3, 4)]


@pytest.mark.parametrize(("loss_values", "patience", "expected_stop_epoch"), PATIENCE_CASES)
def test_early_stopping_patience(tmp_path, loss_values, patience, expected_stop_epoch):
    def run(cls):
        class Model(BoringModel):
            validation_return_values = torch.tensor(loss_values)

            def on_validation_epoch_end(self):
                self.log("test_val_loss", self.validation_return_values[self.current_epoch])

        es = cls(monitor="test_val_loss", patience=patience, verbose=True)
        trainer = Trainer(
            default_root_dir=tmp_path,
            callbacks=[es],
            num_sanity_val_steps=0,
            max_epochs=10,
            limit_train_batches=2,
            limit_val_batches=2,
            **QUIET,
        )
        trainer.fit(Model())
        assert trainer.current_epoch - 1 == expected_stop_epoch
        return es

    assert_same_outcome(*both(run))


@pytest.mark.parametrize("validation_step_none", [True, False])
@pytest.mark.parametrize(("loss_values", "patience", "expected_stop_epoch"), PATIENCE_CASES)
def test_early_stopping_patience_train(
    tmp_path, validation_step_none, loss_values, patience, expected_stop_epoch
):
    def run(cls):
        class Model(BoringModel):
            train_return_values = torch.tensor(loss_values)

            def on_train_epoch_end(self):
                self.log("train_loss", self.train_return_values[self.current_epoch])

        model = Model()
        if validation_step_none:
            model.validation_step = None
        es = cls(monitor="train_loss", patience=patience, verbose=True, check_on_train_epoch_end=True)
        trainer = Trainer(
            default_root_dir=tmp_path,
            callbacks=[es],
            num_sanity_val_steps=0,
            max_epochs=10,
            limit_train_batches=2,
            limit_val_batches=2,
            **QUIET,
        )
        trainer.fit(model)
        assert trainer.current_epoch - 1 == expected_stop_epoch
        return es

    assert_same_outcome(*both(run))


@pytest.mark.parametrize("cls", CLASSES)
def test_pickling(cls):
    es = cls(monitor="foo")
    loaded = pickle.loads(pickle.dumps(es))
    assert vars(es) == vars(loaded)
    loaded = cloudpickle.loads(cloudpickle.dumps(es))
    assert vars(es) == vars(loaded)


def test_early_stopping_no_val_step(tmp_path):
    """Falls back to training metrics when no validation is defined."""

    def run(cls):
        seed_everything(0)
        model = LitClassifier()
        dm = SyntheticDataModule(n_train=320)
        model.validation_step = None
        dm.val_dataloader = None
        es = cls(monitor="train_loss", min_delta=0.1, patience=0, check_on_train_epoch_end=True)
        trainer = Trainer(
            default_root_dir=tmp_path, callbacks=[es], overfit_batches=0.20, max_epochs=10, **QUIET
        )
        trainer.fit(model, datamodule=dm)
        assert trainer.state.finished, f"Training failed with {trainer.state}"
        assert trainer.current_epoch < trainer.max_epochs - 1
        return es

    assert_same_outcome(*both(run))


@pytest.mark.parametrize(
    ("stopping_threshold", "divergence_threshold", "losses", "expected_epoch"),
    [
        (None, None, [8, 4, 2, 3, 4, 5, 8, 10], 5),
        (2.9, None, [9, 8, 7, 6, 5, 6, 4, 3, 2, 1], 8),
        (None, 15.9, [9, 4, 2, 16, 32, 64], 3),
    ],
)
def test_early_stopping_thresholds(
    tmp_path, stopping_threshold, divergence_threshold, losses, expected_epoch
):
    def run(cls):
        class Model(BoringModel):
            def on_validation_epoch_end(self):
                self.log("abc", losses[self.current_epoch])

        es = cls(
            monitor="abc", stopping_threshold=stopping_threshold, divergence_threshold=divergence_threshold
        )
        trainer = Trainer(
            default_root_dir=tmp_path,
            callbacks=[es],
            limit_train_batches=0.2,
            limit_val_batches=0.2,
            max_epochs=20,
            **QUIET,
        )
        trainer.fit(Model())
        assert trainer.current_epoch - 1 == expected_epoch, "early_stopping failed"
        return es

    lightning_es, ours = both(run)
    assert_same_outcome(lightning_es, ours)
    if stopping_threshold is not None:
        # the one documented difference: the value that reached the threshold is recorded as the best
        # (it is the epoch restore_best_weights gives back); Lightning keeps the previous best
        assert float(lightning_es.best_score) == 3.0 and float(ours.best_score) == 2.0
    else:
        assert float(ours.best_score) == float(lightning_es.best_score)


@pytest.mark.parametrize("stop_value", [torch.tensor(torch.inf), torch.tensor(torch.nan)])
def test_early_stopping_on_non_finite_monitor(tmp_path, stop_value):
    losses = [4, 3, stop_value, 2, 1]

    def run(cls):
        class Model(BoringModel):
            def on_validation_epoch_end(self):
                self.log("val_loss", losses[self.current_epoch])

        es = cls(monitor="val_loss", check_finite=True)
        trainer = Trainer(
            default_root_dir=tmp_path,
            callbacks=[es],
            limit_train_batches=0.2,
            limit_val_batches=0.2,
            max_epochs=10,
            **QUIET,
        )
        trainer.fit(Model())
        assert trainer.current_epoch - 1 == 2
        assert es.stopped_epoch == 2
        return es

    lightning_es, ours = both(run)
    assert_same_outcome(lightning_es, ours)
    assert float(ours.best_score) == float(lightning_es.best_score) == 3.0


@pytest.mark.parametrize(
    ("limit_train_batches", "min_epochs", "min_steps", "stop_step"),
    [
        (3, 0, 10, 10),
        (5, 0, 10, 10),
        (3, 2, 0, 6),
        (5, 2, 0, 10),
        (3, 1, 10, 10),
        (5, 1, 10, 10),
        (3, 3, 10, 10),
        (5, 3, 10, 15),
    ],
)
@pytest.mark.parametrize("cls", CLASSES)
def test_min_epochs_min_steps_global_step(
    tmp_path, cls, limit_train_batches, min_epochs, min_steps, stop_step
):
    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("foo", batch_idx)
            return super().training_step(batch, batch_idx)

    es = cls("foo")
    trainer = Trainer(
        default_root_dir=tmp_path,
        callbacks=es,
        limit_val_batches=0,
        limit_train_batches=limit_train_batches,
        min_epochs=min_epochs,
        min_steps=min_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    expected_epochs = max(math.ceil(min_steps / limit_train_batches), min_epochs)
    with mock.patch.object(es, "_evaluate_stopping_criteria", side_effect=[(True, "")] * expected_epochs):
        trainer.fit(Model())
    assert trainer.should_stop
    assert trainer.current_epoch == expected_epochs
    assert trainer.global_step == stop_step


@pytest.mark.parametrize("strict", [True, False])
def test_missing_monitor_strict_lists_logged_keys(tmp_path, strict):
    def run(cls):
        class Model(BoringModel):
            def on_validation_epoch_end(self):
                self.log("val_loss", 1.0)
                self.log("val_acc", 0.5)

        es = cls(monitor="val_los", strict=strict)
        trainer = Trainer(
            default_root_dir=tmp_path,
            callbacks=[es],
            max_epochs=2,
            limit_train_batches=1,
            limit_val_batches=1,
            **QUIET,
        )
        if strict:
            with pytest.raises(RuntimeError) as err:
                trainer.fit(Model())
            return es, str(err.value)
        trainer.fit(Model())
        assert trainer.current_epoch == 2 and not trainer.should_stop
        return es, None

    (lightning_es, lightning_err), (ours, our_err) = both(run)
    assert our_err == lightning_err
    if strict:
        assert "Early stopping conditioned on metric `val_los` which is not available" in our_err
        assert "`val_loss`, `val_acc`" in our_err
    assert_same_outcome(lightning_es, ours)


@pytest.mark.parametrize("cls", CLASSES)
def test_early_stopping_mode_options(cls):
    with pytest.raises(MisconfigurationException, match=r"`mode` can be .* got unknown_option"):
        cls(monitor="foo", mode="unknown_option")


class EarlyStoppingModel(BoringModel):
    def __init__(self, expected_end_epoch: int, early_stop_on_train: bool):
        super().__init__()
        self.expected_end_epoch = expected_end_epoch
        self.early_stop_on_train = early_stop_on_train

    def _epoch_end(self) -> None:
        losses = [8, 4, 2, 3, 4, 5, 8, 10]
        self.log("abc", torch.tensor(losses[self.current_epoch]))
        self.log("cba", torch.tensor(0))

    def on_train_epoch_end(self):
        if self.early_stop_on_train:
            self._epoch_end()

    def on_validation_epoch_end(self):
        if not self.early_stop_on_train:
            self._epoch_end()

    def on_train_end(self) -> None:
        assert self.trainer.current_epoch - 1 == self.expected_end_epoch, "Early Stopping Failed"


_ES_CHECK = {"check_on_train_epoch_end": True}
_ES_CHECK_P3 = {"patience": 3, "check_on_train_epoch_end": True}


@pytest.mark.parametrize(
    ("callback_args", "expected_stop_epoch", "check_on_train_epoch_end"),
    [
        ([("abc", {}), ("cba", {"patience": 3})], 3, False),
        ([("cba", {"patience": 3}), ("abc", {})], 3, False),
        ([("abc", _ES_CHECK), ("cba", _ES_CHECK_P3)], 3, True),
        ([("cba", _ES_CHECK_P3), ("abc", _ES_CHECK)], 3, True),
    ],
)
@pytest.mark.parametrize("cls", CLASSES)
def test_multiple_early_stopping_callbacks(
    tmp_path, cls, callback_args, expected_stop_epoch, check_on_train_epoch_end
):
    """When using multiple early stopping callbacks we stop if any signals we should stop."""
    model = EarlyStoppingModel(expected_stop_epoch, check_on_train_epoch_end)
    trainer = Trainer(
        default_root_dir=tmp_path,
        callbacks=[cls(monitor, **kw) for monitor, kw in callback_args],
        limit_train_batches=0.1,
        limit_val_batches=0.1,
        max_epochs=20,
        accelerator="cpu",
        devices=1,
        **QUIET,
    )
    trainer.fit(model)


@pytest.mark.parametrize(
    "case",
    {
        "val_check_interval": {"val_check_interval": 0.3, "limit_train_batches": 10, "max_epochs": 10},
        "check_val_every_n_epoch": {"check_val_every_n_epoch": 2, "max_epochs": 5},
    }.items(),
)
@pytest.mark.parametrize("cls", CLASSES)
def test_check_on_train_epoch_end_smart_handling(tmp_path, cls, case):
    class Model(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("foo", 1)
            return super().validation_step(batch, batch_idx)

    case, kwargs = case
    trainer = Trainer(
        default_root_dir=tmp_path, limit_val_batches=1, callbacks=cls(monitor="foo"), **QUIET, **kwargs
    )
    side_effect = [(False, "A"), (True, "B")]
    # Lightning patches its class path; ours overrides the method, so patch the class under test
    with mock.patch.object(cls, "_evaluate_stopping_criteria", side_effect=side_effect) as es_mock:
        trainer.fit(Model())
    assert es_mock.call_count == len(side_effect)
    if case == "val_check_interval":
        assert trainer.global_step == len(side_effect) * int(
            trainer.limit_train_batches * trainer.val_check_interval
        )
    else:
        assert trainer.current_epoch == len(side_effect) * trainer.check_val_every_n_epoch


@pytest.mark.parametrize("cls", CLASSES)
def test_early_stopping_squeezes(cls):
    es = cls(monitor="foo")
    trainer = Trainer(**QUIET)
    trainer.callback_metrics["foo"] = torch.tensor([[[0]]])
    with mock.patch.object(cls, "_evaluate_stopping_criteria", return_value=(False, "")) as es_mock:
        es._run_early_stopping_check(trainer)
    es_mock.assert_called_once_with(torch.tensor(0))


@pytest.mark.parametrize(
    ("log_rank_zero_only", "world_size", "global_rank", "expected_log"),
    [
        (False, 1, 0, "bar"),
        (False, 2, 0, "[rank: 0] bar"),
        (False, 2, 1, "[rank: 1] bar"),
        (True, 1, 0, "bar"),
        (True, 2, 0, "[rank: 0] bar"),
        (True, 2, 1, None),
    ],
)
@pytest.mark.parametrize("cls", CLASSES)
def test_early_stopping_log_info(cls, log_rank_zero_only, world_size, global_rank, expected_log):
    trainer = Mock(global_rank=global_rank, world_size=world_size)
    with mock.patch("lightning.pytorch.callbacks.early_stopping.log.info") as log_mock:
        cls._log_info(trainer, "bar", log_rank_zero_only)
    if expected_log:
        log_mock.assert_called_once_with(expected_log)
    else:
        log_mock.assert_not_called()


def _scripted(losses, default):
    class Model(BoringModel):
        def on_validation_epoch_end(self):
            self.log("val_loss", losses[self.current_epoch] if self.current_epoch < len(losses) else default)

    return Model


@pytest.mark.parametrize(
    ("model_cls", "es_kwargs", "max_epochs", "expected_reason", "substr", "should_stop"),
    [
        (
            _scripted([10.0], 10.0),
            {"patience": 2, "verbose": True},
            10,
            EarlyStoppingReason.PATIENCE_EXHAUSTED,
            "did not improve",
            True,
        ),
        (
            _scripted([5.0, 3.0, 1.0, 0.5], 0.1),
            {"stopping_threshold": 0.6, "mode": "min", "verbose": True},
            10,
            EarlyStoppingReason.STOPPING_THRESHOLD,
            "Stopping threshold reached",
            True,
        ),
        (
            _scripted([1.0, 2.0, 5.0, 10.0], 15.0),
            {"divergence_threshold": 8.0, "mode": "min", "verbose": True},
            10,
            EarlyStoppingReason.DIVERGENCE_THRESHOLD,
            "Divergence threshold reached",
            True,
        ),
        (
            _scripted([1.0, 0.5, float("nan")], float("nan")),
            {"check_finite": True, "verbose": True},
            10,
            EarlyStoppingReason.NON_FINITE_METRIC,
            "is not finite",
            True,
        ),
        (
            _scripted([5.0, 4.0, 3.0, 2.0, 1.0], 0.1),
            {"patience": 3, "verbose": True},
            3,
            EarlyStoppingReason.NOT_STOPPED,
            None,
            False,
        ),
    ],
    ids=["patience", "stopping_threshold", "divergence_threshold", "non_finite", "not_stopped"],
)
def test_early_stopping_reasons(
    tmp_path, model_cls, es_kwargs, max_epochs, expected_reason, substr, should_stop
):
    def run(cls):
        es = cls(monitor="val_loss", **es_kwargs)
        trainer = Trainer(
            default_root_dir=tmp_path,
            callbacks=[es],
            max_epochs=max_epochs,
            limit_train_batches=2,
            limit_val_batches=2,
            **QUIET,
        )
        trainer.fit(model_cls())
        if cls is EarlyStopping or LIGHTNING_HAS_STOPPING_REASON:
            assert es.stopping_reason == expected_reason
            if substr is not None:
                assert substr in es.stopping_reason_message
            else:
                assert es.stopping_reason_message is None
        assert (es.stopped_epoch > 0) is should_stop
        return es

    assert_same_outcome(*both(run))


@pytest.mark.parametrize("cls", REASON_CLASSES)
def test_early_stopping_reason_state_persistence(cls):
    es = cls(monitor="val_loss", patience=3)
    es.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
    es.stopping_reason_message = "Test message"
    new = cls(monitor="val_loss", patience=3)
    new.load_state_dict(es.state_dict())
    assert new.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert new.stopping_reason_message == "Test message"


@pytest.mark.parametrize("cls", REASON_CLASSES)
def test_early_stopping_old_state_dict_backward_compatible(cls):
    old = {"wait_count": 2, "stopped_epoch": 5, "best_score": torch.tensor(0.5), "patience": 3}
    es = cls(monitor="val_loss", patience=3)
    es.load_state_dict(copy.deepcopy(old))
    assert es.stopping_reason == EarlyStoppingReason.NOT_STOPPED
    assert es.stopping_reason_message is None
    assert es.wait_count == 2 and es.stopped_epoch == 5 and float(es.best_score) == 0.5


def test_state_dict_keys_are_a_superset_of_lightnings():
    lightning_state = LightningEarlyStopping(monitor="val_loss").state_dict()
    our_state = EarlyStopping(monitor="val_loss").state_dict()
    assert set(lightning_state) <= set(our_state)
    assert all(
        our_state[k] == lightning_state[k] if not torch.is_tensor(lightning_state[k]) else True
        for k in lightning_state
    )
