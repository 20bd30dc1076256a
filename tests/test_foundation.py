"""The foundation: package metadata, the shared fixtures, CI files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ddp_battery
import pytest
import torch
from helpers import ROOT, LitClassifier, TinyMLP, TinyTransformer, run_python
from torch import nn
from warm_interpreter import PRELOAD_VAR, WarmInterpreter

import lightning_regkit


def test_version_and_public_api() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", lightning_regkit.__version__)
    for name in lightning_regkit.__all__:
        assert hasattr(lightning_regkit, name), name
    public = {n for n in dir(lightning_regkit) if not n.startswith("_") and n not in {"callbacks"}}
    # every public symbol at top level is in __all__ (submodules excluded)
    modules = {n for n in public if type(getattr(lightning_regkit, n)).__name__ == "module"}
    assert public - modules <= set(lightning_regkit.__all__)


def test_py_typed_shipped() -> None:
    assert (Path(lightning_regkit.__file__).parent / "py.typed").exists()


def test_tiny_mlp_parameters() -> None:
    names = [n for n, _ in TinyMLP().named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight", "fc2.bias"]


def test_tiny_transformer_has_every_dropout_form() -> None:
    model = TinyTransformer(p=0.25)
    mha = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(mha) == 2 and all(m.dropout == 0.25 for m in mha)
    assert len(drops) == 4 and all(m.p == 0.25 for m in drops)
    assert model(torch.randn(5, 8)).shape == (5, 3)


@pytest.mark.parametrize("net", [TinyMLP, TinyTransformer])
def test_trainer_factory_fits(make_trainer, synthetic_dm, net) -> None:
    torch.manual_seed(0)
    model = LitClassifier(net(), lr=0.1)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(model, datamodule=synthetic_dm)
    assert trainer.current_epoch == 2
    assert trainer.global_step == 2 * 4  # 64 samples / batch 16
    assert {"train_loss_epoch", "val_loss", "val_acc"} <= set(trainer.callback_metrics)
    assert not list(Path(trainer.default_root_dir).glob("**/*.ckpt"))


def test_synthetic_data_is_fixed(synthetic_dm) -> None:
    synthetic_dm.setup()
    x1 = synthetic_dm.train_set.tensors[0].clone()
    synthetic_dm.setup()
    assert torch.equal(x1, synthetic_dm.train_set.tensors[0])


def test_digits_datamodule_learns(make_trainer, digits_dm) -> None:
    from digits import DigitsClassifier

    torch.manual_seed(0)
    model = DigitsClassifier(hidden=64, lr=3e-3)
    trainer = make_trainer(max_epochs=3)
    trainer.fit(model, datamodule=digits_dm)
    assert float(trainer.callback_metrics["val_acc"]) > 0.85


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    m = re.search(r"```(?:bash|sh)\n(?:#.*\n)*(make test)\n", readme)
    assert m, "README must give the test command in a bash block"
    assert re.search(rf"^{m.group(1)}$", ci, flags=re.M)
    assert re.search(r"^make demo$", readme, flags=re.M)


def test_workflow_passes_actionlint() -> None:
    exe = shutil.which("actionlint") or str(Path(__import__("sys").executable).parent / "actionlint")
    if not Path(exe).exists():
        pytest.fail("actionlint is part of the dev extras and must be installed")
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert {w.name for w in workflows} >= {"ci.yml", "release.yml"}
    proc = subprocess.run([exe, *map(str, workflows)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    exe = shutil.which("actionlint") or str(Path(__import__("sys").executable).parent / "actionlint")
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ matrix.nope }}\n"
    )
    proc = subprocess.run([exe, str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_on_cpu_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The distributed set-up later issues rely on: Lightning DDP, 2 CPU processes, gloo.

    ``ddp_battery.foundation`` (in the suite's DDP launch): ``LitClassifier``, 1 epoch, then
    ``all_gather`` of ``fc1.weight`` from both ranks.
    """
    ranks = ddp_battery.load_ranks(tmp_path_factory, "foundation")
    assert [r["global_rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" and r["same"] for r in ranks)
    assert ranks[0]["pid"] != ranks[1]["pid"]  # two processes


def _wait_gone(pid: str) -> None:
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(50):  # killed with its group; init reaps it
        if not stat.exists() or stat.read_text().split()[2] == "Z":
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} outlived run_python: {stat.read_text()}")


