"""Ensembles of runs and test-time augmentation (8.4.1), checked against hand computation."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cnnlab.cli import main
from cnnlab.data import load
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, evaluate_run, load_run, read_metadata, train
from cnnlab.train.ensemble import evaluate_ensemble, predict_proba, scores

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two lenet5_modern runs on digits that differ in their seed."""
    train_ds, test_ds = load("digits", "train", size=32), load("digits", "test", size=32)
    data = train_ds.subset(torch.arange(256)), test_ds.subset(torch.arange(64))
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        cfg = TrainConfig("lenet5_modern", epochs=1, lr=0.05, batch_size=32, seed=seed,
                          out=str(root / f"seed{seed}"), device="cpu", plots=False)
        train(cfg, progress=False, datasets=data)
    return root / "seed0", root / "seed1"


@pytest.fixture(scope="module")
def test_set():
    return load("digits", "test", size=32)


def manual_proba(run, ds, views=lambda x: [x]):
    """Softmax outputs by hand: normalise with the run's statistics, average over views."""
    model, _ = load_run(run)
    meta = read_metadata(run / "model.safetensors")
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        outs = [F.softmax(model((v - mean) / std), dim=1) for v in views(ds.images)]
    return torch.stack(outs).mean(0)


def test_the_ensemble_averages_the_members_softmax_outputs(runs, test_set):
    result = evaluate_ensemble(runs, batch_size=100)
    assert json.loads(json.dumps(result)) == result                   # JSON-ready
    assert (result["data"], result["split"], result["tta"], result["n"]) == (
        "digits", "test", "none", 360)
    probs = [manual_proba(r, test_set) for r in runs]
    for member, p, run in zip(result["members"], probs, runs, strict=True):
        assert member["run"] == str(run) and member["model"] == "lenet5_modern"
        alone = evaluate_run(run)
        assert member["top1"] == pytest.approx(alone["top1"])
        assert member["loss"] == pytest.approx(alone["loss"], rel=1e-4)   # cross-entropy
    mean = (probs[0] + probs[1]) / 2
    expected = (mean.argmax(1) == test_set.labels).float().mean().item()
    ensemble = result["ensemble"]
    assert ensemble["members"] == 2 and ensemble["top1"] == pytest.approx(expected)
    nll = -mean.gather(1, test_set.labels.view(-1, 1)).log().mean().item()
    assert ensemble["loss"] == pytest.approx(nll, rel=1e-5)
    assert ensemble["error"] == pytest.approx(1 - ensemble["top1"])


def test_flip_and_crop_views_equal_hand_computation(runs, test_set):
    model, _ = load_run(runs[0])
    meta = read_metadata(runs[0] / "model.safetensors")
    ds = test_set.subset(torch.arange(40))
    kw = {"mean": meta["mean"], "std": meta["std"], "batch_size": 16}
    flip = predict_proba(model, ds, tta="flip", **kw)
    assert torch.allclose(flip, manual_proba(runs[0], ds, lambda x: [x, x.flip(-1)]),
                          atol=1e-6)

    def ten(x, p=4):                        # 32 / 8 pixels of black on every side
        x = F.pad(x, (p, p, p, p))
        corners = ((0, 0), (0, 2 * p), (2 * p, 0), (2 * p, 2 * p), (p, p))   # and the centre
        crops = [x[..., i:i + 32, j:j + 32] for i, j in corners]
        return crops + [c.flip(-1) for c in crops]

    crops = predict_proba(model, ds, tta="crops", **kw)
    assert torch.allclose(crops, manual_proba(runs[0], ds, ten), atol=1e-6)
    none = predict_proba(model, ds, **kw)
    assert torch.allclose(none, manual_proba(runs[0], ds), atol=1e-6)
    assert torch.allclose(crops.sum(1), torch.ones(40))
    two = predict_proba(model, ds, tta="crops", crop_padding=2, **kw)
    assert torch.allclose(two, manual_proba(runs[0], ds, lambda x: ten(x, 2)), atol=1e-6)
    result = evaluate_ensemble(runs[:1], tta="flip")
    assert result["ensemble"]["top1"] == result["members"][0]["top1"]


def test_scores_of_hand_made_outputs():
    proba = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6]])
    s = scores(proba, torch.tensor([0, 2, 1]))
    assert s["top1"] == pytest.approx(1 / 3) and s["top5"] == 1.0 and s["n"] == 3
    assert s["loss"] == pytest.approx(-(torch.tensor([0.7, 0.3, 0.3]).log().mean().item()))


