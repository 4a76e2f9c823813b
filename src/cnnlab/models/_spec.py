"""A network written in the chapter's notation, with the common model interface."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab.models._base import Classifier
from cnnlab.spec import build


def fresh_linear(old: nn.Module, num_classes: int) -> cnn.Linear:
    """A new output layer with ``num_classes`` units in place of ``old`` (same device, dtype)."""
    assert isinstance(old, nn.Linear)
    return cnn.Linear(old.in_features, num_classes).to(device=old.weight.device,
                                                       dtype=old.weight.dtype)


class SpecClassifier(Classifier):
    """A network written in the notation, with the common model interface.

    ``features`` holds the spatial layers (conv1 ... the last pool) and ``head`` the rest
    (flatten, fc6, ..., the output FC, S), each under the notation's names, which are also
    its chapter names: ``model.layer("fc7")`` is ``model.head.fc7``. ``aliases`` adds more
    chapter names (VGG's ``conv3_1``). The input size is fixed when the network is built.

    >>> net = SpecClassifier("C3D8 M FC16 FC", (3, 8, 8), num_classes=5)
    >>> net.layer("fc2"), net(torch.zeros(1, 3, 8, 8)).shape
    (Linear(in_features=128, out_features=16, bias=True), torch.Size([1, 5]))
    """

    def __init__(self, spec: str, input_shape: tuple[int, int, int], num_classes: int,
                 aliases: Mapping[str, str] | None = None) -> None:
        super().__init__()
        net = build(spec, input_shape, num_classes)
        layers = list(net.named_children())
        start = next(i for i, (_, m) in enumerate(layers)
                     if isinstance(m, nn.Flatten | cnn.GlobalAvgPool | nn.Linear))
        self.features = nn.Sequential(OrderedDict(layers[:start]))
        self.head = nn.Sequential(OrderedDict(layers[start:]))
        self.spec, self.default_input_shape, self.num_classes = spec, input_shape, num_classes
        paths = {name: f"features.{name}" for name, _ in layers[:start]}
        paths |= {name: f"head.{name}" for name, _ in layers[start:]}
        paths |= {alias: paths[name] for alias, name in (aliases or {}).items()}
        # per instance, since the names depend on the spec (VGG-A has 8 convs, VGG-E 16)
        self.chapter_layers = paths  # type: ignore[misc]

    def _output_name(self) -> str:
        return [n for n, m in self.head.named_children() if isinstance(m, nn.Linear)][-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        stop = self._output_name() if pre_logits else None
        for name, m in self.head.named_children():
            if name == stop:
                break
            x = m(x)
        return x

    def reset_classifier(self, num_classes: int) -> None:
        name = self._output_name()
        setattr(self.head, name, fresh_linear(getattr(self.head, name), num_classes))
        self.num_classes = num_classes
