"""Bad input: one catalogue over every public constructor, and NaN in the loss mid-training.

Every case builds something public with one bad argument and expects ``ValueError`` or
``TypeError`` whose message names the class (or function), the argument and the value received.
Classes of bad argument: wrong type, out of range, NaN/inf, empty (or empty selection), unknown
names. ``SeedResult``/``SweepResult``/``MetricSummary`` are results that ``seed_sweep`` builds, not
configuration; ``MetricSummary.of`` is their one public factory and is in the catalogue.
``capture_rng_state`` takes no argument.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import ClassifierSteps, LitClassifier, SyntheticDataModule, TinyMLP, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint
from packaging.version import Version
from torch import nn

import lightning_regkit
from lightning_regkit import schedules as sch
from lightning_regkit.callbacks.dropout import DropoutScheduler
from lightning_regkit.callbacks.early_stopping import EarlyStopping
from lightning_regkit.callbacks.seed import SeedEverything
from lightning_regkit.callbacks.weight_penalty import WeightPenalty
from lightning_regkit.compare import compare
from lightning_regkit.criteria import GL, PQ, UP
from lightning_regkit.module import RegularizedModule
from lightning_regkit.penalties import L1, L2, MaxNorm, resolve_penalties
from lightning_regkit.rng import WorkerRNGDataset, restore_rng_state
from lightning_regkit.sources import SourceSeeds, source_seed
from lightning_regkit.sweep import MetricSummary, seed_sweep
from lightning_regkit.variance import variance_by_source

NAN, INF = math.nan, math.inf
CASES: list[Any] = []


def bad(
    owner: str,
    fn: Callable[..., Any],
    arg: str,
    value: Any,
    exc: type[Exception],
    *args: Any,
    _shown: str | None = None,
    _gap: str | None = None,
    **kw: Any,
) -> None:
    """Register ``fn(*args, **kw, arg=value)``: the message must name ``owner``, ``arg`` and the value.

    ``_shown``: the text standing for the value when the message names the offending element of a
    list rather than the list. ``_gap``: a known gap in a file this test does not own (strict xfail).
    """
    if _shown is not None:
        shown = [_shown]
    else:  # the value itself, or (for a list or dict) the offending element named in the message
        shown = [repr(value)] + ([value] if isinstance(value, str) and value else [])
        if isinstance(value, list):
            shown += [repr(v) for v in value]
        if isinstance(value, dict):
            shown += [repr(v) for item in value.items() for v in item]
    marks = [pytest.mark.xfail(strict=True, reason=_gap)] if _gap else []
    CASES.append(
        pytest.param(
            owner,
            lambda: fn(*args, **{**kw, arg: value}),
            exc,
            arg,
            shown,
            marks=marks,
            id=f"{owner}-{arg}={shown[0]}"[:70],
        )
    )


def ok_fn(seed: int) -> dict[str, float]:
    return {"x": 1.0}


T, V = TypeError, ValueError

# ---------------------------------------------------------------- EarlyStopping
ES = {"monitor": "val_loss"}
for arg, value, exc in [
    ("monitor", 5, T),
    ("monitor", "", T),
    ("min_delta", "0.1", T),
    ("min_delta", -0.1, V),
    ("min_delta", NAN, V),
    ("min_delta", INF, V),
    ("patience", 1.5, T),
    ("patience", True, T),
    ("patience", -1, V),
    ("mode", "avg", V),
    ("stopping_threshold", "1", T),
    ("stopping_threshold", NAN, V),
    ("divergence_threshold", INF, V),
    ("divergence_threshold", NAN, V),
    ("start_from_epoch", 0.5, T),
    ("start_from_epoch", -1, V),
    ("baseline", NAN, V),
    ("baseline", "x", T),
    ("min_delta_mode", "pct", V),
    ("criterion", "XX", V),
    ("strip", 0, V),
    ("strip", 2.5, T),
    ("s", 0, V),
    ("train_monitor", "", T),
    ("train_monitor", 3, T),
    ("restore_best_weights", "yes", T),
    ("checkpoint_best_weights", 1, T),
    ("verbose", "no", T),
    ("strict", None, T),
    ("check_finite", "yes", T),
    ("log_rank_zero_only", 0, T),
]:
    kw = dict(ES, criterion="UP") if arg in ("strip", "s") else dict(ES)
    bad("EarlyStopping", EarlyStopping, arg, value, exc, **kw)
for value, exc in [(None, V), (-1.0, V), (NAN, V), ("5", T)]:
    bad("EarlyStopping", EarlyStopping, "alpha", value, exc, criterion="GL", **ES)

# ---------------------------------------------------------------- SeedEverything, seed_sweep, rng
for arg, value, exc in [
    ("seed", "1", T),
    ("seed", 1.5, T),
    ("seed", True, T),
    ("seed", -1, V),
    ("seed", 2**32, V),
    ("workers", "yes", T),
    ("per_rank", 1, T),
    ("restore_rng", None, T),
    ("deterministic", "maybe", V),
]:
    bad("SeedEverything", SeedEverything, arg, value, exc)
for arg, value, exc in [
    ("train_fn", 3, T),
    ("seeds", [], V),
    ("seeds", [1, 1], V),
    ("seeds", [-1], V),
    ("seeds", ["a"], T),
    ("seeds", 5, T),
    ("confidence", 0.0, V),
    ("confidence", 1.5, V),
    ("confidence", NAN, V),
    ("map", 3, T),
]:
    sweep_kw: dict[str, Any] = {"train_fn": ok_fn, "seeds": [0]}
    sweep_kw.pop(arg, None)
    element = {"[-1]": "-1", "['a']": "'a'"}.get(repr(value))  # the message names the bad seed
    bad("seed_sweep", seed_sweep, arg, value, exc, _shown=element, **sweep_kw)
bad("compare", compare, "gamma", 0.5, V, [0.1, 0.2], [0.2, 0.1], higher_is_better=True)
bad("MetricSummary", MetricSummary.of, "values", [], V, "loss")
bad("MetricSummary", MetricSummary.of, "confidence", 1.5, V, "loss", [1.0, 2.0])
bad("restore_rng_state", restore_rng_state, "state", "x", V)
bad("restore_rng_state", restore_rng_state, "state", {}, V, _shown="dict []")

# ---------------------------------------------------------------- penalties, module, callback
for cls in (L1, L2):
    name = cls.__name__
    for arg, value, exc in [
        ("strength", -1.0, V),
        ("strength", NAN, V),
        ("strength", INF, V),
        ("strength", "x", T),
        ("strength", True, T),
        ("include", "fc*", T),
        ("include", [""], T),
        ("exclude", [3], T),
    ]:
        kw = {} if arg == "strength" else {"strength": 1e-3}
        bad(name, cls, arg, value, exc, **kw)
bad("L1", L1, "proximal", "yes", T, 1e-3)
for value, exc in [(0, V), (-1.0, V), (NAN, V), (INF, V), ("3", T), (True, T)]:
    bad("MaxNorm", MaxNorm, "max_norm", value, exc)
bad("MaxNorm", MaxNorm, "include", "fc*", T, 3.0)
for owner, cls in (("RegularizedModule", RegularizedModule), ("WeightPenalty", WeightPenalty)):
    for arg, value, exc in [
        ("l1", -1.0, V),
        ("l1", NAN, V),
        ("l2", INF, V),
        ("l2", "x", T),
        ("l1", True, T),
        ("penalties", "l2", T),
        ("penalties", [3], T),
        ("mode", "slow", V),
        ("interval", "batch", V),
        ("value_every_step", "yes", T),
    ]:
        kw = {} if arg in ("l1", "l2") else {"l2": 1e-3}
        bad(owner, cls, arg, value, exc, **kw)
    bad(owner, cls, "penalties", [{"name": "l3", "strength": 1.0}], V, _shown="l3")
bad("WeightPenalty", WeightPenalty, "penalties", [], V)  # empty: no penalty at all
# empty selection: patterns that match no parameter fail when the model is known
bad(
    "L1",
    lambda include: resolve_penalties([L1(1e-3, include=include)], TinyMLP()),
    "include",
    ["nope.*"],
    V,
    _shown="nope.*",
)

# ---------------------------------------------------------------- DropoutScheduler
for arg, value, exc in [
    ("schedule", 1.5, V),
    ("schedule", -0.1, V),
    ("schedule", NAN, V),
    ("schedule", INF, V),
    ("schedule", "x", T),
    ("schedule", True, T),
    ("interval", "batch", V),
    ("mode", "abs", V),
    ("modules", [], V),
    ("modules", "dropot", V),
    ("modules", [3], T),
    ("names", [], T),
    ("exclude", [""], T),
    ("custom", {3: "p"}, T),
    ("custom", {nn.Dropout: "not an attr"}, V),
    ("restore", "yes", T),
    ("log_p", 1, T),
]:
    kw = {} if arg == "schedule" else {"schedule": 0.1}
    bad("DropoutScheduler", DropoutScheduler, arg, value, exc, **kw)


def dropout_selection(names: str) -> None:  # empty selection: known when fit starts
    DropoutScheduler(0.1, names=names).on_fit_start(None, LitClassifier())  # type: ignore[arg-type]


bad("DropoutScheduler", dropout_selection, "names", "nope.*", V)
bad("DropoutScheduler", DropoutScheduler, "names", 3, T, 0.1)

# ---------------------------------------------------------------- seeds per source, worker RNG
bad("WorkerRNGDataset", WorkerRNGDataset, "dataset", 3, T, _shown="int")
bad("source_seed", source_seed, "seed", -1, V, source="data")
bad("source_seed", source_seed, "source", "weights", V, 1)
bad("SourceSeeds", SourceSeeds, "init", 2**32, V, seed=0, data=0, train=0)
bad("SourceSeeds", SourceSeeds, "train", "3", T, seed=0, init=0, data=0)
bad("variance_by_source", variance_by_source, "include_all", "yes", T, dict, [0, 1])
bad("variance_by_source", variance_by_source, "sources", ["weights"], V, dict, [0, 1])

# ---------------------------------------------------------------- schedules and criteria
for owner, fn, arg, value, exc, kw in [
    ("Constant", sch.Constant, "value", NAN, V, {}),
    ("Constant", sch.Constant, "value", "a", T, {}),
    ("Linear", sch.Linear, "start", INF, V, {"end": 0.0}),
    ("Linear", sch.Linear, "end", "0", T, {"start": 0.0}),
    ("Cosine", sch.Cosine, "start", NAN, V, {"end": 0.0}),
    ("Cosine", sch.Cosine, "end", INF, V, {"start": 0.0}),
    ("Exponential", sch.Exponential, "gamma", 0.0, V, {"start": 1.0}),
    ("Exponential", sch.Exponential, "gamma", NAN, V, {"start": 1.0}),
    ("Curriculum", sch.Curriculum, "gamma", -1.0, V, {"p_final": 0.1}),
    ("Curriculum", sch.Curriculum, "p_final", 1.5, V, {"gamma": 0.1}),
    ("Step", sch.Step, "milestones", [0.5, 0.2], V, {"values": [0.1, 0.2, 0.3]}),
    ("Step", sch.Step, "unit", "percent", V, {"milestones": [0.5], "values": [0.1, 0.2]}),
    ("Step", sch.Step, "values", [0.1, NAN], V, {"milestones": [0.5]}),
    ("Piecewise", sch.Piecewise, "points", [], V, {"values": []}),
    ("Piecewise", sch.Piecewise, "points", [0.5, 0.2], V, {"values": [0.1, 0.2]}),
    ("EarlyDropout", sch.EarlyDropout, "p", 1.5, V, {"until": 0.5}),
    ("EarlyDropout", sch.EarlyDropout, "until", -1.0, V, {"p": 0.1}),
    ("EarlyDropout", sch.EarlyDropout, "linear", "yes", T, {"p": 0.1, "until": 0.5}),
    ("LateDropout", sch.LateDropout, "start", 2.0, V, {"p": 0.1}),
    ("LateDropout", sch.LateDropout, "p", NAN, V, {"start": 0.5}),
    ("FromProgress", sch.FromProgress, "fn", 3, T, {}),
    ("GL", GL, "alpha", -1.0, V, {}),
    ("GL", GL, "alpha", NAN, V, {}),
    ("PQ", PQ, "strip", 0, V, {"alpha": 1.0}),
    ("PQ", PQ, "alpha", NAN, V, {}),
    ("UP", UP, "s", 0, V, {"strip": 1}),
    ("UP", UP, "strip", 1.5, T, {"s": 2}),
]:
    bad(owner, fn, arg, value, exc, **kw)


@pytest.mark.parametrize(("owner", "build", "exc", "arg", "shown"), CASES)
def test_bad_argument_is_rejected_by_name_and_value(
    owner: str, build: Callable[[], Any], exc: type[Exception], arg: str, shown: list[str]
) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        build()
    assert isinstance(info.value, exc), f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert owner in message, message
    # the argument's name as a word of its own ("s" must not be found inside "must")
    assert re.search(rf"(?<![\w]){re.escape(arg)}(?![\w])", message), (arg, message)
    assert any(text in message for text in shown), (shown, message)


def test_catalogue_covers_every_public_constructor() -> None:
    owners = {case.values[0] for case in CASES}
    exported = {
        name
        for name in lightning_regkit.__all__
        if callable(getattr(lightning_regkit, name)) and name not in ("capture_rng_state",)
    }
    # built by the kit
    results = {"SeedResult", "SweepResult", "RegkitStoppingReason", "Comparison", "VarianceBySource"}
    assert exported - results <= owners, exported - results - owners
    kit = {"RegularizedModule", "WeightPenalty", "DropoutScheduler", "L1", "L2", "MaxNorm"}
    schedules = {
        n
        for n in dir(sch)
        if isinstance(getattr(sch, n), type) and issubclass(getattr(sch, n), sch.Schedule) and n[0] != "_"
    }
    assert kit | (schedules - {"Schedule"}) <= owners, (kit | schedules) - owners
    print(f"bad-input catalogue: {len(CASES)} cases over {len(owners)} constructors")


# ---------------------------------------------------------------- NaN in the loss mid-training
class NaNAfter(ClassifierSteps, RegularizedModule):
    """The kit's module whose loss turns NaN from optimizer step ``nan_step`` on."""

    def __init__(self, nan_step: int) -> None:
        super().__init__(l1=1e-4, l2=sch.Linear(1e-2, 1e-3))
        self.net = TinyMLP()
        self.lr, self.optimizer_name, self.nan_step = 0.5, "sgd", nan_step

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        return loss * math.nan if self.trainer.global_step >= self.nan_step else loss


def finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())


def test_nan_loss_stops_training_and_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = NaNAfter(nan_step=12)  # 4 steps per epoch: the loss is NaN from epoch 3 on
    es = EarlyStopping("val_loss", patience=10, restore_best_weights=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="val_loss", save_top_k=1, save_last=True)
    trainer = pl.Trainer(
        **trainer_kwargs(
            tmp_path, max_epochs=10, enable_checkpointing=True, callbacks=[SeedEverything(0), es, ckpt]
        )
    )
    trainer.fit(model, datamodule=SyntheticDataModule())
    # stopped at the first check after the NaN, with a clear reason
    assert es.stopped_epoch == 3 and trainer.current_epoch == 4
    assert es.stopping_reason.name == "NON_FINITE_METRIC"
    assert "val_loss = nan is not finite" in es.stopping_reason_message
    assert 0 <= es.best_epoch < 3
    assert f"Stopped at epoch 3. Best val_loss = {float(es.best_score):.6g} at epoch {es.best_epoch}." in (
        es.stopping_reason_message
    )
    # no checkpoint holds NaN weights (Lightning 2.6 writes none at the NaN check), and the best
    # checkpoint is still the finite best epoch's. Lightning < 2.6 writes last.ckpt at every validation
    # end, the NaN one included (2.6 only together with a top-k file), so there only top-k files are checked
    files = sorted((tmp_path / "ckpts").glob("*.ckpt"))
    assert len(files) >= 2  # the best one and last.ckpt
    if Version(pl.__version__) < Version("2.6"):
        files = [path for path in files if path.name != "last.ckpt"]
    for path in files:
        state = torch.load(path, weights_only=True)
        assert finite(state["state_dict"]) and state["epoch"] < 3, path.name
    best = torch.load(ckpt.best_model_path, weights_only=True)
    assert finite(best["state_dict"]) and best["epoch"] == es.best_epoch
    assert math.isfinite(float(ckpt.best_model_score))
    # restore_best_weights gave back the finite best weights, equal to the best checkpoint's
    assert finite(model.state_dict())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best["state_dict"].items())
