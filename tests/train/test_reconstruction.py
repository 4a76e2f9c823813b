"""Reconstruction (8.5.2) on the trainer's one loop: an autoencoder trains, evaluates, resumes
to the bit and pretrains a classifier, through the same train() and commands as classifiers."""

import doctest
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cnnlab import models
from cnnlab.cli import main
from cnnlab.data import load
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.train import (
    CHECKPOINT,
    WEIGHTS,
    TrainConfig,
    checkpoint,
    evaluate,
    evaluate_run,
    load_run,
    reconstruction,
    train,
)
from cnnlab.train import loop as loop_mod
from cnnlab.train._runs import check_task, run_info
from cnnlab.train.ensemble import evaluate_ensemble, predict_proba
from cnnlab.train.evaluation import Member, evaluate_members
from cnnlab.train.reconstruction import GRID, Reconstruction, psnr
from cnnlab.train.tasks import task_for
from cnnlab.train.transfer import apply_transfer

sys.path.insert(0, str(Path(__file__).parent))
from test_ensemble import retag
from test_resume import Killed, metrics, same_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    """8x8 digits, 160 to train on and 60 to test: 5 steps of 32 an epoch."""
    train_ds, test_ds = load("digits", "train"), load("digits", "test")
    return train_ds.subset(torch.arange(160)), test_ds.subset(torch.arange(60))


def config(tmp_path, name="run", **kw):
    values = {"model": "cae", "epochs": 3, "batch_size": 32, "lr": 0.1, "weight_decay": 0.0,
              "device": "cpu", "out": str(tmp_path / name), "tensorboard": False,
              "plots": False, **kw}
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """The 7-layer autoencoder trained for 3 epochs, denoising, mid-epoch checkpoints."""
    tmp = tmp_path_factory.mktemp("cae")
    torch.manual_seed(0)
    result = train(config(tmp, denoise=0.2, checkpoint_every=2), progress=False,
                   datasets=digits)
    return tmp / "run", result


def test_an_autoencoder_trains_through_the_trainer(trained):
    run, result = trained
    history = result["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_mse"] < history[0]["test_mse"]
    assert "test_top1" not in history[0]
    for r in history:                    # psnr is 10 log10(1 / mse) of [0, 1] pixels
        assert r["test_psnr"] == pytest.approx(10 * math.log10(1 / r["test_mse"]))
        assert r["test_loss"] == pytest.approx(r["test_mse"])        # --loss mse
    assert result["summary"] == (f"test reconstruction MSE {history[-1]['test_mse']:.4g} "
                                 f"(PSNR {history[-1]['test_psnr']:.2f} dB)")
    info = run_info(run)
    assert info.task == "reconstruction" and info.input_shape == (1, 8, 8)


def test_a_loaded_run_takes_the_size_it_was_trained_at(trained):
    run, _ = trained
    assert models.create("cae").default_input_shape == (1, 28, 28)      # the builder's default
    model, _ = load_run(run)
    assert model.default_input_shape == (1, 8, 8)


def test_overwrite_removes_a_stale_reconstruction_grid(trained, tmp_path):
    """The grid is one of the trainer's own files: a classifier trained over the run with
    --overwrite leaves no autoencoder picture behind."""
    run, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    small = tuple(load("digits", split, size=32).subset(torch.arange(40))
                  for split in ("train", "test"))
    train(config(tmp_path, "copy", model="lenet5_modern", epochs=1), progress=False,
          datasets=small, overwrite=True)
    assert not (copy / GRID).exists() and (copy / WEIGHTS).is_file()


def test_the_run_folder_shows_originals_noisy_inputs_and_reconstructions(trained):
    run, _ = trained
    grid = Image.open(run / GRID)
    # 10 images of 8x8 with 2-pixel gaps in 3 rows, drawn 14 times larger
    assert grid.size == (14 * (10 * 10 - 2), 14 * (3 * 10 - 2))
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl", WEIGHTS,
                                                     GRID]


