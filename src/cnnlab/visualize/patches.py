"""Zeiler and Fergus's view of a hidden channel (8.5.1, Figs. 8.13 and 8.15): the units of a
data set that excite it most, the input patch each one sees, and that activation projected
back to pixel space by a deconvnet.

- :func:`receptive_box`: the exact window of input pixels one unit sees (it may reach past
  the border, into the padding), from the receptive field, jump and start that
  :func:`cnnlab.inspect.summarize` computes per layer;
- :func:`top_k`: one streaming pass over a data set keeping, per channel, the k images whose
  strongest unit is the largest, one unit each (or the k strongest units over all images
  and positions); memory bounded by k, not by the data set;
- :func:`crops`, :func:`crop_mask`: those units' input patches, all of one size;
- :func:`project`, :func:`projections`: the deconvnet reconstruction of one unit through the
  stored pool switches and the transposed filters.

>>> import torch
>>> from cnnlab import data, models
>>> model = models.create("lenet5_modern")
>>> receptive_box(model, "c3", (0, 0))          # C3's first unit sees 14x14 pixels
Box(start=(0, 0), size=(14, 14))
>>> digits = data.load("digits", "test", size=32)
>>> best = top_k(model, digits, "c3", channels=[0, 5], k=9)
>>> best.values.shape, crops(digits, best, model).shape      # channels x k x C x h x w
(torch.Size([2, 9]), torch.Size([2, 9, 1, 14, 14]))
>>> project(model, torch.randn(2, 1, 32, 32), ("c3", 5)).shape   # N x C x H x W
torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from cnnlab import ops
from cnnlab.data import ImageDataset
from cnnlab.errors import CnnlabError, ModelError, ShapeError
from cnnlab.inspect import Row, Summary, summarize
from cnnlab.nn.layers import LRN, GlobalAvgPool, _averaging
from cnnlab.nn.lenet import PartialConv2d, Squash, Subsampling
from cnnlab.ops._shapes import transpose_output_length
from cnnlab.spec import SoftmaxOutput
from cnnlab.train.batches import Batches, normalizer
from cnnlab.train.run import device_of
from cnnlab.train.transfer import LayerOutput
from cnnlab.visualize.gradients import gradients
from cnnlab.visualize.targets import (
    Target,
    TargetLike,
    as_target,
    check_images,
    inspecting,
    layer_names,
    resolve_layer,
    select,
)

__all__ = ["PROJECTION_METHODS", "Box", "NoProjection", "TopK", "can_project", "crop_mask",
           "crops", "project", "projections", "receptive_box", "top_k"]

Images = ImageDataset | torch.Tensor


# --------------------------------------------------------------------------------------------
# Receptive boxes
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Box:
    """The input pixels one unit sees: ``start`` (first row, column) to ``start + size - 1``
    per spatial dim. ``start`` is negative, or ``stop`` beyond the image, where the window
    reaches into the padding."""

    start: tuple[int, ...]
    size: tuple[int, ...]

    @property
    def stop(self) -> tuple[int, ...]:
        """One past the last pixel per dim."""
        return tuple(a + n for a, n in zip(self.start, self.size))

    @property
    def top(self) -> int:
        return self.start[-2]

    @property
    def left(self) -> int:
        return self.start[-1]

    @property
    def height(self) -> int:
        return self.size[-2]

    @property
    def width(self) -> int:
        return self.size[-1]

    def clip(self, image_size: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(slices of the image inside the box, where they go in a crop of ``size``)."""
        inside = [(max(a, 0), min(b, n)) for a, b, n in zip(self.start, self.stop, image_size)]
        source = tuple(slice(lo, max(lo, hi)) for lo, hi in inside)
        target = tuple(slice(lo - a, max(lo, hi) - a) for (lo, hi), a in zip(inside, self.start))
        return source, target


@dataclass(frozen=True)
class _Geometry:
    """Where the units of one layer look: unit i sees start + i·jump .. + field - 1."""

    layer: str
    field: tuple[int, ...]
    jump: tuple[int, ...]
    start: tuple[int, ...]
    map_size: tuple[int, ...]
    image_size: tuple[int, ...]

    def box(self, position: Sequence[int]) -> Box:
        return Box(tuple(a + int(i) * j for a, i, j in zip(self.start, position, self.jump)),
                   self.field)


def receptive_box(model: nn.Module, layer: str, position: int | Sequence[int],
                  input_size: Sequence[int] | None = None) -> Box:
    """The window of input pixels that the unit of ``layer`` at ``position`` (row, column of
    its map) sees, for inputs of ``input_size`` ((C, H, W), or (H, W) with the model's
    channels; default: the model's ``default_input_shape``).

    >>> from cnnlab import models
    >>> receptive_box(models.create("lenet5_modern"), "s4", (4, 4))   # S4's last unit: pixels 16..31
    Box(start=(16, 16), size=(16, 16))
    """
    geometry = _geometry(model, layer, input_size)
    pos = (position,) if isinstance(position, int) else tuple(position)
    _check_position(geometry, pos)
    return geometry.box(pos)


