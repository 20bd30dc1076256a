"""The release path: the wheel builds, passes ``twine check``, ships every module (and nothing from
``tests/``), and a tiny fit runs from it installed in a fresh virtual environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT

import lightning_regkit


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = tmp_path_factory.mktemp("src")
    shutil.copytree(
        ROOT, build / "src", ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            ".",
        ],
        cwd=build / "src",
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("lightning_regkit-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_ships_the_package_and_nothing_else(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    package = Path(lightning_regkit.__file__).parent
    modules = {f"lightning_regkit/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")}
    assert modules <= names, modules - names
    assert "lightning_regkit/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/", "docs/"))]
    assert any(n.endswith("/licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    assert lightning_regkit.__version__ in wheel.name
    twine = shutil.which("twine") or str(Path(sys.executable).parent / "twine")
    proc = subprocess.run([twine, "check", "--strict", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0 and "PASSED" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_tiny_fit_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv gets the wheel only; torch, Lightning & co. come from this environment's
    site-packages through a path file (the CPU torch of this disk, no download)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no source tree on the path
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        env=env,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = """
import lightning_regkit, torch, lightning.pytorch as pl
from torch import nn
from lightning_regkit import RegularizedModule, SeedEverything, DropoutScheduler
assert "/venv/" in lightning_regkit.__file__, lightning_regkit.__file__
class M(RegularizedModule):
    def __init__(self):
        super().__init__(l2=1e-3)
        self.net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 1))
    def training_step(self, batch, batch_idx):
        return self.net(batch).pow(2).mean()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
data = torch.utils.data.DataLoader(torch.randn(16, 4), batch_size=4)
trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     callbacks=[SeedEverything(0), DropoutScheduler(0.2)])
trainer.fit(M(), data)
print("FIT", trainer.global_step, lightning_regkit.__file__)
"""
    proc = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FIT 4 " in proc.stdout
