"""``cnnlab make-data NAME --out DIR``: data sets with boxes, generated and written in the
formats a user brings (PASCAL VOC or CSV, :mod:`cnnlab.data.boxes`), so that what the tests
and benchmarks train on (8.6.2 localisation, 8.6.3 detection) goes through the user's path.

Each name is a row of :data:`GENERATORS`. The boxes rows draw square canvases:

- ``*-single`` (localisation): one object at a random position and scale, among fragments of
  other objects cut from their images (clutter, as in cluttered MNIST, Mnih et al. 2014);
- ``*-multi`` (detection): 1-5 objects of several sizes; they may overlap, but no object has
  more than half of its box inside another's (:data:`MAX_COVER`), so none is hidden.

Grey sources (digits, MNIST, Fashion-MNIST) draw ink on black: objects and fragments are
combined by their maximum, and an object's box is the extent of its ink above :data:`INK`.
CIFAR-10 objects are pasted, opaque, on noise of a random colour strewn with fragments; the
box is the pasted image. Canvas sizes, object sides and default counts are in the table
(``cnnlab make-data --help`` prints them). Training canvases take their objects and fragments
from the source's training split, test canvases from its test split.

The output holds ``images/<split>-NNNNNN.png`` (lossless), the annotations, ``classes.txt``
(the source's classes) and ``make-data.json`` (what made it). Canvas i of a split depends on
the seed, the split and i alone: the same seed gives the same bytes, and a larger ``--train``
only adds images. Everything is written into a temporary folder beside ``--out``, which is
renamed to ``--out`` at the end; an ``--out`` that holds anything is refused.

The clip rows (8.6.5) write videos: ``moving-mnist`` moves one MNIST digit through a 64x64
frame for 20 frames (Srivastava et al.'s Moving MNIST, with one digit), ``moving-digits`` one
8x8 digit scaled to 16 px through 32x32 (no files needed). The digit bounces off the edges
along one of four paths (:data:`DIRECTIONS`: horizontal, vertical, diagonal, or still: the
velocity's absolute components in pixels per frame, which a bounce keeps; the signs and
the start are random). A bounce reverses one component, so the direction of motion is told
up to the walls' reflections: its axis, 45 degrees apart, or none. The clips carry two label sets, laid out as two video folders
(:mod:`cnnlab.data.video`) of the same files, so that both go through the user's path::

    OUT/digit/train/<0-9>/train-NNNNNN.mkv        the digit: appearance alone decides
    OUT/direction/train/<path>/train-NNNNNN.mkv   the path: motion alone decides (hard links)
    OUT/digit/test/..., OUT/direction/test/..., OUT/clips.csv (every clip's labels and motion)

Clip i has digit i mod 10 and path (i div 10) mod 4, so every 40 clips hold each pair once:
the digit does not predict the path. The start is uniform over the frame and the signs of the
velocity are equally likely, a distribution the bouncing keeps (each step is a permutation of
the positions and signs), so every single frame is distributed alike whatever the path: only
motion tells the paths apart. The videos are FFV1 in Matroska (lossless, bit-exact):
``load("video", split, data_dir="OUT/direction", size=(16, 64, 64))`` reads back the frames
exactly.

>>> make_data("digits-single", "digits-boxes", seed=1, train=100, test=20)  # doctest: +SKIP
>>> load("voc", "train", data_dir="digits-boxes", size=32).labels[0]        # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cnnlab.data.boxes import IMAGES, BoxRecord, write_boxes
from cnnlab.data.datasets import BOX_FORMATS, FOLDER, SPLITS, ImageDataset, load
from cnnlab.data.files import kind
from cnnlab.data.video import encode_clip
from cnnlab.errors import CnnlabError, DataError

__all__ = ["DIRECTIONS", "GENERATORS", "INK", "LABEL_SETS", "MAX_COVER", "Canvas", "Clip",
           "Drawn", "Generator", "Motion", "Request", "add_parser", "bounce", "canvases", "clips",
           "make_data", "names"]

INK = 64              # uint8 level above which a grey object's pixel is ink (its box's extent)
MAX_COVER = 0.5       # most of an object's box that may lie inside another object's box
TRIES = 20            # draws of an object before a multi-object canvas goes without it
NOISE = 32.0          # std of a colour canvas's background noise, uint8 levels
DESCRIPTION = "make-data.json"
POOL_BYTES = 1 << 30  # an image folder's objects decoded up front up to this (uint8), else lazily
CHUNK = 2048          # images of a folder decoded at a time

# what one object of each source is, for --help
NOUNS = {"digits": ("8x8 digit", "8x8 digits"), "mnist": ("MNIST digit", "MNIST digits"),
         "fashion-mnist": ("Fashion-MNIST item", "Fashion-MNIST items"),
         "cifar10": ("CIFAR-10 image", "CIFAR-10 images")}


@dataclass(frozen=True)
class Canvas:
    """How the canvases of a boxes row are drawn."""

    source: str                  # the data set the objects come from (cnnlab.data.load)
    size: int                    # canvas side, pixels (square)
    objects: tuple[int, int]     # objects per canvas, fewest and most
    side: tuple[int, int]        # an object's side after scaling, smallest and largest
    clutter: int                 # fragments of other objects strewn on the canvas
    fragment: int                # a fragment's side, cut at the source's own scale

    def describe(self) -> str:
        lo, hi = self.objects
        one, many = NOUNS.get(self.source, (self.source, self.source))
        what = f"one {one}" if hi == 1 else f"{lo}-{hi} {many}"
        return (f"{what} ({self.side[0]}-{self.side[1]} px) on {self.size}x{self.size}, "
                f"{self.clutter} fragments")


def _write(path: Path, data: bytes) -> None:
    """One file of the temporary folder (flushed to disk all at once before the rename)."""
    path.write_bytes(data)


# the clip rows' paths: name -> (|vx|, |vy|) in pixels per frame, which bouncing keeps
DIRECTIONS: Mapping[str, tuple[int, int]] = {
    "horizontal": (2, 0), "vertical": (0, 2), "diagonal": (2, 2), "still": (0, 0)}
LABEL_SETS = ("digit", "direction")   # OUT/<label set>/<split>/<class>/ of the clip rows
CLIP_FORMATS = ("mkv",)               # FFV1 in Matroska
CLIPS_CSV = "clips.csv"


@dataclass(frozen=True)
class Motion:
    """How the clips of a clip row are drawn: one grey object moving through a black frame."""

    source: str                  # the data set the objects come from (cnnlab.data.load)
    size: int                    # frame side, pixels (square)
    side: int                    # the object's side in the frame
    frames: int                  # frames per video

    def describe(self) -> str:
        one, _ = NOUNS.get(self.source, (self.source, self.source))
        return (f"one {one} ({self.side} px) bouncing in {self.size}x{self.size} for "
                f"{self.frames} frames along {len(DIRECTIONS)} paths")


@dataclass(frozen=True)
class Request:
    """What to write: counts per split, seed, format, the source's data folder."""

    folder: Path                            # a new, empty folder to fill
    counts: Mapping[str, int]               # split -> images
    seed: int = 0
    fmt: str = BOX_FORMATS[0]
    data_dir: str | os.PathLike[str] | None = None
    progress: bool = False
    write: Callable[[Path, bytes], None] = _write   # one file: (path, bytes)


