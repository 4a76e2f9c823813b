"""The chapter's operations as functions on tensors, on two kernels.

Every function here checks its arguments once, then runs on the kernel chosen by
:func:`kernels`: ``"native"`` (PyTorch's own kernels, the default) or ``"reference"``
(:mod:`cnnlab.ops.reference`: im2col + matrix product, and backward passes written by
hand as the chapter derives them). Both give the same values and gradients.

>>> import torch, cnnlab.ops as ops
>>> x, w = torch.randn(1, 3, 32, 32), torch.randn(5, 3, 5, 5)
>>> ops.conv(x, w).shape                      # Fig. 8.1: 32x32x3 * 5x5x3 -> 28x28x5
torch.Size([1, 5, 28, 28])
>>> with ops.kernels("reference"):
...     y = ops.conv(x, w, padding="half")    # 8.2.1: half padding keeps 32x32
>>> y.shape
torch.Size([1, 5, 32, 32])
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Literal, Protocol, overload

import torch

from cnnlab.errors import OptionError, ShapeError
from cnnlab.ops import _native, reference
from cnnlab.ops._shapes import (
    IntOrTuple,
    as_tuple,
    conv_output_length,
    resolve_padding,
    transpose_output_length,
)

__all__ = [
    "avg_pool", "conv", "conv_matrix", "conv_output_length", "conv_transpose", "current_kernel",
    "current_relu_backward", "kernels", "linear", "lrn", "max_pool", "max_unpool", "relu",
    "relu_backward", "resolve_padding", "transpose_output_length",
]

KernelName = Literal["native", "reference"]
ReluRule = Literal["backprop", "deconvnet", "guided"]



class _Kernel(Protocol):
    """What each kernel module (``_native``, ``reference``) provides; arguments are checked."""

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...],
             groups: int, /) -> torch.Tensor: ...
    def conv_transpose(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       stride: tuple[int, ...], padding: tuple[int, ...],
                       output_padding: tuple[int, ...], dilation: tuple[int, ...],
                       groups: int, /) -> torch.Tensor: ...
    def max_pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
                 padding: tuple[int, ...], dilation: tuple[int, ...], ceil_mode: bool,
                 return_switches: bool, /) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
    def avg_pool(self, x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
                 padding: tuple[int, ...], ceil_mode: bool, count_include_pad: bool, /
                 ) -> torch.Tensor: ...
    def max_unpool(self, y: torch.Tensor, switches: torch.Tensor,
                   output_size: tuple[int, ...], /) -> torch.Tensor: ...
    def lrn(self, x: torch.Tensor, size: int, alpha: float, beta: float, k: float, /
            ) -> torch.Tensor: ...
    def relu(self, x: torch.Tensor, rule: str, /) -> torch.Tensor: ...
    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, /
               ) -> torch.Tensor: ...


_KERNELS: dict[str, _Kernel] = {"native": _native, "reference": reference}
_RELU_RULES = ("backprop", "deconvnet", "guided")
_kernel: contextvars.ContextVar[str] = contextvars.ContextVar("cnnlab_kernel", default="native")
_relu_rule: contextvars.ContextVar[str] = contextvars.ContextVar("cnnlab_relu", default="backprop")


@contextlib.contextmanager
def _scoped(var: contextvars.ContextVar[str], value: str) -> Iterator[None]:
    """Set ``var`` for the block; restore the previous value on exit, also on error."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def kernels(name: KernelName) -> contextlib.AbstractContextManager[None]:
    """Run every cnnlab operation inside the block on ``"native"`` or ``"reference"`` kernels.

    The previous choice is restored on exit, also when the block raises.
    """
    if name not in _KERNELS:
        raise OptionError(f"unknown kernel {name!r}: use 'native' or 'reference'")
    return _scoped(_kernel, name)


def current_kernel() -> str:
    """The kernel that operations run on now: ``"native"`` or ``"reference"``."""
    return _kernel.get()


def relu_backward(rule: ReluRule) -> contextlib.AbstractContextManager[None]:
    """Choose how :func:`relu` passes gradients back (Fig. 8.14), for ReLUs run inside the block.

    - ``"backprop"``: the true gradient, g * [x > 0];
    - ``"deconvnet"``: the gradient's own positive part, max(g, 0), whatever x was;
    - ``"guided"``: both conditions, g * [x > 0] * [g > 0].

    The rule is taken when the ReLU runs forward, so do the forward pass inside the block.
    """
    if rule not in _RELU_RULES:
        raise OptionError(f"unknown ReLU backward rule {rule!r}: use one of "
                          f"{', '.join(_RELU_RULES)}")
    return _scoped(_relu_rule, rule)


def current_relu_backward() -> str:
    """The ReLU backward rule in force now."""
    return _relu_rule.get()


def _impl() -> _Kernel:
    return _KERNELS[_kernel.get()]


