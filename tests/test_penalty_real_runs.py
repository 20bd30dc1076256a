"""Penalties that follow the run as Lightning drives it (issue 13), measured from outside.

The models here have a data loss with zero gradient (``0 * out.sum()``), so the gradient an
optimizer sees is exactly the penalty's: ``2 * l2 * W`` on the parameters the penalty acts on at
that step, and 0 (or no gradient) everywhere else. A recording optimizer (a subclass of the
user's optimizer that snapshots weights and gradients inside ``step``, after Lightning's hooks and
the closure) observes it; nothing is read from the kit's own attributes or logs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import trainer_kwargs
from lightning.pytorch.callbacks import BackboneFinetuning, Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regkit import L1, L2, RegularizedModule, WeightPenalty
from lightning_regkit.schedules import Linear

pytestmark = pytest.mark.integration  # whole fits through Lightning: make test, not make test-fast

L2_S = 0.25
N_BATCHES = 4


def recording(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``cls`` that snapshots, inside ``step``, each parameter's weight and gradient before the update
    (after the closure: what the update really uses) and its weight after."""

    class Recording(cls):  # type: ignore[valid-type, misc]
        def __init__(self, named: dict[int, str], *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.named, self.records = named, []

        def step(self, closure: Any = None) -> Any:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            params = [p for g in self.param_groups for p in g["params"]]
            before = {
                self.named[id(p)]: (p.detach().clone(), None if p.grad is None else p.grad.detach().clone())
                for p in params
            }
            super().step()
            after = {self.named[id(p)]: p.detach().clone() for p in params}
            self.records.append((before, after))
            return loss

    return Recording


def data(n: int = 8 * N_BATCHES) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 6, generator=g)), batch_size=8)


class Net(pl.LightningModule):
    """backbone (Linear + LayerNorm) -> head; ``extra`` is a layer the scenarios add or freeze.

    ``scenario`` says how the trainable set changes during the run (see ``SCENARIOS``).
    """

    def __init__(
        self, scenario: str = "plain", optimizer: str = "sgd", mode: str = "fast", **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.scenario, self.optimizer_name = scenario, optimizer
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5))
        self.head = nn.Linear(5, 3)
        if scenario != "configure_model" and scenario != "setup":
            self.extra = nn.Linear(3, 3)
        if scenario == "unfreeze_mid_epoch":
            self.extra.requires_grad_(False)

    def configure_model(self) -> None:
        if self.scenario == "configure_model" and not hasattr(self, "extra"):
            torch.manual_seed(1)
            self.extra = nn.Linear(3, 3)

    def setup(self, stage: str) -> None:
        if self.scenario == "setup" and not hasattr(self, "extra"):
            torch.manual_seed(1)
            self.extra = nn.Linear(3, 3)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        out = self.extra(self.head(self.backbone(batch[0])))
        return 0.0 * out.sum()  # zero data gradient: what the optimizer sees is the penalty's

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        optimizer.zero_grad(set_to_none=self.scenario != "freeze_mid_epoch")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        named = {id(p): n for n, p in self.named_parameters()}
        if self.scenario == "finetuning":
            params = [p for p in self.parameters() if p.requires_grad]  # as Lightning's example does
        elif self.scenario == "add_param_group":
            params = [p for n, p in self.named_parameters() if not n.startswith("extra.")]
        else:
            params = list(self.parameters())
        if self.optimizer_name == "adam":
            return recording(torch.optim.Adam)(named, params, lr=1e-2)
        momentum = 0.0 if self.optimizer_name == "sgd0" else 0.9
        return recording(torch.optim.SGD)(named, params, lr=0.1, momentum=momentum)


class RegNet(RegularizedModule, Net):
    pass


class ChangeTrainableSet(Callback):
    """What a user's code does mid-epoch: unfreeze, freeze, or add a param group, at batch 2."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.total.completed != 2:
            return
        if self.scenario == "unfreeze_mid_epoch":
            pl_module.extra.requires_grad_(True)
        elif self.scenario == "freeze_mid_epoch":
            pl_module.extra.requires_grad_(False)
        elif self.scenario == "add_param_group":
            trainer.optimizers[0].add_param_group({"params": list(pl_module.extra.parameters())})


class Finetuning(BackboneFinetuning):
    """Lightning's BackboneFinetuning, unfreezing at epoch 1 with the same lr (no ramp)."""

    def __init__(self) -> None:
        super().__init__(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=1.0, should_align=False)