@dataclass(frozen=True)
class Generator:
    """A row of the table: a name, its defaults, and the function that writes it."""

    name: str
    train: int                              # default --train
    test: int                               # default --test
    write: Callable[[Generator, Request], None]
    formats: tuple[str, ...] = BOX_FORMATS  # --format choices, the first the default
    canvas: Canvas | None = None            # the boxes rows' drawing
    motion: Motion | None = None            # the clip rows' drawing
    about: str = ""                         # what another row writes, for --help

    @property
    def summary(self) -> str:
        what = self.canvas.describe() if self.canvas else self.motion.describe() \
            if self.motion else self.about
        return f"{what}; {self.train:,} + {self.test:,}"


class Drawn(NamedTuple):
    """One canvas: image (H, W) or (H, W, 3) uint8, boxes (k, 4) float32 pixel edges, labels
    (k,) int64 class ids of the source."""

    image: np.ndarray
    boxes: torch.Tensor
    labels: torch.Tensor


# -- drawing ----------------------------------------------------------------------------------

class _Pool:
    """A split of a source as uint8 pixels (h, w, c), decoded once (an image folder a chunk
    at a time), or on demand where that would pass ``POOL_BYTES``."""

    def __init__(self, ds: ImageDataset) -> None:
        self.ds, self.classes = ds, ds.classes
        self.channels = ds.in_channels
        self.labels = torch.as_tensor(ds.labels).tolist()
        self.pixels: np.ndarray | None = None
        if isinstance(ds.images, torch.Tensor):
            self.pixels = _uint8(ds.images)
        elif np.prod(ds.images.shape) <= POOL_BYTES:   # e.g. CIFAR-10's JPEGs: 150 MB
            self.pixels = np.concatenate([_uint8(ds.images[i:i + CHUNK])
                                          for i in range(0, len(ds), CHUNK)])

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        """Image i, (h, w, c) uint8."""
        if self.pixels is None:                    # a large folder: decode this one alone
            return _uint8(self.ds.images[i:i + 1]).squeeze(0)
        one: np.ndarray = self.pixels[i]
        return one


