"""``SeedEverything``: seeding, determinism, and RNG state in checkpoints for exact resume.

When it seeds, per stage: in :meth:`SeedEverything.setup`, the first hook of
``fit``/``validate``/``test``/``predict`` that callbacks see (after the datamodule's ``setup``,
before the module's ``setup`` and ``configure_model``). A model built *before* ``Trainer.fit``
draws its initial weights before any callback runs; seed that too with
:meth:`SeedEverything.seed_now` (or, with LightningCLI, the ``seed_everything:`` key, which
seeds before the model is instantiated).

Exact resume: every checkpoint holds the RNG states (Python, NumPy, torch CPU, CUDA) of every
rank, taken when the checkpoint is written. On resume the states are put back in
``on_train_start``, after Lightning has built the train dataloader and before the first batch,
and the train iterator is created again from the restored state, as the uninterrupted run does
at the start of each epoch: the sampler's shuffle seed and the workers' base seed (both drawn
from torch's global generator when an iterator is created) then repeat exactly.
"""

from __future__ import annotations

import numbers
import os
import secrets
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.connectors.accelerator_connector import _set_torch_flags
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_regkit.rng import capture_rng_state, restore_rng_state

__all__ = ["SeedEverything"]

MAX_SEED = 2**32 - 1
_Deterministic = bool | Literal["warn"] | None


