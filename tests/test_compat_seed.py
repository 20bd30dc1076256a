"""The Lightning-private names SeedEverything reads, through ``lightning_regkit._compat``.

Each function is checked against a real fit in both namespaces (``lightning.pytorch`` and
``pytorch_lightning``): a Lightning release that moves or renames one of them fails here.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from helpers import ClassifierSteps, SyntheticDataModule, TinyMLP, trainer_kwargs
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_regkit import _compat

NAMESPACES = ["lightning.pytorch", "pytorch_lightning"]


def _probe_fit(namespace: str, tmp_path: Any, **trainer_args: Any) -> list[tuple[str, int, dict[str, Any]]]:
    """Fit 2 epochs of 4 batches, recording what the compat functions say at each hook."""
    pl = importlib.import_module(namespace)
    seen: list[tuple[str, int, dict[str, Any]]] = []

    class Probe(pl.Callback):  # type: ignore[misc,name-defined]
        def _record(self, hook: str, trainer: Any) -> None:
            seen.append(
                (
                    hook,
                    trainer.global_step,
                    {
                        "processed": _compat.epochs_processed(trainer),
                        "marked": _compat.epoch_marked_processed(trainer),
                        "last": _compat.is_last_batch(trainer),
                    },
                )
            )

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            before = torch.get_rng_state()
            seen.append(("recreate", 0, {"done": _compat.recreate_train_iterator(trainer)}))
            # a new DataLoader iterator draws its workers' base seed from the global generator
            seen.append(("new_iterator", 0, {"new": not torch.equal(torch.get_rng_state(), before)}))

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            self._record("batch_end", trainer)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                self._record("validation_end", trainer)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self._record("train_epoch_end", trainer)

    class Model(ClassifierSteps, pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net, self.lr, self.optimizer_name = TinyMLP(), 0.1, "sgd"

    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[Probe()], **trainer_args))
    data = SyntheticDataModule()
    data.setup()
    trainer.fit(Model(), DataLoader(data.train_set, batch_size=16, shuffle=True), DataLoader(data.val_set))
    return seen


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_loop_progress_readers_follow_the_fit(namespace: str, tmp_path: Any) -> None:
    seen = _probe_fit(namespace, tmp_path, limit_val_batches=2)
    assert seen[0] == ("recreate", 0, {"done": True})
    assert seen[1] == ("new_iterator", 0, {"new": True})
    expected = []
    for epoch in (0, 1):
        for step in range(4 * epoch + 1, 4 * epoch + 5):
            last = step == 4 * epoch + 4
            expected.append(("batch_end", step, {"processed": epoch, "marked": False, "last": last}))
        expected.append(
            ("validation_end", 4 * epoch + 4, {"processed": epoch, "marked": False, "last": True})
        )
        expected.append(
            ("train_epoch_end", 4 * epoch + 4, {"processed": epoch + 1, "marked": True, "last": True})
        )
    assert seen[2:] == expected


def test_recreate_train_iterator_before_the_loop_has_one() -> None:
    from types import SimpleNamespace

    assert (
        _compat.recreate_train_iterator(SimpleNamespace(fit_loop=SimpleNamespace(_data_fetcher=None)))
        is False
    )


def test_set_sampler_epoch_reaches_sampler_and_batch_sampler() -> None:
    data = TensorDataset(torch.zeros(8))
    sampler = DistributedSampler(data, num_replicas=2, rank=0)
    _compat.set_sampler_epoch(DataLoader(data, sampler=sampler), 4)
    assert sampler.epoch == 4
    batch_sampler = torch.utils.data.BatchSampler(DistributedSampler(data, num_replicas=2, rank=1), 2, False)
    _compat.set_sampler_epoch(DataLoader(data, batch_sampler=batch_sampler), 7)
    assert batch_sampler.sampler.epoch == 7  # type: ignore[attr-defined]


@pytest.fixture
def _restore_torch_flags() -> Any:
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.benchmark = flags[2]


@pytest.mark.usefixtures("_restore_torch_flags")
@pytest.mark.parametrize(
    ("value", "enabled", "warn_only"), [(True, True, False), ("warn", True, True), (False, False, False)]
)
def test_set_torch_flags_is_lightnings_deterministic_switch(
    value: Any, enabled: bool, warn_only: bool
) -> None:
    torch.backends.cudnn.benchmark = True
    _compat.set_torch_flags(value)
    assert torch.are_deterministic_algorithms_enabled() is enabled
    assert torch.is_deterministic_algorithms_warn_only_enabled() is warn_only
    if value:
        assert torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_restart_stage_and_where_a_checkpoint_was_written(namespace: str, tmp_path: Any) -> None:
    """Lightning >= 2.5 completes a batch checkpointed in on_train_batch_end on resume; 2.4 lags one."""
    from packaging.version import Version

    pl = importlib.import_module(namespace)
    checkpoint_cls = importlib.import_module(f"{namespace}.callbacks").ModelCheckpoint
    package = importlib.import_module(namespace.split(".")[0])

    class Probe(pl.Callback):  # type: ignore[misc,name-defined]
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.at_start = (
                _compat.tracks_restart_stage(trainer),
                _compat.written_in_train_batch_end(trainer),
                _compat.lightning_version(trainer),
            )
            self.batch_idx: list[int] = []

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.batch_idx.append(batch_idx)

    class Model(ClassifierSteps, pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net, self.lr, self.optimizer_name = TinyMLP(), 0.1, "sgd"

    def fit(ckpt_path: Any = None, save: bool = False) -> Probe:
        probe = Probe()
        callbacks: list[Any] = [probe]
        if save:
            callbacks.append(
                checkpoint_cls(tmp_path / "steps", filename="{step}", every_n_train_steps=2, save_top_k=-1)
            )
        epochs = 1 if save else 2  # the checkpoint written after the fit resumes into a second epoch
        args = dict(max_epochs=epochs, limit_val_batches=0, callbacks=callbacks, enable_checkpointing=save)
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, **args))
        data = SyntheticDataModule()
        data.setup()
        trainer.fit(Model(), DataLoader(data.train_set, batch_size=16), ckpt_path=ckpt_path)
        if save:
            trainer.save_checkpoint(tmp_path / "after_fit.ckpt")  # written outside any batch
        return probe

    tracks = Version(package.__version__) >= Version("2.5")
    assert fit(save=True).at_start == (tracks, False, package.__version__)
    mid = fit(tmp_path / "steps" / "step=2.ckpt")  # in on_train_batch_end of batch 1 (0-based) of 4
    assert mid.at_start == (tracks, True, package.__version__)
    assert mid.batch_idx[0] == (2 if tracks else 1)  # Lightning 2.4 counts batch 1 as not done
    assert fit(tmp_path / "after_fit.ckpt").at_start == (tracks, False, package.__version__)
