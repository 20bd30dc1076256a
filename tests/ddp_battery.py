"""The suite's multi-process runs: every DDP scenario in two launches of one script (2 CPU ranks, gloo).

A DDP run on CPU costs a launch: Lightning's launcher starts rank 1 as a new interpreter that runs
the whole script again (~7 s of imports here; rank 0 comes from ``run_python``'s warm interpreter),
then both ranks rendezvous. So the DDP tests of several files share two launches of :func:`main`.
Each scenario is a function that runs its ``Trainer.fit`` calls one after another in both ranks and
writes what it measured from outside (weights, the ``p`` seen inside ``forward``, stop epochs, the
samples each step received ...) per rank under ``<root>/<scenario>/``. The launches:

- ``"first"``: the whole kit exactly as a user's script runs it under ``strategy="ddp"``
  (``test_integration.KIT_SCRIPT``; its ``fit`` starts rank 1), then every other DDP scenario and the
  uninterrupted runs of the seed-resume scenarios (a checkpoint every epoch);
- ``"second"``, a new pair of processes: the same kit run again (bit-identical rerun), then the
  resumes of the seed-resume runs from their first launch's checkpoints. Here rank 1 is forked from
  rank 0 before anything runs (:func:`_fork_rank_1`: no second ~7 s of imports), so both ranks run
  as processes created outside Lightning, as under ``torchrun``.

Before each scenario both ranks drop ``PL_GLOBAL_SEED`` and ``PL_SEED_WORKERS`` (as
:func:`helpers.run_python` does for a new script), so no scenario inherits another's seeding. The
tests read the results through :func:`battery_root` (both launches run once per pytest run, shared by
the xdist workers: :func:`once_per_run`) and :func:`load_ranks`; the launching process writes each
scenario's duration to ``timings_<launch>.json``.

Also here, as it runs in new processes too: ``test_seed``'s single-process resume
(:func:`seed_resume_single`, two ``run_python`` launches, see :func:`single_resume_root`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

#: The kit's DDP run: ``test_integration.KIT_SCRIPT`` with this configuration (as ``test_distributed``).
#: ``patience=1``: rank 0's ``val_loss`` stops the run after 5 epochs, while rank 1's own still improves.
KIT_DDP_CFG: dict[str, Any] = {"ddp": True, "max_epochs": 12, "patience": 1}
#: The DDP seed-resume scenario: ``RESUME_EPOCHS`` straight, resumed from the checkpoint after ``RESUME_AT``.
RESUME_EPOCHS, RESUME_AT = 3, 1
RESUME_VARIANTS = {"same-seed": False, "per-rank": True}
#: ``test_seed``'s single-process resume: ``SINGLE_EPOCHS`` straight, resumed after ``SINGLE_AT``.
SINGLE_EPOCHS, SINGLE_AT = 3, 1


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))  # Lightning's launcher sets it (rank 0's at its first fit)


def _save(folder: Path, data: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(data, folder / f"rank{_rank()}.pt")


# ----------------------------------------------------------------------------- scenarios
def kit(folder: Path, **cfg: Any) -> None:
    """``test_integration.KIT_SCRIPT`` (the whole kit, as a user writes it) with ``cfg``, in ``folder``.

    The text :func:`test_integration.kit_run` runs as a script, executed here as one.
    """
    from test_integration import KIT_SCRIPT

    folder.mkdir(parents=True, exist_ok=True)
    code = KIT_SCRIPT.replace("__CFG__", repr({"root": str(folder), **cfg}))
    exec(compile(code, f"KIT_SCRIPT in {folder.name}", "exec"), {"__name__": "__kit__"})


def _augmented_data() -> Any:
    """``SyntheticDataModule``: shuffled training data with random augmentation (torch and NumPy) drawn in
    ``__getitem__`` by 2 workers, re-created each epoch; validation in the main process (its data draws
    nothing; its iterator still takes its seed from the global generator, as with workers)."""
    from helpers import SyntheticDataModule
    from torch.utils.data import DataLoader

    class Data(SyntheticDataModule):
        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.val_set, batch_size=self.batch_size)

    return Data(num_workers=2, shuffle=True, augment=0.1, persistent_workers=False)


def foundation(root: Path) -> None:
    """Lightning DDP on 2 CPU processes over gloo: both ranks hold the same weights after a fit."""
    import lightning.pytorch as pl
    import torch.distributed as dist
    from helpers import LitClassifier, SyntheticDataModule, trainer_kwargs

    torch.manual_seed(0)
    model = LitClassifier()
    trainer = pl.Trainer(**trainer_kwargs(root, devices=2, strategy="ddp", max_epochs=1))
    trainer.fit(model, datamodule=SyntheticDataModule())
    gathered = trainer.strategy.all_gather(model.net.fc1.weight.detach())
    _save(
        root / "foundation",
        {
            "world_size": trainer.world_size,
            "global_rank": trainer.global_rank,
            "backend": str(dist.get_backend()),
            "pid": os.getpid(),
            "same": bool((gathered[0] == gathered[1]).all()),
        },
    )


def early_stopping(root: Path) -> None:
    """``EarlyStopping(restore_best_weights=True)``, scripted ``val_loss``: best epoch 2, stop at 5."""
    from helpers import SyntheticDataModule, trainer_kwargs, weights_of
    from lightning.pytorch import Trainer
    from test_early_stopping import Scripted

    from lightning_regkit.callbacks.early_stopping import EarlyStopping

    torch.manual_seed(0)
    model = Scripted([5, 4, 3, 3.5, 3.2, 3.1, 4, 4])
    es = EarlyStopping("val_loss", patience=3, restore_best_weights=True)
    kwargs = trainer_kwargs(root, max_epochs=8, num_sanity_val_steps=0, devices=2, strategy="ddp")
    trainer = Trainer(**kwargs, callbacks=[es])
    trainer.fit(model, datamodule=SyntheticDataModule(n_train=64, batch_size=16))
    _save(
        root / "early_stopping",
        {
            "stopped_epoch": es.stopped_epoch,
            "best_epoch": es.best_epoch,
            "weights": weights_of(model),
            "snapshot": model.snapshots[2],
            "last": model.snapshots[5],
            "epoch": trainer.current_epoch,
        },
    )


def dropout(root: Path) -> None:
    """``DropoutScheduler(Cosine(0, 0.5))``: the ``p`` each training ``F.dropout`` call receives, per step."""
    import lightning.pytorch as pl
    import torch.nn.functional as F
    from helpers import LitClassifier, SyntheticDataModule, TinyMLP, trainer_kwargs

    from lightning_regkit.callbacks.dropout import DropoutScheduler
    from lightning_regkit.schedules import Cosine

    seen: list[tuple[int, float]] = []
    step = [-1]
    real_dropout = F.dropout

    def recording_dropout(
        x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
    ) -> Any:
        if training:
            seen.append((step[0], p))
        return real_dropout(x, p, training, inplace)

    class Step(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            step[0] = trainer.global_step

    torch.manual_seed(0)
    callbacks = [DropoutScheduler(Cosine(0.0, 0.5)), Step()]
    trainer = pl.Trainer(**trainer_kwargs(root, devices=2, strategy="ddp", max_epochs=3, callbacks=callbacks))
    F.dropout = recording_dropout
    try:
        trainer.fit(LitClassifier(TinyMLP()), datamodule=SyntheticDataModule())
    finally:
        F.dropout = real_dropout
    _save(root / "dropout", {"seen": seen, "total": trainer.estimated_stepping_batches})


def regularized_module(root: Path) -> None:
    """L1 + L2 + proximal L1 + max-norm in the module's fast and autograd modes and as the callback."""
    import lightning.pytorch as pl
    from helpers import ClassifierSteps, LitClassifier, SyntheticDataModule, TinyMLP, trainer_kwargs

    from lightning_regkit.callbacks.weight_penalty import WeightPenalty
    from lightning_regkit.module import RegularizedModule
    from lightning_regkit.penalties import L1, L2, MaxNorm

    def penalties() -> list[Any]:
        return [L1(1e-3), L2(2e-2), L1(1e-3, proximal=True), MaxNorm(2.0)]

    class M(ClassifierSteps, RegularizedModule):
        def __init__(self, mode: str) -> None:
            super().__init__(mode=mode, penalties=penalties())
            torch.manual_seed(0)
            self.net = TinyMLP(p=0.0)
            self.lr, self.optimizer_name = 0.1, "sgd"

    out = {}
    for mode in ("fast", "autograd", "callback"):
        callbacks = []
        model: pl.LightningModule
        if mode == "callback":
            torch.manual_seed(0)
            model = LitClassifier(TinyMLP(p=0.0))
            callbacks = [WeightPenalty(penalties=penalties())]
        else:
            model = M(mode)
        kwargs = trainer_kwargs(root, devices=2, strategy="ddp", max_epochs=2, callbacks=callbacks)
        pl.Trainer(**kwargs).fit(model, SyntheticDataModule(shuffle=False))
        out[mode] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _save(root / "regularized_module", out)


