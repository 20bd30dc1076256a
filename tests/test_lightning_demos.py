"""The whole kit on Lightning's own example models, in both namespaces (issue 13).

Lightning's demo models (``BoringModel``, ``ManualOptimBoringModel``, ``demos.Transformer`` fed
synthetic tokens), a GAN-style two-optimizer module and a fine-tuning module with
``BackboneFinetuning`` train with ``SeedEverything``, ``WeightPenalty``, ``DropoutScheduler`` and
``EarlyStopping`` together, under ``lightning.pytorch`` and under ``pytorch_lightning``. Effects are
measured from outside the kit:

- the penalty: a probe callback on each side of ``WeightPenalty`` sees the gradient before and
  after it at every optimizer step; the difference is ``2 * l2 * W`` on the live weight matrices
  and exactly 0 on everything else (biases, norms, frozen weights);
- the dropout: a forward pre-hook reads ``p`` of every dropout module at each training forward;
  it equals the schedule at the step's progress.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

pytestmark = pytest.mark.integration  # whole fits through Lightning: make test, not make test-fast

L2_S = 0.01
EPOCHS, BATCHES = 2, 3


def namespaces(name: str) -> tuple[ModuleType, ModuleType]:
    """(Lightning's package, the kit's classes for it)."""
    if name == "lightning.pytorch":
        return importlib.import_module("lightning.pytorch"), importlib.import_module("lightning_regkit")
    return importlib.import_module("pytorch_lightning"), importlib.import_module(
        "lightning_regkit.pytorch_lightning"
    )


def build(case: str, pl: ModuleType) -> tuple[Any, DataLoader, list[Any]]:
    """(model, train loader, extra user callbacks) for one case, made of ``pl``'s own classes."""
    boring = importlib.import_module(f"{pl.__name__}.demos.boring_classes")
    demos = importlib.import_module(f"{pl.__name__}.demos")
    vectors = DataLoader(
        torch.randn(8 * BATCHES, 32), batch_size=8
    )  # batches are tensors, as BoringModel wants
    torch.manual_seed(0)

    def log_val(self: Any, out: Any) -> Any:
        self.log("val_loss", out["x"] if isinstance(out, dict) else out)
        return out

    if case == "BoringModel":

        class Boring(boring.BoringModel):
            def __init__(self) -> None:
                super().__init__()
                self.layer = nn.Sequential(nn.Linear(32, 16), nn.Dropout(0.1), nn.Linear(16, 2))

            def validation_step(self, batch: Any, batch_idx: int) -> Any:
                return log_val(self, super().validation_step(batch, batch_idx))

        return Boring(), vectors, []
    if case == "ManualOptimBoringModel":

        class Manual(boring.ManualOptimBoringModel):
            def __init__(self) -> None:
                super().__init__()
                self.layer = nn.Sequential(nn.Linear(32, 16), nn.Dropout(0.1), nn.Linear(16, 2))

            def validation_step(self, batch: Any, batch_idx: int) -> Any:
                return log_val(self, super().validation_step(batch, batch_idx))

        return Manual(), vectors, []
    if case == "Transformer":
        tokens = torch.randint(0, 50, (8 * BATCHES, 2, 6))

        class Synthetic(demos.LightningTransformer):
            """Lightning's transformer demo, fed synthetic tokens (its own data downloads WikiText2)."""

            def __init__(self) -> None:
                super().__init__(vocab_size=50)
                self.model = demos.Transformer(
                    vocab_size=50, ninp=16, nhead=2, nhid=16, nlayers=1, dropout=0.2
                )

            def prepare_data(self) -> None:
                pass

            def validation_step(self, batch: Any, batch_idx: int) -> Any:
                inputs, target = batch
                return log_val(self, torch.nn.functional.nll_loss(self(inputs, target), target.view(-1)))

        loader = DataLoader(TensorDataset(tokens[:, 0], tokens[:, 1]), batch_size=8)
        return Synthetic(), loader, []
    if case == "GAN":

        class GAN(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.automatic_optimization = False
                self.gen = nn.Sequential(nn.Linear(32, 32), nn.Dropout(0.1), nn.Linear(32, 32))
                self.disc = nn.Sequential(nn.Linear(32, 8), nn.Dropout(0.1), nn.Linear(8, 1))

            def training_step(self, batch: Tensor, batch_idx: int) -> None:
                g_opt, d_opt = self.optimizers()
                for _ in range(2):
                    fake = self.gen(batch).detach()
                    d_loss = self.disc(fake).mean() - self.disc(batch).mean()
                    d_opt.zero_grad()
                    self.manual_backward(d_loss)
                    d_opt.step()
                g_loss = -self.disc(self.gen(batch)).mean()
                g_opt.zero_grad()
                self.manual_backward(g_loss)
                g_opt.step()

            def validation_step(self, batch: Tensor, batch_idx: int) -> None:
                self.log("val_loss", self.disc(self.gen(batch)).mean())

            def configure_optimizers(self) -> Any:
                return [
                    torch.optim.Adam(self.gen.parameters(), 1e-3),
                    torch.optim.Adam(self.disc.parameters(), 1e-3),
                ]

        return GAN(), vectors, []
    assert case == "BackboneFinetuning"

    class FineTune(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(32, 16), nn.LayerNorm(16), nn.Dropout(0.1))
            self.head = nn.Linear(16, 2)

        def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
            return self.head(self.backbone(batch)).pow(2).mean()

        def validation_step(self, batch: Tensor, batch_idx: int) -> None:
            self.log("val_loss", self.head(self.backbone(batch)).pow(2).mean())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)

    finetuning = pl.callbacks.BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=1.0)
    return FineTune(), vectors, [finetuning]