def _dump_of(message: str, pid: str) -> str:
    """The stack dump that ``run_python``'s failure message holds for process ``pid``."""
    m = re.search(rf"^--- process {pid}\n(.*?)(?=^--- )", message, flags=re.M | re.S)
    assert m, f"no dump for process {pid} in:\n{message}"
    return m.group(1)


HANG_SCRIPT = """
    import os, subprocess, sys, time
    def grandchild_waits():
        time.sleep(600)
    def child_waits():
        time.sleep(600)
    def parent_waits():
        time.sleep(600)
    if os.environ.get("ROLE") == "rank1":  # the script run again, as Lightning starts a DDP rank
        open("rank1_pid", "w").write(str(os.getpid()))
        grandchild_waits()
    subprocess.Popen([sys.executable, sys.argv[0]], env={**os.environ, "ROLE": "rank1"})
    if os.fork() == 0:  # as a DataLoader worker
        open("child_pid", "w").write(str(os.getpid()))
        child_waits()
    open("parent_pid", "w").write(str(os.getpid()))
    parent_waits()
    """


@pytest.mark.slow
@pytest.mark.parametrize("fresh", [False, True], ids=["warm", "fresh"])
def test_run_python_reports_a_hang_and_leaves_nothing_behind(tmp_path: Path, fresh: bool) -> None:
    """A hung subprocess (a parent, a forked child as a DataLoader worker, the script started again
    as a DDP rank) fails with every process's whole Python stack, each dump in a section of its own
    (never interleaved with another process's), and the whole process group is gone afterwards:
    started from the warm interpreter and as a really new one."""
    with pytest.raises(AssertionError, match="timed out after 2 s") as err:
        run_python(HANG_SCRIPT, tmp_path, timeout=2, fresh=fresh)
    message = str(err.value)
    for role, frame in [("parent", "parent_waits"), ("child", "child_waits"), ("rank1", "grandchild_waits")]:
        pid = (tmp_path / f"{role}_pid").read_text()
        dump = _dump_of(message, pid)
        assert f"in {frame}" in dump and "in <module>" in dump, (role, dump)
        assert not {"parent_waits", "child_waits", "grandchild_waits"} - {frame} & set(
            re.findall(r"in (\w+)", dump)
        ), (role, dump)
        _wait_gone(pid)


@pytest.mark.slow
def test_run_python_does_not_retry_a_hang(tmp_path: Path) -> None:
    """A hang fails the test at once: the script ran exactly once."""
    code = """
        import time
        open("runs.txt", "a").write("run\\n")
        time.sleep(600)
        """
    with pytest.raises(AssertionError, match=r"timed out after 1\.5 s"):
        run_python(code, tmp_path, timeout=1.5)
    assert (tmp_path / "runs.txt").read_text() == "run\n"


PROBE_SCRIPT = """
    import atexit, json, os, random, sys
    import numpy, torch
    atexit.register(lambda: open("atexit_ran", "w").write("yes"))
    print(json.dumps({
        "name": __name__, "argv0": os.path.basename(sys.argv[0]), "path0": sys.path[0], "cwd": os.getcwd(),
        "var": os.environ.get("PROBE_VAR"), "torch_seed": torch.initial_seed(),
        "torch_draw": torch.rand(3).tolist(),
        "random": random.random(), "numpy": float(numpy.random.random()), "pid": os.getpid(),
        "pgid": os.getpgid(0),
    }))
    sys.exit(int(os.environ["PROBE_EXIT"]))
    """


