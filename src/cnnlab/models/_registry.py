"""The model registry: a decorator that records builders, ``create`` and ``names``."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cnnlab.errors import ModelError, RegistryError
from cnnlab.nn.classifier import Classifier, check_num_classes

Builder = Callable[..., Classifier]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it."""

    name: str
    builder: Builder
    section: str                        # the chapter section it comes from
    summary: str                        # one line for `cnnlab models`
    recipe: dict[str, Any]              # training settings that suit it (TrainConfig fields)

    @functools.cached_property
    def meta_model(self) -> Classifier:
        """The model at its defaults on the meta device (shapes and counts only: nothing
        allocated or drawn from the random generator), built once and shared by every
        question asked of the registry; read it, never train or change it."""
        with torch.device("meta"):
            return self.builder()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The default (C, H, W), read from the model itself."""
        return tuple(self.meta_model.default_input_shape)

    @property
    def task(self) -> str:
        """The task the model trains with: its ``task`` attribute (the autoencoders'
        ``"reconstruction"``); classifiers declare none."""
        return str(getattr(self.meta_model, "task", "classification"))

    def arguments(self) -> list[str]:
        """The keyword arguments the builder takes."""
        return [p.name for p in inspect.signature(self.builder).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


_MODELS: dict[str, ModelInfo] = {}


def preset(builder: Builder, *args: Any, **fixed: Any) -> Builder:
    """``builder`` with its first arguments given (``args``) and some fixed by name, as one
    row of a table registers it: ``preset(ResNet, Bottleneck, [3, 4, 6, 3], groups=32,
    width_per_group=4)``. Its signature, and so what :func:`create` accepts, is the rest."""
    row = functools.partial(builder, *args, **fixed)
    rest = inspect.signature(row).parameters.values()
    row.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # read by inspect
        [p for p in rest if p.name not in fixed])
    return row


def register(name: str, *, section: str, recipe: dict[str, Any] | None = None,
             summary: str | None = None) -> Callable[[Builder], Builder]:
    """Record ``builder`` under ``name``; a second model with the same name is refused.

    ``summary`` is the line `cnnlab models` shows (default: the first line of the builder's
    docstring). ``recipe`` holds the training settings (TrainConfig fields) that the trainer
    uses for this model unless the user sets them. The builder names every argument it takes
    (no ``**kwargs``), so that :func:`create` can check what it is given.
    """

    def record(builder: Builder) -> Builder:
        if name in _MODELS:
            raise RegistryError(f"model name {name!r} is already registered; give the new "
                                "model another name")
        if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
               for p in inspect.signature(builder).parameters.values()):
            raise RegistryError(f"the builder of {name!r} takes *args or **kwargs; name its "
                                "arguments, so that create() can check them")
        doc = (builder.__doc__ or "").strip().splitlines()
        line = summary if summary is not None else doc[0] if doc else ""
        _MODELS[name] = ModelInfo(name, builder, section, line, dict(recipe or {}))
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
    """The class count an image model of ``input_shape`` (C, H, W) gets unless told: 1000 for
    ImageNet-size inputs (the published heads, so torchvision's weights load), 10 for
    small-image (CIFAR, MNIST) ones. Models of clips and sentences have their data's own
    (``info(name).meta_model.num_classes``)."""
    return 1000 if input_shape[-1] >= 64 else 10


def create(name: str, num_classes: int | None = None, in_channels: int | None = None,
           **kwargs: Any) -> Classifier:
    """Build a registered model: ``create("lenet5", num_classes=10)``.

    ``num_classes`` and ``in_channels`` default to the builder's own: e.g. 1000 classes for
    ImageNet models (``create("resnet50")`` is torchvision's resnet50; see
    :func:`default_classes`) and 10 for the small-image ones, 1 channel for LeNet-5 and 3 for
    the others. Other keyword arguments go to the builder, which must take them: an unknown
    one is refused with the near matches.
    """
    entry = info(name)
    accepted = entry.arguments()
    for key in kwargs:
        if key not in accepted:
            options = [a for a in accepted if a not in ("num_classes", "in_channels")]
            close = difflib.get_close_matches(key, options, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            takes = f"it takes {', '.join(options)}" if options else "it takes no other argument"
            raise ModelError(f"{name} has no argument {key!r}: {hint}{takes} (besides "
                             "num_classes and in_channels)")
    if num_classes is not None:
        kwargs["num_classes"] = check_num_classes(num_classes)
    if in_channels is not None:
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ModelError(f"in_channels must be a positive int, got {in_channels!r}")
        kwargs["in_channels"] = in_channels
    return entry.builder(**kwargs)
