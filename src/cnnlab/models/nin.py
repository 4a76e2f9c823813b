"""Network in Network (Lin, Chen and Yan, 2014), the forerunner of GoogLeNet's "network within a
network" (8.4.4, 8.8): every convolution is followed by a small MLP applied at each position,
written as 1x1 convolutions (an *mlpconv* block: 8.4.3's extra nonlinearity from 1x1 layers,
8.4.4's bottlenecks), and global average pooling (8.2.6) replaces the fully connected layers:
the last mlpconv gives one map per class and each class score is the average of its map.

The networks are the authors' definitions, written in the notation (docs/notation.md), one run
of C tokens per mlpconv block, a ReLU after every convolution (the class maps' too, as in both
definitions). ``C1`` without ``D`` is the classifier: one 1x1 filter per class.

Registered models:

- ``nin_cifar`` (966,986 parameters at 10 classes; the authors' cuda-convnet ``cifar-10_def``):

      C5D192 C1D160 C1D96   -> 32x32x96,  M3s2c -> 16x16x96,  DROP0.5
      C5D192 C1D192 C1D192  -> 16x16x192, M3s2c -> 8x8x192,   DROP0.5
      C3D192 C1D192 C1      -> 8x8x10,    GAP   -> 10

- ``nin`` (7,595,176 parameters at 1000 classes, 29 MiB as float32; the ImageNet model of
  the Caffe model zoo, ``nin_imagenet``):

      C11D96s4p0 C1D96 C1D96     -> 54x54x96,   M3s2c -> 27x27x96
      C5D256 C1D256 C1D256       -> 27x27x256,  M3s2c -> 13x13x256
      C3D384 C1D384 C1D384       -> 13x13x384,  M3s2c -> 6x6x384, DROP0.5
      C3D1024 C1D1024 C1         -> 6x6x1000,   GAP   -> 1000

The pools round up (``c``), as cuda-convnet and Caffe do: that turns 54 into 27 and 13 into 6,
where the Caffe model's final 6x6 average pool expects it.

The model interface, with the classifier a convolution: ``forward_features`` stops before the
class layer (the last mlpconv's final 1x1 convolution), so it returns the last mlpconv's hidden
maps (8x8x192 for CIFAR, 6x6x1024 for ImageNet); ``forward_head`` applies the class layer, its
ReLU and global average pooling; ``pre_logits=True`` returns the globally averaged hidden maps
instead (192 or 1024 features, NiN's counterpart of FC7 features); ``reset_classifier``
replaces the class layer. ``class_relu=False`` drops the ReLU on the class maps; the head is
then a linear layer on the pre-logits (averaging commutes with a 1x1 convolution).

Initialisation: He-normal hidden convolutions, the class layer N(0, 0.01) (the ImageNet
model's value; with He's scale there the first scores are large, the first steps overshoot
and the ReLU can shut every class map), zero biases. The authors used small Gaussians
throughout.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab.errors import ModelError
from cnnlab.models._registry import register
from cnnlab.nn.classifier import Classifier
from cnnlab.spec import Token, parse

# The authors' networks in the notation; each run of C tokens is one mlpconv block.
CONFIGS = {
    "cifar": "C5D192 C1D160 C1D96 M3s2c DROP0.5 "
             "C5D192 C1D192 C1D192 M3s2c DROP0.5 "
             "C3D192 C1D192 C1 GAP",
    "imagenet": "C11D96s4p0 C1D96 C1D96 M3s2c "
                "C5D256 C1D256 C1D256 M3s2c "
                "C3D384 C1D384 C1D384 M3s2c DROP0.5 "
                "C3D1024 C1D1024 C1 GAP",
}


def _pair(size: tuple[int, ...] | None, default: int) -> tuple[int, int]:
    if size is None:
        return default, default
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def _conv(tok: Token, in_channels: int, out_channels: int) -> cnn.Conv2d:
    padding = "half" if tok.padding is None else tok.padding
    return cnn.Conv2d(in_channels, out_channels, _pair(tok.size, 3), _pair(tok.stride, 1),
                      padding if isinstance(padding, str) else _pair(padding, 0))


class MLPConv(nn.Sequential):
    """An mlpconv block: a convolution, then 1x1 convolutions, each followed by ReLU, i.e. an MLP
    slid over the image and shared by every position. Children: ``conv``, ``mlp1``, ``mlp2``
    (with ``relu``, ``relu1``, ``relu2``).

    >>> MLPConv(3, parse("C5D192 C1D160 C1D96"))(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 96, 32, 32])
    """

    def __init__(self, in_channels: int, tokens: Sequence[Token]) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for i, tok in enumerate(tokens):
            if i and _pair(tok.size, 3) != (1, 1):
                raise ModelError(f"{tok.where}: after its first convolution an mlpconv block "
                                 f"has only 1x1 convolutions, e.g. C1D192")
            if tok.out is None:
                raise ModelError(f"{tok.where}: an mlpconv layer needs its number of filters, "
                                 f"e.g. C1D192 (only the final class layer C1 goes without)")
            layers[f"mlp{i}" if i else "conv"] = _conv(tok, channels, tok.out)
            layers[f"relu{i}" if i else "relu"] = cnn.ReLU()
            channels = tok.out
        super().__init__(layers)
        self.out_channels = channels


class NiN(Classifier):
    """Network in Network from a spec in the notation: runs of convolutions become
    :class:`MLPConv` blocks (``features.mlpconv1`` ...), M / A tokens pools and DROP dropout
    between them; the spec ends with ``C1 GAP``, the class layer (``classifier``, one 1x1 filter
    per class) and global average pooling (``gap``).

    Chapter names: ``mlpconv1`` ..., the authors' ``conv1`` ... and ``cccp1`` ... for the
    convolutions (the class layer is also the last ``cccp``), ``pool1`` ..., ``classifier``,
    ``gap``.
    """

    def __init__(self, spec: str, input_shape: tuple[int, int, int], num_classes: int,
                 class_relu: bool = True) -> None:
        super().__init__()
        if not isinstance(class_relu, bool):
            raise ModelError(f"class_relu is True (ReLU on the class maps, as the authors) or "
                             f"False; got class_relu={class_relu!r}")
        tokens = parse(spec)
        if len(tokens) < 2 or tokens[-1].kind != "gap" or tokens[-2].kind != "conv" or \
                tokens[-2].out is not None or _pair(tokens[-2].size, 3) != (1, 1):
            raise ModelError(f"a NiN spec ends with its class layer and global average pooling, "
                             f"'C1 GAP' (C1 without D: one 1x1 filter per class); got {spec!r}")
        self.spec, self.num_classes = spec, num_classes
        self.default_input_shape = input_shape
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        names: dict[str, str] = {}
        block: list[Token] = []
        channels, blocks, pools, drops, cccp = input_shape[0], 0, 0, 0, 0

        def close_block() -> None:      # the convolutions gathered so far become one mlpconv
            nonlocal channels, block, blocks, cccp
            if not block:
                return
            blocks += 1
            k, mlp = blocks, MLPConv(channels, block)
            path = f"features.mlpconv{k}"
            layers[f"mlpconv{k}"] = mlp
            names[f"mlpconv{k}"], names[f"conv{k}"] = path, f"{path}.conv"
            for i in range(1, len(block)):
                cccp += 1
                names[f"cccp{cccp}"] = f"{path}.mlp{i}"
            channels, block = mlp.out_channels, []

        for tok in tokens[:-2]:
            if tok.kind == "conv":
                block.append(tok)
                continue
            close_block()
            if tok.kind in ("maxpool", "avgpool"):
                pools += 1
                pool = cnn.MaxPool2d if tok.kind == "maxpool" else cnn.AvgPool2d
                stride = _pair(tok.stride, _pair(tok.size, 2)[0])
                padding = _pair(tok.padding if isinstance(tok.padding, tuple) else None, 0)
                layers[f"pool{pools}"] = pool(_pair(tok.size, 2), stride, padding,
                                              ceil_mode=tok.ceil)
                names[f"pool{pools}"] = f"features.pool{pools}"
            elif tok.kind == "dropout":
                drops += 1
                layers[f"drop{drops}"] = cnn.Dropout(0.5 if tok.rate is None else tok.rate)
            else:
                raise ModelError(f"{tok.where}: a NiN spec holds convolutions, pools (M, A), "
                                 f"DROP and the final 'C1 GAP' only")
        close_block()
        if not blocks:
            raise ModelError(f"a NiN spec needs at least one mlpconv block before 'C1 GAP', "
                             f"e.g. 'C3D192 C1D192 C1 GAP'; got {spec!r}")
        self.features = nn.Sequential(layers)
        self.classifier = cnn.Conv2d(channels, num_classes, 1)     # one map per class
        self.class_relu = cnn.ReLU() if class_relu else nn.Identity()
        self.gap = cnn.GlobalAvgPool()
        names |= {"classifier": "classifier", f"cccp{cccp + 1}": "classifier", "gap": "gap"}
        self.chapter_layers = names
        for m in self.features.modules():
            if isinstance(m, cnn.Conv2d):
                _init(m, None)
        _init(self.classifier, 0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.features(x)                 # the last mlpconv's hidden maps
        return y

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not pre_logits:
            x = self.class_relu(self.classifier(x))                # N x classes x H x W
        y: torch.Tensor = self.gap(x)   # N x classes, or N x D pre-logits (each hidden map)
        return y

    def reset_classifier(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")
        old = self.classifier.weight
        fresh = cnn.Conv2d(old.shape[1], num_classes, 1).to(old.device, old.dtype)
        self.classifier = _init(fresh, 0.01)
        self.num_classes = num_classes


def _init(conv: cnn.Conv2d, std: float | None) -> cnn.Conv2d:
    """He-normal weights (``std=None``) or N(0, std²), zero biases."""
    if std is None:
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    else:
        nn.init.normal_(conv.weight, 0, std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


# starting points, not yet measured here (the model zoo's CIFAR solver used lr 0.1, decay 1e-4)
_CIFAR_RECIPE = {"lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128}
_RECIPE = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128}


@register("nin_cifar", section="8.4.4", recipe=_CIFAR_RECIPE)
def nin_cifar(num_classes: int = 10, in_channels: int = 3, class_relu: bool = True) -> NiN:
    """Network in Network for 32x32 images: three mlpconv blocks, global average pooling"""
    return NiN(CONFIGS["cifar"], (in_channels, 32, 32), num_classes, class_relu)


@register("nin", section="8.4.4", recipe=_RECIPE)
def nin(num_classes: int = 1000, in_channels: int = 3, class_relu: bool = True) -> NiN:
    """Network in Network for ImageNet: four mlpconv blocks, global average pooling"""
    return NiN(CONFIGS["imagenet"], (in_channels, 224, 224), num_classes, class_relu)
