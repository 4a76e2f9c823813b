"""Residual networks for 32x32 images (8.4.5 and "Variations of Skip Architectures"): the CIFAR
ResNets of He et al. (2016), pre-activation ResNets (He et al., "Identity Mappings", 2016),
wide ResNets (Zagoruyko and Komodakis, 2016), ResNeXt (Xie et al., 2017) and stochastic depth
(Huang et al., 2016).

All share one frame (:class:`CifarResNet`): a 3x3 convolution, three stages at 32x32, 16x16
and 8x8 (the first unit of stages 2 and 3 halves the maps with stride 2 and widens them),
global average pooling and one FC layer. Stages are ``layer1`` .. ``layer3``, named
``stage1`` .. ``stage3`` (the wide-ResNet paper's conv2 .. conv4) in ``chapter_layers``.

Registered models (parameters at 10 classes, measured; the papers' figures in brackets):

- ``resnet20`` (269,722 [0.27M]), ``resnet32`` (464,154 [0.46M]), ``resnet44`` (658,586
  [0.66M]), ``resnet56`` (853,018 [0.85M]), ``resnet110`` (1,727,962 [1.7M]): He et al.'s
  section 4.2, depth 6n + 2 with n basic units of 16, 32 and 64 filters per stage. Where the
  volume changes, the shortcut is option A by default: the input subsampled at stride 2 with
  the new maps filled with zeros, no parameters; ``shortcut="B"`` puts a 1x1 projection + BN
  there instead (everywhere else the shortcut stays the identity; resnet20 then has
  272,474);
- ``resnet110_stochastic_depth`` (1,727,962 [1.7M]): ResNet-110 trained with stochastic
  depth: unit l of L = 54 survives with p_l = 1 - (l / L)(1 - p_L), p_L = 0.5 (the input,
  l = 0, always survives);
- ``preact_resnet110`` (1,730,522 [1.7M]) and ``preact_resnet164`` (1,703,258 [1.7M]):
  BN-ReLU-conv units, 1x1 projections (no BN) where the volume grows, as the authors' code;
  164 uses bottleneck units (16-16-64 maps in stage 1), depth 9n + 2;
- ``preact_resnet1001`` (10,327,706): the paper's deepest, 111 bottleneck units per stage; its
  10.2M are the weights without batch norm's 149,216 scales and shifts (10,178,490);
- ``wrn_28_10`` (36,479,194 [36.5M]), ``wrn_16_8`` (10,961,370 [11.0M]), ``wrn_40_4``
  (8,949,210 [8.9M]): WRN-d-k, pre-activation basic units 16k, 32k, 64k wide, (d - 4) / 6 per
  stage, optional dropout between the two convolutions;
- ``resnext29_2x64d`` (9,130,314), ``resnext29_8x64d`` (34,426,698 [34.4M]) and
  ``resnext29_16x64d`` (68,155,210 [68.1M]): three stages of three bottleneck units whose
  3x3 has 2 (8, 16) groups of 64 maps in stage 1,
  twice that in each later stage, 256-512-1024 output maps. (Table 7's figures fit the
  counts without the FC layer: 34,416,448 and 68,144,960.)

The builders :func:`resnet_cifar`, :func:`preact_resnet_cifar`, :func:`wide_resnet_cifar` and
:func:`resnext_cifar` make other depths and widths, and every one takes
``stochastic_depth=p_L`` (see :class:`cnnlab.models.resnet.Residual`). Initialisation is He
normal (fan-out) for convolutions, as in the papers; batch norm runs on
``torch.nn.BatchNorm2d`` on both kernels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab.errors import ModelError
from cnnlab.models._registry import preset, register
from cnnlab.models.resnet import (
    BasicBlock,
    Bottleneck,
    Residual,
    ResidualNet,
    conv1x1,
    conv3x3,
    init_resnet,
    projection,
)
from cnnlab.nn.classifier import Classifier


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: the identity, subsampled at ``stride`` where the maps shrink, with
    zero maps appended for the extra channels. It has no parameters.

    >>> ZeroPadShortcut(16, 32, 2)(torch.ones(1, 16, 32, 32)).shape
    torch.Size([1, 32, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ModelError(f"option A can only add channels (zero maps); got "
                             f"{in_channels} -> {out_channels}: use shortcut='B'")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]                    # N x C x H/s x W/s
        n, c, h, w = x.shape
        return torch.cat([x, x.new_zeros(n, self.out_channels - c, h, w)], dim=1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class _PreAct(Residual):
    """What pre-activation units share: ``preact`` is BN-ReLU on the unit's input, ``branch``
    the layers after it.

    With ``share_preact`` the shortcut also starts from the activated input. The builders
    set it on the first unit of the network (the paper's appendix: conv1 has no BN-ReLU of
    its own) and on units whose shortcut is not the identity (the authors' code and WRN's).
    Elsewhere the shortcut is the raw input, untouched from unit to unit: the "identity
    mapping" of the paper's title.
    """

    bn1: nn.BatchNorm2d
    share_preact: bool

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.relu(self.bn1(x))
        return y

    def branch(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(self.preact(x))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return super().shortcut(self.preact(x) if self.share_preact else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.share_preact:
            return self.add(self.shortcut(x), lambda: self.residual(x))
        a = self.preact(x)                  # once: BN's running statistics count it once
        s = a if self.downsample is None else self.downsample(a)
        return self.add(s, lambda: self.branch(a))


class PreActBasicBlock(_PreAct):
    """BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3, then the addition, with nothing after it
    (Fig. 1(b) of "Identity Mappings"; WRN's B(3,3) unit, dropout as in WRN)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1,
                 downsample: nn.Module | None = None, share_preact: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu = cnn.ReLU()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.dropout = cnn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(c_out, c_out)
        self.downsample, self.share_preact = downsample, share_preact

    def branch(self, a: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(a)))))
        return y


