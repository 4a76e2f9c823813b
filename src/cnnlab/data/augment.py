"""Data augmentation at training time (8.3.4) and at test time (8.4.1), on batches.

Every transform takes images (N, C, H, W) in [0, 1] -- before normalisation -- and an optional
``torch.Generator``; each image of the batch gets its own random draw. The draws (a few numbers
per image) are made on the CPU with that generator and then moved to the images' device, so a
seed gives the same augmentation on a CPU and on a GPU.

>>> g = torch.Generator().manual_seed(0)
>>> aug = Compose([RandomCrop(32, padding=4), HorizontalFlip()])
>>> aug(torch.rand(8, 3, 32, 32), g).shape
torch.Size([8, 3, 32, 32])

The chapter's warning is kept in :data:`DEFAULTS`: digits get small translations only, never
reflections or rotations (a mirrored 2 is not a digit; a rotated 6 is a 9).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from cnnlab.data.datasets import as_size
from cnnlab.errors import DataError, ShapeError

Model = Callable[[torch.Tensor], torch.Tensor]


class Transform(Protocol):
    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor: ...


def _check(x: torch.Tensor, who: str) -> None:
    if x.dim() != 4:
        raise ShapeError(f"{who} needs a batch of images (N, C, H, W), got shape "
                         f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)")


def _uniform(n: int, low: float, high: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) * (high - low) + low


def _randint(n: int, high: int, g: torch.Generator | None) -> torch.Tensor:
    """n integers in [0, high]."""
    return torch.randint(0, high + 1, (n,), generator=g)


def _crop_at(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int
             ) -> torch.Tensor:
    """Per-image crops x[n, :, top[n]:top[n]+h, left[n]:left[n]+w]."""
    n, c = x.shape[:2]
    dev = x.device
    rows = (top.to(dev)[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # N 1 h 1
    cols = (left.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # N 1 1 w
    return x[torch.arange(n, device=dev)[:, None, None, None],
             torch.arange(c, device=dev)[None, :, None, None], rows, cols]  # N x C x h x w


def _number(value: object, who: str, low: float, high: float = math.inf) -> None:
    """Refuse ``value`` unless it is a real number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            low <= value <= high):
        span = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise DataError(f"{who} must be a number {span}, got {value!r}")


