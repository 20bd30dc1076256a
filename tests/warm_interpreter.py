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

Under pytest-xdist the workers share one server (a Unix socket; the controller starts it, or else the
first worker that needs it, and it ends when the pytest run does): one interpreter importing Lightning per
run, not one per worker and per thread. Each connection is served by a process forked from the server, so
the workers' scripts run side by side. The server also runs commands with the client's own standard
streams (``python -c`` as a forked child): that is how the xdist workers themselves start from it
(:mod:`warm_worker`). It listens before it imports, so clients may connect at once; their first request is
answered once the imports are done.

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
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

#: Environment variable: the modules a server imports, comma-separated, instead of :data:`PRELOAD`
#: (the tests of this machinery use a light server).
PRELOAD_VAR = "REGKIT_WARM_PRELOAD"

#: Modules the server imports once (what nearly every test script imports first).
PRELOAD = tuple(os.environ.get(PRELOAD_VAR, "torch,lightning.pytorch,lightning_regkit,numpy").split(","))

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
_shared = len(sys.argv) > 2
if _shared:  # the socket first: clients connect (and wait their turn) while the modules import
    import select, signal, socket
    _path, _owner = sys.argv[2], int(sys.argv[3])
    _listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _listener.bind(_path)
    _listener.listen(64)
    os.write(1, b"bound\n")
    os.close(1)
for _name in sys.argv[1].split(","):
    __import__(_name)
_torch = sys.modules.get("torch")
# torch seeds its default generator from the OS in a new process (recent releases) or with a fixed seed
_torch_entropy = _torch is not None and _torch.initial_seed() != 67280421310721
import gc
gc.freeze()  # the imported modules' objects: kept out of every child's garbage collections
_closing = []  # what a forked child closes first: the server's channels

def _reseed():
    import numpy
    numpy.random.seed()  # a new interpreter seeds NumPy's global generator from the OS
    if _torch_entropy:
        _torch.seed()  # and torch's default generator, where torch does so at import

def _finish(main):  # run main() as an interpreter runs its program, then end the process
    code = 0
    try:
        main()
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

def _become(req):  # a forked child takes on the request: the server's channels closed, its cwd and env
    for f in _closing:
        f.close()
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    _reseed()

def _child(req):
    _become(req)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.argv = [req["script"]]
    sys.path[0] = os.path.dirname(req["script"])
    _finish(lambda: runpy.run_path(req["script"], run_name="__main__"))

def _serve(inp, out):  # one client's requests, one at a time
    for line in inp:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req)
        out.write(json.dumps({"pid": pid}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}).encode() + b"\n")

def _command_child(req, fds):  # "python [-u] [-B] -c CODE" with the client's stdin, stdout, stderr
    import io, types
    _become(req)
    for target, fd in enumerate(fds):  # a received fd may already be the target (fd 1 is free here)
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    sys.path[:] = req["path"]
    sys.argv = ["-c"]
    sys.dont_write_bytecode = "-B" in req["options"]
    unbuffered = "-u" in req["options"]
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    for fd, name in ((1, "stdout"), (2, "stderr")):
        raw = io.FileIO(fd, "w", closefd=False)
        stream = io.TextIOWrapper(raw if unbuffered else io.BufferedWriter(raw), write_through=unbuffered,
                                  line_buffering=not unbuffered and os.isatty(fd), errors="backslashreplace")
        setattr(sys, name, stream)
        setattr(sys, "__" + name + "__", stream)
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    _finish(lambda: exec(compile(req["code"], "<string>", "exec"), main.__dict__))

