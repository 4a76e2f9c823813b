"""What a finished run folder holds besides the weights: the confusion matrix, TensorBoard
events, the PNG plots; `cnnlab plot`; models whose training output is a tuple."""

import json

import pytest
import torch
from PIL import Image

from cnnlab import models
from cnnlab.cli import main
from cnnlab.data import ImageDataset, load
from cnnlab.train import TrainConfig, evaluate, load_run, train
from cnnlab.train.metrics import read_confusion


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    train_ds, test_ds = load("digits", "train", size=32), load("digits", "test", size=32)
    data = train_ds.subset(torch.arange(320)), test_ds.subset(torch.arange(100))
    out = tmp_path_factory.mktemp("runs") / "lenet"
    cfg = TrainConfig("lenet5_modern", epochs=2, lr=0.05, batch_size=32, out=str(out),
                      device="cpu")
    result = train(cfg, progress=False, datasets=data)
    return out, result, data


def test_the_confusion_matrix_is_the_last_evaluation(finished):
    out, result, (_, test_ds) = finished
    matrix, classes = read_confusion(out)
    assert matrix.shape == (10, 10) and classes == list(test_ds.classes)
    assert int(matrix.sum()) == len(test_ds)
    assert torch.equal(matrix.sum(dim=1), torch.bincount(test_ds.labels, minlength=10))
    assert int(matrix.trace()) / len(test_ds) == pytest.approx(result["test_top1"])
    per_class = result["history"][-1]["test_per_class_top1"]     # in metrics.jsonl too
    assert per_class == pytest.approx((matrix.diagonal() / matrix.sum(dim=1)).tolist())
    model, _ = load_run(out)
    again = evaluate(model, test_ds, mean=test_ds.mean, std=test_ds.std)
    assert again["top1"] == pytest.approx(result["test_top1"])


def test_tensorboard_events_hold_each_epoch(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, result, _ = finished
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    top1 = events.Scalars("test_top1")
    assert [e.step for e in top1] == [1, 2]
    assert [e.value for e in top1] == pytest.approx([r["test_top1"] for r in result["history"]])


def test_plots_are_drawn_and_redrawn_by_the_command(finished, capsys):
    out, _, _ = finished
    for name in ("curves.png", "confusion.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) > 200
    (out / "curves.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "curves.png").is_file()
    assert "curves.png" in capsys.readouterr().out


def test_plot_of_a_folder_without_metrics_is_a_one_line_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "metrics.jsonl" in err and len(err.splitlines()) == 1


def test_switches_leave_the_plots_and_events_out(tmp_path):
    train_ds, test_ds = load("digits", "train", size=32), load("digits", "test", size=32)
    cfg = TrainConfig("lenet5_modern", epochs=1, out=str(tmp_path / "run"), device="cpu",
                      plots=False, tensorboard=False)
    train(cfg, progress=False, datasets=(train_ds.subset(torch.arange(64)),
                                         test_ds.subset(torch.arange(20))))
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["config.json", "confusion.json", "metrics.jsonl", "model.safetensors"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["plots"] is False


def test_googlenet_auxiliary_heads_train_through_the_trainer(tmp_path):
    """In training, inception_v1 with aux_logits returns (logits, aux2, aux1) and its own loss
    adds 0.3 x each auxiliary cross-entropy; the trainer takes the main scores for accuracy."""
    torch.manual_seed(0)
    model = models.create("inception_v1_cifar", num_classes=4, aux_logits=True)
    g = torch.Generator().manual_seed(0)
    data = [ImageDataset(torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 4,
                         name="synthetic", split=split, classes=list("abcd"),
                         mean=(0.5,) * 3, std=(0.3,) * 3) for n, split in ((8, "train"),
                                                                          (4, "test"))]
    cfg = TrainConfig("inception_v1_cifar", epochs=1, batch_size=4, lr=0.01,
                      out=str(tmp_path / "run"), device="cpu", plots=False, tensorboard=False)
    result = train(cfg, model, progress=False, datasets=(data[0], data[1]))
    record = result["history"][0]
    assert record["train_images"] == 8 and 0 <= record["train_top1"] <= 1
    assert record["train_loss"] > record["test_loss"] * 1.1     # the auxiliary terms count
