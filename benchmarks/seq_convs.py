"""The 1-D and 3-D convolutions of the sequence models (issue 12 (d)): reference kernel against
native, forward and forward + backward, in one run.

The 3-D convolutions are read from the zoo's video models (forward hooks on the meta device,
at each model's default clip and a training batch): ``c3d_mnist`` and the segment CNN of
``c3d_lstm`` at batch 16 (64 segments), and the first three distinct layers of C3D (Tran et
al. 2015) at one 3x16x112x112 clip. The 1-D convolutions are those of Kim's (2014) text CNN:
filter widths 3, 4 and 5 with 100 maps each over 50-d and 300-d word vectors, sentences of 56
words, batches of 50 (valid convolution: 54, 53 and 52 positions).

Each case runs ``cnnlab.ops.conv`` in float32 on both kernels, interleaved: forward alone
(no autograd), and forward + backward (input, weight and bias gradients); the median of
``--repeat`` after ``--warmup``; ratios are reference / native.

    OMP_NUM_THREADS=1 python benchmarks/seq_convs.py --json benchmarks/results/seq_convs.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from _common import machine, write_json
from torch import nn

from cnnlab import models, ops

# Kim (2014): CNN-rand/static/non-static over word vectors of 300 (word2vec) or 50 (GloVe 6B
# 50-d, as cnnlab's runs use); MR sentences padded to 56 words; mini-batches of 50
KIM = {"widths": (3, 4, 5), "maps": 100, "dims": (50, 300), "length": 56, "batch": 50}
# model -> (batch of clips, conv layers to take: None for all)
VIDEO = {"c3d_mnist": (16, None), "c3d_lstm": (16, None), "c3d": (1, ("conv1", "conv2", "conv3"))}


@dataclass
class Case:
    name: str
    x: tuple[int, ...]
    weight: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]

    @property
    def macs(self) -> int:
        """Forward multiply-accumulates."""
        out = [(n + 2 * p - k) // s + 1 for n, k, s, p in
               zip(self.x[2:], self.weight[2:], self.stride, self.padding)]
        return self.x[0] * self.weight[0] * self.weight[1] * int(
            torch.tensor(self.weight[2:]).prod()) * int(torch.tensor(out).prod())


def conv3d_inputs(name: str, batch: int) -> list[tuple[str, nn.Conv3d, tuple[int, ...]]]:
    """(path, layer, input shape) of each 3-D convolution of model ``name`` as it runs on a
    batch of its default clips (on the meta device: shapes only)."""
    with torch.device("meta"):
        model = models.create(name).eval()
    paths = {m: p for p, m in model.named_modules()}
    found: list[tuple[str, nn.Conv3d, tuple[int, ...]]] = []
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            m.register_forward_hook(lambda m, i, o: found.append((paths[m], m, tuple(i[0].shape))))
    with torch.no_grad():
        model(torch.zeros(batch, *model.default_input_shape, device="meta"))
    return found


def video_cases() -> list[Case]:
    cases = []
    for name, (batch, wanted) in VIDEO.items():
        for path, m, shape in conv3d_inputs(name, batch):
            short = path.removeprefix("cnn.")
            if wanted is not None and short not in wanted:
                continue
            w = tuple(m.weight.shape)
            cases.append(Case(f"{name} {short}: N{shape[0]} {w[1]}->{w[0]} "
                              f"{'x'.join(map(str, shape[2:]))} 3x3x3", shape, w,
                              tuple(m.stride), tuple(m.padding)))
    return cases


def text_cases() -> list[Case]:
    n, length = KIM["batch"], KIM["length"]
    return [Case(f"Kim text CNN: N{n} {d}->{KIM['maps']} L{length} width {f}", (n, d, length),
                 (KIM["maps"], d, f), (1,), (0,)) for d in KIM["dims"] for f in KIM["widths"]]


def _time(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(case: Case, repeat: int, warmup: int) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.randn(case.x).requires_grad_()
    w = torch.randn(case.weight).mul_(0.05).requires_grad_()
    b = torch.randn(case.weight[0]).requires_grad_()
    with torch.no_grad():
        grad = torch.randn_like(ops.conv(x, w, b, case.stride, case.padding))

    def forward() -> None:
        with torch.no_grad():
            ops.conv(x, w, b, case.stride, case.padding)

    def both() -> None:
        for t in (x, w, b):
            t.grad = None
        ops.conv(x, w, b, case.stride, case.padding).backward(grad)

    times: dict[str, list[float]] = {f"{k}_{p}": [] for k in ("native", "reference")
                                     for p in ("forward", "forward_backward")}
    for i in range(warmup + repeat):
        for kernel in ("native", "reference"):      # interleaved: the same machine state
            with ops.kernels(kernel):  # type: ignore[arg-type]
                f, fb = _time(forward), _time(both)
            if i >= warmup:
                times[f"{kernel}_forward"].append(f)
                times[f"{kernel}_forward_backward"].append(fb)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {"case": case.name, "input": list(case.x), "weight": list(case.weight),
            "macs": case.macs, **{f"{k}_ms": v for k, v in med.items()},
            "forward_ratio": med["reference_forward"] / med["native_forward"],
            "forward_backward_ratio": (med["reference_forward_backward"]
                                       / med["native_forward_backward"]),
            "repeat": repeat}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'case':52s} {'fwd ms':>8s} {'ref':>8s} {'x':>5s} {'f+b ms':>8s} {'ref':>8s} "
          f"{'x':>5s}")
    for case in video_cases() + text_cases():
        r = measure(case, args.repeat, args.warmup)
        rows.append(r)
        print(f"{r['case']:52s} {r['native_forward_ms']:8.2f} {r['reference_forward_ms']:8.2f} "
              f"{r['forward_ratio']:5.2f} {r['native_forward_backward_ms']:8.2f} "
              f"{r['reference_forward_backward_ms']:8.2f} {r['forward_backward_ratio']:5.2f}",
              flush=True)
    if args.json:
        write_json(args.json, {"benchmark": "seq_convs", "issue": "12 (d)", "dtype": "float32",
                               "kim": KIM, "settings": {"repeat": args.repeat,
                                                        "warmup": args.warmup,
                                                        "threads": args.threads},
                               "machine": machine(), "results": rows})


if __name__ == "__main__":
    main()
