"""Detection (8.6.3): sliding windows through the converted net, region proposals, NMS, the
``cnnlab detect`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnnlab import models
from cnnlab.apps.boxes import Truth
from cnnlab.apps.detect import Detector, _place, detect, evaluate, read_image
from cnnlab.apps.localize import Localizer
from cnnlab.apps.proposals import BACKGROUND, region_crops
from cnnlab.cli import main
from cnnlab.data.boxes import BoxRecord, write_boxes
from cnnlab.errors import CnnlabError, DataError, ShapeError
from cnnlab.train import TrainConfig, train

pytest.importorskip("cv2")
pytest.importorskip("pycocotools")


def same(x: torch.Tensor) -> torch.Tensor:
    return x


def test_sliding_windows_are_the_localizer_on_each_crop() -> None:
    """Each position of each pyramid level: the converted net's class probabilities and the
    regression head's box on the pass's features equal the localiser on that window's crop
    (float64)."""
    torch.manual_seed(0)
    model = Localizer(models.create("lenet5_modern", num_classes=3)).double().eval()
    # windows 2/3 of 48 high are the 32-pixel input itself (no resizing), 0.6: the image
    # enlarged to 53; windows 3/4 as wide as high: the image stretched across
    detector = Detector(model, same, "sliding", scales=(2 / 3, 0.6), aspects=(1.0, 0.75))
    image = torch.rand(1, 48, 48, dtype=torch.float64)
    probs, boxes, windows = detector._windows(image)
    fcn = detector.fcn
    expected_p, expected_b, expected_w = [], [], []
    for h, w in ((48, 48), (48, 64), (53, 53), (53, 71)):
        pyramid = F.interpolate(image[None], size=(h, w), mode="bilinear",
                                align_corners=False)[0]
        win = fcn.boxes(h, w).double()
        crops = torch.stack([pyramid[:, int(y0):int(y1), int(x0):int(x1)]
                             for x0, y0, x1, y1 in win.tolist()])
        with torch.no_grad():
            scores, xywh = model(crops)
        expected_p.append(scores.softmax(1))
        back = win.new_tensor([48 / w, 48 / h, 48 / w, 48 / h])
        expected_b.append(_place(xywh, win) * back)
        expected_w.append(win * back)
    assert len(probs) == 5 * 5 + 5 * 9 + 6 * 6 + 6 * 10       # lenet5_modern strides by 4
    torch.testing.assert_close(probs, torch.cat(expected_p))
    torch.testing.assert_close(boxes, torch.cat(expected_b))
    torch.testing.assert_close(windows, torch.cat(expected_w).float())
    again = detector(image)
    first = detector(image)
    assert torch.equal(again.boxes, first.boxes) and torch.equal(again.labels, first.labels)


class Oracle(Localizer):
    """Scores known in advance: class 1 as strong as the crop is bright (pixels near 1),
    class 2 as it is grey (pixels near 0.5), background otherwise; the box: the whole crop."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bright = (x > 0.75).float().mean((1, 2, 3))
        grey = ((x > 0.25) & (x < 0.75)).float().mean((1, 2, 3))
        scores = torch.stack([torch.full_like(bright, 5.0), 20 * bright, 20 * grey], 1)
        return scores, x.new_tensor([[0.0, 0.0, 1.0, 1.0]]).expand(len(x), 4)


def oracle_scene() -> torch.Tensor:
    image = torch.zeros(1, 48, 48)
    image[:, 4:20, 6:22] = 1.0                      # class 1 (id 0 once background is dropped)
    image[:, 28:40, 30:42] = 0.5                    # class 2 (id 1)
    return image