@pytest.mark.slow
def test_warm_interpreter_child_is_like_a_new_process(tmp_path: Path) -> None:
    """What a script can observe is the same whether ``run_python`` forks it from the warm interpreter or
    starts a really new one; only the entropy-seeded draws differ between runs, as between new processes."""
    seen = {}
    for fresh in (False, True, False):
        (tmp_path / "atexit_ran").unlink(missing_ok=True)
        with pytest.raises(AssertionError, match="subprocess failed with 3") as err:
            run_python(PROBE_SCRIPT, tmp_path, env={"PROBE_VAR": "x", "PROBE_EXIT": "3"}, fresh=fresh)
        out = json.loads(str(err.value).split("--- stdout\n", 1)[1].split("\n", 1)[0])
        assert (tmp_path / "atexit_ran").read_text() == "yes", fresh
        assert out["pgid"] == out["pid"] != os.getpid()  # a process group of its own
        seen.setdefault(fresh, []).append(out)
    (warm, warm2), [fresh_run] = seen[False], seen[True]
    same = ["name", "argv0", "path0", "cwd", "var"]
    entropy = ["random", "numpy"]  # seeded from the OS in every new process
    # torch seeds its default generator from the OS in a new process (recent releases) or with a fixed seed
    (same if fresh_run["torch_seed"] == 67280421310721 else entropy).extend(["torch_seed", "torch_draw"])
    assert {k: warm[k] for k in same} == {k: fresh_run[k] for k in same}
    assert warm["name"] == "__main__" and warm["path0"] == str(tmp_path) and warm["var"] == "x"
    for key in entropy:
        assert warm[key] != warm2[key] and warm[key] != fresh_run[key], key
    assert len({warm["pid"], warm2["pid"], fresh_run["pid"]}) == 3


SIDE_BY_SIDE = """
import json, os, sys, time
start = time.monotonic()
time.sleep(1.0)
handler = os.getppid()  # the process serving this client, forked from the shared server
server = int(open(f"/proc/{handler}/stat").read().rsplit(")", 1)[1].split()[1])
print(json.dumps({"start": start, "end": time.monotonic(), "server": server, "handler": handler}))
"""


@pytest.mark.slow
def test_shared_warm_interpreter_serves_clients_side_by_side_and_ends_with_its_owner(tmp_path: Path) -> None:
    """Under xdist the workers share one warm server: each client's scripts run in a process of its own
    (two clients' scripts overlap in time), and the server removes its socket and exits once its owner
    (the pytest run) has ended."""
    owner = subprocess.Popen(["sleep", "600"])
    try:
        clients = [WarmInterpreter.shared([], owner=owner.pid, preload=("json",)) for _ in range(2)]
        assert clients[0].address == clients[1].address
        (tmp_path / "s.py").write_text(SIDE_BY_SIDE)
        results: list[tuple[int | None, str, str, int]] = []
        threads = [
            threading.Thread(
                target=lambda c=c: results.append(c.run(tmp_path / "s.py", tmp_path, dict(os.environ), 60))
            )
            for c in clients
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        runs = [json.loads(out) for rc, out, err, _ in results if rc == 0]
        assert len(runs) == 2, results
        assert runs[0]["server"] == runs[1]["server"] and runs[0]["handler"] != runs[1]["handler"]
        assert runs[0]["start"] < runs[1]["end"] and runs[1]["start"] < runs[0]["end"]  # side by side
        for c in clients:
            c.close()
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(clients[0].address) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(clients[0].address)
    _wait_gone(str(runs[0]["server"]))


@pytest.mark.slow
def test_xdist_controller_leaves_warning_classes_to_the_workers(tmp_path: Path) -> None:
    """A warning of a class from outside the builtins (as Lightning's ``PossibleUserWarning``) reaches the
    summary, with its class named, without the xdist controller importing the class's module (for
    Lightning's warnings that import costs the controller ~8 s of CPU: torch and Lightning)."""
    (tmp_path / "kitwarn.py").write_text(
        "import os\nopen(f'imported-by-{os.getpid()}', 'w').close()\n"
        "class KitLikeWarning(UserWarning):\n    pass\n"
    )
    (tmp_path / "test_w.py").write_text(
        "import warnings, kitwarn\ndef test_warns():\n    warnings.warn('boo', kitwarn.KitLikeWarning)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # not this run's worker
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(tmp_path)])
    env["REGKIT_FORK_WORKERS"] = "0"  # workers as xdist starts them (forked ones: the test below)
    args = ["-m", "pytest", "-n", "1", "-p", "conftest", "-p", "no:cacheprovider", "-q", "test_w.py"]
    controller = subprocess.Popen(
        [sys.executable, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    out, _ = controller.communicate(timeout=120)
    assert controller.returncode == 0, out
    assert "UserWarning: kitwarn.KitLikeWarning: boo" in out, out
    importers = {p.name for p in tmp_path.glob("imported-by-*")}
    assert importers and f"imported-by-{controller.pid}" not in importers, importers


WORKER_PROBE = """
import json, os, sys
PRELOADED = "colorsys" in sys.modules  # what the light server of these runs imports

def test_probe():
    record = {
        "argv": sys.argv, "path": [p for p in sys.path if "pytest" not in p], "cwd": os.getcwd(),
        "var": os.environ.get("PROBE_VAR"), "main": sys.modules["__main__"].__name__,
        "stdin": sys.__stdin__.fileno(), "stdout": sys.__stdout__.fileno(), "preloaded": PRELOADED,
        "parent": open(f"/proc/{os.getppid()}/cmdline").read().split("\\0")[1],
    }
    with open("probe.json", "w") as f:
        json.dump(record, f)

def test_crash():
    if os.environ.get("PROBE_CRASH"):
        os._exit(3)
"""


def _nested_xdist(tmp_path: Path, **env: str) -> tuple[str, dict[str, Any]]:
    """``pytest -n 1`` on :data:`WORKER_PROBE` in a new pytest process; its output and the probe's record."""
    (tmp_path / "probe.json").unlink(missing_ok=True)
    (tmp_path / "test_probe.py").write_text(WORKER_PROBE)
    args = ["-m", "pytest", "-n", "1", "-p", "conftest", "-p", "no:cacheprovider", "-q", "test_probe.py"]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(tmp_path)]), **env}
    full_env[PRELOAD_VAR] = "colorsys"  # a light server: these runs stay small
    full_env = {k: v for k, v in full_env.items() if not k.startswith("PYTEST_XDIST")}  # not our worker's
    proc = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=300
    )
    return proc.stdout + proc.stderr, json.loads((tmp_path / "probe.json").read_text())


