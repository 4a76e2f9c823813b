"""cnnlab.apps.boxes: IoU and non-maximum suppression against brute-force loops, and mAP through
pycocotools against a hand-computed example (8.6.3)."""

import doctest

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.apps import boxes as boxes_module
from cnnlab.apps.boxes import (
    Detection,
    Truth,
    batched_nms,
    box_area,
    box_iou,
    mean_average_precision,
    nms,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from cnnlab.errors import CnnlabError, ShapeError

pytest.importorskip("pycocotools")


# -- brute force ---------------------------------------------------------------------------------

def iou_loop(a, b):
    """IoU of two (x0, y0, x1, y1) lists, computed the way the chapter states it."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms_loop(boxes, scores, threshold, labels=None):
    """Greedy suppression, one box at a time: best score first, ties by index."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(iou_loop(boxes[i], boxes[j]) <= threshold for j in keep
               if labels is None or labels[i] == labels[j]):
            keep.append(i)
    return keep


# integer corners make every IoU exact in float64, in the loop and in torch alike
_box = st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 8),
                 st.integers(0, 8)).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])
_boxes = st.lists(_box, min_size=0, max_size=12)


def _tensor(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype).reshape(-1, 4)


# -- IoU, areas, the two forms --------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(_boxes, _boxes)
def test_iou_equals_the_loop(a, b):
    got = box_iou(_tensor(a), _tensor(b))
    assert got.shape == (len(a), len(b))
    assert got.tolist() == [[iou_loop(x, y) for y in b] for x in a]


def test_iou_of_random_real_boxes_equals_the_loop():
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(30, 2, generator=g, dtype=torch.float64) * 50
    b = torch.cat([corner, corner + torch.rand(30, 2, generator=g, dtype=torch.float64) * 30], 1)
    rows = b.tolist()
    expected = torch.tensor([[iou_loop(x, y) for y in rows[10:]] for x in rows[:20]],
                            dtype=torch.float64)
    torch.testing.assert_close(box_iou(b[:20], b[10:]), expected, rtol=1e-15, atol=0)
    assert 0 < int((box_iou(b, b) > 0).sum()) < 900           # overlaps and misses both occur


def test_zero_area_boxes_have_iou_zero_not_nan():
    b = torch.tensor([[2., 2, 2, 2], [0, 0, 4, 4], [1, 1, 1, 3]])      # a point, a box, a line
    iou = box_iou(b, b)
    assert not torch.isnan(iou).any()
    assert iou.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert box_area(b).tolist() == [0, 16, 0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_any_float_dtype(dtype):
    b = torch.tensor([[0., 0, 10, 10], [5, 0, 15, 10], [0, 0, 0, 5]])
    iou = box_iou(b.to(dtype), b.to(dtype))
    assert iou.dtype == dtype
    torch.testing.assert_close(iou.double(), box_iou(b.double(), b.double()), rtol=1e-2,
                               atol=1e-2)
    assert nms(b.to(dtype), torch.tensor([0.9, 0.8, 0.7], dtype=dtype), 0.3).tolist() == [0, 2]


def test_empty_sets():
    none = torch.zeros(0, 4)
    assert box_iou(none, torch.ones(3, 4)).shape == (0, 3)
    assert box_area(none).shape == (0,)
    for kept in (nms(none, torch.zeros(0)),
                 batched_nms(none, torch.zeros(0), torch.zeros(0, dtype=torch.long))):
        assert kept.shape == (0,) and kept.dtype == torch.long


def test_the_chapters_four_numbers_round_trip():
    xyxy = torch.tensor([[1., 2, 4, 8], [0, 0, 0, 0]])
    xywh = xyxy_to_xywh(xyxy)
    assert xywh.tolist() == [[1, 2, 3, 6], [0, 0, 0, 0]]               # corner, width, height
    assert torch.equal(xywh_to_xyxy(xywh), xyxy)


# -- non-maximum suppression ----------------------------------------------------------------------

_scores = st.integers(0, 3)          # few values: many ties


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_box, _scores), max_size=14), st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_nms_equals_the_loop(rows, threshold):
    b, s = [r[0] for r in rows], [float(r[1]) for r in rows]
    kept = nms(_tensor(b), torch.tensor(s, dtype=torch.float64), threshold)
    assert kept.dtype == torch.long
    assert kept.tolist() == nms_loop(b, s, threshold)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_box, _scores, st.integers(0, 2)), max_size=14),
       st.sampled_from([0.0, 0.5]))
def test_batched_nms_equals_the_loop_per_class(rows, threshold):
    b, s, lab = [r[0] for r in rows], [float(r[1]) for r in rows], [r[2] for r in rows]
    kept = batched_nms(_tensor(b), torch.tensor(s, dtype=torch.float64), torch.tensor(lab,
                       dtype=torch.long), threshold)
    assert kept.tolist() == nms_loop(b, s, threshold, lab)


