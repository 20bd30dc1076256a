"""The digits data set (``sklearn.datasets.load_digits``) as a LightningDataModule, and an MLP.

Shared by the demo, the notebook and the tests. The data ships with scikit-learn: nothing
is downloaded. 1797 8x8 images, 10 classes, split into train/val/test with a fixed seed.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


class DigitsDataModule(pl.LightningDataModule):
    """Digits, standardized, split (train, val, test) with a fixed generator.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> len(dm.train_set), len(dm.val_set), len(dm.test_set)
        (1077, 360, 360)
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        train_fraction: float = 0.6,
        val_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_fraction = train_fraction
        self.val_fraction = val_fraction
        self.split_seed = split_seed

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_digits

        x_np, y_np = load_digits(return_X_y=True)
        x = torch.tensor(x_np, dtype=torch.float32) / 16.0
        y = torch.tensor(y_np, dtype=torch.long)
        g = torch.Generator().manual_seed(self.split_seed)
        perm = torch.randperm(len(x), generator=g)
        n_train = int(len(x) * self.train_fraction)
        n_val = int(len(x) * self.val_fraction)
        tr, va, te = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
        mean, std = x[tr].mean(0), x[tr].std(0).clamp_min(1e-3)
        x = (x - mean) / std
        self.train_set = TensorDataset(x[tr], y[tr])
        self.val_set = TensorDataset(x[va], y[va])
        self.test_set = TensorDataset(x[te], y[te])

    def _loader(self, ds: TensorDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class DigitsMLP(nn.Module):
    """64 -> hidden -> hidden -> 10, with dropout after each hidden layer."""

    def __init__(self, hidden: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class DigitsClassifier(pl.LightningModule):
    """Plain LightningModule: cross-entropy, accuracy (torchmetrics), Adam or SGD."""

    def __init__(
        self, hidden: int = 256, dropout: float = 0.0, lr: float = 1e-3, optimizer: str = "adam"
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = DigitsMLP(hidden, dropout)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams["optimizer"] == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])
