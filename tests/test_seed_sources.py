"""SeedEverything's sources of randomness (issue 16): each source varies alone, the default is unchanged.

Measured from outside: the initial weights (the model's state right after it is built), the batch
order (the sample indices each training step receives), the dropout masks (what ``nn.Dropout``
zeroes in each step) and the augmentation drawn in ``Dataset.__getitem__`` (in worker processes or
in the main process), recorded by the model while it trains.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import ddp_battery
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from helpers import classifier_cli, max_abs_diff, trainer_kwargs, weights_of
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_regkit.callbacks.seed import SeedEverything, check_seed_state
from lightning_regkit.rng import WorkerRNGDataset
from lightning_regkit.sources import SOURCES, SourceSeeds, parse_vary, source_seed

N = 32  # samples; batches of 8: 4 steps per epoch
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


class Indexed(Dataset):
    """Sample ``i`` is ``(i, noise)``, ``noise`` drawn in ``__getitem__`` (where it runs): torch and NumPy."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.rand(3) + torch.from_numpy(np.random.uniform(size=3)).float()
        return torch.tensor(i), noise


class ProbeSteps:
    """Records the batch order, the dropout masks and each sample's augmentation; trains a little.

    A mixin (as ``ClassifierSteps`` in helpers) so that both namespaces' ``LightningModule`` can use it.
    """

    training: bool
    log: Any

    def _build(self) -> None:
        # dropout before the ReLU: its input is never exactly 0, so a 0 in its output is a dropped unit
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 1))
        self.order: list[list[int]] = []
        self.masks: list[torch.Tensor] = []
        self.noise: dict[int, list[torch.Tensor]] = {}
        self.net[1].register_forward_hook(self._mask)

    def _mask(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        if self.training:
            self.masks.append(out == 0)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        idx, noise = batch
        self.order.append(idx.tolist())
        for i, x in zip(idx.tolist(), noise, strict=True):
            self.noise.setdefault(i, []).append(x)
        return self.net(noise + idx[:, None] / N).pow(2).mean()  # the sample and its augmentation

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.net(batch[1]).pow(2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net.parameters(), lr=0.1)


class Probe(ProbeSteps, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self._build()


def observe(model: Probe, init: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {
        "init": init,
        "order": model.order,
        "masks": torch.stack(model.masks),
        "noise": {i: torch.stack(v) for i, v in sorted(model.noise.items())},
        "final": weights_of(model),
    }


class Loaders(pl.LightningDataModule):
    """A new shuffled DataLoader at every ``train_dataloader`` call (as datamodules usually do)."""

    def __init__(self, workers: int = 0) -> None:
        super().__init__()
        self.workers = workers
        self.calls = 0

    def train_dataloader(self) -> DataLoader:
        self.calls += 1
        return DataLoader(Indexed(), batch_size=8, shuffle=True, num_workers=self.workers)


def fit(tmp_path: Path, seeder: SeedEverything, workers: int = 0, **trainer_args: Any) -> dict[str, Any]:
    seeder.seed_now()  # before the model is built: the init source
    model = Probe()
    init = weights_of(model)
    trainer_args.setdefault("max_epochs", 2)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[seeder], **trainer_args))
    data = Loaders(workers)
    trainer.fit(model, data)
    reloads = bool(trainer_args.get("reload_dataloaders_every_n_epochs"))
    assert data.calls == (trainer_args["max_epochs"] if reloads else 1)
    return observe(model, init)


def differs(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    """Which observables differ between two runs."""
    out = set()
    if max_abs_diff(a["init"], b["init"]) != 0.0:
        out.add("init")
    if a["order"] != b["order"]:
        out.add("order")
    if not torch.equal(a["masks"], b["masks"]):
        out.add("masks")
    if a["noise"].keys() != b["noise"].keys() or any(
        not torch.equal(a["noise"][i], b["noise"][i]) for i in a["noise"]
    ):  # under DDP a rank's shard (which samples it sees) follows the data order too
        out.add("noise")
    return out


BASE = {"seed": 1, "init": 10, "data": 20, "train": 30}


# ----------------------------------------------------------------------------- each source alone
WORKERS = [0, pytest.param(2, marks=pytest.mark.slow)]  # 2 DataLoader worker processes: slow


@pytest.fixture(scope="module", params=WORKERS, ids=["main-process", "2-workers"])
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fit with BASE, BASE again, and BASE with each source (and the run seed alone) changed."""
    workers = request.param
    tmp = tmp_path_factory.mktemp(f"sources{workers}")
    out: dict[str, Any] = {"workers": workers}
    for name in ("base", "again", *SOURCES, "seed"):
        seeds = dict(BASE)
        if name not in ("base", "again"):
            seeds[name] = 99
        out[name] = fit(tmp, SeedEverything(**seeds), workers)
    return out


@pytest.mark.slow
def test_same_sources_repeat_bit_for_bit(runs: dict[str, Any]) -> None:
    assert differs(runs["base"], runs["again"]) == set()
    assert max_abs_diff(runs["base"]["final"], runs["again"]["final"]) == 0.0
    assert runs["base"]["masks"].any() and len(runs["base"]["order"]) == 8  # 2 epochs of 4 steps ran


@pytest.mark.parametrize(
    ("source", "changes"),
    [
        ("init", {"init"}),
        ("data", {"order", "noise"}),  # what workers draw follows the data seed; in the main process the
        ("train", {"masks"}),  # noise follows the train stream, applied in the data order (see below)
    ],
)
def test_each_source_changes_only_its_own_draws(runs: dict[str, Any], source: str, changes: set[str]) -> None:
    expected = set(changes)
    if source == "train" and runs["workers"] == 0:
        expected.add("noise")  # augmentation drawn in the main process is the train source's
    assert differs(runs["base"], runs[source]) == expected
    assert max_abs_diff(runs["base"]["final"], runs[source]["final"]) > 0.0


def test_the_run_seed_changes_nothing_when_every_source_is_given(runs: dict[str, Any]) -> None:
    assert differs(runs["base"], runs["seed"]) == set()
    assert max_abs_diff(runs["base"]["final"], runs["seed"]["final"]) == 0.0


def test_data_source_shuffles_every_epoch_anew(runs: dict[str, Any]) -> None:
    order = runs["base"]["order"]
    epochs = [sorted(i for batch in order[e * 4 : e * 4 + 4] for i in batch) for e in (0, 1)]
    assert epochs == [list(range(N))] * 2  # each epoch sees every sample once
    assert order[:4] != order[4:] and order[:4] != [list(range(i, i + 8)) for i in (0, 8, 16, 24)]


def test_unset_sources_derive_from_the_seed(tmp_path: Path) -> None:
    """``SeedEverything(5, data=7)``: init and train are ``source_seed(5, ...)``; 5 is then only a label."""
    derived = fit(tmp_path, SeedEverything(5, data=7))
    explicit = fit(
        tmp_path, SeedEverything(123, init=source_seed(5, "init"), data=7, train=source_seed(5, "train"))
    )
    assert differs(derived, explicit) == set()
    # another run seed: other derived init and train seeds (the main-process noise is the train source's)
    assert differs(derived, fit(tmp_path, SeedEverything(6, data=7))) == {"init", "masks", "noise"}


def test_source_seed_is_numpy_seed_sequence_and_stable() -> None:
    for seed in (0, 1, 12345, 2**32 - 1):
        derived = [source_seed(seed, s) for s in SOURCES]
        assert derived == [
            int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint32)[0]) for i in range(3)
        ]
        assert len(set(derived)) == 3
    # pinned: a derived seed must never change between releases (recorded runs repeat)
    assert [source_seed(0, s) for s in SOURCES] == [2968811710, 3964924996, 3141116543]
    assert source_seed(42, "data") == int(np.random.SeedSequence([42, 1]).generate_state(1)[0])


# ----------------------------------------------------------------------------- default unchanged
class _PreviousRelease(Callback):
    """What SeedEverything(seed) did before sources existed: seed_everything(seed, workers=True) at setup."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl.seed_everything(self.seed, workers=True, verbose=False)


@pytest.mark.parametrize("workers", WORKERS)
def test_default_is_one_stream_bit_identical_to_before(tmp_path: Path, workers: int) -> None:
    kit = fit(tmp_path, SeedEverything(5), workers)
    pl.seed_everything(5, workers=True, verbose=False)
    model = Probe()
    init = weights_of(model)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[_PreviousRelease(5)]))
    trainer.fit(model, DataLoader(Indexed(), batch_size=8, shuffle=True, num_workers=workers))
    before = observe(model, init)
    assert differs(kit, before) == set()
    assert max_abs_diff(kit["final"], before["final"]) == 0.0
    # and the default is not the separate-sources run of the same seed
    assert differs(kit, fit(tmp_path, SeedEverything(5, init=source_seed(5, "init")), workers))


