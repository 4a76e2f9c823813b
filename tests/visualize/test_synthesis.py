"""Synthesised images (8.5.1, Eq. 8.4): the chapter's plain ascent checked in closed form, and
the regularisers (jitter, blur, clipping, the Fourier basis) on tiny models."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab import ops
from cnnlab.errors import CnnlabError, OptionError, ShapeError
from cnnlab.visualize.synthesis import input_range, synthesize, to_pixels

PLAIN = {"noise": 0.0, "jitter": 0, "blur": 0.0, "clip": None, "parameterization": "pixel"}




class LinearScore(nn.Module):
    """o = w . x for one class: Eq. 8.4's optimum is known in closed form, x* = w / (2 lambda)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.default_input_shape = tuple(w.shape)
        self.flatten = cnn.Flatten()
        self.output = cnn.Linear(w.numel(), 1, bias=False, dtype=w.dtype)
        with torch.no_grad():
            self.output.weight.copy_(w.reshape(1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.output(self.flatten(x))
        return out


class TinyNet(nn.Module):
    """conv1 (3 maps 3x3) -> ReLU -> pool -> fc (4 classes), on C x 8 x 8 images."""

    def __init__(self, in_channels: int = 1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.default_input_shape = (in_channels, 8, 8)
        self.chapter_layers = {"conv1": "features.conv1", "fc": "fc"}
        self.features = nn.Sequential(OrderedDict(
            conv1=cnn.Conv2d(in_channels, 3, 3, padding=1), relu=cnn.ReLU(),   # 3 x 8 x 8
            pool=cnn.MaxPool2d(2), flatten=cnn.Flatten()))                      # 48
        self.drop = cnn.Dropout(0.5)
        self.fc = cnn.Linear(48, 4)
        with torch.no_grad():              # live ReLUs at the zero image, where Eq. 8.4 starts
            self.features.conv1.bias.uniform_(0.05, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.drop(self.features(x)))
        return out


def _w(shape: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
    return torch.arange(1.0, 1.0 + math.prod(shape), dtype=torch.float64).reshape(shape) / 4 - 0.8


def test_eq_8_4_closed_form_on_a_linear_score():
    # x_{k+1} = x_k + a (w - 2 l x_k) from 0 gives x_k = w / (2 l) * (1 - (1 - 2 a l)^k)
    w, a, lam = _w(), 0.1, 0.5
    model = LinearScore(w).double()
    for k in (1, 3, 7):
        x = synthesize(model, 0, steps=k, lr=a, l2=lam, **PLAIN)[0]
        torch.testing.assert_close(x, w / (2 * lam) * (1 - (1 - 2 * a * lam) ** k),
                                   rtol=1e-12, atol=1e-12)
    optimum = synthesize(model, 0, steps=60, lr=0.5, l2=lam, **PLAIN)[0]   # contraction 1/2
    torch.testing.assert_close(optimum, w / (2 * lam), rtol=1e-9, atol=1e-9)


def test_eq_8_4_equals_a_hand_written_loop_on_a_cnn():
    model = TinyNet().double()
    target, a, lam = 2, 0.3, 0.05
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    model.eval()
    for _ in range(4):
        x.requires_grad_(True)
        j = model(x)[0, target] - lam * (x * x).sum()
        (g,) = torch.autograd.grad(j, x)
        x = (x + a * g).detach()
    got = synthesize(model, target, steps=4, lr=a, l2=lam, **PLAIN)
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_blur_multiplies_each_frequency_by_the_gaussian_gain():
    # one step on o = w . x with w a checkerboard (frequency (1/2, 1/2)), then one blur
    checker = (torch.arange(8).view(-1, 1) + torch.arange(8).view(1, -1)) % 2 * 2.0 - 1
    model = LinearScore(checker.view(1, 8, 8).double())
    sigma, a = 0.6, 0.5
    x = synthesize(model, 0, steps=1, lr=a, l2=0.0, noise=0.0, jitter=0, blur=sigma,
                   blur_every=1)
    gain = math.exp(-2 * math.pi ** 2 * sigma ** 2 * 0.5)
    torch.testing.assert_close(x[0, 0], a * gain * checker.double(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("random", [{"noise": 0.0, "jitter": 2}, {"noise": 0.3, "jitter": 0}],
                         ids=["jitter", "noise"])
def test_same_seed_same_images_other_seed_other_images(random):
    model = TinyNet()
    kw = {"steps": 12, "lr": 0.5, "blur": 0.5, "blur_every": 3, **random}
    a = synthesize(model, [1, ("conv1", 2)], seed=3, **kw)
    torch.testing.assert_close(a, synthesize(model, [1, ("conv1", 2)], seed=3, **kw),
                               rtol=0, atol=0)
    assert not torch.equal(a, synthesize(model, [1, ("conv1", 2)], seed=4, **kw))


def test_a_network_dead_at_the_zero_image_needs_a_noisy_start():
    model = TinyNet()
    with torch.no_grad():
        model.features.conv1.bias.fill_(-0.5)        # every conv1 unit negative at x = 0
    still = synthesize(model, [0, 1], steps=10, **PLAIN)
    assert torch.equal(still, torch.zeros_like(still))                    # dJ/dx = 0 there
    moved = synthesize(model, [0, 1], steps=10, **{**PLAIN, "noise": 1.0})
    with torch.no_grad():
        start = model.fc.bias[:2]                    # the scores at (and near) the dead start
        assert (_own(model, moved, [0, 1]) > start + 0.1).all()


@pytest.mark.parametrize("parameterization", ["pixel", "fourier"])
def test_clip_keeps_every_pixel_in_range_per_channel(parameterization):
    model = TinyNet(in_channels=2)
    lo, hi = input_range((0.4, 0.5), (0.2, 0.25))          # (-2, -2), (3, 2)
    x = synthesize(model, [0, 3], steps=25, lr=20.0, l2=0.0, clip=(lo, hi),
                   parameterization=parameterization)
    for ch in range(2):
        assert x[:, ch].min() >= lo[ch] - 1e-5 and x[:, ch].max() <= hi[ch] + 1e-5
        at_bound = ((x[:, ch] - lo[ch]).abs() < 1e-5) | ((x[:, ch] - hi[ch]).abs() < 1e-5)
        assert at_bound.any()                           # the bounds are reached, not just kept
    pixels = to_pixels(x, (0.4, 0.5), (0.2, 0.25))
    assert pixels.min() >= 0 and pixels.max() <= 1


@pytest.mark.parametrize("settings", [
    {"jitter": 2}, {"jitter": 0, "blur": 0.7, "blur_every": 2},
    {"parameterization": "fourier", "jitter": 1}, {"parameterization": "fourier", "decay": 0.5},
], ids=["jitter", "blur", "fourier", "fourier-decay"])
@pytest.mark.parametrize("targets", [[0, 3], [("conv1", 1), ("conv1", 2, (3, 4)), ("fc", 2)]],
                         ids=["classes", "hidden"])
def test_each_regulariser_raises_its_targets_from_the_zero_image(settings, targets):
    model = TinyNet().eval()
    x = synthesize(model, targets, steps=30, lr=0.2, l2=0.01, noise=0.0, **settings)
    assert x.shape == (len(targets), 1, 8, 8) and torch.isfinite(x).all()
    with torch.no_grad():
        start = _own(model, torch.zeros_like(x), targets)
        reached = _own(model, x, targets)
    assert (reached > start + 1e-3).all(), (start, reached)


def _own(model, x, targets):
    from cnnlab.visualize.targets import target_values

    return target_values(model, x, targets, reduce="mean").diagonal()


@pytest.mark.parametrize("parameterization", ["pixel", "fourier"])
def test_a_batch_of_targets_equals_separate_calls(parameterization):
    model = TinyNet()
    targets = [0, 3, ("conv1", 2)]
    kw = {"steps": 10, "lr": 0.3, "jitter": 1, "blur": 0.5, "blur_every": 2, "seed": 5,
          "clip": (-1.0, 2.0), "parameterization": parameterization}
    together = synthesize(model, targets, **kw)
    alone = torch.cat([synthesize(model, [t], **kw) for t in targets])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_mode_restored_and_no_parameter_gradient_kept():
    model = TinyNet().train()
    model.features.eval()                                   # a mixed mode survives too
    before = [p.detach().clone() for p in model.parameters()]
    x = synthesize(model, [1, 2], steps=3)
    assert model.training and not model.features.training and model.drop.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    # dropout was off during the ascent: the same images as from an eval-mode model
    torch.testing.assert_close(x, synthesize(model.eval(), [1, 2], steps=3), rtol=0, atol=0)


def test_reference_kernel_gives_the_same_images_in_float64():
    model = TinyNet().double()
    kw = {"steps": 6, "lr": 0.4, "jitter": 1, "blur": 0.5, "blur_every": 2,
          "clip": (-1.0, 1.0), "parameterization": "fourier"}
    native = synthesize(model, [1, ("conv1", 0)], **kw)
    with ops.kernels("reference"):
        reference = synthesize(model, [1, ("conv1", 0)], **kw)
    assert reference.dtype == torch.float64
    torch.testing.assert_close(reference, native, rtol=1e-10, atol=1e-10)


def test_progress_function_and_printout(capsys):
    seen = []
    synthesize(TinyNet(), [0, 1], steps=5, progress=lambda step, j: seen.append((step, j.shape)))
    assert seen == [(s, torch.Size([2])) for s in range(1, 6)]
    synthesize(TinyNet(), 0, steps=20, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("step 20/20: J mean")


def test_input_range_and_to_pixels_invert_the_normalisation():
    lo, hi = input_range((0.5, 0.25), (0.25, 0.5))
    assert lo == (-2.0, -0.5) and hi == (2.0, 1.5)
    pixels = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    mean, std = torch.tensor([0.5, 0.25]).view(1, 2, 1, 1), torch.tensor([0.25, 0.5]).view(1, 2, 1, 1)
    torch.testing.assert_close(to_pixels((pixels - mean) / std, (0.5, 0.25), (0.25, 0.5)), pixels)
    stretched = to_pixels(torch.tensor([[[[-3.0, 1.0, 5.0]]]]), (0.5,), (0.25,), stretch=True)
    assert stretched.flatten().tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"steps": 0}, "steps=0"), ({"steps": 2.5}, "steps=2.5"), ({"steps": True}, "steps=True"),
    ({"lr": 0}, "lr=0"), ({"lr": float("nan")}, "lr=nan"), ({"l2": -0.1}, "l2=-0.1"),
    ({"jitter": -1}, "jitter=-1"), ({"blur": -1.0}, "blur=-1.0"),
    ({"blur_every": 0}, "blur_every=0"), ({"noise": -1}, "noise=-1"), ({"parameterization": "wavelet"}, "'wavelet'"),
    ({"clip": (1.0, -1.0)}, "is empty"), ({"clip": ((0.0, 0.0, 0.0), 1.0)}, "3 and 1 values"),
    ({"clip": 3.0}, "clip must be (lo, hi)"), ({"shape": (1, 28, 28)}, "(1, 8, 8)"),
])
def test_bad_settings_raise_one_line_errors(kwargs, words):
    with pytest.raises(CnnlabError) as err:
        synthesize(TinyNet(), 0, steps=kwargs.pop("steps", 1), **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, OptionError | ShapeError)


def test_bad_targets_and_shapes():
    with pytest.raises(ShapeError, match="class 9 is out of range"):
        synthesize(TinyNet(), 9, steps=1)
    with pytest.raises(CnnlabError, match="has no layer 'conv2'"):
        synthesize(TinyNet(), ("conv2", 0), steps=1)
    bare = nn.Sequential(cnn.Flatten(), cnn.Linear(4, 2))
    with pytest.raises(ShapeError, match=r"pass shape=\(C, H, W\)"):
        synthesize(bare, 0, steps=1)
    assert synthesize(bare, [0, 1], steps=2, shape=(1, 2, 2)).shape == (2, 1, 2, 2)
    with pytest.raises(ShapeError, match="one mean and std per channel"):
        to_pixels(torch.zeros(1, 3, 2, 2), (0.5,), (0.25,))


@pytest.mark.parametrize("parameterization", ["pixel", "fourier"])
def test_odd_sizes_without_a_default_shape(parameterization):
    torch.manual_seed(1)
    bare = nn.Sequential(cnn.Flatten(), cnn.Linear(2 * 7 * 9, 3))
    x = synthesize(bare, [0, 2], steps=8, lr=2.0, noise=0.0, jitter=0, shape=(2, 7, 9),
                   clip=(-0.5, 0.5), parameterization=parameterization)
    assert x.shape == (2, 2, 7, 9) and x.abs().max() <= 0.5 + 1e-5
    with torch.no_grad():
        assert (bare(x)[[0, 1], [0, 2]] > bare(torch.zeros(1, 2, 7, 9))[0, [0, 2]]).all()
