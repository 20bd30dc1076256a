"""Plot the dropout schedules of ``lightning_regkit.schedules`` over one run and write a PNG.

Usage: ``python examples/plot_dropout_schedules.py [OUTPUT_DIR]`` (default: the current folder).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lightning_regkit.schedules import (
    Constant,
    Cosine,
    Curriculum,
    EarlyDropout,
    Exponential,
    FromProgress,
    LateDropout,
    Linear,
    Piecewise,
    Schedule,
    Step,
)

TOTAL = 3000  # optimizer steps of the illustrated run

SCHEDULES: dict[str, Schedule] = {
    "Constant(0.1)": Constant(0.1),
    "Linear(0, 0.3)": Linear(0.0, 0.3),
    "Cosine(0.3, 0)": Cosine(0.3, 0.0),
    "Exponential(0.3, gamma=0.999)": Exponential(0.3, gamma=0.999),
    "Step([0.3, 0.6], [0.3, 0.2, 0.1])": Step([0.3, 0.6], [0.3, 0.2, 0.1]),
    "Piecewise([0, 0.2, 1], [0, 0.3, 0.05])": Piecewise([0.0, 0.2, 1.0], [0.0, 0.3, 0.05]),
    "Curriculum(0.5, gamma=0.001)  [Morerio 2017]": Curriculum(p_final=0.5, gamma=0.001),
    "EarlyDropout(0.1, until=1/6)  [Liu 2023]": EarlyDropout(0.1, until=1 / 6),
    "EarlyDropout(0.1, until=1/6, linear)  [Liu 2023]": EarlyDropout(0.1, until=1 / 6, linear=True),
    "LateDropout(0.4, start=1/6)  [Liu 2023]": LateDropout(0.4, start=1 / 6),
    "FromProgress(0.3 * sin(pi x))": FromProgress(lambda x: 0.3 * math.sin(math.pi * x)),
}


def main(out_dir: str | Path = ".") -> Path:
    """Draw every schedule against the step and save ``dropout_schedules.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = range(TOTAL)
    fig, axes = plt.subplots(4, 3, figsize=(13, 11), sharex=True)
    for ax, (name, schedule) in zip(axes.flat, SCHEDULES.items(), strict=False):
        ax.plot(list(steps), [schedule(t, TOTAL) for t in steps], lw=1.8)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(-0.02, 0.55)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(SCHEDULES) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(f"optimizer step t (total = {TOTAL})")
    for ax in axes[:, 0]:
        ax.set_ylabel("drop probability p")
    fig.suptitle("lightning_regkit dropout schedules: p = schedule(t, total)")
    fig.tight_layout()
    path = out / "dropout_schedules.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "."))
