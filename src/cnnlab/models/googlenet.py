"""GoogLeNet (8.4.4; Szegedy et al., "Going deeper with convolutions", 2015): a stem, nine
inception modules with 1x1 bottlenecks, global average pooling and one linear layer.

Each inception module runs four branches on the same input and stacks their maps along the
depth: a 1x1 conv; a 1x1 reduction then a 3x3 conv; a 1x1 reduction then a 5x5 conv; a 3x3/1
max pool then a 1x1 projection. The reductions keep the 3x3 and 5x5 filters cheap (Fig. 8.10(b)).
The rows of the paper's Table 1 (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) are
written inline in :class:`GoogLeNet`, as torchvision does. Volumes at 224x224x3:

    conv1 7x7/2 -> 112x112x64, max pool 3x3/2 -> 56x56x64, LRN
    conv2 1x1 -> 56x56x64, conv3 3x3 -> 56x56x192, LRN, max pool 3x3/2 -> 28x28x192
    inception3a -> 28x28x256, 3b -> 28x28x480, max pool 3x3/2 -> 14x14x480
    inception4a -> 14x14x512, 4b 512, 4c 512, 4d 528, 4e -> 14x14x832, max pool -> 7x7x832
    inception5a -> 7x7x832, 5b -> 7x7x1024, average pool 7x7 -> 1024, dropout 0.4, linear

Pools round up (Caffe's rule, ``ceil_mode=True``): 112 -> 56 -> 28 -> 14 -> 7. Every conv is
followed by a ReLU, reductions and projections included. The optional auxiliary heads (on
4a's and 4d's 14x14 maps) are average pool 5x5/3 -> 4x4, 1x1 conv 128, FC 1024, dropout 0.7,
FC classes; in training their cross-entropies are added to the main one with weight 0.3 each
(:meth:`GoogLeNet.loss`), and at test time they are not run (the chapter notes that later
practice drops them altogether).

Registered models (parameters at 1000 classes, measured):

- ``inception_v1`` (6,998,552; 13,378,280 with ``aux_logits=True``): the paper's network,
  true 5x5 branches, conv biases, LRN, no batch norm. The paper's ~6.8 M is the sum of
  Table 1's params column, which is approximate: most rows are the weights counted in units
  of 1,024 (inception3a: 163,328 weights, "159K"), a few are off by several percent (4c:
  509,440, "463K") and conv1 reads 2.7 K though its 7x7x3x64 weights alone are 9.4 K;
- ``googlenet`` (6,624,904; 13,004,888 with ``aux_logits=True``): torchvision's layout and
  names (``conv1.conv.weight``, ``inception3a.branch3.1.conv.weight``, ``fc.weight``), so its
  published weights load. It departs from the paper in three ways:

  * its "5x5" branch (``branch3``) has a 3x3 kernel: its published weights were ported from
    a TensorFlow model built that way, so torchvision keeps the slip (pytorch/vision#906);
  * every conv is ``BasicConv2d``: conv without bias, batch norm (eps 0.001), ReLU; there is
    no LRN; the pool before inception5 is 2x2/2 (same 7x7 result); dropout 0.2; the
    auxiliary heads pool adaptively to 4x4 and use ``BasicConv2d`` too;
  * torchvision's ``transform_input`` is left out, since cnnlab's trainer normalises inputs
    itself. It turned ImageNet-normalised inputs into (x - 0.5) / 0.5 per channel, which is
    what the published weights expect: normalise that way to use them;

- ``inception_v1_cifar`` (5,864,762 at 10 classes; 10,214,990 with ``aux_logits=True``;
  5,871,914 with ``batch_norm=True``): the paper's modules for 32x32 images (below).

The CIFAR form is named after ``inception_v1`` rather than ``googlenet`` because it keeps the
paper's modules (true 5x5 branches, ReLU after conv, no batch norm by default), not
torchvision's 3x3 slip. Its stem is one 3x3 conv with 192 filters and no early pools or LRN,
as commonly done for CIFAR; ``batch_norm=True`` swaps every conv for conv + batch norm + ReLU,
the form the chapter mentions for later inception networks. Volumes:

    conv1 3x3 -> 32x32x192, inception3a -> 32x32x256, 3b -> 32x32x480, max pool -> 16x16x480
    inception4a ... 4e -> 16x16x832, max pool -> 8x8x832, 5a, 5b -> 8x8x1024, average pool

Its auxiliary heads see 16x16 maps, which the paper's 5x5/3 pool also turns into 4x4.

Batch norm is not one of the chapter's operations and runs on ``torch.nn.BatchNorm2d``, the
same on both kernels. Initialisation: He normal (fan-in) for the convolutions of the paper's
forms, N(0, 0.01) for their linear layers, zero biases; torchvision's truncated N(0, 0.01) for
``googlenet``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import nn as cnn
from cnnlab.errors import ModelError, ShapeError
from cnnlab.models._registry import register
from cnnlab.nn.classifier import Classifier, fresh_linear

AUX_WEIGHT = 0.3        # the paper's weight on each auxiliary head's loss

ConvBlock = Callable[..., nn.Module]     # (in, out, kernel_size, stride=1, padding=0)


class GoogLeNetOutputs(NamedTuple):
    """What a GoogLeNet with ``aux_logits=True`` returns in training mode (torchvision's
    field order): the main scores and the heads on inception4d and inception4a. Pass it to
    :meth:`GoogLeNet.loss`; ``output.logits`` (also ``output[0]``) are the scores to rank."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor


