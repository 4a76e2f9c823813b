"""Localisation (8.6.2): the two-headed network, its task on the trainer, the chapter's steps
(a classifier's weights, then the box head with frozen convolutions, then fine-tuning), and
the sliding-window merge."""

import json
import math

import pytest
import torch

from cnnlab import models
from cnnlab.apps.localize import (
    Localization,
    Localizer,
    as_targets,
    localize_windows,
    merge_windows,
    windows,
)
from cnnlab.data import ImageDataset
from cnnlab.errors import CnnlabError, ModelError, ShapeError
from cnnlab.train import TrainConfig, load_run, train
from cnnlab.train.tasks import adapt, task_for
from cnnlab.train.transfer import load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def squares(n, seed, side=32):
    """Images with one bright square each (class 0) or a hollow one (class 1), of random size
    and place; labels as data with boxes give them: a (1, 5) row per image, box normalised."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, side, side)
    labels = []
    for i in range(n):
        s = int(torch.randint(8, 20, (1,), generator=g))
        x, y = (int(v) for v in torch.randint(0, side - s + 1, (2,), generator=g))
        c = int(torch.randint(0, 2, (1,), generator=g))
        images[i, 0, y:y + s, x:x + s] = 1.0
        if c:
            images[i, 0, y + 2:y + s - 2, x + 2:x + s - 2] = 0.0
        labels.append(torch.tensor([[c, x / side, y / side, (x + s) / side, (y + s) / side]]))
    return ImageDataset(images, labels, name="squares", split="train", classes=("full", "hollow"),
                        mean=(0.2,), std=(0.4,))


def test_the_localiser_is_the_classifier_plus_a_box_head():
    torch.manual_seed(0)
    net = models.create("lenet5_modern", num_classes=3)
    loc = Localizer(net)
    own = set(net.state_dict())
    assert set(loc.state_dict()) - own == {f"box_head.{k}" for k in
                                           loc.box_head.state_dict()}
    assert own <= set(loc.state_dict())
    scores, boxes = loc(torch.rand(4, 1, 32, 32))
    assert scores.shape == (4, 3) and boxes.shape == (4, 4)
    # one set of modules: the classifier inside is the one given, and its output is ours
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(loc(x)[0], net(x))
    # the first box layer reads the last convolutional volume: 16 x 5 x 5 for LeNet-5
    assert loc.box_head.fc1.in_features == 400
    assert loc.layer("box1") is loc.box_head.fc1 and loc.layer("c1") is net.layer("c1")


def test_a_classifier_s_weights_load_into_the_localiser_with_a_fresh_box_head(tmp_path):
    from cnnlab.train.run import write_safetensors

    torch.manual_seed(1)
    trained = models.create("lenet5_modern", num_classes=2)
    write_safetensors(tmp_path / "w.safetensors", trained.state_dict())
    torch.manual_seed(2)
    loc = Localizer(models.create("lenet5_modern", num_classes=2))
    head = {k: v.clone() for k, v in loc.box_head.state_dict().items()}
    report = load_pretrained(loc, tmp_path / "w.safetensors")
    for k, v in trained.state_dict().items():
        assert torch.equal(loc.state_dict()[k], v), k
    assert all(torch.equal(loc.box_head.state_dict()[k], v) for k, v in head.items())
    assert set(report.fresh) == {f"box_head.{k}" for k in head}
    # another class count: the output layer is replaced, in the localiser too
    loc3 = Localizer(models.create("lenet5_modern", num_classes=3))
    load_pretrained(loc3, tmp_path / "w.safetensors", num_classes=5)
    assert loc3(torch.rand(1, 1, 32, 32))[0].shape == (1, 5)
    assert loc3.classifier.num_classes == 5


def test_task_localize_adapts_classifiers_and_refuses_other_models():
    config = TrainConfig("lenet5_modern", task="localize")
    loc = adapt(models.create("lenet5_modern"), config)
    assert isinstance(loc, Localizer) and adapt(loc, config) is loc
    assert isinstance(task_for(loc, config), Localization)
    with pytest.raises(CnnlabError, match="reconstruction model.*classifier"):
        adapt(models.create("cae"), TrainConfig("cae", task="localize"))
    with pytest.raises(ModelError, match="own criterion"):
        adapt(models.create("lenet5"), TrainConfig("lenet5", task="localize"))
    with pytest.raises(CnnlabError, match="classification model, so it cannot learn "
                       "reconstruction"):
        adapt(models.create("lenet5_modern"), TrainConfig("lenet5_modern", task="reconstruct"))
    with pytest.raises(CnnlabError, match="moves the pixels but not the boxes"):
        Localization.from_config(TrainConfig("lenet5_modern", task="localize",
                                             augment="flip,jitter"))
    with pytest.raises(CnnlabError, match="not a box loss"):
        Localization.from_config(TrainConfig("lenet5_modern", task="localize", loss="bce"))
    assert Localization.from_config(TrainConfig("lenet5_modern", task="localize",
                                                loss="mse")).box_loss == "mse"


def test_targets_need_one_object_per_image():
    one = [torch.tensor([[1.0, 0.1, 0.2, 0.5, 0.6]]), torch.tensor([[0.0, 0, 0, 1, 1]])]
    assert as_targets(one).shape == (2, 5)
    with pytest.raises(CnnlabError, match=r"exactly one object per image.*\[1, 2\]"):
        as_targets([one[0], torch.cat(one)])
    with pytest.raises(ShapeError, match=r"\(B, 5\)"):
        as_targets(torch.zeros(3))


def test_figures_by_hand():
    task = Localization()
    # two classes; three images: right class and box (IoU 1), right class and a box of IoU
    # 1/4 (a quarter of the true one), wrong class and a perfect box; then a background crop
    # (NaN box) whose class is right
    log_p = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]]))
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.75, 0.75], [0.2, 0.2, 0.4, 0.4],
                          [0.1, 0.1, 0.2, 0.2]])
    target = torch.tensor([[0, 0.0, 0.0, 0.5, 0.5], [1, 0.5, 0.5, 1.0, 1.0],
                           [1, 0.2, 0.2, 0.4, 0.4], [0, math.nan, math.nan, math.nan, math.nan]])
    sums = task.eval_sums(torch.cat([log_p, boxes], 1), target)
    f = task.figures(sums, 4)
    assert f["top1"] == pytest.approx(3 / 4)
    assert f["iou"] == pytest.approx((1 + 0.25 + 1) / 3)      # over the three with a box
    assert f["loc_accuracy"] == pytest.approx(2 / 4)          # image 1 and the background
    assert f["loc_error"] == pytest.approx(0.5)
    # the loss: -log p(class) plus smooth L1 of (x, y, w, h); only image 2's box is off:
    # (0.5, 0.5, 0.25, 0.25) for (0.5, 0.5, 0.5, 0.5): |d| = 0.25 twice, beyond beta = 0.05
    box = 2 * (0.25 - 0.05 / 2)
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.3) + math.log(0.6)) + box
    assert f["loss"] == pytest.approx(expected / 4, rel=1e-6)
    # the training loss agrees with evaluation's on the same outputs
    scores, xywh = log_p, torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    assert float(task.loss((scores, xywh), target)) == pytest.approx(expected / 4, rel=1e-5)


def test_views_and_members_average_probabilities_and_boxes():
    task = Localization()
    a = torch.cat([torch.log(torch.tensor([[0.8, 0.2]])), torch.tensor([[0.0, 0, 0.4, 0.4]])], 1)
    b = torch.cat([torch.log(torch.tensor([[0.4, 0.6]])), torch.tensor([[0.2, 0, 0.6, 0.4]])], 1)
    both = task.combine([a, b])
    torch.testing.assert_close(both[0, :2].exp(), torch.tensor([0.6, 0.4]))
    torch.testing.assert_close(both[0, 2:], torch.tensor([0.1, 0.0, 0.5, 0.4]))


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """Step 1: a classifier trained on the squares' classes (their boxes ignored)."""
    out = tmp_path_factory.mktemp("loc") / "cls"
    with torch.random.fork_rng():
        result = train(TrainConfig("lenet5_modern", epochs=2, lr=0.05, batch_size=32,
                                   out=str(out), tensorboard=False, plots=False),
                       datasets=(squares(256, 0), squares(64, 1)), progress=False)
    assert result["test_top1"] > 0.5
    return out


