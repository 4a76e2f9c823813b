"""Unsupervised pretraining (8.5.2): lenet5_modern on 1,000 MNIST labels, scratch vs AE init.

From scratch, or with its conv layers taken from an autoencoder trained on all 60,000
unlabelled MNIST training images.

Issue 10 (e). The autoencoder is ``cae_lenet5`` (its encoder is LeNet-5 (modern)'s C1 and C3,
names and shapes), trained on the 60,000 MNIST training images without their labels. The
classifier trains on a fixed stratified subset of ``--labels`` training images (the same for
every seed) and is tested on the full 10,000-image test set, ``--seeds`` times from scratch
and as many with ``TrainConfig(init=AE_RUN)`` (``--init``: c1 and c3 copied, the rest as
initialised); everything else is the same. The figure is the mean (and sample std) of the last
epoch's test accuracy of each arm, and the gain between them.

Run folders go to ``--out`` (``bench-pretraining-*``); finished folders trained with the same
settings are reused, so a rerun does not retrain.

    OMP_NUM_THREADS=1 python benchmarks/pretraining.py --json benchmarks/results/pretraining.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from _common import machine, write_json
from autoencoders import finished_with

from cnnlab import data, models
from cnnlab.train import TrainConfig, train
from cnnlab.train.metrics import read_metrics
from cnnlab.train.transfer import load_encoder

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER, AUTOENCODER = "lenet5_modern", "cae_lenet5"
SUBSET_SEED = 0          # which labelled images: one fixed draw, whatever the training seed


def stratified(labels: torch.Tensor, n: int, seed: int = SUBSET_SEED) -> torch.Tensor:
    """``n`` indices, as equal a share of each class as ``n`` allows, drawn with ``seed``;
    sorted (the training order is the trainer's shuffle).

    >>> stratified(torch.tensor([0, 1, 0, 1, 0, 1]), 4).tolist()    # two of each class
    [0, 3, 4, 5]
    """
    classes = labels.unique()
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for i, c in enumerate(classes.tolist()):
        share = n // len(classes) + (1 if i < n % len(classes) else 0)
        where = (labels == c).nonzero().flatten()
        if share > len(where):
            raise SystemExit(f"--labels {n}: class {c} has only {len(where)} images")
        chosen.append(where[torch.randperm(len(where), generator=gen)[:share]])
    return torch.cat(chosen).sort().values


def _trained(config: TrainConfig, datasets: tuple[data.ImageDataset, data.ImageDataset] | None
             ) -> dict[str, Any]:
    """The run ``config.out``: reused when finished with these settings, else trained now;
    its last record, with ``reused``."""
    folder = Path(config.out or "")
    reused = finished_with(folder, config)
    if reused:
        print(f"reusing {folder}", file=sys.stderr, flush=True)
    else:
        result = train(config, datasets=datasets, progress=sys.stderr.isatty(), overwrite=True)
        print(f"trained {folder}: {result['summary']} in {result['train_seconds']:.0f} s",
              file=sys.stderr, flush=True)
    history = read_metrics(folder)
    return {**history[-1], "history": history, "reused": reused, "run_dir": str(folder)}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "runs"),
                        help="where the run folders go (bench-pretraining-*)")
    parser.add_argument("--labels", type=int, default=1000, help="labelled training images")
    parser.add_argument("--seeds", type=int, default=3, help="classifier runs per arm")
    parser.add_argument("--epochs", type=int, default=50, help="classifier epochs")
    parser.add_argument("--schedule", default="cosine", help="classifier schedule")
    parser.add_argument("--ae-epochs", type=int, default=3, help="autoencoder epochs")
    parser.add_argument("--ae-schedule", default="cosine")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    out = Path(args.out)

    # the autoencoder: all 60,000 training images, their labels unused (its recipe's lr)
    ae_config = TrainConfig.for_model({
        "model": AUTOENCODER, "data": "mnist", "data_dir": args.data_dir,
        "epochs": args.ae_epochs, "schedule": args.ae_schedule, "tensorboard": False,
        "out": str(out / f"bench-pretraining-{AUTOENCODER}")})
    ae = _trained(ae_config, None)
    ae_dir = ae["run_dir"]
    print(f"{AUTOENCODER}: test MSE {ae['test_mse']:.5f}, PSNR {ae['test_psnr']:.2f} dB, "
          f"{ae['elapsed_seconds']:.0f} s", flush=True)
    copied = load_encoder(models.create(CLASSIFIER), ae_dir)
    print(f"--init copies {', '.join(copied.layers)} ({', '.join(copied.loaded)})", flush=True)

    size = models.info(CLASSIFIER).input_shape[1:]
    full = data.load("mnist", "train", args.data_dir, size=size)
    test = data.load("mnist", "test", args.data_dir, size=size)
    index = stratified(full.labels, args.labels)
    subset = full.subset(index)
    counts = torch.bincount(subset.labels, minlength=full.num_classes).tolist()
    arms: dict[str, list[dict[str, Any]]] = {"scratch": [], "init": []}
    for arm, init in (("scratch", None), ("init", ae_dir)):
        for seed in range(args.seeds):
            config = TrainConfig.for_model({
                "model": CLASSIFIER, "data": "mnist", "data_dir": args.data_dir,
                "epochs": args.epochs, "schedule": args.schedule, "seed": seed, "init": init,
                "tensorboard": False,
                "out": str(out / f"bench-pretraining-{CLASSIFIER}-{args.labels}-{arm}-s{seed}")})
            run = _trained(config, (subset, test))
            arms[arm].append({"seed": seed, "test_top1": run["test_top1"],
                              "best_test_top1": max(h["test_top1"] for h in run["history"]),
                              "train_top1": run.get("train_top1"),
                              "train_seconds": run["elapsed_seconds"],
                              "run_dir": run["run_dir"], "reused": run["reused"]})
            print(f"{arm:<8} seed {seed}: test accuracy {100 * run['test_top1']:.2f}%  "
                  f"{run['elapsed_seconds']:.0f} s", flush=True)
    summary = {}
    for arm, runs in arms.items():
        mean, std = _mean_std([r["test_top1"] for r in runs])
        summary[arm] = {"mean_test_top1": mean, "std_test_top1": std,
                        "mean_train_seconds": statistics.fmean(r["train_seconds"] for r in runs)}
        print(f"{arm:<8} mean test accuracy {100 * mean:.2f}% +- {100 * std:.2f}", flush=True)
    gain = summary["init"]["mean_test_top1"] - summary["scratch"]["mean_test_top1"]
    print(f"gain from pretraining: {100 * gain:+.2f} points", flush=True)
    if args.json:
        settings = {k: v for k, v in config.to_dict().items()
                    if k not in ("out", "seed", "init", "data_dir")}
        write_json(args.json, {
            "benchmark": "pretraining", "machine": machine(),
            "autoencoder": {"run_dir": ae_dir, "test_mse": ae["test_mse"],
                            "test_psnr": ae["test_psnr"], "train_seconds": ae["elapsed_seconds"],
                            "settings": {k: v for k, v in ae_config.to_dict().items()
                                         if k not in ("out", "data_dir")}},
            "init_layers": list(copied.layers), "init_tensors": list(copied.loaded),
            "labelled": {"n": args.labels, "per_class": counts, "subset_seed": SUBSET_SEED,
                         "test_images": len(test)},
            "classifier_settings": settings, "runs": arms, "summary": summary,
            "gain_test_top1": gain})
    return 0


if __name__ == "__main__":
    sys.exit(main())
