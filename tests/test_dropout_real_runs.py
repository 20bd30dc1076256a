"""DropoutScheduler in the runs Lightning really drives (issues 13 and 14), measured from outside.

- One clock: the p a model's forward really passes to ``F.dropout`` (recorded per batch by the
  model's own batch number) is ``schedule(t, total)`` of the kit's one clock, with automatic and
  manual optimization (a discriminator stepping five times per generator step), gradient
  accumulation, ``interval="step"|"epoch"``, ``max_steps``, ``max_epochs=0``, and across a resume.
- ``torch.compile``: a new p never recompiles (graphs counted by a backend of our own and by
  Dynamo's counters, over 12 values, no graph break), the compiled graph takes the scheduled p as an
  input, eager outputs are bit-identical to plain dropout, attributes get their type back.
- Checkpoint state is validated at load, field by field; nothing invalid reaches the model.
- A reused instance starts afresh; state carries over only through ``ckpt_path``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from helpers import (
    LitClassifier,
    SyntheticDataModule,
    TinyTransformer,
    max_abs_diff,
    trainer_kwargs,
    weights_of,
)
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn
from torch._dynamo.utils import counters

from lightning_regkit import dropout as dropout_module
from lightning_regkit.callbacks.dropout import DropoutScheduler
from lightning_regkit.dropout import TENSOR_P_TRACEABLE, DropoutDriver, find_dropout_modules, tensor_p_dropout
from lightning_regkit.schedules import Constant, Linear

pytestmark = pytest.mark.integration  # whole fits through Lightning: make test, not make test-fast

_ALPHA = 1.7580993408473766  # SELU's scale * alpha (ATen's alpha dropout)

BATCHES = 4  # per epoch: SyntheticDataModule has 64 samples in batches of 16


# ----------------------------------------------------------------------------- a model that reports p
class GanLike(pl.LightningModule):
    """A generator with dropout; with ``manual=True`` a discriminator steps ``d_steps`` times per batch.

    Every ``F.dropout`` call made in training is recorded as ``(batch number, p)``; the batch number
    is the model's own (epoch * batches per epoch + batch_idx), so it is right across a resume.
    """

    def __init__(self, manual: bool = False, d_steps: int = 5, p: float = 0.1) -> None:
        super().__init__()
        self.automatic_optimization = not manual
        self.d_steps = d_steps
        self.gen = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 3))
        self.disc = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
        self.seen: list[tuple[int, float]] = []
        self.batch_no = -1

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, y = batch
        self.batch_no = self.trainer.current_epoch * BATCHES + batch_idx
        if self.automatic_optimization:
            return F.cross_entropy(self.gen(x), y)
        g_opt, d_opt = self.optimizers()  # type: ignore[misc]
        for _ in range(self.d_steps):
            fake = self.gen(x).detach()
            d_loss = self.disc(fake).mean() - self.disc(F.one_hot(y, 3).float()).mean()
            d_opt.zero_grad()
            self.manual_backward(d_loss)
            d_opt.step()
        g_loss = -self.disc(self.gen(x)).mean() + F.cross_entropy(self.gen(x), y)
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()
        return None

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> Any:
        g_opt = torch.optim.SGD(self.gen.parameters(), lr=0.05)
        if self.automatic_optimization:
            return g_opt
        return [g_opt, torch.optim.SGD(self.disc.parameters(), lr=0.05)]

    def per_batch(self) -> dict[int, float]:
        """batch number -> the one p every dropout call of that batch used."""
        out: dict[int, set[float]] = {}
        for n, p in self.seen:
            out.setdefault(n, set()).add(p)
        assert all(len(ps) == 1 for ps in out.values()), out
        return {n: ps.pop() for n, ps in out.items()}


@pytest.fixture
def record_dropout(monkeypatch: pytest.MonkeyPatch) -> Callable[[GanLike], GanLike]:
    """Wrap ``F.dropout``: the model registered last records the p its forward really passed (training)."""
    models: list[GanLike] = []
    real = F.dropout

    def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
        if training and models:
            models[-1].seen.append((models[-1].batch_no, float(p)))
        return real(input, p, training, inplace)

    monkeypatch.setattr(F, "dropout", dropout)

    def register(model: GanLike) -> GanLike:
        models.append(model)
        return model

    return register


def fit(model: pl.LightningModule, callbacks: list[Callback], root: Path, **kw: Any) -> pl.Trainer:
    ckpt_path = kw.pop("ckpt_path", None)
    trainer = pl.Trainer(**trainer_kwargs(root, callbacks=callbacks, limit_val_batches=0, **kw))
    trainer.fit(model, datamodule=SyntheticDataModule(), ckpt_path=ckpt_path)
    return trainer


# ----------------------------------------------------------------------------- one clock
SCHEDULE = Linear(0.0, 0.5)
CLOCK_CASES = {
    # name: (manual, interval, trainer kwargs, batches run, batch -> (t, total))
    "auto-step": (False, "step", {"max_epochs": 3}, 12, lambda n: (n, 12)),
    "auto-epoch": (False, "epoch", {"max_epochs": 3}, 12, lambda n: (n // BATCHES, 3)),
    "accumulate-2": (False, "step", dict(max_epochs=3, accumulate_grad_batches=2), 12, lambda n: (n // 2, 6)),
    "max_steps-5": (False, "step", {"max_epochs": 3, "max_steps": 5}, 5, lambda n: (n, 5)),
    "manual-5-to-1-step": (True, "step", {"max_epochs": 3}, 12, lambda n: (n, 12)),
    "manual-5-to-1-epoch": (True, "epoch", {"max_epochs": 3}, 12, lambda n: (n // BATCHES, 3)),
}


@pytest.mark.parametrize("case", list(CLOCK_CASES))
def test_p_seen_in_each_batch_follows_the_one_clock(
    case: str, record_dropout: Callable[[GanLike], GanLike], tmp_path: Path
) -> None:
    manual, interval, kw, batches, t_total = CLOCK_CASES[case]
    torch.manual_seed(0)
    model = record_dropout(GanLike(manual=manual))
    trainer = fit(model, [DropoutScheduler(SCHEDULE, interval=interval)], tmp_path, **kw)
    seen = model.per_batch()
    assert sorted(seen) == list(range(batches))
    expected = {n: SCHEDULE(*t_total(n)) for n in range(batches)}
    assert seen == expected
    if manual:  # the reported case: 6 optimizer steps per batch, yet p moves once per batch
        assert trainer.global_step == 6 * batches
        assert len(model.seen) == batches * (5 + 2)  # 5 discriminator rounds + 2 generator forwards
    if interval == "step":
        assert seen[batches - 1] > 0.3  # the schedule really ran to (near) its end


def test_progress_lambda_gives_schedule_of_progress(
    record_dropout: Callable[[GanLike], GanLike], tmp_path: Path
) -> None:
    model = record_dropout(GanLike())
    fit(model, [DropoutScheduler(lambda progress: 0.4 * progress)], tmp_path, max_epochs=2)
    assert model.per_batch() == {n: 0.4 * (n / 8) for n in range(8)}


def test_three_argument_callable_fails_at_construction() -> None:
    with pytest.raises(TypeError, match=r"DropoutScheduler: schedule must be a callable of one argument"):
        DropoutScheduler(lambda t, total, extra: 0.1)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_max_epochs_zero_trains_nothing_and_raises_nothing(
    interval: str, record_dropout: Callable[[GanLike], GanLike], tmp_path: Path
) -> None:
    model = record_dropout(GanLike(p=0.1))
    trainer = fit(model, [DropoutScheduler(Linear(0.0, 0.3), interval=interval)], tmp_path, max_epochs=0)
    assert trainer.global_step == 0 and model.seen == []
    assert model.gen[2].p == 0.1 and type(model.gen[2].p) is float


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_resume_continues_the_schedule_exactly(
    manual: bool, record_dropout: Callable[[GanLike], GanLike], tmp_path: Path
) -> None:
    def run(ckpt_path: str | None, root: Path) -> GanLike:
        torch.manual_seed(0)
        model = record_dropout(GanLike(manual=manual))
        checkpoint = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1)
        fit(
            model,
            [DropoutScheduler(SCHEDULE), checkpoint],
            root,
            max_epochs=3,
            enable_checkpointing=True,
            ckpt_path=ckpt_path,
        )
        return model

    full = run(None, tmp_path / "full")
    [ckpt] = (tmp_path / "full").glob("epoch=0-*.ckpt")
    resumed = run(str(ckpt), tmp_path / "resumed")
    assert min(resumed.per_batch()) == BATCHES  # really resumed: the first batch run is epoch 1's
    assert resumed.per_batch() == {n: p for n, p in full.per_batch().items() if n >= BATCHES}
    assert resumed.per_batch() == {n: SCHEDULE(n, 12) for n in range(BATCHES, 12)}


# ----------------------------------------------------------------------------- torch.compile
class CountingBackend:
    """A torch.compile backend that counts compilations and records the p each graph run takes.

    The scheduled p reaches a compiled graph as a 0-d float64 input; the backend reads those inputs
    at every run of the graph (what the compiled code really consumed).
    """

    def __init__(self) -> None:
        self.graphs = 0
        self.p_inputs: list[list[float]] = []
        self.ops: set[str] = set()

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        self.ops |= {str(node.target) for node in gm.graph.nodes if node.op == "call_function"}
        where = [
            i
            for i, x in enumerate(example_inputs)
            if isinstance(x, Tensor) and x.dim() == 0 and x.dtype == torch.float64
        ]

        def run(*args: Any) -> Any:
            self.p_inputs.append([float(args[i]) for i in where])
            return gm.forward(*args)

        return run


class Stack(nn.Module):
    """One of each kind the kit gives a tensor-held p, in the shapes their functionals accept."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.1)
        self.d1 = nn.Dropout1d(0.1)
        self.d2 = nn.Dropout2d(0.1)
        self.d3 = nn.Dropout3d(0.1)
        self.alpha = nn.AlphaDropout(0.1)
        self.feature_alpha = nn.FeatureAlphaDropout(0.1)
        self.mha = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:  # x: (2, 4, 8)
        mask = torch.tensor([[False, False, False, True], [False] * 4])
        h = self.mha(x, x, x, need_weights=False, key_padding_mask=mask)[0]  # through sdpa
        h = h + self.mha(x, x, x, need_weights=True, key_padding_mask=mask)[0]  # softmax, dropout, bmm
        causal = nn.Transformer.generate_square_subsequent_mask(4)
        h = h + self.encoder(x, src_mask=causal, is_causal=True)
        h = self.drop(h) + self.d1(h) + self.d1(h[0]).unsqueeze(0)  # batched and unbatched
        h = h + self.d2(h.unsqueeze(-1)).squeeze(-1) + self.d3(h[..., None, None]).flatten(2)
        h = h + self.d3(h[0, ..., None, None]).flatten(1)  # unbatched 4-D input
        return self.alpha(h) + self.feature_alpha(h)


