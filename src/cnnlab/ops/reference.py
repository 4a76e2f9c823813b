"""Reference kernels: the chapter's operations written the way the chapter explains them.

Convolution is a matrix product (8.3.3): ``im2col`` lays every receptive field of the padded
input out as one column, and the filters, flattened to rows, multiply that matrix once.
Backward passes are written by hand, not left to autograd:

- the input gradient of a convolution is itself a convolution (8.3.2): the output gradient,
  spread out by the stride and padded, convolved with the inverted (spatially flipped) and
  transposed (in/out channels swapped) filter of Eq. 8.3 -- multiplication by C^T;
- the weight gradient sums, over all positions where a shared weight was used, the output
  gradient times the input it met (8.3.1): one matrix product with the im2col matrix;
- max pooling remembers its switches, and the gradient of each pool goes to its switch,
  summed where pools overlap (8.3);
- LRN is Eq. 8.2 exactly (alpha is *not* divided by n), and ReLU has the three backward
  rules of Fig. 8.14.

The transposed convolution (8.5.2) is the input gradient of a convolution, so it runs on the
same machinery. Arguments arrive checked and normalised by :mod:`cnnlab.ops`: per-dimension
tuples for 1, 2 or 3 spatial dimensions, tensors of shape (N, C, *spatial).

Speed (benchmarks/ops_speed.py): windows are strided views, and each slice of the batch
costs one im2col copy of a few MiB and one matrix product. Python loops run over slices,
filter taps or stride phases, never over positions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.ops._function import apply, apply_pair
from cnnlab.ops._shapes import conv_output_length

Ints = tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# im2col and the convolution built on it (8.3.3)
# ---------------------------------------------------------------------------------------------

_CHUNK = 1 << 20  # elements of im2col matrix per slice of the batch (4 MiB in float32)


def _batches(n: int, per_example: int) -> list[slice]:
    """Slices of the batch whose im2col matrices hold about _CHUNK elements. Caffe builds the
    matrix one image at a time for the same reasons: it bounds the memory, and buffers of this
    size are recycled by the allocator instead of being mapped (and zeroed) afresh each call."""
    step = max(1, _CHUNK // max(1, per_example))
    return [slice(i, min(i + step, n)) for i in range(0, max(n, 1), step)]


def _spatial(slices: Iterable[slice]) -> tuple[Any, ...]:
    """An index that applies `slices` to the trailing (spatial) dims."""
    return (..., *slices)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _pad(x: torch.Tensor, before: Ints, after: Ints, value: float = 0.0) -> torch.Tensor:
    """Pad the spatial dims of (N, C, *spatial) with `before`/`after` entries of `value`."""
    if not any(before) and not any(after):
        return x
    spec = [p for b, a in zip(reversed(before), reversed(after)) for p in (b, a)]
    return F.pad(x, spec, value=value)


def _window(x: torch.Tensor, start: Ints, length: Ints) -> torch.Tensor:
    """x[..., start : start + length] per spatial dim, reading zeros outside x: a padding
    where start < 0 or the window runs past the end, a crop where it stays inside."""
    size = x.shape[2:]
    before = tuple(max(0, -s) for s in start)
    after = tuple(max(0, s + n - m) for s, n, m in zip(start, length, size))
    x = _pad(x, before, after)
    for i, (s, n, b) in enumerate(zip(start, length, before)):
        x = x.narrow(2 + i, s + b, n)
    return x


def _views(x: torch.Tensor, kernel: Ints, stride: Ints, dilation: Ints,
           out: Ints | None = None) -> torch.Tensor:
    """Every receptive field of an (already padded) input as a view: (N, C, *out, *kernel).

    One `unfold` per spatial dim takes windows of the dilated extent D(F - 1) + 1 at step S;
    `[..., ::D]` keeps the taps the dilated filter touches. No data is copied.
    """
    for i, (f, s, dl) in enumerate(zip(kernel, stride, dilation)):
        x = x.unfold(2 + i, dl * (f - 1) + 1, s)[..., ::dl]
    if out is not None:  # fewer positions than the input allows (transposed conv, ceil mode)
        for i, o in enumerate(out):
            x = x.narrow(2 + i, 0, o)
    return x


def _im2col(x: torch.Tensor, kernel: Ints, stride: Ints, dilation: Ints,
            out: Ints | None = None) -> torch.Tensor:
    """The im2col matrix of Fig. 8.8, one per example: (N, C·prod(F), prod(out))."""
    v = _views(x, kernel, stride, dilation, out)  # (N, C, *out, *F)
    d = len(kernel)
    n, c, positions = v.shape[0], v.shape[1], math.prod(v.shape[2:2 + d])
    v = v.permute(0, 1, *range(2 + d, 2 + 2 * d), *range(2, 2 + d))  # (N, C, *F, *out)
    return v.reshape(n, c * math.prod(kernel), positions)


def _col2im(cols: torch.Tensor, size: Ints, stride: Ints, padding: Ints,
            dilation: Ints) -> torch.Tensor:
    """The adjoint of im2col: add every entry of the columns (N, C, *F, *out) back into the
    input position it was read from; (N, C, *size). One strided slice per filter tap."""
    d = len(size)
    kernel, out = cols.shape[2:2 + d], cols.shape[2 + d:]
    padded = [max(n + 2 * p, (o - 1) * s + dl * (f - 1) + 1)
              for n, f, s, p, dl, o in zip(size, kernel, stride, padding, dilation, out)]
    xp = cols.new_zeros((*cols.shape[:2], *padded))
    for taps in itertools.product(*(range(f) for f in kernel)):
        tap: tuple[Any, ...] = (slice(None), slice(None), *taps)
        # tap f of the pool / filter at position o read the padded input at o·S + f·D
        xp[_spatial(slice(t * dl, t * dl + (o - 1) * s + 1, s)
                    for t, o, s, dl in zip(taps, out, stride, dilation))] += cols[tap]
    return xp[_spatial(slice(p, p + n) for p, n in zip(padding, size))]


def _conv(x: torch.Tensor, weight: torch.Tensor, stride: Ints, padding: Ints, dilation: Ints,
          groups: int, out: Ints | None = None) -> torch.Tensor:
    """Convolution as a (batched) matrix product: filters (rows) times im2col columns."""
    n, c_in, c_out, kernel = x.shape[0], x.shape[1], weight.shape[0], tuple(weight.shape[2:])
    if out is None:
        out = tuple((m + 2 * p - dl * (f - 1) - 1) // s + 1 for m, f, s, p, dl
                    in zip(x.shape[2:], kernel, stride, padding, dilation))
    rows, positions = c_in // groups * math.prod(kernel), math.prod(out)
    w = weight.reshape(groups, c_out // groups, rows)  # (G, C_out/G, C/G·F·F)

    def part(sl: slice) -> torch.Tensor:
        cols = _im2col(_pad(x[sl], padding, padding), kernel, stride, dilation, out)
        return w @ cols.view(-1, groups, rows, positions)  # (n, G, C_out/G, L_out)

    y = _cat([part(sl) for sl in _batches(n, c_in * math.prod(kernel) * positions)])
    return y.view(n, c_out, *out)


def _inverted_transposed(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Eq. 8.3: u[k, p, r, s] = w[p, k, F - r + 1, F - s + 1], within each group.

    (C_out, C_in/G, *F) -> (C_in, C_out/G, *F): channels swapped, every spatial dim flipped.
    """
    c_out, c_in_g, *kernel = weight.shape
    u = weight.reshape(groups, c_out // groups, c_in_g, *kernel).transpose(1, 2)
    u = u.reshape(groups * c_in_g, c_out // groups, *kernel)
    return u.flip(list(range(2, 2 + len(kernel))))


# One phase of the input gradient along one dim: (phase r, first tap of the inverted filter
# that meets g, step between such taps, where that tap's window starts in g, their dilation).
_Phase = tuple[int, int, int, int, int]


def _phases(size: int, f: int, s: int, p: int, dl: int) -> list[_Phase]:
    lead = dl * (f - 1) - p  # zeros before the dilated g (8.3.2: P + lead = F - 1); < 0: crop
    step, sub_dil = s // math.gcd(s, dl), dl // math.gcd(s, dl)
    phases = []
    for r in range(min(s, size)):
        taps = [t for t in range(min(step, f)) if (r + t * dl - lead) % s == 0]
        if taps:  # else no tap ever lands on an entry of g: the gradient here is zero
            phases.append((r, taps[0], step, (r + taps[0] * dl - lead) // s, sub_dil))
    return phases


def _conv_input_grad(g: torch.Tensor, weight: torch.Tensor, size: Ints, stride: Ints,
                     padding: Ints, dilation: Ints, groups: int,
                     method: str | None = None) -> torch.Tensor:
    """8.3.2: the gradient wrt the input of conv(x, weight), x of spatial `size`, from the
    output gradient g. Also the transposed convolution ("deconvolution") of g (8.5.2).

    The chapter's recipe: put S - 1 zeros between the entries of g, pad by D(F - 1) - P on
    each side (crop where negative; pad more on the right for the rows the strided forward
    never reached), and convolve at stride 1 with the inverted, transposed filter u.

    That convolution is computed in one of two orders, whichever makes the smaller im2col
    matrix (``method`` forces one; both give the same sums):

    - "gather", the recipe as written: each input position is a dot product of u with a
      window of the dilated g, via im2col + matmul. Most of those products would be with
      the inserted zeros, so the positions i are split by phase i mod S: one phase only
      meets the taps of u that land on entries of g (every S/gcd(S, D)-th tap), and is an
      ordinary stride-1 convolution of g itself with that sub-filter. S = 1: one phase.
    - "scatter": each entry of g, times the transposed filter, is added back onto the
      window it came from (col2im; the column view of C^T g, 8.3.3). Cheaper when the
      input has fewer channels than the output: a first layer (3 -> 96), or a strided
      convolution that widens the channels.
    """
    n, c_in, c_out = g.shape[0], weight.shape[1] * groups, weight.shape[0]
    kernel, out = tuple(weight.shape[2:]), tuple(g.shape[2:])
    plans = [_phases(*a) for a in zip(size, kernel, stride, padding, dilation)]
    gather_cost = c_out * math.prod(sum(len(range(r, m, s)) * len(range(t0, f, st))
                                        for r, t0, st, _, _ in plan)
                                    for plan, m, s, f in zip(plans, size, stride, kernel))
    scatter_cost = c_in * math.prod(kernel) * math.prod(out)
    if method is None:
        method = "gather" if gather_cost <= scatter_cost else "scatter"

    if method == "scatter":
        rows, positions = c_in // groups * math.prod(kernel), math.prod(out)
        w_t = weight.reshape(groups, c_out // groups, rows).transpose(1, 2)  # (G, rows, C_out/G)

        def scatter(sl: slice) -> torch.Tensor:
            gg = g[sl].reshape(-1, groups, c_out // groups, positions)  # (n, G, C_out/G, L_out)
            cols = (w_t @ gg).view(-1, c_in, *kernel, *out)  # (n, C_in, *F, *out)
            return _col2im(cols, size, stride, padding, dilation)

        return _cat([scatter(sl) for sl in _batches(n, scatter_cost)])

    u = _inverted_transposed(weight, groups)  # (C_in, C_out/G, *F)
    ones = (1,) * len(size)

    def phase(gs: torch.Tensor, combo: tuple[_Phase, ...]) -> torch.Tensor:
        sub = u[_spatial(slice(t0, None, st) for _, t0, st, _, _ in combo)].contiguous()
        lengths = [len(range(r, m, s)) for (r, *_), m, s in zip(combo, size, stride)]
        sub_dil = tuple(c[4] for c in combo)
        window = tuple(m + sd * (f - 1) for m, sd, f in zip(lengths, sub_dil, sub.shape[2:]))
        gw = _window(gs, tuple(c[3] for c in combo), window)  # g, padded or cropped
        return _conv(gw, sub, ones, (0,) * len(size), sub_dil, groups)  # (n, C_in, *lengths)

    def gather(sl: slice) -> torch.Tensor:
        gs = g[sl]
        if stride == ones:  # one phase: the recipe as written
            return phase(gs, tuple(p[0] for p in plans))
        dx = gs.new_zeros((gs.shape[0], c_in, *size))
        for combo in itertools.product(*plans):
            dx[_spatial(slice(r, None, s) for (r, *_), s in zip(combo, stride))] = phase(gs, combo)
        return dx

    return _cat([gather(sl) for sl in _batches(n, gather_cost)])


def _conv_weight_grad(x: torch.Tensor, g: torch.Tensor, kernel: Ints, stride: Ints,
                      padding: Ints, dilation: Ints, groups: int) -> torch.Tensor:
    """8.3.1: a shared weight's gradient is the sum over all positions where it was used of
    (output gradient) x (the input it multiplied): g times the transposed im2col matrix."""
    n, c_in, c_out = g.shape[0], x.shape[1], g.shape[1]
    out = tuple(g.shape[2:])
    rows, positions = c_in // groups * math.prod(kernel), math.prod(out)
    dw = g.new_zeros((groups, c_out // groups, rows))  # (G, C_out/G, C/G·F·F)
    for sl in _batches(n, c_in * math.prod(kernel) * positions):
        cols = _im2col(_pad(x[sl], padding, padding), kernel, stride, dilation, out)
        cols = cols.view(-1, groups, rows, positions)  # (n, G, C/G·F·F, L_out)
        gg = g[sl].reshape(-1, groups, c_out // groups, positions)  # (n, G, C_out/G, L_out)
        dw += (gg @ cols.transpose(-1, -2)).sum(0)  # summed over positions and examples
    return dw.view(c_out, c_in // groups, *kernel)


def _bias_grad(g: torch.Tensor) -> torch.Tensor:
    return g.sum(dim=[0, *range(2, g.dim())])


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return y
    return y + bias.view(1, -1, *([1] * (y.dim() - 2)))


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: Ints, padding: Ints, dilation: Ints, groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.args = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return _add_bias(_conv(x, weight, stride, padding, dilation, groups), bias)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.args
        g = g.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _conv_input_grad(g, weight, tuple(x.shape[2:]), stride, padding, dilation, groups)
        if ctx.needs_input_grad[1]:
            dw = _conv_weight_grad(x, g, tuple(weight.shape[2:]), stride, padding, dilation,
                                   groups)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = _bias_grad(g)
        return dx, dw, db, None, None, None, None


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Ints,
         padding: Ints, dilation: Ints, groups: int) -> torch.Tensor:
    return apply(_Conv, x, weight, bias, stride, padding, dilation, groups)


class _ConvTranspose(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: Ints, padding: Ints, output_padding: Ints, dilation: Ints,
                groups: int) -> torch.Tensor:
        kernel = weight.shape[2:]
        size = tuple((n - 1) * s - 2 * p + dl * (f - 1) + op + 1 for n, f, s, p, op, dl
                     in zip(x.shape[2:], kernel, stride, padding, output_padding, dilation))
        ctx.save_for_backward(x, weight)
        ctx.args = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        # weight (C_in, C_out/G, *F) is the filter of the convolution this one transposes
        y = _conv_input_grad(x.contiguous(), weight, size, stride, padding, dilation, groups)
        return _add_bias(y, bias)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.args
        g = g.contiguous()
        out = tuple(x.shape[2:])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:  # the transpose of the transpose: the convolution itself
            dx = _conv(g, weight, stride, padding, dilation, groups, out)
        if ctx.needs_input_grad[1]:  # <g, C(w)^T x> = <C(w) g, x>: g is the input, x the grad
            dw = _conv_weight_grad(g, x, tuple(weight.shape[2:]), stride, padding, dilation,
                                   groups)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = _bias_grad(g)
        return dx, dw, db, None, None, None, None, None


def conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: Ints, padding: Ints, output_padding: Ints, dilation: Ints,
                   groups: int) -> torch.Tensor:
    return apply(_ConvTranspose, x, weight, bias, stride, padding, output_padding, dilation,
                 groups)


# ---------------------------------------------------------------------------------------------
# Pooling (8.2.5) with switches (8.3, 8.5.2)
# ---------------------------------------------------------------------------------------------

def _pool_out(size: Ints, kernel: Ints, stride: Ints, padding: Ints, dilation: Ints,
              ceil_mode: bool) -> Ints:
    return tuple(conv_output_length(n, f, s, p, dl, ceil_mode)
                 for n, f, s, p, dl in zip(size, kernel, stride, padding, dilation))


def _pools(x: torch.Tensor, kernel: Ints, stride: Ints, padding: Ints, dilation: Ints,
           out: Ints, value: float, reduce: Any) -> list[Any]:
    """Apply `reduce` to the im2col matrix of every map, (m, prod(F), prod(out)), padded with
    `value`, in slices of maps. In ceil mode the last pool may hang past the padded input; it
    is padded further with `value`."""
    n, c, size = x.shape[0], x.shape[1], x.shape[2:]
    after = tuple(max(p, (o - 1) * s + dl * (f - 1) + 1 - m - p)
                  for m, f, s, p, dl, o in zip(size, kernel, stride, padding, dilation, out))
    maps = x.reshape(n * c, 1, *size)  # pooling works on every map on its own (8.2.5)
    return [reduce(_im2col(_pad(maps[sl], padding, after, value), kernel, stride, dilation, out))
            for sl in _batches(n * c, math.prod(out) * math.prod(kernel))]


def _flat(coords: list[list[int]], size: Ints, device: torch.device) -> torch.Tensor:
    """Flat indices, in a map of spatial `size`, of the grid of per-dim coordinates."""
    flat = torch.zeros((), dtype=torch.long, device=device)
    for m, c in zip(size, coords):
        flat = flat.unsqueeze(-1) * m + torch.tensor(c, dtype=torch.long, device=device)
    return flat.reshape(-1)


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: Ints, stride: Ints, padding: Ints,
                dilation: Ints, ceil_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, size = x.shape[0], x.shape[1], tuple(x.shape[2:])
        out = _pool_out(size, kernel, stride, padding, dilation, ceil_mode)
        # the switch of the pool at o won by tap k: the flat index of o·S - P + k·D in its
        # unpadded map = (where the pool starts) + (where tap k is, relative to that)
        starts = [[j * s - p for j in range(o)] for o, s, p in zip(out, stride, padding)]
        start = _flat(starts, size, x.device)
        tap = _flat([[j * dl for j in range(f)] for f, dl in zip(kernel, dilation)], size,
                    x.device)
        # no entry beat the padding's -inf: PyTorch's switch is the pool's first tap at
        # a coordinate >= 0 in every dim (past the input if the pool only covers padding)
        firsts = [[b + -(b // dl) * dl if b < 0 else b for b in bs]
                  for bs, dl in zip(starts, dilation)]
        first = _flat(firsts, size, x.device)

        def pool(cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y, k = cols.max(dim=1)  # (m, L_out); k: the first maximum in window order
            return y, torch.where(y == -math.inf, first, tap[k] + start)

        parts = _pools(x, kernel, stride, padding, dilation, out, -math.inf, pool)
        y = _cat([p[0] for p in parts]).view(n, c, *out)
        switches = _cat([p[1] for p in parts]).view(n, c, *out)
        # a dilated pool can skip over the input and meet padding only: its output is a
        # constant -inf, whose gradient goes nowhere
        covered = torch.ones((), dtype=torch.bool, device=x.device)
        for fs, m in zip(firsts, size):
            covered = covered.unsqueeze(-1) & (torch.tensor(fs, device=x.device) < m)
        ctx.covered = None if covered.all() else covered.reshape(-1)  # (L_out,)
        ctx.save_for_backward(switches)
        ctx.size = size
        ctx.mark_non_differentiable(switches)
        return y, switches

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, _: Any) -> tuple[Any, ...]:
        (switches,) = ctx.saved_tensors
        n, c = g.shape[:2]
        numel = math.prod(ctx.size)
        switches, g = switches.reshape(n, c, -1), g.reshape(n, c, -1)
        if ctx.covered is not None:  # pools on padding only pass nothing on
            g = torch.where(ctx.covered, g, 0.0)
            switches = torch.where(ctx.covered, switches, 0)
        # 8.3: each pool's gradient flows to its switch; overlapping pools add up
        dx = g.new_zeros((n, c, numel))
        dx.scatter_add_(2, switches, g)
        return dx.view(n, c, *ctx.size), None, None, None, None, None


def max_pool(x: torch.Tensor, kernel: Ints, stride: Ints, padding: Ints, dilation: Ints,
             ceil_mode: bool, return_switches: bool) -> Any:
    y, switches = apply_pair(_MaxPool, x, kernel, stride, padding, dilation, ceil_mode)
    return (y, switches) if return_switches else y


def _avg_divisor(size: Ints, kernel: Ints, stride: Ints, padding: Ints, out: Ints,
                 count_include_pad: bool, like: torch.Tensor) -> torch.Tensor:
    """PyTorch's divisor per pool, (*out): the pool's size clipped to input + padding
    (count_include_pad) or to the input alone; a product over spatial dims."""
    div = torch.ones((), dtype=like.dtype, device=like.device)
    for i, (n, f, s, p, o) in enumerate(zip(size, kernel, stride, padding, out)):
        start = torch.arange(o, device=like.device) * s - p
        end = start + f
        if count_include_pad:
            count = end.clamp(max=n + p) - start
        else:
            count = end.clamp(max=n) - start.clamp(min=0)
        div = div * count.to(like.dtype).view(-1, *([1] * (len(size) - 1 - i)))
    return div


class _AvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: Ints, stride: Ints, padding: Ints,
                ceil_mode: bool, count_include_pad: bool) -> torch.Tensor:
        size, ones = tuple(x.shape[2:]), (1,) * len(kernel)
        out = _pool_out(size, kernel, stride, padding, ones, ceil_mode)
        div = _avg_divisor(size, kernel, stride, padding, out, count_include_pad, x)
        ctx.save_for_backward(div)
        ctx.args = (size, kernel, stride, padding)
        n, c = x.shape[:2]
        sums = _pools(x, kernel, stride, padding, ones, out, 0.0, lambda cols: cols.sum(1))
        return _cat(sums).view(n, c, *out) / div

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        (div,) = ctx.saved_tensors
        size, kernel, stride, padding = ctx.args
        d = len(kernel)
        share = (g / div).view(*g.shape[:2], *(1,) * d, *g.shape[2:])  # (N, C, 1.., *out)
        # every member of a pool receives the same share: col2im of the broadcast columns
        cols = share.expand(*g.shape[:2], *kernel, *g.shape[2:])  # (N, C, *F, *out)
        return _col2im(cols, size, stride, padding, (1,) * d), None, None, None, None, None


def avg_pool(x: torch.Tensor, kernel: Ints, stride: Ints, padding: Ints, ceil_mode: bool,
             count_include_pad: bool) -> torch.Tensor:
    return apply(_AvgPool, x, kernel, stride, padding, ceil_mode, count_include_pad)


class _MaxUnpool(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, switches: torch.Tensor,
                size: Ints) -> torch.Tensor:
        n, c = y.shape[:2]
        idx = switches.reshape(n, c, -1)
        ctx.save_for_backward(idx)
        ctx.y_shape = y.shape
        # 8.5.2: each value goes back to its switch; every other position stays 0
        out = y.new_zeros((n, c, math.prod(size)))
        out.scatter_(2, idx, y.reshape(n, c, -1))
        return out.view(n, c, *size)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        (idx,) = ctx.saved_tensors
        n, c = g.shape[:2]
        dy = g.reshape(n, c, -1).gather(2, idx)  # the gradient flows back through the switches
        return dy.view(ctx.y_shape), None, None


def max_unpool(y: torch.Tensor, switches: torch.Tensor, output_size: Ints) -> torch.Tensor:
    return apply(_MaxUnpool, y, switches, tuple(output_size))


# ---------------------------------------------------------------------------------------------
# Local response normalisation (8.2.8, Eq. 8.2)
# ---------------------------------------------------------------------------------------------

def _channel_window_sum(t: torch.Tensor, size: int) -> torch.Tensor:
    """sum_{j = i - n//2}^{i + n//2} t_j across channels (dim 1), clipped at the ends."""
    h = size // 2
    tc = t.movedim(1, -1)  # (N, *spatial, C)
    tc = F.pad(tc, (h, h)).unfold(-1, size, 1).sum(-1)  # zeros beyond the ends = clipping
    return tc.movedim(-1, 1)


class _LRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, size: int, alpha: float, beta: float,
                k: float) -> torch.Tensor:
        s = k + alpha * _channel_window_sum(x * x, size)  # 8.2.8: alpha is not divided by n
        ctx.save_for_backward(x, s)
        ctx.args = (size, alpha, beta)
        return x * s.pow(-beta)  # b_i = a_i / s_i^beta

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, s = ctx.saved_tensors
        size, alpha, beta = ctx.args
        # db_i/da_j = [i = j] s_i^-beta - 2 alpha beta a_i a_j s_i^(-beta-1) for |i - j| <= n//2
        t = _channel_window_sum(g * x * s.pow(-beta - 1), size)
        return g * s.pow(-beta) - 2 * alpha * beta * x * t, None, None, None, None


def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return apply(_LRN, x, size, alpha, beta, k)


# ---------------------------------------------------------------------------------------------
# ReLU (8.2.4) and its three backward rules (Fig. 8.14), fully connected layers (8.2.6)
# ---------------------------------------------------------------------------------------------

class _ReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rule: str) -> torch.Tensor:
        ctx.rule = rule
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        (x,) = ctx.saved_tensors
        zero = g.new_zeros(())
        if ctx.rule == "deconvnet":  # max(g, 0): ignore where x was negative
            return torch.where(g > 0, g, zero), None
        if ctx.rule == "guided":  # g [x > 0] [g > 0]
            return torch.where((x > 0) & (g > 0), g, zero), None
        return torch.where(x > 0, g, zero), None  # backprop: g [x > 0]


def relu(x: torch.Tensor, rule: str) -> torch.Tensor:
    return apply(_ReLU, x, rule)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = x @ weight.T  # (..., out)
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        g2 = g.reshape(-1, weight.shape[0])  # (rows, out)
        dx = (g @ weight) if ctx.needs_input_grad[0] else None  # (..., in)
        dw = g2.T @ x.reshape(-1, weight.shape[1]) if ctx.needs_input_grad[1] else None
        db = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return apply(_Linear, x, weight, bias)


# ---------------------------------------------------------------------------------------------
# Convolution as a sparse matrix (Fig. 8.8)
# ---------------------------------------------------------------------------------------------

def conv_matrix(weight: torch.Tensor, input_size: Ints, stride: Ints, padding: Ints,
                dilation: Ints) -> torch.Tensor:
    """Row (p, o) of C is filter p placed at output position o: w[p, k, f] sits in the column
    of the input position (k, o·S - P + f·D) that tap f meets there; taps on padding drop out.
    Which input position each tap meets is the im2col matrix of the positions themselves."""
    c_out, c_in, *kernel = weight.shape
    n_in = math.prod(input_size)
    where = torch.arange(n_in, device=weight.device).view(1, 1, *input_size)
    where = _im2col(_pad(where, padding, padding, -1), tuple(kernel), stride, dilation)[0]
    tap, pos = (where >= 0).nonzero(as_tuple=True)  # (T,): taps that land inside the input
    n_out = where.shape[1]
    p = torch.arange(c_out, device=weight.device).view(-1, 1, 1)  # (C_out, 1, 1)
    k = torch.arange(c_in, device=weight.device).view(1, -1, 1)  # (1, C_in, 1)
    rows = (p * n_out + pos).expand(c_out, c_in, -1)  # (C_out, C_in, T)
    cols = (k * n_in + where[tap, pos]).expand(c_out, c_in, -1)
    values = weight.reshape(c_out, c_in, -1)[:, :, tap]  # (C_out, C_in, T)
    return torch.sparse_coo_tensor(torch.stack([rows.reshape(-1), cols.reshape(-1)]),
                                   values.reshape(-1), (c_out * n_out, c_in * n_in),
                                   check_invariants=False).coalesce()
