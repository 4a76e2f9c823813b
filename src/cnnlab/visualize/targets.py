"""What a visualisation looks at (8.5.1): a class score, or a hidden neuron named as the chapter
names layers.

A :class:`Target` is either a class score (``layer=None``: the output unit before the softmax)
or a channel of a named layer (``"conv5"``, ``"fc7"``, or a module path), optionally at one
position of its map. Every method of :mod:`cnnlab.visualize` takes targets in the same forms:

>>> import torch
>>> from cnnlab import models
>>> model = models.create("lenet5_modern").eval()
>>> as_target(3)                                    # the score of class 3
Target(layer=None, channel=3, position=None)
>>> as_target(("c3", 7, (2, 4)))                    # C3's map 7 at row 2, column 4
Target(layer='c3', channel=7, position=(2, 4))
>>> with Probe(model, "c3") as probe:
...     scores = model(torch.zeros(2, 1, 32, 32))
>>> probe.output.shape                              # N x 16 x 10 x 10
torch.Size([2, 16, 10, 10])
>>> target_values(model, torch.zeros(2, 1, 32, 32), [3, ("c3", 7)]).shape   # N x targets
torch.Size([2, 2])
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import torch
from torch import nn

from cnnlab.errors import ModelError, ShapeError

__all__ = ["Probe", "Reduce", "Target", "TargetLike", "as_target", "as_targets", "check_images",
           "inspecting", "layer_names", "parse_target", "resolve_layer", "select",
           "target_values"]

# how a channel without a position becomes one number per image: its strongest unit (the
# neuron Zeiler and Fergus look at) or the mean over its map (Lucid's "channel" objective)
Reduce = Literal["max", "mean"]


@dataclass(frozen=True)
class Target:
    """A class score (``layer=None``; ``channel`` is the class) or channel ``channel`` of
    ``layer``; ``position`` picks one unit of a spatial map (row, column for images)."""

    layer: str | None
    channel: int
    position: tuple[int, ...] | None = None

    def __str__(self) -> str:
        if self.layer is None:
            return f"class {self.channel}"
        at = "" if self.position is None else "@" + ",".join(map(str, self.position))
        return f"{self.layer}:{self.channel}{at}"


TargetLike = Target | int | tuple[Any, ...] | str


def as_target(spec: TargetLike) -> Target:
    """A :class:`Target` from an int (a class), ``(layer, channel)``,
    ``(layer, channel, position)``, a string as :func:`parse_target` reads it, or a Target."""
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, bool):
        raise ShapeError(f"a target is a class index or (layer, channel), got {spec!r}")
    if isinstance(spec, int):
        return Target(None, _index(spec, "class"))
    if isinstance(spec, str):
        return parse_target(spec)
    if isinstance(spec, tuple) and len(spec) in (2, 3) and isinstance(spec[0], str | None):
        position = None
        if len(spec) == 3 and spec[2] is not None:
            raw = (spec[2],) if isinstance(spec[2], int) else tuple(spec[2])
            position = tuple(_index(p, "position") for p in raw)
        return Target(spec[0], _index(spec[1], "channel"), position)
    raise ShapeError(f"a target is a class index, (layer, channel) or (layer, channel, "
                     f"position), got {spec!r}; e.g. 3 or ('conv5', 17) or ('conv5', 17, (4, 6))")


def as_targets(specs: TargetLike | Sequence[TargetLike]) -> list[Target]:
    """One target or a list of them, as :class:`Target` objects."""
    if isinstance(specs, (Target, int, str)) or (
            isinstance(specs, tuple) and specs and isinstance(specs[0], str | None)):
        return [as_target(specs)]
    out = [as_target(s) for s in specs]
    if not out:
        raise ShapeError("no targets given: name at least one class or (layer, channel)")
    return out


_TEXT = re.compile(r"^(?:(?P<layer>[A-Za-z_][\w.]*):)?(?P<channel>\d+)"
                   r"(?:@(?P<position>\d+(?:,\d+)*))?$")


def parse_target(text: str) -> Target:
    """``"3"`` (class 3), ``"conv5:17"`` (channel 17 of conv5), ``"conv5:17@4,6"`` (its unit
    at row 4, column 6): the form the command line takes."""
    m = _TEXT.match(text.strip())
    if m is None:
        raise ShapeError(f"cannot read target {text!r}: write a class (3), a channel of a layer "
                         "(conv5:17) or one unit of it (conv5:17@4,6)")
    position = None if m["position"] is None else tuple(int(p) for p in m["position"].split(","))
    return Target(m["layer"], int(m["channel"]), position)


def _index(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ShapeError(f"a {what} index must be an int >= 0, got {value!r}")
    return value


def layer_names(model: nn.Module) -> list[str]:
    """The names a target may use: the chapter's (``model.chapter_layers``) where the model
    has them, else its module paths."""
    chapter = getattr(model, "chapter_layers", None)
    if chapter:
        return list(chapter)
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The module a layer name (chapter name or module path) stands for; an unknown name lists
    the model's layers and the near matches."""
    chapter = getattr(model, "chapter_layers", None) or {}
    path = chapter.get(name, name)
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = layer_names(model)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelError(f"{type(model).__name__} has no layer {name!r}: {hint}its layers are "
                         f"{', '.join(names)}") from None


