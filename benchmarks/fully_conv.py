"""Sliding windows made cheap (issue 11, point (e); 8.6.3): one pass of the fully convolutional
network over an image against cropping every window and classifying the crops, batched and one
by one, on the same image and the same windows.

Cases: lenet5_modern on a 128x128 image, its 32x32 windows at stride 4 (625 windows); and
alexnet_cifar on a 96x96 image, 32x32 windows at stride 8 (81). The windows are those of
``FullyConvolutional.boxes``, the stride the features' own. Each repeat times the three
methods one after the other (inference mode, eval mode, float32; the cropping is part of the
crop methods' time); the medians are reported, and the ratio of each crop method's time to
the converted net's. Beside the times: the multiply-accumulates of each method (from
``cnnlab.inspect.summarize``), and how far the converted net's scores are from the crops':
exact up to rounding for lenet5_modern, whose features have no zero padding; alexnet_cifar's
features pad, so its windows see their real neighbours where a crop sees zeros, and the scores
differ (see ``cnnlab.apps.fully_conv``). The weights are the initial ones (seed 0): neither
the times nor the agreement depend on training.

    python benchmarks/fully_conv.py --json benchmarks/results/fully_conv.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import machine, write_json

from cnnlab import models
from cnnlab.apps.fully_conv import fully_convolutional
from cnnlab.inspect import summarize

# (model, image height and width)
CASES = (("lenet5_modern", 128), ("alexnet_cifar", 96))


def _seconds(run: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def case(name: str, size: int, repeat: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = models.create(name).eval()
    convert_s = []                     # the first in the process includes torch's warm-up
    for _ in range(2):
        start = time.perf_counter()
        net = fully_convolutional(model)
        convert_s.append(time.perf_counter() - start)
    c, wh, ww = model.default_input_shape
    image = torch.randn(1, c, size, size, generator=torch.Generator().manual_seed(1))
    boxes = net.boxes(size, size).long().tolist()                # (x0, y0, x1, y1) per window
    h, w = net.map_size(size, size)

    def converted() -> torch.Tensor:                             # one pass: 1 x classes x h x w
        return net(image)[0].flatten(1).T

    def crops_batched() -> torch.Tensor:                         # every crop in one batch
        crops = torch.cat([image[:, :, y0:y1, x0:x1] for x0, y0, x1, y1 in boxes])
        return model(crops)

    def crops_one_by_one() -> torch.Tensor:                      # a forward pass per window
        return torch.cat([model(image[:, :, y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes])

    methods = {"converted": converted, "crops_batched": crops_batched,
               "crops_one_by_one": crops_one_by_one}
    times: dict[str, list[float]] = {m: [] for m in methods}
    with torch.inference_mode():
        scores = {m: run() for m, run in methods.items()}        # warm-up, and the scores
        for _ in range(repeat):
            for m, run in methods.items():
                times[m].append(_seconds(run))
    medians = {m: statistics.median(t) for m, t in times.items()}
    diff = float((scores["converted"] - scores["crops_batched"]).abs().max())
    same_argmax = float((scores["converted"].argmax(1) == scores["crops_batched"].argmax(1))
                        .double().mean())
    macs_window = summarize(model, (c, wh, ww)).totals.macs
    macs_converted = summarize(net, (c, size, size)).totals.macs
    return {
        "model": name, "image": [c, size, size], "window": list(net.window),
        "stride": list(net.stride), "windows": len(boxes), "map": [h, w],
        "convert_seconds": convert_s, "seconds_median": medians, "seconds": times,
        "ratio_batched_over_converted": medians["crops_batched"] / medians["converted"],
        "ratio_one_by_one_over_converted": medians["crops_one_by_one"] / medians["converted"],
        "macs": {"converted": macs_converted, "crops": macs_window * len(boxes)},
        "max_abs_difference": diff,
        "max_abs_difference_one_by_one_vs_batched": float(
            (scores["crops_one_by_one"] - scores["crops_batched"]).abs().max()),
        "max_abs_score": float(scores["crops_batched"].abs().max()),
        "same_top_class": same_argmax,
        "padded_features": _pads(model),
    }


def _pads(model: torch.nn.Module) -> bool:
    """Whether a convolution or pool pads its input (zeros, or a pool rounding up)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.MaxPool2d | torch.nn.AvgPool2d):
            pad = m.padding if isinstance(m.padding, tuple) else (m.padding,)
            if any(pad) or getattr(m, "ceil_mode", False):
                return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", metavar="OUT", help="write figures and machine info here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, size in CASES:
        row = case(name, size, args.repeat)
        rows.append(row)
        t = row["seconds_median"]
        print(f"{name} on {size}x{size}: {row['windows']} windows of "
              f"{'x'.join(map(str, row['window']))} at stride {row['stride'][0]} "
              f"({row['map'][0]}x{row['map'][1]} map)")
        print(f"  converted, one pass   {t['converted'] * 1e3:9.2f} ms   "
              f"{row['macs']['converted'] / 1e6:9.1f} M MACs")
        print(f"  crops, one batch      {t['crops_batched'] * 1e3:9.2f} ms   "
              f"{row['macs']['crops'] / 1e6:9.1f} M MACs   "
              f"x{row['ratio_batched_over_converted']:.1f} the converted net's time")
        print(f"  crops, one by one     {t['crops_one_by_one'] * 1e3:9.2f} ms   "
              f"{'':9s}            x{row['ratio_one_by_one_over_converted']:.1f}")
        why = ("its features pad with zeros: windows see real neighbours, crops see zeros"
               if row["padded_features"] else "no zero padding: equal up to rounding")
        print(f"  converted vs crops: max |difference| {row['max_abs_difference']:.2e} "
              f"(scores up to {row['max_abs_score']:.2e}; same top class in "
              f"{row['same_top_class']:.0%} of windows; {why}); conversion took "
              f"{row['convert_seconds'][-1]:.2f} s")
    if args.json:
        write_json(args.json, {
            "benchmark": "fully_conv", "what": "one pass of the converted net against "
            "cropping and classifying every window (batched, one by one), same image and "
            "windows; float32, inference mode, median of the repeats",
            "weights": "initial (seed 0); the times do not depend on them",
            "repeat": args.repeat, "load_average": os.getloadavg(), "rows": rows,
            "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
