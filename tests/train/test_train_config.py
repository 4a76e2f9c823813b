"""TrainConfig: defaults, validation with messages that echo the value, dict round trip."""

import json
import re

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig


def test_defaults_follow_the_brief():
    c = TrainConfig()
    assert (c.batch_size, c.lr, c.momentum, c.weight_decay) == (64, 0.01, 0.9, 5e-4)
    assert (c.lr_step, c.lr_gamma, c.seed, c.kernel, c.num_workers) == (0, 0.1, 0, "native", 0)
    assert c.out == "runs/lenet5-digits"
    assert TrainConfig(model="vgg16", data="mnist", out="x").out == "x"


def test_round_trip_through_json():
    c = TrainConfig(model="lenet5_modern", data="mnist", data_dir="/d", epochs=3, lr=0.05,
                    lr_step=2, seed=7, kernel="reference", out="runs/a")
    back = TrainConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c


def test_ints_are_fine_floats():
    c = TrainConfig(lr=1, weight_decay=0)
    assert isinstance(c.lr, float) and isinstance(c.weight_decay, float)


@pytest.mark.parametrize("field,value,wanted", [
    ("epochs", 0, "a positive int"),
    ("epochs", 2.0, "a positive int"),
    ("epochs", True, "a positive int"),
    ("batch_size", -8, "a positive int"),
    ("lr", 0.0, "a positive number"),
    ("lr", "0.1", "a positive number"),
    ("lr", float("nan"), "a positive number"),
    ("momentum", 1.0, r"a number in \[0, 1\)"),
    ("weight_decay", -1e-4, "a number >= 0"),
    ("lr_step", -1, "an int >= 0"),
    ("lr_gamma", 0, r"a number in \(0, 1\]"),
    ("seed", -1, "an int in"),
    ("kernel", "fast", "'native' or 'reference'"),
    ("device", "gpu9", "'auto', 'cpu'"),
    ("num_workers", -1, "an int >= 0"),
    ("eval_batch_size", 0, "a positive int"),
    ("model", "", "a model name"),
])
def test_bad_values_are_refused_with_field_and_value(field, value, wanted):
    with pytest.raises(CnnlabError) as err:
        TrainConfig(**{field: value})
    message = str(err.value)
    assert f"{field}={value!r}" in message and "\n" not in message
    assert f"--{field.replace('_', '-')}" in message
    assert re.search(f"{field} must be {wanted}", message)


def test_unknown_keys_are_refused_with_a_near_match():
    with pytest.raises(CnnlabError, match="unknown training setting 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(CnnlabError, match="'epoch': did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})
