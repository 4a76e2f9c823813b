"""Checks the model tests share: both kernels agree, and a model learns a toy task.

Imported by the test files of this folder as ``from _checks import ...`` (pytest puts a test
file's folder on ``sys.path``: tests/models has no ``__init__.py``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab import ops


def kernels_agree(model: nn.Module, x: Tensor, *,
                  forward: Callable[[Tensor], Tensor] | None = None,
                  loss: Callable[[Tensor], Tensor] = lambda out: out.square().sum(),
                  rtol: float = 1e-9, atol: float = 1e-10, scale_atol: bool = False,
                  seed: int | None = None,
                  only_with_grad: bool = False) -> tuple[Tensor, list[Tensor]]:
    """Run forward and backward once under the native and once under the reference kernels
    and assert the outputs and every parameter's gradient agree; return the native run's
    output and gradients for further checks.

    ``forward`` replaces ``model(x)``; ``seed`` reseeds torch before each run (the same
    dropout masks and paths); ``scale_atol`` multiplies ``atol`` by max(1, |reference|) per
    tensor; ``only_with_grad`` compares just the parameters that got a gradient (and asserts
    both runs gave the same ones, at least one)."""
    run = forward or model
    results: list[list[Tensor]] = []
    for kernel in ("native", "reference"):
        model.zero_grad()
        if seed is not None:
            torch.manual_seed(seed)
        with ops.kernels(kernel):
            out = run(x)
            loss(out).backward()
        params = [p for p in model.parameters() if not only_with_grad or p.grad is not None]
        results.append([out.detach()] + [p.grad.clone() for p in params])
    if only_with_grad:
        assert len(results[0]) == len(results[1]) > 1
    for a, b in zip(*results, strict=True):
        tol = atol * max(1.0, b.abs().max().item()) if scale_atol else atol
        torch.testing.assert_close(a, b, rtol=rtol, atol=tol)
    return results[0][0], results[0][1:]


def assert_learns(model: nn.Module, x: Tensor, y: Tensor, *, steps: int, lr: float,
                  factor: float = 0.95, momentum: float = 0.9,
                  criterion: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                  eval_loss: bool = True, seed: int | None = None) -> tuple[float, float]:
    """Take ``steps`` SGD steps (momentum 0.9) on ``criterion(model(x), y)`` and assert the
    loss falls below ``factor`` times its start; return the loss before and after.

    The loss is measured without gradients, in eval mode (then back to training) where
    ``eval_loss``, else in the model's own mode; ``seed`` reseeds torch before each
    measurement (the same dropout and drop-path draws before and after)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def measure() -> float:
        if seed is not None:
            torch.manual_seed(seed)
        if eval_loss:
            model.eval()
        with torch.no_grad():
            value = criterion(model(x), y).item()
        if eval_loss:
            model.train()
        return value

    before = measure()
    for _ in range(steps):
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()
    after = measure()
    assert after < factor * before, f"loss {before:.4f} -> {after:.4f}, not below {factor}x"
    return before, after
