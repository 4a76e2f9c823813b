"""``load``: the embedded digits, resizing, the registry and ImageDataset."""

import re

import numpy as np
import pytest
import torch

from cnnlab.data import DATASETS, ImageDataset, info, load, names, resize
from cnnlab.errors import DataError, ShapeError


def test_registry_lists_the_sets():
    assert names() == ["cifar10", "cifar100", "digits", "fashion-mnist", "mnist"]
    for entry in DATASETS.values():
        assert len(entry.classes) == (100 if entry.name == "cifar100" else 10)
        assert len(set(entry.classes)) == len(entry.classes)
        assert len(entry.mean) == len(entry.std) == entry.shape[0]
        for split, pair in entry.files.items():
            assert split in ("train", "test") and len(pair) == 2
            assert all(len(f.sha256) == 64 and len(f.md5) == 32 for f in pair)


def test_unknown_name_lists_near_matches():
    with pytest.raises(DataError, match=r"unknown data set 'mnsit': did you mean 'mnist'\? "
                                        r"known data sets are cifar10, cifar100, digits, fashion-mnist, mnist"):
        load("mnsit", "train")
    with pytest.raises(DataError, match="unknown split 'val': use 'train' or 'test'"):
        load("digits", "val")


def test_digits_split_is_fixed_stratified_and_complete():
    train, test = load("digits", "train"), load("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 1, 8, 8) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64
    assert train.images.min() == 0 and train.images.max() == 1
    # every grey level is a multiple of 1/16
    assert torch.equal(train.images * 16, (train.images * 16).round())
    # stratified: each class's share of the test split is within one image of 20%
    all_counts = torch.bincount(torch.cat([train.labels, test.labels]))
    assert all_counts.sum() == 1797
    assert ((torch.bincount(test.labels) - all_counts * 360 / 1797).abs() < 1).all()
    # the 1,797 images are all different, and no image is in both splits
    def rows(d):
        return {tuple(row) for row in (d.images.flatten(1) * 16).int().tolist()}

    assert len(rows(train) | rows(test)) == 1797
    again = load("digits", "train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)


def test_digits_statistics_match_the_constants():
    train = load("digits", "train")
    assert info("digits").mean[0] == pytest.approx(train.images.double().mean().item(), abs=5e-5)
    std = train.images.double().std(unbiased=False).item()
    assert info("digits").std[0] == pytest.approx(std, abs=5e-5)


def test_digits_resized_for_lenet():
    small = load("digits", "test")
    big = load("digits", "test", size=32)
    assert big.images.shape == (360, 1, 32, 32)
    assert 0 <= big.images.min() and big.images.max() <= 1
    assert big.mean == small.mean and big.image_shape == (1, 32, 32)
    # bilinear: shrinking the 32x32 back lands near the 8x8 original
    back = resize(big.images, 8)
    assert (back - small.images).abs().mean() < 0.1
    assert load("digits", "test", size=(16, 12)).images.shape == (360, 1, 16, 12)


def test_resize_pads_only_to_the_padding_size():
    x = torch.rand(2, 1, 28, 28)
    padded = resize(x, 32, pad_to=(32, 32))
    assert torch.equal(padded[..., 2:30, 2:30], x) and padded[..., :2, :].abs().sum() == 0
    assert resize(x, 28) is x
    resampled = resize(x, 56, pad_to=(32, 32))
    assert resampled.shape == (2, 1, 56, 56)
    shrunk = resize(x, 14)
    assert shrunk.shape == (2, 1, 14, 14) and 0 <= shrunk.min() and shrunk.max() <= 1
    for bad in (0, (32,), (32, 32, 32), "32", 2.5):
        with pytest.raises(ShapeError, match="size must be a positive int or"):
            resize(x, bad)


def test_image_dataset_indexes_like_a_dataset():
    ds = load("digits", "test")
    image, label = ds[5]
    assert image.shape == (1, 8, 8) and label.dtype == torch.int64
    assert torch.equal(image, ds.images[5])
    sub = ds.subset(torch.arange(10))
    assert isinstance(sub, ImageDataset) and len(sub) == 10 and sub.classes == ds.classes
    assert len(ds.subset(slice(0, 100, 2))) == 50
    assert len(ds.subset(ds.labels == 3)) == int((ds.labels == 3).sum())
    normed = ds.normalize(ds.images)
    np.testing.assert_allclose(normed[0].numpy(),
                               ((ds.images[0] - ds.mean[0]) / ds.std[0]).numpy(), rtol=1e-6)
    assert "digits" in repr(ds) and "n=360" in repr(ds)
    with pytest.raises(ShapeError, match="needs examples"):      # floats need channels
        ImageDataset(torch.zeros(3, 8), torch.zeros(3), name="x", split="train",
                     classes="ab", mean=(0.0,), std=(1.0,))


def test_absurd_sizes_and_selections_are_one_line_errors():
    with pytest.raises(ShapeError, match=r"^cannot resize 1437 images to 1000000000000x"
                                         r"1000000000000: they would take 5,748,0[0,]+ bytes as "
                                         r"float32, more than can be allocated; choose a smaller "
                                         r"size$"):
        load("digits", "train", size=10**12)
    for bad in (3.5, "32", (0, 4), (True, 4)):
        with pytest.raises(ShapeError, match=r"^size must be a positive int or \(height, width\)"):
            load("digits", "test", size=bad)
    test = load("digits", "test")
    with pytest.raises(DataError, match=r"^subset: cannot select those examples of 360 \(index "
                                        r"360 is out of bounds.*\); pass indices in 0..359"):
        test.subset([0, 360])
    with pytest.raises(DataError, match=r"^subset: cannot select those examples of 360 .*a "
                                        r"boolean mask of that length"):
        test.subset(torch.ones(5, dtype=torch.bool))
    assert len(test.subset(torch.arange(360) < 7)) == 7


@pytest.mark.parametrize("name, size, message", [
    ("digits", (16, 8, 8), "digits holds images, but the model takes clips ((T, H, W) = (16, 8, 8))"),
    ("digits", (56,), "digits holds images, but the model takes sentences"),
    ("text", (8, 8), "text holds sentences, but the model takes images ((H, W) = (8, 8))"),
    ("video", (56,), "video holds clips, but the model takes sentences ((L,) = (56,))"),
])
def test_a_size_for_other_examples_names_both_kinds(tmp_path, name, size, message):
    # refused before any file is read: the size is a model's input of another kind
    with pytest.raises(DataError, match=re.escape(message)):
        load(name, "train", data_dir=tmp_path, size=size)
