"""Sliding windows made cheap (8.6.3): a classifier's fully connected layers as convolutions,
so one pass over a large image scores every window position at once.

A classifier made for H x W inputs ends in a fixed volume D x h x w, then fully connected
layers. :func:`fully_convolutional` rewrites that head: the first FC becomes a convolution
whose D x h x w filters are its weight rows reshaped to the volume (FC6 of AlexNet: 4096
filters of 256 x 6 x 6), every later FC a 1 x 1 convolution, and a global average pool the
average over h x w windows at stride 1. ReLUs and the like carry over, dropout too (the
identity in eval mode). On a larger image the features grow, each filter slides over them,
and the output is a map of class scores with one position per window: the work shared by
overlapping windows is done once.

The head is read from the modules that ``forward_head`` runs, in order (no per-model code),
and checked against it; a head with anything else (LeNet-5's RBF output) is refused with the
layer's name.

Which windows: position (i, j) of the map is the window whose top-left corner is
(j * stride_x, i * stride_y) of the input, of the model's input size (``window``); the
stride is the product of the features' strides (4 for LeNet-5, 32 for VGG). An image that is
not window + k * stride wide gets the windows that fit inside it; the last rows and columns of
pixels past them are in no window. :meth:`FullyConvolutional.boxes` says exactly where each
window lies.

How exact: where no layer of the features pads with zeros and no pool rounds up (LeNet-5),
the score at (i, j) *is* the classifier's score of that crop. Where the features pad (VGG,
the ResNets, AlexNet's CIFAR form), a crop on its own sees zeros past its border at every
padded layer, whereas here the window sees the real pixels and activations around it, as
OverFeat's windows do, so the two differ near the window's edge; what holds exactly is that
the score at (i, j) is the original head applied to the window of the image's feature map at
(i, j). Ceil-mode pools (NiN) act the same way at the bottom and right edges.

>>> import torch
>>> from cnnlab import models
>>> net = fully_convolutional(models.create("lenet5_modern"))
>>> net.window, net.stride
((32, 32), (4, 4))
>>> net(torch.zeros(1, 1, 40, 48)).shape        # 3 x 5 windows of 32 x 32 at stride 4
torch.Size([1, 10, 3, 5])
>>> net.boxes(40, 48)[[0, 1, 5]]                # row-major: (0, 0), (0, 1), (1, 0)
tensor([[ 0.,  0., 32., 32.],
        [ 4.,  0., 36., 32.],
        [ 0.,  4., 32., 36.]])
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from cnnlab import nn as cnn
from cnnlab import ops
from cnnlab.errors import CnnlabError, ModelError, ShapeError
from cnnlab.nn.classifier import Classifier
from cnnlab.nn.lenet import PartialConv2d, Squash, Subsampling
from cnnlab.spec import SoftmaxOutput

__all__ = ["FullyConvolutional", "fully_convolutional"]

# head layers that act on each value alone: copied as they are (dropout: the identity in eval)
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
               nn.Identity, nn.Dropout, Squash, SoftmaxOutput)
# head layers that slide over the volume already (LeNet-5's C5, NiN's class layer): copied
SLIDING = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d, cnn.LRN, PartialConv2d,
           Subsampling)
# how much larger than the window the image is when the stride is read off the map's size:
# exact for any stride below sqrt(_GROW) / 2 (the sizes are worked out on the meta device,
# so nothing of that size is allocated)
_GROW = 2**20


class _Call(nn.Module):
    """``module.<method>(x)`` as a forward, for :func:`torch.func.functional_call`."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module, self.method = module, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = getattr(self.module, self.method)(x)
        return y


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block; each module's mode is restored on exit, also on error."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _meta_shape(module: nn.Module, method: str, shape: tuple[int, ...], dtype: torch.dtype,
                calls: list[nn.Module] | None = None) -> tuple[int, ...]:
    """The output shape of ``module.<method>`` on an input of ``shape``, run on the meta
    device (shapes only); ``calls`` collects the leaf modules it runs."""
    state = {f"module.{name}": t.to("meta") for name, t in itertools.chain(
        module.named_parameters(remove_duplicate=False),
        module.named_buffers(remove_duplicate=False))}
    ran = calls if calls is not None else []

    def hook(m: nn.Module, inputs: Any, output: Any) -> None:
        ran.append(m)

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if calls is not None and _is_leaf(m)]
    try:
        with torch.no_grad(), ops.kernels("native"):     # both kernels give the same shapes
            y = functional_call(_Call(module, method), state,
                                (torch.empty(shape, dtype=dtype, device="meta"),))
    except (RuntimeError, ValueError, IndexError, CnnlabError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{type(module).__name__}.{method.strip('_')} fails on an input of "
                         f"{'x'.join(map(str, shape[1:]))}: {first}") from None
    finally:
        for h in handles:
            h.remove()
    if not isinstance(y, torch.Tensor):
        raise ModelError(f"{type(module).__name__}.{method} returns a {type(y).__name__}, not "
                         "a tensor")
    return tuple(y.shape)


