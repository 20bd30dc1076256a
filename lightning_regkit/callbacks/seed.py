"""``SeedEverything``: seeding, determinism, and RNG state in checkpoints for exact resume.

When it seeds, per stage: in :meth:`SeedEverything.setup`, the first hook of
``fit``/``validate``/``test``/``predict`` that callbacks see (after the datamodule's ``setup``,
before the module's ``setup`` and ``configure_model``). A model built *before* ``Trainer.fit``
draws its initial weights before any callback runs; seed that too with
:meth:`SeedEverything.seed_now` (or, with LightningCLI, the ``seed_everything:`` key, which
seeds before the model is instantiated).

Sources of randomness (``init``, ``data``, ``train``; see :mod:`lightning_regkit.sources`): with
none of them given, one stream seeded with ``seed`` serves them all, as in earlier releases
(bit-identical). Given any of them, each source draws from its own stream: ``init`` from the global
generators seeded by :meth:`SeedEverything.seed_now` and again in ``setup`` (so ``configure_model``
draws from it too); ``train`` from the global generators seeded again in ``on_fit_start`` (dropout,
anything drawn in the steps); ``data`` from a ``torch.Generator`` given to the train dataloader and
its sampler in ``on_train_start`` (shuffle order, worker seeds, so what the workers draw); the
train iterator Lightning built before that hook is built again from it.

Exact resume: every checkpoint holds the RNG states (Python, NumPy, torch CPU, CUDA) of every
rank, taken when the checkpoint is written, and where in the epoch it was written. On resume the
states are validated when the checkpoint is loaded and put back in ``on_train_start``, after
Lightning has built the train dataloader and before the first batch. The sampler's shuffle seed
and the workers' base seed are drawn from torch's global generator when a train iterator is
created, so what happens next depends on where the checkpoint was written:

- at ``on_train_epoch_end`` (the epoch is marked processed): Lightning continues with the iterator
  it built before the states were restored, so the callback creates it again, as the
  uninterrupted run does at the start of each epoch;
- at the end of a validation run after the epoch's last batch (``check_val_every_n_epoch > 1``,
  ``val_check_interval < 1``, ``ModelCheckpoint(save_on_train_epoch_end=False)``), or at the last
  training batch: Lightning finishes that epoch and creates the next epoch's iterator itself, so
  the callback only restores the states;
- mid-epoch: only a stateful dataloader (torchdata's ``StatefulDataLoader``) continues where the
  checkpoint was written; the callback restores the states (and warns for a plain ``DataLoader``).

Lightning < 2.5 (Lightning 2.4) creates the first iterator after an epoch-end resume itself (the
callback then leaves it be), runs the validation a validation-end checkpoint was written in again
after the resume (the callback restores the states once more at its end: the weights stay exact,
that validation's logged metrics do not), and resumes its batch counters one batch behind after a
checkpoint written in ``on_train_batch_end``. Both are warned about, naming the Lightning version.
"""

from __future__ import annotations

import numbers
import os
import secrets
import threading
import weakref
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.utils.data import DistributedSampler, SequentialSampler
from typing_extensions import override

from lightning_regkit import _compat
from lightning_regkit.rng import (
    TORCH_CPU_STATE_BYTES,
    TORCH_CUDA_STATE_BYTES,
    WorkerRNGDataset,
    capture_rng_state,
    check_rng_state,
    restore_rng_state,
)
from lightning_regkit.sources import SOURCES, source_seed

__all__ = ["SeedEverything"]

MAX_SEED = 2**32 - 1
_Deterministic = bool | Literal["warn"] | None
_OWNER = "SeedEverything"
#: Fields a SeedEverything state may hold.
_STATE_KEYS = (
    "seed",
    "seed_per_rank",
    "rank_seeds",
    "seed_init",
    "seed_data",
    "seed_train",
    "rng",
    "loader_generators",
    "epoch_end",
    "position",
)
#: The per-source seed fields (added later: present, all three, only for runs with separate sources).
_SOURCE_KEYS = tuple(f"seed_{s}" for s in SOURCES)
#: Where in the fit loop a checkpoint was written (field ``position``, added later: older checkpoints
#: hold only ``epoch_end``, read as "train_epoch_end" when True and "mid_epoch" when False).
POSITIONS = ("train_epoch_end", "validation_end", "last_batch", "mid_epoch")

# Fits running now with a SeedEverything, by callback id: (thread id, callback). Two Trainers in two
# threads of one process share the global generators, so neither run is reproducible: warned.
_ACTIVE_LOCK = threading.Lock()
_ACTIVE: dict[int, int] = {}


