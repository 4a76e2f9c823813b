"""LeNet-5 on MNIST: test error and training time to 99% test accuracy, on this machine.

Targets (issue 2): the modern variant <= 0.8% test error; the published LeNet-5 <= 1.0%
(LeCun et al. 1998 report 0.95% without distortions). Each model trains with its registry
recipe (``cnnlab models --json``) through the same ``cnnlab.train.train`` the CLI uses.

    python benchmarks/lenet_mnist.py --data-dir ../shared/data --json benchmarks/results/lenet_mnist.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _common import machine, write_json

from cnnlab.train import TrainConfig, time_to_accuracy, train


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--models", nargs="+", default=["lenet5_modern", "lenet5"])
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--kernel", choices=["native", "reference"], default="native")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    rows = []
    for name in args.models:
        settings = {"model": name, "data": "mnist", "data_dir": args.data_dir, "kernel": args.kernel}
        if args.epochs:
            settings["epochs"] = args.epochs
        with tempfile.TemporaryDirectory() as tmp:
            config = TrainConfig.for_model({**settings, "out": str(Path(tmp) / name)})
            result = train(config, progress=sys.stderr.isatty())
        history = result["history"]
        rows.append({
            "model": name, "config": {k: v for k, v in config.to_dict().items() if k != "out"},
            "test_error": result["test_error"], "best_test_error": min(h["test_error"] for h in history),
            "seconds_to_99": time_to_accuracy(history, 0.99),
            "epoch_to_99": next((h["epoch"] for h in history if h["test_top1"] >= 0.99), None),
            "train_seconds": result["train_seconds"],
            "median_images_per_second": statistics.median(h["images_per_second"] for h in history),
            "test_error_per_epoch": [round(h["test_error"], 5) for h in history],
        })
        r = rows[-1]
        print(f"{name:<14} test error {100 * r['test_error']:.2f}% (best {100 * r['best_test_error']:.2f}%)"
              f"  99% after {_secs(r['seconds_to_99'])} (epoch {r['epoch_to_99']})"
              f"  {r['train_seconds']:.0f} s training, {r['median_images_per_second']:,.0f} img/s",
              flush=True)
    if args.json:
        write_json(args.json, {"benchmark": "lenet_mnist", "machine": machine(), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
