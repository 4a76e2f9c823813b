"""The interface every cnnlab model has (as timm's do), so that FC7 features, fine-tuning the
deeper layers, retrieval and visualisation need no per-model code.

It lives below :mod:`cnnlab.models` and :mod:`cnnlab.spec` so that both can build on it: the
model families import the notation, and the notation's networks are classifiers too.
"""

from __future__ import annotations

import difflib
from typing import ClassVar

import torch
from torch import nn

from cnnlab.errors import ModelError
from cnnlab.nn.layers import Linear


def takes_ids(model: nn.Module) -> bool:
    """True for a model whose input is token ids (a text model), not pixels: its
    ``default_input_dtype`` is not a floating type."""
    return not getattr(model, "default_input_dtype", torch.float32).is_floating_point


class Classifier(nn.Module):
    """A network split into :meth:`forward_features` (the spatial layers) and
    :meth:`forward_head` (what follows).

    Subclasses set, per instance, ``default_input_shape`` (C, H, W: the one statement of the
    model's input size; the registry reads it from a model built at its defaults),
    ``num_classes`` and ``chapter_layers``, and implement :meth:`forward_features`,
    :meth:`forward_head`; :meth:`reset_classifier` replaces the Linear at ``output_layer``.
    """

    default_input_shape: tuple[int, ...]
    # what the input holds: pixels (float), or token ids (a text model sets torch.int64)
    default_input_dtype: ClassVar[torch.dtype] = torch.float32
    # units of the output layer; None for a network without one (notation that ends in a conv)
    num_classes: int | None
    # the chapter's names for layers ("conv1", "fc7", "c3") -> module paths inside the model;
    # per instance, since they follow what was built (VGG-A has 8 convs, VGG-E 16)
    chapter_layers: dict[str, str]
    # True where training skips whole parts at random (stochastic depth, drop-path): a
    # training step may then leave some parameters without a gradient
    stochastic_paths: bool = False
    # module path of the output layer (a Linear) that reset_classifier replaces
    output_layer: ClassVar[str] = "fc"

    def layer(self, name: str) -> nn.Module:
        """A layer by the chapter's name (``"fc7"``) or by its module path (``"head.f6"``)."""
        path = self.chapter_layers.get(name, name)
        try:
            return self.get_submodule(path)
        except AttributeError:
            close = difflib.get_close_matches(name, list(self.chapter_layers), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ModelError(f"{type(self).__name__} has no layer {name!r}: {hint}its named "
                             f"layers are {', '.join(self.chapter_layers)}") from None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial volume, (N, D, H, W)."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Scores from features; ``pre_logits=True`` stops at the penultimate layer
        (the "FC7 features" of 8.4.1)."""
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the output layer with a fresh one for ``num_classes`` classes."""
        parent, _, name = self.output_layer.rpartition(".")
        owner = self.get_submodule(parent)
        setattr(owner, name, fresh_linear(owner.get_submodule(name), num_classes))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def check_num_classes(num_classes: object) -> int:
    """``num_classes`` as given, if it is a positive int; else a ModelError naming it."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def fresh_linear(old: nn.Module, num_classes: int) -> Linear:
    """A new output layer with ``num_classes`` units in place of ``old`` (same device, dtype)."""
    if not isinstance(old, nn.Linear):
        raise ModelError(f"the output layer is a {type(old).__name__}, not a fully connected "
                         "layer, so reset_classifier cannot resize it")
    return Linear(old.in_features, check_num_classes(num_classes)).to(
        device=old.weight.device, dtype=old.weight.dtype)
