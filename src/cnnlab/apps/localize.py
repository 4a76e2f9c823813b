"""Localisation (8.6.2): one object per image, its class and its box, from one network with
two heads on the same convolutional features.

:class:`Localizer` keeps a zoo classifier whole (its convolutional layers and its
classification head, under their own names, so a classifier's weights load as they are) and
adds a *regression head*: two fully connected layers and a linear layer that give the box as
its top-left corner plus its width and height, ``(x, y, w, h)``, in units of the image's width
and height (so a box survives resizing). :class:`Localization` is its task on the trainer's
one loop: cross-entropy on the class plus smooth L1 (``--loss mse``: squared error; ``l1``) on
the four numbers; its figures are the mean IoU of the predicted and true boxes, and the
localisation accuracy, which counts an image right when its class is right and its IoU is at
least 0.5 (the ILSVRC rule).

The chapter's four steps, each one ``cnnlab train`` (so resume, torchrun, AMP and plots work):

1. train a classifier on the images' classes (data with boxes give each image's object class),
   or start from one (``--init``);
2. and 3. remove nothing but add the regression head, and train with the convolutional layers
   frozen (``--task localize --init CLASSIFIER_RUN --freeze-until LAST_CONV``);
4. optionally fine-tune every layer with both heads (``--task localize --init LOCALIZER_RUN``),
   then test with both: ``cnnlab eval RUN``.

>>> # cnnlab make-data mnist-single --out canvases --data-dir ../shared/data
>>> # cnnlab train lenet5_modern --data voc --data-dir canvases --out runs/cls
>>> # cnnlab train lenet5_modern --data voc --data-dir canvases --task localize \\
>>> #     --init runs/cls --freeze-until features --out runs/loc

:func:`localize_windows` is the sliding-window refinement (OverFeat): the localiser applied at
several positions and scales of a larger image, the boxes merged by their confidences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import nn as cnn
from cnnlab.apps.boxes import box_iou, xywh_to_xyxy, xyxy_to_xywh
from cnnlab.errors import CnnlabError, ModelError, ShapeError
from cnnlab.nn.classifier import Classifier
from cnnlab.train.tasks import Sums, Task, task_name

if TYPE_CHECKING:
    from cnnlab.train.config import TrainConfig

HIDDEN = 256                 # units of each of the regression head's two FC layers
BOX_LOSSES = {"auto": "smooth_l1", "mse": "mse", "l1": "l1"}   # --loss -> the box loss
BETA = 0.05                  # smooth L1's change from squared to absolute error, in image units
IOU_RIGHT = 0.5              # a box is right at IoU >= 0.5 (ILSVRC, PASCAL VOC)
SHOWN = 10                   # test images in RUN/localizations.png


class Localizer(Classifier):
    """A classifier plus a regression head on its last convolutional volume (Fig. 8.19).

    ``net``: a zoo classifier (its ``forward_features`` gives a fixed-size volume at its
    ``default_input_shape``). Its modules stay under their own names, so its state dict is
    the classifier's plus ``box_head.*``; ``forward`` returns ``(class scores, boxes)`` with
    boxes ``(x, y, w, h)`` normalised to the image.

    >>> from cnnlab import models
    >>> loc = Localizer(models.create("lenet5_modern"))
    >>> scores, boxes = loc(torch.zeros(2, 1, 32, 32))
    >>> tuple(scores.shape), tuple(boxes.shape)
    ((2, 10), (2, 4))
    """

    task = "localization"
    added_layers = ("box_head",)       # what the classifier's weights do not hold (--init)
    _net: Classifier

    def __init__(self, net: Classifier, hidden: int = HIDDEN) -> None:
        super().__init__()
        if isinstance(net, Localizer):
            raise ModelError("this network is a Localizer already; give it its classifier")
        if callable(getattr(net, "loss", None)):
            raise ModelError(f"{type(net).__name__} trains with its own criterion (model.loss: "
                             "an RBF output or auxiliary heads), not the cross-entropy that "
                             "localisation adds a box loss to; localise a plain classifier "
                             "such as lenet5_modern")
        # the classifier's parts as ours (one module, two owners: moving or casting either
        # moves both); the classifier itself is kept out of the module tree
        object.__setattr__(self, "_net", net)
        self._adopt()
        self.default_input_shape = tuple(net.default_input_shape)
        self.num_classes = net.num_classes
        self.output_layer = net.output_layer          # type: ignore[misc]  # per instance
        volume = _feature_volume(net)
        box = cnn.Linear(hidden, 4)
        with torch.no_grad():                         # start at a centred box, half the image
            box.bias.copy_(torch.tensor([0.25, 0.25, 0.5, 0.5]))
        self.box_head = nn.Sequential()
        for name, layer in (("flatten", cnn.Flatten()),
                            ("fc1", cnn.Linear(math.prod(volume), hidden)), ("relu1", cnn.ReLU()),
                            ("fc2", cnn.Linear(hidden, hidden)), ("relu2", cnn.ReLU()),
                            ("box", box)):
            self.box_head.add_module(name, layer)
        self.chapter_layers = {**net.chapter_layers, "box1": "box_head.fc1",
                               "box2": "box_head.fc2", "box": "box_head.box"}

    def _adopt(self) -> None:
        net = self._net
        if net._parameters or net._buffers:
            raise ModelError(f"{type(net).__name__} holds tensors of its own outside its "
                             "layers; a Localizer adopts the layers of a classifier only")
        for name, child in net.named_children():
            self._modules[name] = child

    @property
    def classifier(self) -> Classifier:
        """The classifier inside (the same modules: training one trains the other)."""
        return self._net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.classifier.forward_head(x, pre_logits)

    def forward_box(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 4) boxes ``(x, y, w, h)`` normalised, from the convolutional features."""
        out: torch.Tensor = self.box_head(features)
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        f = self.forward_features(x)
        return self.forward_head(f), self.forward_box(f)

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier.reset_classifier(num_classes)
        self._adopt()                                 # the new output layer is ours too
        self.num_classes = num_classes


