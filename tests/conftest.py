"""Pytest fixtures on top of :mod:`helpers` (the shared tiny models, data and Trainer settings).

Test files import helpers directly (``from helpers import TinyMLP``); nothing imports this file.
torch, Lightning and :mod:`helpers` are imported inside the fixtures, not here: under pytest-xdist the
controlling process loads this file before it starts the workers, and never runs a test (importing
Lightning there would delay every worker's start by seconds).
"""

from __future__ import annotations

import os

# One intra-op thread per test process, set before torch is imported (here, and inherited by every
# subprocess a test starts): the suite runs on as many pytest-xdist workers as there are cores, and
# torch's default of one OpenMP thread per core in each of them oversubscribes the cores (OpenMP
# threads spin while they wait): ~30% more CPU time for the same tiny-model tests. A value set by
# the caller is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import atexit
import contextlib
import gc
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from helpers import SyntheticDataModule, TinyMLP, TinyTransformer


@pytest.fixture
def make_trainer(tmp_path: Path) -> Callable[..., pl.Trainer]:
    """Factory: ``make_trainer(max_epochs=3, callbacks=[...])`` -> fast CPU Trainer in tmp_path."""
    import lightning.pytorch as pl
    from helpers import trainer_kwargs

    def factory(**overrides: Any) -> pl.Trainer:
        return pl.Trainer(**trainer_kwargs(tmp_path, **overrides))

    return factory


@pytest.fixture
def tiny_mlp() -> TinyMLP:
    import torch
    from helpers import TinyMLP

    torch.manual_seed(0)
    return TinyMLP()


@pytest.fixture
def tiny_transformer() -> TinyTransformer:
    import torch
    from helpers import TinyTransformer

    torch.manual_seed(0)
    return TinyTransformer()


@pytest.fixture
def synthetic_dm() -> SyntheticDataModule:
    from helpers import SyntheticDataModule

    return SyntheticDataModule()


@pytest.fixture
def digits_dm() -> Any:
    from digits import DigitsDataModule

    return DigitsDataModule(batch_size=64)


_in_xdist_worker = False  # set by pytest_configure (config.workerinput: xdist's mark of a worker process)


def _end_now() -> None:
    """The last exit handler of an xdist worker: every result has reached the controller and every other
    handler has run; the process ends here instead of tearing down an interpreter that holds torch and
    Lightning (2-3 s, which the controller waits for)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed stream: nothing left to flush
            stream.flush()
    os._exit(0)


#: ``REGKIT_FORK_WORKERS=0``: pytest-xdist starts its workers as new interpreters (its default).
FORK_WORKERS_VAR = "REGKIT_FORK_WORKERS"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fork_workers(config: pytest.Config) -> None:
    """In the xdist controller (workers started from ``-n N``, on Linux): start the run's shared warm
    interpreter now, and have each worker forked from it (:mod:`warm_worker`) instead of starting a new
    interpreter that imports torch and Lightning again (~8 s of CPU per worker here). The server imports
    while xdist sets up; the workers' launchers wait for it, and fall back to a new interpreter without it."""
    import shlex
    import socket

    specs = config.getoption("tx", None) or []
    if (
        os.environ.get(FORK_WORKERS_VAR, "1") == "0"
        or not config.getoption("numprocesses", None)
        or config.getoption("dist", "no") == "no"
        or config.getoption("collectonly")
        or specs != ["popen"] * len(specs)  # workers of the user's own --tx specs stay as they are
        or sys.platform != "linux"
        or not hasattr(socket, "send_fds")
    ):
        return
    from warm_interpreter import OWNER_VAR, SCRIPT_PYTHONPATH, ensure_shared_server

    owner = os.environ.get(OWNER_VAR, "")
    if not (owner.isdigit() and _alive(int(owner))):  # a pytest run inside a test reuses its run's server
        owner = os.environ[OWNER_VAR] = str(os.getpid())  # the launchers and the workers find it by this
    ensure_shared_server(SCRIPT_PYTHONPATH, int(owner))
    python = shlex.join([sys.executable, str(Path(__file__).with_name("warm_worker.py"))])
    config.option.tx = [f"popen//python={python}"] * len(specs)
    threading.Thread(target=_rewrite_test_modules, args=(config,), name="rewrite", daemon=True).start()


