"""ResNet (8.4.5) in torchvision's layout: the fixture, the published counts, the units."""

import json
from pathlib import Path

import pytest
import torch
from _checks import kernels_agree
from torch import nn

from cnnlab import models
from cnnlab.errors import ModelError
from cnnlab.models.resnet import BasicBlock, Bottleneck, ResNet

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "torchvision_models.json")
                     .read_text())["models"]
PUBLISHED = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
             "resnet101": 44_549_160, "resnet152": 60_192_808, "wide_resnet50_2": 68_883_240,
             "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
             "resnext101_64x4d": 83_455_272, "wide_resnet101_2": 126_886_696}


# one intra-op thread: these nets run many small ops, and on a busy 2-core machine every OpenMP
# region of 2 threads waits for a descheduled one (9 s in all here, ~60 s with 2)
pytestmark = pytest.mark.usefixtures("one_thread")


def meta(name, **kwargs):
    with torch.device("meta"):
        return models.create(name, **{"num_classes": 1000, **kwargs})


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PUBLISHED)
def test_names_and_shapes_equal_torchvision(name):
    model = meta(name)
    params = dict(model.named_parameters())
    got = [[k, list(t.shape), "param" if k in params else "buffer"]
           for k, t in model.state_dict().items()]
    assert got == FIXTURE[name]["state_dict"]
    assert count(model) == FIXTURE[name]["num_params"] == PUBLISHED[name]


def test_a_torchvision_state_dict_loads():
    model = models.create("resnet18", num_classes=1000)
    state = {k: torch.randn(shape) if shape else torch.tensor(7)
             for k, shape, _ in FIXTURE["resnet18"]["state_dict"]}
    model.load_state_dict(state)                  # strict: same names, same shapes
    assert torch.equal(model.layer("conv3_x")[0].downsample[0].weight,
                       state["layer2.0.downsample.0.weight"])


@pytest.mark.parametrize("name, block, units", [
    ("resnet18", BasicBlock, [2, 2, 2, 2]), ("resnet34", BasicBlock, [3, 4, 6, 3]),
    ("resnet50", Bottleneck, [3, 4, 6, 3]), ("resnet101", Bottleneck, [3, 4, 23, 3]),
    ("resnet152", Bottleneck, [3, 8, 36, 3])])
def test_units_per_stage_and_depth(name, block, units):
    model = meta(name)
    stages = [model.layer(f"conv{i}_x") for i in range(2, 6)]
    assert [len(s) for s in stages] == units
    assert all(type(u) is block for s in stages for u in s)
    convs_per_unit = 2 if block is BasicBlock else 3
    assert 1 + convs_per_unit * sum(units) + 1 == int(name[6:])     # conv1 + units + fc


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_projection_shortcuts_only_where_the_shape_changes(name):
    model = meta(name)
    for s in range(1, 5):
        for i, unit in enumerate(getattr(model, f"layer{s}")):
            out = (unit.bn3 if isinstance(unit, Bottleneck) else unit.bn2).num_features
            changes = unit.conv1.in_channels != out or unit.stride != 1
            assert (unit.downsample is not None) == changes, (s, i)
            if changes:   # 1x1 conv at the unit's stride, then BN
                conv, bn = unit.downsample
                assert conv.kernel_size == (1, 1) and conv.stride == (unit.stride,) * 2
                assert isinstance(bn, nn.BatchNorm2d) and conv.bias is None
    # only the first unit of conv3_x .. conv5_x (and conv2_x's where 64 maps become 256)
    firsts = [n for n, _ in model.named_modules() if n.endswith("downsample")]
    expected = ["layer2.0", "layer3.0", "layer4.0"]
    expected = (["layer1.0"] if name == "resnet50" else []) + expected
    assert firsts == [f"{e}.downsample" for e in expected]


def test_bottleneck_strides_its_3x3_resnet_v1_5():
    unit = meta("resnet50").layer("conv3_x")[0]
    assert (unit.conv1.stride, unit.conv2.stride, unit.conv3.stride) == ((1, 1), (2, 2), (1, 1))
    assert unit.conv2.kernel_size == (3, 3)


def test_wide_and_resnext_bottlenecks():
    wide, resnext = meta("wide_resnet50_2"), meta("resnext50_32x4d")
    assert wide.layer("conv2_x")[0].conv2.weight.shape == (128, 128, 3, 3)   # 2 x 64
    conv = resnext.layer("conv2_x")[0].conv2
    assert conv.groups == 32 and conv.weight.shape == (128, 4, 3, 3)        # 32 groups of 4
    assert resnext.layer("conv5_x")[0].conv2.weight.shape == (1024, 32, 3, 3)


