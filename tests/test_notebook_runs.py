"""The tour notebook runs: its code cells, in order, in one process forked from the warm interpreter.

No Jupyter kernel (nbmake's kernel start cost ~20 s here and the Jupyter stack in every set-up):
:mod:`notebook_runner` runs the cells as a kernel would and names the cell that fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from notebook_runner import NotebookCellError, code_cells, run_cells, run_notebook
from test_notebook_outputs import NOTEBOOK, SECTION_RESULTS


def _notebook(*cells: tuple[str, str]) -> dict:
    return {
        "cells": [{"cell_type": kind, "source": source.splitlines(keepends=True)} for kind, source in cells]
    }


@pytest.mark.parametrize(
    "line",
    ["%matplotlib inline", "!pip install numpy", "np.mean?", "    %time f()", "%%bash\necho hi", "x = !ls"],
)
def test_ipython_syntax_is_refused_naming_the_cell(line: str) -> None:
    notebook = _notebook(("markdown", "# title"), ("code", "import numpy as np"), ("code", f"x = 1\n{line}"))
    with pytest.raises(NotebookCellError, match=r"notebook cell 2 uses IPython syntax.*cannot run") as info:
        code_cells(notebook)
    assert repr(line.splitlines()[0].strip()) in str(info.value)


def test_a_syntax_error_is_reported_naming_the_cell() -> None:
    with pytest.raises(
        NotebookCellError, match=r"notebook cell 1 is not valid Python: .*<notebook cell 1>, line 2"
    ):
        code_cells(_notebook(("code", "x = 1"), ("code", "y = 2\ndef f(:\n    pass")))


def test_python_that_only_looks_like_ipython_syntax_runs() -> None:
    source = 'x = (10\n     % 3)\ns = """\n%not a magic\n!nor a shell\n"""\n# is this help?\nx'
    assert code_cells(_notebook(("code", source))) == [(0, source)]
    assert [run.stdout for run in run_cells(code_cells(_notebook(("code", source))), {})] == ["1\n"]


def test_a_raising_cell_is_reported_with_its_index_first_line_and_traceback() -> None:
    notebook = _notebook(
        ("code", "x = 0\n\ndef inverse(v):\n    return 1 / v"),
        ("markdown", "text"),
        ("code", "ran = []"),
        ("code", "\n# the failing cell\nprint('about to divide')\nran.append(inverse(x))"),
        ("code", "ran.append('after')"),
    )
    namespace: dict = {}
    with pytest.raises(NotebookCellError) as info:
        run_cells(code_cells(notebook), namespace)
    message = str(info.value)
    assert message.startswith("notebook cell 3 (first line: '# the failing cell') raised:\n")
    assert "ZeroDivisionError: division by zero" in message
    # the traceback goes into the cells' code, with their lines
    assert 'File "<notebook cell 3>", line 4' in message and "ran.append(inverse(x))" in message
    assert 'File "<notebook cell 0>", line 4, in inverse' in message and "return 1 / v" in message
    assert "--- what the cell printed before\nabout to divide" in message
    assert namespace["ran"] == []  # the cells before ran in one namespace; the cell after did not


@pytest.mark.slow
def test_a_failing_notebook_run_names_the_cell(tmp_path: Path) -> None:
    """Through the real runner: a new process, in the notebook's folder, ``tests/`` and ``examples/`` off
    ``sys.path``, the Agg backend; the failing cell named."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    checks = (
        "import os, sys\n"
        f"assert os.getcwd() == {str(folder)!r}, os.getcwd()\n"
        "assert sys.path[0] == os.getcwd(), sys.path\n"
        "assert not any(p.rstrip('/').endswith(('tests', 'examples')) for p in sys.path), sys.path\n"
        "import matplotlib.pyplot as plt\n"
        "assert plt.get_backend().lower() == 'agg', plt.get_backend()"
    )
    notebook = _notebook(("code", checks), ("markdown", "text"), ("code", "print('before')\n1 / 0"))
    (folder / "broken.ipynb").write_text(json.dumps(notebook))
    with pytest.raises(
        NotebookCellError, match=r"^notebook cell 2 \(first line: \"print\('before'\)\"\)"
    ) as info:
        run_notebook(folder / "broken.ipynb", tmp_path, timeout=120)
    assert "ZeroDivisionError" in str(info.value) and 'File "<notebook cell 2>", line 2' in str(info.value)


@pytest.mark.slow
def test_the_tour_runs_and_prints_what_its_stored_outputs_show(tmp_path: Path) -> None:
    run = run_notebook(NOTEBOOK, tmp_path, timeout=300)
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    stored = {
        index: (
            "".join("".join(o["text"]) for o in cell["outputs"] if o.get("name") == "stdout"),
            sum("image/png" in o.get("data", {}) for o in cell["outputs"]),
        )
        for index, cell in enumerate(cells)
        if cell["cell_type"] == "code"
    }
    assert [c.index for c in run.cells] == list(stored)
    # each cell shows as many figures and prints as many lines as its stored outputs
    assert {c.index: c.figures for c in run.cells} == {i: figures for i, (_, figures) in stored.items()}
    lines = {c.index: len(c.stdout.splitlines()) for c in run.cells}
    assert lines == {i: len(text.splitlines()) for i, (text, _) in stored.items()}
    missing = [(section, printed) for section, printed in SECTION_RESULTS if printed not in run.stdout]
    assert missing == [], run.stdout