def _rewrite_test_modules(config: pytest.Config) -> None:
    """Write pytest's cache of the test modules with their asserts rewritten, in the controller while the
    server imports: otherwise every worker rewrites every module at collection in a fresh clone (~2.4 s of
    CPU each here). Only speed is at stake: where pytest's rewriting internals differ, nothing is written
    and the workers rewrite as usual."""
    try:
        from _pytest.assertion.rewrite import (
            PYC_TAIL,
            _read_pyc,
            _rewrite_test,
            _write_pyc,
            assertstate_key,
            get_cache_dir,
        )

        state = config.stash[assertstate_key]
        if sys.dont_write_bytecode or config.getoption("assertmode") != "rewrite":
            return
        here = Path(__file__).resolve().parent
        for module in [*sorted(here.glob("test_*.py")), here / "conftest.py"]:
            cache = get_cache_dir(module)
            pyc = cache / (module.name[:-3] + PYC_TAIL)
            if _read_pyc(module, pyc) is None:
                cache.mkdir(exist_ok=True)
                source, code = _rewrite_test(module, config)
                _write_pyc(state, code, source, pyc)
    except Exception:  # a cache only: the workers write it themselves
        pass


def pytest_configure(config: pytest.Config) -> None:
    global _in_xdist_worker
    if hasattr(config, "workerinput"):
        _in_xdist_worker = True
        atexit.register(_end_now)  # before torch and the tests register theirs: it runs after them
    else:
        _fork_workers(config)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every ``Trainer()`` looks for external callbacks registered as entry points, and that lookup reads
    the metadata of every installed distribution (12.7 ms of a Trainer's 13.4 ms here; ~1,600 Trainers in
    this suite). Nothing is installed into the test processes' environment during a run, so once the test
    modules are imported (Lightning with them), both namespaces' lookups go through one cached call."""
    import importlib.metadata
    from functools import cache

    cached = cache(importlib.metadata.entry_points)
    for name in ("lightning.fabric.utilities.registry", "lightning_fabric.utilities.registry"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "entry_points", None) is importlib.metadata.entry_points:
            module.entry_points = cached  # type: ignore[attr-defined]
    # What the imports left (torch, Lightning, the test modules: ~400,000 objects) lives to the end of the
    # process: out of the cyclic garbage collector's sight, each full collection (Lightning and the tests
    # run some) takes ~0.4 s less. Objects the tests create are collected as before.
    gc.freeze()


@pytest.fixture(autouse=True)
def _isolated_seed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep global seeding environment variables from leaking between tests."""
    for var in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(var, raising=False)


def _names(code: types.CodeType) -> set[str]:
    """The global and attribute names ``code`` and the functions defined in it refer to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _reads_ddp_battery(item: pytest.Item, cache: dict[Any, bool]) -> bool:
    function = getattr(item, "function", None)
    if function not in cache:  # one look per test function, not per parametrized case
        code = getattr(function, "__code__", None)
        cache[function] = code is not None and "ddp_battery" in _names(code)
    return cache[function]


_COMPILING_DOCTESTS = (
    "lightning_regkit/compiled.py::",
    "lightning_regkit/dropout.py::lightning_regkit.dropout.uses_torch_compile",
)


#: The longest of the ``slow`` tests (measured: 4-14 s each on the 2-core test machine), longest first: they
#: start the slow group, so that no worker is left with one of them at the end while the other has finished
#: (pytest-xdist's worksteal takes the waiting tests from the end of a worker's share, never the running
#: one). A test missing here only runs in collection order among the other slow tests.
_LONGEST_FIRST = (
    "tests/test_notebook_runs.py::test_the_tour_runs",
    "tests/test_integration.py::",  # two runs, one in a new interpreter, in the fixture of its first test
    "tests/test_examples.py::test_demo_variance_from_the_command_line",
    "tests/test_resume_exact.py::test_validation_end_checkpoint_resumes_exactly",
    "tests/test_foundation.py::test_xdist_workers_forked_from_the_warm_interpreter",
    "tests/test_examples.py::test_demo_prints_table",
    "tests/test_docs_site.py::",
    "tests/test_faults.py::test_three_sigkills",
    "tests/test_foundation.py::test_warm_interpreter_child_is_like_a_new_process",
)