def drive(model: nn.Module) -> list[DropoutDriver]:
    drivers = [DropoutDriver(target) for target in find_dropout_modules(model)]
    for driver in drivers:
        driver.attach()
    return drivers


def recompile_limit() -> int:
    """Dynamo's limit on compilations per frame: ``recompile_limit`` (``cache_size_limit`` up to 2.6)."""
    config = torch._dynamo.config
    return int(getattr(config, "recompile_limit", None) or config.cache_size_limit)


OLD_DYNAMO = (
    f"torch {torch.__version__} < 2.6: Dynamo cannot trace the TorchFunctionMode that routes a tensor p"
    " into the graph; it breaks the graph around each driven module instead (tested on that side)"
)
NEW_DYNAMO = "torch >= 2.6 compiles a tensor p into one graph (tested on that side)"


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:dropout2d. Received a 3D input")
@pytest.mark.skipif(not TENSOR_P_TRACEABLE, reason=OLD_DYNAMO)
def test_new_p_does_not_recompile() -> None:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Stack()
    assert len(find_dropout_modules(model)) == 11  # 6 dropouts, mha, encoder: attention + 3 dropouts
    drivers = drive(model)
    assert all(driver.tensor is not None for driver in drivers)  # fails if torch's functionals moved
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(2, 4, 8, requires_grad=True)
    values = [0.04 * (i + 1) for i in range(12)]
    for p in values:
        for driver in drivers:
            driver.set(p)
        compiled(x).sum().backward()
    assert backend.graphs == 1
    assert counters["stats"]["unique_graphs"] == 1
    assert dict(counters["graph_break"]) == {}
    assert any("rand" in op for op in backend.ops)  # the dropout is inside the compiled graph
    assert any("linear" in op for op in backend.ops)
    # the graph took every scheduled p as an input: one per driven module, at every run
    assert backend.p_inputs == [[p] * 11 for p in values]


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:dropout2d. Received a 3D input")
@pytest.mark.skipif(TENSOR_P_TRACEABLE, reason=NEW_DYNAMO)
def test_before_torch_2_6_a_new_p_breaks_the_graph_but_never_recompiles() -> None:
    """The other side: graph breaks at the mode, the same graphs for 2 values as for 12, no compile error."""
    graphs, breaks = {}, {}
    for n in (2, 12):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = Stack()
        drivers = drive(model)
        assert all(driver.tensor is not None for driver in drivers)
        backend = CountingBackend()
        compiled = torch.compile(model, backend=backend)
        x = torch.randn(2, 4, 8, requires_grad=True)
        for i in range(n):
            for driver in drivers:
                driver.set(0.04 * (i + 1))
            compiled(x).sum().backward()
        graphs[n], breaks[n] = backend.graphs, dict(counters["graph_break"])
    assert graphs[2] == graphs[12] > 1, graphs
    assert breaks[2] == breaks[12]
    assert any("TorchFunctionMode" in reason for reason in breaks[12]), breaks[12]  # the cause, as documented


