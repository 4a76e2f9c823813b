"""Region proposals for detection (8.6.3): where a detector looks, and R-CNN's training crops.

:func:`selective_search` asks OpenCV's contrib module (``cv2.ximgproc.segmentation``) for the
regions that a hierarchical grouping of an over-segmentation suggests (Uijlings et al. 2013);
:func:`sliding_windows` is the exhaustive alternative, square windows at several sizes. How
good a proposal set is shows in :func:`proposal_recall`: the share of the objects that some
proposal covers at IoU >= 0.5 (a detector that classifies proposals cannot find the rest).

:func:`region_crops` turns images with boxes into R-CNN's training set: every proposal that
overlaps an object by IoU >= 0.5 (and each object's own box) is a crop of that object's class,
with the object's box relative to the crop as the regression target; proposals that overlap
no object by 0.3 or more are background crops (class 0), a few per object; those in between
are left out. Each crop is warped to the classifier's input, whatever its aspect. The data
name ``crops`` gives them to the trainer unchanged:

>>> # cnnlab make-data digits-multi --out scenes
>>> # cnnlab train lenet5_modern --task localize --data crops --data-dir scenes
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cnnlab.apps import requires
from cnnlab.apps.boxes import box_iou
from cnnlab.errors import CnnlabError, DataError, ShapeError

if TYPE_CHECKING:
    from cnnlab.data.boxes import BoxRecord
    from cnnlab.data.datasets import ImageDataset

__all__ = ["BACKGROUND", "MODES", "crop_extent", "load_crops", "proposal_recall",
           "region_crops", "selective_search", "sliding_windows", "warp"]

MODES = ("fast", "quality")   # selective search's strategies (OpenCV's switchToSelectiveSearch*)
MAX_PROPOSALS = 2000          # R-CNN keeps about 2,000 regions an image
# Selective search groups segments of a graph segmentation whose scale is set in pixels, so a
# small image gives few, coarse regions: measured on 48x48 digit canvases (digits-multi), fast
# mode covers 37% of the objects at IoU 0.5 as they are, 87% enlarged twice, 97% enlarged to
# a shorter side of 192 (4x; about 40 proposals, 0.13 s an image). Smaller images are enlarged
# to this shorter side first (bilinear) and the regions scaled back.
MIN_SIDE = 192
POSITIVE_IOU = 0.5            # a proposal of an object's class: IoU >= 0.5 with it (R-CNN)
BACKGROUND_IOU = 0.3          # a background proposal: IoU < 0.3 with every object (R-CNN)
BACKGROUND_RATIO = 3          # background crops per object crop, at most (R-CNN: 96 of 128)
# sliding windows' sides as fractions of the image's shorter side: the crops' windows (one
# every quarter of their side) and the detector's pyramid; the objects of the generated
# canvases are a sixth to a half of it
WINDOW_SIZES = (0.15, 0.2, 0.3, 0.4, 0.55, 0.75, 1.0)
WINDOW_STRIDE = 0.25
BACKGROUND = "background"     # class 0 of the crops and of a detector trained on them
PROPOSALS = ("selective", "sliding")


# -- proposals ---------------------------------------------------------------------------------

def _check_image(image: object, what: str = "image") -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ShapeError(f"{what} must be a tensor (C, H, W) with 1 or 3 channels, pixels in "
                         f"[0, 1], got {shape}")
    if not image.is_floating_point():
        raise ShapeError(f"{what} must hold float pixels in [0, 1], got {image.dtype}: divide "
                         "by 255 first")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ShapeError(f"{what} is empty ({tuple(image.shape)})")
    return image


@contextlib.contextmanager
def _one_thread(cv2: object) -> Iterator[None]:
    """OpenCV on one thread (the same regions on every run), its setting restored after."""
    before = cv2.getNumThreads()  # type: ignore[attr-defined]
    cv2.setNumThreads(1)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        cv2.setNumThreads(before)  # type: ignore[attr-defined]


def selective_search(image: torch.Tensor, mode: str = "fast",
                     max_proposals: int = MAX_PROPOSALS, min_side: int = MIN_SIDE
                     ) -> torch.Tensor:
    """Selective search's regions of ``image`` (C, H, W) in [0, 1] (1 or 3 channels; grey is
    searched as three equal channels): (k, 4) float32 boxes ``(x0, y0, x1, y1)`` in the
    image's pixels, within the image, distinct, in a fixed order (see :func:`_canonical`),
    at most ``max_proposals``. ``mode``: ``"fast"`` or ``"quality"`` (more
    colour spaces and starting segmentations: more regions, slower). An image whose shorter
    side is below ``min_side`` is enlarged to it first (see :data:`MIN_SIDE`). The same image
    gives the same boxes (OpenCV runs on one thread here).

    >>> img = torch.zeros(1, 48, 48); img[:, 8:20, 10:30] = 1.0
    >>> boxes = selective_search(img)
    >>> bool(((boxes[:, 2:] <= 48) & (boxes[:, :2] >= 0)).all())
    True
    """
    img = _check_image(image)
    if mode not in MODES:
        raise CnnlabError(f"selective search mode {mode!r}: use one of {', '.join(MODES)}")
    if isinstance(max_proposals, bool) or not isinstance(max_proposals, int) or max_proposals < 1:
        raise CnnlabError(f"max_proposals must be a positive int, got {max_proposals!r}")
    cv2 = requires("cv2", "selective search")
    _, h, w = img.shape
    scale = max(1.0, min_side / min(h, w))
    big_w, big_h = round(w * scale), round(h * scale)
    # H x W x 3 uint8 in OpenCV's channel order (BGR), enlarged when small
    pixels = (img.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    bgr = pixels.expand(3, -1, -1).flip(0).permute(1, 2, 0).contiguous().numpy()
    with _one_thread(cv2):
        if (big_w, big_h) != (w, h):
            bgr = cv2.resize(bgr, (big_w, big_h), interpolation=cv2.INTER_LINEAR)
        search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        search.setBaseImage(bgr)
        if mode == "fast":
            search.switchToSelectiveSearchFast()
        else:
            search.switchToSelectiveSearchQuality()
        rects = search.process()                                  # k x 4 (x, y, w, h)
    found = torch.as_tensor(rects, dtype=torch.float32).reshape(-1, 4)
    boxes = torch.cat([found[:, :2], found[:, :2] + found[:, 2:]], 1)
    boxes = boxes / torch.tensor([big_w / w, big_h / h, big_w / w, big_h / h])
    limit = torch.tensor([w, h, w, h], dtype=torch.float32)
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    return _canonical(boxes, max_proposals)


def _canonical(boxes: torch.Tensor, limit: int) -> torch.Tensor:
    """The distinct boxes in a fixed order (by x0, then y0, x1, y1); above ``limit``, a subset
    drawn at random from a fixed seed. OpenCV ranks its regions by their level in the
    hierarchy times a random number from its own unseeded generator, so its order changes
    from run to run while the set stays the same."""
    unique: torch.Tensor = torch.unique(boxes, dim=0)         # sorted rows
    if len(unique) <= limit:
        return unique
    g = torch.Generator().manual_seed(0)
    return unique[torch.randperm(len(unique), generator=g)[:limit].sort().values]


def sliding_windows(height: int, width: int, sizes: Sequence[int],
                    stride_fraction: float = 0.5) -> torch.Tensor:
    """(k, 4) float32 square windows ``(x0, y0, x1, y1)`` over a ``height`` x ``width`` image:
    for each side in ``sizes`` (pixels), a window every ``stride_fraction`` of that side
    across and down, the last one flush with the right and bottom edges. Sides larger than
    the image are skipped; none left is an error.

    >>> sliding_windows(4, 6, [4], 0.5).tolist()
    [[0.0, 0.0, 4.0, 4.0], [2.0, 0.0, 6.0, 4.0]]
    """
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ShapeError(f"sliding_windows: {name} must be a positive int, got {value!r}")
    if not 0.0 < stride_fraction <= 1.0:
        raise CnnlabError(f"stride_fraction is a share of the window's side in (0, 1], got "
                          f"{stride_fraction!r}")
    out: list[tuple[int, int, int, int]] = []
    for side in sizes:
        if isinstance(side, bool) or not isinstance(side, int) or side < 1:
            raise CnnlabError(f"window sizes are positive pixel counts, got {side!r}")
        if side > min(height, width):
            continue
        stride = max(1, round(stride_fraction * side))
        ys = sorted({*range(0, height - side + 1, stride), height - side})
        xs = sorted({*range(0, width - side + 1, stride), width - side})
        out += [(x, y, x + side, y + side) for y in ys for x in xs]
    if not out:
        raise CnnlabError(f"no window of the sizes {list(sizes)} fits in a {height}x{width} "
                          "image (height x width); give sides up to its shorter side")
    return torch.tensor(out, dtype=torch.float32)


def proposal_recall(proposals: torch.Tensor | Sequence[torch.Tensor],
                    truth_boxes: torch.Tensor | Sequence[torch.Tensor],
                    iou: float = POSITIVE_IOU) -> float:
    """The share of the true boxes that some proposal overlaps by IoU >= ``iou``: of one
    image's (k, 4) and (m, 4) boxes, or over images given as two sequences of them.

    >>> truth = torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30]])
    >>> proposal_recall(torch.tensor([[0., 0, 10, 12]]), truth)    # IoU 0.83 and 0
    0.5
    """
    props = [proposals] if isinstance(proposals, torch.Tensor) else list(proposals)
    truths = [truth_boxes] if isinstance(truth_boxes, torch.Tensor) else list(truth_boxes)
    if len(props) != len(truths):
        raise CnnlabError(f"proposal_recall: {len(props)} proposal sets but {len(truths)} "
                          "truth sets; give one of each per image")
    found = total = 0
    for p, t in zip(props, truths, strict=True):
        total += len(t)
        if len(t) and len(p):
            found += int((box_iou(t, p).max(1).values >= iou).sum())
    if total == 0:
        raise CnnlabError("proposal_recall: there are no true boxes, so recall is undefined; "
                          "give images with objects")
    return found / total


def require_proposals(boxes: torch.Tensor, where: str) -> torch.Tensor:
    """``boxes`` unless there are none: a detector that classifies proposals has nothing to
    look at then."""
    if len(boxes) == 0:
        raise DataError(f"{where}: the proposal list is empty, so there is nothing to classify; "
                        "give at least one box, or use --proposals sliding")
    return boxes


# -- crops -------------------------------------------------------------------------------------

def crop_extent(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(k, 4) the whole-pixel region each box is cut from: its edges rounded outwards, within
    the ``height`` x ``width`` image, at least one pixel wide and high."""
    lo = boxes[:, :2].floor()
    hi = boxes[:, 2:].ceil()
    limit = torch.tensor([width, height], dtype=boxes.dtype)
    lo = torch.minimum(lo.clamp(min=0), limit - 1)
    hi = torch.minimum(torch.maximum(hi, lo + 1), limit)
    return torch.cat([lo, hi], 1)


