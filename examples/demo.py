"""lightning_regkit demo: the digits MLP trained with plain Lightning, then with the kit.

Three runs of the same MLP on a small training split of the digits data set (it overfits):

1. baseline: plain Lightning, no regularization, runs all ``--epochs``;
2. kit: L2 penalty (``RegularizedModule``), curriculum dropout (``DropoutScheduler``), early
   stopping that gives back the best weights (``EarlyStopping(restore_best_weights=True)``),
   seeded (``SeedEverything``);
3. kit again with the same seed: its weights must be bit-identical to run 2 (sha256 printed).

Prints a table (validation and test accuracy, best and stopped epoch, stopping reason,
training time) and writes ``demo.png`` (loss curves with the best epoch and the stop marked,
validation accuracy, dropout p over training) into ``--out``.

``--variance`` runs instead the variance study: baseline and kit, each seeded with
``SeedEverything(**seeds)``, in one seed sweep per source of randomness (``init``, ``data``,
``train``: that source varies, the others are held) and one with every source varying; it prints
the standard deviation of the test accuracy per source with its chi-square interval and
``P(kit > baseline)`` with its bootstrap interval (``compare``), and writes ``variance.png``,
``variance.csv`` and the sweeps' results files (resumed from on a second call) into ``--out``.

Run it with ``make demo`` (sets up .venv first) or ``python examples/demo.py --help``.
``examples/demo_config.yaml`` is the kit run as a LightningCLI config.
"""

from __future__ import annotations

import argparse
import functools
import sys
import textwrap
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits import DigitsClassifier, DigitsDataModule, RegularizedDigitsClassifier, weights_sha256

from lightning_regkit import DropoutScheduler, EarlyStopping, SeedEverything, seed_sweep
from lightning_regkit.compare import Comparison, compare
from lightning_regkit.schedules import Curriculum
from lightning_regkit.sources import SourceSeeds
from lightning_regkit.variance import VarianceBySource, variance_by_source

# The settings of the comparison (examples/demo_config.yaml holds the same for the kit run).
HIDDEN = 512
LR = 1e-3
BATCH_SIZE = 32
TRAIN_FRACTION = 0.3  # 539 training images: small enough for the MLP to overfit
L2 = 1e-3
DROPOUT = Curriculum(p_final=0.5, gamma=0.01)  # p rises from 0 towards 0.5 (63 % of it at step 100)
PATIENCE = 10


@dataclass
class RunResult:
    """What one run produced: final metrics, early-stopping facts, the curves and the weights' hash."""

    name: str
    val_acc: float
    val_loss: float
    test_acc: float
    best_epoch: int
    stopped_epoch: int
    reason: str
    fit_seconds: float
    sha256: str
    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss_curve: list[float] = field(default_factory=list)
    val_acc_curve: list[float] = field(default_factory=list)
    p_steps: list[float] = field(default_factory=list)  # fractional epoch of each training step
    p_values: list[float] = field(default_factory=list)  # dropout p used at that step


