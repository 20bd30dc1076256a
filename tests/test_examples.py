"""The user's tour: the digits classifiers, the demo, the LightningCLI entry point and its config."""

from __future__ import annotations

import csv
import doctest
import json
import re
import sys
from pathlib import Path
from typing import Any

import digits
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from digits import DigitsClassifier, DigitsDataModule, RegularizedDigitsClassifier, weights_sha256
from helpers import EXAMPLES_DIR, ROOT, TESTS_DIR, max_abs_diff, run_python, trainer_kwargs, weights_of
from script_runs import run_script

from lightning_regkit.callbacks.dropout import DropoutScheduler
from lightning_regkit.callbacks.early_stopping import EarlyStopping
from lightning_regkit.callbacks.seed import SeedEverything
from lightning_regkit.callbacks.weight_penalty import WeightPenalty
from lightning_regkit.compare import compare
from lightning_regkit.penalties import L1, L2, MaxNorm
from lightning_regkit.schedules import Cosine, Curriculum, Linear, Piecewise
from lightning_regkit.sources import SOURCES, SourceSeeds

CONFIG = EXAMPLES_DIR / "demo_config.yaml"

# Lightning 2.6's LightningCLI still calls jsonargparse APIs deprecated in jsonargparse 4.49 (not ours)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:lightning.pytorch.cli")
SHA = re.compile(r"kit run (\d) weights sha256: ([0-9a-f]{64})")


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Every test here trains on one torch thread, as the demo does (``demo.main`` sets one thread itself):
    these small models are fastest so, above all when another test process shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- digits.py
def test_digits_doctests() -> None:
    result = doctest.testmod(digits, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_regularized_classifier_without_penalty_trains_like_the_plain_one(tmp_path, optimizer) -> None:
    """The mixin refactor: same steps, same optimizer; with no penalty the kit's module is plain Lightning."""
    dm = DigitsDataModule(batch_size=64)
    weights = []
    for cls in (DigitsClassifier, RegularizedDigitsClassifier):
        torch.manual_seed(0)
        model = cls(hidden=32, dropout=0.1, optimizer=optimizer, lr=1e-2)
        pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=5)).fit(model, datamodule=dm)
        weights.append(weights_of(model))
    assert max_abs_diff(*weights) == 0.0


def test_regularized_classifier_penalty_changes_training(tmp_path) -> None:
    dm = DigitsDataModule(batch_size=64)
    weights = []
    for l2 in (0.0, 1e-2):
        torch.manual_seed(0)
        model = RegularizedDigitsClassifier(hidden=32, l2=l2)
        pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=3)).fit(model, datamodule=dm)
        weights.append(weights_of(model))
    assert max_abs_diff(*weights) > 0.0
    assert [p.name for p in model.penalties] == ["l2"]
    assert model.hparams["l2"] == 1e-2 and model.hparams["hidden"] == 32


@pytest.mark.parametrize("cls", [DigitsClassifier, RegularizedDigitsClassifier])
@pytest.mark.parametrize("bad", ["adamw", "SGD", ""])
def test_bad_optimizer_is_rejected(cls, bad) -> None:
    with pytest.raises(ValueError, match=rf"{cls.__name__}: optimizer must be 'adam' or 'sgd', got '{bad}'"):
        cls(optimizer=bad)


def test_weights_sha256_sees_a_one_bit_change() -> None:
    model = DigitsClassifier(hidden=8)
    before = weights_sha256(model)
    with torch.no_grad():
        w = model.model.net[0].weight
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(float("inf")))
    assert weights_sha256(model) != before


# ----------------------------------------------------------------------------- demo.py
def test_demo_help_explains_the_options(capsys) -> None:
    import demo

    with pytest.raises(SystemExit) as exc:
        demo.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--seed",
        "--sweep-seeds",
        "--epochs",
        "--out",
        "--variance",
        "--variance-seeds",
        "--workers",
        "--hidden",
    ):
        assert option in out
    assert "bit-identical" in out or "reproducibility" in out
    assert "P(kit > baseline)" in out


