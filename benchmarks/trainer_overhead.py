"""Trainer overhead: images/s of `cnnlab train`'s epoch loop against a minimal PyTorch loop.

Both train the same model (same initial weights) on the same in-memory images with the same
batch size and SGD settings; cnnlab runs through ``cnnlab.train.train`` exactly as the CLI
does (its ``epoch_seconds`` time ``train_one_epoch`` alone, evaluation and checkpoints
excluded), the hand loop is randperm, slice, normalise, forward, cross-entropy, backward,
step. They alternate, epoch by epoch (ABBA), so drifts in machine load hit both; the figure
is the ratio of the medians (target >= 0.98). Each epoch is timed twice: by the wall clock
(cnnlab's own ``epoch_seconds``) and by the CPU time the whole process spent in it (every
thread, TensorBoard's writer included), which a neighbour on a shared machine that takes the
core away does not inflate. One thread by default: on a shared machine, OpenMP threads that
wait for each other make the noise larger than the effect being measured.

    python benchmarks/trainer_overhead.py --json benchmarks/results/trainer_overhead.json
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import machine, write_json

from cnnlab import models
from cnnlab.data import ImageDataset, load
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, loop, train

_CPU: list[float] = []                  # CPU seconds of the last cnnlab training pass


def _cpu_timed(fn: Any) -> Any:
    """``loop.train_one_epoch`` that also notes the process CPU time it took."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        c0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _CPU.append(time.process_time() - c0)
    return wrapper


loop.train_one_epoch = _cpu_timed(loop.train_one_epoch)   # type: ignore[assignment]


def data(data_dir: str, limit: int | None) -> tuple[ImageDataset, ImageDataset, str]:
    try:
        train_ds = load("mnist", "train", data_dir, size=32)
        test_ds = load("mnist", "test", data_dir, size=32)
        name = "mnist"
    except CnnlabError as err:
        print(f"MNIST not found ({err}); using the embedded digits", file=sys.stderr)
        train_ds, test_ds = load("digits", "train", size=32), load("digits", "test", size=32)
        name = "digits"
    return train_ds.subset(slice(0, limit or None)), test_ds.subset(slice(0, 500)), name


def cnnlab_epoch(config: TrainConfig, ds: tuple[ImageDataset, ImageDataset]
                 ) -> tuple[float, float]:
    """images/s of one epoch of `cnnlab train`: by its own wall-clock timing of the training
    pass, and by the process CPU time of that pass."""
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig.from_dict({**config.to_dict(), "out": str(Path(tmp) / "run")})
        result = train(config, progress=False, datasets=ds)
    return float(result["history"][0]["images_per_second"]), len(ds[0]) / _CPU[-1]


def hand_epoch(config: TrainConfig, ds: ImageDataset, seed: int) -> tuple[float, float]:
    """images/s (wall clock, process CPU time) of one epoch of the smallest loop that does
    the same work."""
    torch.manual_seed(config.seed)
    model = models.create(config.model, num_classes=ds.num_classes, in_channels=ds.in_channels)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    images, labels = ds.images, ds.labels
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    for idx in torch.randperm(len(ds), generator=g).split(config.batch_size):
        x, y = images[idx], labels[idx]
        loss = F.cross_entropy(model((x - mean) / std), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(ds) / wall, len(ds) / cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model", default="lenet5_modern")
    parser.add_argument("--limit", type=int, default=20000,
                        help="training images per epoch (default: 20000; 0: all)")
    parser.add_argument("--repeats", type=int, default=15, help="epochs measured per side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_ds, test_ds, name = data(args.data_dir, args.limit)
    config = TrainConfig(model=args.model, data=name, epochs=1, batch_size=args.batch_size,
                         lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="constant",
                         augment="none", device="cpu", out="unused")
    cnnlab_epoch(config, (train_ds, test_ds))             # warm-up: allocator, kernels
    hand_epoch(config, train_ds, 0)
    ours: list[tuple[float, float]] = []
    hand: list[tuple[float, float]] = []
    for r in range(args.repeats):                     # ABBA: who goes first alternates
        for side in ((0, 1) if r % 2 == 0 else (1, 0)):
            if side == 0:
                ours.append(cnnlab_epoch(config, (train_ds, test_ds)))
            else:
                hand.append(hand_epoch(config, train_ds, r))
        print(f"repeat {r + 1}/{args.repeats}: cnnlab {ours[-1][0]:,.0f} img/s "
              f"({ours[-1][1]:,.0f} per CPU second), hand loop {hand[-1][0]:,.0f} img/s "
              f"({hand[-1][1]:,.0f})", flush=True)
    figures: dict[str, Any] = {}
    for k, clock in enumerate(("wall", "cpu")):
        o, h = [v[k] for v in ours], [v[k] for v in hand]
        figures[clock] = {
            "cnnlab_images_per_second": o, "hand_images_per_second": h,
            "cnnlab_median": statistics.median(o), "hand_median": statistics.median(h),
            "ratio_of_medians": statistics.median(o) / statistics.median(h),
            "median_of_pair_ratios": statistics.median(a / b for a, b in zip(o, h, strict=True))}
        f = figures[clock]
        print(f"{clock:>4}: cnnlab {f['cnnlab_median']:,.0f} img/s, hand loop "
              f"{f['hand_median']:,.0f} img/s; ratio {f['ratio_of_medians']:.3f} (median of "
              f"pairs {f['median_of_pair_ratios']:.3f}; target >= 0.98)")
    print(f"({args.model} on {len(train_ds):,} {name} images, batch {args.batch_size}, "
          f"{args.threads} thread(s))")
    if args.json:
        write_json(args.json, {
            "benchmark": "trainer_overhead", "machine": machine(),
            "settings": {"model": args.model, "data": name, "images": len(train_ds),
                         "threads": args.threads, "tensorboard": config.tensorboard,
                         "batch_size": args.batch_size, "repeats": args.repeats,
                         "optimizer": "SGD lr 0.05 momentum 0.9 weight_decay 5e-4"},
            **figures, "target": 0.98})
    return 0


if __name__ == "__main__":
    sys.exit(main())
