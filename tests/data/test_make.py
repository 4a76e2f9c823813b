"""`cnnlab make-data`: generated canvases with boxes, written as VOC or CSV and read back."""

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import main
from cnnlab.data import load, read_boxes
from cnnlab.data import make as mk
from cnnlab.data.make import GENERATORS, INK, MAX_COVER, canvases, make_data
from cnnlab.errors import CnnlabError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def ink_extent(image):
    rows, cols = np.flatnonzero((image > INK).any(1)), np.flatnonzero((image > INK).any(0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_a_single_object_box_is_the_tight_extent_of_its_ink():
    canvas = dataclasses.replace(GENERATORS["digits-single"].canvas, clutter=0)
    for drawn in canvases(canvas, "test", 6, seed=1):
        assert drawn.image.shape == (32, 32) and drawn.image.dtype == np.uint8
        assert drawn.boxes.shape == (1, 4) and drawn.labels.shape == (1,)
        assert drawn.boxes[0].tolist() == ink_extent(drawn.image)


def test_multi_canvases_hold_one_to_five_objects_none_hidden():
    row = GENERATORS["digits-multi"].canvas
    drawn = list(canvases("digits-multi", "train", 12, seed=2))
    counts = [len(d.boxes) for d in drawn]
    assert min(counts) >= 1 and max(counts) <= 5 and len(set(counts)) > 2
    for d in drawn:
        assert d.image.shape == (row.size, row.size)
        b = d.boxes
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= row.size).all()
        assert ((b[:, 2:] - b[:, :2]) <= row.side[1]).all()
        assert ((0 <= d.labels) & (d.labels < 10)).all()
        for i, j in itertools.combinations(range(len(b)), 2):
            assert mk._cover(b[i].tolist(), b[j].tolist()) <= MAX_COVER


def colour_folder(root):
    """An image folder of 32x32 RGB images: red ones for training, green ones for testing."""
    for split, colour in (("train", (200, 0, 0)), ("test", (0, 200, 0))):
        for c in ("cat", "dog"):
            for i in range(2):
                path = root / split / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), colour).save(path)
    return root


def test_colour_objects_are_pasted_images_from_their_own_split(tmp_path):
    folder = colour_folder(tmp_path / "cifar")
    side = GENERATORS["cifar10-single"].canvas.side
    for split, colour in (("train", [200, 0, 0]), ("test", [0, 200, 0])):
        for d in canvases("cifar10-single", split, 3, seed=0, data_dir=folder):
            assert d.image.shape == (64, 64, 3)
            x0, y0, x1, y1 = (int(v) for v in d.boxes[0])
            assert x1 - x0 == y1 - y0 and side[0] <= x1 - x0 <= side[1]
            assert (d.image[y0:y1, x0:x1] == colour).all()        # the object, on top
            assert d.labels.tolist()[0] in (0, 1)


def test_a_folder_too_large_to_decode_up_front_gives_the_same_canvases(tmp_path, monkeypatch):
    folder = colour_folder(tmp_path / "cifar")
    for i, path in enumerate(sorted(folder.rglob("*.png"))):      # distinct images
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), np.uint8)).save(path)
    decoded = list(canvases("cifar10-multi", "train", 2, seed=1, data_dir=folder))
    monkeypatch.setattr(mk, "POOL_BYTES", 0)                    # now decoded image by image
    lazy = list(canvases("cifar10-multi", "train", 2, seed=1, data_dir=folder))
    for a, b in zip(decoded, lazy, strict=True):
        assert np.array_equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)


