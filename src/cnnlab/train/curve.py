"""``cnnlab learning-curve MODEL --data NAME --fractions 0.01,0.1,1 --out DIR``: exercise 6
of the chapter -- how the test error falls as the training set grows.

One run per fraction f of the training split, each a normal run folder ``DIR/fraction-F``
written by :func:`~cnnlab.train.train` with the same settings (a series,
:mod:`cnnlab.train.series`); every run is tested on the whole test split. The subsets are
stratified and nested: each class's training examples are put in one random order drawn
with the seed (:func:`~cnnlab.train.series.class_orders`, the draw cross-validation makes
its folds from), and fraction f takes the first ``max(1, round(f * n_c))`` of class c's
``n_c``, so a larger fraction holds every example of a smaller one, each class keeps its
share, and every class has at least one example.

"Same settings otherwise" includes the epochs: a run on 1% of the data takes 1% of the
steps of the full run. That is the curve the exercise asks for (every run trained alike);
part of a small fraction's error is then too few steps rather than too few examples.
``curve.json`` records each run's steps, so the two can be told apart; raise ``--epochs`` for
a curve whose small fractions are trained longer, or run the few small fractions again
alone.

``DIR/curve.json`` holds the training-set sizes and the top-1 and top-5 test errors (with
each run's figures); ``DIR/curve.png`` plots both errors against the size on a log axis.
Rerunning the command goes on: finished runs are kept, a run with a checkpoint continues,
the others start; a longer ``--fractions`` list adds its new fractions to the curve (the
subsets do not depend on the list). Settings that change what a run computes are refused.

>>> result = learning_curve(TrainConfig("lenet5", out="runs/curve"), (0.1, 1))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.train import series
from cnnlab.train.config import COMMAND_LINE, TrainConfig
from cnnlab.train.run import atomic_write
from cnnlab.train.tasks import Task

CURVE, CURVE_PLOT = "curve.json", "curve.png"
EXAMPLE = "0.01,0.03,0.1,0.3,1"

EPILOG = f"""\
examples:
  cnnlab learning-curve lenet5_modern --data mnist --data-dir ../shared/data \\
      --fractions {EXAMPLE} --epochs 10 --out runs/curve-mnist
  cnnlab learning-curve lenet5 --fractions 0.1,0.3,1 --epochs 5 --out runs/curve-digits

Each fraction is a run folder DIR/fraction-F trained with the same settings (the same
epochs too: small fractions take fewer steps; curve.json says how many). Rerun the command
to go on after an interruption; a longer --fractions list adds points to the curve.
"""


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.01,0.1,1"`` -> (0.01, 0.1, 1.0), checked by :func:`check_fractions`."""
    parts = [p.strip() for p in text.split(",")]
    values = []
    for part in parts:
        try:
            values.append(float(part))
        except ValueError:
            raise ConfigError(f"--fractions {text!r}: {part!r} is not a number; give "
                              f"fractions of the training split in (0, 1], increasing, e.g. "
                              f"{EXAMPLE}") from None
    return check_fractions(values, parts)


def check_fractions(values: Sequence[float], shown: Sequence[str] | None = None
                    ) -> tuple[float, ...]:
    """``values`` as a tuple of floats, each in (0, 1] and each larger than the one before
    (``shown``: the values as the user wrote them, for the messages)."""
    if not values:
        raise ConfigError(f"--fractions is empty; give fractions of the training split in "
                          f"(0, 1], e.g. {EXAMPLE}")
    out: list[float] = []
    for i, v in enumerate(values):
        text = shown[i] if shown is not None else repr(v)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"--fractions: {text} is not a number; give fractions in (0, 1], "
                              f"e.g. {EXAMPLE}")
        f = float(v)
        if not (math.isfinite(f) and 0 < f <= 1):
            raise ConfigError(f"--fractions: {text} is outside (0, 1]; give each as a share of "
                              f"the training split, above 0 and at most 1 (the whole split), "
                              f"e.g. {EXAMPLE}")
        if out and f <= out[-1]:
            before = shown[i - 1] if shown is not None else repr(values[i - 1])
            raise ConfigError(f"--fractions: {text} after {before} is not increasing; list "
                              f"each fraction once, smallest first, e.g. {EXAMPLE}")
        out.append(f)
    return tuple(out)