def _uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W, C) uint8."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _pool(source: str, split: str, data_dir: str | os.PathLike[str] | None) -> _Pool:
    """The objects of ``split``: a registry data set, or for cifar10 an image folder
    (``data_dir/train/<class>/``, e.g. the JPEG copy of CIFAR-10) kept on disk."""
    if source == "cifar10" and data_dir is not None and kind(Path(data_dir) / "train") == "dir":
        return _Pool(load(FOLDER, split, data_dir=data_dir, lazy=True))
    return _Pool(load(source, split, data_dir=data_dir))


def _scale(pixels: np.ndarray, side: int) -> np.ndarray:
    """(h, w, c) uint8 -> (side, side, c), bilinear (averaging when it shrinks: Pillow)."""
    grey = pixels.shape[2] == 1
    img = Image.fromarray(pixels[:, :, 0] if grey else pixels)
    out: np.ndarray = np.asarray(img.resize((side, side), Image.Resampling.BILINEAR))
    return out[:, :, None] if grey else out


def _extent(obj: np.ndarray, grey: bool) -> tuple[int, int, int, int] | None:
    """An object's box within its own pixels: the ink above INK (grey), else all of it."""
    if not grey:
        return 0, 0, obj.shape[1], obj.shape[0]
    ink = obj[:, :, 0] > INK
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _cover(a: Sequence[float], b: Sequence[float]) -> float:
    """The largest share of either box's area that lies inside the other."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def _paste(canvas: np.ndarray, piece: np.ndarray, y: int, x: int, grey: bool) -> None:
    h, w = piece.shape[:2]
    window = canvas[y:y + h, x:x + w]
    if grey:
        np.maximum(window, piece, out=window)       # ink on black: the brighter wins
    else:
        window[...] = piece


def _draw(canvas: Canvas, pool: _Pool, rng: np.random.Generator) -> Drawn:
    n, grey = canvas.size, pool.channels == 1
    if grey:
        image = np.zeros((n, n, 1), np.uint8)
    else:                                           # noise around a random colour
        base = rng.integers(0, 256, 3)
        image = np.clip(base + rng.normal(0.0, NOISE, (n, n, 3)), 0, 255).astype(np.uint8)
    for _ in range(canvas.clutter):
        src = pool.image(int(rng.integers(len(pool))))
        f = min(canvas.fragment, *src.shape[:2])
        top, left = (int(rng.integers(0, d - f + 1)) for d in src.shape[:2])
        y, x = (int(v) for v in rng.integers(0, n - f + 1, 2))
        _paste(image, src[top:top + f, left:left + f], y, x, grey)
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    lo, hi = canvas.objects
    for _ in range(int(rng.integers(lo, hi + 1))):
        for _ in range(TRIES):
            i = int(rng.integers(len(pool)))
            side = int(rng.integers(canvas.side[0], canvas.side[1] + 1))
            y, x = (int(v) for v in rng.integers(0, n - side + 1, 2))
            obj = _scale(pool.image(i), side)
            extent = _extent(obj, grey)
            if extent is None:
                continue
            box = (x + extent[0], y + extent[1], x + extent[2], y + extent[3])
            if any(_cover(box, b) > MAX_COVER for b in boxes):
                continue
            _paste(image, obj, y, x, grey)
            boxes.append(box)
            labels.append(pool.labels[i])
            break
    return Drawn(image[:, :, 0] if grey else image,
                 torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                 torch.tensor(labels, dtype=torch.int64))


def _rng(seed: int, split: str, i: int) -> np.random.Generator:
    """Canvas i's own stream: it depends on nothing but the seed, the split and i."""
    return np.random.default_rng([seed, SPLITS.index(split), i])


