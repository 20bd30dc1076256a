"""SeedEverything: same-seed runs, exact resume in a new process, recording, determinism, bad input."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import ddp_battery
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from helpers import (
    LitClassifier,
    SyntheticDataModule,
    classifier_cli,
    max_abs_diff,
    trainer_kwargs,
    weights_of,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_regkit.callbacks.seed import SeedEverything
from lightning_regkit.rng import capture_rng_state, restore_rng_state

# Runs in new processes (tests/ddp_battery.py). Single process (``seed_resume_single``, two launches):
# the first trains 3 epochs, with a checkpoint every epoch, with the callback and with plain Lightning;
# the second, a new process, resumes both runs from their checkpoint of epoch 0 to epoch 3 and trains
# the callback's run from scratch once more. The model has dropout, the loader shuffles, and 2 workers
# draw random augmentation (torch and NumPy) per sample, re-created each epoch. DDP (``seed_resume``,
# 2 ranks, both variants, in the suite's two DDP launches): the same with the callback only, and a
# CSVLogger.


def _checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = ddp_battery.single_resume_root(tmp_path_factory)
    load = lambda name: torch.load(root / name, weights_only=True)  # noqa: E731
    info = json.loads((root / "info.json").read_text())
    ckpt = root / "ckpt_True" / f"epoch={ddp_battery.SINGLE_AT - 1}.ckpt"
    return {
        "root": root,
        "ckpt": ckpt,
        "info": info,
        "kit_diff": max_abs_diff(load("full_True.pt"), load("resumed_True.pt")),
        "plain_diff": max_abs_diff(load("full_False.pt"), load("resumed_False.pt")),
        "same_seed_diff": max_abs_diff(load("full_True.pt"), load("full_again.pt")),
        "ckpt_diff": max_abs_diff(load("full_True.pt"), _checkpoint_weights(ckpt)),
    }


@pytest.mark.slow
def test_same_seed_in_two_processes_is_bit_identical(resume_runs: dict[str, Any]) -> None:
    assert resume_runs["same_seed_diff"] == 0.0


@pytest.mark.slow
def test_resume_in_new_process_is_bit_identical(resume_runs: dict[str, Any]) -> None:
    # it really resumed: from the checkpoint of epoch 0, training restarted at epoch 1 of 3
    assert resume_runs["ckpt"].is_file()
    assert resume_runs["info"]["start_epoch_True"] == ddp_battery.SINGLE_AT == 1
    assert resume_runs["ckpt_diff"] > 1e-3  # the checkpoint is not the end of the run
    print(f"max |w_resumed - w_uninterrupted| with SeedEverything: {resume_runs['kit_diff']}")
    assert resume_runs["kit_diff"] == 0.0


@pytest.mark.slow
def test_plain_lightning_resume_differs(resume_runs: dict[str, Any]) -> None:
    assert resume_runs["info"]["start_epoch_False"] == ddp_battery.SINGLE_AT
    print(f"max |w_resumed - w_uninterrupted| with plain Lightning: {resume_runs['plain_diff']}")
    assert resume_runs["plain_diff"] > 1e-3


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("variant", list(ddp_battery.RESUME_VARIANTS))
def test_ddp_resume_in_new_process_is_bit_identical(
    tmp_path_factory: pytest.TempPathFactory, variant: str
) -> None:
    per_rank = ddp_battery.RESUME_VARIANTS[variant]
    root = ddp_battery.battery_root(tmp_path_factory) / "seed_resume" / variant
    load = lambda name: torch.load(root / name, weights_only=True)  # noqa: E731
    ckpt = load(f"ckpt/epoch={ddp_battery.RESUME_AT - 1}.ckpt")
    assert ckpt["epoch"] == 0  # the resumed run (second launch) started from epoch 1 of 3
    state = ckpt["callbacks"]["SeedEverything"]
    hparams = yaml.safe_load(next((root / "full").rglob("hparams.yaml")).read_text())
    assert state["seed"] == hparams["seed"] == 11
    assert len(state["rng"]) == 2  # one RNG state per rank
    same_stream = torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    init = [load(f"full_init_rank{r}.pt") for r in (0, 1)]
    if per_rank:  # distinct per-rank streams, recorded in the logger and the checkpoint
        assert state["rank_seeds"] == hparams["rank_seeds"] == [11, 12]
        assert hparams["seed_per_rank"] is True
        assert not same_stream
        assert max_abs_diff(init[0], init[1]) > 0.0  # built after seed_now(rank): different draws
    else:  # by default every rank gets the same seed: identical initialisation and streams
        assert "rank_seeds" not in state and hparams["seed_per_rank"] is False
        assert same_stream
        assert max_abs_diff(init[0], init[1]) == 0.0
    full = load("full_rank0.pt")
    assert max_abs_diff(full, load("resumed_rank0.pt")) == 0.0
    assert max_abs_diff(full, ckpt["state_dict"]) > 0.0  # the checkpoint is not the end of the run
    # DDP keeps the ranks' weights equal: rank 1 (a new interpreter in each launch) ends the same
    assert max_abs_diff(load("full_rank1.pt"), load("resumed_rank1.pt")) == 0.0
    assert max_abs_diff(full, load("full_rank1.pt")) == 0.0


# ----------------------------------------------------------------------------- in process
def _fit(tmp_path: Path, seeder: SeedEverything, epochs: int = 1, **kwargs: Any) -> LitClassifier:
    seeder.seed_now()
    model = LitClassifier()
    kwargs.setdefault("callbacks", [seeder])
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=epochs, **kwargs))
    trainer.fit(model, SyntheticDataModule())
    return model


@pytest.mark.parametrize(("a", "b"), [(0, 1), (0, 2**32 - 1)])
def test_different_seeds_differ(tmp_path: Path, a: int, b: int) -> None:
    wa = weights_of(_fit(tmp_path, SeedEverything(a)))
    wb = weights_of(_fit(tmp_path, SeedEverything(b)))
    assert max_abs_diff(wa, wb) > 1e-3
    assert max_abs_diff(wa, weights_of(_fit(tmp_path, SeedEverything(a)))) == 0.0


class _Predicting(LitClassifier):
    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.net(batch[0])


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("kit", [True, False])
def test_seed_is_applied_at_setup_of_every_stage(tmp_path: Path, stage: str, kit: bool) -> None:
    """The callback seeds when the stage starts, whatever the global RNG did before (plain: no)."""
    draws: list[float] = []  # the first draw of each run

    class Draw(pl.Callback):
        def on_fit_start(self, *args: Any) -> None:
            if len(draws) < run:
                draws.append(torch.rand(1).item())

        on_validation_start = on_test_start = on_predict_start = on_fit_start

    for run in (1, 2):
        torch.manual_seed(run)  # a different global state before each run
        callbacks = [SeedEverything(5), Draw()] if kit else [Draw()]
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=callbacks))
        data = SyntheticDataModule()
        if stage == "predict":
            data.setup()
            trainer.predict(_Predicting(), DataLoader(data.val_set, batch_size=8))
        else:
            getattr(trainer, stage)(_Predicting(), data)
    assert len(draws) == 2
    assert (draws[0] == draws[1]) is kit


def test_seed_recorded_in_logger_and_checkpoint(tmp_path: Path) -> None:
    seeder = SeedEverything(1234)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    _fit(
        tmp_path,
        seeder,
        logger=CSVLogger(tmp_path, name="logs"),
        callbacks=[seeder, ckpt],
        enable_checkpointing=True,
    )
    hparams = yaml.safe_load(next((tmp_path / "logs").rglob("hparams.yaml")).read_text())
    assert hparams["seed"] == 1234
    assert hparams["seed_per_rank"] is False
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)  # plain data only
    state = checkpoint["callbacks"]["SeedEverything"]
    assert state["seed"] == 1234
    assert state["epoch_end"] is True
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}


def test_seed_none_draws_logs_and_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seeders = [SeedEverything(None), SeedEverything(None)]
    loggers = [CSVLogger(tmp_path, name=f"run{i}") for i in range(2)]
    with caplog.at_level("INFO"):
        for seeder, logger in zip(seeders, loggers, strict=True):
            trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[seeder], logger=logger))
            trainer.fit(LitClassifier(), SyntheticDataModule())
    seeds = [s.seed for s in seeders]
    assert all(isinstance(s, int) and 0 <= s <= 2**32 - 1 for s in seeds)
    assert seeds[0] != seeds[1]  # fresh draws (probability of a clash: 2**-32)
    assert f"drew seed {seeds[0]}" in caplog.text
    for seed, logger in zip(seeds, loggers, strict=True):
        assert yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())["seed"] == seed


@pytest.mark.parametrize("new_seed", [4, None])
def test_resume_adopts_recorded_seed(tmp_path: Path, new_seed: int | None) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="e1")
    seeder = SeedEverything(np.int64(3))  # NumPy integers are accepted
    _fit(tmp_path, seeder, callbacks=[seeder, ckpt], enable_checkpointing=True)
    other = SeedEverything(new_seed)
    logger = CSVLogger(tmp_path, name="resumed")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[other], logger=logger))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(LitClassifier(), SyntheticDataModule(), ckpt_path=tmp_path / "ckpt" / "e1.ckpt")
    mismatch = [w for w in caught if "recorded with seed=3 while seed=4" in str(w.message)]
    assert len(mismatch) == (1 if new_seed is not None else 0)
    assert other.seed == 3
    assert trainer.current_epoch == 2
    assert yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())["seed"] == 3


def test_mid_epoch_resume_warns(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=2, save_top_k=-1)
    seeder = SeedEverything(0)
    _fit(tmp_path, seeder, callbacks=[seeder, ckpt], enable_checkpointing=True)
    state = torch.load(tmp_path / "ckpt" / "step=2.ckpt", weights_only=True)["callbacks"]["SeedEverything"]
    assert state["epoch_end"] is False  # 4 batches per epoch: step 2 is mid-epoch
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[SeedEverything(0)]))
    with pytest.warns(UserWarning, match="mid-epoch"):
        trainer.fit(LitClassifier(), SyntheticDataModule(), ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [True, False])
def test_resume_with_persistent_workers_warns(tmp_path: Path, persistent: bool) -> None:
    """Draws inside persistent workers cannot be restored: the resume says so (and only then)."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="e1")
    seeder = SeedEverything(0)
    _fit(tmp_path, seeder, callbacks=[seeder, ckpt], enable_checkpointing=True)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[SeedEverything(0)]))
    data = SyntheticDataModule(num_workers=1, augment=0.1, persistent_workers=persistent)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(LitClassifier(), data, ckpt_path=tmp_path / "ckpt" / "e1.ckpt")
    assert trainer.current_epoch == 2  # it resumed from epoch 1
    warned = [w for w in caught if "resuming with persistent_workers=True" in str(w.message)]
    assert len(warned) == (1 if persistent else 0)