#: scenario -> (epochs, which weight tensors the penalty must act on at optimizer step k)
def live_weights(scenario: str, step: int) -> set[str]:
    weights = {"backbone.0.weight", "head.weight", "extra.weight"}
    if scenario == "finetuning":
        return weights - ({"backbone.0.weight"} if step < N_BATCHES else set())
    if scenario == "unfreeze_mid_epoch":
        return weights - ({"extra.weight"} if step < 2 else set())
    if scenario == "freeze_mid_epoch":
        return weights - ({"extra.weight"} if step >= 2 else set())
    if scenario == "add_param_group":
        return weights - ({"extra.weight"} if step < 2 else set())
    return weights


SCENARIOS = [
    "finetuning",
    "unfreeze_mid_epoch",
    "freeze_mid_epoch",
    "add_param_group",
    "configure_model",
    "setup",
]


def fit_and_records(
    tmp_path: Path, scenario: str, form: str, mode: str, optimizer: str, order: str = "kit_last", **pen: Any
) -> list[Any]:
    pen = pen or {"l2": L2_S}
    model = (
        RegNet(scenario, optimizer, mode, mode=mode, **pen)
        if form == "module"
        else Net(scenario, optimizer, mode)
    )
    user: list[Callback] = [Finetuning() if scenario == "finetuning" else ChangeTrainableSet(scenario)]
    kit: list[Callback] = [WeightPenalty(mode=mode, **pen)] if form == "callback" else []
    callbacks = user + kit if order == "kit_last" else kit + user
    epochs = 2 if scenario == "finetuning" else 1
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=epochs, callbacks=callbacks, limit_val_batches=0)
    )
    trainer.fit(model, train_dataloaders=data())
    return trainer.optimizers[0].records


def assert_penalty_gradients(records: list[Any], scenario: str, exact: bool) -> None:
    assert len(records) == (2 if scenario == "finetuning" else 1) * N_BATCHES
    for step, (before, _after) in enumerate(records):
        live = live_weights(scenario, step)
        assert live <= before.keys(), (step, live)
        for name, (w, g) in before.items():
            if name in live:
                expected = w * (2 * L2_S)
                assert g is not None, (step, name)
                if exact:
                    assert torch.equal(g, expected), (step, name, (g - expected).abs().max())
                else:
                    torch.testing.assert_close(g, expected, rtol=1e-6, atol=1e-7)
            else:  # not selected (bias, LayerNorm) or frozen: the kit adds nothing
                assert g is None or not g.any(), (step, name, g)
        if scenario == "freeze_mid_epoch" and step >= 2:
            # frozen, still in the optimizer, zero_grad(set_to_none=False): only momentum may move it, as
            # without the kit; the penalty added nothing to what the optimizer saw (checked above)
            assert before["extra.weight"][1] is not None


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize(
    ("form", "mode", "optimizer"),
    [
        ("module", "fast", "sgd"),
        ("callback", "fast", "adam"),
        ("module", "autograd", "adam"),
        ("callback", "autograd", "sgd"),
    ],
)
def test_penalty_follows_the_trainable_set(
    tmp_path: Path, scenario: str, form: str, mode: str, optimizer: str
) -> None:
    records = fit_and_records(tmp_path, scenario, form, mode, optimizer)
    assert_penalty_gradients(records, scenario, exact=mode == "fast")


@pytest.mark.parametrize("order", ["kit_first", "kit_last"])
@pytest.mark.parametrize("scenario", ["finetuning", "unfreeze_mid_epoch"])
def test_callback_order_does_not_matter(tmp_path: Path, scenario: str, order: str) -> None:
    records = fit_and_records(tmp_path, scenario, "callback", "fast", "sgd", order=order)
    assert_penalty_gradients(records, scenario, exact=True)