@pytest.mark.compile
@pytest.mark.parametrize("driven", [True, False], ids=["kit", "plain-float"])
@pytest.mark.parametrize("kind", ["Dropout", "MultiheadAttention"])
def test_compiled_dropout_drops_at_each_scheduled_p(kind: str, driven: bool) -> None:
    """Both sides of torch 2.6, through AOT autograd (as Inductor): the fraction dropped is each new p.

    With the kit, one compilation serves every p. The control writes plain floats: torch >= 2.5
    recompiles for each value; torch 2.4 records a built-in module as one unguarded call, so AOT
    autograd bakes the first p in and later values are silently ignored.
    """
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    if kind == "Dropout":
        module: nn.Module = nn.Dropout(0.1)
        x = torch.ones(64, 2000)
    else:
        module = nn.MultiheadAttention(8, 1, dropout=0.1, batch_first=True, bias=False)
        x = torch.randn(16, 64, 8)
    drivers = drive(module) if driven else []
    [target] = find_dropout_modules(module)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, backend=counter)
    dropped, compilations = [], []
    for p in (0.1, 0.5, 0.8):
        for driver in drivers:
            driver.set(p)
        if not driven:
            target.set(p)
        if kind == "Dropout":
            dropped.append(float((compiled(x) == 0).float().mean()))
        else:  # attention weights, as returned (after the dropout): a dropped weight is exactly 0
            weights = compiled(x, x, x, need_weights=True, average_attn_weights=False)[1]
            dropped.append(float((weights == 0).float().mean()))
        compilations.append(counter.frame_count)
    if driven or torch._dynamo.config.inline_inbuilt_nn_modules:
        assert dropped == pytest.approx([0.1, 0.5, 0.8], abs=0.02)
    else:  # torch 2.4, plain floats: the first p, baked in
        assert dropped == pytest.approx([0.1, 0.1, 0.1], abs=0.02)
    if driven or not torch._dynamo.config.inline_inbuilt_nn_modules:
        # the kit, whichever the torch version: nothing compiled after the first value
        assert compilations[0] == compilations[-1] > 0, compilations
    else:
        assert compilations[0] < compilations[1] < compilations[2], compilations  # one more per value


