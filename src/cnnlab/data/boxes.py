"""Data sets with boxes (8.6.2, 8.6.3) in the formats they come in: PASCAL VOC folders and a CSV.

Boxes are ``(x0, y0, x1, y1)`` in continuous pixel-edge coordinates: a box over pixel columns
a..b (0-based, inclusive) has x0 = a and x1 = b + 1. Within its image: 0 <= x0 < x1 <= width
(and y alike); a box outside or of zero area is an error, as is every other flaw below.

**VOC** (``fmt="voc"``)::

    ROOT/JPEGImages/<stem>.jpg|.jpeg|.png      (or ROOT/images/)
    ROOT/Annotations/<stem>.xml                size/width, size/height; per object: name,
                                               bndbox/xmin ymin xmax ymax (1-based, inclusive)
    ROOT/ImageSets/Main/train.txt, test.txt    the stems of each split, one per line
    ROOT/classes.txt                           optional: one class name per line

The XML's corners are VOC's 1-based inclusive pixels: x0 = xmin - 1, x1 = xmax. An image is
found by its annotation's stem (the ``filename`` element is not used), and its size must be
the one the XML states. Split ``test`` reads ``val.txt`` where there is no ``test.txt`` (VOC
2012 publishes no test annotations); a split with no list is an error that says how to write
one. Objects marked ``difficult`` are skipped, as VOC's evaluation ignores them
(``difficult=True`` keeps them as ordinary objects). The XML is parsed by the standard
library's expat, which since 2.4 refuses entity-expansion bombs and never fetches anything.

**CSV** (``fmt="csv"``): ``ROOT/train.csv`` and ``ROOT/test.csv``, header
``file,xmin,ymin,xmax,ymax,class``, one row per box in the same pixel-edge coordinates as the
tensors (integers or decimals), ``file`` relative to ROOT (cnnlab writes ``images/...``). An
image's rows may be anywhere in the file; a row ``file,,,,,`` is an image with no object.

Classes: ``ROOT/classes.txt`` fixes their order (class id i is line i); without it they are the
sorted names of both splits' annotations (so train and test agree, but a new name would
shift the ids: write classes.txt to keep them). Channels: one when every training image is
greyscale, else three (a grey image in a colour set is replicated), as for image folders.

>>> ds = load_boxes("voc", "shapes", "train", size=64)       # doctest: +SKIP
>>> ds.labels[0]                     # (k, 5): class id, then the box normalised to [0, 1]
tensor([[2.0000, 0.1250, 0.2500, 0.5000, 0.7500]])
"""

from __future__ import annotations

import csv
import io
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from cnnlab.data.datasets import BOX_FORMATS, SPLITS, ImageDataset, as_size
from cnnlab.data.files import as_path, kind, read_file
from cnnlab.data.folder import (
    LAZY_BYTES,
    MODES,
    STATS_SAMPLE,
    LazyImages,
    _auto_mode,
    _image_size,
    _read,
)
from cnnlab.errors import DataError

__all__ = ["BOX_FORMATS", "CLASSES_FILE", "CSV_HEADER", "BoxRecord", "load_boxes", "read_boxes",
           "write_boxes"]

CLASSES_FILE = "classes.txt"
CSV_HEADER = ("file", "xmin", "ymin", "xmax", "ymax", "class")
VOC_IMAGES = ("JPEGImages", "images")            # where a VOC folder's images may be
VOC_SUFFIXES = (".jpg", ".jpeg", ".png")
VOC_LISTS = {"train": ("train",), "test": ("test", "val")}   # ImageSets/Main/<name>.txt, in order
IMAGES = "images"                                # where write_boxes expects new images

Writer = Callable[[Path, bytes], None]


class BoxRecord(NamedTuple):
    """One annotated image: its file and size, boxes (k, 4) float32 in pixels, labels (k,)."""

    path: Path
    width: int
    height: int
    boxes: torch.Tensor
    labels: torch.Tensor


@dataclass
class _Raw:
    """An image and its objects as the annotation names them, before class ids are known."""

    path: Path
    width: int
    height: int
    boxes: list[tuple[float, float, float, float]]
    names: list[str]
    where: list[str]           # per object, where it was written (for a class error)


