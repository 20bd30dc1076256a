"""DropoutScheduler: the drop probability SEEN inside the forward follows the schedule."""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import ddp_battery
import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    LitClassifier,
    SyntheticDataModule,
    TinyMLP,
    TinyTransformer,
    classifier_cli,
    make_classification,
)
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

import lightning_regkit.callbacks.dropout as dropout_callback_module
from lightning_regkit.callbacks.dropout import DropoutScheduler
from lightning_regkit.dropout import describe_dropout_modules, find_dropout_modules
from lightning_regkit.schedules import Constant, Cosine, Curriculum, Linear, Step

STEPS_PER_EPOCH = 4  # SyntheticDataModule: 64 samples, batch 16
TRANSFORMER_TARGETS = [
    "attn",
    "encoder.self_attn",
    "encoder.dropout",
    "encoder.dropout1",
    "encoder.dropout2",
    "drop",
]


# ----------------------------------------------------------------------------- observing p inside the forward
class Recorder(Callback):
    """Records every drop probability passed to torch's dropout functionals during training.

    ``F.dropout`` & co. and ``F.multi_head_attention_forward`` are wrapped (so what is seen is the
    argument the computation really used, not the attribute), and forward hooks keep a stack of
    module names so each call is attributed to the module that made it.
    """

    _DROPOUT_FUNCTIONALS = (
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
    )

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.step = -1
        self.epoch = -1
        self.stack: list[str] = []
        self.calls: list[tuple[int, int, str, float]] = []  # (step, epoch, module name, p)
        self.start_epoch: int | None = None
        for name in self._DROPOUT_FUNCTIONALS:
            monkeypatch.setattr(F, name, self._wrap_dropout(getattr(F, name)))
        mha = F.multi_head_attention_forward
        signature = inspect.signature(mha)

        def mha_forward(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if bound.arguments["training"]:
                self._record(float(bound.arguments["dropout_p"]))
            return mha(*args, **kwargs)

        monkeypatch.setattr(F, "multi_head_attention_forward", mha_forward)

    def _wrap_dropout(self, fn: Any) -> Any:
        def wrapped(input: torch.Tensor, p: float = 0.5, training: bool = True, *args: Any, **kw: Any) -> Any:
            if training:
                self._record(float(p))
            return fn(input, p, training, *args, **kw)

        return wrapped

    def _record(self, p: float) -> None:
        self.calls.append((self.step, self.epoch, self.stack[-1] if self.stack else "?", p))

    def watch(self, net: nn.Module) -> None:
        def pop(module: nn.Module, args: Any, output: Any) -> None:
            self.stack.pop()

        for name, module in net.named_modules():
            if name:
                module.register_forward_pre_hook(lambda m, a, name=name: self.stack.append(name))
                module.register_forward_hook(pop)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_epoch = trainer.current_epoch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.step, self.epoch = trainer.global_step, trainer.current_epoch

    def seen(self) -> dict[str, dict[int, set[float]]]:
        """module name -> step -> set of p seen (one value per step when all is well)."""
        out: dict[str, dict[int, set[float]]] = defaultdict(lambda: defaultdict(set))
        for step, _, name, p in self.calls:
            out[name][step].add(p)
        return out

    def per_step(self, name: str) -> dict[int, float]:
        seen = self.seen()[name]
        assert all(len(ps) == 1 for ps in seen.values()), seen
        return {step: next(iter(ps)) for step, ps in seen.items()}


class DropPath(nn.Module):
    """Stand-in for timm's DropPath (not installed): a residual-branch drop with ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0, recorder: list[float] | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.recorder = recorder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        if self.recorder is not None:
            self.recorder.append(self.drop_prob)  # observed inside the forward
        keep = 1.0 - self.drop_prob
        mask = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(keep)
        return x * mask / keep


class StochasticDepth(nn.Module):
    """Stand-in for torchvision's StochasticDepth (attribute ``p``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class MyDrop(nn.Module):
    """A custom module type whose drop probability lives in ``rate``."""

    def __init__(self, rate: float, recorder: list[float] | None = None) -> None:
        super().__init__()
        self.rate = rate
        self.recorder = recorder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.recorder is not None:
            self.recorder.append(self.rate)
        return F.dropout(x, self.rate, self.training)


class ResidualNet(nn.Module):
    """8 -> 16 -> residual(Linear, DropPath) -> MyDrop -> 3; also a StochasticDepth and a Dropout."""

    def __init__(
        self, recorder: list[float] | None = None, custom_recorder: list[float] | None = None
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.block = nn.Linear(16, 16)
        self.drop_path = DropPath(0.2, recorder)
        self.sd = StochasticDepth(0.1)
        self.my_drop = MyDrop(0.05, custom_recorder)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        h = h + self.drop_path(self.block(h))
        return self.head(self.drop(self.my_drop(self.sd(h))))


def fit(trainer_factory: Any, model: pl.LightningModule, callbacks: list[Callback], **kw: Any) -> pl.Trainer:
    trainer = trainer_factory(callbacks=callbacks, **kw)
    trainer.fit(model, datamodule=SyntheticDataModule())
    return trainer


def transformer(p: float = 0.1) -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(p=p)


# ----------------------------------------------------------------------------- p seen in the forward
@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_p_seen_inside_forward_of_dropout_attention_and_encoder_layer(make_trainer, monkeypatch, interval):
    net = transformer(p=0.1)
    recorder = Recorder(monkeypatch)
    recorder.watch(net)
    schedule = Linear(0.0, 0.4)
    cb = DropoutScheduler(schedule, interval=interval)
    fit(make_trainer, LitClassifier(net), [cb, recorder], max_epochs=3)
    total_steps = 3 * STEPS_PER_EPOCH
    seen = recorder.seen()
    assert sorted(seen) == sorted(TRANSFORMER_TARGETS)  # every dropout site was observed
    for name in TRANSFORMER_TARGETS:
        per_step = recorder.per_step(name)
        assert sorted(per_step) == list(range(total_steps))
        for step, p in per_step.items():
            t, total = (step, total_steps) if interval == "step" else (step // STEPS_PER_EPOCH, 3)
            assert p == schedule(t, total), (name, step)
    # the schedule really moved p: 0 at the start, not the model's 0.1
    assert recorder.per_step("attn")[0] == 0.0
    assert recorder.per_step("encoder.self_attn")[total_steps - 1] > 0.25


def test_gradient_accumulation_micro_batches_share_t(make_trainer, monkeypatch):
    net = transformer()
    recorder = Recorder(monkeypatch)
    recorder.watch(net)
    schedule = Linear(0.0, 0.4)
    fit(make_trainer, LitClassifier(net), [DropoutScheduler(schedule), recorder], accumulate_grad_batches=2)
    total = 2 * STEPS_PER_EPOCH // 2  # estimated_stepping_batches = optimizer steps
    calls = [(s, p) for s, _, name, p in recorder.calls if name == "drop"]
    assert len(calls) == 2 * STEPS_PER_EPOCH  # one per micro-batch
    assert sorted({s for s, _ in calls}) == list(range(total))
    assert all(p == schedule(s, total) for s, p in calls)


def test_relative_mode_scales_each_modules_initial_p(make_trainer, monkeypatch):
    net = transformer()
    initial = {"attn": 0.2, "encoder.self_attn": 0.1, "encoder.dropout": 0.3, "drop": 0.4}
    net.attn.dropout = initial["attn"]
    net.encoder.self_attn.dropout = initial["encoder.self_attn"]
    net.encoder.dropout.p = initial["encoder.dropout"]
    net.drop.p = initial["drop"]
    recorder = Recorder(monkeypatch)
    recorder.watch(net)
    scale = Linear(1.0, 0.0)
    cb = DropoutScheduler(scale, mode="relative", names=[f"net.{n}" for n in initial])
    trainer = fit(make_trainer, LitClassifier(net), [cb, recorder])
    total = 2 * STEPS_PER_EPOCH
    for name, p0 in initial.items():
        for step, p in recorder.per_step(name).items():
            assert p == scale(step, total) * p0, (name, step)
    # modules left out by `names` keep their own p (0.1) at every step
    assert set(recorder.per_step("encoder.dropout1").values()) == {0.1}
    last = scale(total - 1, total)
    assert trainer.callback_metrics["regkit/dropout_scale"].item() == pytest.approx(last)
    assert trainer.callback_metrics["regkit/dropout_p"].item() == pytest.approx(
        last * sum(initial.values()) / 4
    )


def test_stochastic_depth_when_asked_and_custom_type(make_trainer):
    seen_drop_path: list[float] = []
    seen_custom: list[float] = []
    net = ResidualNet(seen_drop_path, seen_custom)
    default = [t.name for t in find_dropout_modules(net)]
    assert default == ["drop"]  # stochastic depth is opt-in; MyDrop unknown until registered
    cb = DropoutScheduler(Constant(0.3), modules=["stochastic_depth"], custom={MyDrop: "rate"}, restore=False)
    fit(make_trainer, LitClassifier(net), [cb])
    assert [t.name for t in cb.targets] == ["net.drop_path", "net.sd", "net.my_drop"]
    assert seen_drop_path == [0.3] * (2 * STEPS_PER_EPOCH)
    assert seen_custom == [0.3] * (2 * STEPS_PER_EPOCH)
    assert (net.drop_path.drop_prob, net.sd.p, net.my_drop.rate, net.drop.p) == (0.3, 0.3, 0.3, 0.1)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {},
            ["attn", "encoder.self_attn", "encoder.dropout", "encoder.dropout1", "encoder.dropout2", "drop"],
        ),
        ({"modules": "attention"}, ["attn", "encoder.self_attn"]),
        ({"modules": [nn.MultiheadAttention]}, ["attn", "encoder.self_attn"]),
        ({"modules": ["Dropout"]}, ["encoder.dropout", "encoder.dropout1", "encoder.dropout2", "drop"]),
        (
            {"modules": ["torch.nn.modules.dropout.Dropout"]},
            ["encoder.dropout", "encoder.dropout1", "encoder.dropout2", "drop"],
        ),
        (
            {"names": ["encoder.*"]},
            ["encoder.self_attn", "encoder.dropout", "encoder.dropout1", "encoder.dropout2"],
        ),
        ({"names": "encoder.dropout?"}, ["encoder.dropout1", "encoder.dropout2"]),
        ({"exclude": ["encoder.*"]}, ["attn", "drop"]),
        (
            {"modules": "dropout", "names": ["*drop*"], "exclude": "encoder.dropout"},
            ["encoder.dropout1", "encoder.dropout2", "drop"],
        ),
    ],
)
def test_selection(kwargs, expected):
    net = TinyTransformer()
    names = dict(kwargs)
    targets = find_dropout_modules(
        net,
        modules=[names["modules"]]
        if isinstance(names.get("modules"), str)
        else names.get("modules", ("dropout", "attention")),
        names=[names["names"]] if isinstance(names.get("names"), str) else names.get("names"),
        exclude=[names["exclude"]] if isinstance(names.get("exclude"), str) else names.get("exclude"),
    )
    assert [t.name for t in targets] == expected


