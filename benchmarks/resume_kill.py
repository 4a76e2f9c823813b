"""Kill `cnnlab train` with SIGKILL at random steps, resume each time: the final weights are
bit-identical to a run that was never killed.

The run uses everything that carries state from step to step: shuffling, augmentation (its
own generator), Nesterov momentum, a per-step one-cycle schedule, label smoothing, and
checkpoints every ``--every`` steps. Each kill comes a random time after the run passes a
random step (seeded), so it lands anywhere: between checkpoints, or during a write. All
processes run with one thread (``OMP_NUM_THREADS=1``): bit-identity holds for the same device
and thread count.

    python benchmarks/resume_kill.py --json benchmarks/results/resume_kill.json
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, write_json
from safetensors.torch import load_file

from cnnlab.errors import CnnlabError
from cnnlab.train import CHECKPOINT, WEIGHTS, checkpoint


def cnnlab(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cnnlab", "train", *args, "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def global_step(run: Path) -> int:
    try:
        return int(checkpoint.describe(run / CHECKPOINT)["global_step"])
    except (CnnlabError, FileNotFoundError):
        return -1


def finish(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"cnnlab train failed ({proc.returncode}): {err.decode()[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--every", type=int, default=50, help="checkpoint every this many steps")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="of the kill steps and delays")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    mnist = (Path(args.data_dir) / "mnist").is_dir()
    data = ["--data", "mnist", "--data-dir", args.data_dir] if mnist else ["--data", "digits"]
    n_train = 60_000 if mnist else 1_437
    steps = args.epochs * -(-n_train // 64)
    settings = ["lenet5_modern", *data, "--epochs", str(args.epochs), "--batch-size", "64", "--lr", "0.05",
                "--augment", "auto", "--schedule", "onecycle", "--nesterov",
                "--label-smoothing", "0.1", "--checkpoint-every", str(args.every),
                "--device", "cpu"]
    rng = random.Random(args.seed)
    targets = sorted(rng.sample(range(1, steps - args.every), args.kills))
    kills = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run, whole = Path(tmp) / "killed", Path(tmp) / "whole"
        for i, target in enumerate(targets):
            proc = cnnlab(*settings, "--out", str(run)) if i == 0 else \
                cnnlab("--resume", str(run))
            resumed_from = global_step(run)
            while global_step(run) < target and proc.poll() is None:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.5))            # anywhere up to a few checkpoints on
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"the run ended before kill {i + 1}: {err[-2000:]}")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append({"target_step": target, "resumed_from_step": resumed_from,
                          "checkpoint_step_after_kill": global_step(run),
                          "temporary_files_left": sum(1 for p in run.iterdir()
                                                      if p.name.endswith(".tmp"))})
            print(f"kill {i + 1}: past step {target}, checkpoint at step "
                  f"{kills[-1]['checkpoint_step_after_kill']}", flush=True)
        finish(cnnlab("--resume", str(run)))
        finish(cnnlab(*settings, "--out", str(whole)))
        a, b = load_file(str(run / WEIGHTS)), load_file(str(whole / WEIGHTS))
        identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    seconds = time.perf_counter() - start
    print(f"{args.kills} SIGKILLs and resumptions over {steps} steps: final weights "
          f"{'bit-identical' if identical else 'DIFFERENT'} to the uninterrupted run "
          f"({len(a)} tensors, max |diff| {max_diff:g}); {seconds:.0f} s")
    if args.json:
        write_json(args.json, {
            "benchmark": "resume_kill", "machine": machine(),
            "settings": {"command": "python -m cnnlab train " + " ".join(settings),
                         "steps": steps, "kills": args.kills, "seed": args.seed,
                         "threads": 1},
            "kills": kills, "bit_identical": identical, "tensors": len(a),
            "max_abs_diff": max_diff, "seconds": seconds})
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
