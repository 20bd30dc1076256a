"""Capture, validate and restore the global random number generators as plain data.

The state of Python's :mod:`random`, NumPy's legacy global generator, torch's CPU generator and
every CUDA device's generator is turned into a dictionary of ints, floats, strings, lists and
tensors only, so a checkpoint that holds it loads with ``torch.load(..., weights_only=True)``.
:func:`check_rng_state` validates such a dictionary (keys, types, shapes, ranges) before anything
is set, so a corrupted state never reaches the generators. :class:`WorkerRNGDataset` carries the
generators of DataLoader *worker* processes in the state of torchdata's ``StatefulDataLoader``.
No Lightning import: the callback in :mod:`lightning_regkit.callbacks.seed` is the adapter.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

__all__ = ["WorkerRNGDataset", "capture_rng_state", "check_rng_state", "restore_rng_state"]

_KEYS = ("python", "numpy", "torch", "cuda")
_MT_WORDS = 624  # Mersenne Twister state: 624 32-bit words and a position in [0, 624]
_WORD_MAX = 2**32 - 1
#: Size in bytes of a torch CPU generator state (MT19937 + Box-Muller cache), and the sizes of a CUDA
#: one: Philox seed + offset (16), preceded up to torch 2.0 by 800 bytes kept for backward compatibility.
TORCH_CPU_STATE_BYTES = int(torch.Generator().get_state().numel())
TORCH_CUDA_STATE_BYTES = (16, 816)

T_co = TypeVar("T_co", covariant=True)


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


# ----------------------------------------------------------------------------- validation
def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return (
        f"{text[:80]}... ({type(value).__name__})" if len(text) > 80 else f"{text} ({type(value).__name__})"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_float(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _check_entries(owner: str, where: str, value: Any, size: int) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)) or len(value) != size:
        raise ValueError(f"{owner}: {where} must be a list of {size} entries, got {_describe(value)}")
    return value


def _check_words(owner: str, where: str, words: Any, what: str) -> None:
    """624 ints in [0, 2**32 - 1], as a list/tuple or an integer tensor."""
    if isinstance(words, torch.Tensor):
        ok = (
            not words.is_floating_point()
            and not words.is_complex()
            and words.dtype != torch.bool
            and tuple(words.shape) == (_MT_WORDS,)
        )
        in_range = ok and bool(((words >= 0) & (words <= _WORD_MAX)).all())
    else:
        ok = isinstance(words, (list, tuple)) and len(words) == _MT_WORDS and all(_is_int(w) for w in words)
        in_range = ok and all(0 <= w <= _WORD_MAX for w in words)
    if not ok:
        raise ValueError(f"{owner}: {where} ({what}) must be {_MT_WORDS} ints, got {_describe(words)}")
    if not in_range:
        raise ValueError(f"{owner}: {where} ({what}) must hold ints in [0, 2**32 - 1], some are outside")


def _check_position(owner: str, where: str, value: Any, what: str) -> None:
    if not _is_int(value) or not 0 <= value <= _MT_WORDS:
        raise ValueError(
            f"{owner}: {where} ({what}) must be an int in [0, {_MT_WORDS}], got {_describe(value)}"
        )


def _check_byte_tensor(owner: str, where: str, value: Any, sizes: tuple[int, ...], what: str) -> None:
    if (
        not isinstance(value, torch.Tensor)
        or value.dtype != torch.uint8
        or value.dim() != 1
        or value.numel() not in sizes
    ):
        allowed = " or ".join(str(s) for s in sizes)
        raise ValueError(
            f"{owner}: {where} ({what}) must be a 1-D uint8 tensor of {allowed} bytes, got {_describe(value)}"
        )


def check_rng_state(state: Any, owner: str = "restore_rng_state", name: str = "state") -> None:
    """Check that ``state`` is a complete, well-formed output of :func:`capture_rng_state`.

    Every key, type, shape and range is checked, so that nothing is set from a corrupted state:
    ``python`` = ``[3, 625 ints (624 words in [0, 2**32 - 1] and a position in [0, 624]), None or
    a finite float]``; ``numpy`` = ``["MT19937", 624 words, position in [0, 624], 0 or 1, finite
    float]``; ``torch`` = 1-D uint8 tensor of a CPU generator's size; ``cuda`` = list of 1-D uint8
    tensors of a CUDA generator's size (16 bytes; 816 up to torch 2.0).

    Args:
        state: The dictionary to check.
        owner: Who is checking, the first word of the error message (e.g. a callback's name).
        name: What ``state`` is called in the message (e.g. ``"checkpoint field 'rng[0]'"``).

    Raises:
        ValueError: Naming ``owner``, ``name``, the offending key or entry, what was expected and
            what was found.

    Example:
        >>> check_rng_state(capture_rng_state())  # a fresh capture is valid
        >>> state = capture_rng_state()
        >>> state["numpy"][3] = 2
        >>> check_rng_state(state)
        Traceback (most recent call last):
        ...
        ValueError: restore_rng_state: state['numpy'][3] (has_gauss) must be 0 or 1, got 2 (int)
    """
    if not isinstance(state, dict) or set(state) != set(_KEYS):
        found = sorted(map(str, state)) if isinstance(state, dict) else state
        missing = [k for k in _KEYS if isinstance(state, dict) and k not in state]
        unknown = sorted(str(k) for k in state if k not in _KEYS) if isinstance(state, dict) else []
        detail = "".join(
            [f"; missing {missing}" if missing else "", f"; unknown {unknown}" if unknown else ""]
        )
        raise ValueError(
            f"{owner}: {name} must be a dict with keys {list(_KEYS)}, got {type(state).__name__} "
            f"{found!r:.200}{detail}"
        )
    # Python's random: (version, 624 words + position, gauss)
    version, internal, gauss = _check_entries(owner, f"{name}['python']", state["python"], 3)
    if not _is_int(version) or version != 3:
        raise ValueError(
            f"{owner}: {name}['python'][0] (random state version) must be 3, got {_describe(version)}"
        )
    where = f"{name}['python'][1]"
    if not isinstance(internal, (list, tuple)) or len(internal) != _MT_WORDS + 1:
        raise ValueError(
            f"{owner}: {where} (MT19937 words + position) must be a list of 625 ints, got "
            f"{_describe(internal)}"
        )
    _check_words(owner, where, list(internal[:_MT_WORDS]), "MT19937 words")
    _check_position(owner, f"{where}[624]", internal[_MT_WORDS], "MT19937 position")
    if gauss is not None and not _is_finite_float(gauss):
        raise ValueError(
            f"{owner}: {name}['python'][2] (cached gauss) must be None or a finite float, got "
            f"{_describe(gauss)}"
        )
    # NumPy's legacy global generator: (name, 624 words, position, has_gauss, cached_gaussian)
    np_name, keys, pos, has_gauss, cached = _check_entries(owner, f"{name}['numpy']", state["numpy"], 5)
    if np_name != "MT19937":
        raise ValueError(
            f"{owner}: {name}['numpy'][0] (bit generator) must be 'MT19937', got {_describe(np_name)}"
        )
    _check_words(owner, f"{name}['numpy'][1]", keys, "MT19937 words")
    _check_position(owner, f"{name}['numpy'][2]", pos, "MT19937 position")
    if not _is_int(has_gauss) or has_gauss not in (0, 1):
        raise ValueError(
            f"{owner}: {name}['numpy'][3] (has_gauss) must be 0 or 1, got {_describe(has_gauss)}"
        )
    if not _is_finite_float(cached):
        raise ValueError(
            f"{owner}: {name}['numpy'][4] (cached gaussian) must be a finite float, got {_describe(cached)}"
        )
    _check_byte_tensor(owner, f"{name}['torch']", state["torch"], (TORCH_CPU_STATE_BYTES,), "CPU generator")
    cuda = state["cuda"]
    if not isinstance(cuda, (list, tuple)):
        raise ValueError(
            f"{owner}: {name}['cuda'] must be a list of CUDA generator states, got {_describe(cuda)}"
        )
    for device, device_state in enumerate(cuda):
        _check_byte_tensor(
            owner, f"{name}['cuda'][{device}]", device_state, TORCH_CUDA_STATE_BYTES, "CUDA generator"
        )


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNGs from a dictionary made by :func:`capture_rng_state`.

    The whole state is validated first (:func:`check_rng_state`), so a corrupted state raises
    before any generator is touched. CUDA states are restored only for as many devices as are
    visible (a checkpoint made on 8 GPUs restores the first N on an N-GPU machine), and not at all
    without CUDA.

    Args:
        state: The output of :func:`capture_rng_state` (possibly after a ``torch.save`` /
            ``torch.load(weights_only=True)`` round trip).

    Raises:
        ValueError: If ``state`` is not a dict with exactly the keys ``python``, ``numpy``,
            ``torch`` and ``cuda``, or an entry has the wrong type, shape or range.

    Example:
        >>> import numpy as np
        >>> state = capture_rng_state()
        >>> first = np.random.rand()
        >>> restore_rng_state(state)
        >>> bool(np.random.rand() == first)
        True
    """
    check_rng_state(state)
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), None if gauss is None else float(gauss)))
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys_np = np.asarray(keys.numpy() if isinstance(keys, torch.Tensor) else keys, dtype=np.uint32)
    np.random.set_state((str(name), keys_np, int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].to(device="cpu"))
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available():
        for device, device_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.to(device="cpu"), device)


