"""Residual networks for CIFAR: He et al.'s ResNets with option A / B shortcuts, pre-activation
units, wide ResNets, ResNeXt and stochastic depth ("Variations of Skip Architectures")."""

import pytest
import torch
from _checks import assert_learns, kernels_agree
from torch import nn

from cnnlab import models
from cnnlab.errors import ModelError
from cnnlab.models.resnet import BasicBlock, Bottleneck
from cnnlab.models.resnet_cifar import (
    PreActBasicBlock,
    PreActBottleneck,
    ZeroPadShortcut,
    preact_resnet_cifar,
    resnet_cifar,
    resnext_cifar,
    wide_resnet_cifar,
)

# one intra-op thread: these nets run many small ops, and on a busy 2-core machine every OpenMP
# region of 2 threads waits for a descheduled one (9 s in all here, ~60 s with 2)
pytestmark = pytest.mark.usefixtures("one_thread")


def meta(name, **kwargs):
    with torch.device("meta"):
        return models.create(name, **kwargs)


def count(model):
    return sum(p.numel() for p in model.parameters())


def millions(model, digits=2):
    return round(count(model) / 1e6, digits)


# ---------------------------------------------------------------- the papers' parameter counts

@pytest.mark.parametrize("name, exact, table_6", [
    ("resnet20", 269_722, 0.27), ("resnet32", 464_154, 0.46), ("resnet44", 658_586, 0.66),
    ("resnet56", 853_018, 0.85), ("resnet110", 1_727_962, 1.7),
    ("resnet110_stochastic_depth", 1_727_962, 1.7)])
def test_cifar_resnet_counts_are_table_6(name, exact, table_6):
    model = meta(name)
    assert count(model) == exact
    assert millions(model, 1 if table_6 >= 1 else 2) == table_6


def test_cifar_resnet_layout():
    model = meta("resnet56")                              # 6n + 2 with n = 9
    assert [len(model.layer(f"stage{s}")) for s in (1, 2, 3)] == [9, 9, 9]
    assert all(type(u) is BasicBlock for u in model.units())
    assert [model.layer(f"stage{s}")[-1].conv2.out_channels for s in (1, 2, 3)] == [16, 32, 64]
    x = torch.zeros(1, 3, 32, 32, device="meta")
    assert model.forward_features(x).shape == (1, 64, 8, 8)
    assert model.layer("fc").in_features == 64


@pytest.mark.parametrize("name, exact, paper", [
    ("preact_resnet110", 1_730_522, 1.7), ("preact_resnet164", 1_703_258, 1.7),
    ("wrn_28_10", 36_479_194, 36.5), ("wrn_16_8", 10_961_370, 11.0),
    ("wrn_40_4", 8_949_210, 8.9), ("resnext29_8x64d", 34_426_698, 34.4)])
def test_variant_counts_are_the_papers(name, exact, paper):
    model = meta(name)
    assert count(model) == exact
    assert millions(model, 1) == paper


def test_preact_resnet1001_count_is_the_papers_without_batch_norm():
    model = meta("preact_resnet1001")
    assert count(model) == 10_327_706
    bn = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
             for p in m.parameters())
    assert round((count(model) - bn) / 1e6, 1) == 10.2
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # depth 1001 = the stem + 333 units of 3 convolutions + the FC layer; the 3 projection
    # shortcuts (where the volume grows) are not counted in the depth, as in the paper
    assert len(convs) == 1 + 3 * 333 + 3
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 1


def test_resnext29_16x64d_count_as_table_7_without_the_fc():
    model = meta("resnext29_16x64d")
    assert count(model) == 68_155_210
    assert round((count(model) - count(model.fc)) / 1e6, 1) == 68.1


def test_wide_resnet_layout():
    model = meta("wrn_28_10")
    assert [len(model.layer(f"stage{s}")) for s in (1, 2, 3)] == [4, 4, 4]     # (28 - 4) / 6
    assert [model.layer(f"stage{s}")[0].conv1.out_channels for s in (1, 2, 3)] == [160, 320,
                                                                                  640]
    assert all(type(u) is PreActBasicBlock for u in model.units())
    # a projection where the width changes, also in stage 1 (16 -> 160): conv only, no BN
    firsts = [n for n, _ in model.named_modules() if n.endswith("downsample")]
    assert firsts == ["layer1.0.downsample", "layer2.0.downsample", "layer3.0.downsample"]
    assert isinstance(model.layer1[0].downsample, nn.Conv2d)
    drop = wide_resnet_cifar(10, 1, dropout=0.3)
    assert drop.layer1[0].dropout.p == 0.3


