"""Gradient maps (8.5.1): how much each input pixel moves a class score or a hidden neuron.

:func:`gradients` gives d target / d input for every image and every target in one call, with
the ReLUs passing gradients back by one of Fig. 8.14's rules (:func:`cnnlab.ops.relu_backward`):
``"backprop"`` (the true gradient), ``"deconvnet"`` (Zeiler and Fergus) or ``"guided"``
(Springenberg et al.). The rule is a property of :func:`cnnlab.ops.relu`, so it reaches every
ReLU a model runs, module, functional or in-place alike. :func:`saliency` is Simonyan et al.'s
picture of the true gradient: the largest |gradient| over the colour channels.

>>> import torch
>>> from cnnlab import models
>>> model = models.create("lenet5_modern")
>>> x = torch.randn(4, 1, 32, 32)                       # 4 images, the model's input
>>> gradients(model, x, [3, ("c3", 5)], rule="guided").shape   # N x targets x C x H x W
torch.Size([4, 2, 1, 32, 32])
>>> saliency(model, x, 7).shape                         # N x targets x H x W
torch.Size([4, 1, 32, 32])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from cnnlab import ops
from cnnlab.ops import ReluRule
from cnnlab.visualize.targets import (
    TargetLike,
    as_targets,
    check_images,
    inspecting,
    target_values,
)

__all__ = ["METHODS", "Method", "deconvnet", "gradients", "guided", "saliency"]

Targets = TargetLike | Sequence[TargetLike]


def gradients(model: nn.Module, x: torch.Tensor, targets: Targets,
              rule: ReluRule = "backprop") -> torch.Tensor:
    """d target / d image for each image of ``x`` (the model's input, N x C x H x W) and each
    target: a tensor N x T x C x H x W. A target without a position follows its strongest unit
    in each image. ``rule`` is how ReLUs pass gradients back (Fig. 8.14).

    The model runs in eval mode; its modes and parameters are left as they were (no ``.grad``).

    >>> import torch
    >>> from cnnlab import models
    >>> model = models.create("resnet20")
    >>> gradients(model, torch.randn(2, 3, 32, 32), [0, 1, 2]).shape
    torch.Size([2, 3, 3, 32, 32])
    """
    chosen = as_targets(targets)
    check_images(model, x)
    # one forward pass for all targets (images do not interact in eval mode), then one
    # backward pass per target through the kept graph: T backward passes, one forward
    image = x.detach().clone().requires_grad_(True)
    with inspecting(model), torch.enable_grad(), ops.relu_backward(rule):
        values = target_values(model, image, chosen, reduce="max")            # N x T
        maps = [_gradient(values[:, t].sum(), image, keep=t < len(chosen) - 1)
                for t in range(len(chosen))]
    return torch.stack(maps, dim=1)                                           # N x T x C x H x W


def _gradient(value: torch.Tensor, image: torch.Tensor, keep: bool) -> torch.Tensor:
    """d value / d image; zeros where the value does not depend on the image."""
    if not value.requires_grad:
        return torch.zeros_like(image)
    (grad,) = torch.autograd.grad(value, image, retain_graph=keep, allow_unused=True)
    return torch.zeros_like(image) if grad is None else grad


def saliency(model: nn.Module, x: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Simonyan et al.'s saliency map (8.5.1): max over colour channels of |d target / d x|,
    N x T x H x W, non-negative."""
    return gradients(model, x, targets, "backprop").abs().amax(dim=2)


def deconvnet(model: nn.Module, x: torch.Tensor, targets: Targets) -> torch.Tensor:
    """The deconvnet map (Fig. 8.14): ReLUs pass back the gradient's positive part, whatever
    their input was. N x T x C x H x W."""
    return gradients(model, x, targets, "deconvnet")


def guided(model: nn.Module, x: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Guided backpropagation (Fig. 8.14): ReLUs pass back a gradient only where both their
    input and the gradient are positive. N x T x C x H x W."""
    return gradients(model, x, targets, "guided")


Method = Callable[[nn.Module, torch.Tensor, Targets], torch.Tensor]

# the gradient maps by the names the command line and the pictures use
METHODS: dict[str, Method] = {"saliency": saliency, "deconvnet": deconvnet, "guided": guided}