# ----------------------------------------------------------------------------- worker RNG
class WorkerRNGDataset(Dataset[T_co], Generic[T_co]):
    """A map-style dataset whose DataLoader *worker* RNG states travel in the loader's state.

    Random augmentation in ``Dataset.__getitem__`` draws from the global generators of the worker
    process. torchdata's ``StatefulDataLoader`` saves a worker's dataset state (``state_dict``)
    after each batch and hands it back to the re-created worker on resume; this wrapper makes that
    state the worker's Python, NumPy and torch generators, so a resume from a mid-epoch checkpoint
    draws the same augmentation as the uninterrupted run. In the main process (``num_workers=0``)
    its state is empty: the main process's generators are restored by
    :class:`~lightning_regkit.callbacks.seed.SeedEverything`. A wrapped dataset that is itself
    stateful (has ``state_dict``/``load_state_dict``) keeps its own state under ``"dataset"``.

    Args:
        dataset: The map-style dataset to wrap (indexable, with ``__len__``).

    Raises:
        TypeError: If ``dataset`` is not indexable and sized, or is an ``IterableDataset``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = WorkerRNGDataset(TensorDataset(torch.arange(4.0)))
        >>> len(data), data[1]
        (4, (tensor(1.),))
        >>> data.state_dict()  # in the main process: the RNG is SeedEverything's to restore
        {'rng': None}

        With torchdata: ``StatefulDataLoader(WorkerRNGDataset(train_set), num_workers=2, ...)``.
    """

    def __init__(self, dataset: Dataset[T_co]) -> None:
        if isinstance(dataset, torch.utils.data.IterableDataset) or not (
            hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
        ):
            raise TypeError(
                "WorkerRNGDataset: dataset must be a map-style dataset (with __getitem__ and __len__), got "
                f"{type(dataset).__name__}"
            )
        self.dataset = dataset

    def __getitem__(self, index: Any) -> T_co:
        return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        # attributes of the wrapped dataset (e.g. ``classes``) stay reachable; ``dataset`` itself is
        # looked up normally, so unpickling in a worker (no ``dataset`` yet) does not recurse
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _inner_stateful(self) -> bool:
        return callable(getattr(self.dataset, "state_dict", None)) and callable(
            getattr(self.dataset, "load_state_dict", None)
        )

    def state_dict(self) -> dict[str, Any]:
        """The worker's RNG states (``None`` in the main process) and the wrapped dataset's state.

        Returns:
            ``{"rng": capture_rng_state(include_cuda=False) or None}`` plus ``"dataset"`` when the
            wrapped dataset is stateful.

        Example:
            >>> import torch
            >>> WorkerRNGDataset(torch.utils.data.TensorDataset(torch.zeros(2))).state_dict()
            {'rng': None}
        """
        state: dict[str, Any] = {
            "rng": capture_rng_state(include_cuda=False) if get_worker_info() is not None else None
        }
        if self._inner_stateful():
            state["dataset"] = self.dataset.state_dict()  # type: ignore[attr-defined]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the worker's RNG states (validated first) and the wrapped dataset's state.

        Args:
            state_dict: The output of :meth:`state_dict`, as torchdata hands it back.

        Raises:
            ValueError: If the state is not a dict with an ``"rng"`` entry, or the RNG state is
                invalid (see :func:`check_rng_state`).

        Example:
            >>> import torch
            >>> data = WorkerRNGDataset(torch.utils.data.TensorDataset(torch.zeros(2)))
            >>> data.load_state_dict({"rng": None})  # a main-process state: nothing to restore
            >>> data.load_state_dict({"rng": 5})
            Traceback (most recent call last):
            ...
            ValueError: WorkerRNGDataset: state 'rng' must be None or a dict (capture_rng_state), got 5 (int)
        """
        if not isinstance(state_dict, dict) or "rng" not in state_dict:
            raise ValueError(
                f"WorkerRNGDataset: state must be a dict with key 'rng', got {_describe(state_dict)}"
            )
        rng = state_dict["rng"]
        if rng is not None and not isinstance(rng, dict):
            raise ValueError(
                "WorkerRNGDataset: state 'rng' must be None or a dict (capture_rng_state), got "
                f"{_describe(rng)}"
            )
        if rng is not None:
            check_rng_state(rng, owner="WorkerRNGDataset", name="state 'rng'")
        if "dataset" in state_dict and self._inner_stateful():
            self.dataset.load_state_dict(state_dict["dataset"])  # type: ignore[attr-defined]
        if rng is not None:
            restore_rng_state(rng)
