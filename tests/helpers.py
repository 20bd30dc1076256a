"""Test helpers shared by every test file: tiny models, data, a fast Trainer, subprocess runs.

Import them directly (``from helpers import TinyMLP``: ``tests/`` is on pytest's ``pythonpath``);
``conftest.py`` only defines fixtures on top of them. Subprocess scripts (DDP, kill/resume) get ``tests/`` and
``examples/`` on their ``PYTHONPATH`` through :func:`run_python`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from warm_interpreter import needs_fresh_interpreter, server_for

TESTS_DIR = Path(__file__).resolve().parent
#: Inductor (``mode="compiled"``) compiles C++ on CPU; without a compiler those tests are skipped.
HAS_CXX = any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if c)
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler for torch.compile (Inductor)")
ROOT = TESTS_DIR.parent
EXAMPLES_DIR = ROOT / "examples"

N_FEATURES = 8
N_CLASSES = 3


# ----------------------------------------------------------------------------- models
class TinyMLP(nn.Module):
    """8 -> 16 -> 3 with bias, LayerNorm and dropout.

    Parameter names: ``fc1.weight``, ``fc1.bias``, ``norm.weight``, ``norm.bias``,
    ``fc2.weight``, ``fc2.bias``; only the two ``fc*.weight`` matrices are "decayable".
    """

    def __init__(
        self, in_features: int = N_FEATURES, hidden: int = 16, num_classes: int = N_CLASSES, p: float = 0.1
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(F.relu(self.norm(self.fc1(x)))))


class TinyTransformer(nn.Module):
    """Each input feature is a token: embed -> MultiheadAttention -> TransformerEncoderLayer -> pool.

    Dropout lives in three forms: the float ``attn.dropout`` of ``nn.MultiheadAttention``,
    the encoder layer's ``dropout``/``dropout1``/``dropout2`` modules plus its own attention's
    float, and a plain ``nn.Dropout`` (``drop``) before the head.
    """

    def __init__(
        self, d_model: int = 16, nhead: int = 2, num_classes: int = N_CLASSES, p: float = 0.1
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(1, d_model)
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=p, batch_first=True)
        self.encoder = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=2 * d_model, dropout=p, batch_first=True
        )
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.unsqueeze(-1))
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.encoder(h + a)
        return self.head(self.drop(h.mean(dim=1)))


class ClassifierSteps:
    """Training/validation/test steps and optimizer for a classifier held in ``self.net``.

    A mixin, so the same steps serve ``pl.LightningModule`` and the kit's own module
    subclasses: ``class M(ClassifierSteps, RegularizedModule)``.
    Logs ``train_loss`` (step and epoch), ``val_loss``, ``val_acc``, ``test_acc``.
    """

    net: nn.Module
    lr: float
    optimizer_name: str
    log: Callable[..., None]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.net.parameters()
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        return torch.optim.SGD(params, lr=self.lr)


class LitClassifier(ClassifierSteps, pl.LightningModule):
    """A plain LightningModule around ``net`` (default :class:`TinyMLP`)."""

    def __init__(self, net: nn.Module | None = None, lr: float = 0.1, optimizer_name: str = "sgd") -> None:
        super().__init__()
        self.net = net if net is not None else TinyMLP()
        self.lr = lr
        self.optimizer_name = optimizer_name


# ----------------------------------------------------------------------------- data
def make_classification(n: int, seed: int, n_features: int = N_FEATURES) -> TensorDataset:
    """A learnable synthetic problem: labels from a fixed random linear teacher plus noise."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n_features, N_CLASSES, generator=torch.Generator().manual_seed(1234))
    x = torch.randn(n, n_features, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(n, N_CLASSES, generator=g)).argmax(-1)
    return TensorDataset(x, y)