def test_rng_state_roundtrip_with_weights_only(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    torch.manual_seed(3)
    torch.save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.randn(3), torch.rand(3))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.randn(3), torch.rand(3))
    assert got[:2] == expected[:2]
    np.testing.assert_array_equal(got[2], expected[2])
    assert torch.equal(got[3], expected[3])


@pytest.mark.parametrize("bad", [{"foo": 1}, [], None])
def test_restore_rng_state_rejects_bad_state(bad: Any) -> None:
    with pytest.raises(ValueError, match="restore_rng_state: state must be a dict"):
        restore_rng_state(bad)


# ----------------------------------------------------------------------------- determinism
@pytest.fixture
def _restore_torch_flags() -> Any:
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.benchmark = flags[1]


@pytest.mark.usefixtures("_restore_torch_flags")
def test_deterministic_switch_uses_lightning_flags(tmp_path: Path) -> None:
    torch.use_deterministic_algorithms(False)
    _fit(tmp_path, SeedEverything(0, deterministic=True))
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.usefixtures("_restore_torch_flags")
def test_cudnn_benchmark_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="cudnn.benchmark=True"):
        _fit(tmp_path, SeedEverything(0), benchmark=True)


@pytest.mark.usefixtures("_restore_torch_flags")
def test_no_warning_in_a_reproducible_cpu_config(tmp_path: Path) -> None:
    torch.backends.cudnn.benchmark = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, SeedEverything(0))
    assert not [w for w in caught if "SeedEverything" in str(w.message)]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*32 - 1\].*got -1"),
        ({"seed": 2**32}, ValueError, r"seed must be in \[0, 2\*\*32 - 1\].*got 4294967296"),
        ({"seed": 1.5}, TypeError, r"seed must be an int or None, got 1.5"),
        ({"seed": "3"}, TypeError, r"seed must be an int or None, got '3'"),
        ({"seed": True}, TypeError, r"seed must be an int or None, got True"),
        ({"workers": "yes"}, TypeError, r"workers must be a bool"),
        ({"per_rank": 1}, TypeError, r"per_rank must be a bool"),
        ({"restore_rng": None}, TypeError, r"restore_rng must be a bool"),
        ({"deterministic": "always"}, ValueError, r"deterministic must be True, False, 'warn' or None"),
        ({"deterministic": 1}, ValueError, r"deterministic must be True, False, 'warn' or None"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match="SeedEverything: " + match):
        SeedEverything(**kwargs)


