"""Video folders (cnnlab.data.video) and the generated Moving-MNIST clips (make-data moving-*)."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from cnnlab.cli import main
from cnnlab.data import load
from cnnlab.data.make import DIRECTIONS, GENERATORS, bounce, clips, make_data
from cnnlab.data.video import (
    encode_clip,
    load_video_folder,
    read_clip,
    read_frames,
    write_clip,
)
from cnnlab.errors import DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """80 training and 40 test clips of moving-digits (16 px digits in 32x32, 20 frames)."""
    return make_data("moving-digits", tmp_path_factory.mktemp("mm") / "out", seed=1, train=80,
                     test=40)


def test_written_frames_read_back_exactly_and_the_same_frames_give_the_same_bytes(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (7, 12, 20), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 10, 14, 3), dtype=np.uint8)
    assert encode_clip(grey) == encode_clip(grey.copy())
    assert np.array_equal(read_frames(write_clip(tmp_path / "g.mkv", grey), "gray"), grey)
    assert np.array_equal(read_frames(write_clip(tmp_path / "c.mkv", rgb), "rgb24"), rgb)
    with pytest.raises(DataError, match="never overwrites"):
        write_clip(tmp_path / "g.mkv", grey)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mkv", "g.mkv"]   # no temp left


def test_a_clip_is_t_frames_at_the_stride_from_the_first(tmp_path):
    frames = np.stack([np.full((6, 8), 10 * t, np.uint8) for t in range(12)])
    path = write_clip(tmp_path / "v.mkv", frames)
    clip = read_clip(path, (4, 6, 8), stride=3)
    assert clip.shape == (1, 4, 6, 8) and clip.dtype == torch.float32
    assert clip[0, :, 0, 0].mul(255).round().tolist() == [0, 30, 60, 90]
    assert read_clip(path, (12, 6, 8)).mul(255).round()[0, :, 3, 3].tolist() == list(
        range(0, 120, 10))


def test_the_generator_s_clips_read_back_exactly_under_both_label_sets(moving):
    made = {("train", i): c for i, c in enumerate(clips("moving-digits", "train", 80, seed=1))}
    for labels in ("digit", "direction"):
        ds = load_video_folder("train", moving / labels, size=(20, 32, 32))
        assert ds.shape == (1, 20, 32, 32) and ds.name == "video" and len(ds) == 80
        names = sorted(p for p in (moving / labels / "train").rglob("*.mkv"))
        for x, y, path in zip(ds.images, ds.labels, names):
            clip = made[("train", int(path.stem.split("-")[1]))]
            assert torch.equal(x[0], torch.from_numpy(clip.frames).float() / 255)
            want = str(clip.digit) if labels == "digit" else list(DIRECTIONS)[clip.direction]
            assert ds.classes[int(y)] == path.parent.name == want
    assert ds.classes == tuple(sorted(DIRECTIONS))
    test = load("video", "test", data_dir=moving / "digit", size=(8, 32, 32),
                options={"vectors": None, "frame_stride": 2})
    assert test.shape == (1, 8, 32, 32) and len(test) == 40
    # statistics of the training clips at the size loaded; each frame holds the whole digit,
    # so every choice of frames has the same mean
    assert test.mean == pytest.approx(ds.mean, rel=1e-5)
    assert (moving / "direction" / "test").is_dir() and (moving / "clips.csv").is_file()


def test_the_digit_does_not_predict_the_path_and_the_path_is_the_motion():
    made = list(clips("moving-digits", "test", 80, seed=5))
    pairs = [(c.digit, c.direction) for c in made]
    assert sorted(pairs) == sorted(list(itertools.product(range(10), range(4))) * 2)  # each twice
    for c in made:
        steps = np.abs(np.diff(c.positions, axis=0))     # |dx|, |dy| per frame
        speed = DIRECTIONS[list(DIRECTIONS)[c.direction]]
        assert (np.median(steps, axis=0) == speed).all()
        assert tuple(abs(v) for v in c.velocity) == speed
        digit = window(c.frames[0], c.positions[0])
        for frame, (x, y) in zip(c.frames, c.positions):     # the same digit, moved, alone
            assert np.array_equal(window(frame, (x, y)), digit)
            assert frame.sum() == digit.sum()


def window(frame, corner, side=16):
    x, y = corner
    return frame[y:y + side, x:x + side]


@pytest.mark.parametrize("speed", [0, 1, 2])
def test_a_bounce_step_permutes_the_states_so_single_frames_carry_no_path(speed):
    """A uniform start and equally likely signs stay so at every frame, whatever the path."""
    room = 16
    states = [(x, v) for x in range(room + 1) for v in {speed, -speed}]
    assert sorted(bounce(x, v, room) for x, v in states) == sorted(states)


def test_the_same_seed_gives_the_same_bytes(tmp_path):
    a = files(make_data("moving-digits", tmp_path / "a", seed=3, train=12, test=4))
    b = files(make_data("moving-digits", tmp_path / "b", seed=3, train=12, test=4))
    assert a == b and "digit/train/3/train-000003.mkv" in a and "clips.csv" in a
    assert a["digit/train/3/train-000003.mkv"] == a["direction/train/horizontal/train-000003.mkv"]
    c = files(make_data("moving-digits", tmp_path / "c", seed=4, train=12, test=4))
    assert a["digit/train/0/train-000000.mkv"] != c["digit/train/0/train-000000.mkv"]


def _folder(root, videos):
    for split in ("train", "test"):
        for name, frames in videos.items():
            write_clip((root / split / "a").mkdir(parents=True, exist_ok=True) or
                       root / split / "a" / name, frames)
    return root


def test_bad_videos_are_refused_naming_the_file_and_the_fix(tmp_path):
    good = np.zeros((6, 8, 8), np.uint8)
    root = _folder(tmp_path / "short", {"a.mkv": good})
    with pytest.raises(DataError, match=r"a\.mkv has 6 frames, fewer than the 7 that a clip of 4 "
                                        r"frames at stride 2 needs; use a smaller --frame-stride"):
        load_video_folder("train", root, size=(4, 8, 8), options={"frame_stride": 2})
    with pytest.raises(DataError, match=r"a\.mkv has 8x8 frames but the model takes 10x8 \(width "
                                        r"x height\); resize the videos"):
        load_video_folder("train", root, size=(4, 8, 10))
    (root / "train" / "a" / "b.mp4").write_bytes(b"not a video at all" * 20)
    with pytest.raises(DataError, match=r"cannot decode video .*b\.mp4 .*delete or replace"):
        load_video_folder("train", root, size=(4, 8, 8))
    for options, message in (({"vectors": "glove.txt"}, ("--vectors 'glove.txt' does not apply "
                                                        "to video data")),
                             ({"frame_stride": 0}, "--frame-stride 0: give a whole number >= 1")):
        with pytest.raises(DataError, match=message):
            load_video_folder("train", root, size=(4, 8, 8), options=options)
    with pytest.raises(DataError, match="pass --data-dir"):
        load_video_folder("train", None, size=(4, 8, 8))
    with pytest.raises(DataError, match=r"size is \(frames, height, width\)"):
        load_video_folder("train", tmp_path / "short", size=(8, 8))


def test_every_error_is_one_line_from_the_command(moving, capsys):
    code = main(["train", "c3d_mnist", "--data", "video", "--data-dir", str(moving / "digit"),
                 "--epochs", "1", "--out", str(moving.parent / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "has 32x32 frames but the model takes 64x64" in err


def test_the_command_writes_both_label_sets(tmp_path, capsys):
    assert "moving-mnist" in GENERATORS and GENERATORS["moving-mnist"].motion.size == 64
    code = main(["make-data", "moving-digits", "--out", str(tmp_path / "m"), "--train", "10",
                 "--test", "10", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "10 training and 10 test clips (mkv, FFV1)" in out
    assert f"--data video --data-dir {tmp_path / 'm' / 'digit'}" in out
    assert sorted(p.name for p in (tmp_path / "m" / "digit" / "train").iterdir()) == [
        str(d) for d in range(10)]


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="no shared MNIST files")
def test_moving_mnist_clips_from_the_real_files():
    (c,) = clips("moving-mnist", "test", 1, seed=0, data_dir=SHARED)
    assert c.frames.shape == (20, 64, 64) and c.frames.max() == 255


def test_a_lazy_folder_decodes_the_same_clips_when_indexed(moving):
    eager = load_video_folder("test", moving / "direction", size=(16, 32, 32))
    lazy = load_video_folder("test", moving / "direction", size=(16, 32, 32), lazy=True)
    assert lazy.lazy and not eager.lazy and lazy.shape == eager.shape == (1, 16, 32, 32)
    assert lazy.mean == pytest.approx(eager.mean) and lazy.std == pytest.approx(eager.std)
    assert torch.equal(lazy[3][0], eager[3][0])
    part = lazy.subset([5, 1, 7])
    assert part.lazy and torch.equal(part.images[0:3], eager.images[[5, 1, 7]])
    assert torch.equal(part.labels, eager.labels[[5, 1, 7]])
    x, y = lazy.__getitems__([2, 0])
    assert torch.equal(x, eager.images[[2, 0]]) and torch.equal(y, eager.labels[[2, 0]])