def test_resnext_layout():
    model = meta("resnext29_8x64d")
    assert [len(model.layer(f"stage{s}")) for s in (1, 2, 3)] == [3, 3, 3]       # 9 * 3 + 2
    assert model.conv1.out_channels == 64
    convs = [model.layer(f"stage{s}")[0].conv2 for s in (1, 2, 3)]
    assert [(c.groups, c.out_channels) for c in convs] == [(8, 512), (8, 1024), (8, 2048)]
    assert [model.layer(f"stage{s}")[0].conv3.out_channels for s in (1, 2, 3)] == [256, 512,
                                                                                  1024]
    assert all(type(u) is Bottleneck for u in model.units())


# ---------------------------------------------------------------------------------- shortcuts

def test_option_a_is_subsampling_and_zero_maps():
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    y = ZeroPadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert torch.all(y[:, 16:] == 0)
    torch.testing.assert_close(y[:, :16, 1, 2], x[:, :, 2, 4], rtol=0, atol=0)


def test_option_a_has_no_parameters_and_b_projects_only_where_the_shape_changes():
    a, b = resnet_cifar(20), resnet_cifar(20, shortcut="B")
    shortcuts_a = {n: m for n, m in a.named_modules() if n.endswith("downsample")}
    assert list(shortcuts_a) == ["layer2.0.downsample", "layer3.0.downsample"]
    assert all(isinstance(m, ZeroPadShortcut) for m in shortcuts_a.values())
    shortcuts_b = {n: m for n, m in b.named_modules() if n.endswith("downsample")}
    assert list(shortcuts_b) == list(shortcuts_a)
    assert count(b) - count(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)   # 1x1 conv + BN
    a.eval()
    unit = a.layer2[0]
    x = torch.relu(torch.randn(2, 16, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(unit(x), torch.relu(unit.shortcut(x) + unit.residual(x)))
        torch.testing.assert_close(unit.shortcut(x)[:, :16], x[:, :, ::2, ::2])


# ------------------------------------------------------------------------------ pre-activation

def _call_order(unit, x):
    order = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: order.append(n))
             for n, m in unit.named_children()]
    unit(x)
    for h in hooks:
        h.remove()
    return order


def test_pre_activation_order():
    basic = PreActBasicBlock(8, 8).eval()
    assert _call_order(basic, torch.randn(1, 8, 4, 4)) == [
        "bn1", "relu", "conv1", "bn2", "relu", "dropout", "conv2"]
    bottle = PreActBottleneck(16, 16).eval()
    assert _call_order(bottle, torch.randn(1, 16, 4, 4)) == [
        "bn1", "relu", "conv1", "bn2", "relu", "conv2", "bn3", "relu", "conv3"]
    post = BasicBlock(8, 8).eval()
    assert _call_order(post, torch.randn(1, 8, 4, 4)) == [
        "conv1", "bn1", "relu", "conv2", "bn2", "relu"]


def test_pre_activation_keeps_the_identity_path_clean():
    model = preact_resnet_cifar(20).eval()
    unit = model.layer1[1]                          # not the first: shortcut is the raw input
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), x + unit.residual(x))   # no ReLU after the sum
    assert (unit(x) < 0).any()
    # the first unit and the projection units share the BN-ReLU with the shortcut
    assert [u.share_preact for u in model.units()][:4] == [True, False, False, True]
    assert isinstance(model.layer("stage2")[0].downsample, nn.Conv2d)
    # conv1 has no BN-ReLU of its own; the last unit's sum gets one before pooling
    assert isinstance(model.bn1, nn.Identity) and isinstance(model.bn_final, nn.BatchNorm2d)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 32, 32))
    assert (feats >= 0).all()


