"""End-to-end step time with every kit callback on versus off, measured side by side in one run.

Model: a small transformer classifier (token embedding, 2 ``nn.TransformerEncoderLayer`` with
d_model 64, 4 heads, feed-forward 128, dropout 0.1, mean pool, linear head; ~70k parameters),
sequences of 32 tokens, batch 32, AdamW, one CPU thread.

- **off**: a plain ``LightningModule`` with the same network and Trainer settings.
- **on**: the same network in a ``RegularizedModule`` with ``l1=1e-5`` and ``l2=Linear(1e-4,
  1e-5)`` (fast mode), plus ``SeedEverything``, ``DropoutScheduler(Linear(0.1, 0.05))`` (step
  interval: every dropout module and both attention dropouts updated each step; p stays > 0 so
  the dropout kernels cost the same as in the plain run) and
  ``EarlyStopping("val_loss", restore_best_weights=True)``.

Both runs validate once per epoch and log every 50 steps (Lightning's default). Each repeat
fits both configurations (in alternating order) for the same number of steps; the step time is
the wall time between consecutive ``on_train_batch_end`` calls within an epoch (data fetch,
forward, backward, every callback hook and the optimizer step; validation excluded). The whole
fit's wall time (validation, epoch-end work and the first step of each epoch included) is compared
per repeat too. The ratio is
``median(on) / median(off)`` over all steps of all repeats; the per-repeat ratios and the ratio
of 10th percentiles (the steps least disturbed by other processes on a shared machine) are printed
too. Target: <= 1.05.

Run: ``python benchmarks/kit_overhead.py [repeats] [steps]`` (about a minute with the defaults);
``--quick`` is a smoke run (the test suite's): one repeat of one epoch and a step (so that validation
and the epoch-end work run too), without the warm-up fits, so its first fits pay the warm-up costs.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_regkit.callbacks.dropout import DropoutScheduler
from lightning_regkit.callbacks.early_stopping import EarlyStopping
from lightning_regkit.callbacks.seed import SeedEverything
from lightning_regkit.module import RegularizedModule
from lightning_regkit.schedules import Linear

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
torch.set_num_threads(1)

VOCAB, SEQ, CLASSES, BATCH = 100, 32, 4, 32
STEPS_PER_EPOCH = 25


class TransformerClassifier(nn.Module):
    def __init__(self, d_model: int = 64, nhead: int = 4, layers: int = 2, p: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(torch.randn(SEQ, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, nhead, 2 * d_model, dropout=p, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(d_model, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(self.embed(x) + self.pos)
        return self.head(self.drop(h.mean(dim=1)))


class Steps:
    net: nn.Module
    log: Any

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=1e-3, weight_decay=0.0)


class Plain(Steps, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = TransformerClassifier()


class Kit(Steps, RegularizedModule):
    def __init__(self) -> None:
        super().__init__(l1=1e-5, l2=Linear(1e-4, 1e-5))
        self.net = TransformerClassifier()


class StepTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = None  # the first step of an epoch follows validation: not timed

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def data() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (STEPS_PER_EPOCH * BATCH, SEQ), generator=g)
    y = (x[:, :4].sum(dim=1) % CLASSES).long()
    train = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    val = DataLoader(TensorDataset(x[: 4 * BATCH], y[: 4 * BATCH]), batch_size=BATCH)
    return train, val


def run(kit: bool, steps: int) -> tuple[list[float], float]:
    """Step times of one fit, and the fit's whole wall time (validation and epoch ends included)."""
    torch.manual_seed(0)
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    if kit:
        callbacks += [
            SeedEverything(0),
            DropoutScheduler(Linear(0.1, 0.05)),
            EarlyStopping("val_loss", patience=100, restore_best_weights=True),
        ]
    model: pl.LightningModule = Kit() if kit else Plain()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir="/tmp/regkit_overhead",
    )
    train, val = data()
    t0 = time.perf_counter()
    trainer.fit(model, train, val)
    return timer.times, time.perf_counter() - t0


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    args = [a for a in sys.argv[1:] if a != "--quick"]
    repeats = 1 if quick else int(args[0]) if args else 6
    steps = STEPS_PER_EPOCH + 1 if quick else int(args[1]) if len(args) > 1 else 3 * STEPS_PER_EPOCH
    if not quick:
        run(False, STEPS_PER_EPOCH)  # warm-up: imports, allocator, thread pool
        run(True, STEPS_PER_EPOCH)
    times: dict[bool, list[float]] = {False: [], True: []}
    per_repeat: list[float] = []
    fit_ratios: list[float] = []
    for r in range(repeats):
        medians, fits = {}, {}
        for kit in (False, True) if r % 2 == 0 else (True, False):  # interleaved, alternating order
            t, fits[kit] = run(kit, steps)
            times[kit] += t
            medians[kit] = statistics.median(t)
        per_repeat.append(medians[True] / medians[False])
        fit_ratios.append(fits[True] / fits[False])
    on, off = statistics.median(times[True]), statistics.median(times[False])
    params = sum(p.numel() for p in TransformerClassifier().parameters())
    print(
        f"kit_overhead: transformer classifier ({params} parameters), batch {BATCH}x{SEQ}, "
        f"{repeats} interleaved repeats x {steps} steps, 1 CPU thread"
        + (" (--quick: a smoke run, no warm-up)" if quick else "")
    )
    print(f"step time median: kit off {off * 1e3:.2f} ms, kit on {on * 1e3:.2f} ms")
    print(
        "per-repeat ratios: "
        + ", ".join(f"{r:.3f}" for r in per_repeat)
        + f"  (median {statistics.median(per_repeat):.3f})"
    )
    p10 = {k: statistics.quantiles(v, n=10)[0] for k, v in times.items()}
    print(
        f"step time 10th percentile (least disturbed by other processes): kit off {p10[False] * 1e3:.2f} ms, "
        f"kit on {p10[True] * 1e3:.2f} ms, ratio {p10[True] / p10[False]:.3f}"
    )
    print(
        "whole fit wall time (setup, every step, validation, epoch-end work such as best-weight snapshots)"
        " kit on / off per repeat: "
        + ", ".join(f"{r:.3f}" for r in fit_ratios)
        + f"  (median {statistics.median(fit_ratios):.3f})"
    )
    ratio = on / off
    verdict = "OK" if ratio <= 1.05 else "OVER"
    print(f"ratio (kit on / kit off, median step time): {ratio:.3f}  target <= 1.05  {verdict}")


if __name__ == "__main__":
    main()