@pytest.mark.parametrize("mode", ["fast", "autograd"])
def test_weights_frozen_mid_epoch_do_not_move(tmp_path: Path, mode: str) -> None:
    """Frozen mid-epoch while still in a plain-SGD optimizer, with zero_grad(set_to_none=False): the
    weights stay exactly where they were (on main, fast mode moved them by the penalty)."""
    records = fit_and_records(tmp_path, "freeze_mid_epoch", "callback", mode, "sgd0")
    for step in range(2, N_BATCHES):
        before, after = records[step]
        assert torch.equal(before["extra.weight"][0], after["extra.weight"]), step
    assert not torch.equal(
        records[1][0]["extra.weight"][0], records[1][1]["extra.weight"]
    )  # penalized before


# ----------------------------------------------------------------------------- selection errors
class BuiltInConfigureModel(pl.LightningModule):
    def configure_model(self) -> None:
        if not hasattr(self, "net"):
            self.net = nn.Linear(6, 3)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self.net(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_model_built_in_configure_model_is_penalized_and_patterns_checked_then(tmp_path: Path) -> None:
    model = BuiltInConfigureModel()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[WeightPenalty(l2=0.5)]))
    trainer.fit(model, train_dataloaders=data())  # no "selects no trainable parameter" at setup
    with pytest.raises(
        ValueError, match=r"WeightPenalty: L2: include pattern 'encoder\.\*' selects no parameter"
    ):
        pl.Trainer(
            **trainer_kwargs(
                tmp_path, max_epochs=1, callbacks=[WeightPenalty(penalties=[L2(0.5, include=["encoder.*"])])]
            )
        ).fit(BuiltInConfigureModel(), train_dataloaders=data())


def test_frozen_backbone_is_no_selection_error(tmp_path: Path) -> None:
    """Selection is judged on names: a penalty on a backbone frozen for the whole run is no error."""
    model = Net("plain")
    model.backbone.requires_grad_(False)
    cb = WeightPenalty(penalties=[L2(0.5, include=["backbone.*"])])
    pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[cb])).fit(model, train_dataloaders=data())
    assert all(r[0]["backbone.0.weight"][1] is None for r in model.trainer.optimizers[0].records)


# ----------------------------------------------------------------------------- one clock
class GAN(pl.LightningModule):
    """Two optimizers, manual optimization; the discriminator steps ``d_steps`` times per batch."""

    def __init__(self, d_steps: int = 5, **kw: Any) -> None:
        super().__init__(**kw)
        self.automatic_optimization = False
        self.d_steps = d_steps
        torch.manual_seed(0)
        self.gen = nn.Linear(6, 6)
        self.disc = nn.Linear(6, 1)
        self.batches: list[int] = []

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self.batches.append(self.current_epoch * self.trainer.num_training_batches + batch_idx)
        g_opt, d_opt = self.optimizers()
        for _ in range(self.d_steps):
            d_opt.zero_grad()
            self.manual_backward(0.0 * self.disc(self.gen(batch[0]).detach()).sum())
            d_opt.step()
        g_opt.zero_grad()
        self.manual_backward(0.0 * self.disc(self.gen(batch[0])).sum())
        g_opt.step()

    def configure_optimizers(self) -> Any:
        named = {id(p): n for n, p in self.named_parameters()}
        sgd = recording(torch.optim.SGD)
        return [sgd(named, self.gen.parameters(), lr=0.01), sgd(named, self.disc.parameters(), lr=0.01)]


class RegGAN(RegularizedModule, GAN):
    pass


def strength_seen(record: Any, name: str) -> float:
    """The L2 strength s with grad = 2 s W, from what the optimizer saw."""
    w, g = record[0][name]
    return float((g * w).sum() / (2 * (w * w).sum()))