class ConvReLU(nn.Module):
    """A convolution with bias, then ReLU: every conv of the 2015 paper."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.conv = cnn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.relu = cnn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.relu(self.conv(x))
        return y


class BasicConv2d(nn.Module):
    """torchvision's unit: a convolution without bias, batch norm (eps 0.001), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.conv = cnn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                               bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = cnn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.relu(self.bn(self.conv(x)))
        return y


class Inception(nn.Module):
    """One row of Table 1: four branches on the same input, stacked along the depth.

    ``branch3_kernel`` is the kernel of the "5x5" branch: 5 in the paper, 3 in torchvision.

    >>> m = Inception(192, 64, 96, 128, 16, 32, 32)        # inception3a
    >>> m(torch.zeros(1, 192, 28, 28)).shape, m.out_channels
    (torch.Size([1, 256, 28, 28]), 256)
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
                 ch5x5: int, pool_proj: int, conv_block: ConvBlock = ConvReLU,
                 branch3_kernel: int = 5) -> None:
        super().__init__()
        self.branch1 = conv_block(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(conv_block(in_channels, ch3x3red, 1),
                                     conv_block(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(conv_block(in_channels, ch5x5red, 1),
                                     conv_block(ch5x5red, ch5x5, branch3_kernel,
                                                padding=branch3_kernel // 2))
        self.branch4 = nn.Sequential(cnn.MaxPool2d(3, 1, padding=1, ceil_mode=True),
                                     conv_block(in_channels, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)],
                         dim=1)


class InceptionAux(nn.Module):
    """An auxiliary classifier: ``pool`` to 4x4, 1x1 conv 128, FC 1024 + ReLU, dropout, FC."""

    def __init__(self, in_channels: int, num_classes: int, pool: nn.Module,
                 conv_block: ConvBlock = ConvReLU, dropout: float = 0.7) -> None:
        super().__init__()
        self.pool = pool                                    # paper: average 5x5/3, 14 -> 4
        self.conv = conv_block(in_channels, 128, 1)
        self.fc1 = cnn.Linear(128 * 4 * 4, 1024)
        self.relu = cnn.ReLU()
        self.dropout = cnn.Dropout(dropout)
        self.fc2 = cnn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)                                    # N x C x 4 x 4
        if tuple(x.shape[-2:]) != (4, 4):
            raise ShapeError(f"an auxiliary head needs 4x4 maps after its pool, got "
                             f"{x.shape[-2]}x{x.shape[-1]}; train at the model's default input "
                             "size or build it with aux_logits=False")
        x = torch.flatten(self.conv(x), 1)                  # N x 2048
        y: torch.Tensor = self.fc2(self.dropout(self.relu(self.fc1(x))))
        return y


def paper_stem(in_channels: int) -> OrderedDict[str, nn.Module]:
    """Table 1's first rows with the paper's LRNs (Fig. 3 of the paper); 224 -> 28x28x192.
    LRN uses the values of the BVLC Caffe reproduction (n=5, alpha=1e-4 / n in Eq. 8.2's
    terms, beta=0.75, k=1); the paper gives none."""
    return OrderedDict(
        conv1=ConvReLU(in_channels, 64, 7, stride=2, padding=3),      # 112x112x64
        maxpool1=cnn.MaxPool2d(3, 2, ceil_mode=True),                 # 56x56x64
        lrn1=cnn.LRN(5, alpha=1e-4 / 5, beta=0.75, k=1.0),
        conv2=ConvReLU(64, 64, 1),                                    # 56x56x64 (3x3 reduce)
        conv3=ConvReLU(64, 192, 3, padding=1),                        # 56x56x192
        lrn2=cnn.LRN(5, alpha=1e-4 / 5, beta=0.75, k=1.0),
        maxpool2=cnn.MaxPool2d(3, 2, ceil_mode=True),                 # 28x28x192
    )


def torchvision_stem(in_channels: int) -> OrderedDict[str, nn.Module]:
    """torchvision's stem: the paper's without LRN, with batch norm; 224 -> 28x28x192."""
    return OrderedDict(
        conv1=BasicConv2d(in_channels, 64, 7, stride=2, padding=3),   # 112x112x64
        maxpool1=cnn.MaxPool2d(3, 2, ceil_mode=True),                 # 56x56x64
        conv2=BasicConv2d(64, 64, 1),                                 # 56x56x64
        conv3=BasicConv2d(64, 192, 3, padding=1),                     # 56x56x192
        maxpool2=cnn.MaxPool2d(3, 2, ceil_mode=True),                 # 28x28x192
    )


def cifar_stem(in_channels: int, conv_block: ConvBlock = ConvReLU) -> OrderedDict[str, nn.Module]:
    """One 3x3 conv with 192 filters and no pool: 32x32 -> 32x32x192."""
    return OrderedDict(conv1=conv_block(in_channels, 192, 3, padding=1))


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ModelError(f"{name} must be True or False, got {name}={value!r}")


class GoogLeNet(Classifier):
    """GoogLeNet: ``stem`` (any layers ending in 192 maps), inception3a-5b, global average
    pooling, dropout, ``fc``. Its parts come in as arguments, so one class builds the paper's
    network, torchvision's and the CIFAR form:

    - ``stem``: named layers, registered under their names (``conv1``, ``maxpool1``, ...);
    - ``conv_block``: :class:`ConvReLU` (paper) or :class:`BasicConv2d` (with batch norm);
    - ``branch3_kernel``: 5 (paper) or 3 (torchvision's slip);
    - ``pool4_kernel``: the pool before inception5, 3x3/2 (paper) or 2x2/2 (torchvision);
    - ``aux_logits``: build the auxiliary heads on inception4a and inception4d, which pool
      with ``aux_pool()``. In training mode the model then returns :class:`GoogLeNetOutputs`,
      for :meth:`loss`; in eval mode, and always without heads, it returns the logits.

    >>> net = GoogLeNet(cifar_stem(3), 10, input_shape=(3, 32, 32), aux_logits=True)
    >>> net.train()(torch.zeros(2, 3, 32, 32)).aux_logits1.shape
    torch.Size([2, 10])
    >>> net.eval()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, stem: OrderedDict[str, nn.Module], num_classes: int = 1000, *,
                 conv_block: ConvBlock = ConvReLU, branch3_kernel: int = 5,
                 pool4_kernel: int = 3, aux_logits: bool = False,
                 aux_pool: Callable[[], nn.Module] = lambda: cnn.AvgPool2d(5, 3),
                 dropout: float = 0.4, dropout_aux: float = 0.7,
                 input_shape: tuple[int, int, int] = (3, 224, 224)) -> None:
        super().__init__()
        _check_bool("aux_logits", aux_logits)
        for name, p in (("dropout", dropout), ("dropout_aux", dropout_aux)):
            if not isinstance(p, int | float) or not 0 <= p < 1:
                raise ModelError(f"{name} is a drop probability in [0, 1) (the paper: 0.4 for "
                                 f"the main head, 0.7 for the auxiliary ones); got {name}={p!r}")
        self.num_classes, self.default_input_shape = num_classes, input_shape
        self.stem_names = tuple(stem)
        for name, module in stem.items():
            self.add_module(name, module)

        def inception(c_in: int, c1: int, c3red: int, c3: int, c5red: int, c5: int,
                      proj: int) -> Inception:
            return Inception(c_in, c1, c3red, c3, c5red, c5, proj, conv_block, branch3_kernel)

        # Table 1: in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj; volumes at 224
        self.inception3a = inception(192, 64, 96, 128, 16, 32, 32)        # 28x28x256
        self.inception3b = inception(256, 128, 128, 192, 32, 96, 64)      # 28x28x480
        self.maxpool3 = cnn.MaxPool2d(3, 2, ceil_mode=True)               # 14x14x480
        self.inception4a = inception(480, 192, 96, 208, 16, 48, 64)       # 14x14x512
        self.inception4b = inception(512, 160, 112, 224, 24, 64, 64)      # 14x14x512
        self.inception4c = inception(512, 128, 128, 256, 24, 64, 64)      # 14x14x512
        self.inception4d = inception(512, 112, 144, 288, 32, 64, 64)      # 14x14x528
        self.inception4e = inception(528, 256, 160, 320, 32, 128, 128)    # 14x14x832
        self.maxpool4 = cnn.MaxPool2d(pool4_kernel, 2, ceil_mode=True)    # 7x7x832
        self.inception5a = inception(832, 256, 160, 320, 32, 128, 128)    # 7x7x832
        self.inception5b = inception(832, 384, 192, 384, 48, 128, 128)    # 7x7x1024

        self.aux1: InceptionAux | None = None
        self.aux2: InceptionAux | None = None
        if aux_logits:      # after inception5b, as torchvision registers them
            self.aux1 = InceptionAux(512, num_classes, aux_pool(), conv_block, dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, aux_pool(), conv_block, dropout_aux)
        self.avgpool = cnn.GlobalAvgPool()                                # 1024
        self.dropout = cnn.Dropout(dropout)
        self.fc = cnn.Linear(1024, num_classes)

        names = {n: n for n in stem if n.startswith("conv")}
        names |= {n.replace("maxpool", "pool"): n for n in stem if n.startswith("maxpool")}
        names |= {n: n for n, m in self.named_children() if isinstance(m, Inception)}
        names |= {"pool3": "maxpool3", "pool4": "maxpool4", "avgpool": "avgpool", "fc": "fc"}
        names |= {"aux1": "aux1", "aux2": "aux2"} if aux_logits else {}
        self.chapter_layers = names

    def _trunk(self, x: torch.Tensor, heads: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The last volume and, when asked in training mode, the auxiliary heads' outputs."""
        heads = heads and self.training
        for name in self.stem_names:
            x = getattr(self, name)(x)                  # N x 192 x 28 x 28
        x = self.maxpool3(self.inception3b(self.inception3a(x)))             # N x 480 x 14 x 14
        x = self.inception4a(x)                         # N x 512 x 14 x 14
        aux1 = self.aux1(x) if heads and self.aux1 is not None else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))          # N x 528 x 14 x 14
        aux2 = self.aux2(x) if heads and self.aux2 is not None else None
        x = self.maxpool4(self.inception4e(x))          # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))       # N x 1024 x 7 x 7
        return x, aux1, aux2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x, heads=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.avgpool(x))               # N x 1024
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor  # type: ignore[override]  # tuple in training with heads
                ) -> torch.Tensor | GoogLeNetOutputs:
        x, aux1, aux2 = self._trunk(x)
        logits = self.forward_head(x)
        if aux1 is not None and aux2 is not None:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits

    def loss(self, output: torch.Tensor | GoogLeNetOutputs, target: torch.Tensor
             ) -> torch.Tensor:
        """Cross-entropy of the logits, plus 0.3 times each auxiliary head's when ``output``
        carries them (training mode with ``aux_logits=True``), as the paper weights them."""
        if isinstance(output, GoogLeNetOutputs):
            aux = F.cross_entropy(output.aux_logits1, target) + F.cross_entropy(
                output.aux_logits2, target)
            return F.cross_entropy(output.logits, target) + AUX_WEIGHT * aux
        return F.cross_entropy(output, target)

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = fresh_linear(aux.fc2, num_classes)