class Augmented(Dataset):
    """``x + noise * (N(0, 1) from torch + U(-1, 1) from NumPy)``: random draws in ``__getitem__``.

    Inside DataLoader workers these draws come from the workers' own RNGs, so a run is repeatable
    (and a resume exact) only if the workers are seeded from the main process's state.
    """

    def __init__(self, base: TensorDataset, noise: float) -> None:
        self.base, self.noise = base, noise

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.base[i]
        jitter = torch.randn(x.shape) + torch.from_numpy(np.random.uniform(-1, 1, x.shape)).float()
        return x + self.noise * jitter, y


class SyntheticDataModule(pl.LightningDataModule):
    """Synthetic classification data made with a fixed generator (same tensors in every process).

    ``augment > 0`` adds random noise to training samples in ``__getitem__`` (see :class:`Augmented`);
    ``persistent_workers`` defaults to ``num_workers > 0``.
    """

    def __init__(
        self,
        n_train: int = 64,
        n_val: int = 32,
        batch_size: int = 16,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        augment: float = 0.0,
        persistent_workers: bool | None = None,
    ) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size
        self.num_workers, self.shuffle, self.seed = num_workers, shuffle, seed
        self.augment = augment
        self.persistent_workers = num_workers > 0 if persistent_workers is None else persistent_workers

    def setup(self, stage: str | None = None) -> None:
        self.train_set: Dataset = make_classification(self.n_train, self.seed)
        if self.augment:
            self.train_set = Augmented(self.train_set, self.augment)  # type: ignore[arg-type]
        self.val_set = make_classification(self.n_val, self.seed + 1)

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)


