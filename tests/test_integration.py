"""Everything at once: the whole kit in one realistic run, repeated in separate processes.

``RegularizedModule`` (L1 + L2 with a strength schedule) + ``SeedEverything`` +
``DropoutScheduler`` + ``EarlyStopping(restore_best_weights=True)`` + ``ModelCheckpoint``, with
``accumulate_grad_batches=2``, ``gradient_clip_val``, ``precision="bf16-mixed"`` and DataLoaders
with ``num_workers=2``. Two identical runs in two new processes must give bit-identical
weights, stop epoch, early-stopping state and logged metrics.

The training script (:data:`KIT_SCRIPT`) is shared with ``test_distributed.py`` (DDP) and
``test_faults.py`` (SIGKILL and resume): :func:`kit_run` runs it in a new process. Each of the two
runs compared here is made once per pytest run (``ddp_battery.once_per_run``: shared by the xdist
workers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ddp_battery
import pytest
import torch
from helpers import max_abs_diff, run_python

pytestmark = pytest.mark.integration  # whole fits through Lightning: make test, not make test-fast

# The run every integration/fault/distributed test shares. ``CFG`` is substituted as a dict literal.
KIT_SCRIPT = """
import json, os, signal, sys
from pathlib import Path

import torch
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from helpers import ClassifierSteps, SyntheticDataModule, TinyMLP, trainer_kwargs, weights_of
from lightning_regkit.callbacks.dropout import DropoutScheduler
from lightning_regkit.callbacks.early_stopping import EarlyStopping
from lightning_regkit.callbacks.seed import SeedEverything
from lightning_regkit.module import RegularizedModule
from lightning_regkit.schedules import Linear

CFG = __CFG__
ROOT = Path(CFG["root"])
KILL = {"epoch": None}


class Model(ClassifierSteps, RegularizedModule):
    def __init__(self):
        super().__init__(l1=1e-4, l2=Linear(1e-2, 1e-3))
        self.net = TinyMLP(p=0.2)
        self.lr = CFG.get("lr", 0.5)
        self.optimizer_name = "sgd"

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        nan_step = CFG.get("nan_at_step")
        if nan_step is not None and self.trainer.global_step >= nan_step:
            loss = loss * float("nan")
        return loss


class KillingCheckpoint(ModelCheckpoint):
    # SIGKILL right after the checkpoint of epoch CFG["kill_after"] is on disk, or inside the
    # fsspec commit (temp file written, not yet moved) of the checkpoint of epoch CFG["kill_in_commit"].
    def _save_checkpoint(self, trainer, filepath):
        if trainer.current_epoch == CFG.get("kill_in_commit"):
            KILL["epoch"] = trainer.current_epoch
        super()._save_checkpoint(trainer, filepath)
        if trainer.current_epoch == CFG.get("kill_after"):
            os.kill(os.getpid(), signal.SIGKILL)


if CFG.get("kill_in_commit") is not None:
    from fsspec.implementations.local import LocalFileOpener

    _commit = LocalFileOpener.commit

    def commit(self):
        if KILL["epoch"] is not None and str(self.path).endswith(".ckpt"):
            Path(CFG["root"], "temp_file.txt").write_text(self.temp)
            os.kill(os.getpid(), signal.SIGKILL)
        _commit(self)

    LocalFileOpener.commit = commit


class Recorder(Callback):
    # every value logged on every step and validation, as exact floats
    def __init__(self):
        self.steps, self.vals = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = {k: float(v) for k, v in sorted(trainer.logged_metrics.items())}
        self.steps.append([trainer.current_epoch, batch_idx, trainer.global_step, metrics, self.l1])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # the L1 penalty of this rank's weights, computed independently of the kit
        with torch.no_grad():
            weights = [p for n, p in pl_module.named_parameters() if p.dim() >= 2]
            self.l1 = float(1e-4 * sum(float(w.double().abs().sum()) for w in weights))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items())}
            self.vals.append([trainer.current_epoch, metrics])


seeder = SeedEverything(seed=CFG.get("seed", 7))
seeder.seed_now()
model = Model()
es = EarlyStopping("val_loss", patience=CFG.get("patience", 2), min_delta=CFG.get("min_delta", 0.01),
                   restore_best_weights=True)
dropout = DropoutScheduler(Linear(0.3, 0.0))
ckpt = KillingCheckpoint(dirpath=ROOT / "ckpts", filename="{epoch}", save_top_k=-1, monitor=None,
                         save_last=CFG.get("save_last", False))
recorder = Recorder()
dm = SyntheticDataModule(n_train=128, n_val=32, batch_size=16, num_workers=CFG.get("num_workers", 2))
kwargs = trainer_kwargs(
    ROOT, max_epochs=CFG.get("max_epochs", 8), accumulate_grad_batches=2, gradient_clip_val=0.5,
    precision="bf16-mixed", enable_checkpointing=True, callbacks=[seeder, es, dropout, ckpt, recorder],
)
if CFG.get("ddp"):
    kwargs.update(devices=2, strategy="ddp")
trainer = pl.Trainer(**kwargs)
trainer.fit(model, datamodule=dm, ckpt_path=CFG.get("ckpt_path"))

