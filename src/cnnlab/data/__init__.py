"""Data sets as tensors: ``load(name, split, data_dir=None, size=None, download=False)``.

>>> from cnnlab import data
>>> data.names()
['cifar10', 'cifar100', 'digits', 'fashion-mnist', 'mnist']
>>> data.load("digits", "train").images.shape
torch.Size([1437, 1, 8, 8])
"""

from cnnlab.data._download import download
from cnnlab.data.archive import safe_extract
from cnnlab.data.augment import (
    ColorJitter,
    Compose,
    HorizontalFlip,
    PCALighting,
    RandomCrop,
    RandomRotation,
    RandomTranslate,
    default_augmentation,
    flip_average,
    multi_crop,
    rotate,
    ten_crops,
)
from cnnlab.data.boxes import BOX_FORMATS, BoxRecord, load_boxes, read_boxes, write_boxes
from cnnlab.data.cifar import parse_binary_batch, parse_python_batch, safe_unpickle
from cnnlab.data.datasets import SPLITS, ImageDataset, load, resize
from cnnlab.data.files import ChecksumError, default_data_dir, resolve_data_dir
from cnnlab.data.folder import load_folder
from cnnlab.data.idx import parse_idx, read_idx
from cnnlab.data.registry import DATASETS, Archive, DatasetInfo, FileInfo, info, names

__all__ = [
    "BOX_FORMATS", "DATASETS", "SPLITS", "Archive", "BoxRecord", "ChecksumError", "ColorJitter",
    "Compose", "DatasetInfo", "FileInfo", "HorizontalFlip", "ImageDataset", "PCALighting",
    "RandomCrop", "RandomRotation", "RandomTranslate", "default_augmentation", "default_data_dir",
    "download", "flip_average", "info", "load", "load_boxes", "load_folder", "multi_crop", "names",
    "parse_binary_batch", "parse_idx", "parse_python_batch", "read_boxes", "read_idx", "resize",
    "resolve_data_dir", "rotate", "safe_extract", "safe_unpickle", "ten_crops", "write_boxes",
]