def test_reloaded_dataloaders_follow_the_data_seed(tmp_path: Path) -> None:
    def run(**seeds: int) -> dict[str, Any]:
        return fit(tmp_path, SeedEverything(**seeds), max_epochs=3, reload_dataloaders_every_n_epochs=1)

    base = run(**BASE)
    assert differs(base, run(**BASE)) == set()
    assert differs(base, run(**{**BASE, "data": 21})) == {"order", "noise"}
    assert differs(base, run(**{**BASE, "train": 31})) == {"masks", "noise"}  # main-process noise


# ----------------------------------------------------------------------------- recorded
def test_sources_recorded_in_logger_and_checkpoint(tmp_path: Path) -> None:
    seeder = SeedEverything(3, data=8)
    seeder.seed_now()
    trainer = pl.Trainer(
        **trainer_kwargs(
            tmp_path,
            max_epochs=1,
            callbacks=[seeder, ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")],
            logger=CSVLogger(tmp_path, name="logs"),
            enable_checkpointing=True,
        )
    )
    trainer.fit(Probe(), DataLoader(Indexed(), batch_size=8, shuffle=True))
    expected = {"seed_init": source_seed(3, "init"), "seed_data": 8, "seed_train": source_seed(3, "train")}
    hparams = yaml.safe_load(next((tmp_path / "logs").rglob("hparams.yaml")).read_text())
    assert {k: hparams[k] for k in ("seed", *expected)} == {"seed": 3, **expected}
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]["SeedEverything"]
    assert {k: state[k] for k in ("seed", *expected)} == {"seed": 3, **expected}
    assert len(state["loader_generators"]) == 1  # the data source's generator, shared by loader and sampler


