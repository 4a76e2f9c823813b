"""``augment``: which of 8.3.4's transforms a run applies to each training batch.

The setting is ``"none"`` (the default), ``"auto"``, or a comma list of transforms, applied in
that order to each training batch (never to evaluation), on the batch's device, with a
generator of its own seeded from the run's seed::

    augment := "auto" | "none" | item ("," item)*
    item    := name [number]          each name at most once

    crop[P]       pad P pixels of zeros on every side, then crop back to the trained size
                  (AlexNet's patches, 8.3.4; default P: 1/8 of the side, 4 at 32x32)
    flip[P]       mirror left-right with probability P (default 0.5)
    translate[P]  shift by up to P whole pixels along each axis (default 1/16 of the side)
    rotate[D]     rotate by an angle in [-D, D] degrees (default 10)
    jitter[F]     brightness and contrast factors in [1-F, 1+F] (default 0.2)
    pca[S]        AlexNet's PCA colour shift, alpha ~ N(0, S) (default 0.1); RGB data only,
                  fitted once on the training set's 3x3 RGB covariance

``"auto"`` is the data set's default (:func:`cnnlab.data.augment.default_augmentation`, with
pixel amounts scaled to the size trained on; nothing for a data set without one). As 8.3.4
warns, the digits data sets get no reflections or rotations: asking for them explicitly on
digits or MNIST works but warns.

>>> parse("crop4,flip")
(('crop', 4.0), ('flip', None))
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable

from cnnlab.data import ImageDataset
from cnnlab.data.augment import (
    ColorJitter,
    Compose,
    HorizontalFlip,
    PCALighting,
    RandomCrop,
    RandomRotation,
    RandomTranslate,
    Transform,
    default_augmentation,
)
from cnnlab.errors import CnnlabError, ShapeError

# name -> (whole pixels?, check, what the number must be)
_ITEMS: dict[str, tuple[bool, Callable[[float], bool], str]] = {
    "crop": (True, lambda v: v >= 1, "a whole number of pixels >= 1"),
    "flip": (False, lambda v: 0 < v <= 1, "a probability in (0, 1]"),
    "translate": (True, lambda v: v >= 1, "a whole number of pixels >= 1"),
    "rotate": (False, lambda v: 0 < v <= 180, "degrees in (0, 180]"),
    "jitter": (False, lambda v: 0 < v < 1, "an amount in (0, 1)"),
    "pca": (False, lambda v: v > 0, "a sigma > 0"),
}
# the transforms that move pixels: a target tied to positions (a box) would have to move too
GEOMETRIC = ("crop", "flip", "translate", "rotate")
_ITEM = re.compile(r"([a-z]+)(\d+(?:\.\d*)?|\.\d+)?")
_UPRIGHT = ("digits", "mnist")      # 8.3.4: no reflections or rotations for digits

Item = tuple[str, float | None]


def parse(text: str) -> tuple[Item, ...]:
    """The items of an ``augment`` setting, checked: ``()`` for "none" and "auto"."""
    if text in ("auto", "none"):
        return ()
    items: list[Item] = []
    for raw in text.split(","):
        part = raw.strip().lower()
        m = _ITEM.fullmatch(part)
        if m is None or m.group(1) not in _ITEMS:
            name = m.group(1) if m else part
            close = difflib.get_close_matches(name, list(_ITEMS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise CnnlabError(f"unknown transform {raw.strip()!r}: {hint}write NAME[NUMBER] "
                              f"with NAME one of {', '.join(_ITEMS)}")
        name, number = m.group(1), m.group(2)
        if any(name == seen for seen, _ in items):
            raise CnnlabError(f"{name!r} is given twice")
        whole, ok, wanted = _ITEMS[name]
        value = None if number is None else float(number)
        if value is not None and (not ok(value) or (whole and not value.is_integer())):
            raise CnnlabError(f"{name}{number}: the number must be {wanted}")
        items.append((name, value))
    return tuple(items)


def build(text: str, train: ImageDataset) -> Compose | None:
    """The transforms ``text`` names, sized for ``train``'s images (None: no augmentation).

    ``pca`` fits :class:`PCALighting` on up to 4,096 of the training images (evenly spaced,
    so no randomness is spent): plenty for a 3x3 covariance.
    """
    if text == "none":
        return None
    if len(train.shape) != 3:
        raise CnnlabError(f"augment={text!r} transforms images, but {train.name} holds examples "
                          f"of shape {'x'.join(map(str, train.shape))}; use --augment none")
    _, h, w = train.image_shape
    if text == "auto":
        auto = default_augmentation(train.name, (h, w)) if _has_default(train.name) else None
        return auto if auto is not None and auto.transforms else None
    items = parse(text)
    if not items:
        return None
    side = min(h, w)
    upright = [n for n, _ in items if n in ("flip", "rotate")]
    if upright and train.name in _UPRIGHT:
        warnings.warn(f"augment={text!r} {' and '.join(upright)}s {train.name}: 8.3.4 warns "
                      "that a mirrored digit is no digit and a rotated 6 is a 9",
                      stacklevel=3)
    out: list[Transform] = []
    for name, v in items:
        if name == "crop":
            out.append(RandomCrop((h, w), padding=int(v or max(1, side // 8))))
        elif name == "flip":
            out.append(HorizontalFlip(0.5 if v is None else v))
        elif name == "translate":
            out.append(RandomTranslate(int(v or max(1, side // 16))))
        elif name == "rotate":
            out.append(RandomRotation(10.0 if v is None else v))
        elif name == "jitter":
            amount = 0.2 if v is None else v
            out.append(ColorJitter(brightness=amount, contrast=amount))
        else:                                                     # pca
            out.append(_fit_pca(train, 0.1 if v is None else v))
    return Compose(tuple(out))


def _has_default(name: str) -> bool:
    from cnnlab.data.augment import DEFAULTS

    return name in DEFAULTS


def _fit_pca(train: ImageDataset, sigma: float) -> PCALighting:
    if train.in_channels != 3:
        raise ShapeError(f"augment 'pca' shifts RGB colours, but {train.name} has "
                         f"{train.in_channels} channel(s); leave out pca")
    # a view of a tensor; read from disk for a lazy folder, where fewer images do
    step = max(1, len(train) // (1024 if train.lazy else 4096))
    return PCALighting.fit(train.images[::step], sigma)