@pytest.mark.compile
@pytest.mark.parametrize("kind", ["Dropout", "MultiheadAttention"])
def test_control_float_p_recompiles(kind: str) -> None:
    """The counting above can fail: the same loop writing floats compiles once per value (up to Dynamo's
    limit on compilations per frame, lowered here from its default of 8 to 3: fewer MHA compilations)."""
    torch._dynamo.reset()
    module = nn.Dropout(0.1) if kind == "Dropout" else nn.MultiheadAttention(8, 2, dropout=0.1)
    backend = CountingBackend()
    compiled = torch.compile(module, backend=backend)
    x = torch.randn(4, 2, 8)
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    with torch._dynamo.config.patch({limit: 3}):
        for i in range(12):
            [target] = find_dropout_modules(module)
            target.set(0.04 * (i + 1))
            compiled(x) if kind == "Dropout" else compiled(x, x, x, need_weights=False)
        if torch._dynamo.config.inline_inbuilt_nn_modules:
            assert backend.graphs == recompile_limit() == 3
        else:  # torch 2.4: a built-in module is one unguarded call (see the test above): nothing recompiles
            assert backend.graphs == 1


@pytest.mark.compile
@pytest.mark.skipif(not TENSOR_P_TRACEABLE, reason=OLD_DYNAMO)
def test_compiled_model_inside_lightning_module_fit(tmp_path: Path) -> None:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    net = TinyTransformer(p=0.1)
    backend = CountingBackend()
    model = LitClassifier(torch.compile(net, backend=backend))  # type: ignore[arg-type]
    schedule = Linear(0.0, 0.4)
    fit(model, [DropoutScheduler(schedule)], tmp_path, max_epochs=3)
    assert backend.graphs == 1 and dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    assert len(backend.p_inputs) == 12
    for step, inputs in enumerate(backend.p_inputs):
        assert inputs == [schedule(step, 12)] * 6, step  # 2 attention + 4 nn.Dropout modules
    # the attributes have their values and types back
    assert type(net.drop.p) is float and net.drop.p == 0.1
    assert type(net.attn.dropout) is float and net.attn.dropout == 0.1
    assert type(net.encoder.self_attn.dropout) is float


