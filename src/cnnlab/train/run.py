"""The run folder: ``config.json``, ``metrics.jsonl``, ``model.safetensors`` once finished,
and ``checkpoint.safetensors`` while unfinished (see :mod:`cnnlab.train.checkpoint`).

Every write goes to a temporary file in the same folder that is flushed to disk and then
renamed over the target (``os.replace`` is atomic), so an interrupted run or a full disk never
leaves a half-written file: the metrics hold whole lines for the finished epochs, the last
checkpoint stays whole until the next one has been written, and the weights exist only once
complete. Weights are safetensors; nothing is ever unpickled. Files get the usual
permissions (``0o666`` less the umask), weights included.

A run folder never deletes or replaces a file that cnnlab did not write. A folder is a cnnlab
run when its ``config.json`` is a training config (:func:`is_run_config`): cnnlab writes that
file first and never removes it, so every run folder has one, and another program's
``config.json`` would have to use cnnlab's setting names, and only those. Any other folder that
is not empty is refused unless ``overwrite``; then only cnnlab's own files (:data:`OWN`) are
replaced, and everything else in it stays.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as serialize
from torch import nn

from cnnlab.errors import CnnlabError, ModelError, StorageError
from cnnlab.train.config import TrainConfig

CONFIG, METRICS, WEIGHTS = "config.json", "metrics.jsonl", "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
CONFUSION, CURVES, CONFUSION_PLOT = "confusion.json", "curves.png", "confusion.png"
RECONSTRUCTIONS = "reconstructions.png"   # an autoencoder's test images above their reconstructions
LOCALIZATIONS = "localizations.png"       # a localiser's test images with true and predicted boxes
OUTPUTS = (WEIGHTS, METRICS, CONFUSION, CURVES, CONFUSION_PLOT, RECONSTRUCTIONS,
           LOCALIZATIONS)                                                 # a run's results
OWN = (CONFIG, CHECKPOINT, *OUTPUTS)     # every file the trainer writes (and tensorboard/)
# settings every config.json that cnnlab wrote holds (later versions add more, never fewer)
_CORE = frozenset(("model", "data", "epochs", "batch_size", "lr", "seed", "out"))
_TMP = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.tmp")          # atomic_write's names

Status = Literal["new", "started", "unfinished", "finished", "foreign"]


# -- writing files --------------------------------------------------------------------------

def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.
    An operating-system error (a full disk, a read-only folder) raises :class:`StorageError`,
    one line that names the file, and leaves ``path`` as it was."""
    # a fresh name, created by ``write`` itself so the file gets the usual permissions
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, StorageError):
            raise storage_error(f"could not write {path}", err) from None
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


