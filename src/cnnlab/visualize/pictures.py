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

__all__ = ["DIVERGING", "GREY", "Cells", "filter_image", "grid_figure", "heatmap", "rows_of",
           "save_grid", "signed_image", "square_width"]

GREY, DIVERGING = "gray", "RdBu_r"      # matplotlib colour maps: unsigned and signed maps
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
                cell: float = 0.9) -> Figure:
    """A figure with one cell per image, rows as given (ragged rows leave blanks at the end),
    a caption under each cell, a label left of each row and a title on top."""
    images = [[_displayable(c, r, i) for i, c in enumerate(row)] for r, row in enumerate(rows)]
    n_rows, n_cols = len(images), max((len(r) for r in images), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ShapeError("a grid needs at least one image; got no cells")
    _check_texts(captions, [len(r) for r in images], "captions")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ShapeError(f"row_labels: {len(row_labels)} labels for {n_rows} rows; give one "
                         "per row")
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    label_w = 0.0 if not row_labels else min(2.5, 0.3 + 0.065 * max(map(len, row_labels)))
    caption_h = 0.0 if not captions or not any(any(r) for r in captions) else 0.22
    fig = Figure(figsize=(label_w + n_cols * cell, (title is not None) * 0.35
                          + n_rows * (cell + caption_h)),
                 layout=ConstrainedLayoutEngine(w_pad=0.01, h_pad=0.01, wspace=0.02,
                                                hspace=0.02))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r in range(n_rows):
        for i in range(n_cols):
            ax = axes[r][i]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if i >= len(images[r]):
                ax.set_axis_off()                 # a blank at the end of a short row
                continue
            picture = images[r][i]                # H x W x 3 or H x W in [0, 1]
            ax.imshow(picture, cmap=GREY if picture.ndim == 2 else None, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            if captions and captions[r][i]:
                ax.set_xlabel(captions[r][i], fontsize=6, labelpad=1)
        if row_labels:
            axes[r][0].set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right",
                                  va="center", labelpad=3)
    if title is not None:
        fig.suptitle(title, fontsize=8)
    return fig


def save_grid(rows: Cells, path: str | os.PathLike[str], *,
              captions: Sequence[Sequence[str]] | None = None,
              row_labels: Sequence[str] | None = None, title: str | None = None,
              cell: float = 0.9, dpi: int = 100) -> Path:
    """Draw :func:`grid_figure` into the PNG ``path``, atomically; returns the path."""
    fig = grid_figure(rows, captions=captions, row_labels=row_labels, title=title, cell=cell)
    out = Path(path)
    atomic_write(out, lambda tmp: _write_png(fig, tmp, dpi))
    return out


def _write_png(fig: Figure, path: Path, dpi: int) -> None:
    """The figure as an RGB PNG (no alpha channel: a third smaller than Agg's RGBA)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    with Image.open(buffer) as drawn:
        drawn.convert("RGB").save(path, format="png", optimize=True)


def _displayable(image: torch.Tensor, row: int, column: int) -> npt.NDArray[np.float32]:
    """A numpy array for ``imshow``: H x W x 3 for colour, H x W for grey, in [0, 1]."""
    if not isinstance(image, torch.Tensor):
        raise ShapeError(f"grid cell ({row}, {column}) is a {type(image).__name__}, not a "
                         "tensor; give images (C, H, W) or (H, W)")
    x = image.detach().to("cpu", torch.float32)
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if not (x.dim() == 2 or (x.dim() == 3 and x.shape[0] == 3)) or x.numel() == 0:
        raise ShapeError(f"grid cell ({row}, {column}) has shape {tuple(image.shape)}; a cell "
                         "is a (3, H, W) colour or a (1, H, W) or (H, W) grey image")
    x = torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0)
    return (x if x.dim() == 2 else x.permute(1, 2, 0)).numpy()


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
