"""cnnlab.apps.fully_conv: the converted network's score at every window position against the
classifier on that window (8.6.3), in float64."""

import doctest

import pytest
import torch
from torch import nn

from cnnlab import models, ops
from cnnlab import nn as cnn
from cnnlab.apps import fully_conv as fully_conv_module
from cnnlab.apps.fully_conv import fully_convolutional
from cnnlab.errors import ModelError, ShapeError
from cnnlab.spec import build

TIGHT = {"rtol": 1e-10, "atol": 1e-12}      # float64: only the order of the sums differs


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _model(name_or_net, seed=0):
    """A zoo model (or a built net) in float64 and eval mode, with batch norm's statistics
    drawn at random so that it is no identity."""
    torch.manual_seed(seed)
    net = models.create(name_or_net) if isinstance(name_or_net, str) else name_or_net
    net = net.double().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.weight, 1.0, 0.2)
            nn.init.normal_(m.bias, 0.0, 0.2)
    return net


def _image(net, rows, cols, seed=1):
    """The converted net, and one image of ``rows`` x ``cols`` windows with stride - 1 pixels
    past the last ones (the most that make no further window)."""
    c, h, w = net.default_input_shape
    fc = fully_convolutional(net)
    (sy, sx) = fc.stride
    size = (h + (rows - 1) * sy + sy - 1, w + (cols - 1) * sx + sx - 1)
    g = torch.Generator().manual_seed(seed)
    return fc, torch.randn(1, c, *size, generator=g, dtype=torch.float64)


def _per_window(scores):
    """(1, classes, h, w) -> (h * w, classes), row-major as boxes() lists the windows."""
    return scores[0].flatten(1).T


def _crop_scores(net, image, boxes):
    crops = [image[:, :, y0:y1, x0:x1] for x0, y0, x1, y1 in boxes.long().tolist()]
    with torch.no_grad():
        return net(torch.cat(crops))


# -- networks without zero padding: every window equals its crop ---------------------------------

UNPADDED = {
    # LeNet-5 (the zoo's one model without padding): C5 then F6 and the output as 1x1 convs
    "lenet5_modern": lambda: "lenet5_modern",
    # global average pooling before the FC: an average over each window at stride 1
    "gap head": lambda: build("C3D6p0 R M C3D8p0 R GAP F", (2, 14, 14), 5),
    # a window of 14x11, a stride of 2x1, a 3x2 filter, FC-dropout-FC
    "oblong": lambda: build("C3x2D4p0 R M2x1 C3D6p0 R FC12 R DROP FC", (1, 14, 11), 5),
}


@pytest.mark.parametrize("which", list(UNPADDED))
def test_each_position_scores_its_crop_exactly(which):
    net = _model(UNPADDED[which]())
    fc, image = _image(net, 3, 4)
    scores = fc(image)
    assert scores.shape == (1, net.num_classes, 3, 4)         # the extra pixels: no window
    boxes = fc.boxes(*image.shape[2:])
    assert boxes.shape == (12, 4)
    torch.testing.assert_close(_per_window(scores), _crop_scores(net, image, boxes), **TIGHT)


def test_strides_come_from_the_features():
    for name, stride in (("lenet5_modern", (4, 4)), ("gap head", (2, 2)), ("oblong", (2, 1))):
        net = UNPADDED[name]()
        net = models.create(net) if isinstance(net, str) else net
        fc = fully_convolutional(net)
        assert fc.stride == stride and fc.window == tuple(net.default_input_shape[1:])


# -- networks with zero padding: exact on the feature map, not on crops --------------------------

PADDED = ["resnet20", "alexnet_cifar", "nin_cifar"]    # GAP + FC; FC6-FC8; class maps + GAP


@pytest.mark.parametrize("name", PADDED)
def test_padded_nets_apply_the_head_to_each_window_of_the_feature_map(name):
    net = _model(name)
    fc, image = _image(net, 2, 3)
    scores = fc(image)
    with torch.no_grad():
        # at the window size the map has one position, the classifier's own scores
        window = image[:, :, :net.default_input_shape[1], :net.default_input_shape[2]]
        torch.testing.assert_close(fc(window)[:, :, 0, 0], net(window), **TIGHT)
        # larger: the original head on every window of the whole image's feature map
        features = net.forward_features(image)
        fh, fw = net.forward_features(window).shape[2:]
        expected = torch.cat([net.forward_head(features[:, :, i:i + fh, j:j + fw])
                              for i in range(2) for j in range(3)])
    torch.testing.assert_close(_per_window(scores), expected, **TIGHT)


