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

from cnnlab.data.cifar import read_cifar_split
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
class Archive:
    """One published tarball, unpacked to ``folder/``; ``layout`` says how its files are read
    (``"python"``: pickled batches; ``"binary"``: fixed-size records)."""

    name: str                  # e.g. "cifar-10-python.tar.gz"
    url: str
    md5: str                   # of the tarball, as published
    folder: str                # the top folder it unpacks to
    layout: str
    # split -> ((file, md5), ...); md5 "" where none is known: such files are checked against
    # the sha256s that download() takes from the md5-verified tarball (cnnlab.sha256)
    members: Mapping[str, tuple[tuple[str, str], ...]]


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
    archives: tuple[Archive, ...] = ()         # tarballs (CIFAR); any one layout suffices

    @property
    def embedded(self) -> bool:
        """True when the data ships with a dependency and needs no data folder."""
        return not self.files and not self.archives

    def all_files(self) -> list[FileInfo]:
        return [f for pair in self.files.values() for f in pair]


def _idx_files(sha256: tuple[str, str, str, str], md5: tuple[str, str, str, str]
               ) -> dict[str, tuple[FileInfo, FileInfo]]:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    f = [FileInfo(n, s, m) for n, s, m in zip(names, sha256, md5, strict=True)]
    return {"train": (f[0], f[1]), "test": (f[2], f[3])}


DIGIT_CLASSES = tuple(str(d) for d in range(10))

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# CIFAR-100's fine labels, in label order (alphabetical), as in its ``meta`` file
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar",
    "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile",
    "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster",
    "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)
_KRIZ = "https://www.cs.toronto.edu/~kriz/"
_CIFAR10_TRAIN = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                  "data_batch_5")

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
    DatasetInfo(
        name="cifar10",
        summary="CIFAR-10, 50,000 + 10,000 32x32 colour images in 10 classes",
        classes=CIFAR10_CLASSES, shape=(3, 32, 32),
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        reader=read_cifar_split,
        folders=("cifar10",),
        archives=(
            # per-file md5s as torchvision lists them; the publisher gives only the tarball's,
            # and for the binary batches no one publishes any
            Archive("cifar-10-python.tar.gz", _KRIZ + "cifar-10-python.tar.gz",
                    md5="c58f30108f718f92721af3b95e74349a", folder="cifar-10-batches-py",
                    layout="python", members={
                        "train": tuple(zip(_CIFAR10_TRAIN, (
                            "c99cafc152244af753f735de768cd75f", "d4bba439e000b95fd0a9bffe97cbabec",
                            "54ebc095f3ab1f0389bbae665268c751", "634d18415352ddfa80567beed471001a",
                            "482c414d41f54cd18b22e5b47cb7c3cb"), strict=True)),
                        "test": (("test_batch", "40351d587109b95175f43aff81a1287e"),)}),
            Archive("cifar-10-binary.tar.gz", _KRIZ + "cifar-10-binary.tar.gz",
                    md5="c32a1d4ab5d03f1284b67883e8d87530", folder="cifar-10-batches-bin",
                    layout="binary", members={
                        "train": tuple((f + ".bin", "") for f in _CIFAR10_TRAIN),
                        "test": (("test_batch.bin", ""),)}),
        ),
        source="Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009",
    ),
    DatasetInfo(
        name="cifar100",
        summary="CIFAR-100, 50,000 + 10,000 32x32 colour images in 100 classes (fine labels)",
        classes=CIFAR100_CLASSES, shape=(3, 32, 32),
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        reader=read_cifar_split,
        folders=("cifar100",),
        archives=(
            Archive("cifar-100-python.tar.gz", _KRIZ + "cifar-100-python.tar.gz",
                    md5="eb9058c3a382ffc7106e4002c42a8d85", folder="cifar-100-python",
                    layout="python", members={
                        "train": (("train", "16019d7e3df5f24257cddd939b257f8d"),),
                        "test": (("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),)}),
            Archive("cifar-100-binary.tar.gz", _KRIZ + "cifar-100-binary.tar.gz",
                    md5="03b5dce01913d631647c71ecec9e9cb8", folder="cifar-100-binary",
                    layout="binary", members={"train": (("train.bin", ""),),
                                              "test": (("test.bin", ""),)}),
        ),
        source="Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009",
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