class PreActBottleneck(_PreAct):
    """BN-ReLU-conv1x1 (to c_out / 4), BN-ReLU-conv3x3, BN-ReLU-conv1x1 (to c_out).

    The stride sits on the first 1x1, as in the authors' code (resnet-1k-layers) and the
    original ResNet; torchvision's post-activation Bottleneck moved it to the 3x3 (v1.5).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1,
                 downsample: nn.Module | None = None, share_preact: bool = False) -> None:
        super().__init__()
        mid = c_out // 4
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu = cnn.ReLU()
        self.conv1 = conv1x1(c_in, mid, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, c_out)
        self.downsample, self.share_preact = downsample, share_preact

    def branch(self, a: torch.Tensor) -> torch.Tensor:
        out = self.conv1(a)
        out = self.conv2(self.relu(self.bn2(out)))
        y: torch.Tensor = self.conv3(self.relu(self.bn3(out)))
        return y


# (c_in, c_out, stride, first unit of the network) -> a unit
UnitMaker = Callable[[int, int, int, bool], Residual]


class CifarResNet(ResidualNet):
    """conv1 (3x3) -> three stages of ``n`` units, ``widths`` maps each -> global average
    pool -> FC. Post-activation networks put BN-ReLU after conv1 (``bn1``); pre-activation
    ones put it after the last unit instead (``bn_final``: the last unit's sum is never
    normalised otherwise). ``stochastic_depth`` = p_L drops units in training."""

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, unit: UnitMaker, n: int, widths: tuple[int, int, int], stem: int,
                 preact: bool, num_classes: int = 10, in_channels: int = 3,
                 stochastic_depth: float | None = None, stochastic_depth_mode: str = "batch"
                 ) -> None:
        super().__init__((in_channels, 32, 32), num_classes, ("stage1", "stage2", "stage3"))
        self.preact = preact
        self.conv1 = cnn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.Identity() if preact else nn.BatchNorm2d(stem)
        self.relu = cnn.ReLU()
        c_in = stem
        for s, c_out in enumerate(widths):
            stage = []
            for i in range(n):
                stage.append(unit(c_in, c_out, 2 if s > 0 and i == 0 else 1, s == i == 0))
                c_in = c_out
            setattr(self, f"layer{s + 1}", nn.Sequential(*stage))   # 32x32, 16x16, 8x8
        self.bn_final = nn.BatchNorm2d(c_in) if preact else nn.Identity()
        self.avgpool = cnn.GlobalAvgPool()
        self.fc = cnn.Linear(c_in, num_classes)
        init_resnet(self)
        self.set_stochastic_depth(stochastic_depth, stochastic_depth_mode)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)                                            # N x stem x 32 x 32
        if not self.preact:
            x = self.relu(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))                 # N x widths[2] x 8 x 8
        return self.relu(self.bn_final(x)) if self.preact else x


def _shortcut(kind: str, c_in: int, c_out: int, stride: int, bn: bool) -> nn.Module | None:
    """None (the identity) where the volume keeps its shape; else option A or B."""
    if stride == 1 and c_in == c_out:
        return None
    if kind == "A":
        return ZeroPadShortcut(c_in, c_out, stride)
    # pre-activation units need no BN after the projection: the next unit normalises
    return projection(c_in, c_out, stride) if bn else conv1x1(c_in, c_out, stride)


def _check_shortcut(shortcut: str) -> str:
    if shortcut not in ("A", "B"):
        raise ModelError(f"shortcut must be 'A' (identity, zero maps where the volume grows; "
                         f"no parameters) or 'B' (1x1 projection where it grows); "
                         f"got shortcut={shortcut!r}")
    return shortcut


def _units_per_stage(depth: int, layers_per_unit: int, what: str) -> int:
    """(depth - 2) / (3 * layers_per_unit): conv1 and the FC are the other two layers."""
    step = 3 * layers_per_unit
    if not isinstance(depth, int) or depth < step + 2 or (depth - 2) % step:
        examples = ", ".join(str(step * n + 2) for n in (1, 2, 3, 6))
        raise ModelError(f"{what} has depth {step}n + 2 ({examples}, ...): (depth - 2) must be "
                         f"a positive multiple of {step}; got depth={depth!r}")
    return (depth - 2) // step


def _basic_unit(c_in: int, c_out: int, stride: int, first: bool, *, shortcut: str) -> Residual:
    return BasicBlock(c_in, c_out, stride, _shortcut(shortcut, c_in, c_out, stride, bn=True))


def _preact_unit(c_in: int, c_out: int, stride: int, first: bool, *, shortcut: str,
                 bottleneck: bool, dropout: float = 0.0) -> Residual:
    down = _shortcut(shortcut, c_in, c_out, stride, bn=False)
    if bottleneck:
        return PreActBottleneck(c_in, c_out, stride, down, share_preact=first or down is not None)
    return PreActBasicBlock(c_in, c_out, stride, down, first or down is not None, dropout)


def _resnext_unit(c_in: int, c_out: int, stride: int, first: bool, *, cardinality: int,
                  width: int) -> Residual:
    down = _shortcut("B", c_in, c_out, stride, bn=True)
    # Bottleneck's inner width is planes * width / 64 * groups: cardinality * width in stage 1
    return Bottleneck(c_in, c_out // 4, stride, down, groups=cardinality, base_width=width)


def resnet_cifar(depth: int, num_classes: int = 10, in_channels: int = 3, *, shortcut: str = "A",
                 stochastic_depth: float | None = None, stochastic_depth_mode: str = "batch"
                 ) -> CifarResNet:
    """He et al.'s CIFAR ResNet of ``depth`` = 6n + 2 layers: n basic units per stage of 16, 32
    and 64 filters; option A shortcuts (``shortcut="B"``: projections).

    >>> sum(p.numel() for p in resnet_cifar(20).parameters())
    269722
    """
    n = _units_per_stage(depth, 2, "a CIFAR ResNet of basic units")
    unit = functools.partial(_basic_unit, shortcut=_check_shortcut(shortcut))
    return CifarResNet(unit, n, (16, 32, 64), 16, False, num_classes, in_channels,
                       stochastic_depth, stochastic_depth_mode)


def preact_resnet_cifar(depth: int, num_classes: int = 10, in_channels: int = 3, *,
                        bottleneck: bool = False, shortcut: str = "B",
                        stochastic_depth: float | None = None,
                        stochastic_depth_mode: str = "batch") -> CifarResNet:
    """A pre-activation ResNet: basic units (16-32-64, depth 6n + 2) or bottleneck units
    (64-128-256 maps, depth 9n + 2); projection shortcuts where the volume grows, as the
    authors' code (``shortcut="A"``: zero maps)."""
    n = _units_per_stage(depth, 3 if bottleneck else 2,
                         f"a pre-activation ResNet of {'bottleneck' if bottleneck else 'basic'} "
                         f"units")
    widths = (64, 128, 256) if bottleneck else (16, 32, 64)
    unit = functools.partial(_preact_unit, shortcut=_check_shortcut(shortcut),
                             bottleneck=bottleneck)
    return CifarResNet(unit, n, widths, 16, True, num_classes, in_channels, stochastic_depth,
                       stochastic_depth_mode)


