"""Classification metrics: top-k counts (8.4: "top-5 error"), the confusion matrix, per-class
accuracy, time to an accuracy, and the run folder's ``metrics.jsonl`` and ``confusion.json``.

Counts stay tensors on the model's device, so a batch loop never waits for the GPU:

>>> meter = ConfusionMeter(num_classes=3)
>>> meter.update(torch.tensor([[2., 1, 0], [0, 3, 1]]), torch.tensor([0, 2]))
>>> meter.matrix.tolist()                    # rows: true class, columns: predicted
[[1, 0, 0], [0, 0, 0], [0, 1, 0]]
>>> meter.accuracy()
{'top1': 0.5, 'top5': 1.0}
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError, DataError, ShapeError
from cnnlab.train.run import CONFUSION, METRICS, write_text


def topk_correct(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)
                 ) -> list[torch.Tensor]:
    """How many rows have their target among the k highest scores, for each k (as tensors,
    so no device sync). k is capped at the number of classes: with 5 classes or fewer,
    top-5 counts every row."""
    k_max = min(max(ks), scores.shape[1])
    top = scores.topk(k_max, dim=1).indices                   # N x k_max
    return _hits(top, target, ks)


def _hits(top: torch.Tensor, target: torch.Tensor, ks: Sequence[int]) -> list[torch.Tensor]:
    hit = top.eq(target.view(-1, 1))                          # N x k_max
    return [hit[:, :min(k, top.shape[1])].any(dim=1).sum() for k in ks]


def time_to_accuracy(history: Iterable[Mapping[str, Any]], target: float,
                     key: str = "test_top1") -> float | None:
    """Training seconds until ``key`` first reached ``target`` (e.g. 0.99), or None.

    Uses each epoch's ``elapsed_seconds`` (training time only, evaluation excluded).
    """
    for record in history:
        if record[key] >= target:
            return float(record["elapsed_seconds"])
    return None


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise CnnlabError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def _check_labels(num_classes: int, **labels: torch.Tensor) -> None:
    """Integer class ids in 0..num_classes-1; reads their extremes in one device sync."""
    for name, t in labels.items():
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise DataError(f"{name} must be integer class ids, got dtype {t.dtype}; pass "
                            "scores.argmax(dim=1) for predictions, or labels.long()")
    named = [(name, t) for name, t in labels.items() if t.numel()]
    if not named:
        return
    extremes = torch.stack([v for _, t in named for v in (t.min(), t.max())]).tolist()
    for (name, _), lo, hi in zip(named, extremes[::2], extremes[1::2], strict=True):
        if lo < 0 or hi >= num_classes:
            raise DataError(f"{name} hold class id {lo if lo < 0 else hi}, outside "
                            f"0..{num_classes - 1} for num_classes={num_classes}; pass the data "
                            "set's num_classes, or fix the labels")


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int
                     ) -> torch.Tensor:
    """The ``num_classes x num_classes`` count matrix (int64, on the inputs' device): row i,
    column j counts the examples of true class i predicted as class j.

    >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2).tolist()
    [[1, 1], [0, 1]]
    """
    num_classes = _check_num_classes(num_classes)
    if predictions.dim() != 1 or targets.dim() != 1 or predictions.shape != targets.shape:
        hint = ("; pass scores.argmax(dim=1), not the scores" if predictions.dim() == 2 else "")
        raise ShapeError(f"predictions and targets must be class ids of one shape (N,), got "
                         f"{tuple(predictions.shape)} and {tuple(targets.shape)}{hint}")
    if predictions.device != targets.device:
        raise CnnlabError(f"predictions are on {predictions.device} but targets on "
                          f"{targets.device}; move both to one device")
    _check_labels(num_classes, predictions=predictions, targets=targets)
    index = targets.long() * num_classes + predictions.long()     # N: one cell per example
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def _check_matrix(matrix: torch.Tensor) -> None:
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ShapeError(f"a confusion matrix is square (C x C, C >= 1), got shape "
                         f"{tuple(matrix.shape)}; build it with confusion_matrix()")


def per_class_accuracy(matrix: torch.Tensor) -> torch.Tensor:
    """Recall of each class (float64): the diagonal over the row sums. A class with no
    examples gets NaN, not a made-up 0 or 1.

    >>> per_class_accuracy(torch.tensor([[3, 1], [0, 2]])).tolist()
    [0.75, 1.0]
    """
    _check_matrix(matrix)
    m = matrix.to(torch.float64)
    return m.diagonal() / m.sum(dim=1)                        # 0 / 0 -> nan


class ConfusionMeter:
    """Accumulates the confusion matrix and top-k counts over batches of scores.

    The accumulators live on the device of the first batch; :meth:`update` does not wait for
    the device except for the label check (one sync, as ``torch.bincount`` makes anyway).
    Prediction = the highest score (``topk``'s first index, so the diagonal is the top-1 count
    even when scores tie).
    """

    def __init__(self, num_classes: int, ks: Sequence[int] = (1, 5)) -> None:
        self.num_classes = _check_num_classes(num_classes)
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise CnnlabError(f"ks must be positive ints such as (1, 5), got {ks!r}")
        self.ks = tuple(ks)
        self.reset()

    def reset(self) -> None:
        self._matrix: torch.Tensor | None = None
        self._correct: torch.Tensor | None = None
        self.n = 0

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``scores`` N x num_classes (higher is better), ``targets`` N ids."""
        c = self.num_classes
        if scores.dim() != 2 or scores.shape[1] != c or targets.shape != scores.shape[:1]:
            raise ShapeError(f"scores must be N x {c} and targets N, got {tuple(scores.shape)} "
                             f"and {tuple(targets.shape)}; build the meter with the model's "
                             "num_classes")
        scores = scores.detach()
        top = scores.topk(min(max(self.ks), c), dim=1).indices   # N x k_max
        batch = confusion_matrix(top[:, 0], targets, c)
        correct = torch.stack(_hits(top, targets, self.ks))
        if self._matrix is None or self._correct is None:
            self._matrix, self._correct = batch, correct
        else:
            self._matrix += batch
            self._correct += correct
        self.n += len(targets)

    @property
    def matrix(self) -> torch.Tensor:
        """C x C int64 counts so far (rows: true class, columns: predicted)."""
        if self._matrix is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        return self._matrix

    def accuracy(self) -> dict[str, float]:
        """``{"top1": ..., "top5": ...}`` (one key per k) over everything seen; syncs once."""
        if self._correct is None or self.n == 0:
            raise CnnlabError("the meter has seen no examples; call update(scores, targets) "
                              "first")
        return {f"top{k}": c / self.n for k, c in zip(self.ks, self._correct.tolist(),
                                                       strict=True)}

    def per_class_accuracy(self) -> torch.Tensor:
        return per_class_accuracy(self.matrix)

    def reduce(self, sum_fn: Callable[[torch.Tensor], torch.Tensor],
               device: torch.device | str = "cpu") -> None:
        """Make the counts those of several meters together, e.g. one per process under
        torchrun: ``sum_fn`` maps each count tensor (on ``device``) of this meter to the
        sum of everyone's (``functools.partial(distributed.all_sum, ctx)``)."""
        c = self.num_classes
        matrix = (torch.zeros(c, c, dtype=torch.long, device=device) if self._matrix is None
                  else self._matrix)
        correct = (torch.zeros(len(self.ks), dtype=torch.long, device=device)
                   if self._correct is None else self._correct)
        n = sum_fn(torch.tensor(self.n, device=device))
        self._matrix, self._correct, self.n = sum_fn(matrix), sum_fn(correct), int(n.item())


