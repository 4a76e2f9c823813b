"""First-layer filters and feature maps."""

import doctest
import importlib

import pytest
import torch
from torch import nn

from cnnlab import models, ops
from cnnlab.errors import ModelError, ShapeError
from cnnlab.visualize import feature_maps, first_filters, resolve_layer


def test_first_filters_are_c1s(lenet):
    filters = first_filters(lenet)
    assert filters.shape == (6, 1, 5, 5)
    assert torch.equal(filters, lenet.features.c1.weight)
    assert not filters.requires_grad
    filters.zero_()                                     # a copy: the model keeps its weights
    assert lenet.features.c1.weight.abs().sum() > 0


# one model of each kind of first stage: LeNet-5's plain C1, a fractal block whose columns all
# start on the image, an Inception stem, a highway network's stem, a ResNet's conv1
@pytest.mark.parametrize("name", ["lenet5", "fractalnet20_cifar", "inception_v1_cifar",
                                  "highway_cifar", "resnet20"])
def test_first_filters_belong_to_a_convolution_of_the_image(name):
    with torch.device("meta"):
        model = models.create(name).eval()
        x = torch.zeros(1, *model.default_input_shape)
    fed = {}

    def note(module, args):                         # was this convolution given the image?
        fed.setdefault(module, args[0] is x)

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_pre_hook(note) for m in convs]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    chosen = [m for m in convs if m.weight.shape == first_filters(model).shape and fed.get(m)]
    assert chosen, f"{name}: the filters returned are not those of a convolution of the image"


def test_a_model_without_convolutions():
    with pytest.raises(ModelError, match="Sequential has no convolution"):
        first_filters(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize("layer, shape", [("c1", (2, 6, 28, 28)), ("s2", (2, 6, 14, 14)),
                                          ("c3", (2, 16, 10, 10)), ("f6", (2, 84))])
def test_feature_maps_are_the_layers_output(lenet, images, layer, shape):
    x = images(lenet, 2)
    kept = {}
    handle = resolve_layer(lenet, layer).register_forward_hook(lambda m, i, o: kept.update(o=o))
    try:
        with torch.no_grad():
            lenet.eval()(x)
    finally:
        handle.remove()
        lenet.train()
    maps = feature_maps(lenet, x, layer)
    assert maps.shape == shape and not maps.requires_grad
    torch.testing.assert_close(maps, kept["o"], rtol=0, atol=0)
    assert lenet.training and all(p.grad is None for p in lenet.parameters())


def test_feature_maps_on_both_kernels(resnet, images):
    x = images(resnet, 2)
    native = feature_maps(resnet, x, "stage2")
    with ops.kernels("reference"):
        reference = feature_maps(resnet, x, "stage2")
    assert native.shape == (2, 32, 16, 16)
    torch.testing.assert_close(native, reference, rtol=1e-10, atol=1e-12)


def test_feature_maps_bad_input(lenet, images):
    with pytest.raises(ShapeError, match=r"which takes N x 1 x 32 x 32"):
        feature_maps(lenet, torch.zeros(1, 1, 28, 28, dtype=torch.float64), "c3")
    with pytest.raises(ModelError, match=r"no layer 'c9'"):
        feature_maps(lenet, images(lenet, 1), "c9")
    assert lenet.training


def test_the_modules_example_runs():
    module = importlib.import_module("cnnlab.visualize.maps")
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0