def test_per_rank_seed_overflow_names_argument() -> None:
    with pytest.raises(ValueError, match=r"SeedEverything: seed \+ rank \(per_rank=True\) must be in"):
        SeedEverything(2**32 - 1, per_rank=True).seed_now(rank=1)


@pytest.mark.usefixtures("_restore_torch_flags")
def test_conflicting_deterministic_raises(tmp_path: Path) -> None:
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, callbacks=[SeedEverything(0, deterministic=False)], deterministic=True)
    )
    with pytest.raises(
        ValueError, match=r"deterministic=False conflicts with .*Trainer\(deterministic=True\)"
    ):
        trainer.fit(LitClassifier(), SyntheticDataModule())


def test_two_seeders_raise(tmp_path: Path) -> None:
    """Lightning itself refuses two stateful callbacks with the same state_key."""
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `SeedEverything`"):
        pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[SeedEverything(0), SeedEverything(1)]))


# ----------------------------------------------------------------------------- LightningCLI
CLI_CONFIG = """
seed_everything: 42  # LightningCLI seeds before it builds the model: initial weights repeat
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  callbacks:
    - class_path: lightning_regkit.callbacks.seed.SeedEverything
      init_args:
        seed: 42
        deterministic: warn
"""


@pytest.mark.usefixtures("_restore_torch_flags")
def test_lightning_cli_yaml(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CLI_CONFIG)
    weights = []
    for _ in range(2):
        torch.manual_seed(123 + len(weights))  # whatever happened before the CLI
        cli = classifier_cli(config)
        seeders = [cb for cb in cli.trainer.callbacks if isinstance(cb, SeedEverything)]
        assert len(seeders) == 1
        assert (seeders[0].requested_seed, seeders[0].deterministic) == (42, "warn")
        weights.append(weights_of(cli.model))
    assert max_abs_diff(*weights) == 0.0


