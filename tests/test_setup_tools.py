"""The set-up's choice of interpreter (``tools/pick_python.py``): a suitable CPython, the fastest found."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers import ROOT, load_file_module

SCRIPT = ROOT / "tools" / "pick_python.py"


def _pick_python() -> ModuleType:
    return load_file_module(SCRIPT, "pick_python")


def test_pick_python_prints_a_suitable_interpreter() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=True
    )
    exe = proc.stdout.strip()
    assert os.path.isabs(exe) and os.access(exe, os.X_OK), proc.stdout
    assert f"python for the venv: {exe} (" in proc.stderr
    times = [float(t) for t in re.findall(r"[( ]([0-9.]+) s", proc.stderr)]  # the chosen one's first
    assert times and times[0] == min(times), proc.stderr
    check = "import sys, venv; print(sys.implementation.name, sys.version_info >= (3, 10))"
    info = subprocess.run([exe, "-c", check], capture_output=True, text=True, timeout=60)
    assert info.stdout.split() == ["cpython", "True"]


@pytest.mark.parametrize("kind", ["missing", "not executable", "unsuitable", "fails"])
def test_pick_python_skips_a_candidate_that_cannot_make_the_venv(tmp_path: Path, kind: str) -> None:
    fake = tmp_path / "python3"
    if kind != "missing":
        scripts = {"unsuitable": "#!/bin/sh\necho unsuitable\n", "fails": "#!/bin/sh\nexit 3\n"}
        fake.write_text(scripts.get(kind, ""))
        fake.chmod(0o644 if kind == "not executable" else 0o755)
    assert _pick_python().measure(str(fake)) == [None]


def test_pick_python_measures_a_suitable_candidate() -> None:
    [(exe, seconds), missing] = _pick_python().measure(sys.executable, "/nonexistent/python3")
    assert os.path.samefile(exe, sys.executable) and 0 < seconds < 10 and missing is None
