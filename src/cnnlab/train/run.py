"""The run folder: ``config.json``, ``metrics.jsonl`` and ``model.safetensors``.

Every write goes to a temporary file in the same folder that is then renamed over the target
(``os.replace`` is atomic), so an interrupted run never leaves a half-written file: the
metrics hold whole lines for the finished epochs, and the weights exist only once complete.
Weights are safetensors; nothing is ever unpickled.
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


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class RunFolder:
    """Writes one run's files; refuses to replace finished results unless ``overwrite``."""

    def __init__(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.records: list[dict[str, Any]] = []
        if self.path.exists() and not self.path.is_dir():
            raise CnnlabError(f"--out {str(self.path)!r} is a file, not a folder; pick another "
                              "--out")
        if (self.path / WEIGHTS).exists() and not overwrite:
            raise CnnlabError(f"run folder {str(self.path)!r} already holds a trained model; "
                              "pick another --out, or pass --overwrite (overwrite=True) to "
                              "replace it")

    def start(self, config: TrainConfig) -> None:
        """Create the folder, drop stale results, write ``config.json``."""
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in (WEIGHTS, METRICS):      # they would not match the new config
            (self.path / stale).unlink(missing_ok=True)
        write_text(self.path / CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")

    def log(self, record: Mapping[str, Any]) -> None:
        """Add one epoch's metrics: ``metrics.jsonl`` is rewritten whole, atomically."""
        self.records.append(dict(record))
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        write_text(self.path / METRICS, text)

    def save_model(self, model: nn.Module, metadata: Mapping[str, Any]) -> Path:
        """Save the weights with ``metadata`` (values stored as JSON strings)."""
        # clones: safetensors refuses tensors that share memory (tied weights)
        state = {k: v.detach().to("cpu", copy=True).contiguous()
                 for k, v in model.state_dict().items()}
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
        path = self.path / WEIGHTS
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
