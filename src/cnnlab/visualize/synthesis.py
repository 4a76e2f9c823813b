"""Synthesised images (8.5.1, Eq. 8.4): the input a class score or a hidden channel would like
to see, found by gradient ascent on the image while the learned weights stay fixed.

The chapter's objective is ``J(x) = o(x) - lambda * ||x||^2``, climbed from a zero image with
``x <- x + alpha * dJ/dx`` (Eq. 8.4). :func:`synthesize` does exactly that when its
regularisers are off (``noise=0, jitter=0, blur=0, clip=None, parameterization="pixel"``).
The additions that make the pictures readable (Yosinski et al. 2015; Olah et al. 2017, Lucid):

- ``noise``: start from Gaussian noise of that standard deviation instead of the zero image. A
  trained ReLU network can be dead at the zero image, every unit of a layer negative there, so
  that dJ/dx = 0 and Eq. 8.4 never moves: lenet5_modern on MNIST is (its C1 units all are);

- ``jitter``: shift the image by up to that many pixels (circularly, the same random shift for
  every image of the batch, drawn from ``seed``) before each forward pass, so the image must
  work at every nearby position instead of exploiting one exact pixel pattern;
- ``blur``: every ``blur_every`` steps, smooth the image with a Gaussian of that standard
  deviation (in pixels; circular, applied to the spectrum), damping high frequencies;
- ``clip``: after every step, project each pixel into ``(lo, hi)`` of the model's input space,
  the data range ``[0, 1]`` as the model sees it (:func:`input_range`);
- ``parameterization="fourier"``: climb in a scaled Fourier basis (image = inverse real FFT of
  the spectrum times ``1 / frequency``), so a gradient step moves low frequencies more than
  high ones: Lucid's spatially decorrelated parameterisation.

>>> import torch
>>> from cnnlab import models
>>> model = models.create("lenet5_modern").eval()
>>> lo, hi = input_range((0.1307,), (0.3081,))          # [0, 1] pixels, normalised
>>> x = synthesize(model, [3, ("c3", 7)], steps=5, clip=(lo, hi))
>>> x.shape                                              # targets x C x H x W
torch.Size([2, 1, 32, 32])
>>> bool(((x >= lo[0] - 1e-6) & (x <= hi[0] + 1e-6)).all())
True
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from cnnlab.errors import OptionError, ShapeError
from cnnlab.train.run import device_of
from cnnlab.visualize.targets import TargetLike, as_targets, target_values

__all__ = ["PARAMETERIZATIONS", "Parameterization", "input_range", "synthesize", "to_pixels"]

Parameterization = Literal["pixel", "fourier"]
PARAMETERIZATIONS: tuple[Parameterization, ...] = ("pixel", "fourier")
Range = tuple[float | Sequence[float], float | Sequence[float]]
ProgressFn = Callable[[int, torch.Tensor], None]      # (step, objective J per target (T,))

# defaults tuned on lenet5_modern / MNIST (benchmarks/class_images.py measures them)
STEPS = 200
LR = 1.0
L2 = 0.01
JITTER = 2
BLUR = 0.5
BLUR_EVERY = 4
NOISE = 0.5


def input_range(mean: Sequence[float], std: Sequence[float],
                data_range: tuple[float, float] = (0.0, 1.0)
                ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(lo, hi)`` per channel: the data range of raw pixels, normalised with ``mean`` and
    ``std`` as the model's inputs are (``(p - mean) / std``); what ``clip`` takes.

    >>> input_range((0.5,), (0.25,))
    ((-2.0,), (2.0,))
    """
    mean_, std_ = _channels(mean, std)
    a, b = data_range
    if not a < b:
        raise OptionError(f"data_range {data_range!r} is empty: give (low, high) with low < high")
    return (tuple((a - m) / s for m, s in zip(mean_, std_, strict=True)),
            tuple((b - m) / s for m, s in zip(mean_, std_, strict=True)))


