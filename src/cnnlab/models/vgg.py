"""VGG (8.4.3; Simonyan and Zisserman, 2015): Table 8.2's columns written in the notation.

Every convolution is 3x3 (1x1 in column C) at stride 1 with the padding that keeps the size,
followed by ReLU; every M is a 2x2 max pool at stride 2; filters double after each pool. At
224x224 the five pools leave 7x7x512, so FC6 alone has 7*7*512*4096 = 102,760,448 weights of
VGG-D's ~138 M. The paper trained with dropout 0.5 after FC6 and FC7 (Table 8.2 leaves it out).

Registered models (parameters at 1000 classes):

- ``vgg_a``, ``vgg_a_lrn``, ``vgg_b``, ``vgg_c``, ``vgg_d``, ``vgg_e``: the columns as the
  chapter writes them, one module per token under the notation's names (``conv1``, ``fc9``),
  reachable by VGG's own names too (``conv3_1``, ``fc6``, ``fc7``, ``fc8``);
- ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19`` (columns A, B, D, E) and their ``_bn`` forms:
  torchvision's layout and names (``features.N``, ``classifier.N``), so its published
  weights load; vgg16 has 138,357,544 parameters;
- ``vgg_cifar``: a column (``config="D"`` by default) for 32x32 images, with 512-unit FCs.

Batch normalisation (the ``_bn`` models) is not one of the chapter's operations, so it runs on
``torch.nn.BatchNorm2d``, the same on both kernels. Initialisation is torchvision's (He normal
for convolutions, N(0, 0.01) for FCs), not the paper's, which started D and E from a trained A.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cnnlab import nn as cnn
from cnnlab.errors import ModelError
from cnnlab.models._registry import preset, register
from cnnlab.models.alexnet import TorchvisionLayout, fc_head
from cnnlab.nn.classifier import Classifier
from cnnlab.spec import SoftmaxOutput, SpecNet, build, parse

# Table 8.2, one column per row; each is followed by Fig. 8.9's head (alexnet.fc_head).
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


def _column(config: str) -> str:
    if config not in TABLE_8_2:
        raise ModelError(f"VGG has the configurations of Table 8.2: {', '.join(TABLE_8_2)}; "
                         f"got config={config!r}")
    return TABLE_8_2[config]


def _vgg_names(net: SpecNet) -> dict[str, str]:
    """VGG's own names -> the notation's: conv<stage>_<i> for the convolutions between pools
    (conv1_1 ... conv5_3 in D), fc6, fc7, fc8 for the FCs. The pools' names, pool1 ... pool5,
    are the notation's already."""
    names, stage, i = {}, 1, 0
    for name, m in net.named_children():
        if isinstance(m, nn.Conv2d):
            i += 1
            names[f"conv{stage}_{i}"] = name
        elif isinstance(m, nn.MaxPool2d):
            stage, i = stage + 1, 0
    fcs = [name for name, m in net.named_children() if isinstance(m, nn.Linear)]
    return names | {f"fc{6 + k}": name for k, name in enumerate(fcs)}


def _layers(config: str, size: int, units: int, num_classes: int, in_channels: int,
            dropout: float) -> SpecNet:
    """A column and the head with ``units``-unit FCs, for ``size`` x ``size`` inputs."""
    net = build(f"{_column(config)} {fc_head(units, dropout)}", (in_channels, size, size),
                num_classes)
    return net.name_layers(_vgg_names(net))


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


def chapter_vgg(config: str, num_classes: int = 1000, in_channels: int = 3,
                dropout: float = 0.5) -> SpecNet:
    """A column of Table 8.2 as the chapter writes it, at 224x224: one module per token under
    the notation's names (conv1 ... fc11 in A), VGG's (conv3_1, fc6, fc7, fc8) as aliases."""
    net = _layers(config, 224, 4096, num_classes, in_channels, dropout)
    _init(net)
    return net


