"""Gradient maps: Fig. 8.14's three ReLU rules by hand, autograd as the oracle on the zoo,
both kernels, batching, saliency, hidden targets, and the model left as it was."""

import doctest
import importlib

import pytest
import torch
from torch import nn

from cnnlab import models, ops
from cnnlab import nn as cnn
from cnnlab.errors import CnnlabError, OptionError, ShapeError
from cnnlab.visualize import (
    METHODS,
    deconvnet,
    gradients,
    guided,
    layer_names,
    resolve_layer,
    saliency,
)

# the zoo models whose float64 forward and backward passes fit the test budget: small inputs
# and at most this many parameters
PARAMS = 1_000_000


def _zoo():
    chosen = []
    for name in models.names():
        shape = models.info(name).input_shape
        if len(shape) != 3 or shape[-1] > 64:             # images of small size only
            continue
        model = models.info(name).meta_model
        if model.num_classes is None or models.info(name).task != "classification":
            continue                                      # autoencoders have no class scores
        if sum(p.numel() for p in model.parameters()) <= PARAMS:
            chosen.append(name)
    return chosen


ZOO = _zoo()        # lenet5, lenet5_modern, resnet20..56, nin_cifar, densenet_bc_100_12


class TwoLayers(nn.Module):
    """x (3 values) -> W1 -> ReLU (module, inplace=True) -> W2 -> ReLU (functional) -> W3 -> score.

    For x = (1, 2, -1): z1 = (1, 2, -1), z2 = (-1, 4, 2), score = 2*0 - 4 + 2 = -2. Going back
    from the score, g(a2) = (2, -1, 1), and then
      backprop:  g(z2) = g [z2 > 0] = (0, -1, 1); g(a1) = W2^T g = (-2, 0, 1); [z1 > 0] -> (-2, 0, 0)
      deconvnet: g(z2) = max(g, 0) = (2, 0, 1);   g(a1) = (2, -1, 2);        max(g, 0) -> (2, 0, 2)
      guided:    g(z2) = g [z2 > 0][g > 0] = (0, 0, 1); g(a1) = (0, 1, 0);              -> (0, 1, 0)
    """

    def __init__(self):
        super().__init__()
        d = torch.float64
        self.w1 = nn.Parameter(torch.eye(3, dtype=d))
        self.w2 = nn.Parameter(torch.tensor([[1., -1, 1], [2, 1, -1], [0, 1, 0]], dtype=d))
        self.w3 = nn.Parameter(torch.tensor([[2., -1, 1]], dtype=d))
        self.relu1 = cnn.ReLU(inplace=True)

    def forward(self, x):
        a1 = self.relu1(ops.linear(x.flatten(1), self.w1))
        a2 = ops.relu(ops.linear(a1, self.w2))
        return ops.linear(a2, self.w3)


HAND_X = torch.tensor([1., 2, -1], dtype=torch.float64).reshape(1, 3, 1, 1)   # N x C x H x W
HAND = {"backprop": [-2., 0, 0], "deconvnet": [2., 0, 2], "guided": [0., 1, 0]}


@pytest.mark.parametrize("kernel", ["native", "reference"])
@pytest.mark.parametrize("rule", list(HAND))
def test_the_three_relu_rules_by_hand(rule, kernel):
    net = TwoLayers()
    assert net(HAND_X).item() == -2.0
    with ops.kernels(kernel):
        maps = gradients(net, HAND_X, 0, rule=rule)
    assert maps.shape == (1, 1, 3, 1, 1)
    assert maps.flatten().tolist() == HAND[rule]


def test_named_methods_are_the_rules():
    net = TwoLayers()
    assert set(METHODS) == {"saliency", "deconvnet", "guided"}
    assert deconvnet(net, HAND_X, 0).flatten().tolist() == HAND["deconvnet"]
    assert guided(net, HAND_X, 0).flatten().tolist() == HAND["guided"]
    # the largest |backprop gradient| over the 3 channels: max(|-2|, 0, 0)
    assert METHODS["saliency"](net, HAND_X, 0).tolist() == [[[[2.0]]]]


def _oracle(model, x, layer, channel):
    """d/dx of the class score ``channel`` (layer None) or of the strongest unit of the
    layer's channel, by plain autograd with a hand-made hook; model in eval mode."""
    kept = {}
    handle = None
    if layer is not None:
        handle = resolve_layer(model, layer).register_forward_hook(
            lambda m, i, o: kept.setdefault("out", o))
    x = x.clone().requires_grad_(True)
    mode = model.training
    try:
        scores = model.eval()(x)
    finally:
        model.train(mode)
        if handle is not None:
            handle.remove()
    if layer is None:
        value = scores[:, channel]
    else:
        value = kept["out"][:, channel].reshape(len(x), -1).max(dim=1).values
    return torch.autograd.grad(value.sum(), x)[0]


