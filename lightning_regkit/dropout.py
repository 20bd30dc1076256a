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

Changing a drop probability while training, without recompiling: see :class:`DropoutDriver`.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.MultiheadAttention(4, 2, dropout=0.2))
    >>> [(t.name, t.kind, t.attribute, t.get()) for t in find_dropout_modules(net)]
    [('1', 'dropout', 'p', 0.1), ('2', 'attention', 'dropout', 0.2)]
"""

from __future__ import annotations

import fnmatch
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "KINDS",
    "TENSOR_P_TRACEABLE",
    "DropTarget",
    "DropoutDriver",
    "describe_dropout_modules",
    "find_dropout_modules",
    "holds_tensor_p",
    "tensor_p_dropout",
    "uses_torch_compile",
]

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


def _is_number(value: object) -> bool:
    if isinstance(value, Tensor):
        return value.dim() == 0 and value.is_floating_point()
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        TypeError: If a selected module's attribute is missing or not a real number (a 0-d
            floating-point tensor counts as one, as :class:`DropoutDriver` leaves while driving).

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
        if not _is_number(value):
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


# ----------------------------------------------------------------------------- changing p without recompiling
#
# torch.compile (Dynamo) bakes a float drop probability into the graph as a constant and guards on
# its value: every new p recompiles, and after ``torch._dynamo.config.recompile_limit`` (8; named
# ``cache_size_limit`` up to torch 2.6) new values the frame silently runs eagerly. (Torch 2.4 does
# not inline torch's own modules: it calls them unguarded, and AOT autograd bakes the first p in.)
# Torch's dropout functionals cannot take a tensor p in a graph either (``F.dropout`` checks
# ``p < 0.0`` in Python and the kernels take a Python float), so a driven module of one of torch's
# own classes gets its p as a 0-d float64 tensor, updated in place, and, only while Dynamo traces
# its forward, a TorchFunctionMode (pushed and popped by the module's forward hooks) routes its
# dropout call to tensor arithmetic that takes p as a graph input. Eagerly the hooks put the exact
# Python float back for the duration of the forward, so an eager forward runs torch's own kernels
# with the same float: bit-identical to plain dropout.
# Dynamo traces the mode's entry and exit from torch 2.6 on; torch 2.4 and 2.5 break the graph there
# and run the driven module eagerly under the mode (still no recompile for a new p):
# ``TENSOR_P_TRACEABLE`` says which, ``uses_torch_compile`` whether a model is compiled.

TENSOR_P_TRACEABLE: bool = torch.__version__ >= (2, 6)  # type: ignore[operator]
"""Whether a driven module's tensor-held p compiles into the surrounding graph (torch >= 2.6).