def _spatial_dims(x: torch.Tensor, op: str, dims: Sequence[int] = (1, 2, 3)) -> int:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{op}: expected a tensor, got {type(x).__name__}")
    d = x.dim() - 2
    if d not in dims:
        wanted = " or ".join(f"{k + 2}-D (N, C{', L' * k})" for k in dims)
        raise ShapeError(f"{op}: input must be {wanted}, got shape {tuple(x.shape)}; "
                         "add a batch dimension with x.unsqueeze(0) if it is one example")
    return d


def _check_positive(values: Sequence[int], name: str, op: str) -> None:
    if any(v <= 0 for v in values):
        raise ShapeError(f"{op}: {name} must be positive, got {tuple(values)}")


def _check_fits(x: torch.Tensor, kernel: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], op: str) -> None:
    size = x.shape[2:]
    for length, f, p, d in zip(size, kernel, padding, dilation):
        if length + 2 * p < d * (f - 1) + 1:
            raise ShapeError(
                f"{op}: filter {tuple(kernel)} (dilation {tuple(dilation)}) is larger than the "
                f"input {tuple(size)} padded by {tuple(padding)}; use a smaller filter, more "
                "padding or a larger input")


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         stride: IntOrTuple = 1, padding: IntOrTuple | str = 0, dilation: IntOrTuple = 1,
         groups: int = 1) -> torch.Tensor:
    """Convolution (8.2): slide each filter over the input and take dot products.

    ``x`` is (N, C_in, *spatial) with 1, 2 or 3 spatial dims (text, images, video);
    ``weight`` is (C_out, C_in / groups, *filter). ``padding`` is an int, a tuple,
    ``"valid"``, ``"half"`` or ``"full"`` (8.2.1). Output length per dimension:
    (L + 2P - D(F - 1) - 1) // S + 1.

    >>> import torch
    >>> x = torch.tensor([[[2., 1, 3, 4, 7]]])        # exercise 1
    >>> conv(x, torch.tensor([[[1., 0, 1]]]), padding="half")
    tensor([[[ 1.,  5.,  5., 10.,  4.]]])
    """
    d = _spatial_dims(x, "conv")
    if weight.dim() != d + 2:
        raise ShapeError(f"conv: weight must be {d + 2}-D (C_out, C_in/groups, *filter) for a "
                         f"{d + 2}-D input, got shape {tuple(weight.shape)}")
    if not isinstance(groups, int) or groups <= 0:
        raise ShapeError(f"conv: groups must be a positive int, got {groups!r}")
    c_in, c_out = x.shape[1], weight.shape[0]
    if c_in % groups or c_out % groups:
        raise ShapeError(f"conv: groups={groups} must divide both input channels ({c_in}) and "
                         f"filters ({c_out})")
    if weight.shape[1] * groups != c_in:
        raise ShapeError(
            f"conv: input has {c_in} channels but the filters have depth {weight.shape[1]} "
            f"(x groups={groups}); a filter's depth must match the input depth (8.2)")
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ShapeError(f"conv: bias must have shape ({c_out},), got {tuple(bias.shape)}")
    kernel = tuple(weight.shape[2:])
    s = as_tuple(stride, d, "stride")
    dil = as_tuple(dilation, d, "dilation")
    _check_positive(s, "stride", "conv")
    _check_positive(dil, "dilation", "conv")
    _check_positive(kernel, "filter size", "conv")
    pad = resolve_padding(padding, kernel, dil)
    _check_fits(x, kernel, pad, dil, "conv")
    return _impl().conv(x, weight, bias, s, pad, dil, groups)


def conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                   output_padding: IntOrTuple = 0, groups: int = 1,
                   dilation: IntOrTuple = 1) -> torch.Tensor:
    """Transposed convolution ("deconvolution", 8.3.3 and 8.5.2): multiplication by C^T.

    It is the gradient of :func:`conv` with respect to its input. A stride S > 1 gives the
    fractionally strided convolution of 8.5.2: the input is spread out with S - 1 zeros
    between entries, so the output grows by a factor of about S.
    ``weight`` is (C_in, C_out / groups, *filter), as in :func:`torch.nn.functional.conv_transpose2d`.
    Output length: (L - 1) S - 2P + D(F - 1) + output_padding + 1.
    """
    d = _spatial_dims(x, "conv_transpose")
    if weight.dim() != d + 2:
        raise ShapeError(f"conv_transpose: weight must be {d + 2}-D (C_in, C_out/groups, *filter), "
                         f"got shape {tuple(weight.shape)}")
    if not isinstance(groups, int) or groups <= 0:
        raise ShapeError(f"conv_transpose: groups must be a positive int, got {groups!r}")
    c_in = x.shape[1]
    if weight.shape[0] != c_in or c_in % groups:
        raise ShapeError(f"conv_transpose: input has {c_in} channels but weight has shape "
                         f"{tuple(weight.shape)} (its first dimension must equal the input "
                         f"channels, divisible by groups={groups})")
    c_out = weight.shape[1] * groups
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ShapeError(f"conv_transpose: bias must have shape ({c_out},), got {tuple(bias.shape)}")
    kernel = tuple(weight.shape[2:])
    s = as_tuple(stride, d, "stride")
    dil = as_tuple(dilation, d, "dilation")
    pad = as_tuple(padding, d, "padding")
    out_pad = as_tuple(output_padding, d, "output_padding")
    _check_positive(s, "stride", "conv_transpose")
    _check_positive(dil, "dilation", "conv_transpose")
    if any(p < 0 for p in pad):
        raise ShapeError(f"conv_transpose: padding must be >= 0, got {pad}")
    if any(not (0 <= o < max(st, dl)) for o, st, dl in zip(out_pad, s, dil)):
        raise ShapeError(f"conv_transpose: output_padding {out_pad} must be smaller than the "
                         f"stride {s} or the dilation {dil}")
    size = [transpose_output_length(n, f, st, p, o, dl)
            for n, f, st, p, o, dl in zip(x.shape[2:], kernel, s, pad, out_pad, dil)]
    if any(n <= 0 for n in size):
        raise ShapeError(f"conv_transpose: padding {pad} leaves no output for input "
                         f"{tuple(x.shape[2:])} and filter {kernel}; use less padding")
    return _impl().conv_transpose(x, weight, bias, s, pad, out_pad, dil, groups)