def test_default_records_no_sources(tmp_path: Path) -> None:
    seeder = SeedEverything(3)
    pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[seeder])).fit(
        Probe(), DataLoader(Indexed(), batch_size=8, shuffle=True)
    )
    assert seeder.sources is None
    assert not any(k.startswith("seed_") and k != "seed_per_rank" for k in seeder.state_dict())


# ----------------------------------------------------------------------------- exact resume
class _Start(Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.at = (trainer.current_epoch, trainer.global_step)


def _resume_fit(
    root: Path,
    loader: Any,
    seeder: SeedEverything,
    ckpt: dict[str, Any] | None,
    resume: Path | None,
    **kw: Any,
) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    seeder.seed_now()
    model = Probe()
    start = _Start()
    callbacks: list[Callback] = [seeder, start]
    if ckpt is not None:
        callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, **ckpt))
    trainer = pl.Trainer(
        **trainer_kwargs(root, callbacks=callbacks, enable_checkpointing=ckpt is not None, **kw)
    )
    data = loader()
    trainer.fit(model, *(data if isinstance(data, tuple) else (data,)), ckpt_path=resume)
    return weights_of(model), start.at


def _plain_loader() -> DataLoader:
    return DataLoader(Indexed(), batch_size=8, shuffle=True, num_workers=2, persistent_workers=False)


