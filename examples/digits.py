"""The digits data set (``sklearn.datasets.load_digits``) as a LightningDataModule, and an MLP.

Shared by the demo, the LightningCLI example, the notebook and the tests. The data ships with
scikit-learn: nothing is downloaded. 1797 8x8 images, 10 classes, split into train/val/test with a fixed seed.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regkit import RegularizedModule
from lightning_regkit.penalties import Penalty
from lightning_regkit.schedules import Schedule


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[Any, Any]:
    """The 1797 images and labels as NumPy arrays, read from scikit-learn's file once per process."""
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


class DigitsDataModule(pl.LightningDataModule):
    """Digits, standardized, split (train, val, test) with a fixed generator.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> len(dm.train_set), len(dm.val_set), len(dm.test_set)
        (1078, 359, 360)
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
        x_np, y_np = _load_digits()  # torch.tensor copies: the cached arrays are never changed
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


class DigitsSteps:
    """Steps, metrics and optimizer of the digits classifiers (a mixin, as ``ClassifierSteps`` in the tests).

    Mixed into ``pl.LightningModule`` (:class:`DigitsClassifier`) and into the kit's
    ``RegularizedModule`` (:class:`RegularizedDigitsClassifier`), so the two differ only in what
    the kit adds. Logs ``train_loss`` (epoch), ``val_loss``, ``val_acc`` (progress bar) and
    ``test_acc``. The subclass calls :meth:`_build` in its ``__init__`` after
    ``save_hyperparameters()``.
    """

    hparams: Any
    log: Callable[..., None]
    model: DigitsMLP
    val_acc: torchmetrics.Metric
    test_acc: torchmetrics.Metric

    def _build(self, hidden: int, dropout: float, optimizer: str) -> None:
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"{type(self).__name__}: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.model = DigitsMLP(hidden, dropout)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.test_acc(logits, y)
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.model.parameters()
        if self.hparams["optimizer"] == "sgd":
            return torch.optim.SGD(params, lr=self.hparams["lr"], momentum=0.9)
        return torch.optim.Adam(params, lr=self.hparams["lr"])


class DigitsClassifier(DigitsSteps, pl.LightningModule):
    """Plain LightningModule: cross-entropy, accuracy (torchmetrics), Adam or SGD (momentum 0.9).

    Example:
        >>> DigitsClassifier(hidden=32)(torch.zeros(2, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, hidden: int = 256, dropout: float = 0.0, lr: float = 1e-3, optimizer: str = "adam"
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._build(hidden, dropout, optimizer)


class RegularizedDigitsClassifier(DigitsSteps, RegularizedModule):
    """The same classifier on the kit's ``RegularizedModule``: L1/L2 penalties on the weight matrices.

    Every argument is typed, so LightningCLI exposes it (``--model.l2 1e-4``, or a schedule given
    by ``class_path`` in YAML). Biases are not penalized (the kit's default selection).

    Args:
        hidden: width of the two hidden layers.
        dropout: initial drop probability of both dropout layers (a ``DropoutScheduler`` may drive it).
        lr: learning rate.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
        l1: strength of ``l1 * sum(|w|)`` (a number or a ``Schedule``).
        l2: strength of ``l2 * sum(w**2)`` (a number or a ``Schedule``).
        penalties: further penalties (``L1(..., proximal=True)``, ``MaxNorm(3.0)``, ...).
        mode: ``"fast"``, ``"compiled"`` or ``"autograd"`` (see ``RegularizedModule``).
        interval: the schedules' time: ``"step"`` or ``"epoch"``.
        value_every_step: compute the penalty value at every step, not only on logging steps.

    Checkpoints hold plain hyperparameters only, so they load with ``torch.load(weights_only=True)``:
    ``penalties`` and a ``Schedule`` given as ``l1``/``l2`` are not saved there; pass them again to
    ``load_from_checkpoint``.

    Example:
        >>> m = RegularizedDigitsClassifier(hidden=32, l2=1e-4)
        >>> [p.name for p in m.penalties]
        ['l2']
    """

    def __init__(
        self,
        hidden: int = 256,
        dropout: float = 0.0,
        lr: float = 1e-3,
        optimizer: str = "adam",
        l1: float | Schedule = 0.0,
        l2: float | Schedule = 0.0,
        penalties: list[Penalty] | None = None,
        mode: str = "fast",
        interval: str = "step",
        value_every_step: bool = False,
    ) -> None:
        super().__init__(
            l1=l1, l2=l2, penalties=penalties, mode=mode, interval=interval, value_every_step=value_every_step
        )
        # checkpoints must load with torch.load(weights_only=True): keep only plain data in hparams
        schedules = [name for name, value in (("l1", l1), ("l2", l2)) if not isinstance(value, (int, float))]
        self.save_hyperparameters(ignore=["penalties", *schedules])
        self._build(hidden, dropout, optimizer)


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's ``state_dict`` (names, dtypes, shapes and raw bytes, in order).

    Equal hashes mean bit-identical weights.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> _ = b.load_state_dict(a.state_dict())
        >>> weights_sha256(a) == weights_sha256(b), len(weights_sha256(a))
        (True, 64)
    """
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