def wide_resnet_cifar(depth: int, widen: int, dropout: float = 0.0, num_classes: int = 10,
                      in_channels: int = 3, *, stochastic_depth: float | None = None,
                      stochastic_depth_mode: str = "batch") -> CifarResNet:
    """WRN-``depth``-``widen``: (depth - 4) / 6 pre-activation basic units per stage, 16k, 32k
    and 64k filters, dropout between the two convolutions of each unit.

    >>> round(sum(p.numel() for p in wide_resnet_cifar(28, 10).parameters()) / 1e6, 1)
    36.5
    """
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ModelError(f"WRN-d-k has (d - 4) divisible by 6, with at least one unit per "
                         f"stage (10, 16, 22, 28, 40, ...); got depth={depth!r}")
    if not isinstance(widen, int) or widen < 1:
        raise ModelError(f"widen (k of WRN-d-k) must be a positive int; got widen={widen!r}")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout is a probability in [0, 1) (WRN uses 0.3); "
                         f"got dropout={dropout!r}")
    # WRN counts conv1, the FC and the two projections of stages 2 and 3: (d - 4) / 6 units
    unit = functools.partial(_preact_unit, shortcut="B", bottleneck=False, dropout=dropout)
    widths = (16 * widen, 32 * widen, 64 * widen)
    return CifarResNet(unit, (depth - 4) // 6, widths, 16, True, num_classes, in_channels,
                       stochastic_depth, stochastic_depth_mode)


