"""The real MNIST and Fashion-MNIST files in ../shared/data (skipped where they are absent)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import info, load, read_idx

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")

# class counts published in shared/data/README.md
MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def needs(name):
    return pytest.mark.skipif(not (SHARED / name).is_dir(),
                              reason=f"{name} files not present at {SHARED / name}")


@needs("mnist")
def test_mnist_counts_and_pixels():
    labels = read_idx(SHARED / "mnist" / "train-labels-idx1-ubyte.gz", magic=2049)
    assert np.bincount(labels).tolist() == MNIST_TRAIN
    test = load("mnist", "test", data_dir=SHARED)           # <dir>/<name>/<file>
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.float32
    assert test.labels.dtype == torch.int64
    assert torch.bincount(test.labels).tolist() == MNIST_TEST
    assert test.images.min() == 0 and test.images.max() == 1
    assert (test.num_classes, test.in_channels, test.classes[3]) == (10, 1, "3")


@needs("mnist")
def test_mnist_padded_to_lenet_field():
    plain = load("mnist", "test", data_dir=SHARED / "mnist")  # <dir>/<file>
    padded = load("mnist", "test", data_dir=SHARED / "mnist", size=32)
    assert padded.images.shape == (10000, 1, 32, 32)
    assert torch.equal(padded.images[..., 2:30, 2:30], plain.images)
    border = padded.images.clone()
    border[..., 2:30, 2:30] = 0
    assert border.abs().sum() == 0
    assert load("mnist", "test", data_dir=SHARED, size=(20, 24)).images.shape[-2:] == (20, 24)


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs(n)) for n in ("mnist",
                                                                           "fashion-mnist")])
def test_normalisation_constants_match_the_training_split(name):
    images = read_idx(SHARED / name / "train-images-idx3-ubyte.gz", magic=2051)
    assert images.shape == (60000, 28, 28)
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    entry = info(name)
    assert entry.mean[0] == pytest.approx(mean, abs=5e-5)
    assert entry.std[0] == pytest.approx(std, abs=5e-5)


@needs("fashion-mnist")
def test_fashion_is_balanced():
    test = load("fashion-mnist", "test", data_dir=SHARED)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.classes[9] == "Ankle boot"