def _stateful_loader() -> Any:
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(WorkerRNGDataset(Indexed()), batch_size=8, shuffle=True, num_workers=2)


def _loaders_with_val() -> tuple[DataLoader, DataLoader]:
    return DataLoader(Indexed(), batch_size=8, shuffle=True), DataLoader(Indexed(), batch_size=16)


RESUMES = {
    # name: (loader factory, ModelCheckpoint args, Trainer args, checkpoint to resume, where it resumes)
    "epoch-end, 2 workers": (
        _plain_loader,
        {"filename": "{epoch}"},
        {"max_epochs": 3},
        "epoch=0.ckpt",
        (1, 4),
    ),
    "validation-end": (
        _loaders_with_val,
        {"filename": "{step}"},
        {"max_epochs": 3, "check_val_every_n_epoch": 2},
        "step=8.ckpt",
        (1, 8),  # Lightning finishes epoch 1 (its on_train_epoch_end) after the resume
    ),
    "mid-epoch, StatefulDataLoader, 2 workers": (
        _stateful_loader,
        {"filename": "{step}", "every_n_train_steps": 1},
        {"max_epochs": 2},
        "step=6.ckpt",
        (1, 6),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RESUMES))
def test_separate_sources_resume_exactly(tmp_path: Path, name: str) -> None:
    if name.startswith("mid-epoch"):
        pytest.importorskip("torchdata.stateful_dataloader")
    loader, ckpt_args, trainer_args, ckpt, where = RESUMES[name]
    full, _ = _resume_fit(tmp_path, loader, SeedEverything(**BASE), ckpt_args, None, **trainer_args)
    path = tmp_path / "ckpt" / ckpt
    resumed, at = _resume_fit(tmp_path / "r", loader, SeedEverything(**BASE), None, path, **trainer_args)
    assert at == where  # it really resumed, from the middle of the run
    assert max_abs_diff(full, resumed) == 0.0
    # a callback given no sources continues the checkpoint's (adopted with the seed), exactly too
    adopted, _ = _resume_fit(tmp_path / "a", loader, SeedEverything(1), None, path, **trainer_args)
    assert max_abs_diff(full, adopted) == 0.0
    # and the data source's generator state came from the checkpoint: without the kit's RNG state not exact
    plain, _ = _resume_fit(
        tmp_path / "p", loader, SeedEverything(**BASE, restore_rng=False), None, path, **trainer_args
    )
    assert max_abs_diff(full, plain) > 0.0


def test_resume_with_other_sources_warns_and_keeps_the_checkpoints(tmp_path: Path) -> None:
    seeder = SeedEverything(**BASE)
    _resume_fit(tmp_path, _loaders_with_val, seeder, {"filename": "last"}, None, max_epochs=1)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]["SeedEverything"]
    other = SeedEverything(1, data=5)
    with pytest.warns(UserWarning, match=r"recorded with sources \{'init': 10, 'data': 20, 'train': 30\}"):
        other.load_state_dict(state)
    assert other.sources == {"init": 10, "data": 20, "train": 30}
    shared = {k: v for k, v in state.items() if k not in ("seed_init", "seed_data", "seed_train")}
    with pytest.warns(UserWarning, match="recorded with one stream for all sources"):
        SeedEverything(1, data=5).load_state_dict(shared)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adopting = SeedEverything(1)
        adopting.load_state_dict(state)  # nothing requested: adopts silently
    assert adopting.sources == {"init": 10, "data": 20, "train": 30}


