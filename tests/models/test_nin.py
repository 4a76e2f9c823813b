"""Network in Network (Lin, Chen and Yan 2014; 8.4.4's "network within a network"): mlpconv
blocks, the class layer as a 1x1 convolution and global average pooling instead of FC layers."""

import pytest
import torch
import torch.nn.functional as F
from _checks import assert_learns, kernels_agree

from cnnlab import models
from cnnlab.errors import ModelError
from cnnlab.inspect import summarize
from cnnlab.models.nin import NiN
from cnnlab.spec import parse


def count(model):
    return sum(p.numel() for p in model.parameters())


def conv(c_in, c_out, k):
    return k * k * c_in * c_out + c_out


def meta(name, **kwargs):
    with torch.device("meta"):
        return models.create(name, **kwargs)


def volumes(model):
    rows = summarize(model, model.default_input_shape).rows
    return [r.volume for r in rows if r.kind in ("Conv2d", "MaxPool2d")]


# --------------------------------------------------------------------------- the two networks

def test_cifar_parameter_count():
    expected = (conv(3, 192, 5) + conv(192, 160, 1) + conv(160, 96, 1)
                + conv(96, 192, 5) + 2 * conv(192, 192, 1)
                + conv(192, 192, 3) + conv(192, 192, 1) + conv(192, 10, 1))
    assert count(meta("nin_cifar")) == expected == 966_986          # ~0.97 M
    assert count(meta("nin_cifar", num_classes=100)) == expected + 90 * 193


def test_imagenet_parameter_count_and_size():
    expected = (conv(3, 96, 11) + 2 * conv(96, 96, 1) + conv(96, 256, 5) + 2 * conv(256, 256, 1)
                + conv(256, 384, 3) + 2 * conv(384, 384, 1)
                + conv(384, 1024, 3) + conv(1024, 1024, 1) + conv(1024, 1000, 1))
    n = count(meta("nin", num_classes=1000))
    assert n == expected == 7_595_176                                # ~7.6 M
    assert round(n * 4 / 2**20) == 29       # the model zoo's "29MB" snapshot, float32 weights


def test_cifar_volumes():
    assert volumes(meta("nin_cifar")) == [
        "32×32×192", "32×32×160", "32×32×96", "16×16×96",         # mlpconv1, pool1 (rounds up)
        "16×16×192", "16×16×192", "16×16×192", "8×8×192",         # mlpconv2, pool2
        "8×8×192", "8×8×192", "8×8×10"]                           # mlpconv3: class maps


def test_imagenet_volumes():
    assert volumes(meta("nin", num_classes=1000)) == [
        "54×54×96", "54×54×96", "54×54×96", "27×27×96",
        "27×27×256", "27×27×256", "27×27×256", "13×13×256",
        "13×13×384", "13×13×384", "13×13×384", "6×6×384",         # Caffe's 6x6 average pool
        "6×6×1024", "6×6×1024", "6×6×1000"]


@pytest.mark.parametrize("name, blocks, last, classes", [("nin_cifar", 3, "cccp6", 10),
                                                          ("nin", 4, "cccp8", 1000)])
def test_mlpconv_blocks_and_their_names(name, blocks, last, classes):
    model = meta(name)
    assert [n for n in model.chapter_layers if n.startswith("mlpconv")] == \
        [f"mlpconv{i}" for i in range(1, blocks + 1)]
    for i in range(1, blocks):                  # a convolution and two 1x1 layers, ReLU each
        block = model.layer(f"mlpconv{i}")
        assert [type(m).__name__ for m in block] == ["Conv2d", "ReLU"] * 3
        assert block[2].kernel_size == block[4].kernel_size == (1, 1)
    # the last block's final 1x1 layer is the classifier, outside the features
    assert [type(m).__name__ for m in model.layer(f"mlpconv{blocks}")] == ["Conv2d", "ReLU"] * 2
    assert model.layer(last) is model.layer("classifier") is model.classifier
    assert model.classifier.kernel_size == (1, 1) and model.classifier.out_channels == classes
    assert model.layer("gap") is model.gap and model.layer("conv1") is model.features[0].conv


