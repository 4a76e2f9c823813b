"""Layers that run on :mod:`cnnlab.ops`, so a whole network can switch kernels.

Each layer subclasses the torch.nn module of the same name and only replaces its forward:
parameter names (``weight``, ``bias``), shapes, initialisation and ``isinstance`` checks stay
those of torch.nn, so state dicts load unchanged from torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cnnlab import ops
from cnnlab.errors import ModelError
from cnnlab.ops._shapes import as_tuple, resolve_padding

Size = int | Sequence[int]


def _conv_args(dims: int, kernel_size: Size, stride: Size, padding: Size | str,
               dilation: Size) -> tuple[Any, Any, Any, Any]:
    """torch.nn's (kernel_size, stride, padding, dilation), with the padding names resolved."""
    k, dl = as_tuple(kernel_size, dims, "kernel_size"), as_tuple(dilation, dims, "dilation")
    return k, as_tuple(stride, dims, "stride"), resolve_padding(padding, k, dl), dl


class _ConvMixin:
    """Forward through cnnlab.ops.conv; accepts the chapter's 'valid' / 'half' / 'full' padding."""

    _dims: int
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: Any
    padding: Any
    dilation: Any
    groups: int

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size, stride: Size = 1,
                 padding: Size | str = 0, dilation: Size = 1, groups: int = 1,
                 bias: bool = True) -> None:
        k, s, p, dl = _conv_args(self._dims, kernel_size, stride, padding, dilation)
        super().__init__(in_channels, out_channels, k, s, p, dl, groups, bias)  # type: ignore[call-arg]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class Conv1d(_ConvMixin, nn.Conv1d):
    """1-D convolution (text, 8.6.4). ``padding`` may be an int or 'valid' / 'half' / 'full'."""

    _dims = 1


class Conv2d(_ConvMixin, nn.Conv2d):
    """2-D convolution (8.2). ``padding`` may be an int, a pair or 'valid' / 'half' / 'full'.

    >>> Conv2d(3, 5, 5)(torch.zeros(1, 3, 32, 32)).shape          # Fig. 8.1
    torch.Size([1, 5, 28, 28])
    """

    _dims = 2


class Conv3d(_ConvMixin, nn.Conv3d):
    """3-D convolution (video, 8.6.5). ``padding`` may be an int, a triple or a padding name."""

    _dims = 3


class _ConvTransposeMixin:
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: Any
    padding: Any
    output_padding: Any
    dilation: Any
    groups: int

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        out_pad = self.output_padding
        if output_size is not None:  # pick the output_padding that reaches output_size
            base = [ops.transpose_output_length(n, k, s, p, 0, d) for n, k, s, p, d in zip(
                x.shape[2:], self.weight.shape[2:], self.stride, self.padding, self.dilation)]
            out_pad = tuple(t - b for t, b in zip(tuple(output_size)[-len(base):], base))
        return ops.conv_transpose(x, self.weight, self.bias, self.stride, self.padding, out_pad,
                                  self.groups, self.dilation)


class ConvTranspose1d(_ConvTransposeMixin, nn.ConvTranspose1d):
    """Transposed ("de-") convolution, 1-D (8.5.2); stride > 1 is fractionally strided."""


class ConvTranspose2d(_ConvTransposeMixin, nn.ConvTranspose2d):
    """Transposed ("de-") convolution, 2-D (8.5.2); stride > 1 is fractionally strided."""


class ConvTranspose3d(_ConvTransposeMixin, nn.ConvTranspose3d):
    """Transposed ("de-") convolution, 3-D (8.5.2)."""


class _MaxPoolMixin:
    kernel_size: Any
    stride: Any
    padding: Any
    dilation: Any
    ceil_mode: bool
    return_indices: bool

    def forward(self, x: torch.Tensor) -> Any:
        return ops.max_pool(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, return_switches=self.return_indices)


class MaxPool1d(_MaxPoolMixin, nn.MaxPool1d):
    """Max pooling, 1-D (8.2.5). ``return_indices=True`` also returns the switches."""


class MaxPool2d(_MaxPoolMixin, nn.MaxPool2d):
    """Max pooling, 2-D (8.2.5); 3x3 at stride 2 gives AlexNet's overlapping pools.
    ``return_indices=True`` also returns the switches for :class:`MaxUnpool2d`."""


class MaxPool3d(_MaxPoolMixin, nn.MaxPool3d):
    """Max pooling, 3-D (8.2.5, video)."""


