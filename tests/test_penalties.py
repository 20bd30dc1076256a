"""The pure-torch penalty core: selection, exact values, gradients against autograd, projections, errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import TinyMLP, TinyTransformer, needs_cxx
from torch import nn

from lightning_regkit.penalties import (
    L1,
    L2,
    MaxNorm,
    add_l1_grad_,
    make_penalty,
    max_norm_,
    resolve_penalties,
    select_parameters,
    soft_threshold_,
)
from lightning_regkit.schedules import Linear


def _set_weights(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
            p.view(-1)[0] = 0.0  # an exact zero: sign(0) = 0 in both paths


# ----------------------------------------------------------------------------- selection
def test_default_selection_excludes_biases_and_norms() -> None:
    assert [n for n, _ in select_parameters(TinyMLP())] == ["fc1.weight", "fc2.weight"]
    names = [n for n, _ in select_parameters(TinyTransformer())]
    assert names == [
        "embed.weight",
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "encoder.self_attn.in_proj_weight",
        "encoder.self_attn.out_proj.weight",
        "encoder.linear1.weight",
        "encoder.linear2.weight",
        "head.weight",
    ]


def test_norm_layers_excluded_by_module_type_even_when_2d() -> None:
    class Norm2dWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(2, 2))

    class MyNorm(Norm2dWeight):
        pass

    net = nn.Sequential(nn.Linear(2, 2), MyNorm(), nn.GroupNorm(1, 2), nn.BatchNorm1d(2), nn.Embedding(5, 2))
    assert [n for n, _ in select_parameters(net)] == ["0.weight", "4.weight"]
    assert [n for n, _ in select_parameters(net, exclude=["*.bias", "*Norm*", "Embedding"])] == ["0.weight"]


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (None, [], ["fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight", "fc2.bias"]),
        (["fc1.*"], None, ["fc1.weight"]),
        (["fc1.*"], [], ["fc1.weight", "fc1.bias"]),
        (["Linear"], ["*.bias"], ["fc1.weight", "fc2.weight"]),
        (["LayerNorm"], [], ["norm.weight", "norm.bias"]),
        (None, ["fc2.*", "*.bias"], ["fc1.weight", "norm.weight"]),
    ],
)
def test_include_exclude_patterns(
    include: list[str] | None, exclude: list[str] | None, expected: list[str]
) -> None:
    assert [n for n, _ in select_parameters(TinyMLP(), include, exclude)] == expected


def test_frozen_parameters_never_selected() -> None:
    net = TinyMLP()
    net.fc1.weight.requires_grad_(False)
    assert [n for n, _ in select_parameters(net, exclude=[])] == [
        "fc1.bias",
        "norm.weight",
        "norm.bias",
        "fc2.weight",
        "fc2.bias",
    ]


# ----------------------------------------------------------------------------- values and gradients
def test_exact_values() -> None:
    net = nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [0.5, 3.0, -1.5]]))
        net.bias.fill_(100.0)  # excluded by default
    plan = resolve_penalties([L1(0.5), L2(0.25), MaxNorm(1.0)], net)
    values = plan.values(t=0)
    assert list(values) == ["l1", "l2"]  # MaxNorm is a constraint, it has no value
    assert float(values["l1"]) == 0.5 * 8.0  # 1 + 2 + 0 + 0.5 + 3 + 1.5
    assert float(values["l2"]) == 0.25 * 16.5  # 1 + 4 + 0 + 0.25 + 9 + 2.25
    assert float(plan.loss(t=0).detach()) == pytest.approx(0.5 * 8.0 + 0.25 * 16.5, rel=1e-6)


def test_repeated_kinds_get_indexed_keys() -> None:
    plan = resolve_penalties([L2(1.0, include=["fc1.*"]), L2(2.0, include=["fc2.*"]), L1(1.0)], TinyMLP())
    assert plan.keys == ["l2_0", "l2_1", "l1"]


@pytest.mark.parametrize("model_cls", [TinyMLP, TinyTransformer])
@pytest.mark.parametrize(
    "penalties",
    [[L1(0.01)], [L2(0.03)], [L1(0.01), L2(0.03)], [L2(0.1, exclude=[]), L1(0.2, include=["*fc1*"])]],
    ids=["l1", "l2", "l1+l2", "selections"],
)
def test_fast_gradient_equals_autograd(model_cls: type[nn.Module], penalties: list) -> None:
    if any(p.include for p in penalties) and model_cls is TinyTransformer:
        penalties = [L2(0.1, exclude=[]), L1(0.2, include=["head*"])]
    net = model_cls()
    _set_weights(net)
    plan = resolve_penalties(penalties, net)
    # autograd through the naive loss
    net.zero_grad()
    naive = sum(
        pen.strength_at(0) * sum((p.abs().sum() if pen.name == "l1" else p.pow(2).sum()) for p in ps)
        for pen, ps in zip(plan.penalties, plan.params, strict=True)
    )
    naive.backward()
    expected = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    # the exact autograd path
    net.zero_grad()
    plan.loss(0).backward()
    exact = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    # the fast path, on top of zero gradients
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    plan.add_grads_(0)
    fast = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None and p.grad.any()}
    assert expected.keys() == exact.keys() == fast.keys()
    for n in expected:
        torch.testing.assert_close(exact[n], expected[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast[n], expected[n], rtol=1e-6, atol=0)
    values = plan.values(0)
    assert float(sum(values.values())) == pytest.approx(float(naive), rel=1e-5)


def test_l1_gradient_groups_match_single_pass() -> None:
    params = [torch.randn(n) for n in (5, 300, 70000, 300000, 3)]
    grads_a = [torch.zeros_like(p) for p in params]
    grads_b = [torch.zeros_like(p) for p in params]
    add_l1_grad_(grads_a, params, 0.5, groups=[(0, len(params))])
    add_l1_grad_(grads_b, params, 0.5)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert torch.equal(a, b)


def test_gradient_created_for_params_without_grad_but_skipped_when_none_has_one() -> None:
    net = TinyMLP()
    plan = resolve_penalties([L2(0.5)], net)
    plan.add_grads_(0)  # nothing has a gradient: a skipped step, nothing happens
    assert all(p.grad is None for p in net.parameters())
    net.fc1.weight.grad = torch.zeros_like(net.fc1.weight)
    plan.add_grads_(0)
    assert torch.equal(net.fc2.weight.grad, net.fc2.weight.detach())  # created: 2 * 0.5 * w


def test_only_the_given_optimizers_parameters() -> None:
    net = TinyMLP()
    opt1 = torch.optim.SGD(net.fc1.parameters(), lr=0.1)
    plan = resolve_penalties([L2(0.5)], net)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    plan.add_grads_(0, optimizer=opt1)
    assert torch.equal(net.fc1.weight.grad, net.fc1.weight.detach())
    assert not net.fc2.weight.grad.any()


def test_schedule_strength() -> None:
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(2.0)
    plan = resolve_penalties([L2(Linear(0.0, 1.0))], net)
    assert [float(plan.values(t, 4)["l2"]) for t in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]


# ----------------------------------------------------------------------------- projections
def test_soft_threshold_exact() -> None:
    w = torch.tensor([0.25, -0.125, 0.0625, -1.0, 0.0])
    soft_threshold_([w], 0.125)
    assert w.tolist() == [0.125, 0.0, 0.0, -0.875, 0.0]


def test_proximal_uses_each_param_groups_lr() -> None:
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    opt = torch.optim.SGD(
        [{"params": net[0].parameters(), "lr": 0.5}, {"params": net[1].parameters(), "lr": 0.25}]
    )
    plan = resolve_penalties([L1(0.5, proximal=True)], net)
    assert not plan.adds_gradient
    plan.project_(0, None, opt)
    assert net[0].weight.unique().tolist() == [0.75]
    assert net[1].weight.unique().tolist() == [0.875]


def test_max_norm_rows_and_filters() -> None:
    w = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 0.0]])
    max_norm_([w], 2.0)
    assert torch.allclose(w, torch.tensor([[1.2, 1.6], [0.6, 0.8], [0.0, 0.0]]))
    conv = torch.randn(4, 3, 3, 3) * 10
    max_norm_([conv], 1.5)
    norms = conv.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((4,), 1.5))
    small = torch.tensor([[0.1, 0.2]])
    before = small.clone()
    max_norm_([small], 1.0)
    assert torch.equal(small, before)  # untouched bit for bit


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("factory", "exc", "match"),
    [
        (lambda: L1(-1.0), ValueError, r"L1: strength must be a finite number >= 0, got -1.0"),
        (lambda: L2(math.inf), ValueError, r"L2: strength must be a finite number >= 0, got inf"),
        (lambda: L2(math.nan), ValueError, r"L2: strength must be a finite number >= 0, got nan"),
        (lambda: L2(True), TypeError, r"L2: strength must be a number"),
        (lambda: L2("big"), TypeError, r"L2: strength must be a number"),
        (lambda: L1(0.1, proximal="yes"), TypeError, r"L1: proximal must be a bool"),
        (
            lambda: L2(lambda t, total: -0.5),
            ValueError,
            r"L2: strength schedule must yield a finite value >= 0",
        ),
        (lambda: L2(0.1, include="fc1.*"), TypeError, r"L2: include must be a list of glob patterns"),
        (lambda: L2(0.1, exclude=[""]), TypeError, r"L2: exclude must hold non-empty strings"),
        (lambda: MaxNorm(0.0), ValueError, r"MaxNorm: max_norm must be a finite number > 0, got 0.0"),
        (lambda: MaxNorm(-3), ValueError, r"MaxNorm: max_norm must be a finite number > 0, got -3"),
        (lambda: make_penalty({"name": "l3", "strength": 0.1}), ValueError, r"unknown penalty name 'l3'"),
        (lambda: make_penalty("l2"), TypeError, r"a penalty must be an L1, L2 or MaxNorm"),
    ],
)
def test_bad_arguments(factory, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        factory()


@pytest.mark.parametrize(
    ("penalty", "match"),
    [
        (
            L2(0.1, include=["encoder.*"]),
            r"L2: include pattern 'encoder\.\*' selects no parameter.*fc1\.weight",
        ),
        (L1(0.1, exclude=["Conv2d"]), r"L1: exclude pattern 'Conv2d' selects no parameter.*norm\.bias"),
        (L2(0.1, include=["*.bias"]), r"L2: include=\['\*\.bias'\].* select no parameter"),
    ],
)
def test_pattern_selecting_nothing(penalty, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_penalties([penalty], TinyMLP())


def test_negative_schedule_value_at_runtime() -> None:
    plan = resolve_penalties([L2(Linear(1.0, -1.0))], TinyMLP())
    assert plan.strengths(0, 10) == [1.0]
    with pytest.raises(
        ValueError, match=r"L2: strength schedule must yield a finite value >= 0, got -1.0 at t=10"
    ):
        plan.strengths(10, 10)


@pytest.mark.parametrize("order", ["l1,l2", "l2,l1"])
def test_fused_chunked_plan_matches_reference_on_large_tensors(order: str) -> None:
    """Tensors above the 2**18-element group size go through the chunked scratch path.

    The fused L1/L2 pass (any order) must give the same gradient as applying each penalty's
    reference formula in turn, and the values must match float64 sums.
    """
    net = nn.Sequential(nn.Linear(700, 600), nn.ReLU(), nn.Linear(600, 5), nn.Linear(5, 3))  # 420000 > 2**18
    _set_weights(net, seed=3)
    l1, l2 = 0.01, 0.03
    pens = {"l1": L1(l1), "l2": L2(l2)}
    plan = resolve_penalties([pens[k] for k in order.split(",")], net)
    weights = [m.weight for m in net if isinstance(m, nn.Linear)]
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.125)
    plan.add_grads_(0)
    for w in weights:
        expected = torch.full_like(w, 0.125)
        for k in order.split(","):
            expected = expected + (l1 * torch.sign(w) if k == "l1" else 2 * l2 * w)
        torch.testing.assert_close(w.grad, expected, rtol=0, atol=1e-7)
    values = plan.values(0)
    ref_l1 = sum(float(w.double().abs().sum()) for w in weights)
    ref_l2 = sum(float(w.double().pow(2).sum()) for w in weights)
    assert float(values["l1"]) == pytest.approx(l1 * ref_l1, rel=1e-6)
    assert float(values["l2"]) == pytest.approx(l2 * ref_l2, rel=1e-6)


# ----------------------------------------------------------------------------- compiled kernel
@pytest.mark.compile
@pytest.mark.slow
@needs_cxx
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_kernel_matches_foreach_and_never_recompiles(dtype: torch.dtype) -> None:
    """``compiled=True`` (one torch.compile kernel for L1+L2) gives the foreach gradient, on tensors above
    and below the chunk size; a new strength (a schedule) reuses the kernel without recompiling."""
    net = nn.Sequential(nn.Linear(700, 600), nn.ReLU(), nn.Linear(600, 5), nn.Linear(5, 3)).to(dtype)
    _set_weights(net, seed=5)
    strengths = Linear(0.01, 0.03)
    grads = {}
    for compiled in (False, True):
        plan = resolve_penalties([L1(strengths), L2(0.02)], net, compiled=compiled)
        for p in net.parameters():
            p.grad = torch.full_like(p, 0.125)
        plan.add_grads_(0, 10)
        with torch._dynamo.config.patch(error_on_recompile=True):
            plan.add_grads_(7, 10)  # another L1 strength: the same compiled kernel
        grads[compiled] = [p.grad.clone() for p in net.parameters()]
    assert plan._scratch[0]._kernels is not None and plan._scratch[0]._kernels[0][2].kinds_compiled == [
        ("l1", "l2")
    ]
    # bf16: within 2 units in the last place (eps 2**-7); a wrong factor would be off by far more
    tol = {"rtol": 0, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 2**-6, "atol": 1e-3}
    for fast, comp in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(comp, fast, **tol)
    assert any(not torch.equal(g, torch.full_like(g, 0.125)) for g in grads[True])  # it did add something


@pytest.mark.compile
@pytest.mark.slow
@needs_cxx
def test_compiled_kernel_is_reused_by_a_new_model_of_the_same_layout() -> None:
    """A second model with the same layout (a seed sweep, a re-created model) reuses the compiled kernel."""

    def plan_and_grads() -> tuple[object, nn.Module]:
        net = TinyMLP()
        _set_weights(net)
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        return resolve_penalties([L1(0.1), L2(0.2)], net, compiled=True), net

    first, _ = plan_and_grads()
    first.add_grads_(0)  # type: ignore[attr-defined]
    with torch._dynamo.config.patch(error_on_recompile=True):
        second, net = plan_and_grads()
        second.add_grads_(0)  # type: ignore[attr-defined]
        for p in net.parameters():  # new gradient tensors (zero_grad(set_to_none=True)) of the same layout
            p.grad = torch.ones_like(p)
        second.add_grads_(1)  # type: ignore[attr-defined]
    assert second._scratch[0]._kernels[0][2].kinds_compiled == [("l1", "l2")]  # type: ignore[attr-defined]
    assert not torch.equal(net.fc1.weight.grad, torch.ones_like(net.fc1.weight))


@pytest.mark.compile
def test_compiled_kernel_falls_back_to_foreach_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a working compiler the plan warns once and uses the foreach kernels (same gradient)."""
    import lightning_regkit.compiled as compiled_mod

    def broken_compile(fn, **kwargs):  # type: ignore[no-untyped-def]
        def run(*args, **kw):  # type: ignore[no-untyped-def]
            raise RuntimeError("no C++ compiler found\nmore detail")

        return run

    monkeypatch.setattr(compiled_mod.torch, "compile", broken_compile)
    monkeypatch.setattr(compiled_mod, "_KERNELS", {})
    monkeypatch.setattr(compiled_mod, "_FAILED", {})
    net = TinyMLP()
    _set_weights(net)
    expected = resolve_penalties([L1(0.1), L2(0.2)], net)
    plan = resolve_penalties([L1(0.1), L2(0.2)], net, compiled=True)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    expected.add_grads_(0)
    reference = [p.grad.clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.warns(
        RuntimeWarning, match=r"compiled L1/L2 kernel is unavailable \(RuntimeError: no C\+\+ compiler"
    ):
        plan.add_grads_(0)
    for p, ref in zip(net.parameters(), reference, strict=True):
        assert torch.equal(p.grad, ref)
    assert plan._scratch[0].compiled is False  # later steps go straight to the foreach kernels


def test_compiled_kernel_partial_fallback_matches_foreach(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parameters of two dtypes make two kernels; when only one compiles, the other run takes the
    foreach kernels (built once, reused every step) and the whole gradient equals the foreach one."""
    import lightning_regkit.compiled as compiled_mod

    def compile_fails_for_float64(fn, **kwargs):  # type: ignore[no-untyped-def]
        def run(grads, params, coeffs, kinds):  # type: ignore[no-untyped-def]
            if params[0].dtype == torch.float64:
                raise RuntimeError("no float64 kernel")
            return fn(grads, params, coeffs, kinds)  # stands in for the compiled function

        return run

    monkeypatch.setattr(compiled_mod.torch, "compile", compile_fails_for_float64)
    monkeypatch.setattr(compiled_mod, "_KERNELS", {})
    monkeypatch.setattr(compiled_mod, "_FAILED", {})
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2).double())
    _set_weights(net, seed=3)
    grads: dict[bool, list[list[torch.Tensor]]] = {}
    for compiled in (False, True):
        plan = resolve_penalties([L1(0.1), L2(0.2)], net, compiled=compiled)
        grads[compiled] = []
        for step in range(2):
            for p in net.parameters():
                p.grad = torch.full_like(p, 0.5)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the float64 run's fallback warning
                plan.add_grads_(step)
            grads[compiled].append([p.grad.clone() for p in net.parameters()])
    scratch = plan._scratch[0]
    assert [k[2].kinds_compiled for k in scratch._kernels] == [[("l1", "l2")], []]  # float32 ran compiled
    assert len(scratch._fallbacks) == 1 and scratch.compiled  # one fallback, reused on the second step
    for fast_step, comp_step in zip(grads[False], grads[True], strict=True):
        for fast, comp in zip(fast_step, comp_step, strict=True):
            torch.testing.assert_close(comp, fast, rtol=0, atol=1e-7)
    assert not torch.equal(grads[True][0][0], torch.full_like(grads[True][0][0], 0.5))  # it added something