@pytest.mark.parametrize("fmt", ["voc", "csv"])
def test_what_is_written_reads_back_exactly(tmp_path, fmt):
    out = make_data("digits-multi", tmp_path / "set", seed=5, fmt=fmt, train=4, test=3)
    drawn = list(canvases("digits-multi", "test", 3, seed=5))
    records, classes = read_boxes(fmt, out, "test")
    assert classes == tuple(str(d) for d in range(10))
    assert (out / "classes.txt").read_text().split() == list(classes)
    for r, d in zip(records, drawn, strict=True):
        assert torch.equal(r.boxes, d.boxes) and torch.equal(r.labels, d.labels)
    ds = load(fmt, "test", data_dir=out)
    assert ds.images.shape == (3, 1, 48, 48)
    assert torch.equal(ds.images[0, 0] * 255, torch.from_numpy(drawn[0].image).float())
    assert torch.allclose(ds.labels[0][:, 1:], drawn[0].boxes / 48)
    assert len(load(fmt, "train", data_dir=out)) == 4


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_the_same_seed_gives_the_same_bytes(tmp_path):
    a = files(make_data("digits-single", tmp_path / "a", seed=3, train=4, test=2))
    b = files(make_data("digits-single", tmp_path / "b", seed=3, train=4, test=2))
    assert a == b and "images/train-000003.png" in a and "Annotations/test-000001.xml" in a
    c = files(make_data("digits-single", tmp_path / "c", seed=4, train=4, test=2))
    assert a.keys() == c.keys() and a["images/train-000000.png"] != c["images/train-000000.png"]
    more = files(make_data("digits-single", tmp_path / "d", seed=3, train=6, test=2))
    assert all(more[k] == a[k] for k in a if k.startswith("images/"))   # more images, same first


def test_out_is_new_and_an_error_leaves_nothing(tmp_path, monkeypatch):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    with pytest.raises(CnnlabError, match="already holds files"):
        make_data("digits-single", taken, train=2, test=1)
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    with pytest.raises(CnnlabError, match="is a file, not a folder"):
        make_data("digits-single", taken / "mine.txt", train=2, test=1)
    (tmp_path / "empty").mkdir()
    empty = make_data("digits-single", tmp_path / "empty", train=2, test=1)
    assert (empty / "ImageSets" / "Main" / "train.txt").is_file()     # voc, by default
    calls = []

    def broken(image):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return b"png"

    monkeypatch.setattr(mk, "_png", broken)
    with pytest.raises(OSError):
        make_data("digits-single", tmp_path / "deep" / "new", train=3, test=1)
    assert not (tmp_path / "deep").exists()                    # nor any temporary folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"]


def test_bad_requests_are_refused_before_any_work(tmp_path):
    for kwargs, message in (({"train": 0}, "--train 0: give at least 1 image"),
                            ({"seed": -1}, "--seed -1"),
                            ({"fmt": "coco"}, "--format coco: digits-single is written as voc")):
        with pytest.raises(CnnlabError, match=message):
            make_data("digits-single", tmp_path / "x", **kwargs)
    with pytest.raises(CnnlabError, match="did you mean 'mnist-single'"):
        make_data("mnist-singel", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_command_lists_the_names_and_writes_a_set(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["make-data", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    lines = out.splitlines()
    for name, row in GENERATORS.items():             # one line each, with the frame size
        side = (row.canvas or row.motion).size
        assert any(line.split()[:1] == [name] and f" {side}x{side}" in line for line in lines)
    assert "one MNIST digit (20-40 px) on 64x64" in out and "fragments; 5,000 + 1,000" in out
    code = main(["make-data", "digits-single", "--out", str(tmp_path / "s"), "--train", "3",
                 "--test", "2", "--format", "csv", "--quiet"])
    assert code == 0 and "3 training and 2 test images (csv)" in capsys.readouterr().out
    assert len(load("csv", "train", data_dir=tmp_path / "s")) == 3
    assert main(["make-data", "digits-single", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="no shared MNIST files")
def test_mnist_canvases_from_the_real_files():
    for name in ("mnist-single", "fashion-mnist-multi"):
        canvas = GENERATORS[name].canvas
        for d in canvases(name, "test", 2, seed=0, data_dir=SHARED):
            assert d.image.shape == (canvas.size, canvas.size) and len(d.boxes) >= 1


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10-jpeg").is_dir(), reason="no shared CIFAR-10 copy")
def test_cifar10_canvases_from_the_jpeg_folder():
    (d,) = canvases("cifar10-single", "test", 1, seed=0, data_dir=SHARED / "cifar10-jpeg")
    assert d.image.shape == (64, 64, 3) and len(d.boxes) == 1
