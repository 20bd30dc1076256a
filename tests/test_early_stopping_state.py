"""EarlyStopping's state across fits (issue 14): validated loads, reused callbacks, SWA, reasons, test().

* A malformed checkpoint state fails at load, before any training step, with an error that names
  the callback and the field; this holds for every field of EarlyStopping's state and of the
  GL, PQ and UP criteria (the catalogue below), and for best weights that do not fit the model.
* A callback reused for another ``fit`` starts afresh: state carries over only through ``ckpt_path``.
* With ``StochasticWeightAveraging`` the final weights do not depend on the callback order, and
  the "restored the weights of epoch N" log line is true.
* Stopping reasons are stored unambiguously (names, not integers that Lightning may reuse).
* ``trainer.test(ckpt_path="best")`` evaluates ModelCheckpoint's file, ``trainer.test(model)`` the
  restored best weights (docs/early_stopping.md says so; tests/test_docs.py runs that page).

Everything is measured from outside: weights, a training-step counter, files, log text.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable
from enum import Enum
from typing import Any
from unittest import mock

import pytest
import torch
from helpers import SyntheticDataModule, TinyMLP, max_abs_diff, trainer_kwargs, weights_of
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint, StochasticWeightAveraging
from test_early_stopping import Scripted, assert_restored, fit

import lightning_regkit.callbacks.early_stopping as es_module
from lightning_regkit.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason, RegkitStoppingReason

OWNER = r"EarlyStopping\(monitor='val_loss'\): "


class Counted(Scripted):
    """Scripted metric values plus a count of the training steps that ran."""

    def __init__(self, values, **kwargs):
        super().__init__(values, **kwargs)
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return super().training_step(batch, batch_idx)


# ----------------------------------------------------------------------------- item 3: validated loads
VALUES = [1.0, 0.8, 0.7, 0.75, 0.76, 0.77, 0.78, 0.79]
TRAIN = [1.0, 0.9, 0.8, 0.79, 0.78, 0.77, 0.76, 0.75]
ES_KWARGS: dict[str, dict[str, Any]] = {
    "patience": {"patience": 5},
    "GL": {"criterion": "GL", "alpha": 50.0},
    "PQ": {"criterion": "PQ", "alpha": 100.0, "strip": 2, "train_monitor": "train_err"},
    "UP": {"criterion": "UP", "s": 3, "strip": 1},
}


def make_es(criterion: str) -> EarlyStopping:
    return EarlyStopping("val_loss", restore_best_weights=True, **ES_KWARGS[criterion])


def make_model(criterion: str, **kwargs: Any) -> Counted:
    return Counted(VALUES, train_values=TRAIN if criterion == "PQ" else None, **kwargs)


@pytest.fixture(scope="module")
def base_checkpoints(tmp_path_factory) -> dict[str, Any]:
    """One real checkpoint per criterion, written after 4 epochs (best epoch 2, best weights inside)."""
    paths = {}
    for criterion in ES_KWARGS:
        root = tmp_path_factory.mktemp(f"base_{criterion}")
        last = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)
        es = make_es(criterion)
        fit(
            root,
            VALUES,
            es,
            max_epochs=4,
            module=make_model(criterion),
            callbacks=[last],
            enable_checkpointing=True,
        )
        assert es.best_epoch == 2 and es.stopped_epoch == 0
        paths[criterion] = root / "last.ckpt"
    return paths


def put(path: str, value: Any) -> Callable[[dict], dict]:
    """Set ``state[a][b]...`` (``path`` "a.b"; ``value`` may be a function of the old value)."""

    def mutate(state: dict) -> dict:
        *parents, leaf = path.split(".")
        target = state
        for key in parents:
            target = target[key]
        target[leaf] = value(target.get(leaf)) if callable(value) else value
        return state

    mutate.__name__ = f"{path}={value.__name__ if callable(value) else value!r}"
    return mutate


def drop(path: str) -> Callable[[dict], dict]:
    def mutate(state: dict) -> dict:
        *parents, leaf = path.split(".")
        target = state
        for key in parents:
            target = target[key]
        del target[leaf]
        return state

    mutate.__name__ = f"del {path}"
    return mutate


def replace_state(value: Any) -> Callable[[dict], Any]:
    def mutate(state: dict) -> Any:
        return value

    mutate.__name__ = f"state={value!r}"
    return mutate


def weight(key: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], dict]:
    def mutate(state: dict) -> dict:
        state["best_weights"][key] = change(state["best_weights"][key])
        return state

    mutate.__name__ = f"best_weights[{key}]: {change.__name__}"
    return mutate


def without_weight(key: str) -> Callable[[dict], dict]:
    def mutate(state: dict) -> dict:
        del state["best_weights"][key]
        return state

    mutate.__name__ = f"del best_weights[{key}]"
    return mutate


def extra_weight(state: dict) -> dict:
    state["best_weights"]["net.extra.weight"] = torch.zeros(2)
    return state


def wider(t):
    return torch.cat([t, t], dim=0)


def as_double(t):
    return t.double()


def as_list(t):
    return t.tolist()


def with_nan(values):
    return [*values[:-1], math.nan]


def longer(values):
    return [0.5] * 9


T, V = TypeError, ValueError
F_CRIT = "'criterion_state'"

# (criterion of the run, corruption, error type, the field the message must name)
CATALOGUE = [
    # the state itself
    ("patience", replace_state([1, 2]), T, "state"),
    # wait_count: int >= 0, required
    ("patience", drop("wait_count"), V, "'wait_count'"),
    ("patience", put("wait_count", "2"), T, "'wait_count'"),
    ("patience", put("wait_count", 1.5), T, "'wait_count'"),
    ("patience", put("wait_count", True), T, "'wait_count'"),
    ("patience", put("wait_count", -3), V, "'wait_count'"),
    # stopped_epoch: int >= 0, required
    ("patience", drop("stopped_epoch"), V, "'stopped_epoch'"),
    ("patience", put("stopped_epoch", "0"), T, "'stopped_epoch'"),
    ("patience", put("stopped_epoch", -1), V, "'stopped_epoch'"),
    # best_score: one-element float tensor (or number), not NaN, required
    ("patience", drop("best_score"), V, "'best_score'"),
    ("patience", put("best_score", "0.7"), T, "'best_score'"),
    ("patience", put("best_score", torch.tensor([0.7, 0.8])), V, "'best_score'"),
    ("patience", put("best_score", torch.tensor(1)), T, "'best_score'"),
    ("patience", put("best_score", torch.tensor(math.nan)), V, "'best_score'"),
    ("patience", put("best_score", math.inf), V, "'best_score'"),  # best_epoch 2 needs a finite best
    # patience (written for Lightning's class, not read back): int >= 0
    ("patience", put("patience", "3"), T, "'patience'"),
    ("patience", put("patience", -1), V, "'patience'"),
    # stopping_reason / stopping_reason_name: a known reason, both agreeing
    ("patience", put("stopping_reason", 99), V, "'stopping_reason'"),
    ("patience", put("stopping_reason", "NOPE"), V, "'stopping_reason'"),
    ("patience", put("stopping_reason", 2.5), T, "'stopping_reason'"),
    ("patience", put("stopping_reason_name", "Bogus.REASON"), V, "'stopping_reason_name'"),
    ("patience", put("stopping_reason_name", 3), T, "'stopping_reason_name'"),
    (
        "patience",
        put("stopping_reason_name", "EarlyStoppingReason.PATIENCE_EXHAUSTED"),
        V,
        "'stopping_reason",
    ),
    # stopping_reason_message: str or None
    ("patience", put("stopping_reason_message", 42), T, "'stopping_reason_message'"),
    # best_epoch: int >= -1
    ("patience", put("best_epoch", "2"), T, "'best_epoch'"),
    ("patience", put("best_epoch", -5), V, "'best_epoch'"),
    ("patience", put("best_epoch", -1), V, "'best_epoch'"),  # -1 (no best) but best weights are present
    # best_weights: None or dict str -> Tensor matching the model (keys, shapes, dtypes)
    ("patience", put("best_weights", [1, 2]), T, "'best_weights'"),
    ("patience", put("best_weights", {}), V, "'best_weights'"),
    ("patience", weight("net.fc1.bias", as_list), T, r"'best_weights'.*'net\.fc1\.bias'"),
    ("patience", weight("net.fc1.weight", wider), V, r"'best_weights'.*'net\.fc1\.weight'.*shape"),
    ("patience", weight("net.fc2.bias", as_double), V, r"'best_weights'.*'net\.fc2\.bias'.*dtype"),
    ("patience", without_weight("net.norm.weight"), V, r"'best_weights'.*'net\.norm\.weight'"),
    ("patience", extra_weight, V, r"'best_weights'.*'net\.extra\.weight'"),
    # criterion_state: present exactly when a criterion is used, of that criterion, a dict
    ("patience", put("criterion_state", {"t": 0}), V, F_CRIT),
    ("GL", drop("criterion_state"), V, F_CRIT),
    ("GL", put("criterion_state", [0]), T, F_CRIT),
    ("GL", put("criterion_state.name", "UP"), V, F_CRIT + ".*'name'"),
    # GL: t int >= 0; e_opt >= 0 (<= e_va); e_va finite >= 0 once t > 0; gl >= 0
    ("GL", drop("criterion_state.t"), V, F_CRIT + ".*'t'"),
    ("GL", put("criterion_state.t", "3"), T, F_CRIT + ".*'t'"),
    ("GL", put("criterion_state.t", -1), V, F_CRIT + ".*'t'"),
    ("GL", put("criterion_state.e_opt", -0.5), V, F_CRIT + ".*'e_opt'"),
    ("GL", put("criterion_state.e_opt", 5.0), V, F_CRIT + ".*'e_opt'"),  # above the last error
    ("GL", put("criterion_state.e_va", "x"), T, F_CRIT + ".*'e_va'"),
    ("GL", put("criterion_state.e_va", None), V, F_CRIT + ".*'e_va'"),
    ("GL", put("criterion_state.gl", math.nan), V, F_CRIT + ".*'gl'"),
    ("GL", drop("criterion_state.gl"), V, F_CRIT + ".*'gl'"),
    ("GL", put("criterion_state.gl", "g"), T, F_CRIT + ".*'gl'"),
    ("GL", put("criterion_state.gl", -1.0), V, F_CRIT + ".*'gl'"),
    ("GL", drop("criterion_state.e_opt"), V, F_CRIT + ".*'e_opt'"),
    ("GL", put("criterion_state.e_opt", "x"), T, F_CRIT + ".*'e_opt'"),
    ("GL", drop("criterion_state.e_va"), V, F_CRIT + ".*'e_va'"),
    ("GL", put("criterion_state.e_va", -1.0), V, F_CRIT + ".*'e_va'"),
    # PQ: as GL plus the training errors of the current strip, progress and quotient
    ("PQ", drop("criterion_state.train_strip"), V, F_CRIT + ".*'train_strip'"),
    ("PQ", put("criterion_state.train_strip", "abc"), T, F_CRIT + ".*'train_strip'"),
    ("PQ", put("criterion_state.train_strip", with_nan), V, F_CRIT + ".*'train_strip'"),
    ("PQ", put("criterion_state.train_strip", longer), V, F_CRIT + ".*'train_strip'"),
    ("PQ", put("criterion_state.progress", -1.0), V, F_CRIT + ".*'progress'"),
    ("PQ", put("criterion_state.quotient", "q"), T, F_CRIT + ".*'quotient'"),
    ("PQ", put("criterion_state.quotient", None), V, F_CRIT + ".*'quotient'"),  # progress without quotient
    ("PQ", put("criterion_state.t", -2), V, F_CRIT + ".*'t'"),
    ("PQ", drop("criterion_state.t"), V, F_CRIT + ".*'t'"),
    ("PQ", put("criterion_state.t", 4.0), T, F_CRIT + ".*'t'"),
    ("PQ", put("criterion_state.e_va", math.inf), V, F_CRIT + ".*'e_va'"),
    ("PQ", put("criterion_state.progress", "p"), T, F_CRIT + ".*'progress'"),
    ("PQ", drop("criterion_state.progress"), V, F_CRIT + ".*'progress'"),
    ("PQ", drop("criterion_state.quotient"), V, F_CRIT + ".*'quotient'"),
    ("PQ", put("criterion_state.quotient", -0.5), V, F_CRIT + ".*'quotient'"),
    # UP: t; previous and e_va (the last strip end's error); rises int in [0, t]
    ("UP", drop("criterion_state.rises"), V, F_CRIT + ".*'rises'"),
    ("UP", put("criterion_state.rises", 1.5), T, F_CRIT + ".*'rises'"),
    ("UP", put("criterion_state.rises", -1), V, F_CRIT + ".*'rises'"),
    ("UP", put("criterion_state.rises", 99), V, F_CRIT + ".*'rises'"),
    ("UP", put("criterion_state.previous", "x"), T, F_CRIT + ".*'previous'"),
    ("UP", put("criterion_state.previous", math.inf), V, F_CRIT + ".*'previous'"),
    ("UP", put("criterion_state.previous", None), V, F_CRIT + ".*'previous'"),  # e_va is set
    ("UP", drop("criterion_state.previous"), V, F_CRIT + ".*'previous'"),
    ("UP", drop("criterion_state.t"), V, F_CRIT + ".*'t'"),
    ("UP", put("criterion_state.t", "4"), T, F_CRIT + ".*'t'"),
    ("UP", put("criterion_state.t", -1), V, F_CRIT + ".*'t'"),
    ("UP", drop("criterion_state.e_va"), V, F_CRIT + ".*'e_va'"),
    ("UP", put("criterion_state.e_va", [0.7]), T, F_CRIT + ".*'e_va'"),
    ("UP", put("criterion_state.e_va", math.nan), V, F_CRIT + ".*'e_va'"),
]


@pytest.mark.parametrize(
    ("criterion", "mutate", "error", "field"),
    CATALOGUE,
    ids=[f"{c}-{m.__name__}" for c, m, _, _ in CATALOGUE],
)
def test_corrupted_state_fails_at_load_before_training(
    tmp_path, base_checkpoints, criterion, mutate, error, field
):
    ckpt = torch.load(base_checkpoints[criterion], weights_only=True)
    es = make_es(criterion)
    ckpt["callbacks"][es.state_key] = mutate(copy.deepcopy(ckpt["callbacks"][es.state_key]))
    torch.save(ckpt, tmp_path / "bad.ckpt")
    model = make_model(criterion)
    with pytest.raises(error, match=OWNER + r"checkpoint (field )?" + field):
        fit(tmp_path, VALUES, es, max_epochs=8, module=model, ckpt_path=tmp_path / "bad.ckpt")
    assert model.steps == 0  # no training step ran
    assert max_abs_diff(weights_of(model), ckpt["state_dict"]) == 0.0  # only Lightning's own restore wrote


@pytest.mark.parametrize("criterion", list(ES_KWARGS))
def test_untouched_state_loads_and_resumes(tmp_path, base_checkpoints, criterion):
    """The catalogue's control: the same checkpoint, unmodified, resumes and trains."""
    es, model = make_es(criterion), make_model(criterion)
    fit(tmp_path, VALUES, es, max_epochs=5, module=model, ckpt_path=base_checkpoints[criterion])
    assert model.first_epoch == 4 and model.steps > 0
    assert es.best_epoch == 2


