"""A finished run as evaluation, ensembles and feature extraction read it: what it was trained
on (input shape, mean, std, classes) without loading its weights, and the data sized for it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnlab.data import ImageDataset, load
from cnnlab.data.datasets import size_of
from cnnlab.errors import CnnlabError, ShapeError
from cnnlab.train.config import TrainConfig
from cnnlab.train.run import CONFIG, WEIGHTS, load_run, read_config, read_metadata


@dataclass(frozen=True)
class RunInfo:
    """The trainer's record of one run folder (``config.json`` and the weights' metadata)."""

    path: Path
    config: TrainConfig
    model: str                            # registry name
    input_shape: tuple[int, ...]          # (C, H, W) the images were sized to; (L,) ids
    mean: tuple[float, ...]               # per channel, what the inputs were normalised with
    std: tuple[float, ...]
    classes: tuple[str, ...]
    task: str = "classification"          # what it learned (the weights' metadata "task")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of a run on images; a run on sentences or clips is refused."""
        self.check_images("this command")
        c, h, w = self.input_shape
        return c, h, w

    def check_images(self, tool: str) -> None:
        """Refuse a run on sentences or clips for ``tool``, which works on images."""
        if len(self.input_shape) != 3:
            raise CnnlabError(f"{self.path} is a run on examples of shape "
                              f"{'x'.join(map(str, self.input_shape))}, not on images; {tool} "
                              "takes a run of an image model")


def check_task(run: RunInfo, wanted: str, tool: str) -> None:
    """Refuse a run of another task than ``wanted`` for ``tool`` (e.g. ``"cnnlab features"``)."""
    if run.task != wanted:
        raise CnnlabError(f"{run.path} is a {run.task} run ({run.model}), but {tool} needs a "
                          f"{wanted} run; pass a run of a model trained for {wanted}")


def run_info(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Read what a run was trained on, without its weights."""
    path = Path(run_dir)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        load_run(path)                    # raises the error that names what is missing
    config = read_config(path)
    meta = read_metadata(path / WEIGHTS)
    try:
        shape = tuple(int(v) for v in meta["input_shape"])
        mean = tuple(float(v) for v in meta["mean"])
        std = tuple(float(v) for v in meta["std"])
        classes = tuple(str(v) for v in meta.get("classes")
                        or range(int(meta["num_classes"])))
    except (KeyError, TypeError, ValueError):
        raise CnnlabError(f"{path / WEIGHTS} lacks the trainer's metadata (input_shape, mean, "
                          "std, num_classes); train the run again with `cnnlab train`") from None
    return RunInfo(path, config, str(meta.get("model", config.model)), shape, mean, std,
                   classes, str(meta.get("task", "classification")))


def run_data(run: RunInfo, data: str | None = None, data_dir: str | None = None,
             split: str = "test") -> ImageDataset:
    """``split`` of ``data`` (default: the run's own data set), sized as the run was trained.

    ``data_dir`` defaults to the run's own when the data set is the run's.
    """
    name = data or run.config.data
    if data_dir is None and name == run.config.data:
        data_dir = run.config.data_dir
    tokens = not run.mean                         # token ids take no statistics
    ds = load(name, split, data_dir, size=size_of(run.input_shape, tokens),
              options=run.config.data_options() if name == run.config.data else None)
    c = 1 if tokens else run.input_shape[0]
    if ds.in_channels != c:
        raise ShapeError(f"the run's model takes {c}-channel images but {name} has "
                         f"{ds.in_channels}; use a {c}-channel data set")
    if ds.num_classes > len(run.classes):
        raise ShapeError(f"{name} has {ds.num_classes} classes but the run's model tells "
                         f"{len(run.classes)} apart; use a data set with as many")
    return ds
