"""ResNet (8.4.5; He, Zhang, Ren and Sun, 2016), ResNeXt's ImageNet form (Xie et al., 2017)
and the wide ResNet-50-2 (Zagoruyko and Komodakis, 2016), in torchvision's layout.

A residual unit adds its input, carried over a skip connection, to the output of a short
stack of layers (Fig. 8.11(a)): two 3x3 convolutions in the 18- and 34-layer networks
(``BasicBlock``), a 1x1-3x3-1x1 "bottleneck" in the deeper ones (``Bottleneck``: the 1x1s cut
the maps to a quarter and restore them, so the 3x3 works on fewer maps). The skip is the
identity wherever the volume keeps its size; the first unit of conv3_x, conv4_x and conv5_x
halves the maps with stride 2 and doubles the filters, and there the skip is a learned
projection, a 1x1 convolution at stride 2 followed by batch norm (the dashed arrows of
Fig. 8.11(b); the paper's option B). Stages, at 224x224:

    conv1    7x7/2, 64 filters, BN, ReLU, 3x3/2 max pool   -> 56x56x64
    conv2_x  layer1, 56x56 (no stride: the pool already halved)
    conv3_x  layer2, 28x28      conv4_x  layer3, 14x14      conv5_x  layer4, 7x7
    global average pool, FC 1000

Registered models (parameters at 1000 classes; the CIFAR forms are in ``resnet_cifar``):

- ``resnet18`` (11,689,512) and ``resnet34`` (21,797,672): basic units [2, 2, 2, 2] and
  [3, 4, 6, 3], 64-128-256-512 filters;
- ``resnet50`` (25,557,032), ``resnet101`` (44,549,160), ``resnet152`` (60,192,808):
  bottleneck units [3, 4, 6, 3], [3, 4, 23, 3], [3, 8, 36, 3], 256-512-1024-2048 maps;
- ``wide_resnet50_2`` (68,883,240) and ``wide_resnet101_2`` (126,886,696): ResNet-50 and
  -101 with bottlenecks twice as wide inside;
- ``resnext50_32x4d`` (25,028,904): ResNet-50 with its 3x3 split into 32 groups of 4 maps
  (of 128 in conv2_x): ResNeXt's "inception-like" split-transform-merge unit as a
  grouped convolution; ``resnext101_32x8d`` (88,791,336) and ``resnext101_64x4d``
  (83,455,272) split ResNet-101's the same way.

Every one takes ``norm_layer`` (batch norm by default; torchvision's argument) and
``stochastic_depth=p_L`` (see :class:`Residual`).

Names, shapes and order of the state dict equal ``torchvision.models.resnet50`` etc., so
published weights load with ``load_state_dict``. Batch norm is not one of the chapter's
operations: it runs on ``torch.nn.BatchNorm2d``, the same on both kernels. Initialisation is
torchvision's: He normal (fan-out) for convolutions, BN weight 1 and bias 0, PyTorch's default
for the FC; ``zero_init_residual=True`` starts each unit's last BN at 0, so every unit begins
as the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab.errors import ModelError
from cnnlab.models._registry import preset, register
from cnnlab.nn.classifier import Classifier

DROP_MODES = ("batch", "row")
# a normalisation layer for a number of maps (nn.BatchNorm2d, or e.g. lambda c: GroupNorm(32, c))
NormLayer = Callable[[int], nn.Module]


class Residual(nn.Module):
    """A residual unit: shortcut + residual branch, with stochastic depth (Huang et al., 2016).

    ``survival`` is the probability that the branch runs in a training pass (1: always;
    :func:`set_stochastic_depth` sets it). In training a dropped unit passes on its shortcut
    alone: ``drop_mode="batch"`` tosses one coin per unit for the whole mini-batch (the
    paper's way; a dropped branch is not computed at all), ``"row"`` one coin per example. At
    test time every unit runs and its branch is scaled by ``survival``, the expected value of
    the coin, as the paper does. (torchvision's ``StochasticDepth`` divides the kept branches
    by ``survival`` in training instead and leaves the test-time network alone; the two agree
    in expectation. We keep the paper's form, which the chapter cites, so a trained network
    means the same thing here as in the paper.)
    """

    relu: nn.Module
    downsample: nn.Module | None      # maps the input to the output's shape where they differ

    def __init__(self) -> None:
        super().__init__()
        self.survival = 1.0
        self.drop_mode = "batch"

    def add(self, shortcut: torch.Tensor, branch: Callable[[], torch.Tensor]) -> torch.Tensor:
        """shortcut + branch(), with the branch dropped or scaled as stochastic depth says."""
        p = self.survival
        if p >= 1.0:
            return shortcut + branch()
        if not self.training:
            return shortcut + p * branch()
        if self.drop_mode == "batch":
            # the coin comes from torch's CPU generator: torch.manual_seed fixes it, and it
            # needs no sync with the device the data is on
            keep = bool(torch.rand((), device="cpu") < p)
            return shortcut + branch() if keep else shortcut
        rows = (shortcut.shape[0],) + (1,) * (shortcut.dim() - 1)
        keep_rows = (torch.rand(rows, device=shortcut.device) < p).to(shortcut.dtype)
        return shortcut + keep_rows * branch()

    # the post-activation unit (Fig. 8.11(a)); the pre-activation ones override these
    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(shortcut + residual), the residual dropped or scaled as stochastic depth says."""
        y: torch.Tensor = self.relu(self.add(self.shortcut(x), lambda: self.residual(x)))
        return y

    def extra_repr(self) -> str:
        return "" if self.survival >= 1.0 else (f"survival={self.survival:.4g}, "
                                                f"drop_mode={self.drop_mode!r}")


def set_stochastic_depth(units: Sequence[Residual], last: float | None,
                         mode: str = "batch") -> None:
    """Huang et al.'s linear decay: unit l of L survives with p_l = 1 - (l / L) (1 - p_L).

    The input (l = 0, the first convolution) always survives and the last unit with
    ``last`` = p_L (0.5 in the paper). ``None`` turns stochastic depth off.
    """
    if last is not None and (isinstance(last, bool) or not isinstance(last, int | float)
                             or not 0.0 < last <= 1.0):
        raise ModelError(f"stochastic_depth is the survival probability p_L of the last unit, "
                         f"in (0, 1] (the paper uses 0.5), or None to switch it off; "
                         f"got stochastic_depth={last!r}")
    if mode not in DROP_MODES:
        raise ModelError(f"stochastic_depth_mode must be 'batch' (one coin per unit for the "
                         f"whole mini-batch, as the paper) or 'row' (one per example); "
                         f"got {mode!r}")
    n = len(units)
    for i, unit in enumerate(units, start=1):
        unit.survival = 1.0 if last is None else 1.0 - i / n * (1.0 - last)
        unit.drop_mode = mode


def conv3x3(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> cnn.Conv2d:
    return cnn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> cnn.Conv2d:
    return cnn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


def projection(c_in: int, c_out: int, stride: int, norm_layer: NormLayer = nn.BatchNorm2d
               ) -> nn.Sequential:
    """The projection shortcut (option B): 1x1 conv at the unit's stride, then BN
    (torchvision's ``downsample.0`` and ``downsample.1``)."""
    return nn.Sequential(conv1x1(c_in, c_out, stride), norm_layer(c_out))


class BasicBlock(Residual):
    """Two 3x3 convolutions with BN; ReLU after the first and after the addition
    (Fig. 8.11(a)). ``downsample`` maps the input to the output's shape where they differ."""

    expansion: ClassVar[int] = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1,
                 base_width: int = 64, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ModelError(f"the basic unit has no groups or width setting (a ResNeXt or wide "
                             f"ResNet needs the bottleneck unit); got groups={groups}, "
                             f"width_per_group={base_width}")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = cnn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return y


class Bottleneck(Residual):
    """1x1 (reduce to ``width``), 3x3 (``groups`` groups), 1x1 (expand to 4 * planes), each
    with BN, ReLU after the first two and after the addition.

    The stride sits on the 3x3 convolution, as in torchvision ("ResNet v1.5"); the paper put
    it on the first 1x1, which then skips three pixels in four. ``width`` is
    planes * base_width / 64 * groups: planes for ResNet, twice that for wide_resnet50_2,
    32 groups of 4 (x planes / 64) for resnext50_32x4d.
    """

    expansion: ClassVar[int] = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1,
                 base_width: int = 64, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = cnn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        y: torch.Tensor = self.bn3(self.conv3(out))
        return y


Block = type[BasicBlock] | type[Bottleneck]


def init_resnet(model: nn.Module, zero_init_residual: bool = False) -> None:
    """torchvision's ResNet initialisation (also used for the CIFAR forms): He normal with
    fan-out for convolutions, BN weight 1 and bias 0; ``zero_init_residual`` zeroes the last
    BN of every unit, so each starts as its shortcut."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            last = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) \
                else None
            weight = getattr(last, "weight", None)
            if isinstance(weight, torch.Tensor):     # a norm layer with a scale
                nn.init.zeros_(weight)


class ResidualNet(Classifier):
    """What the ImageNet and CIFAR ResNets share: residual units that stochastic depth can
    drop, global average pooling (``avgpool``) and one FC layer (``fc``)."""

    avgpool: cnn.GlobalAvgPool
    fc: cnn.Linear

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int,
                 stages: Sequence[str]) -> None:
        """``stages``: the chapter's names of ``layer1``, ``layer2``, ..."""
        super().__init__()
        self.default_input_shape, self.num_classes = input_shape, num_classes
        self.chapter_layers = ({"conv1": "conv1"}
                               | {name: f"layer{i}" for i, name in enumerate(stages, start=1)}
                               | {"pool": "avgpool", "fc": "fc"})

    def units(self) -> list[Residual]:
        """The residual units in order, l = 1 .. L."""
        return [m for m in self.modules() if isinstance(m, Residual)]

    def set_stochastic_depth(self, last: float | None, mode: str = "batch") -> None:
        """Unit l of L survives a training pass with p_l = 1 - (l / L)(1 - p_L), p_L = ``last``
        (None: every unit always runs); see :func:`set_stochastic_depth`."""
        set_stochastic_depth(self.units(), last, mode)
        # only a network with stochastic depth skips units in training
        self.stochastic_paths = last is not None and last < 1

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x)                       # N x maps of the last stage
        return x if pre_logits else self.fc(x)


class ResNet(ResidualNet):
    """The ImageNet ResNet of Table 1 in He et al., in torchvision's layout and names:
    ``conv1 bn1 relu maxpool layer1 .. layer4 avgpool fc``. ``layers`` counts the units of
    conv2_x .. conv5_x; ``groups`` and ``width_per_group`` give ResNeXt and wide ResNets;
    ``norm_layer`` makes every batch norm (torchvision's argument); ``stochastic_depth`` = p_L
    drops units in training (Huang et al.)."""

    def __init__(self, block: Block, layers: Sequence[int], num_classes: int = 1000,
                 in_channels: int = 3, groups: int = 1, width_per_group: int = 64,
                 zero_init_residual: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                 stochastic_depth: float | None = None, stochastic_depth_mode: str = "batch"
                 ) -> None:
        super().__init__((in_channels, 224, 224), num_classes,
                         ("conv2_x", "conv3_x", "conv4_x", "conv5_x"))
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ModelError(f"an ImageNet ResNet has four stages (conv2_x .. conv5_x) of at "
                             f"least one unit each; got layers={list(layers)!r}")
        if not callable(norm_layer):
            raise ModelError(f"norm_layer makes a normalisation layer from a number of maps, "
                             f"e.g. torch.nn.BatchNorm2d; got norm_layer={norm_layer!r}")
        self.groups, self.base_width, self.norm_layer = groups, width_per_group, norm_layer
        self.inplanes = 64
        self.conv1 = cnn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)  # 112x112
        self.bn1 = norm_layer(64)
        self.relu = cnn.ReLU()
        self.maxpool = cnn.MaxPool2d(3, stride=2, padding=1)                         # 56x56x64
        self.layer1 = self._make_layer(block, 64, layers[0])                 # 56x56x64 (x4)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)      # 28x28x128 (x4)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)      # 14x14x256 (x4)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)      # 7x7x512 (x4)
        self.avgpool = cnn.GlobalAvgPool()
        self.fc = cnn.Linear(512 * block.expansion, num_classes)
        init_resnet(self, zero_init_residual)
        self.set_stochastic_depth(stochastic_depth, stochastic_depth_mode)

    def _make_layer(self, block: Block, planes: int, units: int, stride: int = 1
                    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:   # only where shape changes
            downsample = projection(self.inplanes, planes * block.expansion, stride,
                                    self.norm_layer)
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample, self.groups,
                                         self.base_width, self.norm_layer)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                         norm_layer=self.norm_layer) for _ in range(1, units)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        y: torch.Tensor = self.layer4(self.layer3(self.layer2(self.layer1(x))))   # N x 512 (x4) x 7 x 7
        return y


