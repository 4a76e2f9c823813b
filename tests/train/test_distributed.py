"""torch.distributed support: how a global batch is shared, the torchrun environment."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cnnlab import cli
from cnnlab.errors import CnnlabError
from cnnlab.train import METRICS, WEIGHTS
from cnnlab.train.distributed import Context, context_from_env


@pytest.mark.parametrize("n, world", [(10, 2), (7, 2), (7, 3), (1, 2), (64, 4)])
def test_shards_cover_the_global_batch_once(n, world):
    idx = torch.randperm(100)[:n]
    shares = [Context(r, world).shard(idx) for r in range(world)]
    assert torch.equal(torch.cat(shares), idx)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_shard_weights_turn_local_means_into_the_global_mean():
    # DDP averages gradients over processes: sum_r w_r * mean_r / world == global mean
    values = torch.randn(7)
    world = 3
    total = 0.0
    for r in range(world):
        ctx = Context(r, world)
        share = ctx.shard(values)
        total += ctx.shard_weight(len(share), len(values)) * share.mean().item() / world
    assert total == pytest.approx(values.mean().item())


def test_one_process_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = context_from_env()
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)


def test_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = context_from_env()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (3, 4, 1, False)
    assert ctx.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert ctx.device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("rank, world, message", [("x", "2", "RANK='x' is not an integer"),
                                                  ("2", "2", "do not fit together")])
def test_bad_environment(monkeypatch, rank, world, message):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(CnnlabError, match=message):
        context_from_env()


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TRAIN = ["train", "lenet5", "--epochs", "2", "--batch-size", "64", "--lr", "0.01", "--quiet",
         "--no-plots", "--no-tensorboard"]

# run under torchrun: both processes stop right after the mid-epoch checkpoint of step 10
CRASH_AFTER_STEP_10 = """
import sys
from cnnlab import cli
from cnnlab.train import state

save = state.RunState.save

def save_then_crash(self, epoch, t, *args, **kwargs):
    save(self, epoch, t, *args, **kwargs)
    if epoch == 1 and t.step == 10:
        raise SystemExit(3)

state.RunState.save = save_then_crash
sys.exit(cli.main(sys.argv[1:]))
"""


def _descendants(pid):
    """The processes below ``pid`` (torchrun's workers may sit in sessions of their own)."""
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:                                   # it ended meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])     # after "pid (name) state"
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _signal(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _run(cmd, expect=0, timeout=300):
    """Run ``cmd`` in a session of its own; past ``timeout``, it and every process below it
    are sent SIGABRT, which makes each Python print where it stands (faulthandler), and the
    test fails with that (a process that outlives the abort is killed, so the test never
    waits for ever on its open pipes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        below = _descendants(proc.pid)
        _signal([proc.pid, *below], signal.SIGABRT)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            _signal([proc.pid, *below], signal.SIGKILL)
            stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(cmd[2:])} did not end in {timeout} s; where it stood:\n"
                    f"{stdout[-1000:]}\n{stderr[-6000:]}")
    assert (proc.returncode == 0) == (expect == 0), stderr[-2000:]
    return stdout


def _train(tmp_path, name, launcher):
    out = tmp_path / name
    return out, _run([*launcher, "-m", "cnnlab", *TRAIN, "--out", str(out)])


def _records(run):
    return [json.loads(line) for line in (run / METRICS).read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_with_two_gloo_processes_matches_one_process(tmp_path, monkeypatch, one_thread):
    """The same command under torchrun: two CPU processes (gloo) share each global batch of
    64 and average their gradients, which is the single-process step up to summation order
    (LeNet-5 has neither dropout nor batch norm). The single process is this one, on one
    thread as each of torchrun's."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    one = tmp_path / "one"
    assert cli.main([*TRAIN, "--out", str(one)]) == 0
    two, stdout = _train(tmp_path, "two", TORCHRUN)
    assert stdout.count("test accuracy") == 1                  # rank 0 reports, alone
    a, b = load_file(one / WEIGHTS), load_file(two / WEIGHTS)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)   # float drift, 2 epochs
    m1, m2 = (json.loads((d / METRICS).read_text().splitlines()[-1]) for d in (one, two))
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-4)
    assert m2["test_top1"] == pytest.approx(m1["test_top1"], abs=2e-3)
    assert m2["train_images"] == m1["train_images"] == 1437     # each image once per epoch
    assert m1["test_top1"] > 0.5                               # it learned something
    assert not (two / "checkpoint.safetensors").exists()
    # each process evaluated half of the test set; the confusion matrix holds all of it
    for run in (one, two):
        matrix = json.loads((run / "confusion.json").read_text())["matrix"]
        assert sum(map(sum, matrix)) == 360

    # killed in the middle of epoch 1 and resumed: each process's sums of the epoch were in
    # the checkpoint, so the records and weights are those of the run that never stopped, to
    # the bit
    three = tmp_path / "three"
    script = tmp_path / "crash.py"
    script.write_text(CRASH_AFTER_STEP_10)
    _run([*TORCHRUN, str(script), *TRAIN, "--out", str(three), "--checkpoint-every", "10"],
         expect=3)
    assert (three / "checkpoint.safetensors").exists() and not (three / WEIGHTS).exists()
    _run([*TORCHRUN, "-m", "cnnlab", "train", "--resume", str(three), "--quiet"])
    c = load_file(three / WEIGHTS)
    for k in b:
        assert torch.equal(c[k], b[k]), k
    for r2, r3 in zip(_records(two), _records(three), strict=True):
        assert r3["train_images"] == r2["train_images"] == 1437
        assert r3["train_loss"] == r2["train_loss"] and r3["test_loss"] == r2["test_loss"]
        assert r3["train_top1"] == r2["train_top1"]
        assert r3["test_top1"] == r2["test_top1"]


