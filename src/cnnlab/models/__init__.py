"""The model zoo: ``create(name, num_classes=..., in_channels=...)`` and ``names()``.

Importing a family module registers its models.
"""

from cnnlab.models import alexnet, lenet, vgg
from cnnlab.models._base import Classifier
from cnnlab.models._registry import ModelInfo, create, info, names, register

__all__ = ["Classifier", "ModelInfo", "alexnet", "create", "info", "lenet", "names", "register",
           "vgg"]
