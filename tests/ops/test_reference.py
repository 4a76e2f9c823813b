"""The reference kernels against PyTorch's native ones (micrograd's oracle test), in float64.

Every operation is drawn over many small cases -- 1-, 2- and 3-D, strides, paddings
(including 'half' and 'full'), dilations, groups, overlapping pools, ceil mode -- and the
values and the gradients of every input, under a random upstream gradient, must agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cnnlab import ops
from cnnlab.ops import reference
from cnnlab.ops._shapes import resolve_padding, transpose_output_length

EXAMPLES = settings(max_examples=200, deadline=None)
TOL = {"rtol": 1e-9, "atol": 1e-12}
F64 = torch.float64


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _run(kernel: str, fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None],
         seed: int) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """fn(*inputs) on one kernel; its value and the gradients of the float inputs."""
    leaves = [t.detach().clone().requires_grad_() if t is not None and t.is_floating_point()
              else t for t in inputs]
    with ops.kernels(kernel):  # type: ignore[arg-type]
        y = fn(*leaves)
    wrt = [t for t in leaves if t is not None and t.requires_grad]
    grads = torch.autograd.grad(y, wrt, _randn(seed, *y.shape), allow_unused=True)
    return y.detach(), list(grads)


def assert_same(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor | None,
                seed: int = 0) -> None:
    """Reference and native agree on fn's value and on every input gradient."""
    y_native, g_native = _run("native", fn, inputs, seed)
    y_ref, g_ref = _run("reference", fn, inputs, seed)
    torch.testing.assert_close(y_ref, y_native, **TOL)
    for got, want in zip(g_ref, g_native, strict=True):
        torch.testing.assert_close(got, want, **TOL)


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------

def _dims(draw: Any, d: int, lo: int, hi: int) -> tuple[int, ...]:
    return tuple(draw(st.integers(lo, hi)) for _ in range(d))


@st.composite
def conv_cases(draw: Any) -> dict[str, Any]:
    d = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = _dims(draw, d, 1, 3 if d < 3 else 2)
    stride, dilation = _dims(draw, d, 1, 3), _dims(draw, d, 1, 2)
    padding = draw(st.one_of(st.sampled_from(["valid", "half", "full"]), st.integers(0, 2),
                             st.tuples(*[st.integers(0, 3)] * d)))
    if padding == "half":
        kernel = tuple(f | 1 for f in kernel)  # 'half' needs an odd filter
    pad = resolve_padding(padding, kernel, dilation)
    size = tuple(draw(st.integers(lo, lo + (4 if d < 3 else 2)))
                 for lo in (max(1, dl * (f - 1) + 1 - 2 * p)
                            for f, dl, p in zip(kernel, dilation, pad)))
    return {"n": draw(st.integers(1, 2)), "c_in": c_in, "c_out": c_out, "size": size,
            "kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation,
            "groups": groups, "bias": draw(st.booleans()), "seed": draw(st.integers(0, 2**31))}