_RECIPE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 256}  # He et al.

# name: (unit, units in conv2_x .. conv5_x, groups and maps per group in conv2_x's 3x3s):
# He et al.'s Table 1, ResNeXt (Xie et al.; 32x8d and 64x4d as torchvision has them), WRN
RESNETS: dict[str, tuple[Block, tuple[int, int, int, int], int, int]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 1, 64),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 1, 64),          # Fig. 8.11(b)
    "resnet50": (Bottleneck, (3, 4, 6, 3), 1, 64),
    "resnet101": (Bottleneck, (3, 4, 23, 3), 1, 64),
    "resnet152": (Bottleneck, (3, 8, 36, 3), 1, 64),        # the ILSVRC 2015 winner
    "resnext50_32x4d": (Bottleneck, (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": (Bottleneck, (3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": (Bottleneck, (3, 4, 23, 3), 64, 4),
    "wide_resnet50_2": (Bottleneck, (3, 4, 6, 3), 1, 128),  # bottlenecks twice as wide inside
    "wide_resnet101_2": (Bottleneck, (3, 4, 23, 3), 1, 128),
}


def _summary(block: Block, units: tuple[int, ...], groups: int, width: int) -> str:
    kind = "basic" if block is BasicBlock else "bottleneck"
    inner = (f", 3x3s of {groups} groups of {width} maps" if groups > 1
             else f", bottlenecks {width // 64}x as wide" if width != 64 else "")
    return f"ImageNet ResNet of {kind} units {list(units)}{inner}; torchvision's layout, loads " \
           "its weights"


for _name, (_block, _units, _groups, _width) in RESNETS.items():
    register(_name, section="8.4.5", recipe=_RECIPE,
             summary=_summary(_block, _units, _groups, _width))(
        preset(ResNet, _block, list(_units), groups=_groups, width_per_group=_width))
