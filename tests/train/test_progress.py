"""Progress within an epoch: tqdm's bar on a terminal, plain lines in a log file."""

import io

import pytest
import torch
from torch import nn

from cnnlab.data import load
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, train
from cnnlab.train.loop import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_a_plain_line_comes_at_each_interval():
    bar, log = io.StringIO(), io.StringIO()
    p = Progress(4, 0, "epoch 1/2", every=0.0, bar=bar, log=log)
    seen = [p.advance(32, lambda: 0.5) for _ in range(3)]
    p.close()
    lines = log.getvalue().splitlines()
    assert seen == [0.5, 0.5, 0.5] and len(lines) == 3
    assert lines[0].startswith("epoch 1/2: step 1/4 (25%), ")
    assert lines[2].startswith("epoch 1/2: step 3/4 (75%), ")
    assert all(" img/s, loss 0.5000, " in line and line.endswith(" left") for line in lines)
    assert bar.getvalue() == ""                                  # no bar in a log file
    p = Progress(4, 0, "epoch 1/2", every=0.0, bar=bar, log=log, unit="sentences")
    p.advance(50, lambda: 0.5)
    assert " sentences/s, loss 0.5000, " in log.getvalue().splitlines()[-1]


def test_the_interval_bounds_the_lines_and_the_syncs():
    log = io.StringIO()
    p = Progress(100, 0, "epoch 1/1", every=3600.0, bar=io.StringIO(), log=log)
    reads = []
    for _ in range(100):
        p.advance(8, lambda: reads.append(1) or 1.0)
    assert log.getvalue() == "" and reads == []                 # the loss was never read


def test_on_a_terminal_the_bar_shows_and_no_plain_lines():
    bar, log = Terminal(), io.StringIO()
    p = Progress(30, 0, "epoch 1/1", every=0.0, bar=bar, log=log)
    values = [p.advance(8, lambda: 2.0) for _ in range(30)]
    p.close()
    assert log.getvalue() == "" and "epoch 1/1" in bar.getvalue()
    assert values.count(2.0) == 2                                # steps 1 and 26 read it


def test_disabled_is_silent():
    bar, log = Terminal(), io.StringIO()
    p = Progress(5, 0, "e", enabled=False, every=0.0, bar=bar, log=log)
    assert [p.advance(1, lambda: 1.0) for _ in range(5)] == [None] * 5
    p.close()
    assert log.getvalue() == "" and bar.getvalue() == ""


def _tiny_run(tmp_path):
    train_ds, test_ds = load("digits", "train", size=8), load("digits", "test", size=8)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    cfg = TrainConfig("tiny", epochs=1, batch_size=32, out=str(tmp_path / "run"),
                      device="cpu", tensorboard=False, plots=False)
    return train(cfg, net, datasets=(train_ds.subset(range(160)), test_ds.subset(range(40))))


def test_a_run_in_a_log_prints_plain_progress_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CNNLAB_PROGRESS_SECONDS", "0")
    _tiny_run(tmp_path)
    out = capsys.readouterr().out.splitlines()
    steps = [line for line in out if line.startswith("epoch 1/1: step ")]
    assert [s.split()[3] for s in steps] == [f"{i}/5" for i in range(1, 6)]
    assert any(line.startswith("epoch 1/1: train loss ") for line in out)   # the epoch line


def test_a_bad_interval_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_PROGRESS_SECONDS", "soon")
    with pytest.raises(CnnlabError, match="CNNLAB_PROGRESS_SECONDS='soon' must be a number"):
        _tiny_run(tmp_path)
    assert not (tmp_path / "run").exists()