# --- the run folder's metrics files -----------------------------------------------------------

def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-epoch records of a run folder's ``metrics.jsonl``, in order."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise CnnlabError(f"{path} does not exist; pass a run folder written by "
                          "`cnnlab train --out`")
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CnnlabError(f"{path}, line {i}: not valid JSON ({err}); train the run "
                              "again") from None
        if not isinstance(record, dict):
            raise CnnlabError(f"{path}, line {i}: expected one JSON object per line, got "
                              f"{type(record).__name__}; train the run again")
        records.append(record)
    return records


def _as_matrix(matrix: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
    m = matrix if isinstance(matrix, torch.Tensor) else torch.tensor(matrix)
    _check_matrix(m)
    if m.dtype.is_floating_point or m.dtype.is_complex or bool((m < 0).any()):
        raise DataError(f"a confusion matrix holds counts (non-negative ints), got dtype "
                        f"{m.dtype}; build it with confusion_matrix()")
    return m


def _check_classes(classes: Sequence[str] | None, num_classes: int) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str) or len(classes) != num_classes:
        raise ShapeError(f"classes must name each of the {num_classes} classes, got "
                         f"{classes!r}; pass the data set's .classes, or None")
    return [str(c) for c in classes]


def write_confusion(run_dir: str | os.PathLike[str],
                    matrix: torch.Tensor | Sequence[Sequence[int]],
                    classes: Sequence[str] | None = None) -> Path:
    """Save ``RUN/confusion.json`` atomically: ``{"classes": [...] | null, "matrix": [[...]]}``
    with rows = true class, columns = predicted."""
    m = _as_matrix(matrix)
    names = _check_classes(classes, m.shape[0])
    path = Path(run_dir) / CONFUSION
    body = ",\n".join(f"    {json.dumps(row)}" for row in m.tolist())     # one row a line
    text = (f'{{\n  "rows": "true class",\n  "columns": "predicted class",\n'
            f'  "classes": {json.dumps(names)},\n  "matrix": [\n{body}\n  ]\n}}\n')
    write_text(path, text)
    return path


def read_confusion(run_dir: str | os.PathLike[str]) -> tuple[torch.Tensor, list[str] | None]:
    """``(matrix, classes)`` from ``RUN/confusion.json`` (classes None when not saved)."""
    path = Path(run_dir) / CONFUSION
    if not path.is_file():
        raise CnnlabError(f"{path} does not exist; the run saved no confusion matrix")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        matrix = _as_matrix(torch.tensor(data["matrix"], dtype=torch.long))
        classes = _check_classes(data.get("classes"), matrix.shape[0])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, CnnlabError) as err:
        raise CnnlabError(f"{path}: not a confusion matrix written by cnnlab ({err}); evaluate "
                          "the run again") from None
    return matrix, classes


def numeric_fields(record: Mapping[str, Any]) -> dict[str, float]:
    """The fields of a metrics record that are numbers (bools and strings left out)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[key] = float(value)
    return out

