"""Checkpoints: a plain dict of state dicts, RNG states, step and config, in one safetensors
file, never pickled.

``RUN/checkpoint.safetensors`` holds every tensor of the dict (the model's weights, the
optimizer's momentum buffers, the RNG states as uint8 tensors, the epoch's running sums), each
named by its path (``model.conv1.weight``, ``optimizer.state.0.momentum_buffer``,
``rng.torch``); everything else (epoch, step, optimizer hyper-parameters, the schedule's and
the GradScaler's scalars, the metrics so far, the config) is JSON in the file's metadata, with
``{"__tensor__": name}`` where a tensor was.

One file rather than a ``.safetensors`` + ``.json`` pair: it is written to a temporary file,
flushed and renamed over the last one (:func:`cnnlab.train.run.atomic_write`), so a reader
always sees one whole checkpoint -- the tensors and the step they belong to cannot disagree,
and a kill or a full disk during a write leaves the previous checkpoint as it was. The JSON is
readable without torch: ``safe_open(path, "pt").metadata()["state"]``, or :func:`describe`.

>>> save(Path("/tmp/ck.safetensors"), {"step": 3, "w": torch.ones(2)})  # doctest: +SKIP
>>> load(Path("/tmp/ck.safetensors"))                                   # doctest: +SKIP
{'step': 3, 'w': tensor([1., 1.])}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from cnnlab.errors import CnnlabError
from cnnlab.train.config import TrainConfig
from cnnlab.train.run import CHECKPOINT, CONFIG, WEIGHTS, read_config, write_safetensors

FORMAT = "cnnlab-checkpoint/1"

# what may differ between a run and its resumption: where things are, and how far it goes
RESUMABLE = ("epochs", "data_dir", "device", "num_workers", "eval_batch_size", "tensorboard",
             "plots")
# what a resumed run ignores: the folder is where it is now (it may have been moved)
_WHERE = ("out",)
_OUTPUT_ONLY = tuple(k for k in RESUMABLE if k != "epochs")   # change nothing a run computes
_LENGTH_DEPENDENT = ("cosine", "onecycle")     # schedules whose curve depends on epochs


def save(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` (nested dicts and lists of tensors and JSON values) to ``path``,
    atomically."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _split(state, "", tensors)
    meta = {"format": FORMAT, "state": json.dumps(tree)}
    write_safetensors(path, tensors, meta)


def load(path: Path) -> dict[str, Any]:
    """The dict :func:`save` wrote, tensors on the CPU."""
    meta = _metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CnnlabError(f"{path}: not a readable checkpoint ({err}); start the run "
                          "again with --overwrite") from None
    return cast(dict[str, Any], _join(json.loads(meta["state"]), tensors))


def describe(path: Path) -> dict[str, Any]:
    """Epoch, step and global step of a checkpoint, read from its metadata only."""
    tree = json.loads(_metadata(path)["state"])
    return {k: tree[k] for k in ("epoch", "step", "global_step")}


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CnnlabError(f"{path}: not a readable checkpoint ({err}); start the run again "
                          "with --overwrite") from None
    if meta.get("format") != FORMAT or "state" not in meta:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (format "
                          f"{meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def _split(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON tree of ``value`` with its tensors moved into ``tensors`` (CPU copies: the file
    must not share memory, and later steps must not change what is being written)."""
    if isinstance(value, torch.Tensor):
        if path in tensors:
            raise ValueError(f"two tensors of the checkpoint are both named {path!r}")
        tensors[path] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    prefix = f"{path}." if path else ""
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value):
            return {k: _split(v, prefix + k, tensors) for k, v in value.items()}
        # non-str keys (the optimizer's parameter indices) must come back as they were
        return {"__items__": [[k, _split(v, f"{prefix}{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_split(v, f"{prefix}{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot checkpoint {path} of type {type(value).__name__}")


def _join(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        if set(tree) == {"__items__"}:
            return {k: _join(v, tensors) for k, v in tree["__items__"]}
        return {k: _join(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, tensors) for v in tree]
    return tree


# -- resuming -------------------------------------------------------------------------------

def check_resume(saved: TrainConfig, config: TrainConfig, epoch: int, step: int) -> None:
    """Refuse a ``config`` that would make the resumed run differ from the one checkpointed
    (at batch ``step`` of ``epoch``): only the fields in :data:`RESUMABLE` may change, and
    ``epochs`` only for schedules that do not depend on it, and not below the checkpoint."""
    old, new = saved.to_dict(), config.to_dict()
    k = _first_change(old, new, (*RESUMABLE, *_WHERE))
    if k is not None:
        raise CnnlabError(f"cannot resume with {k}={new[k]!r}: the run was started with "
                          f"{k}={old[k]!r}, and a resumed run must stay the same run; only "
                          f"{', '.join(RESUMABLE)} may change")
    if config.epochs != saved.epochs:
        if saved.schedule in _LENGTH_DEPENDENT:
            raise CnnlabError(f"cannot resume with epochs={config.epochs}: the "
                              f"{saved.schedule!r} schedule was laid out for "
                              f"epochs={saved.epochs}; resume without --epochs")
        if config.epochs < (epoch if step else epoch - 1):
            done = f"is part way through epoch {epoch}" if step else \
                f"has finished {epoch - 1} epochs"
            raise CnnlabError(f"cannot resume with epochs={config.epochs}: the checkpoint "
                              f"{done} already")


def _first_change(old: dict[str, Any], new: dict[str, Any], free: tuple[str, ...]
                  ) -> str | None:
    """The first setting that differs between ``old`` and ``new`` outside ``free``."""
    return next((k for k in old if old[k] != new[k] and k not in free), None)


def resume_config(run_dir: str | os.PathLike[str], **changes: Any) -> TrainConfig:
    """The config of the run in ``run_dir`` (its ``config.json``) with ``changes`` (checked by
    :func:`check_resume` when training starts); ``out`` is ``run_dir``."""
    run = Path(run_dir)
    if not (run / CONFIG).is_file():
        what = "no such folder" if not run.is_dir() else f"it has no {CONFIG}"
        raise CnnlabError(f"cannot resume {str(run)!r}: {what}; pass the --out folder of a "
                          "run that `cnnlab train` started")
    saved = read_config(run)
    return TrainConfig.from_dict({**saved.to_dict(), **changes, "out": str(run)})


def check_finished(run_dir: str | os.PathLike[str], config: TrainConfig) -> str:
    """The one-line note for resuming the finished run in ``run_dir`` (nothing to do), or a
    refusal when ``config`` asks for more than the run did (it keeps no checkpoint to go on
    from); ``config`` as :func:`resume_config` makes it."""
    run = Path(run_dir)
    old, new = read_config(run).to_dict(), config.to_dict()
    k = _first_change(old, new, (*_OUTPUT_ONLY, *_WHERE))
    if k is not None:
        raise CnnlabError(f"cannot resume {str(run)!r} with {k}={new[k]!r}: the run finished "
                          f"with {k}={old[k]!r} and keeps no checkpoint to go on from; train a "
                          f"new run with another --out (--init {run} starts from its weights)")
    return (f"{run}: the run is finished ({old['epochs']} epochs, {WEIGHTS} written); nothing "
            "to do, its files are as they were")


__all__ = ["CHECKPOINT", "FORMAT", "RESUMABLE", "check_finished", "check_resume", "describe",
           "load", "resume_config", "save"]