@pytest.mark.parametrize("form", ["module", "callback"])
@pytest.mark.parametrize("mode", ["fast", "autograd"])
def test_manual_two_optimizers_schedule_follows_batches(tmp_path: Path, form: str, mode: str) -> None:
    """Discriminator 5 steps and generator 1 step per batch: the strength at every step of batch b is
    schedule(b / total_batches), with total_batches = 4 x 2 epochs (global_step would run 6x fast)."""
    schedule = Linear(0.0, 1.0)
    pen: dict[str, Any] = {"l2": schedule, "mode": mode}
    model = RegGAN(**pen) if form == "module" else GAN()
    cbs = [WeightPenalty(**pen)] if form == "callback" else []
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=cbs))
    trainer.fit(model, train_dataloaders=data())
    total = 2 * N_BATCHES
    g_rec, d_rec = (o.records for o in trainer.optimizers)
    assert len(g_rec) == total and len(d_rec) == 5 * total and model.batches == list(range(total))
    for b in range(total):
        expected = schedule(b, total)
        assert strength_seen(g_rec[b], "gen.weight") == pytest.approx(expected, abs=1e-6), b
        for k in range(5):
            assert strength_seen(d_rec[5 * b + k], "disc.weight") == pytest.approx(expected, abs=1e-6), (b, k)


@pytest.mark.parametrize(
    ("overrides", "total"),
    [({"max_epochs": 2}, 8), ({"max_epochs": 3, "accumulate_grad_batches": 2}, 6), ({"max_steps": 5}, 5)],
)
def test_automatic_step_clock(tmp_path: Path, overrides: dict[str, Any], total: int) -> None:
    """Automatic optimization: t counts optimizer steps (accumulation included), total is the run's."""
    schedule = Linear(0.0, 1.0)
    model = RegNet("plain", "sgd", l2=schedule)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, **overrides, limit_val_batches=0))
    trainer.fit(model, train_dataloaders=data())
    records = trainer.optimizers[0].records
    assert len(records) == min(total, trainer.global_step)
    for t, rec in enumerate(records):
        assert strength_seen(rec, "head.weight") == pytest.approx(schedule(t, total), abs=1e-6), t


def test_epoch_interval_and_zero_epochs(tmp_path: Path) -> None:
    schedule = Linear(0.0, 1.0)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, limit_val_batches=0))
    model = RegNet("plain", l2=schedule, interval="epoch")
    trainer.fit(model, train_dataloaders=data())
    seen = [strength_seen(r, "head.weight") for r in trainer.optimizers[0].records]
    assert seen == pytest.approx([0.0] * N_BATCHES + [0.5] * N_BATCHES, abs=1e-6)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=0))  # nothing runs, nothing fails
    trainer.fit(RegNet("plain", l2=schedule), train_dataloaders=data())
    assert trainer.global_step == 0


def test_schedule_of_progress_as_a_plain_function(tmp_path: Path) -> None:
    """``l2=lambda progress: ...`` (one argument) is a function of progress; three arguments fail at once."""
    model = RegNet("plain", l2=lambda progress: 0.5 * progress)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0))
    trainer.fit(model, train_dataloaders=data())
    seen = [strength_seen(r, "head.weight") for r in trainer.optimizers[0].records]
    assert seen == pytest.approx([0.5 * t / N_BATCHES for t in range(N_BATCHES)], abs=1e-6)
    with pytest.raises(TypeError, match=r"l2: .*callable of one argument.*takes 3 positional"):
        WeightPenalty(l2=lambda a, b, c: 0.1)


# ----------------------------------------------------------------------------- numerics
class Big(pl.LightningModule):
    def __init__(self, dtype: torch.dtype = torch.float16, sparse: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.big = nn.Parameter(torch.ones(4096, 4096, dtype=dtype))
        self.emb = nn.Embedding(10, 4, sparse=sparse)
        self.losses: list[float] = []

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        idx = (batch[0][:, 0].abs() * 3).long() % 10
        return (self.big[0, :6].to(batch[0].dtype) * batch[0]).sum() * 0 + self.emb(idx).sum() * 0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class RegBig(RegularizedModule, Big):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "autograd"])
def test_fp16_penalty_value_does_not_overflow(tmp_path: Path, mode: str) -> None:
    """L1(1e-5) of a 4096x4096 float16 weight of ones is 167.77; float16 sums overflow at 65504."""
    model = RegBig(penalties=[L1(1e-5, include=["big"])], mode=mode, value_every_step=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1, precision="16-true"))
    trainer.fit(model, train_dataloaders=data())
    assert model.losses == pytest.approx([1e-5 * 4096 * 4096], rel=1e-3)