rank = trainer.global_rank
es_state = es.state_dict()
best = es_state.pop("best_weights", None)
es_state["best_score"] = float(es_state["best_score"])
out = {
    "stopped_epoch": es.stopped_epoch, "current_epoch": trainer.current_epoch,
    "global_step": trainer.global_step, "es": es_state, "reason": es.stopping_reason_message,
    "steps": recorder.steps, "vals": recorder.vals, "world_size": trainer.world_size,
    "best_model_path": ckpt.best_model_path, "start_epoch": recorder.steps[0][0],
}
torch.save({"weights": weights_of(model), "best": best}, ROOT / f"weights{rank}.pt")
(ROOT / f"result{rank}.json").write_text(json.dumps(out))
"""


def kit_run(root: Path, fresh: bool = False, **cfg: Any) -> dict[str, Any]:
    """Run :data:`KIT_SCRIPT` in a new process; return rank 0's result (+ ``weights``, ``best``).

    ``fresh``: a really new interpreter (its own hash seed and imports), not one forked from the warm one.
    """
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"root": str(root), **cfg}
    run_python(KIT_SCRIPT.replace("__CFG__", repr(cfg)), cwd=root, timeout=240, fresh=fresh)
    return load_result(root, 0)


def load_result(root: Path, rank: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((root / f"result{rank}.json").read_text())
    result.update(torch.load(root / f"weights{rank}.pt", weights_only=True))
    return result


def step_values(steps: list[Any]) -> list[Any]:
    """The values logged at each step itself (``logged_metrics`` also carries the last epoch-level ones)."""
    return [
        [*s[:3], {k: v for k, v in s[3].items() if k.startswith("regkit/") or k.endswith("_step")}]
        for s in steps
    ]


def assert_same_run(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bit-identical weights, best weights, stop epoch, early-stopping state."""
    assert max_abs_diff(a["weights"], b["weights"]) == 0.0
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert a["best"] is not None and b["best"] is not None
    assert all(torch.equal(a["best"][k], b["best"][k]) for k in a["best"])
    for key in ("stopped_epoch", "current_epoch", "global_step", "es", "reason"):
        assert a[key] == b[key], key


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same :data:`KIT_SCRIPT` run in two new processes, each once per pytest run: one forked from the
    warm interpreter, one a really new interpreter (another hash seed: set and dict orders differ)."""
    first = ddp_battery.once_per_run(tmp_path_factory, "kit_a", kit_run)
    second = ddp_battery.once_per_run(tmp_path_factory, "kit_b", lambda root: kit_run(root, fresh=True))
    return load_result(first, 0), load_result(second, 0)


@pytest.mark.slow
def test_two_processes_are_bit_identical(two_runs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    a, b = two_runs
    assert_same_run(a, b)
    assert a["steps"] == b["steps"]  # every logged value of every step, exactly
    assert a["vals"] == b["vals"]


@pytest.mark.slow
def test_the_run_exercises_every_part(two_runs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    a, _ = two_runs
    # early stopping stopped the run before max_epochs and gave back the best epoch's weights
    assert 0 < a["stopped_epoch"] < 7
    assert a["es"]["best_epoch"] < a["stopped_epoch"]
    assert max_abs_diff(a["weights"], a["best"]) == 0.0
    logged = a["steps"][-1][3]
    # the penalties (L2 on a schedule), the dropout schedule and the loss are all logged
    for key in ("regkit/l1", "regkit/l2", "regkit/penalty", "regkit/dropout_p", "train_loss_step"):
        assert key in logged, sorted(logged)
    l2_strength = [s[3]["regkit/l2"] for s in a["steps"]]
    assert len(set(l2_strength)) > 1
    # the logged L1 value is l1 * sum(|w|) over the weight matrices (biases and LayerNorm excluded)
    assert all(s[3]["regkit/l1"] == pytest.approx(s[4], rel=1e-6) for s in a["steps"])
    p = [s[3]["regkit/dropout_p"] for s in a["steps"]]
    assert p[0] == pytest.approx(0.3) and p[-1] < p[0]  # the dropout schedule moved
    # accumulate_grad_batches=2: 8 batches per epoch -> 4 optimizer steps per epoch
    assert a["global_step"] == 4 * (a["stopped_epoch"] + 1)


@pytest.mark.filterwarnings("ignore:Precision bf16-mixed is not supported by the model summary")
def test_readme_quickstart_all_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "all together" snippet, verbatim apart from the test's model, data and paths."""
    from helpers import ClassifierSteps, SyntheticDataModule, TinyMLP

    monkeypatch.chdir(tmp_path)
    # --- README snippet (readme_integration.md) ---
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_regkit.callbacks.dropout import DropoutScheduler
    from lightning_regkit.callbacks.early_stopping import EarlyStopping
    from lightning_regkit.callbacks.seed import SeedEverything
    from lightning_regkit.module import RegularizedModule
    from lightning_regkit.schedules import Linear

    class Model(ClassifierSteps, RegularizedModule):  # your training_step stays as it is
        def __init__(self) -> None:
            super().__init__(l1=1e-4, l2=Linear(1e-2, 1e-3))  # L2 strength decays over training
            self.net, self.lr, self.optimizer_name = TinyMLP(p=0.2), 0.5, "sgd"

    seeder = SeedEverything(seed=7)
    seeder.seed_now()  # before building the model: the initial weights repeat too
    model = Model()
    trainer = pl.Trainer(
        max_epochs=3,
        accumulate_grad_batches=2,
        gradient_clip_val=0.5,
        precision="bf16-mixed",
        callbacks=[
            seeder,
            DropoutScheduler(Linear(0.3, 0.0)),
            EarlyStopping("val_loss", patience=2, restore_best_weights=True),
            ModelCheckpoint(dirpath="ckpts", save_last=True),
        ],
        logger=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=SyntheticDataModule(num_workers=2))
    # --- end of snippet ---
    assert (tmp_path / "ckpts" / "last.ckpt").exists()
    assert trainer.global_step == 3 * 2  # 4 batches per epoch, 2 per optimizer step
