"""Several runs of one setting in one folder: k-fold cross-validation (``cnnlab train --folds
K``, :func:`cross_validate`) and the learning curve (``cnnlab learning-curve``,
:mod:`cnnlab.train.curve`). Each run is a normal run folder that :func:`~cnnlab.train.train`
writes with the series' settings and the data the series gives it -- there is no second
loop -- so ``cnnlab plot`` and ``load_run`` work on each one.

A series folder holds ``series.json`` (what the series is: its kind, its settings and a
digest of how it split the data; written first), one sub-folder per run, and its results at
the end (cross-validation: ``summary.json``). A cross-validation also holds ``config.json``,
its settings with ``folds``, so that ``cnnlab train --resume RUN`` finds it as it finds a
single run.

Cross-validation (8.6.4: Kim's sentence classifiers were measured by 10-fold CV on MR): the
data set's train and test splits are joined (:meth:`~cnnlab.data.ImageDataset.join`, train
first) and dealt into K stratified folds by :func:`stratified_folds`: each class's examples
are put in a random order drawn from ``torch.Generator().manual_seed(seed)`` (the classes in
id order, one ``randperm`` each), the classes' orders are laid end to end, and position p goes
to fold ``p mod K``. Every fold then holds each class's examples to within one, and the folds'
sizes differ by at most one; the same seed, data and torch version give the same folds, and a
resumption checks that they are (a digest in ``series.json``). Run k trains on the other
folds and is tested on fold k, in ``RUN/fold-01`` ... ``RUN/fold-K``. ``summary.json`` holds
each fold's last test figures and their mean and *sample* standard deviation (n - 1 in the
denominator: the spread to expect of one more fold).

Resuming (``cnnlab train --resume RUN``, or ``--resume auto --out RUN``) trains what is left:
a finished fold is kept (its settings checked), a fold with a checkpoint continues from it,
a fold not started starts. Nothing but cnnlab's own files is ever replaced; a folder of other
files is refused unless ``overwrite``.

>>> config = TrainConfig("lenet5_modern", epochs=1, folds=3, out="runs/cv")
>>> cross_validate(config)["summary"]                                   # doctest: +SKIP
'test accuracy 30.6% ± 4.8% over 3 folds'
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cnnlab.data import ImageDataset
from cnnlab.errors import CnnlabError, ConfigError, DataError
from cnnlab.train.config import TrainConfig
from cnnlab.train.run import (
    CHECKPOINT,
    CONFIG,
    OUTPUTS,
    claim,
    inventory,
    read_metadata,
    run_status,
    write_text,
)
from cnnlab.train.tasks import Task

SERIES, SUMMARY = "series.json", "summary.json"
FORMAT = "cnnlab-series/1"
CROSS_VALIDATION, LEARNING_CURVE = "cross-validation", "learning-curve"
# what a series may change when it goes on: where things are and what is written beside the
# runs, never what they compute (``epochs`` too: a finished run keeps no checkpoint to extend)
FREE = ("out", "data_dir", "device", "num_workers", "eval_batch_size", "tensorboard", "plots")
STD = "sample standard deviation (n - 1 in the denominator)"

Resume = bool | Literal["auto"]   # False: a new series; True: go on; "auto": either


# -- splitting the data ---------------------------------------------------------------------

def class_labels(ds: ImageDataset, what: str) -> torch.Tensor:
    """``ds``'s labels as (N,) class ids; data without one class per example is refused
    (``what``: the series that needs them, for the message)."""
    labels = ds.labels
    if (not isinstance(labels, torch.Tensor) or labels.dim() != 1
            or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8)):
        raise DataError(f"{what} stratifies by class, but {ds.name}'s targets are not one class "
                        "id per example; use a data set of classes")
    return labels.long()


def class_orders(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Each present class's example indices (classes in id order) in a random order drawn
    from one generator seeded with ``seed``: the one draw both the folds and the learning
    curve's nested subsets are made from."""
    generator = torch.Generator().manual_seed(seed)
    orders = []
    for c in torch.unique(labels).tolist():
        index = torch.nonzero(labels == c).flatten()
        orders.append(index[torch.randperm(len(index), generator=generator)])
    return orders


