"""The model registry: a decorator that records builders, ``create`` and ``names``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from cnnlab.errors import ModelError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it."""

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]   # default (C, H, W)
    section: str                        # the chapter section it comes from
    summary: str                        # one line for `cnnlab models`
    recipe: dict[str, Any]              # training settings that suit it (TrainConfig fields)


_MODELS: dict[str, ModelInfo] = {}


def register(name: str, *, input_shape: tuple[int, int, int], section: str,
             recipe: dict[str, Any] | None = None
             ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Record ``builder`` under ``name``; a second model with the same name is refused.

    ``recipe`` holds the training settings (TrainConfig fields) that the trainer uses for
    this model unless the user sets them.
    """

    def record(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is already registered")
        doc = (builder.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelInfo(name, builder, input_shape, section, doc[0] if doc else "",
                                  dict(recipe or {}))
        return builder

    return record


def names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_MODELS)


def info(name: str) -> ModelInfo:
    """The registry entry of ``name``; an unknown name lists the near matches."""
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelError(f"unknown model {name!r}: {hint}run `cnnlab models` to list them") from None


def default_classes(input_shape: tuple[int, ...] | list[int]) -> int:
    """The class count a model gets unless told: 1000 for ImageNet-size inputs (the
    published heads, so torchvision's weights load), 10 for small-image (CIFAR, MNIST) ones."""
    return 1000 if input_shape[-1] >= 64 else 10


def create(name: str, num_classes: int | None = None, in_channels: int | None = None,
           **kwargs: Any) -> nn.Module:
    """Build a registered model: ``create("lenet5", num_classes=10)``.

    ``num_classes`` defaults to 1000 for ImageNet models (``create("resnet50")`` is
    torchvision's resnet50) and 10 for the small-image ones; ``in_channels`` to the model's
    own (1 for LeNet-5, 3 for ImageNet models).
    """
    entry = info(name)
    if num_classes is None:
        num_classes = default_classes(entry.input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")
    channels = entry.input_shape[0] if in_channels is None else in_channels
    if not isinstance(channels, int) or channels < 1:
        raise ModelError(f"in_channels must be a positive int, got {in_channels!r}")
    return entry.builder(num_classes=num_classes, in_channels=channels, **kwargs)