def _check_format(fmt: str) -> None:
    if fmt not in BOX_FORMATS:
        raise DataError(f"unknown box format {fmt!r}: use {' or '.join(map(repr, BOX_FORMATS))}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")


def _check_box(box: Sequence[float], width: int, height: int, where: str, shown: str,
               fix: str) -> None:
    """Refuse a box that is not finite, has zero area, or leaves its ``width`` x ``height``
    image; ``shown`` is the box as the file writes it."""
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        raise DataError(f"{where}: box {shown} is not four finite numbers; {fix}")
    if x1 <= x0 or y1 <= y0:
        raise DataError(f"{where}: box {shown} has zero area (it needs x0 < x1 and y0 < y1); "
                        f"{fix}")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise DataError(f"{where}: box {shown} lies outside its {width}x{height} image; {fix}")


def _text(path: Path, fix: str) -> str:
    """A list's or table's text (UTF-8, a byte-order mark dropped); empty is allowed."""
    try:
        data = read_file(path, fix) if path.stat().st_size else b""
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it "
                        "as UTF-8") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}; {fix}") from None


def _number(text: str | None, where: str, field: str) -> float:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: {field} is {text!r}, not a number; write a number there")
    return value


# -- VOC --------------------------------------------------------------------------------------

def _voc_split(root: Path, split: str, required: bool) -> tuple[Path, list[str]] | None:
    """The split list's path and its stems; None when it is absent and not ``required``."""
    folder = root / "ImageSets" / "Main"
    found = next((folder / f"{n}.txt" for n in VOC_LISTS[split]
                  if kind(folder / f"{n}.txt") == "file"), None)
    if found is None:
        if not required:
            return None
        if kind(root) != "dir":
            raise DataError(f"VOC folder {root} does not exist; pass the folder that holds "
                            "Annotations/, JPEGImages/ (or images/) and ImageSets/Main/")
        raise DataError(f"{folder / (split + '.txt')} is missing: a VOC folder lists the stems "
                        f"of its {split} images there, one per line (000005 for "
                        "Annotations/000005.xml); write that list")
    fix = "fix the list or write it again"
    text = _text(found, fix)
    stems: list[str] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()                 # VOC's per-class lists add a column: keep the stem
        if not words:
            continue
        if words[0] in seen:
            raise DataError(f"{found} lists {words[0]!r} twice (lines {seen[words[0]]} and {n}); "
                            "remove one")
        seen[words[0]] = n
        stems.append(words[0])
    if not stems:
        raise DataError(f"{found} lists no images: the {split} split is empty; list the stems "
                        "of its images, one per line")
    return found, stems


def _voc_image(root: Path, stem: str, xml: Path, listed: Path) -> Path:
    for folder in VOC_IMAGES:
        for suffix in (*VOC_SUFFIXES, *(s.upper() for s in VOC_SUFFIXES)):
            path = root / folder / f"{stem}{suffix}"
            if kind(path) == "file":
                return path
    raise DataError(f"{xml}: its image {stem}.jpg/.jpeg/.png is in neither {root / VOC_IMAGES[0]} "
                    f"nor {root / VOC_IMAGES[1]}; add the image, or remove {stem} from {listed}")


def _field(node: ET.Element, path: str, where: str, xml: Path) -> str:
    found = node.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise DataError(f"{where} has no {path}; add <{path.replace('/', '><')}> to {xml.name}, "
                        "or write the annotation again")
    return found.text.strip()


