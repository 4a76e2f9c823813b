"""DenseNet (8.4.5; Huang et al., 2017): torchvision's ImageNet models and the CIFAR forms."""

import json
from pathlib import Path

import pytest
import torch
from _checks import assert_learns, kernels_agree
from torch import nn

from cnnlab import models, ops
from cnnlab.errors import ModelError
from cnnlab.models.densenet import DenseNet, densenet_cifar

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "torchvision_models.json")
                     .read_text())["models"]
CIFAR = ["densenet40_12", "densenet_bc_100_12", "densenet_bc_250_24", "densenet_bc_190_40"]


def meta(name, **kwargs):
    with torch.device("meta"):
        return models.create(name, **{"num_classes": 1000, **kwargs})


def count(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ torchvision compatibility

@pytest.mark.parametrize("name", ["densenet121", "densenet169", "densenet201"])
def test_names_and_shapes_equal_torchvision(name):
    model = meta(name)
    params = dict(model.named_parameters())
    got = [[k, list(t.shape), "param" if k in params else "buffer"]
           for k, t in model.state_dict().items()]
    assert got == FIXTURE[name]["state_dict"]
    assert count(model) == FIXTURE[name]["num_params"]


@pytest.mark.parametrize("name, published", [
    ("densenet121", 7_978_856), ("densenet161", 28_681_000), ("densenet169", 14_149_480),
    ("densenet201", 20_013_928)])
def test_parameter_counts_equal_the_published_figures(name, published):
    assert count(meta(name)) == published


def test_a_torchvision_state_dict_loads():
    model = models.create("densenet121", num_classes=1000)
    state = {k: torch.randn(shape) for k, shape, _ in FIXTURE["densenet121"]["state_dict"]}
    model.load_state_dict(state)          # strict: same names, same shapes
    assert torch.equal(model.layer("dense_block3").denselayer24.conv2.weight,
                       state["features.denseblock3.denselayer24.conv2.weight"])
    assert torch.equal(model.layer("fc").weight, state["classifier.weight"])


# --------------------------------------------------------------------------- the paper's facts

@pytest.mark.parametrize("name, depth", [("densenet121", 121), ("densenet161", 161),
                                         ("densenet169", 169), ("densenet201", 201),
                                         ("densenet40_12", 40), ("densenet_bc_100_12", 100),
                                         ("densenet_bc_250_24", 250),
                                         ("densenet_bc_190_40", 190)])
def test_depth_counts_the_weighted_layers(name, depth):
    # the first conv, every conv of the blocks, the transition convs and the FC layer
    model = meta(name)
    assert sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules()) == depth


@pytest.mark.parametrize("name, paper, exact, per_block", [
    ("densenet40_12", 1.0, 1_019_722, 12), ("densenet_bc_100_12", 0.8, 769_162, 16),
    ("densenet_bc_250_24", 15.3, 15_324_406, 41), ("densenet_bc_190_40", 25.6, 25_624_430, 31)])
def test_cifar_parameter_counts_are_the_papers_table_2(name, paper, exact, per_block):
    model = meta(name, num_classes=10)
    assert count(model) == exact
    assert round(count(model) / 1e6, 1) == paper
    assert [len(model.layer(f"dense_block{i}")) for i in (1, 2, 3)] == [per_block] * 3


def _layer_inputs(model, shape, blocks):
    """Input maps of every dense layer, by block, and the size of each block's volume."""
    seen = {}
    for b in range(1, blocks + 1):
        for name, layer in model.layer(f"dense_block{b}").items():
            layer.register_forward_pre_hook(lambda m, args, key=(b, name): seen.__setitem__(
                key, tuple(args[0].shape[1:])))
    model(torch.zeros(1, *shape, device=next(model.parameters()).device))
    return seen


@pytest.mark.parametrize("name, k, starts, sizes", [
    ("densenet121", 32, [64, 128, 256, 512], [56, 28, 14, 7]),
    ("densenet161", 48, [96, 192, 384, 1056], [56, 28, 14, 7]),
    ("densenet40_12", 12, [16, 160, 304], [32, 16, 8]),
    ("densenet_bc_100_12", 12, [24, 108, 150], [32, 16, 8])])