@pytest.mark.parametrize("block", [1, 7, 64, 2**20])
def test_nms_over_many_blocks_equals_the_loop(monkeypatch, block):
    """Several rows of IoUs at a time (down to one): the kept set does not depend on it."""
    monkeypatch.setattr(boxes_module, "_NMS_BLOCK", block)
    g = torch.Generator().manual_seed(1)
    corner = torch.randint(0, 40, (60, 2), generator=g).double()
    b = torch.cat([corner, corner + torch.randint(1, 15, (60, 2), generator=g)], 1)
    s = torch.randint(0, 5, (60,), generator=g).double()
    labels = torch.randint(0, 2, (60,), generator=g)
    assert nms(b, s, 0.3).tolist() == nms_loop(b.tolist(), s.tolist(), 0.3)
    assert batched_nms(b, s, labels, 0.3).tolist() == nms_loop(b.tolist(), s.tolist(), 0.3,
                                                               labels.tolist())


def test_ties_go_to_the_lower_index():
    same = torch.tensor([[0., 0, 10, 10]] * 3)
    assert nms(same, torch.ones(3)).tolist() == [0]
    apart = torch.tensor([[0., 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]])
    assert nms(apart, torch.tensor([0.5, 0.9, 0.5])).tolist() == [1, 0, 2]


def test_suppression_needs_more_than_the_threshold():
    b = torch.tensor([[0., 0, 2, 1], [0, 0, 1, 1]])                   # IoU exactly 1/2
    s = torch.tensor([0.9, 0.8])
    assert nms(b, s, 0.5).tolist() == [0, 1]
    assert nms(b, s, 0.49).tolist() == [0]


def test_batched_nms_never_suppresses_across_classes():
    same = torch.tensor([[0., 0, 10, 10]] * 4)
    s = torch.tensor([0.1, 0.9, 0.5, 0.7])
    assert batched_nms(same, s, torch.tensor([0, 1, 2, 1]), 0.0).tolist() == [1, 2, 0]
    assert nms(same, s, 0.0).tolist() == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_the_gpu():
    g = torch.Generator().manual_seed(2)
    corner = torch.rand(500, 2, generator=g) * 100
    b = torch.cat([corner, corner + torch.rand(500, 2, generator=g) * 40], 1)
    s, lab = torch.rand(500, generator=g), torch.randint(0, 3, (500,), generator=g)
    kept = batched_nms(b.cuda(), s.cuda(), lab.cuda())
    assert kept.device.type == "cuda"
    assert kept.cpu().tolist() == batched_nms(b, s, lab).tolist()


