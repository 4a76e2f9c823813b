"""torch.distributed support: how a global batch is shared, the torchrun environment."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

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


def _train(tmp_path, name, launcher):
    out = tmp_path / name
    cmd = [*launcher, "-m", "cnnlab", "train", "lenet5", "--epochs", "2", "--batch-size", "64",
           "--lr", "0.01", "--out", str(out), "--quiet", "--no-plots", "--no-tensorboard"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, done.stdout


def test_torchrun_with_two_gloo_processes_matches_one_process(tmp_path):
    """The same command under torchrun: two CPU processes (gloo) share each global batch of
    64 and average their gradients, which is the single-process step up to summation order
    (LeNet-5 has neither dropout nor batch norm)."""
    one, _ = _train(tmp_path, "one", [sys.executable])
    two, stdout = _train(tmp_path, "two", [sys.executable, "-m", "torch.distributed.run",
                                            "--standalone", "--nproc_per_node=2"])
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