def test_padded_nets_differ_from_their_crops_past_the_border():
    """What the module documents: a crop alone sees zero padding around it, a window of the
    large image its real neighbours, so the scores differ."""
    net = _model("resnet20")
    fc, image = _image(net, 2, 2)
    boxes = fc.boxes(*image.shape[2:])
    gap = (_per_window(fc(image)) - _crop_scores(net, image, boxes)).abs().max()
    assert gap > 1e-3


# -- kernels, boxes, sizes ------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["lenet5_modern", "gap head"])
def test_both_kernels_give_the_same_map(which):
    net = _model(UNPADDED[which]())
    fc, image = _image(net, 2, 3)
    native = fc(image)
    with ops.kernels("reference"):
        reference = fc(image)
    torch.testing.assert_close(reference, native, **TIGHT)


def test_boxes_are_the_windows_row_major():
    fc = fully_convolutional(models.create("lenet5_modern"))
    assert fc.map_size(32, 32) == (1, 1)
    assert fc.map_size(39, 43) == (2, 3)                         # 39 = 32 + 4 + 3 pixels
    assert fc.boxes(39, 43).tolist() == [
        [0, 0, 32, 32], [4, 0, 36, 32], [8, 0, 40, 32],
        [0, 4, 32, 36], [4, 4, 36, 36], [8, 4, 40, 36]]
    assert fc.boxes(39, 43).dtype == torch.float32
    assert fc.double().boxes(32, 32).dtype == torch.float64


@pytest.mark.parametrize("x, match", [
    (torch.zeros(1, 1, 31, 40), "height of 31 is below the window 32x32"),
    (torch.zeros(1, 32, 32), r"\(N, C, H, W\)"),
])
def test_images_it_cannot_take(x, match):
    fc = fully_convolutional(models.create("lenet5_modern"))
    with pytest.raises(ShapeError, match=match):
        fc(x)


# -- what it cannot convert -----------------------------------------------------------------------

class _Negated(cnn.Classifier):
    """A head that computes outside its layers: the scores are negated."""

    def __init__(self):
        super().__init__()
        self.default_input_shape, self.num_classes, self.chapter_layers = (1, 8, 8), 3, {}
        self.conv = cnn.Conv2d(1, 4, 3)
        self.fc = cnn.Linear(4 * 6 * 6, 3)

    def forward_features(self, x):
        return self.conv(x)

    def forward_head(self, x, pre_logits=False):
        return -self.fc(x.flatten(1))


@pytest.mark.parametrize("make, match", [
    (lambda: models.create("lenet5"), r"LeNet5's head: layer output \(RBF\) is not"),
    (_Negated, "_Negated.forward_head computes more than its layers"),
    (lambda: build("C3D4p0 C1D3p0", (1, 8, 8)), "ends in a 6x6 map, not one score per class"),
    (lambda: nn.Sequential(cnn.Conv2d(1, 2, 3)), "takes a cnnlab classifier"),
])
def test_heads_it_cannot_convert(make, match):
    with pytest.raises(ModelError, match=match) as err:
        fully_convolutional(make())
    assert "\n" not in str(err.value)


def test_without_the_negation_the_same_net_converts():
    net = _Negated().double()
    net.forward_head = lambda x, pre_logits=False: net.fc(x.flatten(1))
    fc = fully_convolutional(net)
    image = torch.randn(1, 1, 11, 9, dtype=torch.float64)
    torch.testing.assert_close(_per_window(fc(image)),
                               _crop_scores(net, image, fc.boxes(11, 9)), **TIGHT)


# -- the model is left as it was -----------------------------------------------------------------

def test_the_model_is_left_alone_and_not_shared():
    torch.manual_seed(0)
    net = models.create("lenet5_modern", dropout=0.5)             # in training mode
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.random.get_rng_state()
    fc = fully_convolutional(net)
    assert torch.equal(torch.random.get_rng_state(), rng)          # nothing drawn
    assert net.training and not fc.training and not fc.head.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x = torch.randn(2, 1, 36, 36)
    first = fc(x)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)                                            # changing the model ...
    torch.testing.assert_close(fc(x), first)                       # ... leaves the copy
    assert not {p.data_ptr() for p in fc.parameters()} & {p.data_ptr() for p in net.parameters()}


def test_docstring_examples():
    failures, tried = doctest.testmod(fully_conv_module)
    assert tried and not failures