def _image_folder(root, n_train=128, n_test=32):
    """ROOT/train|test/c0 ... c3/*.png: 32x32 RGB noise whose brightness follows the class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            label = i % 4
            pixels = rng.normal(40 + 50 * label, 40, (32, 32, 3)).clip(0, 255).astype(np.uint8)
            path = root / split / f"c{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


@pytest.mark.slow
def test_under_torchrun_the_logged_test_figures_are_those_of_the_saved_model(tmp_path):
    """Each process evaluates half of the test set; with batch norm, every process must use
    rank 0's running statistics (the saved model's), not the ones its own share updated.
    Four steps on 128 small images are enough to tell: with each process's own statistics the
    logged test loss is off by 8% (by 1% after an epoch of the digits)."""
    from cnnlab.train import evaluate_run

    out = tmp_path / "bn"
    data = _image_folder(tmp_path / "images")
    _run([*TORCHRUN, "-m", "cnnlab", "train", "resnet20", "--data", "folder", "--data-dir",
          str(data), "--epochs", "1", "--batch-size", "32", "--quiet", "--no-plots",
          "--no-tensorboard", "--out", str(out)])
    logged = _records(out)[-1]
    again = evaluate_run(out)
    assert again["top1"] == logged["test_top1"]
    assert again["loss"] == pytest.approx(logged["test_loss"], rel=1e-5)


def test_sync_bn_needs_gpus_and_the_native_kernels(tmp_path):
    from cnnlab.train import TrainConfig, train

    for kwargs in ({"device": "cpu"}, {"device": "cuda", "kernel": "reference"}):
        with pytest.raises(CnnlabError, match="sync_bn=True needs CUDA GPUs"):
            TrainConfig("resnet20", sync_bn=True, **kwargs)
    if not torch.cuda.is_available():                  # 'auto' resolves to the CPU here
        with pytest.raises(CnnlabError, match="sync_bn=True needs CUDA GPUs .* runs on cpu"):
            train(TrainConfig("resnet20", sync_bn=True, out=str(tmp_path / "r")),
                  progress=False)
        assert not (tmp_path / "r").exists()


def test_sync_batch_norm_keeps_names_and_outputs():
    """The conversion swaps the layers, not the weights: same state-dict names and shapes,
    and the same outputs outside a process group."""
    from cnnlab import models
    from cnnlab.train.loop import sync_batch_norm

    torch.manual_seed(0)
    model = models.create("resnet20")
    x = torch.randn(4, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = [model.train()(x), model.eval()(x)]
    converted = sync_batch_norm(model)
    assert {k: v.shape for k, v in converted.state_dict().items()} == \
        {k: v.shape for k, v in before.items()}
    norms = [m for m in converted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    converted.load_state_dict(before)                 # the running stats before training
    for mode, want in zip((True, False), expected, strict=True):
        torch.testing.assert_close(converted.train(mode)(x), want)
