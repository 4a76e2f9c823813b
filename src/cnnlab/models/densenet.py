"""DenseNet (8.4.5, "Variations of Skip Architectures"; Huang et al., 2017).

Where ResNet adds a block's input to its output, DenseNet concatenates: inside a dense block,
layer l sees the maps of the block's input and of all l-1 layers before it, so a block of L
layers has L(L+1)/2 direct connections and each layer only adds k new maps (the growth rate k)
to a shared, growing volume. Layer i of a block that starts with k0 maps reads k0 + (i-1)k of
them. A layer is BN-ReLU-conv 3x3 (k maps); with a bottleneck ("B") a BN-ReLU-conv 1x1 to 4k
maps comes first. Between blocks a transition (BN-ReLU-conv 1x1, 2x2 average pool) halves the
size and, with compression theta ("C", 0.5 here), keeps floor(theta * m) of the m maps. After
the last block: BN, ReLU, global average pooling, one FC layer.

Registered models (parameters at 1000 classes for ImageNet, 10 for CIFAR, measured):

- ``densenet121`` (7,978,856), ``densenet169`` (14,149,480), ``densenet201`` (20,013,928),
  ``densenet161`` (28,681,000): DenseNet-BC for 224x224 images (k=32, k=48 for 161) in
  torchvision's layout and names (``features.denseblock1.denselayer1.conv1``,
  ``features.transition1.conv``, ``features.norm5``, ``classifier``), so its published weights
  load; torchvision's memory-efficient checkpointing is not implemented;
- ``densenet40_12`` (1,019,722; the paper's 1.0 M): the plain DenseNet for 32x32 images,
  L=40, k=12, no bottleneck or compression;
- ``densenet_bc_100_12`` (769,162; 0.8 M), ``densenet_bc_250_24`` (15,324,406; 15.3 M),
  ``densenet_bc_190_40`` (25,624,430; 25.6 M): DenseNet-BC for 32x32 images.

:func:`densenet_cifar` builds any CIFAR form from depth, growth rate, bottleneck, compression
and dropout. Batch normalisation and the concatenation are not chapter operations and run on
torch (``BatchNorm2d``, ``torch.cat``), the same on both kernels; convolutions, pools, ReLU and
the FC layer run on :mod:`cnnlab.ops`. Initialisation is torchvision's for all of them: He
normal over the fan-in for convolutions, BN weight 1 and bias 0, FC bias 0. The authors' CIFAR
code took He normal over the fan-out; BN normalises either in training, but with fresh
running statistics the fan-out form makes an untrained net explode in eval mode (largest
feature ~3e17 at the end of DenseNet-BC-250, ~5 over the fan-in). No convolution has a bias.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab.errors import ModelError
from cnnlab.models._registry import preset, register
from cnnlab.nn.classifier import Classifier

Stem = Literal["imagenet", "cifar"]


class DenseLayer(nn.Module):
    """One layer of a dense block: BN-ReLU-conv 3x3 to ``growth_rate`` maps, preceded by a
    BN-ReLU-conv 1x1 bottleneck to ``bn_size * growth_rate`` maps unless ``bn_size`` is None.
    Dropout, if any, follows each convolution (as in the paper's CIFAR runs)."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int | None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.bottleneck = bn_size is not None
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = cnn.ReLU()
        if bn_size is None:
            self.conv1 = cnn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False)
        else:
            width = bn_size * growth_rate
            self.conv1 = cnn.Conv2d(in_channels, width, 1, bias=False)
            self.norm2 = nn.BatchNorm2d(width)
            self.relu2 = cnn.ReLU()
            self.conv2 = cnn.Conv2d(width, growth_rate, 3, padding=1, bias=False)
        self.drop: nn.Module = cnn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.conv1(self.relu1(self.norm1(x))))       # N x (4k or k) x H x W
        if self.bottleneck:
            x = self.drop(self.conv2(self.relu2(self.norm2(x))))   # N x k x H x W
        return x


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers (``denselayer1`` ...): each reads the concatenation of the
    block's input and every earlier layer's output; the block returns all of them,
    ``in_channels + num_layers * growth_rate`` maps."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int,
                 bn_size: int | None, dropout: float = 0.0) -> None:
        super().__init__({f"denselayer{i + 1}": DenseLayer(in_channels + i * growth_rate,
                                                           growth_rate, bn_size, dropout)
                          for i in range(num_layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))   # layer i reads k0 + (i-1)k maps
        return torch.cat(features, 1)                        # N x (k0 + L*k) x H x W


class Transition(nn.Sequential):
    """Between two blocks: BN-ReLU-conv 1x1 to ``out_channels`` maps, then a 2x2 average pool
    at stride 2 (half the size)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            norm=nn.BatchNorm2d(in_channels), relu=cnn.ReLU(),
            conv=cnn.Conv2d(in_channels, out_channels, 1, bias=False))
        if dropout > 0:
            layers["drop"] = cnn.Dropout(dropout)
        layers["pool"] = cnn.AvgPool2d(2, 2)
        super().__init__(layers)


class DenseNet(Classifier):
    """DenseNet in torchvision's layout: ``features`` holds the stem (``conv0``; for ImageNet
    also ``norm0``, ``relu0`` and a 3x3/2 max pool ``pool0``), ``denseblock1`` ...,
    ``transition1`` ... between them, and a final BN-ReLU (``norm5``/``relu5`` after four
    blocks, ``norm4``/``relu4`` after three); then global average pooling and ``classifier``.

    ``block_config`` gives the layers per block, ``num_init_features`` the stem's maps,
    ``bn_size`` the bottleneck width in units of k (None: no bottleneck) and ``compression``
    the fraction of maps a transition keeps. ``stem="cifar"`` starts with one 3x3 conv at
    stride 1 for 32x32 images instead of ImageNet's 7x7/2 conv and max pool.

    >>> net = DenseNet(12, (2, 2, 2), 24, stem="cifar", num_classes=10)
    >>> net.layer("dense_block2").denselayer2.norm1.num_features   # 24 + 2*12 -> 24 -> 24 + 12
    36
    >>> net(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    """

    output_layer = "classifier"

    def __init__(self, growth_rate: int, block_config: tuple[int, ...], num_init_features: int,
                 bn_size: int | None = 4, compression: float = 0.5, dropout: float = 0.0,
                 num_classes: int = 1000, in_channels: int = 3, stem: Stem = "imagenet") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.growth_rate = growth_rate
        c = num_init_features
        if stem == "imagenet":
            self.default_input_shape = (in_channels, 224, 224)
            self.features = nn.Sequential(OrderedDict(
                conv0=cnn.Conv2d(in_channels, c, 7, stride=2, padding=3, bias=False),  # 112
                norm0=nn.BatchNorm2d(c), relu0=cnn.ReLU(),
                pool0=cnn.MaxPool2d(3, stride=2, padding=1)))                          # 56
        elif stem == "cifar":
            self.default_input_shape = (in_channels, 32, 32)
            self.features = nn.Sequential(OrderedDict(
                conv0=cnn.Conv2d(in_channels, c, 3, padding=1, bias=False)))           # 32
        else:
            raise ModelError(f"stem must be 'imagenet' or 'cifar', got stem={stem!r}")
        names = {"conv0": "features.conv0", "conv1": "features.conv0"}
        for i, num_layers in enumerate(block_config, start=1):
            self.features.add_module(f"denseblock{i}",
                                     DenseBlock(num_layers, c, growth_rate, bn_size, dropout))
            names[f"dense_block{i}"] = f"features.denseblock{i}"
            c += num_layers * growth_rate
            if i < len(block_config):
                out = math.floor(compression * c)
                self.features.add_module(f"transition{i}", Transition(c, out, dropout))
                names[f"transition{i}"] = f"features.transition{i}"
                c = out
        last = len(block_config) + 1
        self.features.add_module(f"norm{last}", nn.BatchNorm2d(c))
        self.features.add_module(f"relu{last}", cnn.ReLU())
        self.pool = cnn.GlobalAvgPool()                                         # N x c
        self.classifier = cnn.Linear(c, num_classes)
        names |= {f"norm{last}": f"features.norm{last}", "classifier": "classifier",
                  "fc": "classifier"}
        self.chapter_layers = names
        _init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.features(x)                     # N x c x 7 x 7 at 224, N x c x 8 x 8 at 32
        return y

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.classifier(x)


def _init(model: nn.Module) -> None:
    """torchvision's DenseNet initialisation (FC weights keep torch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# the paper's Table 1 (ImageNet): growth rate, layers per block, stem maps; all DenseNet-BC
IMAGENET = {
    121: (32, (6, 12, 24, 16), 64),
    161: (48, (6, 12, 36, 24), 96),
    169: (32, (6, 12, 32, 32), 64),
    201: (32, (6, 12, 48, 32), 64),
}


def densenet_cifar(num_classes: int = 10, in_channels: int = 3, depth: int = 100,
                   growth_rate: int = 12, bottleneck: bool = True, compression: float = 0.5,
                   dropout: float = 0.0) -> DenseNet:
    """A DenseNet for 32x32 images as in the paper's CIFAR experiments: three dense blocks
    (32x32, 16x16, 8x8) of equal length, set by the depth L.

    L counts the first conv, every conv of the blocks, the two transition convs and the FC
    layer, so a block has (L-4)/3 layers, or (L-4)/6 with the bottleneck (two convs a layer).
    The first conv has 16 maps, 2k with the bottleneck, as the paper says (the authors' later
    code uses 2k always). The paper's DenseNet is
    ``bottleneck=False, compression=1``; DenseNet-BC is ``bottleneck=True, compression=0.5``.
    It used ``dropout=0.2`` on CIFAR without data augmentation.

    >>> sum(p.numel() for p in densenet_cifar(depth=100, growth_rate=12).parameters())
    769162
    """
    if not isinstance(growth_rate, int) or growth_rate < 1:
        raise ModelError(f"growth_rate must be a positive int (the paper uses 12, 24 or 40), "
                         f"got growth_rate={growth_rate!r}")
    if not 0 < compression <= 1:
        raise ModelError(f"compression must be in (0, 1] (the paper's DenseNet-C/BC use 0.5, "
                         f"the plain DenseNet 1), got compression={compression!r}")
    if not 0 <= dropout < 1:
        raise ModelError(f"dropout must be in [0, 1) (the paper uses 0.2), got dropout={dropout!r}")
    per_layer = 6 if bottleneck else 3      # convs per layer (1 or 2) times three blocks
    if not isinstance(depth, int) or depth < 4 + per_layer or (depth - 4) % per_layer:
        rule = "(L-4)/6 layers a block with the bottleneck, e.g. 100, 190, 250" if bottleneck \
            else "(L-4)/3 layers a block without the bottleneck, e.g. 40, 100"
        raise ModelError(f"a CIFAR DenseNet has {rule}; depth={depth!r} does not fit: use "
                         f"depth = 4 + {per_layer}n for a whole n >= 1")
    n = (depth - 4) // per_layer
    return DenseNet(growth_rate, (n, n, n), 2 * growth_rate if bottleneck else 16,
                    4 if bottleneck else None, compression, dropout, num_classes, in_channels,
                    stem="cifar")


# the paper's settings: SGD, lr 0.1, momentum 0.9, weight decay 1e-4 (lr / 10 at 50% and 75%)
_RECIPE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 256}
_CIFAR_RECIPE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 64}