class History(Callback):
    """Records the epoch metrics and the dropout p that each training step really used."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float, float]] = []
        self.p: list[tuple[float, float]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        drops = [m.p for m in pl_module.modules() if isinstance(m, torch.nn.Dropout)]
        frac = trainer.current_epoch + batch_idx / max(trainer.num_training_batches, 1)
        self.p.append((frac, float(drops[0]) if drops else 0.0))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        self.rows.append(
            (trainer.current_epoch, float(m["train_loss"]), float(m["val_loss"]), float(m["val_acc"]))
        )


def _trainer(epochs: int, out: Path, callbacks: list[Callback], progress: bool) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=callbacks,
        default_root_dir=str(out),
    )


def run(
    name: str,
    kit: bool,
    seed: int,
    epochs: int,
    out: Path,
    progress: bool = True,
    sources: Mapping[str, int] | None = None,
    hidden: int = HIDDEN,
) -> RunResult:
    """Train one run and evaluate it on the validation and test sets.

    ``sources``: seed both runs with ``SeedEverything(**sources)`` (one seed per source of
    randomness, as a ``seed_sweep(vary=...)`` hands them out) instead of ``seed``. ``hidden``: the
    width of the MLP's two hidden layers.
    """
    dm = DigitsDataModule(batch_size=BATCH_SIZE, train_fraction=TRAIN_FRACTION)
    history = History()
    callbacks: list[Callback] = [history]
    early: EarlyStopping | None = None
    if sources is not None:  # SeedEverything(**sources), spelled out for type checkers
        s = sources
        seeder = SeedEverything(s["seed"], init=s["init"], data=s["data"], train=s["train"])
    else:
        seeder = SeedEverything(seed)
    if kit:
        seeder.seed_now()  # before building the model: its initial weights repeat too
        model: pl.LightningModule = RegularizedDigitsClassifier(hidden=hidden, lr=LR, l2=L2)
        early = EarlyStopping("val_loss", patience=PATIENCE, restore_best_weights=True)
        callbacks = [seeder, DropoutScheduler(DROPOUT, interval="step"), early, history]
    elif sources is not None:  # the baseline in a sweep by source: seeded by source, nothing else added
        seeder.seed_now()
        model = DigitsClassifier(hidden=hidden, lr=LR)
        callbacks = [seeder, history]
    else:
        pl.seed_everything(seed, verbose=False)
        model = DigitsClassifier(hidden=hidden, lr=LR)
    trainer = _trainer(epochs, out, callbacks, progress)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_seconds = time.perf_counter() - t0
    sha = weights_sha256(model)  # the weights fit ended with (the best ones, for the kit)
    val = trainer.validate(model, datamodule=dm, verbose=False)[0]
    test = trainer.test(model, datamodule=dm, verbose=False)[0]

    epochs_seen = [r[0] for r in history.rows]
    val_curve = [r[2] for r in history.rows]
    if early is not None:
        best_epoch = early.best_epoch
        stopped = early.stopped_epoch if early.stopped_epoch > 0 else epochs_seen[-1]
        reason = early.stopping_reason.name.lower() if early.stopped_epoch > 0 else "max_epochs"
        reason += " (best weights restored)"
    else:  # plain Lightning keeps the last weights; the best epoch is only reported
        best_epoch = epochs_seen[val_curve.index(min(val_curve))]
        stopped, reason = epochs_seen[-1], "max_epochs (last weights kept)"
    return RunResult(
        name=name,
        val_acc=float(val["val_acc"]),
        val_loss=float(val["val_loss"]),
        test_acc=float(test["test_acc"]),
        best_epoch=best_epoch,
        stopped_epoch=stopped,
        reason=reason,
        fit_seconds=fit_seconds,
        sha256=sha,
        epochs=epochs_seen,
        train_loss=[r[1] for r in history.rows],
        val_loss_curve=val_curve,
        val_acc_curve=[r[3] for r in history.rows],
        p_steps=[s for s, _ in history.p],
        p_values=[p for _, p in history.p],
    )


def table(results: list[RunResult]) -> str:
    """The comparison as a Markdown table."""
    head = (
        "| run | val acc | test acc | val loss | best epoch | stopped epoch | stopping reason | fit time |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    )
    rows = [
        f"| {r.name} | {r.val_acc:.4f} | {r.test_acc:.4f} | {r.val_loss:.4f} | {r.best_epoch} | "
        f"{r.stopped_epoch} | {r.reason} | {r.fit_seconds:.1f} s |"
        for r in results
    ]
    return "\n".join([*head, *rows])


def plot(baseline: RunResult, kit: RunResult, path: Path) -> Path:
    """Loss curves (best epoch and stop marked), validation accuracy and dropout p; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_p) = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = ((baseline, "tab:gray", "baseline (plain Lightning)"), (kit, "tab:blue", "kit"))
    for r, color, label in styles:
        ax_loss.plot(r.epochs, r.train_loss, color=color, ls=":", label=f"{label}: train")
        ax_loss.plot(r.epochs, r.val_loss_curve, color=color, label=f"{label}: validation")
        ax_acc.plot(r.epochs, r.val_acc_curve, color=color, label=label)
    for ax in (ax_loss, ax_acc):
        ax.axvline(
            kit.best_epoch, color="tab:green", ls="--", lw=1, label=f"kit best epoch ({kit.best_epoch})"
        )
        ax.axvline(kit.stopped_epoch, color="tab:red", ls="--", lw=1, label=f"kit stop ({kit.stopped_epoch})")
    i = baseline.epochs.index(baseline.best_epoch)
    ax_loss.plot([baseline.best_epoch], [baseline.val_loss_curve[i]], "o", color="tab:gray", ms=6)
    ax_loss.annotate(
        f"baseline: lowest val loss at epoch {baseline.best_epoch},\n"
        "then rises (overfits); last weights kept",
        (baseline.best_epoch, baseline.val_loss_curve[i]),
        textcoords="offset points",
        xytext=(10, 30),
        fontsize=8,
        color="dimgray",
        arrowprops={"arrowstyle": "->", "color": "dimgray"},
    )
    j = kit.epochs.index(kit.best_epoch)
    ax_loss.plot([kit.best_epoch], [kit.val_loss_curve[j]], "*", color="tab:green", ms=12, zorder=5)
    ax_loss.annotate(
        "kit: these weights are restored",
        (kit.best_epoch, kit.val_loss_curve[j]),
        textcoords="offset points",
        xytext=(-60, -35),
        fontsize=8,
        color="tab:green",
        arrowprops={"arrowstyle": "->", "color": "tab:green"},
    )
    top = max(max(r.val_loss_curve[len(r.val_loss_curve) // 4 :]) for r, _, _ in styles)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss (dotted: training)", ylim=(0, 2 * top))
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    ax_acc.set_ylim(
        max(0.0, min(min(r.val_acc_curve[1:] or r.val_acc_curve) for r, _, _ in styles) - 0.02), 1.0
    )
    ax_p.plot(kit.p_steps, kit.p_values, color="tab:blue", label="kit: DropoutScheduler(Curriculum)")
    ax_p.plot(baseline.p_steps, baseline.p_values, color="tab:gray", label="baseline: p = 0")
    ax_p.axvline(kit.stopped_epoch + 1, color="tab:red", ls="--", lw=1, label="kit stop")
    ax_p.set(
        xlabel="epoch", ylabel="dropout p", title="dropout probability per training step", ylim=(-0.02, 0.6)
    )
    ax_loss.legend(fontsize=7, loc="upper right")
    ax_acc.legend(fontsize=7, loc="lower right")
    ax_p.legend(fontsize=7, loc="center right")
    for ax in (ax_loss, ax_acc, ax_p):
        ax.grid(alpha=0.3)
    fig.suptitle("digits MLP: plain Lightning vs lightning_regkit", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- --variance
BASELINE_METRIC, KIT_METRIC = "baseline test acc", "kit test acc"


def variance_run(epochs: int, out: str, seeds: SourceSeeds, hidden: int = HIDDEN) -> dict[str, float]:
    """One sweep run (module level: process pools pickle it): baseline and kit with the same seeds."""
    torch.set_num_threads(1)
    return {
        metric: run(
            metric.split()[0], kit, 0, epochs, Path(out), progress=False, sources=seeds, hidden=hidden
        ).test_acc
        for metric, kit in ((BASELINE_METRIC, False), (KIT_METRIC, True))
    }


def variance_study(
    seeds: list[int], epochs: int, workers: int, out: Path, hidden: int = HIDDEN
) -> tuple[VarianceBySource, dict[str, Comparison]]:
    """One sweep per source and one with all varying; ``P(kit > baseline)`` in each, paired by seed."""
    train_fn = functools.partial(variance_run, epochs, str(out / "runs"), hidden=hidden)
    # resumed from on a second call with these settings
    width = "" if hidden == HIDDEN else f"-{hidden}-wide"
    results = out / f"variance-sweeps-{epochs}-epochs{width}"
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            table = variance_by_source(train_fn, seeds, map=pool, results=results)
    else:
        table = variance_by_source(train_fn, seeds, results=results)
    comparisons = {}
    for label, sweep in table.sweeps.items():
        kit = {r.seed: r.metrics[KIT_METRIC] for r in sweep.results if r.ok}
        base = {r.seed: r.metrics[BASELINE_METRIC] for r in sweep.results if r.ok}
        comparisons[label] = compare(kit, base, "test acc", higher_is_better=True)
    return table, comparisons


def variance_figure(
    table: VarianceBySource,
    comparisons: dict[str, Comparison],
    title: str,
    metrics: tuple[str, str] = (BASELINE_METRIC, KIT_METRIC),
) -> Any:
    """Std of the test accuracy by source (bars, chi-square CI) and P(kit > baseline) with its CI.

    ``metrics``: the baseline's and the kit's metric names in ``table``. Returns the figure.
    """
    import matplotlib.pyplot as plt

    fig, (ax_std, ax_p) = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    table.plot(list(metrics), ax=ax_std, labels=["baseline (plain)", "kit"])
    n = table.spread(metrics[1], table.labels[-1])
    ax_std.set_title(
        f"test accuracy: std across {n.n if n else '?'} seeds, by source of randomness", fontsize=10
    )
    labels = list(comparisons)
    ps = [comparisons[k].p_a_better for k in labels]
    err = [
        [p - comparisons[k].p_ci_low for k, p in zip(labels, ps, strict=True)],
        [comparisons[k].p_ci_high - p for k, p in zip(labels, ps, strict=True)],
    ]
    ax_p.errorbar(
        range(len(labels)), ps, yerr=err, fmt="o", color="tab:blue", capsize=4, label="P(kit > baseline)"
    )
    ax_p.axhline(0.5, color="k", lw=1, ls=":", label="0.5: no difference")
    gamma = next(iter(comparisons.values())).gamma
    ax_p.axhline(gamma, color="tab:green", lw=1, ls="--", label=f"gamma {gamma}: meaningful")
    ax_p.set_xticks(range(len(labels)))
    ax_p.set_xticklabels(labels)
    ax_p.set(ylim=(-0.02, 1.02), ylabel="P(kit > baseline), 95% bootstrap CI", xlabel="what varied")
    verdict = textwrap.fill(
        f"all sources varying (A = kit, B = baseline): {comparisons[labels[-1]].verdict}", 70
    )
    ax_p.set_title(verdict, fontsize=8)
    ax_p.legend(fontsize=7, loc="lower right")
    ax_p.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_variance(
    table: VarianceBySource, comparisons: dict[str, Comparison], epochs: int, path: Path
) -> Path:
    """:func:`variance_figure` of the demo's study, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = (
        f"digits MLP, {epochs} epochs: how much does each source of randomness move the result,"
        " and is the kit better?"
    )
    fig = variance_figure(table, comparisons, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main_variance(args: argparse.Namespace) -> int:
    """``--variance``: the sweeps by source, the table, P(kit > baseline), the figure."""
    seeds = list(range(1, args.variance_seeds + 1))
    t0 = time.perf_counter()
    table, comparisons = variance_study(seeds, args.variance_epochs, args.workers, args.out, args.hidden)
    print(
        f"\nDigits MLP 64-{args.hidden}-{args.hidden}-10, {TRAIN_FRACTION:.0%} of the data for training"
        f" (a fixed split), {args.variance_epochs} epochs."
    )
    print(
        "Baseline: plain model; kit: L2, curriculum dropout, early stopping with best weights. Both seeded"
        " with SeedEverything(**seeds)."
    )
    print(
        f"One sweep of {len(seeds)} seeds per source (that source varies, the others are held fixed), and one"
        " with all sources varying:\n"
    )
    print(table.table())
    print("\nstd of the test accuracy (95% chi-square CI); the rows are not shares of 'all':\n")
    print(table.markdown())
    print("\nP(kit > baseline), paired by seed (95% percentile bootstrap CI):")
    for label, c in comparisons.items():
        print(
            f"  {label:>5}: P = {c.p_a_better:.3f}  CI [{c.p_ci_low:.3f}, {c.p_ci_high:.3f}]  "
            f"mean(kit - baseline) = {c.mean_diff:+.4f}  ({c.n} pairs)"
        )
    print(f"\nall sources varying:\n{comparisons['all']}")
    figure = plot_variance(table, comparisons, args.variance_epochs, args.out / "variance.png")
    table.to_csv(args.out / "variance.csv")
    print(f"table csv: {args.out / 'variance.csv'}")
    print(f"figure: {figure}")
    print(f"total time: {time.perf_counter() - t0:.1f} s")
    return 0 if not any(s.failures for s in table.sweeps.values()) else 1


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print the table, the reproducibility line and the figure's path."""
    parser = argparse.ArgumentParser(
        description="Train the digits MLP with plain Lightning and with lightning_regkit (L2, scheduled "
        "dropout, early stopping with best-weight restore, seeding), print a comparison table and a "
        "reproducibility check, and write a figure.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every run; the kit runs twice with it to check reproducibility",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=80,
        help="max epochs (the baseline runs all of them; the kit may stop early)",
    )
    parser.add_argument(
        "--sweep-seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="also run baseline and kit once per seed with seed_sweep and print mean, std and 95%% "
        "confidence interval of their test accuracy, and write sweep.csv to --out (e.g. --sweep-seeds 1 2 3)",
    )
    parser.add_argument(
        "--variance",
        action="store_true",
        help="run the variance study instead: baseline and kit in one seed sweep per source of randomness "
        "(init, data, train) and one with all varying; print the std of the test accuracy by source and "
        "P(kit > baseline), write variance.png (a few minutes on 2 cores with the defaults)",
    )
    parser.add_argument(
        "--variance-seeds", type=int, default=8, metavar="N", help="seeds per sweep of --variance (1..N)"
    )
    parser.add_argument(
        "--variance-epochs", type=int, default=10, metavar="E", help="epochs of each --variance run"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="processes that run the --variance sweeps (1: in this process)"
    )
    parser.add_argument(
        "--hidden",
        type=int,
        default=HIDDEN,
        help="width of the MLP's two hidden layers (smaller: a quicker run that shows less overfitting)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="folder for demo.png")
    parser.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bars")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    for option, low in (("variance_seeds", 2), ("variance_epochs", 1), ("workers", 1), ("hidden", 1)):
        if getattr(args, option) < low:
            parser.error(f"--{option.replace('_', '-')} must be >= {low}, got {getattr(args, option)}")

    torch.set_num_threads(1)  # a small MLP: one thread is fastest, and leaves a core free
    if args.variance:
        return main_variance(args)
    progress = not args.no_progress
    t0 = time.perf_counter()
    baseline = run("baseline", False, args.seed, args.epochs, args.out, progress, hidden=args.hidden)
    kit = run("kit", True, args.seed, args.epochs, args.out, progress, hidden=args.hidden)
    again = run("kit, same seed", True, args.seed, args.epochs, args.out, progress, hidden=args.hidden)
    figure = plot(baseline, kit, args.out / "demo.png")

    print(
        f"\nDigits MLP 64-{args.hidden}-{args.hidden}-10, {TRAIN_FRACTION:.0%} of the data for training, "
        f"seed {args.seed},"
    )
    print(
        f"up to {args.epochs} epochs. Kit: L2={L2:g}, dropout {DROPOUT}, EarlyStopping(patience={PATIENCE},"
    )
    print("restore_best_weights=True), SeedEverything. Metrics are of the weights each run ends with.\n")
    print(table([baseline, kit, again]))
    same = kit.sha256 == again.sha256
    verdict = "bit-identical weights" if same else "weights DIFFER"
    print(f"\nreproducibility (same seed, two kit runs): {verdict}")
    print(f"  kit run 1 weights sha256: {kit.sha256}")
    print(f"  kit run 2 weights sha256: {again.sha256}")
    print(f"figure: {figure}")
    if args.sweep_seeds:
        sweep = seed_sweep(
            lambda seed: {
                f"{name} test acc": run(
                    name, kit, seed, args.epochs, args.out, False, hidden=args.hidden
                ).test_acc
                for name, kit in (("baseline", False), ("kit", True))
            },
            seeds=args.sweep_seeds,
        )
        print(f"\nseed sweep over seeds {args.sweep_seeds} (mean, std, 95% confidence interval):")
        print(sweep.table())
        sweep.to_csv(args.out / "sweep.csv")
        print(f"sweep csv: {args.out / 'sweep.csv'}")
    print(f"total time: {time.perf_counter() - t0:.1f} s")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