def _is_leaf(m: nn.Module) -> bool:
    return next(m.children(), None) is None


@dataclass(frozen=True)
class _Step:
    """One layer call of the head: the module, its path, its input and output shapes."""

    path: str
    module: nn.Module
    x: tuple[int, ...]
    y: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.path or '(model)'} ({type(self.module).__name__})"


def _trace_head(model: Classifier, features: torch.Tensor) -> tuple[list[_Step], torch.Tensor]:
    """The leaf modules that ``forward_head`` runs, in order, and its output."""
    paths = {m: name for name, m in model.named_modules()}
    steps: list[_Step] = []

    def hook(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if x is None or not isinstance(output, torch.Tensor):
            raise ModelError(f"{paths[m]} ({type(m).__name__}) in the head of "
                             f"{type(model).__name__} does not map a tensor to a tensor; "
                             "fully_convolutional cannot convert it")
        steps.append(_Step(paths[m], m, tuple(x.shape), tuple(output.shape)))

    handles = [m.register_forward_hook(hook) for m in paths if _is_leaf(m)]
    try:
        logits = model.forward_head(features)
    finally:
        for h in handles:
            h.remove()
    return steps, logits


def _conv_from_linear(fc: nn.Linear, volume: tuple[int, ...]) -> cnn.Conv2d:
    """FC -> a convolution with one (D, h, w) filter per unit: its weight row reshaped to the
    volume it reads (flattened channels first, as torch.flatten does)."""
    d, h, w = volume
    with torch.device("meta"):                        # no initialisation, no random draws
        conv = cnn.Conv2d(d, fc.out_features, (h, w), bias=fc.bias is not None)
    weight = fc.weight.detach().reshape(fc.out_features, d, h, w).clone()
    conv.weight = nn.Parameter(weight, requires_grad=fc.weight.requires_grad)
    if fc.bias is not None:
        conv.bias = nn.Parameter(fc.bias.detach().clone(), requires_grad=fc.bias.requires_grad)
    return conv


def _convert(steps: list[_Step], volume: tuple[int, ...], where: str
             ) -> tuple[OrderedDict[str, nn.Module], tuple[int, ...]]:
    """The head's layers as layers that slide, and the volume they end in (classes, 1, 1)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()

    def add(step: _Step, module: nn.Module) -> None:
        key = step.path.replace(".", "_") or "layer"
        n = sum(k == key or k.startswith(key + "_call") for k in layers)
        layers[key if not n else f"{key}_call{n + 1}"] = module

    for step in steps:
        m, seen = step.module, step.x[1:]
        if isinstance(m, nn.Linear):
            if m.in_features != math.prod(volume):
                raise ModelError(f"{where}: {step.label} takes {m.in_features} inputs, but the "
                                 f"volume before it is {'x'.join(map(str, volume))}; "
                                 "fully_convolutional cannot make it a convolution")
            add(step, _conv_from_linear(m, volume))
            volume = (m.out_features, 1, 1)
        elif isinstance(m, nn.Flatten):
            if seen != volume:
                raise ModelError(f"{where}: {step.label} flattens {seen}, not the volume "
                                 f"{volume}; fully_convolutional cannot convert it")
        elif isinstance(m, cnn.GlobalAvgPool | nn.AdaptiveAvgPool2d):
            if seen != volume or len(seen) != 3:
                raise ModelError(f"{where}: {step.label} pools {seen}, not the volume {volume}")
            if step.y[2:] == seen[1:]:
                continue                               # the identity at the model's input size
            if math.prod(step.y[1:]) != seen[0]:
                raise ModelError(f"{where}: {step.label} pools {seen[1]}x{seen[2]} maps to "
                                 f"{'x'.join(map(str, step.y[2:]))}, not to one value per "
                                 "map; only global average pooling (or the identity) converts")
            add(step, cnn.AvgPool2d(seen[1:], stride=1))    # the global pool of each window
            volume = (seen[0], 1, 1)
        elif isinstance(m, ELEMENTWISE):
            add(step, copy.deepcopy(m))
        elif isinstance(m, SLIDING):
            if seen != volume:
                raise ModelError(f"{where}: {step.label} works on {seen}, not on the volume "
                                 f"{volume}; fully_convolutional cannot convert it")
            add(step, copy.deepcopy(m))
            volume = step.y[1:]
        else:
            raise ModelError(f"{where}: layer {step.label} is not a fully connected, "
                             "global average pooling, sliding or elementwise layer, so "
                             "fully_convolutional cannot turn it into a convolution")
    return layers, volume


class FullyConvolutional(nn.Module):
    """A classifier whose head slides (made by :func:`fully_convolutional`): an image
    (N, C, H, W) of at least ``window`` gives scores (N, classes, h, w), one per window
    position, at ``stride``; :meth:`boxes` gives the windows.

    ``backbone`` is a copy of the classifier for its ``forward_features`` (its head's layers
    are left out of the copy); ``head`` the converted layers.
    """

    window: tuple[int, int]
    stride: tuple[int, int]

    def __init__(self, backbone: Classifier, head: nn.Sequential, num_classes: int) -> None:
        super().__init__()
        self.backbone, self.head, self.num_classes = backbone, head, num_classes
        self.eval()
        shape = tuple(backbone.default_input_shape)
        self.window = (int(shape[1]), int(shape[2]))
        self.stride = self._stride(shape)

    def _dtype(self) -> torch.dtype:
        p = next((t for t in self.parameters() if t.is_floating_point()), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    def _stride(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """Read off the map's size: 1 x 1 at the window; n x n at window + _GROW, where n - 1
        is the number of strides that fit in _GROW (every layer's output size is an affine
        function of its input size, rounded, so the whole net's is too)."""
        c, wh, ww = shape
        dtype = self._dtype()
        where = f"the converted {type(self.backbone).__name__}"
        one = _meta_shape(self, "_scores", (1, c, wh, ww), dtype)
        if len(one) != 4 or one[2:] != (1, 1):
            raise ModelError(f"{where} gives a {'x'.join(map(str, one[1:]))} map at its input "
                             f"size {wh}x{ww}, not one position")
        big = _meta_shape(self, "_scores", (1, c, wh + _GROW, ww + _GROW), dtype)
        if big[2] < 2 or big[3] < 2:
            raise ModelError(f"{where}: its score map does not grow with the image (the "
                             "features end in a fixed size), so there are no windows to slide")
        stride = (round(_GROW / (big[2] - 1)), round(_GROW / (big[3] - 1)))
        two = _meta_shape(self, "_scores", (1, c, wh + stride[0], ww + stride[1]), dtype)
        if two[2:] != (2, 2):
            raise ModelError(f"{where}: the score map does not step by one position per "
                             f"{stride[0]}x{stride[1]} pixels; its windows are not evenly spaced")
        return stride

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        """Every position the net computes, windows past the bottom and right edges too."""
        y: torch.Tensor = self.head(self.backbone.forward_features(x))
        return y

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w): how many windows fit in an image of ``height`` x ``width`` pixels."""
        for name, value, least in (("height", height, self.window[0]),
                                   ("width", width, self.window[1])):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ShapeError(f"an image {name} of {value!r} is below the window "
                                 f"{self.window[0]}x{self.window[1]} (the classifier's input "
                                 f"size); give images of at least that size")
        return ((height - self.window[0]) // self.stride[0] + 1,
                (width - self.window[1]) // self.stride[1] + 1)

    def boxes(self, height: int, width: int) -> torch.Tensor:
        """(h * w, 4) the windows of an image of ``height`` x ``width`` as (x0, y0, x1, y1)
        input pixels, row-major as the score map's positions; in the net's dtype and on its
        device."""
        h, w = self.map_size(height, width)
        p = next(self.parameters(), None)
        device = p.device if p is not None else None
        y0 = (torch.arange(h, device=device) * self.stride[0]).repeat_interleave(w)
        x0 = (torch.arange(w, device=device) * self.stride[1]).repeat(h)
        corner = torch.stack([x0, y0], dim=1).to(self._dtype())          # (h*w, 2)
        return torch.cat([corner, corner + corner.new_tensor(self.window[::-1])], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, classes, h, w) scores of the windows that fit in the image."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"expected images (N, C, H, W), got {shape}; add a batch "
                             "dimension with x.unsqueeze(0) if it is one image")
        h, w = self.map_size(int(x.shape[2]), int(x.shape[3]))
        y = self._scores(x)                                   # N x classes x >= h x >= w
        if y.shape[2] < h or y.shape[3] < w:
            raise ModelError(f"the score map is {y.shape[2]}x{y.shape[3]} for a "
                             f"{x.shape[2]}x{x.shape[3]} image, fewer than its {h}x{w} windows")
        return y[:, :, :h, :w]

    def extra_repr(self) -> str:
        return f"window={self.window}, stride={self.stride}"


def fully_convolutional(model: Classifier) -> FullyConvolutional:
    """``model`` (a zoo classifier) with its head made of convolutions: a new network, in eval
    mode, that scores every window of the model's input size in one pass (see the module's
    notes). The model itself is left as it was.

    Refused, with the layer named: a head with a layer that is not fully connected, global
    average pooling, sliding (a convolution, a pool) or elementwise (ReLU, dropout), such as
    LeNet-5's RBF units; a head that computes between its layers (``-self.output(x)``).
    """
    if not isinstance(model, Classifier):
        raise ModelError(f"fully_convolutional takes a cnnlab classifier (models.create(...)), "
                         f"got {type(model).__name__}")
    name = type(model).__name__
    shape = tuple(int(s) for s in model.default_input_shape)
    if len(shape) != 3:
        raise ModelError(f"fully_convolutional slides over images; {name} takes inputs of "
                         f"shape {shape}, not (C, H, W)")
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else torch.device("cpu")

    feature_layers: list[nn.Module] = []
    g = torch.Generator().manual_seed(0)                 # leaves the global generator alone
    with _evaluating(model), torch.no_grad():
        volume = _meta_shape(model, "forward_features", (1, *shape), dtype, feature_layers)[1:]
        if len(volume) != 3:
            raise ModelError(f"{name}.forward_features ends in {volume}, not a spatial volume "
                             "(D, h, w)")
        # the head on random features of the right shape: its layers, and what it computes
        features = torch.randn((2, *volume), generator=g, dtype=torch.float64).to(device, dtype)
        steps, logits = _trace_head(model, features)
    layers, end = _convert(steps, volume, f"{name}'s head")
    if end[1:] != (1, 1):
        raise ModelError(f"{name}'s head ends in a {end[1]}x{end[2]} map, not one score per "
                         "class")
    head = nn.Sequential(layers).eval()
    with torch.no_grad():
        mapped = head(features)                          # 2 x classes x 1 x 1
    tol = max(1e-3, 50 * torch.finfo(dtype).eps)        # only the order of the sums differs
    if logits.dim() != 2 or tuple(mapped.shape) != (*logits.shape, 1, 1) or not torch.allclose(
            mapped.flatten(1), logits, rtol=tol, atol=tol * (1 + float(logits.abs().max()))):
        raise ModelError(f"{name}.forward_head computes more than its layers do (it gives "
                         f"{tuple(logits.shape)} scores unlike the chain of its layers, e.g. "
                         "arithmetic between them), so fully_convolutional cannot convert it")
    # the copy for forward_features: deepcopy takes modules found in memo as copied already,
    # so the head's layers (FC6 is most of AlexNet's weights) are never copied
    used = set(map(id, feature_layers))
    memo: dict[int, Any] = {id(s.module): nn.Identity() for s in steps if id(s.module) not in used}
    backbone = copy.deepcopy(model, memo).eval()
    return FullyConvolutional(backbone, head, end[0])
