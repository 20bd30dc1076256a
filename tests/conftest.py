"""Pytest fixtures on top of :mod:`helpers` (the shared tiny models, data and Trainer settings).

Test files import helpers directly (``from helpers import TinyMLP``); nothing imports this file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import SyntheticDataModule, TinyMLP, TinyTransformer, trainer_kwargs


@pytest.fixture
def make_trainer(tmp_path: Path) -> Callable[..., pl.Trainer]:
    """Factory: ``make_trainer(max_epochs=3, callbacks=[...])`` -> fast CPU Trainer in tmp_path."""

    def factory(**overrides: Any) -> pl.Trainer:
        return pl.Trainer(**trainer_kwargs(tmp_path, **overrides))

    return factory


@pytest.fixture
def tiny_mlp() -> TinyMLP:
    torch.manual_seed(0)
    return TinyMLP()


@pytest.fixture
def tiny_transformer() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer()


@pytest.fixture
def synthetic_dm() -> SyntheticDataModule:
    return SyntheticDataModule()


@pytest.fixture
def digits_dm() -> Any:
    from digits import DigitsDataModule

    return DigitsDataModule(batch_size=64)


@pytest.fixture(autouse=True)
def _isolated_seed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep global seeding environment variables from leaking between tests."""
    for var in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(var, raising=False)
