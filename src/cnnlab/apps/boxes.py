"""Boxes for detection (8.6.3): area, IoU, the chapter's corner-plus-size form, non-maximum
suppression, and mean average precision through pycocotools.

A box is ``(x0, y0, x1, y1)`` in continuous pixel-edge coordinates: a box over pixel columns
a..b (0-based, inclusive) has x0 = a and x1 = b + 1, so its width is x1 - x0. A set of k boxes
is a float tensor (k, 4), of any float dtype, on any device. 8.6.2 writes a box as its
top-left corner and its size, (x, y, w, h): :func:`xywh_to_xyxy` and :func:`xyxy_to_xywh`
convert.

Merging overlapping detections is greedy non-maximum suppression: the best-scoring box is
kept, every box that overlaps it by more than a threshold is dropped, and so on down the
ranking; :func:`batched_nms` does it per class. The detector is then scored with COCO's
evaluation (pycocotools; no second implementation here): AP at IoU 0.5 (PASCAL VOC's
criterion), at 0.75, and averaged over 0.5, 0.55, ..., 0.95 (COCO's mAP).

>>> import torch
>>> b = torch.tensor([[0., 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])
>>> box_iou(b[:1], b).round(decimals=3)
tensor([[1.0000, 0.8180, 0.0000]])
>>> nms(b, torch.tensor([0.9, 0.8, 0.7]))       # the second box overlaps the first by 0.82
tensor([0, 2])
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from cnnlab.apps import requires
from cnnlab.errors import CnnlabError, ShapeError

__all__ = ["Detection", "Truth", "batched_nms", "box_area", "box_iou", "mean_average_precision",
           "nms", "xywh_to_xyxy", "xyxy_to_xywh"]

# pairwise IoUs computed at once by non-maximum suppression: rows x boxes, bounded so that
# many thousands of boxes stay within a few tens of MiB
_NMS_BLOCK = 2**20


def _check_boxes(boxes: object, what: str, corners: bool = True) -> torch.Tensor:
    """``boxes`` if it is a finite float tensor (k, 4) whose boxes have x1 >= x0 and y1 >= y0
    (``corners=False``: widths and heights >= 0); else a one-line error naming it."""
    if not isinstance(boxes, torch.Tensor):
        raise ShapeError(f"{what} must be a tensor (k, 4), got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ShapeError(f"{what} must have shape (k, 4), one box per row, got "
                         f"{tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ShapeError(f"{what} must be a float tensor, got {boxes.dtype}: convert it with "
                         f".float()")
    if not bool(torch.isfinite(boxes).all()):
        raise ShapeError(f"{what} holds NaN or infinite coordinates; every box needs four "
                         "finite numbers")
    size = boxes[:, 2:] - boxes[:, :2] if corners else boxes[:, 2:]
    bad = (size < 0).any(1).nonzero()
    if len(bad):
        i = int(bad[0])
        row = [round(float(v), 4) for v in boxes[i]]
        if corners:
            raise ShapeError(f"{what}: box {i} {row} has x1 < x0 or y1 < y0; boxes are (x0, y0, "
                             "x1, y1) with x0 <= x1 and y0 <= y1 (convert (x, y, w, h) boxes "
                             "with xywh_to_xyxy)")
        raise ShapeError(f"{what}: box {i} {row} has a negative width or height")
    return boxes


def _check_vector(values: object, k: int, what: str, integer: bool) -> torch.Tensor:
    """A (k,) tensor of floats (scores) or of ints (labels), else a one-line error."""
    kind = "an integer" if integer else "a float"
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.shape[0] != k:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ShapeError(f"{what} must be {kind} tensor (k,) with one entry per box (k={k}), "
                         f"got {shape}")
    if integer and (values.is_floating_point() or values.is_complex() or
                    values.dtype == torch.bool):
        raise ShapeError(f"{what} must be an integer tensor (class ids), got {values.dtype}: "
                         "convert it with .long()")
    if not integer:
        if not values.is_floating_point():
            raise ShapeError(f"{what} must be a float tensor, got {values.dtype}")
        if bool(torch.isnan(values).any()):
            raise ShapeError(f"{what} holds NaN; every box needs a score")
    return values


def _check_threshold(iou_threshold: object) -> float:
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, int | float) \
            or not 0.0 <= iou_threshold <= 1.0:
        raise CnnlabError(f"iou_threshold is an IoU in [0, 1] (0.5 is usual); got "
                          f"{iou_threshold!r}")
    return float(iou_threshold)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(k,) areas (x1 - x0)(y1 - y0) of ``boxes`` (k, 4)."""
    b = _check_boxes(boxes, "box_area: boxes")
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) IoU of checked boxes; 0 where the union is empty (two zero-area boxes)."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])              # n x m x 2
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)                         # n x m
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    empty = union <= 0
    return torch.where(empty, 0.0, inter / torch.where(empty, 1.0, union))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) intersection over union of every box of ``a`` (n, 4) with every box of ``b``
    (m, 4). A zero-area box has IoU 0 with everything (never NaN)."""
    a = _check_boxes(a, "box_iou: a")
    b = _check_boxes(b, "box_iou: b")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return _iou(a.to(dtype), b.to(dtype))


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(x, y, w, h) -- the top-left corner and the size, 8.6.2's four numbers -- to
    (x0, y0, x1, y1)."""
    b = _check_boxes(boxes, "xywh_to_xyxy: boxes", corners=False)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) to (x, y, w, h): the top-left corner and the size."""
    b = _check_boxes(boxes, "xyxy_to_xywh: boxes")
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], dim=1)


def _greedy(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy suppression down the ranking (scores descending, ties: lower index first), a
    block of boxes at a time: the block is settled among itself one box after another, then
    its kept boxes strike the later ones that overlap them, all at once."""
    k = boxes.shape[0]
    device = boxes.device
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    order = torch.sort(scores, descending=True, stable=True).indices    # stable: ties in order
    b = boxes[order]
    removed = np.zeros(k, dtype=bool)
    keep: list[np.ndarray] = []
    rows = max(1, _NMS_BLOCK // k)
    for start in range(0, k, rows):
        stop = min(start + rows, k)
        block = np.flatnonzero(~removed[start:stop]) + start          # not struck yet
        if not len(block):
            continue
        at = torch.as_tensor(block, device=device)
        over = (_iou(b[at], b[at]) > threshold).cpu().numpy()          # block x block
        struck = np.zeros(len(block), dtype=bool)
        kept = []
        for r in range(len(block)):
            if not struck[r]:
                kept.append(r)
                struck |= over[r]
        keep.append(block[kept])
        later = np.flatnonzero(~removed[stop:]) + stop
        if len(later):
            hit = (_iou(b[torch.as_tensor(block[kept], device=device)],
                        b[torch.as_tensor(later, device=device)]) > threshold).any(0)
            removed[later[hit.cpu().numpy()]] = True
    return order[torch.as_tensor(np.concatenate(keep), device=device)]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Non-maximum suppression: the indices (int64) of the boxes kept, best score first.

    Going down the ranking (ties: the lower index first), a box is kept unless its IoU with
    a box already kept is above ``iou_threshold``.
    """
    b = _check_boxes(boxes, "nms: boxes")
    s = _check_vector(scores, b.shape[0], "nms: scores", integer=False)
    return _greedy(b, s, _check_threshold(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                iou_threshold: float = 0.5) -> torch.Tensor:
    """:func:`nms` within each class of ``labels`` (k,): boxes of different classes never
    suppress each other. The indices kept, in one ranking over all classes."""
    b = _check_boxes(boxes, "batched_nms: boxes")
    s = _check_vector(scores, b.shape[0], "batched_nms: scores", integer=False)
    lab = _check_vector(labels, b.shape[0], "batched_nms: labels", integer=True)
    threshold = _check_threshold(iou_threshold)
    kept = [idx[_greedy(b[idx], s[idx], threshold)]
            for idx in (torch.nonzero(lab == c).flatten() for c in torch.unique(lab))]
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=b.device)
    merged = torch.cat(kept).sort().values                         # by index, then by score
    return merged[torch.sort(s[merged], descending=True, stable=True).indices]


class Detection(NamedTuple):
    """A detector's output for one image: ``boxes`` (k, 4) in pixels, ``scores`` (k,),
    ``labels`` (k,) int64 class ids 0..C-1."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


class Truth(NamedTuple):
    """The annotated objects of one image: ``boxes`` (m, 4) in pixels, ``labels`` (m,) class
    ids 0..C-1."""

    boxes: torch.Tensor
    labels: torch.Tensor


def _labels_in_range(labels: torch.Tensor, num_classes: int | None, what: str) -> list[int]:
    ids = [int(v) for v in labels.tolist()]
    bad = [v for v in ids if v < 0 or (num_classes is not None and v >= num_classes)]
    if bad:
        top = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
        raise CnnlabError(f"{what} has class id {bad[0]}; labels are class ids {top} (no "
                          "background id)")
    return ids


def _coco_boxes(boxes: torch.Tensor) -> list[list[float]]:
    """(x, y, w, h) rows as COCO stores them."""
    return [[float(v) for v in row] for row in xyxy_to_xywh(boxes.detach().cpu().double())]


def mean_average_precision(detections: Sequence[Detection], truths: Sequence[Truth],
                           num_classes: int | None = None) -> dict[str, float]:
    """COCO's evaluation of per-image detections against the truth, through pycocotools:
    ``{"map": AP averaged over IoU 0.5, 0.55, ..., 0.95, "map50": AP at IoU 0.5 (PASCAL
    VOC's criterion), "map75": AP at IoU 0.75}``, each the mean over classes.

    ``detections[i]`` and ``truths[i]`` belong to image i. pycocotools, as COCO does, takes
    precision at 101 recall points 0, 0.01, ..., 1 (each the best precision at that recall or
    above), and keeps at most 100 detections per image and class, the highest-scoring. A class
    with no truth box is left out of the mean (its detections count for nothing), so is an
    image with neither truth nor detections; no detections at all give 0.0. ``num_classes``
    checks that every label is below it; without it the classes are those that appear.

    >>> import torch
    >>> box = torch.tensor([[0., 0, 10, 10]])
    >>> ap = mean_average_precision([Detection(box, torch.tensor([0.9]), torch.tensor([0]))],
    ...                             [Truth(box, torch.tensor([0]))])
    >>> {k: round(v, 6) for k, v in ap.items()}          # one box, found: AP 1
    {'map': 1.0, 'map50': 1.0, 'map75': 1.0}
    """
    if not isinstance(detections, Sequence) or not isinstance(truths, Sequence):
        raise CnnlabError("mean_average_precision takes a sequence of Detection and a sequence "
                          "of Truth, one of each per image")
    if len(detections) != len(truths):
        raise CnnlabError(f"mean_average_precision: {len(detections)} detections but "
                          f"{len(truths)} truths; give one Detection and one Truth per image, "
                          "in the same order")
    if num_classes is not None and (isinstance(num_classes, bool) or
                                    not isinstance(num_classes, int) or num_classes < 1):
        raise CnnlabError(f"num_classes must be a positive int, got {num_classes!r}")
    images: list[dict[str, Any]] = []
    gts: list[dict[str, Any]] = []
    dts: list[dict[str, Any]] = []
    classes: set[int] = set(range(num_classes)) if num_classes is not None else set()
    for i, (det, truth) in enumerate(zip(detections, truths)):
        where = f"image {i}"
        if not isinstance(det, Detection) or not isinstance(truth, Truth):
            raise CnnlabError(f"mean_average_precision: {where}: expected a Detection and a "
                              f"Truth, got {type(det).__name__} and {type(truth).__name__}")
        t_boxes = _check_boxes(truth.boxes, f"{where}: truth boxes")
        t_labels = _labels_in_range(_check_vector(truth.labels, t_boxes.shape[0],
                                                  f"{where}: truth labels", integer=True),
                                    num_classes, f"{where}: truth labels")
        d_boxes = _check_boxes(det.boxes, f"{where}: detection boxes")
        d_scores = _check_vector(det.scores, d_boxes.shape[0], f"{where}: detection scores",
                                 integer=False)
        d_labels = _labels_in_range(_check_vector(det.labels, d_boxes.shape[0],
                                                  f"{where}: detection labels", integer=True),
                                    num_classes, f"{where}: detection labels")
        image_id = i + 1                                   # COCO's ids start at 1
        images.append({"id": image_id})
        for box, label in zip(_coco_boxes(t_boxes), t_labels):
            gts.append({"id": len(gts) + 1, "image_id": image_id, "category_id": label + 1,
                        "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        for box, score, label in zip(_coco_boxes(d_boxes), d_scores.tolist(), d_labels):
            dts.append({"image_id": image_id, "category_id": label + 1, "bbox": box,
                        "score": float(score)})
        classes.update(t_labels, d_labels)
    if not gts:
        raise CnnlabError("mean_average_precision: no image has a truth box, so average "
                          "precision is undefined; evaluate on images with objects")
    if not dts:                # pycocotools cannot load an empty result; every AP is then 0
        return {"map": 0.0, "map50": 0.0, "map75": 0.0}
    cocoeval = requires("pycocotools.cocoeval", "mean average precision")
    coco = requires("pycocotools.coco", "mean average precision")
    with contextlib.redirect_stdout(io.StringIO()):       # pycocotools prints as it works
        truth_set = coco.COCO()
        truth_set.dataset = {"images": images, "annotations": gts,
                             "categories": [{"id": c + 1, "name": str(c)} for c in sorted(classes)]}
        truth_set.createIndex()
        evaluation = cocoeval.COCOeval(truth_set, truth_set.loadRes(dts), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    return {"map": float(stats[0]), "map50": float(stats[1]), "map75": float(stats[2])}