def test_each_layer_reads_every_earlier_layers_maps(name, k, starts, sizes):
    model = meta(name)
    seen = _layer_inputs(model, model.default_input_shape, len(starts))
    for b, (k0, size) in enumerate(zip(starts, sizes), start=1):
        n = len(model.layer(f"dense_block{b}"))
        for i in range(1, n + 1):                         # layer i: k0 + (i-1)k maps
            assert seen[b, f"denselayer{i}"] == (k0 + (i - 1) * k, size, size)
        if b < len(starts):                               # compression 0.5 (BC) or 1
            kept = model.layer(f"transition{b}").conv.out_channels
            assert kept == (k0 + n * k if name == "densenet40_12" else (k0 + n * k) // 2)
    assert model.classifier.in_features == starts[-1] + len(model.layer(
        f"dense_block{len(starts)}")) * k


def test_bottleneck_and_plain_layers():
    bc = meta("densenet_bc_100_12").layer("dense_block2").denselayer3
    assert (bc.conv1.kernel_size, bc.conv1.out_channels) == ((1, 1), 48)       # 4k
    assert (bc.conv2.kernel_size, bc.conv2.out_channels) == ((3, 3), 12)       # k
    plain = meta("densenet40_12").layer("dense_block2").denselayer3
    assert (plain.conv1.kernel_size, plain.conv1.out_channels) == ((3, 3), 12)
    assert not hasattr(plain, "conv2") and not hasattr(plain, "norm2")
    # BN - ReLU - conv, in that order, in every layer and transition
    names = [n for n, _ in bc.named_children()][:6]
    assert names == ["norm1", "relu1", "conv1", "norm2", "relu2", "conv2"]
    transition = meta("densenet121").layer("transition1")
    assert [n for n, _ in transition.named_children()] == ["norm", "relu", "conv", "pool"]
    assert (transition.pool.kernel_size, transition.pool.stride) == (2, 2)


def test_chapter_names():
    model = meta("densenet121")
    assert model.layer("conv1") is model.features.conv0
    assert model.layer("dense_block4") is model.features.denseblock4
    assert model.layer("transition3") is model.features.transition3
    assert model.layer("norm5") is model.features.norm5
    assert model.layer("fc") is model.classifier
    cifar = meta("densenet40_12")
    assert "transition3" not in cifar.chapter_layers and cifar.layer("norm4").num_features == 448


def test_dropout_follows_each_conv_but_the_first():
    model = densenet_cifar(depth=16, growth_rate=4, dropout=0.2)
    layer = model.layer("dense_block1").denselayer1
    assert isinstance(layer.drop, nn.Dropout) and layer.drop.p == 0.2
    assert isinstance(model.layer("transition1").drop, nn.Dropout)
    assert not any(isinstance(m, nn.Dropout) for m in densenet_cifar(depth=16).modules())
    model.train()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(model(x), model(x))                        # dropout is on
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_pre_logits_are_the_pooled_last_volume():
    torch.manual_seed(0)
    model = densenet_cifar(depth=10, growth_rate=4, bottleneck=False, compression=1).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape == (2, 16 + 6 * 4, 8, 8) and feats.min() >= 0     # after BN-ReLU
    torch.testing.assert_close(pre, feats.mean((2, 3)))


# ------------------------------------------------------------------------------- both kernels

@pytest.mark.parametrize("kwargs", [
    {"depth": 10, "growth_rate": 4, "bottleneck": False, "compression": 1.0},   # plain
    {"depth": 16, "growth_rate": 4},                                              # BC
    {"depth": 13, "growth_rate": 3, "bottleneck": False, "compression": 0.5}])    # C
@pytest.mark.parametrize("train", [False, True])
def test_both_kernels_agree(kwargs, train):
    torch.manual_seed(0)
    model = densenet_cifar(**kwargs).double().train(train)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    kernels_agree(model, x)


def test_imagenet_form_runs_at_a_small_size_on_both_kernels():
    # the 7x7/2 stem, max pool, 4 blocks and 3 transitions on a 32x32 input: 1x1 at the end
    torch.manual_seed(0)
    model = DenseNet(4, (1, 1, 1, 1), 8, num_classes=5).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with ops.kernels("reference"):
        ref = model(x)
    torch.testing.assert_close(model(x), ref, rtol=1e-9, atol=1e-10)
    # maps: 8 -> 12 -> 6 -> 10 -> 5 -> 9 -> 4 -> 8
    assert model.forward_features(x).shape == (1, 8, 1, 1)


def test_tiny_densenet_bc_trains():
    torch.manual_seed(0)
    model = densenet_cifar(num_classes=10, depth=16, growth_rate=6)
    y = torch.arange(8) % 4                                 # 4 classes, one template each
    x = torch.randn(4, 3, 16, 16)[y] + 0.5 * torch.randn(8, 3, 16, 16)   # any size fits
    assert_learns(model, x, y, steps=8, lr=0.1, factor=0.9)


def test_feature_reuse_in_a_dense_layer_is_concatenation():
    torch.manual_seed(0)
    block = densenet_cifar(depth=10, growth_rate=2, bottleneck=False,
                           compression=1).eval().layer("dense_block1")
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        out = block(x)
        first = block.denselayer1(x)
        second = block.denselayer2(torch.cat([x, first], 1))
    torch.testing.assert_close(out, torch.cat([x, first, second], 1))


# ------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 41, "bottleneck": False}, r"\(L-4\)/3 layers .* depth=41 .* 4 \+ 3n"),
    ({"depth": 40.0}, r"\(L-4\)/6 layers .* depth=40.0 does not fit: use depth = 4 \+ 6n"),
    ({"depth": 101}, "depth=101 does not fit"),
    ({"depth": 4}, "depth=4 does not fit"),
    ({"growth_rate": 0}, "growth_rate must be a positive int .* got growth_rate=0"),
    ({"growth_rate": 1.5}, "got growth_rate=1.5"),
    ({"compression": 0}, r"compression must be in \(0, 1\] .* got compression=0"),
    ({"compression": 1.5}, "got compression=1.5"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\) .* got dropout=1.0")])
def test_bad_arguments_name_the_fix(kwargs, message):
    with pytest.raises(ModelError, match=message):
        densenet_cifar(**kwargs)


def test_bad_stem():
    with pytest.raises(ModelError, match="stem must be 'imagenet' or 'cifar', got stem='mnist'"):
        DenseNet(4, (1,), 8, stem="mnist")