def _check_seed(owner: str, name: str, value: Any, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        allowed = "an int or None" if allow_none else "an int"
        raise TypeError(f"{owner}: {name} must be {allowed}, got {value!r} ({type(value).__name__})")
    if not 0 <= int(value) <= MAX_SEED:
        raise ValueError(f"{owner}: {name} must be in [0, 2**32 - 1] = [0, {MAX_SEED}], got {value}")


def _field_error(field: str, expected: str, value: Any) -> ValueError:
    shown = (
        f"a {value.dtype} tensor of shape {tuple(value.shape)}"
        if isinstance(value, torch.Tensor)
        else f"{value!r:.120} ({type(value).__name__})"
    )
    return ValueError(f"{_OWNER}: checkpoint field {field!r} must be {expected}, got {shown}")


def _is_seed(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= int(value) <= MAX_SEED


def check_seed_state(state: Any) -> None:
    """Validate a ``SeedEverything`` checkpoint state; raise naming the field if anything is off.

    Args:
        state: What ``SeedEverything.state_dict`` wrote (after a checkpoint round trip).

    Raises:
        ValueError: ``"SeedEverything: checkpoint field '<field>' must be <expected>, got <value>"``.

    Example:
        >>> check_seed_state({"seed": 3, "seed_per_rank": False})
        >>> check_seed_state({"seed": 3, "seed_per_rank": 1})
        Traceback (most recent call last):
        ...
        ValueError: SeedEverything: checkpoint field 'seed_per_rank' must be a bool, got 1 (int)
    """
    if not isinstance(state, dict):
        raise _field_error("<state>", "a dict", state)
    unknown = sorted(str(k) for k in state if k not in _STATE_KEYS)
    if unknown:
        raise ValueError(
            f"{_OWNER}: checkpoint has unknown field(s) {unknown}; known fields: {list(_STATE_KEYS)}"
        )
    for key in ("seed", "seed_per_rank"):
        if key not in state:
            raise ValueError(
                f"{_OWNER}: checkpoint field {key!r} is missing (fields present: {sorted(state)})"
            )
    seed = state["seed"]
    if seed is not None and not _is_seed(seed):
        raise _field_error("seed", f"an int in [0, {MAX_SEED}] or None", seed)
    if not isinstance(state["seed_per_rank"], bool):
        raise _field_error("seed_per_rank", "a bool", state["seed_per_rank"])
    if "rank_seeds" in state:
        rank_seeds = state["rank_seeds"]
        if (
            not state["seed_per_rank"]
            or seed is None
            or not isinstance(rank_seeds, list)
            or not rank_seeds
            or not all(_is_seed(s) for s in rank_seeds)
            or rank_seeds != [int(seed) + r for r in range(len(rank_seeds))]
        ):
            raise _field_error(
                "rank_seeds",
                "[seed, seed + 1, ...] (one per rank, present only with seed_per_rank=True)",
                rank_seeds,
            )
    elif state["seed_per_rank"] and seed is not None:
        raise ValueError(f"{_OWNER}: checkpoint field 'rank_seeds' is missing (seed_per_rank is True)")
    present = [key for key in _SOURCE_KEYS if key in state]
    if present and len(present) != len(_SOURCE_KEYS):
        missing = [key for key in _SOURCE_KEYS if key not in state]
        raise ValueError(
            f"{_OWNER}: checkpoint field(s) {missing} missing: the per-source seeds {list(_SOURCE_KEYS)}"
            f" come together (present: {present})"
        )
    for key in present:
        if not _is_seed(state[key]):
            raise _field_error(key, f"an int in [0, {MAX_SEED}]", state[key])
    if "rng" not in state:
        for key in ("loader_generators", "epoch_end", "position"):
            if key in state:
                raise ValueError(f"{_OWNER}: checkpoint field {key!r} is present without field 'rng'")
        return
    rng = state["rng"]
    if not isinstance(rng, list) or not rng:
        raise _field_error("rng", "a non-empty list of RNG states (one per rank)", rng)
    for rank, rank_state in enumerate(rng):
        check_rng_state(rank_state, owner=_OWNER, name=f"checkpoint field 'rng[{rank}]'")
    for key in ("loader_generators", "epoch_end"):
        if key not in state:
            raise ValueError(f"{_OWNER}: checkpoint field {key!r} is missing (it is written with 'rng')")
    gens = state["loader_generators"]
    if not isinstance(gens, list):
        raise _field_error("loader_generators", "a list of torch.Generator states", gens)
    sizes = (TORCH_CPU_STATE_BYTES, *TORCH_CUDA_STATE_BYTES)
    for i, gen_state in enumerate(gens):
        if (
            not isinstance(gen_state, torch.Tensor)
            or gen_state.dtype != torch.uint8
            or gen_state.dim() != 1
            or gen_state.numel() not in sizes
        ):
            raise _field_error(
                f"loader_generators[{i}]",
                f"a 1-D uint8 tensor of {sizes[0]} (CPU) or {sizes[1]} or {sizes[2]} (CUDA) bytes",
                gen_state,
            )
    if not isinstance(state["epoch_end"], bool):
        raise _field_error("epoch_end", "a bool", state["epoch_end"])
    if "position" in state:
        position = state["position"]
        if position not in POSITIONS:
            raise _field_error("position", f"one of {list(POSITIONS)}", position)
        if (position == "mid_epoch") == state["epoch_end"]:
            raise _field_error(
                "position",
                f"'mid_epoch' exactly when field 'epoch_end' is False (it is {state['epoch_end']})",
                position,
            )


def _position(state: dict[str, Any]) -> str:
    """Where a (validated) checkpoint state was written; older states hold only ``epoch_end``."""
    return str(state.get("position", "train_epoch_end" if state["epoch_end"] else "mid_epoch"))


def _flatten_loaders(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [dl for v in obj.values() for dl in _flatten_loaders(v)]
    if isinstance(obj, (list, tuple)):
        return [dl for v in obj for dl in _flatten_loaders(v)]
    return [] if obj is None else [obj]


def _train_loaders(trainer: pl.Trainer) -> list[Any]:
    """The train dataloaders once the fit loop has built them (empty before)."""
    return _flatten_loaders(trainer.train_dataloader)


def _loader_generators(trainer: pl.Trainer) -> list[torch.Generator]:
    """The ``torch.Generator`` objects of the train dataloaders and their samplers, in a fixed order."""
    found: list[torch.Generator] = []
    for dl in _train_loaders(trainer):
        batch_sampler = getattr(dl, "batch_sampler", None)
        for owner in (dl, getattr(dl, "sampler", None), getattr(batch_sampler, "sampler", None)):
            gen = getattr(owner, "generator", None)
            if isinstance(gen, torch.Generator) and not any(gen is g for g in found):
                found.append(gen)
    return found


def _is_stateful_loader(dl: Any) -> bool:
    return callable(getattr(dl, "state_dict", None)) and callable(getattr(dl, "load_state_dict", None))


class SeedEverything(Callback):
    """Seed every run, record the seed, and make resumed runs bit-identical to uninterrupted ones.

    Seeds Python, NumPy and torch (CPU and every CUDA device) with
    :func:`lightning.pytorch.seed_everything` at the start of each stage, with DataLoader worker
    seeding on by default; records the seed in the loggers' hyperparameters and in checkpoints;
    saves the RNG states in every checkpoint and restores them on resume.

    Exact resume (weights, optimizer state and logged values bit-identical to the uninterrupted
    run) holds for checkpoints written at the end of a training epoch or at the end of a validation
    run after an epoch's last batch (``check_val_every_n_epoch > 1``, ``val_check_interval < 1``,
    ``save_on_train_epoch_end=False``), with dropout, shuffling, ``num_workers > 0`` and DDP; and
    for checkpoints written mid-epoch (``every_n_train_steps``) when the train dataloader is
    stateful (torchdata's ``StatefulDataLoader``; with augmentation drawn in worker processes, wrap
    the dataset in :class:`~lightning_regkit.rng.WorkerRNGDataset`). Limits, each warned about when
    it applies: a plain ``DataLoader`` restarts its epoch after a mid-epoch checkpoint; random draws
    made inside persistent worker processes (``persistent_workers=True``) continue from fresh
    worker seeds after resume; on Lightning < 2.5 a validation-end resume logs the metrics of a
    repeated validation and a mid-epoch resume logs its steps one behind (the weights are exact).
    See ``docs/reproducibility.md`` for the measured figures.

    A drawn seed (``seed=None``) is drawn once per Trainer and used for all its stages; a callback
    reused with another Trainer starts from its arguments again: nothing of a previous fit carries
    over except through ``ckpt_path``.

    Sources of randomness: give any of ``init``, ``data``, ``train`` and each source draws from a
    stream of its own, so that changing one source's seed changes only that source's draws (the
    initial weights; the batch order and the workers' draws; the dropout masks). A source not given
    derives its seed from ``seed`` (:func:`~lightning_regkit.sources.source_seed`). With none given,
    one stream serves all sources, exactly as in earlier releases. The per-source seeds are recorded
    next to the seed (``seed_init``, ``seed_data``, ``seed_train``) in the loggers' hyperparameters
    and in checkpoints; a resumed run continues with the checkpoint's. See
    ``docs/variance_by_source.md``.

    Args:
        seed: The seed, in ``[0, 2**32 - 1]``. ``None`` draws a fresh one from the operating
            system (rank 0's draw is broadcast to all ranks), logs it and records it.
        workers: Seed DataLoader workers with Lightning's ``pl_worker_init_function``
            (``seed_everything(..., workers=True)``).
        per_rank: Seed rank ``r`` with ``seed + r`` (distinct streams, e.g. for augmentation);
            by default every rank gets ``seed`` (identical initialisation). The distributed
            sampler keeps using ``seed`` on every rank, so shards still partition the data.
        deterministic: ``True``/``"warn"``/``False`` applies Lightning's own
            ``Trainer(deterministic=...)`` torch flags at setup; ``None`` leaves the Trainer's
            choice. Giving a value that contradicts the Trainer's own ``deterministic`` is an error.
        restore_rng: Save RNG states in checkpoints and restore them on resume.
        init: Seed of the initial weights: the global generators are seeded with it by
            :meth:`seed_now` (call it before building the model) and in ``setup`` (a model built
            in ``configure_model``). ``None``: derived from ``seed`` (if another source is given).
        data: Seed of the training data's randomness: a ``torch.Generator`` seeded with it becomes
            the ``generator`` of the train dataloader and of its sampler (shuffle order, workers'
            base seed, hence what workers draw); under DDP it is also the distributed sampler's seed.
        train: Seed of what training draws from the global generators (dropout masks, noise in
            ``training_step``, augmentation drawn in the main process when ``num_workers=0``):
            they are seeded with it in ``on_fit_start`` (at the start of ``validate``, ``test``,
            ``predict`` for those stages). With ``per_rank=True`` rank ``r`` adds ``r`` to each
            source's seed.

    Raises:
        TypeError: If a seed is not an int or None, or a flag is not a bool.
        ValueError: If a seed is outside ``[0, 2**32 - 1]`` or ``deterministic`` is not one of
            ``True``, ``False``, ``"warn"``, ``None``.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_regkit.callbacks.seed import SeedEverything
        >>> seeder = SeedEverything(seed=42)
        >>> seeder.seed_now()  # before building the model: initial weights repeat too
        42
        >>> trainer = pl.Trainer(callbacks=[seeder], logger=False, enable_progress_bar=False)
        >>> SeedEverything(seed=2**32)
        Traceback (most recent call last):
        ...
        ValueError: SeedEverything: seed must be in [0, 2**32 - 1] = [0, 4294967295], got 4294967296

        A seed of its own for the data (shuffle order, workers); ``init`` and ``train`` derive
        from 42. Changing ``data`` then changes the batch order only, not the initial weights
        nor the dropout masks:

        >>> seeder = SeedEverything(seed=42, data=7)
        >>> seeder.sources["data"], seeder.sources["init"] == source_seed(42, "init")
        (7, True)
    """

    def __init__(
        self,
        seed: int | None = None,
        workers: bool = True,
        per_rank: bool = False,
        deterministic: bool | Literal["warn"] | None = None,
        restore_rng: bool = True,
        *,
        init: int | None = None,
        data: int | None = None,
        train: int | None = None,
    ) -> None:
        super().__init__()
        _check_seed(_OWNER, "seed", seed, allow_none=True)
        for name, value in (("init", init), ("data", data), ("train", train)):
            _check_seed(_OWNER, name, value, allow_none=True)
        for name, flag in (("workers", workers), ("per_rank", per_rank), ("restore_rng", restore_rng)):
            if not isinstance(flag, bool):
                raise TypeError(f"{_OWNER}: {name} must be a bool, got {flag!r} ({type(flag).__name__})")
        if not (deterministic is None or isinstance(deterministic, bool) or deterministic == "warn"):
            raise ValueError(
                f"{_OWNER}: deterministic must be True, False, 'warn' or None, got {deterministic!r}"
            )
        self.requested_seed = None if seed is None else int(seed)
        self.workers = workers
        self.per_rank = per_rank
        self.deterministic = deterministic
        self.restore_rng = restore_rng
        self.requested_sources: dict[str, int | None] = {
            "init": None if init is None else int(init),
            "data": None if data is None else int(data),
            "train": None if train is None else int(train),
        }
        # progress / record (not configuration)
        self.seed: int | None = self.requested_seed
        #: The seed of each source for this run; None when one stream serves all sources.
        self.sources: dict[str, int] | None = self._resolve_sources(self.seed)
        self._data_generator: torch.Generator | None = None  # the data source's stream, per fit
        self.rank_seed: int | None = None
        self.world_size = 1
        self._next_seed: int | None = None  # fixed by seed_now() for the next stage's setup
        self._seed_trainer: weakref.ReferenceType[pl.Trainer] | None = None  # whose stages share self.seed
        self._pending: dict[str, Any] | None = None
        # the RNG state restored on resume, kept until the first training batch: restored again at the end
        # of a validation Lightning runs before it (Lightning < 2.5 repeats the checkpoint's validation)
        self._restore_after_validation: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None

    # ------------------------------------------------------------------ seeding
    def seed_now(self, rank: int = 0) -> int:
        """Seed Python, NumPy and torch now (e.g. before building the model); return the seed used.

        The next stage's ``setup`` seeds with the same seed. With ``seed=None`` a fresh seed is
        drawn here and kept for that stage.

        Args:
            rank: The process's global rank; used only when ``per_rank=True`` (seed ``seed + rank``).

        Returns:
            The seed given to :func:`lightning.pytorch.seed_everything`: the ``init`` source's
            seed when sources are separate (see the class), else ``seed`` (plus ``rank`` with
            ``per_rank=True``).

        Example:
            >>> import torch
            >>> a = (SeedEverything(7).seed_now(), torch.rand(2))
            >>> b = (SeedEverything(7).seed_now(), torch.rand(2))
            >>> a[0] == b[0] and bool(torch.equal(a[1], b[1]))
            True
        """
        if self._next_seed is None:
            self._next_seed = self._configured_seed()
        self.seed = self._next_seed
        self.sources = self._resolve_sources(self.seed)
        return self._seed_process(rank, "init")

    def _configured_seed(self) -> int:
        return self.requested_seed if self.requested_seed is not None else secrets.randbelow(MAX_SEED + 1)

    def _resolve_sources(self, seed: int | None) -> dict[str, int] | None:
        """Each source's seed (given, or derived from ``seed``); None when no source was given."""
        if seed is None or all(v is None for v in self.requested_sources.values()):
            return None
        given = self.requested_sources
        return {s: v if (v := given[s]) is not None else source_seed(seed, s) for s in SOURCES}

    def _seed_process(self, rank: int, source: str) -> int:
        """Seed the global generators for ``source`` (``seed`` itself when one stream serves all)."""
        assert self.seed is not None
        base = self.seed if self.sources is None else self.sources[source]
        rank_seed = base + rank if self.per_rank else base
        what = "seed" if self.sources is None else source
        _check_seed(_OWNER, f"{what} + rank (per_rank=True)", rank_seed, allow_none=False)
        pl.seed_everything(rank_seed, workers=self.workers, verbose=False)
        # the distributed sampler reads PL_GLOBAL_SEED: keep it equal on all ranks so shards partition;
        # with separate sources the shard order is the data source's
        os.environ["PL_GLOBAL_SEED"] = str(self.seed if self.sources is None else self.sources["data"])
        self.rank_seed = rank_seed
        return rank_seed

    def seed_record(self) -> dict[str, Any]:
        """The seed as recorded in loggers and checkpoints.

        Returns:
            ``{"seed": int, "seed_per_rank": bool}`` plus ``"rank_seeds"`` (one per rank) with
            ``per_rank=True``, plus ``"seed_init"``, ``"seed_data"``, ``"seed_train"`` when the
            sources are separate.

        Example:
            >>> cb = SeedEverything(3, per_rank=True)
            >>> _ = cb.seed_now()
            >>> cb.seed_record()
            {'seed': 3, 'seed_per_rank': True, 'rank_seeds': [3]}
            >>> SeedEverything(3, init=1, data=2, train=5).seed_record()
            {'seed': 3, 'seed_per_rank': False, 'seed_init': 1, 'seed_data': 2, 'seed_train': 5}
        """
        record: dict[str, Any] = {"seed": self.seed, "seed_per_rank": self.per_rank}
        if self.per_rank and self.seed is not None:
            record["rank_seeds"] = [self.seed + r for r in range(self.world_size)]
        if self.sources is not None:
            record.update({f"seed_{s}": self.sources[s] for s in SOURCES})
        return record

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._pending = None  # RNG states come only from this stage's checkpoint (loaded after setup)
        self._restore_after_validation = None
        self._warn_if_other_thread_runs()
        self._apply_determinism(trainer)
        self.world_size = trainer.world_size
        same_trainer = self._seed_trainer is not None and self._seed_trainer() is trainer
        # another stage of the same Trainer keeps the seed and sources (adopted from a checkpoint, maybe)
        keep = self._next_seed is None and same_trainer and self.seed is not None
        if self._next_seed is not None:  # seed_now() was called for this stage
            seed = self._next_seed
        elif keep and self.seed is not None:  # another stage of the same Trainer: same seed
            seed = self.seed
        else:  # a new Trainer: from the arguments again, nothing of a previous fit carries over
            seed = self._configured_seed()
        self._next_seed = None
        self._data_generator = None
        # rank 0's seed wins: a seed drawn per process (seed=None) must agree across ranks
        self.seed = int(trainer.strategy.broadcast(seed, src=0))
        self.sources = self.sources if keep else self._resolve_sources(self.seed)
        self._seed_trainer = weakref.ref(trainer)
        if self.per_rank:
            bases = {"seed": self.seed} if self.sources is None else self.sources
            for name, base in bases.items():
                _check_seed(
                    _OWNER,
                    f"{name} + world_size - 1 (per_rank=True)",
                    base + self.world_size - 1,
                    allow_none=False,
                )
        self._seed_process(trainer.global_rank, "init")
        if self.requested_seed is None and not same_trainer:
            rank_zero_info(f"{_OWNER}: drew seed {self.seed} (pass seed={self.seed} to repeat this run)")
        for logger in trainer.loggers:
            logger.log_hyperparams(self.seed_record())

    def _warn_if_other_thread_runs(self) -> None:
        me = threading.get_ident()
        with _ACTIVE_LOCK:
            others = [tid for key, tid in _ACTIVE.items() if key != id(self) and tid != me]
            _ACTIVE[id(self)] = me
        if others:
            rank_zero_warn(
                f"{_OWNER}: another Trainer with a SeedEverything is running in another thread of this"
                " process; both draw from the same global generators (torch, NumPy, Python), so neither"
                " run is reproducible. Run them in separate processes"
            )

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.pop(id(self), None)
        self._pending = None
        self._restore_after_validation = None

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.pop(id(self), None)

    def _apply_determinism(self, trainer: pl.Trainer) -> None:
        if self.deterministic is not None:
            # Trainer(deterministic=True) has already called torch.use_deterministic_algorithms(True)
            if self.deterministic is False and torch.are_deterministic_algorithms_enabled():
                raise ValueError(
                    f"{_OWNER}: deterministic=False conflicts with deterministic algorithms already"
                    " enabled (Trainer(deterministic=True) or torch.use_deterministic_algorithms(True));"
                    " set it in one place"
                )
            if torch.backends.cudnn.benchmark and self.deterministic:
                rank_zero_warn(
                    f"{_OWNER}: torch.backends.cudnn.benchmark=True (e.g. Trainer(benchmark=True)) picks"
                    " cuDNN kernels by timing; deterministic=True turns it off"
                )
            _compat.set_torch_flags(deterministic=self.deterministic)
        elif torch.backends.cudnn.benchmark:
            rank_zero_warn(
                f"{_OWNER}: torch.backends.cudnn.benchmark=True picks cuDNN kernels by timing, so CUDA"
                " runs with the same seed can differ; use Trainer(benchmark=False) or deterministic=True"
            )
        if (
            trainer.strategy.root_device.type == "cuda"
            and not torch.are_deterministic_algorithms_enabled()
            and not self.deterministic
        ):
            rank_zero_warn(
                f"{_OWNER}: on CUDA, nondeterministic kernels can make same-seed runs differ bitwise;"
                " pass deterministic=True (or Trainer(deterministic=True)) for bit-identical runs"
            )

    # ------------------------------------------------------------------ separate sources
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sources is not None:  # the train source: what training draws from the global generators
            self._seed_process(trainer.global_rank, "train")

    def _seed_train_outside_fit(self, trainer: pl.Trainer) -> None:
        if self.sources is not None and trainer.state.fn != "fit":
            self._seed_process(trainer.global_rank, "train")

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seed_train_outside_fit(trainer)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seed_train_outside_fit(trainer)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seed_train_outside_fit(trainer)

    def _attach_data_generator(self, trainer: pl.Trainer) -> None:
        """Make the data source's generator the train dataloaders' and their samplers' ``generator``."""
        gen = self._data_generator
        if gen is None:
            assert self.sources is not None and self.seed is not None
            data_seed = self.sources["data"] + (trainer.global_rank if self.per_rank else 0)
            gen = self._data_generator = torch.Generator().manual_seed(data_seed)
        for dl in _train_loaders(trainer):
            if getattr(dl, "generator", None) is gen:  # attached already (an earlier epoch of this fit)
                continue
            sampler = getattr(dl, "sampler", None)
            inner = getattr(getattr(dl, "batch_sampler", None), "sampler", None)
            for owner in (dl, sampler, inner):
                if owner is None or not hasattr(owner, "generator") or owner.generator is gen:
                    continue
                if owner.generator is not None and not isinstance(owner.generator, torch.Generator):
                    continue
                try:
                    owner.generator = gen
                except (AttributeError, ValueError):  # a read-only generator: leave it be
                    rank_zero_warn(
                        f"{_OWNER}: the {type(owner).__name__} of the train dataloader does not accept a"
                        " generator; its draws do not follow the data seed"
                    )
            if not (
                sampler is None
                or hasattr(sampler, "generator")
                or isinstance(sampler, (SequentialSampler, DistributedSampler))
            ):
                rank_zero_warn(
                    f"{_OWNER}: the train dataloader's sampler {type(sampler).__name__} has no `generator`"
                    " attribute: whatever it draws comes from the global generators (the train source),"
                    " not from the data seed"
                )
            if getattr(dl, "persistent_workers", False) and getattr(dl, "num_workers", 0) > 0:
                rank_zero_warn(
                    f"{_OWNER}: persistent_workers=True with separate seed sources: the worker processes"
                    " were seeded when Lightning first built the train iterator, before the data seed"
                    " applies, so what the workers draw (augmentation) follows the train source; the"
                    " shuffle order follows the data seed. Use persistent_workers=False for worker draws"
                    " that follow the data seed"
                )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # dataloaders reloaded for this epoch (reload_dataloaders_every_n_epochs) get the data stream too;
        # Lightning creates this epoch's iterator after this hook
        if self._data_generator is not None:
            self._attach_data_generator(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if self.sources is not None:
            # the data source's stream, before any generator state is restored from a checkpoint
            self._attach_data_generator(trainer)
            if pending is None and trainer.ckpt_path is None:
                # a fresh fit: Lightning built the first train iterator before this hook, from the global
                # generators; build it again from the data stream (the sampler's epoch first)
                for dl in _train_loaders(trainer):
                    _compat.set_sampler_epoch(dl, _compat.epochs_processed(trainer))
                _compat.recreate_train_iterator(trainer)
        if pending is None:
            return
        states = pending["rng"]
        rank = trainer.global_rank
        gens = _loader_generators(trainer)
        saved_gens = pending["loader_generators"]
        # everything is checked before anything is restored
        for i, (gen, saved) in enumerate(zip(gens, saved_gens, strict=False)):
            if gen.get_state().numel() != saved.numel():
                raise ValueError(
                    f"{_OWNER}: checkpoint field 'loader_generators[{i}]' holds a {saved.numel()}-byte"
                    f" generator state, but train dataloader generator {i} (device {gen.device}) has"
                    f" {gen.get_state().numel()}-byte states"
                )
        if len(gens) != len(saved_gens):
            rank_zero_warn(
                f"{_OWNER}: checkpoint holds {len(saved_gens)} train dataloader generator state(s), the train"
                f" dataloaders now have {len(gens)}; the shuffle order does not resume exactly"
            )
        if len(states) != trainer.world_size:
            rank_zero_warn(
                f"{_OWNER}: checkpoint holds RNG states for {len(states)} rank(s), this run has "
                f"{trainer.world_size}; ranks without their own state reuse rank 0's, so the resume is not"
                " exact"
            )
        state = states[rank] if rank < len(states) else states[0]
        restore_rng_state(state)
        if pending.get("seed") is not None:  # the resumed run continues the recorded seed: record it
            for logger in trainer.loggers:
                logger.log_hyperparams(self.seed_record())
        loaders = _train_loaders(trainer)
        if any(
            getattr(dl, "persistent_workers", False) and getattr(dl, "num_workers", 0) > 0 for dl in loaders
        ):
            rank_zero_warn(
                f"{_OWNER}: resuming with persistent_workers=True: random draws made inside the worker"
                " processes (augmentation in Dataset.__getitem__) continue from fresh worker seeds, not from"
                " where the uninterrupted run's workers were; shuffling and everything drawn in the main"
                " process resume exactly. Use persistent_workers=False for an exact resume of worker draws"
            )
        for gen, gen_state in zip(gens, saved_gens, strict=False):
            gen.set_state(gen_state)
        position = _position(pending)
        old_restart = not _compat.tracks_restart_stage(trainer)
        if position == "validation_end" or (position == "mid_epoch" and old_restart):
            # Lightning < 2.5 runs the validation the checkpoint was written in again before training goes
            # on (and, after a checkpoint at an epoch's first batch, one the uninterrupted run did not run):
            # its draws (the validation iterator's seed) are not the uninterrupted run's, so the states are
            # restored again at its end
            self._restore_after_validation = state
        if old_restart and _compat.written_in_train_batch_end(trainer):
            rank_zero_warn(
                f"{_OWNER}: resuming on Lightning {_compat.lightning_version(trainer)} from a checkpoint"
                " written in on_train_batch_end (e.g. ModelCheckpoint(every_n_train_steps=...)): Lightning"
                " < 2.5 counts that batch as not yet completed (Lightning issue #14579, fixed in 2.5.0), so"
                " after the resume batch_idx, the logger's step and the val_check_interval positions are one"
                " batch behind the uninterrupted run and the epoch expects one batch more than its data holds"
                " (with a plain DataLoader at the epoch's last batch, one more batch is trained). The RNG"
                " states are restored, but this resume is not bit-identical: use lightning>=2.5, or resume"
                " from a checkpoint written at an epoch or validation end"
            )
        if position == "mid_epoch":
            if not all(_is_stateful_loader(dl) for dl in loaders):
                rank_zero_warn(
                    f"{_OWNER}: resuming from a checkpoint written mid-epoch with a DataLoader that has"
                    " no state_dict: Lightning restarts that epoch's data from a new iterator, so this resume"
                    " is not bit-identical to the uninterrupted run (RNG states are restored; resume from an"
                    " epoch-end checkpoint, or use a stateful dataloader such as torchdata's"
                    " StatefulDataLoader)"
                )
            elif any(
                getattr(dl, "num_workers", 0) > 0
                and not isinstance(getattr(dl, "dataset", None), WorkerRNGDataset)
                for dl in loaders
            ):
                rank_zero_info(
                    f"{_OWNER}: resuming mid-epoch with worker processes: random draws inside the workers"
                    " (augmentation in Dataset.__getitem__) resume exactly only if the dataset is wrapped in"
                    " lightning_regkit.rng.WorkerRNGDataset"
                )
            return  # a stateful loader already continues from its saved position: do not re-create it
        if position == "last_batch" and self._last_batch_resume_inexact(trainer, loaders):
            rank_zero_warn(
                f"{_OWNER}: resuming from a checkpoint written at the last training batch of an epoch"
                " (e.g. ModelCheckpoint(every_n_train_steps) at an epoch boundary) with validation"
                " enabled: Lightning skips the validation that followed it but still creates its dataloader"
                " iterators, in an order that differs from the uninterrupted run, so this resume is not"
                " bit-identical unless num_workers=0, check_val_every_n_epoch=1 and val_check_interval=1.0."
                " Resume from an epoch-end or validation-end checkpoint for an exact resume"
            )
        if position == "validation_end":
            # Written at the end of a validation run after the epoch's last batch, before Lightning marked
            # the epoch processed: Lightning finishes that epoch after the resume (on_train_epoch_end) and
            # creates the next epoch's iterator itself, from the states just restored.
            return
        if _compat.next_epoch_creates_train_iterator(trainer):
            # Written at on_train_epoch_end, and Lightning < 2.6 creates the next epoch's iterator itself when
            # its batches start, from the states just restored, as the uninterrupted run does
            return
        # Written at on_train_epoch_end or at the last training batch: Lightning goes on with the iterator
        # it built before the states were restored. Re-create it, as the uninterrupted run does at the start
        # of each epoch: the shuffle seed and workers' base seed repeat. The sampler's epoch first:
        # Lightning sets it (DistributedSampler.set_epoch) only later, and a multi-worker iterator draws its
        # first indices as soon as it is created.
        processed = _compat.epochs_processed(trainer)
        for dl in loaders:
            _compat.set_sampler_epoch(dl, processed)
        _compat.recreate_train_iterator(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._restore_after_validation = None  # training went on: no validation ran again before it

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self._restore_after_validation
        if state is None or trainer.sanity_checking:
            return
        self._restore_after_validation = None
        # a validation Lightning < 2.5 ran after the resume, before any training batch: the uninterrupted
        # run went on from the states the checkpoint holds, so does this one
        restore_rng_state(state)
        rank_zero_warn(
            f"{_OWNER}: Lightning {_compat.lightning_version(trainer)} ran a validation after resuming,"
            " before any training batch (Lightning < 2.5 runs again, in part, the validation a checkpoint"
            " was written in, and one after a checkpoint written at an epoch's first batch; fixed in 2.5.0):"
            " the metrics it logged are not the uninterrupted run's, and callbacks that act on validation"
            " results (EarlyStopping, ModelCheckpoint) saw one validation more. The RNG states were restored"
            " again after it, so the weights go on as in the uninterrupted run; use lightning>=2.5 for an"
            " exact resume of the logged values"
        )

    # ------------------------------------------------------------------ checkpoint
    @override
    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        state: dict[str, Any] = dict(self.seed_record())
        if not self.restore_rng:
            return state
        local = capture_rng_state()
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, local)
            state["rng"] = gathered
        else:
            state["rng"] = [local]
        state["loader_generators"] = (
            [] if trainer is None else [g.get_state() for g in _loader_generators(trainer)]
        )
        state["epoch_end"] = True if trainer is None else _compat.is_last_batch(trainer)
        state["position"] = "train_epoch_end" if trainer is None else self._where(trainer, state["epoch_end"])
        return state

    @staticmethod
    def _last_batch_resume_inexact(trainer: pl.Trainer, loaders: list[Any]) -> bool:
        """Exact as measured (docs/reproducibility.md): no validation, or 0 workers + validation per epoch."""
        if not trainer.enable_validation:
            return False
        workers = any(getattr(dl, "num_workers", 0) > 0 for dl in loaders)
        every_epoch = trainer.check_val_every_n_epoch == 1 and trainer.val_check_interval == 1.0
        return workers or not every_epoch

    @staticmethod
    def _where(trainer: pl.Trainer, last_batch: bool) -> str:
        if not last_batch:
            return "mid_epoch"
        if _compat.epoch_marked_processed(trainer):
            return "train_epoch_end"
        return "validation_end" if trainer.validating else "last_batch"

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning calls load_state_dict only for callbacks that have a state in the checkpoint
        if self.restore_rng and self.state_key not in (checkpoint.get("callbacks") or {}):
            rank_zero_warn(
                f"{_OWNER}: the checkpoint holds no SeedEverything state (it was written without this"
                " callback): the RNG states (dropout, shuffling, DataLoader workers) are not restored, so"
                " this resume is not bit-identical to an uninterrupted run; it continues from freshly"
                " seeded streams"
            )

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Validate a checkpoint's state (every field) and hold the RNG states for ``on_train_start``.

        Raises:
            ValueError: If any field has the wrong type, shape or range, or a required field is
                missing; the message names the callback and the field (see :func:`check_seed_state`).

        Example:
            >>> cb = SeedEverything(1)
            >>> cb.load_state_dict({"seed": 5, "seed_per_rank": False})
            >>> cb.seed
            5
            >>> cb.load_state_dict({"seed": 5, "seed_per_rank": False, "seed_init": 1, "seed_data": 2,
            ...                     "seed_train": 3})
            >>> cb.sources
            {'init': 1, 'data': 2, 'train': 3}
        """
        check_seed_state(state_dict)
        saved_seed = state_dict["seed"]
        if saved_seed is not None:
            if self.requested_seed is not None and self.requested_seed != saved_seed:
                rank_zero_warn(
                    f"{_OWNER}: resuming a run recorded with seed={saved_seed} while seed="
                    f"{self.requested_seed} was passed; the checkpoint's RNG states continue the original run"
                )
            self.seed = int(saved_seed)
        # the sources (separate or one stream, and their seeds) are the checkpoint's: the resumed run
        # continues the recorded one
        saved_sources = (
            {s: int(state_dict[f"seed_{s}"]) for s in SOURCES} if _SOURCE_KEYS[0] in state_dict else None
        )
        requested = {s: v for s, v in self.requested_sources.items() if v is not None}
        if requested and (saved_sources is None or any(saved_sources[s] != v for s, v in requested.items())):
            rank_zero_warn(
                f"{_OWNER}: resuming a run recorded with "
                + ("one stream for all sources" if saved_sources is None else f"sources {saved_sources}")
                + f" while {requested} was passed; the checkpoint's sources and RNG states continue the"
                " original run"
            )
        if saved_seed is not None:
            self.sources = saved_sources
        if self.restore_rng and "rng" in state_dict:
            self._pending = state_dict
        elif self.restore_rng:
            rank_zero_warn(f"{_OWNER}: the checkpoint holds no RNG state; this resume is not exact")
