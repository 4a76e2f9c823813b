"""k-fold cross-validation (cnnlab.train.series, `cnnlab train --folds K`): stratified,
seeded folds; one normal run per fold; the summary's mean and sample std; resumption."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import cli
from cnnlab.data import load
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.train import CHECKPOINT, WEIGHTS, TrainConfig, load_run, train
from cnnlab.train.metrics import read_metrics
from cnnlab.train.series import (
    SERIES,
    SUMMARY,
    cross_validate,
    digest,
    fold_name,
    stratified_folds,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    """Stands for SIGKILL in-process: raised out of the middle of a step."""


class Tiny(nn.Module):
    """8x8 digits -> 10 scores, with dropout so the random numbers matter."""

    default_input_shape = (1, 8, 8)
    kill_at: int | None = None           # training forward call that raises Killed
    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        if self.training:
            Tiny.calls += 1
            if Tiny.calls == Tiny.kill_at:
                raise Killed(f"killed in step {Tiny.calls}")
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(F.dropout(x.flatten(1), 0.25, self.training))


def tiny(kill_at=None):
    Tiny.calls, Tiny.kill_at = 0, kill_at
    torch.manual_seed(0)
    return Tiny()


@pytest.fixture(scope="module")
def joined():
    """The digits' train and test splits as one set (what cross-validation splits)."""
    return load("digits", "train").join(load("digits", "test"))


def config(out, **kw):
    values = {"model": "tiny", "epochs": 1, "batch_size": 64, "lr": 0.1, "folds": 3,
              "out": str(out), "device": "cpu", "tensorboard": False, "plots": False, **kw}
    return TrainConfig(**values)


def figures(summary):
    """What a resumed series must reproduce: each fold's test figures, their mean and std."""
    def drop(d):
        return {k: v for k, v in d.items() if k.startswith("test_")}
    return ([drop(r) for r in summary["runs"]], drop(summary["mean"]), drop(summary["std"]))


# -- the folds ------------------------------------------------------------------------------

def test_folds_are_stratified_disjoint_and_cover_the_data(joined):
    labels = joined.labels
    folds = stratified_folds(labels, 5, seed=0)
    everything = torch.cat(folds)
    assert len(everything) == len(labels)
    assert torch.equal(everything.sort().values, torch.arange(len(labels)))   # disjoint, all
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    per_class = torch.stack([torch.bincount(labels[f], minlength=10) for f in folds])  # 5 x 10
    assert (per_class.max(0).values - per_class.min(0).values).max() <= 1
    assert torch.equal(per_class.sum(0), torch.bincount(labels))
    assert all(torch.equal(f, f.sort().values) for f in folds)