def test_the_chapter_s_steps_on_the_trainer(classifier_run, tmp_path):
    """Steps 2-4: the box head trained on frozen convolutions from the classifier's weights,
    then everything fine-tuned; the run folder rebuilds the localiser."""
    data = (squares(256, 0), squares(64, 1))
    frozen = TrainConfig("lenet5_modern", task="localize", epochs=3, lr=0.05, batch_size=32,
                         init=str(classifier_run), freeze_until="features",
                         out=str(tmp_path / "loc"), tensorboard=False)
    first = train(frozen, datasets=data, progress=False)
    model, config = load_run(tmp_path / "loc")
    assert isinstance(model, Localizer) and config.task == "localize"
    # the convolutions are the classifier's, unchanged by the box head's training
    cls, _ = load_run(classifier_run)
    for k, v in cls.features.state_dict().items():
        assert torch.equal(model.features.state_dict()[k], v), k
    assert 0.0 <= first["test_iou"] <= 1.0 and 0.0 <= first["test_loc_accuracy"] <= 1.0
    assert first["test_iou"] > 0.3        # a centred half-size box starts near 0.15
    assert "localisation accuracy" in first["summary"]
    assert (tmp_path / "loc" / "localizations.png").stat().st_size > 0
    assert (tmp_path / "loc" / "curves.png").is_file()
    meta = json.loads((tmp_path / "loc" / "metrics.jsonl").read_text().splitlines()[-1])
    assert meta["test_iou"] == pytest.approx(first["test_iou"])
    # the one evaluator gives the run's figures again from its folder
    from cnnlab.train.evaluation import evaluate

    again = evaluate(model, data[1])
    assert again["iou"] == pytest.approx(first["test_iou"], abs=1e-5)
    # step 4: fine-tune every layer with both heads, from the localiser's own weights
    tuned = train(TrainConfig("lenet5_modern", task="localize", epochs=1, lr=0.01,
                              batch_size=32, init=str(tmp_path / "loc"),
                              out=str(tmp_path / "tuned"), tensorboard=False, plots=False),
                  datasets=data, progress=False)
    assert math.isfinite(tuned["test_loss"])


