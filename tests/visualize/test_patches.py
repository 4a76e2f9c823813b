"""cnnlab.visualize.patches: receptive boxes, top-k units over a data set, their crops, and
the deconvnet projection (8.5.1, Figs. 8.13 and 8.15)."""

import pytest
import torch
from torch import nn

import cnnlab.nn as cnn
from cnnlab import data, models, ops
from cnnlab.data import ImageDataset
from cnnlab.errors import CnnlabError, ModelError, ShapeError
from cnnlab.spec import build
from cnnlab.visualize.gradients import gradients
from cnnlab.visualize.patches import (
    Box,
    NoProjection,
    can_project,
    crop_mask,
    crops,
    project,
    projections,
    receptive_box,
    top_k,
)
from cnnlab.visualize.targets import Target


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "test", size=16)          # 360 images of 1 x 16 x 16


def _net(text, shape, seed=0, positive=False):
    torch.manual_seed(seed)
    net = build(text, shape).double().eval()
    if positive:                                         # no cancellation, no dead ReLUs
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.uniform_(m.weight, 0.1, 1.0)
                nn.init.uniform_(m.bias, 0.0, 0.1)
    return net


def _close(a, b, rtol=1e-7, atol=1e-10):
    """allclose with shapes and the largest difference in the message (torch.testing's
    assert_close imports torch.distributed on first use: seconds)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    assert torch.allclose(a, b, rtol=rtol, atol=atol), float((a - b).abs().max())


def _support(model, x, layer, channel, position):
    """Input pixels (rows, columns) with a non-zero backprop gradient for one unit."""
    g = gradients(model, x, Target(layer, channel, position))[0, 0].abs().sum(0)   # H x W
    rows = g.sum(1).nonzero().flatten().tolist()
    cols = g.sum(0).nonzero().flatten().tolist()
    return rows, cols


# ---- receptive boxes ------------------------------------------------------------------------

def test_boxes_of_lenet5_by_hand():
    model = models.create("lenet5_modern")
    assert receptive_box(model, "c1", (0, 0)) == Box((0, 0), (5, 5))
    assert receptive_box(model, "c3", (9, 0)) == Box((18, 0), (14, 14))   # 2·9 .. 2·9 + 13
    box = receptive_box(model, "s4", (4, 1))
    assert (box.top, box.left, box.height, box.width) == (16, 4, 16, 16)
    assert receptive_box(model, "c3", (1, 2), input_size=(36, 36)) == Box((2, 4), (14, 14))


@pytest.mark.parametrize("text", ["C3D2s2p1 C3D2d2p2 A2", "C5D2p2 C3D2s2p1 C3D2d3p3"])
def test_box_is_exactly_the_pixels_a_unit_depends_on(text):
    # padding, stride and dilation; positive weights make the support the whole window
    net = _net(text, (1, 16, 16), positive=True)
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64) + 0.1
    layer = list(net.chapter_layers)[-1]
    rows = net(x).shape[2]
    for pos in [(0, 0), (rows - 1, rows - 1), (rows // 2, 0), (1, rows - 2)]:
        box = receptive_box(net, layer, pos)
        want_rows = list(range(max(box.top, 0), min(box.top + box.height, 16)))
        want_cols = list(range(max(box.left, 0), min(box.left + box.width, 16)))
        assert _support(net, x, layer, 1, pos) == (want_rows, want_cols)
    assert receptive_box(net, layer, (0, 0)).top < 0           # the corner sees padding


def test_box_holds_the_gradient_through_max_pools():
    # max pools (overlapping too) pass gradients to one pixel per pool: inside the box
    for net, layer in [(_net("C3D4 M3s2 C3D4s2 M", (1, 24, 24), positive=True), "pool2"),
                       (models.create("lenet5_modern").double(), "c3")]:
        size = net.default_input_shape
        x = torch.randn(1, *size, dtype=torch.float64)
        for pos in [(0, 0), (1, 2), (2, 0)]:
            box = receptive_box(net, layer, pos)
            for ch in range(2):
                rows, cols = _support(net, x, layer, ch, pos)
                assert rows and cols
                assert box.top <= rows[0] and rows[-1] < box.top + box.height
                assert box.left <= cols[0] and cols[-1] < box.left + box.width


def test_box_errors():
    model = models.create("lenet5_modern")
    with pytest.raises(ShapeError) as err:
        receptive_box(model, "f6", ())
    msg = str(err.value)
    assert "\n" not in msg and "'f6'" in msg and "spatial" in msg
    assert "c1, s2, c3, s4, c5" in msg and "f6," not in msg
    with pytest.raises(ShapeError, match=r"position \(10, 0\) lies outside layer 'c3'.*10x10"):
        receptive_box(model, "c3", (10, 0))
    with pytest.raises(ModelError, match="did you mean c3"):
        receptive_box(model, "conv3", (0, 0))
    with pytest.raises(ShapeError, match="input_size"):
        receptive_box(nn.Sequential(cnn.Conv2d(1, 2, 3)), "0", (0, 0))


def test_no_box_past_an_autoencoders_unpooling_or_deconvolution():
    ae = models.create("cae")
    assert receptive_box(ae, "pool1", (1, 1)) == Box((0, 0), (6, 6))       # 5x5 half, 2x2/2
    for layer in ("unpool1", "deconv1"):                # outputs share inputs: no one window
        with pytest.raises(ShapeError, match=rf"layer '{layer}' follows a transposed "
                                             r"convolution or an unpooling.*earlier layer"):
            receptive_box(ae, layer, (0, 0))


# ---- top-k ----------------------------------------------------------------------------------

def _maps(net, dataset, layer, channels):
    x = (dataset.images.double() - dataset.mean[0]) / dataset.std[0]
    with torch.no_grad():
        out = net[:list(net.chapter_layers).index(layer) + 1](x)     # N x C x h x w
    return out[:, channels].flatten(2), out.shape[2:]                 # N x c x h·w


def _brute(net, dataset, layer, channels, k):
    """Every unit of the channels sorted: by value, ties by image then position."""
    maps, size = _maps(net, dataset, layer, channels)
    flat = maps.transpose(0, 1).flatten(1)                           # c x N·h·w
    order = flat.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return flat.gather(1, order), order, size


def _brute_per_image(net, dataset, layer, channels, k):
    """Each image's strongest unit per channel (the first in row-major order on ties), the
    images sorted by it, ties by image: values, images, flat positions (c x k each)."""
    maps, size = _maps(net, dataset, layer, channels)
    peak = maps.amax(dim=2)                                          # N x c
    units = torch.arange(maps.shape[2]).expand_as(maps)
    first = torch.where(maps == peak[..., None], units, maps.shape[2]).amin(dim=2)
    images = peak.t().sort(dim=1, descending=True, stable=True).indices[:, :k]   # c x k
    return peak.t().gather(1, images), images, first.t().gather(1, images), size


def _flat(best, size):
    return best.positions[..., 0] * size[1] + best.positions[..., 1]


@pytest.mark.parametrize("k", [1, 9])
def test_top_k_per_image_equals_a_brute_force_sort(digits, k):
    net = _net("C3D4 M C3D6", (1, 16, 16))
    channels = [0, 3, 5]
    values, images, positions, size = _brute_per_image(net, digits, "conv2", channels, k)
    best = top_k(net, digits, "conv2", channels, k=k, batch_size=37)     # 37 does not divide 360
    assert best.per_image and best.channels == (0, 3, 5) and best.count == 360
    _close(best.values, values)
    assert torch.equal(best.images, images) and torch.equal(_flat(best, size), positions)
    for row in best.images.tolist():
        assert len(set(row)) == k                                    # k different images


@pytest.mark.parametrize("k", [1, 9])
def test_top_k_over_all_positions_equals_a_brute_force_sort(digits, k):
    net = _net("C3D4 M C3D6", (1, 16, 16))
    channels = [0, 3, 5]
    values, order, size = _brute(net, digits, "conv2", channels, k)
    best = top_k(net, digits, "conv2", channels, k=k, batch_size=37, per_image=False)
    units = size[0] * size[1]
    assert not best.per_image
    assert best.channels == (0, 3, 5) and best.count == 360 and best.map_size == (8, 8)
    _close(best.values, values)
    assert torch.equal(best.images, order // units)
    assert torch.equal(best.positions[..., 0] * size[1] + best.positions[..., 1], order % units)
    assert best.targets(1)[0] == Target("conv2", 3, tuple(best.positions[1, 0].tolist()))


def test_top_k_of_every_channel_and_of_relu_zeros(digits):
    net = _net("C3D4 M C3D6", (1, 16, 16))
    for per_image, brute in [(False, _brute), (True, _brute_per_image)]:
        best = top_k(net, digits, "relu2", k=9, batch_size=100, per_image=per_image)
        values, images = brute(net, digits, "relu2", list(range(6)), 9)[:2]
        assert best.channels == tuple(range(6))
        _close(best.values, values)
        if per_image:
            assert torch.equal(best.images, images)
        assert best.state_bytes == 6 * 9 * (8 + 8)                       # bounded by k


def test_ties_rank_by_image_then_position(digits):
    net = _net("C3D2 M8", (1, 16, 16))                                   # 2 x 2 maps
    with torch.no_grad():
        net.conv1.weight.zero_()
        net.conv1.bias.zero_()                                           # every unit is 0
    best = top_k(net, digits, "pool1", [1], k=9, batch_size=2, per_image=False)
    assert best.values.eq(0).all()
    assert best.images.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 2]]
    assert best.positions[0].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] * 2 + [[0, 0]]
    few = top_k(net, digits.subset(slice(0, 2)), "pool1", [0], k=20, per_image=False)
    assert few.k == 8                                                    # all 2 x 4 units
    one = top_k(net, digits, "pool1", [1], k=9, batch_size=2)
    assert one.images.tolist() == [list(range(9))] and one.positions.eq(0).all()
    assert top_k(net, digits.subset(slice(0, 2)), "pool1", [0], k=20).k == 2   # 2 images


def test_per_image_ties_by_hand():
    # five 3 x 3 images through a ReLU (the identity on them): each image's first strongest
    # unit in row-major order, the images by it, equal ones by data set order
    images = torch.zeros(5, 1, 3, 3)
    images[0, 0, 1, 2] = images[0, 0, 2, 0] = 2                  # first: (1, 2)
    images[1, 0, 0, 1] = 3
    images[2, 0, 2, 2] = 2                                       # ties image 0, after it
    images[3] += 1
    images[4, 0, 2, 1] = images[4, 0, 0, 0] = 3                  # first: (0, 0)
    toy = ImageDataset(images, torch.zeros(5, dtype=torch.long), name="toy", split="test",
                       classes=(), mean=[0.0], std=[1.0])
    net = nn.Sequential(cnn.ReLU())
    best = top_k(net, toy, "0", k=4, batch_size=2)                # ties across batches too
    assert best.values.tolist() == [[3, 3, 2, 2]] and best.images.tolist() == [[1, 4, 0, 2]]
    assert best.positions[0].tolist() == [[0, 1], [0, 0], [1, 2], [2, 2]]
    every = top_k(net, toy, "0", k=4, batch_size=2, per_image=False)
    assert every.values.tolist() == [[3, 3, 3, 2]] and every.images.tolist() == [[1, 4, 4, 0]]
    assert every.positions[0].tolist() == [[0, 1], [0, 0], [2, 1], [1, 2]]


def test_top_k_normalises_like_evaluation(digits):
    net = _net("C3D4 M C3D6", (1, 16, 16))
    mine = top_k(net, digits, "conv2", [2], k=3, mean=(0.5,), std=(0.25,), per_image=False)
    x = (digits.images.double() - 0.5) / 0.25
    with torch.no_grad():
        want = net[:4](x)[:, 2].flatten().sort(descending=True).values[:3]
    _close(mine.values[0], want)


def test_top_k_errors(digits):
    net = _net("C3D4 M C3D6", (1, 16, 16))
    with pytest.raises(ShapeError, match=r"channel 6 is out of range: layer 'conv2' has 6 "
                                         r"channels \(0\.\.5\)"):
        top_k(net, digits, "conv2", [1, 6])
    with pytest.raises(CnnlabError, match="empty"):
        top_k(net, digits.subset(slice(0, 0)), "conv2")
    with pytest.raises(CnnlabError, match="k=0"):
        top_k(net, digits, "conv2", k=0)
    with pytest.raises(CnnlabError, match="batch_size"):
        top_k(net, digits, "conv2", batch_size=0)
    with pytest.raises(CnnlabError, match=r"per_image is True .* got per_image='no'"):
        top_k(net, digits, "conv2", per_image="no")
    with pytest.raises(ShapeError, match="do not fit"):
        top_k(models.create("lenet5_modern"), digits, "c3")              # 16 x 16, not 32


# ---- crops ----------------------------------------------------------------------------------

def test_crops_are_the_boxes_padded_to_one_size(digits):
    net = _net("C3D4s2p2 C3D4", (1, 16, 16))                            # corner sees padding
    best = top_k(net, digits, "conv2", [0, 2], k=4)
    patches, mask = crops(digits, best, net, fill=-1.0), crop_mask(digits, best, net)
    assert patches.shape == (2, 4, 1, 7, 7) and mask.shape == (2, 4, 7, 7)
    for row in range(2):
        for rank in range(4):
            box = receptive_box(net, "conv2", tuple(best.positions[row, rank].tolist()))
            image = digits.images[best.images[row, rank]]
            want = torch.full((1, 7, 7), -1.0)
            for i in range(7):
                for j in range(7):
                    r, c = box.top + i, box.left + j
                    if 0 <= r < 16 and 0 <= c < 16:
                        want[0, i, j] = image[0, r, c]
            assert torch.equal(patches[row, rank], want)
            assert torch.equal(mask[row, rank], want[0] != -1.0)
    corner = Box((-2, -2), (7, 7))
    assert corner.clip((16, 16)) == ((slice(0, 5), slice(0, 5)), (slice(2, 7), slice(2, 7)))
    assert torch.equal(crops(digits.images, best, net, fill=-1.0), patches)


# ---- the deconvnet projection ---------------------------------------------------------------

def _same_as_deconvnet_gradient(model, x, target):
    _close(project(model, x, target), gradients(model, x, target, rule="deconvnet")[:, 0],
           rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", ["native", "reference"])
def test_project_is_the_deconvnet_gradient(kernel):
    torch.manual_seed(0)
    lenet = models.create("lenet5_modern").double()
    x = torch.randn(3, 1, 32, 32, dtype=torch.float64)
    overlap = _net("C3D4 M3s2 C3D4", (2, 15, 15))                       # overlapping pools
    y = torch.randn(4, 2, 15, 15, dtype=torch.float64)
    with ops.kernels(kernel):
        for target in [("c3", 5), ("c3", 2, (9, 0)), ("s4", 1, (4, 4)), 7]:
            _same_as_deconvnet_gradient(lenet, x, target)
        for target in [("conv2", 1), ("pool1", 3, (0, 6)), ("relu1", 0)]:
            _same_as_deconvnet_gradient(overlap, y, target)


def test_overlapping_pools_sum_a_shared_winner():
    pool = nn.Sequential(cnn.MaxPool2d(3, stride=1)).double()
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 2] = 5.0                                  # the winner of all 4 pools
    net = nn.Sequential(pool, cnn.Conv2d(1, 1, 2, bias=False)).double()
    with torch.no_grad():
        net[1].weight.fill_(1.0)
    back = project(net, x, ("1", 0, (0, 0)))
    assert back[0, 0, 1, 2] == 4.0 and back.sum() == 4.0


def test_project_through_linear_layers_batch_norm_and_average_pools():
    torch.manual_seed(1)
    net = nn.Sequential(cnn.Conv2d(1, 3, 3, stride=2, padding=1, dilation=2), nn.BatchNorm2d(3),
                        cnn.ReLU(), cnn.AvgPool2d(2), cnn.Conv2d(3, 4, 3, padding=1),
                        cnn.GlobalAvgPool(), cnn.Linear(4, 5)).double()
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    net[1].weight.data.uniform_(0.5, 2)
    x = torch.randn(2, 1, 17, 17, dtype=torch.float64)
    for target in [("4", 1), ("6", 3), ("3", 2, (1, 2))]:
        _same_as_deconvnet_gradient(net, x, target)
    assert net.training                                  # the mode is restored


def test_where_project_and_gradient_differ():
    # LRN: the projection passes through it; the gradient takes its Jacobian
    net = _net("C3D6 LRN5 C3D4", (1, 12, 12))
    plain = nn.Sequential(*[m for m in net if not isinstance(m, cnn.LRN)])
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    target = ("conv2", 1)
    _close(project(net, x, target), gradients(plain, x, ("3", 1), rule="deconvnet")[:, 0])
    assert not torch.allclose(project(net, x, target),
                              gradients(net, x, target, rule="deconvnet")[:, 0])
    # LeNet-5's squashing is applied to the signal, not differentiated
    lenet = models.create("lenet5").double()
    z = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    back = project(lenet, z, ("c3", 4))
    assert back.shape == z.shape and back.abs().sum() > 0
    assert not torch.allclose(back, gradients(lenet, z, ("c3", 4), rule="deconvnet")[:, 0])


def test_projections_lie_inside_the_boxes(digits):
    net = _net("C3D4 M C3D6", (1, 16, 16))
    best = top_k(net, digits, "conv2", [1, 4], k=3)
    pictures = projections(digits, best, net)                           # 2 x 3 x 1 x 8 x 8
    assert pictures.shape == (2, 3, 1, 8, 8)
    x = ((digits.images[best.images[1]] - digits.mean[0]) / digits.std[0]).double()
    for rank in range(3):
        pos = tuple(best.positions[1, rank].tolist())
        full = project(net, x[rank:rank + 1], ("conv2", 4, pos))[0]       # 1 x 16 x 16
        box = receptive_box(net, "conv2", pos)
        src, dst = box.clip((16, 16))
        assert torch.equal(pictures[1, rank][(slice(None), *dst)], full[(slice(None), *src)])
        inside = torch.zeros_like(full, dtype=torch.bool)
        inside[(slice(None), *src)] = True
        assert full[~inside].eq(0).all() and full[inside].abs().sum() > 0


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu, self.conv2 = cnn.Conv2d(1, 2, 3, padding=1), cnn.ReLU(), \
            cnn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x))) + x


def test_project_errors():
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ModelError) as err:
        project(nn.Sequential(_Residual(), cnn.Conv2d(1, 1, 3)), x, ("1", 0))
    msg = str(err.value)
    assert "\n" not in msg and "chain" in msg and "residual" in msg
    assert 'gradients(model, x, target, rule="deconvnet")' in msg
    assert "'1'" in msg and "'0.conv2'" in msg
    with pytest.raises(ModelError, match=r"class scores are not what 'output' returns"):
        project(models.create("lenet5"), torch.randn(1, 1, 32, 32), 3)     # -RBF(x)
    odd = nn.Sequential(cnn.Conv2d(1, 2, 3), nn.Sigmoid(), cnn.Conv2d(2, 1, 3))
    with pytest.raises(ModelError, match=r"'1' \(Sigmoid\): the deconvnet has no rule"):
        project(odd, x, ("2", 0))
    with pytest.raises(ShapeError, match="channel 16 is out of range"):
        project(models.create("lenet5_modern"), torch.randn(1, 1, 32, 32), ("c3", 16))
    with pytest.raises(ShapeError, match="1 x 32 x 32"):
        project(models.create("lenet5_modern"), x, ("c3", 1))


def test_a_network_that_is_no_chain_gets_its_deconvnet_gradient(digits):
    """projections(method="auto") projects a chain through its switches and falls back, in a
    residual net, to each unit's deconvnet-rule gradient, cut at the same boxes."""
    torch.manual_seed(0)
    residual = nn.Sequential(_Residual(), cnn.Conv2d(1, 3, 3)).double().eval()
    residual.default_input_shape = (1, 16, 16)
    chain = _net("C3D4 M C3D6", (1, 16, 16))
    assert can_project(chain, torch.zeros(1, 1, 16, 16, dtype=torch.double), "conv2") is None
    why = can_project(residual, torch.zeros(1, 1, 16, 16, dtype=torch.double), "1")
    assert why is not None and "residual" in why
    best = top_k(residual, digits, "1", [0, 2], k=3)
    with pytest.raises(NoProjection, match="chain"):
        projections(digits, best, residual, method="project")
    pictures = projections(digits, best, residual)                      # auto: the gradient
    x = ((digits.images[best.images[1]] - digits.mean[0]) / digits.std[0]).double()
    for rank in range(3):
        pos = tuple(best.positions[1, rank].tolist())
        full = gradients(residual, x[rank:rank + 1], Target("1", 2, pos), rule="deconvnet")[0, 0]
        src, dst = receptive_box(residual, "1", pos).clip((16, 16))
        assert torch.equal(pictures[1, rank][(slice(None), *dst)], full[(slice(None), *src)])
    best = top_k(chain, digits, "conv2", [1], k=2)
    _close(projections(digits, best, chain), projections(digits, best, chain, method="project"))
    _close(projections(digits, best, chain, method="gradient"),
           projections(digits, best, chain, method="project"))          # equal where both exist
    with pytest.raises(CnnlabError, match="unknown projection method 'switches'"):
        projections(digits, best, chain, method="switches")