def test_an_oracle_finds_each_object_and_nms_drops_the_overlaps() -> None:
    oracle = Oracle(models.create("lenet5_modern", num_classes=3)).eval()
    proposals = torch.tensor([[6., 4, 22, 20],      # the bright square exactly
                              [7, 5, 23, 21],       # shifted: IoU 0.78, less bright -> NMS
                              [30, 28, 42, 40],     # the grey square
                              [0, 40, 8, 48],       # background
                              [6, 4, 14, 20]])      # half the bright square: IoU 0.5, kept
    found = detect(oracle, oracle_scene(), same, proposals)
    assert found.boxes.tolist() == [[6, 4, 22, 20], [30, 28, 42, 40], [6, 4, 14, 20]]
    assert found.labels.tolist() == [0, 1, 0]
    assert found.scores[0] == pytest.approx(torch.tensor([5.0, 20, 0]).softmax(0)[1].item())
    # a looser NMS keeps the shifted box too (its score is the fourth); a threshold above
    # its probability (1 - 3.4e-6, the others' 1 - 3e-7) drops it again
    loose = detect(oracle, oracle_scene(), same, proposals, iou_threshold=0.9)
    assert len(loose.boxes) == 4 and loose.boxes[3].tolist() == [7, 5, 23, 21]
    strict = detect(oracle, oracle_scene(), same, proposals, iou_threshold=0.9,
                    score_threshold=0.999999)
    assert strict.boxes.tolist() == found.boxes.tolist()
    # nothing there: an empty result, not an error
    empty = detect(oracle, torch.zeros(1, 48, 48), same, proposals)
    assert empty.boxes.shape == (0, 4) and empty.scores.shape == (0,) and len(empty.labels) == 0
    with pytest.raises(DataError, match="proposal list is empty"):
        detect(oracle, oracle_scene(), same, torch.zeros(0, 4))


def test_selective_search_proposals_find_the_oracle_s_squares() -> None:
    oracle = Oracle(models.create("lenet5_modern", num_classes=3)).eval()
    found = detect(oracle, oracle_scene(), same, "selective", score_threshold=0.9)
    assert sorted(found.labels.tolist()) == [0, 1]
    truth = torch.tensor([[6., 4, 22, 20], [30, 28, 42, 40]])
    from cnnlab.apps.boxes import box_iou

    assert bool((box_iou(truth, found.boxes).max(1).values > 0.8).all())


def test_detector_refuses_bad_input() -> None:
    model = Localizer(models.create("lenet5_modern", num_classes=3)).eval()
    with pytest.raises(ShapeError, match=r"image \(1, H, W\)"):
        detect(model, torch.zeros(3, 48, 48), same)
    with pytest.raises(CnnlabError, match="proposals 'boxes'"):
        Detector(model, same, "boxes")
    with pytest.raises(CnnlabError, match="scales"):
        Detector(model, same, scales=(1.5,))
    with pytest.raises(CnnlabError, match="localiser"):
        Detector(models.create("lenet5_modern"), same)             # type: ignore[arg-type]


# -- a tiny trained detector and the command -----------------------------------------------

CLASSES = ("bright", "grey")


def scenes(folder: Path, split: str, n: int, seed: int) -> list[BoxRecord]:
    """Grey 48x48 scenes with one or two squares (bright: class 0, grey: class 1) as PNGs."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    records = []
    for i in range(n):
        image = torch.zeros(48, 48)
        boxes, labels = [], []
        for k in range(1 + i % 2):
            side = int(torch.randint(10, 17, (1,), generator=g))
            x = 2 + k * 24 + int(torch.randint(0, 22 - side, (1,), generator=g))
            y = int(torch.randint(0, 48 - side, (1,), generator=g))
            label = int(torch.randint(0, 2, (1,), generator=g))
            image[y:y + side, x:x + side] = 1.0 if label == 0 else 0.5
            boxes.append([x, y, x + side, y + side])
            labels.append(label)
        path = folder / "images" / f"{split}-{i}.png"
        Image.fromarray((image * 255).round().byte().numpy()).save(path)
        records.append(BoxRecord(path, 48, 48, torch.tensor(boxes, dtype=torch.float32),
                                 torch.tensor(labels)))
    write_boxes("voc", folder, split, records, CLASSES)
    return records


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A VOC folder of squares and a lenet5_modern localiser trained on its crops."""
    root = tmp_path_factory.mktemp("det")
    data = root / "scenes"
    train_records = scenes(data, "train", 24, 0)
    test_records = scenes(data, "test", 4, 1)
    datasets = (region_crops(train_records, CLASSES, 32, "sliding"),
                region_crops(test_records, CLASSES, 32, "sliding", split="test"))
    out = root / "run"
    with torch.random.fork_rng():
        train(TrainConfig("lenet5_modern", task="localize", epochs=4, lr=0.05, batch_size=32,
                          out=str(out), tensorboard=False, plots=False),
              datasets=datasets, progress=False)
    return data, out


