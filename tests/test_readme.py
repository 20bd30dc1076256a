"""The README's Python snippets run as written.

Every ```python block runs, in order, in one namespace per section (a "## " heading), in a
temporary folder, with the shared tiny model (a TinyTransformer classifier) and data
pre-bound as ``model`` and ``dm`` (a quick-start shows what to add to a project, not how to
build the project). A block preceded by
``<!-- readme-test: skip -->`` is an illustrative fragment (e.g. it needs a checkpoint path of
the reader's); such blocks are counted and kept few.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT, ClassifierSteps, LitClassifier, SyntheticDataModule, TinyMLP, TinyTransformer

BLOCK = re.compile(r"(<!-- readme-test: skip -->\s*\n)?```python\n(.*?)```", re.S)


def _sections() -> list[tuple[str, list[tuple[bool, str]]]]:
    text = (ROOT / "README.md").read_text()
    out = []
    for i, chunk in enumerate(re.split(r"^## ", text, flags=re.M)):
        title = "intro" if i == 0 else chunk.splitlines()[0].strip()
        blocks = [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer(chunk)]
        if blocks:
            out.append((title, blocks))
    return out


SECTIONS = _sections()


def _check_intro(ns: dict[str, Any], root: Path) -> None:
    names = {type(cb).__name__ for cb in ns["trainer"].callbacks}
    assert {"SeedEverything", "WeightPenalty", "DropoutScheduler", "EarlyStopping"} <= names
    assert ns["trainer"].current_epoch >= 1


def _check_penalties(ns: dict[str, Any], root: Path) -> None:
    callback = ns["trainer"].callbacks[0]
    assert [p.name for p in callback.penalties] == ["l2", "l1", "maxnorm"]
    assert callback.plan is not None and all(callback.plan.names)  # every pattern selected parameters
    assert ns["callback"].mode == "compiled" and ns["BigModel"]().penalties[0].name == "l1"
    assert ns["BigModel"]()._regkit.mode == "compiled"


def _check_seeds(ns: dict[str, Any], root: Path) -> None:
    result = ns["result"]
    assert result.seeds == [0, 1, 2] and not result.failures
    summary = result.summary["val_acc"]
    assert summary.n == 3 and summary.ci_low <= summary.mean <= summary.ci_high
    assert (root / "seeds.csv").read_text().startswith("seed,")


def _check_dropout(ns: dict[str, Any], root: Path) -> None:
    assert ns["early"].current_value == 0.0  # early dropout has ended by the last step
    assert 0.0 < ns["curriculum"].current_value < 0.3


def _check_early_stopping(ns: dict[str, Any], root: Path) -> None:
    es = ns["early_stop"]
    assert es.best_epoch >= 0 and isinstance(es.stopping_reason_message, str)


def _check_all_together(ns: dict[str, Any], root: Path) -> None:
    ckpt = torch.load(root / "ckpts" / "last.ckpt", weights_only=True)
    assert {"SeedEverything", "DropoutScheduler"} <= {str(k).split("{")[0] for k in ckpt["callbacks"]}
    assert ns["trainer"].global_step > 0


# what each section's snippets must have produced (section title prefix -> check)
CHECKS = {
    "intro": _check_intro,
    "L1/L2 weight penalties": _check_penalties,
    "Reproducibility": _check_seeds,
    "Scheduled dropout": _check_dropout,
    "Early stopping": _check_early_stopping,
    "All together": _check_all_together,
}


def test_readme_has_tested_snippets() -> None:
    blocks = [b for _, bs in SECTIONS for b in bs]
    assert len(blocks) >= 5
    assert sum(skip for skip, _ in blocks) <= len(blocks) // 3


@pytest.mark.slow
@pytest.mark.parametrize(("title", "blocks"), SECTIONS, ids=[t for t, _ in SECTIONS])
def test_readme_section_runs(title: str, blocks: list[tuple[bool, str]], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict[str, Any] = {
        "__name__": "readme",
        "model": LitClassifier(TinyTransformer()),
        "dm": SyntheticDataModule(),
        "ClassifierSteps": ClassifierSteps,
        "LitClassifier": LitClassifier,
        "SyntheticDataModule": SyntheticDataModule,
        "TinyMLP": TinyMLP,
        "TinyTransformer": TinyTransformer,
    }
    ran = 0
    for skip, code in blocks:
        if skip:
            compile(code, f"README {title}", "exec")  # still valid Python
            continue
        exec(compile(code, f"README {title}", "exec"), namespace)
        ran += 1
    assert ran >= 1
    checks = [check for prefix, check in CHECKS.items() if title.startswith(prefix)]
    for check in checks:
        check(namespace, tmp_path)


def test_every_section_with_snippets_is_checked() -> None:
    checked = [t for t, _ in SECTIONS if any(t.startswith(p) for p in CHECKS)]
    assert len(checked) == len(CHECKS), (checked, list(CHECKS))
