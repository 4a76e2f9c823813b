"""Fixtures shared by the tests of cnnlab.visualize: small float64 models and images."""

import pytest
import torch

from cnnlab import models


@pytest.fixture(scope="module", autouse=True)
def _one_thread_each_module(one_thread):
    """One torch thread (tests/conftest.py): the machine is shared and float64 comparisons
    are exact enough."""


def _build(name, seed=0):
    """A zoo model in float64 with weights drawn from ``seed``, left in training mode (the
    visualisations must switch to eval mode themselves and switch back)."""
    torch.manual_seed(seed)
    return models.create(name).double()


def _images(model, n, seed=1):
    """``n`` random images of the model's input shape, float64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *model.default_input_shape, generator=g, dtype=torch.float64)


@pytest.fixture(scope="session")
def build():
    """``build(name, seed=0)``: a zoo model in float64, in training mode."""
    return _build


@pytest.fixture(scope="session")
def images():
    """``images(model, n, seed=1)``: random float64 images of the model's input shape."""
    return _images


@pytest.fixture(scope="module")
def lenet():
    return _build("lenet5_modern")


@pytest.fixture(scope="module")
def resnet():
    return _build("resnet20")
