"""Typed calls of ``torch.autograd.Function`` subclasses: torch leaves ``Function.apply``
unannotated, so its result is cast here, once, to what the kernels' forward passes return."""

from __future__ import annotations

from typing import Any, cast

import torch


def apply(fn: type[torch.autograd.Function], *args: Any) -> torch.Tensor:
    """``fn.apply(*args)`` for a Function whose forward returns one tensor."""
    return cast(torch.Tensor, fn.apply(*args))  # type: ignore[no-untyped-call]


def apply_pair(fn: type[torch.autograd.Function], *args: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn.apply(*args)`` for a Function whose forward returns two tensors."""
    return cast(tuple[torch.Tensor, torch.Tensor], fn.apply(*args))  # type: ignore[no-untyped-call]
