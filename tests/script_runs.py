"""Run a repository script (an example, a benchmark) as ``python <script> <args>`` would, in a new process.

The process comes from :func:`helpers.run_python` (forked from the warm interpreter: no ~7 s of imports);
the script then runs as ``__main__`` with ``sys.argv == [script, *args]``, so its ``if __name__ ==
"__main__"`` entry, its argument parsing and anything it pickles by module name (a process pool's
functions) are exercised as on the command line.
"""

from __future__ import annotations

from pathlib import Path

from helpers import run_python


def run_script(script: Path, args: list[str], cwd: Path, timeout: float = 600) -> str:
    """Run ``script`` with ``args`` in a new process; its stdout (raises with its output on failure)."""
    argv = [str(script), *args]
    code = f"import runpy, sys\nsys.argv = {argv!r}\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
    return run_python(code, cwd=cwd, timeout=timeout).stdout
