"""Image folders: ROOT/<split>/<class>/<image>, tiny PNGs made with Pillow."""

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import load, load_folder
from cnnlab.errors import DataError


def png(path, size=(6, 4), mode="RGB", value=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8) if value is None else np.full(
        shape, value, np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return pixels


def test_classes_labels_and_pixels(tmp_path):
    a = png(tmp_path / "train" / "cat" / "1.png", seed=1)
    png(tmp_path / "train" / "cat" / "2.png", seed=2)
    b = png(tmp_path / "train" / "dog" / "x.png", seed=3)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("skipped")
    (tmp_path / "train" / "dog" / ".hidden.png").write_bytes(b"skipped")
    png(tmp_path / "test" / "dog" / "t.png", seed=4)
    train = load_folder(tmp_path, "train")
    assert train.classes == ("cat", "dog") and train.labels.tolist() == [0, 0, 1]
    assert train.images.shape == (3, 3, 4, 6) and train.images.dtype == torch.float32
    assert torch.equal(train.images[0] * 255, torch.from_numpy(a).permute(2, 0, 1).float())
    assert torch.equal(train.images[2] * 255, torch.from_numpy(b).permute(2, 0, 1).float())
    mean = train.images.mean(dim=(0, 2, 3))
    assert train.mean == pytest.approx(mean.tolist())
    test = load("folder", "test", data_dir=tmp_path)               # the same through load()
    assert test.labels.tolist() == [1] and test.classes == train.classes
    assert test.mean == train.mean                                 # the training split's


def test_any_size_and_mode_resized_consistently(tmp_path):
    png(tmp_path / "train" / "a" / "big.jpg", size=(40, 30))
    png(tmp_path / "train" / "b" / "grey.png", size=(5, 9), mode="L", value=200)
    Image.new("P", (7, 7)).save(tmp_path / "train" / "b" / "palette.gif")
    png(tmp_path / "test" / "a" / "t.bmp", size=(3, 3))
    ds = load_folder(tmp_path, "train", size=16)
    assert ds.images.shape == (3, 3, 16, 16) and ds.in_channels == 3       # mixed -> RGB
    grey = ds.images[1]
    assert torch.allclose(grey, torch.full_like(grey, 200 / 255), atol=1 / 255)
    assert 0 <= ds.images.min() and ds.images.max() <= 1
    assert load_folder(tmp_path, "test", size=(8, 12)).images.shape == (1, 3, 8, 12)
    assert load_folder(tmp_path, "train", size=8, mode="L").images.shape == (3, 1, 8, 8)


def test_all_grey_gives_one_channel(tmp_path):
    for i, c in enumerate("ab"):
        png(tmp_path / "train" / c / "0.png", mode="L", seed=i)
        png(tmp_path / "test" / c / "0.png", mode="L", seed=i + 5)
    assert load_folder(tmp_path, "test").images.shape == (2, 1, 4, 6)


def test_errors_name_the_file_and_fix(tmp_path):
    png(tmp_path / "train" / "a" / "1.png")
    png(tmp_path / "train" / "a" / "2.png", size=(5, 5))
    with pytest.raises(DataError, match=r"2.png is 5x5 but .*1.png is 6x4 .*pass size="):
        load_folder(tmp_path)
    bad = tmp_path / "train" / "a" / "2.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=rf"cannot read image {bad} .*delete or replace"):
        load_folder(tmp_path, size=4)
    bad.unlink()
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty holds no images"):
        load_folder(tmp_path)
    (tmp_path / "train" / "empty").rmdir()
    png(tmp_path / "test" / "zebra" / "1.png")
    with pytest.raises(DataError, match=r"classes not in .*train: zebra"):
        load_folder(tmp_path, "test")
    with pytest.raises(DataError, match=r"image folder .*nowhere/train does not exist"):
        load_folder(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"mode must be 'RGB' or 'L'"):
        load_folder(tmp_path, mode="CMYK")
    with pytest.raises(DataError, match=r"reads images from data_dir=ROOT"):
        load("folder", "train")


def test_a_root_that_is_a_file_or_unreadable(tmp_path, monkeypatch):
    archive = tmp_path / "pets.zip"
    archive.write_bytes(b"PK")
    with pytest.raises(DataError, match=rf"^image folder {archive} is a file, not a folder; pass "
                                        r"the folder that holds train/<class>/ and test/<class>/ "
                                        r"\(unpack an archive first\)$"):
        load("folder", "train", data_dir=archive)
    png(tmp_path / "train" / "a" / "1.png")
    locked = tmp_path / "train" / "a"
    real = type(locked).iterdir

    def iterdir(self):                                       # root may read anything
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(type(locked), "iterdir", iterdir)
    with pytest.raises(DataError, match=rf"^cannot read {locked}: permission denied; make the "
                                        rf"image folder readable \(chmod -R u\+rX "
                                        rf"'{tmp_path}/train'\) or copy it somewhere readable$"):
        load_folder(tmp_path)
    with pytest.raises(DataError, match=r"^root must be a folder path, got 7"):
        load_folder(7)


def test_an_image_pillow_cannot_convert(tmp_path, monkeypatch):
    path = tmp_path / "train" / "a" / "1.png"
    png(path)

    def convert(self, mode):
        raise ValueError(f"conversion from La to {mode} not supported")

    monkeypatch.setattr(Image.Image, "convert", convert)
    with pytest.raises(DataError, match=rf"^cannot convert image {path} \(mode RGB\) to L \("
                                        r"conversion from La to RGB not supported\); delete or "
                                        r"replace the file$"):
        load_folder(tmp_path, mode="L")
