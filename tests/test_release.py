"""The release path: the wheel builds, passes ``twine check``, ships every module (and nothing from
``tests/``), and a tiny fit runs from it once pip has installed it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, run_python

import lightning_regkit


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = tmp_path_factory.mktemp("src")
    shutil.copytree(
        ROOT, build / "src", ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build")
    )
    # the project's build backend (PEP 517), as ``pip wheel --no-build-isolation`` calls it, without pip
    code = f"from setuptools import build_meta\nprint(build_meta.build_wheel({str(out)!r}))"
    subprocess.run([sys.executable, "-c", code], cwd=build / "src", check=True, capture_output=True)
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


# Runs in a new process (forked from the warm interpreter, which has torch and Lightning imported but also
# the source tree's lightning_regkit): that copy is forgotten (its modules, the editable install's import
# finder, the source and test folders on sys.path), so every module of the kit the fit needs is imported
# from the folder pip installed the wheel into (``SITE``), and the script checks that they all were.
TINY_FIT = """
import sys

SITE = __SITE__
for name in [m for m in sys.modules if m.split(".")[0] == "lightning_regkit"]:
    del sys.modules[name]
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [SITE] + [p for p in sys.path if p.rstrip("/") not in __SOURCE__]

import lightning_regkit, torch, lightning.pytorch as pl
from torch import nn
from lightning_regkit import RegularizedModule, SeedEverything, DropoutScheduler
assert lightning_regkit.__file__.startswith(SITE), lightning_regkit.__file__
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
kit = {n: m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "lightning_regkit"}
assert len(kit) > 5 and all(f.startswith(SITE) for f in kit.values()), kit
print("FIT", trainer.global_step, lightning_regkit.__file__, len(kit))
"""


@pytest.mark.slow
def test_tiny_fit_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """pip installs the wheel (alone: ``--no-deps``) into a folder of its own; torch, Lightning & co.
    come from this environment (the CPU torch of this disk, no download)."""
    site = tmp_path / "site-packages"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    assert (site / "lightning_regkit" / "__init__.py").exists()
    source = tuple(str(p) for p in (ROOT, ROOT / "tests", ROOT / "examples"))
    code = TINY_FIT.replace("__SITE__", repr(str(site))).replace("__SOURCE__", repr(source))
    proc = run_python(code, cwd=tmp_path, timeout=300)
    assert f"FIT 4 {site}" in proc.stdout, proc.stdout + proc.stderr