def resnext_cifar(depth: int = 29, cardinality: int = 8, width: int = 64, num_classes: int = 10,
                  in_channels: int = 3, *, stochastic_depth: float | None = None,
                  stochastic_depth_mode: str = "batch") -> CifarResNet:
    """ResNeXt-``depth`` (``cardinality`` x ``width``d): a 64-filter conv1, then bottleneck
    units of 256, 512, 1024 maps whose 3x3 has ``cardinality`` groups of ``width`` maps in
    stage 1 (doubling per stage); depth 9n + 2, projection shortcuts where the volume grows."""
    n = _units_per_stage(depth, 3, "a CIFAR ResNeXt")
    for name, value in (("cardinality", cardinality), ("width", width)):
        if not isinstance(value, int) or value < 1:
            raise ModelError(f"{name} must be a positive int; got {name}={value!r}")
    unit = functools.partial(_resnext_unit, cardinality=cardinality, width=width)
    return CifarResNet(unit, n, (256, 512, 1024), 64, False, num_classes, in_channels,
                       stochastic_depth, stochastic_depth_mode)


# He et al. 4.2 (lr 0.1 divided by 10 at 32k and 48k iterations, 64k in all); Huang et al. too
_RECIPE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128}
_WIDE_RECIPE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128}  # WRN, ResNeXt


# name: (builder, recipe, what `cnnlab models` says)
CIFAR_RESNETS: dict[str, tuple[Callable[..., Classifier], dict[str, float], str]] = {
    **{f"resnet{d}": (functools.partial(resnet_cifar, d), _RECIPE,
                      (f"ResNet-{d} for CIFAR (He et al. 4.2): {(d - 2) // 6} basic units per "
                      "stage, option A shortcuts")) for d in (20, 32, 44, 56, 110)},
    "resnet110_stochastic_depth": (
        functools.partial(resnet_cifar, 110, stochastic_depth=0.5), _RECIPE,
        "ResNet-110 with stochastic depth (Huang et al.): survival falls linearly to p_L = 0.5"),
    "preact_resnet110": (functools.partial(preact_resnet_cifar, 110), _RECIPE,
                         ('Pre-activation ResNet-110 ("Identity Mappings"): BN-ReLU-conv basic '
                         "units")),
    "preact_resnet164": (preset(preact_resnet_cifar, 164, bottleneck=True), _RECIPE,
                         ('Pre-activation ResNet-164 ("Identity Mappings"): 18 bottleneck units '
                         "per stage")),
    "preact_resnet1001": (preset(preact_resnet_cifar, 1001, bottleneck=True), _RECIPE,
                          ('Pre-activation ResNet-1001 ("Identity Mappings"): 111 bottleneck '
                          "units per stage")),
    "wrn_28_10": (functools.partial(wide_resnet_cifar, 28, 10), _WIDE_RECIPE,
                  ("Wide ResNet WRN-28-10: 4 units per stage, 160-320-640 filters (dropout=0.3 "
                  "optional)")),
    "wrn_16_8": (functools.partial(wide_resnet_cifar, 16, 8), _WIDE_RECIPE,
                 "Wide ResNet WRN-16-8: 2 units per stage, 128-256-512 filters"),
    "wrn_40_4": (functools.partial(wide_resnet_cifar, 40, 4), _WIDE_RECIPE,
                 "Wide ResNet WRN-40-4: 6 units per stage, 64-128-256 filters"),
    "resnext29_2x64d": (functools.partial(resnext_cifar, 29, 2, 64), _WIDE_RECIPE,
                        ("ResNeXt-29 (2x64d) for CIFAR (Xie et al., Fig. 7): the smallest of its "
                        "cardinality sweep")),
    "resnext29_8x64d": (functools.partial(resnext_cifar, 29, 8, 64), _WIDE_RECIPE,
                        ("ResNeXt-29 (8x64d) for CIFAR (Xie et al.): 8 groups of 64 maps in "
                        "stage 1's 3x3s")),
    "resnext29_16x64d": (functools.partial(resnext_cifar, 29, 16, 64), _WIDE_RECIPE,
                         ("ResNeXt-29 (16x64d) for CIFAR (Xie et al.): 16 groups of 64 maps in "
                         "stage 1's 3x3s")),
}
for _name, (_builder, _recipe, _summary) in CIFAR_RESNETS.items():
    register(_name, section="8.4.5", recipe=_recipe, summary=_summary)(_builder)
