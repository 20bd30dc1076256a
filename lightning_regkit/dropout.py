"""Finding the dropout-like modules of a model and the attribute that holds their drop probability.

Pure torch; no Lightning import. Three *kinds* are known:

* ``"dropout"``: :class:`torch.nn.Dropout`, ``Dropout1d``, ``Dropout2d``, ``Dropout3d``,
  ``AlphaDropout``, ``FeatureAlphaDropout`` (and their subclasses), attribute ``p``.
* ``"attention"``: :class:`torch.nn.MultiheadAttention`, whose attention dropout is the float
  attribute ``dropout`` (passed as ``dropout_p`` to ``F.multi_head_attention_forward``). A
  ``TransformerEncoderLayer``/``DecoderLayer`` holds such attention modules plus ``nn.Dropout``
  modules, so both kinds are needed to drive it completely.
* ``"stochastic_depth"``: modules whose class is named ``DropPath`` (timm, attribute
  ``drop_prob``) or ``StochasticDepth`` (torchvision, attribute ``p``); matched by class name,
  so neither package is imported.

Any other module type is driven by registering it with the name of its attribute
(``custom={MyDrop: "rate"}``; the key may also be the class name or ``"module.ClassName"``).

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.MultiheadAttention(4, 2, dropout=0.2))
    >>> [(t.name, t.kind, t.attribute, t.get()) for t in find_dropout_modules(net)]
    [('1', 'dropout', 'p', 0.1), ('2', 'attention', 'dropout', 0.2)]
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

__all__ = ["KINDS", "DropTarget", "describe_dropout_modules", "find_dropout_modules"]

KINDS = ("dropout", "attention", "stochastic_depth")
"""The kinds of dropout-like module known without registration."""

DEFAULT_KINDS = ("dropout", "attention")
"""The kinds selected when nothing else is asked for (stochastic depth is opt-in)."""

_DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_STOCHASTIC_DEPTH_NAMES = {"DropPath": "drop_prob", "StochasticDepth": "p"}

TypeKey = type | str


@dataclass(frozen=True)
class DropTarget:
    """One module and the attribute holding its drop probability.

    Example:
        >>> from torch import nn
        >>> target = DropTarget("drop", nn.Dropout(0.1), "p", "dropout")
        >>> target.set(0.3)
        >>> target.get(), target.module.p
        (0.3, 0.3)
    """

    name: str
    module: nn.Module
    attribute: str
    kind: str

    def get(self) -> float:
        """The current drop probability."""
        return float(getattr(self.module, self.attribute))

    def set(self, p: float) -> None:
        """Write a new drop probability."""
        setattr(self.module, self.attribute, p)


def _type_matches(module: nn.Module, key: TypeKey) -> bool:
    if isinstance(key, type):
        return isinstance(module, key)
    cls = type(module)
    return key in (cls.__name__, cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}")


def classify(module: nn.Module, custom: Mapping[TypeKey, str] | None = None) -> tuple[str, str] | None:
    """The ``(kind, attribute)`` of a dropout-like module, or ``None``.

    Registered ``custom`` types come first and have kind ``"custom"``.

    Example:
        >>> from torch import nn
        >>> classify(nn.Dropout2d()), classify(nn.Linear(2, 2))
        (('dropout', 'p'), None)
    """
    for key, attribute in (custom or {}).items():
        if _type_matches(module, key):
            return "custom", attribute
    if isinstance(module, _DROPOUT_TYPES):
        return "dropout", "p"
    if isinstance(module, nn.MultiheadAttention):
        return "attention", "dropout"
    sd_attribute = _STOCHASTIC_DEPTH_NAMES.get(type(module).__name__)
    if sd_attribute is not None and hasattr(module, sd_attribute):
        return "stochastic_depth", sd_attribute
    return None


def _selected(target: DropTarget, selectors: Sequence[TypeKey]) -> bool:
    if target.kind == "custom":
        return True
    return any(
        sel == target.kind if isinstance(sel, str) and sel in KINDS else _type_matches(target.module, sel)
        for sel in selectors
    )


def _glob_any(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def find_dropout_modules(
    model: nn.Module,
    modules: Sequence[TypeKey] = DEFAULT_KINDS,
    names: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    custom: Mapping[TypeKey, str] | None = None,
) -> list[DropTarget]:
    """The dropout-like modules of ``model`` that match a selection, in ``named_modules`` order.

    Args:
        model: The model to search.
        modules: What to select: kind names (``"dropout"``, ``"attention"``,
            ``"stochastic_depth"``), module types (``nn.Dropout2d``) or class names
            (``"Dropout2d"``, ``"mypkg.layers.DropPath"``).
        names: Glob patterns (:func:`fnmatch.fnmatchcase`) over qualified module names; a module
            is kept when it matches one of them. ``None`` keeps every name.
        exclude: Glob patterns of qualified names to leave out.
        custom: Extra module types (or class names) and the attribute holding their drop
            probability; they are always selected (subject to ``names``/``exclude``).

    Returns:
        One :class:`DropTarget` per selected module.

    Raises:
        TypeError: If a selected module's attribute is missing or not a real number.

    Example:
        >>> from torch import nn
        >>> enc = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.1)
        >>> [t.name for t in find_dropout_modules(enc)]
        ['self_attn', 'dropout', 'dropout1', 'dropout2']
        >>> [t.name for t in find_dropout_modules(enc, modules=["attention"])]
        ['self_attn']
        >>> [t.name for t in find_dropout_modules(enc, names=["dropout*"], exclude=["dropout"])]
        ['dropout1', 'dropout2']
    """
    targets = []
    for name, module in model.named_modules():
        found = classify(module, custom)
        if found is None:
            continue
        kind, attribute = found
        target = DropTarget(name, module, attribute, kind)
        if not _selected(target, modules):
            continue
        if names is not None and not _glob_any(name, names):
            continue
        if exclude is not None and _glob_any(name, exclude):
            continue
        value = getattr(module, attribute, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"find_dropout_modules: module {name!r} ({type(module).__name__}) must have a real-number "
                f"attribute {attribute!r}, got {value!r}"
            )
        targets.append(target)
    return targets


def describe_dropout_modules(
    model: nn.Module, custom: Mapping[TypeKey, str] | None = None, limit: int = 30
) -> str:
    """A one-line summary of the model's dropout-like modules (or, if none, of its modules).

    Used in error messages when a selection matches nothing.

    Example:
        >>> from torch import nn
        >>> describe_dropout_modules(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
        "dropout-like modules: '1' (Dropout, kind 'dropout', p=0.5)"
        >>> describe_dropout_modules(nn.Sequential(nn.Linear(2, 2)))
        "no dropout-like module; modules: '0' (Linear)"
    """
    found = []
    for name, module in model.named_modules():
        kind_attr = classify(module, custom)
        if kind_attr is not None:
            kind, attribute = kind_attr
            value = getattr(module, attribute, None)
            found.append(f"{name!r} ({type(module).__name__}, kind {kind!r}, {attribute}={value!r})")
    if found:
        more = f", ... ({len(found) - limit} more)" if len(found) > limit else ""
        return "dropout-like modules: " + ", ".join(found[:limit]) + more
    others = [f"{name!r} ({type(module).__name__})" for name, module in model.named_modules() if name]
    more = f", ... ({len(others) - limit} more)" if len(others) > limit else ""
    return "no dropout-like module; modules: " + (", ".join(others[:limit]) or "none") + more
