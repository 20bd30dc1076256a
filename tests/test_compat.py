"""Each Lightning-private name the kit reads (``lightning_regkit/_compat.py``) against the installed
Lightning, in both namespaces: a release that moves one fails here, not silently in a run.

(The names ``SeedEverything`` reads are checked in ``tests/test_compat_seed.py``.)
"""

from __future__ import annotations

import importlib
import inspect
import re
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


# ----------------------------------------------------------------------------- EarlyStopping
# Lightning 2.6's EarlyStoppingReason: the kit's copy for older releases has exactly these members
LIGHTNING_2_6_REASONS = {
    "NOT_STOPPED": 0,
    "STOPPING_THRESHOLD": 1,
    "DIVERGENCE_THRESHOLD": 2,
    "PATIENCE_EXHAUSTED": 3,
    "NON_FINITE_METRIC": 4,
}


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_early_stopping_reason_is_lightnings_or_an_equal_copy(namespace: str) -> None:
    from lightning_regkit._compat import LIGHTNING_HAS_STOPPING_REASON, EarlyStoppingReason

    module = importlib.import_module(f"{namespace}.callbacks.early_stopping")
    theirs = getattr(module, "EarlyStoppingReason", None)
    # Lightning's class sets stopping_reason exactly when it has the enum (>= 2.6)
    has_reason = hasattr(module.EarlyStopping(monitor="x"), "stopping_reason")
    assert has_reason is (theirs is not None)
    assert {m.name: m.value for m in EarlyStoppingReason} == LIGHTNING_2_6_REASONS
    if theirs is not None:
        assert {m.name: m.value for m in theirs} == LIGHTNING_2_6_REASONS
    if namespace == "lightning.pytorch":
        assert LIGHTNING_HAS_STOPPING_REASON is has_reason
        # with a Lightning that has it, the kit's name *is* Lightning's class (reasons compare equal)
        assert (
            (EarlyStoppingReason is theirs)
            if has_reason
            else EarlyStoppingReason.__module__ == ("lightning_regkit._compat")
        )


# what the kit's EarlyStopping reads or overrides of Lightning's class (callbacks/early_stopping.py)
EARLY_STOPPING_PRIVATE = {
    "_run_early_stopping_check": "method",  # overridden: Lightning's hooks must call it
    "_evaluate_stopping_criteria": "method",
    "_validate_condition_metric": "method",
    "_improvement_message": "method",
    "_log_info": "method",
    "_generate_state_key": "method",
    "_legacy_state_key": "property",
    "mode_dict": "dict",
    "order_dict": "dict",
}


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_early_stopping_private_names_and_hook_calls(tmp_path: Path, namespace: str) -> None:
    pl = importlib.import_module(namespace)
    boring = importlib.import_module(f"{namespace}.demos.boring_classes")
    base = importlib.import_module(f"{namespace}.callbacks").EarlyStopping
    for name, kind in EARLY_STOPPING_PRIVATE.items():
        attribute = inspect.getattr_static(base, name)
        if kind == "method":
            assert callable(getattr(base, name)), name
        elif kind == "property":
            assert isinstance(attribute, property), name
        else:
            assert isinstance(attribute, dict), name
    assert set(base.mode_dict) == {"min", "max"} and base.order_dict == {"min": "<", "max": ">"}
    assert base(monitor="m")._legacy_state_key is base  # the key of states written before state_key
    assert base(monitor="m").monitor_op is torch.lt  # the kit compares with it (min_delta, baseline)
    checks: list[tuple[bool, int]] = []

    class Probe(base):  # type: ignore[misc, valid-type]
        def _run_early_stopping_check(self, trainer: Any) -> None:
            checks.append((self._check_on_train_epoch_end, trainer.current_epoch))

    for on_train_epoch_end in (True, False):
        checks.clear()
        trainer = pl.Trainer(
            max_epochs=2,
            limit_train_batches=2,
            limit_val_batches=1,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[Probe(monitor="valid_loss", check_on_train_epoch_end=on_train_epoch_end)],
            default_root_dir=str(tmp_path),
        )

        class Model(boring.BoringModel):  # type: ignore[misc, valid-type]
            def validation_step(self, batch: Any, batch_idx: int) -> Any:
                out = super().validation_step(batch, batch_idx)
                self.log("valid_loss", out["x"])
                return out

        trainer.fit(Model())
        # one check per epoch, from the hook that _check_on_train_epoch_end selects
        assert checks == [(on_train_epoch_end, 0), (on_train_epoch_end, 1)]


