"""GoogLeNet (8.4.4): the paper's network (Table 1), torchvision's and the CIFAR form."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _checks import assert_learns, kernels_agree

from cnnlab import models
from cnnlab import nn as cnn
from cnnlab.errors import ModelError, ShapeError
from cnnlab.inspect import summarize
from cnnlab.models.googlenet import (
    AUX_WEIGHT,
    BasicConv2d,
    ConvReLU,
    GoogLeNetOutputs,
    Inception,
    InceptionAux,
)

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "torchvision_models.json")
                     .read_text())["models"]

# Table 1 of Szegedy et al. (2015): output volume (H, W, D) at 224 and
# #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
TABLE_1 = {
    "inception3a": ((28, 28, 256), (64, 96, 128, 16, 32, 32)),
    "inception3b": ((28, 28, 480), (128, 128, 192, 32, 96, 64)),
    "inception4a": ((14, 14, 512), (192, 96, 208, 16, 48, 64)),
    "inception4b": ((14, 14, 512), (160, 112, 224, 24, 64, 64)),
    "inception4c": ((14, 14, 512), (128, 128, 256, 24, 64, 64)),
    "inception4d": ((14, 14, 528), (112, 144, 288, 32, 64, 64)),
    "inception4e": ((14, 14, 832), (256, 160, 320, 32, 128, 128)),
    "inception5a": ((7, 7, 832), (256, 160, 320, 32, 128, 128)),
    "inception5b": ((7, 7, 1024), (384, 192, 384, 48, 128, 128)),
}


def meta(name, **kwargs):
    """Build without allocating; the 224x224 models run on the meta device (shapes only)."""
    with torch.device("meta"):
        return models.create(name, **{"num_classes": 1000, **kwargs})


def count(model):
    return sum(p.numel() for p in model.parameters())


def entries(model):
    params = dict(model.named_parameters())
    return [[k, list(t.shape), "param" if k in params else "buffer"]
            for k, t in model.state_dict().items()]


def output_volumes(model, shape):
    """(H, W, D) of every inception module's output for one input of ``shape``."""
    seen = {}
    for name in TABLE_1:
        model.layer(name).register_forward_hook(
            lambda m, i, o, name=name: seen.update({name: (*o.shape[2:], o.shape[1])}))
    device = next(model.parameters()).device
    model.eval()(torch.zeros(1, *shape, device=device))
    return seen


# ------------------------------------------------------------------ torchvision compatibility

def test_names_and_shapes_equal_torchvision():
    model = meta("googlenet")
    assert entries(model) == FIXTURE["googlenet"]["state_dict"]
    assert count(model) == FIXTURE["googlenet"]["num_params"] == 6_624_904   # torchvision's


def test_aux_heads_have_torchvision_names_before_fc():
    plain, aux = entries(meta("googlenet")), entries(meta("googlenet", aux_logits=True))
    trunk = len(plain) - 2
    assert aux[:trunk] == plain[:trunk] and aux[-2:] == plain[-2:]            # fc stays last
    names = [k for k, _, _ in aux[trunk:-2]]
    assert names[:3] == ["aux1.conv.conv.weight", "aux1.conv.bn.weight", "aux1.conv.bn.bias"]
    assert [n for n in names if "fc" in n] == [f"aux{i}.fc{j}.{w}" for i in (1, 2)
                                               for j in (1, 2) for w in ("weight", "bias")]
    assert count(meta("googlenet", aux_logits=True)) == 13_004_888


def test_a_torchvision_state_dict_loads():
    model = meta("googlenet")
    state = {k: torch.randn(shape) if shape else torch.tensor(0)
             for k, shape, _ in FIXTURE["googlenet"]["state_dict"]}
    model.load_state_dict(state, assign=True)          # strict: same names, same shapes
    assert torch.equal(model.layer("inception3a").branch3[1].conv.weight,
                       state["inception3a.branch3.1.conv.weight"])


# ---------------------------------------------------------------------------- Table 1

@pytest.mark.parametrize("name", ["inception_v1", "googlenet"])
def test_inception_modules_are_table_1(name):
    model = meta(name)
    assert output_volumes(model, (3, 224, 224)) == {n: v for n, (v, _) in TABLE_1.items()}
    for module_name, (_, row) in TABLE_1.items():
        m = model.layer(module_name)
        assert isinstance(m, Inception)
        widths = (m.branch1.conv.out_channels, m.branch2[0].conv.out_channels,
                  m.branch2[1].conv.out_channels, m.branch3[0].conv.out_channels,
                  m.branch3[1].conv.out_channels, m.branch4[1].conv.out_channels)
        assert widths == row, module_name


