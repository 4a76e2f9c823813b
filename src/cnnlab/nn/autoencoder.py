"""The decoder's layers of a convolutional autoencoder (8.5.2).

- :class:`Deconv2d`: the deconvolution that undoes one encoder :class:`~cnnlab.nn.Conv2d`.
  Tied (Eq. 8.5), its filter *is* the encoder's weight, used transposed and spatially
  inverted; untied, a filter of its own with the same shape.
- :func:`output_padding`: the extra rows a transposed convolution needs to give back the exact
  size its encoder convolution started from (stride S > 1 maps S sizes onto one).

A deconvolution is a convolution with the transposed, inverted filter
``u[s, k, i, j] = w[k, s, n - i + 1, n - j + 1]`` (Eq. 8.5): :func:`cnnlab.ops.conv_transpose`
with the encoder's weight computes exactly that, so a tied layer passes the encoder's
parameter itself and autograd adds the gradients of its two uses, as 8.5.2 asks.

Paddings: the chapter pads the *convolution* that implements the deconvolution, and the two
paddings of a pair sum to F - 1 (half + half, or valid + full). In transposed-convolution
terms that convolution's padding is F - 1 - P for a transposed padding P, so a pair restores
the size when the transposed padding equals the encoder's own padding P.

>>> import torch
>>> from cnnlab.nn import Conv2d
>>> conv = Conv2d(1, 4, 5)                      # valid: 12x12 -> 8x8
>>> deconv = Deconv2d(conv)                     # full padding in the chapter's terms
>>> deconv(conv(torch.zeros(2, 1, 12, 12)), (12, 12)).shape
torch.Size([2, 1, 12, 12])
>>> deconv.filter() is conv.weight              # one parameter (Eq. 8.5)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from cnnlab import ops
from cnnlab.errors import ShapeError
from cnnlab.nn.layers import Conv2d


def output_padding(size: Sequence[int], target: Sequence[int], kernel: Sequence[int],
                   stride: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int]) -> tuple[int, ...]:
    """The ``output_padding`` with which a transposed convolution of a ``size`` map reaches
    ``target`` (per spatial dimension); a ShapeError when no padding can."""
    out = []
    for n, t, k, s, p, d in zip(size, target, kernel, stride, padding, dilation, strict=True):
        extra = t - ops.transpose_output_length(n, k, s, p, 0, d)
        if not 0 <= extra < max(s, d):
            raise ShapeError(f"a deconvolution of a {n}-long map (filter {k}, stride {s}, "
                             f"padding {p}) cannot give back {t}: it reaches "
                             f"{ops.transpose_output_length(n, k, s, p, 0, d)} to "
                             f"{ops.transpose_output_length(n, k, s, p, max(s, d) - 1, d)}; "
                             "decode the size the encoder started from")
        out.append(extra)
    return tuple(out)


class Deconv2d(nn.Module):
    """The deconvolution (transposed convolution) that mirrors the encoder layer ``conv``:
    its C_out maps back to C_in, with the same filter size, stride, padding and dilation.

    ``tied=True``: the filter is ``conv.weight`` itself (Eq. 8.5), one parameter whose
    gradient sums both uses; this layer then owns only its bias (one per input channel).
    The encoder layer is held outside the module tree, so the weight is saved once, under the
    encoder's name. ``tied=False``: a filter of its own, drawn like the encoder's.
    """

    weight: nn.Parameter | None

    def __init__(self, conv: Conv2d, tied: bool = True) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ShapeError(f"Deconv2d mirrors ungrouped convolutions, got groups={conv.groups}")
        self.tied = bool(tied)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self._encoder = (conv,)                  # a tuple: not a sub-module, not saved twice
        if self.tied:
            self.register_parameter("weight", None)
        else:
            # C_out x C_in x F x F, as the encoder's: conv_transpose reads it transposed
            self.weight = nn.Parameter(torch.empty_like(conv.weight))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))    # torch's conv default
        self.bias = nn.Parameter(torch.zeros(conv.in_channels, device=conv.weight.device,
                                             dtype=conv.weight.dtype))

    @property
    def encoder(self) -> Conv2d:
        """The convolution this layer undoes."""
        return self._encoder[0]

    def filter(self) -> torch.Tensor:
        """The filter bank used, C_out x C_in x F x F (the encoder's when tied)."""
        weight = self.encoder.weight if self.weight is None else self.weight
        return weight

    def forward(self, x: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        """``x`` (N x C_out x h x w) back to N x C_in x ``output_size``: the size the encoder
        layer was given."""
        weight = self.filter()
        pad = output_padding(x.shape[2:], tuple(output_size)[-2:], weight.shape[2:],
                             self.stride, self.padding, self.dilation)
        return ops.conv_transpose(x, weight, self.bias, self.stride, self.padding, pad, 1,
                                  self.dilation)

    def extra_repr(self) -> str:
        c_out, c_in, *k = self.filter().shape
        return (f"{c_out}, {c_in}, kernel_size={tuple(k)}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, tied={self.tied}")
