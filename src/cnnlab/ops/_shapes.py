"""Output-size arithmetic shared by the kernels, the notation and the inspector (8.2.1, 8.2.2)."""

from __future__ import annotations

from collections.abc import Sequence

from cnnlab.errors import ShapeError

IntOrTuple = int | Sequence[int]

# The largest size, stride, padding or count the notation and --input take: PyTorch's pooling
# kernels convert them to a C int and fail above it.
MAX_SIZE = 2**31 - 1


def as_tuple(value: IntOrTuple, dims: int, name: str) -> tuple[int, ...]:
    """Expand an int to `dims` copies; check a sequence has `dims` entries."""
    if isinstance(value, bool):
        raise ShapeError(f"{name} must be an int or a tuple of {dims} ints, got {value!r}")
    try:
        out = (value,) * dims if isinstance(value, int) else tuple(value)
    except TypeError:           # neither an int nor a sequence
        out = ()
    if len(out) != dims or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ShapeError(f"{name} must be an int or a tuple of {dims} ints, got {value!r}")
    if any(abs(v) > MAX_SIZE for v in out):
        raise ShapeError(f"{name} {value!r} is out of range: at most {MAX_SIZE:,}, the most "
                         "PyTorch's kernels take")
    return out


def resolve_padding(padding: IntOrTuple | str, kernel: Sequence[int],
                    dilation: Sequence[int]) -> tuple[int, ...]:
    """Turn 'valid' / 'half' / 'full' (8.2.1) or ints into a per-dimension zero padding.

    valid: none. half: (F - 1) / 2 on each side, which keeps the size (odd F only).
    full: F - 1 on each side, so the output grows to L + F - 1.
    F is the dilated filter extent D * (F - 1) + 1.
    """
    dims = len(kernel)
    extent = [d * (f - 1) + 1 for f, d in zip(kernel, dilation)]
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0,) * dims
        if mode == "full":
            return tuple(e - 1 for e in extent)
        if mode in ("half", "same"):
            even = [e for e in extent if e % 2 == 0]
            if even:
                raise ShapeError(
                    f"padding='half' keeps the size only for an odd filter, got filter extent "
                    f"{tuple(extent)}; pass the padding as ints instead")
            return tuple((e - 1) // 2 for e in extent)
        raise ShapeError(f"unknown padding {padding!r}: use an int, a tuple, 'valid', 'half' or 'full'")
    pad = as_tuple(padding, dims, "padding")
    if any(p < 0 for p in pad):
        raise ShapeError(f"padding must be >= 0, got {padding!r}")
    return pad


def conv_output_length(length: int, kernel: int, stride: int = 1, padding: int = 0,
                       dilation: int = 1, ceil_mode: bool = False) -> int:
    """(L + 2P - D(F - 1) - 1) / S + 1, floored (or ceiled for ceil-mode pooling)."""
    span = length + 2 * padding - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    if ceil_mode:
        out = -(-span // stride) + 1    # integer ceil: exact for sizes past 2**53
        # the last window must start inside the input or its left padding (PyTorch's rule)
        if (out - 1) * stride >= length + padding:
            out -= 1
        return out
    return span // stride + 1


def transpose_output_length(length: int, kernel: int, stride: int = 1, padding: int = 0,
                            output_padding: int = 0, dilation: int = 1) -> int:
    """(L - 1) S - 2P + D(F - 1) + output_padding + 1: the size a transposed convolution gives."""
    return (length - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
