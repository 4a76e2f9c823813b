"""The `cnnlab` command as a user runs it: output, exit status, one-line errors."""

import json
import subprocess
import sys

import pytest

from cnnlab.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_the_zoo_with_parameter_counts(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert "lenet5 " in out and "60,000" in out and "1x32x32" in out and "8.2.7" in out
    code, out, _ = run(capsys, "models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["lenet5"]["params"] == 60_000 and rows["lenet5"]["recipe"]["lr"] == 0.001


def test_a_reader_that_goes_away_is_no_error():
    """`cnnlab summary vgg16 | head -1`: the table stops quietly, with no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "summary", "vgg16"],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()                          # before the listing is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1               # as Python's docs advise for EPIPE
    assert "Traceback" not in err and err == ""


def test_summary_of_lenet5_shows_60000_trainable_parameters(capsys):
    code, out, _ = run(capsys, "summary", "lenet5")
    assert code == 0
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert "60,000" in total
    assert "28×28×6" in out and "5×5×16" in out


def test_strict_mode_accepts_strides_that_fit_exercise_3(capsys):
    # 13x13x64 volume, 3x3x64 filter, no padding: (13 - 3) / S is whole for S = 2 and 5 only
    for stride, ok in ((2, True), (3, False), (4, False), (5, True)):
        code, _, err = run(capsys, "summary", f"C3D64s{stride}p0", "--input", "64x13x13", "--strict")
        assert (code == 0) == ok, (stride, err)


def test_summary_takes_builder_arguments(capsys):
    """Kim's three convolutions (widths 3, 4, 5; 100 maps) over 50-d word vectors: 60,300
    weights, against 360,300 over the builder's 300-d."""
    def convs(*extra):
        code, out, _ = run(capsys, "summary", "kim_cnn_rand", "--json", *extra)
        assert code == 0
        rows = json.loads(out)["rows"]
        return sum(r["params"] for r in rows if r["kind"] == "Conv1d")
    assert convs("--arg", "embed_dim=50") == 50 * 100 * 12 + 300
    assert convs() == 300 * 100 * 12 + 300
    code, _, err = run(capsys, "summary", "kim_cnn_rand", "--arg", "embdim=50")
    assert code == 2 and "did you mean embed_dim?" in err
    code, _, err = run(capsys, "summary", "C5D6 R", "--input", "1x8x8", "--arg", "x=1")
    assert code == 2 and "is not a model name; drop --arg" in err


def test_summary_of_a_spec_as_json(capsys):
    code, out, _ = run(capsys, "summary", "C5D6p0 R P C5D16p0 R P F120 R F84 R F10",
                       "--input", "1x32x32", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["totals"]["params"] == 61_706


@pytest.mark.parametrize("argv, message", [
    (["summary", "lenet6"], "needs --input"),
    (["summary", "C5D6 Q", "--input", "1x32x32"], "token 'Q'"),
    (["summary", "lenet5", "--input", "1x32"], ("'features.c1' (Conv2d) takes CxHxW inputs, "
                                                "3 sizes, not 2; its default input shape is 1x32x32")),
    (["summary", "c3d", "--input", "3x112x112"], "takes CxTxHxW inputs, 4 sizes, not 3"),
    (["summary", "kim_cnn_rand", "--input", "300x56"], ("it takes token ids, so give the "
                                                       "sentence length alone (--input L)")),
    (["summary", "lenet5", "--input", "1x2x3x4x5"], "give 1 to 4 positive sizes"),
    (["train", "c3d_mnist", "--epochs", "1"], "digits holds images, but the model takes clips"),
    (["summary", "lenet5", "--input", "axb"], "is not a shape"),
    (["summary", "C3D64s3p0", "--input", "64x13x13", "--strict"], "stride"),
    (["train", "lenet7", "--epochs", "1"], "unknown model 'lenet7'"),
    (["train", "lenet5", "--epochs", "0"], "epochs must be"),
    (["train", "lenet5", "--data", "mnist", "--data-dir", "/nonexistent/dir"], "does not exist"),
    (["train", "lenet5", "--data", "cifar"], "got data='cifar' (did you mean 'cifar10'?)"),
    (["summary", "lenet5", "--input", "-1x2x3"], "--input '-1x2x3'"),
    (["train", "lenet5", "--lr", "-0.5"], "lr must be a positive number, got lr=-0.5"),
    (["eval", "/nonexistent/run"], "run"),
])
def test_user_mistakes_give_one_line_errors(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_train_then_eval_on_the_embedded_digits(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, _ = run(capsys, "train", "lenet5_modern", "--epochs", "2", "--out", str(out_dir),
                       "--quiet")
    assert code == 0 and "test accuracy" in out
    accuracy = float(out.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 50                    # two epochs on 1,437 digits, 10 classes
    assert {p.name for p in out_dir.iterdir()} == {"config.json", "metrics.jsonl", "model.safetensors",
                                                "confusion.json", "curves.png",
                                                "confusion.png", "tensorboard"}
    code, out, _ = run(capsys, "eval", str(out_dir), "--json")
    assert code == 0 and abs(100 * json.loads(out)["top1"] - accuracy) < 0.01
    # a second run into the same folder is refused, and nothing there changes
    before = (out_dir / "model.safetensors").read_bytes()
    code, _, err = run(capsys, "train", "lenet5_modern", "--epochs", "1", "--out", str(out_dir))
    assert code == 2 and "--overwrite" in err
    assert (out_dir / "model.safetensors").read_bytes() == before


def test_help_for_every_command(capsys):
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "--help"], capture_output=True,
                          text=True, timeout=60, check=False)       # the entry point itself
    assert proc.returncode == 0 and "usage: cnnlab" in proc.stdout
    for command in ("models", "summary", "train", "eval", "features", "plot", "download"):
        with pytest.raises(SystemExit) as stop:                      # each in this process:
            main([command, "--help"])                                # one import of torch
        assert stop.value.code == 0 and f"usage: cnnlab {command}" in capsys.readouterr().out


def test_an_option_value_that_starts_with_a_dash_reaches_the_option():
    from cnnlab.cli import _attach_dash_values, build_parser

    parser = build_parser()
    assert _attach_dash_values(parser, ["summary", "lenet5", "--input", "-1x2x3"]) == [
        "summary", "lenet5", "--input=-1x2x3"]
    assert _attach_dash_values(parser, ["train", "--epochs", "2", "--augment", "-crop"]) == [
        "train", "--epochs", "2", "--augment=-crop"]
    # not: a flag's neighbour, an option itself, a word after `--`, another command's option
    for argv in (["summary", "x", "--json", "-1"], ["train", "--out", "-h"],
                 ["train", "--data", "--epochs", "2"], ["train", "--", "--out", "-x"],
                 ["models", "--input", "-1"]):
        assert _attach_dash_values(parser, argv) == argv


def test_an_os_error_no_command_explained_is_one_line(monkeypatch, capsys, tmp_path):
    import errno

    from cnnlab import cli

    def fails(args):
        (tmp_path / "missing" / "curves.png").write_bytes(b"")   # a real OSError
        return 0

    monkeypatch.setattr(cli, "cmd_plot", fails)
    code, out, err = run(capsys, "plot", str(tmp_path))
    assert code == 1 and out == ""
    assert err == (f"error: cnnlab plot failed: {tmp_path / 'missing' / 'curves.png'}: No such "
                   "file or directory; check the path\n")

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/a/checkpoint.safetensors")

    monkeypatch.setattr(cli, "cmd_plot", full)
    code, _, err = run(capsys, "plot", str(tmp_path))
    assert code == 1 and err == ("error: cnnlab plot failed: runs/a/checkpoint.safetensors: No "
                                 "space left on device; free some disk space and run the "
                                 "command again\n")

    def renamed(args):
        raise OSError(errno.EXDEV, "Invalid cross-device link", "a.tmp", None, "b")

    monkeypatch.setattr(cli, "cmd_plot", renamed)
    code, _, err = run(capsys, "plot", str(tmp_path))
    assert code == 1 and err == "error: cnnlab plot failed: a.tmp -> b: Invalid cross-device link\n"


def test_summary_of_a_text_model_takes_the_sentence_length(capsys):
    totals = {}
    for length in (56, 40):
        code, out, _ = run(capsys, "summary", "kim_cnn_rand", "--input", str(length), "--json")
        assert code == 0
        totals[length] = json.loads(out)["totals"]["macs"]
    # 16 positions fewer for each of the widths 3, 4, 5: 100 maps over 300-d words each
    assert totals[56] - totals[40] == 16 * (3 + 4 + 5) * 100 * 300


@pytest.mark.parametrize("argv, message", [
    (["train", "lenet5", "--folds", "abc"],
     "error: argument --folds: invalid int value: 'abc'; see `cnnlab train --help`\n"),
    (["learning-curve", "lenet5", "--epochs", "x"], "see `cnnlab learning-curve --help`"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
])
def test_option_mistakes_are_one_line_not_the_whole_usage(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "usage:" not in err
