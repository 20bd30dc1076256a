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
against ``Python.h``). Each qualified candidate times the same pure-Python work (the median of five
runs, averaged over the rounds; in each round the candidates run at the same time, each on a core of
its own, and the next round moves them to other cores: a burst or a stall of the machine, or a faster
core, favours none of them; two rounds, and more, up to six, while none is 10% faster than the next).
The fastest is printed, the others go to stderr with their times. Nothing qualified: exit status 1.

Example:
    >>> fastest({"/usr/bin/python3": 0.29, "/opt/python/bin/python3": 0.45})
    '/usr/bin/python3'
"""

from __future__ import annotations

import os
import subprocess
import sys

CANDIDATES = (sys.executable, "/usr/bin/python3")

#: Run by each candidate (on the core its argument names): its real executable and the median of five
#: timings, or "unsuitable".
PROBE = r"""
import importlib.util, os, sys, sysconfig, time
if sys.argv[1:] and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {int(sys.argv[1])})
headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
if not (
    sys.implementation.name == "cpython" and sys.version_info >= (3, 10)
    and importlib.util.find_spec("venv")
    and (importlib.util.find_spec("pip") or importlib.util.find_spec("ensurepip"))
    and os.path.exists(headers)
):
    print("unsuitable")
    raise SystemExit(0)

SOURCE = "def f(x, y=2):\n    return [v * y for v in x if v] + sorted({v: y for v in x})\n" * 300

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def work():
    fib(24)
    counts = {}
    for i in range(150_000):
        counts[i % 997] = counts.get(i % 997, 0) + i
    compile(SOURCE, "<probe>", "exec")  # as every first import does

work()  # once untimed: a CPU coming out of idle runs its first fraction of a second faster
times = []
for _ in range(5):
    start = time.perf_counter()
    work()
    times.append(time.perf_counter() - start)
print(sys.executable)
print(sorted(times)[2])  # the median: robust to a burst or a stall of the machine either way
"""


def _start(candidate: str, cpu: int | None) -> subprocess.Popen[str] | None:
    if not os.access(candidate, os.X_OK):
        return None
    try:
        return subprocess.Popen(
            [candidate, "-I", "-c", PROBE, *([] if cpu is None else [str(cpu)])],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        return None


def _result(proc: subprocess.Popen[str] | None, timeout: float = 60) -> tuple[str, float] | None:
    if proc is None:
        return None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    lines = out.split()
    if proc.returncode != 0 or len(lines) != 2:
        return None
    return lines[0], float(lines[1])


def measure(*candidates: str, shift: int = 0) -> list[tuple[str, float] | None]:
    """``(real executable, seconds)`` for each suitable candidate, None for the others.

    All are timed at once, so that a burst or a stall of the machine hits them alike; where the
    platform allows, the i-th candidate on core ``(i + shift) % cores`` (cores differ too).
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    procs = [_start(c, cpus[(i + shift) % len(cpus)] if cpus else None) for i, c in enumerate(candidates)]
    return [_result(proc) for proc in procs]


def fastest(times: dict[str, float]) -> str:
    """The executable with the shortest time."""
    return min(times, key=times.__getitem__)


def clear(times: dict[str, float], margin: float) -> bool:
    """Whether the fastest is at least ``margin`` (a fraction) faster than the next.

    Example:
        >>> clear({"a": 0.06, "b": 0.09}, 0.1), clear({"a": 0.070, "b": 0.071}, 0.1)
        (True, False)
    """
    first, *rest = sorted(times.values())
    return not rest or first <= (1 - margin) * rest[0]


def main(min_rounds: int = 2, max_rounds: int = 6, margin: float = 0.1) -> int:
    """Print the fastest suitable candidate (its timing and the others' to stderr); 1 if none is suitable.

    Rounds go on, up to ``max_rounds``, while no candidate is ``margin`` faster than the others.
    """
    found: dict[str, list[float]] = {}
    candidates = list(dict.fromkeys(os.path.realpath(c) for c in CANDIDATES))
    times: dict[str, float] = {}
    for shift in range(max_rounds):  # each candidate on another core in each round
        for result in measure(*candidates, shift=shift):
            if result is not None:
                found.setdefault(result[0], []).append(result[1])
        times = {exe: sum(t) / len(t) for exe, t in found.items()}
        if shift + 1 >= min_rounds and clear(times, margin):
            break
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