Older Dynamo cannot trace a ``TorchFunctionMode``'s entry and exit: the compiled graph breaks around
each driven module, which runs eagerly (with the same distribution); a new p still never recompiles.
"""


def uses_torch_compile(model: nn.Module) -> bool:
    """Whether ``model`` or one of its submodules runs under ``torch.compile``.

    True for a submodule returned by ``torch.compile(module)``, a module compiled in place with
    ``module.compile()``, and compiled methods kept on a module (``self.forward =
    torch.compile(self.forward)``, Lightning's handling of a compiled LightningModule).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
        >>> uses_torch_compile(net), uses_torch_compile(nn.Sequential(torch.compile(net)))
        (False, True)
    """
    for module in model.modules():
        if hasattr(module, "_orig_mod") or getattr(module, "_compiled_call_impl", None) is not None:
            return True
        if any(hasattr(value, "_torchdynamo_orig_callable") for value in vars(module).values()):
            return True
    return False


_ALPHA = 1.7580993408473766  # SELU's scale * alpha: ATen's alpha-dropout constant


def tensor_p_dropout(
    input: Tensor,
    p: Tensor,
    training: bool = True,
    inplace: bool = False,
    feature: bool = False,
    alpha: bool = False,
) -> Tensor:
    """Dropout with the drop probability in a 0-d tensor, in plain tensor arithmetic.

    Same distribution as ATen's dropout kernels (``feature``: one draw per channel, as
    ``Dropout1d/2d/3d``; ``alpha``: SELU-preserving, as ``AlphaDropout``), with ``p`` an input of
    the computation rather than a constant, so ``torch.compile`` traces it once for every value.
    The random draws differ from ATen's (as they do under ``torch.compile`` anyway). ``p`` must be
    in [0, 1); it is not checked here (a check would read the tensor's value).

    Example:
        >>> x = torch.ones(2, 1000)
        >>> y = tensor_p_dropout(x, torch.tensor(0.25, dtype=torch.float64))
        >>> sorted({round(v, 4) for v in y.unique().tolist()})
        [0.0, 1.3333]
        >>> tensor_p_dropout(x, torch.tensor(0.25), training=False) is x
        True
    """
    if not training:
        return input
    if feature and input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")
    p = p.to(device=input.device)
    keep = 1.0 - p
    shape = (*input.shape[:2], *([1] * (input.dim() - 2))) if feature else input.shape
    draw_dtype = input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32
    noise = (torch.rand(shape, dtype=draw_dtype, device=input.device) < keep).to(input.dtype)
    if alpha:
        # ATen: a = 1 / sqrt((alpha^2 p + 1)(1 - p)), b = (noise - 1) alpha a + alpha a p, out = x noise a + b
        a = torch.rsqrt((_ALPHA * _ALPHA * p + 1.0) * keep)  # 0-d tensors keep the input's dtype below
        out = input * (noise * a) + ((noise - 1.0) * (_ALPHA * a) + _ALPHA * a * p)
    else:
        out = input * (noise / keep)
    return input.copy_(out) if inplace else out


class _TensorP:
    """A tensor-held p passed as ``dropout_p`` to the copy of torch's attention functional.

    That code tests ``dropout_p > 0.0`` in Python, which a traced tensor cannot answer; the
    scheduler keeps p in [0, 1), and a dropout with p = 0 is the identity, so "yes" is always right.
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor

    def __gt__(self, other: object) -> bool:
        return True


def _attention_dropout(input: Tensor, p: Any = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    if isinstance(p, _TensorP):
        return tensor_p_dropout(input, p.tensor, training, inplace)
    return F.dropout(input, p, training, inplace)


def _attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: Any = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention``; with a tensor-held p, its reference maths (as documented)."""
    if not isinstance(dropout_p, _TensorP):
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
        )
    if enable_gqa:
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    factor = query.size(-1) ** -0.5 if scale is None else scale
    weights = query @ key.transpose(-2, -1) * factor
    if is_causal:
        causal = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
        weights = weights.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attn_mask, float("-inf"))
        else:
            weights = weights + attn_mask
    weights = torch.softmax(weights, dim=-1)
    return tensor_p_dropout(weights, dropout_p.tensor) @ value


def _never(*args: Any) -> bool:
    return False


def _copy_with(fn: Callable[..., Any], **replace: Any) -> Callable[..., Any] | None:
    """A copy of a torch functional whose global names in ``replace`` are ours (None if it has none).

    Torch itself is untouched: the copy has its own globals. Used for the attention functional,
    whose attention-dropout call sites (``dropout``, ``scaled_dot_product_attention``) take the
    tensor-held p, and whose ``has_torch_function`` check must not send the call back to the mode.
    """
    code = getattr(fn, "__code__", None)
    if code is None or not set(replace) <= set(code.co_names):
        return None
    namespace = dict(fn.__globals__)
    namespace.update(replace)
    # without the module's name Dynamo resolves the copy's globals in this namespace, not in the
    # module's (torch 2.5 would guard on the real functional there and fail)
    namespace.pop("__name__", None)
    copy = types.FunctionType(code, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


_MHA_COPY = _copy_with(
    F.multi_head_attention_forward,
    has_torch_function=_never,
    dropout=_attention_dropout,
    scaled_dot_product_attention=_attention,
)
_MHA_CODE = F.multi_head_attention_forward.__code__
_MHA_PARAMETERS = _MHA_CODE.co_varnames[: _MHA_CODE.co_argcount]


def _mha_forward_tensor_p(p: Tensor, kwargs: dict[str, Any]) -> Any:
    """``F.multi_head_attention_forward(**kwargs)`` with the attention dropout's p taken from ``p``.

    Registered with ``torch.compiler.allow_in_graph`` (Dynamo records it as one call, as it does
    torch's own functional; AOT autograd and Inductor trace through it).
    """
    assert _MHA_COPY is not None
    return _MHA_COPY(**kwargs, dropout_p=_TensorP(p))


_ALLOWED_IN_GRAPH = False


def _allow_in_graph() -> None:
    global _ALLOWED_IN_GRAPH
    if not _ALLOWED_IN_GRAPH:
        torch.compiler.allow_in_graph(_mha_forward_tensor_p)
        _ALLOWED_IN_GRAPH = True


def _dropout_spec(func: Any) -> tuple[bool, bool, bool, int] | None:
    """How to run one of torch's dropout functionals with a tensor p; None for other functions.

    ``(feature dropout, alpha dropout, default training, dimensions of an unbatched input that
    gets a batch dimension added, or -1)``.
    """
    if func is F.dropout:
        return False, False, True, -1
    if func is F.dropout1d:
        return True, False, True, 2
    if func is F.dropout2d:
        return True, False, True, -1
    if func is F.dropout3d:
        return True, False, True, 4
    if func is F.alpha_dropout:
        return False, True, False, -1
    if func is F.feature_alpha_dropout:
        return True, True, False, -1
    return None


_DROPOUT_PARAMETERS = ("input", "p", "training", "inplace")


class _TensorPMode(TorchFunctionMode):
    """Pushed only while Dynamo traces a driven module's forward: its dropout takes p as a graph input."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        spec = _dropout_spec(func)
        if spec is not None:
            feature, alpha, default_training, unbatched_dim = spec
            # equal lengths: Dynamo of torch 2.6 cannot trace a zip of sequences of different lengths
            bound = dict(zip(_DROPOUT_PARAMETERS[: len(args)], args, strict=True))
            bound.update(kwargs)
            p = bound.get("p", 0.5)
            if isinstance(p, Tensor):
                x = bound["input"]
                training = bound.get("training", default_training)
                inplace = bound.get("inplace", False)
                if func is F.dropout1d and x.dim() not in (2, 3):
                    raise RuntimeError(f"dropout1d: Expected 2D or 3D input, but received a {x.dim()}D input")
                unbatched = x.dim() == unbatched_dim
                if unbatched:
                    x = x.unsqueeze_(0) if inplace else x.unsqueeze(0)
                out = tensor_p_dropout(x, p, training, inplace, feature, alpha)
                if unbatched:
                    out = out.squeeze_(0) if inplace else out.squeeze(0)
                return out
        elif func is F.multi_head_attention_forward and _MHA_COPY is not None:
            bound = dict(zip(_MHA_PARAMETERS[: len(args)], args, strict=True))
            bound.update(kwargs)
            p = bound.get("dropout_p")
            if isinstance(p, Tensor):
                del bound["dropout_p"]
                if not bound.get("training", True):
                    return func(**bound, dropout_p=0.0)
                return _mha_forward_tensor_p(p, bound)
        return func(*args, **kwargs)


_TENSOR_P_TYPES: tuple[type[nn.Module], ...] = (*_DROPOUT_TYPES, nn.MultiheadAttention)


def holds_tensor_p(module: nn.Module) -> bool:
    """Whether :class:`DropoutDriver` gives ``module`` a tensor-held p (compile-safe).

    True for modules of exactly torch's own classes (``nn.Dropout``, ``Dropout1d/2d/3d``,
    ``AlphaDropout``, ``FeatureAlphaDropout``, ``nn.MultiheadAttention``), whose forward passes
    p straight to torch's functionals; a subclass may read p in its own way and keeps a float.

    Example:
        >>> holds_tensor_p(nn.Dropout(0.1)), holds_tensor_p(nn.Linear(2, 2))
        (True, False)
    """
    if type(module) is nn.MultiheadAttention:
        return _MHA_COPY is not None
    return type(module) in _TENSOR_P_TYPES


class DropoutDriver:
    """Changes the drop probability of one module while training, eagerly and under ``torch.compile``.

    :meth:`attach` starts driving the module, :meth:`set` writes a new p, :meth:`detach` stops
    and writes a plain number back (by default the original value, of its original type).

    For modules of torch's own dropout classes and ``nn.MultiheadAttention``
    (:func:`holds_tensor_p`), the attribute holds, between forwards, a 0-d float64 CPU tensor
    updated in place: it reads like a number (``float(module.p)``, comparisons, arithmetic,
    formatting), and a compiled graph takes it as an input, so a new p never recompiles. Forward
    hooks give the module the exact Python float while it runs eagerly (bit-identical to plain
    dropout, same random draws), and, while Dynamo traces it, route its dropout to
    :func:`tensor_p_dropout` (attention dropout: the reference attention maths). Before torch
    2.6 (:data:`TENSOR_P_TRACEABLE` is False) Dynamo breaks the compiled graph around such a
    module and runs it eagerly instead; a new p still never recompiles. Other modules
    (stochastic depth, registered custom types, subclasses) get a Python float: eager use is
    unchanged, and a compiled graph recompiles when their p changes.

    Args:
        target: The module and attribute to drive (from :func:`find_dropout_modules`).

    Example:
        >>> drop = nn.Dropout(0.1)
        >>> driver = DropoutDriver(DropTarget("drop", drop, "p", "dropout"))
        >>> driver.attach()
        >>> driver.set(0.25)
        >>> float(drop.p), drop.p == 0.25
        (0.25, tensor(True))
        >>> driver.detach()
        >>> drop.p
        0.1
    """

    def __init__(self, target: DropTarget) -> None:
        self.target = target
        self.original: Any = getattr(target.module, target.attribute)
        self.value = float(self.original)
        self.tensor: Tensor | None = None
        self._handles: list[Any] = []
        self._mode: _TensorPMode | None = None

    def attach(self) -> None:
        """Start driving: a tensor-held p and forward hooks where the module allows it."""
        module, attribute = self.target.module, self.target.attribute
        if not holds_tensor_p(module):
            return
        _allow_in_graph()
        self.tensor = torch.tensor(self.value, dtype=torch.float64)
        self._mode = _TensorPMode()
        object.__setattr__(module, attribute, self.tensor)
        self._handles = [
            module.register_forward_pre_hook(self._before_forward),
            module.register_forward_hook(self._after_forward, always_call=True),
        ]

    def set(self, value: float) -> None:
        """Write a new drop probability (in place into the tensor, when there is one)."""
        self.value = float(value)
        if self.tensor is not None:
            self.tensor.fill_(self.value)
        else:
            # object.__setattr__ skips nn.Module's parameter/buffer/submodule checks (the attribute
            # is a plain number) and still honours properties.
            object.__setattr__(self.target.module, self.target.attribute, self.value)

    def detach(self, value: Any = None) -> None:
        """Stop driving: remove the hooks and write back a plain number.

        ``value``: what to write; by default the original value (the very object, so its type too).
        """
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.tensor = None
        object.__setattr__(
            self.target.module, self.target.attribute, self.original if value is None else value
        )

    # The hooks run in every forward: eagerly they lend the module the exact float; while Dynamo
    # traces, ``torch.compiler.is_compiling()`` is a constant True and only the mode is traced.
    def _before_forward(self, module: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling():
            assert self._mode is not None
            self._mode.__enter__()
        else:
            object.__setattr__(module, self.target.attribute, self.value)

    def _after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.compiler.is_compiling():
            assert self._mode is not None
            self._mode.__exit__(None, None, None)
        elif self.tensor is not None:
            object.__setattr__(module, self.target.attribute, self.tensor)