def test_same_seed_same_folds_other_seed_other_folds(joined):
    a = stratified_folds(joined.labels, 4, seed=7)
    b = stratified_folds(joined.labels, 4, seed=7)
    c = stratified_folds(joined.labels, 4, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert digest(a) == digest(b) != digest(c)


def test_fold_counts_outside_the_data_are_refused(joined):
    smallest = int(torch.bincount(joined.labels).min())
    with pytest.raises(ConfigError, match=f"folds={smallest + 1} is more than the {smallest} "
                       "examples of class"):
        stratified_folds(joined.labels, smallest + 1, seed=0)
    assert len(stratified_folds(joined.labels, smallest, seed=0)) == smallest
    with pytest.raises(ConfigError, match="at least 2 folds, got folds=1"):
        stratified_folds(joined.labels, 1, seed=0)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        cross_validate(TrainConfig("lenet5", folds=1, out="unused"))


# -- the runs and the summary ---------------------------------------------------------------

def test_each_fold_is_a_run_tested_on_its_fold_and_the_summary_is_their_mean_and_std(
        tmp_path, joined):
    root = tmp_path / "cv"
    result = train(config(root), tiny(), progress=False)      # train() dispatches folds > 1
    assert sorted(p.name for p in root.iterdir()) == ["config.json", "fold-01", "fold-02",
                                                      "fold-03", SERIES, SUMMARY]
    summary = json.loads((root / SUMMARY).read_text())
    folds = stratified_folds(joined.labels, 3, seed=0)
    tops = []
    for k, (record, fold) in enumerate(zip(summary["runs"], folds, strict=True), 1):
        run = root / fold_name(k, 3)
        assert record["run"] == run.name and record["fold"] == k
        assert record["test_size"] == len(fold)
        assert record["train_size"] == len(joined) - len(fold)
        last = read_metrics(run)[-1]
        assert record["test_top1"] == last["test_top1"]
        assert last["train_images"] == len(joined) - len(fold)
        model, saved = load_run(run, Tiny())                  # a normal run folder
        assert saved.out == str(run) and saved.folds == 3
        # the fold's test figure is the model's accuracy on that fold's examples
        x = joined.normalize(joined.images[fold])
        with torch.no_grad():
            hits = model(x).argmax(1).eq(joined.labels[fold]).sum().item()
        assert hits / len(fold) == pytest.approx(last["test_top1"], abs=1e-12)
        tops.append(last["test_top1"])
    mean = sum(tops) / 3
    std = math.sqrt(sum((t - mean) ** 2 for t in tops) / (3 - 1))      # sample std
    assert summary["mean"]["test_top1"] == pytest.approx(mean, abs=1e-15)
    assert summary["std"]["test_top1"] == pytest.approx(std, abs=1e-15)
    assert "n - 1" in summary["std_kind"]
    assert summary["summary"] == (f"test accuracy {100 * mean:.1f}% ± {100 * std:.1f}% over "
                                  "3 folds")
    assert result["summary"] == summary["summary"] and result["run_dir"] == str(root)
    cfg = json.loads((root / "config.json").read_text())
    assert cfg["folds"] == 3 and cfg["out"] == str(root)


def test_resume_after_an_interrupted_and_a_deleted_fold_gives_the_same_summary(tmp_path):
    whole = cross_validate(config(tmp_path / "whole"), tiny(), progress=False)
    steps = math.ceil(1198 / 64)                 # 1797 examples: 1,198 train each fold
    root = tmp_path / "cv"
    with pytest.raises(Killed):                  # part way through fold 3, after a checkpoint
        cross_validate(config(root, checkpoint_every=5), tiny(kill_at=2 * steps + 12),
                       progress=False)
    assert (root / "fold-03" / CHECKPOINT).is_file() and not (root / SUMMARY).exists()
    kept = (root / "fold-01" / WEIGHTS).stat().st_mtime_ns
    with pytest.raises(CnnlabError, match="holds a cross-validation already; continue it with"):
        cross_validate(config(root, checkpoint_every=5), tiny(), progress=False)
    resumed = cross_validate(config(root, checkpoint_every=5), tiny(), progress=False,
                             resume=True)
    assert figures(resumed) == figures(whole)
    assert (root / "fold-01" / WEIGHTS).stat().st_mtime_ns == kept      # finished: kept
    shutil.rmtree(root / "fold-02")              # a fold lost: trained again on resumption
    again = cross_validate(config(root, checkpoint_every=5), tiny(), progress=False,
                           resume="auto")
    assert figures(again) == figures(whole)
    assert json.loads((root / SUMMARY).read_text())["mean"] == again["mean"]


def test_going_on_with_other_settings_or_other_data_is_refused(tmp_path):
    root = tmp_path / "cv"
    cross_validate(config(root), tiny(), progress=False)
    with pytest.raises(CnnlabError, match="cannot go on with lr=0.2: .* started with lr=0.1"):
        cross_validate(config(root, lr=0.2), tiny(), progress=False, resume=True)
    series = json.loads((root / SERIES).read_text())
    (root / SERIES).write_text(json.dumps({**series, "folds_sha256": "0" * 64}))
    with pytest.raises(CnnlabError, match="not split as when the cross-validation"):
        cross_validate(config(root), tiny(), progress=False, resume=True)


def test_a_series_folder_and_its_runs_are_not_trained_as_single_runs(tmp_path):
    root = tmp_path / "cv"
    cross_validate(config(root), tiny(), progress=False)
    with pytest.raises(CnnlabError, match="holds a cross-validation; continue it with"):
        train(config(root, folds=1), tiny(), progress=False)
    with pytest.raises(CnnlabError, match="is the run fold-02 of the cross-validation"):
        train(config(root / "fold-02"), tiny(), progress=False, resume=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(CnnlabError, match="holds files that cnnlab did not write"):
        cross_validate(config(tmp_path / "mine"), tiny(), progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    single = tmp_path / "single"
    train(config(single, folds=1), tiny(), progress=False)
    with pytest.raises(CnnlabError, match="holds a run of `cnnlab train`; pick a new or empty"):
        cross_validate(config(single), tiny(), progress=False)
    cross_validate(config(single), tiny(), progress=False, overwrite=True)
    assert not (single / WEIGHTS).exists()       # the single run's results went with it
    assert json.loads((single / "config.json").read_text())["folds"] == 3


# -- the command ----------------------------------------------------------------------------

def test_cli_cross_validates_shows_folds_and_resumes(tmp_path, capsys):
    out = tmp_path / "cv"
    args = ["train", "lenet5_modern", "--epochs", "1", "--folds", "3", "--out", str(out),
            "--no-tensorboard", "--no-plots"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    for k in (1, 2, 3):
        assert f"fold {k}/3: 1,198 training and 599 test examples" in text
    line = json.loads((out / SUMMARY).read_text())["summary"]
    assert f"{line} after 1 epochs" in text and "over 3 folds" in line
    shutil.rmtree(out / "fold-03")
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0
    assert line in capsys.readouterr().out
    assert cli.main([*args, "--resume", "auto", "--quiet"]) == 0       # nothing left: kept
    assert line in capsys.readouterr().out
    # a fold's run evaluated on the data set's test split: a note says it trained on it too
    assert cli.main(["eval", str(out / "fold-02"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"note: {out / 'fold-02'} is fold-02 of the cross-validation in {out}" in err


@pytest.mark.parametrize("folds, message", [
    ("0", "folds must be a positive int"),
    ("1000", "folds=1000 is more than the 174 examples of class '8'"),
])
def test_cli_refuses_bad_fold_counts_in_one_line(tmp_path, capsys, folds, message):
    out = tmp_path / "cv"
    assert cli.main(["train", "lenet5_modern", "--folds", folds, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("command", [["train", "lenet5_modern", "--folds", "2"],
                                     ["learning-curve", "lenet5_modern", "--fractions", "0.3,1"]])
def test_a_model_setup_that_fails_writes_no_series_folder(tmp_path, capsys, command):
    # refused before series.json is written, so the corrected command starts afresh
    out = tmp_path / "series"
    args = [*command, "--epochs", "1", "--out", str(out), "--no-tensorboard", "--no-plots"]
    assert cli.main([*args, "--freeze-until", "nolayer"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'nolayer'" in err and err.count("\n") == 1
    assert not out.exists()
    assert cli.main([*args, "--quiet"]) == 0
