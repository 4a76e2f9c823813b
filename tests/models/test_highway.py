"""Highway networks (8.4.5, variations of skip architectures; Srivastava, Greff and Schmidhuber
2015): the gated skip y = H(x) T(x) + x (1 - T(x)) and the 19-layer CIFAR-10 network."""

import pytest
import torch
import torch.nn.functional as F
from _checks import assert_learns, kernels_agree

from cnnlab import models
from cnnlab.errors import ModelError
from cnnlab.inspect import summarize
from cnnlab.models.highway import HighwayConv2d, HighwayLinear


def count(model):
    return sum(p.numel() for p in model.parameters())


def conv(c_in, c_out, k):
    return k * k * c_in * c_out + c_out


def highway(c, k=3):
    return 2 * conv(c, c, k)                # H and T: two convolutions of the same shape


def meta(name="highway_cifar", **kwargs):
    with torch.device("meta"):
        return models.create(name, **kwargs)


# --------------------------------------------------------------------------- the network

def test_parameter_count_is_the_papers_19_layer_net():
    stages = (conv(3, 32, 3) + 4 * highway(32) + conv(32, 80, 3) + 5 * highway(80)
              + conv(80, 128, 3) + 5 * highway(128) + conv(128, 100, 1))
    assert count(meta()) == stages + 100 * 10 + 10 == 2_256_838
    # at 100 classes, the total the authors' Caffe training log prints for this definition
    assert count(meta(num_classes=100)) == 2_265_928
    assert abs(count(meta()) / 2.3e6 - 1) < 0.03            # Table 1: ~2.3 M parameters


def test_nineteen_weighted_layers_in_three_stages():
    model = meta()
    kinds = [type(m).__name__ for m in model.features.children()]
    assert kinds.count("HighwayConv2d") == 14 and kinds.count("Conv2d") == 4
    assert kinds.count("HighwayConv2d") + kinds.count("Conv2d") + 1 == 19       # + fc
    assert kinds.count("MaxPool2d") == 2 and kinds.count("Dropout") == 3
    assert [n for n in model.chapter_layers if n.startswith("highway")] == \
        [f"highway{i}" for i in range(1, 15)]
    assert model.layer("highway1") is model.layer("conv2")
    assert model.layer("highway14") is model.layer("conv17")
    assert model.layer("pool3") is model.pool and model.layer("fc") is model.fc


def test_volumes_follow_the_authors_definition():
    model = meta()
    rows = {r.name: r.volume for r in summarize(model, (3, 32, 32)).rows}
    assert rows["features.conv5.t"] == "32×32×32"       # a highway layer keeps its input's size
    assert rows["features.pool1"] == "16×16×32"
    assert rows["features.conv11.h"] == "16×16×80"
    assert rows["features.pool2"] == "8×8×80"
    assert rows["features.conv17.h"] == "8×8×128"
    assert rows["features.conv18"] == "8×8×100"
    assert model.forward_features(torch.zeros(2, 3, 32, 32, device="meta")).shape == (2, 100, 8, 8)


def test_depth_and_width_are_arguments():
    model = meta(widths=(16, 32), highway_layers=(1, 2))
    assert count(model) == (conv(3, 16, 3) + highway(16) + conv(16, 32, 3) + 2 * highway(32)
                            + conv(32, 100, 1) + 100 * 10 + 10)
    assert [n for n in model.chapter_layers if n.startswith("highway")] == \
        ["highway1", "highway2", "highway3"]
    assert model.layer("pool2") is model.pool and model.layer("pool1") is model.features.pool1
    assert all(m.gate_bias == -2.0 for m in model.modules() if isinstance(m, HighwayConv2d))
    small = models.create("highway_cifar", widths=(4,), highway_layers=(2,), gate_bias=-3.0)
    assert (small.layer("highway2").t.bias == -3.0).all()


