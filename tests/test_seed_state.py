"""SeedEverything's checkpoint state: validated at load, reused instances, Trainers in threads.

- A corrupted-state catalogue: every field of the state (and every entry of an RNG state, also as
  ``restore_rng_state``'s input) with a wrong type, a wrong shape, a missing key or a value out of
  range. Each raises at load a ``ValueError`` naming the callback and the field; a resume from such
  a checkpoint stops before the first training batch, weights untouched; ``restore_rng_state``
  sets no generator from an invalid state.
- A callback instance reused for another fit or Trainer behaves as a fresh one: state carries over
  only through ``ckpt_path``.
- Two Trainers in two threads of one process share the global generators: warned.
"""

from __future__ import annotations

import copy
import math
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from helpers import (
    LitClassifier,
    SyntheticDataModule,
    assert_tree_equal,
    max_abs_diff,
    trainer_kwargs,
    weights_of,
)
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_regkit.callbacks.seed import SeedEverything
from lightning_regkit.rng import WorkerRNGDataset, capture_rng_state, check_rng_state, restore_rng_state

Mutation = Callable[[dict[str, Any]], None]


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def mutate(state: dict[str, Any]) -> None:
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Mutation:
    def mutate(state: dict[str, Any]) -> None:
        target = state
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _edit(path: tuple[Any, ...], fn: Callable[[Any], Any]) -> Mutation:
    def mutate(state: dict[str, Any]) -> None:
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = fn(target[path[-1]])

    return mutate


def _words_with(index: int, value: int) -> Callable[[Any], Any]:
    def fn(words: Any) -> Any:
        words = list(words) if not isinstance(words, torch.Tensor) else words.clone()
        words[index] = value
        return words

    return fn


# ----------------------------------------------------------------------------- RNG state catalogue
# (id, mutation of one RNG state, the entry the message must name). Classes: T wrong type, S wrong
# shape, K missing/unknown key, R out of range.
RNG_CASES: list[tuple[str, Mutation, str]] = [
    ("K-all-unknown", lambda s: s.clear() or s.update({"x": 1}), "unknown ['x']"),
    ("K-missing-torch", _delete(("torch",)), "missing ['torch']"),
    ("K-missing-python", _delete(("python",)), "missing ['python']"),
    ("K-unknown-mps", _set(("mps",), torch.zeros(3)), "unknown ['mps']"),
    ("T-python", _set(("python",), "abc"), "['python']"),
    ("S-python-entries", _edit(("python",), lambda v: v[:2]), "['python']"),
    ("R-python-version", _set(("python", 0), 2), "['python'][0]"),
    ("T-python-version", _set(("python", 0), 3.0), "['python'][0]"),
    ("S-python-words", _edit(("python", 1), lambda v: v[:624]), "['python'][1]"),
    ("R-python-word", _edit(("python", 1), _words_with(5, 2**32)), "['python'][1]"),
    ("T-python-word", _edit(("python", 1), _words_with(5, 1.5)), "['python'][1]"),
    ("R-python-position", _edit(("python", 1), _words_with(624, 625)), "['python'][1][624]"),
    ("T-python-gauss", _set(("python", 2), "0.5"), "['python'][2]"),
    ("R-python-gauss", _set(("python", 2), math.nan), "['python'][2]"),
    ("T-numpy", _set(("numpy",), None), "['numpy']"),
    ("R-numpy-name", _set(("numpy", 0), "PCG64"), "['numpy'][0]"),
    ("S-numpy-words", _edit(("numpy", 1), lambda v: v[:623]), "['numpy'][1]"),
    ("T-numpy-words", _edit(("numpy", 1), lambda v: v.double()), "['numpy'][1]"),
    ("R-numpy-word", _edit(("numpy", 1), _words_with(0, -1)), "['numpy'][1]"),
    ("R-numpy-position", _set(("numpy", 2), 625), "['numpy'][2]"),
    ("T-numpy-position", _set(("numpy", 2), "1"), "['numpy'][2]"),
    ("R-numpy-has-gauss", _set(("numpy", 3), 2), "['numpy'][3]"),
    ("R-numpy-cached", _set(("numpy", 4), math.inf), "['numpy'][4]"),
    ("T-torch", _set(("torch",), [1, 2]), "['torch']"),
    ("T-torch-dtype", _edit(("torch",), lambda v: v.long()), "['torch']"),
    ("S-torch-size", _edit(("torch",), lambda v: v[:100]), "['torch']"),
    ("S-torch-2d", _edit(("torch",), lambda v: v.view(2, -1)), "['torch']"),
    ("T-cuda", _set(("cuda",), "cuda"), "['cuda']"),
    ("S-cuda-state", _set(("cuda",), [torch.zeros(8, dtype=torch.uint8)]), "['cuda'][0]"),
    ("T-cuda-state", _set(("cuda",), [torch.zeros(16)]), "['cuda'][0]"),
]


