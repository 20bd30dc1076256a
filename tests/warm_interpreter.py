"""A warm interpreter for subprocess tests: scripts start in ~0.1 s instead of ~7 s of imports.

Every new Python process of the test suite used to pay ``import lightning.pytorch`` again (torch, Dynamo,
torchmetrics, scipy: ~7 s on the 2-core test machine), and the subprocess tests (kill and resume, runs in
a new process, DDP launches) start dozens of them. This module keeps one *server* process per pytest
worker that imports those modules once and then forks a child per script: the child is a new process
(new pid, its own session and process group, its own memory: nothing of the test process leaks into
it) that starts with the modules already imported, exactly as if the script had imported them first.

What a child gets, as a fresh ``python script.py`` would:

- ``sys.argv == [script]``, ``sys.path[0]`` the script's folder, ``__name__ == "__main__"`` (runpy),
  the working directory and environment of the request (``os.environ`` replaced, so processes the
  script starts inherit it: Lightning's DDP launcher re-runs ``sys.argv`` in a real new interpreter);
- fresh entropy where a new interpreter has it: ``random`` is reseeded at fork by Python itself, NumPy's
  global generator is reseeded from the OS here, and so is torch's default generator where torch seeds
  it from the OS at import (recent releases; older ones use a fixed seed, left as it is);
- stdout/stderr in files, the exit status of the script (``SystemExit`` code, 1 on an exception, minus
  the signal number when killed), threads joined and ``atexit`` handlers run at exit.

What it cannot give: interpreter start-up settings (``PYTHONHASHSEED``, ``PYTHONPATH``, ``-X`` options,
thread-pool sizes read at import). :func:`needs_fresh_interpreter` says when a request must use a
really new interpreter instead; ``helpers.run_python(..., fresh=True)`` forces one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

#: Modules the server imports once (what nearly every test script imports first).
PRELOAD = ("torch", "lightning.pytorch", "lightning_regkit", "numpy")

#: Environment variables that only take effect when an interpreter (or torch) starts.
_START_UP_VARS = ("PYTHON", "OMP_", "MKL_", "TORCH_", "CUDA_", "LD_")


def needs_fresh_interpreter(env: dict[str, str] | None) -> bool:
    """Whether a script's extra environment variables need a really new interpreter.

    Example:
        >>> needs_fresh_interpreter({"PL_GLOBAL_SEED": "3"}), needs_fresh_interpreter({"PYTHONHASHSEED": "0"})
        (False, True)
    """
    return any(key.startswith(_START_UP_VARS) for key in env or {})


_SERVER = r"""
import atexit, json, os, runpy, sys, threading, traceback
for _name in sys.argv[1].split(","):
    __import__(_name)
_torch = sys.modules.get("torch")
# torch seeds its default generator from the OS in a new process (recent releases) or with a fixed seed
_torch_entropy = _torch is not None and _torch.initial_seed() != 67280421310721
_inp, _out = os.fdopen(0, "rb", buffering=0), os.fdopen(1, "wb", buffering=0)
_out.write(b"ready\n")

def _child(req):
    os.setsid()
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    import numpy
    numpy.random.seed()  # a new interpreter seeds NumPy's global generator from the OS
    if _torch_entropy:
        _torch.seed()  # and torch's default generator, where torch does so at import
    sys.argv = [req["script"]]
    sys.path[0] = os.path.dirname(req["script"])
    code = 0
    try:
        runpy.run_path(req["script"], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:  # what interpreter shutdown does: join non-daemon threads, run atexit handlers
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

for line in _inp:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        _inp.close()
        _out.close()
        _child(req)
    _out.write(json.dumps({"pid": pid}).encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    _out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
"""


class WarmInterpreter:
    """One server per test process; :meth:`run` starts a script in a child forked from it.

    Example:
        >>> import tempfile
        >>> server = WarmInterpreter(pythonpath=[], preload=("json",))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     code = "import sys; print('hi', sys.argv[0].endswith('s.py')); sys.exit(3)"
        ...     _ = Path(d, "s.py").write_text(code)
        ...     server.run(Path(d, "s.py"), cwd=d, env=dict(os.environ), timeout=30)[:3]
        (3, 'hi True\\n', '')
        >>> server.close()
    """

    def __init__(self, pythonpath: list[str], preload: tuple[str, ...] = PRELOAD) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")])
        self._log = tempfile.NamedTemporaryFile(prefix="regkit-warm-", suffix=".log", delete=False)  # noqa: SIM115
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, ",".join(preload)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        self.pythonpath = env["PYTHONPATH"]
        self._ready = False

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self._proc.poll() is None

    def _readline(self, timeout: float | None) -> bytes:
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not ready:
            return b""
        return self._proc.stdout.readline()

    def _start(self) -> None:
        if not self._ready:
            if self._readline(120) != b"ready\n":
                raise RuntimeError(f"the warm interpreter did not start: {Path(self._log.name).read_text()}")
            self._ready = True

    def run(
        self,
        script: Path,
        cwd: Path | str,
        env: dict[str, str],
        timeout: float,
        on_timeout: object = None,
    ) -> tuple[int | None, str, str, int]:
        """Run ``script`` in a new child; returns ``(returncode, stdout, stderr, pid)``.

        ``returncode`` is ``None`` when the script passed ``timeout``; ``on_timeout(pid)`` is then called
        (to collect stacks) and the child's whole process group is killed before returning.
        """
        self._start()
        assert self._proc.stdin is not None
        with tempfile.TemporaryDirectory(prefix="regkit-out-") as out:
            request = {
                "script": str(Path(script).resolve()),
                "cwd": str(cwd),
                "env": {**env, "PYTHONPATH": self.pythonpath},
                "stdout": os.path.join(out, "stdout"),
                "stderr": os.path.join(out, "stderr"),
            }
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
            pid = json.loads(self._readline(60))["pid"]
            line = self._readline(timeout)
            rc: int | None
            if line:
                rc = json.loads(line)["rc"]
            else:
                rc = None
                if callable(on_timeout):
                    on_timeout(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                self._readline(60)  # the server reports the killed child
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # orphans (a rank, a worker) must not outlive the run
            stdout = Path(request["stdout"]).read_text(errors="replace")
            stderr = Path(request["stderr"]).read_text(errors="replace")
        return rc, stdout, stderr, pid

    def close(self) -> None:
        """Stop the server."""
        with contextlib.suppress(Exception):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        with contextlib.suppress(Exception):
            self._proc.wait(10)
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


_servers: dict[tuple[str, int], WarmInterpreter] = {}


def server_for(pythonpath: list[str]) -> WarmInterpreter:
    """The warm interpreter of this thread of the test process for ``pythonpath`` (started on first use).

    One per thread: a server runs one script at a time, and a test process may run a script in a
    background thread (``conftest.py`` starts the DDP battery that way) while its tests run others.
    """
    key = (os.pathsep.join(pythonpath), threading.get_ident())
    server = _servers.get(key)
    if server is None or not server.alive():
        server = _servers[key] = WarmInterpreter(pythonpath)
    return server


@atexit.register
def _close_all() -> None:
    for server in _servers.values():
        server.close()
