"""curves.png and confusion.png: valid images, atomic writes, regenerated from a run folder."""

import json

import pytest
import torch
from PIL import Image

from cnnlab.errors import CnnlabError, ShapeError
from cnnlab.train import plots
from cnnlab.train.metrics import CONFUSION, write_confusion
from cnnlab.train.plots import (
    CONFUSION_PLOT,
    CURVES,
    plot_confusion,
    plot_curves,
    plot_run,
    write_plots,
)


def records(epochs: int) -> list[dict]:
    return [{"epoch": e, "lr": 0.1 if e < 3 else 0.01, "train_loss": 2.0 / e,
             "train_top1": 1 - 0.5 / e, "test_loss": 2.2 / e, "test_top1": 1 - 0.6 / e,
             "test_top5": 1 - 0.1 / e, "elapsed_seconds": 1.5 * e} for e in range(1, epochs + 1)]


def noisy_confusion(c: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, c, (n,), generator=g)
    p = torch.where(torch.rand(n, generator=g) < 0.7, t, torch.randint(0, c, (n,), generator=g))
    return torch.bincount(t * c + p, minlength=c * c).view(c, c)


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()                     # a whole, valid PNG
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def no_temporary_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_write_plots(tmp_path):
    paths = write_plots(tmp_path, records(5), noisy_confusion(10, 400),
                        [f"digit {i}" for i in range(10)])
    assert paths == [tmp_path / CURVES, tmp_path / CONFUSION_PLOT]
    w, h = png_size(paths[0])
    assert 800 <= w <= 2000 and 250 <= h <= 800 and w > 2 * h        # three panels in a row
    w, h = png_size(paths[1])
    assert 400 <= w <= 1200 and 400 <= h <= 1200
    assert no_temporary_files(tmp_path)


def test_one_epoch_and_100_classes(tmp_path):
    plot_curves(records(1), tmp_path / "one.png")
    plot_confusion(noisy_confusion(100, 3000), tmp_path / "c100.png",
                   [f"class_{i}" for i in range(100)])
    assert png_size(tmp_path / "one.png")[0] > 800
    assert min(png_size(tmp_path / "c100.png")) >= 1500            # room for 100 labels
    assert no_temporary_files(tmp_path)


def test_missing_fields_are_left_out():
    with_gaps = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": float("nan"),
                                                  "test_top1": None}]
    assert plots._series(with_gaps, "train_loss") == ([1.0], [1.0])
    assert plots._series(with_gaps, "test_top1") == ([], [])
    assert plots._series([{"lr": 0.5}], "lr") == ([1.0], [0.5])   # no epoch: counted


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = plot_curves(records(2), tmp_path / CURVES)
    before = path.read_bytes()

    def broken(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plot_curves(records(3), path)
    assert path.read_bytes() == before and no_temporary_files(tmp_path)


def test_plot_run_regenerates_from_the_run_folder(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(3)))
    assert plot_run(tmp_path) == [tmp_path / CURVES]               # no confusion.json yet
    write_confusion(tmp_path, noisy_confusion(4, 100), ["a", "b", "c", "d"])
    assert plot_run(tmp_path) == [tmp_path / CURVES, tmp_path / CONFUSION_PLOT]
    png_size(tmp_path / CONFUSION_PLOT)
    assert (tmp_path / CONFUSION).is_file() and no_temporary_files(tmp_path)


@pytest.mark.parametrize("call, error, words", [
    (lambda d: write_plots(d, []), CnnlabError, "train at least one epoch"),
    (lambda d: write_plots(d, {"epoch": 1}), CnnlabError, "list of per-epoch dicts"),
    (lambda d: write_plots(d, [{"epoch": 1, "model": "x"}]), CnnlabError, "hold none of"),
    (lambda d: write_plots(d / "nowhere", records(1)), CnnlabError, "does not exist"),
    (lambda d: write_plots(d, records(1), torch.ones(3, 2, dtype=torch.long)), ShapeError,
     "square"),
    (lambda d: write_plots(d, records(1), noisy_confusion(3, 9), ["a", "b"]), ShapeError,
     "name each of the 3 classes"),
    (lambda d: plot_run(d), CnnlabError, "metrics.jsonl does not exist"),
])
def test_bad_input_is_a_clear_one_line_error(tmp_path, call, error, words):
    with pytest.raises(error, match=words) as info:
        call(tmp_path)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.glob("*.png"))