def _check_position(geometry: _Geometry, position: tuple[Any, ...]) -> None:
    size = geometry.map_size
    if (len(position) != len(size) or any(isinstance(p, bool) or not isinstance(p, int)
                                          or not 0 <= p < n for p, n in zip(position, size))):
        raise ShapeError(f"position {position} lies outside layer {geometry.layer!r}, whose map "
                         f"is {'x'.join(map(str, size))}: give {len(size)} indices from 0 below "
                         f"{size}")


def _input_shape(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, ...]:
    default = getattr(model, "default_input_shape", None)
    if input_size is None:
        if default is None:
            raise ShapeError(f"{type(model).__name__} has no default_input_shape: pass "
                             "input_size=(C, H, W), the shape of one input")
        return tuple(default)
    size = tuple(int(s) for s in input_size)
    if default is not None and len(size) == len(default) - 1:
        return (default[0], *size)              # spatial sizes only: the model's channels
    return size


def _summary(model: nn.Module, shape: tuple[int, ...]) -> Summary:
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return summarize(model, shape, dtype=dtype)


def _row(summary: Summary, path: str) -> Row | None:
    """The row of the module at ``path`` (its first call), or for a container the last row
    inside it: its output in a chain."""
    inside = [r for r in summary.rows if not r.name.endswith(")")
              and (r.name == path or r.name.startswith(path + "."))]
    exact = [r for r in inside if r.name == path]
    return exact[0] if exact else (inside[-1] if inside else None)


def _path(model: nn.Module, layer: str) -> str:
    resolve_layer(model, layer)                      # an unknown name: the model's layers
    chapter: dict[str, str] = getattr(model, "chapter_layers", None) or {}
    return chapter.get(layer, layer)


def _spatial_layers(model: nn.Module, summary: Summary) -> list[str]:
    chapter: dict[str, str] = getattr(model, "chapter_layers", None) or {}
    names = []
    for name in layer_names(model):
        row = _row(summary, chapter.get(name, name))
        if row is not None and row.receptive_field is not None \
                and all(isinstance(j, int) for j in row.jump or ()):   # not past a transpose
            names.append(name)
    return names


class _UpTo(nn.Module):
    """The model run only up to one layer, whose output it returns: a layer's geometry does
    not depend on the layers after it, which need not even fit the input size."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.net, self.layer = model, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        until = LayerOutput(self.net, self.layer, resolve_layer(self.net, self.layer))
        try:
            return until(x)
        finally:
            until.close()


def _geometry(model: nn.Module, layer: str, input_size: Sequence[int] | None) -> _Geometry:
    path = _path(model, layer)
    shape = _input_shape(model, input_size)
    row = _row(_summary(_UpTo(model, layer), shape), "net." + path)
    if row is None or row.receptive_field is None or row.output_shape is None:
        spatial = _spatial_layers(model, _summary(model, shape))
        shown = ", ".join(spatial[:12]) + (", ..." if len(spatial) > 12 else "")
        raise ShapeError(f"layer {layer!r} of {type(model).__name__} has no spatial map, but "
                         f"top-k crops need a spatial layer: choose one of {shown or 'none'}")
    field, jump, start = row.receptive_field, row.jump or (), row.start or ()
    if not all(isinstance(v, int) for v in (*field, *jump, *start)):
        raise ShapeError(f"layer {layer!r} follows a transposed convolution or an unpooling, "
                         f"so its units have no single input window (jump {jump}); choose an "
                         "earlier layer")
    return _Geometry(layer, tuple(map(int, field)), tuple(map(int, jump)),
                     tuple(map(int, start)), tuple(row.output_shape[2:]), shape[1:])


# --------------------------------------------------------------------------------------------
# Top-k over a data set
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TopK:
    """The ``k`` strongest units of each of ``channels`` of ``layer`` over a data set,
    strongest first: ``values`` (channels x k), ``images`` (channels x k, indices into the
    data set) and ``positions`` (channels x k x spatial dims, row and column of the map; no
    dims for a flat layer). ``per_image``: each image gave at most one unit per channel (its
    strongest), so a row's images differ; otherwise every unit of every image competed.
    Equal values rank by data set order, then by position (row-major).
    """

    layer: str
    channels: tuple[int, ...]
    values: torch.Tensor
    images: torch.Tensor
    positions: torch.Tensor
    map_size: tuple[int, ...]
    count: int                          # images streamed
    per_image: bool = True              # one unit per image (see top_k)

    @property
    def k(self) -> int:
        return int(self.values.shape[1])

    def targets(self, row: int) -> list[Target]:
        """The units of ``channels[row]``, strongest first, as targets (one per unit)."""
        return [Target(self.layer, self.channels[row], tuple(map(int, p)) or None)
                for p in self.positions[row]]

    @property
    def state_bytes(self) -> int:
        """Bytes the running top-k holds while streaming: values and flat indices."""
        return self.values.numel() * (self.values.element_size() + 8)


def _check_k(k: object, batch_size: object) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CnnlabError(f"k is how many units to keep per channel, a positive int (Zeiler and "
                          f"Fergus show 9); got k={k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CnnlabError(f"batch_size must be a positive int, got {batch_size!r}")


def _channels(channels: Sequence[int] | None, count: int, layer: str) -> tuple[int, ...]:
    if channels is None:
        return tuple(range(count))
    chosen = tuple(channels)
    if not chosen:
        raise ShapeError(f"no channels chosen of layer {layer!r}; pass channels=None for all "
                         f"{count}")
    for c in chosen:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < count:
            raise ShapeError(f"channel {c!r} is out of range: layer {layer!r} has {count} "
                             f"channels (0..{count - 1})")
    return chosen


def _batch_top(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of each row of ``values`` (c x M) and their column indices, largest
    first; among equal values the lower index first (topk alone breaks ties arbitrarily)."""
    k = min(k, values.shape[1])
    kth = values.topk(k, dim=1).values[:, -1:]                         # c x 1
    above = values > kth
    equal = values == kth
    room = k - above.sum(dim=1, keepdim=True)                          # ties still to take
    take = above | (equal & (equal.cumsum(dim=1) <= room))             # k per row
    index = take.nonzero()[:, 1].view(len(values), k)                  # ascending per row
    kept = values.gather(1, index)
    order = kept.sort(dim=1, descending=True, stable=True).indices
    return kept.gather(1, order), index.gather(1, order)


