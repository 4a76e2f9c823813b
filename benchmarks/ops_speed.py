"""Reference kernels (im2col + matmul, hand-written backward) vs PyTorch's native kernels.

Claim under test (DESIGN.md, principle 1): the reference path stays within a small factor
of native speed. Each case times forward + backward (input, weight and bias gradients) in
float32, native and reference interleaved in one run: warm-up, then the median of --repeat.

    python benchmarks/ops_speed.py --repeat 10 --json benchmarks/results/ops_speed.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _common import machine, write_json

from cnnlab import ops


@dataclass
class Case:
    name: str
    inputs: Callable[[], list[torch.Tensor]]  # fresh leaf tensors that require grad
    run: Callable[..., torch.Tensor]


def _t(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).requires_grad_()


def _conv(stride: int = 1, padding: int | str = 0) -> Callable[..., torch.Tensor]:
    return lambda x, w, b: ops.conv(x, w, b, stride=stride, padding=padding)


CASES = [
    Case("conv2d N32 64->64 32x32 3x3 p1", lambda: [_t(32, 64, 32, 32), _t(64, 64, 3, 3), _t(64)],
         _conv(padding=1)),
    Case("conv2d N64 1->6 32x32 5x5 (LeNet C1)",
         lambda: [_t(64, 1, 32, 32), _t(6, 1, 5, 5), _t(6)], _conv()),
    Case("conv2d N16 3->96 224x224 11x11 s4 (AlexNet C1)",
         lambda: [_t(16, 3, 224, 224), _t(96, 3, 11, 11), _t(96)], _conv(stride=4)),
    Case("conv2d N16 64->128 56x56 3x3 s2 p1 (ResNet down)",
         lambda: [_t(16, 64, 56, 56), _t(128, 64, 3, 3), _t(128)], _conv(stride=2, padding=1)),
    Case("conv_transpose2d N16 128->64 14x14 4x4 s2 p1",
         lambda: [_t(16, 128, 14, 14), _t(128, 64, 4, 4), _t(64)],
         lambda x, w, b: ops.conv_transpose(x, w, b, stride=2, padding=1)),
    Case("conv1d N64 300->100 L60 F3 (text CNN)",
         lambda: [_t(64, 300, 60), _t(100, 300, 3), _t(100)], _conv()),
    Case("conv3d N4 3->64 16x56x56 3x3x3 p1 (C3D)",
         lambda: [_t(4, 3, 16, 56, 56), _t(64, 3, 3, 3, 3), _t(64)], _conv(padding=1)),
    Case("maxpool2d N32 64ch 55x55 3x3 s2 (overlapping)", lambda: [_t(32, 64, 55, 55)],
         lambda x: ops.max_pool(x, 3, 2)),
    Case("lrn N32 96ch 27x27 n=5", lambda: [_t(32, 96, 27, 27)],
         lambda x: ops.lrn(x, 5, 1e-4, 0.75, 2.0)),
]


def _step(case: Case, tensors: list[torch.Tensor], grad: torch.Tensor, kernel: str) -> float:
    for t in tensors:
        t.grad = None
    with ops.kernels(kernel):  # type: ignore[arg-type]
        start = time.perf_counter()
        case.run(*tensors).backward(grad)
        return time.perf_counter() - start


def measure(case: Case, repeat: int, warmup: int) -> dict[str, Any]:
    torch.manual_seed(0)
    tensors = case.inputs()
    with torch.no_grad():
        grad = torch.randn_like(case.run(*tensors))  # the upstream gradient
    times: dict[str, list[float]] = {"native": [], "reference": []}
    for i in range(warmup + repeat):
        for kernel in ("native", "reference"):  # interleaved: both see the same machine state
            dt = _step(case, tensors, grad, kernel)
            if i >= warmup:
                times[kernel].append(dt)
    native, reference = statistics.median(times["native"]), statistics.median(times["reference"])
    return {"case": case.name, "native_ms": 1e3 * native, "reference_ms": 1e3 * reference,
            "ratio": reference / native, "repeat": repeat}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per case first")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", metavar="OUT", help="write figures and machine info here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    print(f"{'case':48s} {'native ms':>10s} {'reference ms':>13s} {'ratio':>6s}")
    for case in CASES:
        if args.only not in case.name:
            continue
        r = measure(case, args.repeat, args.warmup)
        rows.append(r)
        print(f"{r['case']:48s} {r['native_ms']:10.2f} {r['reference_ms']:13.2f} "
              f"{r['ratio']:6.2f}", flush=True)
    if args.json:
        write_json(args.json, {"benchmark": "ops_speed", "dtype": "float32",
                               "pass": "forward+backward", "machine": machine(), "results": rows})


if __name__ == "__main__":
    main()