# ----------------------------------------------------------------------------- supported versions
ROOT = Path(__file__).resolve().parent.parent


def test_ci_lowest_job_pins_the_lower_bounds() -> None:
    """The CI job that tests the lowest versions installs exactly pyproject's lower bounds."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    pyproject = (ROOT / "pyproject.toml").read_text()
    block = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    bounds = {}
    for line in re.findall(r'"([^"]+)"', block):
        req = Requirement(line)
        [spec] = [s for s in req.specifier if s.operator == ">="]
        bounds[req.name] = Version(spec.version)
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    pins = {name: Version(v) for name, v in re.findall(r"^\s+([a-z-]+)==([0-9.]+)\s*$", workflow, re.M)}
    assert set(bounds) == {"torch", "lightning", "torchmetrics", "numpy"}
    assert set(pins) == {*bounds, "pytorch-lightning"}
    for name, bound in bounds.items():
        # the pin is a release of the bound's series: torch>=2.4 -> torch==2.4.x
        assert pins[name].release[: len(bound.release)] == bound.release, (name, pins[name], bound)
    assert pins["pytorch-lightning"] == pins["lightning"]  # both namespaces from one release


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_next_epoch_creates_train_iterator_as_lightning_does(tmp_path: Path, namespace: str) -> None:
    """Predicted at each epoch start (fresh, and resumed from an epoch-end checkpoint) vs the iter() calls."""
    from lightning_regkit._compat import next_epoch_creates_train_iterator

    pl = importlib.import_module(namespace)
    boring = importlib.import_module(f"{namespace}.demos.boring_classes")
    checkpoint_cls = importlib.import_module(f"{namespace}.callbacks").ModelCheckpoint
    iters: list[int] = []

    class Loader(torch.utils.data.DataLoader):
        def __iter__(self) -> Any:
            iters.append(1)
            return super().__iter__()

    class Probe(pl.Callback):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self.seen: list[tuple[int, bool, bool]] = []  # epoch, predicted, iter() called for it

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.at_train_start = next_epoch_creates_train_iterator(trainer)

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.predicted, self.iters_before = next_epoch_creates_train_iterator(trainer), len(iters)
            if not self.seen:  # the same answer from on_train_start on
                assert self.predicted is self.at_train_start

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 0:
                self.seen.append((trainer.current_epoch, self.predicted, len(iters) > self.iters_before))

    def fit(epochs: int, **kwargs: Any) -> list[tuple[int, bool, bool]]:
        probe = Probe()
        trainer = pl.Trainer(
            max_epochs=epochs,
            limit_val_batches=1,
            num_sanity_val_steps=0,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[probe, checkpoint_cls(dirpath=tmp_path, filename="e")],
            default_root_dir=str(tmp_path),
        )
        data = Loader(torch.randn(4, 32), batch_size=2, shuffle=True)
        trainer.fit(boring.BoringModel(), data, data, **kwargs)
        return probe.seen

    assert fit(2) == [(0, False, False), (1, True, True)]  # epoch 0 uses the iterator built at setup
    resumed = fit(4, ckpt_path=str(tmp_path / "e.ckpt"))  # written at the end of epoch 1
    assert [epoch for epoch, *_ in resumed] == [2, 3] and resumed[1] == (3, True, True)
    _, predicted, called = resumed[0]  # the first epoch after the resume
    assert predicted is called  # Lightning 2.4: a new iterator; 2.6: the one built before on_train_start
    fit_loop = importlib.import_module(f"{namespace}.loops.fit_loop")._FitLoop
    assert predicted is not hasattr(fit_loop, "is_resuming")