class Probe:
    """Keep the output of one layer during forward passes in the block (a forward hook,
    removed on exit, also on error). ``output`` is the last call's; a layer that returns a
    tuple (a max pool with switches) gives its first tensor."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        self.layer = layer
        self.module = resolve_layer(model, layer)
        self._output: torch.Tensor | None = None
        self._handle: Any = None

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(out, torch.Tensor):
            raise ShapeError(f"layer {self.layer!r} returns {type(out).__name__}, not a tensor")
        self._output = out

    def __enter__(self) -> Self:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    @property
    def output(self) -> torch.Tensor:
        if self._output is None:
            raise ModelError(f"layer {self.layer!r} did not run in the forward pass; choose a "
                             "layer the model calls")
        return self._output


def select(output: torch.Tensor, target: Target, reduce: Reduce = "max") -> torch.Tensor:
    """The target's value per image (N,) from its layer's output (N, C, *map) or the class
    scores (N, classes); checks the channel and position against the shape."""
    what = "the class scores" if target.layer is None else f"layer {target.layer!r}"
    if output.dim() < 2:
        raise ShapeError(f"{what} give shape {tuple(output.shape)}; a target needs (N, C, ...)")
    if target.channel >= output.shape[1]:
        kind, owner = (("class", "the model") if target.layer is None
                       else ("channel", f"layer {target.layer!r}"))
        raise ShapeError(f"{kind} {target.channel} is out of range: {owner} has "
                         f"{output.shape[1]} {kind}{'es' if kind == 'class' else 's'} "
                         f"(0..{output.shape[1] - 1})")
    maps = output[:, target.channel]                               # N x *map
    if target.position is None:
        flat = maps.reshape(len(maps), -1)                         # N x units
        if reduce == "mean":
            return flat.mean(dim=1)
        # one unit, the first strongest: amax would share its gradient among tied units
        return flat.gather(1, flat.argmax(dim=1, keepdim=True)).squeeze(1)
    size = tuple(maps.shape[1:])
    if len(target.position) != len(size) or any(
            p >= n for p, n in zip(target.position, size, strict=False)):
        where = f"a {'x'.join(map(str, size))} map" if size else "no spatial map"
        raise ShapeError(f"position {target.position} lies outside {what}, which has {where}; "
                         f"give {len(size)} indices below {size}" if size else
                         f"position {target.position} given, but {what} has no spatial map; "
                         "drop the position")
    index: tuple[slice | int, ...] = (slice(None), *target.position)
    return maps[index]


def target_values(model: nn.Module, x: torch.Tensor, targets: TargetLike | Sequence[TargetLike],
                  reduce: Reduce = "max") -> torch.Tensor:
    """The values of ``targets`` for each image of ``x`` in one forward pass: (N, targets)."""
    chosen = as_targets(targets)
    with _probes(model, {t.layer for t in chosen if t.layer is not None}) as probes:
        scores = model(x)
    if not isinstance(scores, torch.Tensor):
        scores = scores[0]
    columns = [select(scores if t.layer is None else probes[t.layer].output, t, reduce)
               for t in chosen]
    return torch.stack(columns, dim=1)


def check_images(model: nn.Module, x: object) -> torch.Tensor:
    """``x`` if it is a non-empty float batch the model takes: N x ``model.default_input_shape``
    where the model declares one; else a one-line ShapeError naming the expected shape."""
    name = type(model).__name__
    expected = getattr(model, "default_input_shape", None)
    want = "N x " + " x ".join(map(str, expected)) if expected else "N x C x ..."
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"images must be a tensor ({want}), got {type(x).__name__}")
    if not x.is_floating_point():
        raise ShapeError(f"images must be floating point (the model's normalised input), got "
                         f"{x.dtype}; convert with x.float() / 255 and normalise")
    if x.dim() >= 1 and len(x) == 0:
        raise ShapeError(f"no images given (shape {tuple(x.shape)}); pass at least one, {want}")
    if expected and tuple(x.shape[1:]) != tuple(expected):
        hint = ("; add a batch dimension with x.unsqueeze(0)"
                if tuple(x.shape) == tuple(expected) else "")
        raise ShapeError(f"images of shape {tuple(x.shape)} do not fit {name}, which takes "
                         f"{want}{hint}")
    if x.dim() < 2:
        raise ShapeError(f"images must be {want}, got shape {tuple(x.shape)}")
    return x


@contextlib.contextmanager
def inspecting(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and parameters that take no gradient for the block; each module's mode and
    each parameter's ``requires_grad`` are restored on exit, also on error."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


class _probes:
    """A :class:`Probe` for each named layer, entered and left together."""

    def __init__(self, model: nn.Module, layers: set[str]) -> None:
        self.probes = {name: Probe(model, name) for name in sorted(layers)}

    def __enter__(self) -> dict[str, Probe]:
        for p in self.probes.values():
            p.__enter__()
        return self.probes

    def __exit__(self, *exc: object) -> None:
        for p in self.probes.values():
            p.__exit__()