def test_sparse_embedding_gradient_is_made_dense_as_autograd_would(tmp_path: Path) -> None:
    grads, weights = {}, {}
    for mode in ("fast", "autograd"):
        torch.manual_seed(0)
        model = RegBig(torch.float32, sparse=True, penalties=[L2(0.5, include=["emb.*"])], mode=mode)
        model.big.requires_grad_(False)

        class Probe(Callback):
            def __init__(self, mode: str) -> None:
                self.mode = mode

            def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
                grads[self.mode] = pl_module.emb.weight.grad.clone()
                weights[self.mode] = pl_module.emb.weight.detach().clone()

        probe = Probe(mode)
        model.configure_callbacks = lambda model=model, probe=probe: [model._regkit, probe]  # type: ignore[misc]
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1))
        if mode == "fast":
            with pytest.warns(UserWarning, match=r"'emb.weight' has a sparse gradient.*exclude"):
                trainer.fit(model, train_dataloaders=data())
        else:
            trainer.fit(model, train_dataloaders=data())
    assert grads["fast"].layout == torch.strided
    torch.testing.assert_close(grads["fast"], grads["autograd"].to_dense())
    torch.testing.assert_close(grads["fast"], weights["fast"])  # 2 * 0.5 * W, data gradient 0
    assert torch.equal(weights["fast"], weights["autograd"])


@pytest.mark.parametrize("proximal", [False, True])
def test_complex_parameters(proximal: bool) -> None:
    from lightning_regkit.penalties import resolve_penalties

    torch.manual_seed(0)
    net = nn.Linear(3, 4).to(torch.complex64)
    plan = resolve_penalties([L1(0.1, proximal=proximal), L2(0.2)], net)
    if proximal:
        w = net.weight.detach().clone()
        plan.project_(0, None, torch.optim.SGD(net.parameters(), lr=1.0))
        shrunk = w * torch.clamp(1 - 0.1 / w.abs(), min=0)
        torch.testing.assert_close(net.weight.detach(), shrunk)
        return
    net.weight.grad = torch.zeros_like(net.weight)
    plan.add_grads_(0)
    fast = net.weight.grad.clone()
    net.weight.grad = None
    plan.loss(0).backward()
    torch.testing.assert_close(fast, net.weight.grad)


# ----------------------------------------------------------------------------- hooks only
@pytest.mark.compile
@pytest.mark.slow
def test_callback_leaves_the_compiled_wrapper_in_place(tmp_path: Path) -> None:
    model = Net("plain")
    compiled = torch.compile(model, backend="eager")
    for _ in range(2):
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[WeightPenalty(l2=0.5)]))
        trainer.fit(compiled, train_dataloaders=data())
        assert "training_step" in vars(model)  # Lightning's compiled training_step, not deleted


def test_callback_adds_no_attribute_to_the_module(tmp_path: Path) -> None:
    """The module's attributes after a fit with the callback are those after the same fit without it."""
    attrs = []
    for callbacks in ([], [WeightPenalty(l2=0.5)]):
        model = Net("plain")
        pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=callbacks)).fit(
            model, train_dataloaders=data()
        )
        attrs.append({k: type(v) for k, v in vars(model).items()})
    assert attrs[0] == attrs[1] and "training_step" not in attrs[1]


class LBFGSNet(Net):
    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        loss = F.mse_loss(self.head(self.backbone(batch[0])), torch.ones(len(batch[0]), 3))
        self.data_losses.append(float(loss))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.data_losses: list[float] = []
        opt = torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=3)
        self.closure_losses: list[float] = []
        step = opt.step

        def recorded_step(closure: Any) -> Any:
            def wrapped() -> Any:
                loss = closure()
                self.closure_losses.append(float(loss))
                self.weights_sq.append(
                    float(
                        sum(
                            (p.detach() ** 2).sum()
                            for n, p in self.named_parameters()
                            if n in ("backbone.0.weight", "head.weight", "extra.weight")
                        )
                    )
                )
                return loss

            return step(wrapped)

        self.weights_sq: list[float] = []
        opt.step = recorded_step  # type: ignore[method-assign]
        return opt


