"""Sources of randomness and their seeds: ``init``, ``data`` and ``train``.

A training run draws random numbers for three different purposes, and Bouthillier et al. (MLSys
2021) show that they do not contribute equally to the spread of results across seeds:

- ``init``: what the model draws when it is built (initial weights);
- ``data``: the order of the training samples (the sampler's shuffle), the DataLoader workers'
  seeds and so what they draw (augmentation in ``Dataset.__getitem__`` run in worker processes);
- ``train``: everything drawn from the global generators while training (dropout masks, noise in
  ``training_step``, augmentation drawn in the main process with ``num_workers=0``).

A source whose seed is not given derives it from the run's seed with :func:`source_seed`:
``SeedSequence([seed, index])`` of NumPy (``index`` 0, 1, 2 for ``init``, ``data``, ``train``), the
first 32-bit word it generates. NumPy documents ``SeedSequence`` as stable across releases, so a
derived seed never changes. :class:`SourceSeeds` is what :func:`~lightning_regkit.sweep.seed_sweep`
hands ``train_fn`` when it varies some sources and holds the others fixed. Pure Python and NumPy;
no Lightning import.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["SEED_KEYS", "SOURCES", "Source", "SourceSeeds", "parse_vary", "source_seed"]

Source = Literal["init", "data", "train"]
#: The sources of randomness, in the order of their index in :func:`source_seed`.
SOURCES: tuple[str, ...] = ("init", "data", "train")
#: The keys of a :class:`SourceSeeds` mapping: the keyword arguments of ``SeedEverything``.
SEED_KEYS: tuple[str, ...] = ("seed", *SOURCES)
_MAX_SEED = 2**32 - 1


def _check_seed(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{owner}: {name} must be an int in [0, 2**32 - 1], got {value!r} ({type(value).__name__})"
        )
    if not 0 <= int(value) <= _MAX_SEED:
        raise ValueError(f"{owner}: {name} must be in [0, 2**32 - 1], got {value}")
    return int(value)


def source_seed(seed: int, source: str) -> int:
    """The seed of ``source`` derived from a run's ``seed`` (used for every source not given).

    ``SeedSequence([seed, SOURCES.index(source)]).generate_state(1)[0]`` of NumPy: distinct,
    statistically independent seeds for the three sources of one run, the same in every release.

    Args:
        seed: The run's seed, in ``[0, 2**32 - 1]``.
        source: ``"init"``, ``"data"`` or ``"train"``.

    Returns:
        An int in ``[0, 2**32 - 1]``.

    Raises:
        TypeError: If ``seed`` is not an int.
        ValueError: If ``seed`` is out of range or ``source`` is not one of :data:`SOURCES`.

    Example:
        >>> [source_seed(0, s) for s in SOURCES]
        [2968811710, 3964924996, 3141116543]
        >>> source_seed(0, "weights")
        Traceback (most recent call last):
        ...
        ValueError: source_seed: source must be one of ['init', 'data', 'train'], got 'weights'
    """
    seed = _check_seed("source_seed", "seed", seed)
    if source not in SOURCES:
        raise ValueError(f"source_seed: source must be one of {list(SOURCES)}, got {source!r}")
    sequence = np.random.SeedSequence([seed, SOURCES.index(source)])
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def parse_vary(vary: Any, owner: str = "seed_sweep") -> tuple[str, ...]:
    """Normalise a ``vary=`` argument: a source, a tuple of sources or ``"all"`` -> sources in order.

    Args:
        vary: ``"init"``, ``"data"``, ``"train"``, ``"all"`` or a non-empty collection of sources.
        owner: The name that starts the error message.

    Returns:
        The distinct sources, in the order of :data:`SOURCES`.

    Raises:
        ValueError: If ``vary`` names something that is not a source, or is empty.

    Example:
        >>> parse_vary("all"), parse_vary(("train", "data"))
        (('init', 'data', 'train'), ('data', 'train'))
    """
    if vary == "all":
        return SOURCES
    items = [vary] if isinstance(vary, str) else vary
    try:
        chosen = list(items)
    except TypeError:
        chosen = None
    if not chosen or any(not isinstance(s, str) or s not in SOURCES for s in chosen):
        raise ValueError(
            f"{owner}: vary must be one of {list(SOURCES)}, 'all' or a tuple of sources, got {vary!r}"
        )
    return tuple(s for s in SOURCES if s in chosen)


@dataclass(frozen=True)
class SourceSeeds(Mapping[str, int]):
    """The seeds of one run, by source: a mapping ``seed``, ``init``, ``data``, ``train`` -> int.

    It is the keyword arguments of :class:`~lightning_regkit.SeedEverything`, so a ``train_fn``
    of a sweep that varies sources writes ``SeedEverything(**seeds)``. ``sweep_seed`` is the sweep's
    seed this run belongs to and ``vary`` the sources that the sweep varies (not part of the
    mapping).

    Example:
        >>> seeds = SourceSeeds.for_sweep(3, vary="data", fixed=0)
        >>> seeds.data == source_seed(3, "data"), seeds.init == source_seed(0, "init")
        (True, True)
        >>> sorted(seeds), seeds.seed, seeds.sweep_seed, seeds.vary
        (['data', 'init', 'seed', 'train'], 0, 3, ('data',))
    """

    seed: int
    init: int
    data: int
    train: int
    sweep_seed: int | None = None
    vary: tuple[str, ...] = ()

    _KEYS = SEED_KEYS

    def __post_init__(self) -> None:
        for name in self._KEYS:
            _check_seed("SourceSeeds", name, getattr(self, name))

    @classmethod
    def for_sweep(cls, sweep_seed: int, vary: Any, fixed: int = 0) -> SourceSeeds:
        """The seeds of the run of ``sweep_seed`` in a sweep that varies ``vary`` and holds the rest.

        A varied source gets ``source_seed(sweep_seed, source)``, a fixed one
        ``source_seed(fixed, source)``. ``seed`` is ``sweep_seed`` when every source varies (then
        the run equals ``SeedEverything(sweep_seed)`` with every source derived), else ``fixed``.

        Args:
            sweep_seed: The sweep's seed of this run.
            vary: The sources that vary (see :func:`parse_vary`).
            fixed: The seed the fixed sources derive from.

        Returns:
            The run's seeds.

        Example:
            >>> all_vary = SourceSeeds.for_sweep(5, "all")
            >>> all_vary.seed, all_vary.train == source_seed(5, "train")
            (5, True)
        """
        sweep_seed = _check_seed("SourceSeeds.for_sweep", "sweep_seed", sweep_seed)
        fixed = _check_seed("SourceSeeds.for_sweep", "fixed", fixed)
        varied = parse_vary(vary, owner="SourceSeeds.for_sweep")
        seeds = {s: source_seed(sweep_seed if s in varied else fixed, s) for s in SOURCES}
        base = sweep_seed if varied == SOURCES else fixed
        return cls(base, seeds["init"], seeds["data"], seeds["train"], sweep_seed, varied)

    def __getitem__(self, key: str) -> int:
        if key not in self._KEYS:
            raise KeyError(key)
        return int(getattr(self, key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)

    def as_dict(self) -> dict[str, int]:
        """``{"seed": ..., "init": ..., "data": ..., "train": ...}`` as a plain dict.

        Example:
            >>> SourceSeeds(1, 2, 3, 4).as_dict()
            {'seed': 1, 'init': 2, 'data': 3, 'train': 4}
        """
        return {k: self[k] for k in self._KEYS}
