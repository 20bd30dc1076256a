"""The kit's objects in ``save_hyperparameters()`` load under ``weights_only=True`` (issue 14, item 7).

torch >= 2.6 loads with ``weights_only=True`` by default, and so do ``load_from_checkpoint`` and
``Trainer.fit(ckpt_path=...)``: a module whose hyperparameters hold a schedule or a penalty wrote
a checkpoint it could not read (``UnpicklingError: Unsupported global``). Importing the kit
registers its plain-data classes with ``torch.serialization.add_safe_globals``.
"""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
from helpers import LitClassifier, SyntheticDataModule, trainer_kwargs
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_regkit import L1, L2, MaxNorm, RegkitStoppingReason, schedules
from lightning_regkit.criteria import GL, PQ, UP
from lightning_regkit.penalties import Penalty

SCHEDULES = [
    schedules.Constant(0.3),
    schedules.Linear(1e-2, 1e-3),
    schedules.Cosine(0.5, 0.1),
    schedules.Exponential(0.5, gamma=0.9),
    schedules.Curriculum(p_final=0.5, gamma=0.01),
    schedules.Step(milestones=[0.5, 0.75], values=[0.3, 0.2, 0.0]),
    schedules.Step([3], [0.1, 0.0], unit="absolute"),
    schedules.Piecewise(points=[0.0, 0.5, 1.0], values=[0.0, 0.4, 0.1]),
    schedules.EarlyDropout(0.1, until=0.5, linear=True),
    schedules.LateDropout(0.4, start=0.5),
]
PENALTIES = [
    L1(1e-4),
    L1(0.05, proximal=True, include=["net.fc1.*"]),
    L2(schedules.Linear(1e-2, 1e-3), exclude=["*.bias"]),
    MaxNorm(0.5, include=["*.weight"]),
]


def weights_only_round_trip(obj):
    buffer = io.BytesIO()
    torch.save({"hp": obj}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["hp"]


def assert_same_schedule(a, b):
    assert type(a) is type(b) and repr(a) == repr(b)
    assert [a(t, 10) for t in range(12)] == [b(t, 10) for t in range(12)]


def assert_same_penalty(a, b):
    assert type(a) is type(b) and repr(a) == repr(b)
    assert_same_schedule(a.strength, b.strength)
    assert (a.include, a.exclude, a.adds_gradient, a.projects) == (
        b.include,
        b.exclude,
        b.adds_gradient,
        b.projects,
    )
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=g), torch.randn(4, generator=g)]
    assert torch.equal(a.value(params), b.value(params))
    pa, pb = [p.clone() for p in params], [p.clone() for p in params]
    a.project_(pa, lr=0.5, strength=a.strength_at(0, 10))
    b.project_(pb, lr=0.5, strength=b.strength_at(0, 10))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_schedules_load_weights_only(schedule):
    assert_same_schedule(weights_only_round_trip(schedule), schedule)


@pytest.mark.parametrize("penalty", PENALTIES, ids=repr)
def test_penalties_load_weights_only(penalty):
    assert_same_penalty(weights_only_round_trip(penalty), penalty)


def test_criteria_and_reasons_load_weights_only():
    gl, pq, up = GL(alpha=5.0), PQ(alpha=1.0, strip=2), UP(s=2, strip=1)
    for value in (1.0, 0.8, 0.9):
        gl.update(value), pq.update(value, e_tr=value), up.update(value)
    assert weights_only_round_trip([gl, pq, up]) == [gl, pq, up]
    assert (
        weights_only_round_trip(RegkitStoppingReason.GENERALIZATION_LOSS)
        is RegkitStoppingReason.GENERALIZATION_LOSS
    )


def _kit_enums():
    from lightning_regkit._compat import EarlyStoppingReason

    kit = [RegkitStoppingReason]
    if EarlyStoppingReason.__module__.startswith("lightning_regkit."):  # the kit's carry for Lightning < 2.6
        kit.append(EarlyStoppingReason)
    return [member for enum in kit for member in enum]


@pytest.mark.parametrize("member", _kit_enums(), ids=str)
def test_kit_enums_pickle_by_value_on_every_python(member):
    """Python 3.11.0-3.11.4 pickle an Enum member as ``getattr(cls, name)``, a global that a
    ``weights_only`` load refuses (Debian 12's Python is 3.11.2); 3.10 and 3.11.5+ pickle it as
    ``cls(value)``. The kit's reasons pickle as ``cls(value)`` on all of them."""
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert member.__reduce_ex__(protocol) == (type(member), (member.value,)), protocol
        assert b"getattr" not in pickle.dumps(member, protocol=protocol)
    assert weights_only_round_trip(member) is member  # torch.save's own protocol


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_kit_schedule_and_penalty_class_is_registered():
    from lightning_regkit._safe_globals import kit_safe_globals

    registered = set(torch.serialization.get_safe_globals())
    kit = [c for base in (schedules.Schedule, Penalty) for c in (base, *_subclasses(base))]
    kit = [c for c in kit if c.__module__.startswith("lightning_regkit.")]
    assert len(kit) >= 14
    assert set(kit) <= registered
    assert set(kit_safe_globals()) <= registered


def test_user_functions_are_not_trusted():
    """Registering the kit does not open the door to arbitrary callables: a FromProgress over a
    function still needs that function registered by the user, and the error names it."""
    with pytest.raises(pickle.UnpicklingError, match=r"math\.sqrt"):
        weights_only_round_trip(schedules.FromProgress(math.sqrt))


L2_SCHEDULE = schedules.Linear(1e-2, 1e-3)


class WithHParams(LitClassifier):
    def __init__(self, l2=L2_SCHEDULE, penalties=tuple(PENALTIES), dropout=SCHEDULES[-2]):
        super().__init__()
        self.save_hyperparameters()


def test_checkpoint_with_kit_hyperparameters_round_trips(tmp_path):
    model = WithHParams()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, enable_checkpointing=True, limit_train_batches=1)
    Trainer(callbacks=[ckpt], **kwargs).fit(model, datamodule=SyntheticDataModule())
    path = tmp_path / "last.ckpt"

    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert_same_schedule(hparams["l2"], model.hparams.l2)
    assert_same_schedule(hparams["dropout"], model.hparams.dropout)
    for loaded, original in zip(hparams["penalties"], PENALTIES, strict=True):
        assert_same_penalty(loaded, original)

    restored = WithHParams.load_from_checkpoint(path)  # torch's default: weights_only=True
    assert_same_schedule(restored.hparams.l2, model.hparams.l2)
    for loaded, original in zip(restored.hparams.penalties, PENALTIES, strict=True):
        assert_same_penalty(loaded, original)
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in model.state_dict().items())

    resumed = WithHParams()
    kwargs.update(max_epochs=2, enable_checkpointing=False)
    trainer = Trainer(**kwargs)
    trainer.fit(resumed, datamodule=SyntheticDataModule(), ckpt_path=path)  # fit reads it the same way
    assert trainer.current_epoch == 2