def test_detect_writes_a_picture_per_image_and_the_json(trained: tuple[Path, Path],
                                                        tmp_path: Path, capsys) -> None:
    data, run = trained
    images = [str(data / "images" / "test-0.png"), str(data / "images" / "test-1.png")]
    out = tmp_path / "found"
    assert main(["detect", str(run), *images, "--out", str(out), "--threshold", "0.3"]) == 0
    assert "2 pictures and detections.json written" in capsys.readouterr().out
    for name in ("test-0.png", "test-1.png"):
        assert read_image(out / name, 3).shape[1] >= 192               # enlarged to be read
    report = json.loads((out / "detections.json").read_text())
    assert report["classes"] == list(CLASSES) and report["proposals"] == "sliding"
    assert [r["picture"] for r in report["images"]] == ["test-0.png", "test-1.png"]
    for r in report["images"]:
        for d in r["detections"]:
            assert d["class"] in CLASSES and 0.3 <= d["score"] <= 1.0
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
    # again into the same folder: refused, then allowed with --overwrite
    assert main(["detect", str(run), images[0], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds test-0.png" in err and len(err.strip().splitlines()) == 1
    # nothing reaches probability 1: no detections, an empty list, not an error
    assert main(["detect", str(run), images[0], "--out", str(out), "--overwrite",
                 "--threshold", "1.0", "--proposals", "selective", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"][0]["detections"] == [] and printed["proposals"] == "selective"


def test_detect_refuses_bad_images_with_one_line(trained: tuple[Path, Path], tmp_path: Path,
                                                 capsys) -> None:
    from PIL import Image

    data, run = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    colour = tmp_path / "colour.png"
    Image.new("RGB", (48, 48)).save(colour)
    good = str(data / "images" / "test-0.png")
    out = tmp_path / "found"
    for bad, words in ((broken, "cannot read image"), (colour, "is colour (3 channels)"),
                       (tmp_path / "missing.png", "does not exist")):
        assert main(["detect", str(run), good, str(bad), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and str(bad) in err and len(err.splitlines()) == 1
    assert not out.exists()                                           # nothing written
    assert main(["detect", str(run), good]) == 2
    assert "--out DIR is missing" in capsys.readouterr().err
    assert main(["detect", str(run), good, "--out", str(out), "--data", "voc"]) == 2
    assert "belong to --evaluate" in capsys.readouterr().err


def test_detect_evaluates_an_annotated_split(trained: tuple[Path, Path], capsys) -> None:
    data, run = trained
    assert main(["detect", str(run), "--evaluate", "--data", "voc", "--data-dir", str(data),
                 "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["images"] == 4 and figures["split"] == "test"
    for key in ("map50", "map", "map75", "proposal_recall50"):
        assert 0.0 <= figures[key] <= 1.0
    assert figures["map"] <= figures["map50"]
    assert figures["proposals_per_image"] > 100 and figures["images_per_second"] > 0
    assert figures["proposal_recall50"] == 1.0         # windows of 10-16 px cover every square
    assert main(["detect", str(run), "--evaluate", "--data", "voc", "--data-dir", str(data),
                 "--proposals", "selective"]) == 0
    assert "mAP@0.5" in capsys.readouterr().out


def test_evaluate_scores_an_oracle_perfectly() -> None:
    oracle = Oracle(models.create("lenet5_modern", num_classes=3)).eval()
    truth = Truth(torch.tensor([[6., 4, 22, 20], [30, 28, 42, 40]]), torch.tensor([0, 1]))
    detector = Detector(oracle, same, truth.boxes.clone())
    figures = evaluate(detector, [oracle_scene()], [truth], num_classes=2)
    assert figures["map50"] == pytest.approx(1.0) and figures["map"] == pytest.approx(1.0)
    assert figures["proposals_per_image"] == 2 and figures["proposal_recall50"] == 1.0


def test_the_run_knows_its_background(trained: tuple[Path, Path]) -> None:
    from cnnlab.train._runs import run_info

    assert run_info(trained[1]).classes == (BACKGROUND, *CLASSES)
