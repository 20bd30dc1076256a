"""Run a notebook's code cells without a Jupyter kernel: one new process, the cells in order, one namespace.

What a kernel (nbmake's, Jupyter's) would do and this runner does too:

- the code cells run in order in one fresh ``__main__`` namespace, in the notebook's folder (also first on
  ``sys.path``); ``tests/`` and ``examples/`` are taken off ``sys.path``, so the notebook imports what a
  user's kernel would;
- a cell whose last statement is an expression shows its value (unless the cell ends with ``;``);
- figures as the inline backend shows them: ``plt.show()`` and the end of a cell render every open
  figure (to PNG, so a figure that cannot be drawn fails its cell) and close it; the figures are counted
  per cell;
- a cell that raises stops the run; the error names the cell (its index in the notebook's ``cells``), its
  first line, the traceback into the cell's code and what the cell had printed.

What it cannot run is IPython's own syntax (``%magic``, ``!shell``, ``obj?``): :func:`code_cells` rejects
such a cell, by index, before anything runs. The process is forked from the warm interpreter
(:func:`helpers.run_python`: torch and Lightning already imported), instead of a kernel's ~20 s start.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import linecache
import os
import re
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: A line only IPython runs: a magic (``%time``, ``%%bash``), a shell escape (``!pip``, ``x = !ls``) or help
#: (``obj?``). Looked for only in a cell that is not valid Python.
_IPYTHON_LINE = re.compile(r"^\s*[%!]|^\s*[\w.]+\s*=\s*[%!]|\?\s*$")


class NotebookCellError(AssertionError):
    """A code cell raised, or cannot run without IPython; the message names the cell."""


@dataclass
class CellRun:
    """What one code cell did: its index in the notebook's ``cells``, what it printed, the figures shown."""

    index: int
    stdout: str
    figures: int = 0


def code_cells(notebook: dict[str, Any]) -> list[tuple[int, str]]:
    """The ``(index, source)`` of each code cell, in order; :class:`NotebookCellError` on IPython syntax.

    Example:
        >>> code_cells({"cells": [{"cell_type": "markdown", "source": ["# hi"]},
        ...                       {"cell_type": "code", "source": ["x = 1\\n", "x"]}]})
        [(1, 'x = 1\\nx')]
    """
    cells = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        try:
            ast.parse(source, f"<notebook cell {index}>")
        except SyntaxError as exc:
            lines = [line for line in source.splitlines() if _IPYTHON_LINE.search(line)]
            if lines:
                raise NotebookCellError(
                    f"notebook cell {index} uses IPython syntax, which this runner (no Jupyter kernel) "
                    f"cannot run: {lines[0].strip()!r}; write it as plain Python"
                ) from None
            raise NotebookCellError(f"notebook cell {index} is not valid Python: {exc}") from None
        cells.append((index, source))
    return cells


class _Tee(io.TextIOBase):
    """Writes to ``stream`` and keeps a copy."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def _execute(source: str, filename: str, namespace: dict[str, Any]) -> None:
    """Run ``source`` in ``namespace``; print the value of a last expression as a kernel shows it."""
    tree = ast.parse(source, filename)
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr):
        tree.body.pop()
    exec(compile(tree, filename, "exec"), namespace)
    if isinstance(last, ast.Expr):
        value = eval(compile(ast.Expression(last.value), filename, "eval"), namespace)
        if value is not None and not source.rstrip().endswith(";"):
            print(repr(value))


def _cell_traceback(exc: BaseException, filename: str) -> str:
    """The traceback from the cell's own code on (the runner's frames left out)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def run_cells(
    cells: list[tuple[int, str]], namespace: dict[str, Any], after_cell: Callable[[], int] | None = None
) -> list[CellRun]:
    """Run ``cells`` in order in ``namespace``; raises :class:`NotebookCellError` naming the cell that raised.

    ``after_cell()`` runs after each cell (also one that raised) and returns the number of figures it showed.

    Example:
        >>> runs = run_cells([(0, "x = 20"), (2, "print(x + 1)\\nx * 2")], {})
        21
        40
        >>> [(r.index, r.stdout) for r in runs]
        [(0, ''), (2, '21\\n40\\n')]
    """
    runs = []
    for index, source in cells:
        filename = f"<notebook cell {index}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        tee = _Tee(sys.stdout)
        error = None
        with contextlib.redirect_stdout(tee):
            try:
                _execute(source, filename, namespace)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit too: a kernel reports it and stays up
                error = _cell_traceback(exc, filename)
            figures = after_cell() if after_cell is not None else 0
        if error is not None:
            first = next((line for line in source.splitlines() if line.strip()), "")
            printed = tee.copy.getvalue()
            raise NotebookCellError(
                f"notebook cell {index} (first line: {first!r}) raised:\n{error}"
                + (f"--- what the cell printed before\n{printed[-3000:]}" if printed else "")
            )
        runs.append(CellRun(index, tee.copy.getvalue(), figures))
    return runs