def smallest_class(labels: torch.Tensor, classes: Sequence[str]) -> tuple[str, int]:
    """(name, count) of the present class with the fewest examples."""
    counts = torch.bincount(labels)
    present = torch.nonzero(counts).flatten()
    c = int(present[counts[present].argmin()])
    return (classes[c] if c < len(classes) else str(c)), int(counts[c])


def stratified_folds(labels: torch.Tensor, k: int, seed: int,
                     classes: Sequence[str] = ()) -> list[torch.Tensor]:
    """The sorted example indices of each of ``k`` stratified folds (see the module's
    docstring for the rule); ``k`` above the smallest class's count is refused."""
    if k < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got folds={k}; pass "
                          "--folds 2 or more (e.g. 10), or train one run without --folds")
    name, count = smallest_class(labels, classes)
    if k > count:
        raise ConfigError(f"folds={k} is more than the {count} examples of class {name!r}, the "
                          f"smallest, so some fold would lack it; pass --folds {count} or fewer")
    order = torch.cat(class_orders(labels, seed))
    fold = torch.empty(len(labels), dtype=torch.long)
    fold[order] = torch.arange(len(labels)) % k
    return [torch.nonzero(fold == f).flatten() for f in range(k)]


def digest(parts: Sequence[torch.Tensor]) -> str:
    """sha256 of index tensors, to check that a resumed series splits the data as before."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.to(torch.int64).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()


# -- the series folder ----------------------------------------------------------------------

def read_series(root: Path) -> dict[str, Any] | None:
    """``root/series.json`` as written by cnnlab, else None."""
    try:
        values = json.loads((root / SERIES).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        return None
    return values


def governs(out: str | None) -> tuple[Path, str | None] | None:
    """The series that the folder ``out`` belongs to: ``(root, None)`` for a series folder,
    ``(root, name)`` for one of its runs; None for any other folder."""
    if out is None:
        return None
    path = Path(out)
    if read_series(path) is not None:
        return path, None
    parent = read_series(path.parent)
    if parent is not None and path.name in parent.get("runs", ()):
        return path.parent, path.name
    return None


def refuse_single(config: TrainConfig) -> CnnlabError:
    """Why ``train(config)`` (one run on the data set's own split) may not write into the
    series folder, or the series run, that ``config.out`` is."""
    where = governs(config.out)
    assert where is not None
    root, name = where
    series = read_series(root) or {}
    kind = series.get("kind", "series")
    if name is None:
        if kind == CROSS_VALIDATION:
            return CnnlabError(f"{str(root)!r} holds a {kind}; continue it with `cnnlab train "
                               f"--resume {root}`, or pick another --out for a single run")
        return CnnlabError(f"{str(root)!r} holds a {kind}; continue it by rerunning `cnnlab "
                           f"{kind} ... --out {root}`, or pick another --out for a single run")
    how = (f"`cnnlab train --resume {root}`" if kind == CROSS_VALIDATION
           else f"rerunning `cnnlab {kind} ... --out {root}`")
    return CnnlabError(f"{str(config.out)!r} is the run {name} of the {kind} in {str(root)!r}, "
                       f"trained on the part of the data the series gives it; continue the "
                       f"series with {how} instead")


def _first_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    return next((k for k in new if k not in FREE and old.get(k) != new[k]), None)


@dataclass
class SeriesFolder:
    """The folder of a series: checked and made before any slow work; :meth:`start` writes
    ``series.json`` (and a cross-validation's ``config.json``)."""

    root: Path
    kind: str
    config: TrainConfig
    overwrite: bool
    saved: dict[str, Any] | None          # the series.json found, when going on
    claimed: bool = False                 # a new folder runs/MODEL-DATA[-N] made by open()
    started: bool = False

    def abandon(self) -> None:
        """A series refused before it started leaves no folder it made behind."""
        if self.claimed and not self.started:
            with contextlib.suppress(OSError):
                self.root.rmdir()

    @classmethod
    def open(cls, config: TrainConfig, kind: str, resume: Resume, overwrite: bool,
             command: str) -> SeriesFolder:
        """Check ``config.out`` for a series of ``kind``: a new or empty folder starts one
        (``resume`` False or "auto"; ``out`` None: a new folder ``runs/MODEL-DATA[-N]``), one
        that holds the same series goes on (``resume`` True or "auto"). ``command``: how the
        user goes on, for the messages."""
        if resume is True and overwrite:
            raise CnnlabError("resume and overwrite contradict each other: --resume continues "
                              "the series in the folder, --overwrite starts it again; pick one")
        if config.out is None:
            if resume is True:
                raise CnnlabError("resuming needs the series folder: pass --resume RUN")
            root = claim(config.default_out())
            return cls(root, kind, _with_out(config, root), overwrite, None, claimed=True)
        root = Path(config.out)
        where = governs(str(root))
        if where is not None and where[1] is not None:
            raise refuse_single(config)
        found = inventory(root)
        saved = read_series(root)
        if saved is not None and not overwrite:
            if saved.get("kind") != kind:
                raise CnnlabError(f"{str(root)!r} holds a {saved.get('kind')}, not a {kind}; "
                                  "pick another --out, or pass --overwrite to start a "
                                  f"{kind} there")
            if resume is False:
                raise CnnlabError(f"{str(root)!r} holds a {kind} already; continue it with "
                                  f"{command.format(root=root)}, or pass --overwrite to start "
                                  "it again")
            old = saved.get("config", {})
            k = _first_change(old, config.to_dict())
            if k is not None:
                raise CnnlabError(f"cannot go on with {k}={config.to_dict()[k]!r}: the {kind} "
                                  f"in {str(root)!r} was started with {k}={old.get(k)!r}, and "
                                  f"its runs must share their settings; drop the change, pick "
                                  "another --out, or pass --overwrite to start it again")
            return cls(root, kind, _with_out(config, root), overwrite, saved)
        if resume is True:
            raise CnnlabError(f"cannot resume {str(root)!r}: it holds no {kind} ({SERIES} is "
                              "missing); pass the folder that a series was started in")
        if found.entries and not overwrite:
            what = ("a run of `cnnlab train`" if found.run
                    else f"files that cnnlab did not write ({', '.join(found.entries[:3])})")
            raise CnnlabError(f"--out {str(root)!r} holds {what}; pick a new or empty folder "
                              "for the series, or pass --overwrite (cnnlab's own files are "
                              "replaced, yours stay)")
        return cls(root, kind, _with_out(config, root), overwrite, None)

    def check_split(self, key: str, value: str) -> None:
        """Refuse to go on when the data are split otherwise than when the series started
        (other files under --data-dir, another torch's random numbers)."""
        if self.saved is not None and self.saved.get(key) != value:
            raise CnnlabError(f"the data in {self.config.data_dir or self.config.data!r} are "
                              f"not split as when the {self.kind} in {str(self.root)!r} started "
                              "(other files, or another torch version's random numbers); "
                              "point --data-dir at the same data, or pass --overwrite to start "
                              "it again")

    def start(self, manifest: Mapping[str, Any], stale: Sequence[str]) -> None:
        """Write ``series.json`` (``manifest`` with the kind and settings) and, for a
        cross-validation, ``config.json``; drop the ``stale`` results of an earlier pass."""
        from cnnlab.train.distributed import context_from_env

        self.started = True
        if not context_from_env().is_main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # --overwrite over a single run: its results are cnnlab's and would be stale too
        for name in (*stale, *((*OUTPUTS, CHECKPOINT) if self.overwrite else ())):
            (self.root / name).unlink(missing_ok=True)
        values = {"format": FORMAT, "kind": self.kind, "config": self.config.to_dict(),
                  **manifest}
        write_json(self.root / SERIES, values)
        if self.kind == CROSS_VALIDATION:
            write_text(self.root / CONFIG, json.dumps(self.config.to_dict(), indent=2) + "\n")

    def member(self, name: str) -> TrainConfig:
        """The settings of the run ``name``: the series' own, in ``root/name``."""
        return _with_out(self.config, self.root / name)


def _with_out(config: TrainConfig, out: Path) -> TrainConfig:
    return TrainConfig.from_dict({**config.to_dict(), "out": str(out)})


def write_json(path: Path, values: Any) -> None:
    """``values`` as indented JSON, atomically (written only by the main process)."""
    write_text(path, json.dumps(values, indent=2) + "\n")


def run_member(config: TrainConfig, datasets: tuple[ImageDataset, ImageDataset],
               model: nn.Module | None, task: Task | None, *, progress: bool, overwrite: bool,
               label: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Train, continue or keep the run ``config.out`` of a series; its record: the last
    test figures (``test_*``), ``train_seconds`` and ``epochs``."""
    from cnnlab.train.checkpoint import check_finished, describe
    from cnnlab.train.loop import train
    from cnnlab.train.metrics import read_metrics

    assert config.out is not None
    out = Path(config.out)
    status = "new" if overwrite else run_status(out)
    train_ds, test_ds = datasets
    sizes = f"{len(train_ds):,} training and {len(test_ds):,} test examples"
    if status == "finished":
        check_finished(out, config)            # refuses a run finished with other settings
        say(f"{label}: finished already ({sizes}); kept")
    else:
        resume = status == "unfinished"
        if resume:
            at = describe(out / CHECKPOINT)
            say(f"{label}: {sizes}; continuing from its checkpoint (epoch {at['epoch']}, "
                f"step {at['step']})")
        else:
            say(f"{label}: {sizes}")
        train(config, None if model is None else copy.deepcopy(model), task=task,
              progress=progress, overwrite=overwrite, datasets=datasets, resume=resume)
    records = read_metrics(out)
    if not records:
        raise CnnlabError(f"{out} holds no epoch's metrics; pass --overwrite to train it again")
    last = records[-1]
    figures = {k: v for k, v in last.items() if k.startswith("test_") and _scalar(v)}
    return {**figures, "train_seconds": last.get("elapsed_seconds"), "epochs": len(records)}


def _scalar(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def mean_std(records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation of each number every record holds."""
    keys = [k for k in records[0] if all(_scalar(r.get(k)) for r in records)]
    means = {k: statistics.fmean(float(r[k]) for r in records) for k in keys}
    stds = {k: statistics.stdev(float(r[k]) for r in records) if len(records) > 1 else 0.0
            for k in keys}
    return means, stds


def _say(progress: bool) -> Callable[[str], None]:
    from cnnlab.train.distributed import context_from_env

    if not progress or not context_from_env().is_main:
        return lambda line: None
    from tqdm.auto import tqdm

    return lambda line: tqdm.write(line)


# -- cross-validation -----------------------------------------------------------------------

def fold_name(k: int, folds: int) -> str:
    """``fold-01`` ... : the folder of fold ``k`` (1-based) of ``folds``."""
    return f"fold-{k:0{max(2, len(str(folds)))}d}"


def cross_validate(config: TrainConfig, model: nn.Module | None = None, *,
                   task: Task | None = None, progress: bool = True, overwrite: bool = False,
                   resume: Resume = False,
                   datasets: tuple[ImageDataset, ImageDataset] | None = None) -> dict[str, Any]:
    """``config.folds``-fold cross-validation of ``config`` in the folder ``config.out`` (see
    the module's docstring). ``resume``: True goes on with the series in ``config.out``,
    "auto" starts it or goes on. ``model``: a fresh copy of it per fold (default: built from
    ``config.model``). ``datasets``: the (train, test) splits to join, instead of loading
    ``config.data``.

    Returns (JSON-ready) ``summary`` (one line), ``folds`` (each fold's record), ``mean``,
    ``std`` (sample), ``run_dir`` and ``seconds``; ``summary.json`` holds the same but
    ``seconds``.
    """
    import time

    start = time.perf_counter()
    k = config.folds
    if k < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got folds={k}; pass "
                          "--folds 2 or more (e.g. 10), or train one run without --folds")
    folder = SeriesFolder.open(config, CROSS_VALIDATION, resume, overwrite,
                               "`cnnlab train --resume {root}`")
    try:
        from cnnlab.train.loop import check_setup, load_splits

        train_ds, test_ds = load_splits(config, model) if datasets is None else datasets
        both = train_ds.join(test_ds)
        check_setup(config, model, both)        # bad vectors, --init...: refused, nothing written
        labels = class_labels(both, "cross-validation")
        folds = stratified_folds(labels, k, config.seed, both.classes)
        split = digest(folds)
        folder.check_split("folds_sha256", split)
        names = [fold_name(i, k) for i in range(1, k + 1)]
        folder.start({"runs": names, "examples": len(both), "folds_sha256": split,
                      "fold_sizes": [len(f) for f in folds]}, stale=(SUMMARY,))
    finally:
        folder.abandon()
    say = _say(progress)
    records = []
    for i, (name, held_out) in enumerate(zip(names, folds, strict=True), 1):
        rest = torch.cat([f for j, f in enumerate(folds) if j != i - 1]).sort().values
        part_train, part_test = both.subset(rest), both.subset(held_out)
        part_train.split, part_test.split = "train", "test"
        record = run_member(folder.member(name), (part_train, part_test), model, task,
                            progress=progress, overwrite=overwrite, label=f"fold {i}/{k}",
                            say=say)
        records.append({"fold": i, "run": name, "train_size": len(part_train),
                        "test_size": len(part_test), **record})
    means, stds = mean_std(records)
    line = _summary_line(means, stds, k, task, folder.root / names[0])
    summary = {"kind": CROSS_VALIDATION, "model": config.model, "data": config.data,
               "folds": k, "seed": config.seed, "examples": len(both), "summary": line,
               "std_kind": STD,
               "mean": {m: v for m, v in means.items() if m not in ("fold",)},
               "std": {m: v for m, v in stds.items() if m not in ("fold",)}, "runs": records}
    from cnnlab.train.distributed import context_from_env

    if context_from_env().is_main:
        write_json(folder.root / SUMMARY, summary)
    return {**summary, "run_dir": str(folder.root), "seconds": time.perf_counter() - start}


def _summary_line(means: Mapping[str, float], stds: Mapping[str, float], k: int,
                  task: Task | None, first_run: Path) -> str:
    """``test accuracy 76.3% ± 1.5% over 10 folds`` (another task: its monitored figure)."""
    if "test_top1" in means:
        return (f"test accuracy {100 * means['test_top1']:.1f}% ± "
                f"{100 * stds['test_top1']:.1f}% over {k} folds")
    monitor = task.monitor if task is not None else _monitor_of(first_run)
    key = f"test_{monitor}" if f"test_{monitor}" in means else "test_loss"
    return f"test {key[5:]} {means[key]:.4g} ± {stds[key]:.4g} over {k} folds"


def _monitor_of(run: Path) -> str:
    from cnnlab.train.run import WEIGHTS
    from cnnlab.train.tasks import task_class

    try:
        return task_class(str(read_metadata(run / WEIGHTS).get("task"))).monitor
    except CnnlabError:
        return "loss"


def train_series(config: TrainConfig, model: nn.Module | None = None, *,
                 task: Task | None = None, progress: bool = True, overwrite: bool = False,
                 resume: bool = False) -> dict[str, Any]:
    """What :func:`~cnnlab.train.train` does with a config it cannot train as one run on the
    data set's own split: ``folds`` > 1 cross-validates; a folder of a series is refused."""
    if config.folds > 1:
        return cross_validate(config, model, task=task, progress=progress,
                              overwrite=overwrite, resume=resume)
    raise refuse_single(config)


__all__ = ["CROSS_VALIDATION", "LEARNING_CURVE", "SERIES", "SUMMARY", "SeriesFolder",
           "class_orders", "cross_validate", "fold_name", "governs", "stratified_folds"]