def _feature_volume(net: Classifier) -> tuple[int, ...]:
    """(D, H, W) of the last convolutional volume at the net's input shape."""
    shape = tuple(net.default_input_shape)
    p = next(iter(net.parameters()), None)
    was = net.training
    net.eval()                                        # no batch-norm statistics are touched
    try:
        with torch.no_grad():
            x = torch.zeros(1, *shape, dtype=p.dtype if p is not None else torch.float32,
                            device=p.device if p is not None else None)
            return tuple(net.forward_features(x).shape[1:])
    finally:
        net.train(was)


# -- the task ------------------------------------------------------------------------------


class Localization(Task):
    """A class and a box per image (8.6.2). The batch target is (B, 5): ``[class, x0, y0,
    x1, y1]``, the box normalised; a NaN box means no object (a background crop): its
    class counts, its box is skipped by the box loss and the IoU."""

    name = "localization"
    monitor = "loc_error"
    headline = ("loc_accuracy", "iou", "top1", "loss")

    def __init__(self, box_loss: str = "smooth_l1", box_weight: float = 1.0,
                 label_smoothing: float = 0.0) -> None:
        if box_loss not in BOX_LOSSES.values():
            raise CnnlabError(f"unknown box loss {box_loss!r}: use one of "
                              f"{', '.join(BOX_LOSSES.values())}")
        self.box_loss, self.box_weight = box_loss, float(box_weight)
        self.label_smoothing = float(label_smoothing)
        self.shown: dict[str, torch.Tensor] = {}
        self._keep = False

    @classmethod
    def from_config(cls, config: TrainConfig) -> Localization:
        """The task of ``cnnlab train --task localize``'s settings (``--loss``,
        ``--label-smoothing``); the transforms that move pixels are refused."""
        from cnnlab.train.augmentation import GEOMETRIC, parse

        if config.loss not in BOX_LOSSES:
            raise CnnlabError(f"loss={config.loss!r} is not a box loss; localisation trains "
                              "boxes with smooth L1 (--loss auto), mse or l1")
        if config.denoise:
            raise CnnlabError(f"denoise={config.denoise} is a setting of autoencoders; drop "
                              "--denoise")
        moved = [n for n, _ in parse(config.augment) if n in GEOMETRIC]
        if moved:
            raise CnnlabError(f"augment {','.join(moved)} moves the pixels but not the boxes; "
                              "localisation keeps the boxes where they are: leave out "
                              f"{', '.join(GEOMETRIC)} (jitter and pca are fine)")
        return cls(BOX_LOSSES[config.loss], label_smoothing=config.label_smoothing)

    @classmethod
    def adapt(cls, model: nn.Module) -> nn.Module:
        """A classifier gets a regression head (:class:`Localizer`); a localiser is kept."""
        if isinstance(model, Localizer):
            return model
        declared = task_name(model)
        if declared != "classification" or not isinstance(model, Classifier):
            raise CnnlabError(f"{type(model).__name__} is a {declared} model; --task localize "
                              "adds a box head to a classifier: pick a classifier of the zoo")
        return Localizer(model)

    # -- the batch ---------------------------------------------------------------------------

    def prepare(self, x: torch.Tensor, y: Any, *, train: bool, key: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        target = as_targets(y)
        if not train and key == 0:                  # the first test batch, for the picture
            self._keep = True
            self.shown = {"images": x[:SHOWN].detach().float().cpu(),
                          "target": target[:SHOWN].detach().float().cpu()}
        return x, target

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        scores, boxes = _split(output)
        classes = target[:, 0].long()
        loss = F.cross_entropy(scores, classes, label_smoothing=self.label_smoothing)
        return loss + self.box_weight * self._box_loss(boxes, target).mean()

    def _box_loss(self, boxes: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) the box loss of each example, summed over the four numbers (0 without a
        box)."""
        has = _has_box(target)
        wanted = xyxy_to_xywh(torch.where(has[:, None], target[:, 1:], 0.0))
        if self.box_loss == "smooth_l1":
            per = F.smooth_l1_loss(boxes, wanted, beta=BETA, reduction="none")
        elif self.box_loss == "mse":
            per = F.mse_loss(boxes, wanted, reduction="none")
        else:
            per = F.l1_loss(boxes, wanted, reduction="none")
        return torch.where(has, per.sum(1), 0.0)

    def train_sums(self, output: Any, target: torch.Tensor) -> Sums:
        scores, _ = _split(output)
        return {"top1": scores.detach().argmax(1).eq(target[:, 0].long()).sum()}

    def predict(self, output: Any) -> torch.Tensor:
        """(B, C + 4): the class log-probabilities, then the box ``(x0, y0, x1, y1)``
        normalised (not clipped)."""
        scores, boxes = _split(output)
        return torch.cat([F.log_softmax(scores.float(), 1), corners(boxes.float())], 1)

    def combine(self, predictions: Sequence[torch.Tensor]) -> torch.Tensor:
        """Views and ensemble members: the mean of the probabilities and of the boxes."""
        if len(predictions) == 1:
            return predictions[0]
        stacked = torch.stack(list(predictions))
        log_p = torch.logsumexp(stacked[..., :-4], 0) - math.log(len(predictions))
        return torch.cat([log_p, stacked[..., -4:].mean(0)], -1)

    def eval_sums(self, prediction: torch.Tensor, target: torch.Tensor) -> Sums:
        log_p, boxes = prediction[:, :-4], prediction[:, -4:]
        classes = target[:, 0].long()
        if len(classes) and int(classes.max()) >= log_p.shape[1]:
            raise ShapeError(f"class id {int(classes.max())} in the targets, but the model "
                             f"gives {log_p.shape[1]} classes; train it on this data")
        if self._keep:
            self._keep = False
            self.shown["prediction"] = prediction[:SHOWN].detach().float().cpu()
        has = _has_box(target)
        iou = paired_iou(boxes.clamp(0.0, 1.0), torch.where(has[:, None], target[:, 1:], 0.0))
        right = log_p.argmax(1).eq(classes)
        located = right & (~has | (iou >= IOU_RIGHT))      # background: the class alone
        box_loss = self._box_loss(xyxy_to_xywh(boxes), target)
        return {"loss": (-log_p.gather(1, classes[:, None]).squeeze(1)
                         + self.box_weight * box_loss).sum(),
                "top1": right.sum(), "iou": torch.where(has, iou, 0.0).sum(),
                "boxed": has.sum(), "located": located.sum()}

    def figures(self, sums: Mapping[str, torch.Tensor], n: int) -> dict[str, Any]:
        out = {k: float(v) / max(n, 1) for k, v in sums.items()
               if k in ("loss", "top1", "located")}
        if "boxed" in sums:
            out["iou"] = float(sums["iou"]) / max(int(sums["boxed"]), 1)
        if "located" in out:
            out["loc_accuracy"] = out.pop("located")
            out["loc_error"] = 1.0 - out["loc_accuracy"]
        return out

    def summary(self, figures: Mapping[str, Any]) -> str:
        return (f"test localisation accuracy {100 * figures['loc_accuracy']:.2f}% (class right "
                f"and IoU >= {IOU_RIGHT}), mean IoU {figures['iou']:.3f}, class accuracy "
                f"{100 * figures['top1']:.2f}%")

    @classmethod
    def describe(cls, figures: Mapping[str, Any]) -> str:
        return (f"localisation accuracy {100 * figures['loc_accuracy']:.2f}% (class right and "
                f"IoU >= {IOU_RIGHT}), mean IoU {figures['iou']:.3f}, class accuracy "
                f"{100 * figures['top1']:.2f}%, loss {figures['loss']:.4g}")

    def write_outputs(self, folder: Path, sums: Mapping[str, torch.Tensor],
                      records: Sequence[Mapping[str, Any]], plots: bool) -> None:
        """``RUN/localizations.png`` (the latest evaluation's first test images, the true box
        in green, the predicted one in red) and, with ``plots``, ``RUN/curves.png``."""
        from cnnlab.apps.drawing import localization_grid
        from cnnlab.train.run import LOCALIZATIONS

        if {"images", "target", "prediction"} <= self.shown.keys():
            localization_grid(folder / LOCALIZATIONS, self.shown["images"],
                              self.shown["target"], self.shown["prediction"])
        if plots:
            from cnnlab.train.plots import write_plots

            write_plots(folder, list(records))


def corners(xywh: torch.Tensor) -> torch.Tensor:
    """(N, 4) ``(x0, y0, x1, y1)`` of predicted ``(x, y, w, h)``: a negative width or height
    is an empty box."""
    return xywh_to_xyxy(torch.cat([xywh[:, :2], xywh[:, 2:].clamp(min=0.0)], 1))


def _split(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(output, tuple) and len(output) == 2):
        raise ModelError("a localiser gives (class scores, boxes); train a model made by "
                         "--task localize (cnnlab.apps.localize.Localizer)")
    return output[0], output[1]


def _has_box(target: torch.Tensor) -> torch.Tensor:
    return ~target[:, 1:].isnan().any(1)


def as_targets(y: Any) -> torch.Tensor:
    """(B, 5) targets ``[class, x0, y0, x1, y1]`` from a batch of data with boxes (a list
    of (1, 5) rows, one object per image) or a (B, 5) tensor."""
    if isinstance(y, list):
        counts = {len(t) for t in y}
        if counts - {1}:
            raise CnnlabError(f"localisation needs exactly one object per image, but these "
                              f"images hold {sorted(counts)}; use single-object data (e.g. "
                              "`cnnlab make-data mnist-single`), or `cnnlab detect` for "
                              "several objects")
        y = torch.cat(y) if y else torch.zeros(0, 5)
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[1] != 5:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ShapeError(f"localisation targets are (B, 5) rows [class, x0, y0, x1, y1] "
                         f"(boxes normalised), got {shape}; load data with boxes "
                         "(--data voc or csv)")
    return y.float()


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) IoU of ``a[i]`` and ``b[i]`` (boxes ``(x0, y0, x1, y1)``)."""
    if len(a) == 0:
        return a.new_zeros(0)
    return box_iou(a, b).diagonal()


# -- sliding windows (OverFeat) -------------------------------------------------------------

# window sides as fractions of the image's, and their positions every STEP of the side:
# windows a little smaller than the image, as a localiser trained on whole images expects
# (smaller ones cut the object; BENCHMARKS.md, issue 11 (c))
SCALES = (1.0, 0.9, 0.8)
STEP = 0.2


@dataclass(frozen=True)
class Located:
    """One image's class, its probability and its box ``(x0, y0, x1, y1)`` normalised."""

    label: int
    score: float
    box: tuple[float, float, float, float]


def windows(height: int, width: int, scales: Sequence[float] = SCALES, step: float = STEP
            ) -> torch.Tensor:
    """(M, 4) integer pixel boxes of the windows: for each scale, square windows of that
    fraction of the shorter side, every ``step`` of their side, the last one flush with the
    image's edge; the whole image (scale 1 of a non-square image: its full extent) first."""
    out = [(0, 0, width, height)]
    for s in scales:
        side = max(1, round(s * min(height, width)))
        if s >= 1.0:
            continue
        stride = max(1, round(step * side))
        ys = sorted({*range(0, height - side + 1, stride), height - side})
        xs = sorted({*range(0, width - side + 1, stride), width - side})
        out += [(x, y, x + side, y + side) for y in ys for x in xs]
    return torch.tensor(out, dtype=torch.float32)


def localize_windows(model: Localizer, images: torch.Tensor,
                     normalize: Callable[[torch.Tensor], torch.Tensor],
                     scales: Sequence[float] = SCALES, step: float = STEP,
                     batch_size: int = 256) -> list[Located]:
    """The sliding-window refinement of 8.6.2 (OverFeat): the localiser on every window of
    each image (N, C, H, W in [0, 1], any size at least the model's), each window resized to
    the model's input; then the class whose probabilities summed over the windows are the
    largest, and its box: the mean of the windows' boxes for that class weighted by their
    probability of it, over the windows whose box overlaps the most confident one's (IoU
    >= 0.5), so that windows that see another object do not pull it away."""
    if images.dim() != 4:
        raise ShapeError(f"localize_windows takes images (N, C, H, W), got "
                         f"{tuple(images.shape)}")
    _, h_in, w_in = model.default_input_shape
    n, _, height, width = images.shape
    boxes = windows(height, width, scales, step)                          # M x 4, pixels
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(n):
            probs, found = [], []
            for chunk in torch.split(boxes, batch_size):
                crops = torch.cat([F.interpolate(
                    images[i:i + 1, :, int(y0):int(y1), int(x0):int(x1)].float(),
                    size=(h_in, w_in), mode="bilinear", align_corners=False,
                    antialias=bool(y1 - y0 > h_in)) for x0, y0, x1, y1 in chunk.tolist()])
                p = next(iter(model.parameters()))
                scores, xywh = model(normalize(crops.to(p.device, p.dtype)))
                probs.append(scores.float().softmax(1).cpu())
                # the crop's normalised box -> the image's pixels -> the image's normalised
                sides = (chunk[:, 2:] - chunk[:, :2]).repeat(1, 2)
                inside = corners(xywh.float().cpu())
                found.append((chunk[:, :2].repeat(1, 2) + inside * sides) / scale)
            out.append(merge_windows(torch.cat(probs), torch.cat(found)))
    return out


def merge_windows(probs: torch.Tensor, boxes: torch.Tensor) -> Located:
    """One class and box from M windows' class probabilities (M, C) and boxes (M, 4)."""
    label = int(probs.sum(0).argmax())
    weight = probs[:, label]
    best = int(weight.argmax())
    near = box_iou(boxes[best:best + 1], boxes)[0] >= IOU_RIGHT
    w = weight * near
    box = (boxes * w[:, None]).sum(0) / w.sum()
    x0, y0, x1, y1 = box.clamp(0.0, 1.0).tolist()
    return Located(label, float(probs[:, label].mean()), (x0, y0, x1, y1))