@pytest.mark.parametrize("call, match", [
    (lambda: box_iou(torch.zeros(2, 3), torch.zeros(1, 4)), r"shape \(k, 4\)"),
    (lambda: box_iou(torch.tensor([[5., 0, 1, 1]]), torch.zeros(1, 4)), "x1 < x0"),
    (lambda: box_area(torch.tensor([[0, 0, 1, 1]])), r"float tensor.*\.float\(\)"),
    (lambda: box_iou(torch.tensor([[0., 0, float("nan"), 1]]), torch.zeros(1, 4)), "NaN"),
    (lambda: xywh_to_xyxy(torch.tensor([[0., 0, -1, 1]])), "negative width"),
    (lambda: nms(torch.zeros(2, 4), torch.zeros(3)), r"one entry per box \(k=2\)"),
    (lambda: nms(torch.zeros(1, 4), torch.tensor([float("nan")])), "NaN"),
    (lambda: batched_nms(torch.zeros(1, 4), torch.zeros(1), torch.zeros(1)), r"\.long\(\)"),
    (lambda: nms(torch.zeros(1, 4), torch.zeros(1), 1.5), r"IoU in \[0, 1\]"),
])
def test_bad_input_is_one_line(call, match):
    with pytest.raises(CnnlabError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


# -- mean average precision ----------------------------------------------------------------------

def _det(rows):
    """[(x0, y0, x1, y1, score, label), ...] -> Detection."""
    t = torch.tensor(rows, dtype=torch.float64).reshape(-1, 6)
    return Detection(t[:, :4], t[:, 4], t[:, 5].long())


def _truth(rows):
    """[(x0, y0, x1, y1, label), ...] -> Truth."""
    t = torch.tensor(rows, dtype=torch.float64).reshape(-1, 5)
    return Truth(t[:, :4], t[:, 4].long())


# Three images, two classes. Class 0: truths A (image 0), B (image 1), C (image 2, never
# found). Class 1: truths E (image 0), F (image 1), G (image 2).
A, B, C = (0, 0, 10, 10), (20, 20, 30, 30), (0, 0, 10, 10)
E, F, G = (30, 0, 40, 20), (0, 30, 10, 40), (30, 30, 40, 40)
TRUTHS = [_truth([(*A, 0), (*E, 1)]), _truth([(*B, 0), (*F, 1)]), _truth([(*C, 0), (*G, 1)])]
DETECTIONS = [
    _det([(*A, 0.9, 0),                  # d1: A exactly
          (1, 0, 11, 10, 0.8, 0),        # d2: a duplicate of A (IoU 90/110 = 0.82)
          (*E, 0.5, 1)]),                # e3: E exactly
    _det([(20, 20, 27.2, 30, 0.7, 0),    # d3: inside B, IoU 72/100 = 0.72
          (*F, 0.95, 1)]),               # e1: F exactly
    _det([(50, 50, 60, 60, 0.6, 0),      # d4: a false positive (C is missed)
          (70, 70, 80, 80, 0.85, 1),     # e2: a false positive
          (*G, 0.45, 1)]),               # e4: G exactly
]
# COCO's AP: precision at the 101 recall points r = 0, 0.01, ..., 1, each the best precision
# at recall >= r (0 past the last recall reached), averaged.
#
# Class 0, ranked d1 d2 d3 d4, 3 truths.
#   IoU threshold t <= 0.7 (0.5 ... 0.7, five of the ten): d1 TP, d2 FP (A is taken), d3 TP,
#   d4 FP -> recall 1/3 1/3 2/3 2/3, precision 1 1/2 2/3 1/2. Interpolated: 1 for the 34
#   points r <= 1/3 (0 ... 0.33), 2/3 for the 33 points 0.34 ... 0.66, 0 for r >= 0.67:
#       AP = (34 * 1 + 33 * 2/3) / 101 = 56 / 101.
#   t >= 0.75 (five): d3 misses B too -> recall stays 1/3 with precision 1 at the top:
#       AP = 34 / 101.
# Class 1, ranked e1 e2 e3 e4, every match exact (IoU 1, so the same at every t):
#   TP FP TP TP -> recall 1/3 1/3 2/3 1, precision 1 1/2 2/3 3/4; interpolated 1 for
#   r <= 1/3 (34 points) and 3/4 for the 67 points above (the best precision at or past them):
#       AP = (34 + 67 * 3/4) / 101 = 84.25 / 101.
AP50 = (56 / 101 + 84.25 / 101) / 2
AP75 = (34 / 101 + 84.25 / 101) / 2
AP = ((56 + 34) / 2 / 101 + 84.25 / 101) / 2       # class 0 averages its two halves


def test_map_equals_the_hand_computed_example(capsys):
    got = mean_average_precision(DETECTIONS, TRUTHS)
    assert got == pytest.approx({"map": AP, "map50": AP50, "map75": AP75}, rel=1e-9)
    assert capsys.readouterr().out == ""                 # pycocotools' prints are silenced


def test_empty_images_and_classes_without_truth_change_nothing():
    empty_det, empty_truth = _det([]), _truth([])
    more = mean_average_precision([*DETECTIONS, empty_det], [*TRUTHS, empty_truth])
    stray = _det([(0, 0, 5, 5, 0.99, 2)])            # class 2 has no truth anywhere
    ignored = mean_average_precision([*DETECTIONS, stray], [*TRUTHS, empty_truth],
                                     num_classes=3)
    expected = {"map": AP, "map50": AP50, "map75": AP75}
    assert more == pytest.approx(expected, rel=1e-9)
    assert ignored == pytest.approx(expected, rel=1e-9)


def test_no_detections_at_all_give_zero():
    none = [_det([]) for _ in TRUTHS]
    assert mean_average_precision(none, TRUTHS) == {"map": 0.0, "map50": 0.0, "map75": 0.0}


@pytest.mark.parametrize("false_positives, ap50", [(99, 1 / 100), (100, 0.0)])
def test_at_most_100_detections_per_image_and_class(false_positives, ap50):
    """The one true box scores lowest: with 99 false ones above it, recall 1 comes at
    precision 1/100 (every recall point gets it); a 101st detection is cut off."""
    wrong = [(50 + i, 50, 51 + i, 51, 0.9, 0) for i in range(false_positives)]
    got = mean_average_precision([_det([*wrong, (*A, 0.1, 0)])], [_truth([(*A, 0)])])
    assert got["map50"] == pytest.approx(ap50, abs=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda: mean_average_precision(DETECTIONS[:2], TRUTHS), "2 detections but 3 truths"),
    (lambda: mean_average_precision(DETECTIONS, TRUTHS, num_classes=1),
     "class id 1; labels are class ids 0..0"),
    (lambda: mean_average_precision([_det([])], [_truth([])]), "no image has a truth box"),
    (lambda: mean_average_precision([_det([(5, 0, 1, 1, 0.5, 0)])], [_truth([(*A, 0)])]),
     "image 0: detection boxes: box 0 .* x1 < x0"),
    (lambda: mean_average_precision([TRUTHS[0]], [TRUTHS[0]]), "expected a Detection"),
])
def test_bad_input_to_map_is_one_line(call, match):
    with pytest.raises(CnnlabError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_shape_errors_are_shape_errors():
    with pytest.raises(ShapeError):
        mean_average_precision([Detection(torch.zeros(1, 4), torch.zeros(2), torch.zeros(1,
                                dtype=torch.long))], [_truth([(*A, 0)])])


def test_docstring_examples():
    failures, tried = doctest.testmod(boxes_module)
    assert tried and not failures
