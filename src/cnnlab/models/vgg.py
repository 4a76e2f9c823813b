"""VGG (8.4.3; Simonyan and Zisserman, 2015): Table 8.2's columns written in the notation.

Every convolution is 3x3 (1x1 in column C) at stride 1 with the padding that keeps the size,
followed by ReLU; every M is a 2x2 max pool at stride 2; filters double after each pool. At
224x224 the five pools leave 7x7x512, so FC6 alone has 7*7*512*4096 = 102,760,448 weights of
VGG-D's ~138 M. The paper trained with dropout 0.5 after FC6 and FC7 (Table 8.2 leaves it out).

Registered models (parameters at 1000 classes):

- ``vgg_a``, ``vgg_a_lrn``, ``vgg_b``, ``vgg_c``, ``vgg_d``, ``vgg_e``: the columns as the
  chapter writes them, one module per token under the notation's names (``features.conv1``,
  ``head.fc9``), reachable by VGG's own names too (``conv3_1``, ``fc6``, ``fc7``, ``fc8``);
- ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19`` (columns A, B, D, E) and their ``_bn`` forms:
  torchvision's layout and names (``features.N``, ``classifier.N``), so its published
  weights load; vgg16 has 138,357,544 parameters;
- ``vgg_cifar``: a column (``config="D"`` by default) for 32x32 images, with 512-unit FCs.

Batch normalisation (the ``_bn`` models) is not one of the chapter's operations, so it runs on
``torch.nn.BatchNorm2d``, the same on both kernels. Initialisation is torchvision's (He normal
for convolutions, N(0, 0.01) for FCs), not the paper's, which started D and E from a trained A.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab.errors import ModelError
from cnnlab.models._base import Classifier
from cnnlab.models._registry import register
from cnnlab.models._spec import SpecClassifier, fresh_linear
from cnnlab.spec import parse

# Table 8.2, one column per row; each is followed by the head below.
TABLE_8_2 = {
    "A":     "C3D64 M C3D128 M C3D256 C3D256 M C3D512 C3D512 M C3D512 C3D512 M",
    "A-LRN": "C3D64 LRN M C3D128 M C3D256 C3D256 M C3D512 C3D512 M C3D512 C3D512 M",
    "B":     "C3D64 C3D64 M C3D128 C3D128 M C3D256 C3D256 M C3D512 C3D512 M C3D512 C3D512 M",
    "C":     "C3D64 C3D64 M C3D128 C3D128 M C3D256 C3D256 C1D256 M "
             "C3D512 C3D512 C1D512 M C3D512 C3D512 C1D512 M",
    "D":     "C3D64 C3D64 M C3D128 C3D128 M C3D256 C3D256 C3D256 M "
             "C3D512 C3D512 C3D512 M C3D512 C3D512 C3D512 M",
    "E":     "C3D64 C3D64 M C3D128 C3D128 M C3D256 C3D256 C3D256 C3D256 M "
             "C3D512 C3D512 C3D512 C3D512 M C3D512 C3D512 C3D512 C3D512 M",
}
HEAD = "FC4096 DROP FC4096 DROP FC S"
CIFAR_HEAD = "FC512 DROP FC512 DROP FC S"   # 1x1x512 after the five pools at 32x32


def _column(config: str) -> str:
    if config not in TABLE_8_2:
        raise ModelError(f"VGG has the configurations of Table 8.2: {', '.join(TABLE_8_2)}; "
                         f"got config={config!r}")
    return TABLE_8_2[config]


def _vgg_names(config: str) -> list[str]:
    """VGG's own names, token by token: conv<stage>_<i> for convolutions (conv1_1, ... conv5_3
    in D) and pool<stage> for pools; other tokens (LRN) get ''."""
    names, stage, i = [], 1, 0
    for tok in parse(_column(config)):
        if tok.kind == "conv":
            i += 1
            names.append(f"conv{stage}_{i}")
        elif tok.kind == "maxpool":
            names.append(f"pool{stage}")
            stage, i = stage + 1, 0
        else:
            names.append("")
    return names


def _init(model: nn.Module) -> None:
    """torchvision's VGG initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VGG(Classifier):
    """VGG in torchvision's layout, built from a column of Table 8.2: ``features`` holds
    conv [BN] ReLU per C token and a 2x2/2 max pool per M, ``classifier`` FC6 ReLU dropout
    FC7 ReLU dropout FC8. Names and shapes equal ``torchvision.models.vgg16`` (column D) etc.
    Chapter names: conv1 ... convN in order, VGG's conv1_1 ... and pool1 ..., fc6, fc7, fc8."""

    default_input_shape = (3, 224, 224)

    def __init__(self, config: str, num_classes: int = 1000, in_channels: int = 3,
                 batch_norm: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        self.default_input_shape = (in_channels, 224, 224)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        names: dict[str, str] = {}
        channels, convs = in_channels, 0
        for tok, vgg_name in zip(parse(_column(config)), _vgg_names(config)):
            if tok.kind == "conv":
                assert tok.out is not None and tok.size is not None
                convs += 1
                names[f"conv{convs}"] = names[vgg_name] = f"features.{len(layers)}"
                layers.append(cnn.Conv2d(channels, tok.out, tok.size[0], padding="half"))
                layers += [nn.BatchNorm2d(tok.out)] if batch_norm else []
                layers.append(cnn.ReLU())
                channels = tok.out
            elif tok.kind == "maxpool":
                names[vgg_name] = f"features.{len(layers)}"
                layers.append(cnn.MaxPool2d(2, 2))
            elif tok.kind == "lrn":         # A-LRN's, after conv1's ReLU
                layers.append(cnn.LRN())
            else:
                raise ModelError(f"a VGG column has C, M and LRN tokens only, got {tok.where}")
        self.features = nn.Sequential(*layers)                          # 7x7x512 at 224
        self.avgpool = cnn.AdaptiveAvgPool2d((7, 7))                        # the identity at 224
        self.classifier = nn.Sequential(
            cnn.Linear(channels * 7 * 7, 4096), cnn.ReLU(), cnn.Dropout(dropout),   # fc6
            cnn.Linear(4096, 4096), cnn.ReLU(), cnn.Dropout(dropout),               # fc7
            cnn.Linear(4096, num_classes),                                          # fc8
        )
        names |= {"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}
        self.chapter_layers = names  # type: ignore[misc]  # per instance: depends on the column
        _init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier[-1] = fresh_linear(self.classifier[-1], num_classes)
        self.num_classes = num_classes


def _chapter_vgg(config: str, num_classes: int, in_channels: int, size: int = 224
                 ) -> SpecClassifier:
    """A column as the chapter writes it; VGG's names (conv3_1, fc6, fc7, fc8) are aliases of
    the notation's (conv5, fc9, fc10, fc11 in A)."""
    head = HEAD if size == 224 else CIFAR_HEAD
    aliases: dict[str, str] = {}
    convs = pools = 0
    for tok, vgg_name in zip(parse(_column(config)), _vgg_names(config)):
        if tok.kind == "conv":
            convs += 1
            aliases[vgg_name] = f"conv{convs}"
        elif tok.kind == "maxpool":
            pools += 1
            aliases[vgg_name] = f"pool{pools}"
    aliases |= {f"fc{6 + i}": f"fc{convs + 1 + i}" for i in range(3)}
    model = SpecClassifier(f"{_column(config)} {head}", (in_channels, size, size), num_classes,
                           aliases)
    _init(model)
    return model


_RECIPE = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256}  # the paper's
_CIFAR_RECIPE = {"lr": 0.05, "batch_size": 128}   # a starting point, not yet measured on CIFAR


@register("vgg_a", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg_a(num_classes: int = 1000, in_channels: int = 3) -> SpecClassifier:
    """VGG column A of Table 8.2 (11 weighted layers)"""
    return _chapter_vgg("A", num_classes, in_channels)


@register("vgg_a_lrn", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg_a_lrn(num_classes: int = 1000, in_channels: int = 3) -> SpecClassifier:
    """VGG column A-LRN of Table 8.2 (A with LRN after the first layer)"""
    return _chapter_vgg("A-LRN", num_classes, in_channels)


@register("vgg_b", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg_b(num_classes: int = 1000, in_channels: int = 3) -> SpecClassifier:
    """VGG column B of Table 8.2 (13 weighted layers)"""
    return _chapter_vgg("B", num_classes, in_channels)


@register("vgg_c", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg_c(num_classes: int = 1000, in_channels: int = 3) -> SpecClassifier:
    """VGG column C of Table 8.2 (16 weighted layers, three of them 1x1)"""
    return _chapter_vgg("C", num_classes, in_channels)


@register("vgg_d", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg_d(num_classes: int = 1000, in_channels: int = 3) -> SpecClassifier:
    """VGG column D of Table 8.2 (16 weighted layers; VGG-16)"""
    return _chapter_vgg("D", num_classes, in_channels)


@register("vgg_e", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg_e(num_classes: int = 1000, in_channels: int = 3) -> SpecClassifier:
    """VGG column E of Table 8.2 (19 weighted layers; VGG-19)"""
    return _chapter_vgg("E", num_classes, in_channels)


@register("vgg_cifar", input_shape=(3, 32, 32), section="8.4.3",
          recipe=_CIFAR_RECIPE)
def vgg_cifar(num_classes: int = 10, in_channels: int = 3, config: str = "D") -> SpecClassifier:
    """A column of Table 8.2 (config="A" ... "E", default D) for 32x32 images"""
    return _chapter_vgg(config, num_classes, in_channels, size=32)


@register("vgg11", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg11(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-11 (column A) in torchvision's layout; loads its weights"""
    return VGG("A", num_classes, in_channels, dropout=dropout)


@register("vgg11_bn", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg11_bn(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-11 with batch norm, in torchvision's layout; loads its weights"""
    return VGG("A", num_classes, in_channels, batch_norm=True, dropout=dropout)


@register("vgg13", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg13(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-13 (column B) in torchvision's layout; loads its weights"""
    return VGG("B", num_classes, in_channels, dropout=dropout)


@register("vgg13_bn", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg13_bn(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-13 with batch norm, in torchvision's layout; loads its weights"""
    return VGG("B", num_classes, in_channels, batch_norm=True, dropout=dropout)


@register("vgg16", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg16(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-16 (column D) in torchvision's layout; loads its weights"""
    return VGG("D", num_classes, in_channels, dropout=dropout)


@register("vgg16_bn", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg16_bn(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-16 with batch norm, in torchvision's layout; loads its weights"""
    return VGG("D", num_classes, in_channels, batch_norm=True, dropout=dropout)


@register("vgg19", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg19(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-19 (column E) in torchvision's layout; loads its weights"""
    return VGG("E", num_classes, in_channels, dropout=dropout)


@register("vgg19_bn", input_shape=(3, 224, 224), section="8.4.3", recipe=_RECIPE)
def vgg19_bn(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> VGG:
    """VGG-19 with batch norm, in torchvision's layout; loads its weights"""
    return VGG("E", num_classes, in_channels, batch_norm=True, dropout=dropout)