#: Tests that mostly wait (a hung script until its timeout, scripts that sleep): they come first, while the
#: run's other processes (mypy under make test, the DDP battery's ranks, the other worker) use the core a
#: waiting test leaves idle; at the end of the run that core would stay idle.
_WAITING_FIRST = (
    "tests/test_foundation.py::test_run_python_reports_a_hang",
    "tests/test_foundation.py::test_run_python_does_not_retry_a_hang",
    "tests/test_foundation.py::test_shared_warm_interpreter_serves_clients_side_by_side",
)


def _longest_first(item: pytest.Item) -> int:
    places = (i for i, prefix in enumerate(_LONGEST_FIRST) if item.nodeid.startswith(prefix))
    return next(places, len(_LONGEST_FIRST))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Doctests that compile are marked ``compile``; then the order (a stable sort, the same in every xdist
    worker): the tests that mostly wait (:data:`_WAITING_FIRST`), then the ``compile`` tests, together
    (pytest-xdist hands each worker a contiguous share of the list to start with and steals from the ends
    of the shares, so one worker pays for Dynamo's and Inductor's first use), then the tests marked
    ``slow``, the longest first (long runs start early and short tests fill the end: the workers finish
    together), then the rest, and the tests that read the DDP battery last (it is produced in the
    background from the start, and ready when they come)."""
    cache: dict[Any, bool] = {}
    for item in items:  # docstring examples that run torch.compile (the compiled kernel's: with Inductor)
        if item.nodeid.startswith(_COMPILING_DOCTESTS):
            item.add_marker(pytest.mark.compile)

    def rank(item: pytest.Item) -> tuple[int, int]:
        if _reads_ddp_battery(item, cache):
            return 3, 0
        if item.nodeid.startswith(_WAITING_FIRST):
            return -1, 0
        if item.get_closest_marker("compile"):
            return 0, 0
        return (1, _longest_first(item)) if item.get_closest_marker("slow") else (2, 0)

    items.sort(key=rank)


@pytest.fixture(scope="session", autouse=True)
def _ddp_battery_in_background(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Under xdist, the first worker runs the DDP battery (:mod:`ddp_battery`) in a background thread from
    the start, when any selected test reads it: the tests that need it find it done (or wait less)
    instead of one worker idling on the battery's lock while the other runs it. Without xdist, or when
    no selected test needs it, nothing happens here: the tests produce it when they first ask."""
    cache: dict[Any, bool] = {}
    needed = any(_reads_ddp_battery(item, cache) for item in request.session.items)
    thread = None
    if needed and os.environ.get("PYTEST_XDIST_WORKER") == "gw0":
        import ddp_battery

        def produce() -> None:
            with contextlib.suppress(BaseException):  # a failure is recorded for the tests to report
                ddp_battery.battery_root(tmp_path_factory)
                ddp_battery.single_resume_root(tmp_path_factory)

        thread = threading.Thread(target=produce, name="ddp-battery", daemon=True)
        thread.start()
    yield
    if thread is not None:
        thread.join()


@pytest.hookimpl(tryfirst=True)  # before xdist's implementation, which sends the warning to the controller
def pytest_warning_recorded(warning_message: Any) -> None:
    """In an xdist worker, a warning of a class defined outside Python's builtins (Lightning's
    ``PossibleUserWarning``, the kit's own) is passed on as its nearest builtin base class, the full
    class name leading its text: the controller rebuilds each warning it is sent from its class's module,
    and one Lightning warning would make it import torch and Lightning (~8 s of CPU, 400 MB)."""
    category = warning_message.category
    if _in_xdist_worker and category.__module__ != "builtins":
        base = next(c for c in category.__mro__ if c.__module__ == "builtins")
        text = f"{category.__module__}.{category.__qualname__}: {warning_message.message}"
        warning_message.message, warning_message.category = base(text), base
