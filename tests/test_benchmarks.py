"""The benchmarks run (a smoke run each, small sizes) and print every figure the README quotes.

Their timings are not asserted (a shared machine is noisy); the figures must be there and positive.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ROOT
from script_runs import run_script

pytestmark = pytest.mark.slow
FLOAT = r"([0-9]+\.[0-9]+)"


def run_benchmark(tmp_path: Path, name: str, *args: str) -> str:
    """``python benchmarks/<name> <args>`` in a new process (from the warm interpreter); its stdout."""
    return run_script(ROOT / "benchmarks" / name, list(args), cwd=tmp_path, timeout=400)


def test_penalty_overhead_prints_every_column(tmp_path: Path) -> None:
    out = run_benchmark(tmp_path, "penalty_overhead.py", "--quick")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("2x32")]
    assert [r[2] for r in rows] == ["L2", "L1+L2"]
    for row in rows:  # naive, autograd, fast, compiled, value, two per-step figures, two speed-ups
        ratios = [float(c.rstrip("x")) for c in row[3:]]
        assert len(ratios) == 9 and all(r > 0 for r in ratios), row
    assert re.search(r"first compiled call .*2x32 " + FLOAT + " s", out)
    assert re.search(r"overhead [+-]" + FLOAT + "%", out)
    assert re.search(r"penalty hooks .*: " + FLOAT + "% of the step time", out)


def test_kit_overhead_prints_the_ratios(tmp_path: Path) -> None:
    out = run_benchmark(tmp_path, "kit_overhead.py", "--quick")
    assert re.search(r"ratio \(kit on / kit off, median step time\): " + FLOAT, out)
    assert re.search(r"whole fit wall time .* \(median " + FLOAT + r"\)", out)
    assert re.search(r"10th percentile .* ratio " + FLOAT, out)
