"""Gradient maps (8.5.1) per image: saliency and guided backpropagation, native vs reference.

Issue 10, figure (a): a batch of 256 MNIST test images on ``lenet5_modern`` and 32 CIFAR-size
test images on ``resnet20``, one class target each (the image's own label), float32. Weights
are the untrained initialisation (seed 0): the time does not depend on them. Each repeat times
one call of :func:`cnnlab.visualize.saliency` / :func:`cnnlab.visualize.guided` for the whole
batch; kernels are interleaved, the median of --repeat after --warmup is reported as ms/image.

    python benchmarks/gradient_maps.py --repeat 7 --json benchmarks/results/gradient_maps.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _common import machine, write_json

from cnnlab import data, models, ops
from cnnlab.ops import KernelName
from cnnlab.visualize import METHODS

DATA = "/work/shared/data"
CIFAR = f"{DATA}/cifar10-sample-lossless"
KERNELS: tuple[KernelName, ...] = ("native", "reference")


def _normalised(ds: data.ImageDataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of a split as model input (N x C x H x W) and their labels."""
    x = ds.images[:n]
    x = x.float() / 255 if not x.is_floating_point() else x.float()
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    labels = torch.as_tensor(ds.labels[:n])
    return (x - mean) / std, labels


def _cases(args: argparse.Namespace) -> list[tuple[str, str, torch.Tensor, torch.Tensor]]:
    mnist = data.load("mnist", "test", DATA, size=32)
    cases = [("lenet5_modern", "mnist test", *_normalised(mnist, args.mnist))]
    try:
        cifar = data.load("folder", "test", data_dir=CIFAR)
        cases.append(("resnet20", "cifar10-sample-lossless test", *_normalised(cifar, args.cifar)))
    except Exception as e:  # noqa: BLE001  # the figure is a timing: random images do as well
        print(f"CIFAR sample not readable ({e}); timing resnet20 on random images")
        g = torch.Generator().manual_seed(0)
        cases.append(("resnet20", "random", torch.randn(args.cifar, 3, 32, 32, generator=g),
                      torch.randint(0, 10, (args.cifar,), generator=g)))
    return cases


def _time(model: torch.nn.Module, method: str, x: torch.Tensor, labels: torch.Tensor,
          kernel: KernelName) -> float:
    # one map per image: a single class target for the whole batch (the first image's label)
    target = int(labels[0])
    with ops.kernels(kernel):
        start = time.perf_counter()
        METHODS[method](model, x, target)
        return time.perf_counter() - start


def measure(name: str, source: str, x: torch.Tensor, labels: torch.Tensor, repeat: int,
            warmup: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = models.create(name)
    rows = []
    for method in ("saliency", "guided"):
        times: dict[str, list[float]] = {k: [] for k in KERNELS}
        for i in range(warmup + repeat):
            for kernel in KERNELS:  # interleaved: both kernels see the same machine state
                dt = _time(model, method, x, labels, kernel)
                if i >= warmup:
                    times[kernel].append(dt)
        native, reference = (statistics.median(times[k]) for k in KERNELS)
        rows.append({"model": name, "images": source, "batch": len(x), "method": method,
                     "native_ms_per_image": 1e3 * native / len(x),
                     "reference_ms_per_image": 1e3 * reference / len(x),
                     "ratio": reference / native, "repeat": repeat,
                     "native_all_s": times["native"], "reference_all_s": times["reference"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed calls per case (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per case first")
    parser.add_argument("--mnist", type=int, default=256, help="MNIST images in the batch")
    parser.add_argument("--cifar", type=int, default=32, help="CIFAR-size images in the batch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--note", default="", help="recorded with the figures (machine load)")
    parser.add_argument("--json", metavar="OUT", help="write figures and machine info here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{'model':14s} {'batch':>5s} {'method':9s} {'native ms/img':>14s} "
          f"{'reference ms/img':>17s} {'ratio':>6s}")
    for name, source, x, labels in _cases(args):
        for r in measure(name, source, x, labels, args.repeat, args.warmup):
            rows.append(r)
            print(f"{r['model']:14s} {r['batch']:5d} {r['method']:9s} "
                  f"{r['native_ms_per_image']:14.3f} {r['reference_ms_per_image']:17.3f} "
                  f"{r['ratio']:6.2f}", flush=True)
    if args.json:
        write_json(args.json, {"benchmark": "gradient_maps", "dtype": "float32",
                               "weights": "untrained (seed 0)", "note": args.note,
                               "machine": machine(), "results": rows})


if __name__ == "__main__":
    main()