@pytest.mark.parametrize(
    "dropout_type",
    [nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout],
)
def test_every_dropout_type_found(dropout_type):
    net = nn.Sequential(nn.Linear(2, 2), dropout_type(0.25))
    [target] = find_dropout_modules(net)
    assert (target.name, target.kind, target.attribute, target.get()) == ("1", "dropout", "p", 0.25)


def test_transformer_decoder_layer_found():
    dec = nn.TransformerDecoderLayer(8, 2, dim_feedforward=16, dropout=0.1)
    targets = find_dropout_modules(dec)
    assert [(t.name, t.attribute) for t in targets] == [
        ("self_attn", "dropout"),
        ("multihead_attn", "dropout"),
        ("dropout", "p"),
        ("dropout1", "p"),
        ("dropout2", "p"),
        ("dropout3", "p"),
    ]


def test_module_list_resolved_once_and_p_written_only_when_it_changes(make_trainer, monkeypatch):
    writes: list[float] = []

    class CountingDropout(nn.Dropout):
        @property
        def p(self) -> float:  # type: ignore[override]
            return self._p

        @p.setter
        def p(self, value: float) -> None:
            writes.append(value)
            self._p = value

    net = TinyMLP()
    net.drop = CountingDropout(0.1)
    calls = []
    real_find = dropout_callback_module.find_dropout_modules
    monkeypatch.setattr(
        dropout_callback_module, "find_dropout_modules", lambda *a, **k: calls.append(1) or real_find(*a, **k)
    )
    writes.clear()
    schedule = Step([0.25, 0.75], [0.2, 0.3, 0.0])  # 8 steps: changes at steps 0, 2, 6
    fit(make_trainer, LitClassifier(net), [DropoutScheduler(schedule)])
    assert calls == [1]
    assert writes == [0.2, 0.3, 0.0, 0.1]  # three scheduled values, then the restore


