"""The interface every cnnlab model has (as timm's do), so that FC7 features, fine-tuning the
deeper layers, retrieval and visualisation need no per-model code."""

from __future__ import annotations

import difflib
from typing import ClassVar

import torch
from torch import nn

from cnnlab.errors import ModelError


class Classifier(nn.Module):
    """A network split into ``features`` (the spatial layers) and ``head`` (what follows).

    Subclasses set ``default_input_shape`` (C, H, W) and implement :meth:`forward_features`,
    :meth:`forward_head` and :meth:`reset_classifier`.
    """

    default_input_shape: tuple[int, int, int]
    num_classes: int
    # the chapter's names for layers ("conv1", "fc7", "c3") -> module paths inside the model
    chapter_layers: ClassVar[dict[str, str]] = {}
    # True where training skips whole parts at random (stochastic depth, drop-path): a
    # training step may then leave some parameters without a gradient
    stochastic_paths: ClassVar[bool] = False

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
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