@pytest.mark.parametrize(("case", "mutate", "entry"), RNG_CASES, ids=[c[0] for c in RNG_CASES])
def test_restore_rng_state_rejects_every_corruption_and_sets_nothing(
    case: str, mutate: Mutation, entry: str
) -> None:
    state = capture_rng_state()
    mutate(state)
    before = capture_rng_state()
    with pytest.raises(ValueError, match=r"^restore_rng_state: state") as info:
        restore_rng_state(state)
    assert entry in str(info.value)
    assert_tree_equal(capture_rng_state(), before)  # no generator was touched


def test_check_rng_state_accepts_a_capture_after_a_weights_only_round_trip(tmp_path: Path) -> None:
    torch.save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    check_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])


# ----------------------------------------------------------------------------- SeedEverything catalogue
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 1-epoch checkpoint; its SeedEverything state records per-rank seeds and a loader generator."""
    root = tmp_path_factory.mktemp("seed_state")

    class Data(SyntheticDataModule):
        def train_dataloader(self) -> torch.utils.data.DataLoader:
            g = torch.Generator().manual_seed(0)
            return torch.utils.data.DataLoader(self.train_set, batch_size=16, shuffle=True, generator=g)

    seeder = SeedEverything(3, per_rank=True)
    ckpt = ModelCheckpoint(dirpath=root, filename="e")
    trainer = pl.Trainer(
        **trainer_kwargs(root, max_epochs=1, callbacks=[seeder, ckpt], enable_checkpointing=True)
    )
    trainer.fit(LitClassifier(), Data())
    return root / "e.ckpt"


def _state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint, weights_only=True)["callbacks"]["SeedEverything"]


# (id, mutation of the whole SeedEverything state, field the message must name)
SEED_CASES: list[tuple[str, Mutation, str]] = [
    ("K-unknown-field", _set(("foo",), 1), "unknown field(s) ['foo']"),
    ("K-missing-seed", _delete(("seed",)), "'seed' is missing"),
    ("T-seed", _set(("seed",), "3"), "'seed'"),
    ("T-seed-bool", _set(("seed",), True), "'seed'"),
    ("R-seed", _set(("seed",), 2**32), "'seed'"),
    ("K-missing-seed_per_rank", _delete(("seed_per_rank",)), "'seed_per_rank' is missing"),
    ("T-seed_per_rank", _set(("seed_per_rank",), 1), "'seed_per_rank'"),
    ("K-missing-rank_seeds", _delete(("rank_seeds",)), "'rank_seeds' is missing"),
    ("T-rank_seeds", _set(("rank_seeds",), 3), "'rank_seeds'"),
    ("R-rank_seeds", _set(("rank_seeds",), [4]), "'rank_seeds'"),
    ("S-rank_seeds", _set(("rank_seeds",), []), "'rank_seeds'"),
    ("T-rng", _set(("rng",), {"0": 1}), "'rng'"),
    ("S-rng-empty", _set(("rng",), []), "'rng'"),
    ("T-rng-0", _set(("rng", 0), "x"), "'rng[0]'"),
    ("K-missing-loader_generators", _delete(("loader_generators",)), "'loader_generators' is missing"),
    ("T-loader_generators", _set(("loader_generators",), torch.zeros(3)), "'loader_generators'"),
    ("T-loader_generator", _edit(("loader_generators", 0), lambda v: v.int()), "'loader_generators[0]'"),
    ("S-loader_generator", _edit(("loader_generators", 0), lambda v: v[:7]), "'loader_generators[0]'"),
    ("K-missing-epoch_end", _delete(("epoch_end",)), "'epoch_end' is missing"),
    ("T-epoch_end", _set(("epoch_end",), 1), "'epoch_end'"),
    ("R-position", _set(("position",), "middle"), "'position'"),
    ("T-position", _set(("position",), 3), "'position'"),
    ("R-position-vs-epoch_end", _set(("position",), "mid_epoch"), "'position'"),
] + [
    (f"rng[0]-{case}", lambda s, m=mutate: m(s["rng"][0]), f"'rng[0]'{entry}" if entry[:1] == "[" else entry)
    for case, mutate, entry in RNG_CASES
]


@pytest.mark.parametrize(("case", "mutate", "field"), SEED_CASES, ids=[c[0] for c in SEED_CASES])
def test_load_state_dict_rejects_every_corrupted_field(
    checkpoint: Path, case: str, mutate: Mutation, field: str
) -> None:
    state = _state(checkpoint)
    SeedEverything(3, per_rank=True).load_state_dict(copy.deepcopy(state))  # the intact state loads
    mutate(state)
    seeder = SeedEverything(None)
    with pytest.raises(ValueError, match=r"^SeedEverything: checkpoint") as info:
        seeder.load_state_dict(state)
    assert field in str(info.value), str(info.value)
    assert seeder._pending is None and seeder.seed is None  # nothing of it was taken


class _Batches(Callback):
    def __init__(self) -> None:
        self.started = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.started += 1


# one case per field and kind of corruption goes through a whole resume (every case stops at the same
# load_state_dict, checked above)
CORRUPTION_CLASSES = [
    "T-seed",
    "R-seed",
    "K-missing-seed_per_rank",
    "R-rank_seeds",
    "S-loader_generator",
    "T-epoch_end",
    "R-position",
    "rng[0]-K-missing-torch",
    "rng[0]-S-numpy-words",
    "rng[0]-R-python-word",
    "rng[0]-T-cuda-state",
]


@pytest.mark.parametrize("case", CORRUPTION_CLASSES)
def test_resume_from_a_corrupted_checkpoint_stops_before_training(
    checkpoint: Path, tmp_path: Path, case: str
) -> None:
    _, mutate, field = next(c for c in SEED_CASES if c[0] == case)
    ckpt = torch.load(checkpoint, weights_only=True)
    mutate(ckpt["callbacks"]["SeedEverything"])
    torch.save(ckpt, tmp_path / "bad.ckpt")
    model, batches = LitClassifier(), _Batches()
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=2, callbacks=[SeedEverything(3, per_rank=True), batches])
    )
    with pytest.raises(ValueError, match=r"^SeedEverything: checkpoint") as info:
        trainer.fit(model, SyntheticDataModule(), ckpt_path=tmp_path / "bad.ckpt")
    assert field in str(info.value)
    assert batches.started == 0
    # Lightning loads the weights before the callbacks' states; no optimizer step ran on them
    assert max_abs_diff(weights_of(model), ckpt["state_dict"]) == 0.0


def test_loader_generator_of_another_kind_raises_before_training(checkpoint: Path, tmp_path: Path) -> None:
    """A CUDA-size generator state for a loader whose generator is a CPU one: checked at train start."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["callbacks"]["SeedEverything"]["loader_generators"] = [torch.zeros(16, dtype=torch.uint8)]
    torch.save(ckpt, tmp_path / "other.ckpt")

    class Data(SyntheticDataModule):
        def train_dataloader(self) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(
                self.train_set, batch_size=16, shuffle=True, generator=torch.Generator()
            )

    batches = _Batches()
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=2, callbacks=[SeedEverything(3, per_rank=True), batches])
    )
    with pytest.raises(
        ValueError, match=r"SeedEverything: checkpoint field 'loader_generators\[0\]' holds a 16-byte"
    ):
        trainer.fit(LitClassifier(), Data(), ckpt_path=tmp_path / "other.ckpt")
    assert batches.started == 0


