"""``load(name, split)``: a data set as tensors, sized for a model."""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cnnlab.data._download import download as fetch
from cnnlab.data.cifar import find_split, layout_dirs
from cnnlab.data.files import (
    ChecksumError,
    candidates,
    check_data_dir,
    check_not_in_the_way,
    locate,
    resolve_data_dir,
)
from cnnlab.data.registry import DatasetInfo, info, owner_of
from cnnlab.errors import DataError, ShapeError

if TYPE_CHECKING:
    from cnnlab.data.folder import LazyImages

Targets = torch.Tensor | list[torch.Tensor]   # per example: a tensor row, or a list item
SPLITS = ("train", "test")
FOLDER = "folder"   # load(FOLDER, split, data_dir=ROOT): an image folder, not a registry entry
BOX_FORMATS = ("voc", "csv")   # load(fmt, split, data_dir=ROOT): images with boxes (data.boxes)
CROPS = "crops"   # load(CROPS, split, data_dir=ROOT, size=S): R-CNN's crops (apps.proposals)
# data sets beyond images, each read by its own module (imported when used): name ->
# ("module:function", called as function(split=, data_dir=, size=, options=); what it holds)
LOADERS = {
    "mr": ("cnnlab.data.text:load_mr", "sentences"),                 # MR polarity (8.6.4)
    "text": ("cnnlab.data.text:load_text_folder", "sentences"),      # ROOT: texts per class
    "video": ("cnnlab.data.video:load_video_folder", "clips"),       # ROOT: videos (8.6.5)
}
# what a data set holds -> the size that load() takes for it: an example's shape without its
# channels (a model's input shape less C; token ids have no channel)
SIZES = {"images": (2, "(H, W)"), "clips": (3, "(T, H, W)"), "sentences": (1, "(L,)")}
# the data options of a run (TrainConfig fields of the same names) and their defaults; a
# loader uses those it understands and refuses the others when they are not at the default
DATA_OPTIONS: dict[str, Any] = {"vectors": None, "frame_stride": 1}


class ImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Examples and their targets, held as tensors: images (N, C, H, W) float32 in [0, 1],
    and likewise signals (N, C, L) and clips (N, C, T, H, W); or token ids (N, L) int64 (a
    sentence per row, 0 the padding), which take no per-channel statistics (``mean=()``,
    ``std=()``) and are not normalised.

    ``labels`` are the targets: class ids (N,) int64 for classification, any (N, ...) tensor
    (a number, an image), or a list of N tensors of their own lengths (boxes, a sentence),
    which batches keep as lists.

    Index it like any ``Dataset`` (``image, label = ds[i]``), or slice ``ds.images`` and
    ``ds.labels`` directly for speed. ``mean``/``std`` are the training split's per-channel
    statistics (at the native size) for normalising model inputs.

    A large image folder holds :class:`~cnnlab.data.folder.LazyImages` instead of a tensor
    (``lazy`` is True): indexing it reads the images from disk.

    A data set whose model needs more than its channel count (a text data set's vocabulary
    and word vectors) is a subclass that overrides :meth:`model_args`, :meth:`prepare_model`
    and :meth:`metadata`.
    """

    def __init__(self, images: torch.Tensor | LazyImages, labels: Targets, *, name: str,
                 split: str, classes: Sequence[str], mean: Sequence[float],
                 std: Sequence[float]) -> None:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else (len(labels),)
        tokens = isinstance(images, torch.Tensor) and not images.is_floating_point()
        dims_ok = images.dim() == 2 if tokens else 3 <= images.dim() <= 5
        if not dims_ok or shape[:1] != tuple(images.shape[:1]):
            raise ShapeError(f"ImageDataset needs examples (N, C, H, W) (or (N, C, L), "
                             f"(N, C, T, H, W) floats, or (N, L) token ids) and N targets "
                             f"(labels (N,), a tensor (N, ...) or a list of N tensors), got "
                             f"{tuple(images.shape)} and {shape}")
        channels = 0 if tokens else images.shape[1]
        if len(mean) != channels or len(std) != channels:
            what = "token ids take no mean/std (pass ())" if tokens else (
                f"mean/std need one value per channel ({channels})")
            raise ShapeError(f"ImageDataset: {what}, got {len(mean)} and {len(std)}")
        self.images, self.labels = images, labels
        self.name, self.split = name, split
        self.classes = tuple(classes)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    @property
    def lazy(self) -> bool:
        """True when the images stay on disk until a batch is drawn."""
        return not isinstance(self.images, torch.Tensor)

    @property
    def tokens(self) -> bool:
        """True for token ids (N, L): sentences, not pixels."""
        return isinstance(self.images, torch.Tensor) and not self.images.is_floating_point()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Channels of an example (1 for token ids: one id per position)."""
        return 1 if self.tokens else int(self.images.shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape: (C, H, W) for images, (C, T, H, W) for clips, (L,) for
        token ids."""
        return tuple(int(v) for v in self.images.shape[1:])

    @property
    def unit(self) -> str:
        """What a rate counts (``340 sentences/s``): img, clips, sentences or signals."""
        if self.tokens:
            return "sentences"
        return {2: "signals", 4: "clips"}.get(len(self.shape), "img")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        if len(self.shape) != 3:
            raise ShapeError(f"{self.name} holds examples of shape {self.shape}, not images "
                             "(C, H, W); read ds.shape")
        c, h, w = self.shape
        return c, h, w

    def model_args(self) -> dict[str, Any]:
        """Keyword arguments of :func:`cnnlab.models.create` that the data decides (besides
        ``num_classes``), JSON-ready: the trainer builds the model with them and saves them
        with it, so that the run can rebuild it."""
        return {} if self.tokens else {"in_channels": self.in_channels}

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Initialise a fresh model from the data (word vectors into its embedding); called
        once per run before any ``--init``, never on resumption. Images: nothing."""

    def metadata(self) -> dict[str, Any]:
        """JSON-ready facts the trained model needs at prediction time (a vocabulary), saved
        with its weights. Images: none."""
        return {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, Targets]:
        """A whole batch (images (n, C, H, W), labels (n,)) in one indexing: what a
        DataLoader worker calls with a batch sampler (pair it with ``collate_fn=batch_collate``,
        which keeps the batch as it is)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], take_targets(self.labels, index)

    def subset(self, index: torch.Tensor | Sequence[int] | slice) -> ImageDataset:
        """A dataset of the chosen examples (indices, a boolean mask or a slice)."""
        try:
            if not isinstance(index, slice):
                index = torch.as_tensor(index)
            chosen: torch.Tensor | LazyImages
            if isinstance(self.images, torch.Tensor):
                chosen = self.images[index]
            else:                                     # a lazy folder: still on disk
                chosen = self.images.select(index)
            labels = take_targets(self.labels, torch.arange(len(self))[index]
                                  if isinstance(self.labels, list) else index)
        except (IndexError, TypeError, ValueError, RuntimeError) as err:
            raise DataError(f"subset: cannot select those examples of {len(self)} "
                            f"({str(err).splitlines()[0]}); pass indices in 0..{len(self) - 1}, "
                            "a boolean mask of that length or a slice") from None
        part = copy.copy(self)                  # a subclass keeps its kind and its extras
        part.images, part.labels = chosen, labels
        return part

    def join(self, other: ImageDataset) -> ImageDataset:
        """This data set's examples followed by ``other``'s (its test split, for
        cross-validation), as this data set's kind, with this one's statistics. Both must
        hold examples of one shape and the same classes; lazy folders are read first."""
        if other.shape != self.shape or other.classes != self.classes:
            raise ShapeError(f"cannot join {other!r} to {self!r}: they differ in example shape "
                             "or classes; join two splits of one data set")
        images = [d.images if isinstance(d.images, torch.Tensor)
                  else d.images[torch.arange(len(d))] for d in (self, other)]
        if isinstance(self.labels, torch.Tensor) and isinstance(other.labels, torch.Tensor):
            labels: Targets = torch.cat([self.labels, other.labels])
        else:
            labels = [*take_targets(self.labels, torch.arange(len(self))),
                      *take_targets(other.labels, torch.arange(len(other)))]
        both = copy.copy(self)
        both.images, both.labels = torch.cat(images), labels
        return both

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel, on x's device; x is (N, C, ...). Token ids: x."""
        if not self.mean:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - mean) / std

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape={'x'.join(map(str, self.shape))}, classes={self.num_classes})")


def size_of(shape: Sequence[int], tokens: bool = False) -> tuple[int, ...]:
    """What :func:`load` takes as ``size`` for examples of ``shape`` (a model's input shape):
    (H, W) of images (C, H, W), (T, H, W) of clips (C, T, H, W), the length (L,) of token
    ids, which have no channel."""
    return tuple(int(v) for v in (shape if tokens else shape[1:]))


def take_targets(targets: Targets, index: torch.Tensor | slice) -> Targets:
    """The targets of the examples ``index``: a tensor's rows, or a list's items."""
    if isinstance(targets, torch.Tensor):
        return targets[index.to(targets.device) if isinstance(index, torch.Tensor) else index]
    if isinstance(index, slice):
        return targets[index]
    return [targets[i] for i in index.tolist()]


