"""AlexNet, ZFNet (8.4.1-8.4.2, Table 8.1) and VGG (8.4.3, Table 8.2)."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _checks import assert_learns, kernels_agree

from cnnlab import models, ops
from cnnlab.errors import ModelError
from cnnlab.inspect import summarize
from cnnlab.models.alexnet import TowerLRN
from cnnlab.models.vgg import TABLE_8_2
from cnnlab.nn import AdaptiveAvgPool2d
from cnnlab.spec import parse

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "torchvision_models.json")
                     .read_text())["models"]
TORCHVISION = ["alexnet"] + [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]


def meta(name, **kwargs):
    """Build without allocating (VGG has 138 M parameters)."""
    with torch.device("meta"):
        return models.create(name, **{"num_classes": 1000, **kwargs})


def count(model):
    return sum(p.numel() for p in model.parameters())


def conv(c_in, c_out, k, groups=1):
    return k * k * c_in // groups * c_out + c_out


def fc(n_in, n_out):
    return n_in * n_out + n_out


FCS = fc(4096, 4096) + fc(4096, 1000)


# ------------------------------------------------------------------ torchvision compatibility

@pytest.mark.parametrize("name", TORCHVISION)
def test_names_and_shapes_equal_torchvision(name):
    model = meta(name)
    params = dict(model.named_parameters())
    got = [[k, list(t.shape), "param" if k in params else "buffer"]
           for k, t in model.state_dict().items()]
    assert got == FIXTURE[name]["state_dict"]
    assert count(model) == FIXTURE[name]["num_params"]


@pytest.mark.parametrize("name, published", [
    ("alexnet", 61_100_840), ("vgg11", 132_863_336), ("vgg13", 133_047_848),
    ("vgg16", 138_357_544), ("vgg19", 143_667_240), ("vgg11_bn", 132_868_840),
    ("vgg13_bn", 133_053_736), ("vgg16_bn", 138_365_992), ("vgg19_bn", 143_678_248)])
def test_parameter_counts_equal_the_published_figures(name, published):
    assert count(meta(name)) == published


def test_a_torchvision_state_dict_loads():
    model = models.create("alexnet", num_classes=1000)
    state = {k: torch.randn(shape) for k, shape, _ in FIXTURE["alexnet"]["state_dict"]}
    model.load_state_dict(state)          # strict: same names, same shapes
    assert torch.equal(model.layer("fc7").weight, state["classifier.4.weight"])


@pytest.mark.parametrize("size, out", [((6, 6), (6, 6)), ((1, 1), (6, 6)), ((13, 9), (7, 7)),
                                       ((10, 10), (3, 4))])
def test_adaptive_avg_pool_equals_torch_on_both_kernels(size, out):
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    expected = F.adaptive_avg_pool2d(x, out)
    (g_expected,) = torch.autograd.grad(expected.square().sum(), x)
    for kernel in ("native", "reference"):
        with ops.kernels(kernel):
            y = AdaptiveAvgPool2d(out)(x)
            (g,) = torch.autograd.grad(y.square().sum(), x)
        torch.testing.assert_close(y, expected)
        torch.testing.assert_close(g, g_expected)


# --------------------------------------------------------------------------- Table 8.1

def test_alexnet_parameter_counts_one_and_two_towers():
    convs = [conv(3, 96, 11), conv(96, 256, 5), conv(256, 384, 3), conv(384, 384, 3),
             conv(384, 256, 3)]
    one = sum(convs) + fc(6 * 6 * 256, 4096) + FCS
    # two GPUs: conv2, conv4, conv5 see only their own GPU's half of the maps
    two = one - sum(convs[i] - conv(*io, groups=2)
                    for i, io in ((1, (96, 256, 5)), (3, (384, 384, 3)), (4, (384, 256, 3))))
    assert (one, two) == (62_378_344, 60_965_224)
    assert count(meta("alexnet_one_tower")) == one
    assert count(meta("alexnet_two_tower")) == two
    zf = (conv(3, 96, 7) + conv(96, 256, 5) + conv(256, 512, 3) + conv(512, 1024, 3)
          + conv(1024, 512, 3) + fc(6 * 6 * 512, 4096) + FCS)
    assert count(meta("zfnet")) == zf


def volumes(name, kinds=("Conv2d", "MaxPool2d")):
    model = meta(name)
    return [r.volume for r in summarize(model, model.default_input_shape).rows if r.kind in kinds]


@pytest.mark.parametrize("name", ["alexnet_one_tower", "alexnet_two_tower"])
def test_alexnet_volumes_are_table_8_1(name):
    assert volumes(name, ("Conv2d",)) == ["55×55×96", "27×27×256", "13×13×384", "13×13×384",
                                          "13×13×256"]
    assert volumes(name, ("MaxPool2d",)) == ["27×27×96", "13×13×256", "6×6×256"]


def test_zfnet_volumes_are_table_8_1():
    # Table 8.1 gives each volume after its operations: conv1 + MP, conv2 + MP, conv3, ...
    assert volumes("zfnet") == ["110×110×96", "55×55×96", "26×26×256", "13×13×256", "13×13×512",
                                "13×13×1024", "13×13×512", "6×6×512"]


def test_torchvision_alexnet_has_the_same_footprints():
    assert volumes("alexnet", ("Conv2d",)) == ["55×55×64", "27×27×192", "13×13×384",
                                               "13×13×256", "13×13×256"]


def test_two_tower_lrn_stays_within_each_tower():
    x = torch.randn(2, 96, 5, 5, dtype=torch.float64)
    y = TowerLRN(2)(x)
    torch.testing.assert_close(y, torch.cat([ops.lrn(x[:, :48]), ops.lrn(x[:, 48:])], 1))
    assert not torch.allclose(y[:, 46:50], ops.lrn(x)[:, 46:50])   # maps next to the split
    torch.testing.assert_close(y[:, 2:46], ops.lrn(x)[:, 2:46])
    assert isinstance(models.create("alexnet_two_tower").layer("lrn1"), TowerLRN)


# --------------------------------------------------------------------------- Table 8.2

def test_table_8_2_layer_counts():
    weighted = {c: sum(t.kind == "conv" for t in parse(s)) + 3 for c, s in TABLE_8_2.items()}
    assert weighted == {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}


@pytest.mark.parametrize("column, torchvision", [("a", "vgg11"), ("b", "vgg13"), ("d", "vgg16"),
                                                 ("e", "vgg19")])
def test_chapter_columns_match_torchvision_layer_by_layer(column, torchvision):
    chapter, tv = meta(f"vgg_{column}"), meta(torchvision)
    assert count(chapter) == count(tv)
    for name in tv.chapter_layers:        # conv1 ..., conv1_1 ..., pool1 ..., fc6, fc7, fc8
        a, b = chapter.layer(name), tv.layer(name)
        assert type(a) is type(b)
        assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()], name


def test_vgg_c_and_a_lrn():
    d = count(meta("vgg_d"))
    # C is D with the last conv of stages 3-5 as 1x1: 8 fewer taps per filter
    assert count(meta("vgg_c")) == d - 8 * 256 * 256 - 2 * 8 * 512 * 512 == 133_638_952
    assert count(meta("vgg_a_lrn")) == count(meta("vgg_a"))      # LRN has no parameters
    kinds = [type(m).__name__ for m in meta("vgg_a_lrn")][:4]    # one module per token
    assert kinds == ["Conv2d", "ReLU", "LRN", "MaxPool2d"]


def test_vgg_d_parameters_sit_in_fc6_and_activations_in_the_early_layers():
    model = meta("vgg_d")
    assert model.layer("fc6").weight.numel() == 7 * 7 * 512 * 4096 == 102_760_448
    total = count(model)
    assert total == 138_357_544
    fcs = sum(count(model.layer(n)) for n in ("fc6", "fc7", "fc8"))
    assert model.layer("fc6").weight.numel() / total > 0.74 and fcs / total > 0.89
    rows = summarize(model, (3, 224, 224)).rows
    early = sum(r.activations for r in rows[:rows.index(next(r for r in rows
                                                             if r.name.endswith("pool2"))) + 1])
    assert early / sum(r.activations for r in rows) > 0.7      # stages 1-2 (224 and 112)


# ---------------------------------------------------------------------- the chapter's names

@pytest.mark.parametrize("name, fc7", [("alexnet", "classifier.4"), ("vgg16", "classifier.3"),
                                       ("vgg16_bn", "classifier.3"), ("alexnet_one_tower",
                                                                      "fc7"),
                                       ("zfnet", "fc7"), ("vgg_a", "fc10")])
def test_fc7_is_the_penultimate_layer_whatever_the_path(name, fc7):
    model = meta(name)
    assert model.layer("fc7") is model.get_submodule(fc7)
    assert model.layer("fc7").out_features == model.layer("fc8").in_features == 4096


def test_vgg_stage_names():
    tv, bn, chapter = meta("vgg16"), meta("vgg16_bn"), meta("vgg_d")
    assert tv.layer("conv5_3") is tv.features[28] and tv.layer("conv13") is tv.features[28]
    assert tv.chapter_layers["conv5_3"] == "features.28"
    assert bn.chapter_layers["conv5_3"] == "features.40"
    assert chapter.chapter_layers["conv5_3"] == "conv13"
    assert chapter.layer("pool5") is chapter.pool5


@pytest.mark.parametrize("name, shape", [("alexnet", (3, 64, 64)), ("alexnet_cifar", None),
                                         ("vgg_cifar", None), ("zfnet_cifar", None)])
def test_pre_logits_are_the_fc7_features(name, shape):
    torch.manual_seed(0)
    model = models.create(name).eval()
    x = torch.randn(2, *(shape or model.default_input_shape))
    seen = []
    model.layer("fc7").register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(pre, seen[0].relu())


# ------------------------------------------------------------------------------- CIFAR forms

# the forms other than the defaults: test_zoo.py runs each registered model at its defaults
# through this same check (seed, input, tolerance)
@pytest.mark.parametrize("name, kwargs", [("alexnet_cifar", {"towers": 2}),
                                          ("vgg_cifar", {"config": "A-LRN"}),
                                          ("vgg_cifar", {"config": "C"})])
def test_both_kernels_agree(name, kwargs):
    torch.manual_seed(0)
    model = models.create(name, **kwargs).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    kernels_agree(model, x)


@pytest.mark.parametrize("name, kwargs", [("alexnet_cifar", {}), ("zfnet_cifar", {}),
                                          ("vgg_cifar", {})])
def test_cifar_variant_trains(name, kwargs):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, **kwargs)
    y = torch.arange(4)                                     # 4 classes, a noisy template each
    x = torch.randn(4, 3, 32, 32)[y] + 0.5 * torch.randn(4, 3, 32, 32)
    assert_learns(model, x, y, steps=8, lr=0.05)           # ~2.30 -> ~2.0-2.1 after 8 steps


def test_cifar_variants_volumes():
    assert volumes("alexnet_cifar", ("MaxPool2d",)) == ["15×15×96", "7×7×256", "3×3×256"]
    assert volumes("zfnet_cifar", ("MaxPool2d",)) == ["16×16×96", "4×4×256", "2×2×512"]
    assert volumes("vgg_cifar", ("MaxPool2d",))[-1] == "1×1×512"


def test_bad_arguments_name_the_fix():
    with pytest.raises(ModelError, match=r"configurations of Table 8.2: A, A-LRN, B, C, D, E; "
                                         r"got config='F'"):
        models.create("vgg_cifar", config="F")
    with pytest.raises(ModelError, match="got towers=3"):
        models.create("alexnet_cifar", towers=3)
