"""Pictures of a run: ``RUN/curves.png`` (loss, top-1/top-5 error and learning rate per epoch)
and ``RUN/confusion.png`` (the test confusion matrix, each row normalised to 1).

Figures are drawn on matplotlib's Agg canvas through :class:`~matplotlib.figure.Figure`, not
pyplot: no display, no global figure state, safe in a training process. Files are written
atomically, like the rest of the run folder.

>>> paths = plot_run("runs/lenet5")   # from metrics.jsonl (+ confusion.json)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.train.metrics import _as_matrix, _check_classes, read_confusion, read_metrics
from cnnlab.train.run import CONFUSION, CONFUSION_PLOT, CURVES, atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_SPLITS = {"train": "C0", "test": "C1"}    # one colour per split on every panel


def _number(value: object) -> float | None:
    """A finite real number as a float, else None (missing, a string, a bool, NaN)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        x = float(value)
        return x if math.isfinite(x) else None
    return None


def _series(records: Sequence[Mapping[str, Any]], key: str,
            transform: Callable[[float], float] | None = None
            ) -> tuple[list[float], list[float]]:
    """(epochs, values) of the records that hold a finite ``key``."""
    xs, ys = [], []
    for i, r in enumerate(records, 1):
        v = _number(r.get(key))
        if v is not None:
            epoch = _number(r.get("epoch"))
            xs.append(float(i) if epoch is None else epoch)
            ys.append(transform(v) if transform else v)
    return xs, ys


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return path


def _new_figure(width: float, height: float) -> Figure:
    # imported here: matplotlib takes a moment to import, and a run that plots nothing
    # should not pay for it
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _epoch_axis(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def plot_curves(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                title: str | None = None) -> Path:
    """Loss, top-1/top-5 error (%) and learning rate against the epoch, train and test.

    ``records``: the per-epoch metrics (``metrics.jsonl``'s lines). A field missing from a
    record, or not finite, is left out of its line; a record without ``epoch`` counts as
    epoch i (1, 2, ...).
    """
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise CnnlabError(f"records must be a list of per-epoch dicts, got "
                          f"{type(records).__name__}; pass metrics.jsonl's lines (read_metrics)")
    if not records:
        raise CnnlabError("no metrics records to plot; train at least one epoch first")
    if not all(isinstance(r, Mapping) for r in records):
        raise CnnlabError("records must be dicts, one per epoch, such as "
                          "{'epoch': 1, 'train_loss': 0.3, 'test_top1': 0.9}")
    fig = _new_figure(13, 3.8)
    ax_loss, ax_err, ax_lr = fig.subplots(1, 3)
    drawn = 0
    for split, colour in _SPLITS.items():
        xs, ys = _series(records, f"{split}_loss")
        if xs:
            ax_loss.plot(xs, ys, "o-", ms=3, color=colour, label=f"{split} (last {ys[-1]:.4f})")
            drawn += 1
        for k, style in ((1, "o-"), (5, "s--")):
            xs, ys = _series(records, f"{split}_top{k}", lambda v: 100 * (1 - v))
            if xs:
                ax_err.plot(xs, ys, style, ms=3, color=colour,
                            label=f"{split} top-{k} (last {ys[-1]:.2f}%)")
                drawn += 1
    xs, ys = _series(records, "lr")
    if xs:
        ax_lr.plot(xs, ys, "o-", ms=3, color="C2", drawstyle="steps-post")
        if all(y > 0 for y in ys):
            ax_lr.set_yscale("log")
        drawn += 1
    if not drawn:
        raise CnnlabError(f"the records hold none of train_loss, test_loss, train_top1, "
                          f"test_top1, test_top5, lr (keys: {sorted(records[0])}); pass "
                          "the trainer's metrics records")
    ax_loss.set_title("loss")
    ax_err.set_title("error (%)")
    ax_err.set_ylim(bottom=0)
    ax_lr.set_title("learning rate")
    for ax in (ax_loss, ax_err):
        if ax.has_data():
            ax.legend(fontsize="small")
    for ax in (ax_loss, ax_err, ax_lr):
        _epoch_axis(ax)
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path), dpi=100)


def plot_confusion(matrix: torch.Tensor | Sequence[Sequence[int]],
                   path: str | os.PathLike[str], classes: Sequence[str] | None = None,
                   title: str | None = None) -> Path:
    """The confusion matrix as an image, each row (true class) normalised to sum to 1.

    Class names label the axes when given (class ids otherwise); up to 20 classes each cell
    also shows its percentage; past 100 classes only every n-th class is labelled.
    """
    m = _as_matrix(matrix).detach().to("cpu", torch.float64)
    c = m.shape[0]
    names = _check_classes(classes, c) or [str(i) for i in range(c)]
    total = m.sum().item()
    rows = m.sum(dim=1, keepdim=True)
    share = (m / rows.clamp(min=1)).numpy()                 # C x C, rows sum to 1 (or 0)
    size = min(max(4.5 + 0.11 * c, 5.5), 16.0)               # inches: 10 classes -> 5.6
    fig = _new_figure(size + 1.2, size)
    ax = fig.subplots()
    from matplotlib.colors import Normalize, PowerNorm

    # many classes: a square-root scale, so that 1-2% confusions still show against white
    norm = Normalize(0.0, 1.0) if c <= 20 else PowerNorm(0.5, 0.0, 1.0)
    image = ax.imshow(share, cmap="Blues", norm=norm, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class"
                 + ("" if c <= 20 else " (square-root scale)"))
    step = max(1, math.ceil(c / 100))                       # at most ~100 labels per axis
    pitch = 0.8 * size * 72 / c * step                      # points between two labels
    font = max(4.0, min(10.0, 0.6 * pitch))                 # 100 classes: 6 pt
    ticks = list(range(0, c, step))
    ax.set_xticks(ticks, [names[i] for i in ticks], fontsize=font,
                  rotation=90 if c > 10 or max(map(len, names)) > 3 else 0)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if m[i, j] > 0:
                    ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center",
                            fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    accuracy = m.diagonal().sum().item() / total if total else float("nan")
    head = f"{title}: " if title else ""
    ax.set_title(f"{head}accuracy {100 * accuracy:.2f}% on {int(total):,} examples"
                 + (" (cells in %)" if c <= 20 else ""))
    return _save(fig, Path(path), dpi=150 if c > 30 else 100)


def write_plots(run_dir: str | os.PathLike[str], records: Sequence[Mapping[str, Any]],
                confusion: torch.Tensor | Sequence[Sequence[int]] | None = None,
                classes: Sequence[str] | None = None) -> list[Path]:
    """Write ``RUN/curves.png``, and ``RUN/confusion.png`` when ``confusion`` is given;
    returns their paths."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CnnlabError(f"run folder {str(run)!r} does not exist; create it, or pass the "
                          "folder written by `cnnlab train --out`")
    if confusion is not None:                   # refuse a bad matrix before writing anything
        confusion = _as_matrix(confusion)
        _check_classes(classes, confusion.shape[0])
    paths = [plot_curves(records, run / CURVES, title=run.name)]
    if confusion is not None:
        paths.append(plot_confusion(confusion, run / CONFUSION_PLOT, classes,
                                    title=f"{run.name}, test"))
    return paths


def plot_run(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Regenerate a run folder's plots from its ``metrics.jsonl`` and, when there,
    ``confusion.json``."""
    records = read_metrics(run_dir)
    confusion, classes = (read_confusion(run_dir) if (Path(run_dir) / CONFUSION).is_file()
                          else (None, None))
    return write_plots(run_dir, records, confusion, classes)