def batch_collate(batch: Any) -> Any:
    """The DataLoader ``collate_fn`` for :meth:`ImageDataset.__getitems__`: already a batch."""
    return batch


def as_size(size: int | Sequence[int], who: str = "") -> tuple[int, int]:
    """``size`` (an int or (height, width), positive) as (height, width); ``who`` prefixes
    the error."""
    pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(
        size, Sequence) and not isinstance(size, str) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                 for v in pair):
        raise ShapeError(f"{who + ': ' if who else ''}size must be a positive int or (height, "
                         f"width), got {size!r}; e.g. size=32 or size=(32, 32)")
    return pair[0], pair[1]


def resize(images: torch.Tensor, size: int | Sequence[int],
           pad_to: tuple[int, int] | None = None) -> torch.Tensor:
    """Resize (N, C, H, W) images to ``size``: zero padding around the centre when ``size``
    equals ``pad_to``, else bilinear resampling (antialiased when shrinking)."""
    h, w = as_size(size)
    in_h, in_w = images.shape[-2:]
    if (h, w) == (in_h, in_w):
        return images
    try:
        if (h, w) == pad_to and h >= in_h and w >= in_w:
            top, left = (h - in_h) // 2, (w - in_w) // 2   # 28 -> 32: 2 on each side
            return F.pad(images, (left, w - in_w - left, top, h - in_h - top))
        shrink = h < in_h or w < in_w
        out = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False,
                            antialias=shrink)
    except (RuntimeError, MemoryError):    # too large to allocate, or even to index
        n, c = images.shape[:2]
        raise ShapeError(f"cannot resize {n} images to {h}x{w}: they would take "
                         f"{n * c * h * w * 4:,} bytes as float32, more than can be allocated; "
                         "choose a smaller size") from None
    return out.clamp_(0.0, 1.0)


def _data_folder(entry: DatasetInfo, split: str, data_dir: str | os.PathLike[str] | None,
                 download: bool) -> Path:
    root, source = resolve_data_dir(data_dir)
    check_data_dir(root, source, entry.name, must_exist=not download)
    fetch_cmd = f"`cnnlab download {entry.name} --data-dir {root}`"
    if entry.archives:
        if find_split(entry, split, root) is None:
            if not download:
                check_not_in_the_way([d / n for a in entry.archives
                                      for d in layout_dirs(entry, a, root)
                                      for n, _ in a.members[split]])
                raise DataError(
                    f"{entry.name} {split} files missing: none of "
                    f"{', '.join(a.folder + '/' for a in entry.archives)} under {root} holds "
                    f"them; run {fetch_cmd} (download=True in Python), or fetch "
                    f"{entry.archives[0].url} into {root / entry.folders[0]} and run that "
                    "command (it checks the tarball's md5, then unpacks it), or point "
                    "--data-dir/CNNLAB_DATA at a copy")
            fetch(entry.name, root)
        return root
    missing = [f.name for f in entry.files[split] if locate(root, f.name, entry.folders) is None]
    if missing and download:
        fetch(entry.name, root)
    elif missing:
        check_not_in_the_way([p for m in missing for p in candidates(root, m, entry.folders)])
        looked = ", ".join(str(p.parent) for p in candidates(root, missing[0], entry.folders)[::2])
        raise DataError(
            f"{entry.name} {split} files missing: {', '.join(m + '(.gz)' for m in missing)} "
            f"(looked in {looked}); run {fetch_cmd} (download=True in Python), or fetch them "
            f"from {entry.urls[0]} into {root / entry.folders[0]}, or point "
            "--data-dir/CNNLAB_DATA at a copy")
    return root


def _check_kind(name: str, holds: str, size: object) -> None:
    """Refuse a size meant for other examples than ``name`` holds: a model of another kind
    (a text model's (L,) for clips, a video model's (T, H, W) for images...)."""
    if not isinstance(size, (tuple, list)):     # an int, or a bad size load() refuses later
        return
    for kind, (rank, layout) in SIZES.items():
        if kind != holds and len(tuple(size)) == rank:
            raise DataError(f"{name} holds {holds}, but the model takes {kind} ({layout} = "
                            f"{tuple(size)}); train a model for {holds} on it (`cnnlab "
                            f"models`), or give it data of {kind}")


