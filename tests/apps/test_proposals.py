"""Region proposals (8.6.3): selective search, sliding windows, recall, R-CNN's crops."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnnlab.apps.boxes import box_iou
from cnnlab.apps.proposals import (
    BACKGROUND,
    crop_extent,
    load_crops,
    proposal_recall,
    region_crops,
    relative_boxes,
    selective_search,
    sliding_windows,
    warp,
)
from cnnlab.data.boxes import BoxRecord, write_boxes
from cnnlab.errors import CnnlabError, DataError, ShapeError

pytest.importorskip("cv2")

SQUARES = torch.tensor([[6., 8, 20, 22], [28, 26, 44, 42]])      # two bright squares, 48x48


def scene(channels: int = 1) -> torch.Tensor:
    img = torch.zeros(channels, 48, 48)
    for x0, y0, x1, y1 in SQUARES.long().tolist():
        img[:, y0:y1, x0:x1] = 0.9
    return img


def test_selective_search_boxes_lie_in_the_image_and_find_the_squares() -> None:
    boxes = selective_search(scene())
    assert boxes.dtype == torch.float32 and boxes.dim() == 2 and boxes.shape[1] == 4
    assert len(boxes) >= 2
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 48).all()
                and (boxes[:, 3] <= 48).all())
    assert bool(((boxes[:, 2:] - boxes[:, :2]) > 0).all())
    assert len(torch.unique(boxes, dim=0)) == len(boxes)
    # the squares stand out on black: each is a proposal, nearly exactly
    assert bool((box_iou(SQUARES, boxes).max(1).values > 0.9).all())


def test_selective_search_is_deterministic_and_takes_grey_or_colour() -> None:
    grey, colour = scene(1), scene(3)
    first = selective_search(grey)
    assert torch.equal(first, selective_search(grey))
    assert torch.equal(first, selective_search(colour))            # grey = three equal channels
    quality = selective_search(grey, mode="quality")
    assert torch.equal(quality, selective_search(grey, mode="quality"))
    assert len(selective_search(grey, max_proposals=1)) == 1


def test_selective_search_refuses_bad_input() -> None:
    with pytest.raises(ShapeError, match=r"\(C, H, W\)"):
        selective_search(torch.zeros(48, 48))
    with pytest.raises(ShapeError, match="float pixels"):
        selective_search(torch.zeros(1, 8, 8, dtype=torch.uint8))
    with pytest.raises(CnnlabError, match="mode 'best'"):
        selective_search(scene(), mode="best")
    with pytest.raises(CnnlabError, match="max_proposals"):
        selective_search(scene(), max_proposals=0)


def test_sliding_windows_by_hand() -> None:
    # side 4 on a 6-wide, 4-high image, stride 2: x = 0, 2; side 3, stride 2 (1.5 rounded):
    # x = 0, 2 and flush 3; y = 0 and flush 1; side 5 does not fit and is skipped
    w = sliding_windows(4, 6, [4, 3, 5], 0.5)
    assert w.tolist() == [[0, 0, 4, 4], [2, 0, 6, 4],
                          [0, 0, 3, 3], [2, 0, 5, 3], [3, 0, 6, 3],
                          [0, 1, 3, 4], [2, 1, 5, 4], [3, 1, 6, 4]]
    with pytest.raises(CnnlabError, match="no window"):
        sliding_windows(4, 6, [5])
    with pytest.raises(CnnlabError, match="stride_fraction"):
        sliding_windows(4, 6, [2], 0.0)


def test_proposal_recall_by_hand() -> None:
    truth = torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30], [0, 20, 4, 24]])
    props = torch.tensor([[0., 0, 10, 12],          # IoU 100/120 with the first
                          [20, 20, 30, 40]])        # IoU 0.5 exactly with the second
    assert proposal_recall(props, truth) == pytest.approx(2 / 3)
    assert proposal_recall(props, truth, iou=0.6) == pytest.approx(1 / 3)
    # over images: 2 of 3 found in the first, 0 of 1 in the second (no proposals)
    assert proposal_recall([props, torch.zeros(0, 4)],
                           [truth, torch.tensor([[1., 1, 2, 2]])]) == pytest.approx(2 / 4)
    with pytest.raises(CnnlabError, match="no true boxes"):
        proposal_recall(props, torch.zeros(0, 4))
    with pytest.raises(CnnlabError, match="one of each per image"):
        proposal_recall([props], [truth, truth])


def test_crop_extent_warp_and_relative_boxes() -> None:
    boxes = torch.tensor([[1.5, 2.2, 3.1, 4.0], [-3.0, 0.0, 70.0, 0.2]])
    assert crop_extent(boxes, 48, 64).tolist() == [[1, 2, 4, 4], [0, 0, 64, 1]]
    img = torch.rand(1, 48, 64)
    crops = warp(img, torch.tensor([[0., 0, 64, 48], [8, 8, 16, 24]]), (32, 32))
    assert crops.shape == (2, 1, 32, 32)
    whole = F.interpolate(img[None], size=(32, 32), mode="bilinear", align_corners=False,
                          antialias=True)[0]
    assert torch.allclose(crops[0], whole)
    part = F.interpolate(img[None, :, 8:24, 8:16], size=(32, 32), mode="bilinear",
                         align_corners=False)[0]
    assert torch.allclose(crops[1], part)
    rel = relative_boxes(torch.tensor([[10., 10, 20, 30]]), torch.tensor([[10., 0, 30, 20]]))
    assert rel.tolist() == [[0.0, 0.5, 0.5, 1.5]]                  # reaches below its crop


def _records(tmp_path: Path) -> tuple[list[BoxRecord], tuple[str, ...]]:
    from PIL import Image

    (tmp_path / "images").mkdir()
    path = tmp_path / "images" / "train-0.png"
    faint = torch.arange(48.0).div(240).expand(48, 48)   # background that differs by place
    Image.fromarray((scene()[0].maximum(faint) * 255).byte().numpy()).save(path)
    return [BoxRecord(path, 48, 48, SQUARES.clone(), torch.tensor([1, 0]))], ("a", "b")


def _proposals(image: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[6., 8, 20, 23],        # IoU 14*14/(14*15) with square 0: class b
                         [29, 26, 44, 42],       # IoU 15/16 with square 1: class a
                         [6, 8, 13, 22],         # IoU 0.5: positive of square 0
                         [6, 8, 12, 22],         # IoU 6/14, between: left out
                         [0, 40, 8, 48], [40, 0, 48, 8], [0, 0, 4, 4], [44, 44, 48, 48],
                         [22, 0, 30, 6], [0, 24, 5, 30], [30, 0, 40, 10]])   # 7 background


def test_region_crops_labels_boxes_and_background(tmp_path: Path) -> None:
    records, classes = _records(tmp_path)
    ds = region_crops(records, classes, 16, _proposals, seed=0, background_ratio=2)
    assert ds.classes == (BACKGROUND, "a", "b")
    assert ds.images.shape == (2 + 3 + 4, 1, 16, 16)             # objects, positives, 2 x 2
    y = ds.labels
    assert y.shape == (9, 5) and y.dtype == torch.float32
    # the objects themselves first, classes shifted by one, boxes filling their crop
    assert y[:2].tolist() == [[2, 0, 0, 1, 1], [1, 0, 0, 1, 1]]
    positives = y[2:5]
    assert sorted(positives[:, 0].tolist()) == [1, 2, 2]
    row = positives[(positives[:, 0] == 2) & (positives[:, 3] > 1.5)]
    assert row.tolist() == [[2, 0, 0, 2, 1]]                    # square 0 in the half crop
    background = y[5:]
    assert background[:, 0].tolist() == [0] * 4 and bool(background[:, 1:].isnan().all())
    # the crops are the regions: the first is square 0, bright all over
    assert ds.images[0].min() > 0.8
    assert ds.mean[0] == pytest.approx(float(ds.images.mean()), abs=1e-6)
    # the same seed, the same crops; another draws other background
    again = region_crops(records, classes, 16, _proposals, seed=0, background_ratio=2)
    assert torch.equal(again.images, ds.images)
    other = [region_crops(records, classes, 16, _proposals, seed=s, background_ratio=2).images
             for s in range(1, 6)]
    assert any(not torch.equal(o, ds.images) for o in other)


def test_region_crops_refuses_no_proposals_and_bad_thresholds(tmp_path: Path) -> None:
    records, classes = _records(tmp_path)
    with pytest.raises(DataError, match="train-0.png: the proposal list is empty"):
        region_crops(records, classes, 16, lambda image: torch.zeros(0, 4))
    with pytest.raises(CnnlabError, match="background_iou <= positive_iou"):
        region_crops(records, classes, 16, _proposals, background_iou=0.6)
    with pytest.raises(CnnlabError, match="proposals 'all'"):
        region_crops(records, classes, 16, "all")


def test_load_crops_reads_a_voc_folder(tmp_path: Path) -> None:
    records, classes = _records(tmp_path)
    write_boxes("voc", tmp_path, "train", records, classes)
    test = BoxRecord(records[0].path.with_name("test-0.png"), 48, 48, SQUARES[:1].clone(),
                     torch.tensor([0]))
    records[0].path.with_name("test-0.png").write_bytes(records[0].path.read_bytes())
    write_boxes("voc", tmp_path, "test", [test], classes)
    ds = load_crops(tmp_path, "train", size=(16, 12), proposals="sliding")
    assert ds.image_shape == (1, 16, 12) and ds.classes == (BACKGROUND, *classes)
    labels = ds.labels
    assert set(labels[:, 0].long().tolist()) <= {0, 1, 2} and bool((labels[:, 0] == 0).any())
    assert all(math.isnan(v) for v in labels[labels[:, 0] == 0, 1].tolist())
    assert len(load_crops(tmp_path, "test", size=16, proposals="sliding")) >= 1
    with pytest.raises(DataError, match="give size="):
        load_crops(tmp_path, "train")
    # the data name the trainer loads: the same crops (selective search's)
    from cnnlab import data
    from cnnlab.train.config import DATA

    assert "crops" in DATA
    named = data.load("crops", "train", data_dir=tmp_path, size=16)
    direct = load_crops(tmp_path, "train", size=16)
    assert torch.equal(named.images, direct.images) and named.classes == direct.classes