def test_eval_command_prints_members_and_ensemble(runs, capsys):
    a, b = map(str, runs)
    assert main(["eval", a, b, "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "digits test, 360 examples, test-time views: none"
    assert lines[1].split() == ["run", "model", "top-1", "top-5", "error", "loss"]
    assert lines[2].startswith(a) and lines[3].startswith(b)
    assert lines[4].startswith("ensemble of 2") and len(lines) == 5
    assert main(["eval", a, b, "--json", "--tta", "flip"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert [m["run"] for m in result["members"]] == [a, b] and result["tta"] == "flip"
    assert "note: --tta flip averages over mirror images" in captured.err   # 8.3.4, digits
    # one run and no views: the single-run output, unchanged
    assert main(["eval", a, "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {
        "run", "model", "data", "split", "loss", "top1", "top5", "n", "error"}


def retag(run, dest, **meta_changes):
    """A copy of ``run`` whose weights' metadata says something else."""
    shutil.copytree(run, dest)
    path = dest / "model.safetensors"
    meta = {k: v if isinstance(v, str) else json.dumps(v)
            for k, v in {**read_metadata(path), **meta_changes}.items()}
    save_file(load_file(str(path)), str(path), metadata=meta)
    return dest


def test_members_that_cannot_be_averaged_are_refused(runs, tmp_path, capsys):
    a = runs[0]
    other_classes = retag(a, tmp_path / "letters", classes=list("abcdefghij"))
    with pytest.raises(CnnlabError, match=r"letters tells 10 classes apart \(a, b, c, d, \.\.\.\)"
                                          r" but .* tells 10 \(0, 1, 2, 3, \.\.\.\); .* same "
                                          r"classes"):
        evaluate_ensemble([a, other_classes])
    bigger = retag(a, tmp_path / "big", input_shape=[1, 64, 64])
    with pytest.raises(CnnlabError, match="takes 1x64x64 images but .* takes 1x32x32; use runs "
                                          "trained at the same input size"):
        evaluate_ensemble([a, bigger])
    mnist = tmp_path / "mnist"
    shutil.copytree(a, mnist)
    config = json.loads((mnist / "config.json").read_text())
    (mnist / "config.json").write_text(json.dumps({**config, "data": "mnist"}))
    with pytest.raises(CnnlabError, match="was trained on mnist but .* on digits; pass --data"):
        evaluate_ensemble([a, mnist])
    assert evaluate_ensemble([a, mnist], data="digits")["ensemble"]["members"] == 2
    with pytest.raises(CnnlabError, match="is given twice"):
        evaluate_ensemble([a, a])
    with pytest.raises(CnnlabError, match="unknown test-time augmentation 'mirror'"):
        evaluate_ensemble([a], tta="mirror")
    with pytest.raises(CnnlabError, match="crop_padding must be a positive int"):
        evaluate_ensemble([a], tta="crops", crop_padding=0)
    assert main(["eval", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "run folder" in err and "missing" in err and "does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_a_single_run_reports_what_its_row_in_an_ensemble_reports(runs, capsys):
    """One evaluator: `cnnlab eval RUN` is an ensemble of one, so its figures are RUN's row
    among others to the last bit."""
    a, b = map(str, runs)
    assert main(["eval", a, "--json", "--quiet"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert main(["eval", a, b, "--json", "--quiet"]) == 0
    row = json.loads(capsys.readouterr().out)["members"][0]
    for key in ("top1", "top5", "error", "loss", "n"):
        assert alone[key] == row[key], key
    one = evaluate_ensemble([a])
    assert one["ensemble"] == {"members": 1, **{k: one["members"][0][k] for k in
                                               ("top1", "top5", "error", "loss", "n")}}


def test_the_logged_test_figures_are_what_eval_reports(tmp_path):
    """The epoch's test pass and `cnnlab eval` are one evaluator: the same loss (the mean
    negative log-probability of the right class) and accuracy for the same model and data;
    for LeNet-5's RBF output that loss is its MAP criterion."""
    for name in ("lenet5_modern", "lenet5"):
        out = tmp_path / name
        cfg = TrainConfig(name, epochs=1, lr=0.01, batch_size=64, out=str(out), device="cpu",
                          tensorboard=False, plots=False)
        result = train(cfg, progress=False)
        again = evaluate_run(out)
        assert again["n"] == 360 and again["top1"] == result["test_top1"]
        assert again["loss"] == pytest.approx(result["test_loss"], rel=1e-6)
    from cnnlab.nn.lenet import rbf_map_loss

    model, _ = load_run(out)
    ds = load("digits", "test", size=32)
    meta = read_metadata(out / "model.safetensors")
    x = (ds.images - meta["mean"][0]) / meta["std"][0]
    with torch.no_grad():
        criterion = rbf_map_loss(model(x), ds.labels, model.rbf_j).item()
    assert result["test_loss"] == pytest.approx(criterion, rel=1e-5)