def test_stem_and_pool_volumes_are_table_1():
    model = meta("inception_v1")
    rows = summarize(model, (3, 224, 224)).rows
    volume = {r.name: r.volume for r in rows}
    assert [volume[f"conv{i}.conv"] for i in (1, 2, 3)] == ["112×112×64", "56×56×64",
                                                             "56×56×192"]
    assert [volume[f"maxpool{i}"] for i in (1, 2, 3, 4)] == ["56×56×64", "28×28×192",
                                                              "14×14×480", "7×7×832"]
    kinds = [r.kind for r in rows[:10]]    # conv 7x7/2, pool, LRN, 1x1, 3x3, LRN, pool
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "LRN", "Conv2d", "ReLU", "Conv2d", "ReLU",
                     "LRN", "MaxPool2d"]
    assert volume["avgpool"] == "1024" and model.dropout.p == 0.4
    assert model.layer("pool4").kernel_size == 3 and meta("googlenet").maxpool4.kernel_size == 2


def test_paper_network_has_true_5x5_branches_and_no_batch_norm():
    paper, tv = meta("inception_v1"), meta("googlenet")
    for name in TABLE_1:
        assert paper.layer(name).branch3[1].conv.kernel_size == (5, 5)
        assert tv.layer(name).branch3[1].conv.kernel_size == (3, 3)     # torchvision's slip
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in paper.modules())
    assert all(m.bias is not None for m in paper.modules() if isinstance(m, torch.nn.Conv2d))
    # the difference in size: 16 more taps per 5x5 filter, and one BN parameter more than a
    # bias per output map in torchvision's form
    taps = sum(16 * row[3] * row[4] for _, row in TABLE_1.values())
    maps = 64 + 64 + 192 + sum(sum(row) for _, row in TABLE_1.values())
    assert count(paper) - count(tv) == taps - maps
    assert count(paper) == 6_998_552      # the paper's Table 1 sums to ~6.8 M (rounded rows)


# ------------------------------------------------------------------------ auxiliary heads

def test_aux_heads_follow_the_paper():
    model = meta("inception_v1", aux_logits=True)
    assert count(model) == 13_378_280
    for name, depth in (("aux1", 512), ("aux2", 528)):
        head = model.layer(name)
        assert (head.pool.kernel_size, head.pool.stride) == (5, 3)          # 14x14 -> 4x4
        assert head.conv.conv.in_channels == depth and head.conv.conv.out_channels == 128
        assert (head.fc1.in_features, head.fc1.out_features) == (4 * 4 * 128, 1024)
        assert head.dropout.p == 0.7 and head.fc2.out_features == 1000
    assert "aux1" not in meta("inception_v1").chapter_layers


def test_aux_heads_see_4a_and_4d_and_run_only_in_training():
    model = meta("inception_v1", aux_logits=True)
    inputs = {}
    for name in ("aux1", "aux2", "inception4a", "inception4d"):
        model.layer(name).register_forward_hook(
            lambda m, i, o, name=name: inputs.update({name: (i[0].shape, o.shape)}))
    x = torch.zeros(2, 3, 224, 224, device="meta")
    out = model.train()(x)
    assert isinstance(out, GoogLeNetOutputs) and out.logits is out[0]
    assert [t.shape for t in out] == [(2, 1000)] * 3
    outputs = {}
    for name in ("aux1", "aux2"):
        model.layer(name).register_forward_hook(
            lambda m, i, o, name=name: outputs.update({name: o}))
    out = model(x)
    assert out.aux_logits1 is outputs["aux1"] and out.aux_logits2 is outputs["aux2"]
    assert inputs["aux1"][0] == inputs["inception4a"][1] == (2, 512, 14, 14)
    assert inputs["aux2"][0] == inputs["inception4d"][1] == (2, 528, 14, 14)
    inputs.clear()
    assert model.eval()(x).shape == (2, 1000) and "aux1" not in inputs
    assert meta("inception_v1").train()(x).shape == (2, 1000)             # no heads built


def test_loss_adds_three_tenths_of_each_aux_head():
    model = meta("inception_v1", aux_logits=True)          # loss() needs no weights
    torch.manual_seed(0)
    out = GoogLeNetOutputs(*torch.randn(3, 4, 10, requires_grad=True))
    y = torch.tensor([1, 7, 0, 3])
    main, a1, a2 = (F.cross_entropy(t, y) for t in (out.logits, out.aux_logits1,
                                                     out.aux_logits2))
    assert AUX_WEIGHT == 0.3
    torch.testing.assert_close(model.loss(out, y), main + 0.3 * a1 + 0.3 * a2)
    torch.testing.assert_close(model.loss(out.logits, y), main)       # eval output: plain CE
    (g,) = torch.autograd.grad(model.loss(out, y), out.aux_logits2)
    (g_main,) = torch.autograd.grad(F.cross_entropy(out.aux_logits2, y), out.aux_logits2)
    torch.testing.assert_close(g, 0.3 * g_main)


