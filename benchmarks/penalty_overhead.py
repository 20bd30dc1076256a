"""Cost of L1/L2 penalties relative to one ``torch.optim.SGD(foreach=True)`` step, measured side by side.

Part 1 (micro): for transformer encoders (layers x d_model) every parameter tensor is penalized
and the time of the penalty is divided by the time of one foreach SGD step over the same
parameters. The naive loop (the issue's "obvious implementation":
``l1 * sum(p.abs().sum() for p in params) + l2 * sum(p.pow(2).sum() for p in params)`` and its
backward) and the autograd path (``mode="autograd"``) compute value and gradient every step. The
fast path (``mode="fast"``) adds the gradient to ``.grad`` with ``torch._foreach_*`` every step and
computes the value only on logging steps, so its cost per step is ``grad + value / 50`` with
Lightning's default ``log_every_n_steps=50``; a logging step (``grad + value``) is shown too.
Each repetition times every candidate and an SGD step in turn (one thread, each timing at least
~20 ms of calls); the table shows the median over repetitions of the per-repetition ratio.

Part 2 (end to end): median and 10th-percentile ``Trainer.fit`` step time with
``RegularizedModule(l1, l2)`` (fast mode) divided by the same model without penalty, runs
interleaved; and the time spent inside the penalty hooks, measured directly, as a share of the step.

``mode="compiled"`` runs L1+L2 as one ``torch.compile`` kernel; its first call compiles (its time
is printed; Inductor caches kernels on disk, so a second run of the benchmark compiles faster).

Run: ``python benchmarks/penalty_overhead.py`` (one to three minutes on a laptop CPU);
``--quick`` is a smoke run on one tiny encoder, end to end too (the test suite runs it): every column
is printed, but the compiled kernel runs through Dynamo with ``backend="eager"`` (no C++ compilation;
the kernel itself is tested against the foreach path with Inductor in tests/test_penalties.py).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lightning_regkit.compiled as compiled_kernels
from lightning_regkit.module import RegularizedModule
from lightning_regkit.penalties import L1, L2, resolve_penalties

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
torch.set_num_threads(1)
L1_S, L2_S = 1e-5, 1e-4
SHAPES = [(6, 128), (24, 64), (12, 512)]
LOG_EVERY = 50
#: ``--device cuda`` runs the benchmark on the GPU (``make gpu-check``); timings then synchronize the device
DEVICE = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def encoder(layers: int, d: int) -> nn.Module:
    layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _time(f: Callable[[], object], calls: int) -> float:
    _sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        f()
    _sync()
    return (time.perf_counter() - t0) / calls


def median_ratios(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median over interleaved repetitions of ``time(fn) / time(sgd)`` (the machine may be shared)."""
    for f in fns.values():  # warm-up: allocator, lazily built buffers, caches
        f()
    calls = {k: max(1, int(0.02 / max(_time(f, 1), 1e-6))) for k, f in fns.items()}
    ratios: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        sgd = _time(fns["sgd"], calls["sgd"])
        for k, f in fns.items():
            ratios[k].append(_time(f, calls[k]) / sgd)
    return {k: statistics.median(v) for k, v in ratios.items()}


def micro(layers: int, d: int, reps: int) -> tuple[int, dict[str, float]]:
    torch.manual_seed(0)
    model = encoder(layers, d).to(DEVICE)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    sgd = torch.optim.SGD(params, lr=1e-9, foreach=True)  # tiny lr: weights stay put during the timing
    plans = {
        "l2": resolve_penalties([L2(L2_S, exclude=[])], model),
        "l1l2": resolve_penalties([L1(L1_S, exclude=[]), L2(L2_S, exclude=[])], model),
    }
    compiled = {
        "l2": resolve_penalties([L2(L2_S, exclude=[])], model, compiled=True),
        "l1l2": resolve_penalties([L1(L1_S, exclude=[]), L2(L2_S, exclude=[])], model, compiled=True),
    }
    t0 = time.perf_counter()
    compiled["l1l2"].add_grads_(0)  # the first call compiles (Inductor caches on disk: later runs are faster)
    compile_s = time.perf_counter() - t0

    def naive(with_l1: bool) -> Callable[[], None]:
        def run() -> None:
            pen: Tensor = L2_S * sum(p.pow(2).sum() for p in params)  # type: ignore[assignment]
            if with_l1:
                pen = L1_S * sum(p.abs().sum() for p in params) + pen
            pen.backward()  # accumulates into the existing .grad, as `(loss + pen).backward()` would

        return run

    def autograd(plan_key: str) -> Callable[[], None]:
        return lambda: plans[plan_key].loss(0).backward()

    fns: dict[str, Callable[[], object]] = {"sgd": sgd.step}
    for key, with_l1 in (("l2", False), ("l1l2", True)):
        fns[f"{key}/naive"] = naive(with_l1)
        fns[f"{key}/autograd"] = autograd(key)
        fns[f"{key}/fast grad"] = lambda plan=plans[key]: plan.add_grads_(0)
        fns[f"{key}/compiled grad"] = lambda plan=compiled[key]: plan.add_grads_(0)
        fns[f"{key}/fast value"] = lambda plan=plans[key]: plan.values(0)
    return len(params), compile_s, median_ratios(fns, reps)


# ----------------------------------------------------------------------------- end to end
class SeqTask(pl.LightningModule):
    def __init__(self, layers: int, d: int) -> None:
        super().__init__()
        self.net = encoder(layers, d)
        self.head = nn.Linear(d, 4)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self.head(self.net(x).mean(1)), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3, foreach=True)


