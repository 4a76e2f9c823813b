"""The learning curve (cnnlab.train.curve, `cnnlab learning-curve`): nested, stratified
subsets; curve.json from the runs' own metrics; going on after a stop; bad fractions."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import cli
from cnnlab.data import load
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.train import WEIGHTS, TrainConfig, load_run
from cnnlab.train.curve import (
    CURVE,
    CURVE_PLOT,
    check_fractions,
    learning_curve,
    nested_subsets,
    parse_fractions,
)
from cnnlab.train.metrics import read_metrics
from cnnlab.train.series import class_orders

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    default_input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))


def tiny():
    torch.manual_seed(0)
    return Tiny()


@pytest.fixture(scope="module")
def labels():
    return load("digits", "train").labels


def config(out, **kw):
    values = {"model": "tiny", "epochs": 1, "batch_size": 32, "lr": 0.1, "out": str(out),
              "device": "cpu", "tensorboard": False, "plots": False, **kw}
    return TrainConfig(**values)


def test_subsets_are_nested_and_stratified(labels):
    fractions = (0.01, 0.1, 0.3, 1.0)
    subsets = nested_subsets(class_orders(labels, seed=0), fractions)
    counts = torch.bincount(labels)
    for f, s in zip(fractions, subsets, strict=True):
        assert len(set(s.tolist())) == len(s)
        wanted = torch.clamp(torch.floor(f * counts + 0.5), min=1).long()
        assert torch.equal(torch.bincount(labels[s], minlength=10), wanted)   # each class
    for small, large in itertools.pairwise(subsets):
        assert set(small.tolist()) < set(large.tolist())                   # nested
    assert torch.equal(subsets[-1], torch.arange(len(labels)))            # 1: all of it
    # the subsets depend on the seed and the fraction only, not on the rest of the list
    alone = nested_subsets(class_orders(labels, seed=0), (0.3,))[0]
    assert torch.equal(alone, subsets[2])
    other = nested_subsets(class_orders(labels, seed=1), (0.3,))[0]
    assert not torch.equal(other, alone)


@pytest.mark.parametrize("text, message", [
    ("0,1", "--fractions: 0 is outside (0, 1]"),
    ("0.1,1.5", "--fractions: 1.5 is outside (0, 1]"),
    ("-0.2", "--fractions: -0.2 is outside (0, 1]"),
    ("nan", "--fractions: nan is outside (0, 1]"),
    ("0.5,0.2", "--fractions: 0.2 after 0.5 is not increasing"),
    ("0.1,0.1", "--fractions: 0.1 after 0.1 is not increasing"),
    ("0.1,abc", "--fractions '0.1,abc': 'abc' is not a number"),
    ("", "'' is not a number"),
])
def test_bad_fractions_name_the_value(text, message):
    with pytest.raises(ConfigError) as err:
        parse_fractions(text)
    assert message in str(err.value) and "e.g. 0.01,0.03,0.1,0.3,1" in str(err.value)


def test_fractions_that_take_the_same_examples_are_refused(tmp_path, labels):
    assert check_fractions([0.5, 1]) == (0.5, 1.0)
    with pytest.raises(ConfigError, match="0.002 takes the same 10 training examples"):
        nested_subsets(class_orders(labels, 0), (0.001, 0.002, 1))
    with pytest.raises(ConfigError, match="drop --folds 3"):
        learning_curve(config(tmp_path / "c", folds=3), (0.5, 1), tiny(), progress=False)
    with pytest.raises(ConfigError, match="trains for reconstruction"):
        learning_curve(TrainConfig("cae", out=str(tmp_path / "c")), (0.5, 1), progress=False)
    assert not (tmp_path / "c").exists()


def test_curve_json_holds_the_runs_own_figures_and_a_rerun_goes_on(tmp_path, labels):
    out = tmp_path / "curve"
    result = learning_curve(config(out), (0.2, 1), tiny(), progress=False)
    curve = json.loads((out / CURVE).read_text())
    subsets = nested_subsets(class_orders(labels, 0), (0.2, 1))
    assert curve["train_sizes"] == [len(s) for s in subsets] == [287, 1437]
    for i, name in enumerate(("fraction-0.2", "fraction-1")):
        last = read_metrics(out / name)[-1]
        assert last["train_images"] == curve["train_sizes"][i]
        assert curve["top1_error"][i] == last["test_error"]
        assert curve["top5_error"][i] == last["test_top5_error"]
        assert curve["runs"][i]["steps"] == -(-curve["train_sizes"][i] // 32)
        load_run(out / name, Tiny())                         # a normal run folder
    assert (out / CURVE_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {k: result[k] for k in curve} == curve
    # a longer list: the new fraction is trained, the others kept
    kept = (out / "fraction-0.2" / WEIGHTS).stat().st_mtime_ns
    again = learning_curve(config(out), (0.2, 0.5, 1), tiny(), progress=False)
    assert again["train_sizes"] == [287, 721, 1437]
    assert again["top1_error"][::2] == curve["top1_error"]
    assert (out / "fraction-0.2" / WEIGHTS).stat().st_mtime_ns == kept
    with pytest.raises(CnnlabError, match="cannot go on with epochs=2: the learning-curve"):
        learning_curve(config(out, epochs=2), (0.2, 1), tiny(), progress=False)


def test_an_interrupted_run_continues_from_its_checkpoint(tmp_path):
    out = tmp_path / "curve"
    whole = learning_curve(config(tmp_path / "whole", epochs=2), (0.3, 1), tiny(),
                           progress=False)

    class Stop(Exception):
        pass

    model = tiny()
    calls = {"n": 0}

    def stop_in_the_last_run(module, inputs):          # 14 steps an epoch at 0.3, 45 at 1
        calls["n"] += module.training
        if calls["n"] == 2 * 14 + 45 + 10:
            raise Stop

    model.register_forward_pre_hook(stop_in_the_last_run)
    with pytest.raises(Stop):
        learning_curve(config(out, epochs=2), (0.3, 1), model, progress=False)
    assert (out / "fraction-1" / "checkpoint.safetensors").is_file()
    resumed = learning_curve(config(out, epochs=2), (0.3, 1), tiny(), progress=False)
    assert resumed["top1_error"] == whole["top1_error"]
    assert resumed["top5_error"] == whole["top5_error"]


def test_cli_draws_the_curve_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    out = tmp_path / "curve"
    assert cli.main(["learning-curve", "lenet5_modern", "--fractions", "0.3,1", "--epochs", "1",
                     "--out", str(out), "--no-tensorboard", "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "fraction 0.3 (1/2): 434 training and 360 test examples" in text
    assert json.loads((out / CURVE).read_text())["summary"] in text
    for args, message in (
            (["--fractions", "0.1,1.5"], "--fractions: 1.5 is outside (0, 1]"),
            (["--fractions", "0.3,0.1"], "--fractions: 0.1 after 0.3 is not increasing"),
            (["--fractions", "0.3,1", "--epochs", "2"], "cannot go on with epochs=2"),
            (["--fractions", "1", "--folds", "0"], "folds must be a positive int")):
        assert cli.main(["learning-curve", "lenet5_modern", "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
        assert "Traceback" not in err
