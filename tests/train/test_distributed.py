"""torch.distributed support: how a global batch is shared, the torchrun environment."""

import pytest
import torch

from cnnlab.errors import CnnlabError
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
