"""Ensembles and test-time augmentation (8.4.1): average the softmax outputs of several
trained runs, and of several views of each image.

AlexNet's winning 15.4% top-5 error came from averaging seven networks (one alone: 18.2%),
and its test predictions averaged ten views of each image. Both are here:

>>> result = evaluate_ensemble(["runs/a", "runs/b"], tta="flip")   # doctest: +SKIP
>>> result["ensemble"]["top1"], [m["top1"] for m in result["members"]]  # doctest: +SKIP

Test-time views (``tta``):

- ``"none"``: the image as the run was trained on it;
- ``"flip"``: the image and its mirror (:func:`cnnlab.data.flip_average`);
- ``"crops"``: AlexNet's ten views (:func:`cnnlab.data.ten_crops`): the four corners, the
  centre and their mirrors. AlexNet cut 224x224 views out of 256x256 images; here each image,
  already at the run's input size, is first zero-padded by ``crop_padding`` pixels on every
  side (default 1/8 of its height: 4 for 32x32, 28 for 224x224), and each view is of the
  run's input size. So the centre view is the image itself, and the corners are it shifted by
  ``crop_padding`` pixels with black moving in: the test-time twin of training with
  ``RandomCrop(size, padding)``, and no resampling changes the scale of the objects.

8.3.4 warns against mirrors for digits: a mirrored digit is not a digit, so ``flip`` and
``crops`` suit data trained with reflections (CIFAR, clothing), not digits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data import ImageDataset, ten_crops
from cnnlab.errors import CnnlabError
from cnnlab.train._runs import RunInfo, run_data, run_info
from cnnlab.train.evaluation import Member, Views, evaluate_members
from cnnlab.train.loop import resolve_device
from cnnlab.train.run import load_run
from cnnlab.train.tasks import Classification, Task, task_for, task_name

TTA = ("none", "flip", "crops")
Tta = Literal["none", "flip", "crops"]


def default_crop_padding(height: int) -> int:
    """Pixels of padding per side for ``"crops"``: 1/8 of the height, at least 1."""
    return max(1, round(height / 8))


def test_views(tta: str, image_shape: Sequence[int], crop_padding: int | None = None) -> Views:
    """The test-time views ``tta`` of batches of images of ``image_shape`` (C, H, W), each a
    batch of that shape (see the module's notes)."""
    _check_tta(tta)
    if tta == "none":
        return lambda x: [x]
    if len(image_shape) != 3:
        raise CnnlabError(f"test-time views (--tta {tta}) are views of images, not of examples "
                          f"of shape {'x'.join(map(str, image_shape))}; drop --tta")
    h, w = image_shape[1:]
    pad = default_crop_padding(h) if crop_padding is None else crop_padding
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 1:
        raise CnnlabError(f"crop_padding must be a positive int, got {crop_padding!r}")
    if tta == "flip":
        return lambda x: [x, x.flip(-1)]
    if tta == "crops":
        # zero (black) padding in [0, 1], before normalisation, as RandomCrop pads
        return lambda x: ten_crops(F.pad(x, (pad, pad, pad, pad)), (h, w))
    return lambda x: [x]


@torch.no_grad()
def predict_proba(model: nn.Module, dataset: ImageDataset, *, tta: Tta = "none",
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  batch_size: int = 500, crop_padding: int | None = None,
                  progress: bool = False, desc: str = "predict") -> torch.Tensor:
    """Class probabilities (N, classes) of ``model`` on ``dataset``, averaged over the
    test-time views ``tta`` (see the module's notes), on the CPU.

    Inputs are normalised with ``mean``/``std`` (default: the data set's), in eval mode.
    """
    if task_name(model) != Classification.name:
        raise CnnlabError(f"predict_proba gives class probabilities, but "
                          f"{type(model).__name__} is a {task_name(model)} model; evaluate it "
                          "with evaluate(model, dataset)")
    views = test_views(tta, dataset.shape, crop_padding)
    member = Member(model, Classification(model, dataset.num_classes),
                    dataset.mean if mean is None else mean, dataset.std if std is None else std)
    result = evaluate_members([member], dataset, batch_size, views=views, progress=progress,
                              desc=desc, keep=True)
    return result.predictions[0].exp()


def scores(proba: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The headline figures (top1, top5, error, loss: the mean negative log of the target's
    probability) of class probabilities (N, classes), and the count n."""
    task = Classification(num_classes=proba.shape[1])
    log_p = proba.clamp_min(torch.finfo(proba.dtype).tiny).log()
    sums = task.eval_sums(log_p, labels.to(proba.device))
    return _headline(task, task.figures(sums, len(labels)), len(labels))


def _headline(task: Task, figures: dict[str, Any], n: int) -> dict[str, Any]:
    return {**{k: figures[k] for k in task.headline}, "n": n}


def evaluate_ensemble(run_dirs: Sequence[str | os.PathLike[str]], data: str | None = None,
                      data_dir: str | None = None, split: str = "test", batch_size: int = 500,
                      tta: Tta = "none", *, crop_padding: int | None = None,
                      progress: bool = False) -> dict[str, Any]:
    """Evaluate trained runs alone and as an ensemble that averages their class
    probabilities (8.4.1), each itself averaged over the test-time views ``tta``.

    The runs must tell the same classes apart at the same input size; each member sees the
    images normalised as it was trained. ``data`` defaults to the members' own data set (which
    must then be the same one). Returns (JSON-ready) ``data``, ``split``, ``tta``, ``n``,
    ``task`` (the runs' task), ``members`` (one dict per run: ``run``, ``model``, the task's
    headline figures -- classification: ``top1``, ``top5``, ``error``, ``loss``;
    reconstruction: ``mse``, ``psnr``, ``loss`` -- and ``n``) and ``ensemble`` (the same
    figures, and ``members``: how many). A classifier's ``loss`` is the mean negative
    log-probability of the right class; autoencoders' reconstructions are averaged. One run
    is an ensemble of one: its row is what :func:`evaluate_run` reports.
    """
    _check_tta(tta)
    runs = _member_infos(run_dirs, same_data=data is None)
    first = runs[0]
    if tta != "none" and first.task != Classification.name:
        raise CnnlabError(f"test-time views (--tta {tta}) average class probabilities, but "
                          f"{first.path} is a {first.task} run; drop --tta")
    ds = run_data(first, data, data_dir, split)
    views = test_views(tta, ds.shape, crop_padding)
    device = resolve_device("auto")
    members = []
    for run in runs:
        model, _ = load_run(run.path)
        task = task_for(model, run.config, len(run.classes), run.classes)
        members.append(Member(model.to(device), task, run.mean, run.std))
    result = evaluate_members(members, ds, batch_size, views=views, progress=progress,
                              desc="evaluate " + ", ".join(r.path.name for r in runs))
    task = members[0].task
    rows = [{"run": str(run.path), "model": run.model, **_headline(task, row, result.n)}
            for run, row in zip(runs, result.members, strict=True)]
    return {"data": ds.name, "split": split, "tta": tta, "n": result.n, "task": task.name,
            "members": rows,
            "ensemble": {"members": len(runs), **_headline(task, result.ensemble, result.n)}}


def evaluate_run(run_dir: str | os.PathLike[str], data: str | None = None,
                 data_dir: str | None = None, split: str = "test", batch_size: int = 500
                 ) -> dict[str, Any]:
    """Evaluate a saved run on a data set (default: the one it was trained on): its row of
    :func:`evaluate_ensemble` as an ensemble of one, with ``data`` and ``split``.

    Images are sized and normalised as in training (the run's input shape, mean and std).
    """
    result = evaluate_ensemble([run_dir], data, data_dir, split, batch_size)
    return {**result["members"][0], "data": result["data"], "split": split}


def _check_tta(tta: str) -> None:
    if tta not in TTA:
        raise CnnlabError(f"unknown test-time augmentation {tta!r}: use 'none', 'flip' (the "
                          "image and its mirror) or 'crops' (AlexNet's ten views)")


def _member_infos(run_dirs: Sequence[str | os.PathLike[str]], same_data: bool
                  ) -> list[RunInfo]:
    """The runs' records, refused unless they can be averaged: same classes and input shape,
    and the same data set when ``same_data`` (no data set was named)."""
    if isinstance(run_dirs, str | os.PathLike):
        run_dirs = [run_dirs]
    paths = [Path(r) for r in run_dirs]
    if not paths:
        raise CnnlabError("an ensemble needs at least one run folder")
    seen: set[Path] = set()
    for p in paths:
        if p.resolve() in seen:
            raise CnnlabError(f"run {str(p)!r} is given twice; an ensemble averages each "
                              "member once")
        seen.add(p.resolve())
    runs = [run_info(p) for p in paths]
    first = runs[0]
    for run in runs[1:]:
        if run.task != first.task:
            raise CnnlabError(f"{run.path} is a {run.task} run but {first.path} a {first.task} "
                              "run; an ensemble averages one task's predictions: use runs of "
                              "one task")
        if run.classes != first.classes:
            raise CnnlabError(
                f"{run.path} tells {len(run.classes)} classes apart ({_few(run.classes)}) but "
                f"{first.path} tells {len(first.classes)} ({_few(first.classes)}); an ensemble "
                "averages the same classes' probabilities: use runs trained on the same classes")
        if run.input_shape != first.input_shape:
            raise CnnlabError(
                f"{run.path} takes {_size(run.input_shape)} images but {first.path} takes "
                f"{_size(first.input_shape)}; use runs trained at the same input size")
        if same_data and run.config.data != first.config.data:
            raise CnnlabError(
                f"{run.path} was trained on {run.config.data} but {first.path} on "
                f"{first.config.data}; pass --data NAME (data=...) to evaluate every member on "
                "one data set")
    return runs


def _few(classes: Sequence[str]) -> str:
    return ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")


def _size(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))