def probes(pl: ModuleType) -> tuple[Any, Any]:
    class GradProbe(pl.Callback):
        """Snapshots every parameter's gradient at ``on_before_optimizer_step`` (its place in the list decides
        whether it runs before or after the kit's hook)."""

        def __init__(self) -> None:
            self.seen: list[dict[str, Any]] = []

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
            self.seen.append(
                {
                    n: (
                        p.detach().clone(),
                        None if p.grad is None else p.grad.detach().clone(),
                        p.requires_grad,
                        id(p) in owned,
                    )
                    for n, p in pl_module.named_parameters()
                }
            )

    return GradProbe(), GradProbe()


CASES = ["BoringModel", "ManualOptimBoringModel", "Transformer", "GAN", "BackboneFinetuning"]


@pytest.mark.slow
@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
@pytest.mark.parametrize("case", CASES)
def test_whole_kit_on_lightning_examples(tmp_path: Path, case: str, namespace: str) -> None:
    pl, kit = namespaces(namespace)
    from lightning_regkit.schedules import Linear

    model, loader, user = build(case, pl)
    before, after = probes(pl)
    schedule = Linear(0.3, 0.0)
    callbacks = [
        kit.SeedEverything(7),
        *user,
        before,
        kit.WeightPenalty(l2=L2_S),
        after,
        kit.DropoutScheduler(schedule),
        kit.EarlyStopping("val_loss", patience=5),
    ]
    seen_p: list[tuple[bool, list[float]]] = []
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops
    drops[0].register_forward_pre_hook(
        lambda m, args: seen_p.append((m.training, [float(d.p) for d in drops]))
    )
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
    )
    assert trainer.early_stopping_callback is callbacks[-1]
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.current_epoch == EPOCHS

    # the penalty, from the gradients seen on either side of it
    assert len(before.seen) == len(after.seen) > 0
    frozen_seen = False
    for b, a in zip(before.seen, after.seen, strict=True):
        for name, (w, g_before, trainable, owned) in b.items():
            g_after = a[name][1]
            frozen_seen |= not trainable
            if g_after is None:  # frozen, or not in this step's graph and not stepped: untouched
                assert g_before is None, name
                continue
            delta = g_after - (g_before if g_before is not None else 0)
            if w.ndim >= 2 and trainable and owned:  # the default selection, live at this step
                torch.testing.assert_close(delta, 2 * L2_S * w, rtol=1e-5, atol=1e-7)
            else:  # biases, norms, frozen weights, the other optimizer's weights: nothing added
                assert not delta.any(), name
    assert frozen_seen == (case == "BackboneFinetuning")

    # the dropout p seen by the model at each training forward follows the schedule of progress
    trained = [ps for training, ps in seen_p if training]
    n_batches = EPOCHS * BATCHES
    assert len(trained) % n_batches == 0 and trained
    for b, ps in enumerate(trained[:: len(trained) // n_batches]):
        assert ps == pytest.approx([schedule(b, n_batches)] * len(drops)), (b, ps)


# ----------------------------------------------------------------------------- LightningCLI, both namespaces
def cli_model(namespace: str) -> type:
    kit = namespaces(namespace)[1]

    class CliModel(kit.RegularizedModule):
        def __init__(self, width: int = 8, **penalty: Any) -> None:
            super().__init__(**penalty)
            self.net = nn.Sequential(nn.Linear(32, width), nn.Dropout(0.1), nn.Linear(width, 1))

        def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
            return self.net(batch).pow(2).mean()

        def validation_step(self, batch: Tensor, batch_idx: int) -> None:
            self.log("val_loss", self.net(batch).pow(2).mean())

        def train_dataloader(self) -> DataLoader:
            return DataLoader(torch.randn(16, 32), batch_size=8)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(torch.randn(8, 32), batch_size=8)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return CliModel


CLI_YAML = """
seed_everything: false
trainer:
  max_epochs: 2
  logger: false
  enable_progress_bar: false
  enable_checkpointing: false
  accelerator: cpu
  callbacks:
    - class_path: {kit}.SeedEverything
      init_args: {{seed: 3}}
    - class_path: {kit}.WeightPenalty
      init_args: {{l1: 1.0e-5, mode: autograd, interval: epoch}}
    - class_path: {kit}.DropoutScheduler
      init_args: {{schedule: 0.2, interval: step}}
    - class_path: {kit}.EarlyStopping
      init_args: {{monitor: val_loss, patience: 2}}
model:
  width: 4
"""


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_cli_yaml_names_every_kit_callback(
    tmp_path: Path, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    pl, kit = namespaces(namespace)
    cli_mod = importlib.import_module(f"{pl.__name__}.cli")
    config = tmp_path / "config.yaml"
    config.write_text(CLI_YAML.format(kit=kit.__name__))
    monkeypatch.setattr(sys, "argv", ["cli"])
    monkeypatch.chdir(tmp_path)
    cli = cli_mod.LightningCLI(
        cli_model(namespace), args=["fit", f"--config={config}"], save_config_callback=None
    )
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert {"SeedEverything", "WeightPenalty", "DropoutScheduler", "EarlyStopping"} <= set(names)
    penalty = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "WeightPenalty")
    assert isinstance(penalty, pl.Callback) and penalty.mode == "autograd" and penalty.interval == "epoch"
    assert isinstance(cli.trainer.early_stopping_callback, kit.EarlyStopping)
    assert cli.model.net[0].out_features == 4 and cli.trainer.current_epoch == 2
