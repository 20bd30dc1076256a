"""Weight penalties: parameter selection, L1/L2 values and gradients, proximal L1 and max-norm.

Pure torch; no Lightning import. Conventions (as Keras): ``L1(l)`` adds ``l * sum(|w|)`` to the
loss and ``L2(l)`` adds ``l * sum(w**2)`` (no 1/2, so ``L2(l)`` with plain SGD equals
``weight_decay=2 * l``). Gradients are applied with the multi-tensor ``torch._foreach_*``
kernels, as ``torch.optim`` does, on parameter lists resolved once by :func:`resolve_penalties`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 3.0]]))
    >>> plan = resolve_penalties([L1(0.5), L2(0.1)], net)
    >>> plan.names[0]  # biases and LayerNorm weights are excluded by default
    ['0.weight']
    >>> {k: round(float(v), 4) for k, v in plan.values(t=0).items()}
    {'l1': 3.0, 'l2': 1.4}
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_regkit.compiled import CompiledGrad
from lightning_regkit.schedules import Schedule, ScheduleLike, as_schedule

__all__ = [
    "DEFAULT_EXCLUDE",
    "L1",
    "L2",
    "MaxNorm",
    "Penalty",
    "PenaltyPlan",
    "add_l1_grad_",
    "add_l2_grad_",
    "l1_value",
    "l2_value",
    "make_penalty",
    "max_norm_",
    "resolve_penalties",
    "select_parameters",
    "soft_threshold_",
]

#: Patterns excluded when ``exclude`` is not given (plus every tensor with ``ndim <= 1``): biases and the
#: parameters of normalization layers (LayerNorm, BatchNorm*, GroupNorm, InstanceNorm*, RMSNorm, ...).
#: Embeddings are penalized; add ``"Embedding"`` to exclude them.
DEFAULT_EXCLUDE: tuple[str, ...] = ("*.bias", "*Norm", "*Norm1d", "*Norm2d", "*Norm3d")

# L1 gradients and the values work in groups of at most this many elements (1 MiB in float32); a larger
# tensor is processed in flat chunks of this size. Temporaries and the reused scratch buffer stay this small.
_L1_GROUP_ELEMENTS = 1 << 18
_FAST_VALUE_DTYPES = (torch.float32, torch.float64)
_LOW_DTYPES = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- pure functions
def _sum(values: Sequence[Tensor]) -> Tensor:
    if len({v.dtype for v in values}) > 1:
        values = [v.float() for v in values]
    return torch.stack(list(values)).sum()


def l1_value(params: Sequence[Tensor]) -> Tensor:
    """``sum(|w|)`` over all tensors, without autograd (grouped passes through a reused buffer).

    Example:
        >>> l1_value([torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])])
        tensor(6.)
    """
    if not params:
        return torch.zeros(())
    return _Scratch(list(params)).values(l1=True, l2=False)[0]


def l2_value(params: Sequence[Tensor]) -> Tensor:
    """``sum(w**2)`` over all tensors, without autograd (grouped passes through a reused buffer).

    Example:
        >>> l2_value([torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])])
        tensor(14.)
    """
    if not params:
        return torch.zeros(())
    return _Scratch(list(params)).values(l1=False, l2=True)[1]


def add_l2_grad_(grads: Sequence[Tensor], params: Sequence[Tensor], strength: float) -> None:
    """``g += 2 * strength * w`` in place: the gradient of ``strength * sum(w**2)``.

    Example:
        >>> w, g = torch.tensor([1.0, -2.0]), torch.zeros(2)
        >>> add_l2_grad_([g], [w], 0.5)
        >>> g
        tensor([ 1., -2.])
    """
    with torch.no_grad():
        torch._foreach_add_(list(grads), list(params), alpha=2.0 * strength)


def _groups(sizes: Sequence[int], limit: int = _L1_GROUP_ELEMENTS) -> list[tuple[int, int]]:
    """Split indices ``0..len(sizes)`` into contiguous ranges of at most ``limit`` elements."""
    out: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, n in enumerate(sizes):
        if total and total + n > limit:
            out.append((start, i))
            start, total = i, 0
        total += n
    if start < len(sizes):
        out.append((start, len(sizes)))
    return out


class _Scratch:
    """Grouped passes over one fixed list of tensors, with a small work buffer reused every call.

    ``groups`` are index ranges of tensors sharing a dtype and device, of at most
    :data:`_L1_GROUP_ELEMENTS` elements in all, or a single larger tensor, which is processed in flat
    chunks of that size. Temporaries therefore never exceed one group: the foreach sign of a group of
    small tensors is allocated and freed each call (the allocator hands the same memory back), and the
    chunks of a large tensor and the values use a buffer of :data:`_L1_GROUP_ELEMENTS` elements per
    dtype and device, allocated on first use. On CPU, fresh large temporaries cost page faults that
    outweigh the arithmetic, and a group that fits the cache keeps ``w`` and ``g`` there between the
    operations on it. L2 alone needs no temporary and runs as one call over the whole list.
    """

    def __init__(
        self, params: list[Tensor], groups: Sequence[tuple[int, int]] | None = None, compiled: bool = False
    ) -> None:
        self.params = params
        self.compiled = compiled
        self._kernels: list[tuple[int, int, CompiledGrad]] | None = None
        self._strides: list[tuple[int, ...]] = []
        self._fallbacks: dict[tuple[int, ...], _Scratch] = {}  # foreach passes for runs that did not compile
        if groups is None:
            keys = [(p.dtype, p.device) for p in params]
            groups = [
                r
                for a, b in _runs(keys)
                for r in ((a + x, a + y) for x, y in _groups([p.numel() for p in params[a:b]]))
            ]
        self.groups = list(groups)
        self._buffers: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        self._views: dict[int, tuple[Tensor, list[Tensor], Tensor]] = {}  # group -> (buffer, views, span)

    def _buffer(self, like: Tensor) -> Tensor:
        key = (like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(_L1_GROUP_ELEMENTS, dtype=like.dtype, device=like.device)
        return buf

    def _chunked(self, a: int, b: int, grads: Sequence[Tensor]) -> bool:
        """Whether group ``a:b`` is one large tensor that, with its gradient, splits into flat chunks."""
        p, g = self.params[a], grads[a]
        return (
            b - a == 1
            and p.numel() > _L1_GROUP_ELEMENTS
            and p.dtype in _FAST_VALUE_DTYPES  # bf16/fp16 keep torch's whole-tensor rounding, bit for bit
            and p.is_contiguous()
            and g.is_contiguous()
            and g.dtype == p.dtype
        )

    def add_grads_(self, grads: list[Tensor], ops: Sequence[tuple[str, float]]) -> None:
        """Apply ``ops`` in order per group: ``("l1", s)`` adds ``s * sign(w)``, ``("l2", s)`` ``2s * w``.

        Per element the operations run in the given order, so the result is bit-identical to applying each
        op to the whole list in turn; the sign is computed once per group and shared by the L1 ops. With
        ``compiled=True`` an L1 bundle runs as one compiled call instead (equal to float rounding).
        """
        ps = self.params
        if self.compiled and any(p.is_complex() for p in ps):
            self.compiled = False  # the compiled kernel is for real dtypes
        if self.compiled and any(kind == "l1" for kind, _ in ops) and self._add_compiled_(grads, ops):
            return
        with torch.no_grad():
            if not any(kind == "l1" for kind, _ in ops):  # L2 alone: no temporary, one call over the list
                for _, strength in ops:
                    torch._foreach_add_(grads, ps, alpha=2.0 * strength)
                return
            for a, b in self.groups:
                if self._chunked(a, b, grads):
                    p, buf = ps[a].detach().view(-1), self._buffer(ps[a])
                    for pc, gc in zip(
                        p.split(_L1_GROUP_ELEMENTS), grads[a].view(-1).split(_L1_GROUP_ELEMENTS), strict=True
                    ):
                        sign = torch.sign(pc, out=buf[: pc.numel()])
                        for kind, strength in ops:
                            if kind == "l1":
                                gc.add_(sign, alpha=strength)
                            else:
                                gc.add_(pc, alpha=2.0 * strength)
                    continue
                gs, pp = grads[a:b], ps[a:b]
                # sgn(w) = w / |w| for complex tensors: the gradient of |w| autograd gives, sign(w) for real
                signs = [torch.sgn(p) for p in pp] if pp[0].is_complex() else torch._foreach_sign(pp)
                for kind, strength in ops:
                    if kind == "l1":
                        torch._foreach_add_(gs, signs, alpha=strength)
                    else:
                        torch._foreach_add_(gs, pp, alpha=2.0 * strength)
                del signs  # freed before the next group allocates its own: the allocator reuses the memory

    def _add_compiled_(self, grads: list[Tensor], ops: Sequence[tuple[str, float]]) -> bool:
        """One compiled kernel per dtype/device run (see :mod:`lightning_regkit.compiled`); False: not run."""
        if self._kernels is None:
            keys = [(p.dtype, p.device) for p in self.params]
            self._kernels = [(a, b, CompiledGrad(self.params[a:b])) for a, b in _runs(keys)]
            self._strides = [p.stride() for p in self.params]
        # the kernels are compiled for the parameters' layout (torch keeps a grad's dtype equal to its
        # parameter's); gradients with other strides, e.g. assigned by hand, take the foreach kernels
        if any(g.stride() != s for g, s in zip(grads, self._strides, strict=True)):
            return False
        done = [kernel(grads[a:b], ops) for a, b, kernel in self._kernels]
        if all(done):
            return True
        if any(done):  # a run compiled and one did not: finish the others with the foreach kernels
            rest = tuple(
                i for (a, b, _), ok in zip(self._kernels, done, strict=True) if not ok for i in range(a, b)
            )
            if rest not in self._fallbacks:  # a compile failure is final: built once, reused every step
                self._fallbacks[rest] = _Scratch([self.params[i] for i in rest])
            self._fallbacks[rest].add_grads_([grads[i] for i in rest], ops)
            return True
        self.compiled = False  # nothing compiles here: stay on the foreach kernels
        return False

    def values(self, l1: bool, l2: bool) -> tuple[Tensor, Tensor]:
        """``(sum(|w|), sum(w**2))`` (either is 0 when not asked for).

        With L1, one grouped pass: ``|w|`` into the buffer, its sum, and its dot with itself for L2
        (``|w| * |w| == w * w`` exactly); the sums are more accurate than ``_foreach_norm(ps, 1)``. L2
        alone (and low-precision dtypes) use the multi-tensor ``_foreach_powsum``/``_foreach_norm``.
        """
        ps = self.params
        if not l1 or any(ps[a].dtype not in _FAST_VALUE_DTYPES for a, _ in self.groups):
            zero = torch.zeros(())
            return (_l1_foreach(ps) if l1 else zero, _l2_foreach(ps) if l2 else zero)
        ones: list[Tensor] = []
        twos: list[Tensor] = []
        with torch.no_grad():
            for a, b in self.groups:
                buf = self._buffer(ps[a])
                flats: Iterable[Tensor]
                if (
                    b - a == 1 and ps[a].numel() > _L1_GROUP_ELEMENTS
                ):  # one tensor; lazily: each chunk is summed first
                    flats = (
                        torch.abs(pc, out=buf[: pc.numel()])
                        for pc in ps[a].detach().reshape(-1).split(_L1_GROUP_ELEMENTS)
                    )
                else:
                    cached = self._views.get(a)
                    if cached is None or cached[0] is not buf:  # views of the buffer, made once
                        views, off = [], 0
                        for p in ps[a:b]:
                            views.append(buf[off : off + p.numel()].view(p.shape))
                            off += p.numel()
                        cached = self._views[a] = (buf, views, buf[:off])
                    _, views, span = cached
                    torch._foreach_copy_(views, ps[a:b])
                    flats = [span.abs_()]
                for flat in flats:
                    ones.append(flat.sum())
                    if l2:
                        twos.append(torch.dot(flat, flat))
        return _sum(ones), (_sum(twos) if twos else torch.zeros(()))


def _runs(keys: Sequence[object]) -> list[tuple[int, int]]:
    """Maximal index ranges of equal consecutive keys."""
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            out.append((start, i))
            start = i
    return out


def _norms(params: Sequence[Tensor], order: int) -> list[Tensor]:
    """``||w||_order`` per tensor, with autograd, in float32 at least (float16 sums overflow at 65504)."""
    ps = list(params)
    if all(p.dtype in _FAST_VALUE_DTYPES for p in ps):
        return list(torch._foreach_norm(ps, order))
    return [  # mixed or low-precision dtypes: rare, and only on logging steps or in autograd mode
        torch.linalg.vector_norm(p, order, dtype=torch.float32 if p.dtype in _LOW_DTYPES else None)
        for p in ps
    ]


def _l1_foreach(params: Sequence[Tensor]) -> Tensor:
    with torch.no_grad():
        return _sum(_norms(params, 1))


def _l2_foreach(params: Sequence[Tensor]) -> Tensor:
    with torch.no_grad():
        ps = list(params)
        if all(p.dtype in _FAST_VALUE_DTYPES for p in ps) and hasattr(torch, "_foreach_powsum"):
            return _sum(torch._foreach_powsum(ps, 2))
        norms = _norms(ps, 2)
        return _sum(torch._foreach_mul(norms, norms))


def add_l1_grad_(
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    strength: float,
    groups: Sequence[tuple[int, int]] | None = None,
) -> None:
    """``g += strength * sign(w)`` in place: the (sub)gradient of ``strength * sum(|w|)`` (0 at w = 0).

    ``groups`` (ranges of indices of tensors sharing a dtype and device) bound the size of the temporary
    signs; by default they are computed from the tensor sizes (at most 2**18 elements, a larger float32 or
    float64 tensor in flat chunks of that size). :class:`PenaltyPlan` keeps groups and buffer between steps.

    Example:
        >>> w, g = torch.tensor([1.0, 0.0, -2.0]), torch.zeros(3)
        >>> add_l1_grad_([g], [w], 0.5)
        >>> g
        tensor([ 0.5000,  0.0000, -0.5000])
    """
    scratch = groups if isinstance(groups, _Scratch) else _Scratch(list(params), groups)
    scratch.add_grads_(list(grads), [("l1", strength)])


def soft_threshold_(params: Sequence[Tensor], threshold: float) -> None:
    """Proximal step of ``threshold * |w|``: ``w <- sign(w) * max(|w| - threshold, 0)``, in place.

    Computed as ``w - clamp(w, -threshold, threshold)``, so weights inside the band become exactly 0.

    Example:
        >>> w = torch.tensor([0.3, -0.05, -1.0])
        >>> soft_threshold_([w], 0.1)
        >>> w
        tensor([ 0.2000,  0.0000, -0.9000])
    """
    if threshold <= 0 or not params:
        return
    with torch.no_grad():
        ps = [p for p in params if not p.is_complex()]
        for z in (p for p in params if p.is_complex()):  # shrink the modulus: z * max(1 - t / |z|, 0)
            z.mul_((1 - threshold / z.abs().clamp_min(1e-30)).clamp_min(0))
        if not ps:
            return
        clipped = torch._foreach_clamp_max(ps, threshold)
        torch._foreach_clamp_min_(clipped, -threshold)
        torch._foreach_sub_(ps, clipped)


def max_norm_(params: Iterable[Tensor], max_norm: float, eps: float = 1e-12) -> None:
    """Rescale each unit's incoming weight vector (a slice along dim 0) to L2 norm ``<= max_norm``.

    For ``nn.Linear`` weights (out, in) each row is rescaled; for convolutions (out, in, k...) each
    output filter. Rows already within the bound are left bit-for-bit unchanged.

    Example:
        >>> w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
        >>> max_norm_([w], 1.0)
        >>> w
        tensor([[0.6000, 0.8000],
                [0.3000, 0.4000]])
    """
    with torch.no_grad():
        for p in params:
            rows = p.reshape(p.shape[0], -1) if p.ndim > 1 else p.reshape(-1, 1)
            norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
            scale = (max_norm / norms.clamp_min(eps)).clamp_max(1.0)
            p.mul_(scale.reshape((-1,) + (1,) * (p.ndim - 1)) if p.ndim > 1 else scale.reshape(-1))


# ----------------------------------------------------------------------------- selection
def _owner_types(model: nn.Module) -> dict[str, str]:
    """Map each parameter name to the class name of the module that directly owns it."""
    out: dict[str, str] = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            out.setdefault(f"{mod_name}.{p_name}" if mod_name else p_name, type(mod).__name__)
    return out


def _matches(name: str, owner_type: str, pattern: str) -> bool:
    return fnmatchcase(name, pattern) or fnmatchcase(owner_type, pattern)


def _no_match_error(owner: str, arg: str, pattern: str, names: Sequence[str]) -> ValueError:
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return ValueError(
        f"{owner}: {arg} pattern {pattern!r} selects no parameter; patterns are globs over parameter "
        f"names or module class names; parameters are: {shown}"
    )


def select_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    owner: str = "select_parameters",
) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs a penalty applies to.

    A pattern is a glob (``fnmatch``) matched against the full parameter name
    (``"encoder.layers.0.linear1.weight"``) or the class name of the module that owns the
    parameter (``"Linear"``, ``"*Norm"``). Frozen parameters (``requires_grad=False``) are never
    selected. ``include=None`` means every parameter; ``exclude=None`` means the defaults
    (:data:`DEFAULT_EXCLUDE` and every tensor with ``ndim <= 1``, as timm and nanoGPT do for weight
    decay); an explicit ``exclude`` list replaces the defaults (``exclude=[]`` excludes nothing).

    Raises:
        ValueError: when a given pattern matches no parameter, or nothing is selected.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 1))
        >>> [n for n, _ in select_parameters(net)]
        ['0.weight', '2.weight']
        >>> [n for n, _ in select_parameters(net, include=["2.*"], exclude=[])]
        ['2.weight', '2.bias']
    """
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    types = _owner_types(model)
    for arg, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns or ():
            if not any(_matches(n, types.get(n, ""), pattern) for n in names):
                raise _no_match_error(owner, arg, pattern, names)
    selected = [
        (n, p)
        for n, p in named
        if p.requires_grad and _name_selected(n, types.get(n, ""), p.ndim, include, exclude)
    ]
    if not selected:
        raise ValueError(
            f"{owner}: include={list(include) if include is not None else None}, exclude="
            f"{list(DEFAULT_EXCLUDE if exclude is None else exclude)} select no trainable parameter; "
            "parameters are: " + ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        )
    return selected


