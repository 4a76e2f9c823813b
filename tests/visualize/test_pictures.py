"""PNG grids (8.5.1's pictures): layout and size, captions, colour vs grey, atomic writes, and
the display helpers' scaling."""

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.errors import ShapeError
from cnnlab.visualize.pictures import (
    filter_image,
    grid_figure,
    heatmap,
    rows_of,
    save_grid,
    signed_image,
    square_width,
)


def texts(fig):
    """Every caption, row label and title drawn on the figure."""
    out = [ax.get_xlabel() for ax in fig.axes] + [ax.get_ylabel() for ax in fig.axes]
    return [t for t in out if t] + ([fig._suptitle.get_text()] if fig._suptitle else [])


def test_grid_layout_captions_and_row_labels():
    rows = [[torch.rand(3, 8, 8), torch.rand(8, 8), torch.rand(1, 8, 8)], [torch.rand(8, 8)]]
    fig = grid_figure(rows, captions=[["a<b", "map", "grey"], ["only"]],
                      row_labels=["first", "second"], title="the title")
    assert len(fig.axes) == 6                            # 2 rows x 3 columns, blanks included
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 4                               # the short row's blanks hold nothing
    assert sorted(texts(fig)) == sorted(["a<b", "map", "grey", "only", "first", "second",
                                         "the title"])
    colour, grey = shown[0].images[0].get_array(), shown[1].images[0].get_array()
    assert colour.shape == (8, 8, 3) and grey.shape == (8, 8)
    assert shown[1].images[0].get_cmap().name == "gray"


def test_png_size_follows_cells_and_dpi(tmp_path):
    cells = [[torch.rand(8, 8)] * 4] * 2
    small = Image.open(save_grid(cells, tmp_path / "a.png", cell=0.5, dpi=100))
    large = Image.open(save_grid(cells, tmp_path / "b.png", cell=1.0, dpi=100))
    assert small.size == (200, 100) and large.size == (400, 200)
    assert small.mode == "RGB"                           # no alpha: smaller files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]   # no temp files


def test_grey_cells_are_grey_and_colour_cells_keep_their_colour(tmp_path):
    red = torch.zeros(3, 8, 8)
    red[0] = 1.0
    path = save_grid([[red, torch.full((8, 8), 0.5)]], tmp_path / "g.png", cell=1.0, dpi=40)
    px = torch.from_numpy(np.array(Image.open(path))).int()        # 40 x 80 x 3
    assert px.shape == (40, 80, 3)
    left, right = px[10:30, 5:35].reshape(-1, 3), px[10:30, 45:75].reshape(-1, 3)
    assert (left == torch.tensor([255, 0, 0])).all(dim=1).float().mean() > 0.9
    assert ((right - 128).abs() <= 1).all()              # 0.5 grey, R = G = B


def test_failed_write_leaves_the_target_untouched(tmp_path):
    path = tmp_path / "kept.png"
    path.write_bytes(b"old")
    with pytest.raises(ShapeError, match=r"cell \(0, 1\) has shape \(2, 8, 8\)"):
        save_grid([[torch.rand(8, 8), torch.rand(2, 8, 8)]], path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["kept.png"]


@pytest.mark.parametrize("bad, match", [
    ({"rows": []}, "at least one image"),
    ({"rows": [[torch.rand(4, 4)]], "captions": [["a", "b"]]}, r"captions: \[2\] per row"),
    ({"rows": [[torch.rand(4, 4)]], "row_labels": ["a", "b"]}, "2 labels for 1 rows"),
    ({"rows": [["not a tensor"]]}, r"cell \(0, 0\) is a str"),
])
def test_grid_refuses_bad_input(bad, match):
    with pytest.raises(ShapeError, match=match):
        grid_figure(**bad)


def test_heatmap_scales_each_map_by_its_own_maximum():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[0.0, 0.0], [0.0, 0.01]]])
    out = heatmap(maps)                                  # unsigned: grey
    assert out.shape == (2, 3, 2, 2)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert out[1, 0, 1, 1] == 1.0                        # a weak map is as bright
    assert torch.equal(heatmap(torch.zeros(1, 2, 2)), torch.zeros(1, 3, 2, 2))


def test_signed_heatmap_is_blue_white_red():
    out = heatmap(torch.tensor([[[-2.0, 0.0, 2.0]]]))    # 1 x 3 x 1 x 3
    blue, white, red = out[0, :, 0, 0], out[0, :, 0, 1], out[0, :, 0, 2]
    assert blue[2] > blue[0] and red[0] > red[2]
    assert (white > 0.95).all()


def test_signed_image_centres_zero_at_mid_grey():
    g = torch.zeros(1, 3, 2, 2)
    g[0, 0, 0, 0], g[0, 2, 1, 1] = 4.0, -2.0
    out = signed_image(g)
    assert out[0, 0, 0, 0] == 1.0 and out[0, 2, 1, 1] == 0.25 and out[0, 1, 0, 1] == 0.5
    assert signed_image(torch.randn(2, 1, 4, 4)).shape == (2, 3, 4, 4)   # grey: diverging map
    with pytest.raises(ShapeError, match="1- or 3-channel"):
        signed_image(torch.randn(1, 2, 4, 4))


def test_filter_image_stretches_each_filter():
    w = torch.tensor([[[[-1.0, 1.0]]], [[[5.0, 7.0]]]])  # 2 filters, 1 x 1 x 2
    torch.testing.assert_close(filter_image(w)[:, 0, 0], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert filter_image(torch.randn(4, 3, 5, 5)).shape == (4, 3, 5, 5)
    assert filter_image(torch.randn(4, 6, 5, 5)).shape == (4, 1, 5, 5)


def test_rows_of_and_square_width():
    cells = [torch.rand(2, 2) for _ in range(7)]
    assert [len(r) for r in rows_of(cells, 3)] == [3, 3, 1]
    assert [square_width(n) for n in (1, 4, 5, 10, 16)] == [1, 2, 3, 4, 4]
