"""Let ``torch.load(weights_only=True)`` read the kit's own objects (registered once, at import).

torch >= 2.6 loads checkpoints with ``weights_only=True`` by default, and so do Lightning's
``LightningModule.load_from_checkpoint`` and ``Trainer.fit(ckpt_path=...)``. That unpickler
builds only tensors, plain containers and the classes in torch's registry of safe globals, so a
module that called ``save_hyperparameters()`` with a schedule (``l2=Linear(1e-2, 1e-3)``) or a
penalty (``L2(1e-4)``) among its arguments wrote a checkpoint it could not read
(``UnpicklingError: Unsupported global``).

:func:`register_safe_globals` adds the kit's plain-data classes to that registry: every
:class:`~lightning_regkit.schedules.Schedule` and :class:`~lightning_regkit.penalties.Penalty`
class defined in the kit, the criteria GL, PQ and UP, :class:`RegkitStoppingReason` (and the kit's
``EarlyStoppingReason`` under Lightning < 2.6, which has none of its own). For such a
class the unpickler creates the object and sets its attributes; no code of the file runs. What the
objects hold must itself be loadable: a ``FromProgress(fn)`` or a penalty whose strength is a
function ``f(t, total)`` holds that function, which stays refused until the user registers it
(``torch.serialization.add_safe_globals([fn])``). Subclasses written by users are not registered
either (the registry matches exact classes).

Example:
    >>> import io, torch
    >>> from lightning_regkit.schedules import Linear
    >>> buffer = io.BytesIO()
    >>> torch.save({"l2": Linear(1e-2, 1e-3)}, buffer)
    >>> _ = buffer.seek(0)
    >>> torch.load(buffer, weights_only=True)["l2"]
    Linear(start=0.01, end=0.001)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lightning_regkit import criteria, penalties, schedules
from lightning_regkit._compat import EarlyStoppingReason
from lightning_regkit.callbacks.early_stopping import RegkitStoppingReason

__all__ = ["kit_safe_globals", "register_safe_globals"]


def _kit_subclasses(base: type) -> list[type]:
    """``base`` and its subclasses (at any depth) defined in the kit, in a stable order."""
    found: list[type] = []
    todo = [base]
    while todo:
        cls = todo.pop(0)
        if cls not in found and cls.__module__.split(".")[0] == "lightning_regkit":
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def kit_safe_globals() -> list[Callable[..., Any]]:
    """The kit's classes that may appear in hyperparameters and hold plain data only.

    Example:
        >>> from lightning_regkit.penalties import L1, L2, MaxNorm
        >>> {L1, L2, MaxNorm} <= set(kit_safe_globals())
        True
    """
    return [
        *_kit_subclasses(schedules.Schedule),
        *_kit_subclasses(penalties.Penalty),
        criteria.GL,
        criteria.PQ,
        criteria.UP,
        RegkitStoppingReason,
        # the kit's own EarlyStoppingReason, carried for Lightning < 2.6 (Lightning's from 2.6 on)
        *([EarlyStoppingReason] if EarlyStoppingReason.__module__.startswith("lightning_regkit.") else []),
    ]


def register_safe_globals() -> None:
    """Add :func:`kit_safe_globals` to torch's registry of safe globals (idempotent).

    Called once when ``lightning_regkit`` is imported; call it again after defining a kit
    class later (it registers only classes that exist when it runs).

    Example:
        >>> import torch
        >>> from lightning_regkit.schedules import Cosine
        >>> register_safe_globals()
        >>> Cosine in torch.serialization.get_safe_globals()
        True
    """
    registered = set(torch.serialization.get_safe_globals())
    new: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        cls for cls in kit_safe_globals() if cls not in registered
    ]
    if new:
        torch.serialization.add_safe_globals(new)


register_safe_globals()