class RegLBFGSNet(RegularizedModule, LBFGSNet):
    pass


def test_lbfgs_sees_the_penalty_in_the_module_form_and_the_callback_refuses_it(tmp_path: Path) -> None:
    model = RegLBFGSNet("plain", l2=0.1)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=2, limit_val_batches=0))
    trainer.fit(model, train_dataloaders=data())
    assert len(model.closure_losses) > 2  # the line search re-evaluated the closure
    for loss, data_loss, sq in zip(model.closure_losses, model.data_losses, model.weights_sq, strict=True):
        assert loss == pytest.approx(data_loss + 0.1 * sq, rel=1e-5)
    with pytest.raises(ValueError, match=r"WeightPenalty: torch.optim.LBFGS .* Use the module form"):
        pl.Trainer(**trainer_kwargs(tmp_path, max_steps=1, callbacks=[WeightPenalty(l2=0.1)])).fit(
            LBFGSNet("plain"), train_dataloaders=data()
        )


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("form", ["module", "callback"])
@pytest.mark.parametrize("mode", ["fast", "autograd"])
def test_scheduled_strength_does_not_recompile(tmp_path: Path, form: str, mode: str) -> None:
    """A Linear strength takes a new value at each of 16 steps: the number of graphs Dynamo compiles
    is the same as for 2 steps (no guard on the strength), far below Dynamo's recompile limit of 8."""
    graphs = []
    for steps in (2, 16):
        count = 0

        def backend(gm: Any, example_inputs: Any) -> Any:
            nonlocal count
            count += 1
            return gm.forward

        torch._dynamo.reset()
        pen: dict[str, Any] = {"l2": Linear(0.01, 1.0), "mode": mode}
        model = RegNet("plain", **pen) if form == "module" else Net("plain")
        cbs = [WeightPenalty(**pen)] if form == "callback" else []
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=steps, callbacks=cbs, log_every_n_steps=3))
        trainer.fit(torch.compile(model, backend=backend), train_dataloaders=data(8 * 16))
        graphs.append(count)
    assert graphs[0] == graphs[1] and 0 < graphs[1] < 8, graphs


# ----------------------------------------------------------------------------- mixin order, manual autograd
class Base(pl.LightningModule):
    def __init__(self, width: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(6, width)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return 0.0 * self.net(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return recording(torch.optim.SGD)(
            {id(p): n for n, p in self.named_parameters()}, self.parameters(), lr=0.1
        )


class KitFirst(RegularizedModule, Base):
    def __init__(self) -> None:
        super().__init__(width=4, l2=L2_S)


class KitLast(Base, RegularizedModule):
    def __init__(self) -> None:
        super().__init__(width=4, l2=L2_S)


class KitLastExplicit(Base, RegularizedModule):
    def __init__(self) -> None:
        Base.__init__(self, width=4)
        RegularizedModule.__init__(self, l2=L2_S)  # after the module is built: configures the kit only


@pytest.mark.parametrize("cls", [KitFirst, KitLast, KitLastExplicit])
def test_mixin_order_does_not_matter(tmp_path: Path, cls: type) -> None:
    model = cls()
    assert model.net.out_features == 4 and [p.name for p in model.penalties] == ["l2"]
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=2))
    trainer.fit(model, train_dataloaders=data())
    for before, _ in trainer.optimizers[0].records:
        w, g = before["net.weight"]
        assert torch.equal(g, w * (2 * L2_S))


def test_callback_autograd_mode_under_manual_optimization(tmp_path: Path) -> None:
    """Without any penalty_loss() call, WeightPenalty(mode="autograd") adds the gradient at each step."""
    model = GAN(d_steps=1)
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=1, callbacks=[WeightPenalty(l2=L2_S, mode="autograd")])
    )
    trainer.fit(model, train_dataloaders=data())
    for opt, name in zip(trainer.optimizers, ("gen.weight", "disc.weight"), strict=True):
        assert len(opt.records) == N_BATCHES
        for rec in opt.records:
            assert strength_seen(rec, name) == pytest.approx(L2_S, rel=1e-6)


