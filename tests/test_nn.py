"""cnnlab.nn layers: torch.nn's names and shapes, the chapter's padding names, kernel routing."""

import pytest
import torch
from torch import nn

import cnnlab.nn as cnn
from cnnlab import ops
from cnnlab.errors import ShapeError


@pytest.mark.parametrize("ours, theirs, x", [
    (cnn.Conv1d(4, 6, 3), nn.Conv1d(4, 6, 3), torch.randn(2, 4, 9)),
    (cnn.Conv2d(3, 5, 5, stride=2, padding=1), nn.Conv2d(3, 5, 5, stride=2, padding=1),
     torch.randn(2, 3, 12, 12)),
    (cnn.Conv3d(2, 4, 3, padding=1, groups=2), nn.Conv3d(2, 4, 3, padding=1, groups=2),
     torch.randn(1, 2, 5, 6, 6)),
    (cnn.ConvTranspose2d(4, 2, 3, stride=2), nn.ConvTranspose2d(4, 2, 3, stride=2),
     torch.randn(2, 4, 5, 5)),
    (cnn.Linear(7, 3), nn.Linear(7, 3), torch.randn(4, 7)),
])
def test_layers_load_torch_state_dicts_and_agree(ours, theirs, x):
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x), theirs(x))
    assert isinstance(ours, type(theirs))


@pytest.mark.parametrize("padding, size", [("valid", 28), ("half", 32), ("full", 36)])
def test_padding_names_of_8_2_1(padding, size):
    conv = cnn.Conv2d(3, 5, 5, padding=padding)          # 32x32x3 input, 5x5x3 filters
    assert conv(torch.zeros(1, 3, 32, 32)).shape == (1, 5, size, size)


def test_half_padding_needs_an_odd_filter():
    with pytest.raises(ShapeError, match="odd filter"):
        cnn.Conv2d(3, 5, 4, padding="half")


def test_pools_and_unpool_through_switches():
    x = torch.randn(2, 3, 7, 7)
    y, switches = cnn.MaxPool2d(3, 2, return_indices=True)(x)         # overlapping pools
    assert y.shape == (2, 3, 3, 3)
    back = cnn.MaxUnpool2d(3, 2)(y, switches, output_size=x.shape[2:])
    assert back.shape == x.shape
    # every pooled maximum is back at its place, everything else is zero
    assert torch.equal(back.flatten(2).gather(2, switches.flatten(2)), y.flatten(2))
    torch.testing.assert_close(cnn.AvgPool2d(2)(x[..., :6, :6]), nn.AvgPool2d(2)(x[..., :6, :6]))


def test_global_average_pooling():
    x = torch.randn(2, 256, 7, 7)
    torch.testing.assert_close(cnn.GlobalAvgPool()(x), x.mean((2, 3)))
    assert cnn.GlobalAvgPool(flatten=False)(x).shape == (2, 256, 1, 1)


def test_lrn_uses_eq_8_2_alpha_undivided():
    x = torch.randn(2, 8, 3, 3)
    ours = cnn.LRN(size=5, alpha=1e-2, beta=0.75, k=2.0)(x)
    torch.testing.assert_close(ours, nn.LocalResponseNorm(5, alpha=5e-2, beta=0.75, k=2.0)(x))


def test_relu_layer_follows_the_backward_rule():
    x = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    g = torch.tensor([5.0, -4.0, 6.0])
    expected = {"backprop": [0.0, -4.0, 6.0], "deconvnet": [5.0, 0.0, 6.0],
                "guided": [0.0, 0.0, 6.0]}
    for rule, want in expected.items():
        for kernel in ("native", "reference"):
            x.grad = None
            with ops.kernels(kernel), ops.relu_backward(rule):
                cnn.ReLU()(x).backward(g)
            assert x.grad.tolist() == want, (rule, kernel)


def test_transposed_conv_reaches_a_requested_output_size():
    up = cnn.ConvTranspose2d(4, 2, 3, stride=2, padding=1)
    x = torch.randn(1, 4, 5, 5)
    assert up(x).shape[2:] == (9, 9)
    assert up(x, output_size=(10, 10)).shape[2:] == (10, 10)      # fractional stride 1/2
