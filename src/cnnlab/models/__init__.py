"""The model zoo: ``create(name, num_classes=..., in_channels=...)`` and ``names()``.

Each family lives in its own module here (``alexnet``, ``resnet``, ...); importing the package
imports every family module, which registers its models.
"""

import importlib
import pkgutil

from cnnlab.models._registry import ModelInfo, create, default_classes, info, names, register
from cnnlab.nn.classifier import Classifier

# every public module of this package is a family: a new file registers itself
FAMILIES = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")

__all__ = ["FAMILIES", "Classifier", "ModelInfo", "create", "default_classes", "info", "names",
           "register"]