def _serve_command(conn, fds):  # one command; it ends when the client goes
    inp = conn.makefile("rb")
    req = json.loads(inp.readline())
    pid = os.fork()
    if pid == 0:
        _closing.extend([inp, conn])
        _command_child(req, fds)
    for fd in fds:
        os.close(fd)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if select.select([conn], [], [], 0.5)[0] and not conn.recv(1):  # the client has gone
            os.kill(pid, signal.SIGKILL)
    try:
        conn.sendall(json.dumps({"rc": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
    except OSError:  # nobody left to tell
        pass

if not _shared:  # one client, over stdin/stdout
    _inp, _out = os.fdopen(0, "rb", buffering=0), os.fdopen(1, "wb", buffering=0)
    _closing += [_inp, _out]
    _out.write(b"ready\n")
    _serve(_inp, _out)
else:  # a Unix socket, a forked handler per client, until the owner process (pytest) is gone
    import time
    _listener.settimeout(1.0)
    while True:
        try:
            _conn, _ = _listener.accept()
        except socket.timeout:
            _conn = None
        while True:  # reap handlers whose client has gone
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if _conn is None:
            try:
                os.kill(_owner, 0)
                continue
            except ProcessLookupError:
                for _leftover in (_path, _path + ".lock", _path + ".log"):
                    try:
                        os.unlink(_leftover)
                    except OSError:
                        pass
                os._exit(0)
        if os.fork() == 0:
            _listener.close()
            _conn.settimeout(None)
            _kind, _fds, _, _ = socket.recv_fds(_conn, 1, 3)
            if _kind == b"C":  # a command, with the client's standard streams
                _serve_command(_conn, _fds)
            else:  # b"S": scripts, one after the other
                _inp, _out = _conn.makefile("rb", buffering=0), _conn.makefile("wb", buffering=0)
                _closing += [_inp, _out, _conn]
                _serve(_inp, _out)
            os._exit(0)
        _conn.close()
"""


class _Lines:
    """Lines from a file descriptor, with a timeout (its own buffer: ``select`` sees no buffered line)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def readline(self, timeout: float | None) -> bytes:
        """The next line; ``b""`` when ``timeout`` passed first; ``EOFError`` when the other end closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], left)[0]:
                return b""
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise EOFError("the warm interpreter closed the connection")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"


def _server_env(pythonpath: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")])
    return env


def _start_server(
    preload: tuple[str, ...], env: dict[str, str], shared: tuple[str, int] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A server process that imports ``preload``; its stderr goes to a log file (its path returned).

    ``shared=(socket path, owner pid)``: it serves that socket (and removes it, its lock and its log,
    ``path + ".log"``, when the owner has gone); otherwise one client over stdin/stdout.
    """
    if shared:
        log_name = shared[0] + ".log"
        log = open(log_name, "wb")  # noqa: SIM115 (the server writes it; closed here once started)
    else:
        log = tempfile.NamedTemporaryFile(prefix="regkit-warm-", suffix=".log", delete=False)  # noqa: SIM115
        log_name = log.name
    with log:
        args = [",".join(preload)] + ([shared[0], str(shared[1])] if shared else [])
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, *args],
            stdin=subprocess.DEVNULL if shared else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    return proc, log_name


def _wait_ready(lines: _Lines, log: str, word: bytes = b"ready") -> None:
    try:
        ready = lines.readline(120)
    except EOFError:
        ready = b""
    if ready != word + b"\n":
        raise RuntimeError(f"the warm interpreter did not start: {Path(log).read_text()}")


#: The pid of the process whose run a shared server serves (set by the pytest-xdist controller in
#: ``conftest.py``; its workers and their launchers read it).
OWNER_VAR = "REGKIT_WARM_OWNER"

#: Where the suite's scripts import from: ``tests/``, ``examples/`` and the repository root.
SCRIPT_PYTHONPATH = [str(Path(__file__).resolve().parent.parent / d) for d in ("tests", "examples", "")]


def shared_address(pythonpath: list[str], owner: int, preload: tuple[str, ...] = PRELOAD) -> str:
    """The socket of the server that ``owner``'s processes share for ``pythonpath`` and ``preload``."""
    env = _server_env(pythonpath)
    tag = zlib.crc32("\0".join([env["PYTHONPATH"], *preload]).encode())
    return os.path.join(tempfile.gettempdir(), f"regkit-warm-{owner}-{tag:08x}.sock")


def ensure_shared_server(pythonpath: list[str], owner: int, preload: tuple[str, ...] = PRELOAD) -> str:
    """Start the server shared by ``owner``'s processes unless it runs; its socket's path.

    It returns once the server listens (~0.1 s): connections made before its imports end wait for them.
    """
    from filelock import FileLock

    path = shared_address(pythonpath, owner, preload)
    with FileLock(path + ".lock"):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            probe.sendall(b"S")  # a client with no scripts: its handler ends at once
        except OSError:  # none runs yet (or a stale socket of an ended run with a reused pid)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            proc, log = _start_server(preload, _server_env(pythonpath), shared=(path, owner))
            assert proc.stdout is not None
            _wait_ready(_Lines(proc.stdout.fileno()), log, b"bound")
            proc.stdout.close()
            _STARTED.append(proc)
        finally:
            probe.close()
    return path


class WarmInterpreter:
    """A client of a server process; :meth:`run` starts a script in a child forked from the server.

    ``WarmInterpreter(pythonpath)`` starts a server of its own (one client, over pipes);
    :meth:`shared` connects to the server that all the processes of one owner (the pytest-xdist
    workers of one run) share, starting it when none runs yet.

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
        env = _server_env(pythonpath)
        self.pythonpath = env["PYTHONPATH"]
        self._proc: subprocess.Popen[bytes] | None
        self._proc, self._log = _start_server(preload, env)
        assert self._proc.stdout is not None and self._proc.stdin is not None
        self._lines = _Lines(self._proc.stdout.fileno())
        self._send_fd = self._proc.stdin.fileno()
        self._sock: socket.socket | None = None
        self._ready = False
        self._closed = False

    @classmethod
    def shared(cls, pythonpath: list[str], owner: int, preload: tuple[str, ...] = PRELOAD) -> WarmInterpreter:
        """A connection to the server shared by the processes of ``owner`` (a pid) for ``pythonpath``.

        The first caller starts it (under a file lock); it serves every connection in a process forked
        for it, and exits within a second once ``owner`` has ended.
        """
        path = ensure_shared_server(pythonpath, owner, preload)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.sendall(b"S")  # a client of scripts (b"C": one command with its standard streams)
        self = cls.__new__(cls)
        self.pythonpath, self._proc, self._log = _server_env(pythonpath)["PYTHONPATH"], None, path + ".log"
        self._sock, self._lines, self._send_fd = sock, _Lines(sock.fileno()), sock.fileno()
        self._ready, self._closed, self.address = True, False, path
        return self

    def alive(self) -> bool:
        """Whether the server (or the connection to the shared one) can still take a script."""
        if self._proc is not None:
            return self._proc.poll() is None
        return not self._closed

    def _readline(self, timeout: float | None) -> bytes:
        try:
            return self._lines.readline(timeout)
        except EOFError as err:
            self._closed = True
            log = Path(self._log).read_text() if self._log and os.path.exists(self._log) else ""
            raise RuntimeError(f"the warm interpreter ended: {log}") from err

    def _start(self) -> None:
        if not self._ready:
            _wait_ready(self._lines, self._log)
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
        with tempfile.TemporaryDirectory(prefix="regkit-out-") as out:
            request = {
                "script": str(Path(script).resolve()),
                "cwd": str(cwd),
                "env": {**env, "PYTHONPATH": self.pythonpath},
                "stdout": os.path.join(out, "stdout"),
                "stderr": os.path.join(out, "stderr"),
            }
            data = json.dumps(request).encode() + b"\n"
            while data:
                data = data[os.write(self._send_fd, data) :]
            pid = json.loads(self._readline(300))["pid"]  # a shared server may still be importing
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
        """Stop the server (own one), or close the connection (shared one: the server goes on)."""
        self._closed = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            return
        assert self._proc is not None
        with contextlib.suppress(Exception):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        with contextlib.suppress(Exception):
            self._proc.wait(10)
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.unlink(self._log)


_servers: dict[tuple[str, int], WarmInterpreter] = {}
_STARTED: list[subprocess.Popen[bytes]] = []  # shared servers this process started (they outlive it)


def server_for(pythonpath: list[str]) -> WarmInterpreter:
    """The warm interpreter of this thread of the test process for ``pythonpath`` (started on first use).

    One connection per thread: a server runs one script at a time for a client, and a test process may
    run a script in a background thread (``conftest.py`` starts the DDP battery that way) while its
    tests run others. Under pytest-xdist the connections go to the one server of the run (its owner:
    the pytest process that started the workers); otherwise each thread has a server of its own.
    """
    key = (os.pathsep.join(pythonpath), threading.get_ident())
    server = _servers.get(key)
    if server is None or not server.alive():
        if os.environ.get("PYTEST_XDIST_WORKER"):
            server = WarmInterpreter.shared(pythonpath, owner=int(os.environ.get(OWNER_VAR) or os.getppid()))
        else:
            server = WarmInterpreter(pythonpath)
        _servers[key] = server
    return server


@atexit.register
def _close_all() -> None:
    for server in _servers.values():
        server.close()