def _pool_args(x: torch.Tensor, kernel: IntOrTuple, stride: IntOrTuple | None,
               padding: IntOrTuple, dilation: IntOrTuple, op: str
               ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    d = _spatial_dims(x, op)
    k = as_tuple(kernel, d, "kernel")
    s = k if stride is None else as_tuple(stride, d, "stride")
    p = as_tuple(padding, d, "padding")
    dil = as_tuple(dilation, d, "dilation")
    _check_positive(k, "kernel", op)
    _check_positive(s, "stride", op)
    _check_positive(dil, "dilation", op)
    if any(pp < 0 or 2 * pp > kk for pp, kk in zip(p, k)):
        raise ShapeError(f"{op}: padding {p} must be >= 0 and at most half the kernel {k}")
    _check_fits(x, k, p, dil, op)
    return k, s, p, dil


@overload
def max_pool(x: torch.Tensor, kernel: IntOrTuple, stride: IntOrTuple | None = ...,
             padding: IntOrTuple = ..., dilation: IntOrTuple = ..., ceil_mode: bool = ...,
             return_switches: Literal[False] = ...) -> torch.Tensor: ...
@overload
def max_pool(x: torch.Tensor, kernel: IntOrTuple, stride: IntOrTuple | None = ...,
             padding: IntOrTuple = ..., dilation: IntOrTuple = ..., ceil_mode: bool = ...,
             *, return_switches: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def max_pool(x: torch.Tensor, kernel: IntOrTuple, stride: IntOrTuple | None = ...,
             padding: IntOrTuple = ..., dilation: IntOrTuple = ..., ceil_mode: bool = ...,
             return_switches: bool = ...) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
def max_pool(x: torch.Tensor, kernel: IntOrTuple, stride: IntOrTuple | None = None,
             padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
             return_switches: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Max pooling over P x P regions of each map separately (8.2.5); pools may overlap.

    ``stride`` defaults to ``kernel`` (no overlap). With ``return_switches=True`` it also
    returns the *switches*: for every output, the flat index of the winning input position
    within its map (as PyTorch's ``indices``), used by :func:`max_unpool` and by the gradient,
    which goes to the winner of each pool and is summed over overlapping pools (8.3).
    """
    k, s, p, dil = _pool_args(x, kernel, stride, padding, dilation, "max_pool")
    return _impl().max_pool(x, k, s, p, dil, bool(ceil_mode), bool(return_switches))


def avg_pool(x: torch.Tensor, kernel: IntOrTuple, stride: IntOrTuple | None = None,
             padding: IntOrTuple = 0, ceil_mode: bool = False,
             count_include_pad: bool = True) -> torch.Tensor:
    """Average pooling over P x P regions of each map (8.2.5); ``stride`` defaults to ``kernel``."""
    k, s, p, _ = _pool_args(x, kernel, stride, padding, 1, "avg_pool")
    return _impl().avg_pool(x, k, s, p, bool(ceil_mode), bool(count_include_pad))


def max_unpool(y: torch.Tensor, switches: torch.Tensor, kernel: IntOrTuple,
               stride: IntOrTuple | None = None, padding: IntOrTuple = 0,
               output_size: Sequence[int] | None = None) -> torch.Tensor:
    """Undo :func:`max_pool` with its switches (8.5.2): each value goes back to where its
    maximum came from; every other position is zero. ``output_size`` is the spatial size of
    the pooled input (default: the size the pooling arithmetic implies)."""
    d = _spatial_dims(y, "max_unpool")
    if switches.shape != y.shape or switches.dtype != torch.int64:
        raise ShapeError(f"max_unpool: switches must be int64 with the shape of the pooled "
                         f"tensor {tuple(y.shape)}, got {switches.dtype} {tuple(switches.shape)}; "
                         "use max_pool(..., return_switches=True)")
    k = as_tuple(kernel, d, "kernel")
    s = k if stride is None else as_tuple(stride, d, "stride")
    p = as_tuple(padding, d, "padding")
    if output_size is None:
        size = tuple((n - 1) * st - 2 * pp + kk for n, st, pp, kk in zip(y.shape[2:], s, p, k))
    else:
        size = tuple(output_size)[-d:]
        if len(size) != d:
            raise ShapeError(f"max_unpool: output_size must give {d} spatial sizes, got {output_size!r}")
    _check_positive(size, "output_size", "max_unpool")
    # (a meta tensor, as cnnlab.inspect traces shapes with, holds no switch values to check)
    if switches.numel() and not switches.is_meta and int(switches.max()) >= _prod(size):
        raise ShapeError(f"max_unpool: a switch points outside the output size {size}; pass the "
                         "size of the tensor that was pooled as output_size")
    return _impl().max_unpool(y, switches, size)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
        k: float = 2.0) -> torch.Tensor:
    """Local response normalisation across channels, exactly Eq. 8.2 (AlexNet's values):

        b_i = a_i / (k + alpha * sum_{j = i - n//2}^{i + n//2} a_j^2) ** beta

    Here ``alpha`` multiplies the sum as written. PyTorch's ``local_response_norm`` and Caffe
    divide alpha by the window size n; to reproduce a Caffe model, pass alpha / n.
    The window is symmetric, so ``size`` must be odd.
    """
    _spatial_dims(x, "lrn", dims=(0, 1, 2, 3))
    if not isinstance(size, int) or size <= 0 or size % 2 == 0:
        raise ShapeError(f"lrn: size must be a positive odd int (Eq. 8.2's window i - n//2 .. "
                         f"i + n//2 is symmetric), got {size!r}")
    return _impl().lrn(x, size, float(alpha), float(beta), float(k))


def relu(x: torch.Tensor) -> torch.Tensor:
    """max(x, 0) (8.2.4); its backward rule is set by :func:`relu_backward`."""
    return _impl().relu(x, _relu_rule.get())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Fully connected layer (8.2.6): x W^T + b, for x of shape (..., in_features)."""
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ShapeError(f"linear: input has {x.shape[-1] if x.dim() else 0} features per example "
                         f"(shape {tuple(x.shape)}) but the weight expects {weight.shape[1]} "
                         f"(weight shape {tuple(weight.shape)}); flatten the input or fix in_features")
    return _impl().linear(x, weight, bias)


def conv_matrix(weight: torch.Tensor, input_size: IntOrTuple, stride: IntOrTuple = 1,
                padding: IntOrTuple | str = 0, dilation: IntOrTuple = 1) -> torch.Tensor:
    """The sparse matrix C of Fig. 8.8 for one example: ``C @ vec(x) == vec(conv(x))``.

    ``weight`` is (C_out, C_in, *filter); ``input_size`` the spatial size of x. C has shape
    (C_out * prod(out_size), C_in * prod(input_size)); vec() flattens channels first, then rows
    top to bottom (``x.reshape(-1)``). ``C.T @ vec(g)`` is the gradient with respect to x (8.3.3).

    >>> import torch
    >>> w = torch.tensor([[[[1., 2.], [3., 4.]]]])       # a 2x2 filter on a 3x3 input
    >>> conv_matrix(w, 3).to_dense()[0]
    tensor([1., 2., 0., 3., 4., 0., 0., 0., 0.])
    """
    d = weight.dim() - 2
    if d not in (1, 2, 3):
        raise ShapeError(f"conv_matrix: weight must be 3-, 4- or 5-D (C_out, C_in, *filter), "
                         f"got shape {tuple(weight.shape)}")
    size = as_tuple(input_size, d, "input_size")
    _check_positive(size, "input_size", "conv_matrix")
    kernel = tuple(weight.shape[2:])
    s = as_tuple(stride, d, "stride")
    dil = as_tuple(dilation, d, "dilation")
    _check_positive(s, "stride", "conv_matrix")
    pad = resolve_padding(padding, kernel, dil)
    probe = torch.empty((1, weight.shape[1], *size), device="meta")
    _check_fits(probe, kernel, pad, dil, "conv_matrix")
    return reference.conv_matrix(weight, size, s, pad, dil)