# ----------------------------------------------------------------------------- validation
STATE = {"seed": 1, "seed_per_rank": False, "seed_init": 10, "seed_data": 20, "seed_train": 30}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"seed_data": None}, r"checkpoint field\(s\) \['seed_data'\] missing"),
        ({"seed_init": None, "seed_train": None}, r"field\(s\) \['seed_init', 'seed_train'\] missing"),
        ({"seed_data": -1}, "checkpoint field 'seed_data' must be an int in"),
        ({"seed_train": 2**32}, "checkpoint field 'seed_train' must be an int in"),
        ({"seed_init": "10"}, "checkpoint field 'seed_init' must be an int in"),
        ({"seed_init": True}, "checkpoint field 'seed_init' must be an int in"),
        ({"seed_data": 2.0}, "checkpoint field 'seed_data' must be an int in"),
    ],
)
def test_corrupted_source_fields_are_refused_at_load(edit: dict[str, Any], match: str) -> None:
    state = {k: v for k, v in {**STATE, **edit}.items() if v is not None}
    seeder = SeedEverything(1)
    with pytest.raises(ValueError, match=rf"^SeedEverything: (checkpoint )?{match}"):
        seeder.load_state_dict(state)
    with pytest.raises(ValueError, match=match):
        check_seed_state(state)
    assert (seeder.seed, seeder.sources) == (1, None)  # nothing of the refused state was taken


def test_states_without_sources_load_as_one_stream() -> None:
    seeder = SeedEverything(4, data=3, restore_rng=False)
    with pytest.warns(UserWarning, match="one stream"):
        seeder.load_state_dict({"seed": 4, "seed_per_rank": False})
    assert (seeder.seed, seeder.sources) == (4, None)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"init": -1}, ValueError, r"SeedEverything: init must be in \[0, 2\*\*32 - 1\]"),
        ({"data": 2**32}, ValueError, r"SeedEverything: data must be in \[0, 2\*\*32 - 1\]"),
        ({"train": "3"}, TypeError, r"SeedEverything: train must be an int or None, got '3' \(str\)"),
        ({"data": True}, TypeError, r"SeedEverything: data must be an int or None, got True \(bool\)"),
        ({"init": 1.0}, TypeError, r"SeedEverything: init must be an int or None, got 1.0 \(float\)"),
    ],
)
def test_bad_source_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SeedEverything(1, **kwargs)


def test_per_rank_overflow_names_the_source() -> None:
    SeedEverything(1, init=2**32 - 2, per_rank=True).seed_now(rank=1)  # the last seed: fine
    with pytest.raises(ValueError, match=r"SeedEverything: init \+ rank \(per_rank=True\) must be in"):
        SeedEverything(1, init=2**32 - 1, per_rank=True).seed_now(rank=1)


# ----------------------------------------------------------------------------- SourceSeeds
@pytest.mark.parametrize("vary", ["init", "data", "train", ("data", "train"), ("train", "init"), "all"])
def test_source_seeds_for_a_sweep(vary: Any) -> None:
    varied = parse_vary(vary)
    seeds = SourceSeeds.for_sweep(7, vary, fixed=3)
    for s in SOURCES:
        assert seeds[s] == source_seed(7 if s in varied else 3, s)
    assert seeds.seed == (7 if varied == SOURCES else 3)
    assert (seeds.sweep_seed, seeds.vary) == (7, varied)
    assert dict(seeds) == {"seed": seeds.seed, **{s: seeds[s] for s in SOURCES}}
    assert SeedEverything(**seeds).sources == {s: seeds[s] for s in SOURCES}


@pytest.mark.parametrize("vary", ["weights", "", (), ("init", "dropout"), 3, None])
def test_bad_vary_is_refused(vary: Any) -> None:
    with pytest.raises(ValueError, match="vary must be one of"):
        parse_vary(vary)


def test_source_seeds_validate() -> None:
    with pytest.raises(ValueError, match=r"SourceSeeds: data must be in \[0, 2\*\*32 - 1\], got -1"):
        SourceSeeds(1, 2, -1, 3)
    with pytest.raises(KeyError):
        SourceSeeds(1, 2, 3, 4)["sweep_seed"]