# ----------------------------------------------------------------------------- restore, log
@pytest.mark.parametrize("restore", [True, False])
def test_restore_at_end_of_fit(make_trainer, restore):
    net = transformer(p=0.1)
    schedule = Linear(0.0, 0.4)
    fit(make_trainer, LitClassifier(net), [DropoutScheduler(schedule, restore=restore)])
    last = schedule(2 * STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH)
    expected = 0.1 if restore else last
    assert (
        net.attn.dropout == net.encoder.self_attn.dropout == net.drop.p == net.encoder.dropout2.p == expected
    )


def test_restore_after_exception(make_trainer):
    class Boom(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                raise RuntimeError("boom")

    net = TinyMLP(p=0.1)
    with pytest.raises(RuntimeError, match="boom"):
        fit(make_trainer, LitClassifier(net), [DropoutScheduler(Constant(0.5)), Boom()])
    assert net.drop.p == 0.1


def test_logs_current_p_on_logging_steps(make_trainer, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    schedule = Linear(0.0, 0.4)
    trainer = fit(
        make_trainer,
        LitClassifier(TinyMLP()),
        [DropoutScheduler(schedule)],
        logger=CSVLogger(tmp_path, name="csv"),
        log_every_n_steps=3,
    )
    import csv

    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {int(r["step"]): float(r["regkit/dropout_p"]) for r in rows if r.get("regkit/dropout_p")}
    # Lightning logs on steps 2, 5 (every 3rd step, 0-based); the value is the p used at that step
    assert logged == {2: pytest.approx(schedule(2, 8)), 5: pytest.approx(schedule(5, 8))}


def test_log_p_false_logs_nothing(make_trainer):
    trainer = fit(make_trainer, LitClassifier(TinyMLP()), [DropoutScheduler(0.2, log_p=False)])
    assert "regkit/dropout_p" not in trainer.callback_metrics


# ----------------------------------------------------------------------------- unknown length of training
class UnsizedDataset(IterableDataset):
    """A finite iterable dataset without ``__len__``: Lightning cannot know the epoch length."""

    def __iter__(self):
        ds = make_classification(48, seed=0)
        return iter([(ds.tensors[0][i], ds.tensors[1][i]) for i in range(len(ds))])


def fit_unsized(trainer_factory: Any, net: nn.Module, callbacks: list[Callback], **kw: Any) -> pl.Trainer:
    trainer = trainer_factory(callbacks=callbacks, **kw)
    trainer.fit(LitClassifier(net), train_dataloaders=DataLoader(UnsizedDataset(), batch_size=16))
    return trainer


@pytest.mark.parametrize(
    ("interval", "trainer_kw"),
    [("step", {"max_epochs": 2, "max_steps": -1}), ("epoch", {"max_epochs": -1, "max_steps": 4})],
)
def test_unknown_total_progress_schedule_fails_at_fit_start(make_trainer, interval, trainer_kw):
    net = TinyMLP(p=0.1)
    with pytest.raises(
        ValueError, match=r"DropoutScheduler: the schedule Linear\(.*\) needs the length of training"
    ):
        fit_unsized(make_trainer, net, [DropoutScheduler(Linear(0.0, 0.3), interval=interval)], **trainer_kw)
    assert net.drop.p == 0.1


def test_unknown_total_absolute_schedule_runs(make_trainer, monkeypatch):
    net = TinyMLP(p=0.1)
    recorder = Recorder(monkeypatch)
    recorder.watch(net)
    curriculum = Curriculum(p_final=0.5, gamma=0.2)
    trainer = fit_unsized(make_trainer, net, [DropoutScheduler(curriculum), recorder], max_epochs=2)
    assert trainer.estimated_stepping_batches == -1  # Lightning's answer for an unsized loader
    per_step = recorder.per_step("drop")
    assert sorted(per_step) == list(range(6))
    assert per_step == {t: 0.5 * (1 - math.exp(-0.2 * t)) for t in range(6)}


# ----------------------------------------------------------------------------- resume
def test_resume_continues_schedule_exactly(make_trainer, monkeypatch, tmp_path):
    schedule = Cosine(0.0, 0.5)
    max_epochs = 4

    def run(ckpt_path: str | None, ckpt_dir: Path) -> tuple[Recorder, DropoutScheduler, pl.Trainer]:
        with monkeypatch.context() as m:
            net = transformer()
            recorder = Recorder(m)
            recorder.watch(net)
            cb = DropoutScheduler(schedule, mode="relative", names=["net.drop", "net.attn"])
            checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1)
            trainer = make_trainer(
                max_epochs=max_epochs, enable_checkpointing=True, callbacks=[cb, recorder, checkpoint]
            )
            trainer.fit(LitClassifier(net), datamodule=SyntheticDataModule(), ckpt_path=ckpt_path)
            return recorder, cb, trainer

    full, _, _ = run(None, tmp_path / "full")
    ckpt = tmp_path / "full" / "epoch=1-step=8.ckpt"
    assert ckpt.exists()
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    [key] = [k for k in state if k.startswith("DropoutScheduler")]
    assert state[key] == {"t": 7, "value": schedule(7, 16), "base": {"net.attn": 0.1, "net.drop": 0.1}}

    resumed, cb, trainer = run(str(ckpt), tmp_path / "resumed")
    assert resumed.start_epoch == 2  # really resumed: the schedule did not restart at t = 0
    assert trainer.global_step == max_epochs * STEPS_PER_EPOCH
    for name in ("attn", "drop"):
        expected = {s: p for s, p in full.per_step(name).items() if s >= 8}
        assert resumed.per_step(name) == expected
        assert len(expected) == 8 and min(expected.values()) > 0
    assert cb.current_value == schedule(15, 16)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": 1.0}, r"DropoutScheduler: schedule must be in \[0, 1\), got 1.0"),
        ({"schedule": 1.5}, r"DropoutScheduler: schedule must be in \[0, 1\), got 1.5"),
        ({"schedule": -0.1}, r"DropoutScheduler: schedule must be in \[0, 1\), got -0.1"),
        ({"schedule": float("nan")}, r"DropoutScheduler: schedule must be in \[0, 1\), got nan"),
        ({"schedule": -1.0, "mode": "relative"}, r"DropoutScheduler: schedule must be in >= 0 .* got -1.0"),
        (
            {"interval": "batch"},
            r"DropoutScheduler: interval must be one of \['step', 'epoch'\], got 'batch'",
        ),
        (
            {"mode": "scaled"},
            r"DropoutScheduler: mode must be one of \['absolute', 'relative'\], got 'scaled'",
        ),
        ({"modules": ["dropuot"]}, r"DropoutScheduler: modules has unknown kind 'dropuot'"),
        ({"modules": []}, r"DropoutScheduler: modules must not be empty"),
        (
            {"custom": {MyDrop: "not an attr"}},
            r"DropoutScheduler: custom\[.*MyDrop.*\] must be an attribute name",
        ),
    ],
)
def test_bad_constructor_values(kwargs, match):
    kwargs = {"schedule": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        DropoutScheduler(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "0.1"}, r"DropoutScheduler: schedule must be a number, a Schedule or a callable"),
        ({"schedule": True}, r"DropoutScheduler: schedule must be a number, a Schedule or a callable"),
        ({"modules": [3]}, r"DropoutScheduler: modules must hold kind names, module types or class names"),
        ({"names": [""]}, r"DropoutScheduler: names must be a glob string or a non-empty list"),
        ({"exclude": []}, r"DropoutScheduler: exclude must be a glob string or a non-empty list"),
        ({"restore": "yes"}, r"DropoutScheduler: restore must be a bool, got 'yes'"),
        ({"log_p": 1}, r"DropoutScheduler: log_p must be a bool, got 1"),
    ],
)
def test_bad_constructor_types(kwargs, match):
    kwargs = {"schedule": 0.1, **kwargs}
    with pytest.raises(TypeError, match=match):
        DropoutScheduler(**kwargs)


