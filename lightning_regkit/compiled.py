"""The L1/L2 gradient as one compiled kernel: ``g += a * sign(w) + b * w`` in a single pass per tensor.

Pure torch; used by :mod:`lightning_regkit.penalties` when a penalty plan is built with
``compiled=True`` (``mode="compiled"`` in :class:`~lightning_regkit.RegularizedModule` and
:class:`~lightning_regkit.WeightPenalty`). Stock multi-tensor kernels need three passes over memory for
L1+L2 (``sign``, then two ``add_``): no stock kernel fuses ``g + a * sign(w)``. ``torch.compile``
(Inductor: C++ with OpenMP on CPU, Triton on GPU) turns the update of a parameter list into one
compiled call with one fused loop per tensor (on CPU one generated C++ function; on GPU one Triton
kernel per tensor, not measured here) that reads ``w`` and ``g`` once and writes ``g`` once, the
memory traffic of an SGD step. Results equal the foreach kernels' to float rounding, not bit for bit.

The price is a compilation the first time a parameter layout is seen (seconds to tens of seconds,
cached on disk by Inductor for later processes), and a C++ compiler on CPU. The first call compiles
and runs on copies of the gradients; if that fails, :class:`CompiledGrad` warns once and reports
failure with the gradients untouched, and the caller falls back to the foreach kernels.

Each parameter layout gets its own copy of the kernel function, so Dynamo's per-function recompile
limit is never reached by processes that build many models, and a layout is compiled once per process.

Example:
    >>> w, g = torch.tensor([1.0, 0.0, -2.0]), torch.zeros(3)
    >>> kernel = CompiledGrad([w])
    >>> kernel([g], [("l1", 0.5), ("l2", 0.25)])  # compiles on first use
    True
    >>> g
    tensor([ 1.0000,  0.0000, -1.5000])
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["CompiledGrad"]

# (kinds, layout) -> compiled function; a process compiles each layout once, whichever model it belongs to
_KERNELS: dict[tuple[Any, ...], Callable[..., None]] = {}
_FAILED: dict[tuple[Any, ...], str] = {}
# The torch.compile backend of the kernels. Only the penalty benchmark's smoke run (``--quick``, run by the
# test suite) sets "eager": Dynamo traces the same function, and no C++ is compiled (~15 s saved there).
_BACKEND = "inductor"


def _update(grads: list[Tensor], params: list[Tensor], coeffs: Tensor, kinds: tuple[str, ...]) -> None:
    """``g = (g + c0 * t0(w)) + c1 * t1(w) ...`` with ``t = sign`` for L1 and ``t = id`` for L2."""
    for g, p in zip(grads, params, strict=True):
        out = g
        for i, kind in enumerate(kinds):
            out = out + (torch.sign(p) if kind == "l1" else p) * coeffs[i]
        g.copy_(out)


def _fresh_copy(fn: Callable[..., None]) -> Callable[..., None]:
    """A new function object with its own code object (Dynamo keys its cache on the code object)."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def _coeff_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class CompiledGrad:
    """Adds ``sum(s * sign(w))`` (L1 ops) and ``sum(2 s * w)`` (L2 ops) to the gradients in one compiled call.

    Args:
        params: the parameter tensors, all of one dtype and on one device; their layout (shapes,
            strides, dtype, device) selects the compiled kernel.

    Calling it with the gradients and a list of ``("l1" | "l2", strength)`` ops returns ``True`` when
    the kernel ran, and ``False`` when it could not be compiled (a warning says why, once per layout);
    the gradients are then untouched and the caller applies the foreach kernels instead. Strengths are
    passed as a tensor, so schedules that change them every step never recompile.

    Example:
        >>> kernel = CompiledGrad([torch.ones(2, 2)])
        >>> kernel.kinds_compiled
        []
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("CompiledGrad: params must not be empty")
        first = self.params[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in self.params):
            raise ValueError("CompiledGrad: params must share one dtype and one device")
        self.layout = tuple(
            (tuple(p.shape), tuple(p.stride()), str(p.dtype), str(p.device)) for p in self.params
        )
        self._coeff_dtype = _coeff_dtype(first.dtype)
        self.kinds_compiled: list[tuple[str, ...]] = []

    def __call__(self, grads: Sequence[Tensor], ops: Sequence[tuple[str, float]]) -> bool:
        """Apply ``ops`` to ``grads`` in one compiled call; ``False`` (grads untouched): cannot compile."""
        kinds = tuple(kind for kind, _ in ops)
        if any(k not in ("l1", "l2") for k in kinds):
            raise ValueError(f"CompiledGrad: ops must be ('l1' | 'l2', strength) pairs, got {list(ops)!r}")
        key = (kinds, self.layout)
        if key in _FAILED:
            return False
        grads = list(grads)
        coeffs = self._coefficients(ops)
        fn = _KERNELS.get(key)
        if fn is None:
            # compile on copies of the gradients: a failure then leaves the real ones untouched
            candidate = torch.compile(_fresh_copy(_update), backend=_BACKEND, fullgraph=True, dynamic=False)
            try:
                with torch.no_grad():
                    candidate([g.clone() for g in grads], self.params, coeffs, kinds)
            except Exception as err:  # any compiler failure means: use the foreach kernels
                text = str(err).strip()
                _FAILED[key] = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
                warnings.warn(
                    f"lightning_regkit: the compiled L1/L2 kernel is unavailable ({_FAILED[key]}); using the"
                    " foreach kernels instead (the same gradient to float rounding; under DDP every rank must"
                    " make the same choice, so give all ranks the same environment)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return False
            fn = _KERNELS[key] = candidate
        with torch.no_grad():
            fn(grads, self.params, coeffs, kinds)
        if kinds not in self.kinds_compiled:
            self.kinds_compiled.append(kinds)
        return True

    def _coefficients(self, ops: Sequence[tuple[str, float]]) -> Tensor:
        """Per-op factors as a tensor on the parameters' device (L1: ``s``, L2: ``2 s``)."""
        values = [s if kind == "l1" else 2.0 * s for kind, s in ops]
        device = self.params[0].device
        if device.type == "cpu":
            return torch.tensor(values, dtype=self._coeff_dtype)
        # pinned host memory and an asynchronous copy: no host-device synchronization every step
        host = torch.tensor(values, dtype=self._coeff_dtype, pin_memory=True)
        return host.to(device, non_blocking=True)