def _check_seed(owner: str, name: str, value: Any, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        allowed = "an int or None" if allow_none else "an int"
        raise TypeError(f"{owner}: {name} must be {allowed}, got {value!r} ({type(value).__name__})")
    if not 0 <= int(value) <= MAX_SEED:
        raise ValueError(f"{owner}: {name} must be in [0, 2**32 - 1] = [0, {MAX_SEED}], got {value}")


def _flatten_loaders(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [dl for v in obj.values() for dl in _flatten_loaders(v)]
    if isinstance(obj, (list, tuple)):
        return [dl for v in obj for dl in _flatten_loaders(v)]
    return [] if obj is None else [obj]


def _train_loaders(trainer: pl.Trainer) -> list[Any]:
    """The train dataloaders once the fit loop has built them (empty before)."""
    if getattr(trainer.fit_loop, "_combined_loader", None) is None:
        return []
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


class SeedEverything(Callback):
    """Seed every run, record the seed, and make resumed runs bit-identical to uninterrupted ones.

    Seeds Python, NumPy and torch (CPU and every CUDA device) with
    :func:`lightning.pytorch.seed_everything` at the start of each stage, with DataLoader worker
    seeding on by default; records the seed in the loggers' hyperparameters and in checkpoints;
    saves the RNG states in every checkpoint and restores them on resume.

    Exact resume holds for checkpoints written at the end of a training epoch (Lightning's
    ``ModelCheckpoint`` default), with dropout, shuffling, ``num_workers > 0`` and DDP. Limits,
    each warned about when it applies: a checkpoint written mid-epoch resumes exactly only with a
    stateful dataloader (one with ``state_dict``/``load_state_dict``, e.g. torchdata's
    ``StatefulDataLoader``), because a plain ``DataLoader`` restarts its epoch; random draws made
    *inside* persistent worker processes (``persistent_workers=True``) are not reachable from the
    main process, so such augmentations continue from a fresh worker seed after resume
    (everything drawn in the main process - shuffle order, dropout - is still exact). With
    ``persistent_workers=False`` workers are re-created each epoch from the restored main RNG, so
    their draws resume exactly too.

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

    Raises:
        TypeError: If ``seed`` is not an int or None, or a flag is not a bool.
        ValueError: If ``seed`` is outside ``[0, 2**32 - 1]`` or ``deterministic`` is not one of
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
    """

    def __init__(
        self,
        seed: int | None = None,
        workers: bool = True,
        per_rank: bool = False,
        deterministic: bool | Literal["warn"] | None = None,
        restore_rng: bool = True,
    ) -> None:
        super().__init__()
        _check_seed("SeedEverything", "seed", seed, allow_none=True)
        for name, flag in (("workers", workers), ("per_rank", per_rank), ("restore_rng", restore_rng)):
            if not isinstance(flag, bool):
                raise TypeError(
                    f"SeedEverything: {name} must be a bool, got {flag!r} ({type(flag).__name__})"
                )
        if not (deterministic is None or isinstance(deterministic, bool) or deterministic == "warn"):
            raise ValueError(
                f"SeedEverything: deterministic must be True, False, 'warn' or None, got {deterministic!r}"
            )
        self.requested_seed = None if seed is None else int(seed)
        self.workers = workers
        self.per_rank = per_rank
        self.deterministic = deterministic
        self.restore_rng = restore_rng
        # progress / record (not configuration)
        self.seed: int | None = self.requested_seed
        self.rank_seed: int | None = None
        self.world_size = 1
        self._pending: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None

    # ------------------------------------------------------------------ seeding
    def seed_now(self, rank: int = 0) -> int:
        """Seed Python, NumPy and torch now (e.g. before building the model); return the seed used.

        With ``seed=None`` the fresh seed is drawn here once and kept for the run.

        Args:
            rank: The process's global rank; used only when ``per_rank=True`` (seed ``seed + rank``).

        Returns:
            The seed given to :func:`lightning.pytorch.seed_everything`.

        Example:
            >>> import torch
            >>> a = (SeedEverything(7).seed_now(), torch.rand(2))
            >>> b = (SeedEverything(7).seed_now(), torch.rand(2))
            >>> a[0] == b[0] and bool(torch.equal(a[1], b[1]))
            True
        """
        if self.seed is None:
            self.seed = secrets.randbelow(MAX_SEED + 1)
        rank_seed = self.seed + rank if self.per_rank else self.seed
        _check_seed("SeedEverything", "seed + rank (per_rank=True)", rank_seed, allow_none=False)
        pl.seed_everything(rank_seed, workers=self.workers, verbose=False)
        # the distributed sampler reads PL_GLOBAL_SEED: keep it equal on all ranks so shards partition
        os.environ["PL_GLOBAL_SEED"] = str(self.seed)
        self.rank_seed = rank_seed
        return rank_seed

    def seed_record(self) -> dict[str, Any]:
        """The seed as recorded in loggers and checkpoints.

        Returns:
            ``{"seed": int, "seed_per_rank": bool}`` plus ``"rank_seeds"`` (one per rank) with
            ``per_rank=True``.

        Example:
            >>> cb = SeedEverything(3, per_rank=True)
            >>> _ = cb.seed_now()
            >>> cb.seed_record()
            {'seed': 3, 'seed_per_rank': True, 'rank_seeds': [3]}
        """
        record: dict[str, Any] = {"seed": self.seed, "seed_per_rank": self.per_rank}
        if self.per_rank and self.seed is not None:
            record["rank_seeds"] = [self.seed + r for r in range(self.world_size)]
        return record

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._pending = None  # RNG states come only from this stage's checkpoint (loaded after setup)
        self._apply_determinism(trainer)
        self.world_size = trainer.world_size
        if self.seed is None:
            self.seed = secrets.randbelow(MAX_SEED + 1)
        # rank 0's seed wins: a seed drawn per process (seed=None) must agree across ranks
        self.seed = int(trainer.strategy.broadcast(self.seed, src=0))
        if self.per_rank:
            _check_seed(
                "SeedEverything",
                "seed + world_size - 1 (per_rank=True)",
                self.seed + self.world_size - 1,
                allow_none=False,
            )
        self.seed_now(trainer.global_rank)
        if self.requested_seed is None:
            rank_zero_info(
                f"SeedEverything: drew seed {self.seed} (pass seed={self.seed} to repeat this run)"
            )
        for logger in trainer.loggers:
            logger.log_hyperparams(self.seed_record())

    def _apply_determinism(self, trainer: pl.Trainer) -> None:
        if self.deterministic is not None:
            # Trainer(deterministic=True) has already called torch.use_deterministic_algorithms(True)
            if self.deterministic is False and torch.are_deterministic_algorithms_enabled():
                raise ValueError(
                    "SeedEverything: deterministic=False conflicts with deterministic algorithms already"
                    " enabled (Trainer(deterministic=True) or torch.use_deterministic_algorithms(True));"
                    " set it in one place"
                )
            if torch.backends.cudnn.benchmark and self.deterministic:
                rank_zero_warn(
                    "SeedEverything: torch.backends.cudnn.benchmark=True (e.g. Trainer(benchmark=True)) picks"
                    " cuDNN kernels by timing; deterministic=True turns it off"
                )
            _set_torch_flags(deterministic=self.deterministic)
        elif torch.backends.cudnn.benchmark:
            rank_zero_warn(
                "SeedEverything: torch.backends.cudnn.benchmark=True picks cuDNN kernels by timing, so CUDA"
                " runs with the same seed can differ; use Trainer(benchmark=False) or deterministic=True"
            )
        if (
            trainer.strategy.root_device.type == "cuda"
            and not torch.are_deterministic_algorithms_enabled()
            and not self.deterministic
        ):
            rank_zero_warn(
                "SeedEverything: on CUDA, nondeterministic kernels can make same-seed runs differ bitwise;"
                " pass deterministic=True (or Trainer(deterministic=True)) for bit-identical runs"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        states = pending["rng"]
        rank = trainer.global_rank
        if len(states) != trainer.world_size:
            rank_zero_warn(
                f"SeedEverything: checkpoint holds RNG states for {len(states)} rank(s), this run has "
                f"{trainer.world_size}; ranks without their own state reuse rank 0's, so the resume is not"
                " exact"
            )
        restore_rng_state(states[rank] if rank < len(states) else states[0])
        if pending.get("seed") is not None:  # the resumed run continues the recorded seed: record it
            for logger in trainer.loggers:
                logger.log_hyperparams(self.seed_record())
        if any(
            getattr(dl, "persistent_workers", False) and getattr(dl, "num_workers", 0) > 0
            for dl in _train_loaders(trainer)
        ):
            rank_zero_warn(
                "SeedEverything: resuming with persistent_workers=True: random draws made inside the worker"
                " processes (augmentation in Dataset.__getitem__) continue from fresh worker seeds, not from"
                " where the uninterrupted run's workers were; shuffling and everything drawn in the main"
                " process resume exactly. Use persistent_workers=False for an exact resume of worker draws"
            )
        gens = _loader_generators(trainer)
        saved_gens = pending.get("loader_generators", [])
        for gen, state in zip(gens, saved_gens, strict=False):
            gen.set_state(state)
        if not pending.get("epoch_end", True):
            if not any(callable(getattr(dl, "load_state_dict", None)) for dl in _train_loaders(trainer)):
                rank_zero_warn(
                    "SeedEverything: resuming from a checkpoint written mid-epoch with a DataLoader that has"
                    " no state_dict: Lightning restarts that epoch's data from a new iterator, so this resume"
                    " is not bit-identical to the uninterrupted run (RNG states are restored; resume from an"
                    " epoch-end checkpoint, or use a stateful dataloader such as torchdata's"
                    " StatefulDataLoader)"
                )
            return  # a stateful loader already continues from its saved position: do not re-create it
        # Re-create the train iterator from the restored state, as the uninterrupted run does at the start
        # of each epoch (training_epoch_loop.on_run_start): the shuffle seed and workers' base seed repeat.
        # The sampler's epoch first: Lightning sets it (DistributedSampler.set_epoch) only later, in
        # on_advance_start, and a multi-worker iterator draws its first indices as soon as it is created, so
        # without this a DDP resume with num_workers > 0 replays the wrong shuffle for its first epoch.
        progress = trainer.fit_loop.epoch_progress.current  # a _ProcessedTracker, typed as its base
        for dl in _train_loaders(trainer):
            _set_sampler_epoch(dl, int(progress.processed))  # type: ignore[attr-defined]
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is not None:
            iter(fetcher)

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
        if trainer is not None:
            state["loader_generators"] = [g.get_state() for g in _loader_generators(trainer)]
            state["epoch_end"] = bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        return state

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning calls load_state_dict only for callbacks that have a state in the checkpoint
        if self.restore_rng and self.state_key not in (checkpoint.get("callbacks") or {}):
            rank_zero_warn(
                "SeedEverything: the checkpoint holds no SeedEverything state (it was written without this"
                " callback): the RNG states (dropout, shuffling, DataLoader workers) are not restored, so"
                " this resume is not bit-identical to an uninterrupted run; it continues from freshly"
                " seeded streams"
            )

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_seed = state_dict.get("seed")
        if saved_seed is not None:
            if self.requested_seed is not None and self.requested_seed != saved_seed:
                rank_zero_warn(
                    f"SeedEverything: resuming a run recorded with seed={saved_seed} while seed="
                    f"{self.requested_seed} was passed; the checkpoint's RNG states continue the original run"
                )
            self.seed = int(saved_seed)
        if self.restore_rng and "rng" in state_dict:
            self._pending = state_dict
        elif self.restore_rng:
            rank_zero_warn("SeedEverything: the checkpoint holds no RNG state; this resume is not exact")