def _paper_init(model: nn.Module) -> None:
    """He normal (fan-in) for convolutions, N(0, 0.01) for linear layers, zero biases: the
    paper's forms have no batch norm, and fan-in keeps the forward signal's scale through
    the 1x1 reductions (fan-out would amplify 832 -> 32 by 26x)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
        if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d) and m.bias is not None:
            nn.init.zeros_(m.bias)


def _torchvision_init(model: nn.Module) -> None:
    """torchvision's GoogLeNet initialisation: truncated N(0, 0.01) in [-2, 2] for conv and
    linear weights (linear biases keep PyTorch's default), batch norm 1 and 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# the paper's schedule (momentum 0.9, learning rate x0.96 every 8 epochs); learning rate, weight
# decay and batch size of the BVLC Caffe reproduction
_RECIPE = {"lr": 0.01, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 32, "lr_step": 8,
           "lr_gamma": 0.96}
_CIFAR_RECIPE = {"lr": 0.01, "batch_size": 128}   # a starting point, not yet measured on CIFAR


@register("inception_v1", section="8.4.4", recipe=_RECIPE)
def inception_v1(num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = False,
                 dropout: float = 0.4, dropout_aux: float = 0.7) -> GoogLeNet:
    """GoogLeNet as the 2015 paper built it: true 5x5 branches, LRN, no batch norm"""
    model = GoogLeNet(paper_stem(in_channels), num_classes, aux_logits=aux_logits,
                      dropout=dropout, dropout_aux=dropout_aux,
                      input_shape=(in_channels, 224, 224))
    _paper_init(model)
    return model


@register("googlenet", section="8.4.4", recipe=_RECIPE)
def googlenet(num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = False,
              dropout: float = 0.2, dropout_aux: float = 0.7) -> GoogLeNet:
    """GoogLeNet in torchvision's layout (batch norm, 3x3 in the 5x5 branch); loads its weights"""
    model = GoogLeNet(torchvision_stem(in_channels), num_classes, conv_block=BasicConv2d,
                      branch3_kernel=3, pool4_kernel=2, aux_logits=aux_logits,
                      aux_pool=lambda: cnn.AdaptiveAvgPool2d((4, 4)), dropout=dropout,
                      dropout_aux=dropout_aux, input_shape=(in_channels, 224, 224))
    _torchvision_init(model)
    return model


@register("inception_v1_cifar", section="8.4.4", recipe=_CIFAR_RECIPE)
def inception_v1_cifar(num_classes: int = 10, in_channels: int = 3, aux_logits: bool = False,
                       batch_norm: bool = False, dropout: float = 0.4,
                       dropout_aux: float = 0.7) -> GoogLeNet:
    """The paper's inception modules for 32x32 images: a 3x3 stem conv, no early pools"""
    _check_bool("batch_norm", batch_norm)
    block: ConvBlock = BasicConv2d if batch_norm else ConvReLU
    model = GoogLeNet(cifar_stem(in_channels, block), num_classes, conv_block=block,
                      aux_logits=aux_logits, dropout=dropout, dropout_aux=dropout_aux,
                      input_shape=(in_channels, 32, 32))
    _paper_init(model)
    return model