def test_a_new_variant_is_one_spec():
    model = NiN("C3D16 C1D16 M2 DROP0.5 C3D32 C1D32 C1 GAP", (1, 28, 28), num_classes=10)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.forward_features(torch.zeros(2, 1, 28, 28)).shape == (2, 32, 14, 14)
    assert model.layer("cccp3") is model.classifier and model.layer("pool1").kernel_size == (2, 2)


# --------------------------------------------------------------------------- the model interface

def test_head_is_class_layer_then_global_average_pooling():
    torch.manual_seed(0)
    model = models.create("nin_cifar").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 192, 4, 4)                 # the last mlpconv's hidden maps
        scores = model.forward_head(feats)
        torch.testing.assert_close(scores, model.classifier(feats).relu().mean((2, 3)))
        torch.testing.assert_close(model(x), scores)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, feats.mean((2, 3)))   # N x 192


def test_without_the_class_relu_the_head_is_linear_in_the_pre_logits():
    torch.manual_seed(0)
    model = models.create("nin_cifar", class_relu=False).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        w, b = model.classifier.weight.flatten(1), model.classifier.bias     # 10 x 192
        torch.testing.assert_close(model.forward_head(feats), F.linear(pre, w, b))


def test_reset_classifier_replaces_the_class_layer_only():
    torch.manual_seed(0)
    model = models.create("nin_cifar").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model.forward_features(x)
        model.reset_classifier(3)
        torch.testing.assert_close(model.forward_features(x), before)
        assert model(x).shape == (2, 3)
    assert model.num_classes == 3 and model.layer("cccp6") is model.classifier
    assert model.classifier.in_channels == 192 and model.classifier.out_channels == 3
    with pytest.raises(ModelError, match="num_classes must be a positive int, got 0"):
        model.reset_classifier(0)


# --------------------------------------------------------------------------- both kernels, training

def test_both_kernels_agree():
    torch.manual_seed(0)
    model = models.create("nin_cifar").double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    out, _ = kernels_agree(model, x)
    assert out.abs().sum() > 0                          # the class maps are not all shut


def test_cifar_variant_trains():
    torch.manual_seed(0)
    model = models.create("nin_cifar", num_classes=10)
    y = torch.arange(4)                                     # 4 classes, one noisy template each
    x = torch.randn(4, 3, 32, 32) + 0.5 * torch.randn(4, 3, 32, 32)
    assert_learns(model, x, y, steps=6, lr=0.05)           # ~2.35 -> ~2.0 after 6 steps


# --------------------------------------------------------------------------- errors

def test_bad_arguments_name_the_fix():
    with pytest.raises(ModelError, match="class_relu is True .* or False; got class_relu='yes'"):
        models.create("nin_cifar", class_relu="yes")


@pytest.mark.parametrize("spec, match", [
    ("C3D16 C1D16 GAP", "ends with its class layer and global average pooling, 'C1 GAP'"),
    ("C3D16 C1D10", "ends with its class layer"),
    ("C1 GAP", "at least one mlpconv block"),
    ("C3D16 C3D16 C1 GAP", r"token 'C3D16' \(#2\).*only 1x1 convolutions"),
    ("C3D16 C1 C1 GAP", "needs its number of filters"),
    ("C3D16 FC10 C1 GAP", r"token 'FC10' \(#2\).*convolutions, pools"),
])
def test_bad_specs_name_the_fix(spec, match):
    with pytest.raises(ModelError, match=match):
        NiN(spec, (3, 32, 32), num_classes=10)


def test_mlpconv_spec_parses_as_the_chapter_notation():
    assert [t.text for t in parse("C5D192 C1D160 C1D96 M3s2c")] == \
        ["C5D192", "C1D160", "C1D96", "M3s2c"]