@pytest.mark.parametrize(
    ("net", "match"),
    [
        (TinyMLP(hidden=32), r"'net\.fc1\.weight' has shape \(16, 8\) in the checkpoint and \(32, 8\)"),
        (torch.nn.Sequential(TinyMLP()), r"in the checkpoint but not in the model: \[.*'net\.fc1\.weight'"),
    ],
    ids=["shapes", "keys"],
)
def test_best_weights_of_another_model_fail_before_training(tmp_path, base_checkpoints, net, match):
    """Best weights loaded by hand (no ckpt_path) into a callback used on another model."""
    state = torch.load(base_checkpoints["patience"], weights_only=True)["callbacks"][
        make_es("patience").state_key
    ]
    state["best_score"] = torch.tensor(
        -1.0
    )  # nothing will beat it: the old code trained to the end, then crashed
    es = make_es("patience")
    es.load_state_dict(state)
    model = make_model("patience")
    model.net = net
    before = weights_of(model)
    with pytest.raises(
        ValueError, match=OWNER + r"checkpoint field 'best_weights' does not match the model.*" + match
    ):
        fit(tmp_path, VALUES, es, max_epochs=8, module=model)
    assert model.steps == 0
    assert max_abs_diff(weights_of(model), before) == 0.0


@pytest.mark.parametrize("criterion", list(ES_KWARGS))
def test_states_without_later_keys_still_load(base_checkpoints, criterion):
    """Keys added with the validation (reason name, criterion name) are optional: older states load."""
    es = make_es(criterion)
    state = torch.load(base_checkpoints[criterion], weights_only=True)["callbacks"][es.state_key]
    del state["stopping_reason_name"]
    state.get("criterion_state", {}).pop("name", None)
    es.load_state_dict(state)
    assert (es.best_epoch, es.wait_count, es.stopping_reason) == (2, 1, EarlyStoppingReason.NOT_STOPPED)