def test_preact_164_uses_bottlenecks():
    model = meta("preact_resnet164")
    assert [len(model.layer(f"stage{s}")) for s in (1, 2, 3)] == [18, 18, 18]   # 9 * 18 + 2
    assert all(type(u) is PreActBottleneck for u in model.units())
    unit = model.layer1[0]
    assert (unit.conv1.out_channels, unit.conv2.out_channels, unit.conv3.out_channels) == (
        16, 16, 64)
    # the authors' code strides the first 1x1 where the maps shrink
    unit = model.layer("stage2")[0]
    assert (unit.conv1.stride, unit.conv2.stride, unit.conv3.stride) == ((2, 2), (1, 1), (1, 1))


# ------------------------------------------------------------------------------ stochastic depth

def test_survival_decays_linearly_to_p_l():
    model = meta("resnet110_stochastic_depth")
    p = [u.survival for u in model.units()]
    L = 54
    assert len(p) == L
    assert p == pytest.approx([1 - l / L * 0.5 for l in range(1, L + 1)])
    assert p[-1] == pytest.approx(0.5) and p[0] == pytest.approx(1 - 0.5 / L)
    assert model.stochastic_paths and not meta("resnet110").stochastic_paths
    assert all(u.survival == 1 for u in meta("resnet110").units())


def _runs(model, x):
    """Which units computed their residual branch in one forward pass."""
    ran = []
    hooks = [u.conv1.register_forward_hook(lambda m, i, o, k=k: ran.append(k))
             for k, u in enumerate(model.units())]
    model(x)
    for h in hooks:
        h.remove()
    return ran


def test_training_drops_units_and_test_time_runs_them_all():
    torch.manual_seed(0)
    model = resnet_cifar(20, stochastic_depth=0.2)
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(1)
    ran = _runs(model.train(), x)
    assert 0 < len(ran) < 9
    torch.manual_seed(1)
    assert _runs(model, x) == ran                     # the coins follow torch's seed
    model.eval()
    assert _runs(model, x) == list(range(9))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_a_dropped_unit_passes_its_shortcut():
    unit = BasicBlock(16, 32, 2, ZeroPadShortcut(16, 32, 2))
    unit.survival = 1e-9
    x = torch.relu(torch.randn(2, 16, 8, 8))
    torch.testing.assert_close(unit.train()(x), ZeroPadShortcut(16, 32, 2)(x))