def to_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
              stretch: bool = False) -> torch.Tensor:
    """Images in the model's input space (N, C, H, W) back to displayable ``[0, 1]`` pixels:
    ``x * std + mean``, clamped. ``stretch``: map each image's own min..max onto 0..1 instead
    (for unclipped images, such as plain Eq. 8.4's, whose values leave the data range).

    >>> to_pixels(torch.tensor([[[[-2.0, 0.0, 9.0]]]]), (0.5,), (0.25,))
    tensor([[[[0.0000, 0.5000, 1.0000]]]])
    """
    if x.dim() != 4:
        raise ShapeError(f"to_pixels takes images N x C x H x W, got shape {tuple(x.shape)}")
    mean_, std_ = _channels(mean, std)
    if len(mean_) != x.shape[1]:
        raise ShapeError(f"{len(mean_)} channel mean/std given for images with {x.shape[1]} "
                         "channels; give one mean and std per channel")
    if stretch:
        flat = x.detach().reshape(len(x), -1)
        lo, hi = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
        return (x.detach() - lo) / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)
    m = torch.tensor(mean_, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std_, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x.detach() * s + m).clamp(0.0, 1.0)


def synthesize(model: nn.Module, targets: TargetLike | Sequence[TargetLike], *,
               steps: int = STEPS, lr: float = LR, l2: float = L2, jitter: int = JITTER,
               blur: float = BLUR, blur_every: int = BLUR_EVERY, clip: Range | None = None,
               parameterization: Parameterization = "pixel", decay: float = 1.0,
               noise: float = NOISE,
               shape: Sequence[int] | None = None, seed: int = 0,
               progress: bool | ProgressFn = False) -> torch.Tensor:
    """One image per target (T, C, H, W) in the model's input space, climbing
    ``J = o - l2 * ||x||^2`` from a zero image (Eq. 8.4; ``l2`` is the chapter's lambda,
    ``lr`` its alpha), all targets in one batch, each image its own target.

    A class target climbs its score before the softmax; a hidden channel without a position
    the mean of its map, with a position that unit. ``clip``: ``(lo, hi)``, scalars or one per
    channel (:func:`input_range` derives them from a run's mean and std); ``None`` leaves
    pixels unbounded, as the chapter does. ``decay``: the Fourier basis scales frequency ``f``
    by ``1 / f**decay``. ``shape``: (C, H, W), by default the model's ``default_input_shape``.
    ``progress``: True prints J every tenth of the run to stderr; a function gets
    ``(step, J per target)`` after each step. The same ``seed`` gives the same images. The
    model runs in eval mode (each module's mode is restored) and no parameter gradient is
    accumulated.

    ``noise``: the start is the zero image plus Gaussian noise of this standard deviation
    (drawn from ``seed``; the same start for every target).

    With ``noise=0, jitter=0, blur=0, clip=None, parameterization="pixel"`` this is Eq. 8.4
    exactly.
    """
    chosen = as_targets(targets)
    _check_settings(steps, lr, l2, jitter, blur, blur_every, parameterization, decay, noise)
    c, h, w = _image_shape(model, shape)
    first = next(iter(model.parameters()), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    device = device_of(model)
    bounds = None if clip is None else _bounds(clip, c, dtype, device)
    image = _Image(len(chosen), c, h, w, parameterization, decay, dtype, device)
    draws = torch.Generator().manual_seed(seed)
    if noise:                      # one start for every target: a batch equals separate calls
        with torch.no_grad():
            start = noise * torch.randn(1, c, h, w, generator=draws, dtype=torch.float64)
            image.set_pixels(start.to(dtype=dtype, device=device).expand(len(chosen), -1, -1, -1))
    blur_gain = _gaussian_gain(h, w, blur, dtype, device) if blur > 0 else None
    report = _reporter(progress, steps)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for step in range(1, steps + 1):
            x = image.pixels()                                        # T x C x H x W
            dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=draws).tolist()
                      if jitter else (0, 0))
            seen = torch.roll(x, (dy, dx), dims=(2, 3)) if jitter else x
            o = target_values(model, seen, chosen, reduce="mean").diagonal()   # T
            j = o - l2 * x.pow(2).sum(dim=(1, 2, 3))                          # Eq. 8.4's J
            (grad,) = torch.autograd.grad(j.sum(), [image.param])
            with torch.no_grad():
                image.param.add_(grad, alpha=lr)                              # x += a dJ/dx
                if blur_gain is not None and step % blur_every == 0:
                    image.filter(blur_gain)
                if bounds is not None:
                    image.clamp(*bounds)
            report(step, j.detach())
        return image.pixels().detach()
    finally:
        for m, training in modes.items():
            m.train(training)


