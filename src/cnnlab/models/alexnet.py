"""AlexNet (8.4.1; Krizhevsky, Sutskever and Hinton, 2012) and ZFNet (8.4.2; Zeiler and
Fergus, 2014): the two columns of Table 8.1, written in the notation (docs/notation.md).

Volumes at 224x224x3, as Table 8.1 gives them (ReLU after every conv and hidden FC):

    AlexNet                              ZFNet
    C11D96s4p2 -> 55x55x96               C7D96s2p1 -> 110x110x96, M3s2c -> 55x55x96
    LRN, M3s2, C5D256 -> 27x27x256       LRN, C5D256s2p0 -> 26x26x256, M3s2c -> 13x13x256
    LRN, M3s2, C3D384 -> 13x13x384       LRN, C3D512 -> 13x13x512
    C3D384 -> 13x13x384                  C3D1024 -> 13x13x1024
    C3D256 -> 13x13x256                  C3D512 -> 13x13x512
    M3s2 -> 6x6x256, FC6 4096, FC7 4096, FC8 1000 (both; dropout 0.5 after FC6 and FC7)

The paper's 224 input needs 2 pixels of padding on conv1 to give 55x55 (torchvision pads the
same way; 227 without padding gives the same volumes).

Registered models (parameters at 1000 classes):

- ``alexnet_one_tower`` (62,378,344): Fig. 8.9(a), the network without the GPU split;
- ``alexnet_two_tower`` (60,965,224): Fig. 8.9(b), as trained on two GPUs: conv2, conv4 and
  conv5 see only their own GPU's maps (groups=2), conv3 and the FCs see both, and each LRN
  normalises within its GPU's half of the maps;
- ``alexnet`` (61,100,840): torchvision's layout and names (``features.0`` ...
  ``classifier.6``), so its published weights load. It is the later single-GPU AlexNet of
  Krizhevsky's "One weird trick" (2014): 64-192-384-256-256 filters and no LRN;
- ``zfnet`` (107,627,624): Table 8.1's column, 512-1024-512 filters in conv3-5 (FC6 alone
  has 6*6*512*4096 weights);
- ``alexnet_cifar`` (7,139,722 at 10 classes; ``towers=2``: 5,726,602) and ``zfnet_cifar``
  (14,394,250): the same layers for 32x32 inputs (below).

Initialisation is PyTorch's default, not the papers' N(0, 0.01) with unit biases, which
needs the papers' long schedules to get going.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab import ops
from cnnlab.errors import ModelError
from cnnlab.models._registry import register
from cnnlab.nn.classifier import Classifier
from cnnlab.nn.layers import check_dropout
from cnnlab.spec import SpecNet, build


class TowerLRN(nn.Module):
    """Eq. 8.2 within each tower: the two-GPU AlexNet normalised each GPU's maps on their own,
    so no window of n maps reaches across into the other GPU's half."""

    def __init__(self, towers: int = 2, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                 k: float = 2.0) -> None:
        super().__init__()
        self.towers, self.size, self.alpha, self.beta, self.k = towers, size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([ops.lrn(t, self.size, self.alpha, self.beta, self.k)
                          for t in x.chunk(self.towers, dim=1)], dim=1)

    def extra_repr(self) -> str:
        return (f"towers={self.towers}, size={self.size}, alpha={self.alpha}, beta={self.beta}, "
                f"k={self.k}")


def _per_tower_lrn(model: SpecNet, towers: int) -> SpecNet:
    """Replace each LRN by one that normalises within each tower (the two-GPU AlexNet)."""
    for name, m in list(model.named_children()):
        if isinstance(m, cnn.LRN):
            setattr(model, name, TowerLRN(towers, m.size, m.alpha, m.beta, m.k))
    return model


class TorchvisionLayout(Classifier):
    """torchvision's layout of AlexNet and VGG: ``features`` (the spatial layers), ``avgpool``
    (adaptive, the identity at 224x224), ``classifier`` (FC6, FC7 and the output FC8 at
    ``classifier.6``, with their ReLUs and dropouts)."""

    output_layer = "classifier.6"
    features: nn.Sequential
    avgpool: nn.Module
    classifier: nn.Sequential

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.features(x)
        return y

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        y: torch.Tensor = self.classifier[:-1](x) if pre_logits else self.classifier(x)
        return y