class _AvgPoolMixin:
    kernel_size: Any
    stride: Any
    padding: Any
    ceil_mode: bool
    count_include_pad: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.avg_pool(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)


class AvgPool1d(_AvgPoolMixin, nn.AvgPool1d):
    """Average pooling, 1-D (8.2.5)."""


class AvgPool2d(_AvgPoolMixin, nn.AvgPool2d):
    """Average pooling, 2-D (8.2.5)."""


class AvgPool3d(_AvgPoolMixin, nn.AvgPool3d):
    """Average pooling, 3-D (8.2.5)."""


class _MaxUnpoolMixin:
    kernel_size: Any
    stride: Any
    padding: Any

    def forward(self, x: torch.Tensor, indices: torch.Tensor,
                output_size: Sequence[int] | None = None) -> torch.Tensor:
        return ops.max_unpool(x, indices, self.kernel_size, self.stride, self.padding, output_size)


class MaxUnpool1d(_MaxUnpoolMixin, nn.MaxUnpool1d):
    """Places pooled values back at their switches (8.5.2), 1-D."""


class MaxUnpool2d(_MaxUnpoolMixin, nn.MaxUnpool2d):
    """Places pooled values back at their switches (8.5.2), 2-D."""


class MaxUnpool3d(_MaxUnpoolMixin, nn.MaxUnpool3d):
    """Places pooled values back at their switches (8.5.2), 3-D."""


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """torchvision's ``avgpool`` (before the classifier of AlexNet and VGG) on cnnlab.ops.

    At the native input size the last volume already has the output size (6x6, 7x7) and this
    is the identity. At other sizes it averages torch's adaptive windows (output row i covers
    input rows floor(i*H/h) .. ceil((i+1)*H/h) - 1), written as one averaging matrix per axis
    applied with ``ops.linear``, so it runs on both kernels and equals torch's result.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.output_size
        oh, ow = size if isinstance(size, tuple) else (size, size)
        h, w = x.shape[-2:]
        oh, ow = oh or h, ow or w
        if (h, w) == (oh, ow):
            return x
        x = ops.linear(x, _averaging(w, ow, x))                        # N x C x H x ow
        x = ops.linear(x.transpose(-1, -2), _averaging(h, oh, x))      # N x C x ow x oh
        return x.transpose(-1, -2)                                     # N x C x oh x ow


def _averaging(n: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """(out, n): row i averages torch's adaptive window i of a length-n axis."""
    m = torch.zeros(out, n, dtype=like.dtype, device=like.device)
    for i in range(out):
        start, end = i * n // out, -(-(i + 1) * n // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class GlobalAvgPool(nn.Module):
    """Average each feature map over its whole spatial extent (8.2.6, GoogLeNet):
    (N, C, *spatial) -> (N, C), or (N, C, 1, ..., 1) with ``flatten=False``."""

    def __init__(self, flatten: bool = True) -> None:
        super().__init__()
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.avg_pool(x, tuple(x.shape[2:]))
        return y.flatten(1) if self.flatten else y

    def extra_repr(self) -> str:
        return f"flatten={self.flatten}"


class LRN(nn.Module):
    """Local response normalisation across channels, Eq. 8.2 (AlexNet: n=5, alpha=1e-4,
    beta=0.75, k=2). alpha is *not* divided by n here, unlike torch.nn.LocalResponseNorm."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                 k: float = 2.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.lrn(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class ReLU(nn.ReLU):
    """max(x, 0) (8.2.4); the backward rule follows :func:`cnnlab.ops.relu_backward`.
    ``inplace`` is accepted for torchvision compatibility and ignored (the deconvnet and guided
    rules need the input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.relu(x)


class Linear(nn.Linear):
    """Fully connected layer (8.2.6)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)


class Dropout(nn.Dropout):
    """Dropout (8.4.1: AlexNet drops units with probability 0.5 in its FC layers)."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__(check_dropout(p), inplace)


def check_dropout(p: object) -> float:
    """``p`` as given, if it is a dropout probability (in [0, 1]); else a ModelError."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
        raise ModelError(f"dropout is the probability of dropping a unit, in [0, 1] (AlexNet "
                         f"and VGG use 0.5); got dropout={p!r}")
    return float(p)


class Flatten(nn.Flatten):
    """(N, C, H, W) -> (N, C·H·W), the step from the last spatial volume to FC layers."""