#: ``test_seed_sources``: the base seeds, then the data seed alone changed, then the train seed alone.
SOURCE_RUNS = {
    "base": {"seed": 1, "init": 10, "data": 20, "train": 30},
    "data": {"seed": 1, "init": 10, "data": 21, "train": 30},
    "train": {"seed": 1, "init": 10, "data": 20, "train": 31},
}


def seed_sources(root: Path) -> None:
    """``SeedEverything`` with separate sources: batch order, dropout masks, noise and weights per rank."""
    import lightning.pytorch as pl
    from helpers import trainer_kwargs, weights_of
    from test_seed_sources import Loaders, Probe, observe

    from lightning_regkit.callbacks.seed import SeedEverything

    out = {}
    for name, seeds in SOURCE_RUNS.items():
        _clean_seed_env()
        seeder = SeedEverything(**seeds)
        seeder.seed_now(_rank())
        model = Probe()
        init = weights_of(model)
        kwargs = trainer_kwargs(root, max_epochs=2, callbacks=[seeder], devices=2, strategy="ddp")
        pl.Trainer(**kwargs).fit(model, Loaders())
        out[name] = observe(model, init)
    _save(root / "seed_sources", out)


def seed_resume(root: Path, variant: str, run: str) -> None:
    """``SeedEverything(11, per_rank=...)``; shuffled data augmented in 2 workers per rank; dropout.

    ``run``: ``"full"`` (``RESUME_EPOCHS`` straight, a checkpoint every epoch, first launch) or
    ``"resumed"`` (from the checkpoint of epoch ``RESUME_AT - 1`` to ``RESUME_EPOCHS``, second launch).
    """
    import lightning.pytorch as pl
    from helpers import LitClassifier, trainer_kwargs, weights_of
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from lightning_regkit.callbacks.seed import SeedEverything

    folder = root / "seed_resume" / variant
    folder.mkdir(parents=True, exist_ok=True)
    rank = _rank()
    full = run == "full"
    seeder = SeedEverything(11, per_rank=RESUME_VARIANTS[variant])
    seeder.seed_now(rank)
    callbacks: list[pl.Callback] = [seeder]
    if full:
        callbacks.append(ModelCheckpoint(dirpath=folder / "ckpt", filename="{epoch}", save_top_k=-1))
    model = LitClassifier()
    torch.save(weights_of(model), folder / f"{run}_init_rank{rank}.pt")
    kwargs = trainer_kwargs(
        folder,
        max_epochs=RESUME_EPOCHS,
        callbacks=callbacks,
        devices=2,
        strategy="ddp",
        enable_checkpointing=full,
        logger=CSVLogger(folder, name=run),
    )
    ckpt_path = None if full else folder / "ckpt" / f"epoch={RESUME_AT - 1}.ckpt"
    pl.Trainer(**kwargs).fit(model, _augmented_data(), ckpt_path=ckpt_path)
    torch.save(weights_of(model), folder / f"{run}_rank{rank}.pt")


