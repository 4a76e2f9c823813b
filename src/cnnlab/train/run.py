"""The run folder: ``config.json``, ``metrics.jsonl``, ``model.safetensors`` once finished,
and ``checkpoint.safetensors`` while unfinished (see :mod:`cnnlab.train.checkpoint`).

Every write goes to a temporary file in the same folder that is flushed to disk and then
renamed over the target (``os.replace`` is atomic), so an interrupted run or a full disk never
leaves a half-written file: the metrics hold whole lines for the finished epochs, the last
checkpoint stays whole until the next one has been written, and the weights exist only once
complete. Weights are safetensors; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from cnnlab.errors import CnnlabError, ModelError
from cnnlab.train.config import TrainConfig

CONFIG, METRICS, WEIGHTS = "config.json", "metrics.jsonl", "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``."""
    # a fresh name, created by ``write`` itself so the file gets the usual permissions
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)                  # make the rename itself durable


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:                             # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class RunFolder:
    """Writes one run's files; refuses to replace finished results, or an unfinished run's
    checkpoint, unless ``overwrite``. ``resume``: the folder must hold an unfinished run.
    ``writer=False`` (the other processes of a data-parallel run) checks and keeps the records
    but writes nothing: one process, rank 0, owns the folder."""

    def __init__(self, path: str | os.PathLike[str], overwrite: bool = False,
                 resume: bool = False, writer: bool = True) -> None:
        self.path = Path(path)
        self.overwrite, self.resume, self.writer = overwrite, resume, writer
        self.records: list[dict[str, Any]] = []
        where = str(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise CnnlabError(f"--out {where!r} is a file, not a folder; pick another --out")
        if resume:
            self._check_resumable()
        elif (self.path / WEIGHTS).exists() and not overwrite:
            raise CnnlabError(f"run folder {where!r} already holds a trained model; "
                              "pick another --out, or pass --overwrite (overwrite=True) to "
                              "replace it")
        elif (self.path / CHECKPOINT).exists() and not overwrite:
            from cnnlab.train.checkpoint import describe  # it builds on this module

            at = describe(self.path / CHECKPOINT)
            raise CnnlabError(f"run folder {where!r} holds an unfinished run (checkpoint in "
                              f"epoch {at['epoch']} after step {at['step']}); continue it with "
                              f"`cnnlab train --resume {where}` (resume=True), or pass "
                              "--overwrite (overwrite=True) to start again")

    def _check_resumable(self) -> None:
        where = str(self.path)
        if self.overwrite:
            raise CnnlabError("resume and overwrite contradict each other: --resume continues "
                              "the run in the folder, --overwrite starts it again; pick one")
        if not self.path.is_dir():
            raise CnnlabError(f"cannot resume {where!r}: no such folder; pass the --out folder "
                              "of a run that `cnnlab train` started")
        if not (self.path / CONFIG).is_file():
            raise CnnlabError(f"cannot resume {where!r}: it has no {CONFIG}, so `cnnlab train` "
                              "did not start a run there")
        if (self.path / WEIGHTS).exists():
            raise CnnlabError(f"cannot resume {where!r}: the run is finished ({WEIGHTS} "
                              "exists); train a new run with another --out, or pass "
                              "--overwrite to start it again")
        if not (self.path / CHECKPOINT).is_file():
            raise CnnlabError(f"cannot resume {where!r}: the run stopped before its first "
                              f"checkpoint ({CHECKPOINT} is missing); start it again: "
                              f"`cnnlab train MODEL --out {where}`")

    def start(self, config: TrainConfig, records: list[dict[str, Any]] | None = None) -> None:
        """Create the folder, drop stale results (a resumed run keeps ``records``, the metrics
        of its checkpoint, and its checkpoint), write ``config.json`` and the metrics."""
        if not self.writer:
            self.records = [dict(r) for r in records or ()]
            return
        self.path.mkdir(parents=True, exist_ok=True)
        for tmp in self.path.glob(".*.tmp"):  # left by a kill in the middle of a write
            if tmp.name.split(".")[1] in ("config", "metrics", "model", "checkpoint",
                                           "confusion", "curves"):
                tmp.unlink(missing_ok=True)
        outputs = (WEIGHTS, METRICS, "confusion.json", "curves.png", "confusion.png")
        stale = outputs if self.resume else (*outputs, CHECKPOINT)
        for name in stale:                    # they would not match the new config
            (self.path / name).unlink(missing_ok=True)
        write_text(self.path / CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
        self.records = [dict(r) for r in records or ()]
        if self.records:
            self._write_metrics()

    def finish(self) -> None:
        """The model is saved: the checkpoint is no longer needed."""
        if self.writer:
            (self.path / CHECKPOINT).unlink(missing_ok=True)

    def log(self, record: Mapping[str, Any]) -> None:
        """Add one epoch's metrics: ``metrics.jsonl`` is rewritten whole, atomically."""
        self.records.append(dict(record))
        self._write_metrics()

    def _write_metrics(self) -> None:
        if self.writer:
            write_text(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in self.records))

    def save_model(self, model: nn.Module, metadata: Mapping[str, Any]) -> Path:
        """Save the weights with ``metadata`` (values stored as JSON strings)."""
        # clones: safetensors refuses tensors that share memory (tied weights)
        state = {k: v.detach().to("cpu", copy=True).contiguous()
                 for k, v in model.state_dict().items()}
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
        path = self.path / WEIGHTS
        if self.writer:
            atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))
        return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a ``model.safetensors`` written by the trainer, JSON values decoded."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CnnlabError(f"{path}: not a readable safetensors file ({err}); train the run "
                          "again") from None
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v                           # plain strings, e.g. the model name
    return out


def load_run(run_dir: str | os.PathLike[str], model: nn.Module | None = None
             ) -> tuple[nn.Module, TrainConfig]:
    """Rebuild a trained model from a run folder: ``(model in eval mode, its TrainConfig)``.

    ``model``: load the weights into this module instead of building ``config.model`` from the
    registry (for models that are not registered).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise CnnlabError(f"run folder {str(run)!r} does not exist; pass a folder written "
                          "by `cnnlab train --out`")
    for name in (CONFIG, WEIGHTS):
        if not (run / name).is_file():
            raise CnnlabError(f"{str(run)!r} is not a finished run: {name} is missing; train "
                              f"into it with `cnnlab train MODEL --out {run}`")
    try:
        values = json.loads((run / CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CnnlabError(f"{run / CONFIG}: not valid JSON ({err}); train the run again"
                          ) from None
    config = TrainConfig.from_dict(values)
    meta = read_metadata(run / WEIGHTS)
    if model is None:
        from cnnlab import models

        try:
            num_classes, in_channels = int(meta["num_classes"]), int(meta["in_channels"])
        except (KeyError, TypeError, ValueError):
            raise CnnlabError(f"{run / WEIGHTS} lacks the trainer's metadata (num_classes, "
                              "in_channels); pass the model: load_run(run, model=...)") from None
        model = models.create(str(meta.get("model", config.model)), num_classes=num_classes,
                              in_channels=in_channels)
    state = load_file(str(run / WEIGHTS))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ModelError(f"the weights in {run / WEIGHTS} do not fit the model "
                         f"{config.model!r}: {' '.join(s.strip() for s in first[:3])}") from None
    return model.eval(), config


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (cpu for an empty model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")
