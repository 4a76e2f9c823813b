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
    return [t.get_text() for t in fig.texts]


def pixels(path):
    return torch.from_numpy(np.array(Image.open(path))).int()             # H x W x 3


def mid_grey(px):
    """Every pixel (..., 3) is 0.5 grey: R = G = B = 127 or 128."""
    px = px.reshape(-1, 3)
    return bool((px == px[:, :1]).all() and ((px - 127.5).abs() <= 0.5).all())


def test_grid_layout_captions_and_row_labels(tmp_path):
    red, grey = torch.zeros(3, 8, 8), torch.full((8, 8), 0.5)
    red[0] = 1.0
    rows = [[red, grey, grey[None]], [red]]
    fig = grid_figure(rows, captions=[["a<b", "map", "grey"], ["only"]],
                      row_labels=["first", "second"], cell=1.0, dpi=40)
    assert sorted(texts(fig)) == sorted(["a<b", "map", "grey", "only", "first", "second"])
    path = save_grid(rows, tmp_path / "g.png", captions=[["a", "b", "c"], ["d"]],
                     row_labels=["first", "second"], cell=1.0, dpi=40)
    px = pixels(path)
    label_w = px.shape[1] - 3 * 40                  # the row labels' column, then 3 cells
    caption_h = (px.shape[0] - 2 * 40) // 2
    assert label_w > 0 and caption_h > 0

    def centre(row, col):                           # the middle of a cell's image
        return px[row * (40 + caption_h) + 20, label_w + col * 40 + 20].tolist()
    assert centre(0, 0) == [255, 0, 0] and centre(1, 0) == [255, 0, 0]
    assert centre(0, 1) == centre(0, 2) and mid_grey(torch.tensor(centre(0, 1)))
    assert centre(1, 1) == centre(1, 2) == [255, 255, 255]   # the short row's blanks


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
    px = pixels(path)                                                   # 40 x 80 x 3
    assert px.shape == (40, 80, 3)
    left, right = px[2:38, 2:38].reshape(-1, 3), px[2:38, 42:78].reshape(-1, 3)
    assert (left == torch.tensor([255, 0, 0])).all()
    assert mid_grey(right)                           # 0.5 grey, R = G = B


def test_small_images_are_enlarged_without_smoothing(tmp_path):
    checker = (torch.arange(4).view(2, 2) % 3 == 0).float()       # [[1, 0], [0, 1]]
    wide = torch.zeros(3, 1, 2)
    wide[1] = 1.0                                   # 1 x 2 green: kept 2:1, centred
    px = pixels(save_grid([[checker, wide]], tmp_path / "g.png", cell=1.0, dpi=50))
    assert px.shape == (50, 100, 3)
    assert px[5, 5].tolist() == [255] * 3 and px[5, 40].tolist() == [0] * 3
    assert px[40, 5].tolist() == [0] * 3 and px[40, 40].tolist() == [255] * 3
    assert px[25, 75].tolist() == [0, 255, 0]       # the middle of the wide image
    assert px[5, 75].tolist() == [255] * 3          # above it: paper


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