@pytest.mark.slow
def test_demo_variance_from_the_command_line_with_a_process_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """``python demo.py --variance``, small (16-wide MLP, 2 seeds, 1 epoch), sweeps in a pool of 2 processes.

    The script runs as ``__main__`` in a new process (the pool pickles the module's functions from
    there): the table by source, P(kit > baseline) and the figure; then a second call with the same
    settings, in this process, reads every result back and trains nothing.
    """
    import demo

    out = tmp_path / "v"
    args = ["--variance", "--variance-seeds", "2", "--variance-epochs", "1", "--workers", "2"]
    args += ["--hidden", "16", "--out", str(out)]
    stdout = run_script(EXAMPLES_DIR / "demo.py", args, cwd=tmp_path)
    assert "| varied | n | std of baseline test acc (95% CI) | std of kit test acc (95% CI) |" in stdout
    assert f"figure: {out / 'variance.png'}" in stdout
    # the printed table holds the std of each sweep's results, as saved in its results file
    assert "Digits MLP 64-16-16-10" in stdout
    folder = out / "variance-sweeps-1-epochs-16-wide"
    assert sorted(p.name for p in folder.iterdir()) == [
        f"vary-{s}.jsonl" for s in ("all", "data", "init", "train")
    ]
    rows = {tuple(r[:2]): r for r in csv.reader((out / "variance.csv").read_text().splitlines())}
    records: dict[str, list[dict[str, Any]]] = {}
    for source in ("init", "data", "train", "all"):
        records[source] = [
            json.loads(line) for line in (folder / f"vary-{source}.jsonl").read_text().splitlines()
        ]
        assert sorted(r["seed"] for r in records[source]) == [1, 2]
        vary = tuple(SOURCES) if source == "all" else (source,)
        assert [r["sources"] for r in sorted(records[source], key=lambda r: r["seed"])] == [
            SourceSeeds.for_sweep(s, vary).as_dict() for s in (1, 2)
        ]
        for metric in ("baseline test acc", "kit test acc"):
            values = [r["metrics"][metric] for r in records[source]]
            std = float(rows[(metric, source)][4])
            assert std == pytest.approx(np.std(values, ddof=1), abs=1e-15)
            assert f"{metric:<17}  {source:<6}  2" in stdout
    kit = {r["seed"]: r["metrics"]["kit test acc"] for r in records["all"]}
    base = {r["seed"]: r["metrics"]["baseline test acc"] for r in records["all"]}
    c = compare(kit, base, "test acc", higher_is_better=True)
    assert f"all: P = {c.p_a_better:.3f}  CI [{c.p_ci_low:.3f}, {c.p_ci_high:.3f}]" in stdout
    assert "too few pairs to decide: 2 paired seeds" in stdout
    png = (out / "variance.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    # a second call with the same settings reads every result back: nothing is trained again
    (out / "variance.png").unlink()
    monkeypatch.setattr(demo, "run", None)  # would fail if called
    assert demo.main(args) == 0
    again = capsys.readouterr().out
    assert again.count("total time") == 1
    assert again.split("\ntotal time")[0] == stdout.split("\ntotal time")[0]  # the same table, P, figure
    assert (out / "variance.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variance-seeds", "1"], "--variance-seeds must be >= 2, got 1"),
        (["--variance-epochs", "0"], "--variance-epochs must be >= 1, got 0"),
        (["--workers", "0"], "--workers must be >= 1, got 0"),
        (["--hidden", "0"], "--hidden must be >= 1, got 0"),
    ],
)
def test_demo_variance_bad_options(args: list[str], message: str, capsys: Any) -> None:
    import demo

    with pytest.raises(SystemExit) as exc:
        demo.main(["--variance", *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_demo_prints_table_reproducibility_and_writes_figure(tmp_path, monkeypatch, capsys) -> None:
    """``demo.main`` as ``make demo`` runs it (here in this process: the script entry is tested above)."""
    import demo

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo out"
    args = ["--epochs", "2", "--seed", "1", "--hidden", "16", "--out", str(out), "--sweep-seeds", "2", "3"]
    assert demo.main(args) == 0
    stdout, stderr = capsys.readouterr()
    header = (
        "| run | val acc | test acc | val loss | best epoch | stopped epoch | stopping reason | fit time |"
    )
    assert header in stdout
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and line != header]
    assert [r.split("|")[1].strip() for r in rows] == ["baseline", "kit", "kit, same seed"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert all(0.0 <= float(c) <= 1.0 for c in cells[1:3])  # accuracies
        assert 0 <= int(cells[4]) <= int(cells[5]) <= 1  # best <= stopped < --epochs
        assert cells[7].endswith(" s")
    assert "max_epochs (last weights kept)" in rows[0]
    assert "best weights restored" in rows[1]
    assert rows[1].split("|")[2:7] == rows[2].split("|")[2:7]  # same seed: same metrics and epochs
    hashes = dict(SHA.findall(stdout))
    assert set(hashes) == {"1", "2"} and hashes["1"] == hashes["2"]
    assert "reproducibility (same seed, two kit runs): bit-identical weights" in stdout
    assert "seed sweep over seeds [2, 3]" in stdout
    sweep = (out / "sweep.csv").read_text().splitlines()
    assert "baseline test acc" in sweep[0] and "kit test acc" in sweep[0]
    assert [line.split(",")[0] for line in sweep[1:3]] == ["2", "3"]
    png = out / "demo.png"
    assert f"figure: {png}" in stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    # Lightning's progress bar is on (tqdm's "Epoch 0: 100%", or rich's "Epoch 0/2 ━━" with rich installed)
    assert re.search(r"Epoch \d+(: 100%|/\d+ )", stdout + stderr)


# ----------------------------------------------------------------------------- LightningCLI
def _cli(args: list[str], run: bool = True):
    from cli import main

    argv = sys.argv
    sys.argv = ["cli.py"]  # LightningCLI warns when sys.argv (pytest's) and args are both given
    try:
        return main(args, run=run)
    finally:
        sys.argv = argv


def test_demo_config_holds_the_demo_settings() -> None:
    import demo

    cfg = yaml.safe_load(CONFIG.read_text())
    model, data, cbs = cfg["model"], cfg["data"], cfg["trainer"]["callbacks"]
    assert (model["hidden"], model["lr"], model["l2"]) == (demo.HIDDEN, demo.LR, demo.L2)
    assert (data["batch_size"], data["train_fraction"]) == (demo.BATCH_SIZE, demo.TRAIN_FRACTION)
    by_class = {c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in cbs}
    assert by_class["SeedEverything"]["seed"] == cfg["seed_everything"]
    assert by_class["EarlyStopping"] == {
        "monitor": "val_loss",
        "patience": demo.PATIENCE,
        "restore_best_weights": True,
    }
    schedule = by_class["DropoutScheduler"]["schedule"]
    assert schedule["class_path"] == "lightning_regkit.schedules.Curriculum"
    assert schedule["init_args"] == {"p_final": demo.DROPOUT.p_final, "gamma": demo.DROPOUT.gamma}
    assert cfg["trainer"]["max_epochs"] == 80


@pytest.mark.slow
def test_cli_config_reproduces_the_demo_kit_run(tmp_path, monkeypatch) -> None:
    """``cli.py fit --config demo_config.yaml`` ends with the demo kit run's weights, bit for bit."""
    import demo

    monkeypatch.chdir(tmp_path)
    assert torch.get_num_threads() == 1  # as the demo: float sums depend on the thread count
    cli = _cli(
        [
            "fit",
            f"--config={CONFIG}",
            "--trainer.max_epochs=3",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'cli'}",
        ]
    )
    cbs = cli.trainer.callbacks
    seeders = [c for c in cbs if isinstance(c, SeedEverything)]
    schedulers = [c for c in cbs if isinstance(c, DropoutScheduler)]
    stoppers = [c for c in cbs if isinstance(c, EarlyStopping)]
    assert len(seeders) == len(schedulers) == len(stoppers) == 1
    assert seeders[0].seed == 0 and isinstance(schedulers[0].schedule, Curriculum)
    assert stoppers[0].restore_best_weights and stoppers[0].best_epoch >= 0
    assert schedulers[0].current_value is not None and schedulers[0].current_value > 0
    assert cli.trainer.current_epoch == 3
    assert isinstance(cli.model, RegularizedDigitsClassifier)
    assert [p.name for p in cli.model.penalties] == ["l2"]
    assert (tmp_path / "cli" / "config.yaml").exists()

    kit = demo.run("kit", True, seed=0, epochs=3, out=tmp_path / "demo", progress=False)
    assert kit.best_epoch == stoppers[0].best_epoch
    assert weights_sha256(cli.model) == kit.sha256


@pytest.mark.slow
def test_every_public_callback_and_penalty_from_yaml(tmp_path) -> None:
    """Every public callback, schedule and penalty is configurable from YAML (``class_path``); they fit."""
    config = {
        "seed_everything": 3,
        "trainer": {
            **trainer_kwargs(tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=2),
            "callbacks": [
                {
                    "class_path": "lightning_regkit.callbacks.weight_penalty.WeightPenalty",
                    "init_args": {
                        "l1": {
                            "class_path": "lightning_regkit.schedules.Linear",
                            "init_args": {"start": 0.0, "end": 1e-5},
                        },
                        "penalties": [
                            {
                                "class_path": "lightning_regkit.penalties.MaxNorm",
                                "init_args": {"max_norm": 3.0, "include": ["model.net.0.weight"]},
                            }
                        ],
                    },
                },
                {
                    "class_path": "lightning_regkit.callbacks.dropout.DropoutScheduler",
                    "init_args": {
                        "schedule": {
                            "class_path": "lightning_regkit.schedules.Piecewise",
                            "init_args": {"points": [0.0, 0.5, 1.0], "values": [0.0, 0.3, 0.1]},
                        },
                        "modules": ["dropout"],
                        "names": "model.*",
                        "interval": "epoch",
                    },
                },
                {
                    "class_path": "lightning_regkit.callbacks.early_stopping.EarlyStopping",
                    "init_args": {
                        "monitor": "val_loss",
                        "criterion": "GL",
                        "alpha": 5.0,
                        "restore_best_weights": True,
                    },
                },
                {"class_path": "lightning_regkit.callbacks.seed.SeedEverything", "init_args": {"seed": 3}},
            ],
        },
        "model": {
            "hidden": 16,
            "optimizer": "sgd",
            "lr": 0.05,
            "l2": {
                "class_path": "lightning_regkit.schedules.Cosine",
                "init_args": {"start": 1e-4, "end": 0.0},
            },
            "penalties": [
                {
                    "class_path": "lightning_regkit.penalties.L1",
                    "init_args": {"strength": 1e-2, "proximal": True},
                },
                {"class_path": "lightning_regkit.penalties.MaxNorm", "init_args": {"max_norm": 2.0}},
            ],
        },
    }
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = _cli(["fit", f"--config={path}"])
    by_type = {type(c): c for c in cli.trainer.callbacks}
    wp = by_type[WeightPenalty]
    assert [p.name for p in wp.penalties] == ["l1", "maxnorm"] and isinstance(
        wp.penalties[0].strength, Linear
    )
    assert wp.penalties[1].include == ["model.net.0.weight"]
    ds = by_type[DropoutScheduler]
    assert isinstance(ds.schedule, Piecewise) and ds.names == ["model.*"] and ds.interval == "epoch"
    assert by_type[EarlyStopping].criterion == "GL"
    assert by_type[SeedEverything].seed == 3
    pens = cli.model.penalties
    assert [type(p) for p in pens] == [L2, L1, MaxNorm]
    assert isinstance(pens[0].strength, Cosine) and pens[1].proximal and pens[2].max_norm == 2.0
    assert cli.trainer.current_epoch == 2
    # proximal L1 at lr * strength = 5e-4 per step gives exact zeros; max-norm holds on every row
    weights = [cli.model.model.net[i].weight for i in (0, 3, 6)]
    assert sum(int((w == 0).sum()) for w in weights) > 0
    assert all(float(w.detach().norm(dim=1).max()) <= 2.0 + 1e-5 for w in weights)


# Runs the CLI in a new process as ``python -m examples.cli ...`` and ``python examples/cli.py ...`` would,
# one command after the other: the test runner's folders (tests/, examples/, the root) are taken off
# ``sys.path``; ``sys.path[0]`` is the working directory (the repository root) or the script's folder;
# the example modules are imported afresh for each command; ``__name__ == "__main__"``. Prints a marker
# line before each command; a command must end with exit status 0.
CLI_COMMANDS = r"""
import os, runpy, sys

import torch

root, examples, commands = __ARGS__
os.chdir(root)  # the user's shell is in the repository root
torch.set_num_threads(1)  # the example's small MLP: fastest on one thread
sys.path[:] = [p for p in sys.path[1:] if p.rstrip("/") not in (root, examples, __TESTS__)]
sys.path.insert(0, root)
for label, as_module, args in commands:
    for name in [m for m in sys.modules if m in ("cli", "digits") or m.split(".")[0] == "examples"]:
        del sys.modules[name]
    sys.path[0] = root if as_module else examples
    sys.argv = ["-m" if as_module else f"{examples}/cli.py", *args]
    print(f"=== {label}", flush=True)
    try:
        if as_module:
            runpy.run_module("examples.cli", run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(f"{examples}/cli.py", run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    sys.stdout.flush()
    sys.stderr.flush()
"""


@pytest.mark.slow
def test_cli_runs_as_a_script_and_as_a_module_and_fits_the_demo_config(tmp_path) -> None:
    """``python -m examples.cli fit --config examples/demo_config.yaml`` as a user types it (+ overrides),
    and ``fit --help`` both as a module and as a script, in one new process (no test folders on its path)."""
    out = tmp_path / "cli"
    fit = [
        "fit", f"--config={CONFIG}",
        "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={out}",
        "--model.l1=1e-5", "--model.interval=epoch", "--model.value_every_step=true",
    ]  # fmt: skip
    commands = [
        ("module help", True, ["fit", "--help"]),
        ("module fit", True, fit),
        ("script help", False, ["fit", "--help"]),
    ]
    code = CLI_COMMANDS.replace("__ARGS__", repr((str(ROOT), str(EXAMPLES_DIR), commands)))
    proc = run_python(code.replace("__TESTS__", repr(str(TESTS_DIR))), cwd=tmp_path, timeout=300)
    outputs = dict(part.split("\n", 1) for part in proc.stdout.split("=== ")[1:])
    assert list(outputs) == ["module help", "module fit", "script help"]
    for label in ("module help", "script help"):
        for option in (
            "--model.l2",
            "--model.l1",
            "--model.penalties",
            "--model.mode",
            "--model.interval",
            "--model.value_every_step",
            "--data.train_fraction",
        ):
            assert option in outputs[label], label
    saved = yaml.safe_load((out / "config.yaml").read_text())  # LightningCLI saves the resolved config
    assert saved["model"]["l1"] == 1e-5 and saved["model"]["l2"] == 0.001
    assert (saved["model"]["interval"], saved["model"]["value_every_step"]) == ("epoch", True)
    assert saved["trainer"]["max_epochs"] == 1
    assert "RegularizedDigitsClassifier: l1 selects 3 parameter tensors" in proc.stdout + proc.stderr


@pytest.mark.parametrize("l2", [1e-3, Cosine(1e-3, 0.0)])
def test_regularized_classifier_checkpoint_loads_with_weights_only(tmp_path, l2) -> None:
    model = RegularizedDigitsClassifier(hidden=8, l2=l2, penalties=[MaxNorm(3.0)])
    trainer = pl.Trainer(
        **trainer_kwargs(
            tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_checkpointing=True
        )
    )
    trainer.fit(model, datamodule=DigitsDataModule())
    (ckpt,) = tmp_path.glob("**/*.ckpt")
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["hidden"] == 8 and "penalties" not in hparams
    assert hparams.get("l2") == (l2 if isinstance(l2, float) else None)
    loaded = RegularizedDigitsClassifier.load_from_checkpoint(ckpt, l2=l2)
    assert max_abs_diff(weights_of(loaded), weights_of(model)) == 0.0
    assert [p.name for p in loaded.penalties] == ["l2"]
