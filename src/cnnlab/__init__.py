"""cnnlab: the convolutional networks of the reference chapter as real PyTorch software."""

from cnnlab.errors import CnnlabError, DataError, ModelError, ShapeError, SpecError

__version__ = "0.1.0"
__all__ = ["CnnlabError", "DataError", "ModelError", "ShapeError", "SpecError", "__version__"]