def test_states_of_older_checkpoints_still_load(checkpoint: Path) -> None:
    """Checkpoints written before the field 'position' (and without 'rng', i.e. restore_rng=False)."""
    state = _state(checkpoint)
    del state["position"]
    SeedEverything(None).load_state_dict(copy.deepcopy(state))
    for key in ("rng", "loader_generators", "epoch_end"):
        del state[key]
    with pytest.warns(UserWarning, match="holds no RNG state"):
        SeedEverything(None).load_state_dict(state)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"rng": 5}, r"state 'rng' must be None or a dict"),
        ({}, r"state must be a dict with key 'rng'"),
        ({"rng": {"python": 1}}, r"WorkerRNGDataset: state 'rng' must be a dict with keys"),
    ],
)
def test_worker_rng_dataset_validates_its_state(state: dict[str, Any], match: str) -> None:
    data = WorkerRNGDataset(torch.utils.data.TensorDataset(torch.zeros(2)))
    before = capture_rng_state()
    with pytest.raises(ValueError, match=match):
        data.load_state_dict(state)
    assert_tree_equal(capture_rng_state(), before)


# ----------------------------------------------------------------------------- reuse
def _fit(
    root: Path, seeder: SeedEverything, epochs: int, name: str, **fit_kwargs: Any
) -> tuple[Any, pl.Trainer]:
    torch.manual_seed(0)
    model = LitClassifier()  # the same initial weights in every run: only the callback's seeding differs
    trainer = pl.Trainer(
        **trainer_kwargs(root, max_epochs=epochs, callbacks=[seeder], logger=CSVLogger(root, name=name))
    )
    trainer.fit(model, SyntheticDataModule(), **fit_kwargs)
    return weights_of(model), trainer