def load(name: str, split: str = "train", data_dir: str | os.PathLike[str] | None = None,
         size: int | Sequence[int] | None = None, download: bool = False,
         lazy: bool | None = None, options: Mapping[str, Any] | None = None) -> ImageDataset:
    """Load a split of a data set as an :class:`ImageDataset`.

    ``name``: ``"digits"`` (embedded, no files needed), ``"mnist"`` or ``"fashion-mnist"``
    (IDX files from ``data_dir``, else ``$CNNLAB_DATA``, else ``~/.cache/cnnlab``; checked
    against the published checksums). ``size``: resize for a model, e.g. ``32`` pads MNIST's
    28x28 digits to LeNet-5's 32x32 field; other sizes are resampled bilinearly.
    ``download``: fetch missing files from the publishers first.
    ``"cifar10"``/``"cifar100"`` read the python or the binary batches; ``"folder"`` reads
    one sub-folder per class from ``data_dir`` (see :func:`load_folder`; ``lazy`` applies to
    it and to boxes alone: a large folder stays on disk). ``"voc"``/``"csv"`` read images with
    boxes from ``data_dir``, a PASCAL VOC folder or a CSV data set (see :mod:`cnnlab.data.boxes`);
    ``"crops"`` the detector's training crops cut from them (see :mod:`cnnlab.apps.proposals`).
    The names of :data:`LOADERS` read sentences (``"mr"``, ``"text"``) and clips
    (``"video"``); ``size`` is then an example's shape without its channels (clips:
    (T, H, W)) and ``options`` the run's data options (:data:`DATA_OPTIONS`: word vectors,
    frame stride).

    >>> ds = load("digits", "test", size=32)
    >>> ds
    ImageDataset('digits', split='test', n=360, shape=1x32x32, classes=10)
    >>> image, label = ds[0]
    """
    unknown = sorted(set(options or {}) - set(DATA_OPTIONS))
    if unknown:
        raise DataError(f"unknown data option(s) {', '.join(unknown)}; the data options are "
                        f"{', '.join(DATA_OPTIONS)}")
    if name in LOADERS:
        if split not in SPLITS or download:
            raise DataError(f"load({name!r}, ...) reads split 'train' or 'test' from files "
                            f"and cannot download; got split={split!r}")
        path, holds = LOADERS[name]
        module, _, function = path.partition(":")
        reader = getattr(importlib.import_module(module), function)
        shape = None if size is None else (size,) if isinstance(size, int) else tuple(size)
        _check_kind(name, holds, shape)
        ds: ImageDataset = reader(split=split, data_dir=data_dir, size=shape,
                                  options={**DATA_OPTIONS, **(options or {})})
        return ds
    _check_kind(name, "images", size)
    extra = {k: v for k, v in (options or {}).items() if v != DATA_OPTIONS[k]}
    if extra:
        raise DataError(f"{name} is a data set of images: it takes no "
                        f"{', '.join('--' + k.replace('_', '-') for k in extra)}; drop it")
    if name == FOLDER:
        from cnnlab.data.folder import load_folder  # folder.py builds on this module

        if data_dir is None or download:
            raise DataError("load('folder', ...) reads images from data_dir=ROOT (ROOT/train/"
                            "<class>/*.png, ROOT/test/<class>/...) and cannot download")
        return load_folder(data_dir, split, size=size, lazy=lazy)
    if name in BOX_FORMATS:
        from cnnlab.data.boxes import load_boxes  # boxes.py builds on this module

        if data_dir is None or download:
            raise DataError(f"load({name!r}, ...) reads images with boxes from data_dir=ROOT "
                            f"(see cnnlab.data.boxes) and cannot download")
        return load_boxes(name, data_dir, split, size=size, lazy=lazy)
    if name == CROPS:
        from cnnlab.apps.proposals import load_crops  # cut from images with boxes, by apps

        if data_dir is None or download:
            raise DataError("load('crops', ...) cuts R-CNN's training crops from the images "
                            "with boxes in data_dir=ROOT (a VOC folder or a CSV data set) and "
                            "cannot download")
        return load_crops(data_dir, split, size=size)
    entry = info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    root = None if entry.embedded else _data_folder(entry, split, data_dir, download)
    try:
        images, labels = entry.reader(entry, split, root)
    except ChecksumError as err:
        owner = owner_of(err.algorithm, err.actual)   # a mix-up rather than a corrupt file?
        if owner is None:
            raise
        raise DataError(f"{err.path} holds {owner}, not {entry.name} {split} data; point "
                        f"--data-dir at the folder that holds {entry.name}'s files") from None
    if size is not None:
        images = resize(images, size, entry.pad_to)
    return ImageDataset(images, labels, name=entry.name, split=split, classes=entry.classes,
                        mean=entry.mean, std=entry.std)