def test_volumes_at_224():
    model = meta("resnet50")
    x = torch.zeros(1, 3, 224, 224, device="meta")
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    shapes = [tuple(x.shape[1:])]
    for s in range(1, 5):
        x = getattr(model, f"layer{s}")(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14),
                      (2048, 7, 7)]
    assert model.forward_head(x, pre_logits=True).shape == (1, 2048)


def test_initialisation_is_torchvisions():
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=1000)
    w = model.layer("conv1").weight
    fan_out = 64 * 7 * 7
    assert abs(w.std().item() - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    zero = models.create("resnet50", zero_init_residual=True)
    assert all(torch.all(u.bn3.weight == 0) for s in range(1, 5)
               for u in getattr(zero, f"layer{s}"))
    assert torch.all(zero.layer1[0].bn2.weight == 1)


def test_chapter_names():
    model = meta("resnet34")
    assert model.layer("conv1") is model.conv1
    assert [model.layer(f"conv{i}_x") for i in range(2, 6)] == [
        model.layer1, model.layer2, model.layer3, model.layer4]
    assert model.layer("fc") is model.fc and model.layer("pool") is model.avgpool


def test_both_kernels_agree_on_a_small_bottleneck_resnet():
    """The ImageNet stem (7x7/2, 3x3/2 pool with padding) and bottleneck units with
    projections, at 16x16 and a quarter of ResNet-50's inner width."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5, width_per_group=16,
                   groups=2).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    kernels_agree(model, x)


def test_bad_arguments():
    with pytest.raises(ModelError, match=r"four stages .* got layers=\[2, 2, 2\]"):
        ResNet(BasicBlock, [2, 2, 2])
    with pytest.raises(ModelError, match="basic unit has no groups"):
        ResNet(BasicBlock, [1, 1, 1, 1], groups=32, width_per_group=4)


def test_the_new_resnext_and_wide_bottlenecks():
    wide, r32, r64 = meta("wide_resnet101_2"), meta("resnext101_32x8d"), meta("resnext101_64x4d")
    assert [len(wide.layer(f"conv{i}_x")) for i in range(2, 6)] == [3, 4, 23, 3]
    assert wide.layer("conv2_x")[0].conv2.weight.shape == (128, 128, 3, 3)   # 2 x 64
    assert r32.layer("conv2_x")[0].conv2.weight.shape == (256, 8, 3, 3)     # 32 groups of 8
    assert r64.layer("conv2_x")[0].conv2.weight.shape == (256, 4, 3, 3)     # 64 groups of 4
    assert r64.layer("conv5_x")[0].conv2.groups == 64


def test_norm_layer_is_an_argument():
    model = meta("resnet50", norm_layer=lambda c: nn.GroupNorm(32, c))
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 1 + 3 * 16 + 4 and not any(isinstance(m, nn.BatchNorm2d)
                                                    for m in model.modules())
    assert model.layer("conv3_x")[0].downsample[1] in norms          # the projection's too
    torch.manual_seed(0)
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3, norm_layer=lambda c: nn.GroupNorm(4, c),
                 zero_init_residual=True)
    assert all(torch.all(u.bn2.weight == 0) for u in net.units())
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ModelError, match="norm_layer makes a normalisation layer.*got norm_layer=4"):
        ResNet(BasicBlock, [1, 1, 1, 1], norm_layer=4)


def test_stochastic_depth_on_the_imagenet_resnets():
    model = meta("resnet50", stochastic_depth=0.5)
    survival = [u.survival for u in model.units()]
    assert len(survival) == 16 and survival[-1] == 0.5
    assert survival == [1 - i / 16 * 0.5 for i in range(1, 17)] and model.stochastic_paths
    assert not meta("resnet50").stochastic_paths
    assert all(u.survival == 1.0 for u in meta("resnet50").units())
    torch.manual_seed(0)
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3, stochastic_depth=0.5,
                 stochastic_depth_mode="row").eval()
    assert net.units()[-1].drop_mode == "row"
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 3)
    with pytest.raises(ModelError, match=r"stochastic_depth=1.5"):
        models.create("resnet18", stochastic_depth=1.5)
