"""Class images (8.5.1, Eq. 8.4) from lenet5_modern on MNIST: does a second model see the digits?

Issue 10 (c): one image per digit class, synthesised from a trained lenet5_modern ("A") by
``cnnlab.visualize.synthesize``; the figure is the fraction that a second, independently
seeded lenet5_modern ("B") classifies as the intended class (target >= 8/10: the images carry
the class's shape, not only a pattern that fools the model they came from). Measured with the
default settings (over several seeds of the synthesis), and for honesty also with plain
Eq. 8.4 (zero image, no regulariser). The two models are trained here (``--epochs`` each,
seeds 0 and 1) unless ``--runs A B`` names finished run folders; finished runs found in
``--train-dir`` are reused.

    python benchmarks/class_images.py --json benchmarks/results/class_images.json \\
        --png docs/class-images-mnist.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine, write_json
from torch import nn

from cnnlab.train import TrainConfig, train
from cnnlab.train._runs import RunInfo, run_info
from cnnlab.train.metrics import read_metrics
from cnnlab.train.run import load_run, run_status
from cnnlab.visualize import synthesis
from cnnlab.visualize.pictures import save_grid
from cnnlab.visualize.synthesis import input_range, synthesize, to_pixels

MODEL = "lenet5_modern"
ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"noise": 0.0, "jitter": 0, "blur": 0.0, "clip": None, "parameterization": "pixel"}


def _trained(folder: Path, seed: int, data_dir: str, epochs: int) -> Path:
    """A finished lenet5_modern run on MNIST in ``folder``: reused, or trained now."""
    if run_status(folder) == "finished":
        print(f"reusing {folder}", file=sys.stderr, flush=True)
        return folder
    config = TrainConfig.for_model({"model": MODEL, "data": "mnist", "data_dir": data_dir,
                                    "epochs": epochs, "seed": seed, "out": str(folder)})
    result = train(config, progress=sys.stderr.isatty(), overwrite=True)
    print(f"trained {folder}: {result['summary']} in {result['train_seconds']:.0f} s",
          file=sys.stderr, flush=True)
    return folder


def _as_input_of(x: torch.Tensor, source: RunInfo, sink: RunInfo) -> torch.Tensor:
    """Images normalised for ``source`` re-normalised for ``sink`` (no clamping: plain
    Eq. 8.4's images leave the data range and are judged as they are)."""
    def column(v: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1)

    raw = x * column(source.std) + column(source.mean)
    return (raw - column(sink.mean)) / column(sink.std)


def _judge(x: torch.Tensor, a: nn.Module, b: nn.Module, ia: RunInfo, ib: RunInfo
           ) -> dict[str, Any]:
    """How A (the source) and B (the independent model) classify images of classes 0..9."""
    classes = torch.arange(len(x))
    with torch.no_grad():
        pa, pb = a(x).argmax(1), torch.softmax(b(_as_input_of(x, ia, ib)), dim=1)
    return {"fraction_b": (pb.argmax(1) == classes).float().mean().item(),
            "fraction_a": (pa == classes).float().mean().item(),
            "b_predicts": pb.argmax(1).tolist(),
            "b_probability_of_intended": [round(v, 4) for v in pb.diagonal().tolist()]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs=2, metavar=("A", "B"),
                        help="finished lenet5_modern run folders on MNIST (A synthesises, B "
                        "judges); default: train them into --train-dir")
    parser.add_argument("--train-dir", default=str(ROOT / "runs"),
                        help="where the two runs are trained (or found finished)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each trained model")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--seeds", type=int, default=5, help="synthesis seeds measured")
    parser.add_argument("--steps", type=int, default=synthesis.STEPS)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--png", help="write the grid of the default settings' images (seed 0)")
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.runs:
        run_a, run_b = (Path(r) for r in args.runs)
    else:
        run_a, run_b = (_trained(Path(args.train_dir) / f"class-images-{MODEL}-seed{s}", s,
                                 args.data_dir, args.epochs) for s in (0, 1))
    (a, _), (b, _) = load_run(run_a), load_run(run_b)
    ia, ib = run_info(run_a), run_info(run_b)
    targets = list(range(len(ia.classes)))
    clip = input_range(ia.mean, ia.std)
    settings = {
        "default": {"clip": clip},
        "plain Eq. 8.4": dict(PLAIN),
        "Eq. 8.4 from noise": {**PLAIN, "noise": synthesis.NOISE},
        "default + fourier": {"clip": clip, "parameterization": "fourier"},
    }
    rows: list[dict[str, Any]] = []
    images: dict[str, torch.Tensor] = {}
    for name, kw in settings.items():
        seeds = range(args.seeds) if name != "plain Eq. 8.4" else range(1)   # no randomness
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            x = synthesize(a, targets, steps=args.steps, seed=seed, **kw)
            runs.append({"seed": seed, "seconds": round(time.perf_counter() - start, 2),
                         **_judge(x, a, b, ia, ib)})
            images.setdefault(name, x)
        fractions = [r["fraction_b"] for r in runs]
        rows.append({"settings": name, "kwargs": _plain(kw), "steps": args.steps,
                     "fraction_b_seed0": fractions[0],
                     "fraction_b_mean": sum(fractions) / len(fractions),
                     "fraction_b_min": min(fractions), "runs": runs})
        print(f"{name:<20} B classifies {fractions[0] * 10:.0f}/10 as intended (seed 0); "
              f"mean over {len(fractions)} seeds {sum(fractions) / len(fractions) * 10:.1f}/10,"
              f" min {min(fractions) * 10:.0f}/10; A {runs[0]['fraction_a'] * 10:.0f}/10",
              flush=True)
    if args.png:
        x, judged = images["default"], rows[0]["runs"][0]
        captions = [f"{ia.classes[t]}: B says {ia.classes[p]}"
                    for t, p in zip(targets, judged["b_predicts"], strict=True)]
        pixels = list(to_pixels(x, ia.mean, ia.std))
        save_grid([pixels[:5], pixels[5:]], args.png, captions=[captions[:5], captions[5:]],
                  cell=0.8)
        print(f"wrote {args.png}", flush=True)
    if args.json:
        write_json(args.json, {"benchmark": "class_images", "machine": machine(),
                               "runs": [{"path": str(r), "test_top1": read_metrics(r)[-1]
                                         .get("test_top1")} for r in (run_a, run_b)],
                               "defaults": {k: getattr(synthesis, k) for k in (
                                   "STEPS", "LR", "L2", "JITTER", "BLUR", "BLUR_EVERY",
                                   "NOISE")},
                               "results": rows})
    return 0


def _plain(kw: dict[str, Any]) -> dict[str, Any]:
    """Settings as JSON (the clip range as lists)."""
    return {k: [list(v) for v in val] if k == "clip" and val is not None else val
            for k, val in kw.items()}


if __name__ == "__main__":
    sys.exit(main())