def canvases(what: str | Canvas, split: str = "train", n: int = 1, seed: int = 0,
             data_dir: str | os.PathLike[str] | None = None) -> Iterator[Drawn]:
    """The first ``n`` canvases of ``split`` of a boxes row (its name or a :class:`Canvas`),
    without writing anything: what :func:`make_data` writes, canvas for canvas."""
    canvas = what if isinstance(what, Canvas) else _boxes_row(what).canvas
    assert canvas is not None
    pool = _pool(canvas.source, split, data_dir)
    return (_draw(canvas, pool, _rng(seed, split, i)) for i in range(n))


class Clip(NamedTuple):
    """One clip: frames (T, H, W) uint8, its digit (the source's class id) and path (an index
    of :data:`DIRECTIONS`), the object's top-left corner per frame (T, 2) as (x, y), and its
    velocity (vx, vy) at the start, pixels per frame (y down)."""

    frames: np.ndarray
    digit: int
    direction: int
    positions: np.ndarray
    velocity: tuple[int, int]


class _ByClass:
    """A grey source's images, (h, w) uint8 at the clip row's side, drawn by class."""

    def __init__(self, pool: _Pool, side: int) -> None:
        if pool.channels != 1:
            raise DataError(f"clips move grey objects; {pool.ds.name} has {pool.channels} "
                            "channels")
        self.pool, self.side, self.classes = pool, side, pool.classes
        labels = np.asarray(pool.labels)
        self.members = [np.flatnonzero(labels == c) for c in range(len(pool.classes))]
        empty = [pool.classes[c] for c, m in enumerate(self.members) if not len(m)]
        if empty:
            raise DataError(f"the {pool.ds.name} {pool.ds.split} split has no image of class "
                            f"{empty[0]}; fix the source")

    def image(self, label: int, rng: np.random.Generator) -> np.ndarray:
        i = int(self.members[label][int(rng.integers(len(self.members[label])))])
        scaled = self.pool.image(i)
        if scaled.shape[0] != self.side:
            scaled = _scale(scaled, self.side)
        return scaled[:, :, 0]