class GeneratorDataModule(SyntheticDataModule):
    """Shuffles with its own ``torch.Generator``, re-created at seed 0 by every ``train_dataloader`` call."""

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        g = torch.Generator().manual_seed(0)
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, generator=g
        )


@pytest.mark.parametrize("kit", [True, False])
def test_resume_restores_dataloader_generator(tmp_path: Path, kit: bool) -> None:
    def run(epochs: int, save: bool = False, **kwargs: Any) -> tuple[dict[str, torch.Tensor], pl.Trainer]:
        callbacks: list[pl.Callback] = (
            [ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="e")] if save else []
        )
        if kit:
            seeder = SeedEverything(0)
            seeder.seed_now()
            callbacks.append(seeder)
        else:
            pl.seed_everything(0, verbose=False)
        model = LitClassifier()
        trainer = pl.Trainer(
            **trainer_kwargs(tmp_path, max_epochs=epochs, callbacks=callbacks, enable_checkpointing=save)
        )
        trainer.fit(model, GeneratorDataModule(), **kwargs)
        return weights_of(model), trainer

    full, _ = run(3)
    half, _ = run(1, save=True)
    resumed, trainer = run(3, ckpt_path=tmp_path / "ckpt" / "e.ckpt")
    assert trainer.fit_loop.epoch_progress.current.processed == 3
    assert max_abs_diff(full, half) > 1e-3  # the checkpoint is the 1-epoch run's
    if kit:
        assert max_abs_diff(full, resumed) == 0.0
        state = torch.load(tmp_path / "ckpt" / "e.ckpt", weights_only=True)["callbacks"]["SeedEverything"]
        assert len(state["loader_generators"]) == 1
    else:
        assert max_abs_diff(full, resumed) > 1e-3
