"""Retrieval on neural codes (8.6.1): mAP and precision@10 of FC7 codes against raw pixels.

Issue 11 (a). For MNIST, Fashion-MNIST and the CIFAR-10 JPEG copy (``cifar10-jpeg``, read as an
image folder: LOSSY JPEG at quality 75, not the original pixels), test images query a database
of training images; relevance is the class label. Four codes are compared, each L2-normalised
and ranked by cosine similarity over the whole database (:func:`cnnlab.apps.retrieval.evaluate`,
exact, no approximate index):

- FC7: the penultimate layer (1,024 units after ReLU) of ``zfnet_cifar`` trained here;
- FC7 + PCA-128: PCA fitted on the database's codes, then L2-normalised again (neural codes);
- raw pixels: the normalised images (as the network sees them, 32 x 32) flattened;
- pixels + PCA-128: PCA of the raw pixels to the same 128 dimensions.

Why zfnet_cifar: its FC7 has 1,024 dimensions (PCA-128 compresses 8x), and it is the fastest
such zoo model on this CPU (about 65 training images/s on one thread, alexnet_cifar 40). The
CPU is shared, so each network trains for ``--epochs`` (1) on a stratified random
``--train-count`` (30,000) of the training split, with the recipe's settings and batch 64;
its test accuracy is reported. Features of the whole training split would take 5 minutes per
data set here, so the database is a stratified random ``--db-count`` of the training split
and the queries a stratified random ``--query-count`` of the test split (both said in the
output). Run folders go to ``--runs`` (``bench-retrieval-*``) and are reused when finished
with the same settings.

    OMP_NUM_THREADS=1 nice python benchmarks/retrieval.py --json benchmarks/results/retrieval.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, write_json
from autoencoders import finished_with
from pretraining import stratified

from cnnlab import data
from cnnlab.train import TrainConfig, train
from cnnlab.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
MODEL = "zfnet_cifar"
# name shown -> (cnnlab data set, sub-folder of --data-dir given as its data_dir)
DATASETS = {"mnist": ("mnist", ""), "fashion-mnist": ("fashion-mnist", ""),
            "cifar10-jpeg": ("folder", "cifar10-jpeg")}


def trained(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The run of ``name``: reused when finished with these settings, else trained now."""
    kind, sub = DATASETS[name]
    data_dir = str(Path(args.data_dir) / sub) if sub else args.data_dir
    folder = Path(args.runs) / f"bench-retrieval-{MODEL}-{name}-{args.train_count}"
    config = TrainConfig.for_model({
        "model": MODEL, "data": kind, "data_dir": data_dir, "epochs": args.epochs,
        "batch_size": args.batch_size, "tensorboard": False, "plots": False, "device": "cpu",
        "out": str(folder)})
    if finished_with(folder, config):
        print(f"reusing {folder}", file=sys.stderr, flush=True)
    else:
        size = (32, 32)
        full = data.load(kind, "train", data_dir, size=size)
        test = data.load(kind, "test", data_dir, size=size)
        sample = full.subset(stratified(full.labels, args.train_count))
        result = train(config, datasets=(sample, test), progress=sys.stderr.isatty(),
                       overwrite=True)
        print(f"trained {folder}: {result['summary']} in {result['train_seconds']:.0f} s",
              file=sys.stderr, flush=True)
    last = read_metrics(folder)[-1]
    return {"run_dir": str(folder), "data": kind, "data_dir": data_dir,
            "test_top1": last["test_top1"], "train_seconds": last["elapsed_seconds"],
            "epochs": args.epochs, "train_images": args.train_count}


def features_file(run_dir: str, count: int) -> Path:
    """Where the database's FC7 features are kept (beside the run folder, for
    ``retrieval_scale.py``)."""
    return Path(f"{run_dir}-features-db-{count}.safetensors")


def measure(row: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """mAP and precision@10 of the four codes on ``row``'s run and data."""
    from cnnlab.apps.retrieval import PCA, l2_normalize, neural_codes, pixel_codes, ranking_scores
    from cnnlab.train._runs import run_data, run_info
    from cnnlab.train.run import load_run
    from cnnlab.train.transfer import extract_features, save_features

    info = run_info(row["run_dir"])
    model, _ = load_run(row["run_dir"])
    db_full, q_full = (run_data(info, split=s) for s in ("train", "test"))
    db = db_full.subset(stratified(db_full.labels, args.db_count, seed=1))
    queries = q_full.subset(stratified(q_full.labels, args.query_count, seed=2))
    start = time.perf_counter()
    feats = {}
    for name, ds in (("db", db), ("queries", queries)):
        feats[name], _ = extract_features(model, ds, "fc7", mean=info.mean, std=info.std)
    seconds = time.perf_counter() - start
    save_features(features_file(row["run_dir"], args.db_count),
                  feats["db"], db.labels, {"model": info.model, "layer": "fc7",
                                           "data": db.name, "split": "train"})
    pixels = {"db": pixel_codes(db.images, info.mean, info.std),
              "queries": pixel_codes(queries.images, info.mean, info.std)}
    results = {}
    for label, source, dim in (("FC7", feats, None), ("FC7 + PCA-128", feats, args.pca),
                               ("raw pixels", pixels, None),
                               ("raw pixels + PCA-128", pixels, args.pca)):
        t = time.perf_counter()
        pca = None if dim is None else PCA.fit(l2_normalize(source["db"]), dim)
        got = ranking_scores(neural_codes(source["queries"], pca), queries.labels,
                             neural_codes(source["db"], pca), db.labels, k=10)
        results[label] = {"dim": dim or int(source["db"].shape[1]), "map": got["map"],
                          "precision_at_10": got["precision_at_k"],
                          "seconds": time.perf_counter() - t}
    return {"database": len(db), "queries": len(queries), "feature_seconds": seconds,
            "fc7_dim": int(feats["db"].shape[1]), "codes": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="where the run folders go")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--train-count", type=int, default=30000, help="training images")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--db-count", type=int, default=20000, help="database images (train)")
    parser.add_argument("--query-count", type=int, default=5000, help="query images (test)")
    parser.add_argument("--pca", type=int, default=128)
    parser.add_argument("--train-only", action="store_true", help="train the runs, no figures")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for name in args.datasets:
        start = time.perf_counter()
        rows[name] = trained(name, args)
        print(f"{name}: {MODEL} test accuracy {100 * rows[name]['test_top1']:.2f}% after "
              f"{args.epochs} epoch(s) on {args.train_count:,} images "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    if args.train_only:
        return 0
    print(f"\n{args.query_count:,} test queries against {args.db_count:,} training images "
          "(stratified random samples), exact cosine ranking of the whole database, class "
          "labels as relevance; cifar10-jpeg is the LOSSY JPEG copy (quality 75)")
    print(f"{'data':<14} {'codes':<22} {'dim':>5} {'mAP':>7} {'P@10':>7}")
    for name, row in rows.items():
        row |= measure(row, args)
        for label, r in row["codes"].items():
            print(f"{name:<14} {label:<22} {r['dim']:>5} {r['map']:7.4f} "
                  f"{r['precision_at_10']:7.4f}", flush=True)
    if args.json:
        write_json(args.json, {
            "benchmark": "retrieval", "machine": machine(), "model": MODEL,
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "runs")},
            "note": "cifar10-jpeg: the lossy JPEG copy (quality 75) read as an image folder; "
                    "database and queries are stratified random samples of the train and test "
                    "splits; exact ranking of the whole database; relevance = same class",
            "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