@pytest.mark.compile
@pytest.mark.skipif(TENSOR_P_TRACEABLE, reason=NEW_DYNAMO)
def test_before_torch_2_6_a_compiled_fit_warns_and_never_recompiles(tmp_path: Path) -> None:
    graphs = {}
    for name, schedule in (("constant", Constant(0.2)), ("linear", Linear(0.0, 0.4))):
        torch._dynamo.reset()
        torch.manual_seed(0)
        net = TinyTransformer(p=0.1)
        backend = CountingBackend()
        model = LitClassifier(torch.compile(net, backend=backend))  # type: ignore[arg-type]
        expected = r"torch 2\.[45]\S* cannot compile the tensor-held p of the 6 driven"
        with pytest.warns(UserWarning, match=expected):
            fit(model, [DropoutScheduler(schedule)], tmp_path, max_epochs=3)
        graphs[name] = backend.graphs
    assert graphs["linear"] == graphs["constant"], graphs  # 12 values of p: no more graphs than 1 value
    assert type(net.drop.p) is float and net.drop.p == 0.1


@pytest.mark.compile
@pytest.mark.parametrize("traceable", [True, False])
@pytest.mark.parametrize("compiled", [True, False])
def test_warning_for_torch_before_2_6_only_when_the_model_is_compiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, traceable: bool, compiled: bool
) -> None:
    """Both sides on any torch: the warning depends on the version gate and on the model being compiled."""
    monkeypatch.setattr(dropout_module, "TENSOR_P_TRACEABLE", traceable)
    torch._dynamo.reset()
    net: nn.Module = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1), nn.Linear(8, 3))
    model = LitClassifier(torch.compile(net, backend="eager") if compiled else net)  # type: ignore[arg-type]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, [DropoutScheduler(Linear(0.0, 0.2))], tmp_path, max_steps=2)
    messages = [str(w.message) for w in caught if "cannot compile the tensor-held p" in str(w.message)]
    if compiled and not traceable:
        assert messages == [
            f"DropoutScheduler: torch {torch.__version__} cannot compile the tensor-held p of the 1 driven"
            " module(s) (net._orig_mod.1) into the model's graph (torch >= 2.6 can): torch.compile breaks"
            " the graph around each of them and runs them eagerly. A new p still never recompiles; for one"
            " graph, use torch>=2.6"
        ]
    else:
        assert messages == []


MODULES: dict[str, tuple[Callable[[], nn.Module], Callable[[Tensor], Any]]] = {
    "Dropout": (lambda: nn.Dropout(0.1), lambda x: x),
    "Dropout1d": (lambda: nn.Dropout1d(0.1), lambda x: x),
    "Dropout2d": (lambda: nn.Dropout2d(0.1), lambda x: x.unsqueeze(-1)),
    "Dropout3d": (lambda: nn.Dropout3d(0.1), lambda x: x[..., None, None]),
    "AlphaDropout": (lambda: nn.AlphaDropout(0.1), lambda x: x),
    "FeatureAlphaDropout": (lambda: nn.FeatureAlphaDropout(0.1), lambda x: x),
    "MultiheadAttention": (lambda: nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True), lambda x: x),
    "TransformerEncoderLayer": (lambda: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1), lambda x: x),
}


def call(module: nn.Module, x: Tensor) -> Tensor:
    if isinstance(module, nn.MultiheadAttention):
        return module(x, x, x, need_weights=False)[0]
    return module(x)


