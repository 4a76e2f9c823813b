"""Data sets as tensors: ``load(name, split, data_dir=None, size=None, download=False)``.

>>> from cnnlab import data
>>> data.names()
['digits', 'fashion-mnist', 'mnist']
>>> data.load("digits", "train").images.shape
torch.Size([1437, 1, 8, 8])
"""

from cnnlab.data._download import download
from cnnlab.data.datasets import SPLITS, ImageDataset, load, resize
from cnnlab.data.files import ChecksumError, default_data_dir, resolve_data_dir
from cnnlab.data.idx import parse_idx, read_idx
from cnnlab.data.registry import DATASETS, DatasetInfo, FileInfo, info, names

__all__ = [
    "DATASETS", "SPLITS", "ChecksumError", "DatasetInfo", "FileInfo", "ImageDataset",
    "default_data_dir", "download", "info", "load", "names", "parse_idx", "read_idx", "resize",
    "resolve_data_dir",
]