# ----------------------------------------------------------------------------- single process, new processes
def seed_resume_single(folder: Path, phase: str) -> None:
    """``test_seed``'s resume in a new process: one process, augmentation in 2 workers, dropout.

    Phase ``"first"`` trains ``SINGLE_EPOCHS`` straight, with a checkpoint every epoch, with the callback
    (``kit=True``) and with plain Lightning; phase ``"second"`` (another process) resumes both runs from
    their checkpoint of epoch ``SINGLE_AT - 1`` to ``SINGLE_EPOCHS`` and trains the callback's run from
    scratch once more.
    """
    import lightning.pytorch as pl
    from helpers import LitClassifier, trainer_kwargs, weights_of
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from lightning_regkit.callbacks.seed import SeedEverything

    class StartEpoch(Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.epoch = trainer.current_epoch

    def run(kit: bool, save: bool = False, ckpt_path: Path | None = None) -> tuple[pl.LightningModule, int]:
        callbacks: list[pl.Callback] = []
        if kit:
            seeder = SeedEverything(7)
            seeder.seed_now()  # before the model is built
            callbacks.append(seeder)
        else:
            pl.seed_everything(7, workers=True, verbose=False)
        start = StartEpoch()
        callbacks.append(start)
        if save:
            callbacks.append(
                ModelCheckpoint(dirpath=folder / f"ckpt_{kit}", filename="{epoch}", save_top_k=-1)
            )
        model = LitClassifier()  # TinyMLP with dropout
        kwargs = trainer_kwargs(
            folder, max_epochs=SINGLE_EPOCHS, callbacks=callbacks, enable_checkpointing=save
        )
        pl.Trainer(**kwargs).fit(model, _augmented_data(), ckpt_path=ckpt_path)
        return model, start.epoch

    if phase == "first":
        for kit in (True, False):
            torch.save(weights_of(run(kit, save=True)[0]), folder / f"full_{kit}.pt")
        return
    info = {}
    for kit in (True, False):
        model, start = run(kit, ckpt_path=folder / f"ckpt_{kit}" / f"epoch={SINGLE_AT - 1}.ckpt")
        torch.save(weights_of(model), folder / f"resumed_{kit}.pt")
        info[f"start_epoch_{kit}"] = start
    torch.save(weights_of(run(True)[0]), folder / "full_again.pt")
    (folder / "info.json").write_text(json.dumps(info))


# ----------------------------------------------------------------------------- the launches
def _clean_seed_env() -> None:
    for var in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        os.environ.pop(var, None)


def _scenarios(root: Path, phase: str) -> list[tuple[str, Callable[[], None]]]:
    if phase == "first":
        runs: list[tuple[str, Callable[[], None]]] = [
            ("kit_ddp_first", lambda: kit(root / "kit_ddp_first", **KIT_DDP_CFG)),
            ("foundation", lambda: foundation(root)),
            ("early_stopping", lambda: early_stopping(root)),
            ("dropout", lambda: dropout(root)),
            ("regularized_module", lambda: regularized_module(root)),
            ("seed_sources", lambda: seed_sources(root)),
        ]
        for variant in RESUME_VARIANTS:
            runs.append((f"seed_resume/{variant}/full", lambda v=variant: seed_resume(root, v, "full")))
        return runs
    if phase == "second":
        runs = [("kit_ddp_second", lambda: kit(root / "kit_ddp_second", **KIT_DDP_CFG))]
        for variant in RESUME_VARIANTS:
            runs.append((f"seed_resume/{variant}/resumed", lambda v=variant: seed_resume(root, v, "resumed")))
        return runs
    raise ValueError(f"phase must be 'first' or 'second', got {phase!r}")


def _fork_rank_1() -> int | None:
    """Start rank 1 as a fork of this process (the second launch); return its pid in rank 0, None in rank 1.

    Called before anything ran, in a process ``run_python`` forked from its warm interpreter: rank 1
    starts with the modules imported (no ~7 s of imports) and its global generators reseeded from the
    OS as a new interpreter's are. Both ranks then have the variables Lightning's launcher gives the
    ranks it starts (``LOCAL_RANK`` and the rendezvous), so Lightning launches nothing: the ranks run
    the code path of processes created outside Lightning (as under ``torchrun``).
    """
    import random
    import socket

    import numpy as np

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK="0", WORLD_SIZE="2")
    pid = os.fork()
    if pid == 0:
        os.environ["LOCAL_RANK"] = "1"
        random.seed()
        np.random.seed()
        torch.seed()
        return None
    os.environ["LOCAL_RANK"] = "0"
    return pid


