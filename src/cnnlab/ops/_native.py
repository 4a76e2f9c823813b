"""PyTorch's native kernels behind cnnlab.ops (arguments already checked and normalised)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.ops._function import apply

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_UNPOOL = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
         stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...],
         groups: int) -> torch.Tensor:
    return _CONV[x.dim() - 2](x, weight, bias, stride, padding, dilation, groups)


def conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: tuple[int, ...], padding: tuple[int, ...],
                   output_padding: tuple[int, ...], dilation: tuple[int, ...],
                   groups: int) -> torch.Tensor:
    return _CONV_T[x.dim() - 2](x, weight, bias, stride, padding, output_padding, groups, dilation)


def max_pool(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
             padding: tuple[int, ...], dilation: tuple[int, ...], ceil_mode: bool,
             return_switches: bool) -> Any:
    pool: Any = _MAX[x.dim() - 2]
    return pool(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode,
                return_indices=return_switches)


def avg_pool(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
             padding: tuple[int, ...], ceil_mode: bool, count_include_pad: bool) -> torch.Tensor:
    return _AVG[x.dim() - 2](x, kernel, stride, padding, ceil_mode=ceil_mode,
                             count_include_pad=count_include_pad)


def max_unpool(y: torch.Tensor, switches: torch.Tensor, output_size: tuple[int, ...]) -> torch.Tensor:
    # PyTorch only uses kernel and stride to check output_size against its default size;
    # stride 1 and kernel out - in + 1 make that default exactly output_size
    kernel = tuple(max(o - i + 1, 1) for o, i in zip(output_size, y.shape[2:]))
    d = y.dim() - 2
    return _UNPOOL[d](y, switches, kernel, (1,) * d, (0,) * d, output_size=output_size)


def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    # 8.2.8: Eq. 8.2 does not divide alpha by the window size; PyTorch does, so undo it.
    flat = x.dim() == 2  # (N, C): PyTorch wants a spatial dim
    y = F.local_response_norm(x.unsqueeze(-1) if flat else x, size, alpha=alpha * size,
                              beta=beta, k=k)
    return y.squeeze(-1) if flat else y


class _RuleReLU(torch.autograd.Function):
    """torch.relu forward; the deconvnet or guided backward rule of Fig. 8.14."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rule: str) -> torch.Tensor:
        ctx.rule = rule
        ctx.save_for_backward(x)
        return torch.relu(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        if ctx.rule == "deconvnet":
            return torch.relu(g), None
        return g * ((x > 0) & (g > 0)).to(g.dtype), None


def relu(x: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "backprop":
        return torch.relu(x)
    return apply(_RuleReLU, x, rule)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight, bias)
