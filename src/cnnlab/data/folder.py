"""Image folders: one sub-folder per class, any image size and mode, read with Pillow.

Layout (torchvision's ``ImageFolder``, with the split as the top folder)::

    ROOT/train/<class>/<image>.png|jpg|...
    ROOT/test/<class>/<image>...

The classes are the sub-folders of ``ROOT/train``, sorted by name; label ``i`` is the
``i``-th. ``ROOT/test`` may lack classes but may not add any. There is no random split of a
single folder: a fixed split on disk is what a user can inspect and what a paper reports.
Files whose suffix is not an image type, and hidden files, are skipped.

A folder whose decoded images would take more than ``LAZY_BYTES`` (2 GiB as float32) is not
read into memory: its :class:`ImageDataset` holds :class:`LazyImages`, which decode the images
a batch needs when it is drawn (by DataLoader workers when a GPU trains), and its ``mean``/``std``
come from an evenly spaced sample of ``STATS_SAMPLE`` training images. ``lazy=True``/``False``
forces either way.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.data.datasets import SPLITS, ImageDataset, as_size
from cnnlab.data.files import as_path, kind
from cnnlab.errors import DataError, ShapeError

SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                      ".ppm", ".pgm", ".pbm"})
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
MODES = ("RGB", "L")


def check_channels(img: Image.Image, where: str, channels: int) -> None:
    """Refuse an opened image whose kind (grey or colour) is not the ``channels`` a run's
    model takes, naming the file and the conversion that fixes it."""
    found = 1 if img.mode in GREY_MODES else 3
    if found != channels:
        kind = {1: "grey (1 channel)", 3: "colour (3 channels)"}
        raise ShapeError(f"image {where!r} is {kind[found]} ({img.mode}) but the run's model "
                         f"takes {kind.get(channels, f'{channels}-channel')} images; convert it "
                         f"(e.g. Pillow's .convert({'L' if channels == 1 else 'RGB'!r}))")


def scan(split_dir: Path, suffixes: frozenset[str] = SUFFIXES, what: str = "image"
         ) -> tuple[list[str], list[tuple[Path, str]]]:
    """The class names (sorted sub-folders) and every (file path, class name), in order: the
    files of ``what`` (images, videos, texts) are those with one of ``suffixes``."""
    if kind(split_dir) != "dir":
        raise DataError(f"{what} folder {split_dir} does not exist; a {what} folder data set "
                        "needs ROOT/train/<class>/ and ROOT/test/<class>/ sub-folders")
    try:
        classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir()
                         and not d.name.startswith("."))
        if not classes:
            raise DataError(f"{split_dir} has no class sub-folders; put each class's {what} "
                            f"files in {split_dir}/<class name>/")
        items = [(p, c) for c in classes for p in sorted((split_dir / c).iterdir())
                 if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes]
    except PermissionError as err:
        raise DataError(f"cannot read {err.filename}: permission denied; make the {what} folder "
                        f"readable (chmod -R u+rX '{split_dir}') or copy it somewhere "
                        "readable") from None
    except OSError as err:
        raise DataError(f"cannot read {err.filename or split_dir}: {err.strerror or err}; "
                        f"check the {what} folder") from None
    return classes, items


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:  # leaving closes the file; the loaded pixels stay
            img.load()
        return img
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path} ({err}); delete or replace the file") from None


LAZY_BYTES = 2 << 30        # decoded size (float32) above which a folder stays on disk
STATS_SAMPLE = 2048         # training images behind a lazy folder's mean and std


def _read(paths: Sequence[Path], mode: str, size: tuple[int, int] | None,
          resize: bool = True) -> torch.Tensor:
    """Decode ``paths`` into an (N, C, H, W) float tensor in [0, 1]. ``size`` (H, W): resize
    to it, or with ``resize=False`` require it; None: every image as large as the first."""
    arrays, first = [], None
    for path in paths:
        img = _open(path)
        try:
            if img.mode != mode:
                img = img.convert("L" if img.mode in GREY_MODES else "RGB").convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                if not resize:
                    raise DataError(f"{path} is {img.size[0]}x{img.size[1]} but the data set's "
                                    f"images are {size[1]}x{size[0]} (width x height); pass "
                                    "size= to resize every image, e.g. size=32")
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        except (OSError, ValueError) as err:   # a mode Pillow cannot convert, a cut file
            raise DataError(f"cannot convert image {path} (mode {img.mode}) to {mode} ({err}); "
                            "delete or replace the file") from None
        if first is None:
            first = (path, img.size)
        elif img.size != first[1]:
            raise DataError(f"{path} is {img.size[0]}x{img.size[1]} but {first[0]} is "
                            f"{first[1][0]}x{first[1][1]} (width x height); pass size= to "
                            "resize every image, e.g. size=32")
        arrays.append(np.asarray(img, dtype=np.uint8))
    if not arrays:
        if size is None:
            raise DataError("no images to read")
        return torch.zeros(0, 1 if mode == "L" else 3, *size)
    x = torch.from_numpy(np.stack(arrays))                       # N x H x W (x 3)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # N x C x H x W
    return x.float().div_(255).contiguous()


class LazyImages:
    """The images of a folder too large for memory, read from disk when indexed.

    It stands in for an :class:`ImageDataset`'s (N, C, H, W) tensor: ``shape``, ``dim()``,
    ``len()``; ``x[i]`` decodes one image (C, H, W), ``x[indices]`` or ``x[a:b:step]`` a
    batch (n, C, H, W); :meth:`select` picks images without reading them. Pickles as paths,
    so DataLoader workers decode in parallel.
    """

    def __init__(self, paths: Sequence[Path], mode: str, size: tuple[int, int],
                 resize: bool = True) -> None:
        self.paths, self.mode, self.size, self.resize = tuple(paths), mode, size, resize

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 1 if self.mode == "L" else 3, *self.size))

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.paths)

    def _positions(self, index: int | slice | Sequence[int] | torch.Tensor) -> list[int]:
        if isinstance(index, slice):
            return list(range(len(self.paths)))[index]
        t = torch.as_tensor(index)
        if t.dtype == torch.bool:
            t = t.nonzero().flatten()
        return [int(i) for i in t.flatten().tolist()]

    def select(self, index: slice | Sequence[int] | torch.Tensor) -> LazyImages:
        """The chosen images (a slice, indices or a boolean mask), still on disk."""
        return LazyImages([self.paths[i] for i in self._positions(index)], self.mode,
                          self.size, self.resize)

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor) -> torch.Tensor:
        if isinstance(index, bool):
            raise TypeError("LazyImages take an int, a slice, indices or a mask, not a bool")
        one = _as_int(index)
        if one is not None:
            return _read([self.paths[one]], self.mode, self.size, self.resize)[0]
        return _read([self.paths[i] for i in self._positions(index)], self.mode, self.size,
                     self.resize)

    def __repr__(self) -> str:
        c, h, w = self.shape[1:]
        return f"LazyImages(n={len(self)}, shape={c}x{h}x{w}, first={self.paths[:1]})"


def _as_int(index: object) -> int | None:
    """``index`` as one position (an int, a numpy integer, a 0-d tensor), else None."""
    if isinstance(index, torch.Tensor):
        return int(index.item()) if index.dim() == 0 and index.dtype != torch.bool else None
    if isinstance(index, np.ndarray):
        return int(index.item()) if index.ndim == 0 and index.dtype != np.bool_ else None
    try:
        return operator.index(index)  # type: ignore[arg-type]
    except TypeError:
        return None


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the header."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path} ({err}); delete or replace the file") from None


def _auto_mode(items: Sequence[tuple[Path, str]]) -> str:
    """"L" when every image is greyscale (read from the headers only), else "RGB"."""
    for path, _ in items:
        try:
            with Image.open(path) as img:
                if img.mode not in GREY_MODES:
                    return "RGB"
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image {path} ({err}); delete or replace the "
                            "file") from None
    return "L"


def load_folder(root: str | os.PathLike[str], split: str = "train",
                size: int | Sequence[int] | None = None, mode: str | None = None,
                lazy: bool | None = None) -> ImageDataset:
    """Load ``ROOT/<split>/<class>/*`` as an :class:`ImageDataset`.

    ``size``: resize every image (bilinear) to ``size`` (int or (height, width)); without it
    every image must already have the same size. ``mode``: ``"RGB"`` or ``"L"``; by default
    ``"L"`` when every training image is greyscale, else ``"RGB"``. ``mean``/``std`` are
    computed over the training split at the loaded size, so loading ``"test"`` also reads
    ``ROOT/train``. ``lazy``: keep the images on disk and decode them when a batch is drawn
    (:class:`LazyImages`; statistics from a sample); None: when the training split's decoded
    images would exceed ``LAZY_BYTES`` (both splits go the same way).

    >>> load_folder("pets", "train", size=64).classes      # doctest: +SKIP
    ('cat', 'dog')
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    if mode is not None and mode not in MODES:
        raise DataError(f"mode must be 'RGB' or 'L' (or None to choose), got {mode!r}")
    hw = None if size is None else as_size(size)
    base = as_path(root, "root")
    if kind(base) in ("file", "other"):
        raise DataError(f"image folder {base} is a file, not a folder; pass the folder that "
                        "holds train/<class>/ and test/<class>/ (unpack an archive first)")
    classes, train_items = scan(base / "train")
    empty = [c for c in classes if not any(c == k for _, k in train_items)]
    if empty:
        raise DataError(f"class folder {base / 'train' / empty[0]} holds no images "
                        f"(suffixes {', '.join(sorted(SUFFIXES))}); add some or remove it")
    mode = mode or _auto_mode(train_items)
    if split == "test":
        test_classes, test_items = scan(base / "test")
        extra = sorted(set(test_classes) - set(classes))
        if extra:
            raise DataError(f"{base / 'test'} has classes not in {base / 'train'}: "
                            f"{', '.join(extra)}; every test class needs training images")
        if not test_items:
            raise DataError(f"{base / 'test'} holds no images")
    items = train_items if split == "train" else test_items
    shape = hw or _image_size(train_items[0][0])
    if lazy is None:          # by the training split, so both splits go the same way
        lazy = len(train_items) * (1 if mode == "L" else 3) * shape[0] * shape[1] * 4 > LAZY_BYTES
    if lazy:
        return _lazy_folder(classes, train_items, items, split, mode, shape, hw is not None)
    train_x = _read([p for p, _ in train_items], mode, hw)
    mean, std = train_x.mean(dim=(0, 2, 3)), train_x.std(dim=(0, 2, 3), correction=0)
    if split == "train":
        x, names = train_x, [c for _, c in train_items]
    else:
        x = _read([p for p, _ in test_items], mode, hw)
        if x.shape[-2:] != train_x.shape[-2:]:
            raise DataError(f"{base / 'test'} images are {x.shape[-1]}x{x.shape[-2]} but "
                            f"training images are {train_x.shape[-1]}x{train_x.shape[-2]} "
                            "(width x height); pass size= to resize both")
        names = [c for _, c in test_items]
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[c] for c in names], dtype=torch.int64)
    return ImageDataset(x, labels, name="folder", split=split, classes=classes,
                        mean=mean.tolist(), std=std.clamp_min(1e-6).tolist())


def _lazy_folder(classes: list[str], train_items: Sequence[tuple[Path, str]],
                 items: Sequence[tuple[Path, str]], split: str, mode: str,
                 size: tuple[int, int], resize: bool) -> ImageDataset:
    """The split as :class:`LazyImages`; mean and std from a sample of the training images."""
    train = LazyImages([p for p, _ in train_items], mode, size, resize)
    sample = train[::max(1, math.ceil(len(train) / STATS_SAMPLE))]
    mean, std = sample.mean(dim=(0, 2, 3)), sample.std(dim=(0, 2, 3), correction=0)
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[c] for _, c in items], dtype=torch.int64)
    images = train if split == "train" else LazyImages([p for p, _ in items], mode, size, resize)
    return ImageDataset(images, labels, name="folder", split=split, classes=classes,
                        mean=mean.tolist(), std=std.clamp_min(1e-6).tolist())
