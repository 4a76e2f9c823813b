"""`cnnlab visualize RUN --method M` end to end on a tiny trained run: every method writes its
PNGs and index.html; --out is never overwritten without --overwrite and a failing call leaves
nothing behind; each bad input is a one-line error naming the value and the fix."""

import argparse
import html
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import load
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, train
from cnnlab.visualize import command, pictures
from cnnlab.visualize.command import EPILOG, METHODS, add_parser, parse_targets
from cnnlab.visualize.report import INDEX
from cnnlab.visualize.targets import Target


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished lenet5_modern run (1 epoch on 64 digits at 32 x 32)."""
    out = tmp_path_factory.mktemp("runs") / "lenet"
    train_ds, test_ds = load("digits", "train", size=32), load("digits", "test", size=32)
    cfg = TrainConfig("lenet5_modern", epochs=1, lr=0.05, batch_size=32, out=str(out),
                      device="cpu", plots=False, tensorboard=False)
    train(cfg, progress=False, datasets=(train_ds.subset(torch.arange(64)),
                                         test_ds.subset(torch.arange(32))))
    return out


def parser():
    p = argparse.ArgumentParser(prog="cnnlab")
    add_parser(p.add_subparsers(dest="command"))
    return p


def visualize(run, *words, out=None):
    """Run the command as the CLI does; returns the --out folder."""
    argv = ["visualize", str(run), *words, "--quiet"] + (["--out", str(out)] if out else [])
    args = parser().parse_args(argv)
    assert args.func(args) == 0
    return Path(out) if out else Path(run) / f"visualize-{args.method}"


def refused(run, *words, match, out=None):
    """The one-line CnnlabError the call raises."""
    with pytest.raises(CnnlabError, match=match) as info:
        visualize(run, *words, out=out)
    assert "\n" not in str(info.value)
    return str(info.value)


def pngs(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.suffix == ".png")


def embedded(folder):
    """The PNGs index.html embeds, as bytes, in page order."""
    page = (Path(folder) / INDEX).read_text(encoding="utf-8")
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    import base64

    return [base64.b64decode(s.split(",", 1)[1]) for s in srcs], page


CASES = [
    ("--method saliency --count 3", ["saliency-1.png", "saliency-2.png"]),
    ("--method deconvnet --targets 3,c3:5@2,2 --count 2", ["deconvnet-1.png"]),
    ("--method guided --layer c3 --channels 0,5 --count 2", ["guided-1.png"]),
    ("--method filters", ["filters.png"]),
    ("--method maps --layer c1 --count 2", ["maps-c1-1.png"]),
    ("--method class-images --steps 3", ["class-images.png"]),
    ("--method top-k --layer c3 --channels 1,4 --k 4 --count 20",
     ["top4-c3.png", "top4-c3-1.png", "top4-c3-4.png"]),
]


@pytest.mark.parametrize("words, files", CASES)
def test_each_method_writes_its_pictures_and_the_page(run_dir, tmp_path, monkeypatch, words,
                                                      files):
    monkeypatch.setattr(command, "ROWS_PER_PICTURE", 2)      # 3 images: 2 pictures
    out = visualize(run_dir, *words.split(), out=tmp_path / "v")
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, INDEX])
    images, page = embedded(out)
    assert images == [(out / f).read_bytes() for f in files]       # each PNG, in order
    method = words.split()[1]
    assert "<td>lenet5_modern</td>" in page and f"<td>{method}</td>" in page
    assert not list(tmp_path.glob(".*.tmp"))                      # the staging folder is gone


def test_grids_have_one_cell_per_image_and_target(run_dir, tmp_path):
    out = visualize(run_dir, "--method", "guided", "--targets", "3", "c3:5", "--count", "3",
                    out=tmp_path / "v")
    # 3 columns (the image, 2 targets) of 0.9 inch at 100 dpi
    assert Image.open(out / "guided-1.png").size[0] == 270
    out = visualize(run_dir, "--method", "filters", out=tmp_path / "f")
    assert Image.open(out / "filters.png").size[0] == 180         # 6 filters: 3 columns of 0.6


def test_default_targets_are_the_predicted_classes(run_dir, tmp_path, monkeypatch):
    seen = []
    keep = pictures.save_grid
    monkeypatch.setattr(command, "save_grid",
                        lambda rows, path, **kw: seen.append(kw["captions"]) or keep(rows, path,
                                                                                     **kw))
    visualize(run_dir, "--method", "saliency", "--count", "4", out=tmp_path / "v")
    from cnnlab.train.run import load_run

    model, _ = load_run(run_dir)
    test = load("digits", "test", size=32)
    x = test.normalize(test.images[:4])
    predicted = model(x).argmax(1).tolist()
    assert [row[0] for row in seen[0]] == [f"#{i} {int(test.labels[i])}" for i in range(4)]
    assert [row[1].split(":")[0] for row in seen[0]] == [f"class {p}" for p in predicted]


def test_top_k_shows_different_images_unless_all_positions(run_dir, tmp_path, monkeypatch):
    seen = []
    keep = pictures.save_grid
    # the per-channel pictures have captions (the overview of all channels has none)
    monkeypatch.setattr(command, "save_grid",
                        lambda rows, path, **kw: kw.get("captions") and seen.append(
                            kw["captions"][0]) or keep(rows, path, **kw))
    shown = {}
    for flag in ([], ["--all-positions"]):
        seen.clear()
        out = visualize(run_dir, "--method", "top-k", "--layer", "c3", "--channels", "0-5",
                        "--count", "20", *flag, out=tmp_path / f"v{len(flag)}")
        images = [[cell.split(":")[0] for cell in row] for row in seen]   # "#i" per cell
        shown[bool(flag)] = images
        ranked = command.RANKED[not flag]
        assert f"<td>{html.escape(ranked)}</td>" in embedded(out)[1] and len(images) == 6
    assert all(len(set(row)) == 9 for row in shown[False])           # 9 of the 20 images
    assert any(len(set(row)) < 9 for row in shown[True])             # neighbours of one image


def test_both_kernels_draw_the_same_saliency(run_dir, tmp_path):
    a = visualize(run_dir, "--method", "saliency", "--count", "2", out=tmp_path / "a")
    b = visualize(run_dir, "--method", "saliency", "--count", "2", "--kernel", "reference",
                  out=tmp_path / "b")
    pa, pb = (np.asarray(Image.open(f / "saliency-1.png"), dtype=int) for f in (a, b))
    assert pa.shape == pb.shape and np.abs(pa - pb).max() <= 2


def test_images_from_files(run_dir, tmp_path):
    test = load("digits", "test", size=32)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray((test.images[i, 0] * 255).round().byte().numpy(), "L").save(paths[-1])
    out = visualize(run_dir, "--method", "guided", "--targets", "3", "--images", *map(str, paths),
                    out=tmp_path / "v")
    assert pngs(out) == ["guided-1.png"]
    assert "digit0.png, digit1.png" in (out / INDEX).read_text(encoding="utf-8")
    small, rgb = tmp_path / "small.png", tmp_path / "rgb.png"
    Image.new("L", (28, 28)).save(small)
    Image.new("RGB", (32, 32)).save(rgb)
    refused(run_dir, "--method", "saliency", "--images", str(small),
            match=r"image '.*small.png' is 28 x 28 \(H x W\) but the run's model takes 32 x 32 "
                  r"images; resize it to 32 x 32 first")
    refused(run_dir, "--method", "saliency", "--images", str(rgb),
            match=r"is colour \(3 channels\) \(RGB\) but the run's model takes grey \(1 channel\)"
                  r" images; convert it")
    (tmp_path / "junk.png").write_text("not an image")
    refused(run_dir, "--method", "saliency", "--images", str(tmp_path / "junk.png"),
            match="cannot read image")
    refused(run_dir, "--method", "saliency", "--images", str(tmp_path / "none.png"),
            match="does not exist")
    assert not (run_dir / "visualize-saliency").exists()


def test_an_existing_out_is_refused_and_left_as_it_was(run_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "filters.png").write_text("my own file")
    refused(run_dir, "--method", "filters", out=out,
            match=r"--out '.*mine' already holds files; pick another --out, or pass --overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["filters.png", "notes.txt"]
    assert (out / "filters.png").read_text() == "my own file"
    visualize(run_dir, "--method", "filters", "--overwrite", out=out)
    assert sorted(p.name for p in out.iterdir()) == ["filters.png", INDEX, "notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert Image.open(out / "filters.png").format == "PNG"
    (tmp_path / "file").write_text("x")
    refused(run_dir, "--method", "filters", out=tmp_path / "file", match="is a file, not a folder")


def test_a_failing_call_leaves_nothing_half_written(run_dir, tmp_path, monkeypatch):
    calls = []

    def fail_second(rows, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise CnnlabError("disk gone")
        return pictures.save_grid(rows, path, **kw)

    monkeypatch.setattr(command, "save_grid", fail_second)
    monkeypatch.setattr(command, "ROWS_PER_PICTURE", 2)      # 3 images: 2 pictures
    new = tmp_path / "deep" / "new"
    with pytest.raises(CnnlabError, match="disk gone"):
        visualize(run_dir, "--method", "saliency", "--count", "3", out=new)
    assert list(tmp_path.iterdir()) == []                  # no folder, no staging, no parents
    old = tmp_path / "old"
    old.mkdir()
    (old / "saliency-1.png").write_bytes(b"before")
    calls.clear()
    with pytest.raises(CnnlabError, match="disk gone"):
        visualize(run_dir, "--method", "saliency", "--count", "3", "--overwrite", out=old)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert [p.name for p in old.iterdir()] == ["saliency-1.png"]
    assert (old / "saliency-1.png").read_bytes() == b"before"


@pytest.mark.parametrize("words, match", [
    ("--method saliency --targets c9:0",
     r"has no layer 'c9': did you mean c5, c3, c1\? its layers are c1, s2, c3, s4, c5, f6, output"),
    ("--method maps --layer conv3", r"has no layer 'conv3'.*its layers are c1, s2"),
    ("--method maps --layer c3 --channels 16",
     r"channel 16 is out of range: layer 'c3' ha.* 16 .*0..15"),
    ("--method saliency --targets 10", r"class 10 is out of range: .* 10 .*0..9"),
    ("--method guided --targets c3:5@10,0",
     r"position \(10, 0\) lies outside layer 'c3', which has a 10x10 map"),
    ("--method top-k --layer f6", (r"layer 'f6' gives 84 values per image, no spatial map; "
                                   r"--method top-k needs a convolution or pooling layer")),
    ("--method maps --layer f6 --count 1", r"layer 'f6' gives 84 values per image, no spatial"),
    ("--method top-k", r"--method top-k needs --layer"),
    ("--method maps --layer c1 --all-positions",
     "--all-positions ranks the units of --method top-k; drop it for --method maps"),
    ("--method filters --layer c1", "drop --layer"),
    ("--method saliency --channels 1", "needs --layer"),
    ("--method saliency --targets 3 --layer c1", "drop --layer/--channels"),
    ("--method class-images --count 3", "uses no images; drop --count"),
    ("--method saliency --count 0", "--count 0: give a positive number"),
    ("--method top-k --layer c3 --channels 3-1", "write channels as 0,3,5 or a range 0-7"),
    ("--method saliency --targets conv:", "cannot read target 'conv:'"),
    ("--method saliency --images a.png --split test", "--images and --split both name images"),
])
def test_bad_input_is_a_one_line_error(run_dir, tmp_path, words, match):
    refused(run_dir, *shlex.split(words), match=match, out=tmp_path / "v")
    assert not (tmp_path / "v").exists() and not list(tmp_path.iterdir())


def test_an_empty_data_set_is_refused(run_dir, tmp_path, monkeypatch):
    from cnnlab.train import _runs

    keep = _runs.run_data
    monkeypatch.setattr(_runs, "run_data",
                        lambda *a, **kw: keep(*a, **kw).subset(torch.arange(0)))
    for method in ("saliency", "maps --layer c1", "top-k --layer c3"):
        refused(run_dir, "--method", *method.split(), out=tmp_path / "v",
                match="digits test holds no images; pick another --data or --split")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory):
    """A finished run of the 7-layer conv autoencoder (1 epoch on 64 digits at 8 x 8, not its
    default 28 x 28)."""
    out = tmp_path_factory.mktemp("runs") / "cae"
    train_ds, test_ds = load("digits", "train"), load("digits", "test")
    cfg = TrainConfig("cae", epochs=1, lr=0.1, batch_size=32, out=str(out), device="cpu",
                      plots=False, tensorboard=False)
    train(cfg, progress=False, datasets=(train_ds.subset(torch.arange(64)),
                                         test_ds.subset(torch.arange(32))))
    return out


def test_a_run_of_another_task_has_no_class_scores(autoencoder_dir, tmp_path):
    for words in ("--method class-images", "--method saliency", "--method guided --targets 3"):
        refused(autoencoder_dir, *words.split(), out=tmp_path / "v",
                match=r"'.*cae' is a reconstruction run \(cae\), which has no class scores "
                      r"for .*; pass hidden neurons instead: --layer L --channels LIST, or "
                      r"--targets conv1:0")
    assert not list(tmp_path.iterdir())
    # its neurons are fine, at the size it was trained at
    out = visualize(autoencoder_dir, "--method", "class-images", "--layer", "conv1",
                    "--channels", "2", "--steps", "2", out=tmp_path / "v")
    assert pngs(out) == ["class-images.png"]
    assert "reconstruction" in (out / INDEX).read_text(encoding="utf-8")
    out = visualize(autoencoder_dir, "--method", "guided", "--targets", "code:0", "--count",
                    "1", out=tmp_path / "g")
    assert pngs(out) == ["guided-1.png"]


def test_parse_targets_keeps_positions_together():
    assert parse_targets(["3,c3:5@4,6", "c1:0", "7"]) == [
        Target(None, 3), Target("c3", 5, (4, 6)), Target("c1", 0), Target(None, 7)]
    assert command.parse_channels("0-2,5,1") == [0, 1, 2, 5]


def test_help_lists_every_method_and_its_examples_parse(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["visualize", "--help"])
    shown = capsys.readouterr().out
    assert "examples:" in shown and all(m in shown for m in METHODS)
    lines = [line.split("#")[0].strip() for line in EPILOG.splitlines()
             if line.strip().startswith("cnnlab visualize")]
    assert len(lines) >= len(METHODS)
    for line in lines:
        args = parser().parse_args(shlex.split(line)[1:])
        assert args.method in METHODS
    assert {parser().parse_args(shlex.split(line)[1:]).method for line in lines} == set(METHODS)


def test_progress_goes_to_stderr_unless_quiet(run_dir, tmp_path, capsys):
    args = parser().parse_args(["visualize", str(run_dir), "--method", "maps", "--layer", "c1",
                                "--count", "1", "--out", str(tmp_path / "v")])
    assert command.run(args) == 0
    captured = capsys.readouterr()
    assert f"1 picture and {INDEX} written to {tmp_path / 'v'}" in captured.out
    assert "maps of c1" in captured.err
    visualize(run_dir, "--method", "maps", "--layer", "c1", "--count", "1", out=tmp_path / "w")
    assert capsys.readouterr().err == ""


def test_the_cli_prints_one_line_without_traceback(run_dir, capsys):
    from cnnlab import cli

    if "visualize" not in cli.build_parser().format_help():
        pytest.skip("`cnnlab visualize` is not wired into cnnlab.cli yet")
    assert cli.main(["visualize", str(run_dir), "--method", "maps", "--layer", "c9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_every_method_page_passes_in_chromium(run_dir, tmp_path):
    """Each method's real page in headless Chromium: all images shown, no console error."""
    from .test_report import CHROMIUM, DevTools

    if CHROMIUM is None:
        pytest.skip("no `chromium` binary on PATH: install Debian's chromium package "
                    "(apt-get install chromium) to run the browser test")
    pages = [visualize(run_dir, *words.split(), out=tmp_path / str(i)) / INDEX
             for i, (words, _) in enumerate(CASES)]
    browser = DevTools(CHROMIUM)
    try:
        for page in pages:
            images, problems = browser.open(page.as_uri())
            assert len(images) == len(embedded(page.parent)[0]) > 0
            assert all(done and width > 0 for done, width in images), (page, images)
            assert problems == [], (page, problems)
    finally:
        browser.close()
