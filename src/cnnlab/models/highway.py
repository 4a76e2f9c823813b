"""Highway networks (8.4.5, "Variations of Skip Architectures"; Srivastava, Greff and
Schmidhuber, 2015, "Training Very Deep Networks"): skip connections with learned gates.

A highway layer mixes a transform ``H(x)`` with its own input, position by position, through a
transform gate ``T(x)`` whose values lie in (0, 1):

    y = H(x) * T(x) + x * (1 - T(x)),   H(x) = ReLU(W_H x + b_H),   T(x) = sigmoid(W_T x + b_T)

A shut gate (T = 0) carries x through unchanged, an open one (T = 1) makes a plain layer. The
gate bias b_T starts negative (-2, as in the authors' CIFAR definition), so every layer begins
close to the identity and the gradient reaches the first layers of a deep stack. ResNet's block
is the case in which both paths are always fully open: y = H(x) + x. The input and output of a
highway layer have the same size, so each stage starts with a plain convolution that sets the
width.

Registered model (parameters at 10 classes):

- ``highway_cifar`` (2,256,838): the paper's 19-layer convolutional highway network for
  CIFAR-10 (Table 1: 19 layers, about 2.3 M parameters), laid out as the authors' released
  Caffe definition (``examples/highways/cifar10-19layers``), in their layer names:

      DROP0.2, conv1 C3D32, conv2-conv5 highway 3x3x32         -> 32x32x32
      M2, DROP0.2, conv6 C3D80, conv7-conv11 highway 3x3x80    -> 16x16x80
      M2, DROP0.2, conv12 C3D128, conv13-conv17 highway 3x3x128 -> 8x8x128
      conv18 C1D100                                            -> 8x8x100
      pool3 global average, DROP0.2, fc (ip2)                  -> classes

  3 plain convolutions, 14 highway layers, conv18 and the FC: 19 layers. conv18 has 100 maps
  whatever the class count, as in the authors' file; at 100 classes the net has 2,265,928
  parameters, the total their training log prints. ``widths`` and ``highway_layers`` give
  other depths and widths (the paper's other highway nets share this plan; their exact
  layouts are not reproduced here).

Departures: the authors initialised with Xavier's rule and trained with Nesterov momentum on
globally contrast-normalised images. Here the plain convolutions and H are He-normal (the
zoo's rule for CIFAR models), the gates keep Xavier's rule with bias -2, the FC is N(0, 0.01).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from numbers import Real

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab.errors import ModelError
from cnnlab.models._registry import register
from cnnlab.nn.classifier import Classifier


def _check_gate_bias(gate_bias: float) -> float:
    if isinstance(gate_bias, bool) or not isinstance(gate_bias, Real):
        raise ModelError(f"gate_bias must be a number (negative, e.g. -2.0, so the gates start "
                         f"mostly shut); got gate_bias={gate_bias!r}")
    return float(gate_bias)


class _Highway(nn.Module):
    """y = H(x) T(x) + x (1 - T(x)) with H = ReLU(h(x)) and T = sigmoid(t(x)); h and t map x
    to a tensor of its own shape."""

    h: nn.Module
    t: nn.Module

    def __init__(self, gate_bias: float) -> None:
        super().__init__()
        self.gate_bias = _check_gate_bias(gate_bias)
        self.relu = cnn.ReLU()

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """H(x), the plain layer's output."""
        y: torch.Tensor = self.relu(self.h(x))
        return y

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """T(x), in (0, 1): the share of H(x) in the output at each position."""
        return torch.sigmoid(self.t(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.gate(x)
        return self.transform(x) * t + x * (1 - t)

    def reset_parameters(self) -> None:
        """He-normal H (it feeds a ReLU), Xavier gates with bias ``gate_bias``."""
        assert isinstance(self.h, nn.Conv2d | nn.Linear) and isinstance(self.t, nn.Conv2d | nn.Linear)
        nn.init.kaiming_normal_(self.h.weight, nonlinearity="relu")
        nn.init.xavier_uniform_(self.t.weight)
        if self.h.bias is not None:
            nn.init.zeros_(self.h.bias)
        if self.t.bias is not None:
            nn.init.constant_(self.t.bias, self.gate_bias)


class HighwayConv2d(_Highway):
    """A convolutional highway layer: H and T are ``kernel_size`` convolutions with the padding
    that keeps the size (8.2.1's half padding), so the output has the input's shape.

    >>> layer = HighwayConv2d(8, gate_bias=-2.0)
    >>> layer(torch.zeros(1, 8, 5, 5)).shape, layer.t.bias[0].item()
    (torch.Size([1, 8, 5, 5]), -2.0)
    """

    def __init__(self, channels: int, kernel_size: int = 3, gate_bias: float = -2.0) -> None:
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or \
                kernel_size < 1 or kernel_size % 2 == 0:
            raise ModelError(f"a highway layer needs an odd kernel_size (its padding keeps the "
                             f"size so x and H(x) can be mixed), e.g. 3; got "
                             f"kernel_size={kernel_size!r}")
        super().__init__(gate_bias)
        self.h = cnn.Conv2d(channels, channels, kernel_size, padding="half")
        self.t = cnn.Conv2d(channels, channels, kernel_size, padding="half")
        self.reset_parameters()


class HighwayLinear(_Highway):
    """A fully connected highway layer (the paper's first form): H and T are FC layers of
    ``features`` units, so the output has the input's size."""

    def __init__(self, features: int, gate_bias: float = -2.0) -> None:
        super().__init__(gate_bias)
        self.h = cnn.Linear(features, features)
        self.t = cnn.Linear(features, features)
        self.reset_parameters()


class HighwayNet(Classifier):
    """A convolutional highway network for small images: stages of a plain 3x3 convolution and
    ``highway_layers[i]`` highway layers of ``widths[i]`` maps, 2x2 max pooling between stages,
    then a 1x1 convolution to 100 maps, global average pooling and one FC layer. Dropout 0.2
    before each stage and before the FC, as the authors' definition has it.

    Layers carry the authors' names (``conv1`` ... ``conv18``, ``pool1`` ... ``pool3``, ``fc``);
    ``highway1`` ... name the highway layers in order.
    """

    maps = 100      # conv18's width in the authors' definition, whatever the class count

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 widths: Sequence[int] = (32, 80, 128), highway_layers: Sequence[int] = (4, 5, 5),
                 gate_bias: float = -2.0, dropout: float = 0.2) -> None:
        super().__init__()
        self.default_input_shape = (in_channels, 32, 32)
        widths, highway_layers = _check_stages(widths, highway_layers)
        _check_dropout(dropout)
        self.num_classes = num_classes
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        names: dict[str, str] = {}
        channels, convs, highways = in_channels, 0, 0
        for stage, (width, count) in enumerate(zip(widths, highway_layers), 1):
            if stage > 1:
                layers[f"pool{stage - 1}"] = cnn.MaxPool2d(2, 2)      # halves the size
            layers[f"drop{stage}"] = cnn.Dropout(dropout)
            convs += 1
            layers[f"conv{convs}"] = cnn.Conv2d(channels, width, 3, padding="half")
            layers[f"relu{convs}"] = cnn.ReLU()
            for _ in range(count):
                convs, highways = convs + 1, highways + 1
                layers[f"conv{convs}"] = HighwayConv2d(width, 3, gate_bias)
                names[f"highway{highways}"] = f"features.conv{convs}"
            channels = width
        convs += 1
        layers[f"conv{convs}"] = cnn.Conv2d(channels, self.maps, 1)
        layers[f"relu{convs}"] = cnn.ReLU()
        self.features = nn.Sequential(layers)               # 8x8x100 at 32x32, three stages
        self.pool = cnn.GlobalAvgPool()                     # the authors' pool3: 8x8 average
        self.dropout = cnn.Dropout(dropout)
        self.fc = cnn.Linear(self.maps, num_classes)        # the authors' ip2
        names |= {n: f"features.{n}" for n in layers if n.startswith(("conv", "pool"))}
        names |= {f"pool{len(widths)}": "pool", "fc": "fc"}
        self.chapter_layers = names
        self._init()

    def _init(self) -> None:
        for m in self.features.children():      # the highway layers initialise themselves
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.features(x)
        return y

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.pool(x))                      # N x 100
        return x if pre_logits else self.fc(x)


