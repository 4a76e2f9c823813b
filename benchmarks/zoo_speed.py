"""Forward + backward throughput (images/s) of each family's CIFAR model, native vs reference.

Claim under test (issue 3): every family runs and trains on both kernels; this measures what
the reference kernels cost on whole networks. Each model does one training step's work
(forward, cross-entropy, backward; no optimiser step) on a batch of 32 random 32x32 images
in float32, native and reference interleaved: warm-up, then the median of --repeat.

    python benchmarks/zoo_speed.py --repeat 5 --json benchmarks/results/zoo_speed.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import machine, write_json

from cnnlab import models, ops

# one CIFAR model per family (its registry name, with builder arguments)
FAMILIES: list[tuple[str, str, dict[str, Any]]] = [
    ("LeNet-5 (28x28 -> 32x32, 1 channel)", "lenet5_modern", {}),
    ("AlexNet", "alexnet_cifar", {}),
    ("ZFNet", "zfnet_cifar", {}),
    ("VGG-D", "vgg_cifar", {}),
    ("GoogLeNet (inception v1)", "inception_v1_cifar", {}),
    ("ResNet-20 (option A)", "resnet20", {}),
    ("ResNet-110 stochastic depth", "resnet110_stochastic_depth", {}),
    ("pre-activation ResNet-164", "preact_resnet164", {}),
    ("WRN-16-8", "wrn_16_8", {}),
    ("ResNeXt-29 2x64d", "resnext29_2x64d", {}),
    ("DenseNet-BC-100 (k=12)", "densenet_bc_100_12", {}),
    ("highway network", "highway_cifar", {}),
    ("FractalNet-20", "fractalnet20_cifar", {}),
    ("Network in Network", "nin_cifar", {}),
]


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, kernel: str) -> float:
    model.zero_grad(set_to_none=True)
    with ops.kernels(kernel):  # type: ignore[arg-type]
        start = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        return time.perf_counter() - start


def measure(label: str, name: str, kwargs: dict[str, Any], batch: int, repeat: int,
            warmup: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, **kwargs).train()
    shape = models.info(name).input_shape
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    times: dict[str, list[float]] = {"native": [], "reference": []}
    for i in range(warmup + repeat):
        for kernel in ("native", "reference"):  # interleaved: both see the same machine state
            dt = _step(model, x, y, kernel)
            if i >= warmup:
                times[kernel].append(dt)
    native, reference = statistics.median(times["native"]), statistics.median(times["reference"])
    params = sum(p.numel() for p in model.parameters())
    return {"family": label, "model": name, "kwargs": kwargs, "params": params,
            "input_shape": list(shape), "batch": batch,
            "native_img_s": batch / native, "reference_img_s": batch / reference,
            "ratio": reference / native, "repeat": repeat}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--repeat", type=int, default=5, help="timed steps per kernel (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per kernel first")
    parser.add_argument("--only", default="", help="run the models whose name contains this")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", metavar="OUT", help="write figures and machine info here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    print(f"{'family':38s} {'model':28s} {'params':>11s} {'native img/s':>13s} "
          f"{'reference img/s':>16s} {'ratio':>6s}")
    for label, name, kwargs in FAMILIES:
        if args.only not in name:
            continue
        if name not in models.names():
            print(f"{label:38s} {name:28s} (not registered; skipped)")
            continue
        r = measure(label, name, kwargs, args.batch, args.repeat, args.warmup)
        rows.append(r)
        print(f"{label:38s} {name:28s} {r['params']:11,d} {r['native_img_s']:13.1f} "
              f"{r['reference_img_s']:16.1f} {r['ratio']:6.2f}", flush=True)
    if args.json:
        write_json(args.json, {"benchmark": "zoo_speed", "dtype": "float32",
                               "pass": "forward+cross-entropy+backward", "batch": args.batch,
                               "machine": machine(), "results": rows})


if __name__ == "__main__":
    main()