# ----------------------------------------------------------------------------- DDP
@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_shards_follow_the_data_seed_and_dropout_the_train_seed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Two ranks: the distributed sampler shuffles with the data seed; each source still varies alone.

    The runs (``ddp_battery.seed_sources``: base seeds, then the data seed alone changed, then the train
    seed alone, 2 epochs each) share the suite's DDP launch; ``seed_now(rank)`` before the model.
    """
    runs = ddp_battery.SOURCE_RUNS
    assert runs["base"] == BASE
    by_rank = ddp_battery.load_ranks(tmp_path_factory, "seed_sources")
    got = {(name, rank): by_rank[rank][name] for name in runs for rank in (0, 1)}
    for name in runs:  # in every epoch the two ranks' shards partition the data
        orders = [got[(name, r)]["order"] for r in (0, 1)]
        for epoch in (0, 1):
            shards = [sorted(i for batch in o[epoch * 2 : epoch * 2 + 2] for i in batch) for o in orders]
            assert sorted(shards[0] + shards[1]) == list(range(N)) and not set(shards[0]) & set(shards[1])
    for rank in (0, 1):
        base = got[("base", rank)]
        assert differs(base, got[("data", rank)]) == {"order", "noise"}
        assert differs(base, got[("train", rank)]) == {"masks", "noise"}  # main-process noise: train


@pytest.mark.parametrize(
    ("loader_args", "match"),
    [
        (
            {"num_workers": 2, "persistent_workers": True},
            "persistent_workers=True with separate seed sources",
        ),
        ({"sampler": "custom"}, "sampler _Custom has no `generator` attribute"),
    ],
)
def test_what_the_data_seed_cannot_reach_is_warned_once(
    tmp_path: Path, loader_args: dict[str, Any], match: str
) -> None:
    class _Custom(torch.utils.data.Sampler):
        def __iter__(self) -> Any:
            return iter(torch.randperm(N).tolist())

        def __len__(self) -> int:
            return N

    if loader_args.get("sampler") == "custom":
        loader_args = {"sampler": _Custom()}
    seeder = SeedEverything(**BASE)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=3, callbacks=[seeder]))
    with pytest.warns(UserWarning, match=match) as record:
        trainer.fit(Probe(), DataLoader(Indexed(), batch_size=8, **loader_args))
    assert sum(match in str(w.message) for w in record) == 1  # once per fit, not once per epoch


@pytest.mark.filterwarnings("ignore::DeprecationWarning:lightning.pytorch.cli")
def test_sources_from_lightning_cli_yaml(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    callback = {"class_path": "lightning_regkit.SeedEverything", "init_args": {"seed": 4, "data": 5}}
    config.write_text(yaml.safe_dump({"trainer": {"callbacks": [callback], "logger": False}}))
    cli = classifier_cli(config)
    (seeder,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, SeedEverything)]
    assert seeder.sources == {"init": source_seed(4, "init"), "data": 5, "train": source_seed(4, "train")}


def test_sources_in_the_pytorch_lightning_namespace(tmp_path: Path) -> None:
    """The same separation with ``pytorch_lightning`` classes (the kit's twin callback)."""
    pytorch_lightning = pytest.importorskip("pytorch_lightning")
    from lightning_regkit.pytorch_lightning import SeedEverything as PLSeedEverything

    class PLProbe(ProbeSteps, pytorch_lightning.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._build()

    def run(**seeds: int) -> dict[str, Any]:
        seeder = PLSeedEverything(**seeds)
        seeder.seed_now()
        model = PLProbe()
        init = weights_of(model)
        kwargs = trainer_kwargs(tmp_path, max_epochs=2, callbacks=[seeder])
        pytorch_lightning.Trainer(**kwargs).fit(model, DataLoader(Indexed(), batch_size=8, shuffle=True))
        return observe(model, init)

    base = run(**BASE)
    assert differs(base, run(**{**BASE, "data": 21})) == {"order", "noise"}
    assert differs(base, run(**{**BASE, "init": 11})) == {"init"}
