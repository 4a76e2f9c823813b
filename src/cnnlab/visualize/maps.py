"""Filters and feature maps (8.5.1): the first layer's filters, which can be looked at as small
images, and the maps any layer computes for an image.

>>> import torch
>>> from cnnlab import models
>>> model = models.create("lenet5_modern")
>>> first_filters(model).shape                       # C1: 6 filters of 1 x 5 x 5
torch.Size([6, 1, 5, 5])
>>> feature_maps(model, torch.randn(2, 1, 32, 32), "c3").shape   # N x 16 x 10 x 10
torch.Size([2, 16, 10, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import ModelError
from cnnlab.visualize.targets import Probe, check_images, inspecting

__all__ = ["feature_maps", "first_filters"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def first_filters(model: nn.Module) -> torch.Tensor:
    """The filters of the model's first convolution (the first in module order, which is the
    order every cnnlab model runs them): F x C x k x k, a detached copy."""
    for module in model.modules():
        if isinstance(module, _CONVS):
            return module.weight.detach().clone()
    raise ModelError(f"{type(model).__name__} has no convolution, so it has no filters to show; "
                     "use feature_maps or the gradient maps instead")


def feature_maps(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The output of ``layer`` (a chapter name such as ``"c3"`` or a module path) for each image
    of ``x`` (the model's input): N x C x h x w for a convolutional layer, N x units for a
    fully connected one. The model runs in eval mode, without gradients."""
    check_images(model, x)
    with inspecting(model), torch.no_grad(), Probe(model, layer) as probe:
        model(x)
    return probe.output.detach()