@pytest.mark.slow
def test_xdist_workers_forked_from_the_warm_interpreter_are_like_new_interpreters(tmp_path: Path) -> None:
    """Under ``pytest -n N`` each worker is forked from the run's warm interpreter (torch and Lightning
    already imported) by :mod:`warm_worker`; what a test sees is what it sees in a worker that xdist starts
    as a new interpreter (``REGKIT_FORK_WORKERS=0``); a worker that dies is reported and replaced as xdist
    does."""
    out, forked = _nested_xdist(tmp_path, PROBE_VAR="x", PROBE_CRASH="1")
    assert re.search(r"worker '?gw0'? crashed", out, re.I) and "1 failed, 1 passed" in out, out
    out, new = _nested_xdist(tmp_path, PROBE_VAR="x", REGKIT_FORK_WORKERS="0")
    assert "2 passed" in out, out
    same = ["argv", "path", "cwd", "var", "main", "stdin", "stdout"]
    assert {k: forked[k] for k in same} == {k: new[k] for k in same}
    assert forked["argv"] == ["-c"] and forked["var"] == "x"
    assert forked["preloaded"] and not new["preloaded"]
    # a new worker's parent is the pytest controller; a forked one's is the server's handler ("python -c")
    assert (forked["parent"], new["parent"]) == ("-c", "-m")


def test_the_controller_writes_the_rewritten_test_modules_cache(pytestconfig: pytest.Config) -> None:
    """``conftest._rewrite_test_modules`` (run by the xdist controller) writes the cache of asserts rewritten
    that a worker's import then reads, so that the workers do not each rewrite every module. It fails here,
    rather than silently doing nothing, if pytest's rewriting internals move."""
    from _pytest.assertion.rewrite import PYC_TAIL, _read_pyc, get_cache_dir

    if sys.dont_write_bytecode:
        pytest.skip("bytecode writing is off in this process (PYTHONDONTWRITEBYTECODE)")
    module = ROOT / "tests" / "test_schedules.py"
    pyc = get_cache_dir(module) / (module.name[:-3] + PYC_TAIL)
    pyc.unlink(missing_ok=True)
    sys.modules["conftest"]._rewrite_test_modules(pytestconfig)  # (tests never import conftest themselves)
    code = _read_pyc(module, pyc)
    assert code is not None and "@pytest_ar" in code.co_names  # the rewritten module imports pytest's helpers


