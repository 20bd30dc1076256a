"""RegularizedModule and WeightPenalty inside Lightning: equivalence with autograd and with SGD weight decay,
accumulation, clipping, bf16, manual optimization, LBFGS, DDP, proximal L1 (Lasso) and max-norm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ddp_battery
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    HAS_CXX,
    ClassifierSteps,
    LitClassifier,
    SyntheticDataModule,
    TinyMLP,
    max_abs_diff,
    trainer_kwargs,
    weights_of,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_regkit.compiled as compiled_kernels
from lightning_regkit.callbacks.weight_penalty import WeightPenalty
from lightning_regkit.module import RegularizedModule
from lightning_regkit.penalties import L1, L2, MaxNorm
from lightning_regkit.schedules import Linear


class RegClassifier(ClassifierSteps, RegularizedModule):
    """TinyMLP (no dropout, so runs compare exactly) trained with penalties."""

    def __init__(
        self, lr: float = 0.1, optimizer_name: str = "sgd", weight_decay: float = 0.0, **kw: Any
    ) -> None:
        super().__init__(**kw)
        torch.manual_seed(0)
        self.net = TinyMLP(p=0.0)
        self.lr, self.optimizer_name, self.weight_decay = lr, optimizer_name, weight_decay
        self.outputs: list[float] = []
        self.data_losses: list[float] = []
        self.last_data: list[float] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        self.data_losses.append(float(loss.detach()))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.outputs.append(float(outputs["loss"]) if outputs else float("nan"))
        self.last_data.append(self.data_losses[-1] if self.data_losses else float("nan"))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "lbfgs":
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4, line_search_fn="strong_wolfe")
        return torch.optim.SGD(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class PlainClassifier(RegClassifier):
    """The same model with no penalty (RegularizedModule with nothing configured)."""


def fit(
    model: pl.LightningModule, root: Path, dm: pl.LightningDataModule | None = None, **kw: Any
) -> pl.Trainer:
    kw.setdefault("max_epochs", 2)
    trainer = pl.Trainer(**trainer_kwargs(root, **kw))
    trainer.fit(model, dm or SyntheticDataModule(shuffle=False))
    return trainer


PEN = {"l1": 1e-3, "l2": 2e-2}


# ----------------------------------------------------------------------------- equivalences
@pytest.mark.compile
@pytest.mark.slow
def test_fast_autograd_callback_agree_and_returned_loss_includes_value(tmp_path: Path) -> None:
    runs = {}
    for mode in ("compiled", "autograd", "fast"):
        m = RegClassifier(mode=mode, **PEN)
        trainer = fit(m, tmp_path)
        runs[mode] = m
    plain = LitClassifier(TinyMLP(p=0.0))
    torch.manual_seed(0)
    plain.net = TinyMLP(p=0.0)
    fit(plain, tmp_path, callbacks=[(cb := WeightPenalty(**PEN))])
    fast, auto = weights_of(runs["fast"]), weights_of(runs["autograd"])
    assert max_abs_diff(fast, auto) < 1e-6
    assert max_abs_diff(fast, weights_of(runs["compiled"])) < 1e-6  # one torch.compile kernel, same gradient
    shapes = tuple(tuple(p.shape) for p in (m.net.fc1.weight, m.net.fc2.weight))
    ran = [key for key in compiled_kernels._KERNELS if tuple(x[0] for x in key[1]) == shapes]
    assert (ran and not compiled_kernels._FAILED) or not HAS_CXX  # it ran compiled, no fallback
    assert max_abs_diff(fast, weights_of(plain)) == 0.0  # the callback is the same core, bit for bit
    unpenalized = PlainClassifier()
    fit(unpenalized, tmp_path)
    assert max_abs_diff(fast, weights_of(unpenalized)) > 1e-3
    # log_every_n_steps=1: every step logs, so every returned loss holds the penalty value
    m = runs["fast"]
    metrics = trainer.callback_metrics
    assert {"regkit/l1", "regkit/l2", "regkit/penalty"} <= metrics.keys()
    extra = np.array(m.outputs) - np.array(m.data_losses)
    assert (extra > 0).all()
    assert extra[-1] == pytest.approx(float(metrics["regkit/penalty"]), rel=1e-3)
    np.testing.assert_allclose(runs["autograd"].outputs, m.outputs, rtol=1e-5)
    assert cb.plan is not None and cb.plan.names == [["net.fc1.weight", "net.fc2.weight"]] * 2


def test_fast_mode_value_only_on_logging_steps(tmp_path: Path) -> None:
    m = RegClassifier(**PEN)
    fit(m, tmp_path, max_epochs=1, log_every_n_steps=2)
    extra = np.array(m.outputs) - np.array(m.data_losses)
    assert (extra[1::2] > 0).all() and (extra[0::2] == 0).all()
    m = RegClassifier(value_every_step=True, **PEN)
    fit(m, tmp_path, max_epochs=1, log_every_n_steps=2)
    assert ((np.array(m.outputs) - np.array(m.data_losses)) > 0).all()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_l2_equals_sgd_weight_decay(tmp_path: Path, accumulate: int) -> None:
    lam = 0.05
    pen = RegClassifier(penalties=[L2(lam, exclude=[])])
    fit(pen, tmp_path, max_epochs=3, accumulate_grad_batches=accumulate)
    wd = PlainClassifier(weight_decay=2 * lam)
    fit(wd, tmp_path, max_epochs=3, accumulate_grad_batches=accumulate)
    plain = PlainClassifier()
    fit(plain, tmp_path, max_epochs=3, accumulate_grad_batches=accumulate)
    assert max_abs_diff(weights_of(pen), weights_of(wd)) < 1e-6
    assert max_abs_diff(weights_of(pen), weights_of(plain)) > 1e-2


def test_accumulation_counts_penalty_once_per_step(tmp_path: Path) -> None:
    fast = RegClassifier(**PEN)
    fit(fast, tmp_path, accumulate_grad_batches=2)
    auto = RegClassifier(mode="autograd", **PEN)
    fit(auto, tmp_path, accumulate_grad_batches=2)
    assert max_abs_diff(weights_of(fast), weights_of(auto)) < 1e-6
    # the penalty once per micro-batch would be twice as strong: clearly different weights
    twice = RegClassifier(l1=2 * PEN["l1"], l2=2 * PEN["l2"])
    fit(twice, tmp_path, accumulate_grad_batches=2)
    assert max_abs_diff(weights_of(fast), weights_of(twice)) > 1e-4


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_clipping_sees_penalized_gradient(tmp_path: Path, algorithm: str) -> None:
    kw = {"gradient_clip_val": 0.05, "gradient_clip_algorithm": algorithm}
    big = {"l1": 0.01, "l2": 0.5}
    fast = RegClassifier(**big)
    fit(fast, tmp_path, **kw)
    auto = RegClassifier(mode="autograd", **big)
    fit(auto, tmp_path, **kw)
    assert max_abs_diff(weights_of(fast), weights_of(auto)) < 1e-6

    class AfterClipping(RegClassifier):  # the penalty added after clipping instead: differs
        def configure_gradient_clipping(
            self, optimizer: Any, gradient_clip_val: Any = None, **k: Any
        ) -> None:
            for p in self.parameters():
                if p.grad is not None and p.ndim > 1:
                    p.grad.sub_(2 * big["l2"] * p.detach() + big["l1"] * p.detach().sign())
            self.clip_gradients(optimizer, gradient_clip_val, algorithm)
            for p in self.parameters():
                if p.grad is not None and p.ndim > 1:
                    p.grad.add_(2 * big["l2"] * p.detach() + big["l1"] * p.detach().sign())

    late = AfterClipping(**big)
    fit(late, tmp_path, **kw)
    assert max_abs_diff(weights_of(fast), weights_of(late)) > 1e-4


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision(tmp_path: Path, precision: str) -> None:
    def kw() -> dict[str, Any]:
        if precision == "bf16-mixed":
            return {"precision": precision}
        # Lightning turns "16-mixed" into bf16 on CPU; the plugin forces fp16 autocast with a GradScaler,
        # which unscales before on_before_optimizer_step: the penalty gradient is added in true units
        from lightning.pytorch.plugins.precision import MixedPrecision

        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        return {"plugins": [MixedPrecision("16-mixed", device="cpu", scaler=scaler)]}

    fast = RegClassifier(**PEN)
    fit(fast, tmp_path, **kw())
    auto = RegClassifier(mode="autograd", **PEN)
    fit(auto, tmp_path, **kw())
    plain = PlainClassifier()
    fit(plain, tmp_path, **kw())
    assert max_abs_diff(weights_of(fast), weights_of(auto)) < 1e-5
    assert max_abs_diff(weights_of(fast), weights_of(plain)) > 1e-3
    assert all(p.dtype == torch.float32 for p in fast.parameters())


# ------------------------------------------------------------------- manual, several optimizers, LBFGS
class ManualTwoOptimizers(RegClassifier):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.automatic_optimization = False

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        opt1, opt2 = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        if self._regkit.mode == "autograd":
            loss = loss + self.penalty_loss()
        opt1.zero_grad()
        opt2.zero_grad()
        self.manual_backward(loss)
        opt1.step()
        if batch_idx % 2 == 1:  # the second optimizer steps every other batch
            opt2.step()
        return loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:  # type: ignore[override]
        return [
            torch.optim.SGD(self.net.fc1.parameters(), lr=0.1),
            torch.optim.SGD([*self.net.norm.parameters(), *self.net.fc2.parameters()], lr=0.05),
        ]


def test_manual_optimization_several_optimizers(tmp_path: Path) -> None:
    fast = ManualTwoOptimizers(**PEN)
    fit(fast, tmp_path)
    auto = ManualTwoOptimizers(mode="autograd", **PEN)
    fit(auto, tmp_path)
    plain = ManualTwoOptimizers()
    fit(plain, tmp_path)
    assert max_abs_diff(weights_of(fast), weights_of(auto)) < 1e-6
    assert max_abs_diff(weights_of(fast), weights_of(plain)) > 1e-3


def test_lbfgs_closure_evaluated_several_times(tmp_path: Path) -> None:
    calls: dict[str, int] = {}
    runs = {}
    for mode in ("fast", "autograd"):
        m = RegClassifier(optimizer_name="lbfgs", mode=mode, **PEN)
        fit(m, tmp_path, max_epochs=1, log_every_n_steps=50)  # not a logging step: LBFGS still gets the value
        calls[mode] = len(m.data_losses)
        runs[mode] = m
    n_batches = 4
    assert calls["fast"] == calls["autograd"] > n_batches  # the closure ran several times per step
    assert max_abs_diff(weights_of(runs["fast"]), weights_of(runs["autograd"])) < 1e-5
    for m in runs.values():  # every closure returned loss + penalty, logging step or not
        assert (np.array(m.outputs) - np.array(m.last_data) > 1e-3).all()
    plain = PlainClassifier(optimizer_name="lbfgs")
    fit(plain, tmp_path, max_epochs=1)
    assert max_abs_diff(weights_of(runs["fast"]), weights_of(plain)) > 1e-3


# ------------------------------------------------------------------- return forms, schedules, logging
def test_epoch_interval_schedule(tmp_path: Path) -> None:
    def off_in_first_epoch(t: int, total: int | None) -> float:
        return 0.0 if t == 0 else 0.05

    by_epoch = RegClassifier(l2=off_in_first_epoch, interval="epoch")
    fit(by_epoch, tmp_path, max_epochs=1)
    by_step = RegClassifier(l2=off_in_first_epoch, interval="step")
    fit(by_step, tmp_path, max_epochs=1)
    plain = PlainClassifier()
    fit(plain, tmp_path, max_epochs=1)
    assert max_abs_diff(weights_of(by_epoch), weights_of(plain)) == 0.0
    assert max_abs_diff(weights_of(by_step), weights_of(plain)) > 1e-4


class ReturnForms(RegClassifier):
    def __init__(self, form: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.form = form

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        if self.form == "dict":
            return {"loss": loss, "extra": 1}
        if self.form == "none":
            return None
        return loss


@pytest.mark.parametrize("mode", ["fast", "autograd"])
def test_training_step_return_forms(tmp_path: Path, mode: str) -> None:
    as_tensor = ReturnForms("tensor", mode=mode, **PEN)
    fit(as_tensor, tmp_path, max_epochs=1)
    as_dict = ReturnForms("dict", mode=mode, **PEN)
    fit(as_dict, tmp_path, max_epochs=1)
    assert max_abs_diff(weights_of(as_tensor), weights_of(as_dict)) == 0.0
    assert as_tensor.outputs == as_dict.outputs
    skipped = ReturnForms("none", mode=mode, **PEN)
    before = weights_of(skipped)
    fit(skipped, tmp_path, max_epochs=1)
    assert max_abs_diff(before, weights_of(skipped)) == 0.0  # skipped batches: no penalty step either


def test_scheduled_strength_and_several_penalties_logged(tmp_path: Path) -> None:
    m = RegClassifier(
        penalties=[
            L2(Linear(0.0, 0.1), include=["net.fc1.*"]),
            L2(0.01, include=["net.fc2.*"]),
            MaxNorm(10.0),
        ]
    )
    trainer = fit(m, tmp_path, max_epochs=1)
    logged = trainer.callback_metrics
    assert {"regkit/l2_0", "regkit/l2_1", "regkit/penalty"} <= logged.keys()
    fc1 = float(m.net.fc1.weight.detach().pow(2).sum())
    # the last logging step is t = 3 of 4 steps: strength 0.075, weights before that step's update
    assert float(logged["regkit/l2_0"]) == pytest.approx(0.075 * fc1, rel=0.05)


def test_negative_schedule_fails_at_fit_start(tmp_path: Path) -> None:
    m = RegClassifier(l2=Linear(0.1, -0.1))
    with pytest.raises(
        ValueError, match=r"L2: strength schedule must yield a finite value >= 0, got -0.1 at t=8"
    ):
        fit(m, tmp_path)


def test_pattern_selecting_nothing_fails_at_setup(tmp_path: Path) -> None:
    m = RegClassifier(penalties=[L1(1e-3, include=["encoder.*"])])
    with pytest.raises(
        ValueError, match=r"L1: include pattern 'encoder\.\*' selects no parameter.*net\.fc1\.weight"
    ):
        fit(m, tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"l1": -1e-3},
            ValueError,
            r"RegClassifier: l1: L1: strength must be a finite number >= 0, got -0.001",
        ),
        ({"l2": float("inf")}, ValueError, r"RegClassifier: l2: L2: strength must be a finite number >= 0"),
        (
            {"mode": "exact"},
            ValueError,
            r"RegClassifier: mode must be one of \['fast', 'compiled', 'autograd'\], got 'exact'",
        ),
        ({"interval": "batch"}, ValueError, r"RegClassifier: interval must be one of"),
        (
            {"penalties": [{"name": "l0", "strength": 1}]},
            ValueError,
            r"penalties: .*unknown penalty name 'l0'",
        ),
        ({"penalties": L2(0.1)}, TypeError, r"RegClassifier: penalties must be a list"),
        ({"value_every_step": 1}, TypeError, r"RegClassifier: value_every_step must be a bool"),
    ],
)
def test_module_bad_arguments(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        RegClassifier(**kwargs)


def test_callback_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"WeightPenalty: no penalty given"):
        WeightPenalty()
    with pytest.raises(ValueError, match=r"WeightPenalty: l2: L2: strength must be a finite number >= 0"):
        WeightPenalty(l2=-1.0)


def test_checkpoint_loads_weights_only(tmp_path: Path) -> None:
    m = LitClassifier()
    trainer = fit(m, tmp_path, max_epochs=1, callbacks=[WeightPenalty(l2=1e-3)])
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # no penalty configuration or objects in the checkpoint
    assert not any(k.startswith("WeightPenalty") for k in ckpt["callbacks"])  # nothing to resume: no progress


# ----------------------------------------------------------------------------- proximal L1 and max-norm
class LinearRegression(RegularizedModule):
    def __init__(self, n_features: int, lr: float, **kw: Any) -> None:
        super().__init__(**kw)
        self.lin = nn.Linear(n_features, 1, dtype=torch.float64)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)
        self.lr = lr

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return 0.5 * F.mse_loss(self.lin(x).squeeze(-1), y)  # (1/2n)||y - Xw - b||^2, sklearn's scaling

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


@pytest.mark.slow
def test_proximal_l1_converges_to_lasso(tmp_path: Path) -> None:
    from sklearn.linear_model import Lasso

    g = torch.Generator().manual_seed(0)
    n, d, alpha = 200, 10, 0.1
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    coef = torch.tensor([2.0, -1.5, 0.0, 0.0, 1.0, 0.0, 0.05, 0.0, -0.08, 0.0], dtype=torch.float64)
    y = x @ coef + 0.3 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    lasso = Lasso(alpha=alpha, tol=1e-12, max_iter=100_000).fit(x.numpy(), y.numpy())
    loader = DataLoader(TensorDataset(x, y), batch_size=n)  # full batch: plain (proximal) gradient descent
    prox = LinearRegression(d, lr=0.5, penalties=[L1(alpha, proximal=True)])
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=150, max_epochs=None, log_every_n_steps=50))
    trainer.fit(prox, loader)
    w = prox.lin.weight.detach().squeeze(0).numpy()
    np.testing.assert_allclose(w, lasso.coef_, atol=1e-8)
    assert float(prox.lin.bias) == pytest.approx(lasso.intercept_, abs=1e-8)
    zeros = lasso.coef_ == 0
    assert zeros.sum() >= 4 and (w[zeros] == 0.0).all()  # exact zeros, as Lasso
    sub = LinearRegression(d, lr=0.5, l1=alpha)  # subgradient L1: no exact zeros
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_steps=150, max_epochs=None, log_every_n_steps=50))
    trainer.fit(sub, loader)
    assert (sub.lin.weight.detach() == 0).sum() == 0


def test_max_norm_constrains_rows(tmp_path: Path) -> None:
    c = 0.6
    m = RegClassifier(lr=0.5, penalties=[MaxNorm(c, include=["net.fc1.weight"])])
    fit(m, tmp_path)
    norms = m.net.fc1.weight.detach().norm(dim=1)
    assert (norms <= c * (1 + 1e-6)).all()
    assert (norms > c * (1 - 1e-6)).any()  # the constraint was active
    plain = PlainClassifier(lr=0.5)
    fit(plain, tmp_path)
    assert (plain.net.fc1.weight.detach().norm(dim=1) > c).any()


# ----------------------------------------------------------------------------- DDP
@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_two_processes_ranks_identical(tmp_path_factory: pytest.TempPathFactory) -> None:
    # ddp_battery.regularized_module (in the suite's DDP launch): L1 + L2 + proximal L1 + MaxNorm on
    # 2 ranks, 2 epochs, as the module in "fast" and "autograd" mode and as the WeightPenalty callback
    ranks = ddp_battery.load_ranks(tmp_path_factory, "regularized_module")
    w = {f"{mode}_rank{r}": ranks[r][mode] for mode in ("fast", "autograd", "callback") for r in (0, 1)}
    assert max_abs_diff(w["fast_rank0"], w["fast_rank1"]) == 0.0
    assert max_abs_diff(w["autograd_rank0"], w["autograd_rank1"]) == 0.0
    assert max_abs_diff(w["callback_rank0"], w["callback_rank1"]) == 0.0
    assert max_abs_diff(w["fast_rank0"], w["autograd_rank0"]) < 1e-6
    assert max_abs_diff(w["fast_rank0"], w["callback_rank0"]) == 0.0


# ----------------------------------------------------------------------------- LightningCLI
def test_configurable_from_lightning_cli_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr(sys, "argv", ["cli"])

    from lightning_regkit.penalties import Penalty
    from lightning_regkit.schedules import ScheduleLike

    class CLIModel(ClassifierSteps, RegularizedModule):
        def __init__(
            self, l1: ScheduleLike = 0.0, l2: ScheduleLike = 0.0, penalties: list[Penalty] | None = None
        ) -> None:
            super().__init__(l1=l1, l2=l2, penalties=penalties)
            self.net, self.lr, self.optimizer_name = TinyMLP(), 0.1, "sgd"

    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
model:
  l2: 0.001
  penalties:
    - class_path: lightning_regkit.penalties.L1
      init_args: {{strength: 0.0001, include: ["net.fc1.*"], proximal: true}}
    - class_path: lightning_regkit.penalties.MaxNorm
      init_args: {{max_norm: 3.0}}
trainer:
  max_epochs: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {tmp_path}
  callbacks:
    - class_path: lightning_regkit.callbacks.weight_penalty.WeightPenalty
      init_args:
        l1: 0.00001
        mode: autograd
        penalties:
          - class_path: lightning_regkit.penalties.L2
            init_args: {{strength: 0.0001, exclude: []}}
"""
    )
    cli = LightningCLI(
        CLIModel, SyntheticDataModule, run=False, args=["--config", str(config)], save_config_callback=None
    )
    assert [(type(p).__name__, p.include) for p in cli.model.penalties] == [
        ("L2", None),
        ("L1", ["net.fc1.*"]),
        ("MaxNorm", None),
    ]
    assert cli.model.penalties[1].proximal
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, WeightPenalty)]
    assert cb.mode == "autograd" and [p.name for p in cb.penalties] == ["l1", "l2"]
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cb.plan is not None and len(cb.plan.names[1]) == 6  # exclude=[]: every tensor of TinyMLP


