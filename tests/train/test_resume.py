"""Checkpoints and --resume: a killed run continues to the bit; failures keep the last good
checkpoint; resuming something that cannot be resumed says why."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from cnnlab import cli
from cnnlab.data import load
from cnnlab.errors import CnnlabError
from cnnlab.train import (
    CHECKPOINT,
    METRICS,
    WEIGHTS,
    TrainConfig,
    checkpoint,
    resume_config,
    train,
)
from cnnlab.train import loop as loop_mod

# what a finished run folder holds
FINISHED = ["config.json", "confusion.json", "confusion.png", "curves.png", METRICS, WEIGHTS,
            "tensorboard"]

TIMING = {"epoch_seconds", "images_per_second", "eval_seconds", "elapsed_seconds"}


class Killed(Exception):
    """Stands for SIGKILL in-process: raised out of the middle of a step."""


class Tiny(nn.Module):
    """8x8 digits -> 10 scores, with dropout so the global RNG matters."""

    default_input_shape = (1, 8, 8)
    kill_at: int | None = None           # training forward call that raises Killed
    calls = 0

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            Tiny.calls += 1
            if Tiny.calls == Tiny.kill_at:
                raise Killed(f"killed in step {Tiny.calls}")
        x = F.max_pool2d(F.relu(self.conv(x)), 2)       # N x 4 x 4 x 4
        return self.fc(F.dropout(x.flatten(1), 0.25, self.training))


def tiny(kill_at: int | None = None, seed: int = 0) -> Tiny:
    Tiny.calls, Tiny.kill_at = 0, kill_at
    torch.manual_seed(seed)
    return Tiny()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    train_ds, test_ds = load("digits", "train"), load("digits", "test")
    return train_ds.subset(torch.arange(160)), test_ds.subset(torch.arange(60))


def config(tmp_path, name="run", **kw):
    # 5 steps an epoch; everything that draws random numbers or keeps state across steps
    values = {"model": "tiny", "epochs": 3, "batch_size": 32, "lr": 0.05, "device": "cpu",
              "out": str(tmp_path / name), "checkpoint_every": 3, "schedule": "onecycle",
              "augment": "translate1,jitter0.2", "nesterov": True, "label_smoothing": 0.1}
    values.update(kw)
    return TrainConfig(**values)


def same_weights(a, b) -> bool:
    sa, sb = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def metrics(run):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / METRICS).read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits):
    """An uninterrupted run with the settings of :func:`config`."""
    tmp = tmp_path_factory.mktemp("reference")
    train(config(tmp), tiny(), progress=False, datasets=digits)
    return tmp / "run"


def kill_and_resume(tmp_path, digits, kill_at, **kw):
    cfg = config(tmp_path, **kw)
    with pytest.raises(Killed):
        train(cfg, tiny(kill_at), progress=False, datasets=digits)
    assert not (tmp_path / "run" / WEIGHTS).exists()
    at = checkpoint.describe(tmp_path / "run" / CHECKPOINT)
    # a fresh process would build the model from another state: the checkpoint decides
    result = train(resume_config(tmp_path / "run"), tiny(seed=123), progress=False,
                   datasets=digits, resume=True)
    return at, result


# checkpoints after global steps 3, 5 (epoch end), 6, 9, 10 (epoch end), 12
@pytest.mark.parametrize("kill_at,at", [
    (5, {"epoch": 1, "step": 3, "global_step": 3}),      # mid-epoch
    (7, {"epoch": 2, "step": 1, "global_step": 6}),      # mid-epoch, after an epoch's end
    (11, {"epoch": 3, "step": 0, "global_step": 10}),    # at the epoch boundary
])
def test_a_killed_run_resumes_bit_identical(tmp_path, digits, reference, kill_at, at):
    got, result = kill_and_resume(tmp_path, digits, kill_at)
    assert got == at
    assert same_weights(reference, tmp_path / "run")
    assert metrics(tmp_path / "run") == metrics(reference)      # losses and accuracies too
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == FINISHED  # no checkpoint


@pytest.mark.parametrize("optimizer,lr", [("adadelta", 1.0), ("adam", 0.01)])
def test_the_other_optimizers_resume_bit_identical(tmp_path, digits, optimizer, lr):
    # their state (AdaDelta's two running averages, Adam's moments and step count) is in the
    # checkpoint too
    settings = {"optimizer": optimizer, "lr": lr, "nesterov": False}
    train(config(tmp_path, name="whole", **settings), tiny(), progress=False, datasets=digits)
    got, _ = kill_and_resume(tmp_path, digits, 7, **settings)
    assert got["global_step"] == 6
    assert same_weights(tmp_path / "whole", tmp_path / "run")
    assert metrics(tmp_path / "run") == metrics(tmp_path / "whole")


def test_killed_twice_still_bit_identical(tmp_path, digits, reference):
    cfg = config(tmp_path, plots=False)
    with pytest.raises(Killed):
        train(cfg, tiny(kill_at=4), progress=False, datasets=digits)
    with pytest.raises(Killed):                                   # 4 more steps, then again
        train(resume_config(tmp_path / "run"), tiny(kill_at=5), progress=False,
              datasets=digits, resume=True)
    assert checkpoint.describe(tmp_path / "run" / CHECKPOINT)["global_step"] == 6
    train(resume_config(tmp_path / "run"), tiny(), progress=False, datasets=digits,
          resume=True)
    assert same_weights(reference, tmp_path / "run")


def test_the_checkpoint_is_one_safetensors_file_with_json_state(tmp_path, digits):
    with pytest.raises(Killed):
        train(config(tmp_path), tiny(kill_at=5), progress=False, datasets=digits)
    path = tmp_path / "run" / CHECKPOINT
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert meta["format"] == "cnnlab-checkpoint/1"
    state = json.loads(meta["state"])
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 3, 3)
    assert state["config"] == config(tmp_path).to_dict() and state["records"] == []
    assert {"model.conv.weight", "model.fc.bias", "rng.torch", "rng.shuffle", "rng.augment",
            "totals.sums.loss", "optimizer.state.0.momentum_buffer"} <= names
    assert state["optimizer"]["param_groups"][0]["nesterov"] is True
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT, "config.json",
                                                                  "tensorboard"]
    back = checkpoint.load(path)
    assert back["rng"]["torch"].dtype == torch.uint8
    assert list(back["optimizer"]["state"]) == [0, 1, 2, 3]           # int keys come back


@pytest.mark.slow
def test_sigkill_of_a_real_process_resumes_bit_identical(tmp_path):
    """`python -m cnnlab train` killed with SIGKILL, then `cnnlab train --resume`."""
    args = ["train", "lenet5_modern", "--epochs", "2", "--checkpoint-every", "4", "--quiet",
            "--augment", "auto", "--device", "cpu", "--no-plots"]
    # the child runs the real command, slowed down by 30 ms a step so the kill lands mid-run
    child = ("import sys, time; from cnnlab.train import loop; real = loop.optim.set_lr\n"
             "def slow(*a):\n    time.sleep(0.03); real(*a)\n"
             "loop.optim.set_lr = slow\n"
             "from cnnlab import cli; sys.exit(cli.main(sys.argv[1:]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", child, *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (killed / CHECKPOINT).exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
            time.sleep(0.01)
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert not (killed / WEIGHTS).exists()
    at = checkpoint.describe(killed / CHECKPOINT)
    assert at["global_step"] >= 4
    assert cli.main(["train", "--resume", str(killed), "--quiet"]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert same_weights(tmp_path / "whole", killed)


def test_cli_resume_end_to_end(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["train", "lenet5_modern", "--epochs", "2", "--checkpoint-every", "5", "--quiet",
            "--schedule", "cosine", "--warmup-epochs", "0.5", "--device", "cpu", "--no-plots",
            "--out", str(out)]
    real, steps = loop_mod.optim.set_lr, []

    def dies(optimizer, lr):
        steps.append(lr)
        if len(steps) == 30:               # 23 steps an epoch: the 7th step of epoch 2
            raise KeyboardInterrupt
        real(optimizer, lr)

    monkeypatch.setattr(loop_mod.optim, "set_lr", dies)
    assert cli.main(args) == 130
    monkeypatch.setattr(loop_mod.optim, "set_lr", real)
    assert checkpoint.describe(out / CHECKPOINT) == {"epoch": 2, "step": 2, "global_step": 25}
    # the same flags again: a fresh start is refused, naming --resume
    assert cli.main(args) == 2
    assert "holds an unfinished run (checkpoint in epoch 2 after step 2); continue it with " \
           f"`cnnlab train --resume {out}`" in capsys.readouterr().err
    # changing what the run is, is refused; the epochs of a cosine run too
    assert cli.main(["train", "--resume", str(out), "--lr", "0.1", "--quiet"]) == 2
    assert "cannot resume with lr=0.1: the run was started with lr=0.05" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(out), "--epochs", "3", "--quiet"]) == 2
    assert "'cosine' schedule was laid out for epochs=2" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0
    assert "run saved in" in capsys.readouterr().out
    assert cli.main([*args[:-1], str(tmp_path / "whole")]) == 0
    assert same_weights(tmp_path / "whole", out)


def test_help_shows_the_new_flags(capsys):
    # in this process (test_cli.py runs the entry point's own --help in a child)
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--resume RUN", "--augment", "--schedule", "--warmup-epochs", "--patience",
                 "--nesterov", "--label-smoothing", "--clip-grad-norm", "--amp",
                 "--channels-last", "--compile", "--checkpoint-every", "--num-workers"):
        assert flag in out, flag


def test_a_run_killed_after_its_last_epoch_finishes_on_resume(tmp_path, digits, reference,
                                                             monkeypatch):
    """Killed once the last epoch is checkpointed, before the outputs and weights: the
    resumed run has no step left, evaluates once and writes what the uninterrupted one did."""
    from cnnlab.train.tasks import Classification

    real = Classification.write_outputs

    def dies(*args, **kwargs):
        raise Killed("killed before the outputs")

    monkeypatch.setattr(Classification, "write_outputs", dies)
    with pytest.raises(Killed):
        train(config(tmp_path), tiny(), progress=False, datasets=digits)
    assert checkpoint.describe(tmp_path / "run" / CHECKPOINT) == {
        "epoch": 4, "step": 0, "global_step": 15}
    assert not (tmp_path / "run" / WEIGHTS).exists()
    monkeypatch.setattr(Classification, "write_outputs", real)
    train(resume_config(tmp_path / "run"), tiny(seed=123), progress=False, datasets=digits,
          resume=True)
    assert same_weights(reference, tmp_path / "run")
    assert metrics(tmp_path / "run") == metrics(reference)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(FINISHED)
    assert (json.loads((tmp_path / "run" / "confusion.json").read_text()) ==
            json.loads((reference / "confusion.json").read_text()))


# -- failures keep the last good checkpoint --------------------------------------------------

def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    class GoesNan(Tiny):
        def forward(self, x):
            out = super().forward(x)
            return out * float("nan") if Tiny.calls >= 8 else out

    Tiny.calls, Tiny.kill_at = 0, None
    torch.manual_seed(0)
    with pytest.raises(CnnlabError, match=r"training diverged: the training loss is nan in "
                                          r"epoch 2 \(by step 4\); lower the learning rate .*"
                                          r"the last good checkpoint \(epoch 2, step 1\) is kept"):
        train(config(tmp_path, checkpoint_every=3), GoesNan(), progress=False, datasets=digits)
    path = tmp_path / "run" / CHECKPOINT
    assert checkpoint.describe(path) == {"epoch": 2, "step": 1, "global_step": 6}
    state = checkpoint.load(path)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "run" / WEIGHTS).exists()


def test_nan_weights_with_a_finite_loss_are_not_checkpointed(tmp_path, digits, monkeypatch):
    real = torch.optim.SGD.step

    def poisons(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if Tiny.calls == 5:                       # the loss of step 5 was fine
            self.param_groups[0]["params"][0].data[0, 0, 0, 0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poisons)
    with pytest.raises(CnnlabError, match=r"a weight is infinite or NaN \(the loss was finite\) "
                                          r"in epoch 1 .*the last good checkpoint \(epoch 1, "
                                          r"step 3\) is kept"):
        train(config(tmp_path), tiny(), progress=False, datasets=digits)
    assert checkpoint.describe(tmp_path / "run" / CHECKPOINT)["global_step"] == 3


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, digits, reference, monkeypatch):
    real, writes = Path.write_bytes, []

    def disk_full(self, data):
        if self.name.startswith(f".{CHECKPOINT}."):
            writes.append(self)
            if len(writes) == 3:                   # the checkpoint of step 6
                real(self, b"half a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    run = tmp_path / "run"
    with pytest.raises(CnnlabError, match=r"could not write the checkpoint .*: No space left on "
                                          r"device; free space on that disk; the checkpoint of "
                                          r"epoch 2, step 0 is kept; then `cnnlab train --resume"):
        train(config(tmp_path, plots=False), tiny(), progress=False, datasets=digits)
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT, "config.json", METRICS,
                                             "tensorboard"]
    assert checkpoint.describe(run / CHECKPOINT)["global_step"] == 5
    monkeypatch.setattr(Path, "write_bytes", real)
    train(resume_config(run), tiny(), progress=False, datasets=digits, resume=True)
    assert same_weights(reference, run)


def test_a_temporary_file_left_by_a_kill_is_cleared(tmp_path, digits, reference):
    with pytest.raises(Killed):
        train(config(tmp_path, plots=False), tiny(kill_at=5), progress=False, datasets=digits)
    run = tmp_path / "run"
    stale = run / ".checkpoint.safetensors.0123456789ab.tmp"     # SIGKILL during a write
    stale.write_bytes(b"half a checkpoint")
    train(resume_config(run), tiny(), progress=False, datasets=digits, resume=True)
    assert not stale.exists() and same_weights(reference, run)


# -- what cannot be resumed, and what may change ---------------------------------------------

def test_resume_refusals_say_why(tmp_path, digits):
    def resume(path, **kw):
        cfg = TrainConfig(model="tiny", out=str(path), device="cpu", **kw)
        return train(cfg, tiny(), progress=False, datasets=digits, resume=True)

    with pytest.raises(CnnlabError, match=r"cannot resume '.*nowhere': no such folder"):
        resume(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnlabError, match=r"cannot resume '.*empty': it has no config.json"):
        resume(tmp_path / "empty")
    with pytest.raises(CnnlabError, match=r"cannot resume '.*nowhere': no such folder"):
        resume_config(tmp_path / "nowhere")
    # killed before its first checkpoint
    with pytest.raises(Killed):
        train(config(tmp_path, "early"), tiny(kill_at=2), progress=False, datasets=digits)
    with pytest.raises(CnnlabError, match=r"the run stopped before its first checkpoint .* "
                                          r"start it again: `cnnlab train MODEL --out"):
        train(resume_config(tmp_path / "early"), tiny(), progress=False, datasets=digits,
              resume=True)
    # finished
    train(config(tmp_path, "done", epochs=1, plots=False), tiny(), progress=False,
          datasets=digits)
    with pytest.raises(CnnlabError, match=r"cannot resume '.*done': the run is finished"):
        train(resume_config(tmp_path / "done"), tiny(), progress=False, datasets=digits,
              resume=True)
    with pytest.raises(CnnlabError, match="resume and overwrite contradict"):
        train(resume_config(tmp_path / "done"), tiny(), progress=False, datasets=digits,
              resume=True, overwrite=True)


def test_what_may_change_on_resume(tmp_path, digits):
    cfg = config(tmp_path, schedule="step", lr_step=1, lr_gamma=0.5, epochs=2, plots=False)
    with pytest.raises(Killed):
        train(cfg, tiny(kill_at=7), progress=False, datasets=digits)
    run = tmp_path / "run"
    with pytest.raises(CnnlabError, match=r"cannot resume with seed=1: the run was started with "
                                          r"seed=0, .* only epochs, data_dir, device, "
                                          r"num_workers, eval_batch_size, tensorboard, plots may change"):
        train(resume_config(run, seed=1), tiny(), progress=False, datasets=digits, resume=True)
    with pytest.raises(CnnlabError, match=r"cannot resume with epochs=1: the checkpoint is "
                                          r"part way through epoch 2 already"):
        train(resume_config(run, epochs=1), tiny(), progress=False, datasets=digits,
              resume=True)
    # more epochs of a step schedule, and a worker process, are the same run made longer
    result = train(resume_config(run, epochs=3, num_workers=1), tiny(), progress=False,
                   datasets=digits, resume=True)
    assert [h["lr"] for h in result["history"]] == [0.05, 0.025, 0.0125]
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
    whole = config(tmp_path, "whole", schedule="step", lr_step=1, lr_gamma=0.5, epochs=3,
                   plots=False)
    train(whole, tiny(), progress=False, datasets=digits)
    assert same_weights(tmp_path / "whole", run)


def test_a_fresh_start_over_an_unfinished_run_needs_overwrite(tmp_path, digits):
    with pytest.raises(Killed):
        train(config(tmp_path), tiny(kill_at=5), progress=False, datasets=digits)
    with pytest.raises(CnnlabError, match=r"holds an unfinished run \(checkpoint in epoch 1 "
                                          r"after step 3\); continue it with `cnnlab train "
                                          r"--resume .*`.* or pass --overwrite"):
        train(config(tmp_path), tiny(), progress=False, datasets=digits)
    train(config(tmp_path, epochs=1, plots=False), tiny(), progress=False, datasets=digits,
          overwrite=True)
    assert len(metrics(tmp_path / "run")) == 1


def test_cli_needs_a_model_or_resume(tmp_path, capsys):
    assert cli.main(["train", "--quiet"]) == 2
    assert "needs a model name (see `cnnlab models`), or --resume RUN" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tmp_path / "nowhere"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and "no such folder" in err
    assert cli.main(["train", "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 2
    assert "drop --out" in capsys.readouterr().err