@st.composite
def pool_cases(draw: Any, dilation: bool = True) -> dict[str, Any]:
    d = draw(st.integers(1, 3))
    kernel = _dims(draw, d, 1, 3)
    stride = None if draw(st.booleans()) else _dims(draw, d, 1, 3)  # None: the kernel
    padding = tuple(draw(st.integers(0, f // 2)) for f in kernel)
    dil = _dims(draw, d, 1, 2) if dilation else (1,) * d
    size = tuple(draw(st.integers(lo, lo + (4 if d < 3 else 2)))
                 for lo in (max(1, dl * (f - 1) + 1 - 2 * p)
                            for f, dl, p in zip(kernel, dil, padding)))
    return {"n": draw(st.integers(1, 2)), "c": draw(st.integers(1, 3)), "size": size,
            "kernel": kernel, "stride": stride, "padding": padding, "dilation": dil,
            "ceil_mode": draw(st.booleans()), "seed": draw(st.integers(0, 2**31))}


# ---------------------------------------------------------------------------------------------
# oracle tests: reference == native, forward and backward
# ---------------------------------------------------------------------------------------------

@EXAMPLES
@given(conv_cases())
def test_conv_matches_native(c: dict[str, Any]) -> None:
    s = c["seed"]
    x = _randn(s, c["n"], c["c_in"], *c["size"])
    w = _randn(s + 1, c["c_out"], c["c_in"] // c["groups"], *c["kernel"])
    b = _randn(s + 2, c["c_out"]) if c["bias"] else None
    assert_same(lambda x, w, b: ops.conv(x, w, b, c["stride"], c["padding"], c["dilation"],
                                         c["groups"]), x, w, b, seed=s + 3)


@EXAMPLES
@given(st.data())
def test_conv_transpose_matches_native(data: st.DataObject) -> None:
    draw = data.draw
    d, groups = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = _dims(draw, d, 1, 3 if d < 3 else 2)
    stride, dilation = _dims(draw, d, 1, 3), _dims(draw, d, 1, 2)
    size = _dims(draw, d, 1, 4 if d < 3 else 3)
    out_pad = tuple(draw(st.integers(0, max(s, dl) - 1)) for s, dl in zip(stride, dilation))
    # any padding that leaves an output: (L - 1) S - 2P + D(F - 1) + output_padding + 1 > 0
    padding = tuple(draw(st.integers(0, min(3, ((n - 1) * s + dl * (f - 1) + op) // 2)))
                    for n, f, s, dl, op in zip(size, kernel, stride, dilation, out_pad))
    assert all(transpose_output_length(*a) > 0
               for a in zip(size, kernel, stride, padding, out_pad, dilation))
    s = draw(st.integers(0, 2**31))
    x = _randn(s, draw(st.integers(1, 2)), c_in, *size)
    w = _randn(s + 1, c_in, c_out // groups, *kernel)
    b = _randn(s + 2, c_out) if draw(st.booleans()) else None
    assert_same(lambda x, w, b: ops.conv_transpose(x, w, b, stride, padding, out_pad, groups,
                                                   dilation), x, w, b, seed=s + 3)


@EXAMPLES
@given(pool_cases())
def test_max_pool_matches_native(c: dict[str, Any]) -> None:
    # continuous random inputs: ties have probability zero (see the tie test below)
    x = _randn(c["seed"], c["n"], c["c"], *c["size"])
    args = (c["kernel"], c["stride"], c["padding"], c["dilation"], c["ceil_mode"])
    y, switches = ops.max_pool(x, *args, return_switches=True)
    with ops.kernels("reference"):
        y_ref, switches_ref = ops.max_pool(x, *args, return_switches=True)
    torch.testing.assert_close(y_ref, y, rtol=0, atol=0)
    assert torch.equal(switches_ref, switches)
    if y.isfinite().all():
        assert_same(lambda x: ops.max_pool(x, *args), x, seed=c["seed"] + 1)


def test_a_dilated_pool_on_padding_only_passes_no_gradient() -> None:
    # width 1, taps at -1 and 1: the pool sees only padding. PyTorch's switch points at
    # column 1 (the next row in the flat map) and its backward sends the gradient there.
    x = _randn(0, 1, 1, 2, 1).requires_grad_()
    args = ((1, 2), 1, (0, 1), (1, 2))
    y, switches = ops.max_pool(x, *args, return_switches=True)
    with ops.kernels("reference"):
        y_ref, switches_ref = ops.max_pool(x, *args, return_switches=True)
    assert y_ref.tolist() == y.tolist() == [[[[-math.inf], [-math.inf]]]]
    assert torch.equal(switches_ref, switches)
    y_ref.backward(torch.ones_like(y_ref))
    assert x.grad is not None and x.grad.tolist() == [[[[0.0], [0.0]]]]


@settings(max_examples=100, deadline=None)
@given(pool_cases())
def test_max_pool_ties_pick_the_same_switch_as_pytorch(c: dict[str, Any]) -> None:
    # few distinct values: most pools hold several maxima; PyTorch takes the first in window order
    gen = torch.Generator().manual_seed(c["seed"])
    x = torch.randint(0, 3, (c["n"], c["c"], *c["size"]), generator=gen).to(F64)
    args = (c["kernel"], c["stride"], c["padding"], c["dilation"], c["ceil_mode"])
    y, switches = ops.max_pool(x, *args, return_switches=True)
    with ops.kernels("reference"):
        y_ref, switches_ref = ops.max_pool(x, *args, return_switches=True)
    assert torch.equal(y_ref, y)
    assert torch.equal(switches_ref, switches)
    if y.isfinite().all():
        assert_same(lambda x: ops.max_pool(x, *args), x, seed=c["seed"] + 1)


@EXAMPLES
@given(pool_cases(dilation=False), st.booleans())
def test_avg_pool_matches_native(c: dict[str, Any], count_include_pad: bool) -> None:
    # PyTorch's 3-D average pooling refuses an input smaller than the kernel, padding or not
    assume(len(c["size"]) < 3 or all(n >= f for n, f in zip(c["size"], c["kernel"])))
    x = _randn(c["seed"], c["n"], c["c"], *c["size"])
    assert_same(lambda x: ops.avg_pool(x, c["kernel"], c["stride"], c["padding"], c["ceil_mode"],
                                       count_include_pad), x, seed=c["seed"] + 1)


@EXAMPLES
@given(pool_cases())
def test_max_unpool_matches_native(c: dict[str, Any]) -> None:
    x = _randn(c["seed"], c["n"], c["c"], *c["size"])
    pooled, switches = ops.max_pool(x, c["kernel"], c["stride"], c["padding"], c["dilation"],
                                    c["ceil_mode"], return_switches=True)
    assume(bool(pooled.isfinite().all()))  # no pool on padding only
    assume(all(n >= o for n, o in zip(c["size"], pooled.shape[2:])))  # F.max_unpool's range
    # the pooled values: where overlapping pools share a switch they carry the same value
    assert_same(lambda y: ops.max_unpool(y, switches, c["kernel"], c["stride"], c["padding"],
                                         output_size=c["size"]), pooled, seed=c["seed"] + 2)


def _native_lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    x3 = x if x.dim() >= 3 else x.unsqueeze(-1)  # F.local_response_norm needs a spatial dim
    y = F.local_response_norm(x3, size, alpha=alpha * size, beta=beta, k=k)
    return y.view_as(x)


@EXAMPLES
@given(st.integers(0, 3), st.integers(1, 7), st.sampled_from([1, 3, 5, 7]),
       st.floats(0.01, 2.0), st.floats(0.1, 1.5), st.floats(0.5, 3.0), st.integers(0, 2**31))
def test_lrn_matches_native(d: int, c: int, size: int, alpha: float, beta: float, k: float,
                            seed: int) -> None:
    x = _randn(seed, 2, c, *[3] * d)
    y, (g,) = _run("reference", lambda x: ops.lrn(x, size, alpha, beta, k), [x], seed + 1)
    y_native, (g_native,) = _run("native", lambda x: _native_lrn(x, size, alpha, beta, k), [x],
                                 seed + 1)
    torch.testing.assert_close(y, y_native, **TOL)
    torch.testing.assert_close(g, g_native, **TOL)


def test_lrn_is_eq_8_2_with_alpha_not_divided_by_n() -> None:
    x, n, alpha, beta, k = _randn(0, 2, 6, 3, 3), 5, 0.5, 0.75, 2.0
    want = torch.empty_like(x)
    for i in range(6):  # b_i = a_i / (k + alpha sum_{j=i-n//2}^{i+n//2} a_j^2)^beta, clipped
        lo, hi = max(0, i - n // 2), min(5, i + n // 2)
        want[:, i] = x[:, i] / (k + alpha * (x[:, lo:hi + 1] ** 2).sum(1)) ** beta
    with ops.kernels("reference"):
        torch.testing.assert_close(ops.lrn(x, n, alpha, beta, k), want, **TOL)
    torch.testing.assert_close(ops.lrn(x, n, alpha, beta, k), want, **TOL)


def _relu_grad(rule: str, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Fig. 8.14's three rules, written out."""
    if rule == "backprop":
        return g * (x > 0)
    if rule == "deconvnet":
        return g.clamp(min=0)
    return g * (x > 0) * (g > 0)


@EXAMPLES
@given(st.sampled_from(["backprop", "deconvnet", "guided"]), st.sampled_from(["native", "reference"]),
       st.lists(st.integers(1, 4), min_size=1, max_size=5), st.integers(0, 2**31))
def test_relu_rules_follow_fig_8_14(rule: str, kernel: str, shape: list[int], seed: int) -> None:
    x = _randn(seed, *shape).round(decimals=1)  # some exact zeros: ReLU's kink passes no gradient
    g = _randn(seed + 1, *shape)
    xx = x.clone().requires_grad_()
    with ops.kernels(kernel), ops.relu_backward(rule):  # type: ignore[arg-type]
        y = ops.relu(xx)
    y.backward(g)
    torch.testing.assert_close(y.detach(), x.clamp(min=0), rtol=0, atol=0)
    torch.testing.assert_close(xx.grad, _relu_grad(rule, x, g), rtol=0, atol=0)


@EXAMPLES
@given(st.lists(st.integers(1, 3), max_size=2), st.integers(1, 5), st.integers(1, 4),
       st.booleans(), st.integers(0, 2**31))
def test_linear_matches_native(lead: list[int], n_in: int, n_out: int, bias: bool,
                               seed: int) -> None:
    x, w = _randn(seed, *lead, n_in), _randn(seed + 1, n_out, n_in)
    b = _randn(seed + 2, n_out) if bias else None
    assert_same(ops.linear, x, w, b, seed=seed + 3)


# ---------------------------------------------------------------------------------------------
# the input gradient is the convolution of Eq. 8.3 (8.3.2), both ways of computing it
# ---------------------------------------------------------------------------------------------

def _eq_8_3_literally(g: torch.Tensor, w: torch.Tensor, size: tuple[int, ...],
                      stride: tuple[int, ...], pad: tuple[int, ...], dilation: tuple[int, ...],
                      groups: int) -> torch.Tensor:
    """S - 1 zeros between the entries of g, D(F - 1) - P padding (cropping if negative, more
    on the right where the forward never reached), then a stride-1 convolution with the
    inverted, transposed filter u[k, p] = flip(w[p, k])."""
    out = g.shape[2:]
    spread = g.new_zeros((*g.shape[:2], *((o - 1) * s + 1 for o, s in zip(out, stride))))
    spread[(..., *(slice(None, None, s) for s in stride))] = g
    kernel = w.shape[2:]
    for i, (n, f, p, dl) in enumerate(zip(size, kernel, pad, dilation)):
        left = dl * (f - 1) - p
        right = n + dl * (f - 1) - left - spread.shape[2 + i]
        spec = [0, 0] * (len(size) - 1 - i) + [left, right]
        spread = F.pad(spread, spec)  # negative entries crop
    c_out, c_in_g = w.shape[:2]
    u = w.reshape(groups, c_out // groups, c_in_g, *kernel).transpose(1, 2)
    u = u.reshape(groups * c_in_g, c_out // groups, *kernel).flip(list(range(2, w.dim())))
    with ops.kernels("reference"):
        return ops.conv(spread, u, None, 1, 0, dilation, groups)


@EXAMPLES
@given(conv_cases())
def test_input_gradient_is_the_inverted_transposed_convolution(c: dict[str, Any]) -> None:
    s = c["seed"]
    x = _randn(s, c["n"], c["c_in"], *c["size"]).requires_grad_()
    w = _randn(s + 1, c["c_out"], c["c_in"] // c["groups"], *c["kernel"])
    pad = resolve_padding(c["padding"], c["kernel"], c["dilation"])
    y = ops.conv(x, w, None, c["stride"], pad, c["dilation"], c["groups"])
    g = _randn(s + 2, *y.shape)
    (want,) = torch.autograd.grad(y, x, g)
    args = (w, c["size"], c["stride"], pad, c["dilation"], c["groups"])
    torch.testing.assert_close(_eq_8_3_literally(g, *args), want, **TOL)
    for method in ("gather", "scatter"):
        torch.testing.assert_close(reference._conv_input_grad(g, *args, method=method), want,
                                   **TOL)


# ---------------------------------------------------------------------------------------------
# gradcheck: the hand-written backward passes against finite differences
# ---------------------------------------------------------------------------------------------

def _gradcheck(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> None:
    leaves = tuple(t.detach().clone().requires_grad_() for t in inputs)
    with ops.kernels("reference"):
        assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("shape, w_shape, kw", [
    ((2, 2, 7), (3, 2, 3), {"stride": 2, "padding": 1}),
    ((1, 4, 5, 6), (4, 2, 3, 2), {"padding": "full", "groups": 2, "dilation": (2, 1)}),
    ((1, 2, 4, 5, 4), (2, 2, 2, 3, 2), {"stride": (1, 2, 3), "padding": (1, 0, 2)}),
])
def test_conv_gradcheck(shape: tuple[int, ...], w_shape: tuple[int, ...], kw: Any) -> None:
    _gradcheck(lambda x, w, b: ops.conv(x, w, b, **kw), _randn(0, *shape), _randn(1, *w_shape),
               _randn(2, w_shape[0]))


@pytest.mark.parametrize("shape, w_shape, kw", [
    ((2, 2, 4), (2, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1}),
    ((1, 4, 3, 3), (4, 1, 2, 3), {"stride": (3, 2), "groups": 2, "dilation": (1, 2)}),
    ((1, 2, 2, 3, 2), (2, 2, 2, 2, 3), {"stride": 2, "padding": (0, 1, 1)}),
])
def test_conv_transpose_gradcheck(shape: tuple[int, ...], w_shape: tuple[int, ...],
                                  kw: Any) -> None:
    _gradcheck(lambda x, w, b: ops.conv_transpose(x, w, b, **kw), _randn(0, *shape),
               _randn(1, *w_shape), _randn(2, w_shape[1] * kw.get("groups", 1)))


@pytest.mark.parametrize("shape, kw", [
    ((2, 2, 9), {"kernel": 3, "stride": 2, "padding": 1}),
    ((1, 2, 6, 7), {"kernel": 3, "stride": 2, "ceil_mode": True}),
    ((1, 1, 4, 5, 5), {"kernel": (2, 3, 3), "stride": 1, "dilation": (1, 2, 1)}),
])
def test_max_pool_gradcheck(shape: tuple[int, ...], kw: Any) -> None:
    _gradcheck(lambda x: ops.max_pool(x, **kw), _randn(0, *shape))


@pytest.mark.parametrize("shape, kw", [
    ((2, 2, 9), {"kernel": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
    ((1, 2, 6, 7), {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ((1, 1, 4, 5, 5), {"kernel": (2, 3, 3), "stride": 1}),
])
def test_avg_pool_gradcheck(shape: tuple[int, ...], kw: Any) -> None:
    _gradcheck(lambda x: ops.avg_pool(x, **kw), _randn(0, *shape))


@pytest.mark.parametrize("shape", [(2, 2, 8), (1, 2, 6, 6), (1, 1, 4, 4, 4)])
def test_max_unpool_gradcheck(shape: tuple[int, ...]) -> None:
    pooled, switches = ops.max_pool(_randn(0, *shape), 2, return_switches=True)
    _gradcheck(lambda y: ops.max_unpool(y, switches, 2, output_size=shape[2:]), pooled)


@pytest.mark.parametrize("shape", [(3, 6), (2, 5, 4), (1, 7, 3, 3), (1, 4, 2, 2, 2)])
def test_lrn_gradcheck(shape: tuple[int, ...]) -> None:
    _gradcheck(lambda x: ops.lrn(x, 3, alpha=0.5, beta=0.75, k=1.0), _randn(0, *shape))


@pytest.mark.parametrize("rule", ["backprop", "deconvnet", "guided"])
def test_relu_gradcheck(rule: str) -> None:
    x = _randn(0, 3, 4, 5)
    x = x + 0.1 * x.sign()  # away from the kink
    with ops.relu_backward(rule):  # type: ignore[arg-type]
        if rule == "backprop":  # the only rule that is the true derivative
            _gradcheck(ops.relu, x)
        else:
            xx = x.clone().requires_grad_()
            with ops.kernels("reference"):
                y = ops.relu(xx)
            g = _randn(1, *x.shape)
            y.backward(g)
            torch.testing.assert_close(xx.grad, _relu_grad(rule, x, g))


@pytest.mark.parametrize("x_shape", [(5,), (3, 5), (2, 3, 5)])
def test_linear_gradcheck(x_shape: tuple[int, ...]) -> None:
    _gradcheck(ops.linear, _randn(0, *x_shape), _randn(1, 4, 5), _randn(2, 4))


# ---------------------------------------------------------------------------------------------
# max pooling: switches and overlapping pools (8.3)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["native", "reference"])
def test_overlapping_pools_sum_their_gradients_at_a_shared_maximum(kernel: str) -> None:
    # 1-D, pools of 3 at stride 1: [1 5 2] [5 2 0] [2 0 3] -> 5 wins two pools, 3 one
    x = torch.tensor([[[1.0, 5, 2, 0, 3]]], dtype=F64, requires_grad=True)
    with ops.kernels(kernel):  # type: ignore[arg-type]
        y, switches = ops.max_pool(x, 3, 1, return_switches=True)
    assert y.tolist() == [[[5.0, 5.0, 3.0]]]
    assert switches.tolist() == [[[1, 1, 4]]]
    y.backward(torch.tensor([[[1.0, 10, 100]]], dtype=F64))
    assert x.grad.tolist() == [[[0.0, 11, 0, 0, 100]]]

    # 2-D, 2x2 pools at stride 1 on 3x3: the centre is the maximum of all four pools
    x = torch.tensor([[[[1.0, 2, 3], [4, 9, 5], [6, 7, 8]]]], dtype=F64, requires_grad=True)
    with ops.kernels(kernel):  # type: ignore[arg-type]
        y = ops.max_pool(x, 2, 1)
    assert y.tolist() == [[[[9.0, 9], [9, 9]]]]
    y.backward(torch.tensor([[[[1.0, 2], [3, 4]]]], dtype=F64))
    assert x.grad.tolist() == [[[[0.0, 0, 0], [0, 10, 0], [0, 0, 0]]]]


def test_max_unpool_puts_values_back_at_their_switches() -> None:
    x = torch.tensor([[[[1.0, 2, 0, 1], [3, 4, 8, 5], [0, 0, 1, 1], [6, 0, 1, 2]]]])
    with ops.kernels("reference"):
        y, switches = ops.max_pool(x, 2, return_switches=True)
        up = ops.max_unpool(y, switches, 2)
    # 8.5.2: 2x2 pools -- 75% of the unpooled entries are zero
    assert up.tolist() == [[[[0.0, 0, 0, 0], [0, 4, 8, 0], [0, 0, 0, 0], [6, 0, 0, 2]]]]


# ---------------------------------------------------------------------------------------------
# the sparse matrix C of Fig. 8.8 (8.3.3)
# ---------------------------------------------------------------------------------------------

def test_conv_matrix_fig_8_8() -> None:
    w = torch.tensor([[[[1.0, 2], [3, 4]]]])  # a 2x2 filter on a 3x3 input
    c = ops.conv_matrix(w, 3)
    assert c.is_sparse and c.is_coalesced() and c.shape == (4, 9)
    assert c.to_dense().tolist() == [[1, 2, 0, 3, 4, 0, 0, 0, 0],
                                     [0, 1, 2, 0, 3, 4, 0, 0, 0],
                                     [0, 0, 0, 1, 2, 0, 3, 4, 0],
                                     [0, 0, 0, 0, 1, 2, 0, 3, 4]]
    f = torch.arange(1.0, 10)  # the flattened 3x3 input, rows top to bottom
    torch.testing.assert_close(c @ f, ops.conv(f.view(1, 1, 3, 3), w).reshape(-1))


@settings(max_examples=100, deadline=None)
@given(conv_cases())
def test_conv_matrix_multiplies_like_the_convolution(c: dict[str, Any]) -> None:
    s, c_in = c["seed"], c["c_in"] // c["groups"]  # no groups: one example, full depth
    x = _randn(s, 1, c_in, *c["size"]).requires_grad_()
    w = _randn(s + 1, c["c_out"], c_in, *c["kernel"])
    args = (c["stride"], c["padding"], c["dilation"])
    y = ops.conv(x, w, None, *args)
    g = _randn(s + 2, *y.shape)
    (dx,) = torch.autograd.grad(y, x, g)
    m = ops.conv_matrix(w, c["size"], *args)
    assert m.shape == (y.numel(), x.numel())
    torch.testing.assert_close(m @ x.detach().reshape(-1), y.detach().reshape(-1), **TOL)
    torch.testing.assert_close(m.t() @ g.reshape(-1), dx.reshape(-1), **TOL)  # 8.3.3: C^T g
    # sparsity: one entry per filter tap that lands inside the input (not on padding),
    # counted by convolving an all-ones input with an all-ones filter
    inside = ops.conv(torch.ones(1, 1, *c["size"], dtype=F64),
                      torch.ones(1, 1, *c["kernel"], dtype=F64), None, *args)
    assert m._nnz() == c["c_out"] * c_in * int(inside.sum())


# ---------------------------------------------------------------------------------------------
# odds and ends
# ---------------------------------------------------------------------------------------------

def test_empty_batch() -> None:
    x, w = torch.randn(0, 2, 5, 5), torch.randn(3, 2, 3, 3)
    for kernel in ("native", "reference"):
        with ops.kernels(kernel):  # type: ignore[arg-type]
            assert ops.conv(x, w, padding=1, stride=2).shape == (0, 3, 3, 3)
            assert ops.max_pool(x, 2).shape == (0, 2, 2, 2)
            assert ops.avg_pool(x, 2).shape == (0, 2, 2, 2)
            assert ops.conv_transpose(torch.randn(0, 3, 2, 2), w, stride=2).shape == (0, 2, 5, 5)


def test_reference_conv_works_in_slices_of_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # a batch bigger than one im2col slice gives the same result as one slice
    x, w = _randn(0, 5, 3, 6, 6), _randn(1, 4, 3, 3, 3)
    with ops.kernels("reference"):
        whole = ops.conv(x, w, stride=2, padding=1)
        monkeypatch.setattr(reference, "_CHUNK", 1)  # one example per slice
        assert_same(lambda x, w: ops.conv(x, w, stride=2, padding=1), x, w)
        assert_same(lambda x: ops.max_pool(x, 3, 2, padding=1), x)
        assert_same(lambda x: ops.avg_pool(x, 3, 2, padding=1), x)
        assert_same(lambda z, w: ops.conv_transpose(z, w, stride=2, padding=1),
                    _randn(3, 5, 4, 3, 3), w)  # w: 4 -> 3 channels
        torch.testing.assert_close(ops.conv(x, w, stride=2, padding=1), whole, **TOL)
    x.requires_grad_()
    y = ops.conv(x, w, stride=2, padding=1)
    g = _randn(2, *y.shape)
    (want,) = torch.autograd.grad(y, x, g)
    for method in ("gather", "scatter"):
        got = reference._conv_input_grad(g, w, (6, 6), (2, 2), (1, 1), (1, 1), 1, method=method)
        torch.testing.assert_close(got, want, **TOL)
