"""Checkpoints: every callback's state round-trips, loads with ``weights_only=True``, and
checkpoints cross the kit/plain-Lightning boundary in both directions with a clear warning.

What a callback keeps (progress only, plain data):

- ``SeedEverything``: seed record, every rank's RNG states, the train loaders' generators, and
  whether the checkpoint was written at an epoch end.
- ``EarlyStopping``: wait count, best score, best epoch, stop epoch and reason, the criterion's
  history, the best weights.
- ``DropoutScheduler``: last ``t``, last value, the modules' initial p (``base``).
- ``WeightPenalty`` / ``RegularizedModule``'s hooks: nothing (their only progress is
  ``trainer.global_step``/``current_epoch``, which Lightning restores), so no entry is written.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import (
    ClassifierSteps,
    LitClassifier,
    SyntheticDataModule,
    TinyMLP,
    assert_tree_equal,
    trainer_kwargs,
)
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping

from lightning_regkit.callbacks.dropout import DropoutScheduler
from lightning_regkit.callbacks.early_stopping import EarlyStopping
from lightning_regkit.callbacks.seed import SeedEverything
from lightning_regkit.module import RegularizedModule
from lightning_regkit.rng import capture_rng_state, restore_rng_state
from lightning_regkit.schedules import Linear


class KitModel(ClassifierSteps, RegularizedModule):
    def __init__(self) -> None:
        super().__init__(l1=1e-4, l2=Linear(1e-2, 1e-3))
        self.net = TinyMLP(p=0.2)
        self.lr, self.optimizer_name = 0.5, "sgd"


class StartEpoch(Callback):
    """Records, when training (re)starts, the epoch and the state of the first EarlyStopping found."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch = trainer.current_epoch
        es = next(cb for cb in trainer.callbacks if isinstance(cb, LightningEarlyStopping))
        self.best_at_start = float(es.best_score)
        self.wait_at_start = es.wait_count


def kit_callbacks() -> list[Callback]:
    return [
        SeedEverything(3),
        EarlyStopping("val_loss", patience=5, restore_best_weights=True),
        EarlyStopping("val_loss", criterion="UP", strip=1, s=3),
        DropoutScheduler(Linear(0.3, 0.1)),
        EarlyStopping("val_loss", criterion="GL", alpha=1e6),  # never stops: its history grows
        EarlyStopping("val_loss", criterion="PQ", alpha=1e6, strip=1, train_monitor="train_loss_epoch"),
    ]


def fit(
    root: Path, model: pl.LightningModule, callbacks: list[Callback], epochs: int, **kw: Any
) -> pl.Trainer:
    ckpt = ModelCheckpoint(dirpath=root / "ckpts", save_last=True)
    trainer = pl.Trainer(
        **trainer_kwargs(root, max_epochs=epochs, enable_checkpointing=True, callbacks=[*callbacks, ckpt])
    )
    trainer.fit(model, datamodule=SyntheticDataModule(), **kw)
    return trainer


@pytest.fixture
def kit_checkpoint(tmp_path: Path) -> tuple[Path, list[Callback], pl.Trainer]:
    torch.manual_seed(0)
    callbacks = kit_callbacks()
    trainer = fit(tmp_path / "kit", KitModel(), callbacks, epochs=2)
    return tmp_path / "kit" / "ckpts" / "last.ckpt", callbacks, trainer


def test_kit_checkpoint_loads_with_weights_only(
    kit_checkpoint: tuple[Path, list[Callback], pl.Trainer],
) -> None:
    path, callbacks, _ = kit_checkpoint
    ckpt = torch.load(path, weights_only=True)
    for cb in callbacks:  # every kit callback wrote its own entry (two EarlyStopping coexist)
        assert cb.state_key in ckpt["callbacks"], (cb.state_key, list(ckpt["callbacks"]))
    # the penalty hooks keep no progress of their own (the schedule's time is global_step): no entry
    assert not [k for k in ckpt["callbacks"] if "Penalty" in str(k)], list(ckpt["callbacks"])
    es = ckpt["callbacks"][callbacks[1].state_key]
    assert set(es["best_weights"]) == set(ckpt["state_dict"])  # the best weights travel along


@pytest.mark.parametrize("index", [1, 2, 4, 5], ids=["patience_restore", "UP", "GL", "PQ"])
def test_early_stopping_state_round_trips(
    index: int, kit_checkpoint: tuple[Path, list[Callback], pl.Trainer]
) -> None:
    path, callbacks, _ = kit_checkpoint
    state = torch.load(path, weights_only=True)["callbacks"][callbacks[index].state_key]
    fresh = kit_callbacks()[index]
    fresh.load_state_dict(copy.deepcopy(state))
    assert_tree_equal(fresh.state_dict(), state)
    assert_tree_equal(state, callbacks[index].state_dict())  # and it is the trained callback's state


