"""Zeiler-Fergus top-9 of every channel of a layer over MNIST's test set in one pass: time and
memory, and that the memory does not grow with the data set (issue 10, point (b)).

``cnnlab.visualize.top_k`` streams the images once and merges each batch's top k into a
running top k per channel, so its state is channels x k whatever the data set's size. By
default each image competes with its strongest unit per channel (k different images, as Zeiler
and Fergus show them); ``--all-positions`` measures the ranking of every unit instead. Each
size is measured in a fresh process: the data set is loaded, a first small pass warms up the
lazy imports, then the resident memory (RSS, sampled every millisecond by a thread) is
recorded above its level before the pass. The weights are lenet5_modern's initial ones:
neither the time nor the memory depends on what the weights are.

    python benchmarks/top_k.py --json benchmarks/results/top_k.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

import torch
from _common import machine, write_json

from cnnlab import data, models
from cnnlab.visualize.patches import top_k

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _Peak:
    """The largest RSS seen while the block runs, sampled by a thread."""

    def __init__(self, every: float = 0.001) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.every)

    def __enter__(self) -> Self:
        self.peak = _rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _trim() -> None:
    """Hand freed heap back to the system, so the baseline RSS is what is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One size, measured in this (fresh) process."""
    torch.set_num_threads(args.threads)
    test = data.load("mnist", "test", args.data_dir, size=32)
    part = test.subset(slice(0, args.child))
    torch.manual_seed(0)
    model = models.create(args.model)
    per_image = not args.all_positions
    top_k(model, test.subset(slice(0, 64)), args.layer, k=args.k,       # warm-up: lazy imports
          per_image=per_image)
    times, peaks = [], []
    for _ in range(args.repeat):
        _trim()
        before = _rss()
        with _Peak() as peak:
            start = time.perf_counter()
            best = top_k(model, part, args.layer, k=args.k, batch_size=args.batch_size,
                         per_image=per_image)
            times.append(time.perf_counter() - start)
        peaks.append(peak.peak - before)
    out_shape = (len(best.channels), *best.map_size)
    return {"images": args.child, "seconds_median": statistics.median(times),
            "seconds": times, "images_per_second": args.child / statistics.median(times),
            "peak_rss_increase_bytes": max(peaks), "peak_rss_increase_each": peaks,
            "topk_state_bytes": best.state_bytes, "channels": len(best.channels),
            "map": list(best.map_size),
            "all_activations_bytes": args.child * int(torch.tensor(out_shape).prod()) * 4,
            "dataset_bytes": part.images.numel() * part.images.element_size()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir",
                        default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model", default="lenet5_modern")
    parser.add_argument("--layer", default="c3")
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--all-positions", action="store_true",
                        help="rank every unit of every image (default: each image's strongest)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3, help="passes per size (median time)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", metavar="OUT", help="write figures and machine info here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0

    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(n), *sys.argv[1:]]
        if "--json" in cmd:
            del cmd[cmd.index("--json"):cmd.index("--json") + 2]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{n:>6} images: {row['seconds_median']:.2f} s ({row['images_per_second']:,.0f}/s), "
              f"peak RSS +{row['peak_rss_increase_bytes'] / 2**20:.1f} MiB, top-k state "
              f"{row['topk_state_bytes']:,} B (all activations would be "
              f"{row['all_activations_bytes'] / 2**20:.1f} MiB)")
    if args.json:
        write_json(args.json, {
            "benchmark": "top_k", "model": args.model, "layer": args.layer, "k": args.k,
            "per_image": not args.all_positions,
            "batch_size": args.batch_size, "weights": "initial (seed 0); time and memory do "
            "not depend on them", "data": "mnist test, 32x32", "repeat": args.repeat,
            "load_average": os.getloadavg(), "rows": rows, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
