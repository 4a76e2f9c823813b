"""TensorBoard events: written under RUN/tensorboard/, read back with TensorBoard's own reader."""

import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab.errors import CnnlabError
from cnnlab.train.tensorboard import TENSORBOARD, TensorBoardLogger

RECORDS = [
    {"epoch": 1, "lr": 0.1, "train_loss": 2.0, "test_top1": 0.5, "images_per_second": 900.0,
     "model": "lenet5", "diverged": False},
    {"epoch": 2, "lr": 0.01, "train_loss": 1.0, "test_top1": 0.75, "images_per_second": 1000.0,
     "model": "lenet5", "diverged": False},
]


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / TENSORBOARD))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def test_records_and_steps_read_back(tmp_path):
    with TensorBoardLogger(tmp_path) as tb:
        for record in RECORDS:
            tb.log(record)
        for step, loss in enumerate([3.0, 2.5, 2.25]):
            tb.scalar("step/train_loss", torch.tensor(loss), step)
    got = scalars(tmp_path)
    assert set(got) == {"lr", "train_loss", "test_top1", "images_per_second",
                        "step/train_loss"}                 # no epoch, strings or bools
    assert got["train_loss"] == [(1, 2.0), (2, 1.0)]
    assert got["test_top1"] == [(1, 0.5), (2, 0.75)]
    assert got["lr"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.01))]  # stored as float32
    assert got["step/train_loss"] == [(0, 3.0), (1, 2.5), (2, 2.25)]


def test_explicit_step_and_missing_epoch(tmp_path):
    with TensorBoardLogger(tmp_path) as tb:
        tb.log({"test_loss": 0.5}, step=7)
        with pytest.raises(CnnlabError, match="no 'epoch' field"):
            tb.log({"test_loss": 0.5})
    assert scalars(tmp_path) == {"test_loss": [(7, 0.5)]}


def test_a_new_run_drops_stale_events_and_resume_keeps_them(tmp_path):
    with TensorBoardLogger(tmp_path) as tb:
        tb.log(RECORDS[0])
    with TensorBoardLogger(tmp_path) as tb:                 # retrained into the same folder
        tb.log({"epoch": 1, "train_loss": 9.0})
    assert scalars(tmp_path) == {"train_loss": [(1, 9.0)]}
    with TensorBoardLogger(tmp_path, resume=True) as tb:
        tb.log({"epoch": 2, "train_loss": 8.0})
    assert scalars(tmp_path)["train_loss"] == [(1, 9.0), (2, 8.0)]


def test_missing_tensorboard_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails
    with pytest.raises(CnnlabError, match="needs the tensorboard package.*pip install") as info:
        TensorBoardLogger(tmp_path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / TENSORBOARD).exists()