def test_head_pools_the_features_and_resets():
    torch.manual_seed(0)
    model = models.create("highway_cifar", widths=(8, 16), highway_layers=(1, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, feats.mean((2, 3)))
        torch.testing.assert_close(model(x), F.linear(pre, model.fc.weight, model.fc.bias))
    model.reset_classifier(3)
    assert model.fc.out_features == 3 and model(x).shape == (2, 3) and model.num_classes == 3


# --------------------------------------------------------------------------- the gate

def layers(gate_bias):
    torch.manual_seed(0)
    return [HighwayConv2d(4, 3, gate_bias).double(), HighwayLinear(6, gate_bias).double()]


def inputs(layer):
    shape = (2, 4, 5, 5) if isinstance(layer, HighwayConv2d) else (3, 6)
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("i", [0, 1], ids=["conv", "fc"])
def test_a_shut_gate_carries_the_input(i):
    layer = layers(-40.0)[i]
    x = inputs(layer).requires_grad_()
    y = layer(x)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
    (g,) = torch.autograd.grad(y.sum(), x)              # the highway: dy/dx is the identity
    torch.testing.assert_close(g, torch.ones_like(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("i", [0, 1], ids=["conv", "fc"])
def test_an_open_gate_gives_the_plain_layer(i):
    layer = layers(40.0)[i]
    x = inputs(layer)
    torch.testing.assert_close(layer(x), layer.transform(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.transform(x), layer.h(x).relu())


@pytest.mark.parametrize("i", [0, 1], ids=["conv", "fc"])
def test_the_gate_mixes_h_and_x_and_starts_mostly_shut(i):
    layer = layers(-2.0)[i]
    x = inputs(layer)
    t, h = layer.gate(x), layer.transform(x)
    assert ((t > 0) & (t < 1)).all()
    assert t.mean() < 0.5                       # sigmoid(-2) = 0.12: the input dominates at first
    assert (layer.t.bias == -2.0).all()
    torch.testing.assert_close(layer(x), h * t + x * (1 - t))


def test_a_deep_stack_of_shut_gates_passes_the_gradient():
    torch.manual_seed(0)
    stack = torch.nn.Sequential(*[HighwayLinear(8, gate_bias=-6.0) for _ in range(50)]).double()
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(stack(x).sum(), x)
    assert 0.2 < g.abs().mean() < 5             # 50 layers deep, the input still gets ~1


# --------------------------------------------------------------------------- both kernels, training

def test_both_kernels_agree():
    torch.manual_seed(0)
    model = models.create("highway_cifar").double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)       # small: the reference kernel is slow
    kernels_agree(model, x)


def test_cifar_variant_trains():
    torch.manual_seed(0)
    model = models.create("highway_cifar", num_classes=10)
    y = torch.arange(4)                                     # 4 classes, one noisy template each
    x = torch.randn(4, 3, 32, 32) + 0.5 * torch.randn(4, 3, 32, 32)
    assert_learns(model, x, y, steps=6, lr=0.05)           # ~2.36 -> ~1.6 after 6 steps


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, match", [
    ({"widths": (32, 80), "highway_layers": (4, 5, 5)}, "one entry per stage"),
    ({"widths": ()}, "one entry per stage"),
    ({"highway_layers": (4, 0, 5)}, r"positive ints.*highway_layers=\(4, 0, 5\)"),
    ({"widths": (32, 80.5, 128)}, "positive ints"),
    ({"widths": 32}, "sequences with one entry per stage"),
    ({"gate_bias": "shut"}, "gate_bias must be a number.*got gate_bias='shut'"),
    ({"dropout": 1.0}, r"dropout is a probability in \[0, 1\).*got dropout=1.0"),
])
def test_bad_arguments_name_the_fix(kwargs, match):
    with pytest.raises(ModelError, match=match):
        models.create("highway_cifar", **kwargs)


def test_highway_layers_need_an_odd_kernel():
    with pytest.raises(ModelError, match="odd kernel_size.*got kernel_size=2"):
        HighwayConv2d(8, kernel_size=2)
