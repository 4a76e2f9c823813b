"""Detection (8.6.3) on generated multi-object canvases: sliding windows against region proposals.

Issue 11 (d). ``cnnlab make-data mnist-multi`` writes 96x96 canvases with 1-5 MNIST digits of
16-40 pixels (VOC format). A detector is trained on R-CNN's crops of the training canvases
(``cnnlab train lenet5_modern --task localize --data crops``: selective-search regions at IoU
>= 0.5 with a digit are that digit, below 0.3 background, each warped to 32x32); a second one
on the crops of sliding windows instead (the windows the pyramid scores). Each is run on the
test canvases in these ways:

- ``sliding``: the classifier's FC layers as convolutions over an image pyramid (square windows
  of 15% to 100% of the canvas side; again with windows 3/4 as wide as high, the digits'
  median shape), one pass per scale, boxes refined by the regression head;
- ``selective``: fast selective search's regions, each warped and classified (R-CNN).

Figures, each way: mAP@0.5 and COCO mAP@[.5:.95] (pycocotools), the boxes looked at per image
(windows or proposals) and their recall of the digits at IoU 0.5, detections per image,
images/s (proposals included, one thread). The canvases and the runs go to ``--out``; a
finished run is reused (``--detectors`` measures one at a time, each under 10 minutes here).

    OMP_NUM_THREADS=1 python benchmarks/detection.py --json benchmarks/results/detection-mnist.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, write_json

from cnnlab.apps.boxes import Truth
from cnnlab.apps.detect import (
    ASPECTS,
    EVAL_THRESHOLD,
    IOU_THRESHOLD,
    SCALES,
    Detector,
    evaluate,
    read_image,
)
from cnnlab.apps.proposals import BACKGROUND, MIN_SIDE, region_crops
from cnnlab.data.boxes import read_boxes
from cnnlab.train import TrainConfig, load_run, train
from cnnlab.train._runs import run_info
from cnnlab.train.batches import normalizer
from cnnlab.train.run import WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def make(out: Path, train_n: int, test_n: int) -> Path:
    if not (out / "classes.txt").is_file():
        subprocess.run([sys.executable, "-m", "cnnlab", "make-data", "mnist-multi", "--out",
                        str(out), "--seed", "0", "--data-dir", str(SHARED), "--train",
                        str(train_n), "--test", str(test_n)], check=True)
    return out


# detector -> the proposals its training crops come from
DETECTORS = {"selective-crops": "selective", "sliding-crops": "sliding"}
# evaluated ways: name -> (proposals, window aspects)
WAYS = {"sliding": ("sliding", ASPECTS), "sliding_aspect_0.75": ("sliding", (0.75,)),
        "selective": ("selective", ASPECTS)}


def trained(name: str, canvases: Path, run: Path, epochs: int) -> float | None:
    """Train the detector ``name`` into ``run`` (None: a finished run was reused); seconds,
    the crops' proposals included."""
    if (run / WEIGHTS).is_file():
        return None
    t0 = time.perf_counter()
    config = TrainConfig("lenet5_modern", task="localize", data="crops", data_dir=str(canvases),
                         epochs=epochs, lr=0.05, batch_size=64, tensorboard=False, out=str(run))
    if DETECTORS[name] == "selective":                # the data name, as a user trains it
        train(config, progress=False)
    else:
        sets = []
        for split in ("train", "test"):
            records, classes = read_boxes("voc", canvases, split)
            sets.append(region_crops(records, classes, 32, "sliding", split=split))
        train(config, datasets=(sets[0], sets[1]), progress=False)
    return time.perf_counter() - t0


def one_detector(name: str, canvases: Path, run: Path, epochs: int) -> dict[str, Any]:
    seconds = trained(name, canvases, run, epochs)
    info = run_info(run)
    assert info.classes[0] == BACKGROUND
    model, _ = load_run(run)
    normalize = normalizer(info.mean, info.std, torch.device("cpu"))
    records, classes = read_boxes("voc", canvases, "test")
    images = [read_image(r.path, info.input_shape[0]) for r in records]
    truths = [Truth(r.boxes.float(), r.labels.long()) for r in records]
    last = json.loads([line for line in (run / "metrics.jsonl").read_text().splitlines()
                       if line][-1])
    out: dict[str, Any] = {
        "model": "lenet5_modern", "task": "localize", "crop_proposals": DETECTORS[name],
        "epochs": epochs, "train_seconds": seconds, "test_canvases": len(records),
        "crops_test": {k: last[k] for k in ("test_top1", "test_iou", "test_loc_accuracy")},
        "machine": machine()}
    for way, (proposals, aspects) in WAYS.items():
        detector = Detector(model, normalize, proposals, score_threshold=EVAL_THRESHOLD,
                            aspects=aspects)
        out[way] = evaluate(detector, images, truths, len(classes))
        print(f"{name} {way}: {out[way]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default=",".join(DETECTORS),
                        help="which detectors to train and measure (comma-separated)")
    parser.add_argument("--train", type=int, default=1500, help="training canvases")
    parser.add_argument("--test", type=int, default=200, help="test canvases")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-detection")
    parser.add_argument("--json", type=Path, help="results file; detectors measured before "
                        "and not measured now are kept")
    args = parser.parse_args()
    canvases = make(args.out / "data-mnist-multi", args.train, args.test)
    results: dict[str, Any] = {}
    if args.json and args.json.is_file():
        results = json.loads(args.json.read_text()).get("results", {})
    for name in args.detectors.split(","):
        results[name] = one_detector(name, canvases, args.out / f"det-{name}", args.epochs)
    payload = {"benchmark": "detection",
               "data": {"name": "mnist-multi", "train_canvases": args.train,
                        "test_canvases": args.test, "canvas": [1, 96, 96]},
               "settings": {"score_threshold": EVAL_THRESHOLD, "iou_threshold": IOU_THRESHOLD,
                            "sliding_scales": list(SCALES), "selective_search": "fast",
                            "selective_search_min_side": MIN_SIDE},
               "results": results}
    if args.json:
        write_json(args.json, payload)
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
