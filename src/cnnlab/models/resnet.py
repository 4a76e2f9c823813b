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
- ``wide_resnet50_2`` (68,883,240): ResNet-50 with bottlenecks twice as wide inside;
- ``resnext50_32x4d`` (25,028,904): ResNet-50 with its 3x3 split into 32 groups of 4 maps
  (of 128 in conv2_x): ResNeXt's "inception-like" split-transform-merge unit as a
  grouped convolution.

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
from cnnlab.models._base import Classifier
from cnnlab.models._registry import register
from cnnlab.models._spec import fresh_linear

DROP_MODES = ("batch", "row")


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


def projection(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """The projection shortcut (option B): 1x1 conv at the unit's stride, then BN
    (torchvision's ``downsample.0`` and ``downsample.1``)."""
    return nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))


class BasicBlock(Residual):
    """Two 3x3 convolutions with BN; ReLU after the first and after the addition
    (Fig. 8.11(a)). ``downsample`` maps the input to the output's shape where they differ."""

    expansion: ClassVar[int] = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1,
                 base_width: int = 64) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ModelError(f"the basic unit has no groups or width setting (a ResNeXt or wide "
                             f"ResNet needs the bottleneck unit); got groups={groups}, "
                             f"width_per_group={base_width}")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = cnn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.add(self.shortcut(x), lambda: self.residual(x)))


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
                 base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = cnn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.add(self.shortcut(x), lambda: self.residual(x)))


Block = type[BasicBlock] | type[Bottleneck]


def init_resnet(model: nn.Module, zero_init_residual: bool = False) -> None:
    """torchvision's ResNet initialisation (also used for the CIFAR forms): He normal with
    fan-out for convolutions, BN weight 1 and bias 0; ``zero_init_residual`` zeroes the last
    BN of every unit, so each starts as its shortcut."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


class ResNet(Classifier):
    """The ImageNet ResNet of Table 1 in He et al., in torchvision's layout and names:
    ``conv1 bn1 relu maxpool layer1 .. layer4 avgpool fc``. ``layers`` counts the units of
    conv2_x .. conv5_x; ``groups`` and ``width_per_group`` give ResNeXt and wide ResNets."""

    default_input_shape = (3, 224, 224)
    chapter_layers: ClassVar[dict[str, str]] = {
        "conv1": "conv1", "conv2_x": "layer1", "conv3_x": "layer2", "conv4_x": "layer3",
        "conv5_x": "layer4", "pool": "avgpool", "fc": "fc"}

    def __init__(self, block: Block, layers: Sequence[int], num_classes: int = 1000,
                 in_channels: int = 3, groups: int = 1, width_per_group: int = 64,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        self.default_input_shape = (in_channels, 224, 224)
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ModelError(f"an ImageNet ResNet has four stages (conv2_x .. conv5_x) of at "
                             f"least one unit each; got layers={list(layers)!r}")
        self.num_classes = num_classes
        self.groups, self.base_width = groups, width_per_group
        self.inplanes = 64
        self.conv1 = cnn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)  # 112x112
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = cnn.ReLU()
        self.maxpool = cnn.MaxPool2d(3, stride=2, padding=1)                         # 56x56x64
        self.layer1 = self._make_layer(block, 64, layers[0])                 # 56x56x64 (x4)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)      # 28x28x128 (x4)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)      # 14x14x256 (x4)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)      # 7x7x512 (x4)
        self.avgpool = cnn.GlobalAvgPool()
        self.fc = cnn.Linear(512 * block.expansion, num_classes)
        init_resnet(self, zero_init_residual)

    def _make_layer(self, block: Block, planes: int, units: int, stride: int = 1
                    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:   # only where shape changes
            downsample = projection(self.inplanes, planes * block.expansion, stride)
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample, self.groups,
                                         self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                   for _ in range(1, units)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x)                       # N x 512 (basic) or N x 2048 (bottleneck)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = fresh_linear(self.fc, num_classes)
        self.num_classes = num_classes


_RECIPE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 256}  # He et al.


@register("resnet18", input_shape=(3, 224, 224), section="8.4.5", recipe=_RECIPE)
def resnet18(num_classes: int = 1000, in_channels: int = 3,
             zero_init_residual: bool = False) -> ResNet:
    """ResNet-18: basic units [2, 2, 2, 2], torchvision's layout; loads its weights"""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels,
                  zero_init_residual=zero_init_residual)


@register("resnet34", input_shape=(3, 224, 224), section="8.4.5", recipe=_RECIPE)
def resnet34(num_classes: int = 1000, in_channels: int = 3,
             zero_init_residual: bool = False) -> ResNet:
    """ResNet-34 (Fig. 8.11(b)): basic units [3, 4, 6, 3]; loads torchvision's weights"""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels,
                  zero_init_residual=zero_init_residual)


@register("resnet50", input_shape=(3, 224, 224), section="8.4.5", recipe=_RECIPE)
def resnet50(num_classes: int = 1000, in_channels: int = 3,
             zero_init_residual: bool = False) -> ResNet:
    """ResNet-50: bottleneck units [3, 4, 6, 3] (v1.5); loads torchvision's weights"""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels,
                  zero_init_residual=zero_init_residual)


@register("resnet101", input_shape=(3, 224, 224), section="8.4.5", recipe=_RECIPE)
def resnet101(num_classes: int = 1000, in_channels: int = 3,
              zero_init_residual: bool = False) -> ResNet:
    """ResNet-101: bottleneck units [3, 4, 23, 3] (v1.5); loads torchvision's weights"""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, in_channels,
                  zero_init_residual=zero_init_residual)


@register("resnet152", input_shape=(3, 224, 224), section="8.4.5", recipe=_RECIPE)
def resnet152(num_classes: int = 1000, in_channels: int = 3,
              zero_init_residual: bool = False) -> ResNet:
    """ResNet-152, the ILSVRC 2015 winner: bottleneck units [3, 8, 36, 3] (v1.5)"""
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, in_channels,
                  zero_init_residual=zero_init_residual)


@register("wide_resnet50_2", input_shape=(3, 224, 224), section="8.4.5", recipe=_RECIPE)
def wide_resnet50_2(num_classes: int = 1000, in_channels: int = 3,
                    zero_init_residual: bool = False) -> ResNet:
    """Wide ResNet-50-2: ResNet-50 with bottlenecks twice as wide; loads torchvision's weights"""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, width_per_group=128,
                  zero_init_residual=zero_init_residual)


@register("resnext50_32x4d", input_shape=(3, 224, 224), section="8.4.5", recipe=_RECIPE)
def resnext50_32x4d(num_classes: int = 1000, in_channels: int = 3,
                    zero_init_residual: bool = False) -> ResNet:
    """ResNeXt-50 (32x4d): ResNet-50 with a 32-group 3x3; loads torchvision's weights"""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, groups=32,
                  width_per_group=4, zero_init_residual=zero_init_residual)