# ----------------------------------------------------------------------------- trainer
def trainer_kwargs(root: Path | str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a fast, quiet CPU Trainer writing only under ``root``."""
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "log_every_n_steps": 1,
        "default_root_dir": str(root),
    }
    kwargs.update(overrides)
    return kwargs


def classifier_cli(config: Path | str) -> Any:
    """``LightningCLI(LitClassifier, SyntheticDataModule)`` built from the YAML ``config``, not run."""
    from lightning.pytorch.cli import LightningCLI

    return LightningCLI(
        LitClassifier,
        SyntheticDataModule,
        args=["--config", str(config)],
        run=False,
        save_config_callback=None,
    )


def load_file_module(path: Path, name: str) -> ModuleType:
    """The module of the Python file ``path`` (a script or hook not on ``sys.path``), as ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def weights_of(module: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of every parameter and buffer."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def max_abs_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """Largest absolute elementwise difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0 for k in a)


def assert_tree_equal(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts/lists/tuples equal, tensors identical (dtype, shape and every bit of value)."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, list(a), list(b))
        for k in a:
            assert_tree_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tree_equal(x, y, f"{where}/{i}")
    else:
        assert a == b, (where, a, b)


# ----------------------------------------------------------------------------- subprocesses
#: Prepended to every subprocess script. ``SIGUSR1`` makes a process print every thread's Python
#: stack into a file of its own, ``stack-<time>-<pid>.txt`` in ``$REGKIT_STACK_DIR``: the script's
#: process, every process forked from it (DataLoader workers; ``os.register_at_fork`` opens the
#: child's own file) and every process that runs the script again (Lightning's DDP ranks). One file
#: per process, so the dumps of processes that print at the same moment never interleave.
_STACK_DUMP = """\
import faulthandler as _fh, os as _os, signal as _sig, time as _time
def _regkit_stack_file():
    if _os.environ.get("REGKIT_STACK_DIR"):
        name = f"stack-{_time.time_ns()}-{_os.getpid()}.txt"
        _fh.register(_sig.SIGUSR1, file=open(_os.path.join(_os.environ["REGKIT_STACK_DIR"], name), "w"),
                     all_threads=True)
_regkit_stack_file()
_os.register_at_fork(after_in_child=_regkit_stack_file)
"""


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _collect_stacks(stack_dir: Path, wait: float = 5.0) -> str:
    """Ask every process of the group to dump its stacks (already signalled), wait until each file has
    its dump (or ``wait`` s passed), and join the files in the order the processes started."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        files = sorted(stack_dir.iterdir())
        if files and all(f.stat().st_size for f in files):
            break
        time.sleep(0.1)
    parts = []
    for f in sorted(stack_dir.iterdir()):
        pid = f.stem.rsplit("-", 1)[1]
        text = f.read_text().rstrip() or "(no dump: the process had ended or did not answer SIGUSR1)"
        parts.append(f"--- process {pid}\n{text}")
    return "\n".join(parts) or "(no process registered a stack dump)"


def run_python(
    code: str,
    cwd: Path | str,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script in a new process (``tests/`` and ``examples/`` importable).

    Used for DDP runs and for "new process" resume tests. Raises with the child's output if it
    exits non-zero. The script runs in its own session and process group. By default the process is
    forked from this test process's warm interpreter (:mod:`warm_interpreter`: torch and Lightning
    already imported, ~0.1 s instead of ~7 s); ``fresh=True``, or an ``env`` that sets start-up
    variables (``PYTHON*``, ``OMP_*``, ...), starts a really new interpreter instead. A run that passes
    ``timeout`` fails the test (it is never retried): every process of the group (the DDP ranks, their
    DataLoader workers) first writes its Python stacks to a file of its own, the failure message joins
    those dumps process by process, and the whole group is then killed, so nothing outlives the call.
    """
    pythonpath = [str(TESTS_DIR), str(EXAMPLES_DIR), str(ROOT)]
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([*pythonpath, full_env.get("PYTHONPATH", "")])
    full_env.pop("PL_GLOBAL_SEED", None)
    full_env.pop("PL_SEED_WORKERS", None)
    full_env.update(env or {})
    script = Path(cwd) / "_script.py"
    script.write_text(_STACK_DUMP + textwrap.dedent(code))
    args = [sys.executable, str(script)]
    with tempfile.TemporaryDirectory(prefix="regkit-stacks-") as stack_dir:
        full_env["REGKIT_STACK_DIR"] = stack_dir
        if fresh or needs_fresh_interpreter(env):
            returncode, stdout, stderr = _run_fresh(args, cwd, full_env, timeout, Path(stack_dir))
        else:
            stacks: list[str] = []

            def collect(pid: int) -> None:
                _signal_group(pid, signal.SIGUSR1)
                stacks.append(_collect_stacks(Path(stack_dir)))

            rc, stdout, stderr, _ = server_for(pythonpath).run(script, cwd, full_env, timeout, collect)
            returncode = (
                _timed_out(timeout, stacks[0] if stacks else "", stdout, stderr) if rc is None else rc
            )
    if returncode != 0:
        raise AssertionError(
            f"subprocess failed with {returncode}\n--- stdout\n{stdout[-4000:]}\n--- stderr\n{stderr[-6000:]}"
        )
    return subprocess.CompletedProcess(args, returncode, stdout, stderr)


def _timed_out(timeout: float, stacks: str, stdout: str, stderr: str) -> int:
    raise AssertionError(
        f"The subprocess timed out after {timeout} s; the Python stacks of its processes follow\n"
        f"{stacks}\n--- stdout\n{stdout[-4000:]}\n--- stderr\n{stderr[-8000:]}"
    )


def _run_fresh(
    args: list[str], cwd: Path | str, env: dict[str, str], timeout: float, stack_dir: Path
) -> tuple[int, str, str]:
    child = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(child.pid, signal.SIGUSR1)
        stacks = _collect_stacks(stack_dir)
        _signal_group(child.pid, signal.SIGKILL)
        stdout, stderr = child.communicate()
        return _timed_out(timeout, stacks, stdout, stderr)
    finally:
        _signal_group(child.pid, signal.SIGKILL)  # orphans (a rank, a worker) must not outlive the run
    return child.returncode, stdout, stderr