def test_windows_cover_the_image_at_each_scale():
    w = windows(64, 64, scales=(1.0, 0.5), step=0.5)
    assert w[0].tolist() == [0, 0, 64, 64]
    # 32-pixel windows every 16 pixels: positions 0, 16, 32 on each axis
    assert len(w) == 1 + 9
    assert {tuple(b) for b in w[1:].int().tolist()} == {
        (x, y, x + 32, y + 32) for x in (0, 16, 32) for y in (0, 16, 32)}
    odd = windows(50, 70, scales=(0.5,), step=0.25)
    assert odd[:, 2].max() == 70 and odd[:, 3].max() == 50     # the last flush with the edge


def test_merging_weighs_the_boxes_near_the_most_confident_one():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.6, 0.6], [0.1, 0.1, 0.5, 0.5],
                          [0.7, 0.7, 0.9, 0.9]])
    out = merge_windows(probs, boxes)
    assert out.label == 0                              # 2.4 against 1.6
    # windows 0, 1, 2 overlap window 0 (IoU 0.64, 1); window 3 is far: left out
    w = torch.tensor([0.9, 0.6, 0.2])
    expected = (boxes[:3] * w[:, None]).sum(0) / w.sum()
    assert out.box == pytest.approx(tuple(expected.tolist()))
    assert out.score == pytest.approx(0.6)


def test_sliding_windows_run_the_localiser_at_every_window():
    torch.manual_seed(0)
    loc = Localizer(models.create("lenet5_modern", num_classes=2)).eval()
    images = torch.rand(2, 1, 48, 48)
    found = localize_windows(loc, images, lambda x: x, scales=(1.0, 0.75), step=0.5)
    assert len(found) == 2 and all(0 <= f.label < 2 and 0 <= f.score <= 1 for f in found)
    assert all(0 <= v <= 1 for f in found for v in f.box)
    # one window (the whole image): the localiser's own answer on the resized image
    single = localize_windows(loc, images, lambda x: x, scales=(1.0,))
    resized = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear",
                                              align_corners=False, antialias=True)
    scores, xywh = loc(resized)
    for f, s, b in zip(single, scores, xywh, strict=True):
        assert f.label == int(s.argmax())
        x, y, w, h = b.tolist()
        expected = [min(max(v, 0.0), 1.0) for v in (x, y, x + w, y + h)]
        assert f.box == pytest.approx(tuple(expected), abs=1e-6)


@pytest.mark.slow
def test_the_command_line_path_on_generated_canvases(tmp_path, capsys):
    """make-data, then the classifier and the localiser through `cnnlab train`, then
    `cnnlab eval`: the path a user takes."""
    from cnnlab.cli import main

    canvases = tmp_path / "canvases"
    assert main(["make-data", "digits-single", "--out", str(canvases), "--seed", "0",
                 "--train", "120", "--test", "40"]) == 0
    common = ["--data", "voc", "--data-dir", str(canvases), "--no-tensorboard", "--no-plots",
              "--quiet", "--batch-size", "40"]
    assert main(["train", "lenet5_modern", *common, "--epochs", "1",
                 "--out", str(tmp_path / "cls")]) == 0
    assert main(["train", "lenet5_modern", *common, "--epochs", "1", "--task", "localize",
                 "--init", str(tmp_path / "cls"), "--freeze-until", "features",
                 "--out", str(tmp_path / "loc")]) == 0
    assert "test localisation accuracy" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "loc")]) == 0
    out = capsys.readouterr().out
    assert "localisation accuracy" in out and "mean IoU" in out
    # a multi-object set is refused for localisation with the fix named
    scenes = tmp_path / "scenes"
    assert main(["make-data", "digits-multi", "--out", str(scenes), "--seed", "0",
                 "--train", "20", "--test", "10"]) == 0
    assert main(["train", "lenet5_modern", "--data", "voc", "--data-dir", str(scenes),
                 "--task", "localize", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "exactly one object per image" in capsys.readouterr().err
