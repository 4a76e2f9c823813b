"""Pictures of what a network sees (8.5.1): grids of small images with captions, as PNG files.

Every cell of a grid is a displayable image: a tensor (3, H, W) shown as RGB, or (1, H, W) or
(H, W) shown as grey, values in [0, 1] (clipped). The helpers below turn what the methods
return into such images, each scaled on its own so that a weak map is as visible as a strong
one (compare values in the captions, not in the brightness):

- :func:`heatmap`: maps (N, H, W), such as saliency or feature maps, divided by their largest
  ``|value|``: grey (black 0, white the maximum) when no value is negative, else the diverging
  ``RdBu_r`` colour map (blue negative, white zero, red positive);
- :func:`signed_image`: signed images (N, C, H, W), such as deconvnet and guided gradients:
  colour ones as RGB around mid-grey (0.5 + 0.5 g / max|g|, Springenberg et al.'s display),
  one-channel ones as a diverging :func:`heatmap`;
- :func:`filter_image`: filters (F, C, k, k), each stretched from its minimum to its maximum.

Model inputs go back to pixels with :func:`cnnlab.visualize.synthesis.to_pixels`.

Figures are drawn on matplotlib's Agg canvas through :class:`~matplotlib.figure.Figure`, not
pyplot, and written atomically, as :mod:`cnnlab.train.plots` does. Pixels are drawn unsmoothed
(a 32 x 32 input stays 32 x 32 squares), and a cell is small (``cell`` inches at ``dpi``) so that
the PNGs stay light enough to embed in a page.

>>> import torch
>>> maps = heatmap(torch.rand(2, 8, 8))                        # 2 x 3 x 8 x 8, grey
>>> path = save_grid([[torch.rand(3, 8, 8), maps[0]], [maps[1]]], "grid.png",
...                  captions=[["input", "map"], ["map"]],
...                  row_labels=["one", "two"])               # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from cnnlab.errors import ShapeError
from cnnlab.train.run import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DIVERGING", "Cells", "filter_image", "grid_figure", "heatmap", "rows_of",
           "save_grid", "signed_image", "square_width"]

DIVERGING = "RdBu_r"     # matplotlib's colour map for signed maps: blue < 0, white 0, red > 0
T = TypeVar("T")
Cells = Sequence[Sequence[torch.Tensor]]  # rows of displayable images (C, H, W) or (H, W)


def heatmap(maps: torch.Tensor, signed: bool | None = None) -> torch.Tensor:
    """Maps (N, H, W) as RGB images (N, 3, H, W), each divided by its own largest ``|value|``.

    ``signed`` None: signed when any value is negative. Unsigned maps are grey (0 black, the
    maximum white); signed maps use the diverging colour map (``-max`` blue, 0 white, ``max``
    red). An all-zero map is black (unsigned) or white (signed).
    """
    _check_dims(maps, 3, "maps", "(N, H, W)")
    m = maps.detach().to("cpu", torch.float64)
    if signed is None:
        signed = bool((m < 0).any())
    scale = m.abs().amax(dim=(1, 2), keepdim=True).clamp(min=torch.finfo(m.dtype).tiny)
    unit = m / scale                                               # N x H x W in [-1, 1]
    if not signed:
        return unit.clamp(0.0, 1.0).unsqueeze(1).expand(-1, 3, -1, -1).float()
    from matplotlib import colormaps

    rgba = colormaps[DIVERGING]((0.5 + 0.5 * unit).numpy())       # N x H x W x 4
    return torch.from_numpy(rgba[..., :3]).permute(0, 3, 1, 2).float().contiguous()


def signed_image(g: torch.Tensor) -> torch.Tensor:
    """Signed images (N, C, H, W), e.g. deconvnet or guided gradients, as (N, 3, H, W):
    three channels as RGB with zero at mid-grey, ``0.5 + 0.5 * g / max|g|`` per image; one
    channel as a diverging :func:`heatmap`."""
    _check_dims(g, 4, "images", "(N, C, H, W)")
    if g.shape[1] == 1:
        return heatmap(g[:, 0], signed=True)
    if g.shape[1] != 3:
        raise ShapeError(f"signed_image shows 1- or 3-channel images, got {g.shape[1]} "
                         "channels; show each channel with heatmap(g[:, c])")
    m = g.detach().to("cpu", torch.float64)
    scale = m.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=torch.finfo(m.dtype).tiny)
    return (0.5 + 0.5 * m / scale).clamp(0.0, 1.0).float()


def filter_image(w: torch.Tensor) -> torch.Tensor:
    """Filters (F, C, k, k) as images, each stretched from its minimum (black) to its maximum
    (white): 3 input channels as RGB (F, 3, k, k), 1 as grey (F, 1, k, k); other channel
    counts are shown by their mean over the channels (grey)."""
    _check_dims(w, 4, "filters", "(F, C, k, k)")
    m = w.detach().to("cpu", torch.float64)
    if m.shape[1] not in (1, 3):
        m = m.mean(dim=1, keepdim=True)
    low = m.amin(dim=(1, 2, 3), keepdim=True)
    span = (m.amax(dim=(1, 2, 3), keepdim=True) - low).clamp(min=torch.finfo(m.dtype).tiny)
    return ((m - low) / span).float()


def rows_of(cells: Sequence[T], width: int) -> list[list[T]]:
    """A flat list of cells as rows of ``width`` (the last may be shorter)."""
    if width < 1:
        raise ShapeError(f"rows_of: width must be >= 1, got {width}")
    return [list(cells[i:i + width]) for i in range(0, len(cells), width)]


def grid_figure(rows: Cells, *, captions: Sequence[Sequence[str]] | None = None,
                row_labels: Sequence[str] | None = None, title: str | None = None,
                cell: float = 0.9, dpi: int = 100) -> Figure:
    """A figure with one ``cell`` x ``cell`` inch square per image, rows as given (a short row
    leaves blanks at its end), a caption under each image, a label left of each row and a
    title on top. Each image is enlarged without smoothing to fill its square (keeping its
    aspect ratio) for ``dpi`` dots per inch."""
    images = [[_displayable(c, r, i) for i, c in enumerate(row)] for r, row in enumerate(rows)]
    n_rows, n_cols = len(images), max((len(r) for r in images), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ShapeError("a grid needs at least one image; got no cells")
    _check_texts(captions, [len(r) for r in images], "captions")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ShapeError(f"row_labels: {len(row_labels)} labels for {n_rows} rows; give one "
                         "per row")
    from matplotlib.figure import Figure

    # a fixed layout in pixels: [row label | cells], each cell an image above its caption,
    # the title on top. All images go into one mosaic drawn 1:1 by one axes, and the texts
    # onto the figure: no layout engine, no axes per cell (both cost a second per grid)
    side = max(2, round(cell * dpi))                          # a cell's square, in pixels
    gap = max(1, round(0.04 * side))                          # between neighbouring images
    label_w = 0 if not row_labels else round(dpi * min(2.5, 0.15 + 0.06 * max(
        map(len, row_labels))))
    caption_h = 0 if not captions or not any(any(r) for r in captions) else round(0.16 * dpi)
    title_h = 0 if title is None else round(0.3 * dpi)
    width, height = label_w + n_cols * side, title_h + n_rows * (side + caption_h)
    mosaic = np.ones((height, width, 3), dtype=np.float32)   # white paper
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    for r, row in enumerate(images):
        top = title_h + r * (side + caption_h)                # the row's upper edge
        for i, picture in enumerate(row):
            left = label_w + i * side
            _paste(mosaic, picture, top + gap // 2, left + gap // 2, side - gap)
            if captions and captions[r][i]:
                fig.text((left + side / 2) / width, 1 - (top + side) / height,
                         captions[r][i], fontsize=6, ha="center", va="top")
        if row_labels:
            fig.text((label_w - 0.05 * dpi) / width, 1 - (top + side / 2) / height,
                     row_labels[r], fontsize=7, ha="right", va="center")
    if title is not None:
        fig.text(0.5, 1 - 0.05 * dpi / height, title, fontsize=8, ha="center", va="top")
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    return fig


def save_grid(rows: Cells, path: str | os.PathLike[str], *,
              captions: Sequence[Sequence[str]] | None = None,
              row_labels: Sequence[str] | None = None, title: str | None = None,
              cell: float = 0.9, dpi: int = 100) -> Path:
    """Draw :func:`grid_figure` into the PNG ``path``, atomically; returns the path."""
    fig = grid_figure(rows, captions=captions, row_labels=row_labels, title=title, cell=cell,
                      dpi=dpi)
    out = Path(path)
    atomic_write(out, lambda tmp: _write_png(fig, tmp, dpi))
    return out


def _write_png(fig: Figure, path: Path, dpi: int) -> None:
    """The figure as an RGB PNG (no alpha channel: a third smaller than Agg's RGBA)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()                                             # type: ignore[no-untyped-call]
    rgba = np.asarray(canvas.buffer_rgba())                   # type: ignore[no-untyped-call]
    Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(path, format="png")


def _paste(mosaic: npt.NDArray[np.float32], picture: npt.NDArray[np.float32], top: int,
           left: int, side: int) -> None:
    """Enlarge ``picture`` (H x W x 3) by repeating pixels to fit a ``side`` square, centred,
    and put it into ``mosaic`` there."""
    h, w = picture.shape[:2]
    scale = side / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    rows = np.arange(th) * h // th                            # nearest source pixel
    cols = np.arange(tw) * w // tw
    y, x = top + (side - th) // 2, left + (side - tw) // 2
    mosaic[y:y + th, x:x + tw] = picture[rows][:, cols]


def _displayable(image: torch.Tensor, row: int, column: int) -> npt.NDArray[np.float32]:
    """An H x W x 3 array in [0, 1]: a colour image as it is, a grey one in all channels."""
    if not isinstance(image, torch.Tensor):
        raise ShapeError(f"grid cell ({row}, {column}) is a {type(image).__name__}, not a "
                         "tensor; give images (C, H, W) or (H, W)")
    x = image.detach().to("cpu", torch.float32)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3) or x.numel() == 0:
        raise ShapeError(f"grid cell ({row}, {column}) has shape {tuple(image.shape)}; a cell "
                         "is a (3, H, W) colour or a (1, H, W) or (H, W) grey image")
    x = torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0).expand(3, -1, -1)
    return x.permute(1, 2, 0).contiguous().numpy()


def _check_texts(texts: Sequence[Sequence[str]] | None, lengths: list[int], what: str) -> None:
    if texts is None:
        return
    if len(texts) != len(lengths) or any(len(t) != n for t, n in zip(texts, lengths,
                                                                     strict=False)):
        raise ShapeError(f"{what}: {[len(t) for t in texts]} per row for rows of {lengths} "
                         "cells; give one per cell")


def _check_dims(x: torch.Tensor, dims: int, what: str, shape: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != dims:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"{what} must be {shape}, got {got}")


def square_width(n: int) -> int:
    """Columns of a near-square grid of ``n`` cells (at least 1)."""
    return max(1, math.ceil(math.sqrt(n)))