# ----------------------------------------------------------------------------- README quick start
def test_readme_quickstart(tmp_path: Path) -> None:
    # Same code as the README section (which imports from the top-level package).
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F
    from torch import nn

    from lightning_regkit.callbacks.weight_penalty import WeightPenalty
    from lightning_regkit.module import RegularizedModule
    from lightning_regkit.penalties import L1, L2, MaxNorm

    class Classifier(RegularizedModule):
        def __init__(self) -> None:
            super().__init__(l1=1e-5, l2=1e-4)  # l1 * sum|w| + l2 * sum w**2; biases and norms excluded
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

        def training_step(self, batch, batch_idx):  # unchanged: returns the data loss
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(max_epochs=2, log_every_n_steps=1, logger=False, default_root_dir=tmp_path)
    trainer.fit(Classifier(), SyntheticDataModule())  # logs regkit/l1, regkit/l2 on logging steps
    assert {"regkit/l1", "regkit/l2"} <= trainer.callback_metrics.keys()

    # advanced: one strength and selection per penalty; or, without subclassing, the callback
    penalties = [L2(1e-4), L1(1e-5, include=["net.fc1.*"], proximal=True), MaxNorm(3.0, include=["*.weight"])]
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[WeightPenalty(penalties=penalties)],
    )
    trainer.fit(LitClassifier(), SyntheticDataModule())


def test_deepcopy_after_fit_drops_the_run_and_follows_copied_parameters(tmp_path: Path) -> None:
    import copy

    m = RegClassifier(**PEN)
    fit(m, tmp_path, max_epochs=1)
    assert m._regkit.plan is not None and not m._regkit._runs  # the run ended with its fit
    c = copy.deepcopy(m)
    assert c._regkit.plan is None and not c._regkit._runs
    fit(c, tmp_path, max_epochs=1)
    assert c._regkit.plan is not None and c._regkit.plan.params[0][0] is c.net.fc1.weight
