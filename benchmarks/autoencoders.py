"""Autoencoders (8.5.2) on MNIST and Fashion-MNIST: test MSE, PSNR and parameters of each.

Tied vs untied convolutional autoencoders vs dense ones.

Issue 10 (d). Every row trains through the same ``cnnlab.train.train`` with the same settings
(epochs, batch size, learning rate, schedule, seed; SGD with momentum, the trainer's only
optimiser) and the mean-squared-error loss (Eq. 8.6 per pixel); the figures are the test
set's MSE on [0, 1] pixels and PSNR = 10 log10(1 / MSE).

A dense autoencoder cannot have both the code size and the parameter budget of a
convolutional one (one dense code unit on 784 pixels already costs 1,569 weights), so the
rows are pairs:

- ``cae`` / ``cae_untied``: the chapter's 7-layer form, a 16 x 14 x 14 code (plus the pool
  switches the decoder reuses);
- ``cae_stacked`` tied / untied: two conv/pool stages, an 8 x 7 x 7 = 392 code;
- ``ae_dense``: the zoo's dense autoencoder with that same 392-unit code (and ~170x the
  parameters);
- ``ae_dense-lr10x``: the same at 10x the learning rate, the one row whose settings differ:
  SGD at the common rate (which the conv rows need; they diverge at 3x) leaves the dense net
  far from converged in a few epochs;
- ``ae_dense-budget``: a dense autoencoder with the parameter budget of ``cae_stacked``
  (its code size follows from the budget: 2 units), built directly (the zoo row fixes 392);
- ``mean image``: no model, every test image replaced by the training set's mean image, as
  the floor any autoencoder must beat.

Run folders go to ``--out`` (``bench-autoencoders-DATA-ROW``); a finished folder trained with
the same settings is reused, so a rerun does not retrain.

    OMP_NUM_THREADS=1 python benchmarks/autoencoders.py \\
        --json benchmarks/results/autoencoders.json --png 'docs/reconstructions-{data}.png'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import machine, write_json
from torch import nn

from cnnlab import data, models
from cnnlab.models.autoencoder import ConvAutoencoder
from cnnlab.train import TrainConfig, train
from cnnlab.train.metrics import read_metrics
from cnnlab.train.reconstruction import GRID, psnr
from cnnlab.train.run import run_status

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("mnist", "fashion-mnist")
BUDGET_OF = "cae_stacked"          # the conv row whose parameter count the budget dense matches
DENSE_LR_FACTOR = 10.0             # the dense row's extra learning rate (see rows())
PNG_ROW = "cae"                    # the row whose reconstructions --png copies


@dataclass(frozen=True)
class Row:
    """One autoencoder: its label, the zoo name its run folder records, how to build it."""

    label: str
    model: str
    build: Callable[[], nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    lr_factor: float = 1.0          # of the common learning rate (1: the same settings)


def _zoo(name: str, **kw: Any) -> Callable[[], nn.Module]:
    return lambda: models.create(name, **kw)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def budget_code_units(target: int, pixels: int = 28 * 28) -> int:
    """Code units of a dense autoencoder (pixels -> k -> pixels, with biases) whose parameter
    count, (2 pixels + 1) k + pixels, is nearest ``target``; at least 1."""
    return max(1, round((target - pixels) / (2 * pixels + 1)))


def rows() -> list[Row]:
    units = budget_code_units(_params(models.create(BUDGET_OF)))
    return [
        Row("cae", "cae", _zoo("cae")),
        Row("cae_untied", "cae_untied", _zoo("cae_untied")),
        Row("cae_stacked", "cae_stacked", _zoo("cae_stacked")),
        Row("cae_stacked-untied", "cae_stacked", _zoo("cae_stacked", tied=False),
            {"tied": False}),
        Row("ae_dense", "ae_dense", _zoo("ae_dense")),
        # not the same settings: the dense net is still far from converged at the common lr
        # (which the conv rows need: they diverge at 3x), so it is also shown at 10x
        Row("ae_dense-lr10x", "ae_dense", _zoo("ae_dense"), lr_factor=DENSE_LR_FACTOR),
        # the zoo's ae_dense fixes its 392-unit code, so the budget row is built directly
        Row("ae_dense-budget", "ae_dense", lambda: ConvAutoencoder((), code_units=units),
            {"code_units": units}),
    ]


def _code_size(model: nn.Module) -> list[int]:
    with torch.no_grad():
        return list(model.forward_features(torch.zeros(1, 1, 28, 28)).shape[1:])


def finished_with(folder: Path, config: TrainConfig) -> bool:
    """True when ``folder`` holds a finished run trained with ``config`` (paths aside)."""
    if run_status(folder) != "finished":
        return False
    saved = json.loads((folder / "config.json").read_text())
    mine = config.to_dict()
    return all(saved.get(k) == v for k, v in mine.items() if k not in ("out", "data_dir"))


def _run(row: Row, config: TrainConfig, datasets: tuple[data.ImageDataset, data.ImageDataset]
         ) -> tuple[nn.Module, bool]:
    """Train ``row`` into ``config.out`` unless a finished run of the same settings is there;
    returns the model built (for its size) and whether the run was reused."""
    folder = Path(config.out or "")
    torch.manual_seed(config.seed)               # the initial weights, as train() seeds them
    model = row.build()
    if finished_with(folder, config):
        print(f"reusing {folder}", file=sys.stderr, flush=True)
        return model, True
    result = train(config, model, datasets=datasets, progress=sys.stderr.isatty(),
                   overwrite=True)
    print(f"trained {folder}: {result['summary']} in {result['train_seconds']:.0f} s",
          file=sys.stderr, flush=True)
    return model, False


def mean_image_mse(train_ds: data.ImageDataset, test_ds: data.ImageDataset) -> float:
    """Test MSE of replacing every test image by the training set's mean image."""
    mean = train_ds.images.float().mean(0, keepdim=True)          # 1 x C x H x W
    return float((test_ds.images.float() - mean).square().mean())


