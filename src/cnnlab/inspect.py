"""The per-layer table of a network: volume, parameters, activation memory, receptive field,
multiply-accumulates (the chapter's Tables 8.1 and 8.2, computed rather than copied).

>>> from cnnlab import models
>>> s = summarize(models.create("lenet5"), (1, 32, 32))
>>> s.totals.params, s.rows[0].volume
(60000, '28×28×6')
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError, ShapeError, SizeError
from cnnlab.nn.autoencoder import Deconv2d
from cnnlab.nn.classifier import takes_ids
from cnnlab.nn.layers import GlobalAvgPool
from cnnlab.nn.lenet import RBF, PartialConv2d, Subsampling
from cnnlab.ops._shapes import MAX_SIZE

__all__ = ["LIMITS", "Row", "Summary", "Totals", "check_size", "size_limits", "summarize",
           "volume"]

Field = tuple[int | float, ...]
Fields = tuple[Field, Field, Field]     # receptive field, jump, start per spatial dim


def volume(shape: Sequence[int], sep: str = "×") -> str:
    """A per-example shape as the chapter writes volumes, depth last: (6, 28, 28) -> '28×28×6';
    (C, L) -> 'L×C'; (C, T, H, W) -> 'T×H×W×C'; a flat (84,) -> '84'."""
    shape = tuple(shape)
    return sep.join(map(str, shape[1:] + shape[:1] if len(shape) > 1 else shape))


@dataclass(frozen=True)
class Row:
    """One layer call: what it outputs and what it costs, per example."""

    name: str                           # dotted module path
    kind: str                           # class name
    output_shape: tuple[int, ...] | None  # with the batch dimension; None if never called
    volume: str                         # H×W×D as the chapter writes it
    params: int                         # trainable parameters owned directly
    frozen_params: int                  # parameters with requires_grad=False
    buffers: int                        # elements of saved buffers (e.g. RBF prototypes)
    activations: int                    # output elements per example
    activation_bytes: int
    receptive_field: Field | None       # per spatial dim, in input pixels; None once flat
    jump: Field | None                  # input pixels between neighbouring outputs
    start: Field | None                 # first input pixel seen by unit 0 (< 0 in the padding)
    macs: int                           # multiply-accumulates per example


@dataclass(frozen=True)
class Totals:
    """Sums over the model: parameters count each tensor once, the rest sum over the rows."""

    params: int
    frozen_params: int
    buffers: int
    activations: int
    activation_bytes: int
    macs: int


_COLUMNS = (("layer", "<"), ("kind", "<"), ("volume", ">"), ("params", ">"),
            ("activations", ">"), ("memory", ">"), ("RF", ">"), ("jump", ">"), ("MACs", ">"))


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:,.1f} {unit}"


def _field_text(f: Field | None) -> str:
    if f is None:
        return "-"
    text = [f"{v:g}" if isinstance(v, float) else str(v) for v in f]
    return text[0] if len(set(text)) == 1 else "×".join(text)


@dataclass(frozen=True)
class Summary:
    """The table of :func:`summarize`; ``to_text()`` prints it, ``to_dict()`` is JSON-ready."""

    input_shape: tuple[int, ...]
    batch_size: int
    dtype: str
    rows: list[Row]
    totals: Totals

    def to_text(self) -> str:
        """An aligned table with a header, one line per row and a totals line."""
        lines = [[r.name, r.kind, r.volume, f"{r.params:,}", f"{r.activations:,}",
                  _bytes(r.activation_bytes), _field_text(r.receptive_field),
                  _field_text(r.jump), f"{r.macs:,}"] for r in self.rows]
        lines.insert(0, ["input", "", volume(self.input_shape), "", "", "", "1", "1", ""])
        t = self.totals
        total = ["total", "", "", f"{t.params:,}", f"{t.activations:,}",
                 _bytes(t.activation_bytes), "", "", f"{t.macs:,}"]
        header = [c for c, _ in _COLUMNS]
        widths = [max(len(x[i]) for x in [header, total, *lines]) for i in range(len(header))]

        def fmt(cells: list[str]) -> str:
            cols = zip(cells, _COLUMNS, widths)
            return "  ".join(f"{c:{a}{w}}" for c, (_, a), w in cols).rstrip()

        rule = "-" * len(fmt(["-" * w for w in widths]))
        out = [fmt(header), rule, *map(fmt, lines), rule, fmt(total)]
        notes = []
        if t.frozen_params:
            notes.append(f"frozen parameters: {t.frozen_params:,}")
        if t.buffers:
            notes.append(f"buffers: {t.buffers:,}")
        notes.append(f"per example; batch {self.batch_size}, {self.dtype}")
        return "\n".join(out + ["; ".join(notes)])

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, ints, floats and strings, for ``json.dumps``."""
        def plain(value: Any) -> Any:
            return list(value) if isinstance(value, tuple) else value

        return {"input_shape": list(self.input_shape), "batch_size": self.batch_size,
                "dtype": self.dtype,
                "rows": [{k: plain(v) for k, v in asdict(r).items()} for r in self.rows],
                "totals": asdict(self.totals)}

    def check_size(self, what: str) -> None:
        """Refuse the network above :func:`size_limits` (run it on the meta device to measure
        a network without allocating it); ``what`` names it in the message."""
        t, itemsize = self.totals, getattr(torch, self.dtype).itemsize
        layers = [("the input", 0, math.prod(self.input_shape) * itemsize)]
        layers += [(f"layer {r.name!r}", r.params + r.frozen_params, r.activation_bytes)
                   for r in self.rows]
        check_size(what, t.params + t.frozen_params, sum(r[2] for r in layers), layers)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        """Inverse of :meth:`to_dict`."""
        def tup(value: Any) -> Any:
            return tuple(value) if isinstance(value, list) else value

        rows = [Row(**{k: tup(v) for k, v in r.items()}) for r in data["rows"]]
        return cls(tuple(data["input_shape"]), data["batch_size"], data["dtype"], rows,
                   Totals(**data["totals"]))


