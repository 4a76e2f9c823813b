"""cnnlab.ops' checks: clear errors for bad input, and context managers that always restore."""

from __future__ import annotations

import pytest
import torch

from cnnlab import ops
from cnnlab.errors import CnnlabError, OptionError, ShapeError


@pytest.mark.parametrize("kernel", ["native", "reference"])
@pytest.mark.parametrize("call, match", [
    (lambda: ops.conv(torch.randn(3, 8), torch.randn(4, 3, 3)), "unsqueeze"),  # no batch
    (lambda: ops.conv(torch.randn(1, 1, 2, 2, 2, 2), torch.randn(1, 1, 1, 1, 1, 1)),
     r"got shape \(1, 1, 2, 2, 2, 2\)"),
    (lambda: ops.conv(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3)), "weight must be 4-D"),
    (lambda: ops.conv(torch.randn(1, 3, 8, 8), torch.randn(4, 2, 3, 3)), "depth must match"),
    (lambda: ops.conv(torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3), groups=3),
     "groups=3 must divide"),
    (lambda: ops.conv(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 5, 5)), "larger than the input"),
    (lambda: ops.conv(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), stride=0),
     r"stride must be positive, got \(0, 0\)"),
    (lambda: ops.conv(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), padding="same-ish"),
     "unknown padding 'same-ish'"),
    (lambda: ops.conv(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 2, 2), padding="half"),
     "odd filter"),
    (lambda: ops.conv(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), torch.randn(3)),
     r"bias must have shape \(2,\)"),
    (lambda: ops.conv_transpose(torch.randn(1, 3, 4), torch.randn(2, 3, 3)), "weight has shape"),
    (lambda: ops.conv_transpose(torch.randn(1, 2, 4), torch.randn(2, 3, 3), stride=2,
                                output_padding=2), "output_padding"),
    (lambda: ops.max_pool(torch.randn(1, 1, 8, 8), 3, padding=2), "at most half the kernel"),
    (lambda: ops.max_pool(torch.randn(1, 1, 2, 2), 3), "larger than the input"),
    (lambda: ops.avg_pool(torch.randn(8, 8), 2), "must be 3-D"),
    (lambda: ops.max_unpool(torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 2),
     "switches must be int64"),
    (lambda: ops.lrn(torch.randn(1, 8, 4, 4), size=4), "odd"),
    (lambda: ops.linear(torch.randn(2, 5), torch.randn(3, 4)), "flatten the input"),
])
def test_bad_input_names_the_problem(kernel: str, call: object, match: str) -> None:
    with ops.kernels(kernel), pytest.raises(ShapeError, match=match):  # type: ignore[arg-type]
        call()  # type: ignore[operator]


def test_shape_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        ops.conv(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), stride=-1)


def test_unknown_kernel_and_rule_are_refused() -> None:
    with pytest.raises(OptionError, match="unknown kernel 'fast': use 'native' or 'reference'"):
        ops.kernels("fast")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="unknown ReLU backward rule 'leaky': use one of "
                       "backprop, deconvnet, guided"):
        ops.relu_backward("leaky")  # type: ignore[arg-type]
    # a CnnlabError (one line from the CLI) that callers catching ValueError still catch
    assert issubclass(OptionError, CnnlabError) and issubclass(OptionError, ValueError)


def test_kernels_restores_the_previous_choice_even_when_the_block_raises() -> None:
    assert ops.current_kernel() == "native"
    with ops.kernels("reference"):
        with pytest.raises(RuntimeError), ops.kernels("native"):
            assert ops.current_kernel() == "native"
            raise RuntimeError("boom")
        assert ops.current_kernel() == "reference"
        with pytest.raises(ShapeError):
            ops.conv(torch.randn(1, 3, 2, 2), torch.randn(1, 3, 3, 3))
        assert ops.current_kernel() == "reference"
    assert ops.current_kernel() == "native"


def test_relu_backward_restores_the_previous_rule_even_when_the_block_raises() -> None:
    assert ops.current_relu_backward() == "backprop"
    with ops.relu_backward("guided"):
        with pytest.raises(RuntimeError), ops.relu_backward("deconvnet"):
            assert ops.current_relu_backward() == "deconvnet"
            raise RuntimeError("boom")
        assert ops.current_relu_backward() == "guided"
    assert ops.current_relu_backward() == "backprop"


def test_the_rule_is_taken_when_the_relu_runs_forward() -> None:
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    with ops.relu_backward("deconvnet"):
        y = ops.relu(x)
    y.backward(torch.tensor([3.0, -4.0]))  # outside the block: still deconvnet's max(g, 0)
    assert x.grad.tolist() == [3.0, 0.0]


def test_sizes_past_what_pytorchs_kernels_take_are_refused() -> None:
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ShapeError, match=r"^stride 1099511627776 is out of range: at most "
                       r"2,147,483,647, the most PyTorch's kernels take$"):
        ops.max_pool(x, 2, stride=2**40)
    with pytest.raises(ShapeError, match=r"^padding \(0, 9223372036854775808\) is out of range"):
        ops.conv(x, torch.zeros(1, 1, 3, 3), padding=(0, 2**63))
    with pytest.raises(ShapeError, match=r"stride must be an int or a tuple of 2 ints, got 1.5"):
        ops.conv(x, torch.zeros(1, 1, 3, 3), stride=1.5)  # type: ignore[arg-type]
    assert ops.avg_pool(x, 2, stride=2**31 - 1).shape == (1, 1, 1, 1)  # the largest works