@dataclass(frozen=True)
class RandomCrop:
    """Random ``size`` patches (8.3.4), after ``padding`` pixels on every side, filled with
    zeros (``padding_mode="constant"``) or mirrored (``"reflect"``)."""

    size: int | tuple[int, int]
    padding: int = 0
    padding_mode: str = "constant"

    def __post_init__(self) -> None:
        as_size(self.size, "RandomCrop")
        if not isinstance(self.padding, int) or isinstance(self.padding, bool) or (
                self.padding < 0 or self.padding_mode not in ("constant", "reflect")):
            raise DataError(f"RandomCrop: padding must be an int >= 0 and padding_mode "
                            f"'constant' or 'reflect', got {self.padding!r} and "
                            f"{self.padding_mode!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        _check(x, "RandomCrop")
        h, w = as_size(self.size, "RandomCrop")
        p = self.padding
        if p and self.padding_mode == "reflect" and p >= min(x.shape[-2:]):
            raise ShapeError(f"RandomCrop: reflect padding {p} needs images larger than {p} "
                             f"pixels, got {x.shape[-2]}x{x.shape[-1]}; lower padding or use "
                             "padding_mode='constant'")
        if p:
            x = F.pad(x, (p, p, p, p), mode=self.padding_mode)   # N x C x H+2p x W+2p
        if h > x.shape[-2] or w > x.shape[-1]:
            raise ShapeError(f"RandomCrop: crop {h}x{w} is larger than the padded image "
                             f"{x.shape[-2]}x{x.shape[-1]}; lower size or raise padding")
        n = x.shape[0]
        top = _randint(n, x.shape[-2] - h, generator)
        left = _randint(n, x.shape[-1] - w, generator)
        return _crop_at(x, top, left, h, w)


@dataclass(frozen=True)
class HorizontalFlip:
    """Mirror each image left-right with probability ``p`` (8.3.4's reflections)."""

    p: float = 0.5

    def __post_init__(self) -> None:
        _number(self.p, "HorizontalFlip: p", 0, 1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        _check(x, "HorizontalFlip")
        flip = (torch.rand(x.shape[0], generator=generator) < self.p).to(x.device)
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


@dataclass(frozen=True)
class RandomTranslate:
    """Shift each image by a whole number of pixels in [-max_pixels, max_pixels] along each
    axis; what moves in is zero (black background)."""

    max_pixels: int

    def __post_init__(self) -> None:
        if not isinstance(self.max_pixels, int) or isinstance(self.max_pixels, bool) or (
                self.max_pixels < 0):
            raise DataError(f"RandomTranslate: max_pixels must be an int >= 0, got "
                            f"{self.max_pixels!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        _check(x, "RandomTranslate")
        size = (int(x.shape[-2]), int(x.shape[-1]))
        return RandomCrop(size, padding=self.max_pixels)(x, generator)


def rotate(x: torch.Tensor, degrees: torch.Tensor | float) -> torch.Tensor:
    """Rotate each image about its centre by ``degrees`` (one value, or one per image);
    positive turns counter-clockwise as ``torch.rot90`` does. Bilinear, zeros outside."""
    _check(x, "rotate")
    n = x.shape[0]
    try:
        angles = torch.as_tensor(degrees, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"rotate: degrees must be a number or one per image, got "
                        f"{type(degrees).__name__} {str(degrees)[:40]!r}") from None
    if angles.numel() not in (1, n):
        raise ShapeError(f"rotate: degrees needs one value or one per image ({n}), got "
                         f"{angles.numel()}")
    # minus: the grid maps output to input, so the sampling turns the other way
    theta = angles.expand(n) * (-math.pi / 180)
    cos, sin = torch.cos(theta), torch.sin(theta)
    h, w = x.shape[-2:]
    # output pixel -> input position, in normalised coordinates with the aspect ratio undone
    # so that a non-square image turns rigidly: x_in = cos*x + sin*(h/w)*y, ...
    zero = torch.zeros_like(cos)
    mat = torch.stack([torch.stack([cos, sin * h / w, zero], -1),
                       torch.stack([-sin * w / h, cos, zero], -1)], 1)        # N x 2 x 3
    grid = F.affine_grid(mat.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class RandomRotation:
    """Rotate each image by an angle drawn uniformly from [-degrees, degrees]."""

    degrees: float

    def __post_init__(self) -> None:
        _number(self.degrees, "RandomRotation: degrees", 0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        return rotate(x, _uniform(x.shape[0], -self.degrees, self.degrees, generator))


@dataclass(frozen=True)
class ColorJitter:
    """Scale brightness by a factor in [1-brightness, 1+brightness] and contrast (distance from
    the image's mean grey) by one in [1-contrast, 1+contrast]; clamped to [0, 1]."""

    brightness: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        _number(self.brightness, "ColorJitter: brightness", 0, 1)
        _number(self.contrast, "ColorJitter: contrast", 0, 1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        _check(x, "ColorJitter")
        n, shape = x.shape[0], (-1, 1, 1, 1)
        b = _uniform(n, 1 - self.brightness, 1 + self.brightness, generator)
        c = _uniform(n, 1 - self.contrast, 1 + self.contrast, generator)
        x = x * b.to(x.device, x.dtype).view(shape)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * c.to(x.device, x.dtype).view(shape) + mean).clamp(0, 1)


@dataclass(frozen=True, eq=False)
class PCALighting:
    """AlexNet's colour augmentation (8.3.4; Krizhevsky et al. 2012, section 4.1): add
    ``eigvecs @ (alpha * eigvals)`` to every pixel of an image, with ``alpha ~ N(0, sigma)``
    drawn once per image (the chapter: "variance of 0.01", so sigma = 0.1); clamped to [0, 1].
    ``eigvals``/``eigvecs`` are those of the data set's 3x3 RGB covariance: :meth:`fit`."""

    eigvals: torch.Tensor                 # (3,), ascending
    eigvecs: torch.Tensor                 # (3, 3), one eigenvector per column
    sigma: float = 0.1

    @classmethod
    def fit(cls, images: torch.Tensor, sigma: float = 0.1) -> PCALighting:
        """Principal components of the RGB values of every pixel of ``images`` (N, 3, H, W).

        >>> PCALighting.fit(torch.rand(16, 3, 8, 8)).eigvecs.shape
        torch.Size([3, 3])
        """
        _check(images, "PCALighting.fit")
        if images.shape[1] != 3:
            raise ShapeError(f"PCALighting needs RGB images (3 channels), got "
                             f"{images.shape[1]}; it is colour augmentation")
        pixels = images.detach().transpose(0, 1).reshape(3, -1).double()   # 3 x (N*H*W)
        eigvals, eigvecs = torch.linalg.eigh(torch.cov(pixels, correction=0))
        return cls(eigvals.clamp_min(0).float(), eigvecs.float(), sigma)

    def shift(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The (n, 3) colour offsets for n images."""
        alpha = torch.randn(n, 3, generator=generator) * self.sigma
        return (alpha * self.eigvals) @ self.eigvecs.T     # row k: V @ (alpha_k * lambda)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        _check(x, "PCALighting")
        delta = self.shift(x.shape[0], generator).to(x.device, x.dtype)
        return (x + delta[:, :, None, None]).clamp(0, 1)


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order, passing the same generator along."""

    transforms: Sequence[Transform] = field(default_factory=tuple)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, generator)
        return x


# Per-data-set defaults (8.3.4: "account for the natural distribution of images ... as well
# as the effect of a specific type of data set augmentation on the class labels"). Pixel amounts
# are for the native size; :func:`default_augmentation` scales them to the size trained on.
DEFAULTS: Mapping[str, tuple[Transform, ...]] = {
    # digits: translations only; a reflected or rotated digit is another digit or none
    "digits": (RandomTranslate(1),),                  # 8x8: one pixel is 1/8 of the field
    "mnist": (RandomTranslate(2),),
    # clothing: a mirrored shirt, shoe or bag is still one (no class is a mirror of another);
    # no rotations, the items are all upright
    "fashion-mnist": (RandomTranslate(2), HorizontalFlip()),
    # the usual CIFAR recipe: random 32x32 crops of the image padded by 4, and mirrors
    "cifar10": (RandomCrop(32, padding=4), HorizontalFlip()),
    "cifar100": (RandomCrop(32, padding=4), HorizontalFlip()),
    "folder": (),                                     # unknown content: choose explicitly
}


def content_scale(name: str, size: int | Sequence[int]) -> float:
    """How much larger the content of data set ``name`` is when loaded at ``size`` than at its
    native size: 4 for the 8x8 digits resampled to 32x32, 1 for MNIST's 28x28 digits padded
    to 32x32 (``load`` pads, it does not stretch), 1 for data sets with no fixed size."""
    from cnnlab.data.registry import DATASETS

    entry = DATASETS.get(name)
    h, w = as_size(size, "content_scale")
    if entry is None or (h, w) == entry.pad_to or (h, w) == tuple(entry.shape[1:]):
        return 1.0
    return min(h / entry.shape[1], w / entry.shape[2])


def _scaled(t: Transform, size: tuple[int, int], scale: float) -> Transform:
    def px(n: int) -> int:
        return max(1, round(n * scale)) if n else 0

    if isinstance(t, RandomTranslate):
        return RandomTranslate(px(t.max_pixels))
    if isinstance(t, RandomCrop):                 # crop back to the size trained on
        crop = size[0] if size[0] == size[1] else size
        return RandomCrop(crop, padding=px(t.padding), padding_mode=t.padding_mode)
    return t


def default_augmentation(name: str, size: int | Sequence[int] | None = None) -> Compose:
    """The default training-time augmentation of data set ``name`` (see :data:`DEFAULTS`).

    ``size``: the (height, width) of the images trained on, when ``load(..., size=)`` changed
    it: pixel amounts scale with the content (digits resampled from 8x8 to 32x32 translate
    by 4 pixels, not 1; MNIST padded to 32x32 keeps 2), and crops keep that size.

    >>> default_augmentation("digits", 32)
    Compose(transforms=(RandomTranslate(max_pixels=4),))
    """
    if name not in DEFAULTS:
        raise DataError(f"no default augmentation for {name!r}; known: "
                        f"{', '.join(sorted(DEFAULTS))}; pass Compose([...]) explicitly")
    if size is None:
        return Compose(DEFAULTS[name])
    pair = as_size(size, "default_augmentation")
    scale = content_scale(name, pair)
    return Compose(tuple(_scaled(t, pair, scale) for t in DEFAULTS[name]))


# -- test time ------------------------------------------------------------------------------

def _mean_softmax(model: Model, views: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([F.softmax(model(v), dim=-1) for v in views]).mean(0)


@torch.no_grad()
def flip_average(model: Model, x: torch.Tensor) -> torch.Tensor:
    """Mean of the softmax outputs on ``x`` and its mirror image: (N, classes).
    ``x`` is what the model takes (normalised or not: mirroring commutes with it)."""
    _check(x, "flip_average")
    return _mean_softmax(model, [x, x.flip(-1)])


def ten_crops(x: torch.Tensor, size: int | Sequence[int]) -> list[torch.Tensor]:
    """AlexNet's 10 test views: the 4 corner and the centre ``size`` patches, and their
    mirrors."""
    _check(x, "ten_crops")
    h, w = as_size(size, "ten_crops")
    H, W = x.shape[-2:]
    if h > H or w > W:
        raise ShapeError(f"ten_crops: crop {h}x{w} is larger than the images {H}x{W}")
    t, left = (H - h) // 2, (W - w) // 2
    crops = [x[..., i:i + h, j:j + w] for i, j in
             ((0, 0), (0, W - w), (H - h, 0), (H - h, W - w), (t, left))]
    return crops + [c.flip(-1) for c in crops]


@torch.no_grad()
def multi_crop(model: Model, x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Mean softmax over AlexNet's 10 crops of ``x`` (8.4.1): (N, classes)."""
    return _mean_softmax(model, ten_crops(x, size))
