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