def test_penalty_loss_under_manual_optimization_is_not_counted_twice(tmp_path: Path) -> None:
    class AddsPenaltyLoss(RegGAN):
        def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
            g_opt, _ = self.optimizers()
            g_opt.zero_grad()
            self.manual_backward(0.0 * self.gen(batch[0]).sum() + self.penalty_loss())
            g_opt.step()

    model = AddsPenaltyLoss(l2=L2_S, mode="autograd")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(model, train_dataloaders=data())
    for rec in trainer.optimizers[0].records:
        assert strength_seen(rec, "gen.weight") == pytest.approx(L2_S, rel=1e-6)
    assert math.isfinite(float(model.penalty_loss()))


# ----------------------------------------------------------------------------- trainer configurations
class GradDelta(Callback):
    """Two of these, one on each side of the kit, see the gradient before and after its hook."""

    def __init__(self) -> None:
        self.seen: list[dict[str, tuple[Tensor, Tensor | None]]] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.seen.append(
            {
                n: (p.detach().clone(), None if p.grad is None else p.grad.clone())
                for n, p in pl_module.named_parameters()
            }
        )


class Learns(Net):
    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self.extra(self.head(self.backbone(batch[0]))).pow(2).mean()

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.extra(self.head(self.backbone(batch[0]))).pow(2).mean())


@pytest.mark.parametrize(
    "overrides",
    [
        {"precision": "bf16-mixed"},
        {"accumulate_grad_batches": 2},
        {"val_check_interval": 0.5},
        {"check_val_every_n_epoch": 2, "max_epochs": 2},
        {"callbacks": "swa"},
    ],
    ids=["bf16", "accumulation", "val_check_interval", "every_n_epochs", "swa"],
)
def test_penalty_gradient_under_trainer_configurations(tmp_path: Path, overrides: dict[str, Any]) -> None:
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    before, after = GradDelta(), GradDelta()
    extra = (
        [StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1)]
        if overrides.pop("callbacks", None)
        else []
    )
    kwargs = {"max_epochs": 2 if extra else 1, **overrides}
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, callbacks=[*extra, before, WeightPenalty(l2=L2_S), after], **kwargs)
    )
    trainer.fit(Learns("plain"), train_dataloaders=data(), val_dataloaders=data())
    assert len(before.seen) == len(after.seen) == trainer.global_step > 0
    for b, a in zip(before.seen, after.seen, strict=True):
        for name, (w, g) in b.items():
            delta = a[name][1] - g  # type: ignore[operator]
            expected = w * (2 * L2_S) if name.endswith("weight") and w.ndim == 2 else torch.zeros_like(w)
            torch.testing.assert_close(delta, expected, rtol=1e-6, atol=1e-8)


def test_nested_trainer_reusing_the_callback_keeps_the_outer_penalty(tmp_path: Path) -> None:
    """A WeightPenalty reused by a Trainer started inside another's fit: the outer run keeps its penalty."""
    cb = WeightPenalty(l2=L2_S)

    class Nested(Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            inner = pl.Trainer(**trainer_kwargs(tmp_path / "inner", max_steps=1, callbacks=[cb]))
            inner.fit(Net("plain"), train_dataloaders=data())

    model = Net("plain")
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=1, callbacks=[Nested(), cb], limit_val_batches=0)
    )
    trainer.fit(model, train_dataloaders=data())
    records = trainer.optimizers[0].records
    assert len(records) == N_BATCHES
    for before, _ in records:
        w, g = before["head.weight"]
        assert torch.equal(g, w * (2 * L2_S))


def test_unknown_length_gives_no_total(tmp_path: Path) -> None:
    """An iterable loader without a length and max_steps=-1: total is unknown, so a schedule of progress
    refuses at the start (before any step) instead of running at progress 1 from step 0."""

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self) -> Any:
            return iter([torch.randn(8, 6) for _ in range(3)])

    model = RegNet("plain", l2=Linear(0.0, 1.0))
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, limit_val_batches=0))
    with pytest.raises(ValueError, match="needs the length of training"):
        trainer.fit(model, train_dataloaders=DataLoader(Stream(), batch_size=None))
    assert trainer.optimizers[0].records == []
