"""Capture and restore the global random number generators as plain data.

The state of Python's :mod:`random`, NumPy's legacy global generator, torch's CPU generator and
every CUDA device's generator is turned into a dictionary of ints, floats, strings, lists and
tensors only, so a checkpoint that holds it loads with ``torch.load(..., weights_only=True)``.
No Lightning import: the callback in :mod:`lightning_regkit.callbacks.seed` is the adapter.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]

_KEYS = ("python", "numpy", "torch", "cuda")


def capture_rng_state(include_cuda: bool = True) -> dict[str, Any]:
    """Return the global RNG states of Python, NumPy, torch CPU and CUDA as plain data.

    Args:
        include_cuda: Also capture one state per visible CUDA device (an empty list when CUDA
            is not available or not yet initialized, so capturing never starts CUDA).

    Returns:
        ``{"python": [version, [625 ints], gauss], "numpy": [name, int64 tensor, pos, has_gauss,
        cached_gaussian], "torch": uint8 tensor, "cuda": [uint8 tensor per device]}``.

    Example:
        >>> import random, torch
        >>> state = capture_rng_state()
        >>> a, b = random.random(), torch.rand(3)
        >>> restore_rng_state(state)
        >>> random.random() == a and bool(torch.equal(torch.rand(3), b))
        True
        >>> sorted(state)
        ['cuda', 'numpy', 'python', 'torch']
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda: list[torch.Tensor] = []
    if include_cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {
        "python": [int(version), [int(v) for v in internal], None if gauss is None else float(gauss)],
        "numpy": [
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNGs from a dictionary made by :func:`capture_rng_state`.

    Keys that are missing are left alone; CUDA states are restored only for as many devices as
    are visible (a checkpoint made on 8 GPUs restores the first N on an N-GPU machine).

    Args:
        state: The output of :func:`capture_rng_state` (possibly after a ``torch.save`` /
            ``torch.load(weights_only=True)`` round trip).

    Raises:
        ValueError: If ``state`` is not a dictionary or has none of the expected keys.

    Example:
        >>> import numpy as np
        >>> state = capture_rng_state()
        >>> first = np.random.rand()
        >>> restore_rng_state(state)
        >>> bool(np.random.rand() == first)
        True
    """
    if not isinstance(state, dict) or not any(k in state for k in _KEYS):
        raise ValueError(
            f"restore_rng_state: state must be a dict with keys {_KEYS}, got {type(state).__name__} "
            f"{(sorted(map(str, state)) if isinstance(state, dict) else state)!r:.200}"
        )
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        keys_np = np.asarray(keys.numpy() if isinstance(keys, torch.Tensor) else keys, dtype=np.uint32)
        np.random.set_state((str(name), keys_np, int(pos), int(has_gauss), float(cached)))
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(dtype=torch.uint8, device="cpu"))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for device, device_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.to(dtype=torch.uint8, device="cpu"), device)
