"""Boxes drawn on images (Pillow): what a localiser or a detector found, as a person checks it.

Small images (a 64x64 canvas) are enlarged first, by whole pixels, so boxes and their captions
stay readable; files are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cnnlab.errors import ShapeError

if TYPE_CHECKING:
    from PIL import Image

TRUE, FOUND = (40, 200, 60), (230, 40, 40)      # green: the annotation; red: the prediction
MIN_SIDE = 192                                   # images are enlarged to at least this


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """An image (C, H, W) in [0, 1], 1 or 3 channels, as an RGB Pillow image enlarged
    ``scale`` times by repeating pixels."""
    from PIL import Image

    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ShapeError(f"an image to draw on is (1 or 3, H, W), got {tuple(image.shape)}")
    grey_or_rgb = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = grey_or_rgb.expand(3, -1, -1).permute(1, 2, 0).contiguous().numpy()
    out = Image.fromarray(pixels, mode="RGB")
    if scale > 1:
        out = out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
    return out


def enlargement(height: int, width: int) -> int:
    """The whole factor that brings the shorter side to at least :data:`MIN_SIDE`."""
    return max(1, -(-MIN_SIDE // max(1, min(height, width))))


def draw_boxes(image: Image.Image, boxes: torch.Tensor, colour: tuple[int, int, int],
               captions: Sequence[str] = (), scale: float = 1.0) -> Image.Image:
    """Draw ``boxes`` (k, 4) ``(x0, y0, x1, y1)`` in the image's pixels before enlarging by
    ``scale``, with an optional caption each, onto ``image`` (changed in place, returned)."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    width = max(1, round(image.width / 160))
    for i, box in enumerate(boxes.detach().float().cpu().tolist()):
        x0, y0, x1, y1 = (v * scale for v in box)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour, width=width)
        if i < len(captions) and captions[i]:
            text = captions[i]
            left, top, right, bottom = draw.textbbox((x0, y0), text)
            up = max(0, y0 - (bottom - top) - 2)       # above the box, or inside at the top
            draw.rectangle((x0, up, x0 + right - left + 3, up + bottom - top + 2), fill=colour)
            draw.text((x0 + 2, up), text, fill=(255, 255, 255))
    return image


def localization_grid(path: str | os.PathLike[str], images: torch.Tensor, target: torch.Tensor,
                      prediction: torch.Tensor) -> Path:
    """A PNG row of test images (N, C, H, W) with the true box (green) and the predicted one
    (red): ``target`` (N, 5) ``[class, box]`` and ``prediction`` (N, C + 4) as
    :class:`~cnnlab.apps.localize.Localization` gives them (boxes normalised)."""
    from PIL import Image

    from cnnlab.train.run import atomic_write

    n, _, h, w = images.shape
    scale = enlargement(h, w)
    size = torch.tensor([w, h, w, h], dtype=torch.float32)
    gap = 4
    sheet = Image.new("RGB", (n * (w * scale + gap) - gap, h * scale), (255, 255, 255))
    for i in range(n):
        cell = to_pil(images[i], scale)
        truth = target[i, 1:].float()
        if not truth.isnan().any():
            draw_boxes(cell, truth[None] * size, TRUE, scale=scale)
        guess = prediction[i, -4:].float().clamp(0, 1)
        label = int(prediction[i, :-4].argmax())
        right = "" if int(target[i, 0]) == label else "x "
        draw_boxes(cell, guess[None] * size, FOUND, [f"{right}{label}"], scale=scale)
        sheet.paste(cell, (i * (w * scale + gap), 0))
    out = Path(path)
    atomic_write(out, lambda tmp: sheet.save(tmp, format="PNG"))
    return out