@pytest.mark.parametrize("name", list(MODULES))
def test_eager_output_and_grads_bit_identical_to_plain_dropout(name: str) -> None:
    make, shape = MODULES[name]
    torch.manual_seed(0)
    plain = make()
    driven = copy.deepcopy(plain)
    for target in find_dropout_modules(plain):
        target.set(0.35)
    drivers = drive(driven)
    for driver in drivers:
        driver.set(0.35)
    assert all(isinstance(getattr(d.target.module, d.target.attribute), Tensor) for d in drivers)
    results = []
    for module in (plain, driven):
        x = shape(torch.randn(6, 8, 8, generator=torch.Generator().manual_seed(1))).requires_grad_()
        torch.manual_seed(123)
        out = call(module, x)
        out.square().sum().backward()
        results.append((out, x.grad, [p.grad for p in module.parameters()]))
    (a, ga, pa), (b, gb, pb) = results
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert all(torch.equal(u, v) for u, v in zip(pa, pb, strict=True))
    with torch.no_grad():  # and the dropout really acted: the output is not the eval-mode one
        assert not torch.equal(a, call(plain.eval(), x.detach()))
        # code that calls forward() directly (no hooks) gets the tensor p: still the same output
        plain.train(), driven.train()
        x = x.detach()
        torch.manual_seed(5)
        direct = driven.forward(x, x, x, need_weights=False)[0] if "Multihead" in name else driven.forward(x)
        torch.manual_seed(5)
        assert torch.equal(direct, call(plain, x))


def test_fit_with_constant_schedule_trains_bit_identically_to_a_plain_model(tmp_path: Path) -> None:
    def train(p0: float, callbacks: list[Callback]) -> dict[str, Tensor]:
        torch.manual_seed(0)
        net = TinyTransformer(p=p0)
        pl.seed_everything(1, verbose=False)
        fit(LitClassifier(net), callbacks, tmp_path, max_epochs=1)
        return weights_of(net)

    plain = train(0.3, [])
    kit = train(0.1, [DropoutScheduler(Constant(0.3))])
    other = train(0.1, [])
    assert max_abs_diff(plain, kit) == 0.0
    assert max_abs_diff(plain, other) > 0.0  # p matters: the comparison can fail


def test_p_reads_like_a_number_during_fit_and_types_come_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyTransformer(p=0.1)
    net.drop.p = 0  # an int, as nn.Dropout(p=0) keeps it
    read: list[tuple[float, str, bool]] = []

    class Reader(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            p = net.drop.p
            read.append((float(p), f"{p:.2f}", bool(p > 0.05) and bool(net.attn.dropout < 1)))

    fit(LitClassifier(net), [DropoutScheduler(Constant(0.25)), Reader()], tmp_path, max_epochs=1)
    assert read == [(0.25, "0.25", True)] * BATCHES
    assert net.drop.p == 0 and type(net.drop.p) is int
    assert net.attn.dropout == 0.1 and type(net.attn.dropout) is float
    fit(LitClassifier(net), [DropoutScheduler(Constant(0.25), restore=False)], tmp_path, max_epochs=1)
    assert net.drop.p == 0.25 and type(net.drop.p) is float


@pytest.mark.parametrize(("feature", "alpha"), [(False, False), (True, False), (False, True), (True, True)])
def test_tensor_p_dropout_has_dropouts_distribution(feature: bool, alpha: bool) -> None:
    torch.manual_seed(0)
    p = 0.3
    x = torch.randn(400, 250, 4) if not alpha else F.selu(torch.randn(400, 250, 4) * 1.0)
    out = tensor_p_dropout(x, torch.tensor(p, dtype=torch.float64), feature=feature, alpha=alpha)
    if not alpha:
        dropped = out == 0
        assert abs(float(dropped.float().mean()) - p) < 0.01
        assert torch.equal(out[~dropped], x[~dropped] * (1 / (1 - torch.tensor(p)).float()))
    else:  # SELU self-normalisation kept: mean 0 and variance 1 before and after
        assert (
            abs(float(out.mean()) - float(x.mean())) < 0.02 and abs(float(out.std()) - float(x.std())) < 0.02
        )
    if feature:  # one draw per channel: a channel is dropped (or kept) along its whole length
        a = (_ALPHA**2 * p + 1) ** -0.5 * (1 - p) ** -0.5
        dropped = torch.isclose(out, torch.tensor(_ALPHA * a * (p - 1))) if alpha else out == 0
        assert (dropped.all(-1) | (~dropped).all(-1)).all() and dropped.any()
    assert tensor_p_dropout(x, torch.tensor(p), training=False) is x


@pytest.mark.compile
@pytest.mark.parametrize("need_weights", [False, True])
def test_compiled_attention_matches_eager_and_drops_at_rate_p(need_weights: bool) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, dropout=0.2, batch_first=True)
    [driver] = drive(mha)
    compiled = torch.compile(mha, backend="eager")
    x = torch.randn(3, 64, 16)
    mask = torch.zeros(3, 64, dtype=torch.bool)
    mask[0, -5:] = True
    with torch.no_grad():
        driver.set(0.0)
        reference = mha.eval()(x, x, x, key_padding_mask=mask, need_weights=need_weights)
        got = mha.train()(x, x, x, key_padding_mask=mask, need_weights=need_weights)  # eager
        compiled_out = compiled(x, x, x, key_padding_mask=mask, need_weights=need_weights)
        assert torch.allclose(got[0], reference[0], atol=1e-6)
        assert torch.allclose(compiled_out[0], reference[0], atol=1e-5)
        if need_weights:  # the returned weights are the dropped-out ones: zeros at rate p
            driver.set(0.5)
            weights = compiled(x, x, x, key_padding_mask=mask, need_weights=True, average_attn_weights=False)[
                1
            ]
            live = ~mask[:, None, None, :].expand_as(weights)
            assert abs(float((weights[live] == 0).float().mean()) - 0.5) < 0.02


