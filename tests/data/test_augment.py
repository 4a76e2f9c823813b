"""Training-time augmentation (8.3.4) and test-time augmentation (8.4.1)."""

import pytest
import torch

from cnnlab.data import (
    ColorJitter,
    Compose,
    HorizontalFlip,
    PCALighting,
    RandomCrop,
    RandomRotation,
    RandomTranslate,
    default_augmentation,
    flip_average,
    multi_crop,
    rotate,
    ten_crops,
)
from cnnlab.data.augment import DEFAULTS
from cnnlab.errors import CnnlabError, DataError, ShapeError

ALL = [RandomCrop(6, padding=2), RandomCrop((5, 7), padding=1, padding_mode="reflect"),
       HorizontalFlip(), RandomTranslate(2), RandomRotation(30), ColorJitter(0.4, 0.4),
       Compose([RandomCrop(8, padding=4), HorizontalFlip(), ColorJitter(0.2, 0.2)])]


def g(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def x():
    return torch.rand(16, 3, 8, 8, generator=g(1))


@pytest.mark.parametrize("t", ALL, ids=repr)
def test_shapes_ranges_and_determinism(t, x):
    out = t(x, g(7))
    size = getattr(t, "size", None)
    expect = (size, size) if isinstance(size, int) else size or (8, 8)
    assert out.shape == (16, 3, *expect) and out.dtype == x.dtype
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, t(x, g(7)))                       # same seed, same batch
    assert not torch.equal(out, t(x, g(8)))                   # another seed, another batch
    assert t(x).shape == out.shape                            # global generator works too


def test_flip_is_an_exact_mirror_per_image(x):
    out = HorizontalFlip(0.5)(x, g(3))
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (mirrored | same).all() and mirrored.any() and same.any()
    assert torch.equal(HorizontalFlip(1.0)(x), x.flip(-1))
    assert torch.equal(HorizontalFlip(0.0)(x), x)


def test_crop_without_padding_at_full_size_is_identity(x):
    assert torch.equal(RandomCrop(8)(x, g()), x)
    assert torch.equal(RandomTranslate(0)(x, g()), x)


def test_crops_are_patches_of_the_padded_image(x):
    out = RandomCrop(8, padding=2)(x, g(5))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(len(x)):
        hits = [(i, j) for i in range(5) for j in range(5)
                if torch.equal(padded[n, :, i:i + 8, j:j + 8], out[n])]
        assert hits
    reflect = RandomCrop(12, padding=2, padding_mode="reflect")(x, g())
    assert torch.equal(reflect, torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"))
    with pytest.raises(ShapeError, match="crop 13x13 is larger than the padded image 12x12"):
        RandomCrop(13, padding=2)(x)


def test_translate_shifts_with_zero_fill():
    x = torch.zeros(64, 1, 5, 5)
    x[:, :, 2, 2] = 1
    out = RandomTranslate(1)(x, g())
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(64))        # nothing falls off
    pos = out[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 5, pos % 5
    assert set(rows.tolist()) == {1, 2, 3} and set(cols.tolist()) == {1, 2, 3}


def test_rotation_by_0_and_90_degrees(x):
    assert torch.allclose(rotate(x, 0.0), x, atol=1e-6)
    # on pixel centres a quarter turn moves every sample onto a pixel centre: exact up to
    # cos(90 deg) ~ 6e-17 in the bilinear weights
    assert torch.allclose(rotate(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)
    assert torch.allclose(rotate(x, -90.0), torch.rot90(x, -1, dims=(-2, -1)), atol=1e-5)
    per_image = rotate(x[:2], torch.tensor([0.0, 180.0]))
    assert torch.allclose(per_image[1], x[1].flip(-1, -2), atol=1e-5)
    assert torch.allclose(RandomRotation(0)(x, g()), x, atol=1e-6)


def test_color_jitter_scales_brightness_and_contrast():
    x = torch.full((4, 3, 2, 2), 0.5)
    x[:, :, 0, 0] = 0.2
    bright = ColorJitter(brightness=0.5)(x, g())
    ratio = bright / x
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio))   # one factor each
    assert ((ratio >= 0.5) & (ratio <= 1.5)).all()
    contrast = ColorJitter(contrast=0.5)(x, g())
    assert torch.allclose(contrast.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-6)
    assert torch.equal(ColorJitter()(x, g()), x)


