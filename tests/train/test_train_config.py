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
    assert c.out is None and c.default_out() == "runs/lenet5-digits"
    assert TrainConfig(model="vgg16", data="mnist", out="x").out == "x"
    assert TrainConfig(model="vgg16", data="mnist").default_out() == "runs/vgg16-mnist"


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


def test_new_defaults_change_nothing():
    c = TrainConfig()
    assert (c.augment, c.schedule, c.warmup_epochs, c.nesterov, c.label_smoothing) == (
        "none", "step", 0.0, False, 0.0)
    assert (c.clip_grad_norm, c.amp, c.channels_last, c.compile, c.checkpoint_every) == (
        0.0, "none", False, False, 0)


@pytest.mark.parametrize("field,value,wanted", [
    ("augment", "crop4,flp", "'auto', 'none' or a comma list"),
    ("augment", "", "'auto', 'none' or a comma list"),
    ("augment", None, "'auto', 'none' or a comma list"),
    ("nesterov", 1, "True or False"),
    ("schedule", "linear", "'step', 'constant', 'cosine', 'onecycle' or 'plateau'"),
    ("warmup_epochs", -1, "a number of epochs >= 0"),
    ("patience", 0, "a positive int"),
    ("label_smoothing", 1.0, r"a number in \[0, 1\)"),
    ("label_smoothing", -0.1, r"a number in \[0, 1\)"),
    ("clip_grad_norm", -1.0, "a number >= 0"),
    ("amp", "fp8", "'none', 'bf16' or 'fp16'"),
    ("channels_last", "yes", "True or False"),
    ("compile", None, "True or False"),
    ("checkpoint_every", -5, "an int >= 0"),
    ("checkpoint_every", 2.5, "an int >= 0"),
])
def test_new_fields_are_checked_like_the_others(field, value, wanted):
    test_bad_values_are_refused_with_field_and_value(field, value, wanted)


@pytest.mark.parametrize("text,reason", [
    ("crop4,flp", r"unknown transform 'flp': did you mean 'flip'\?"),
    ("crop4,crop2", r"'crop' is given twice"),
    ("rotate200", r"rotate200: the number must be degrees in \(0, 180\]"),
    ("crop2.5", r"crop2.5: the number must be a whole number of pixels"),
    ("jitter1.5", r"jitter1.5: the number must be an amount in \(0, 1\)"),
    ("flip,,crop", r"unknown transform ''"),
])
def test_augment_errors_name_the_bad_item(text, reason):
    with pytest.raises(CnnlabError, match=reason) as err:
        TrainConfig(augment=text)
    assert "\n" not in str(err.value) and "--augment" in str(err.value)


def test_augment_grammar_accepts_the_documented_forms():
    for text in ("auto", "none", "crop", "crop4,flip", "translate2, rotate10", "jitter0.2,pca0.1",
                 "flip0.3", "pca", "CROP4,Flip"):
        assert TrainConfig(augment=text).augment == text


@pytest.mark.parametrize("kw,message", [
    ({"schedule": "cosine", "lr_step": 8},
     "lr_step=8 drops the learning rate of schedule 'step' only, got schedule='cosine'"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov=True needs momentum > 0"),
    ({"amp": "fp16", "device": "cpu"}, "amp='fp16' needs a CUDA GPU"),
    ({"warmup_epochs": 3, "epochs": 3}, "warmup_epochs=3.0 must be less than epochs=3"),
])
def test_conflicting_settings_are_refused(kw, message):
    with pytest.raises(CnnlabError, match=re.escape(message)) as err:
        TrainConfig(**kw)
    assert "\n" not in str(err.value)


def test_a_recipes_lr_step_gives_way_to_another_schedule():
    assert TrainConfig.for_model({"model": "lenet5_modern"}).lr_step == 8
    c = TrainConfig.for_model({"model": "lenet5_modern", "schedule": "cosine"})
    assert (c.schedule, c.lr_step, c.lr) == ("cosine", 0, 0.05)
    with pytest.raises(CnnlabError, match="lr_step=4 drops"):     # given explicitly: refused
        TrainConfig.for_model({"model": "lenet5_modern", "schedule": "cosine", "lr_step": 4})


def test_new_fields_round_trip_through_json():
    c = TrainConfig(augment="crop4,flip", schedule="onecycle", warmup_epochs=0.5, nesterov=True,
                    label_smoothing=0.1, clip_grad_norm=1, amp="bf16", channels_last=True,
                    compile=True, checkpoint_every=100, patience=2)
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert isinstance(c.clip_grad_norm, float)


@pytest.mark.parametrize("field,value,near", [
    ("schedule", "cosin", "cosine"),
    ("kernel", "referense", "reference"),
    ("amp", "bf61", "bf16"),
    ("data", "digts", "digits"),
    ("data", "cifar", "cifar10"),
    ("data", "foldr", "folder"),
])
def test_a_value_not_among_the_choices_gets_a_near_match(field, value, near):
    with pytest.raises(CnnlabError) as err:
        TrainConfig(**{field: value})
    assert str(err.value).startswith(f"{field} must be ")
    assert f"got {field}={value!r} (did you mean {near!r}?)" in str(err.value)


def test_the_data_choices_are_the_registrys():
    from cnnlab import data
    from cnnlab.data.datasets import BOX_FORMATS, CROPS, FOLDER, LOADERS
    from cnnlab.train.config import SETTINGS

    assert SETTINGS["data"].choices == (*data.names(), FOLDER, *BOX_FORMATS, CROPS, *LOADERS)
    for name in SETTINGS["data"].choices:
        assert TrainConfig(data=name).data == name
    with pytest.raises(CnnlabError, match=re.escape(
            "data must be 'cifar10', 'cifar100', 'digits', 'fashion-mnist', 'mnist', 'folder', "
            "'voc', 'csv', 'crops', 'mr', 'text' or 'video', got data='svhn' (--data)")):
        TrainConfig(data="svhn")


def test_errors_name_where_the_value_came_from():
    from cnnlab.train.config import COMMAND_LINE

    def message(values, **kw):
        with pytest.raises(CnnlabError) as err:
            TrainConfig.from_dict(values, **kw)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert message({"epochs": 0}, source="runs/x/config.json").endswith(
        "got epochs=0 (in runs/x/config.json)")
    assert message({"epochs": 0}, source=COMMAND_LINE).endswith(
        "got epochs=0 (command line: --epochs)")
    assert message({"epochs": 0}).endswith("got epochs=0 (--epochs)")       # not known
    assert message({"epoch": 3}, source="runs/x/config.json").endswith(
        "(in runs/x/config.json)")
    # per key: the file's value is the bad one, the command line's is fine
    assert message({"epochs": 2, "lr": -1.0},
                   source={"epochs": COMMAND_LINE, "lr": "runs/x/config.json"}).endswith(
        "got lr=-1.0 (in runs/x/config.json)")
    # a conflict names both places
    assert message({"schedule": "cosine", "lr_step": 2},
                   source={"schedule": COMMAND_LINE, "lr_step": "runs/x/config.json"}).endswith(
        "(in runs/x/config.json; command line: --schedule)")


def test_a_recipes_values_are_named_as_the_recipes():
    # lenet5_modern's recipe gives epochs=20
    with pytest.raises(CnnlabError, match=re.escape(
            "warmup_epochs=20.0 must be less than epochs=20; lower --warmup-epochs "
            "(command line: --warmup-epochs; recipe of model lenet5_modern)")):
        TrainConfig.for_model({"model": "lenet5_modern", "warmup_epochs": 20},
                              source="command line")
