"""Start a pytest-xdist worker as a process forked from the run's warm interpreter.

pytest-xdist starts each worker as ``python -u -c <execnet bootstrap>`` with pipes for stdin and stdout,
and every worker then imports torch and Lightning again (~8 s of CPU each on the 2-core test machine,
while the run's shared warm interpreter (:mod:`warm_interpreter`) has already imported them once).
``conftest.py`` makes the controller start that server first and name this script as the workers'
``python`` (``--tx popen//python=<python> warm_worker.py``), so execnet runs ``python warm_worker.py -u -c
<bootstrap>``. This script passes its own stdin, stdout and stderr to the server over its Unix socket
(``SCM_RIGHTS``) with the command, its working directory, environment and ``sys.path``; the server forks a
child that runs the command as ``python -u -c`` would, with those streams, so execnet talks to the child
through the very pipes it made. This process then only waits: it exits with the child's status, and
the child is killed if this process is (execnet's ``kill`` of a worker still ends the worker).

Without the server (none started, it failed, or a command of another form), this process becomes the
interpreter execnet asked for (``os.execv``), exactly as without this script.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

from warm_interpreter import OWNER_VAR, SCRIPT_PYTHONPATH, shared_address


def _command(argv: list[str]) -> tuple[list[str], str] | None:
    """``(options, code)`` for ``[-u] [-B] -c CODE``; ``None`` for any other command line."""
    options = []
    while argv and argv[0] in ("-u", "-B"):
        options.append(argv.pop(0))
    return (options, argv[1]) if len(argv) == 2 and argv[0] == "-c" else None


def _forked(argv: list[str]) -> int | None:
    """Run ``argv`` in a child of the server; its exit status, or ``None`` when no child could start."""
    owner, command = os.environ.get(OWNER_VAR), _command(list(argv))
    if not owner or command is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(shared_address(SCRIPT_PYTHONPATH, int(owner)))
        socket.send_fds(sock, [b"C"], [0, 1, 2])
        request = {"options": command[0], "code": command[1], "cwd": os.getcwd(), "env": dict(os.environ)}
        request["path"] = ["", *sys.path[1:]]  # as for "python -c": the working directory first
        sock.sendall(json.dumps(request).encode() + b"\n")
        lines = sock.makefile("rb")
        started = lines.readline()  # once the server has imported its modules
    except OSError:
        return None
    if not started:  # the server ended before it forked the child: nothing used the streams yet
        return None
    os.close(0)  # only the child holds the pipes now, so that each end sees the other close
    os.close(1)
    ended = lines.readline()
    return json.loads(ended)["rc"] if ended else 1


def main() -> None:
    """Run the command in a forked child and exit as it did; without a server, exec the interpreter."""
    rc = _forked(sys.argv[1:])
    if rc is None:
        os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
    if rc < 0:  # killed by a signal: end the same way
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    sys.exit(rc)


if __name__ == "__main__":
    main()