def test_load_is_atomic(base_checkpoints):
    """A rejected state leaves the callback as it was (nothing half-loaded)."""
    state = torch.load(base_checkpoints["GL"], weights_only=True)["callbacks"][make_es("GL").state_key]
    es = make_es("GL")
    before = copy.deepcopy(es.state_dict())
    bad = copy.deepcopy(state)
    bad["criterion_state"]["rises"] = 1
    bad["criterion_state"]["t"] = -1
    with pytest.raises(ValueError, match=r"'t'"):
        es.load_state_dict(bad)
    assert es.state_dict() == before


# ----------------------------------------------------------------------------- item 4: reused callbacks
def test_reused_callback_on_another_model_starts_fresh(tmp_path, caplog):
    es = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    first = Scripted([5, 4, 0.5, 3, 3, 3])  # best 0.5 at epoch 2
    fit(tmp_path, first.values, es, module=first)
    assert es.best_epoch == 2 and es.stopped_epoch == 4

    values = [5, 4, 3, 3.5, 3.6, 3.7, 3.8]  # never beats 0.5: a carried-over best would stop it at once
    seed_everything(1, verbose=False)
    second = Scripted(values)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        trainer, _ = fit(tmp_path, values, es, module=second)
    second_fit_log = caplog.text
    seed_everything(1, verbose=False)
    control = Scripted(values)
    fresh = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    fit(tmp_path, values, fresh, module=control)

    assert max_abs_diff(weights_of(second), first.snapshots[2]) > 0.0  # not the first model's weights
    assert_restored(second, 2)  # its own best epoch, bit for bit
    assert max_abs_diff(weights_of(second), weights_of(control)) == 0.0  # exactly as a fresh callback
    assert (es.stopped_epoch, es.best_epoch, es.wait_count) == (fresh.stopped_epoch, fresh.best_epoch, 2)
    assert trainer.current_epoch == 5
    assert second_fit_log.count("restored the weights of epoch 2 (val_loss = 3).") == 1
    assert "val_loss = 0.5" not in second_fit_log