HOOK_TIMES: list[float] = []


class RegSeqTask(SeqTask, RegularizedModule):
    def __init__(self, layers: int, d: int) -> None:
        super().__init__(layers, d, l1=L1_S, l2=L2_S)  # the same network, built by SeqTask
        hooks = self._regkit
        for name in ("after_training_step", "on_before_optimizer_step"):  # time the penalty's own work
            setattr(hooks, name, timed(getattr(hooks, name)))


def timed(fn: Callable[..., object]) -> Callable[..., object]:
    def run(*args: object) -> object:
        t0 = time.perf_counter()
        out = fn(*args)
        HOOK_TIMES.append(time.perf_counter() - t0)
        return out

    return run


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args: object) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.times.append(time.perf_counter() - self._t0)


def fit_step_times(cls: type[SeqTask], layers: int, d: int, steps: int, data: TensorDataset) -> list[float]:
    torch.manual_seed(0)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="gpu" if DEVICE.startswith("cuda") else "cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=LOG_EVERY,
        callbacks=[timer],
    )
    trainer.fit(cls(layers, d), DataLoader(data, batch_size=16))
    return timer.times[5:]  # drop warm-up


def main() -> None:
    quick = "--quick" in sys.argv[1:]  # a smoke run (the test suite's): one tiny encoder, few repeats
    if quick:  # a smoke run of every code path: the compiled kernel goes through Dynamo, not Inductor's C++
        compiled_kernels._BACKEND = "eager"
    shapes = [(2, 32)] if quick else SHAPES
    pairs, steps = (1, 12) if quick else (4, 40)
    start = time.perf_counter()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"load average at start: {load} ({torch.get_num_threads()} torch thread, {os.cpu_count()} CPUs)")
    if DEVICE != "cpu":
        print(f"device: {DEVICE} ({torch.cuda.get_device_name(0)})")
    print(
        "penalty time / one SGD(foreach=True) step over the same parameters (all tensors penalized), median"
    )
    print(
        "naive, autograd: value + gradient every step | fast, compiled: gradient every step (mode='fast':"
        " foreach kernels; mode='compiled': one torch.compile pass for L1+L2), value on logging steps only;"
        f" PER STEP = grad + value/{LOG_EVERY} (log_every_n_steps={LOG_EVERY})"
    )
    head = ["naive", "autograd", "fast grad", "comp grad", "value", "fast/step", "comp/step"]
    print(
        f"{'encoder':>8} {'tensors':>7} {'penalty':>7} "
        + " ".join(f"{h:>9}" for h in head)
        + f" {'naive/fast':>10} {'naive/comp':>10}"
    )
    compile_times = []
    for layers, d in shapes:
        n, compile_s, t = micro(layers, d, reps=3 if quick else 9 if d >= 512 else 25)
        compile_times.append(f"{layers}x{d} {compile_s:.1f} s")
        for key, label in (("l2", "L2"), ("l1l2", "L1+L2")):
            value = t[f"{key}/fast value"]
            fast = t[f"{key}/fast grad"] + value / LOG_EVERY
            comp = t[f"{key}/compiled grad"] + value / LOG_EVERY
            cols = [t[f"{key}/naive"], t[f"{key}/autograd"], t[f"{key}/fast grad"], t[f"{key}/compiled grad"]]
            print(
                f"{layers:>3}x{d:<4} {n:>7} {label:>7} "
                + " ".join(f"{c:>8.2f}x" for c in [*cols, value, fast, comp])
                + f" {t[f'{key}/naive'] / fast:>9.1f}x {t[f'{key}/naive'] / comp:>9.1f}x"
            )
    print("(L2 alone is one foreach call in both modes; mode='compiled' compiles L1+L2 only)")
    if compiled_kernels._FAILED:  # the compiled columns then measured the foreach fallback
        failed = list(compiled_kernels._FAILED.values())
        print(f"WARNING: compilation failed, the 'comp' columns measure the foreach fallback: {failed}")
    print("first compiled call (compilation, Inductor's disk cache may be warm): " + ", ".join(compile_times))
    if quick:
        print("(--quick: the 'comp' columns ran the kernel under torch.compile(backend='eager'))")
    print()
    print("end to end: Trainer.fit step time, RegularizedModule(l1=1e-5, l2=1e-4) fast vs no penalty")
    layers, d, seq = (2, 32, 32) if quick else (6, 128, 32)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(16 * 200, seq, d, generator=g), torch.randint(0, 4, (16 * 200,), generator=g)
    )
    plain: list[float] = []
    reg: list[float] = []
    for _ in range(pairs):  # interleaved runs: the machine's load drifts
        plain += fit_step_times(SeqTask, layers, d, steps, data)
        reg += fit_step_times(RegSeqTask, layers, d, steps, data)
    for name, stat in (
        ("median", statistics.median),
        ("10th percentile", lambda v: statistics.quantiles(v, n=10)[0]),
    ):
        mp, mr = stat(plain), stat(reg)
        print(
            f"encoder {layers}x{d}, batch 16x{seq}, {len(plain)} steps each, {name}: "
            f"plain {mp * 1e3:.2f} ms, regularized {mr * 1e3:.2f} ms, overhead {100 * (mr / mp - 1):+.1f}%"
        )
    share = sum(HOOK_TIMES) / sum(reg)
    print(f"time inside the penalty hooks (value, gradient, logging): {100 * share:.2f}% of the step time")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"load average at end: {load}")
    print(f"(benchmark ran {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
