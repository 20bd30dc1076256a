"""The README: what a first visit needs, its Python example runs, its links lead somewhere.

The feature guides live under ``docs/`` (run by ``tests/test_docs.py``; the site is built by
``tests/test_docs_site.py``). The README's ```python blocks run here, in order, in one namespace, in
a temporary folder, with the shared tiny model (a TinyTransformer classifier) and data pre-bound as
``model`` and ``dm``: the README's example shows what to add to a project, not how to build the
project (a complete, self-contained version runs on the Getting started page). A block preceded by
``<!-- readme-test: skip -->`` is an illustrative fragment; such blocks are kept few.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ROOT, LitClassifier, SyntheticDataModule, TinyTransformer

BLOCK = re.compile(r"(<!-- readme-test: skip -->\s*\n)?```python\n(.*?)```", re.S)
README = (ROOT / "README.md").read_text()
BLOCKS = [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer(README)]
# [text](target) outside code blocks; external links (with a scheme) are not followed
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def _slug(heading: str) -> str:
    """The anchor GitHub and MkDocs give a heading (lower case, punctuation dropped, spaces to -)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_a_first_visit_page() -> None:
    lines = README.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; feature guides go to docs/"
    headings = [line[3:].strip() for line in lines if line.startswith("## ")]
    for wanted in ("Install", "The two commands", "Example", "Documentation"):
        assert wanted in headings, (wanted, headings)
    assert "![demo](docs/demo.png)" in README
    assert "not on PyPI yet" in README  # the install section tells the truth
    (example,) = [code for skip, code in BLOCKS if not skip]
    assert len(example.strip().splitlines()) <= 20


def test_readme_states_the_versions_pyproject_declares() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.S | re.M)
    assert deps
    for name, bound in re.findall(r'"([\w-]+)>=([\w.]+)"', deps.group(1)):
        assert f"`{name} >= {bound}`" in README, f"README must state {name} >= {bound} as pyproject does"
    python = re.search(r'requires-python = ">=([\d.]+)"', pyproject)
    assert python and f"Python >= {python.group(1)}" in README


def test_readme_links_resolve() -> None:
    checked = 0
    for target in LINK.findall(_prose(README)):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path
        assert file.exists(), f"README links to {target}, which does not exist"
        if anchor and file.suffix == ".md":
            slugs = {_slug(h) for h in re.findall(r"^#+ (.*)$", _prose(file.read_text()), re.M)}
            assert anchor in slugs, f"README links to {target}: no such heading in {path}"
        checked += 1
    assert checked >= 10


def test_slug_matches_the_headings_the_readme_links_to() -> None:
    assert _slug("The demo: plain Lightning vs. the kit") == "the-demo-plain-lightning-vs-the-kit"
    assert _slug("A first run") == "a-first-run"


@pytest.mark.slow
def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict[str, Any] = {
        "__name__": "readme",
        "model": LitClassifier(TinyTransformer()),
        "dm": SyntheticDataModule(),
    }
    ran = 0
    for skip, code in BLOCKS:
        compiled = compile(code, "README.md", "exec")  # a skipped block is still valid Python
        if not skip:
            exec(compiled, namespace)
            ran += 1
    assert ran >= 1
    assert sum(skip for skip, _ in BLOCKS) <= len(BLOCKS) // 3
    trainer = namespace["trainer"]
    names = {type(cb).__name__ for cb in trainer.callbacks}
    assert {"SeedEverything", "WeightPenalty", "DropoutScheduler", "EarlyStopping"} <= names
    assert trainer.current_epoch >= 1
    assert namespace["model"].net.drop.p == 0.1  # the dropout schedule gave the initial p back