def _move(motion: Motion, source: _ByClass, i: int, rng: np.random.Generator) -> Clip:
    """Clip i: digit i mod 10, path (i div 10) mod 4; image, signs and start from ``rng``."""
    digit = i % len(source.classes)
    direction = (i // len(source.classes)) % len(DIRECTIONS)
    obj = source.image(digit, rng)
    room = motion.size - motion.side                        # top-left corner in 0..room
    speed = np.array(list(DIRECTIONS.values())[direction])
    velocity = speed * rng.choice([-1, 1], 2)
    start = (int(velocity[0]), int(velocity[1]))
    pos = rng.integers(0, room + 1, 2)                      # (x, y)
    frames = np.zeros((motion.frames, motion.size, motion.size), np.uint8)
    positions = np.zeros((motion.frames, 2), np.int64)
    for t in range(motion.frames):
        positions[t] = pos
        x, y = (int(v) for v in pos)
        window = frames[t, y:y + motion.side, x:x + motion.side]
        np.maximum(window, obj, out=window)
        for axis in range(2):
            pos[axis], velocity[axis] = bounce(int(pos[axis]), int(velocity[axis]), room)
    return Clip(frames, digit, direction, positions, start)


def bounce(x: int, v: int, room: int) -> tuple[int, int]:
    """One step of a coordinate ``x`` in 0..room at velocity ``v`` (|v| <= room), reflected
    at the edges: the new (x, v). The walls lie half a pixel outside 0 and room (-1 -> 0,
    -2 -> 1), which makes a step a permutation of the states (x, v): the shift of a circle of
    2(room + 1) places folded in two. So a uniform start with equally likely signs stays so at
    every frame."""
    x += v
    if x < 0:
        return -x - 1, -v
    if x > room:
        return 2 * room + 1 - x, -v
    return x, v


def _clip_row(name: str) -> Generator:
    row = _row(name)
    if row.motion is None:
        raise CnnlabError(f"{name} draws no clips; pick one of "
                          f"{', '.join(n for n, g in GENERATORS.items() if g.motion)}")
    return row


def clips(what: str | Motion, split: str = "train", n: int = 1, seed: int = 0,
          data_dir: str | os.PathLike[str] | None = None) -> Iterator[Clip]:
    """The first ``n`` clips of ``split`` of a clip row (its name or a :class:`Motion`),
    without writing anything: what :func:`make_data` writes, clip for clip."""
    motion = what if isinstance(what, Motion) else _clip_row(what).motion
    assert motion is not None
    source = _ByClass(_pool(motion.source, split, data_dir), motion.side)
    return (_move(motion, source, i, _rng(seed, split, i)) for i in range(n))


# -- writing ----------------------------------------------------------------------------------

def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def write_canvases(row: Generator, request: Request) -> None:
    """The boxes rows' writer: the images, then the annotations of each split, in
    ``request.fmt``."""
    canvas = row.canvas
    assert canvas is not None
    (request.folder / IMAGES).mkdir()
    classes: tuple[str, ...] | None = None
    with tqdm(total=sum(request.counts.values()), desc=f"make-data {row.name}", unit="image",
              disable=None if request.progress else True, leave=False) as bar:
        for split, count in request.counts.items():
            pool = _pool(canvas.source, split, request.data_dir)
            if classes is not None and pool.classes != classes:
                raise DataError(f"the {canvas.source} test split has other classes than its "
                                f"training split ({', '.join(pool.classes)}); fix the source")
            classes = pool.classes
            records = []
            for i in range(count):
                drawn = _draw(canvas, pool, _rng(request.seed, split, i))
                path = request.folder / IMAGES / f"{split}-{i:06d}.png"
                request.write(path, _png(drawn.image))
                records.append(BoxRecord(path, canvas.size, canvas.size, drawn.boxes,
                                         drawn.labels))
                bar.update()
            write_boxes(request.fmt, request.folder, split, records, classes,
                        write=request.write)


def _link(source: Path, target: Path, request: Request) -> None:
    """``target`` as a hard link to ``source`` (the same clip under its other label), or a
    copy where the file system has no hard links."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        request.write(target, source.read_bytes())


def write_clips(row: Generator, request: Request) -> None:
    """The clip rows' writer: each clip once under its digit, linked under its path, and
    ``clips.csv``."""
    motion = row.motion
    assert motion is not None
    lines = ["split,file,digit,direction,x,y,vx,vy"]
    names = list(DIRECTIONS)
    with tqdm(total=sum(request.counts.values()), desc=f"make-data {row.name}", unit="clip",
              disable=None if request.progress else True, leave=False) as bar:
        for split, count in request.counts.items():
            source = _ByClass(_pool(motion.source, split, request.data_dir), motion.side)
            for i in range(count):
                clip = _move(motion, source, i, _rng(request.seed, split, i))
                file = f"{split}-{i:06d}.mkv"
                digit = source.classes[clip.digit]
                path = request.folder / LABEL_SETS[0] / split / digit / file
                path.parent.mkdir(parents=True, exist_ok=True)
                request.write(path, encode_clip(clip.frames))
                _link(path, request.folder / LABEL_SETS[1] / split / names[clip.direction] /
                      file, request)
                (x, y), (vx, vy) = clip.positions[0], clip.velocity
                lines.append(f"{split},{file},{digit},{names[clip.direction]},{x},{y},{vx},{vy}")
                bar.update()
    request.write(request.folder / CLIPS_CSV, ("\n".join(lines) + "\n").encode())


GENERATORS: Mapping[str, Generator] = {g.name: g for g in (
    Generator("digits-single", 1000, 200, write_canvases, canvas=Canvas(
        "digits", size=32, objects=(1, 1), side=(8, 16), clutter=3, fragment=3)),
    Generator("digits-multi", 1000, 200, write_canvases, canvas=Canvas(
        "digits", size=48, objects=(1, 5), side=(8, 16), clutter=3, fragment=3)),
    Generator("mnist-single", 5000, 1000, write_canvases, canvas=Canvas(
        "mnist", size=64, objects=(1, 1), side=(20, 40), clutter=8, fragment=8)),
    Generator("mnist-multi", 5000, 1000, write_canvases, canvas=Canvas(
        "mnist", size=96, objects=(1, 5), side=(16, 40), clutter=8, fragment=8)),
    Generator("fashion-mnist-single", 5000, 1000, write_canvases, canvas=Canvas(
        "fashion-mnist", size=64, objects=(1, 1), side=(20, 40), clutter=8, fragment=8)),
    Generator("fashion-mnist-multi", 5000, 1000, write_canvases, canvas=Canvas(
        "fashion-mnist", size=96, objects=(1, 5), side=(16, 40), clutter=8, fragment=8)),
    Generator("cifar10-single", 5000, 1000, write_canvases, canvas=Canvas(
        "cifar10", size=64, objects=(1, 1), side=(24, 48), clutter=12, fragment=8)),
    Generator("cifar10-multi", 5000, 1000, write_canvases, canvas=Canvas(
        "cifar10", size=128, objects=(1, 5), side=(24, 48), clutter=24, fragment=8)),
    Generator("moving-digits", 1000, 200, write_clips, formats=CLIP_FORMATS, motion=Motion(
        "digits", size=32, side=16, frames=20)),
    Generator("moving-mnist", 5000, 1000, write_clips, formats=CLIP_FORMATS, motion=Motion(
        "mnist", size=64, side=28, frames=20)),
)}


def names() -> list[str]:
    """The generators' names, in the table's order."""
    return list(GENERATORS)


def _row(name: str) -> Generator:
    try:
        return GENERATORS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name), GENERATORS, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise CnnlabError(f"unknown generated data set {name!r}: {hint}known ones are "
                          f"{', '.join(GENERATORS)}") from None


def _boxes_row(name: str) -> Generator:
    row = _row(name)
    if row.canvas is None:
        raise CnnlabError(f"{name} draws no canvases with boxes; pick one of "
                          f"{', '.join(n for n, g in GENERATORS.items() if g.canvas)}")
    return row


def _check_out(out: Path) -> None:
    found = kind(out)
    if found in ("file", "other"):
        raise CnnlabError(f"--out {str(out)!r} is a file, not a folder; pick a new folder")
    if found == "dir" and any(out.iterdir()):
        raise CnnlabError(f"--out {str(out)!r} already holds files, and make-data writes only "
                          "into a new (or empty) folder; pick another --out")


def make_data(name: str, out: str | os.PathLike[str], *, seed: int = 0, fmt: str | None = None,
              train: int | None = None, test: int | None = None,
              data_dir: str | os.PathLike[str] | None = None,
              progress: bool = False) -> Path:
    """Generate data set ``name`` (a row of :data:`GENERATORS`) into the new folder ``out``:
    ``train``/``test`` images (default: the row's), written as ``fmt`` (default: the row's
    first, voc), from the source's files in ``data_dir``. Returns ``out``."""
    row = _row(name)
    fmt = row.formats[0] if fmt is None else fmt
    if fmt not in row.formats:
        raise CnnlabError(f"--format {fmt}: {name} is written as {' or '.join(row.formats)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CnnlabError(f"--seed {seed!r}: give a whole number >= 0")
    counts = {"train": row.train if train is None else train,
              "test": row.test if test is None else test}
    for split, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise CnnlabError(f"--{split} {count!r}: give at least 1 image (a data set has both "
                              "splits)")
    path = Path(out).expanduser()
    _check_out(path)
    from cnnlab.train.run import staged_folder  # the run folder's atomic writing

    with staged_folder(path, "the data set") as folder:
        request = Request(folder, counts, seed, fmt, data_dir, progress)
        row.write(row, request)
        facts: dict[str, Any] = {"name": name, "seed": seed, "format": fmt, **counts}
        if row.canvas is not None:
            facts["canvas"] = asdict(row.canvas)
        if row.motion is not None:
            facts["motion"] = asdict(row.motion)
            facts["directions"] = {k: list(v) for k, v in DIRECTIONS.items()}
        import cnnlab

        facts["cnnlab"] = cnnlab.__version__
        request.write(folder / DESCRIPTION, (json.dumps(facts, indent=2) + "\n").encode())
    return path


# -- the command ------------------------------------------------------------------------------

def _epilog() -> str:
    width = max(map(len, GENERATORS))
    rows = "\n".join(f"  {n:<{width}}  {g.summary}" for n, g in GENERATORS.items())
    return (f"names (objects, their side, the canvas and its clutter, or the clip's frame; "
            f"default --train + --test images or clips):\n{rows}\n\n"
            "examples:\n"
            "  cnnlab make-data digits-single --out data/digits-single --seed 0\n"
            "  cnnlab make-data mnist-single --data-dir ../shared/data --out data/mnist-single\n"
            "  cnnlab make-data cifar10-single --data-dir ../shared/data/cifar10-jpeg "
            "--format csv --out data/cifar\n"
            "  cnnlab train lenet5_modern --task localize --data voc --data-dir "
            "data/mnist-single\n"
            "  cnnlab make-data moving-mnist --data-dir ../shared/data --out data/mm --seed 0\n"
            "  cnnlab train c3d_mnist --data video --data-dir data/mm/direction")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``make-data`` to ``cnnlab``'s subcommands (``parser.add_subparsers()``)."""
    formats = tuple(dict.fromkeys(f for g in GENERATORS.values() for f in g.formats))
    p: argparse.ArgumentParser = subparsers.add_parser(
        "make-data", help="generate a data set with boxes (VOC or CSV) for localisation and "
        "detection (8.6.2, 8.6.3), or of video clips (8.6.5)",
        description="Write a generated data set into a new folder --out: canvases with one "
        "object among clutter (NAME-single, for localisation) or 1-5 objects (NAME-multi, for "
        "detection), as PNGs with PASCAL VOC annotations or a CSV (file,xmin,ymin,xmax,ymax,"
        "class), read back by --data voc|csv --data-dir DIR; or clips of a digit bouncing in a "
        "frame (moving-*), as lossless videos in two class-folder trees, DIR/digit and "
        "DIR/direction, read back by --data video --data-dir DIR/digit. The same --seed gives "
        "the same bytes.", epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=names(), metavar="NAME", help="what to generate (below)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the new folder to write (refused if it holds anything)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--format", choices=formats, help=f"annotation format of the boxes rows "
                   f"(default {formats[0]}): VOC XML per image, or ROOT/train.csv and test.csv; "
                   "the clip rows write mkv (FFV1) alone")
    p.add_argument("--train", type=int, metavar="N", help="training images (default: the "
                   "name's, below)")
    p.add_argument("--test", type=int, metavar="N", help="test images (default: the name's)")
    p.add_argument("--data-dir", help="where the source's files are: for mnist and "
                   "fashion-mnist the folder `cnnlab train --data mnist` reads (e.g. "
                   "../shared/data); for cifar10 the folder of CIFAR-10's batches, or an image "
                   "folder ROOT/train/<class>/ (e.g. ../shared/data/cifar10-jpeg); digits needs "
                   "none")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``cnnlab make-data``."""
    out = make_data(args.name, args.out, seed=args.seed, fmt=args.format, train=args.train,
                    test=args.test, data_dir=args.data_dir, progress=not args.quiet)
    facts = json.loads((out / DESCRIPTION).read_text())
    if "motion" in facts:
        print(f"{args.name}: {facts['train']:,} training and {facts['test']:,} test clips "
              f"({facts['format']}, FFV1) written to {out}; read them with --data video "
              f"--data-dir {out / LABEL_SETS[0]} (digit labels) or {out / LABEL_SETS[1]} "
              "(direction labels)")
        return 0
    print(f"{args.name}: {facts['train']:,} training and {facts['test']:,} test images "
          f"({facts['format']}) written to {out}; read them with --data {facts['format']} "
          f"--data-dir {out}")
    return 0