def test_the_order_hints_name_tests_that_exist() -> None:
    """``conftest``'s lists of tests to run first name test files and functions that exist (a renamed test
    would otherwise silently fall back to collection order)."""
    conftest = sys.modules["conftest"]  # (tests never import conftest themselves)
    for prefix in (*conftest._LONGEST_FIRST, *conftest._WAITING_FIRST):
        file, _, function = prefix.partition("::")
        assert (ROOT / file).is_file(), prefix
        assert not function or f"def {function}" in (ROOT / file).read_text(), prefix


WARM_WORKER = ROOT / "tests" / "warm_worker.py"


@pytest.fixture
def warm_owner() -> Iterator[str]:
    """The pid that owns a shared warm interpreter: this xdist run's, or a stand-in process for this test."""
    from warm_interpreter import OWNER_VAR

    if os.environ.get(OWNER_VAR):
        yield os.environ[OWNER_VAR]
        return
    stand_in = subprocess.Popen(["sleep", "600"])
    yield str(stand_in.pid)
    stand_in.kill()
    stand_in.wait()


@pytest.mark.slow
def test_warm_worker_runs_a_command_in_a_forked_child_and_exits_as_it_did(warm_owner: str) -> None:
    from warm_interpreter import OWNER_VAR, SCRIPT_PYTHONPATH, ensure_shared_server

    ensure_shared_server(SCRIPT_PYTHONPATH, int(warm_owner))
    env = {**os.environ, OWNER_VAR: warm_owner}
    code = "import sys; print(sys.argv, 'torch' in sys.modules, sys.stdin.readline().strip()); sys.exit(5)"
    proc = subprocess.run(
        [sys.executable, str(WARM_WORKER), "-u", "-c", code],
        input="hello\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (5, "['-c'] True hello\n", "")
    # without a server for that owner, it becomes the interpreter it was asked for
    stand_in = subprocess.Popen(["sleep", "600"])
    try:
        proc = subprocess.run(
            [sys.executable, str(WARM_WORKER), "-c", code],
            input="hi\n",
            text=True,
            env={**env, OWNER_VAR: str(stand_in.pid)},
            capture_output=True,
            timeout=60,
        )
    finally:
        stand_in.kill()
        stand_in.wait()
    assert (proc.returncode, proc.stdout) == (5, "['-c'] False hi\n"), proc.stderr


@pytest.mark.slow
def test_killing_the_warm_worker_kills_its_forked_child(warm_owner: str) -> None:
    from warm_interpreter import OWNER_VAR, SCRIPT_PYTHONPATH, ensure_shared_server

    ensure_shared_server(SCRIPT_PYTHONPATH, int(warm_owner))
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(120)"
    launcher = subprocess.Popen(
        [sys.executable, str(WARM_WORKER), "-u", "-c", code],
        stdout=subprocess.PIPE,
        env={**os.environ, OWNER_VAR: warm_owner},
        text=True,
    )
    assert launcher.stdout is not None
    child = launcher.stdout.readline().strip()
    assert child.isdigit() and int(child) != launcher.pid
    launcher.kill()
    launcher.wait()
    _wait_gone(child)


def test_test_helpers_live_in_a_module_of_their_own() -> None:
    """Tests import shared helpers from ``tests/helpers.py``; ``conftest.py`` holds fixtures only."""
    importers = [
        p.name
        for p in sorted((ROOT / "tests").glob("*.py"))
        if re.search(r"^\s*(from conftest import|import conftest)", p.read_text(), re.M)
    ]
    assert importers == []
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert "def run_python" not in conftest and "class TinyMLP" not in conftest