def run_name(fraction: float) -> str:
    """``fraction-0.01``: the folder of a fraction's run."""
    return f"fraction-{fraction:g}"


def class_counts(orders: Sequence[torch.Tensor], fraction: float) -> list[int]:
    """Examples of each class that ``fraction`` takes: ``max(1, round(f * n_c))`` (half up)."""
    return [min(len(o), max(1, math.floor(fraction * len(o) + 0.5))) for o in orders]


def nested_subsets(orders: Sequence[torch.Tensor], fractions: Sequence[float]
                   ) -> list[torch.Tensor]:
    """The sorted example indices of each fraction: each class's first examples in its
    order (see the module's docstring). Two fractions that take the same examples are
    refused: their runs would be one run twice."""
    subsets, before = [], None
    for f in fractions:
        counts = class_counts(orders, f)
        if counts == before:
            raise ConfigError(f"--fractions: {f:g} takes the same {sum(counts):,} training "
                              f"examples as the fraction before it (each class keeps at least "
                              "one); drop one of the two")
        subsets.append(torch.cat([o[:n] for o, n in zip(orders, counts, strict=True)])
                       .sort().values)
        before = counts
    return subsets


def learning_curve(config: TrainConfig, fractions: Sequence[float],
                   model: nn.Module | None = None, *, task: Task | None = None,
                   progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train ``config`` on each fraction of its training split into ``config.out``
    (required) and write ``curve.json`` and ``curve.png`` there (see the module's docstring).
    Going on with a folder that holds the same curve is the default; ``overwrite`` starts
    every run again. ``model``: a fresh copy per fraction (default: built from
    ``config.model``).

    Returns (JSON-ready) what ``curve.json`` holds, with ``summary`` (one line),
    ``run_dir`` and ``seconds``.
    """
    start = time.perf_counter()
    wanted = check_fractions(fractions)
    if config.folds > 1:
        raise ConfigError(f"learning-curve trains one run per fraction on the data set's own "
                          f"split; drop --folds {config.folds}")
    if config.out is None:
        raise ConfigError("learning-curve needs --out DIR, the folder of its runs (rerun with "
                          "the same --out to go on)")
    _check_classifier(config, model, task)
    folder = series.SeriesFolder.open(config, series.LEARNING_CURVE, "auto", overwrite,
                                      "the same command")
    from cnnlab.train.loop import check_setup, load_splits

    train_ds, test_ds = load_splits(config, model)
    check_setup(config, model, train_ds)        # bad vectors, --init...: refused, nothing written
    labels = series.class_labels(train_ds, "learning-curve")
    orders = series.class_orders(labels, config.seed)
    split = series.digest(orders)
    folder.check_split("orders_sha256", split)
    subsets = nested_subsets(orders, wanted)
    names = [run_name(f) for f in wanted]
    if len(set(names)) < len(names):
        raise ConfigError(f"--fractions {', '.join(f'{f!r}' for f in wanted)}: two of them "
                          "round to the same folder name; make them differ in the first six "
                          "digits")
    done = list((folder.saved or {}).get("runs", ()))
    folder.start({"runs": [*dict.fromkeys([*done, *names])], "train_examples": len(train_ds),
                  "orders_sha256": split}, stale=(CURVE, CURVE_PLOT))
    say = series._say(progress)
    records = []
    for i, (f, name, subset) in enumerate(zip(wanted, names, subsets, strict=True), 1):
        part = train_ds.subset(subset)
        record = series.run_member(folder.member(name), (part, test_ds), model, task,
                                   progress=progress, overwrite=overwrite,
                                   label=f"fraction {f:g} ({i}/{len(wanted)})", say=say)
        steps = math.ceil(len(part) / config.batch_size) * record["epochs"]
        records.append({"fraction": f, "run": name, "train_size": len(part), "steps": steps,
                        **record})
    curve = {
        "kind": series.LEARNING_CURVE, "model": config.model, "data": config.data,
        "data_dir": config.data_dir,
        "epochs": config.epochs, "batch_size": config.batch_size, "seed": config.seed,
        "test_size": len(test_ds), "train_examples": len(train_ds),
        "fractions": list(wanted), "train_sizes": [r["train_size"] for r in records],
        "top1_error": [r.get("test_error") for r in records],
        "top5_error": [r.get("test_top5_error") for r in records], "runs": records,
    }
    line = _summary_line(curve)
    from cnnlab.train.distributed import context_from_env

    if context_from_env().is_main:
        series.write_json(folder.root / CURVE, {**curve, "summary": line})
        plot_curve(curve, folder.root / CURVE_PLOT)
    return {**curve, "summary": line, "run_dir": str(folder.root),
            "seconds": time.perf_counter() - start}


def _check_classifier(config: TrainConfig, model: nn.Module | None, task: Task | None) -> None:
    """The curve is of top-1/top-5 error: a classifier's figures."""
    from cnnlab.train.tasks import Classification, task_name

    if task is not None:
        name = task.name
    elif config.task not in ("auto", "classify"):
        name = config.task
    else:
        if model is None:
            from cnnlab import models

            model = models.info(config.model).meta_model
        name = task_name(model)
    if name != Classification.name:
        raise ConfigError(f"learning-curve plots top-1 and top-5 test error, figures of "
                          f"classification, but {config.model!r} trains for {name}; pick a "
                          "classifier (see `cnnlab models`)")


def _summary_line(curve: dict[str, Any]) -> str:
    sizes, errors = curve["train_sizes"], curve["top1_error"]
    return (f"top-1 test error {100 * errors[0]:.1f}% with {sizes[0]:,} training examples ... "
            f"{100 * errors[-1]:.1f}% with {sizes[-1]:,} ({len(sizes)} runs)")


def _data_label(curve: dict[str, Any]) -> str:
    """The data set's name; for one read from a folder of the user's (``folder``, ``text``,
    ...) with that folder's name: ``folder cifar10-jpeg``."""
    from cnnlab import data

    name, where = curve["data"], curve.get("data_dir")
    if not where or name in data.names() or Path(where).name == name:
        return str(name)
    return f"{name} {Path(where).name}"


def plot_curve(curve: dict[str, Any], path: Path) -> Path:
    """Top-1 and top-5 test error (%) against the training-set size (log axis), to PNG,
    atomically."""
    from matplotlib.ticker import FuncFormatter

    from cnnlab.train.plots import _new_figure

    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    sizes = curve["train_sizes"]
    for key, label, colour in (("top1_error", "top-1", "C0"), ("top5_error", "top-5", "C1")):
        ax.plot(sizes, [100 * e for e in curve[key]], "o-", color=colour, label=f"{label} error")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{curve['model']} on {_data_label(curve)}: {curve['epochs']} epochs per run, "
                 f"{curve['test_size']:,} test examples", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return path


# -- the command ----------------------------------------------------------------------------

def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``learning-curve`` to ``cnnlab``'s subcommands; its training options are
    ``cnnlab train``'s (one per :class:`TrainConfig` field)."""
    from cnnlab.cli import add_settings

    p: argparse.ArgumentParser = subparsers.add_parser(
        "learning-curve", help="test error against training-set size: a run per fraction of "
        "the training split (exercise 6)",
        description="Train MODEL on nested, stratified fractions of the training split (each "
        "fraction's examples hold the smaller fractions'), with the same settings otherwise, "
        "each in DIR/fraction-F; write DIR/curve.json (training-set sizes, top-1 and top-5 "
        "test error) and DIR/curve.png (both errors against the size, log axis). The training "
        "options are those of `cnnlab train`.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(p, model_note="")
    p.add_argument("--fractions", required=True, metavar="LIST",
                   help=f"comma list of fractions of the training split, in (0, 1] and "
                   f"increasing (e.g. {EXAMPLE})")
    p.add_argument("--overwrite", action="store_true",
                   help="train every fraction again (only cnnlab's own files are replaced)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``cnnlab learning-curve``."""
    fractions = parse_fractions(args.fractions)
    if args.model is None:
        raise CnnlabError("cnnlab learning-curve needs a model name (see `cnnlab models`)")
    if args.out is None:
        raise CnnlabError("cnnlab learning-curve needs --out DIR, the folder of its runs "
                          "(rerun with the same --out to go on)")
    fields = {k: v for k, v in vars(args).items()
              if k in TrainConfig.__dataclass_fields__ and v is not None}
    config = TrainConfig.for_model(fields, source=COMMAND_LINE)
    result = learning_curve(config, fractions, progress=not args.quiet,
                            overwrite=args.overwrite)
    print(f"{result['summary']}, {result['seconds']:.0f} s; curve in "
          f"{Path(result['run_dir']) / CURVE_PLOT}")
    return 0