def test_seed_state_round_trips(kit_checkpoint: tuple[Path, list[Callback], pl.Trainer]) -> None:
    path, callbacks, _ = kit_checkpoint
    state = torch.load(path, weights_only=True)["callbacks"][callbacks[0].state_key]
    assert state["seed"] == 3 and state["epoch_end"] is True and len(state["rng"]) == 1
    fresh = SeedEverything(None)
    fresh.load_state_dict(copy.deepcopy(state))
    assert fresh.seed == 3
    assert_tree_equal(fresh._pending, state)  # everything is held for on_train_start, unchanged
    assert_tree_equal({k: state[k] for k in fresh.seed_record()}, fresh.seed_record())
    restore_rng_state(state["rng"][0])
    assert_tree_equal(capture_rng_state(), state["rng"][0])


def test_dropout_state_round_trips(kit_checkpoint: tuple[Path, list[Callback], pl.Trainer]) -> None:
    path, callbacks, trainer = kit_checkpoint
    state = torch.load(path, weights_only=True)["callbacks"][callbacks[3].state_key]
    assert state["base"] == {"net.drop": pytest.approx(0.2)} and state["t"] == 7
    assert state["value"] == pytest.approx(Linear(0.3, 0.1)(7, 8))
    # a resumed model whose p is no longer the initial one: the checkpoint's base wins and comes back
    model = KitModel()
    model.net.drop.p = 0.05
    fresh = DropoutScheduler(Linear(0.3, 0.1))
    fresh.load_state_dict(copy.deepcopy(state))
    assert_tree_equal(fresh.state_dict(), state)  # before fit: what was loaded, whole
    fresh.on_fit_start(trainer, model)
    fresh.teardown(trainer, model, "fit")
    assert model.net.drop.p == pytest.approx(0.2)


def test_plain_checkpoint_resumes_with_the_kit_and_warns(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = [LightningEarlyStopping("val_loss", patience=5)]
    fit(tmp_path / "plain", LitClassifier(TinyMLP(p=0.2), lr=0.5), plain, epochs=2)
    path = tmp_path / "plain" / "ckpts" / "last.ckpt"
    saved_best = float(torch.load(path, weights_only=True)["callbacks"][plain[0].state_key]["best_score"])

    callbacks = [*kit_callbacks(), StartEpoch()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(tmp_path / "kit", KitModel(), callbacks, epochs=4, ckpt_path=str(path))
    messages = "\n".join(str(w.message) for w in caught)
    assert "SeedEverything: the checkpoint holds no SeedEverything state" in messages
    assert "not bit-identical" in messages
    assert "written by Lightning's EarlyStopping" in messages and "no best weights" in messages
    # the UP EarlyStopping has another state_key: nothing of it is in the plain checkpoint
    assert (
        "holds no state for EarlyStopping{'monitor': 'val_loss', 'mode': 'min', 'criterion': 'UP'}"
        in messages
    )
    assert callbacks[-1].epoch == 2 and trainer.current_epoch == 4  # it really resumed
    # the plain run's best score carried over: the kit's EarlyStopping held it when training resumed
    assert callbacks[-1].best_at_start == saved_best


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_kit_checkpoint_resumes_without_the_kit_and_warns(
    kit_checkpoint: tuple[Path, list[Callback], pl.Trainer], tmp_path: Path
) -> None:
    path, callbacks, _ = kit_checkpoint
    es = LightningEarlyStopping("val_loss", patience=5)
    start = StartEpoch()
    with pytest.warns(UserWarning, match="Please add the following callbacks") as caught:
        fit(tmp_path / "plain", LitClassifier(TinyMLP(p=0.2)), [es, start], epochs=3, ckpt_path=str(path))
    missing = next(str(w.message) for w in caught if "Please add" in str(w.message))
    for cb in (callbacks[0], callbacks[2], callbacks[3]):  # Lightning names what is missing
        assert cb.state_key in missing
    assert start.epoch == 2
    # Lightning's own EarlyStopping reads the kit's state (same state_key, same fields)
    kit_es = callbacks[1]
    assert start.best_at_start == float(kit_es.best_score) and start.wait_at_start == kit_es.wait_count
    assert kit_es.wait_count > 0 or float(kit_es.best_score) != float("inf")  # not the defaults