def _merge(values: torch.Tensor, index: torch.Tensor, k: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of candidates (c x m): by value, then by the lower flat index."""
    by_index = index.argsort(dim=1)
    values, index = values.gather(1, by_index), index.gather(1, by_index)
    order = values.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return values.gather(1, order), index.gather(1, order)


def top_k(model: nn.Module, dataset: ImageDataset, layer: str,
          channels: Sequence[int] | None = None, k: int = 9, batch_size: int = 256, *,
          per_image: bool = True, mean: Sequence[float] | None = None,
          std: Sequence[float] | None = None, progress: bool = False) -> TopK:
    """The ``k`` strongest units of each chosen channel of ``layer`` (default: every channel)
    over ``dataset``, in one pass, in eval mode.

    ``per_image=True`` (Zeiler and Fergus, Fig. 8.15's top 9): each image takes part with its
    strongest unit of the channel's map only (the first in row-major order on ties), and the
    k images whose strongest unit is the largest are kept: k different images, one unit each.
    ``per_image=False``: every unit of every image competes, so one image may fill several
    places at neighbouring positions.

    Images are normalised with ``mean``/``std`` (default: the data set's), as evaluation
    does. Each batch's top k per channel is merged into the running top k, so memory is the
    batch's activations plus channels x k values, whatever the size of the data set. ``k``
    larger than the candidates (images, or images x positions) keeps them all. Equal
    activations rank by data set order, then by position in row-major order.
    """
    _check_k(k, batch_size)
    if not isinstance(per_image, bool):
        raise CnnlabError(f"per_image is True (each image's strongest unit, as Zeiler and "
                          f"Fergus) or False (every position); got per_image={per_image!r}")
    if len(dataset) == 0:
        raise CnnlabError(f"no images to search: the data set {dataset.name!r} "
                          f"({dataset.split}) is empty")
    module = resolve_layer(model, layer)
    device = device_of(model)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    normalize = normalizer(dataset.mean if mean is None else mean,
                           dataset.std if std is None else std, device)
    forward = LayerOutput(model, layer, module)
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    chosen: tuple[int, ...] = ()
    map_size: tuple[int, ...] = ()
    seen = 0
    try:
        with inspecting(model), torch.no_grad():
            for x, _ in tqdm(Batches(dataset, batch_size, device), desc=f"top {k} at {layer}",
                             unit="batch", leave=False, dynamic_ncols=True,
                             disable=None if progress else True):
                out = forward(check_images(model, normalize(x).to(dtype)))   # n x C x *map
                if best is None:
                    chosen = _channels(channels, out.shape[1], layer)
                    map_size = tuple(out.shape[2:])
                units = math.prod(map_size)
                acts = out[:, list(chosen)].reshape(len(x), len(chosen), units)
                if acts.isnan().any():
                    raise CnnlabError(f"layer {layer!r} gives NaN for images {seen}.."
                                      f"{seen + len(x) - 1}; check the weights and the "
                                      "normalisation")
                values, index = (_batch_top_per_image if per_image else _batch_top_units)(
                    acts, k)
                index = index + seen * units                                  # over the set
                if best is not None:
                    values, index = _merge(torch.cat([best[0], values], 1),
                                           torch.cat([best[1], index], 1), k)
                best = values, index
                seen += len(x)
    finally:
        forward.close()
    assert best is not None                          # the data set is not empty
    values, index = best[0].cpu(), best[1].cpu()
    units = math.prod(map_size)
    return TopK(layer, chosen, values, index // units, _unravel(index % units, map_size),
                map_size, seen, bool(per_image))


def _batch_top_units(acts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k strongest of all units of a batch (n x c x units) per channel: values and flat
    indices image·units + position into the batch, c x k each."""
    return _batch_top(acts.transpose(0, 1).reshape(acts.shape[1], -1), k)       # c x n·units


def _batch_top_per_image(acts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`_batch_top_units`, but each image of the batch (n x c x units) competes
    with its strongest unit per channel only (max gives the first on ties)."""
    strongest, where = acts.max(dim=2)                                 # n x c each
    values, image = _batch_top(strongest.t(), k)                       # c x k, images
    return values, image * acts.shape[2] + where.t().gather(1, image)


def _unravel(flat: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Row-major positions (..., dims) of flat indices into a map of ``size``
    (torch.unravel_index would import sympy on its first call: seconds)."""
    coords = []
    for n in reversed(size):
        coords.append(flat % n)
        flat = flat // n
    return torch.stack(coords[::-1], dim=-1) if coords else flat.new_zeros((*flat.shape, 0))


# --------------------------------------------------------------------------------------------
# Crops at the receptive boxes
# --------------------------------------------------------------------------------------------

def _images(source: Images, index: torch.Tensor) -> torch.Tensor:
    """The images at ``index`` (m,) of a data set or a tensor: m x C x H x W."""
    if isinstance(source, ImageDataset):
        images, _ = source.__getitems__(index.tolist())
        return images
    if not isinstance(source, torch.Tensor) or source.dim() < 3:
        raise ShapeError(f"crops need a data set or images (N x C x H x W), got "
                         f"{type(source).__name__}")
    if len(index) and int(index.max()) >= len(source):
        raise ShapeError(f"the top-k names image {int(index.max())}, but {len(source)} images "
                         "were given; pass the data set the top-k was found in")
    return source[index]


def _boxes(source: Images, topk: TopK, model: nn.Module
           ) -> tuple[_Geometry, list[list[Box]], torch.Tensor]:
    """The layer's geometry, each top unit's box and the distinct images they lie in."""
    shape = source.image_shape if isinstance(source, ImageDataset) else tuple(source.shape[1:])
    geometry = _geometry(model, topk.layer, shape)
    boxes = [[geometry.box(p.tolist()) for p in row] for row in topk.positions]
    return geometry, boxes, torch.unique(topk.images)


def crops(source: Images, topk: TopK, model: nn.Module, *, fill: float = 0.5) -> torch.Tensor:
    """The input patch of every unit of ``topk``: channels x k x C x h x w, cut at each
    unit's :func:`receptive_box` from ``source`` (the data set the top k was found in, or its
    images as a tensor; pixels as given, e.g. raw [0, 1]). Where a box reaches past the image
    the crop is ``fill`` (mid-grey for [0, 1] pixels), so all crops of a layer have one size;
    :func:`crop_mask` tells the image's pixels from the fill."""
    geometry, boxes, needed = _boxes(source, topk, model)
    pictures = _images(source, needed)                          # m x C x H x W
    where = {int(i): j for j, i in enumerate(needed)}
    c = pictures.shape[1]
    out = pictures.new_full((len(topk.channels), topk.k, c, *geometry.field), fill)
    for row, units in enumerate(boxes):
        for rank, box in enumerate(units):
            src, dst = box.clip(geometry.image_size)
            image = pictures[where[int(topk.images[row, rank])]]
            into: tuple[int | slice, ...] = (row, rank, slice(None), *dst)
            out[into] = image[(slice(None), *src)]
    return out


def crop_mask(source: Images, topk: TopK, model: nn.Module) -> torch.Tensor:
    """channels x k x h x w, True where the crop of :func:`crops` holds image pixels (False
    where its unit's window lies in the padding)."""
    geometry, boxes, _ = _boxes(source, topk, model)
    mask = torch.zeros(len(topk.channels), topk.k, *geometry.field, dtype=torch.bool)
    for row, units in enumerate(boxes):
        for rank, box in enumerate(units):
            _, dst = box.clip(geometry.image_size)
            into: tuple[int | slice, ...] = (row, rank, *dst)
            mask[into] = True
    return mask


# --------------------------------------------------------------------------------------------
# The deconvnet projection (Zeiler and Fergus)
# --------------------------------------------------------------------------------------------

ProjectionMethod = Literal["auto", "project", "gradient"]
PROJECTION_METHODS: tuple[ProjectionMethod, ...] = ("auto", "project", "gradient")
_HELP = 'use gradients(model, x, target, rule="deconvnet") instead'


class NoProjection(ModelError):
    """The network cannot be projected explicitly (not a chain of layers up to the target, or
    a layer without a deconvnet rule); its deconvnet-rule gradient still can."""


@dataclass
class _Step:
    """One layer call of the recorded forward pass."""

    name: str
    module: nn.Module
    input: torch.Tensor
    output: torch.Tensor
    switches: torch.Tensor | None = None          # a max pool's, kept for the unpooling


def _is_reshape(t: torch.Tensor, of: torch.Tensor) -> bool:
    """True if ``t`` is ``of`` or a view of it in the same memory order (a flatten between
    layers), whose transpose is a reshape back."""
    if t is of:
        return True
    return (t.numel() == of.numel() and t.is_contiguous() and of.is_contiguous()
            and t.untyped_storage().data_ptr() == of.untyped_storage().data_ptr()
            and t.storage_offset() == of.storage_offset())


def _trace(model: nn.Module, x: torch.Tensor, layer: str | None
           ) -> tuple[list[_Step], torch.Tensor]:
    """Run ``x`` through the model up to ``layer`` (the output for None), recording every
    leaf layer's call and each max pool's switches; check the calls form a chain."""
    names = {m: n for n, m in model.named_modules()}
    steps: list[_Step] = []

    def record(m: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        inp = next((a for a in args if isinstance(a, torch.Tensor)), None)
        out = output[0] if isinstance(output, tuple | list) else output
        if inp is None or not isinstance(out, torch.Tensor):
            raise NoProjection(f"project cannot follow layer {names[m]!r} ({type(m).__name__}), "
                             f"which does not map one tensor to one tensor; {_HELP}")
        step = _Step(names[m], m, inp, out)
        if isinstance(m, nn.modules.pooling._MaxPoolNd):
            step.switches = output[1] if isinstance(output, tuple | list) else ops.max_pool(
                inp, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                return_switches=True)[1]
        steps.append(step)

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(record) for m in leaves]
    until = None if layer is None else LayerOutput(model, layer, resolve_layer(model, layer))
    try:
        out = model(x) if until is None else until(x)
    finally:
        for h in handles:
            h.remove()
        if until is not None:
            until.close()
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"{type(model).__name__} returns {type(out).__name__}, not scores; "
                         f"{_HELP}")
    _check_chain(steps, x, out, layer)
    return steps, out


def _check_chain(steps: list[_Step], x: torch.Tensor, out: torch.Tensor,
                 layer: str | None) -> None:
    where = "the class scores" if layer is None else f"layer {layer!r}"
    why = ("(a residual connection, a branch, or an operation that is not a layer runs "
           f"there); {_HELP}")
    previous, previous_name = x, "the input"
    for step in steps:
        if not _is_reshape(step.input, previous):
            raise NoProjection(f"project needs the network up to {where} to be a chain of layers, "
                             f"each taking the previous one's output, but {step.name!r} does not "
                             f"take the output of {previous_name} {why}")
        previous, previous_name = step.output, repr(step.name)
    if not _is_reshape(out, previous):
        raise NoProjection(f"project needs the network up to {where} to be a chain of layers, but "
                         f"{where} are not what {previous_name} returns {why}" if layer is None
                         else f"project needs the network up to {where} to be a chain of layers, "
                         f"but {where} gives more than {previous_name} returns {why}")


def _seed(out: torch.Tensor, target: Target, positions: torch.Tensor | None) -> torch.Tensor:
    """The layer's output with only the target unit of each image set to 1 (its strongest,
    or the given position, per image)."""
    select(out, target)                                  # checks the channel and position
    maps = out[:, target.channel].reshape(len(out), -1)                # N x units
    size = tuple(out.shape[2:])
    if positions is None and target.position is not None:
        positions = torch.tensor([target.position] * len(out))
    if positions is None:
        flat = maps.argmax(dim=1)                                      # its strongest unit
    else:
        flat = torch.zeros(len(out), dtype=torch.long)
        for d, n in enumerate(size):                                   # row-major index
            flat = flat * n + positions[:, d].cpu()
        flat = flat.to(out.device)
    seed = torch.zeros_like(out)
    images = torch.arange(len(out), device=out.device)
    seed.view(len(out), out.shape[1], -1)[images, target.channel, flat] = 1
    return seed


def project(model: nn.Module, x: torch.Tensor, target: TargetLike) -> torch.Tensor:
    """Zeiler and Fergus's deconvnet reconstruction (8.5.1, Fig. 8.15) of one unit for each
    image of ``x`` (the model's input): N x C x H x W.

    The forward pass is recorded layer by layer, keeping each max pool's switches; then the
    target unit alone (set to 1, every other unit 0; its strongest unit per image where the
    target has no position) goes back down the same layers: max unpooling through the
    stored switches, a ReLU on the signal, each convolution transposed with the same filters
    and no bias, each fully connected layer transposed, a flatten reshaped back. (Zeiler and
    Fergus start from the activation itself; every step here is positively homogeneous, so
    that only scales the picture by a positive activation.)

    It equals ``gradients(model, x, target, rule="deconvnet")`` wherever every layer is
    linear (convolution, LeNet-5's C3 table, fully connected, average pooling, LeNet's
    trainable subsampling, global and adaptive average pooling, batch norm in eval mode: each
    goes back through the transpose of its linear part, which is its gradient; biases and
    shifts add nothing to either), a ReLU (the deconvnet rule passes max(g, 0), as the
    projection applies a ReLU to the signal) or a max pool, overlapping pools included (a
    position that wins several pools receives the sum, as the gradient does). They differ at
    local response normalisation, which the projection passes through unchanged while the
    gradient multiplies by its Jacobian, and at LeNet-5's squashing and tanh, which the
    projection applies to the signal (a decoder uses the encoder's activation, 8.5.2) while
    the gradient multiplies by the derivative. Other layers (LeNet-5's RBF output, other
    nonlinearities) and networks that are not a chain of layers up to the target (residual
    connections, branches, operations outside layers) are refused; use the gradient there.

    >>> import torch
    >>> from cnnlab import models
    >>> model = models.create("lenet5_modern")
    >>> project(model, torch.randn(3, 1, 32, 32), ("s4", 2, (1, 1))).shape
    torch.Size([3, 1, 32, 32])
    """
    return _project(model, x, as_target(target), None)


def _project(model: nn.Module, x: torch.Tensor, target: Target,
             positions: torch.Tensor | None) -> torch.Tensor:
    check_images(model, x)
    with inspecting(model), torch.no_grad():
        steps, out = _trace(model, x, target.layer)
        for step in steps:                               # refuse before any work
            _back_rule(step)
        signal = _seed(out, target, positions)
        for step in reversed(steps):
            signal = _back_rule(step)(step, signal.reshape(step.output.shape))
        return signal.reshape(x.shape)


def can_project(model: nn.Module, x: torch.Tensor, layer: str | None) -> str | None:
    """Why :func:`project` cannot go back from ``layer`` for images ``x`` (one is enough), or
    None where it can."""
    check_images(model, x)
    try:
        with inspecting(model), torch.no_grad():
            steps, _ = _trace(model, x[:1], layer)
            for step in steps:
                _back_rule(step)
    except NoProjection as err:
        return str(err)
    return None


def projections(source: Images, topk: TopK, model: nn.Module, *,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                method: ProjectionMethod = "auto") -> torch.Tensor:
    """The deconvnet picture of every unit of ``topk``, cut at the same boxes as
    :func:`crops`: channels x k x C x h x w (zero where a box lies past the image). Pixels of
    ``source`` are normalised with ``mean``/``std`` (default: a data set's own; images given
    as a tensor without them are taken as the model's input).

    ``method``: ``"project"`` (:func:`project`, through the stored switches), ``"gradient"``
    (the unit's deconvnet-rule gradient, which any network has: residual nets, branches) or
    ``"auto"``: project where :func:`can_project`, else the gradient. The two are equal where
    both exist and every layer is one :func:`project` names as equal."""
    if method not in PROJECTION_METHODS:
        raise CnnlabError(f"unknown projection method {method!r}: use one of "
                          f"{', '.join(PROJECTION_METHODS)}")
    geometry, boxes, _ = _boxes(source, topk, model)
    out: torch.Tensor | None = None
    device = device_of(model)
    norm = None
    if isinstance(source, ImageDataset):
        norm = normalizer(source.mean if mean is None else mean,
                          source.std if std is None else std, device)
    elif mean is not None and std is not None:
        norm = normalizer(mean, std, device)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    for row, channel in enumerate(topk.channels):
        x = _images(source, topk.images[row]).to(device)
        x = (norm(x) if norm is not None else x).to(dtype)
        if method == "auto":
            method = "project" if can_project(model, x, topk.layer) is None else "gradient"
        if method == "project":
            maps = _project(model, x, Target(topk.layer, channel), topk.positions[row])
        else:                         # each image's own unit: one target per image
            maps = torch.cat([gradients(model, x[i:i + 1], Target(
                topk.layer, channel, tuple(int(p) for p in topk.positions[row, i])),
                rule="deconvnet")[:, 0] for i in range(len(x))])
        if out is None:
            out = maps.new_zeros((len(topk.channels), topk.k, maps.shape[1], *geometry.field))
        for rank, box in enumerate(boxes[row]):
            src, dst = box.clip(geometry.image_size)
            into: tuple[int | slice, ...] = (row, rank, slice(None), *dst)
            part: tuple[int | slice, ...] = (rank, slice(None), *src)
            out[into] = maps[part]
    assert out is not None
    return out


# ---- one layer back: the transpose of its linear part, switches for pools ------------------

Back = Any   # (step, signal shaped like the step's output) -> signal shaped like its input


def _back_rule(step: _Step) -> Back:
    """How the signal goes back through the layer of ``step``; refuse a layer with none."""
    m: Any = step.module
    for kinds, rule in _RULES:
        if isinstance(m, kinds):
            problem = _unsupported(step)
            if problem:
                raise NoProjection(f"project cannot go back through {step.name!r} "
                                 f"({type(m).__name__}): {problem}; {_HELP}")
            return rule
    raise NoProjection(f"project cannot go back through {step.name!r} ({type(m).__name__}): the "
                     f"deconvnet has no rule for this kind of layer; {_HELP}")


def _unsupported(step: _Step) -> str:
    m: Any = step.module
    if isinstance(m, nn.modules.conv._ConvNd) and m.padding_mode != "zeros":
        return f"padding_mode={m.padding_mode!r} (only zero padding transposes to a convolution)"
    if isinstance(m, nn.modules.conv._ConvNd) and isinstance(m.padding, str) \
            and m.padding != "valid" and any(d * (k - 1) % 2 for k, d in zip(
                m.weight.shape[2:], m.dilation)):
        return "padding='same' with an even filter pads unevenly"
    if isinstance(m, nn.modules.pooling._AvgPoolNd):
        if not m.count_include_pad and any(_tup(m.padding, step)):
            return "count_include_pad=False divides border windows by fewer pixels"
        floor = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(
            step.input.shape[2:], _tup(m.kernel_size, step), _tup(m.stride or m.kernel_size, step),
            _tup(m.padding, step))]
        if list(step.output.shape[2:]) != floor:
            return "ceil_mode adds windows that reach past the padding"
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is None:
        return "without running statistics it normalises by each batch's own"
    if isinstance(m, nn.modules.pooling._AdaptiveAvgPoolNd) and step.input.dim() != 4 \
            and step.input.shape != step.output.shape:
        return "adaptive pooling to another size is only transposed for images"
    return ""


def _tup(v: Any, step: _Step) -> tuple[int, ...]:
    dims = step.input.dim() - 2
    return (int(v),) * dims if isinstance(v, int) else tuple(int(u) for u in v)


def _output_padding(step: _Step, kernel: Sequence[int], stride: Sequence[int],
                    padding: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """What a transposed convolution adds to reach the input size of the forward layer."""
    return tuple(n - transpose_output_length(o, k, s, p, 0, d) for n, o, k, s, p, d in zip(
        step.input.shape[2:], step.output.shape[2:], kernel, stride, padding, dilation))


def _conv_padding(m: Any, step: _Step) -> tuple[int, ...]:
    if m.padding == "valid":
        return (0,) * (step.input.dim() - 2)
    if m.padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(m.weight.shape[2:], m.dilation))
    return _tup(m.padding, step)


def _back_conv(step: _Step, g: torch.Tensor) -> torch.Tensor:
    m: Any = step.module
    weight = m.full_weight() if isinstance(m, PartialConv2d) else m.weight
    dims = step.input.dim() - 2
    kernel = tuple(weight.shape[2:])
    if isinstance(m, PartialConv2d):
        stride, padding, dilation, groups = (1,) * dims, (0,) * dims, (1,) * dims, 1
    else:
        stride, dilation, groups = _tup(m.stride, step), _tup(m.dilation, step), m.groups
        padding = _conv_padding(m, step)
    out_pad = _output_padding(step, kernel, stride, padding, dilation)
    # the transposed, spatially inverted filters (Eq. 8.3), no bias
    return ops.conv_transpose(g, weight, None, stride, padding, out_pad, groups, dilation)


def _back_conv_transpose(step: _Step, g: torch.Tensor) -> torch.Tensor:
    m: Any = step.module        # the transpose of a transposed convolution is the convolution
    return ops.conv(g, m.weight, None, m.stride, m.padding, m.dilation, m.groups)


def _back_max_pool(step: _Step, g: torch.Tensor) -> torch.Tensor:
    m: Any = step.module
    assert step.switches is not None
    kernel, stride = _tup(m.kernel_size, step), _tup(m.stride or m.kernel_size, step)
    dilation = _tup(m.dilation, step)
    # pools m = ceil(extent / stride) apart never share an input, so each such sub-grid
    # unpools through its switches without collisions; summing the sub-grids gives a position
    # that wins several overlapping pools the sum of their signals, as the gradient does
    apart = [math.ceil((d * (k - 1) + 1) / s) for k, s, d in zip(kernel, stride, dilation)]
    size = tuple(step.input.shape[2:])
    out = torch.zeros_like(step.input)
    for offset in itertools.product(*(range(a) for a in apart)):
        grid = (slice(None), slice(None), *(slice(o, None, a) for o, a in zip(offset, apart)))
        part, switches = g[grid], step.switches[grid]
        if part.numel():
            out = out + ops.max_unpool(part.contiguous(), switches.contiguous(), kernel, stride,
                                       output_size=size)
    return out


def _uniform(channels: int, kernel: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """A depthwise filter bank (C x 1 x *kernel) that averages each window."""
    return like.new_full((channels, 1, *kernel), 1.0 / math.prod(kernel))


def _back_avg(step: _Step, g: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
              padding: tuple[int, ...]) -> torch.Tensor:
    """Each window's signal shared equally among its pixels: the transpose of averaging."""
    dims = len(kernel)
    out_pad = _output_padding(step, kernel, stride, padding, (1,) * dims)
    return ops.conv_transpose(g, _uniform(g.shape[1], kernel, g), None, stride, padding,
                              out_pad, g.shape[1])


def _back_avg_pool(step: _Step, g: torch.Tensor) -> torch.Tensor:
    m: Any = step.module
    kernel = _tup(m.kernel_size, step)
    return _back_avg(step, g, kernel, _tup(m.stride or m.kernel_size, step),
                     _tup(m.padding, step))


def _back_subsampling(step: _Step, g: torch.Tensor) -> torch.Tensor:
    m: Any = step.module                                # average, times a coefficient per map
    kernel = _tup(m.kernel_size, step)
    scaled = g * m.weight.view(1, -1, *(1,) * (g.dim() - 2))
    return _back_avg(step, scaled, kernel, kernel, (0,) * len(kernel))


def _back_global(step: _Step, g: torch.Tensor) -> torch.Tensor:
    size = step.input.shape[2:]
    flat = g.reshape(*g.shape[:2], *(1,) * len(size))
    return flat.expand(step.input.shape) / math.prod(size)


def _back_adaptive(step: _Step, g: torch.Tensor) -> torch.Tensor:
    if step.input.shape == step.output.shape:       # the native size: the identity
        return g
    (h, w), (oh, ow) = step.input.shape[-2:], step.output.shape[-2:]
    g = ops.linear(g.transpose(-1, -2), _averaging(h, oh, g).t().contiguous())   # N x C x ow x H
    return ops.linear(g.transpose(-1, -2), _averaging(w, ow, g).t().contiguous())  # N x C x H x W


def _back_linear(step: _Step, g: torch.Tensor) -> torch.Tensor:
    weight: Any = step.module.weight
    return ops.linear(g, weight.t().contiguous())                   # g W: W transposed


def _back_batch_norm(step: _Step, g: torch.Tensor) -> torch.Tensor:
    m: Any = step.module                                # eval mode: a scale per channel
    scale: torch.Tensor = (m.running_var + m.eps).rsqrt()
    if m.weight is not None:
        scale = scale * m.weight
    return g * scale.view(1, -1, *(1,) * (g.dim() - 2))


def _back_relu(step: _Step, g: torch.Tensor) -> torch.Tensor:
    return ops.relu(g)                               # the deconvnet's ReLU on the signal


def _back_activation(step: _Step, g: torch.Tensor) -> torch.Tensor:
    activation: Any = step.module                    # a decoder uses the encoder's activation
    out: torch.Tensor = activation(g)
    return out


def _back_identity(step: _Step, g: torch.Tensor) -> torch.Tensor:
    return g.reshape(step.input.shape)               # flatten, dropout in eval, LRN skipped


_RULES: tuple[tuple[type | tuple[type, ...], Back], ...] = (
    (nn.modules.conv._ConvTransposeNd, _back_conv_transpose),
    ((nn.modules.conv._ConvNd, PartialConv2d), _back_conv),
    (nn.modules.pooling._MaxPoolNd, _back_max_pool),
    (nn.modules.pooling._AvgPoolNd, _back_avg_pool),
    (Subsampling, _back_subsampling),
    (GlobalAvgPool, _back_global),
    (nn.modules.pooling._AdaptiveAvgPoolNd, _back_adaptive),
    (nn.Linear, _back_linear),
    (nn.modules.batchnorm._BatchNorm, _back_batch_norm),
    (nn.ReLU, _back_relu),
    ((Squash, nn.Tanh), _back_activation),
    ((nn.Flatten, nn.Unflatten, nn.Identity, nn.modules.dropout._DropoutNd, SoftmaxOutput, LRN,
      nn.LocalResponseNorm), _back_identity),
)

