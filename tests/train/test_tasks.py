"""The task interface: a task that is not classification plugs into the same loop and gets
checkpoints, resumption to the bit, torchrun and TensorBoard without a line of its own."""

import doctest
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.errors import CnnlabError
from cnnlab.train import CHECKPOINT, METRICS, WEIGHTS, checkpoint, tasks, train
from cnnlab.train.evaluation import Member, evaluate_members

sys.path.insert(0, str(Path(__file__).parent))
from toy_task import Brightness, brightness_data, config, net, run

SCRIPT = str(Path(__file__).parent / "toy_task.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    return env


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread):
    """The toy task trained for 3 epochs without a stop: the script's run, in this process on
    one thread as the script's (the killed run's steps match it to the bit)."""
    out = tmp_path_factory.mktemp("toy") / "run"
    run(str(out))
    return out


def _records(run):
    return [json.loads(line) for line in (run / METRICS).read_text().splitlines()]


def test_the_toy_task_trains_and_logs_its_own_figures(finished):
    records = _records(finished)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert {"train_loss", "train_abs_error", "test_loss", "test_abs_error"} <= set(records[0])
    assert "test_top1" not in records[0]                         # no classification figures
    assert records[-1]["test_loss"] < records[0]["test_loss"]
    assert records[-1]["test_abs_error"] < 0.1                   # brightness is in [0, 1]
    # TensorBoard events came for free
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("test_abs_error")] == pytest.approx(
        [r["test_abs_error"] for r in records])


def test_the_evaluator_reproduces_the_logged_figures(finished, tmp_path):
    """One evaluator: the saved weights, evaluated again, give the last epoch's figures."""
    model = net()
    model.load_state_dict(load_file(finished / WEIGHTS))
    train_ds, test_ds = brightness_data()
    result = evaluate_members([Member(model, Brightness(), train_ds.mean, train_ds.std)],
                              test_ds, batch_size=17)
    last = _records(finished)[-1]
    assert result.members[0]["abs_error"] == pytest.approx(last["test_abs_error"], rel=1e-5)
    assert result.ensemble["loss"] == pytest.approx(last["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_a_sigkilled_toy_run_resumes_to_the_bit(finished, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, SCRIPT, str(out), "--slow"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # kill it once a mid-epoch checkpoint of epoch 2 exists
    while time.time() < deadline:
        if (out / CHECKPOINT).exists():
            try:
                at = checkpoint.describe(out / CHECKPOINT)
            except Exception:                    # noqa: BLE001 - being renamed right now
                at = {"epoch": 0, "step": 0}
            if at["epoch"] == 2 and at["step"] > 0:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / WEIGHTS).exists() and (out / CHECKPOINT).exists()
    run(str(out), resume=True)                  # in this process: the checkpoint is the state
    a, b = load_file(finished / WEIGHTS), load_file(out / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for r1, r2 in zip(_records(finished), _records(out), strict=True):
        assert r1["train_loss"] == r2["train_loss"] and r1["test_loss"] == r2["test_loss"]
        assert r1["train_abs_error"] == r2["train_abs_error"]


@pytest.mark.slow
def test_the_toy_task_runs_under_two_gloo_processes(finished, tmp_path):
    out = tmp_path / "two"
    done = subprocess.run([*TORCHRUN, SCRIPT, str(out)], env=_env(), timeout=300,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test abs_error") == 2               # each process returns it
    one, two = _records(finished), _records(out)
    assert [r["train_images"] for r in two] == [256] * 3           # each image once per epoch
    # two processes share each global batch: the same steps up to summation order (the
    # dropout masks differ: each process draws its own)
    assert two[-1]["test_abs_error"] == pytest.approx(one[-1]["test_abs_error"], abs=0.05)
    assert not (out / CHECKPOINT).exists() and (out / WEIGHTS).exists()


def test_the_task_docstring_example_runs():
    failures, tried = doctest.testmod(tasks, optionflags=doctest.ELLIPSIS)
    assert tried >= 8 and failures == 0


def test_variable_length_targets_collate_as_lists(tmp_path):
    """A target per example of its own length (boxes, a sentence) batches as a list."""
    from cnnlab.data import ImageDataset
    from cnnlab.train import Batches

    images = torch.rand(10, 1, 4, 4)
    targets = [torch.arange(i % 3 + 1) for i in range(10)]
    ds = ImageDataset(images, targets, name="toy", split="train", classes=(), mean=[0.5],
                      std=[0.25])
    for workers in (0, 1):
        batches = list(Batches(ds, 4, torch.device("cpu"), num_workers=workers))
        assert [len(y) for _, y in batches] == [4, 4, 2]
        got = [t.tolist() for _, y in batches for t in y]
        assert got == [t.tolist() for t in targets]
        assert all(isinstance(y, list) for _, y in batches)
    part = ds.subset([1, 4])
    assert [t.tolist() for t in part.labels] == [[0, 1], [0, 1]]


def test_an_unknown_task_figure_is_a_clear_error(tmp_path):
    class Broken(Brightness):
        monitor = "accuracy"                                     # not among its figures

    with pytest.raises(CnnlabError, match="monitors .accuracy., which is not among its test"):
        train(config(str(tmp_path / "r"), epochs=1), net(), task=Broken(),
              datasets=brightness_data(64, 32), progress=False)
