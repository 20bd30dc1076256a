"""Each Lightning-private name the kit reads (``lightning_regkit/_compat.py``) against the installed
Lightning, in both namespaces: a release that moves one fails here, not silently in a run.

(The names ``SeedEverything`` reads are checked in ``tests/test_compat_seed.py``.)
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_regkit._compat import batches_completed, should_update_logs


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_batch_count_and_logging_steps_from_a_real_run(tmp_path: Path, namespace: str) -> None:
    pl = importlib.import_module(namespace)
    boring = importlib.import_module(f"{namespace}.demos.boring_classes")
    seen: list[tuple[int, int, bool]] = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            seen.append((batches_completed(trainer), trainer.global_step, should_update_logs(trainer)))

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            assert batches_completed(trainer) == seen[-1][0]  # the same count through the whole batch

    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=0,
        log_every_n_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Probe()],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(boring.BoringModel(), torch.utils.data.DataLoader(torch.randn(6, 32), batch_size=2))
    assert [s[0] for s in seen] == list(range(6))
    assert [s[2] for s in seen] == [(s[1] + 1) % 2 == 0 for s in seen]  # (step + 1) % log_every_n_steps == 0


def test_should_update_logs_without_a_trainer() -> None:
    assert should_update_logs(None) is True
