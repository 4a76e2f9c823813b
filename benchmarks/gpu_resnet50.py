"""ResNet-50 training throughput on a GPU: `cnnlab train` next to a plain PyTorch loop.

Issue 3's GPU figure (and a check of the trainer's GPU path): images/s of forward + backward
+ SGD step of ``resnet50`` at 224x224 in bf16 autocast with channels_last, batch 128 by
default, (1) through ``cnnlab.train.train`` (its own ``images_per_second`` of the training
pass; the data are random images held on the GPU, so no loading is timed) and (2) in the
smallest hand-written loop doing the same work on the same tensors. The two alternate over
the repeats; the figure is the ratio of the medians. cuDNN's autotuner is on for both (the
trainer turns it on for its runs on a GPU).

Needs a CUDA GPU (``--device cpu`` with small ``--size``/``--images`` is a smoke test):

    python benchmarks/gpu_resnet50.py --json benchmarks/results/gpu_resnet50.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import machine, write_json

from cnnlab import models
from cnnlab.data import ImageDataset
from cnnlab.train import TrainConfig, train


def synthetic(n: int, size: int, classes: int, seed: int) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    return ImageDataset(torch.rand(n, 3, size, size, generator=g),
                        torch.randint(0, classes, (n,), generator=g), name="random",
                        split="train", classes=[str(i) for i in range(classes)],
                        mean=[0.5] * 3, std=[0.29] * 3)


def cnnlab_epoch(config: TrainConfig, data: tuple[ImageDataset, ImageDataset]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig.from_dict({**config.to_dict(), "out": str(Path(tmp) / "run")})
        result = train(config, progress=False, datasets=data)
    return float(result["history"][0]["images_per_second"])


def hand_epoch(config: TrainConfig, ds: ImageDataset, device: torch.device, seed: int) -> float:
    torch.manual_seed(config.seed)
    model = models.create(config.model, num_classes=ds.num_classes).to(device)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    images, labels = ds.images.to(device), ds.labels.to(device)
    mean = torch.tensor(ds.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, device=device).view(1, -1, 1, 1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    for idx in torch.randperm(len(ds), generator=g).split(config.batch_size):
        idx = idx.to(device)
        x = ((images[idx] - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(x)
        loss = F.cross_entropy(out.float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return len(ds) / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=3840, help="images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU here; pass --device cpu (with a small --size and --images) "
              "for a smoke test", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True

    classes = models.default_classes((3, args.size, args.size))
    data = (synthetic(args.images, args.size, classes, 0),
            synthetic(args.batch_size, args.size, classes, 1))
    # the images come as datasets=; "folder" (images of your own) is only recorded
    config = TrainConfig(model=args.model, data="folder", epochs=1, batch_size=args.batch_size,
                         lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="constant",
                         amp="bf16", channels_last=True, device=str(device), out="unused",
                         tensorboard=False, plots=False)
    cnnlab_epoch(config, data)                                     # warm-up: autotuning
    hand_epoch(config, data[0], device, 0)
    ours: list[float] = []
    hand: list[float] = []
    for r in range(args.repeats):
        for side in ((0, 1) if r % 2 == 0 else (1, 0)):
            if side == 0:
                ours.append(cnnlab_epoch(config, data))
            else:
                hand.append(hand_epoch(config, data[0], device, r))
        print(f"repeat {r + 1}/{args.repeats}: cnnlab {ours[-1]:,.0f} img/s, hand loop "
              f"{hand[-1]:,.0f} img/s", flush=True)
    ratio = statistics.median(ours) / statistics.median(hand)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model} {args.size}x{args.size}, batch {args.batch_size}, bf16 + channels_last "
          f"on {name}: cnnlab {statistics.median(ours):,.0f} img/s, hand loop "
          f"{statistics.median(hand):,.0f} img/s; ratio {ratio:.3f}")
    if args.json:
        write_json(args.json, {
            "benchmark": "gpu_resnet50", "machine": {**machine(), "device": name},
            "settings": {"model": args.model, "size": args.size, "images": args.images,
                         "batch_size": args.batch_size, "repeats": args.repeats,
                         "amp": "bf16", "channels_last": True, "cudnn_benchmark": True},
            "cnnlab_images_per_second": ours, "hand_images_per_second": hand,
            "cnnlab_median": statistics.median(ours), "hand_median": statistics.median(hand),
            "ratio_of_medians": ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
