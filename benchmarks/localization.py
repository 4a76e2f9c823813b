"""Localisation (8.6.2) on generated single-object canvases: the chapter's steps, measured.

Issue 11 (c). For each data set (``--sets``: MNIST and CIFAR-10 canvases written by
``cnnlab make-data NAME-single``), in VOC format, read back by the trainer as ``--data voc``:

1. a classifier trained on the canvases' classes (each canvas's one object);
2. the localiser: its regression head trained on the classifier's frozen convolutions
   (``--task localize --init CLASSIFIER --freeze-until features``);
3. the same, fine-tuned with both heads from the frozen-features localiser (``--init``);
4. each localiser tested on the test canvases resized to its input (one window), and with the
   sliding-window merge (:func:`cnnlab.apps.localize.localize_windows`) on the canvases at
   their own size.

Figures: mean IoU and localisation accuracy (class right and IoU >= 0.5), and the class
accuracy. Run folders go to ``--out``; a finished folder is reused, so a rerun does not retrain.

    OMP_NUM_THREADS=1 python benchmarks/localization.py --json benchmarks/results/localization.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, write_json

from cnnlab import data
from cnnlab.apps.boxes import box_iou
from cnnlab.apps.localize import localize_windows
from cnnlab.train import TrainConfig, load_run, train
from cnnlab.train.batches import normalizer
from cnnlab.train.evaluation import evaluate
from cnnlab.train.run import WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# name -> (make-data row, its source folder, model, its last convolutional layer (frozen),
# epochs: classifier, frozen, fine-tuned)
SETS: dict[str, tuple[str, Path, str, str, tuple[int, int, int]]] = {
    "mnist": ("mnist-single", SHARED, "lenet5_modern", "features", (15, 10, 5)),
    "cifar10": ("cifar10-single", SHARED / "cifar10-jpeg", "resnet20", "stage3", (10, 8, 4)),
}


def make(name: str, source: Path, out: Path, train_n: int, test_n: int) -> Path:
    if not (out / "classes.txt").is_file():
        subprocess.run([sys.executable, "-m", "cnnlab", "make-data", name, "--out", str(out),
                        "--seed", "0", "--data-dir", str(source), "--train", str(train_n),
                        "--test", str(test_n)], check=True)
    return out


def trained(config: TrainConfig) -> dict[str, Any]:
    """Train, or reuse a finished folder."""
    assert config.out is not None
    if (Path(config.out) / WEIGHTS).is_file():
        return {"run_dir": config.out, "seconds": None}
    t0 = time.perf_counter()
    result = train(config, progress=False)
    return {"run_dir": result["run_dir"], "seconds": time.perf_counter() - t0}


def windows_figures(run: str, canvases: Path) -> dict[str, float]:
    """Mean IoU and localisation accuracy of the sliding-window merge on the test canvases at
    their own size."""
    model, _ = load_run(run)
    test = data.load("voc", "test", data_dir=canvases)          # native size
    norm = normalizer(test.mean, test.std, torch.device("cpu"))
    t0 = time.perf_counter()
    found = localize_windows(model, test.images, norm)
    seconds = time.perf_counter() - t0
    target = torch.cat(list(test.labels))                          # N x 5
    boxes = torch.tensor([f.box for f in found])
    iou = box_iou(boxes, target[:, 1:]).diagonal()
    right = torch.tensor([f.label for f in found]).eq(target[:, 0].long())
    return {"iou": float(iou.mean()), "loc_accuracy": float((right & (iou >= 0.5)).float().mean()),
            "top1": float(right.float().mean()), "images_per_s": len(found) / seconds}


def one_set(key: str, out: Path, train_n: int, test_n: int) -> dict[str, Any]:
    row, source, model, last_conv, (e_cls, e_frozen, e_tuned) = SETS[key]
    canvases = make(row, source, out / f"data-{row}", train_n, test_n)
    common = {"model": model, "data": "voc", "data_dir": str(canvases), "batch_size": 64,
              "tensorboard": False}
    cls = trained(TrainConfig(**common, epochs=e_cls, lr=0.05, out=str(out / f"{key}-cls")))
    frozen = trained(TrainConfig(**common, task="localize", epochs=e_frozen, lr=0.02,
                                 init=cls["run_dir"], freeze_until=last_conv,
                                 out=str(out / f"{key}-loc-frozen")))
    tuned = trained(TrainConfig(**common, task="localize", epochs=e_tuned, lr=0.005,
                                init=frozen["run_dir"], out=str(out / f"{key}-loc-tuned")))
    test = data.load("voc", "test", data_dir=canvases,
                     size=tuple(load_run(cls["run_dir"])[0].default_input_shape[1:]))
    result: dict[str, Any] = {"data": row, "model": model, "epochs": [e_cls, e_frozen, e_tuned],
                              "train_canvases": train_n, "test_canvases": test_n,
                              "canvas": list(data.load("voc", "test",
                                                       data_dir=canvases).image_shape),
                              "frozen_until": last_conv}
    cls_model, _ = load_run(cls["run_dir"])
    result["classifier_top1"] = evaluate(cls_model, test)["top1"]
    for arm, run in (("frozen", frozen), ("fine_tuned", tuned)):
        model_, _ = load_run(run["run_dir"])
        one = evaluate(model_, test)
        result[arm] = {"one_window": {k: one[k] for k in ("iou", "loc_accuracy", "top1")},
                       "sliding_windows": windows_figures(run["run_dir"], canvases),
                       "train_seconds": run["seconds"]}
        print(f"{key} {arm}: one window IoU {one['iou']:.3f}, loc acc "
              f"{one['loc_accuracy']:.3f}; windows {result[arm]['sliding_windows']}",
              flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--train", type=int, default=10000, help="training canvases")
    parser.add_argument("--test", type=int, default=2000, help="test canvases")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-localization")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {k: one_set(k, args.out, args.train, args.test) for k in args.sets.split(",")}
    payload = {"benchmark": "localization", "machine": machine(), "results": results}
    if args.json:
        write_json(args.json, payload)
    print(payload)


if __name__ == "__main__":
    main()