def test_reused_callback_same_model_second_trainer_starts_fresh(tmp_path):
    es = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    model = Scripted([5, 4, 3, 3.5, 3.6, 3.7])
    fit(tmp_path, model.values, es, module=model)
    first_best = dict(model.snapshots[2])
    assert_restored(model, 2)

    trainer, _ = fit(tmp_path, model.values, es, module=model)  # a new Trainer, same model and callback
    assert trainer.current_epoch == 5  # 3 is the best again (not "equal to the old best, no improvement")
    assert max_abs_diff(weights_of(model), first_best) > 0.0
    assert_restored(model, 2)  # the second fit's epoch 2 (snapshots were overwritten by it)


def test_reused_callback_decides_check_hook_per_fit(tmp_path):
    """The first fit validates every epoch, the second every 2: the check moves to validation end."""
    es = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    fit(tmp_path, [5, 4, 3], es, module=Scripted([5, 4, 3]))
    values = [9, 5, 9, 4, 9, 4.5, 9, 4.6, 9, 4.7]  # validated at odd epochs: best 4 at epoch 3
    reused, fresh = Scripted(values), Scripted(values)
    fit(tmp_path, values, es, module=reused, check_val_every_n_epoch=2)
    control = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    fit(tmp_path, values, control, module=fresh, check_val_every_n_epoch=2)
    assert es.stopped_epoch == control.stopped_epoch == 7
    assert_restored(reused, 3)


