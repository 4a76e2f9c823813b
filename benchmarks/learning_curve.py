"""Exercise 6: the learning curve of LeNet-5 (modern) on MNIST or CIFAR-10, on this machine
(issue 12 (c)).

One run per fraction of the training split (nested, stratified subsets), each with the
model's recipe (``cnnlab models --json``: the same epochs for every fraction), all tested on
the whole test split, through the same ``cnnlab.train.curve.learning_curve`` that ``cnnlab
learning-curve`` calls. One torch thread (the machine is shared).

- ``--data mnist``: the IDX files of ``../shared/data/mnist`` (lossless), 60,000 / 10,000.
- ``--data cifar10-jpeg``: the JPEG copy ``../shared/data/cifar10-jpeg`` (quality 75, so
  **lossy**: the images differ from CIFAR-10's own pixels), read as an image folder
  (``--data folder``), 50,000 / 10,000.

    python benchmarks/learning_curve.py --data mnist \\
        --json benchmarks/results/learning_curve_mnist.json --png docs/learning-curve-mnist.png
    python benchmarks/learning_curve.py --data cifar10-jpeg \\
        --json benchmarks/results/learning_curve_cifar10.json --png docs/learning-curve-cifar10.png

The runs go to --out (default /tmp/cnnlab-learning-curve-DATA[-seedS]): rerunning the
script goes on where an interrupted one stopped, as the command does. ``--seed 1`` and
``--seed 2`` (JSON ``learning_curve_DATA_seedS.json``) measure how much a point moves with
another draw of the subsets, the weights and the batch order.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from _common import machine, write_json

from cnnlab.train import TrainConfig
from cnnlab.train.curve import CURVE_PLOT, learning_curve, parse_fractions

FRACTIONS = "0.003,0.01,0.03,0.1,0.3,1"
DATA = {"mnist": ("mnist", "."), "cifar10-jpeg": ("folder", "cifar10-jpeg")}   # name, folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=DATA, default="mnist")
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                        help="the folder of the shared data sets")
    parser.add_argument("--model", default="lenet5_modern")
    parser.add_argument("--fractions", default=FRACTIONS)
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets, weights and order")
    parser.add_argument("--out", help="the curve's folder (default /tmp/cnnlab-learning-curve-DATA)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--png", help="copy the curve's PNG here (for the README)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    data, where = DATA[args.data]
    out = args.out or f"/tmp/cnnlab-learning-curve-{args.data}" + (f"-seed{args.seed}" if args.seed else "")
    settings = {"model": args.model, "data": data, "data_dir": str(Path(args.shared) / where),
                "out": out, "tensorboard": False, "plots": False, "device": "cpu", "seed": args.seed}
    if args.epochs:
        settings["epochs"] = args.epochs
    config = TrainConfig.for_model(settings)
    start = time.perf_counter()
    result = learning_curve(config, parse_fractions(args.fractions), progress=sys.stderr.isatty())
    wall = time.perf_counter() - start
    print(f"{'fraction':>8}  {'images':>7}  {'steps':>6}  {'top-1 err':>9}  {'top-5 err':>9}  {'train s':>7}")
    for r in result["runs"]:
        print(f"{r['fraction']:>8g}  {r['train_size']:>7,}  {r['steps']:>6,}  {100 * r['test_error']:>8.2f}%  "
              f"{100 * r['test_top5_error']:>8.2f}%  {r['train_seconds']:>7.0f}")
    train_total = sum(r["train_seconds"] for r in result["runs"])
    print(f"{result['summary']}; {train_total:.0f} s training in all, {wall:.0f} s this call", flush=True)
    if args.png:
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(result["run_dir"]) / CURVE_PLOT, args.png)
    if args.json:
        curve = {k: v for k, v in result.items() if k not in ("run_dir", "seconds")}
        write_json(args.json, {"benchmark": "learning_curve", "data": args.data, "machine": machine(),
                               "config": {k: v for k, v in config.to_dict().items() if k != "out"},
                               "train_seconds_total": train_total, "wall_seconds_last_call": wall,
                               "curve": curve})
    return 0


if __name__ == "__main__":
    sys.exit(main())