def _read_voc_xml(root: Path, stem: str, listed: Path, difficult: bool) -> _Raw:
    xml = root / "Annotations" / f"{stem}.xml"
    if kind(xml) != "file":
        raise DataError(f"{xml} is missing, but {listed} lists {stem!r}; add the annotation, or "
                        "remove that line")
    fix = "fix the annotation or write it again"
    try:
        tree = ET.fromstring(read_file(xml, fix))
    except ET.ParseError as err:
        raise DataError(f"{xml} is not valid XML ({err}); {fix}") from None
    if tree.tag != "annotation":
        raise DataError(f"{xml}: the top element is <{tree.tag}>, not VOC's <annotation>; {fix}")
    width = _number(_field(tree, "size/width", str(xml), xml), str(xml), "size/width")
    height = _number(_field(tree, "size/height", str(xml), xml), str(xml), "size/height")
    path = _voc_image(root, stem, xml, listed)
    h, w = _image_size(path)
    if (width, height) != (w, h):
        raise DataError(f"{xml} gives the size {width:g}x{height:g} but {path} is {w}x{h} "
                        "(width x height); correct size/width and size/height")
    raw = _Raw(path, w, h, [], [], [])
    for j, obj in enumerate(tree.findall("object"), 1):
        where = f"{xml} object {j}"
        name = _field(obj, "name", where, xml)
        hard = obj.find("difficult")
        if not difficult and hard is not None and (hard.text or "").strip() == "1":
            continue
        corners = [_number(_field(obj, f"bndbox/{k}", where, xml), where, f"bndbox/{k}")
                   for k in CSV_HEADER[1:5]]
        xmin, ymin, xmax, ymax = corners
        box = (xmin - 1, ymin - 1, xmax, ymax)          # 1-based inclusive -> pixel edges
        _check_box(box, w, h, f"{where} ({name})",
                   f"xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}",
                   "VOC corners run from 1 to the width/height, with xmin <= xmax and ymin <= "
                   "ymax: fix the numbers or remove the object")
        raw.boxes.append(box)
        raw.names.append(name)
        raw.where.append(where)
    return raw


def _read_voc(root: Path, split: str, required: bool, difficult: bool) -> list[_Raw] | None:
    found = _voc_split(root, split, required)
    if found is None:
        return None
    listed, stems = found
    return [_read_voc_xml(root, stem, listed, difficult) for stem in stems]


# -- CSV --------------------------------------------------------------------------------------

def _read_csv(root: Path, split: str, required: bool) -> list[_Raw] | None:
    path = root / f"{split}.csv"
    if kind(path) != "file":
        if not required:
            return None
        if kind(root) != "dir":
            raise DataError(f"CSV data set folder {root} does not exist; pass the folder that "
                            "holds train.csv and test.csv")
        raise DataError(f"{path} is missing: a CSV data set has ROOT/train.csv and ROOT/test.csv, "
                        f"each with the header {','.join(CSV_HEADER)}")
    fix = "fix the file or write it again"
    rows = csv.reader(io.StringIO(_text(path, fix)))
    header = [c.strip().lower() for c in next(rows, [])]
    if not header:
        raise DataError(f"{path} is empty: the {split} split has no images; write the header "
                        f"{','.join(CSV_HEADER)} and a row per box")
    if tuple(header) != CSV_HEADER:
        raise DataError(f"{path}: the first line must be the header {','.join(CSV_HEADER)}, got "
                        f"{','.join(header)!r}; add or correct it")
    images: dict[str, _Raw] = {}
    for row in rows:
        where = f"{path} line {rows.line_num}"
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(CSV_HEADER):
            raise DataError(f"{where} has {len(row)} fields, expected {len(CSV_HEADER)} "
                            f"({','.join(CSV_HEADER)}); quote a name that holds a comma")
        name, *values, label = (c.strip() for c in row)
        if not name:
            raise DataError(f"{where} names no file; write the image's path relative to {root}")
        raw = images.get(name)
        if raw is None:
            image = root / name
            if kind(image) != "file":
                raise DataError(f"{where}: image {image} is missing; add it, or remove its rows "
                                f"from {path.name}")
            h, w = _image_size(image)
            raw = images[name] = _Raw(image, w, h, [], [], [])
        if not any(values) and not label:
            continue                                # file,,,,,: an image without objects
        if not label:
            raise DataError(f"{where} has a box but no class; write the class name last")
        x0, y0, x1, y1 = (_number(v, where, k) for v, k in zip(values, CSV_HEADER[1:5],
                                                                strict=True))
        _check_box((x0, y0, x1, y1), raw.width, raw.height, f"{where} ({name})",
                   f"{x0:g},{y0:g},{x1:g},{y1:g}", "the CSV's corners are pixel edges from 0 "
                   "to the width/height, xmin < xmax and ymin < ymax: fix the row")
        raw.boxes.append((x0, y0, x1, y1))
        raw.names.append(label)
        raw.where.append(where)
    if not images:
        raise DataError(f"{path} has no rows: the {split} split is empty; add a row per box")
    return list(images.values())