for _depth, (_k, _blocks, _stem) in IMAGENET.items():
    register(f"densenet{_depth}", section="8.4.5", recipe=_RECIPE,
             summary=f"DenseNet-{_depth} (k={_k}, blocks of {'-'.join(map(str, _blocks))}) in "
                     "torchvision's layout; loads its weights")(
        preset(DenseNet, _k, _blocks, _stem, bn_size=4, compression=0.5, stem="imagenet"))

# name: (depth L, growth rate k, bottleneck and compression (BC) or neither, summary)
CIFAR = {
    "densenet40_12": (40, 12, False, ("DenseNet (L=40, k=12) for 32x32 images: no bottleneck, "
                                     "no compression")),
    "densenet_bc_100_12": (100, 12, True, "DenseNet-BC (L=100, k=12) for 32x32 images"),
    "densenet_bc_250_24": (250, 24, True, "DenseNet-BC (L=250, k=24) for 32x32 images"),
    "densenet_bc_190_40": (190, 40, True, "DenseNet-BC (L=190, k=40) for 32x32 images"),
}
for _name, (_depth, _k, _bc, _summary) in CIFAR.items():
    register(_name, section="8.4.5", recipe=_CIFAR_RECIPE, summary=_summary)(
        preset(densenet_cifar, depth=_depth, growth_rate=_k, bottleneck=_bc,
               compression=0.5 if _bc else 1.0))