def test_test_time_output_is_the_survival_weighted_sum():
    torch.manual_seed(0)
    model = resnet_cifar(8, stochastic_depth=0.5).double().eval()    # one unit per stage
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert [u.survival for u in model.units()] == pytest.approx([5 / 6, 2 / 3, 1 / 2])
    with torch.no_grad():
        h = torch.relu(model.bn1(model.conv1(x)))
        for unit in model.units():
            h = torch.relu(unit.shortcut(h) + unit.survival * unit.residual(h))
        expected = model.fc(h.mean(dim=(2, 3)))
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    pre = preact_resnet_cifar(8, stochastic_depth=0.5).double().eval()
    with torch.no_grad():
        h = pre.conv1(x)
        for unit in pre.units():
            h = unit.shortcut(h) + unit.survival * unit.residual(h)
        expected = pre.fc(torch.relu(pre.bn_final(h)).mean(dim=(2, 3)))
        torch.testing.assert_close(pre(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["batch", "row"])
def test_batch_mode_drops_for_the_whole_batch_row_mode_per_example(mode):
    torch.manual_seed(0)
    unit = PreActBasicBlock(4, 4).train()
    unit.survival, unit.drop_mode = 0.5, mode
    x = torch.randn(64, 4, 5, 5)
    with torch.no_grad():
        full = x + unit.residual(x)     # BN in training: statistics of this same batch
        seen = set()
        for _ in range(4):
            y = unit(x)
            kept = [bool(torch.allclose(y[i], full[i])) for i in range(64)]
            dropped = [bool(torch.equal(y[i], x[i])) for i in range(64)]
            assert all(k != d for k, d in zip(kept, dropped))
            seen.add(sum(kept))
    if mode == "row":                   # each example tosses its own coin
        assert all(0 < k < 64 for k in seen)
    else:                               # one coin for the whole mini-batch
        assert seen <= {0, 64}


def test_a_dropped_unit_gets_no_gradient_the_others_do():
    """Why these networks set stochastic_paths: a step trains only the units it ran."""
    torch.manual_seed(3)
    model = resnet_cifar(14, stochastic_depth=0.2)
    ran = _runs(model.train(), torch.randn(4, 3, 16, 16))   # hooks only; run again below
    torch.manual_seed(3)
    model = resnet_cifar(14, stochastic_depth=0.2).train()
    model(torch.randn(4, 3, 16, 16)).square().sum().backward()
    got = [k for k, u in enumerate(model.units()) if u.conv1.weight.grad is not None]
    assert got == ran and 0 < len(got) < 6
    assert model.fc.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------- both kernels, training

TINY = {
    "resnet20": lambda: models.create("resnet20"),
    "resnet8_B_sd_row": lambda: resnet_cifar(8, shortcut="B", stochastic_depth=0.5,
                                             stochastic_depth_mode="row"),
    "preact_bottleneck_11": lambda: preact_resnet_cifar(11, bottleneck=True, shortcut="A"),
    "wrn_10_2_dropout": lambda: wide_resnet_cifar(10, 2, dropout=0.3),
    "wrn_10_2": lambda: wide_resnet_cifar(10, 2),
    "resnext11_2x4d": lambda: resnext_cifar(11, cardinality=2, width=4),
}


@pytest.mark.parametrize("name", [n for n in TINY if n != "wrn_10_2"])
def test_both_kernels_agree(name):
    torch.manual_seed(0)
    model = TINY[name]().double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    kernels_agree(model, x)


@pytest.mark.parametrize("name", ["resnet20", "wrn_10_2", "resnext11_2x4d"])
def test_cifar_variant_trains(name):
    torch.manual_seed(0)
    model = TINY[name]().train()
    y = torch.arange(8) % 4                                 # 4 classes, one template each
    # 16x16 keeps it quick; global average pooling takes any size (stage 3 at 4x4)
    x = torch.randn(4, 3, 16, 16)[y] + 0.5 * torch.randn(8, 3, 16, 16)
    # the loss in training mode (BN on this batch's statistics): resnet20 ~3.3 -> ~0.2,
    # WRN ~2.4 -> ~0.8
    assert_learns(model, x, y, steps=4, lr=0.05, factor=0.8, eval_loss=False)


# ------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("build, message", [
    (lambda: resnet_cifar(21), r"6n \+ 2 \(8, 14, 20, 38, \.\.\.\).*got depth=21"),
    (lambda: resnet_cifar(2), r"got depth=2"),
    (lambda: preact_resnet_cifar(100, bottleneck=True),
     r"bottleneck units has depth 9n \+ 2.*got depth=100"),
    (lambda: wide_resnet_cifar(27, 10), r"\(d - 4\) divisible by 6.*got depth=27"),
    (lambda: wide_resnet_cifar(28, 0), r"got widen=0"),
    (lambda: wide_resnet_cifar(28, 10, dropout=1.0), r"dropout is a probability.*got dropout=1.0"),
    (lambda: resnext_cifar(29, cardinality=0), r"got cardinality=0"),
    (lambda: resnext_cifar(30), r"9n \+ 2.*got depth=30"),
    (lambda: resnet_cifar(20, shortcut="C"), r"shortcut must be 'A' .* or 'B' .*got shortcut='C'"),
    (lambda: models.create("resnet20", stochastic_depth=1.5),
     r"survival probability p_L of the last unit, in \(0, 1\].*got stochastic_depth=1.5"),
    (lambda: resnet_cifar(20, stochastic_depth=0), r"got stochastic_depth=0"),
    (lambda: resnet_cifar(20, stochastic_depth=0.5, stochastic_depth_mode="col"),
     r"'batch' .* or 'row' .*got 'col'"),
])
def test_bad_arguments_name_the_fix(build, message):
    with pytest.raises(ModelError, match=message):
        build()


def test_option_a_cannot_remove_channels():
    with pytest.raises(ModelError, match="use shortcut='B'"):
        ZeroPadShortcut(32, 16, 2)