def test_reset_classifier_resets_the_aux_heads_too():
    model = meta("googlenet", aux_logits=True)
    model.reset_classifier(5)
    assert model.fc.out_features == model.aux1.fc2.out_features == model.aux2.fc2.out_features
    assert model.aux2.fc2.out_features == 5 and model.num_classes == 5


def test_aux_head_at_the_wrong_size_names_the_fix():
    model = meta("inception_v1", aux_logits=True).train()
    x = torch.zeros(1, 3, 160, 160, device="meta")
    with pytest.raises(ShapeError, match="4x4 maps after its pool, got 2x2.*aux_logits=False"):
        model(x)
    assert model.forward_features(x).shape == (1, 1024, 5, 5)     # features skip the heads


# --------------------------------------------------------------------------- CIFAR form

def test_cifar_volumes():
    model = meta("inception_v1_cifar", num_classes=10)
    size = {"3": 32, "4": 16, "5": 8}                       # Table 1's 28, 14, 7 at 224
    expected = {n: (size[n[9]], size[n[9]], v[2]) for n, (v, _) in TABLE_1.items()}
    assert output_volumes(model, (3, 32, 32)) == expected
    assert count(model) == 5_864_762
    assert list(model.chapter_layers)[:2] == ["conv1", "inception3a"]
    assert "conv2" not in model.chapter_layers and "pool1" not in model.chapter_layers
    assert model.layer("inception4a").branch3[1].conv.kernel_size == (5, 5)
    assert count(meta("inception_v1_cifar", num_classes=10, aux_logits=True)) == 10_214_990


def test_pre_logits_are_the_pooled_1024_features():
    torch.manual_seed(0)
    model = models.create("inception_v1_cifar").eval()
    x = torch.randn(1, 3, 8, 8)              # convolutional up to the pooling: any size >= 5
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape == (1, 1024, 2, 2)
    torch.testing.assert_close(pre, feats.mean(dim=(2, 3)))


@pytest.mark.parametrize("name, kwargs, shape", [
    ("inception_v1_cifar", {}, (2, 3, 6, 6)),             # 6x6: 3x3 at inception4, 1x1 at 5
    ("inception_v1_cifar", {"batch_norm": True}, (2, 3, 6, 6)),
    ("inception_v1", {}, (1, 3, 48, 48))])                # 48: the same for the paper's stem
def test_both_kernels_agree(name, kwargs, shape):
    torch.manual_seed(0)
    model = models.create(name, **kwargs).double().eval()
    kernels_agree(model, torch.randn(*shape, dtype=torch.float64))


@pytest.mark.parametrize("paper", [True, False])
def test_both_kernels_agree_on_a_module_and_an_aux_head(paper):
    torch.manual_seed(0)
    block = ConvReLU if paper else BasicConv2d          # torchvision's: batch norm, 3x3 slip
    module = Inception(32, 8, 8, 16, 4, 8, 8, block, 5 if paper else 3).double().eval()
    kernels_agree(module, torch.randn(2, 32, 9, 9, dtype=torch.float64))
    pool = cnn.AvgPool2d(5, 3) if paper else cnn.AdaptiveAvgPool2d((4, 4))
    head = InceptionAux(16, 10, pool, block).double().eval()
    kernels_agree(head, torch.randn(2, 16, 14, 14, dtype=torch.float64))


def test_cifar_variant_trains():
    # 8x8 templates keep this fast: the net is convolutional up to the pooling
    torch.manual_seed(0)
    model = models.create("inception_v1_cifar", num_classes=10)
    y = torch.arange(8) % 4                                 # 4 classes, one template each
    x = torch.randn(4, 3, 8, 8)[y] + 0.5 * torch.randn(8, 3, 8, 8)
    # a small lr: no batch norm; ~2.2 -> ~1.6 after 5 steps
    assert_learns(model, x, y, steps=5, lr=0.005, factor=0.9, criterion=model.loss)


# ------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name, kwargs, message", [
    ("inception_v1", {"dropout": 1.0}, r"dropout is a drop probability in \[0, 1\).*got dropout=1.0"),
    ("googlenet", {"dropout_aux": -0.1}, r"got dropout_aux=-0.1"),
    ("inception_v1", {"aux_logits": "yes"}, r"must be True or False, got aux_logits='yes'"),
    ("inception_v1_cifar", {"batch_norm": 1}, r"must be True or False, got batch_norm=1"),
])
def test_bad_arguments_name_the_fix(name, kwargs, message):
    with pytest.raises(ModelError, match=message):
        meta(name, **kwargs)
