"""Confusion matrix, per-class accuracy, the batch meter, and the run folder's metrics files."""

import json
import math

import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from cnnlab.errors import CnnlabError, DataError, ShapeError
from cnnlab.train.metrics import (
    CONFUSION,
    ConfusionMeter,
    confusion_matrix,
    numeric_fields,
    per_class_accuracy,
    read_confusion,
    read_metrics,
    topk_correct,
    write_confusion,
)

# 3 classes, 8 examples, worked by hand:   predicted
#                                   true    0  1  2
TARGETS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])   # 0: 2  1  0
PREDICTIONS = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])  # 1: 0  1  1
HAND = [[2, 1, 0], [0, 1, 1], [1, 0, 2]]           # 2: 1  0  2


def test_confusion_matrix_by_hand_and_sklearn():
    cm = confusion_matrix(PREDICTIONS, TARGETS, 3)
    assert cm.dtype == torch.int64 and cm.shape == (3, 3)
    assert cm.tolist() == HAND
    assert cm.tolist() == sk_confusion_matrix(TARGETS.numpy(), PREDICTIONS.numpy()).tolist()


def test_confusion_matrix_random_matches_sklearn_and_keeps_unseen_classes():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 7, (500,), generator=g, dtype=torch.int32)
    p = torch.randint(0, 6, (500,), generator=g, dtype=torch.uint8)       # class 6 never predicted
    cm = confusion_matrix(p, t, 9)                                        # classes 7, 8 unseen
    expected = sk_confusion_matrix(t.numpy(), p.numpy(), labels=list(range(9)))
    assert cm.tolist() == expected.tolist() and int(cm.sum()) == 500
    assert confusion_matrix(p[:0], t[:0], 4).tolist() == [[0] * 4] * 4    # no examples


def test_per_class_accuracy():
    acc = per_class_accuracy(torch.tensor(HAND))
    assert acc.dtype == torch.float64
    assert acc.tolist() == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    empty_class = per_class_accuracy(torch.tensor([[3, 1], [0, 0]]))
    assert empty_class[0] == 0.75 and math.isnan(empty_class[1])


def test_meter_over_batches_equals_one_shot():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(103, 12, generator=g)
    targets = torch.randint(0, 12, (103,), generator=g)
    meter = ConfusionMeter(12)
    for s, t in zip(scores.split(25), targets.split(25), strict=True):
        meter.update(s, t)
    assert meter.n == 103
    assert torch.equal(meter.matrix, confusion_matrix(scores.argmax(1), targets, 12))
    c1, c5 = (int(c) for c in topk_correct(scores, targets, (1, 5)))
    assert meter.accuracy() == {"top1": c1 / 103, "top5": c5 / 103}
    assert int(meter.matrix.trace()) == c1
    assert torch.equal(meter.per_class_accuracy(), per_class_accuracy(meter.matrix))
    meter.reset()
    assert meter.n == 0 and int(meter.matrix.sum()) == 0


def test_meter_ties_keep_diagonal_equal_to_top1():
    scores = torch.zeros(4, 3)                       # every class ties
    meter = ConfusionMeter(3, ks=(1, 2))
    meter.update(scores, torch.tensor([0, 1, 2, 0]))
    top1 = meter.accuracy()["top1"]
    assert int(meter.matrix.trace()) == round(top1 * 4)
    assert set(meter.accuracy()) == {"top1", "top2"}


def test_meter_caps_k_at_the_number_of_classes():
    meter = ConfusionMeter(3)
    meter.update(torch.tensor([[0.0, 1, 2]]), torch.tensor([0]))
    assert meter.accuracy() == {"top1": 0.0, "top5": 1.0}


@pytest.mark.parametrize("call, error, words", [
    (lambda: confusion_matrix(PREDICTIONS, TARGETS[:5], 3), ShapeError, "one shape"),
    (lambda: confusion_matrix(torch.randn(8, 3), TARGETS, 3), ShapeError, "argmax"),
    (lambda: confusion_matrix(PREDICTIONS, TARGETS - 1, 3), DataError, "class id -1"),
    (lambda: confusion_matrix(PREDICTIONS, TARGETS, 2), DataError, "outside 0..1"),
    (lambda: confusion_matrix(PREDICTIONS.float(), TARGETS, 3), DataError, "integer class ids"),
    (lambda: confusion_matrix(PREDICTIONS, TARGETS, 0), CnnlabError, "positive int"),
    (lambda: per_class_accuracy(torch.ones(2, 3, dtype=torch.long)), ShapeError, "square"),
    (lambda: ConfusionMeter(3).update(torch.randn(4, 5), torch.zeros(4, dtype=torch.long)),
     ShapeError, "N x 3"),
    (lambda: ConfusionMeter(3).update(torch.randn(4, 3), torch.full((4,), -2)), DataError,
     "class id -2"),
    (lambda: ConfusionMeter(3).accuracy(), CnnlabError, "no examples"),
    (lambda: ConfusionMeter(3, ks=(0,)), CnnlabError, "positive ints"),
])
def test_bad_input_is_a_clear_one_line_error(call, error, words):
    with pytest.raises(error, match=words) as info:
        call()
    assert "\n" not in str(info.value)


def test_confusion_json_round_trip(tmp_path):
    path = write_confusion(tmp_path, torch.tensor(HAND), ["cat", "dog", "eel"])
    assert path == tmp_path / CONFUSION
    data = json.loads(path.read_text())
    assert data["matrix"] == HAND and data["rows"] == "true class"
    matrix, classes = read_confusion(tmp_path)
    assert matrix.tolist() == HAND and classes == ["cat", "dog", "eel"]
    write_confusion(tmp_path, HAND)                               # a plain list, no names
    assert read_confusion(tmp_path)[1] is None
    assert [p.name for p in tmp_path.iterdir()] == [CONFUSION]   # no temporary file left


def test_confusion_json_errors(tmp_path):
    with pytest.raises(ShapeError, match="name each of the 3 classes"):
        write_confusion(tmp_path, HAND, ["cat"])
    with pytest.raises(DataError, match="non-negative ints"):
        write_confusion(tmp_path, torch.tensor(HAND) - 3)
    with pytest.raises(CnnlabError, match="saved no confusion matrix"):
        read_confusion(tmp_path)
    (tmp_path / CONFUSION).write_text('{"matrix": [[1, 2]]}')
    with pytest.raises(CnnlabError, match="not a confusion matrix written by cnnlab"):
        read_confusion(tmp_path)


def test_read_metrics(tmp_path):
    records = [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n\n" for r in records))
    assert read_metrics(tmp_path) == records
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2\n')
    with pytest.raises(CnnlabError, match="line 2: not valid JSON"):
        read_metrics(tmp_path)
    with pytest.raises(CnnlabError, match="does not exist"):
        read_metrics(tmp_path / "nowhere")


def test_numeric_fields():
    record = {"epoch": 3, "lr": 0.1, "model": "lenet5", "diverged": False,
              "loss": torch.tensor(0.5), "nested": {"a": 1}}
    assert numeric_fields(record) == {"epoch": 3.0, "lr": 0.1, "loss": 0.5}