class _Figures:
    """Figures as the inline backend shows them: all open ones at ``plt.show()`` and at the end of a cell."""

    def __init__(self) -> None:
        self.shown = 0

    def show(self, *args: Any, **kwargs: Any) -> None:
        """``plt.show()``: draw every open figure (to PNG, as the inline backend does) and close it."""
        import matplotlib.pyplot as plt

        numbers = plt.get_fignums()
        for number in numbers:
            plt.figure(number).savefig(io.BytesIO(), format="png")
        plt.close("all")
        self.shown += len(numbers)

    def after_cell(self) -> int:
        """The end of a cell: show what is still open; the number of figures the cell showed."""
        self.show()
        shown, self.shown = self.shown, 0
        return shown


def main(notebook: str, result: str) -> None:
    """Child side (run by :func:`run_notebook`): run the notebook as a kernel would; its runs to ``result``.

    The cells' errors go into ``result`` (the process exits 0), so the test names the cell, not the process.
    """
    import matplotlib

    path = Path(notebook).resolve()
    cells = code_cells(json.loads(path.read_text()))
    os.chdir(path.parent)
    here = Path(__file__).resolve().parent
    dropped = {str(here), str(here.parent / "examples"), str(Path(sys.argv[0]).resolve().parent)}
    sys.path[:] = [str(path.parent)] + [p for p in sys.path if p not in dropped]
    module = types.ModuleType("__main__")  # a fresh __main__, as IPython's user namespace
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    matplotlib.use("Agg")  # pyplot may have been imported already (by Lightning): MPLBACKEND alone comes late
    import matplotlib.pyplot as plt

    figures = _Figures()
    plt.show = figures.show

    out: dict[str, Any] = {"error": None, "cells": []}
    try:
        out["cells"] = [asdict(run) for run in run_cells(cells, module.__dict__, figures.after_cell)]
    except NotebookCellError as exc:
        out["error"] = str(exc)
    sys.stdout.flush()
    Path(result).write_text(json.dumps(out))


@dataclass
class NotebookRun:
    """A notebook run: each code cell's :class:`CellRun` and the whole run's stdout."""

    cells: list[CellRun]
    stdout: str


def run_notebook(notebook: Path, workdir: Path, timeout: float = 300) -> NotebookRun:
    """Run ``notebook``'s code cells in a new process; :class:`NotebookCellError` names a failing cell.

    ``workdir`` (empty, the test's) holds the launcher script and the result; the cells run in the
    notebook's folder with the non-interactive ``Agg`` backend of matplotlib.
    """
    from helpers import run_python

    code_cells(json.loads(notebook.read_text()))  # IPython syntax: fail before starting anything
    result = workdir / "notebook_run.json"
    code = f"from notebook_runner import main\nmain({str(notebook)!r}, {str(result)!r})\n"
    proc = run_python(code, cwd=workdir, timeout=timeout, env={"MPLBACKEND": "Agg"})
    out = json.loads(result.read_text())
    if out["error"] is not None:
        raise NotebookCellError(out["error"])
    return NotebookRun([CellRun(**cell) for cell in out["cells"]], proc.stdout)
