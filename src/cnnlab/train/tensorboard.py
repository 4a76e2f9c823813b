"""TensorBoard event files of a run: ``RUN/tensorboard/``, one scalar per numeric metric.

Each epoch's record (the line that goes to ``metrics.jsonl``) becomes scalars under the same
names (``train_loss``, ``test_top1``, ``lr``, ``images_per_second``, ...) at step = its
``epoch``; per-step values (the training loss every few batches) go through
:meth:`TensorBoardLogger.scalar` under a tag of your choice. Watch a run with
``tensorboard --logdir runs``.

>>> with TensorBoardLogger("runs/demo") as tb:                          # doctest: +SKIP
...     tb.log({"epoch": 1, "train_loss": 0.31, "test_top1": 0.97})
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import torch

from cnnlab.errors import CnnlabError
from cnnlab.train.metrics import numeric_fields

TENSORBOARD = "tensorboard"          # the folder inside a run folder


class TensorBoardLogger:
    """Writes scalars to ``run_dir/tensorboard/``.

    Event files of an earlier run in the same folder are removed (they would not match the
    new run), unless ``resume``: then the new events continue the old ones.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, resume: bool = False) -> None:
        try:
            # imported here: tensorboard and protobuf take a second to import
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise CnnlabError(f"TensorBoard logging needs the tensorboard package ({err}); "
                              "install it: pip install -c constraints.txt -e . (or pip "
                              "install tensorboard)") from None
        self.path = Path(run_dir) / TENSORBOARD
        if self.path.exists() and not self.path.is_dir():
            raise CnnlabError(f"{self.path} is a file, not a folder; remove it or pick another "
                              "run folder")
        if not resume:
            for stale in self.path.glob("events.out.tfevents.*"):
                stale.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        self._writer: Any = SummaryWriter(log_dir=str(self.path))

    def log(self, record: Mapping[str, Any], step: int | None = None) -> None:
        """Every numeric field of ``record`` as a scalar at ``step`` (default: its
        ``"epoch"``), then flush, so a running TensorBoard shows the epoch at once."""
        if step is None:
            if "epoch" not in record:
                raise CnnlabError(f"the record has no 'epoch' field (keys: {sorted(record)}); "
                                  "pass step=")
            step = int(record["epoch"])
        for tag, value in numeric_fields(record).items():
            if tag != "epoch":
                self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def scalar(self, tag: str, value: float | torch.Tensor, step: int) -> None:
        """One value, e.g. ``scalar("step/train_loss", loss, global_step)``. A tensor is read
        (one device sync), so call it every few steps, not every step, on a GPU."""
        self._writer.add_scalar(tag, float(value), step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
