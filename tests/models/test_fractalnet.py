"""FractalNet (8.4.5, variations of skip architectures; Larsson et al. 2017)."""

from itertools import combinations

import pytest
import torch
from _checks import assert_learns, kernels_agree

from cnnlab import models
from cnnlab.errors import ModelError
from cnnlab.models.fractalnet import (
    CIFAR_WIDTHS,
    ConvUnit,
    FractalBlock,
    FractalNet,
    Join,
    drop_mask,
)


def meta(name, **kwargs):
    with torch.device("meta"):
        return models.create(name, **kwargs)


def count(model):
    return sum(p.numel() for p in model.parameters())


def tiny(**kwargs):
    """Two blocks of three columns on 8x8 inputs: the smallest net with every kind of join."""
    torch.manual_seed(0)
    return FractalNet(**{"widths": (4, 6), "columns": 3, "input_size": 8, **kwargs})


def record_joins(model):
    """Each join's call as (inputs, output), in order."""
    calls = []
    for m in model.modules():
        if isinstance(m, Join):
            m.register_forward_hook(lambda m, args, out: calls.append((args[0], out)))
    return calls


def used_columns(model):
    """The columns (per block) whose parameters received a gradient."""
    return {(b, k) for b in range(1, model.blocks + 1) for k in range(1, model.columns + 1)
            if all(p.grad is not None
                   for p in model.layer(f"block{b}").column(k).parameters())}


# ----------------------------------------------------------------------- the expansion rule

@pytest.mark.parametrize("columns", [1, 2, 3, 4])
def test_a_block_has_2c_minus_1_convs_in_columns_of_doubling_length(columns):
    block = FractalBlock(3, 4, columns)
    units = [m for m in block.modules() if isinstance(m, ConvUnit)]
    assert len(units) == block.num_convs == 2 ** columns - 1
    assert block.depth == 2 ** (columns - 1)
    assert [len(block.column(k)) for k in range(1, columns + 1)] == [
        2 ** (k - 1) for k in range(1, columns + 1)]


def test_joins_sit_where_columns_meet_as_in_fig_1():
    block = FractalBlock(3, 4, 4).eval()
    joins = [name for name, m in block.named_children() if isinstance(m, Join)]
    assert joins == ["join2", "join4", "join6", "join8"]
    calls = record_joins(block)
    block(torch.randn(1, 3, 5, 5))
    # join8 is the recursion's last join together with the joins nested inside it
    assert [len(inputs) for inputs, _ in calls] == [2, 3, 2, 4]


@pytest.mark.parametrize("columns", [1, 2, 3, 4])
def test_longest_path_is_2_to_the_c_minus_1(columns):
    # all-ones filters, ReLU and joins keep an impulse positive: its support grows by one pixel
    # a side per convolution on the longest path, whatever the shorter paths do
    block = FractalBlock(1, 1, columns).eval()
    for m in block.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.ones_(m.weight)
    x = torch.zeros(1, 1, 41, 41)
    x[0, 0, 20, 20] = 1.0
    with torch.no_grad():
        support = (block(x)[0, 0] > 0).sum(0).max().item()
        alone = [(block(x, column=k)[0, 0] > 0).sum(0).max().item()
                 for k in range(1, columns + 1)]
    assert support == 2 * 2 ** (columns - 1) + 1
    assert alone == [2 * 2 ** (k - 1) + 1 for k in range(1, columns + 1)]


def test_join_is_the_mean_of_its_inputs():
    torch.manual_seed(0)
    block = FractalBlock(2, 3, 3).double().eval()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    c1, c2, c3 = (block.column(k) for k in (1, 2, 3))
    with torch.no_grad():
        join2 = (c2.conv1(x) + c3.conv2(c3.conv1(x))) / 2
        join4 = (c1.conv1(x) + c2.conv2(join2) + c3.conv4(c3.conv3(join2))) / 3
        calls = record_joins(block)
        out = block(x)
    torch.testing.assert_close(out, join4)
    torch.testing.assert_close(calls[0][1], join2)
    for inputs, output in calls:
        torch.testing.assert_close(output, sum(inputs) / len(inputs))


