"""LeNet-5 as published (8.2.7; LeCun et al. 1998)."""

import torch

from cnnlab import models
from cnnlab.nn.lenet import (
    DIGIT_BITMAPS,
    LENET5_C3_TABLE,
    PartialConv2d,
    Squash,
    Subsampling,
    rbf_map_loss,
    rbf_prototypes,
)


def _trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_published_lenet5_has_exactly_60000_trainable_parameters():
    model = models.create("lenet5")
    assert _trainable(model) == 60_000
    f, h = model.features, model.head
    per_layer = [_trainable(m) for m in (f.c1, f.s2, f.c3, f.s4, h.c5, h.f6, model.output)]
    assert per_layer == [156, 12, 1516, 32, 48_120, 10_164, 0]


def test_volumes_follow_the_paper():
    model = models.create("lenet5")
    x = torch.zeros(1, 1, 32, 32)
    shapes = []
    for layer in model.features:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes[::2] == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5)]
    assert model.head.c5(x).shape[1:] == (120, 1, 1)


def test_c3_connection_table_is_table_one_of_the_paper():
    assert sorted(len(t) for t in LENET5_C3_TABLE) == [3] * 6 + [4] * 9 + [6]
    # row 0 of the paper's table: S2 map 0 feeds C3 maps 0, 4, 5, 6, 9, 10, 11, 12, 14, 15
    assert [p for p, t in enumerate(LENET5_C3_TABLE) if 0 in t] == [0, 4, 5, 6, 9, 10, 11, 12, 14, 15]
    c3 = PartialConv2d(6, LENET5_C3_TABLE, 5)
    full = c3.full_weight()
    connected = full.abs().sum((2, 3)) > 0
    expected = torch.zeros(16, 6, dtype=torch.bool)
    for p, inputs in enumerate(LENET5_C3_TABLE):
        expected[p, list(inputs)] = True
    assert torch.equal(connected, expected)


def test_unconnected_maps_do_not_influence_the_output():
    c3 = PartialConv2d(6, LENET5_C3_TABLE, 5)
    x = torch.randn(1, 6, 10, 10)
    y = c3(x)
    x2 = x.clone()
    x2[:, 0] += 5.0                      # change S2 map 0 only
    changed = (c3(x2) - y).abs().sum((0, 2, 3)) > 0
    assert changed.nonzero().flatten().tolist() == [0, 4, 5, 6, 9, 10, 11, 12, 14, 15]


def test_subsampling_is_average_times_coefficient_plus_bias():
    s = Subsampling(2)
    with torch.no_grad():
        s.weight.copy_(torch.tensor([2.0, -1.0]))
        s.bias.copy_(torch.tensor([0.5, 1.0]))
    x = torch.arange(32.0).view(1, 2, 4, 4)
    y = s(x)
    assert y.shape == (1, 2, 2, 2)
    assert y[0, 0, 0, 0] == 2.0 * (0 + 1 + 4 + 5) / 4 + 0.5
    assert y[0, 1, 1, 1] == -1.0 * (26 + 27 + 30 + 31) / 4 + 1.0


def test_squash_maps_plus_minus_one_to_themselves():
    y = Squash()(torch.tensor([-1.0, 0.0, 1.0, 100.0]))
    torch.testing.assert_close(y[:3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-4, rtol=0)
    assert abs(y[3] - 1.7159) < 1e-4


def test_rbf_prototypes_are_fixed_7x12_bitmaps():
    assert all(len(b) == 84 for b in DIGIT_BITMAPS)
    protos = rbf_prototypes(10)
    assert protos.shape == (10, 84) and set(protos.unique().tolist()) == {-1.0, 1.0}
    assert len({tuple(p.tolist()) for p in protos}) == 10          # all distinct
    model = models.create("lenet5")
    assert "output.prototypes" in model.state_dict()
    assert not any(n.startswith("output") for n, _ in model.named_parameters())


def test_rbf_output_is_squared_distance_to_prototypes():
    model = models.create("lenet5")
    x = torch.randn(3, 84)
    scores = -model.output(x)
    expected = -((x[:, None, :] - rbf_prototypes(10)[None]) ** 2).sum(-1)
    torch.testing.assert_close(scores, expected)
    # a unit exactly at a prototype scores 0, the best possible
    at_three = model.output(rbf_prototypes(10)[3:4])
    assert at_three[0, 3] == 0 and at_three.argmin() == 3


def test_rbf_map_loss_formula():
    y = torch.tensor([[1.0, 4.0, 9.0]])          # distances; scores are -y
    j = 2.0
    expected = y[0, 0] + torch.log(torch.exp(torch.tensor(-j)) + torch.exp(-y).sum())
    torch.testing.assert_close(rbf_map_loss(-y, torch.tensor([0]), j), expected)


def test_modern_variant_uses_relu_maxpool_and_softmax_scores():
    model = models.create("lenet5_modern")
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d"]
    assert not hasattr(model, "loss")          # trained with cross-entropy