def _name_selected(
    name: str, owner_type: str, ndim: int, include: Sequence[str] | None, exclude: Sequence[str] | None
) -> bool:
    """Whether a parameter is selected by ``include``/``exclude`` (and the default exclusions)."""
    excl = DEFAULT_EXCLUDE if exclude is None else exclude
    return (
        (include is None or any(_matches(name, owner_type, pat) for pat in include))
        and not any(_matches(name, owner_type, pat) for pat in excl)
        and not (exclude is None and ndim <= 1)
    )


# ----------------------------------------------------------------------------- specifications
def _check_patterns(owner: str, name: str, value: Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{owner}: {name} must be a list of glob patterns or None, got {value!r}")
    for v in value:
        if not isinstance(v, str) or not v:
            raise TypeError(f"{owner}: {name} must hold non-empty strings, got {v!r}")
    return list(value)


def _check_schedule(owner: str, name: str, value: ScheduleLike) -> Schedule:
    if isinstance(value, bool):
        raise TypeError(
            f"{owner}: {name} must be a number, a Schedule or a callable f(t, total), got {value!r}"
        )
    if isinstance(value, (int, float)) and (not math.isfinite(value) or value < 0):
        raise ValueError(f"{owner}: {name} must be a finite number >= 0, got {value!r}")
    try:
        schedule = as_schedule(value, name=name)
    except TypeError as err:
        raise TypeError(f"{owner}: {err}") from None
    if not schedule.needs_total:  # probe what can be probed now; the adapters check every step
        _check_value(owner, name, schedule(0, None), 0)
    return schedule


def _check_value(owner: str, name: str, value: float, t: int) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: {name} schedule must yield a finite value >= 0, got {value!r} at t={t}")
    return value


class Penalty:
    """Base class of a penalty specification: a strength (number or schedule) and a parameter selection.

    Subclasses set ``name`` and say whether they add a loss term (``adds_gradient``), change the
    weights after each optimizer step (``projects``), or both.

    Example:
        >>> p = L2(1e-4, include=["encoder.*"])
        >>> p.name, p.strength_at(0), p.include, p.exclude
        ('l2', 0.0001, ['encoder.*'], None)
    """

    name: ClassVar[str] = "penalty"
    adds_gradient: ClassVar[bool] = True
    projects: ClassVar[bool] = False
    has_value: ClassVar[bool] = True

    def __init__(
        self,
        strength: ScheduleLike,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        owner = type(self).__name__
        self.strength = _check_schedule(owner, "strength", strength)
        self.include = _check_patterns(owner, "include", include)
        self.exclude = _check_patterns(owner, "exclude", exclude)

    def strength_at(self, t: int, total: int | None = None) -> float:
        """The strength at step ``t`` of ``total``; raises ``ValueError`` if it is negative or not finite."""
        return _check_value(type(self).__name__, "strength", self.strength(t, total), t)

    def value(self, params: Sequence[Tensor]) -> Tensor:
        """The unscaled penalty (e.g. ``sum(|w|)``) without autograd."""
        raise NotImplementedError

    def autograd_value(self, params: Sequence[Tensor]) -> Tensor:
        """The unscaled penalty with autograd (the exact path)."""
        raise NotImplementedError

    def add_grad_(self, grads: list[Tensor], params: list[Tensor], strength: float, groups: Any) -> None:
        """Add ``strength * d(value)/dw`` to ``grads`` in place."""
        raise NotImplementedError

    def project_(self, params: list[Tensor], lr: float, strength: float) -> None:
        """Change the weights after an optimizer step (proximal step, constraint)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class L1(Penalty):
    """``strength * sum(|w|)``; with ``proximal=True`` applied by soft-thresholding after each step.

    The subgradient form (default) adds ``strength * sign(w)`` to the gradient; it shrinks weights but
    rarely makes them exactly zero. The proximal form (ISTA) leaves the gradient alone and, after
    every optimizer step, sets ``w <- sign(w) * max(|w| - lr * strength, 0)`` with each param
    group's ``lr``: with plain SGD it converges to the Lasso solution, exact zeros included (for
    adaptive optimizers the group ``lr`` is not the effective step, so it is a heuristic there).

    Example:
        >>> L1(1e-5).value([torch.tensor([1.0, -2.0])])
        tensor(3.)
        >>> L1(0.1, proximal=True).adds_gradient
        False
    """

    name = "l1"

    def __init__(
        self,
        strength: ScheduleLike,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        proximal: bool = False,
    ) -> None:
        super().__init__(strength, include, exclude)
        if not isinstance(proximal, bool):
            raise TypeError(f"L1: proximal must be a bool, got {proximal!r}")
        self.proximal = proximal

    @property
    def adds_gradient(self) -> bool:  # type: ignore[override]
        """Subgradient L1 adds to the gradient; proximal L1 does not."""
        return not self.proximal

    @property
    def projects(self) -> bool:  # type: ignore[override]
        """Proximal L1 soft-thresholds after each step."""
        return self.proximal

    def value(self, params: Sequence[Tensor]) -> Tensor:
        """``sum(|w|)``."""
        return l1_value(params)

    def autograd_value(self, params: Sequence[Tensor]) -> Tensor:
        """``sum(|w|)`` with autograd."""
        return _sum(_norms(params, 1))

    def add_grad_(self, grads: list[Tensor], params: list[Tensor], strength: float, groups: Any) -> None:
        """``g += strength * sign(w)``."""
        add_l1_grad_(grads, params, strength, groups)

    def project_(self, params: list[Tensor], lr: float, strength: float) -> None:
        """Soft-threshold by ``lr * strength``."""
        soft_threshold_(params, lr * strength)


class L2(Penalty):
    """``strength * sum(w**2)`` (no 1/2): with plain SGD the same as ``weight_decay=2 * strength``.

    This is coupled L2 (in the loss), not AdamW's decoupled weight decay.

    Example:
        >>> L2(0.5).value([torch.tensor([1.0, -2.0])])
        tensor(5.)
    """

    name = "l2"

    def value(self, params: Sequence[Tensor]) -> Tensor:
        """``sum(w**2)``."""
        return l2_value(params)

    def autograd_value(self, params: Sequence[Tensor]) -> Tensor:
        """``sum(w**2)`` with autograd."""
        return _l2_autograd(params)

    def add_grad_(self, grads: list[Tensor], params: list[Tensor], strength: float, groups: Any) -> None:
        """``g += 2 * strength * w``."""
        add_l2_grad_(grads, params, strength)


def _l2_autograd(params: Sequence[Tensor]) -> Tensor:
    norms = _norms(params, 2)
    return _sum(torch._foreach_mul(norms, norms))


class MaxNorm(Penalty):
    """Max-norm constraint: after each step, each unit's incoming weight vector gets L2 norm ``<= max_norm``.

    As Srivastava et al. (2014) pair with dropout and Keras ``MaxNorm``: rows of ``nn.Linear``
    weights, output filters of convolutions (norm over every dim but 0). Adds nothing to the loss.

    Example:
        >>> MaxNorm(3.0, include=["*.weight"]).max_norm
        3.0
    """

    name = "maxnorm"
    adds_gradient = False
    projects = True
    has_value = False

    def __init__(
        self,
        max_norm: float,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)):
            raise TypeError(f"MaxNorm: max_norm must be a number, got {max_norm!r}")
        if not math.isfinite(max_norm) or max_norm <= 0:
            raise ValueError(f"MaxNorm: max_norm must be a finite number > 0, got {max_norm!r}")
        super().__init__(0.0, include, exclude)
        self.max_norm = float(max_norm)

    def value(self, params: Sequence[Tensor]) -> Tensor:
        """A constraint has no value: 0."""
        return torch.zeros(())

    def autograd_value(self, params: Sequence[Tensor]) -> Tensor:
        """A constraint has no value: 0."""
        return torch.zeros(())

    def project_(self, params: list[Tensor], lr: float, strength: float) -> None:
        """Rescale rows to norm ``<= max_norm``."""
        max_norm_(params, self.max_norm)


_KINDS: dict[str, type[Penalty]] = {"l1": L1, "l2": L2, "maxnorm": MaxNorm}


def make_penalty(spec: Penalty | Mapping[str, Any]) -> Penalty:
    """A :class:`Penalty` from itself or from a mapping ``{"name": "l1" | "l2" | "maxnorm", **kwargs}``.

    Example:
        >>> make_penalty({"name": "l2", "strength": 1e-4})
        L2(strength=Constant(constant=0.0001), include=None, exclude=None)
    """
    if isinstance(spec, Penalty):
        return spec
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        kind = kwargs.pop("name", None)
        if not isinstance(kind, str) or kind.lower() not in _KINDS:
            raise ValueError(f"make_penalty: unknown penalty name {kind!r}; allowed: {sorted(_KINDS)}")
        return _KINDS[kind.lower()](**kwargs)
    raise TypeError(
        f"make_penalty: a penalty must be an L1, L2 or MaxNorm, or a mapping with 'name', got {spec!r}"
    )


# ----------------------------------------------------------------------------- resolved plan
#: What a penalty acts on at one step, per penalty: its tensors, their grouped-pass helper, and the
#: tensors per optimizer param group (for the group's ``lr`` in proximal steps).
_Entry = tuple[list[Tensor], "_Scratch", list[tuple[Any, list[Tensor]]]]


class PenaltyPlan:
    """Penalties bound to one model; each call acts on the parameters that are live *now*.

    A penalty's *selection* is decided on parameter names (its ``include``/``exclude`` globs and the
    default exclusions), frozen parameters included. At every call the plan acts on the selected
    parameters that currently require grad and, when an optimizer is given, that this optimizer
    owns (any of its param groups, also one added with ``add_param_group`` mid-run). So layers
    built after the plan (``configure_model``), a backbone unfrozen mid-run and new param groups
    are penalized from the step they train, and a frozen weight is never touched. The live set is
    cached behind a cheap key (the optimizer's param-group sizes and its tensors' ``requires_grad``
    flags), so the hot path never loops over penalties' parameter lists in Python.

    ``keys`` are the names used for logging (``"l1"``, ``"l2"``; ``"l2_0"``, ``"l2_1"`` when a kind
    occurs several times). ``L1`` and ``L2`` penalties over the same parameters are applied in one
    grouped pass over groups of at most ``2**18`` elements (larger tensors in chunks of that size),
    so its temporaries and scratch buffer stay that small. Values are accumulated in float32 at
    least (a float16 model's penalty does not overflow).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> plan = resolve_penalties([L2(0.5)], net)
        >>> net.weight.grad = torch.zeros_like(net.weight)
        >>> plan.add_grads_(t=0)
        >>> torch.equal(net.weight.grad, net.weight.detach())
        True
        >>> net.weight.requires_grad_(False)  # frozen: never touched
        Parameter containing:
        ...
        >>> plan.names
        [[]]
    """

    def __init__(
        self, penalties: Sequence[Penalty | Mapping[str, Any]], model: nn.Module, compiled: bool = False
    ) -> None:
        self.penalties = [make_penalty(p) for p in penalties]
        self.model = model
        self.compiled = compiled
        counts: dict[str, int] = {}
        for p in self.penalties:
            counts[p.name] = counts.get(p.name, 0) + 1
        seen: dict[str, int] = {}
        self.keys: list[str] = []
        for p in self.penalties:
            i = seen.get(p.name, 0)
            seen[p.name] = i + 1
            self.keys.append(p.name if counts[p.name] == 1 else f"{p.name}_{i}")
        self._names: dict[int, str] = {}
        self._chosen: list[set[int]] = []
        self._live: dict[Any, tuple[Any, list[_Entry]]] = {}
        self._warned_sparse: set[str] = set()
        self._refresh()

    # -------------------------------------------------------------- selection
    def _refresh(self) -> None:
        """Re-read the model's parameter names (after a layer was built or a tensor replaced)."""
        named = list(self.model.named_parameters())
        types = _owner_types(self.model)
        self._names = {id(p): n for n, p in named}
        self._chosen = [
            {id(p) for n, p in named if _name_selected(n, types.get(n, ""), p.ndim, pen.include, pen.exclude)}
            for pen in self.penalties
        ]
        self._live.clear()

    def check_selection(self, owner: str | None = None) -> list[list[str]]:
        """Raise when a pattern matches no parameter name or a penalty selects none; frozen ones count.

        Call it once the model is complete (after ``configure_model``). Returns, per penalty, the
        names of the parameters it selects (frozen ones included).
        """
        self._refresh()
        named = list(self.model.named_parameters())
        names = [n for n, _ in named]
        types = _owner_types(self.model)
        out = []
        for pen, chosen in zip(self.penalties, self._chosen, strict=True):
            who = type(pen).__name__ if owner is None else f"{owner}: {type(pen).__name__}"
            for arg, patterns in (("include", pen.include), ("exclude", pen.exclude)):
                for pattern in patterns or ():
                    if not any(_matches(n, types.get(n, ""), pattern) for n in names):
                        raise _no_match_error(who, arg, pattern, names)
            if not chosen:
                raise ValueError(
                    f"{who}: include={pen.include}, exclude="
                    f"{list(DEFAULT_EXCLUDE) if pen.exclude is None else pen.exclude} select no parameter; "
                    "parameters are: " + ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                )
            out.append([n for n, p in named if id(p) in chosen])
        return out

    def _entries(self, optimizers: Sequence[torch.optim.Optimizer] | None) -> list[_Entry]:
        """Per penalty, what it acts on now among ``optimizers``' tensors (the model's when None)."""
        if optimizers is None:
            groups: list[Any] = [None]
            params = [list(self.model.parameters())]
            ident: Any = None
        else:
            groups = [g for opt in optimizers for g in opt.param_groups]
            params = [g["params"] for g in groups]
            ident = tuple(map(id, optimizers))
        key = (tuple(map(len, params)), tuple(p.requires_grad for ps in params for p in ps))
        cached = self._live.get(ident)
        if cached is not None and cached[0] == key:
            return cached[1]
        if any(id(p) not in self._names for ps in params for p in ps):
            self._refresh()  # a tensor the plan has not seen: layers built or replaced since
        where: list[tuple[Any, list[Tensor]]] = [
            (g, [p for p in ps if p.requires_grad]) for g, ps in zip(groups, params, strict=True)
        ]
        mines: list[list[Tensor]] = [
            [p for _, ps in where for p in ps if id(p) in chosen] for chosen in self._chosen
        ]
        entries: list[_Entry] = []
        for mine, chosen, scratch in zip(
            mines, self._chosen, _shared_scratches(mines, self.compiled), strict=True
        ):
            per_group: list[tuple[Any, list[Tensor]]] = [
                (g, [p for p in ps if id(p) in chosen]) for g, ps in where
            ]
            entries.append((mine, scratch, [x for x in per_group if x[1]]))
        self._live[ident] = (key, entries)
        return entries

    def live_names(self, optimizers: Sequence[torch.optim.Optimizer] | None = None) -> list[list[str]]:
        """Per penalty, the names of the parameters it acts on now (trainable, owned by ``optimizers``)."""
        return [[self._names[id(p)] for p in ps] for ps, _, _ in self._entries(optimizers)]

    @property
    def names(self) -> list[list[str]]:
        """Per penalty, the names of the model's parameters it acts on now (trainable ones)."""
        return self.live_names(None)

    @property
    def params(self) -> list[list[Tensor]]:
        """Per penalty, the model's parameters it acts on now (trainable ones)."""
        return [ps for ps, _, _ in self._entries(None)]

    @property
    def _scratch(self) -> list[_Scratch]:
        return [sc for _, sc, _ in self._entries(None)]

    # -------------------------------------------------------------- kinds and strengths
    @property
    def adds_gradient(self) -> bool:
        """Whether any penalty adds to the gradient."""
        return any(p.adds_gradient for p in self.penalties)

    @property
    def projects(self) -> bool:
        """Whether any penalty changes weights after the optimizer step."""
        return any(p.projects for p in self.penalties)

    def strengths(self, t: int, total: int | None = None) -> list[float]:
        """Every penalty's strength at ``t`` (validated)."""
        return [p.strength_at(t, total) for p in self.penalties]

    # -------------------------------------------------------------- values
    def values(
        self, t: int, total: int | None = None, optimizers: Sequence[torch.optim.Optimizer] | None = None
    ) -> dict[str, Tensor]:
        """``strength * value`` of every penalty that has a value, without autograd (float32 at least).

        Over the live parameters of ``optimizers`` (the model's trainable ones when None). The
        ``L1`` and ``L2`` values over the same parameters come from one grouped pass.
        """
        entries = self._entries(optimizers)
        out: dict[str, Tensor] = {}
        cache: dict[int, tuple[Tensor, Tensor]] = {}
        for key, pen, (ps, scratch, _) in zip(self.keys, self.penalties, entries, strict=True):
            if not pen.has_value:
                continue
            if not ps:
                out[key] = torch.zeros(())
                continue
            kind = _fast_kind(pen)
            if kind is None:
                out[key] = pen.strength_at(t, total) * _at_least_fp32(pen.value(ps))
                continue
            if id(scratch) not in cache:
                kinds = {
                    _fast_kind(q)
                    for q, (_, s, _) in zip(self.penalties, entries, strict=True)
                    if s is scratch
                }
                cache[id(scratch)] = scratch.values(l1="l1" in kinds, l2="l2" in kinds)
            out[key] = pen.strength_at(t, total) * cache[id(scratch)][0 if kind == "l1" else 1]
        return out

    def loss(
        self, t: int, total: int | None = None, optimizers: Sequence[torch.optim.Optimizer] | None = None
    ) -> Tensor:
        """Sum of ``strength * value`` of the gradient-adding penalties, with autograd (exact path).

        Over the live parameters of ``optimizers`` (the model's trainable ones when None); float32
        at least.
        """
        entries = self._entries(optimizers)
        terms = [
            pen.strength_at(t, total) * _at_least_fp32(pen.autograd_value(ps))
            for pen, (ps, _, _) in zip(self.penalties, entries, strict=True)
            if pen.adds_gradient and ps
        ]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    # -------------------------------------------------------------- gradients and projections
    def add_grads_(
        self, t: int, total: int | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Add every gradient-adding penalty's gradient to ``.grad`` (of ``optimizer``'s live parameters).

        Live parameters without a gradient get one, unless none of them has one (a skipped step).
        A sparse gradient (``nn.Embedding(sparse=True)``) is made dense first, with a warning naming
        the parameter: the penalty's gradient touches every row, as it would through autograd.
        Consecutive ``L1``/``L2`` penalties over the same parameters run as one fused grouped pass,
        bit-identical to applying them one after the other (with ``compiled=True``: one compiled call,
        equal to float rounding).
        """
        entries = self._entries(None if optimizer is None else [optimizer])
        bundle: list[tuple[str, float]] = []
        bundle_scratch: _Scratch | None = None
        bundle_grads: list[Tensor] = []
        for pen, (ps, scratch, _) in zip(self.penalties, entries, strict=True):
            if not pen.adds_gradient or not ps:
                continue
            strength = pen.strength_at(t, total)
            if strength == 0.0:
                continue
            kind = _fast_kind(pen)
            if bundle and (kind is None or scratch is not bundle_scratch):
                assert bundle_scratch is not None
                bundle_scratch.add_grads_(bundle_grads, bundle)
                bundle = []
            if bundle:  # same parameters as the bundle: their grads are ready
                bundle.append((kind, strength))  # type: ignore[arg-type]
                continue
            grads = self._grads_or_none(ps)
            if grads is None:
                continue
            if kind is None:
                pen.add_grad_(grads, ps, strength, scratch)
            else:
                bundle, bundle_scratch, bundle_grads = [(kind, strength)], scratch, grads
        if bundle:
            assert bundle_scratch is not None
            bundle_scratch.add_grads_(bundle_grads, bundle)

    def add_autograd_grads_(
        self, t: int, total: int | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """As :meth:`add_grads_`, with the gradient computed by autograd through :meth:`loss` (exact path)."""
        entries = self._entries(None if optimizer is None else [optimizer])
        ps = list({id(p): p for ent in entries for p in ent[0]}.values())
        if not ps or self._grads_or_none(ps) is None:
            return
        with torch.enable_grad():
            loss = self.loss(t, total, None if optimizer is None else [optimizer])
            if not loss.requires_grad:
                return
            grads = torch.autograd.grad(loss, ps, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(ps, grads, strict=True):
                if g is not None:
                    p.grad.add_(g.to(p.grad.dtype))  # type: ignore[union-attr]

    def _grads_or_none(self, params: Sequence[Tensor]) -> list[Tensor] | None:
        """The ``.grad`` of each tensor; ``None`` when none has a gradient.

        Missing gradients are created as zeros and sparse ones made dense (with a warning, once per tensor).
        """
        grads = [p.grad for p in params]
        if any(g is None or g.layout != torch.strided for g in grads):
            if all(g is None for g in grads):
                return None
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                elif p.grad.layout != torch.strided:
                    name = self._names.get(id(p), "?")
                    if name not in self._warned_sparse:
                        self._warned_sparse.add(name)
                        warnings.warn(
                            f"PenaltyPlan: parameter {name!r} has a sparse gradient (nn.Embedding(sparse="
                            "True) or F.embedding(..., sparse=True)); a weight penalty's gradient touches "
                            "every row, so it is made dense (as autograd would). To keep sparse gradients "
                            f"(e.g. for SparseAdam), exclude it from the penalty: exclude=[..., {name!r}]",
                            stacklevel=3,
                        )
                    p.grad = p.grad.to_dense()
            grads = [p.grad for p in params]
        return grads  # type: ignore[return-value]

    def project_(
        self, t: int, total: int | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Apply proximal steps and constraints after an optimizer step (each param group's ``lr``)."""
        entries = self._entries(None if optimizer is None else [optimizer])
        for pen, (_, _, per_group) in zip(self.penalties, entries, strict=True):
            if not pen.projects:
                continue
            strength = pen.strength_at(t, total)
            for group, ps in per_group:
                lr = float(group["lr"]) if group is not None else 1.0
                pen.project_(ps, lr, strength)


def _at_least_fp32(value: Tensor) -> Tensor:
    return value if value.dtype in (torch.float32, torch.float64) else value.float()


def _fast_kind(pen: Penalty) -> str | None:
    """``"l1"``/``"l2"`` for the built-in penalties the plan may fuse; ``None`` for anything else."""
    if type(pen) is L1:
        return "l1"
    if type(pen) is L2:
        return "l2"
    return None


def _shared_scratches(lists: Sequence[Sequence[Tensor]], compiled: bool = False) -> list[_Scratch]:
    """One :class:`_Scratch` per list; lists of the same tensors in the same order share one."""
    made: dict[tuple[int, ...], _Scratch] = {}
    out = []
    for ps in lists:
        key = tuple(id(p) for p in ps)
        if key not in made:
            made[key] = _Scratch(list(ps), compiled=compiled)
        out.append(made[key])
    return out


def resolve_penalties(
    penalties: Sequence[Penalty | Mapping[str, Any]], model: nn.Module, compiled: bool = False
) -> PenaltyPlan:
    """Bind penalties to ``model`` and check their selections (see :class:`PenaltyPlan`).

    Raises ``ValueError`` when a pattern matches no parameter name or a penalty selects no
    parameter (judged on names, frozen parameters included). With ``compiled=True`` the L1 (+L2)
    gradient runs as one ``torch.compile`` call per dtype and device (see
    :mod:`lightning_regkit.compiled`), falling back to the foreach kernels with a warning where it
    cannot be compiled.

    Example:
        >>> plan = resolve_penalties([L1(0.1), MaxNorm(2.0)], nn.Linear(2, 2))
        >>> plan.keys, plan.names
        (['l1', 'maxnorm'], [['weight'], ['weight']])
    """
    plan = PenaltyPlan(penalties, model, compiled=compiled)
    plan.check_selection()
    return plan
