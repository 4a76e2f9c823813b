"""Augmentation at training time (8.3.4): which transforms, sized for the images trained on,
applied to training batches only, reproducibly."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from cnnlab.data import ImageDataset, load
from cnnlab.data.augment import (
    ColorJitter,
    HorizontalFlip,
    PCALighting,
    RandomCrop,
    RandomRotation,
    RandomTranslate,
    content_scale,
    default_augmentation,
)
from cnnlab.errors import ShapeError
from cnnlab.train import TrainConfig, augmentation, train
from cnnlab.train import loop as loop_mod


class Tiny(nn.Module):
    default_input_shape = (1, 8, 8)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)       # N x 4 x 4 x 4
        return self.fc(x.flatten(1))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    train_ds, test_ds = load("digits", "train"), load("digits", "test")
    return train_ds.subset(torch.arange(160)), test_ds.subset(torch.arange(60))


def rgb(n: int = 48, size: int = 8, split: str = "train") -> ImageDataset:
    g = torch.Generator().manual_seed(n)
    images = torch.rand(n, 3, size, size, generator=g) * torch.tensor([1.0, 0.6, 0.3]).view(
        1, 3, 1, 1)
    return ImageDataset(images, torch.arange(n) % 10, name="cifar10", split=split,
                        classes=[str(i) for i in range(10)], mean=(0.5,) * 3, std=(0.3,) * 3)


def config(tmp_path, **kw):
    # no PNGs (matplotlib, ~0.4 s a run): the tests here read weights and records
    values = {"model": "tiny", "epochs": 2, "batch_size": 32, "lr": 0.05,
              "out": str(tmp_path / "run"), "device": "cpu", "plots": False}
    values.update(kw)
    return TrainConfig(**values)


def weights(tmp_path, name, digits, **kw):
    torch.manual_seed(0)
    train(config(tmp_path, out=str(tmp_path / name), **kw), Tiny(), progress=False,
          datasets=digits)
    return load_file(str(tmp_path / name / "model.safetensors"))


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# -- defaults scale with the size trained on -------------------------------------------------

def test_digits_resized_to_32_translate_by_4_pixels_not_1():
    assert default_augmentation("digits").transforms == (RandomTranslate(1),)     # 8x8
    assert default_augmentation("digits", 32).transforms == (RandomTranslate(4),)
    assert content_scale("digits", 32) == 4.0


def test_padded_mnist_keeps_its_2_pixels_and_crops_keep_the_size():
    assert content_scale("mnist", 32) == 1.0               # 28 -> 32 is padding, not zoom
    assert default_augmentation("mnist", (32, 32)).transforms == (RandomTranslate(2),)
    assert default_augmentation("mnist", 56).transforms == (RandomTranslate(4),)
    cifar = default_augmentation("cifar10", 224).transforms
    assert cifar == (RandomCrop(224, padding=28), HorizontalFlip())
    assert default_augmentation("cifar10", 32).transforms == (RandomCrop(32, padding=4),
                                                              HorizontalFlip())


def test_defaults_keep_the_chapters_warning_at_any_size():
    for name in ("digits", "mnist"):
        for size in (None, 32, 64):
            kinds = {type(t) for t in default_augmentation(name, size).transforms}
            assert kinds == {RandomTranslate}               # no reflections, no rotations
    assert HorizontalFlip() in default_augmentation("fashion-mnist", 32).transforms


# -- the grammar builds the transforms -------------------------------------------------------

def test_named_transforms_are_built_in_order_with_sizes():
    aug = augmentation.build("crop4,flip,translate2,rotate10,jitter0.2,pca0.1", rgb(size=32))
    kinds = [type(t) for t in aug.transforms]
    assert kinds == [RandomCrop, HorizontalFlip, RandomTranslate, RandomRotation, ColorJitter,
                     PCALighting]
    crop, flip, shift, turn, jitter, pca = aug.transforms
    assert (crop.size, crop.padding, flip.p, shift.max_pixels, turn.degrees) == (
        (32, 32), 4, 0.5, 2, 10.0)
    assert (jitter.brightness, jitter.contrast, pca.sigma) == (0.2, 0.2, 0.1)
    # numbers left out: crop 1/8 and translate 1/16 of the side
    crop, shift = augmentation.build("crop,translate", rgb(size=64)).transforms
    assert (crop.padding, shift.max_pixels) == (8, 4)


def test_pca_is_fitted_on_the_training_sets_rgb_covariance():
    ds = rgb(64)
    (pca,) = augmentation.build("pca", ds).transforms
    ref = PCALighting.fit(ds.images)
    assert torch.allclose(pca.eigvals, ref.eigvals) and torch.allclose(pca.eigvecs, ref.eigvecs)
    assert pca.eigvals[-1] > 5 * pca.eigvals[0]          # red varies most in this data


def test_pca_on_grey_images_is_refused(digits):
    with pytest.raises(ShapeError, match=r"augment 'pca' shifts RGB colours, but digits has 1 "
                                         r"channel\(s\); leave out pca"):
        augmentation.build("pca", digits[0])


def test_auto_and_none(digits):
    assert augmentation.build("none", digits[0]) is None
    assert augmentation.build("auto", digits[0]).transforms == (RandomTranslate(1),)
    big = digits[0].subset(torch.arange(4))
    big.images = F.interpolate(big.images, size=32)
    assert augmentation.build("auto", big).transforms == (RandomTranslate(4),)
    other = rgb()
    other.name = "my-photos"                               # no default: nothing
    assert augmentation.build("auto", other) is None


def test_flipping_or_rotating_digits_warns(digits):
    with pytest.warns(UserWarning, match="8.3.4 warns"):
        augmentation.build("translate1,rotate5", digits[0])


# -- in the trainer -------------------------------------------------------------------------

def test_applied_to_training_batches_only_on_images_in_0_1(tmp_path, digits, monkeypatch):
    calls = []
    real = augmentation.build

    def spy_build(text, ds):
        aug = real(text, ds)

        def spy(x, generator=None):
            calls.append((x.shape[0], float(x.min()), float(x.max()), generator))
            return aug(x, generator)
        return spy

    monkeypatch.setattr(loop_mod.augmentation, "build", spy_build)
    train(config(tmp_path, augment="translate1"), Tiny(), progress=False, datasets=digits)
    assert [n for n, *_ in calls] == [32] * 10             # 2 epochs x 5 batches, no eval
    assert all(0 <= lo and hi <= 1 for _, lo, hi, _ in calls)   # before normalisation
    assert all(isinstance(g, torch.Generator) for *_, g in calls)


def test_augmented_runs_are_reproducible_and_differ_from_plain_ones(tmp_path, digits):
    a = weights(tmp_path, "a", digits, augment="translate1,jitter0.3")
    b = weights(tmp_path, "b", digits, augment="translate1,jitter0.3")
    plain = weights(tmp_path, "plain", digits)
    assert same(a, b) and not same(a, plain)
    other_seed = weights(tmp_path, "c", digits, augment="translate1,jitter0.3", seed=1)
    assert not same(a, other_seed)


def test_augmentation_leaves_the_shuffling_alone(tmp_path, digits, monkeypatch):
    orders = []
    real = torch.randperm

    def spy(n, *args, **kwargs):
        out = real(n, *args, **kwargs)
        orders.append(out.clone())
        return out

    monkeypatch.setattr(loop_mod.torch, "randperm", spy)
    weights(tmp_path, "a", digits, augment="translate1")
    with_aug, orders[:] = list(orders), []
    weights(tmp_path, "b", digits)
    assert all(torch.equal(x, y) for x, y in zip(with_aug, orders, strict=True))