class VGG(TorchvisionLayout):
    """VGG in torchvision's layout, made from the same column and head as :func:`chapter_vgg`:
    ``features`` holds conv [BN] ReLU per C token and a 2x2/2 max pool per M, ``classifier``
    FC6 ReLU dropout FC7 ReLU dropout FC8. Names and shapes equal ``torchvision.models.vgg16``
    (column D) etc. Chapter names: the notation's (conv1 ..., pool1 ..., fc9 ...) and VGG's
    (conv1_1 ..., fc6, fc7, fc8)."""

    def __init__(self, config: str, num_classes: int = 1000, in_channels: int = 3,
                 batch_norm: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        net = _layers(config, 224, 4096, num_classes, in_channels, dropout)
        self.default_input_shape = net.default_input_shape
        self.num_classes = num_classes
        features: list[nn.Module] = []
        classifier: list[nn.Module] = []
        where: dict[str, str] = {}          # notation name -> path here
        for name, m in net.named_children():
            if isinstance(m, nn.Flatten | SoftmaxOutput):   # forward_head flattens; the loss
                continue                                    # applies the softmax
            part, prefix = (classifier, "classifier") if isinstance(m, nn.Linear) or classifier \
                else (features, "features")
            where[name] = f"{prefix}.{len(part)}"
            part.append(m)
            if batch_norm and isinstance(m, nn.Conv2d):
                part.append(nn.BatchNorm2d(m.out_channels))
        self.features = nn.Sequential(*features)                  # 7x7x512 at 224
        self.avgpool = cnn.AdaptiveAvgPool2d((7, 7))              # the identity at 224
        self.classifier = nn.Sequential(*classifier)
        self.chapter_layers = {alias: where[name] for alias, name in net.chapter_layers.items()
                               if name in where}
        _init(self)


# a starting point, not yet measured on CIFAR
@register("vgg_cifar", section="8.4.3", recipe={"lr": 0.05, "batch_size": 128})
def vgg_cifar(num_classes: int = 10, in_channels: int = 3, config: str = "D",
              dropout: float = 0.5) -> SpecNet:
    """A column of Table 8.2 (config="A" ... "E", default D) for 32x32 images"""
    net = _layers(config, 32, 512, num_classes, in_channels, dropout)   # 1x1x512 after 5 pools
    _init(net)
    return net


def _weighted(config: str) -> int:
    """Table 8.2's "weight layers" of a column: its convolutions and the three FCs."""
    return sum(tok.kind == "conv" for tok in parse(_column(config))) + 3


_RECIPE = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256}  # the paper's
# the two layouts: the chapter's (one module per token) and torchvision's (its weights load)
LAYOUTS: dict[str, tuple[Callable[..., Classifier], str]] = {
    "chapter": (chapter_vgg, "as the chapter writes it"),
    "torchvision": (VGG, "in torchvision's layout; loads its weights"),
}
# name: (Table 8.2 column, layout, fixed arguments, a note for `cnnlab models`); torchvision
# names its forms by their weighted layers: vgg11 is column A
VGGS: dict[str, tuple[str, str, dict[str, bool], str]] = {
    "vgg_a": ("A", "chapter", {}, ""),
    "vgg_a_lrn": ("A-LRN", "chapter", {}, "A with LRN after the first layer"),
    "vgg_b": ("B", "chapter", {}, ""),
    "vgg_c": ("C", "chapter", {}, "three of them 1x1"),
    "vgg_d": ("D", "chapter", {}, "VGG-16"),
    "vgg_e": ("E", "chapter", {}, "VGG-19"),
    **{f"vgg{_weighted(column)}{'_bn' if bn else ''}":
       (column, "torchvision", {"batch_norm": bn}, "with batch norm" if bn else "")
       for column in "ABDE" for bn in (False, True)},
}
for _name, (_config, _layout, _fixed, _note) in VGGS.items():
    _builder, _where = LAYOUTS[_layout]
    register(_name, section="8.4.3", recipe=_RECIPE,
             summary=f"VGG column {_config} of Table 8.2 ({_weighted(_config)} weighted layers"
                     f"{'; ' + _note if _note else ''}) {_where}")(
        preset(_builder, _config, **_fixed))