def _check_stages(widths: Sequence[int], highway_layers: Sequence[int]
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    def positive_ints(value: Sequence[int]) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)

    try:
        widths, highway_layers = tuple(widths), tuple(highway_layers)
    except TypeError:
        raise ModelError(f"widths and highway_layers are sequences with one entry per stage, "
                         f"e.g. (32, 80, 128) and (4, 5, 5); got widths={widths!r}, "
                         f"highway_layers={highway_layers!r}") from None
    if not widths or len(widths) != len(highway_layers):
        raise ModelError(f"widths and highway_layers need one entry per stage, the same number "
                         f"of each, e.g. (32, 80, 128) and (4, 5, 5); got widths={widths!r}, "
                         f"highway_layers={highway_layers!r}")
    if not positive_ints(widths) or not positive_ints(highway_layers):
        raise ModelError(f"widths and highway_layers must be positive ints, e.g. (32, 80, 128) "
                         f"and (4, 5, 5); got widths={widths!r}, highway_layers={highway_layers!r}")
    return widths, highway_layers


def _check_dropout(p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, Real) or not 0 <= p < 1:
        raise ModelError(f"dropout is a probability in [0, 1), e.g. 0.2; got dropout={p!r}")


# the authors' solver (theirs with Nesterov momentum, 200k steps of 100 images)
_RECIPE = {"lr": 0.025, "momentum": 0.9, "weight_decay": 1e-3, "batch_size": 100}


@register("highway_cifar", section="8.4.5", recipe=_RECIPE)
def highway_cifar(num_classes: int = 10, in_channels: int = 3,
                  widths: Sequence[int] = (32, 80, 128), highway_layers: Sequence[int] = (4, 5, 5),
                  gate_bias: float = -2.0, dropout: float = 0.2) -> HighwayNet:
    """Highway network, 19 layers, for 32x32 images: gated skips, gates biased shut at first"""
    return HighwayNet(num_classes, in_channels, widths, highway_layers, gate_bias, dropout)