class _Image:
    """The variable climbed: pixels directly, or a scaled spectrum whose inverse real FFT is
    the image (Lucid's ``fft_image``). Both start from the zero image."""

    def __init__(self, n: int, c: int, h: int, w: int, kind: Parameterization, decay: float,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.kind, self.size = kind, (h, w)
        if kind == "pixel":
            self.param = torch.zeros(n, c, h, w, dtype=dtype, device=device, requires_grad=True)
            return
        freqs = _frequencies(h, w, dtype, device)                       # H x (W//2 + 1)
        scale = freqs.clamp_min(1.0 / max(h, w)).pow(-decay)
        # unit mean square, so that ``lr`` means about as much as for pixels
        self.scale = scale / scale.pow(2).mean().sqrt()
        self.param = torch.zeros(n, c, h, w // 2 + 1, 2, dtype=dtype, device=device,
                                 requires_grad=True)

    def pixels(self) -> torch.Tensor:
        if self.kind == "pixel":
            return self.param
        spectrum = torch.view_as_complex(self.param) * self.scale       # T x C x H x W//2+1
        x: torch.Tensor = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        return x

    def set_pixels(self, x: torch.Tensor) -> None:
        if self.kind == "pixel":
            self.param.copy_(x)
        else:
            spectrum = torch.fft.rfft2(x, norm="ortho") / self.scale
            self.param.copy_(torch.view_as_real(spectrum))

    def filter(self, gain: torch.Tensor) -> None:
        """Multiply the image's spectrum by ``gain`` (H x W//2+1): a circular blur."""
        if self.kind == "fourier":
            self.param.mul_(gain.unsqueeze(-1))
        else:
            spectrum = torch.fft.rfft2(self.param, norm="ortho") * gain
            self.param.copy_(torch.fft.irfft2(spectrum, s=self.size, norm="ortho"))

    def clamp(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Project every pixel into [lo, hi] (exact for both parameterisations)."""
        self.set_pixels(torch.maximum(torch.minimum(self.pixels(), hi), lo))


def _frequencies(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """|f| in cycles per pixel of each rfft2 coefficient: H x (W//2 + 1)."""
    fy: torch.Tensor = torch.fft.fftfreq(h, dtype=dtype, device=device).view(-1, 1)
    fx: torch.Tensor = torch.fft.rfftfreq(w, dtype=dtype, device=device).view(1, -1)
    return (fy * fy + fx * fx).sqrt()


def _gaussian_gain(h: int, w: int, sigma: float, dtype: torch.dtype, device: torch.device
                   ) -> torch.Tensor:
    """The Fourier transform of a Gaussian of ``sigma`` pixels: exp(-2 pi^2 sigma^2 |f|^2)."""
    f = _frequencies(h, w, dtype, device)
    return torch.exp(-2.0 * math.pi ** 2 * sigma ** 2 * f * f)


def _channels(mean: Sequence[float], std: Sequence[float]
              ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean_, std_ = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if not mean_ or len(mean_) != len(std_):
        raise ShapeError(f"mean {mean_} and std {std_} must give one value per channel each")
    if any(not s > 0 for s in std_):
        raise OptionError(f"std {std_} must be > 0 in every channel")
    return mean_, std_


def _bounds(clip: Range, c: int, dtype: torch.dtype, device: torch.device
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``clip`` as two (1, C, 1, 1) tensors, checked."""
    try:
        lo, hi = (torch.as_tensor(v, dtype=dtype, device=device).reshape(-1) for v in clip)
    except (TypeError, ValueError):
        raise OptionError(f"clip must be (lo, hi), scalars or one per channel, got {clip!r}; "
                          "see input_range(mean, std)") from None
    if lo.numel() not in (1, c) or hi.numel() not in (1, c):
        raise ShapeError(f"clip {clip!r} gives {lo.numel()} and {hi.numel()} values for an "
                         f"image of {c} channels; give scalars or {c} values each")
    lo, hi = lo.expand(c).reshape(1, c, 1, 1), hi.expand(c).reshape(1, c, 1, 1)
    if not bool((lo < hi).all()):
        raise OptionError(f"clip {clip!r} is empty: every lo must be below its hi")
    return lo, hi


def _image_shape(model: nn.Module, shape: Sequence[int] | None) -> tuple[int, int, int]:
    default = getattr(model, "default_input_shape", None)
    if shape is None and default is None:
        raise ShapeError(f"{type(model).__name__} has no default_input_shape: pass "
                         "shape=(C, H, W) of its input images")
    wanted = tuple(int(v) for v in (shape if shape is not None else default))  # type: ignore[union-attr]
    if len(wanted) != 3 or min(wanted) < 1:
        raise ShapeError(f"shape must be (C, H, W) of positive sizes, got {tuple(wanted)}")
    if default is not None and wanted != tuple(default):
        raise ShapeError(f"shape {wanted} does not fit {type(model).__name__}, which takes "
                         f"{tuple(default)} images; leave shape out or pass {tuple(default)}")
    c, h, w = wanted
    return c, h, w


def _check_settings(steps: int, lr: float, l2: float, jitter: int, blur: float,
                    blur_every: int, parameterization: str, decay: float, noise: float) -> None:
    def positive_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    def number(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    checks = [("steps", steps, positive_int(steps), "an int >= 1"),
              ("lr", lr, number(lr) and lr > 0, "a number > 0"),
              ("l2", l2, number(l2) and l2 >= 0, "a number >= 0 (the chapter's lambda)"),
              ("jitter", jitter, isinstance(jitter, int) and not isinstance(jitter, bool)
               and jitter >= 0, "an int >= 0 (pixels; 0: off)"),
              ("blur", blur, number(blur) and blur >= 0, "a number >= 0 (pixels; 0: off)"),
              ("blur_every", blur_every, positive_int(blur_every), "an int >= 1 (steps)"),
              ("decay", decay, number(decay) and decay >= 0, "a number >= 0"),
              ("noise", noise, number(noise) and noise >= 0, "a number >= 0 (0: the zero image)")]
    for name, value, ok, wanted in checks:
        if not ok:
            raise OptionError(f"{name}={value!r} is out of range: {name} must be {wanted}")
    if parameterization not in PARAMETERIZATIONS:
        raise OptionError(f"unknown parameterization {parameterization!r}: use one of "
                          f"{', '.join(map(repr, PARAMETERIZATIONS))}")


def _reporter(progress: bool | ProgressFn, steps: int) -> ProgressFn:
    if callable(progress):
        return progress
    every = max(1, steps // 10)

    def report(step: int, j: torch.Tensor) -> None:
        if progress and (step % every == 0 or step == steps):
            print(f"step {step}/{steps}: J mean {j.mean().item():.4g}, min "
                  f"{j.min().item():.4g}, max {j.max().item():.4g}", file=sys.stderr, flush=True)

    return report