def test_pca_lighting_follows_alexnet():
    # a colour cast along a known direction: RGB values = 0.5 + t * d + small noise
    gen = g(2)
    d = torch.tensor([0.6, 0.64, 0.48])                      # unit vector
    t = torch.randn(64, 1, 6, 6, generator=gen) * 0.05
    images = 0.5 + t * d.view(1, 3, 1, 1) + 0.002 * torch.randn(64, 3, 6, 6, generator=gen)
    pca = PCALighting.fit(images)
    v, lam = pca.eigvecs.double(), pca.eigvals.double()
    assert torch.allclose(v.T @ v, torch.eye(3, dtype=torch.float64), atol=1e-6)
    assert (lam[:-1] <= lam[1:]).all() and lam[-1] == pytest.approx(0.05 ** 2, rel=0.2)
    assert abs(v[:, -1] @ d.double()) == pytest.approx(1, abs=1e-3)    # main axis = the cast
    # the shift: one per image, constant over its pixels, V @ (alpha * lambda)
    out = pca(images, g(9))
    delta = out - images
    assert torch.allclose(delta, delta[:, :, :1, :1].expand_as(delta), atol=1e-6)
    shift = pca.shift(20000, g(9)).double()                   # (n, 3)
    alpha = shift @ v / lam                                  # coordinates on the components
    assert torch.allclose(alpha @ (v * lam).T, shift, atol=1e-9)      # in their span
    assert alpha.mean(0).abs().max() < 0.005
    assert alpha.std(0).tolist() == pytest.approx([0.1, 0.1, 0.1], rel=0.03)   # sigma
    assert torch.allclose(shift[:64].float(), delta[:, :, 0, 0], atol=1e-6)
    with pytest.raises(ShapeError, match="RGB images"):
        PCALighting.fit(torch.rand(2, 1, 4, 4))


def test_pca_shift_of_grey_data_stays_grey():
    grey = torch.rand(32, 1, 5, 5, generator=g(4)).expand(32, 3, 5, 5)
    pca = PCALighting.fit(grey)
    shift = pca.shift(100, g())
    assert torch.allclose(shift[:, 0], shift[:, 1], atol=1e-6)
    assert torch.allclose(shift[:, 1], shift[:, 2], atol=1e-6)


def test_defaults_respect_the_chapter():
    for name in ("digits", "mnist"):
        kinds = {type(t) for t in default_augmentation(name).transforms}
        assert kinds == {RandomTranslate}                     # no reflections, no rotations
    cifar = default_augmentation("cifar10").transforms
    assert RandomCrop(32, padding=4) in cifar and HorizontalFlip() in cifar
    assert set(DEFAULTS) >= {"digits", "mnist", "fashion-mnist", "cifar10", "cifar100"}
    with pytest.raises(DataError, match="no default augmentation for 'imagenet'"):
        default_augmentation("imagenet")


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_test_time_augmentation_gives_probability_rows(x):
    torch.manual_seed(0)
    net = TinyNet().eval()
    for p in (flip_average(net, x), multi_crop(net, x, 6)):
        assert p.shape == (16, 5) and (p >= 0).all()
        assert torch.allclose(p.sum(1), torch.ones(16))
    # flip averaging is invariant to mirroring the input
    assert torch.allclose(flip_average(net, x), flip_average(net, x.flip(-1)), atol=1e-6)
    crops = ten_crops(x, 6)
    assert len(crops) == 10 and torch.equal(crops[0], x[..., :6, :6])
    assert torch.equal(crops[4], x[..., 1:7, 1:7]) and torch.equal(crops[9], crops[4].flip(-1))
    # crop = full size: the 10 views are 5 copies of x and 5 of its mirror
    assert torch.allclose(multi_crop(net, x, 8), flip_average(net, x), atol=1e-6)
    with pytest.raises(ShapeError, match="crop 9x9 is larger than the images 8x8"):
        multi_crop(net, x, 9)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: RandomCrop(4, padding="2"), r"RandomCrop: padding must be an int >= 0 .*got '2'"),
    (lambda: RandomCrop(3.5), r"RandomCrop: size must be a positive int or \(height, .*3.5"),
    (lambda: HorizontalFlip("a"), r"HorizontalFlip: p must be a number in \[0, 1\], got 'a'"),
    (lambda: HorizontalFlip(1.5), r"HorizontalFlip: p must be a number in \[0, 1\], got 1.5"),
    (lambda: RandomTranslate(-2), r"RandomTranslate: max_pixels must be an int >= 0, got -2"),
    (lambda: RandomRotation("a"), r"RandomRotation: degrees must be a number >= 0, got 'a'"),
    (lambda: ColorJitter(1.5), r"ColorJitter: brightness must be a number in \[0, 1\], got 1.5"),
])
def test_bad_settings_are_refused_when_made(make, message):
    with pytest.raises(CnnlabError, match=f"^{message}"):
        make()


def test_bad_inputs_at_call_time():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ShapeError, match=r"^RandomCrop: reflect padding 8 needs images larger "
                                         r"than 8 pixels, got 8x8; lower padding or use "
                                         r"padding_mode='constant'$"):
        RandomCrop(8, padding=8, padding_mode="reflect")(x)
    with pytest.raises(ShapeError, match=r"^rotate: degrees needs one value or one per image "
                                         r"\(2\), got 3$"):
        rotate(x, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(DataError, match=r"^rotate: degrees must be a number or one per image, "
                                        r"got str 'a'"):
        rotate(x, "a")
    with pytest.raises(ShapeError, match=r"^ten_crops: size must be a positive int"):
        ten_crops(x, 2.5)
