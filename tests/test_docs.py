"""Every page under ``docs/`` runs as written.

Each ```python block of a page runs, in order, in one namespace per page, in a temporary working
directory. A block preceded by the line ``<!-- docs-test: skip -->`` is an illustrative fragment
(e.g. a script for a process pool, or a path of the reader's) and is not run; such blocks are
counted and kept few. A page with no runnable block fails: a page that shows code proves it.

The pages run on one torch thread (restored afterwards): their tiny models run several times faster
so, and far faster still when another test process shares the machine's two cores.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from helpers import ROOT

BLOCK = re.compile(r"(<!-- docs-test: skip -->\s*\n)?```python\n(.*?)```", re.S)
PAGES = sorted((ROOT / "docs").glob("*.md"))


def blocks(page: Path) -> list[tuple[bool, str]]:
    return [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer(page.read_text())]


@pytest.mark.slow  # every page end to end: the full gate runs them, the inner loop does not
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_docs_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = blocks(page)
    runnable = [code for skip, code in found if not skip]
    if not found:
        pytest.skip(f"{page.name} shows no Python code")
    assert runnable, f"{page.name}: every block is skipped"
    assert len(found) - len(runnable) <= max(1, len(found) // 4), f"{page.name}: too many skipped blocks"
    monkeypatch.chdir(tmp_path)
    # pages quieten Lightning's loggers (setLevel); the tests run after them must see the usual levels
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    levels = [(logger, logger.level) for logger in loggers if isinstance(logger, logging.Logger)]
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, code in enumerate(runnable):
            try:
                exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
            except Exception as err:  # the block's text makes the failure readable
                raise AssertionError(f"{page.name}, block {i} failed: {err!r}\n{code}") from err
    finally:
        torch.set_num_threads(threads)
        for logger, level in levels:
            logger.setLevel(level)  # setLevel also clears the loggers' cached decisions


def test_skip_marker_is_recognized() -> None:
    text = "<!-- docs-test: skip -->\n```python\nraise SystemExit\n```\n```python\nx = 1\n```\n"
    found = [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer(text)]
    assert found == [(True, "raise SystemExit\n"), (False, "x = 1\n")]