def _is_row(m: nn.Module) -> bool:
    return (next(m.children(), None) is None or next(m.parameters(recurse=False), None) is not None
            or next(m.buffers(recurse=False), None) is not None)


def _owned(m: nn.Module) -> tuple[int, int, int]:
    params = sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad)
    frozen = sum(p.numel() for p in m.parameters(recurse=False) if not p.requires_grad)
    skip: set[str] = getattr(m, "_non_persistent_buffers_set", set())
    buffers = sum(b.numel() for n, b in m.named_buffers(recurse=False) if n not in skip)
    return params, frozen, buffers


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            if isinstance(v, torch.Tensor):
                return v
    return None


Window = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _window(m: nn.Module, dims: int, x: torch.Tensor, y: torch.Tensor) -> Window | None:
    """(kernel, stride, dilation, padding before the first input) of a sliding-window layer,
    or None."""
    def tup(v: Any) -> tuple[int, ...]:
        return (int(v),) * dims if isinstance(v, int) else tuple(int(u) for u in v)

    none = (0,) * dims
    if isinstance(m, nn.modules.conv._ConvNd):
        kernel, dilation = tuple(m.weight.shape[2:]), tup(m.dilation)
        if m.padding == "same":           # torch pads d(k - 1) in all, the smaller half first
            pad = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        else:
            pad = none if m.padding == "valid" else tup(m.padding)
        return kernel, tup(m.stride), dilation, pad
    if isinstance(m, PartialConv2d):
        return tup(m.kernel_size), (1,) * dims, (1,) * dims, none
    if isinstance(m, Subsampling):
        return tup(m.kernel_size), tup(m.kernel_size), (1,) * dims, none
    if isinstance(m, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
                      GlobalAvgPool)):
        lin, lout = x.shape[2:], y.shape[2:]
        return (tuple(math.ceil(a / b) for a, b in zip(lin, lout)),
                tuple(a // b for a, b in zip(lin, lout)), (1,) * dims, none)
    if isinstance(m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                      nn.modules.pooling._LPPoolNd)):
        kernel = tup(m.kernel_size)
        stride = tup(m.stride) if m.stride is not None else kernel
        return kernel, stride, tup(getattr(m, "dilation", 1)), tup(getattr(m, "padding", 0))
    return None


def _transposed_filter(m: nn.Module) -> torch.Tensor | None:
    """The filter bank of a transposed convolution, in conv_transpose's layout
    (C_in x C_out/groups x *kernel): torch's ConvTransposeNd, or an autoencoder's Deconv2d
    (the encoder's weight when tied)."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return m.weight
    if isinstance(m, Deconv2d):
        return m.filter()
    return None


def _transposed_window(m: nn.Module, dims: int) -> Window | None:
    """(kernel, stride, dilation, padding) of a layer that runs a window backwards, each input
    spread over an output window: a transposed convolution, or max unpooling (the transpose
    of its pool, which puts each value at one place of its window), or None."""
    def tup(v: Any) -> tuple[int, ...]:
        return (int(v),) * dims if isinstance(v, int) else tuple(int(u) for u in v)

    weight = _transposed_filter(m)
    if weight is not None:
        mod: Any = m
        return tuple(weight.shape[2:]), tup(mod.stride), tup(mod.dilation), tup(mod.padding)
    if isinstance(m, nn.modules.pooling._MaxUnpoolNd):
        return tup(m.kernel_size), tup(m.stride), (1,) * dims, tup(m.padding)
    return None


def _next_field(m: nn.Module, x: torch.Tensor | None, y: torch.Tensor,
                field_in: Fields | None) -> Fields | None:
    """r_out = r_in + (k - 1)·d·j_in, j_out = j_in·s and start_out = start_in - p·j_in per
    spatial dim (None once flat): unit i of the output sees input pixels
    start_out + i·j_out .. start_out + i·j_out + r_out - 1.

    Past a transposed convolution or an unpooling that rule holds only roughly (neighbouring
    outputs share inputs, so the window is not affine in i): its jump j_in / s is then a
    float, also where it is whole, and stays one through later layers, which tells a caller
    needing exact windows (top-k crops) to refuse the layer.
    """
    dims = y.dim() - 2
    if field_in is not None and len(field_in[0]) == dims + 1 and x is not None \
            and x.dim() == y.dim():
        # frames of a clip folded into the batch (N·T, C, H, W), a 2-D CNN on each: the field
        # within a frame, which is one frame in time
        field_in = (field_in[0][1:], field_in[1][1:], field_in[2][1:])
    if dims < 1 or field_in is None or x is None or len(field_in[0]) != dims \
            or x.dim() != y.dim():
        return None
    rf, jump, start = field_in
    transposed = _transposed_window(m, dims)
    if transposed is not None:
        # each output sees about ceil(F/S) neighbouring inputs, and outputs lie S times closer;
        # output 0 gets inputs ceil((P - e + 1) / S) .. P // S (e: the dilated filter extent)
        kernel, stride, dilation, pad = transposed
        ext = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
        new_rf = tuple(r + (math.ceil(e / s) - 1) * j for r, e, s, j in zip(rf, ext, stride, jump))
        new_jump = tuple(j / s for j, s in zip(jump, stride))
        new_start = tuple(a + -((e - 1 - p) // s) * j
                          for a, e, p, s, j in zip(start, ext, pad, stride, jump))
        return new_rf, new_jump, new_start
    window = _window(m, dims, x, y)
    if window is not None:
        kernel, stride, dilation, pad = window
        return (tuple(r + (k - 1) * d * j for r, k, d, j in zip(rf, kernel, dilation, jump)),
                tuple(j * s for j, s in zip(jump, stride)),
                tuple(a - p * j for a, p, j in zip(start, pad, jump)))
    if x.shape[2:] == y.shape[2:]:  # elementwise or across channels only (ReLU, LRN, BN, ...)
        return field_in
    return None


def _macs(m: nn.Module, x: torch.Tensor | None, y: torch.Tensor, n: int) -> int:
    """Multiply-accumulates per example (biases and pooling not counted)."""
    if isinstance(m, nn.RNNBase) and x is not None and x.dim() == 3:
        # each step multiplies every weight matrix once (input-to-hidden, hidden-to-hidden,
        # per layer and direction; an LSTM's hold its 4 gates, a GRU's 3)
        steps = x.shape[1] if m.batch_first else x.shape[0]
        return steps * sum(p.numel() for name, p in m.named_parameters()
                           if name.startswith("weight_"))
    transposed = _transposed_filter(m)
    if transposed is not None and x is not None:   # each input times its C_out/groups x kernel
        return x.numel() // n * math.prod(transposed.shape[1:])
    if isinstance(m, nn.modules.conv._ConvNd):
        return y.numel() // n * (m.in_channels // m.groups) * math.prod(m.weight.shape[2:])
    if isinstance(m, nn.Linear):
        return y.numel() // n * m.in_features
    if isinstance(m, PartialConv2d):        # only the connections of C3's table
        positions = y.numel() // n // m.out_channels
        return positions * m.weight.shape[0] * m.kernel_size ** 2
    if isinstance(m, RBF):                  # one squared difference per prototype entry
        return int(m.get_buffer("prototypes").numel())
    if isinstance(m, Subsampling):          # the trainable coefficient, once per output
        return y.numel() // n
    return 0


def _first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, PartialConv2d)):
            return name, m
    return None


def _fit_error(model: nn.Module, shape: tuple[int, ...], failed: str | None,
               err: Exception) -> ShapeError:
    given = "x".join(map(str, shape))
    default = getattr(model, "default_input_shape", None)
    hint = f"; its default input shape is {'x'.join(map(str, default))}" if default else ""
    if takes_ids(model):
        return ShapeError(f"input shape {given} does not fit the model: it takes token ids, "
                          f"so give the sentence length alone (--input L){hint}")
    first = _first_layer(model)
    if first is not None:
        name, m = first
        wanted = (m.in_features if isinstance(m, nn.Linear) else m.in_channels)
        weight = m.weight
        assert isinstance(weight, torch.Tensor)
        dims = weight.dim() - 1          # a convolution's input: C and its spatial sizes
        if not isinstance(m, nn.Linear) and len(shape) != dims and 2 <= dims <= 4:
            layout = {2: "CxL", 3: "CxHxW", 4: "CxTxHxW"}[dims]
            return ShapeError(f"input shape {given} does not fit the model: its first layer "
                              f"{name!r} ({type(m).__name__}) takes {layout} inputs, {dims} "
                              f"sizes, not {len(shape)}{hint}")
        if isinstance(m, nn.Linear) and len(shape) == 1 and shape[0] != wanted:
            return ShapeError(f"input shape {given} does not fit the model: its first layer "
                              f"{name!r} expects {wanted} features{hint}")
        if not isinstance(m, nn.Linear) and len(shape) > 1 and shape[0] != wanted:
            expected = "x".join(map(str, (wanted, *shape[1:])))
            return ShapeError(f"input shape {given} does not fit the model: its first layer "
                              f"{name!r} ({type(m).__name__}) expects {wanted} input channel(s), "
                              f"so the input should be {expected}{hint}")
    where = f" at layer {failed!r}" if failed else ""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ShapeError(f"input shape {given} does not fit the model{where} ({reason}){hint}")


# The size limits: environment variable -> default. 500 M parameters is 2 GiB of float32
# weights, 3.5x the largest model of the zoo (VGG-E, 144 M); 4 GiB of activations per example
# holds VGG-16 at 3x1024x1024 (1.4 GiB) but not at 3x2048x2048.
LIMITS = {"CNNLAB_MAX_PARAMS": 500_000_000, "CNNLAB_MAX_ACTIVATION_BYTES": 4 * 1024**3}


def size_limits() -> tuple[int, int]:
    """(most parameters, most bytes of input + activations per example) a network may have:
    ``CNNLAB_MAX_PARAMS`` and ``CNNLAB_MAX_ACTIVATION_BYTES`` from the environment, else
    :data:`LIMITS`' defaults."""
    values = []
    for name, default in LIMITS.items():
        text = os.environ.get(name, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            value = 0
        if value < 1:
            raise SizeError(f"{name}={text!r} is not a limit: give a positive whole number, "
                            f"e.g. {name}={default * 4} (the default is {default})")
        values.append(value)
    return values[0], values[1]


def check_size(what: str, params: int, memory: int,
               layers: Sequence[tuple[str, int, int]] = ()) -> None:
    """Refuse a network of more parameters, or an example of more bytes of input and
    activations (``memory``), than :func:`size_limits` allows. ``what`` names the network and
    input in the message; ``layers`` (label, parameters, activation bytes) names the largest.

    Counted from the shapes alone, so it runs before anything is allocated.
    """
    (max_params, max_memory), (params_name, memory_name) = size_limits(), LIMITS
    if params > max_params:
        label, most, _ = max(layers, key=lambda r: r[1], default=("", 0, 0))
        where = f" ({label} alone has {most:,})" if most else ""
        raise SizeError(f"{what} has {params:,} parameters{where}, more than the limit of "
                        f"{max_params:,}; set {params_name} higher to build it anyway, or "
                        "make the network smaller")
    if memory > max_memory:
        label, _, most = max(layers, key=lambda r: r[2], default=("", 0, 0))
        where = f" ({label} alone needs {_bytes(most)})" if most else ""
        raise SizeError(f"{what} needs {_bytes(memory)} per example for its input and "
                        f"activations{where}, more than the limit of {_bytes(max_memory)}; "
                        f"use a smaller input, or set {memory_name} higher (in bytes)")


def summarize(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
              dtype: torch.dtype | None = None) -> Summary:
    """Run one forward pass of zeros of shape (batch_size, *input_shape) through ``model`` (in
    eval mode, without gradients; the training flags are restored) and tabulate each layer.
    ``dtype``: the input's, by default the model's ``default_input_dtype`` (token ids of a text
    model: zeros are the padding), else float32. ``input_shape`` is (C, H, W) for images,
    (C, L) for sequences, (C, T, H, W) for clips (receptive fields then read T×H×W), (L,) for
    token ids.

    Rows are the leaf modules and any module that owns parameters or buffers directly
    (PartialConv2d, Subsampling, RBF), in the order they run; a module run twice gets two rows.
    Receptive fields are tracked per tensor through the hooks, with the jump between units and
    the ``start``, the first input pixel that unit 0 sees (negative where its window begins in
    the padding), so unit i sees pixels start + i·jump .. start + i·jump + field - 1. When a layer's input was made by
    an operation that is not a module (``torch.flatten``, ``x + y``, ``torch.cat``), its field
    is taken from the most recent row, which is exact for a chain and an approximation across
    branches. Past a transposed convolution (torch's, or an autoencoder's ``Deconv2d``) or
    an unpooling, the field is the widest an output can see and the jump a float (no
    single window per unit). Activations, bytes and MACs are per example; biases and
    pooling cost no MACs.

    >>> import cnnlab.spec
    >>> net = cnnlab.spec.build("C3D8 C3D8 C3D8", (1, 16, 16))
    >>> [r.receptive_field for r in summarize(net, (1, 16, 16)).rows if r.kind == "Conv2d"]
    [(3, 3), (5, 5), (7, 7)]
    """
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(s <= 0 for s in shape) or len(shape) > 4:
        raise ShapeError(f"input_shape must be 1 to 4 positive sizes, channels first, e.g. "
                         f"(3, 224, 224); got {input_shape!r}")
    if max(shape) > MAX_SIZE:
        raise ShapeError(f"input_shape {input_shape!r} has a size above {MAX_SIZE:,}, the most "
                         "a kernel takes; give a smaller input")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ShapeError(f"batch_size must be a positive int, got {batch_size!r}")
    if dtype is None:
        dtype = getattr(model, "default_input_dtype", torch.float32)
    param = next(model.parameters(), None)
    device = param.device if param is not None else None    # None: the default device
    if param is not None and param.is_floating_point() and dtype.is_floating_point \
            and param.dtype != dtype:
        raise ShapeError(f"dtype={dtype} does not match the model's parameters ({param.dtype}); "
                         f"pass dtype={param.dtype} or convert the model with model.to({dtype})")

    if (device or torch.get_default_device()).type != "meta":   # the input below is real memory
        check_size(f"an input of {'x'.join(map(str, shape))}", 0,
                   math.prod(shape) * dtype.itemsize)
    names = {m: name for name, m in model.named_modules()}
    rows_of = [m for m in names if _is_row(m)]
    calls: list[tuple[nn.Module, torch.Tensor | None, Any]] = []
    running: list[str] = []

    def pre_hook(m: nn.Module, inputs: tuple[Any, ...]) -> None:
        running.append(names[m])

    def hook(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        running.pop()
        calls.append((m, _first_tensor(inputs), output))

    handles = []
    training = {m: m.training for m in model.modules()}
    try:
        for m in rows_of:
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(hook))
        model.eval()
        x = torch.zeros(batch_size, *shape, dtype=dtype, device=device)
        try:
            with torch.no_grad():
                model(x)
        except (RuntimeError, ValueError, IndexError, CnnlabError) as err:
            raise _fit_error(model, shape, running[-1] if running else None, err) from None
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag

    # receptive fields per tensor identity (`calls` holds every tensor, so ids stay unique)
    spatial = len(shape) - 1
    fields: dict[int, Fields | None] = {
        id(x): ((1,) * spatial, (1,) * spatial, (0,) * spatial) if spatial else None}
    last: Fields | None = fields[id(x)]
    rows: list[Row] = []
    seen: dict[nn.Module, int] = {}
    for m, inp, output in calls:
        y = _first_tensor(output)
        seen[m] = seen.get(m, 0) + 1
        name = names[m] or type(m).__name__
        owned = _owned(m) if seen[m] == 1 else (0, 0, 0)
        if y is None:
            rows.append(Row(name if seen[m] == 1 else f"{name} ({seen[m]})", type(m).__name__,
                            None, "-", *owned, 0, 0, None, None, None, 0))
            continue
        field_in = fields.get(id(inp), last) if inp is not None else last
        if id(y) in fields and y is not inp:
            new = fields[id(y)]             # made inside this module by rows already seen
        else:
            new = _next_field(m, inp, y, field_in)
        fields[id(y)] = new
        last = new
        per_example = tuple(y.shape[1:])
        acts = y.numel() // batch_size
        rows.append(Row(
            name if seen[m] == 1 else f"{name} ({seen[m]})", type(m).__name__, tuple(y.shape),
            volume(per_example), *owned, acts, acts * y.element_size(),
            new[0] if new else None, new[1] if new else None, new[2] if new else None,
            _macs(m, inp, y, batch_size)))
    for m in rows_of:                       # never called, but owns parameters
        if m not in seen and any(_owned(m)):
            rows.append(Row(names[m] or type(m).__name__, type(m).__name__, None, "-",
                            *_owned(m), 0, 0, None, None, None, 0))

    uniq = {id(p): p for p in model.parameters()}.values()
    skip = {id(b) for mod in model.modules() for n, b in mod.named_buffers(recurse=False)
            if n in getattr(mod, "_non_persistent_buffers_set", set())}
    totals = Totals(
        params=sum(p.numel() for p in uniq if p.requires_grad),
        frozen_params=sum(p.numel() for p in uniq if not p.requires_grad),
        buffers=sum(b.numel() for b in {id(b): b for b in model.buffers()}.values()
                    if id(b) not in skip),
        activations=sum(r.activations for r in rows),
        activation_bytes=sum(r.activation_bytes for r in rows),
        macs=sum(r.macs for r in rows))
    return Summary(shape, batch_size, str(dtype).removeprefix("torch."), rows, totals)