def _watch_rank_1(pid: int) -> Any:
    """A thread of rank 0 that ends rank 0 at once when rank 1 fails (as Lightning's process observer)."""
    import sys
    import threading

    def watch() -> None:
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if status != 0:
            print(f"ddp_battery: rank 1 (pid {pid}) exited with {status}; ending rank 0", file=sys.stderr)
            sys.stderr.flush()
            os._exit(1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def main(phase: str, root: str) -> None:
    """Run one launch's scenarios in this rank (both ranks run this); rank 0 records their durations.

    In the first launch Lightning's launcher starts rank 1 (a new interpreter running this script) at
    the first ``fit``; in the second, rank 1 is forked from rank 0 before anything runs (see
    :func:`_fork_rank_1`).
    """
    import sys
    import traceback

    import torch.distributed as dist

    base = Path(root)
    watcher = None
    if phase == "second":
        rank_1 = _fork_rank_1()
        if rank_1 is not None:
            watcher = _watch_rank_1(rank_1)
    try:
        timings = {}
        for name, scenario in _scenarios(base, phase):
            _clean_seed_env()
            start = time.perf_counter()
            scenario()
            timings[name] = round(time.perf_counter() - start, 2)
        dist.barrier()  # rank 1 has written everything before rank 0 exits (run_python then ends the group)
    except BaseException:
        if phase == "second" and _rank() == 1:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        raise
    if _rank() == 0:
        (base / f"timings_{phase}.json").write_text(json.dumps(timings, indent=1))
        if watcher is not None:
            watcher.join(60)
    elif phase == "second":  # the forked rank 1 ends here, not in the script's caller
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# ----------------------------------------------------------------------------- once per pytest run
def _run_launches(root: Path) -> None:
    from helpers import run_python

    for phase in ("first", "second"):
        run_python(f"from ddp_battery import main\nmain({phase!r}, {str(root)!r})\n", cwd=root, timeout=300)


def _run_single_resume(root: Path) -> None:
    from helpers import run_python

    for phase in ("first", "second"):
        code = "from pathlib import Path\nfrom ddp_battery import seed_resume_single\n"
        code += f"seed_resume_single(Path({str(root)!r}), {phase!r})\n"
        run_python(code, cwd=root, timeout=300)


_MEMO: dict[str, Path] = {}


def once_per_run(
    tmp_path_factory: pytest.TempPathFactory, name: str, produce: Callable[[Path], object]
) -> Path:
    """``produce(folder)`` once per pytest run (once in all under xdist); return ``folder``.

    Under xdist the first worker to ask produces it, under a file lock in the run's shared temporary
    folder (pytest-xdist's recipe); the others wait, then read the files. A failure is recorded, so
    the other workers fail at once with the same message instead of producing it again.
    """
    if name in _MEMO:
        return _MEMO[name]
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.getbasetemp() / name
        folder.mkdir()
        produce(folder)
    else:
        from filelock import FileLock

        folder = tmp_path_factory.getbasetemp().parent / name
        failed, done = folder.with_name(f"{name}.failed"), folder.with_name(f"{name}.done")
        with FileLock(str(folder) + ".lock"):
            if failed.exists():
                raise AssertionError(f"{name} failed in another xdist worker:\n{failed.read_text()}")
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)  # what a worker that died mid-way left
                folder.mkdir()
                try:
                    produce(folder)
                except BaseException as exc:
                    failed.write_text(f"{type(exc).__name__}: {exc}")
                    raise
                done.touch()
    _MEMO[name] = folder
    return folder


def battery_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of both DDP launches' results (see :func:`once_per_run`)."""
    return once_per_run(tmp_path_factory, "ddp_battery", _run_launches)


def single_resume_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of :func:`seed_resume_single`'s two launches (see :func:`once_per_run`)."""
    return once_per_run(tmp_path_factory, "seed_resume_single", _run_single_resume)


def load_ranks(tmp_path_factory: pytest.TempPathFactory, scenario: str) -> list[dict[str, Any]]:
    """What DDP ``scenario`` recorded in rank 0 and in rank 1."""
    folder = battery_root(tmp_path_factory) / scenario
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