@contextlib.contextmanager
def staged_folder(out: Path, what: str, *, merge: bool = False) -> Iterator[Path]:
    """A new temporary folder beside ``out`` to fill with ``what`` (e.g. "the pictures"): on
    success it becomes ``out`` in one rename, so a reader sees all of it or none; on any error
    or interruption it is removed, with the parent folders made for it. ``out`` must not
    exist, or be an empty folder; ``merge``: an existing ``out`` gets the new files one by one
    (each replaced atomically), and keeps its others."""
    parent = out.parent
    made = [p for p in (parent, *parent.parents) if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
        folder = parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
        folder.mkdir()
    except OSError as err:
        raise storage_error(f"cannot create a folder for {what} beside {str(out)!r}", err,
                            ", or pick another --out") from None
    try:
        yield folder
        try:
            if hasattr(os, "sync"):     # every file on disk before the rename shows them: one
                os.sync()               # call, where an fsync per file took 5x the writing
            if merge and out.is_dir() and any(out.iterdir()):
                for f in sorted(folder.iterdir()):
                    os.replace(f, out / f.name)
                folder.rmdir()
            else:
                folder.rename(out)      # atomic; replaces only an empty folder
        except OSError as err:
            raise storage_error(f"cannot move {what} into {str(out)!r}", err,
                                " (was something written there meanwhile?)") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        for p in made:                  # deepest first; only empty ones
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Save ``tensors`` as a safetensors file, atomically. Serialised in memory and written by
    Python: the file follows the umask (safetensors' own writer makes it 0600), and a full
    disk is an ``OSError`` with its errno (safetensors' is a ``SafetensorError``)."""
    data = serialize(dict(tensors), metadata=dict(metadata) if metadata else None)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


_ADVICE = {errno.ENOSPC: "free space on that disk", errno.EDQUOT: "free space on that disk",
           errno.EROFS: "the disk is read-only: use a folder on a writable disk",
           errno.EACCES: "you may not write there: fix the permissions or use another folder",
           errno.EPERM: "you may not write there: fix the permissions or use another folder",
           errno.ENOTDIR: "a part of the path is a file, not a folder: use another path",
           errno.EEXIST: "a part of the path is a file, not a folder: use another path"}


def storage_error(what: str, err: OSError, then: str = "") -> StorageError:
    """``what`` failed because of ``err``, as one line: the system's reason and what to do."""
    advice = _ADVICE.get(err.errno or 0, "check the path, or use another folder")
    return StorageError(f"{what}: {err.strerror or err}; {advice}{then}", err.errno,
                        err.strerror)


# -- what a folder holds --------------------------------------------------------------------

def is_run_config(path: Path) -> bool:
    """True when ``path`` is a ``config.json`` that cnnlab wrote: a JSON object of training
    settings only, with the settings every version of cnnlab writes."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(values, dict) or not _CORE <= values.keys():
        return False
    try:
        TrainConfig.from_dict(values, source=str(path))
    except (CnnlabError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Inventory:
    """What a folder holds, as a run folder sees it."""

    path: Path
    exists: bool
    entries: tuple[str, ...]      # its names, less cnnlab's own temporary files
    run: bool                     # its config.json is cnnlab's

    @property
    def status(self) -> Status:
        """new (absent or empty), foreign (holds files cnnlab did not write), or a run that is
        started (no checkpoint yet), unfinished (a checkpoint) or finished (the weights)."""
        if not self.entries:
            return "new"
        if not self.run:
            return "foreign"
        if WEIGHTS in self.entries:
            return "finished"
        return "unfinished" if CHECKPOINT in self.entries else "started"


def inventory(path: str | os.PathLike[str]) -> Inventory:
    """Look at ``path`` (a folder that may not exist) without changing it."""
    folder = Path(path)
    where = str(folder)
    if folder.exists() and not folder.is_dir():
        raise CnnlabError(f"--out {where!r} is a file, not a folder; pick another --out")
    if not folder.exists():
        return Inventory(folder, False, (), False)
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        raise storage_error(f"cannot read the run folder {where!r}", err) from None
    entries = tuple(n for n in names if not _own_tmp(n))
    return Inventory(folder, True, entries, CONFIG in entries and is_run_config(folder / CONFIG))


def run_status(path: str | os.PathLike[str]) -> Status:
    """``inventory(path).status``: what ``cnnlab train --resume auto --out PATH`` will do."""
    return inventory(path).status


def _own_tmp(name: str) -> bool:
    match = _TMP.fullmatch(name)
    return match is not None and (match["name"] in OWN or match["name"].startswith("features-"))


def claim(base: str | os.PathLike[str]) -> Path:
    """Create and return a new folder: ``base``, else ``base-2``, ``base-3``, ... (``mkdir``
    refuses a folder that exists, so two runs started at once never get the same one)."""
    first = Path(base)
    try:
        first.parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            path = first if n == 1 else first.with_name(f"{first.name}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
    except OSError as err:
        raise storage_error(f"cannot create a run folder in {str(first.parent)!r}", err,
                            ", or pass --out") from None
    raise AssertionError("unreachable")         # itertools.count never ends


# -- the run folder -------------------------------------------------------------------------

class RunFolder:
    """Writes one run's files; refuses to replace finished results, an unfinished run's
    checkpoint, or a folder of other files, unless ``overwrite``. ``resume``: the folder must
    hold an unfinished run. ``writer=False`` (the other processes of a data-parallel run)
    checks and keeps the records but writes nothing: one process, rank 0, owns the folder.

    The folder is created, or checked to be writable, here: before any slow work. ``path``
    None (:attr:`fresh`): a new folder named ``default``, or ``default-2``, ``-3``, ... when
    taken, claimed by :meth:`start` (so a run that fails before it starts leaves no empty
    folder behind); here its parent is checked."""

    def __init__(self, path: str | os.PathLike[str] | None, overwrite: bool = False,
                 resume: bool = False, writer: bool = True, *,
                 default: str | os.PathLike[str] | None = None) -> None:
        self.overwrite, self.resume, self.writer = overwrite, resume, writer
        self.records: list[dict[str, Any]] = []
        self.fresh = path is None
        self.claimed = False                   # a fresh folder is made by start()
        self.started = False
        self.made: list[Path] = []             # folders made here, removed by abandon()
        self.foreign = False                   # it holds files cnnlab did not write
        if path is None:
            if resume or default is None:
                raise CnnlabError("resuming needs the run folder: pass --out RUN (out=...)"
                                  if resume else "no run folder given: pass --out RUN (out=...)")
            # under torchrun rank 0 picks the folder; the others write nothing there
            self.path = Path(default)
            if writer:
                self._prepare(inventory(self.path.parent), self.path.parent)
            return
        self.path = Path(path)
        found = inventory(self.path)
        if resume:
            self._check_resumable(found)
        else:
            self._check_fresh(found)
        if writer:
            self._prepare(found)

    def _check_fresh(self, found: Inventory) -> None:
        where, status = str(self.path), found.status
        if status == "finished" and not self.overwrite:
            raise CnnlabError(f"run folder {where!r} already holds a trained model; "
                              "pick another --out, or pass --overwrite (overwrite=True) to "
                              "replace it")
        if status == "unfinished" and not self.overwrite:
            from cnnlab.train.checkpoint import describe  # it builds on this module

            at = describe(self.path / CHECKPOINT)
            raise CnnlabError(f"run folder {where!r} holds an unfinished run (checkpoint in "
                              f"epoch {at['epoch']} after step {at['step']}); continue it with "
                              f"`cnnlab train --resume {where}` (resume=True), or pass "
                              "--overwrite (overwrite=True) to start again")
        self.foreign = status == "foreign"
        if self.foreign and not self.overwrite:
            raise CnnlabError(f"--out {where!r} holds files that cnnlab did not write "
                              f"({_listed(found.entries)}); pick a new or empty folder, or pass "
                              f"--overwrite to train there anyway (your files stay; only "
                              f"cnnlab's own, {', '.join(OWN)}, are replaced)")

    def _check_resumable(self, found: Inventory) -> None:
        where = str(self.path)
        if self.overwrite:
            raise CnnlabError("resume and overwrite contradict each other: --resume continues "
                              "the run in the folder, --overwrite starts it again; pick one")
        if not found.exists:
            raise CnnlabError(f"cannot resume {where!r}: no such folder; pass the --out folder "
                              "of a run that `cnnlab train` started")
        if CONFIG not in found.entries:
            raise CnnlabError(f"cannot resume {where!r}: it has no {CONFIG}, so `cnnlab train` "
                              "did not start a run there")
        if WEIGHTS in found.entries:
            raise CnnlabError(f"cannot resume {where!r}: the run is finished ({WEIGHTS} "
                              "exists); train a new run with another --out, or pass "
                              "--overwrite to start it again")
        if CHECKPOINT not in found.entries:
            raise CnnlabError(f"cannot resume {where!r}: the run stopped before its first "
                              f"checkpoint ({CHECKPOINT} is missing); start it again: "
                              f"`cnnlab train MODEL --out {where}`")

    def _prepare(self, found: Inventory, folder: Path | None = None) -> None:
        """Create ``folder`` (default: the run folder), or make sure it can be written, before
        the slow work starts."""
        folder = folder or self.path
        where = str(folder)
        if not found.exists:
            missing = [folder, *(p for p in folder.parents if not p.exists())]
            try:
                folder.mkdir(parents=True)
                self.made = missing                # deepest first
            except OSError as err:
                what = "the run folder" if folder == self.path else "the folder for runs"
                raise storage_error(f"cannot create {what} {where!r}", err,
                                    ", or pick another --out") from None
            return
        probe = folder / f".probe.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            probe.unlink()
        except OSError as err:
            then = (", or copy the run to a writable disk and resume the copy" if self.resume
                    else ", or pick another --out")
            raise storage_error(f"cannot write in the run folder {where!r}", err, then
                                ) from None

    def start(self, config: TrainConfig, records: list[dict[str, Any]] | None = None) -> None:
        """Claim a :attr:`fresh` folder, drop stale results (a resumed run keeps ``records``,
        the metrics of its checkpoint, and its checkpoint), write ``config.json`` (``out``:
        this folder) and the metrics."""
        self.records = [dict(r) for r in records or ()]
        self.started = True
        if not self.writer:
            return
        if self.fresh and not self.claimed:
            self.path, self.claimed = claim(self.path), True
        if self.foreign and config.tensorboard:
            from cnnlab.train.tensorboard import TENSORBOARD  # it builds on this module

            events = sorted(p.name for p in (self.path / TENSORBOARD).glob("events.*"))
            if events:
                raise CnnlabError(f"--out {str(self.path)!r} holds TensorBoard events that "
                                  f"cnnlab did not write ({TENSORBOARD}/{events[0]}); move "
                                  f"{self.path / TENSORBOARD} away, pick another --out, or "
                                  "pass --no-tensorboard")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for tmp in self.path.glob(".*.tmp"):  # left by a kill in the middle of a write
                if _own_tmp(tmp.name):
                    tmp.unlink(missing_ok=True)
            stale = OUTPUTS if self.resume else (*OUTPUTS, CHECKPOINT)
            for name in stale:                    # they would not match the new config
                (self.path / name).unlink(missing_ok=True)
        except OSError as err:
            raise storage_error(f"cannot prepare the run folder {str(self.path)!r}", err
                                ) from None
        self._write(self.path / CONFIG, lambda p: write_text(
            p, json.dumps({**config.to_dict(), "out": str(self.path)}, indent=2) + "\n"))
        if self.records:
            self._write_metrics()

    def _write(self, path: Path, write: Callable[[Path], None]) -> None:
        """``write(path)``; a storage error says how to carry on."""
        try:
            write(path)
        except StorageError as err:
            then = (f"; then continue the run: `cnnlab train --resume {self.path}`"
                    if (self.path / CHECKPOINT).is_file() else "; then start the run again")
            raise StorageError(f"{err}{then}", err.errno, err.strerror) from None

    def abandon(self) -> None:
        """A run that fails before it starts leaves no folder behind: remove the empty
        folders made for it (never one that holds anything)."""
        if self.started:
            return
        for folder in self.made:
            try:
                folder.rmdir()
            except OSError:                    # not empty, or gone: leave the rest alone
                break
        self.made = []

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
            text = "".join(json.dumps(r) + "\n" for r in self.records)
            self._write(self.path / METRICS, lambda p: write_text(p, text))

    def save_model(self, model: nn.Module, metadata: Mapping[str, Any]) -> Path:
        """Save the weights with ``metadata`` (values stored as JSON strings)."""
        # clones: safetensors refuses tensors that share memory (tied weights)
        state = {k: v.detach().to("cpu", copy=True).contiguous()
                 for k, v in model.state_dict().items()}
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
        path = self.path / WEIGHTS
        if self.writer:
            self._write(path, lambda p: write_safetensors(p, state, meta))
        return path


def _listed(names: tuple[str, ...], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


# -- reading a finished run -----------------------------------------------------------------

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


def read_config(run: Path) -> TrainConfig:
    """The :class:`TrainConfig` in ``run/config.json``."""
    path = run / CONFIG
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise storage_error(f"cannot read {path}", err) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CnnlabError(f"{path}: not valid JSON ({err}); train the run again") from None
    if not isinstance(values, dict):
        raise CnnlabError(f"{path}: holds a {type(values).__name__}, not the settings of a run; "
                          "train the run again")
    return TrainConfig.from_dict(values, source=str(path))


def load_run(run_dir: str | os.PathLike[str], model: nn.Module | None = None
             ) -> tuple[nn.Module, TrainConfig]:
    """Rebuild a trained model from a run folder: ``(model in eval mode, its TrainConfig)``.

    ``model``: load the weights into this module instead of building ``config.model`` from the
    registry (for models that are not registered); a built model's ``default_input_shape`` is
    the one the run was trained at. Weights saved for another model than the
    folder's ``config.json`` names are refused.
    """
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise CnnlabError(f"{str(run)!r} is a file, not a run folder; pass the folder that "
                          "`cnnlab train --out` wrote (the one holding config.json and "
                          "model.safetensors)")
    if not run.is_dir():
        raise CnnlabError(f"run folder {str(run)!r} does not exist; pass a folder written "
                          "by `cnnlab train --out`")
    for name in (CONFIG, WEIGHTS):
        if not (run / name).is_file():
            raise CnnlabError(f"{str(run)!r} is not a finished run: {name} is missing; train "
                              f"into it with `cnnlab train MODEL --out {run}`")
    config = read_config(run)
    meta = read_metadata(run / WEIGHTS)
    saved_for = meta.get("model")
    if saved_for is not None and saved_for != config.model:
        raise ModelError(f"{run / WEIGHTS} holds weights of {saved_for!r}, but {run / CONFIG} "
                         f"is the config of a {config.model!r} run: the two files come from "
                         "different runs; put a run's own files together, or train it again")
    if model is None:
        from cnnlab import models

        try:
            num_classes = int(meta["num_classes"])
            # what the data decided of the model (older runs: the channel count alone)
            model_args = dict(meta.get("model_args") or {"in_channels": int(meta["in_channels"])})
        except (KeyError, TypeError, ValueError):
            raise CnnlabError(f"{run / WEIGHTS} lacks the trainer's metadata (num_classes, "
                              "in_channels); pass the model: load_run(run, model=...)") from None
        from cnnlab.train.tasks import adapt  # it builds on this module's neighbours

        built = models.create(config.model, num_classes=num_classes, **model_args)
        # the input it was trained at, which may differ from the builder's default (an
        # autoencoder or a fully convolutional net trained on other sizes)
        shape = meta.get("input_shape")
        if isinstance(shape, list) and getattr(built, "default_input_shape", None) is not None:
            built.default_input_shape = tuple(int(v) for v in shape)
        model = adapt(built, config)           # what --task made of it (a box head, ...)
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