def warp(image: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(k, C, h, w): each of ``boxes`` cut from ``image`` (C, H, W) at its
    :func:`crop_extent` and resized to ``size`` (h, w), bilinear (antialiased where it
    shrinks), whatever its aspect: R-CNN's warp."""
    _, height, width = image.shape
    regions = crop_extent(boxes.float(), height, width).long().tolist()
    out = image.new_empty(len(regions), image.shape[0], *size)
    for i, (x0, y0, x1, y1) in enumerate(regions):
        out[i] = F.interpolate(image[None, :, y0:y1, x0:x1], size=size, mode="bilinear",
                               align_corners=False,
                               antialias=y1 - y0 > size[0] or x1 - x0 > size[1])[0]
    return out


def relative_boxes(boxes: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """(k, 4) ``boxes`` in units of each ``extent``'s (k, 4) width and height, from its
    top-left corner (outside [0, 1] where a box leaves its crop)."""
    corner = extent[:, :2].repeat(1, 2)
    sides = (extent[:, 2:] - extent[:, :2]).repeat(1, 2)
    return (boxes - corner) / sides


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
        raise ShapeError(f"crop size must be a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


ProposalFn = Callable[[torch.Tensor], torch.Tensor]


def proposer(proposals: str | ProposalFn) -> ProposalFn:
    """A function image (C, H, W) -> (k, 4) proposals: ``"selective"`` (fast selective
    search), ``"sliding"`` (:data:`WINDOW_SIZES` of the shorter side), or your own."""
    if callable(proposals):
        return proposals
    if proposals == "selective":
        return selective_search
    if proposals == "sliding":
        def windows(image: torch.Tensor) -> torch.Tensor:
            _, h, w = image.shape
            sides = sorted({max(1, round(f * min(h, w))) for f in WINDOW_SIZES})
            return sliding_windows(h, w, sides, WINDOW_STRIDE)
        return windows
    raise CnnlabError(f"proposals {proposals!r}: use one of {', '.join(PROPOSALS)} or a "
                      "function image -> (k, 4) boxes")


def region_crops(records: Sequence[BoxRecord], classes: Sequence[str],
                 size: int | Sequence[int], proposals: str | ProposalFn = "selective", *,
                 seed: int = 0, positive_iou: float = POSITIVE_IOU,
                 background_iou: float = BACKGROUND_IOU,
                 background_ratio: int = BACKGROUND_RATIO, mode: str | None = None,
                 name: str = "crops", split: str = "train") -> ImageDataset:
    """R-CNN's training crops of annotated images (records as
    :func:`cnnlab.data.boxes.read_boxes` gives them), warped to ``size``, as an
    :class:`~cnnlab.data.datasets.ImageDataset`:

    - ``labels`` (N, 5) float32 ``[class, x0, y0, x1, y1]``: class 0 is
      :data:`BACKGROUND`, object classes are shifted up by one (``classes`` is
      ``("background", *classes)``); the box is the matched object's, in units of the crop
      (it may reach outside [0, 1]); NaN for background;
    - per image: each object's own box, every proposal with IoU >= ``positive_iou`` with an
      object (labelled as the object it overlaps most), and up to ``background_ratio``
      times as many crops as the image has objects (an image without objects: that ratio) of
      the proposals with IoU < ``background_iou`` with every object, drawn at random (from
      ``seed`` and the image's place: the same crops every time); the rest left out;
    - ``mean``/``std``: per channel over these crops.

    ``mode``: ``"L"`` or ``"RGB"`` (default: grey when every image is).
    """
    from cnnlab.data.datasets import ImageDataset
    from cnnlab.data.folder import _auto_mode, _read

    hw = _as_hw(size)
    propose = proposer(proposals)
    if not 0.0 <= background_iou <= positive_iou <= 1.0:
        raise CnnlabError(f"IoU thresholds need 0 <= background_iou <= positive_iou <= 1, got "
                          f"{background_iou} and {positive_iou}")
    if isinstance(background_ratio, bool) or not isinstance(background_ratio, int) \
            or background_ratio < 0:
        raise CnnlabError(f"background_ratio must be an int >= 0, got {background_ratio!r}")
    if not records:
        raise DataError(f"no annotated images to cut {split} crops from; give a split with "
                        "images")
    mode = mode or _auto_mode([(r.path, "") for r in records])
    crops: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for index, r in enumerate(records):
        image = _read([r.path], mode, None)[0]                         # C x H x W
        props = require_proposals(propose(image), str(r.path))
        # the whole-pixel regions cut, each once (proposals that round alike give one crop)
        props = torch.unique(crop_extent(props.float(), image.shape[1], image.shape[2]), dim=0)
        truth = r.boxes.float()
        chosen, cls, target = [truth], [r.labels + 1], [truth]         # the objects themselves
        if len(props) and len(truth):
            overlap = box_iou(props, truth)                            # k x m
            best, match = overlap.max(1)
            pos = (best >= positive_iou) & (best < 1.0)         # an object's own box: once
            chosen.append(props[pos])
            cls.append(r.labels[match[pos]] + 1)
            target.append(truth[match[pos]])
            neg = (best < background_iou).nonzero().flatten()
        else:
            neg = torch.arange(len(props))
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + index)
        wanted = background_ratio * max(1, len(truth))
        neg = neg[torch.randperm(len(neg), generator=g)[:wanted]].sort().values
        chosen.append(props[neg])
        cls.append(torch.zeros(len(neg), dtype=torch.long))
        target.append(torch.full((len(neg), 4), math.nan))
        regions = torch.cat(chosen)
        extent = crop_extent(regions, image.shape[1], image.shape[2])
        crops.append(warp(image, regions, hw))
        labels.append(torch.cat([torch.cat(cls).float()[:, None],
                                 relative_boxes(torch.cat(target), extent)], 1))
    images = torch.cat(crops)
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3), correction=0).clamp_min(1e-6)
    return ImageDataset(images, torch.cat(labels), name=name, split=split,
                        classes=(BACKGROUND, *classes), mean=mean.tolist(), std=std.tolist())


def load_crops(root: str | os.PathLike[str], split: str = "train",
               size: int | Sequence[int] | None = None, seed: int = 0,
               proposals: str | ProposalFn = "selective") -> ImageDataset:
    """:func:`region_crops` of a split of the VOC folder (or CSV data set: ROOT/train.csv)
    ``root``: what ``cnnlab.data.load("crops", split, data_dir=ROOT, size=S)`` returns."""
    from cnnlab.data.boxes import read_boxes
    from cnnlab.data.files import kind
    from cnnlab.data.folder import _auto_mode

    if size is None:
        raise DataError("crops are warped to the classifier's input: give size= (cnnlab train "
                        "passes the model's)")
    base = Path(root)
    fmt = "csv" if kind(base / "train.csv") == "file" else "voc"
    records, classes = read_boxes(fmt, base, split)
    train = records if split == "train" else read_boxes(fmt, base, "train")[0]
    mode = _auto_mode([(r.path, "") for r in train])    # both splits alike, as load("voc")
    if BACKGROUND in classes:
        raise DataError(f"{base} has a class named {BACKGROUND!r}, which crops keep for "
                        "regions without an object; rename that class")
    return region_crops(records, classes, size, proposals, seed=seed, mode=mode, split=split)
