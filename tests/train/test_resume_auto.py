"""`cnnlab train ... --out RUN --resume auto`: what a scheduler (torchrun --max-restarts, a
preemptible cluster) reruns blindly. It starts RUN if new, continues it if killed, and leaves a
finished run as it is (exit 0, one line)."""

import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from cnnlab import cli
from cnnlab.train import CHECKPOINT, WEIGHTS, checkpoint
from cnnlab.train.run import inventory

ARGS = ["lenet5_modern", "--epochs", "2", "--batch-size", "128", "--device", "cpu", "--quiet",
        "--no-plots", "--no-tensorboard", "--augment", "auto", "--checkpoint-every", "3"]
# 12 steps an epoch


def command(run, *more):
    return ["train", *ARGS, "--out", str(run), "--resume", "auto", *more]


def files(run):
    """Every file of the run: bytes and modification time."""
    return {p.relative_to(run): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


def same_weights(a, b):
    sa, sb = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    return sa.keys() == sb.keys() and all(sa[k].equal(sb[k]) for k in sa)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The run as it goes without a stop (started by --resume auto: a new folder)."""
    run = tmp_path_factory.mktemp("whole") / "run"
    assert inventory(run).status == "new"
    assert cli.main(command(run)) == 0
    assert inventory(run).status == "finished" and not (run / CHECKPOINT).exists()
    return run


def test_a_finished_run_is_left_as_it_is_three_times(whole, capsys):
    capsys.readouterr()
    before = files(whole)
    for _ in range(3):
        assert cli.main(command(whole)) == 0
        out = capsys.readouterr().out
        assert out == (f"{whole}: the run is finished (2 epochs, {WEIGHTS} written); nothing to "
                       "do, its files are as they were\n")
        assert files(whole) == before               # model.safetensors byte-identical too
    # --resume RUN on a finished run: the same
    assert cli.main(["train", "--resume", str(whole), "--quiet"]) == 0
    assert "the run is finished" in capsys.readouterr().out and files(whole) == before


def test_a_finished_run_is_not_made_longer(whole, capsys):
    before = files(whole)
    assert cli.main(["train", "--resume", str(whole), "--epochs", "3", "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot resume '{whole}' with epochs=3: the run finished with epochs=2 and keeps "
        f"no checkpoint to go on from; train a new run with another --out (--init {whole} "
        "starts from its weights)\n")
    assert files(whole) == before


@pytest.mark.slow
def test_a_killed_run_continues_to_the_bit(tmp_path, whole, capsys):
    """SIGKILL of a real `cnnlab train --resume auto` process, then the same command again."""
    run = tmp_path / "run"
    # the child runs the real command, slowed down by 40 ms a step so the kill lands mid-run
    child = ("import sys, time; from cnnlab.train import optim; real = optim.set_lr\n"
             "def slow(*a):\n    time.sleep(0.04); real(*a)\n"
             "optim.set_lr = slow\n"
             "from cnnlab import cli; sys.exit(cli.main(sys.argv[1:]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", child, *command(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run / CHECKPOINT).exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert inventory(run).status == "unfinished"
    at = checkpoint.describe(run / CHECKPOINT)
    assert at["global_step"] < 24                      # stopped before the end
    assert cli.main(command(run)) == 0
    assert "run saved in" in capsys.readouterr().out
    assert same_weights(whole, run)
    assert cli.main(command(run)) == 0     # and now: nothing to do
    assert "the run is finished" in capsys.readouterr().out


def test_resume_auto_needs_out_and_no_overwrite(tmp_path, capsys):
    assert cli.main(["train", *ARGS, "--resume", "auto"]) == 2
    assert capsys.readouterr().err == (
        "error: --resume auto needs --out RUN, the folder to start, continue, or leave as it is "
        "once finished: e.g. `cnnlab train lenet5 --out runs/a --resume auto`\n")
    assert cli.main(command(tmp_path / "run", "--overwrite")) == 2
    assert "--resume auto and --overwrite contradict each other" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_and_out_agree(whole, tmp_path, capsys):
    """--resume RUN continues RUN where it is: --out may name RUN, not another folder; and the
    settings a resumed run may change do not list `out`."""
    assert cli.main(["train", "--resume", str(whole), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume {whole} continues the run where it is, in {whole}; drop --out "
        f"{tmp_path / 'x'} (to continue it elsewhere, copy the folder there and resume the "
        "copy)\n")
    assert cli.main(["train", "--resume", str(whole), "--out", str(whole), "--quiet"]) == 0
    assert "the run is finished" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()