# ----------------------------------------------------------------------------- validated state
def good_state() -> dict[str, Any]:
    return {"t": 7, "value": 0.2, "base": {"gen.2": 0.1}}


def corrupt(**change: Any) -> dict[str, Any]:
    state = good_state()
    for key, value in change.items():
        if value is KeyError:
            del state[key]
        else:
            state[key] = value
    return state


BAD_STATES: dict[str, tuple[Any, type[Exception], str]] = {
    "not-a-dict": ([7, 0.2], TypeError, r"checkpoint state must be a dict"),
    "unknown-key": ({**good_state(), "p": 0.3}, ValueError, r"unknown key\(s\) \['p'\]"),
    "t-missing": (corrupt(t=KeyError), ValueError, r"lacks the field\(s\) \['t'\]"),
    "t-str": (corrupt(t="7"), TypeError, r"field 't' must be an int >= 0 or None, got '7'"),
    "t-float": (corrupt(t=7.0), TypeError, r"field 't' must be an int"),
    "t-bool": (corrupt(t=True), TypeError, r"field 't' must be an int"),
    "t-negative": (corrupt(t=-3), ValueError, r"field 't' must be an int >= 0 or None, got -3"),
    "t-list": (corrupt(t=[7]), TypeError, r"field 't'"),
    "value-missing": (corrupt(value=KeyError), ValueError, r"lacks the field\(s\) \['value'\]"),
    "value-str": (corrupt(value="0.2"), TypeError, r"field 'value' must be a real number or None"),
    "value-tensor": (corrupt(value=torch.tensor([0.2])), TypeError, r"field 'value'"),
    "value-out-of-range": (corrupt(value=1.5), ValueError, r"field 'value' must be a drop probability"),
    "value-nan": (corrupt(value=math.nan), ValueError, r"field 'value'"),
    "value-without-t": (corrupt(t=None), ValueError, r"'t' and 'value' must both be None"),
    "base-missing": (corrupt(base=KeyError), ValueError, r"lacks the field\(s\) \['base'\]"),
    "base-list": (corrupt(base=[0.1]), TypeError, r"field 'base' must be a dict"),
    "base-key-int": (corrupt(base={3: 0.1}), TypeError, r"field 'base' must be a dict whose keys are module"),
    "base-value-str": (corrupt(base={"gen.2": "0.1"}), TypeError, r"field 'base' must map module names"),
    "base-value-nested": (corrupt(base={"gen.2": {"p": 0.1}}), TypeError, r"field 'base'"),
    "base-5.0": (
        corrupt(base={"gen.2": 5.0}),
        ValueError,
        r"field 'base' must hold drop probabilities .* 5.0",
    ),
    "base-negative": (corrupt(base={"gen.2": -0.1}), ValueError, r"field 'base' .* got -0.1"),
    "base-inf": (corrupt(base={"gen.2": math.inf}), ValueError, r"field 'base' .* got inf"),
}


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("ckpt")
    cb = DropoutScheduler(SCHEDULE)
    checkpoint = ModelCheckpoint(dirpath=root, save_last=True)
    fit(GanLike(), [cb, checkpoint], root, max_epochs=1, enable_checkpointing=True)
    return root / "last.ckpt", cb.state_key


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("case", list(BAD_STATES))
def test_corrupted_state_raises_at_load_and_never_reaches_training(
    case: str, saved_checkpoint: tuple[Path, str], tmp_path: Path
) -> None:
    bad, exc, match = BAD_STATES[case]
    with pytest.raises(exc, match=r"^DropoutScheduler: .*" + match):
        DropoutScheduler(SCHEDULE).load_state_dict(copy.deepcopy(bad))
    # the same state inside a checkpoint: fit stops while restoring, before any batch
    path, key = saved_checkpoint
    ckpt = torch.load(path, weights_only=True)
    ckpt["callbacks"][key] = bad
    torch.save(ckpt, tmp_path / "bad.ckpt")
    model = GanLike(p=0.1)
    batches: list[int] = []

    class Batches(Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            batches.append(batch_idx)

    cb = DropoutScheduler(SCHEDULE)
    with pytest.raises(exc, match=match):
        fit(model, [cb, Batches()], tmp_path, max_epochs=2, ckpt_path=str(tmp_path / "bad.ckpt"))
    assert batches == [] and model.gen[2].p == 0.1 and type(model.gen[2].p) is float


def test_valid_state_round_trips_and_older_forms_load(saved_checkpoint: tuple[Path, str]) -> None:
    path, key = saved_checkpoint
    state = torch.load(path, weights_only=True)["callbacks"][key]
    assert state == {"t": BATCHES - 1, "value": SCHEDULE(BATCHES - 1, BATCHES), "base": {"gen.2": 0.1}}
    cb = DropoutScheduler(SCHEDULE)
    cb.load_state_dict(copy.deepcopy(state))
    assert cb.state_dict() == state
    before_fit = {"t": None, "value": None, "base": {}}  # a checkpoint written before the first step
    cb.load_state_dict(before_fit)
    assert cb.state_dict() == before_fit
    cb.load_state_dict({"t": 3, "value": 0, "base": {"gen.2": 0}})  # ints for numbers: accepted
    assert cb.state_dict() == {"t": 3, "value": 0.0, "base": {"gen.2": 0.0}}
    # a base naming a module the selection does not drive (model changed): said, and ignored
    model = GanLike(p=0.1)
    cb.load_state_dict({"t": None, "value": None, "base": {"gen.2": 0.2, "gone.3": 0.3}})
    with pytest.warns(UserWarning, match=r"names module\(s\) \['gone.3'\] that this selection does not"):
        cb.on_fit_start(SimpleNamespace(callbacks=[cb]), model)  # type: ignore[arg-type]
    cb.teardown(SimpleNamespace(callbacks=[cb]), model, "fit")  # type: ignore[arg-type]
    assert model.gen[2].p == 0.2  # the checkpointed run's initial p comes back


# ----------------------------------------------------------------------------- reused instances
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_reused_instance_starts_afresh_from_each_model(
    record_dropout: Callable[[GanLike], GanLike], tmp_path: Path
) -> None:
    scale = Linear(1.0, 0.0)
    cb = DropoutScheduler(scale, mode="relative")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "a", save_last=True)
    first = record_dropout(GanLike(p=0.1))
    trainer = fit(first, [cb, checkpoint], tmp_path / "a", max_epochs=2, enable_checkpointing=True)
    assert first.per_batch() == {n: scale(n, 8) * 0.1 for n in range(8)}
    # the checkpoint's state is loaded into the instance by a validate run (no fit)
    trainer.validate(first, datamodule=SyntheticDataModule(), ckpt_path=str(tmp_path / "a" / "last.ckpt"))
    assert cb.state_dict()["base"] == {"gen.2": 0.1}

    second = record_dropout(GanLike(p=0.4))  # another model, another Trainer, no ckpt_path
    fit(second, [cb], tmp_path / "b", max_epochs=1)
    assert second.per_batch() == {n: scale(n, 4) * 0.4 for n in range(4)}  # base 0.4, t from 0
    assert second.gen[2].p == 0.4 and first.gen[2].p == 0.1  # each restored to its own initial p
    assert cb.state_dict() == {"t": 3, "value": scale(3, 4), "base": {"gen.2": 0.4}}

    third = record_dropout(GanLike(p=0.4))  # through ckpt_path the first run's state does carry over
    fit(third, [cb], tmp_path / "c", max_epochs=3, ckpt_path=str(tmp_path / "a" / "last.ckpt"))
    assert third.per_batch() == {n: scale(n, 12) * 0.1 for n in range(8, 12)}
    assert third.gen[2].p == 0.1  # the checkpointed run's initial p