@pytest.mark.parametrize(
    ("cb", "match"),
    [
        # Linear(0, 2) over 8 steps reaches p = 1.0 at step 4
        (
            DropoutScheduler(Linear(0.0, 2.0)),
            r"the schedule gave p=1.0 at step 4 \(total=8\); p must be in \[0, 1\)",
        ),
        (DropoutScheduler(lambda t, total: -0.1 * t), r"the schedule gave p=-0.1 at step 1 \(total=8\)"),
        (DropoutScheduler(Linear(0.0, 4.0), interval="epoch"), r"p=2.0 at epoch 1 \(total=2\)"),
        (
            DropoutScheduler(Constant(20.0), mode="relative"),
            r"scale=20.0 at step 0 \(total=8\), so p=2.0 for module 'net.drop' \(initial p 0.1\)",
        ),
    ],
)
def test_schedule_yielding_invalid_p_names_the_step(make_trainer, cb, match):
    net = TinyMLP(p=0.1)
    with pytest.raises(ValueError, match=match):
        fit(make_trainer, LitClassifier(net), [cb])
    assert net.drop.p == 0.1  # restored after the error


@pytest.mark.parametrize(
    ("net", "kwargs", "match"),
    [
        (
            TinyMLP(),
            {"names": ["encoder.*"]},
            r"no module matches .*names=\['encoder.\*'\].*"
            r"the model has dropout-like modules: 'net.drop' \(Dropout, kind 'dropout', p=0.1\)",
        ),
        (TinyMLP(), {"modules": "stochastic_depth"}, r"modules=\['stochastic_depth'\].*'net.drop' \(Dropout"),
        (
            nn.Sequential(nn.Linear(8, 3)),
            {},
            r"the model has no dropout-like module; modules: 'net' \(Sequential\), 'net.0' \(Linear\)",
        ),
    ],
)
def test_no_matching_module_lists_what_the_model_has(make_trainer, net, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(make_trainer, LitClassifier(net), [DropoutScheduler(0.2, **kwargs)])


def test_bad_attribute_of_registered_type():
    net = nn.Sequential(MyDrop(0.1))
    with pytest.raises(
        TypeError, match=r"module '0' \(MyDrop\) must have a real-number attribute 'rte', got None"
    ):
        find_dropout_modules(net, custom={"MyDrop": "rte"})
    assert (
        describe_dropout_modules(net, custom={"MyDrop": "rate"})
        == "dropout-like modules: '0' (MyDrop, kind 'custom', rate=0.1)"
    )


def test_state_key_distinguishes_instances():
    a = DropoutScheduler(0.1, modules="attention")
    b = DropoutScheduler(0.1, modules="dropout")
    assert a.state_key != b.state_key
    assert a.state_key == DropoutScheduler(Linear(0, 0.3), modules="attention").state_key


# ----------------------------------------------------------------------------- LightningCLI
CLI_CONFIG = """
trainer:
  max_epochs: 2
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning_regkit.callbacks.dropout.DropoutScheduler
      init_args:
        schedule:
          class_path: lightning_regkit.schedules.EarlyDropout
          init_args: {p: 0.1, until: 0.5, linear: true}
        interval: step
        modules: [dropout, attention]
        names: ["net.*"]
        mode: relative
"""


def test_configurable_from_lightning_cli_yaml(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CLI_CONFIG)
    cli = classifier_cli(config)
    [cb] = [c for c in cli.trainer.callbacks if isinstance(c, DropoutScheduler)]
    assert (cb.interval, cb.modules, cb.names, cb.mode) == (
        "step",
        ["dropout", "attention"],
        ["net.*"],
        "relative",
    )
    assert repr(cb.schedule) == "EarlyDropout(p=0.1, unit='progress', until=0.5, linear=True)"


# ----------------------------------------------------------------------------- README quick start
def test_readme_quickstart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Trainer writes lightning_logs/ in the current folder
    model, dm = LitClassifier(TinyTransformer()), SyntheticDataModule()
    # --- README snippet (kept in sync with .notes/readme_dropout.md)
    import lightning.pytorch as pl

    from lightning_regkit.callbacks.dropout import DropoutScheduler
    from lightning_regkit.schedules import Curriculum, EarlyDropout

    # Early dropout (Liu et al. 2023) on nn.Dropout layers: 0.1 decaying to 0 over the first quarter
    early = DropoutScheduler(EarlyDropout(0.1, until=0.25, linear=True), modules="dropout")
    # Curriculum dropout (Morerio et al. 2017) on attention: p(t) = 0.3 * (1 - exp(-0.001 t))
    curriculum = DropoutScheduler(Curriculum(p_final=0.3, gamma=0.001), modules="attention")
    trainer = pl.Trainer(max_epochs=4, callbacks=[early, curriculum])
    trainer.fit(model, datamodule=dm)
    # ---
    assert early.current_value == 0.0
    assert curriculum.current_value == pytest.approx(0.3 * (1 - math.exp(-0.001 * 15)))
    assert model.net.drop.p == model.net.attn.dropout == 0.1  # restored at the end of fit
    assert trainer.global_step == 16


def test_two_schedulers_driving_the_same_module_is_an_error(make_trainer):
    net = TinyTransformer()
    a = DropoutScheduler(0.2, modules="attention")
    b = DropoutScheduler(0.3, names="net.encoder.*")
    with pytest.raises(
        ValueError, match=r"'net.encoder.self_attn' is already driven by another DropoutScheduler"
    ):
        fit(make_trainer, LitClassifier(net), [a, b])
    assert net.attn.dropout == net.encoder.self_attn.dropout == 0.1


# ----------------------------------------------------------------------------- example script
@pytest.mark.slow
def test_plot_example_writes_png(tmp_path):
    from plot_dropout_schedules import main

    path = main(tmp_path)
    assert path.parent == tmp_path and path.suffix == ".png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


# ----------------------------------------------------------------------------- DDP
@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_ranks_see_identical_p(tmp_path_factory):
    # 2 ranks, DropoutScheduler(Cosine(0.0, 0.5)), 3 epochs; every training F.dropout call records
    # (global_step, p): ddp_battery.dropout, in the suite's DDP launch
    ranks = ddp_battery.load_ranks(tmp_path_factory, "dropout")
    total = ranks[0]["total"]
    assert total == ranks[1]["total"] == 3 * STEPS_PER_EPOCH // 2  # each rank sees half of the data
    schedule = Cosine(0.0, 0.5)
    assert ranks[0]["seen"] == ranks[1]["seen"]
    assert [s for s, _ in ranks[0]["seen"]] == list(range(total))
    assert all(p == schedule(s, total) for s, p in ranks[0]["seen"])
