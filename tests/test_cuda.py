"""Checks that need a CUDA GPU (marked ``cuda``; skipped without one). ``make gpu-check`` runs them
with the penalty benchmark on the GPU; they are written to run with whatever Python and torch the
GPU machine has (the package on ``PYTHONPATH``), skipping what is missing there (e.g. torchdata).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

pl = pytest.importorskip("lightning.pytorch")


def loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(torch.randn(n, 16, generator=g), batch_size=8, shuffle=True)


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.2), nn.Linear(32, 1))

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        noise = torch.randn_like(batch)  # drawn from the CUDA generator: resumed only if its state is
        return self.net(batch + 0.1 * noise).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(tmp_path: Path, epochs: int, ckpt: str | None = None, save: bool = False, **extra: Any) -> Net:
    from lightning_regkit import SeedEverything

    model = Net()
    callbacks: list[Any] = [SeedEverything(3), *extra.pop("callbacks", [])]
    if save:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1))
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=save,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        **extra,
    )
    trainer.fit(model, loader(), ckpt_path=ckpt)
    return model


def test_cuda_rng_state_makes_resume_exact(tmp_path: Path) -> None:
    full = fit(tmp_path / "full", 4)
    fit(tmp_path / "half", 2, save=True)
    ckpts = sorted((tmp_path / "half").glob("*.ckpt"))
    resumed = fit(tmp_path / "resumed", 4, ckpt=str(ckpts[-1]))
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_penalty_gradient_under_mixed_precision(tmp_path: Path, precision: str) -> None:
    from lightning_regkit import WeightPenalty

    seen: list[tuple[Tensor, Tensor, Tensor]] = []

    class Before(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            w = pl_module.net[0].weight
            self.g = w.grad.detach().clone()

    class After(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            w = pl_module.net[0].weight
            seen.append((w.detach().clone(), before.g, w.grad.detach().clone()))

    before = Before()
    fit(tmp_path, 1, precision=precision, callbacks=[before, WeightPenalty(l2=0.5), After()])
    assert seen
    for w, g0, g1 in seen:
        if torch.isfinite(g0).all():  # a step GradScaler skips has inf gradients: nothing to compare
            torch.testing.assert_close(g1 - g0, w * 1.0, rtol=1e-5, atol=1e-6)


def test_compiled_penalty_kernel_equals_foreach() -> None:
    from lightning_regkit.penalties import L1, L2, resolve_penalties

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 512), nn.Linear(512, 64)).cuda()
    grads = {}
    for compiled in (False, True):
        for p in net.parameters():
            p.grad = torch.ones_like(p)
        plan = resolve_penalties([L1(1e-3), L2(1e-2)], net, compiled=compiled)
        plan.add_grads_(0)
        grads[compiled] = [p.grad.clone() for p in net.parameters()]
    for a, b in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_early_stopping_snapshot_of_gpu_weights_is_on_cpu_and_restored(tmp_path: Path) -> None:
    from lightning_regkit import EarlyStopping

    class Logged(Net):
        def validation_step(self, batch: Tensor, batch_idx: int) -> None:
            self.log("val_loss", -float(self.current_epoch == 1))  # epoch 1 is the best

        def on_validation_epoch_end(self) -> None:
            if self.current_epoch == 1:
                self.at_best = copy.deepcopy({k: v.detach().cpu() for k, v in self.state_dict().items()})

    stopper = EarlyStopping("val_loss", patience=5, restore_best_weights=True)
    model = Logged()
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        callbacks=[stopper],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, loader(), loader(16))
    snapshot = stopper.state_dict().get("best_weights") or stopper._best_weights
    assert snapshot and all(v.device.type == "cpu" for v in snapshot.values())
    for k, v in model.state_dict().items():
        assert v.is_cuda and torch.equal(v.cpu(), model.at_best[k])