def _copy_png(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--out", default=str(ROOT / "runs"),
                        help="where the run folders go (bench-autoencoders-DATA-ROW)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=float(models.info("cae").recipe["lr"]),
                        help="default: the autoencoders' recipe")
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="+", help="only these rows (default: all): "
                        + ", ".join(r.label for r in rows()))
    parser.add_argument("--limit", type=int, help="train on the first N training images only "
                        "(a quick check; the folders get -limitN)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--png", help=f"copy {PNG_ROW}'s {GRID} here; {{data}} is replaced by "
                        "the data set's name")
    args = parser.parse_args()

    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "momentum": 0.9, "weight_decay": 0.0, "schedule": args.schedule,
                "seed": args.seed, "loss": "mse", "tensorboard": False}
    results: list[dict[str, Any]] = []
    for name in args.datasets:
        train_ds = data.load(name, "train", args.data_dir)
        test_ds = data.load(name, "test", args.data_dir)
        if args.limit:
            train_ds = train_ds.subset(slice(0, args.limit))
        suffix = f"-limit{args.limit}" if args.limit else ""
        baseline = mean_image_mse(train_ds, test_ds)
        print(f"{name}: mean image  MSE {baseline:.5f}  PSNR {psnr(baseline):.2f} dB", flush=True)
        results.append({"data": name, "row": "mean image", "params": 0, "test_mse": baseline,
                        "test_psnr": psnr(baseline)})
        for row in rows():
            if args.rows and row.label not in args.rows:
                continue
            folder = Path(args.out) / f"bench-autoencoders-{name}-{row.label}{suffix}"
            config = TrainConfig.from_dict({**settings, "lr": args.lr * row.lr_factor,
                                            "model": row.model, "data": name,
                                            "data_dir": args.data_dir, "out": str(folder)})
            model, reused = _run(row, config, (train_ds, test_ds))
            history = read_metrics(folder)
            last = history[-1]
            results.append({
                "data": name, "row": row.label, "model": row.model, "kwargs": row.kwargs,
                "lr": config.lr, "params": _params(model), "code_shape": _code_size(model),
                "code_size": int(torch.tensor(_code_size(model)).prod()),
                "test_mse": last["test_mse"], "test_psnr": last["test_psnr"],
                "train_mse": last.get("train_mse", last.get("train_loss")),
                "test_mse_per_epoch": [h["test_mse"] for h in history],
                "train_seconds": last["elapsed_seconds"], "run_dir": str(folder),
                "reused": reused})
            r = results[-1]
            print(f"{name}: {row.label:<19} {r['params']:>8,} params  code {r['code_size']:>5}"
                  f"  MSE {r['test_mse']:.5f}  PSNR {r['test_psnr']:.2f} dB"
                  f"  {r['train_seconds']:.0f} s", flush=True)
            if args.png and row.label == PNG_ROW:
                target = Path(args.png.format(data=name))
                _copy_png(folder / GRID, target)
                print(f"wrote {target} (from {folder / GRID})", flush=True)
    if args.json:
        write_json(args.json, {"benchmark": "autoencoders", "machine": machine(),
                               "settings": {**settings, "optimizer": "sgd",
                                            "limit": args.limit},
                               "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