def test_state_loaded_by_hand_before_fit_is_used(tmp_path):
    """An explicit load_state_dict before fit is kept (only what a previous fit left is dropped)."""
    values = [5, 4, 3, 3.5, 3.6, 3.7]
    es = EarlyStopping("val_loss", patience=3)
    es.load_state_dict(
        {"wait_count": 1, "stopped_epoch": 0, "best_score": torch.tensor(1.0), "best_epoch": 0}
    )
    fit(tmp_path, values, es, module=Scripted(values))
    assert es.stopped_epoch == 1  # nothing beats 1.0: wait 2 at epoch 0, 3 at epoch 1 (fresh: stop at 5)


# ----------------------------------------------------------------------------- item 5: SWA
SWA_VALUES = [3.0, 1.0, 2.0, 2.5, 2.6, 2.7]  # best at epoch 1; SWA averages epochs 2..5


def swa_run(tmp_path, order, restore=True):
    seed_everything(7, verbose=False)
    model = Scripted(SWA_VALUES)
    es = EarlyStopping("val_loss", patience=10, restore_best_weights=restore)
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)
    callbacks = [es, swa] if order == "es_first" else [swa, es]
    trainer = Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=6, num_sanity_val_steps=0))
    trainer.fit(model, datamodule=SyntheticDataModule(n_train=32, batch_size=16))
    return model, es


