"""Classification metrics: top-k counts (8.4: "top-5 error") and time to an accuracy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch


def topk_correct(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)
                 ) -> list[torch.Tensor]:
    """How many rows have their target among the k highest scores, for each k (as tensors,
    so no device sync). k is capped at the number of classes: with 5 classes or fewer,
    top-5 counts every row."""
    k_max = min(max(ks), scores.shape[1])
    top = scores.topk(k_max, dim=1).indices                   # N x k_max
    hit = top.eq(target.view(-1, 1))                          # N x k_max
    return [hit[:, :min(k, k_max)].any(dim=1).sum() for k in ks]


def time_to_accuracy(history: Iterable[Mapping[str, Any]], target: float,
                     key: str = "test_top1") -> float | None:
    """Training seconds until ``key`` first reached ``target`` (e.g. 0.99), or None.

    Uses each epoch's ``elapsed_seconds`` (training time only, evaluation excluded).
    """
    for record in history:
        if record[key] >= target:
            return float(record["elapsed_seconds"])
    return None
