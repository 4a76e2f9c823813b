"""Moving-MNIST (8.6.5, issue 12 (b)): does a video model need motion to beat frame averaging?

The chapter claims that 3-D convolutions add little over averaging the classifications of
single frames, unless the classes depend on motion. ``cnnlab make-data moving-mnist`` writes
clips with two label sets over the same files: the digit (appearance alone decides) and its
path (horizontal, vertical, diagonal or still: motion alone decides; a single frame is
distributed alike for every path, see :mod:`cnnlab.data.make`). Each of the four models of
the zoo is trained on each label set through ``cnnlab train`` (``--data video``), with the
same settings, and tested on the test clips:

- ``frame_average``: a 2-D CNN classifies each frame, the scores are averaged;
- ``c3d_mnist``: a 3-D CNN (C3D's rule: 3x3x3 convolutions, pool1 1x2x2);
- ``cnn_lstm``: the 2-D CNN per frame, an LSTM over the frames;
- ``c3d_lstm``: a 3-D CNN per 4-frame segment, an LSTM over the segments.

Figures: test accuracy, parameters and multiply-accumulates per clip (cnnlab.inspect), training
clips/s (the trainer's epoch figure) and inference clips/s (median of five batches), on the
machine it runs on (``torch.set_num_threads(1)`` unless ``--threads``). The budget is small
(2 shared CPU cores): ``--train`` 1,500 clips, 4 epochs, so the figures are those of short
training, not of converged models.

    OMP_NUM_THREADS=1 python benchmarks/video_mnist.py --json benchmarks/results/video_mnist.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, write_json

from cnnlab import data, models
from cnnlab.data.make import LABEL_SETS, make_data
from cnnlab.inspect import summarize
from cnnlab.train import TrainConfig, load_run, train
from cnnlab.train.batches import normalizer
from cnnlab.train.run import WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODELS = ("frame_average", "c3d_mnist", "cnn_lstm", "c3d_lstm")


def costs(name: str) -> dict[str, int]:
    """Parameters and MACs per clip at the model's default input, from the inspector."""
    entry = models.info(name)
    s = summarize(entry.meta_model, entry.input_shape)
    return {"params": s.totals.params, "macs": s.totals.macs}


def clips_per_second(run: str, folder: Path, batch: int, device: str) -> float:
    """Inference: the median of five batches of test clips, after one warm-up batch."""
    model, _ = load_run(run)
    model = model.to(device).eval()
    size = tuple(model.default_input_shape[1:])
    test = data.load("video", "test", data_dir=folder, size=size)
    norm = normalizer(test.mean, test.std, torch.device(device))
    x = norm(test.images[:batch].to(device))
    times = []
    with torch.no_grad():
        for i in range(6):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=1500, help="training clips (default 1500)")
    p.add_argument("--test", type=int, default=500, help="test clips (default 500)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--schedule", default="step",
                   help="learning-rate schedule (TrainConfig.schedule; default step, no drop)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--labels", default=",".join(LABEL_SETS), help="label sets to train on")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/tmp/cnnlab-bench-video", help="data and run folders")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "video_mnist.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    clips = out / f"moving-mnist-{args.train}-{args.test}"
    t0 = time.perf_counter()
    if not (clips / "make-data.json").is_file():
        make_data("moving-mnist", clips, seed=0, train=args.train, test=args.test,
                  data_dir=SHARED)
    made = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    for labels in args.labels.split(","):
        for name in args.models.split(","):
            run = out / "runs" / (f"{labels}-{name}-{args.train}-e{args.epochs}"
                                  + ("" if args.schedule == "step" else f"-{args.schedule}"))
            config = TrainConfig(model=name, data="video", data_dir=str(clips / labels),
                                 epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                 schedule=args.schedule, seed=0, device=args.device,
                                 out=str(run))
            t1 = time.perf_counter()
            if (run / WEIGHTS).is_file():
                result = None
            else:
                result = train(config, progress=False)
            seconds = time.perf_counter() - t1
            if result is None:
                print(f"{labels} {name}: reused {run}; delete it to retrain", flush=True)
                continue
            last = result["history"][-1]
            row = {"labels": labels, "model": name, **costs(name),
                   "test_top1": result["test_top1"],
                   "per_epoch_test_top1": [h["test_top1"] for h in result["history"]],
                   "train_clips_per_s": last["images_per_second"],
                   "inference_clips_per_s": clips_per_second(str(run), clips / labels, 50,
                                                             args.device),
                   "seconds": seconds}
            rows.append(row)
            print(f"{labels:9} {name:14} top-1 {row['test_top1']:.3f}  "
                  f"{row['params']:>9,} params  {row['macs'] / 1e6:7.1f} M MACs  "
                  f"train {row['train_clips_per_s']:6.1f} clips/s  infer "
                  f"{row['inference_clips_per_s']:6.1f} clips/s  {seconds:5.0f} s", flush=True)
    write_json(args.json, {
        "benchmark": "video_mnist", "issue": "12 (b)",
        "what": "Moving-MNIST (make-data moving-mnist, seed 0: one MNIST digit bouncing in "
                "64x64 for 20 frames; clips of the first 16 frames), digit and direction "
                "labels of the same clips; each model trained by cnnlab train (SGD momentum "
                "0.9, weight decay 5e-4, the lr schedule in settings, seed 0) and tested on "
                "the test clips",
        "settings": {"train_clips": args.train, "test_clips": args.test, "epochs": args.epochs,
                     "lr": args.lr, "schedule": args.schedule, "batch_size": args.batch_size,
                     "device": args.device,
                     "threads": args.threads, "clip": [1, 16, 64, 64]},
        "chance": {"digit": 0.1, "direction": 1 / 4},
        "make_data_seconds": made, "rows": rows, "machine": machine()})


if __name__ == "__main__":
    main()