# ----------------------------------------------------------------------------- drop-path

def test_drop_mask_keeps_at_least_one_and_repeats_under_a_seed():
    torch.manual_seed(1)
    masks = [drop_mask(3, 0.5) for _ in range(400)]
    assert all(any(m) for m in masks)
    assert {sum(m) for m in masks} == {1, 2, 3}
    torch.manual_seed(1)
    assert [drop_mask(3, 0.5) for _ in range(400)] == masks
    assert all(sum(drop_mask(4, 1.0)) == 1 for _ in range(50))     # all drawn out: one kept
    assert all(drop_mask(4, 0.0) == [True] * 4 for _ in range(50))
    dropped = sum(not k for _ in range(1000) for k in drop_mask(2, 0.15)) / 2000
    assert 0.10 < dropped < 0.17      # 0.15, less the rare draws where both would go


def test_local_drop_path_averages_a_nonempty_subset_at_each_join():
    model = tiny(global_fraction=0.0, drop_path_local=0.5).double().train()
    calls = record_joins(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.manual_seed(2)
    with torch.no_grad():
        for _ in range(5):
            model(x)
    assert len(calls) == 5 * 2 * 2              # 5 calls x 2 blocks x (join2, join4)
    sizes = []
    for inputs, output in calls:
        kept = [len(subset) for n in range(1, len(inputs) + 1)
                for subset in combinations(inputs, n)
                if torch.allclose(output, sum(subset) / n)]
        assert kept, "a join's output is no mean of its inputs"
        sizes.append(kept[0])
    assert 1 in sizes and max(sizes) > 1        # some inputs dropped, never all


def test_global_drop_path_trains_exactly_one_column():
    model = tiny(global_fraction=1.0)
    x, seen = torch.randn(4, 3, 8, 8), set()
    calls = record_joins(model)
    for seed in range(8):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        model(x).square().sum().backward()
        used = used_columns(model)
        (k,) = {k for _, k in used}              # one column ...
        assert used == {(1, k), (2, k)}          # ... in every block; the others get None
        assert all(p.grad is None for b in (1, 2) for j in range(1, 4) if j != k
                   for p in model.layer(f"block{b}").column(j).parameters())
        assert model.fc.weight.grad is not None
        seen.add(k)
    assert calls == [] and seen == {1, 2, 3}    # no join runs; every column gets its turn


def test_global_and_local_mix_per_mini_batch():
    model = tiny(global_fraction=0.5, drop_path_local=0.0)
    x, global_batches = torch.randn(2, 3, 8, 8), 0
    torch.manual_seed(3)
    for _ in range(40):
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
        global_batches += len(used_columns(model)) == 2
    assert 10 < global_batches < 30


def test_eval_runs_every_path_and_is_deterministic():
    model = tiny(global_fraction=1.0, drop_path_local=1.0, dropout=0.3).eval()
    calls = record_joins(model)
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    torch.testing.assert_close(model(x), out)
    assert [len(inputs) for inputs, _ in calls[:4]] == [2, 3, 2, 3]
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_the_deepest_column_alone():
    model = tiny().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        chain = model.pool2(model.block2.col3(model.pool1(model.block1.col3(x))))
        torch.testing.assert_close(model(x, column=3), model.fc(chain.mean((2, 3))))
    model(x, column=3).sum().backward()
    assert used_columns(model) == {(1, 3), (2, 3)}
    assert not torch.allclose(model(x, column=1), model(x))
    with pytest.raises(ModelError, match=r"column must be 1 .* 3 \(the deepest\), got column=4"):
        model(x, column=4)


# ------------------------------------------------------------------------- the paper's nets

def conv_params(c_in, c_out, columns):
    """A block's convolutions and batch norms: the first layer of each column sees c_in."""
    convs = 2 ** columns - 1
    return 9 * c_out * (columns * c_in + (convs - columns) * c_out) + 2 * c_out * convs


@pytest.mark.parametrize("name, columns, layers, total", [
    ("fractalnet20_cifar", 3, 20, 33_724_618), ("fractalnet40_cifar", 4, 40, 76_106_634)])
def test_cifar_nets_depth_and_parameters(name, columns, layers, total):
    model = meta(name)
    assert (model.blocks, model.columns, model.depth) == (5, columns, layers)
    widths = (3,) + CIFAR_WIDTHS
    by_rule = sum(conv_params(widths[b], widths[b + 1], columns) for b in range(5))
    assert count(model) == by_rule + 512 * 10 + 10 == total
    # the paper's Table 1 gives 38.6 M (20 layers) and 22.9 M (40 layers); the module
    # docstring says why these widths cannot give either
    assert sum(isinstance(m, ConvUnit) for m in model.modules()) == 5 * (2 ** columns - 1)


def test_volumes_and_names():
    model = models.create("fractalnet20_cifar", widths=(8, 8, 8, 8, 16)).eval()
    x = torch.zeros(1, 3, 32, 32)
    sizes = []
    for b in range(1, 6):
        x = model.layer(f"pool{b}")(model.layer(f"block{b}")(x))
        sizes.append(x.shape[-1])
    assert sizes == [16, 8, 4, 2, 1] and tuple(x.shape) == (1, 16, 1, 1)
    assert model.layer("fc") is model.fc and model.layer("block3") is model.block3
    names = [n for n, _ in model.named_parameters()]
    assert names[:3] == ["block1.col1.conv1.conv.weight", "block1.col1.conv1.bn.weight",
                         "block1.col1.conv1.bn.bias"]
    assert "block5.col3.conv4.conv.weight" in names
    assert [type(m).__name__ for m in model.block2.col3.conv4] == [
        "Conv2d", "Dropout", "BatchNorm2d", "ReLU"]              # dropout 0.1 in block 2
    assert not hasattr(model.block1.col3.conv4, "drop")         # block 1: no dropout


# ------------------------------------------------------------------------ both kernels agree

@pytest.mark.parametrize("mode", ["eval", "train", "column"])
def test_both_kernels_agree(mode):
    model = tiny(dropout=0.2).double()
    model.train(mode == "train")
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    column = 3 if mode == "column" else None
    kernels_agree(model, x, forward=lambda x: model(x, column=column),
                  seed=4, only_with_grad=True)          # seed: the same paths, dropout masks


def test_cifar_variant_trains():
    torch.manual_seed(0)
    model = models.create("fractalnet20_cifar", widths=(16, 32, 32, 64, 64))
    y = torch.arange(8) % 4                                 # 4 classes, one template each
    x = torch.randn(4, 3, 32, 32)[y] + 0.5 * torch.randn(8, 3, 32, 32)
    # measured in training mode, seed 5: the same drop-path and dropout draws before and after
    assert_learns(model, x, y, steps=8, lr=0.02, factor=0.8, eval_loss=False, seed=5)


# ---------------------------------------------------------------------------- clear errors

@pytest.mark.parametrize("kwargs, message", [
    ({"columns": 0}, r"columns >= 1 \(the paper uses 3 or 4\), got columns=0"),
    ({"columns": 2.5}, r"got columns=2.5"),
    ({"widths": ()}, r"widths gives each block's filter count, .* got widths=\(\)"),
    ({"widths": (8, 0)}, r"got widths=\(8, 0\)"),
    ({"widths": (8,) * 6}, r"6 blocks pool a 32x32 input below 1x1; use at most 5 widths"),
    ({"dropout": (0.1, 0.2)}, r"dropout needs one rate per block \(5 blocks\)"),
    ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\), got dropout=1.0"),
    ({"drop_path_local": 1.5}, r"drop_path_local must be a probability in \[0, 1\]"),
    ({"global_fraction": -0.1}, r"global_fraction must be .* got global_fraction=-0.1"),
])
def test_bad_arguments_name_the_fix(kwargs, message):
    columns = kwargs.pop("columns", None)
    with pytest.raises(ModelError, match=message):
        if columns is None:
            models.create("fractalnet20_cifar", **kwargs)
        else:
            FractalNet(columns=columns)