# -- reading ----------------------------------------------------------------------------------

def _raw(fmt: str, root: Path, split: str, required: bool, difficult: bool) -> list[_Raw] | None:
    if fmt == "voc":
        return _read_voc(root, split, required, difficult)
    return _read_csv(root, split, required)


def _read_classes(root: Path) -> tuple[str, ...] | None:
    path = root / CLASSES_FILE
    if kind(path) == "missing":
        return None
    fix = "fix it (one class name per line) or delete it"
    names = [line.strip() for line in _text(path, fix).splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path} lists no classes; {fix}")
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise DataError(f"{path} lists the class {dup!r} twice; remove one")
    return tuple(names)


def _records(raws: list[_Raw], classes: Sequence[str], listed: Path | None) -> list[BoxRecord]:
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for raw in raws:
        for name, where in zip(raw.names, raw.where, strict=True):
            if name not in index:        # only with classes.txt: else classes hold every name
                raise DataError(f"{where}: class {name!r} is not in {listed}; add it there (one "
                                "name per line) or correct the name")
        boxes = torch.tensor(raw.boxes, dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([index[n] for n in raw.names], dtype=torch.int64)
        out.append(BoxRecord(raw.path, raw.width, raw.height, boxes, labels))
    return out


def _read_splits(fmt: str, root: str | os.PathLike[str], splits: Sequence[str],
                 difficult: bool) -> tuple[dict[str, list[BoxRecord]], tuple[str, ...]]:
    """The records of ``splits`` (each required) and the classes, read once."""
    _check_format(fmt)
    for split in splits:
        _check_split(split)
    base = as_path(root, "root")
    if kind(base) in ("file", "other"):
        raise DataError(f"{fmt} data set folder {base} is a file, not a folder; pass the folder "
                        "(unpack an archive first)")
    classes = _read_classes(base)
    listed = base / CLASSES_FILE if classes is not None else None
    # without classes.txt, the other split is read too: its names are classes as well
    raws = {s: _raw(fmt, base, s, s in splits, difficult) for s in SPLITS
            if s in splits or classes is None}
    if classes is None:                     # every name of both splits, so the two agree
        classes = tuple(sorted({n for r in raws.values() for raw in r or () for n in raw.names}))
    return {s: _records(raws[s] or [], classes, listed) for s in splits}, classes


def read_boxes(fmt: str, root: str | os.PathLike[str], split: str = "train",
               difficult: bool = False) -> tuple[list[BoxRecord], tuple[str, ...]]:
    """The annotated images of a split of a VOC (``fmt="voc"``) or CSV (``"csv"``) data set in
    folder ``root``, and the class names. Images are opened for their size, not decoded.
    ``difficult``: keep VOC objects marked difficult (default: skipped).

    >>> records, classes = read_boxes("csv", "shapes", "test")        # doctest: +SKIP
    >>> records[0].boxes, records[0].labels                # pixels (k, 4), class ids (k,)
    """
    splits, classes = _read_splits(fmt, root, (split,), difficult)
    return splits[split], classes


def _targets(records: Sequence[BoxRecord]) -> list[torch.Tensor]:
    """Per image (k, 5) float32: class id, then the box divided by the image's width/height."""
    out = []
    for r in records:
        scale = torch.tensor([r.width, r.height, r.width, r.height], dtype=torch.float32)
        out.append(torch.cat([r.labels.float().unsqueeze(1), r.boxes / scale], dim=1))
    return out


def load_boxes(fmt: str, root: str | os.PathLike[str], split: str = "train",
               size: int | Sequence[int] | None = None, mode: str | None = None,
               lazy: bool | None = None, difficult: bool = False) -> ImageDataset:
    """A split of a VOC or CSV data set as an :class:`ImageDataset` (what
    ``load("voc"|"csv", split, data_dir=ROOT, size=...)`` returns).

    ``images``: resized (bilinear) to ``size``, or all of one size when it is None. ``labels``:
    one float32 tensor (k, 5) per image, ``[class_id, x0, y0, x1, y1]`` with the box normalised
    by the image's width and height, so it holds at any ``size``; (0, 5) for an image without
    objects. ``mean``/``std``: per channel over the training split at the loaded size.
    ``mode``/``lazy`` as for :func:`cnnlab.data.load_folder`; ``difficult`` as for
    :func:`read_boxes`.
    """
    if mode is not None and mode not in MODES:
        raise DataError(f"mode must be 'RGB' or 'L' (or None to choose), got {mode!r}")
    hw = None if size is None else as_size(size)
    splits, classes = _read_splits(fmt, root, tuple(dict.fromkeys(("train", split))), difficult)
    train, records = splits["train"], splits[split]
    mode = mode or _auto_mode([(r.path, "") for r in train])
    channels = 1 if mode == "L" else 3
    shape = hw or (train[0].height, train[0].width)
    if lazy is None:                  # by the training split, so both splits go the same way
        lazy = len(train) * channels * shape[0] * shape[1] * 4 > LAZY_BYTES
    images: torch.Tensor | LazyImages
    if lazy:
        train_x: torch.Tensor | LazyImages = LazyImages([r.path for r in train], mode, shape,
                                                        hw is not None)
        sample = train_x[::max(1, math.ceil(len(train) / STATS_SAMPLE))]
        images = train_x if split == "train" else LazyImages(
            [r.path for r in records], mode, shape, hw is not None)
    else:
        sample = train_x = _read([r.path for r in train], mode, hw)
        images = train_x if split == "train" else _read([r.path for r in records], mode, hw)
        if images.shape[-2:] != sample.shape[-2:]:
            raise DataError(f"the {split} images are {images.shape[-1]}x{images.shape[-2]} but "
                            f"the training images are {sample.shape[-1]}x{sample.shape[-2]} "
                            "(width x height); pass size= to resize both")
    mean, std = sample.mean(dim=(0, 2, 3)), sample.std(dim=(0, 2, 3), correction=0)
    return ImageDataset(images, _targets(records), name=fmt, split=split, classes=classes,
                        mean=mean.tolist(), std=std.clamp_min(1e-6).tolist())


# -- writing ----------------------------------------------------------------------------------

def _atomic(path: Path, data: bytes) -> None:
    from cnnlab.train.run import atomic_write  # the run folder's writer: temp file + rename

    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _number_text(value: float) -> str:
    """An integer as an integer, else the shortest decimal that reads back as ``value``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _write_classes(root: Path, classes: Sequence[str], write: Writer) -> None:
    bad = next((c for c in classes if not c or c != c.strip() or "\n" in c or "\r" in c), None)
    if bad is not None:
        raise DataError(f"class name {bad!r} cannot be a line of {CLASSES_FILE}: give names "
                        "without line breaks or surrounding spaces")
    if len(set(classes)) != len(classes):
        raise DataError(f"the class names {list(classes)} repeat a name; give each once")
    old = _read_classes(root) if kind(root / CLASSES_FILE) == "file" else None
    if old is not None and old != tuple(classes):
        raise DataError(f"{root / CLASSES_FILE} lists other classes ({', '.join(old)}); write "
                        "into another folder, or give those classes in that order")
    if old is None:
        write(root / CLASSES_FILE, "".join(f"{c}\n" for c in classes).encode())


def _voc_xml(record: BoxRecord, classes: Sequence[str], depth: int) -> bytes:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = record.path.parent.name
    ET.SubElement(ann, "filename").text = record.path.name
    size = ET.SubElement(ann, "size")
    for key, value in (("width", record.width), ("height", record.height), ("depth", depth)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(ann, "segmented").text = "0"
    for box, label in zip(record.boxes.tolist(), record.labels.tolist(), strict=True):
        obj = ET.SubElement(ann, "object")
        for key, text in (("name", classes[label]), ("pose", "Unspecified"),
                          ("truncated", "0"), ("difficult", "0")):
            ET.SubElement(obj, key).text = text
        bndbox = ET.SubElement(obj, "bndbox")
        x0, y0, x1, y1 = (round(v) for v in box)       # pixel edges -> 1-based inclusive
        for key, value in zip(CSV_HEADER[1:5], (x0 + 1, y0 + 1, x1, y1), strict=True):
            ET.SubElement(bndbox, key).text = str(value)
    ET.indent(ann)
    data: bytes = ET.tostring(ann, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def _check_record(record: BoxRecord, classes: Sequence[str], fmt: str) -> None:
    where = f"write_boxes({fmt!r}): {record.path}"
    if record.boxes.dim() != 2 or record.boxes.shape[1] != 4 or record.labels.shape != (
            record.boxes.shape[0],):
        raise DataError(f"{where}: boxes must be (k, 4) and labels (k,), got "
                        f"{tuple(record.boxes.shape)} and {tuple(record.labels.shape)}")
    for box, label in zip(record.boxes.tolist(), record.labels.tolist(), strict=True):
        if not 0 <= label < len(classes):
            raise DataError(f"{where}: label {label} is not a class id 0..{len(classes) - 1}; "
                            "pass the classes it indexes")
        shown = "(" + ", ".join(f"{v:g}" for v in box) + ")"
        fix = "give boxes inside the image"
        _check_box(box, record.width, record.height, where, shown, fix)
        if fmt == "voc":
            _check_box([float(round(v)) for v in box], record.width, record.height, where,
                       shown + " rounded to whole pixels", "VOC stores whole pixels: give a "
                       "box at least a pixel wide and high, or write csv")


def write_boxes(fmt: str, root: str | os.PathLike[str], split: str,
                records: Sequence[BoxRecord], classes: Sequence[str],
                write: Writer | None = None) -> None:
    """Write the annotations of ``records`` as split ``split`` of a VOC or CSV data set in
    ``root``, and ``root/classes.txt`` (which must agree where it exists); the images must be
    in ``root`` already (VOC: in ``images/`` or ``JPEGImages/``). VOC rounds each box edge to
    a whole pixel (VOC's integers); CSV keeps it exactly. ``write(path, data)`` writes one
    file (default: atomically, a temporary file renamed).
    """
    _check_format(fmt)
    _check_split(split)
    base = as_path(root, "root")
    put = write or _atomic
    for r in records:
        _check_record(r, classes, fmt)
    _write_classes(base, classes, put)
    if fmt == "csv":
        lines = io.StringIO()
        rows = csv.writer(lines, lineterminator="\n")
        rows.writerow(CSV_HEADER)
        for r in records:
            try:
                name = r.path.resolve().relative_to(base.resolve()).as_posix()
            except ValueError:
                raise DataError(f"write_boxes('csv'): {r.path} is not inside {base}; put the "
                                f"images there (e.g. in {base / IMAGES}) first") from None
            for box, label in zip(r.boxes.tolist(), r.labels.tolist(), strict=True):
                rows.writerow([name, *map(_number_text, box), classes[label]])
            if not len(r.labels):
                rows.writerow([name, "", "", "", "", ""])
        put(base / f"{split}.csv", lines.getvalue().encode())
        return
    try:
        other = _voc_split(base, SPLITS[1 - SPLITS.index(split)], required=False)
    except DataError:                               # an empty or unreadable list: no stems
        other = None
    taken = set(other[1]) if other else set()       # the other split's stems: its XMLs stay
    stems: set[str] = set()
    for r in records:
        if r.path.stem in taken:
            raise DataError(f"write_boxes('voc'): {r.path.stem!r} is in {other[0] if other else ''}"
                            f" already, and a stem names one annotation; give the {split} "
                            "images other names")
        if r.path.parent.resolve() not in tuple((base / d).resolve() for d in VOC_IMAGES) or (
                r.path.suffix.lower() not in VOC_SUFFIXES):
            raise DataError(f"write_boxes('voc'): {r.path} is not a .jpg/.jpeg/.png in "
                            f"{base / IMAGES} or {base / VOC_IMAGES[0]}, where VOC finds images "
                            "by stem; put it there first")
        if r.path.stem in stems:
            raise DataError(f"write_boxes('voc'): two images have the stem {r.path.stem!r}; "
                            "give each image its own name")
        stems.add(r.path.stem)
        try:
            with Image.open(r.path) as img:
                depth = len(img.getbands())
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"write_boxes('voc'): cannot read image {r.path} ({err}); write a "
                            "valid image there first") from None
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        put(base / "Annotations" / f"{r.path.stem}.xml", _voc_xml(r, classes, depth))
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    put(base / "ImageSets" / "Main" / f"{split}.txt",
        "".join(f"{r.path.stem}\n" for r in records).encode())