class AlexNet(TorchvisionLayout):
    """AlexNet in torchvision's layout ("One weird trick", Krizhevsky 2014): 64-192-384-256-256
    filters, no LRN, dropout before FC6 and FC7. Same names and shapes as
    ``torchvision.models.alexnet``, so ``load_state_dict`` takes its published weights."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.default_input_shape = (in_channels, 224, 224)
        self.num_classes = num_classes
        self.chapter_layers = {
            "conv1": "features.0", "pool1": "features.2", "conv2": "features.3",
            "pool2": "features.5", "conv3": "features.6", "conv4": "features.8",
            "conv5": "features.10", "pool3": "features.12",
            "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}  # not the index
        self.features = nn.Sequential(
            cnn.Conv2d(in_channels, 64, 11, stride=4, padding=2), cnn.ReLU(),  # 55x55x64
            cnn.MaxPool2d(3, 2),                                               # 27x27x64
            cnn.Conv2d(64, 192, 5, padding=2), cnn.ReLU(),                     # 27x27x192
            cnn.MaxPool2d(3, 2),                                               # 13x13x192
            cnn.Conv2d(192, 384, 3, padding=1), cnn.ReLU(),                    # 13x13x384
            cnn.Conv2d(384, 256, 3, padding=1), cnn.ReLU(),                    # 13x13x256
            cnn.Conv2d(256, 256, 3, padding=1), cnn.ReLU(),                    # 13x13x256
            cnn.MaxPool2d(3, 2),                                               # 6x6x256
        )
        self.avgpool = cnn.AdaptiveAvgPool2d((6, 6))    # the identity at 224x224
        self.classifier = nn.Sequential(
            cnn.Dropout(dropout), cnn.Linear(256 * 6 * 6, 4096), cnn.ReLU(),   # fc6
            cnn.Dropout(dropout), cnn.Linear(4096, 4096), cnn.ReLU(),          # fc7
            cnn.Linear(4096, num_classes),                                     # fc8
        )


def fc_head(units: int, dropout: float = 0.5) -> str:
    """Fig. 8.9's head in the notation, as AlexNet, ZFNet and VGG share it: two hidden FCs of
    ``units`` each followed by dropout (the papers': 0.5), then the output FC and S."""
    p = check_dropout(dropout)
    return f"FC{units} DROP{p!r} FC{units} DROP{p!r} FC S"


# Table 8.1 in the notation, each column followed by fc_head(4096).
TABLE_8_1 = {
    "alexnet_one_tower": "C11D96s4p2 LRN M3s2 C5D256 LRN M3s2 C3D384 C3D384 C3D256 M3s2",
    "alexnet_two_tower": "C11D96s4p2 LRN M3s2 C5D256g2 LRN M3s2 C3D384 C3D384g2 C3D256g2 M3s2",
    # ZF normalise after pooling ("relu, max pool, contrast norm"); the paper calls it local
    # contrast normalisation across maps, written here as Eq. 8.2's LRN. Its pools round up
    # (Caffe), which turns 110 into 55 and 26 into 13.
    "zfnet": "C7D96s2p1 M3s2c LRN C5D256s2p0 M3s2c LRN C3D512 C3D1024 C3D512 M3s2",
}

# 32x32 (CIFAR): the same layers and filter counts; the first layers' filters and strides shrink
# so the volumes stay meaningful, and FC6/FC7 have 1024 units (fc_head(1024)).
#   AlexNet: 32x32x96, pool 15x15, 15x15x256, pool 7x7, 7x7x384, 7x7x384, 7x7x256, pool 3x3x256
#   ZFNet:   32x32x96, pool 16x16, 8x8x256 (stride 2), pool 4x4, 4x4x512, 4x4x1024, 4x4x512,
#            pool 2x2x512
CIFAR = {
    "alexnet_one_tower": "C5D96 LRN M3s2 C5D256 LRN M3s2 C3D384 C3D384 C3D256 M3s2",
    "alexnet_two_tower": "C5D96 LRN M3s2 C5D256g2 LRN M3s2 C3D384 C3D384g2 C3D256g2 M3s2",
    "zfnet": "C3D96 M3s2c LRN C5D256s2 M3s2c LRN C3D512 C3D1024 C3D512 M3s2c",
}


def table_8_1(column: str, num_classes: int = 1000, in_channels: int = 3,
              dropout: float = 0.5) -> SpecNet:
    """A column of Table 8.1 at 224x224, with Fig. 8.9's head."""
    return _network(TABLE_8_1, column, 224, 4096, num_classes, in_channels, dropout)


def _network(table: dict[str, str], column: str, size: int, units: int, num_classes: int,
             in_channels: int, dropout: float) -> SpecNet:
    model = build(f"{table[column]} {fc_head(units, dropout)}", (in_channels, size, size),
                  num_classes)
    return _per_tower_lrn(model, 2) if column == "alexnet_two_tower" else model


_RECIPE = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128}  # 8.4.1
_CIFAR_RECIPE = {"lr": 0.05, "batch_size": 128}   # a starting point, not yet measured on CIFAR

# name: (section, summary) of each column of Table 8.1, registered as table_8_1(name, ...)
COLUMNS = {
    "alexnet_one_tower": ("8.4.1", ("AlexNet as Fig. 8.9(a) and Table 8.1: one tower, LRN, "
                                   "overlapping pools, dropout")),
    "alexnet_two_tower": ("8.4.1", ("AlexNet as trained on two GPUs (Fig. 8.9(b)): conv2, conv4, "
                                   "conv5 grouped per GPU")),
    "zfnet": ("8.4.2", "ZFNet as Table 8.1: 7x7/2 and 5x5/2 convolutions, 512-1024-512 filters"),
}
for _name, (_section, _summary) in COLUMNS.items():
    register(_name, section=_section, recipe=_RECIPE, summary=_summary)(
        functools.partial(table_8_1, _name))
register("alexnet", section="8.4.1", recipe=_RECIPE,
         summary="AlexNet in torchvision's layout (64-192-384-256-256, no LRN); loads its "
                 "weights")(AlexNet)


@register("alexnet_cifar", section="8.4.1", recipe=_CIFAR_RECIPE)
def alexnet_cifar(num_classes: int = 10, in_channels: int = 3, towers: int = 1,
                  dropout: float = 0.5) -> SpecNet:
    """AlexNet's layers for 32x32 images; towers=2 gives the two-GPU grouping"""
    if towers not in (1, 2):
        raise ModelError(f"AlexNet has one tower (Fig. 8.9(a)) or two (Fig. 8.9(b)); "
                         f"got towers={towers!r}")
    column = "alexnet_one_tower" if towers == 1 else "alexnet_two_tower"
    return _network(CIFAR, column, 32, 1024, num_classes, in_channels, dropout)


@register("zfnet_cifar", section="8.4.2", recipe=_CIFAR_RECIPE)
def zfnet_cifar(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> SpecNet:
    """ZFNet's layers for 32x32 images"""
    return _network(CIFAR, "zfnet", 32, 1024, num_classes, in_channels, dropout)