@pytest.mark.parametrize("name", ZOO)
def test_backprop_is_autograds_gradient_on_the_zoo(name, build, images):
    model = build(name)
    x = images(model, 1)
    first = layer_names(model)[0]
    maps = gradients(model, x, [3, (first, 0)])
    assert maps.shape == (1, 2, *x.shape[1:])
    assert model.training
    torch.testing.assert_close(maps[:, 0], _oracle(model, x, None, 3), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(maps[:, 1], _oracle(model, x, first, 0), rtol=1e-10, atol=1e-12)
    assert maps[:, 0].abs().sum() > 0 and maps[:, 1].abs().sum() > 0


@pytest.mark.parametrize("fixture", ["lenet", "resnet"])
def test_both_kernels_give_equal_maps(fixture, request, images):
    model = request.getfixturevalue(fixture)
    x = images(model, 2)
    targets = [1, (layer_names(model)[2], 3)]
    for rule in HAND:
        native = gradients(model, x, targets, rule)
        with ops.kernels("reference"):
            reference = gradients(model, x, targets, rule)
        torch.testing.assert_close(native, reference, rtol=1e-9, atol=1e-12)
        assert native.abs().sum() > 0


def test_one_call_equals_a_call_per_image_and_target(lenet, images):
    x = images(lenet, 3)
    targets = [0, 7, ("c3", 5), ("c3", 5, (2, 3)), ("f6", 3)]
    for rule in ("backprop", "guided"):
        together = gradients(lenet, x, targets, rule)
        assert together.shape == (3, 5, 1, 32, 32)
        for i in range(3):
            for t, target in enumerate(targets):
                alone = gradients(lenet, x[i:i + 1], target, rule)
                torch.testing.assert_close(together[i, t], alone[0, 0], rtol=1e-12, atol=1e-14)


def test_saliency_is_the_largest_absolute_gradient_over_colours(resnet, images):
    x = images(resnet, 2)
    grads = gradients(resnet, x, [2, 5])
    sal = saliency(resnet, x, [2, 5])
    assert sal.shape == (2, 2, 32, 32)
    torch.testing.assert_close(sal, grads.abs().max(dim=2).values, rtol=0, atol=0)
    assert (sal >= 0).all() and (sal > grads.abs()[:, :, 0]).any()   # not just channel 0


def test_hidden_targets_on_lenet(lenet, images):
    x = images(lenet, 2)
    maps = gradients(lenet, x, [("c3", 5), ("c3", 5, (2, 3)), ("f6", 3)])
    torch.testing.assert_close(maps[:, 0], _oracle(lenet, x, "c3", 5))
    torch.testing.assert_close(maps[:, 2], _oracle(lenet, x, "f6", 3))
    # one unit of C3 (row 2, column 3) sees input rows 4..17 and columns 6..19 (5x5 convs
    # around a 2x2/2 pool): its gradient lives there and nowhere else
    unit = maps[:, 1, 0]                                   # N x 32 x 32
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[4:18, 6:20] = True
    assert (unit[:, ~inside] == 0).all()
    assert (unit[:, inside] != 0).any(dim=1).all()


def test_hidden_target_at_a_position_is_that_units_gradient(lenet, images):
    x = images(lenet, 1).requires_grad_(True)
    kept = {}
    handle = resolve_layer(lenet, "c3").register_forward_hook(lambda m, i, o: kept.update(o=o))
    try:
        lenet.eval()(x)
    finally:
        handle.remove()
        lenet.train()
    expected = torch.autograd.grad(kept["o"][0, 5, 2, 3], x)[0]
    torch.testing.assert_close(gradients(lenet, x.detach(), ("c3", 5, (2, 3)))[:, 0], expected)


def test_the_model_is_left_as_it_was(build, images):
    model = build("lenet5_modern")
    model.features.eval()                             # a mixed state must come back as it was
    model.output.weight.requires_grad_(False)         # and so must frozen parameters
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    x = images(model, 2)
    for method in METHODS.values():
        method(model, x, [1, ("c3", 0)])
    with pytest.raises(ShapeError):
        gradients(model, x, ("c3", 99))               # an error on the way out, too
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad and x.grad is None


def test_runs_inside_no_grad(lenet, images):
    x = images(lenet, 1)
    with torch.no_grad():
        maps = gradients(lenet, x, 4)
    torch.testing.assert_close(maps[:, 0], _oracle(lenet, x, None, 4))


@pytest.mark.parametrize("shape, match", [
    ((2, 3, 32, 32), r"\(2, 3, 32, 32\) do not fit LeNet5Modern, which takes N x 1 x 32 x 32$"),
    ((2, 1, 28, 28), r"which takes N x 1 x 32 x 32$"),
    ((1, 32, 32), r"add a batch dimension with x.unsqueeze\(0\)"),
    ((0, 1, 32, 32), r"no images given"),
])
def test_images_of_the_wrong_shape(lenet, shape, match):
    with pytest.raises(ShapeError, match=match):
        gradients(lenet, torch.zeros(shape, dtype=torch.float64), 0)


def test_bad_rule_and_bad_targets(lenet, images):
    x = images(lenet, 1)
    with pytest.raises(OptionError, match="unknown ReLU backward rule 'smooth'"):
        gradients(lenet, x, 0, rule="smooth")
    with pytest.raises(ShapeError, match="class 10 is out of range"):
        saliency(lenet, x, 10)
    with pytest.raises(CnnlabError, match=r"no layer 'c4': did you mean .*c3.*its layers are c1, s2"):
        guided(lenet, x, ("c4", 0))
    with pytest.raises(ShapeError, match="floating point"):
        gradients(lenet, torch.zeros(1, 1, 32, 32, dtype=torch.uint8), 0)


def test_the_modules_examples_run():
    # the package's name 'gradients' is the function; the module is in sys.modules
    module = importlib.import_module("cnnlab.visualize.gradients")
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0
