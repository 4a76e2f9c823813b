"""`cnnlab train`'s options are TrainConfig's fields: one each way, with the field's own help,
type, choices and default, and the models' recipes said where they override a default."""

import argparse
import dataclasses

import pytest

from cnnlab import data, models
from cnnlab.cli import build_parser, main
from cnnlab.data.datasets import LOADERS
from cnnlab.train import TrainConfig
from cnnlab.train.config import SETTINGS

NOT_SETTINGS = {"resume", "overwrite", "quiet"}      # train's options that are no field


def train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def options() -> dict[str, argparse.Action]:
    return {a.dest: a for a in train_parser()._actions if a.dest != "help"}


def test_every_config_field_has_an_option_and_every_option_a_field():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    dests = set(options())
    assert fields - dests == set(), "fields without an option"
    assert dests - fields == NOT_SETTINGS, "options without a field"
    assert list(SETTINGS) == [f.name for f in dataclasses.fields(TrainConfig)]


def test_each_option_is_made_from_its_field():
    by_dest = options()
    assert by_dest["model"].option_strings == [] and by_dest["model"].nargs == "?"
    for s in SETTINGS.values():
        action = by_dest[s.name]
        assert action.default is None, s.name          # not given: the recipe still applies
        assert action.help is not None and s.help.replace("%", "%%") in action.help
        if s.name == "model":
            continue
        if s.kind is bool:
            assert action.option_strings == [s.flag, "--no-" + s.flag[2:]]
        else:
            assert action.option_strings == [s.flag] and action.type is s.kind
        if s.choices:
            assert action.metavar == "{" + ",".join(s.choices) + "}"
        if s.default is not None and s.name != "model":
            shown = ("on" if s.default else "off") if s.kind is bool else s.default
            assert f"(default {shown}" in action.help, s.name


def sample(s):
    """A value of setting ``s`` other than its default, as a command-line word."""
    if s.choices:
        return next(c for c in reversed(s.choices) if c != s.default)
    if s.kind is int:
        return str(s.default + 2)
    if s.kind is float:
        return "0.25" if s.default == 0.0 else str(s.default / 2)
    return "some/where"


@pytest.mark.parametrize("name", [n for n in SETTINGS if n != "model"])
def test_each_option_sets_its_field(name):
    s = SETTINGS[name]
    argv = [f"--no-{s.flag[2:]}" if s.default else s.flag] if s.kind is bool else [s.flag, sample(s)]
    args = train_parser().parse_args(["lenet5", *argv])
    value = getattr(args, name)
    assert value is not None and value != s.default
    assert all(getattr(args, n) is None for n in SETTINGS if n not in (name, "model"))


def test_options_not_given_leave_the_recipe_in_force(capsys):
    args = train_parser().parse_args(["lenet5"])
    given = {k: v for k, v in vars(args).items() if k in SETTINGS and v is not None}
    assert given == {"model": "lenet5"}
    config = TrainConfig.for_model(given)
    for key, value in models.info("lenet5").recipe.items():
        assert getattr(config, key) == value


def test_help_shows_the_defaults_and_the_recipes_that_override_them(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())          # undo argparse's wrapping
    epochs = {m: models.info(m).recipe["epochs"] for m in models.names()
              if "epochs" in models.info(m).recipe}
    assert epochs                                            # lenet5's recipe gives 20
    named = ("recipes: " + ", ".join(f"{m} {v}" for m, v in epochs.items())
             if len(epochs) <= 3 else          # a few are named, more are counted
             f"the recipes of {len(epochs)} models set their own: `cnnlab models --json`")
    assert f"passes over the training split (default {TrainConfig().epochs}; {named})" in text
    lenet5 = TrainConfig.for_model({"model": "lenet5"})
    assert f"# embedded {lenet5.data}, {lenet5.epochs} epochs (its recipe)" in text
    assert "10 epochs" not in text.split("examples:")[1]
    assert "--eval-batch-size EVAL_BATCH_SIZE images per evaluation batch (default 500)" in text
    assert "crop[P]" in text and "pca[S]" in text           # the augmentation grammar


def test_data_choices_come_from_the_registry():
    action = options()["data"]
    assert action.metavar == "{" + ",".join((*data.names(), "folder", "voc", "csv", "crops",
                                             *LOADERS)) + "}"
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    download = next(a for a in sub.choices["download"]._actions if a.dest == "name")
    assert sorted(download.choices) == [n for n in data.names() if not data.info(n).embedded]


def test_eval_batch_size_is_an_option_that_reaches_the_config(capsys):
    args = train_parser().parse_args(["lenet5", "--eval-batch-size", "7"])
    assert args.eval_batch_size == 7
    code = main(["train", "lenet5", "--eval-batch-size", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err == ("error: eval_batch_size must be a positive int, got "
                                 "eval_batch_size=0 (command line: --eval-batch-size)\n")


@pytest.mark.parametrize("option,value,message", [
    ("--schedule", "cosin", ("schedule must be 'step', 'constant', 'cosine', 'onecycle' or "
                             "'plateau', got schedule='cosin' (did you mean 'cosine'?) "
                             "(command line: --schedule)")),
    ("--kernel", "native2", "got kernel='native2' (did you mean 'native'?)"),
    ("--amp", "bf61", "got amp='bf61' (did you mean 'bf16'?)"),
    ("--data", "cifar", "got data='cifar' (did you mean 'cifar10'?) (command line: --data)"),
    ("--epochs", "0", "epochs must be a positive int, got epochs=0 (command line: --epochs)"),
])
def test_a_bad_value_names_the_option_and_the_near_match(capsys, option, value, message):
    code = main(["train", "lenet5", option, value])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1
