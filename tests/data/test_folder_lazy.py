"""Large image folders stay on disk: LazyImages decode a batch when it is drawn."""

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import folder, load, load_folder
from cnnlab.errors import DataError
from cnnlab.train import TrainConfig, train
from cnnlab.train.batches import Batches, data_workers


def write_folder(root, n=12, size=(10, 8)):
    """Three classes of RGB images whose pixels tell them apart (bright, mid, dark red)."""
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", n), ("test", n // 2)):
        for i in range(count):
            label = i % 3
            pixels = torch.randint(0, 60, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
            pixels[..., 0] += 60 * label
            path = root / split / f"c{label}" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.numpy(), "RGB").save(path)


def test_lazy_and_in_memory_folders_hold_the_same_data(tmp_path):
    write_folder(tmp_path)
    for split in ("train", "test"):
        eager = load_folder(tmp_path, split, size=(6, 7), lazy=False)
        lazy = load_folder(tmp_path, split, size=(6, 7), lazy=True)
        assert lazy.lazy and not eager.lazy
        assert isinstance(lazy.images, folder.LazyImages)
        assert lazy.image_shape == eager.image_shape == (3, 6, 7) and len(lazy) == len(eager)
        assert torch.equal(lazy.labels, eager.labels) and lazy.classes == eager.classes
        assert torch.equal(lazy.images[:], eager.images)             # decoded on demand
        assert torch.equal(lazy.images[3], eager.images[3])
        assert torch.equal(lazy[2][0], eager[2][0]) and lazy[2][1] == eager[2][1]
        # all training images are in the statistics' sample here (12 < STATS_SAMPLE)
        assert lazy.mean == pytest.approx(eager.mean) and lazy.std == pytest.approx(eager.std)


def test_a_subset_stays_on_disk(tmp_path):
    write_folder(tmp_path)
    eager, lazy = (load_folder(tmp_path, size=5, lazy=flag) for flag in (False, True))
    for index in (slice(2, 9, 3), [7, 0, 5], torch.tensor([4, 4, 1]), eager.labels == 1):
        part = lazy.subset(index)
        assert part.lazy and torch.equal(part.images[:], eager.subset(index).images)
        assert torch.equal(part.labels, eager.subset(index).labels)
    assert lazy.subset(slice(0, 0)).images[:].shape == (0, 3, 5, 5)


def test_the_decoded_size_decides_and_lazy_forces(tmp_path, monkeypatch):
    write_folder(tmp_path)                      # 12 images of 3 x 8 x 10 floats: 11,520 bytes
    assert not load("folder", "train", data_dir=tmp_path).lazy
    monkeypatch.setattr(folder, "LAZY_BYTES", 11_519)
    assert load("folder", "train", data_dir=tmp_path).lazy
    assert not load("folder", "train", data_dir=tmp_path, lazy=False).lazy
    # the training split decides for both: a small test split of a large folder stays on disk
    # too (and reading it does not decode the training images)
    monkeypatch.setattr(folder, "LAZY_BYTES", 6_000)              # test split: 5,760 bytes
    assert load("folder", "test", data_dir=tmp_path).lazy


def test_a_lazy_image_of_another_size_is_named_when_read(tmp_path):
    write_folder(tmp_path)
    Image.new("RGB", (3, 3)).save(tmp_path / "test" / "c1" / "zz_small.png")
    ds = load_folder(tmp_path, "test", lazy=True)              # no size=: the training images'
    assert ds.image_shape == (3, 8, 10)
    message = (r"zz_small.png is 3x3 but the data set's images are 10x8 \(width x height\); "
               r"pass size=")
    with pytest.raises(DataError, match=message):
        ds.images[:]
    Image.new("RGB", (3, 3)).save(tmp_path / "train" / "c1" / "zz_small.png")
    with pytest.raises(DataError, match=message):              # in the statistics' sample
        load_folder(tmp_path, "train", lazy=True)
    assert load_folder(tmp_path, "train", size=8, lazy=True).images[:].shape == (13, 3, 8, 8)


def test_batches_of_a_lazy_folder_are_those_of_the_tensors(tmp_path):
    write_folder(tmp_path)
    eager, lazy = (load_folder(tmp_path, size=4, lazy=flag) for flag in (False, True))
    # on the CPU the model's threads take every core: a lazy folder is decoded in process;
    # on a GPU, worker processes decode while it computes
    assert data_workers(eager) == 0 and data_workers(lazy) == 0 and data_workers(lazy, 3) == 3
    assert data_workers(lazy, 0, "cuda") >= 1 and data_workers(eager, 0, "cuda") == 0
    runs = []
    for ds, workers in ((eager, 0), (lazy, 0), (lazy, 2)):
        g = torch.Generator().manual_seed(5)
        runs.append(list(Batches(ds, 5, torch.device("cpu"), g, workers)))
    for other in runs[1:]:
        assert len(other) == len(runs[0]) == 3
        for (x0, y0), (x1, y1) in zip(runs[0], other, strict=True):
            assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_training_on_a_lazy_folder_equals_training_in_memory(tmp_path):
    write_folder(tmp_path, n=30)
    results = []
    for flag in (False, True):
        data = tuple(load_folder(tmp_path, split, size=32, lazy=flag)
                     for split in ("train", "test"))
        config = TrainConfig("lenet5_modern", data="folder", epochs=2, batch_size=8, lr=0.05,
                             out=str(tmp_path / f"run_{flag}"), plots=False, tensorboard=False)
        results.append(train(config, progress=False, datasets=data))
    eager, lazy = results
    # the same batches, decoded by a worker process instead of sliced from memory
    assert [r["train_loss"] for r in lazy["history"]] == \
        [r["train_loss"] for r in eager["history"]]
    assert lazy["test_top1"] == eager["test_top1"]


def test_index_types(tmp_path):
    write_folder(tmp_path)
    ds = load_folder(tmp_path, size=4, lazy=True)
    first = ds.images[2]
    assert first.shape == (3, 4, 4)
    for index in (np.int64(2), torch.tensor(2), np.array(2), -10):
        assert torch.equal(ds.images[index], first)
    with pytest.raises(TypeError, match="not a bool"):
        ds.images[True]


def test_a_bad_image_read_by_a_worker_is_a_one_line_error(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "test" / "c2" / "zz_broken.png").write_bytes(b"not a png")
    ds = load_folder(tmp_path, "test", size=4, lazy=True)
    with pytest.raises(DataError) as caught:
        list(Batches(ds, 4, torch.device("cpu"), None, num_workers=1))
    message = str(caught.value)
    assert "zz_broken.png" in message and "delete or replace the file" in message
    assert "\n" not in message and "Traceback" not in message
