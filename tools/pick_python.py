r"""Print the interpreter the Makefile's set-up makes ``.venv`` with: the fastest suitable CPython found.

The candidates are the ``python3`` running this script (the one on ``PATH``) and the operating
system's ``/usr/bin/python3``. Distributions build CPython with profile-guided and link-time
optimisation; a version manager's default build (pyenv's) has neither, and runs pure-Python code
(Lightning's loops, pytest, Dynamo's tracing, imports) markedly slower: on the 2-core machine this
project is tested on, Debian 12's Python 3.11.2 ran a short benchmark in 0.29 s where pyenv's 3.11.7
took 0.45 s, and ``make test`` from a fresh clone took 2m44-2m56 instead of 3m02-3m18.
``make PYTHON=...`` skips the choice.

A candidate qualifies when it is CPython >= 3.10 with ``venv``, with ``pip`` or ``ensurepip`` (the
set-up bootstraps its installer with them) and with its C headers (torch's Inductor builds C++
against ``Python.h``). Each qualified candidate times the same pure-Python work (the median of seven
runs; the lower of two rounds taken in turn); the fastest is printed, the others go to stderr with
their times. Nothing qualified: exit status 1.

Example:
    >>> fastest({"/usr/bin/python3": 0.29, "/opt/python/bin/python3": 0.45})
    '/usr/bin/python3'
"""

from __future__ import annotations

import os
import subprocess
import sys

CANDIDATES = (sys.executable, "/usr/bin/python3")

#: Run by each candidate: prints its real executable and the median of seven timings, or "unsuitable".
PROBE = r"""
import importlib.util, os, sys, sysconfig, time
headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
if not (
    sys.implementation.name == "cpython" and sys.version_info >= (3, 10)
    and importlib.util.find_spec("venv")
    and (importlib.util.find_spec("pip") or importlib.util.find_spec("ensurepip"))
    and os.path.exists(headers)
):
    print("unsuitable")
    raise SystemExit(0)

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def work():
    fib(23)
    counts = {}
    for i in range(120_000):
        counts[i % 997] = counts.get(i % 997, 0) + i

work()  # once untimed: a CPU coming out of idle runs its first fraction of a second faster
times = []
for _ in range(7):
    start = time.perf_counter()
    work()
    times.append(time.perf_counter() - start)
print(sys.executable)
print(sorted(times)[3])  # the median: robust to a burst or a stall of the machine either way
"""


def measure(candidate: str, timeout: float = 60) -> tuple[str, float] | None:
    """``(real executable, seconds)`` for a suitable ``candidate``, else None."""
    if not os.access(candidate, os.X_OK):
        return None
    try:
        proc = subprocess.run(
            [candidate, "-I", "-c", PROBE], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.split()
    if proc.returncode != 0 or len(lines) != 2:
        return None
    return lines[0], float(lines[1])


def fastest(times: dict[str, float]) -> str:
    """The executable with the shortest time."""
    return min(times, key=times.__getitem__)


def main(rounds: int = 2) -> int:
    """Print the fastest suitable candidate (its timing and the others' to stderr); 1 if none is suitable."""
    times: dict[str, float] = {}
    candidates = list(dict.fromkeys(os.path.realpath(c) for c in CANDIDATES))
    for _ in range(rounds):  # the candidates in turn: a slow moment of the machine does not hit one only
        for candidate in list(candidates):
            found = measure(candidate)
            if found is None:
                candidates.remove(candidate)
            else:
                times[found[0]] = min(found[1], times.get(found[0], found[1]))
    if not times:
        print(f"no suitable Python among {', '.join(CANDIDATES)}: set PYTHON=...", file=sys.stderr)
        return 1
    best = fastest(times)
    others = ", ".join(f"{exe} {t:.3f} s" for exe, t in times.items() if exe != best)
    print(
        f"python for the venv: {best} ({times[best]:.3f} s{'; ' + others if others else ''})",
        file=sys.stderr,
    )
    print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