def test_eval_reproduces_the_last_epoch_and_prints_mse_and_psnr(trained, digits, capsys):
    run, result = trained
    model, cfg = load_run(run)
    task = task_for(model, cfg)
    assert isinstance(task, Reconstruction) and task.denoise == 0.2
    info = run_info(run)
    again = evaluate_members([Member(model, task, info.mean, info.std)], digits[1],
                             batch_size=7).members[0]       # other batches: the same noise?
    last = result["history"][-1]
    assert again["mse"] == pytest.approx(last["test_mse"], rel=1e-6)
    plain = evaluate(model, digits[1], mean=info.mean, std=info.std)     # its own task
    assert set(plain) == {"loss", "mse", "psnr", "n"}
    with pytest.raises(CnnlabError, match="predict_proba gives class probabilities, but "
                                          "ConvAutoencoder is a reconstruction model"):
        predict_proba(model, digits[1])
    whole = evaluate_run(run)                                # the whole test split
    assert whole["n"] == 360 and whole["psnr"] == pytest.approx(psnr(whole["mse"]))
    assert main(["eval", str(run), "--quiet"]) == 0
    assert capsys.readouterr().out == (f"digits test: reconstruction MSE {whole['mse']:.4g}, "
                                       f"PSNR {whole['psnr']:.2f} dB, loss "
                                       f"{whole['loss']:.4g} on 360 examples\n")
    assert main(["eval", str(run), "--json", "--quiet"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"run", "model", "data", "split", "mse",
                                                        "psnr", "loss", "n"}


def test_an_ensemble_of_autoencoders_averages_reconstructions(trained, tmp_path, capsys):
    run, _ = trained
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    assert main(["eval", str(run), str(twin), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "digits test, 360 images"
    assert lines[1].split() == ["run", "model", "mse", "psnr", "loss"]
    assert lines[2].split()[1:] == lines[3].split()[1:]            # the same weights
    assert lines[4].startswith("ensemble of 2") and "mean output" in lines[4]
    assert lines[4].split()[-3:] == lines[2].split()[-3:]          # the mean of two equals


def test_a_killed_autoencoder_run_resumes_to_the_bit(trained, tmp_path, digits, monkeypatch):
    reference, _ = trained
    real, steps = loop_mod.optim.set_lr, []

    def dies(optimizer, lr):
        steps.append(lr)
        if len(steps) == 8:                      # step 3 of epoch 2, after a checkpoint at 6
            raise Killed("killed in step 8")
        real(optimizer, lr)

    monkeypatch.setattr(loop_mod.optim, "set_lr", dies)
    cfg = config(tmp_path, denoise=0.2, checkpoint_every=2)
    with pytest.raises(Killed):
        train(cfg, progress=False, datasets=digits)
    monkeypatch.setattr(loop_mod.optim, "set_lr", real)
    assert checkpoint.describe(tmp_path / "run" / CHECKPOINT) == {
        "epoch": 2, "step": 1, "global_step": 6}
    torch.manual_seed(123)                       # the checkpoint decides, not the process
    train(cfg, progress=False, datasets=digits, resume=True)
    assert same_weights(reference, tmp_path / "run")
    assert metrics(tmp_path / "run") == metrics(reference)


def test_denoising_draws_its_noise_from_the_key_and_keeps_the_clean_target():
    x = torch.rand(4, 1, 8, 8)
    task = Reconstruction(denoise=0.3, seed=7)
    noisy, target = task.prepare(x, None, train=True, key=5)
    assert target is x                                        # the clean image is the target
    assert not torch.equal(noisy, x) and 0 <= noisy.min() and noisy.max() <= 1
    assert (noisy - x).std().item() == pytest.approx(0.3, rel=0.35)     # clipped at 0 and 1
    again, _ = Reconstruction(denoise=0.3, seed=7).prepare(x, None, train=True, key=5)
    assert torch.equal(again, noisy)                          # no hidden state: key and seed
    other, _ = task.prepare(x, None, train=True, key=6)
    test, _ = task.prepare(x, None, train=False, key=5)
    assert not torch.equal(other, noisy) and not torch.equal(test, noisy)
    clean, target = Reconstruction().prepare(x, None, train=True, key=5)
    assert clean is x and target is x


def test_the_three_losses():
    torch.manual_seed(0)
    out, target = torch.randn(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    assert Reconstruction("mse").loss(out, target).item() == pytest.approx(
        (out - target).square().mean().item())                               # Eq. 8.6 / pixels
    assert Reconstruction("l1").loss(out, target).item() == pytest.approx(
        (out - target).abs().mean().item())
    p = torch.sigmoid(out)                                   # bce: outputs are logits
    nll = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    bce = Reconstruction("bce")
    assert bce.loss(out, target).item() == pytest.approx(nll.item(), rel=1e-5)
    sums = bce.eval_sums(bce.predict(out), target)
    assert (sums["loss"] / 3).item() == pytest.approx(nll.item(), rel=1e-5)
    assert (sums["mse"] / 3).item() == pytest.approx((p - target).square().mean().item())


def test_bce_trains_and_reports_the_mse_of_its_sigmoid(tmp_path, digits):
    result = train(config(tmp_path, epochs=1, loss="bce"), progress=False,
                   datasets=(digits[0].subset(torch.arange(64)), digits[1]))
    last = result["history"][-1]
    assert last["train_mse"] < 0.25 and last["test_loss"] > last["test_mse"]


def test_bad_input_is_a_one_line_error(tmp_path, digits, trained):
    task = Reconstruction("bce")
    with pytest.raises(CnnlabError, match=r"targets are the images' pixels in \[0, 1\], got "
                                          r"values in \[-1, 2\]"):
        task.prepare(torch.tensor([[[[-1.0, 2.0]]]]), None, train=True, key=0)
    with pytest.raises(ConfigError, match="loss must be 'auto', 'mse', 'l1' or 'bce', got "
                                          "loss='ssim'"):
        config(tmp_path, loss="ssim")
    with pytest.raises(CnnlabError, match=r"loss='l1' is a setting of autoencoders, but "
                                          r"'lenet5_modern' is a classifier \(cross-entropy\); "
                                          r"drop --loss"):
        train(config(tmp_path, model="lenet5_modern", loss="l1"), progress=False)
    with pytest.raises(CnnlabError, match="drop --label-smoothing"):
        train(config(tmp_path, label_smoothing=0.1), progress=False, datasets=digits)
    run, _ = trained
    with pytest.raises(CnnlabError, match=r"average class probabilities, but .* is a "
                                          r"reconstruction run; drop --tta"):
        evaluate_ensemble([run], tta="flip")
    with pytest.raises(CnnlabError, match=r"is a reconstruction run \(cae\), but cnnlab "
                                          r"features needs a classification run"):
        check_task(run_info(run), "classification", "cnnlab features")
    other = retag(run, tmp_path / "other", task="classification")
    with pytest.raises(CnnlabError, match=r"is a classification run but .* a reconstruction "
                                          r"run; an ensemble averages one task's predictions"):
        evaluate_ensemble([run, other])


def test_init_from_an_autoencoder_run_pretrains_a_classifier_s_encoder(tmp_path):
    """8.5.2's pretraining: lenet5_modern's C1 and C3 start as cae_lenet5's encoder."""
    train_ds = load("digits", "train", size=32).subset(torch.arange(32))
    test_ds = load("digits", "test", size=32).subset(torch.arange(16))
    train(config(tmp_path, model="cae_lenet5", epochs=1), progress=False,
          datasets=(train_ds, test_ds))
    ae_weights = load_file(tmp_path / "run" / WEIGHTS)
    torch.manual_seed(0)
    fresh = models.create("lenet5_modern")
    torch.manual_seed(0)
    model = models.create("lenet5_modern")
    report = apply_transfer(model, str(tmp_path / "run"))
    assert report is not None and report.loaded is not None
    assert report.loaded.layers == ("c1", "c3")
    copied = {"features.c1.weight": "encoder.c1.weight", "features.c1.bias": "encoder.c1.bias",
              "features.c3.weight": "encoder.c3.weight", "features.c3.bias": "encoder.c3.bias"}
    assert report.loaded.loaded == tuple(copied)
    state, before = model.state_dict(), fresh.state_dict()
    for ours, theirs in copied.items():
        assert torch.equal(state[ours], ae_weights[theirs])
        assert not torch.equal(state[ours], before[ours])
    for k in state.keys() - copied.keys():                        # the rest as initialised
        assert torch.equal(state[k], before[k])
    assert report.summary().startswith(
        f"--init {tmp_path / 'run' / WEIGHTS}: the autoencoder's encoder layers c1, c3 "
        "(4 tensors) copied, the other 6 tensors keep their initial weights")
    # an encoder that matches nothing is refused, naming both sides' layers
    with pytest.raises(CnnlabError, match=r"no encoder layer of .* \(c1, c3\) has the name and "
                                          r"shapes of a layer of CifarResNet"):
        apply_transfer(models.create("resnet20", in_channels=1), str(tmp_path / "run"))


def test_the_docstring_examples_run():
    failures, tried = doctest.testmod(reconstruction)
    assert tried >= 1 and failures == 0


def test_an_autoencoder_trains_under_bf16_autocast_with_tensorboard(tmp_path, digits):
    """Mixed precision and TensorBoard come from the loop, for reconstruction as for any task."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(config(tmp_path, epochs=2, amp="bf16", tensorboard=True), progress=False,
                   datasets=digits)
    history = result["history"]
    assert all(math.isfinite(r["test_mse"]) for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("test_psnr")] == pytest.approx(
        [r["test_psnr"] for r in history], rel=1e-6)