def test_swa_and_restore_best_weights_are_order_independent_and_logged_truly(tmp_path, caplog):
    results = {}
    for order in ("es_first", "swa_first"):
        caplog.clear()
        with caplog.at_level(logging.INFO), pytest.warns(UserWarning, match="StochasticWeightAveraging"):
            model, es = swa_run(tmp_path / order, order)
        (epoch,) = map(int, re.findall(r"restored the weights of epoch (\d+)", caplog.text))
        assert epoch == es.best_epoch == 1
        assert_restored(model, epoch)  # the log line is true: these are that epoch's weights
        results[order] = weights_of(model)
    assert max_abs_diff(results["es_first"], results["swa_first"]) == 0.0

    # without the restore the run ends on SWA's average, which is not the best epoch's weights:
    # so the restore above really replaced something
    averaged, _ = swa_run(tmp_path / "plain", "es_first", restore=False)
    assert max_abs_diff(weights_of(averaged), averaged.snapshots[1]) > 0.0
    assert max_abs_diff(weights_of(averaged), averaged.snapshots[5]) > 0.0  # nor the last epoch's


# ----------------------------------------------------------------------------- item 7: stopping reasons
class FutureReason(Enum):
    """Lightning's reasons plus one a later Lightning might add with the next free value."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4
    SOMETHING_NEW = 5


def test_reasons_stay_unambiguous_when_lightning_adds_one():
    gl = EarlyStopping("val_loss", criterion="GL", alpha=1.0)
    gl.stopping_reason = RegkitStoppingReason.GENERALIZATION_LOSS
    gl.best_epoch, gl.best_score = 1, torch.tensor(0.5)
    new_gl_state = gl.state_dict()
    criterion_state = dict(new_gl_state["criterion_state"])
    old_gl_state = {  # written by the kit before reasons were stored by name
        "wait_count": 0,
        "stopped_epoch": 3,
        "best_score": torch.tensor(0.5),
        "patience": 3,
        "stopping_reason": 5,
        "stopping_reason_message": "GL_1 ...",
        "best_epoch": 1,
        "criterion_state": criterion_state,
    }
    with mock.patch.object(es_module, "EarlyStoppingReason", FutureReason):
        for state in (old_gl_state, new_gl_state):
            fresh = EarlyStopping("val_loss", criterion="GL", alpha=1.0)
            fresh.load_state_dict(copy.deepcopy(state))
            assert fresh.stopping_reason is RegkitStoppingReason.GENERALIZATION_LOSS

        ours = EarlyStopping("val_loss")
        ours.stopping_reason = FutureReason.SOMETHING_NEW
        fresh = EarlyStopping("val_loss")
        fresh.load_state_dict(ours.state_dict())
        assert fresh.stopping_reason is FutureReason.SOMETHING_NEW

        lightning_written = {
            "wait_count": 0,
            "stopped_epoch": 2,
            "best_score": torch.tensor(0.5),
            "patience": 3,
        }
        fresh = EarlyStopping("val_loss")
        fresh.load_state_dict({**lightning_written, "stopping_reason": 5})
        assert fresh.stopping_reason is FutureReason.SOMETHING_NEW


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (5, RegkitStoppingReason.GENERALIZATION_LOSS),
        (6, RegkitStoppingReason.PROGRESS_QUOTIENT),
        (7, RegkitStoppingReason.UP_SUCCESSIVE_STRIPS),
        (3, EarlyStoppingReason.PATIENCE_EXHAUSTED),
    ],
)
def test_old_integer_reasons_still_load(value, reason):
    old = {"wait_count": 0, "stopped_epoch": 3, "best_score": torch.tensor(0.5), "stopping_reason": value}
    es = EarlyStopping("val_loss")
    es.load_state_dict({**old, "best_epoch": 1})  # "best_epoch": written by the kit
    assert es.stopping_reason is reason


def test_reasons_are_stored_as_names(tmp_path):
    es = EarlyStopping("val_loss", criterion="UP", s=2, strip=1)
    fit(tmp_path, [1.0, 0.8, 0.9, 0.95], es)
    assert es.stopping_reason is RegkitStoppingReason.UP_SUCCESSIVE_STRIPS
    torch.save(es.state_dict(), tmp_path / "es.pt")
    state = torch.load(tmp_path / "es.pt", weights_only=True)
    assert state["stopping_reason_name"] == "RegkitStoppingReason.UP_SUCCESSIVE_STRIPS"
    assert not isinstance(state["stopping_reason"], int)  # no integer Lightning could reuse
    assert {r.value for r in RegkitStoppingReason}.isdisjoint({r.value for r in EarlyStoppingReason})


# ----------------------------------------------------------------------------- item 8: test(ckpt_path="best")
class WeightsAtTest(Scripted):
    def on_test_start(self):
        self.tested = weights_of(self)


@pytest.mark.parametrize("monitor", [None, "val_loss"])
def test_test_best_checkpoint_is_not_the_restored_weights(tmp_path, monitor):
    """docs/early_stopping.md: ``trainer.test(model)`` tests the restored weights; ``ckpt_path="best"``
    loads ModelCheckpoint's best file into the model (by its own monitor: with none, the last epoch)."""
    values = [5, 4, 3, 3.5, 3.6, 3.7, 3.8]
    es = EarlyStopping("val_loss", patience=10, restore_best_weights=True, start_from_epoch=3)  # best at 3
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=monitor)
    trainer, model = fit(
        tmp_path, values, es, module=WeightsAtTest(values), callbacks=[ckpt], enable_checkpointing=True
    )
    dm = SyntheticDataModule(n_train=32, batch_size=16)
    assert es.best_epoch == 3

    trainer.test(model, datamodule=dm, verbose=False)
    assert max_abs_diff(model.tested, model.snapshots[3]) == 0.0  # the restored best weights

    trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)
    file_epoch = 2 if monitor else 6  # ModelCheckpoint's own best: val_loss 3 at epoch 2, or the last
    assert max_abs_diff(model.tested, model.snapshots[file_epoch]) == 0.0
    assert max_abs_diff(weights_of(model), model.snapshots[file_epoch]) == 0.0  # the restore is gone
