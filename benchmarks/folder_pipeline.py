"""An image folder read from disk while training: does decoding keep up with the model?

Writes the first N Fashion-MNIST training images (and 1,000 test images) as PNG files into an
image folder (``ROOT/train/<class>/``), then trains one epoch of each model through
``cnnlab.train.train`` three ways, interleaved over the repeats:

- ``memory``: the folder read once into a tensor (``lazy=False``), batches sliced from it;
- ``disk, in process``: ``lazy=True`` with ``num_workers=0``: the training process decodes
  each batch itself before the step;
- ``disk, workers``: ``lazy=True`` with as many DataLoader workers as a GPU run gets by
  default (one per spare core): batches are decoded by other processes while the model
  trains.

The figure is each way's training img/s (the trainer's own ``images_per_second``) and its
ratio to ``memory``: close to 1 means the pipeline keeps the model fed. PNG decoding alone is
timed too (one process). On a CPU the trainer decodes in process by default (the model's
threads already use every core); this script is what that choice rests on.

    python benchmarks/folder_pipeline.py --json benchmarks/results/folder_pipeline.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, write_json
from PIL import Image

from cnnlab.data import ImageDataset, load, load_folder
from cnnlab.train import TrainConfig, train
from cnnlab.train.batches import data_workers

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_folder(root: Path, data_dir: str, n_train: int, size: int) -> None:
    """Fashion-MNIST images as ``size`` x ``size`` greyscale PNGs, one folder per class."""
    for split, n in (("train", n_train), ("test", 1000)):
        ds = load("fashion-mnist", split, data_dir, size=size).subset(slice(0, n))
        pixels = (ds.images[:, 0] * 255).round().to(torch.uint8).numpy()
        for i, (img, label) in enumerate(zip(pixels, ds.labels.tolist(), strict=True)):
            folder = root / split / ds.classes[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(folder / f"{i:06d}.png")


def epoch(model: str, data: tuple[ImageDataset, ImageDataset], workers: int, batch: int,
          out: Path) -> float:
    config = TrainConfig(model=model, data="folder", epochs=1, batch_size=batch, lr=0.05,
                         momentum=0.9, augment="none", num_workers=workers, device="cpu",
                         out=str(out), plots=False, tensorboard=False)
    result = train(config, progress=False, overwrite=True, datasets=data)
    return float(result["history"][0]["images_per_second"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(SHARED))
    parser.add_argument("--images", type=int, default=6000, help="training images written")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--models", default="lenet5_modern,resnet20")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "fashion"
        t0 = time.perf_counter()
        write_folder(root, args.data_dir, args.images, args.size)
        print(f"wrote {args.images:,} + 1,000 PNGs in {time.perf_counter() - t0:.1f} s")
        memory = tuple(load_folder(root, s, lazy=False) for s in ("train", "test"))
        disk = tuple(load_folder(root, s, lazy=True) for s in ("train", "test"))
        t0 = time.perf_counter()
        disk[0].images[:]
        decode = len(disk[0]) / (time.perf_counter() - t0)
        print(f"decoding alone: {decode:,.0f} img/s in one process")
        workers = data_workers(disk[0], 0, "cuda")           # what a GPU run would get
        ways = {"memory": (memory, 0), "disk, in process": (disk, 0),
                "disk, workers": (disk, workers)}
        for model in args.models.split(","):
            speeds: dict[str, list[float]] = {w: [] for w in ways}
            for r in range(args.repeats):
                order = list(ways) if r % 2 == 0 else list(reversed(ways))
                for way in order:
                    data, n = ways[way]
                    speeds[way].append(epoch(model, data, n, args.batch_size,
                                             Path(tmp) / "run"))
            base = statistics.median(speeds["memory"])
            for way, values in speeds.items():
                med = statistics.median(values)
                rows.append({"model": model, "way": way, "workers": ways[way][1],
                             "images_per_second": values, "median": med, "ratio": med / base})
                print(f"{model:>14}  {way:<17} {med:8,.0f} img/s  {med / base:.2f}x memory")
    if args.json:
        write_json(args.json, {
            "benchmark": "folder_pipeline", "machine": machine(),
            "settings": {"images": args.images, "size": args.size,
                         "batch_size": args.batch_size, "repeats": args.repeats,
                         "torch_threads": torch.get_num_threads(), "format": "PNG, greyscale"},
            "decode_images_per_second": decode, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
