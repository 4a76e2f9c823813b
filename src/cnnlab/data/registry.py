"""The data sets cnnlab knows, as data: files, checksums, addresses, classes, statistics.

``mean``/``std`` are per channel, over every pixel of the training split at its native size,
on the [0, 1] scale; ``tests/data`` recomputes them. The trainer normalises with them after
any resize, so zero padding (MNIST 28 -> 32) is normalised like the black background.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cnnlab.data.digits import read_digits_split
from cnnlab.data.idx import read_idx_split
from cnnlab.errors import DataError

Reader = Callable[["DatasetInfo", str, "Path | None"], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class FileInfo:
    """One published file: its name without ``.gz`` and its published hashes."""

    name: str
    sha256: str   # of the official .gz
    md5: str      # of the uncompressed file, as published


@dataclass(frozen=True)
class DatasetInfo:
    """What cnnlab knows about a data set, without reading it."""

    name: str
    summary: str
    classes: tuple[str, ...]
    shape: tuple[int, int, int]                # native (C, H, W)
    mean: tuple[float, ...]                    # per channel, train split, [0, 1] scale
    std: tuple[float, ...]
    reader: Reader                             # (info, split, data folder) -> images, labels
    files: Mapping[str, tuple[FileInfo, FileInfo]] = field(default_factory=dict)  # split ->
    urls: tuple[str, ...] = ()                 # mirrors, tried in order; file name appended
    folders: tuple[str, ...] = ()              # sub-folders of the data folder to look in
    pad_to: tuple[int, int] | None = None      # size reached by zero padding, not resampling
    source: str = ""                           # publisher and citation

    @property
    def embedded(self) -> bool:
        """True when the data ships with a dependency and needs no data folder."""
        return not self.files

    def all_files(self) -> list[FileInfo]:
        return [f for pair in self.files.values() for f in pair]


def _idx_files(sha256: tuple[str, str, str, str], md5: tuple[str, str, str, str]
               ) -> dict[str, tuple[FileInfo, FileInfo]]:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    f = [FileInfo(n, s, m) for n, s, m in zip(names, sha256, md5, strict=True)]
    return {"train": (f[0], f[1]), "test": (f[2], f[3])}


DIGIT_CLASSES = tuple(str(d) for d in range(10))

_DATASETS = [
    DatasetInfo(
        name="digits",
        summary="scikit-learn's 8x8 handwritten digits (1,797 images, 16 grey levels), embedded",
        classes=DIGIT_CLASSES, shape=(1, 8, 8), mean=(0.3054,), std=(0.3761,),
        reader=read_digits_split,
        source="UCI optical recognition of handwritten digits, via sklearn.datasets.load_digits",
    ),
    DatasetInfo(
        name="mnist",
        summary="MNIST handwritten digits, 60,000 + 10,000 28x28 grey images",
        classes=DIGIT_CLASSES, shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,),
        reader=read_idx_split,
        files=_idx_files(
            sha256=("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
            md5=("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
                 "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637")),
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
        folders=("mnist", "MNIST/raw"),
        pad_to=(32, 32),   # LeCun et al. (1998) centre the 28x28 digits in a 32x32 field
        source="LeCun, Cortes and Burges; LeCun et al., Proc. IEEE 1998",
    ),
    DatasetInfo(
        name="fashion-mnist",
        summary="Zalando's Fashion-MNIST, 60,000 + 10,000 28x28 grey images of clothing",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
        shape=(1, 28, 28), mean=(0.2860,), std=(0.3530,),
        reader=read_idx_split,
        files=_idx_files(
            sha256=("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
            md5=("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
                 "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965")),
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        folders=("fashion-mnist", "FashionMNIST/raw"),
        pad_to=(32, 32),
        source="Xiao, Rasul and Vollgraf, arXiv:1708.07747 (MIT licence)",
    ),
]

DATASETS: Mapping[str, DatasetInfo] = {d.name: d for d in _DATASETS}


def names() -> list[str]:
    """The known data set names, sorted."""
    return sorted(DATASETS)


def info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; an unknown name lists the known ones and near matches."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), DATASETS, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise DataError(f"unknown data set {name!r}: {hint}known data sets are "
                        f"{', '.join(names())}") from None


def owner_of(algorithm: str, digest: str) -> str | None:
    """``"<set>/<file>"`` of the known file with this hash, if any (to explain a mix-up)."""
    for d in _DATASETS:
        for f in d.all_files():
            if digest == (f.sha256 if algorithm == "sha256" else f.md5):
                return f"{d.name} {f.name}"
    return None