def _logged_seed(trainer: pl.Trainer) -> int:
    return int(yaml.safe_load((Path(trainer.logger.log_dir) / "hparams.yaml").read_text())["seed"])  # type: ignore[union-attr]


def test_reused_instance_after_a_resume_starts_from_its_arguments(tmp_path: Path) -> None:
    """A fit resumed from a seed-3 run adopts seed 3; the same instance's next fit is seeded with 5 again."""
    recorder = SeedEverything(3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="e1")
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=1, callbacks=[recorder, ckpt], enable_checkpointing=True)
    )
    trainer.fit(LitClassifier(), SyntheticDataModule())

    reused = SeedEverything(5)
    with pytest.warns(UserWarning, match="recorded with seed=3 while seed=5"):
        _, resumed = _fit(tmp_path, reused, 2, "resumed", ckpt_path=tmp_path / "ckpt" / "e1.ckpt")
    assert resumed.current_epoch == 2 and reused.seed == 3 and _logged_seed(resumed) == 3
    again, second = _fit(tmp_path, reused, 1, "again")  # another Trainer, no ckpt_path
    fresh, _ = _fit(tmp_path, SeedEverything(5), 1, "fresh")
    assert _logged_seed(second) == 5
    assert max_abs_diff(again, fresh) == 0.0


def test_reused_instance_after_loading_a_state_restores_nothing(checkpoint: Path, tmp_path: Path) -> None:
    """A state loaded outside a resume (by hand, before fit) is neither applied nor adopted by a new fit."""
    reused = SeedEverything(5)
    reused.load_state_dict(_state(checkpoint))  # recorded with seed 3
    again, trainer = _fit(tmp_path, reused, 1, "again")
    fresh, _ = _fit(tmp_path, SeedEverything(5), 1, "fresh")
    assert _logged_seed(trainer) == 5
    assert max_abs_diff(again, fresh) == 0.0


def test_drawn_seed_is_per_trainer(tmp_path: Path) -> None:
    """seed=None: one draw per Trainer, shared by its stages; another Trainer draws again."""
    reused = SeedEverything(None)
    _, first = _fit(tmp_path, reused, 1, "first")
    seed_first = reused.seed
    first.validate(first.lightning_module, SyntheticDataModule(), verbose=False)
    assert reused.seed == seed_first  # the same Trainer's next stage keeps its seed
    _, second = _fit(tmp_path, reused, 1, "second")
    assert reused.seed != seed_first  # a fresh draw (a clash has probability 2**-32)
    assert (_logged_seed(first), _logged_seed(second)) == (seed_first, reused.seed)


def test_seed_now_fixes_the_next_stage_only(tmp_path: Path) -> None:
    reused = SeedEverything(None)
    drawn = reused.seed_now()
    _fit(tmp_path, reused, 1, "first")
    assert reused.seed == drawn
    _fit(tmp_path, reused, 1, "second")
    assert reused.seed != drawn


# ----------------------------------------------------------------------------- threads
def test_two_trainers_in_two_threads_warn(tmp_path: Path) -> None:
    barrier = threading.Barrier(2, timeout=60)

    class Meet(Callback):  # both fits are past SeedEverything.setup before either goes on
        def setup(self, *args: Any, **kwargs: Any) -> None:
            barrier.wait()

    errors: list[BaseException] = []

    def fit(i: int) -> None:
        try:
            trainer = pl.Trainer(
                **trainer_kwargs(tmp_path / str(i), max_epochs=1, callbacks=[SeedEverything(i), Meet()])
            )
            trainer.fit(LitClassifier(), SyntheticDataModule())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=fit, args=(i,)) for i in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    warned = [
        w
        for w in caught
        if "another Trainer with a SeedEverything is running in another thread" in str(w.message)
    ]
    assert len(warned) >= 1
    # once both are done, a fit in this thread is alone again: no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, SeedEverything(0), 1, "alone")
    assert not [w for w in caught if "another thread" in str(w.message)]
