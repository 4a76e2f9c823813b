"""Object detection (8.6.3): every object of an image, its class and its box, from a localiser
trained with a background class (``cnnlab train MODEL --task localize --data crops``).

Two ways to choose where to look, both ending in per-class non-maximum suppression:

- ``sliding``: windows of the classifier's input size at every position of an image pyramid
  (the image resized so that the windows cover :data:`SCALES` of its shorter side). The
  classifier's fully connected layers become convolutions (:func:`fully_convolutional`), so
  one pass per scale scores every window; the regression head refines each window's box from
  the same features, cut out of the pass's volume (8.6.2's regression head, OverFeat).
- ``selective``: selective search's regions (:func:`~cnnlab.apps.proposals.selective_search`),
  each warped to the input and classified with the box refined: R-CNN. Proposals of your own
  (a (k, 4) tensor) are used the same way.

A window's score for a class is its softmax probability; windows of the background class
(class 0 of a model trained on crops) are dropped, the other classes' ids shift down by one
so that they are the data set's.

>>> # cnnlab make-data digits-multi --out scenes
>>> # cnnlab train lenet5_modern --task localize --data crops --data-dir scenes --out runs/det
>>> # cnnlab detect runs/det scenes/images/test-000000.png --out found/
>>> # cnnlab detect runs/det --evaluate --data voc --data-dir scenes --split test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.apps.boxes import Detection, Truth, batched_nms, mean_average_precision
from cnnlab.apps.fully_conv import FullyConvolutional, fully_convolutional
from cnnlab.apps.localize import Localizer, corners
from cnnlab.apps.proposals import (
    BACKGROUND,
    PROPOSALS,
    WINDOW_SIZES,
    crop_extent,
    proposal_recall,
    require_proposals,
    selective_search,
    warp,
)
from cnnlab.errors import CnnlabError, ModelError, ShapeError

__all__ = ["ASPECTS", "DETECTIONS", "EVAL_THRESHOLD", "IOU_THRESHOLD", "MAX_DETECTIONS",
           "SCALES", "SCORE_THRESHOLD", "Detector", "add_parser", "detect", "evaluate", "read_image"]

SCALES = WINDOW_SIZES        # the pyramid's window sides, fractions of the shorter side
# window shapes, width over height: the image is resized more across than down for a narrow
# one (the net still sees its square input, as R-CNN's warped crops)
ASPECTS = (1.0,)
SCORE_THRESHOLD = 0.5        # pictures: boxes whose class probability reaches this
EVAL_THRESHOLD = 0.05        # --evaluate: lower, as mAP ranks (R-CNN's and Detectron's 0.05)
IOU_THRESHOLD = 0.5          # NMS: a box overlapping a better one by more is dropped
MAX_DETECTIONS = 100         # per image, the best (COCO's limit too)
BATCH = 256                  # warped proposals per forward pass
DETECTIONS = "detections.json"

Normalize = Callable[[torch.Tensor], torch.Tensor]


class Detector:
    """A trained :class:`Localizer` as a detector (see the module's notes): call it on an
    image (C, H, W) in [0, 1] of any size for a :class:`Detection` in the image's pixels.

    ``normalize``: what the run's inputs went through (``(x - mean) / std``). ``proposals``:
    ``"sliding"``, ``"selective"`` (fast selective search) or a (k, 4) tensor of boxes for
    every image. ``background``: the class id of "no object" (0 for a model trained on
    crops; None: every class is an object). ``scales``: the pyramid's window heights as
    fractions of the image's shorter side, ``aspects``: their widths over their heights
    (sliding; one pass per pair). ``refine``: move each box by the regression head (else
    the window or proposal itself).
    """

    def __init__(self, model: Localizer, normalize: Normalize,
                 proposals: str | torch.Tensor = "sliding", *,
                 score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD,
                 scales: Sequence[float] = SCALES, aspects: Sequence[float] = ASPECTS,
                 background: int | None = 0, refine: bool = True,
                 max_detections: int = MAX_DETECTIONS) -> None:
        if not isinstance(model, Localizer):
            raise ModelError(f"a detector is a localiser trained with a background class "
                             f"(cnnlab train MODEL --task localize --data crops), got "
                             f"{type(model).__name__}")
        if isinstance(proposals, str) and proposals not in PROPOSALS:
            raise CnnlabError(f"proposals {proposals!r}: use one of {', '.join(PROPOSALS)} or "
                              "a (k, 4) tensor of boxes")
        if not 0.0 <= score_threshold <= 1.0:
            raise CnnlabError(f"score_threshold is a probability in [0, 1], got "
                              f"{score_threshold!r}")
        if not scales or any(not 0.0 < s <= 1.0 for s in scales):
            raise CnnlabError(f"scales are window sides as fractions of the image's shorter "
                              f"side, in (0, 1], got {list(scales)}")
        if not aspects or any(not 0.0 < a < math.inf for a in aspects):
            raise CnnlabError(f"aspects are window widths over heights, positive numbers "
                              f"(1: square), got {list(aspects)}")
        if background is not None and not 0 <= background < (model.num_classes or 0):
            raise CnnlabError(f"background class {background} is not one of the model's "
                              f"{model.num_classes} classes; give its id, or None")
        self.model, self.normalize = model.eval(), normalize
        self.proposals = proposals
        self.score_threshold, self.iou_threshold = float(score_threshold), iou_threshold
        self.scales, self.aspects = tuple(scales), tuple(aspects)
        self.background, self.refine = background, refine
        self.max_detections = max_detections
        self.window = (int(model.default_input_shape[1]), int(model.default_input_shape[2]))
        self._fcn: FullyConvolutional | None = None
        self._window_volume: tuple[int, int, int] | None = None

    @property
    def fcn(self) -> FullyConvolutional:
        """The classifier with its fully connected layers as convolutions (built once)."""
        if self._fcn is None:
            self._fcn = fully_convolutional(self.model.classifier)
        return self._fcn

    def __call__(self, image: torch.Tensor, where: str = "image") -> Detection:
        return self.run(image, where)[0]

    def run(self, image: torch.Tensor, where: str = "image") -> tuple[Detection, torch.Tensor]:
        """The detections of ``image`` and the boxes that were looked at (windows or
        proposals, before refinement), both in the image's pixels."""
        c = int(self.model.default_input_shape[0])
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != c:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ShapeError(f"{where}: the detector takes an image ({c}, H, W) like its "
                             f"training crops, got {shape}")
        param = next(self.model.parameters())
        x = image.detach().to(param.device, param.dtype)
        with torch.no_grad():
            if isinstance(self.proposals, str) and self.proposals == "sliding":
                probs, boxes, looked = self._windows(x)
            else:
                given = (selective_search(image) if isinstance(self.proposals, str)
                         else self.proposals)
                probs, boxes, looked = self._regions(x, require_proposals(given, where))
        return self._select(probs.float().cpu(), boxes.float().cpu(), image.shape[1:]), looked

    # -- where to look -----------------------------------------------------------------------

    def _windows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class probabilities (M, C), boxes (M, 4) and windows (M, 4) of every window of
        the pyramid, one pass of the converted net per scale."""
        fcn = self.fcn
        _, height, width = x.shape
        wh, ww = self.window
        probs, boxes, windows = [], [], []
        for fraction, aspect in ((f, a) for f in self.scales for a in self.aspects):
            side = fraction * min(height, width)              # the window's height in the image
            h = max(wh, round(height * wh / side))
            w = max(ww, round(width * ww / (side * aspect)))
            shrink = h < height or w < width
            pyramid = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False,
                                    antialias=shrink)
            features = fcn.backbone.forward_features(self.normalize(pyramid))   # 1 x D x Fh x Fw
            rows, cols = fcn.map_size(h, w)
            scores = fcn.head(features)[0, :, :rows, :cols]   # C x rows x cols
            probs.append(scores.flatten(1).t().softmax(1))    # rows*cols x C, row-major
            scale = x.new_tensor([w / width, h / height, w / width, h / height])
            win = fcn.boxes(h, w).to(x.dtype) / scale          # in the image's pixels
            windows.append(win)
            if self.refine:
                boxes.append(_place(self._window_boxes(features, rows, cols), win))
            else:
                boxes.append(win)
        return torch.cat(probs), torch.cat(boxes), torch.cat(windows).float().cpu()

    def _window_boxes(self, features: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """(rows * cols, 4) the regression head's ``(x, y, w, h)`` of each window, from the
        window's own part of the features (the volume the head reads on a crop)."""
        d, fh, fw = self._volume()
        grid = F.unfold(features, (fh, fw))                   # 1 x D*fh*fw x L (D first)
        fr, fc = features.shape[2] - fh + 1, features.shape[3] - fw + 1
        grid = grid[0].reshape(d * fh * fw, fr, fc)[:, :rows, :cols]
        return self.model.forward_box(grid.flatten(1).t())     # rows*cols x 4

    def _volume(self) -> tuple[int, int, int]:
        """(D, h, w): the features of one window (what the regression head reads)."""
        if self._window_volume is None:
            c, h, w = self.model.default_input_shape
            param = next(self.model.parameters())
            probe = torch.zeros(1, c, h, w, dtype=param.dtype, device=param.device)
            d, fh, fw = self.model.forward_features(probe).shape[1:]
            self._window_volume = int(d), int(fh), int(fw)
        return self._window_volume

    def _regions(self, x: torch.Tensor, proposals: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """R-CNN: each proposal cut at its whole-pixel extent, warped to the input, classified
        and its box refined."""
        _, height, width = x.shape
        extent = crop_extent(proposals.float().cpu(), height, width)
        probs, boxes = [], []
        for chunk in torch.split(extent, BATCH):
            crops = warp(x, chunk, self.window)
            scores, xywh = self.model(self.normalize(crops))
            probs.append(scores.float().softmax(1))
            region = chunk.to(x.device, x.dtype)
            boxes.append(_place(xywh, region) if self.refine else region)
        return torch.cat(probs), torch.cat(boxes), proposals.float().cpu()

    # -- what to keep ------------------------------------------------------------------------

    def _select(self, probs: torch.Tensor, boxes: torch.Tensor, size: Sequence[int]
                ) -> Detection:
        """Every (box, object class) whose probability reaches the threshold, clipped to
        the image, merged by per-class NMS, the best :attr:`max_detections` kept."""
        height, width = int(size[0]), int(size[1])
        objects = [k for k in range(probs.shape[1]) if k != self.background]
        p = probs[:, objects]                                  # M x C'
        where, label = (p >= self.score_threshold).nonzero(as_tuple=True)
        limit = torch.tensor([width, height, width, height], dtype=torch.float32)
        b = torch.minimum(boxes[where].clamp(min=0.0), limit)
        s = p[where, label]
        real = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s, label = b[real], s[real], label[real]
        keep = batched_nms(b, s, label, self.iou_threshold)[:self.max_detections]
        return Detection(b[keep], s[keep], label[keep].long())


def _place(xywh: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Boxes predicted in units of their region (its top-left corner, width and height) as
    the image's pixels."""
    sides = (region[:, 2:] - region[:, :2]).repeat(1, 2)
    return region[:, :2].repeat(1, 2) + corners(xywh.to(region.dtype)) * sides


def detect(model: Localizer, image: torch.Tensor, normalize: Normalize,
           proposals: str | torch.Tensor = "sliding", score_threshold: float = SCORE_THRESHOLD,
           iou_threshold: float = IOU_THRESHOLD, scales: Sequence[float] = SCALES,
           aspects: Sequence[float] = ASPECTS, background: int | None = 0) -> Detection:
    """The objects in ``image`` (C, H, W) in [0, 1]: boxes in its pixels, scores, class ids
    without the background (see :class:`Detector`; build one to detect in many images)."""
    return Detector(model, normalize, proposals, score_threshold=score_threshold,
                    iou_threshold=iou_threshold, scales=scales, aspects=aspects,
                    background=background)(image)


def evaluate(detector: Detector, images: Sequence[torch.Tensor], truths: Sequence[Truth],
             num_classes: int) -> dict[str, float]:
    """mAP@0.5 and COCO's mAP of ``detector`` on annotated images (pycocotools), the boxes
    it looked at per image and their recall at IoU 0.5, and its images per second (proposals
    included)."""
    found, looked = [], []
    start = time.perf_counter()
    for i, image in enumerate(images):
        det, boxes = detector.run(image, f"image {i}")
        found.append(det)
        looked.append(boxes)
    seconds = time.perf_counter() - start
    ap = mean_average_precision(found, list(truths), num_classes=num_classes)
    return {"map50": ap["map50"], "map": ap["map"], "map75": ap["map75"],
            "images": float(len(images)),
            "proposals_per_image": sum(map(len, looked)) / max(1, len(looked)),
            "proposal_recall50": proposal_recall(looked, [t.boxes for t in truths], 0.5),
            "detections_per_image": sum(len(d.boxes) for d in found) / max(1, len(found)),
            "images_per_second": len(images) / max(seconds, 1e-9)}


# -- images ----------------------------------------------------------------------------------

def read_image(path: str | os.PathLike[str], channels: int) -> torch.Tensor:
    """An image file as (C, H, W) float pixels in [0, 1], any size: 8- or 16-bit grey for
    ``channels`` 1, RGB for 3 (an alpha channel dropped, a palette expanded); another channel
    count or a file that does not decode is a one-line error naming it."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from cnnlab.data.folder import check_channels

    where = str(path)
    try:
        with Image.open(path) as img:
            img.load()
            check_channels(img, where, channels)
            if img.mode.startswith("I"):
                a = np.asarray(img, dtype=np.float64) / 65535.0
            else:
                a = np.asarray(img.convert("L" if channels == 1 else "RGB"),
                               dtype=np.float64) / 255.0
    except FileNotFoundError:
        raise CnnlabError(f"image {where!r} does not exist; check the path") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise CnnlabError(f"cannot read image {where!r} ({err}); give a PNG or JPEG "
                          "file") from None
    t = torch.from_numpy(a.reshape(a.shape[0], a.shape[1], -1).copy()).permute(2, 0, 1)
    return t.float().clamp(0.0, 1.0)


# -- the command -----------------------------------------------------------------------------

EPILOG = """\
examples:
  cnnlab detect runs/det scene.png --out found/                  # found/scene.png, detections.json
  cnnlab detect runs/det a.png b.png --out found/ --proposals selective --threshold 0.7
  cnnlab detect runs/det --evaluate --data voc --data-dir scenes --split test --json

The run is a localiser trained on R-CNN's crops, so it knows a background class:
  cnnlab make-data digits-multi --out scenes
  cnnlab train lenet5_modern --task localize --data crops --data-dir scenes --out runs/det
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``detect`` to ``cnnlab``'s subcommands."""
    from cnnlab.data.datasets import BOX_FORMATS, SPLITS

    p: argparse.ArgumentParser = subparsers.add_parser(
        "detect", help="find every object in images: sliding windows through the fully "
        "convolutional net, or region proposals (8.6.3)",
        description="Detect objects with a localiser trained with a background class "
        "(--task localize --data crops): boxes, class names and scores drawn on a PNG per "
        f"image and listed in {DETECTIONS}; or --evaluate on an annotated split (mAP).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder written by `cnnlab train --task localize`")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (PNG, JPEG), any "
                   "size, with the run's channel count")
    p.add_argument("--out", metavar="DIR", help=f"folder for the PNGs and {DETECTIONS}")
    p.add_argument("--proposals", choices=PROPOSALS, default="sliding",
                   help="sliding: windows of an image pyramid in one pass per scale; "
                   "selective: selective search's regions, each classified (R-CNN); default "
                   "sliding")
    p.add_argument("--threshold", type=float, help=f"keep boxes whose class probability is at "
                   f"least this (default {SCORE_THRESHOLD}; --evaluate {EVAL_THRESHOLD})")
    p.add_argument("--iou", type=float, default=IOU_THRESHOLD, help="non-maximum suppression: "
                   f"drop a box that overlaps a better one of its class by more (default "
                   f"{IOU_THRESHOLD})")
    p.add_argument("--evaluate", action="store_true", help="measure mAP@0.5, COCO mAP, "
                   "proposals and their recall, images/s on --data's --split")
    p.add_argument("--data", choices=BOX_FORMATS, help="--evaluate: the annotated data's format")
    p.add_argument("--data-dir", help="--evaluate: the data set's folder")
    p.add_argument("--split", choices=SPLITS, help="--evaluate: the split (default test)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    p.set_defaults(func=run)
    return p


def _check(args: argparse.Namespace) -> None:
    """Refuse contradictory options before any slow work."""
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise CnnlabError(f"--threshold {args.threshold}: give a probability in [0, 1]")
    if not 0.0 <= args.iou <= 1.0:
        raise CnnlabError(f"--iou {args.iou}: give an IoU in [0, 1]")
    data_given = [f"--{n.replace('_', '-')}" for n in ("data", "data_dir", "split")
                  if getattr(args, n) is not None]
    if args.evaluate:
        if args.images:
            raise CnnlabError("--evaluate measures an annotated split (--data, --data-dir), not "
                              "IMAGE files; drop the images, or drop --evaluate")
        if args.out is not None:
            raise CnnlabError("--evaluate prints figures and draws nothing; drop --out")
        if args.data is None or args.data_dir is None:
            raise CnnlabError("--evaluate needs the annotated data: --data voc|csv --data-dir "
                              "DIR (and --split, default test)")
        return
    if data_given:
        raise CnnlabError(f"{', '.join(data_given)} belong to --evaluate; add it, or give IMAGE "
                          "files instead")
    if not args.images:
        raise CnnlabError("give IMAGE files to detect in (or --evaluate with --data)")
    if args.out is None:
        raise CnnlabError("--out DIR is missing: the folder for the PNGs and detections.json")


def _load(run_dir: str) -> tuple[Localizer, Any, tuple[str, ...], int | None]:
    """The run's localiser, its info, its object classes and its background id."""
    from cnnlab.train._runs import check_task, run_info
    from cnnlab.train.run import load_run

    info = run_info(run_dir)
    check_task(info, "localization", "cnnlab detect")
    model, _ = load_run(info.path)
    if not isinstance(model, Localizer):
        raise ModelError(f"{info.path} holds a {type(model).__name__}, not a localiser; train "
                         "one with --task localize --data crops")
    classes = tuple(info.classes)
    background = 0 if classes and classes[0] == BACKGROUND else None
    objects = classes[1:] if background == 0 else classes
    return model, info, objects, background


def run(args: argparse.Namespace) -> int:
    """``cnnlab detect``."""
    from cnnlab.train.batches import normalizer
    from cnnlab.train.run import device_of

    _check(args)
    model, info, objects, background = _load(args.run)
    normalize = normalizer(info.mean, info.std, device_of(model))
    threshold = args.threshold if args.threshold is not None else (
        EVAL_THRESHOLD if args.evaluate else SCORE_THRESHOLD)
    detector = Detector(model, normalize, args.proposals, score_threshold=threshold,
                        iou_threshold=args.iou, background=background)
    channels = int(info.input_shape[0])
    if args.evaluate:
        return _evaluate(args, detector, objects, channels)
    out = Path(args.out)
    names = _outputs(args.images, out, args.overwrite)
    images = [read_image(p, channels) for p in args.images]        # all decode, or nothing
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        from cnnlab.train.run import storage_error

        raise storage_error(f"cannot create the folder {str(out)!r}", err) from None
    results: list[dict[str, Any]] = []
    for path, name, image in zip(args.images, names, images, strict=True):
        det = detector(image, str(path))
        _draw(out / name, image, det, objects)
        results.append({"file": str(path), "picture": name, "detections": [
            {"class": objects[int(k)], "label": int(k), "score": round(float(s), 6),
             "box": [round(float(v), 3) for v in b]}
            for b, s, k in zip(det.boxes, det.scores, det.labels, strict=True)]})
    report = {"run": str(info.path), "proposals": args.proposals, "threshold": threshold,
              "iou_threshold": args.iou, "classes": list(objects), "images": results}
    from cnnlab.train.run import write_text

    write_text(out / DETECTIONS, json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for r in results:
            found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in r["detections"])
            print(f"{r['file']}: {len(r['detections'])} found{': ' + found if found else ''}")
        print(f"{len(results)} picture{'s' * (len(results) != 1)} and {DETECTIONS} written "
              f"to {out}")
    return 0


def _outputs(images: Sequence[str], out: Path, overwrite: bool) -> list[str]:
    """The PNG names of ``images`` in ``out`` (their stems), checked: distinct, and not there
    already unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"--out {str(out)!r} is a file; give a folder for the pictures")
    names = [f"{Path(p).stem}.png" for p in images]
    seen: dict[str, str] = {}
    for p, n in zip(images, names, strict=True):
        if n in seen:
            raise CnnlabError(f"{seen[n]!r} and {p!r} would both be drawn as {n}; rename one, "
                              "or detect them in two runs")
        if n == DETECTIONS:
            raise CnnlabError(f"{p!r}: its picture's name clashes with {DETECTIONS}; rename it")
        seen[n] = p
    if not overwrite:
        there = [n for n in (*names, DETECTIONS) if (out / n).exists()]
        if there:
            raise CnnlabError(f"--out {str(out)!r} already holds {there[0]}; pick another "
                              "--out, or pass --overwrite to replace it")
    return names


def _draw(path: Path, image: torch.Tensor, det: Detection, classes: Sequence[str]) -> None:
    from cnnlab.apps.drawing import FOUND, draw_boxes, enlargement, to_pil
    from cnnlab.train.run import atomic_write

    scale = enlargement(int(image.shape[1]), int(image.shape[2]))
    picture = to_pil(image, scale)
    captions = [f"{classes[int(k)]} {float(s):.2f}" for s, k in zip(det.scores, det.labels,
                                                                     strict=True)]
    draw_boxes(picture, det.boxes, FOUND, captions, scale=scale)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def _evaluate(args: argparse.Namespace, detector: Detector, objects: tuple[str, ...],
              channels: int) -> int:
    from cnnlab.data.boxes import read_boxes

    split = args.split or "test"
    records, classes = read_boxes(args.data, args.data_dir, split)
    if tuple(classes) != objects:
        raise CnnlabError(f"{args.data_dir} has the classes {', '.join(classes)} but the run "
                          f"detects {', '.join(objects)}; evaluate on the data it was trained "
                          "on (or data with the same classes.txt)")
    images = [read_image(r.path, channels) for r in records]
    truths = [Truth(r.boxes.float(), r.labels.long()) for r in records]
    figures = evaluate(detector, images, truths, len(objects))
    report = {"run": args.run, "data": args.data, "data_dir": str(args.data_dir),
              "split": split, "proposals": args.proposals,
              "threshold": detector.score_threshold, "iou_threshold": detector.iou_threshold,
              **figures}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.data} {split}, {len(images)} images, {args.proposals} proposals: "
              f"mAP@0.5 {figures['map50']:.4f}, COCO mAP@[.5:.95] {figures['map']:.4f}; "
              f"{figures['proposals_per_image']:.1f} boxes looked at per image, recall "
              f"{figures['proposal_recall50']:.3f} at IoU 0.5; "
              f"{figures['images_per_second']:.1f} images/s")
    return 0
