"""The video models of 8.6.5: 3-D CNNs, CNN + LSTM, 3-D CNN + LSTM, the single-frame baseline."""

import pytest
import torch
from _checks import kernels_agree
from torch import nn

from cnnlab import models
from cnnlab.errors import ModelError, ShapeError
from cnnlab.models.video import C3D_TABLE, SEQUENCE_TABLE

# tiny clips each model takes: (model arguments, clip (C, T, H, W))
TINY = {
    "c3d_mnist": ({"in_channels": 2, "frames": 8, "size": 16}, (2, 8, 16, 16)),
    "frame_average": ({"in_channels": 2, "frames": 3, "size": 16}, (2, 3, 16, 16)),
    "cnn_lstm": ({"in_channels": 2, "frames": 3, "size": 16, "hidden": 5},
                 (2, 3, 16, 16)),
    "c3d_lstm": ({"in_channels": 2, "frames": 8, "size": 16, "hidden": 5},
                 (2, 8, 16, 16)),
}


def test_every_video_model_of_the_zoo_is_tested_here():
    assert set(TINY) | {"c3d"} == set(C3D_TABLE) | set(SEQUENCE_TABLE)
    assert {n for n in models.names() if models.info(n).section == "8.6.5"} == set(TINY) | {"c3d"}


@pytest.mark.parametrize("name", sorted(TINY))
def test_output_shape_and_gradients_agree_on_both_kernels(name):
    kwargs, shape = TINY[name]
    torch.manual_seed(0)
    model = models.create(name, num_classes=3, **kwargs).double().eval()
    assert model.default_input_shape == shape
    x = torch.randn(2, *shape, dtype=torch.float64)
    out, grads = kernels_agree(model, x, atol=1e-12)
    assert out.shape == (2, 3)
    for pname, g in zip([n for n, _ in model.named_parameters()], grads):
        assert g.abs().sum() > 0, f"{name}: {pname} gets no gradient"


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_common_interface(name):
    kwargs, shape = TINY[name]
    model = models.create(name, num_classes=4, **kwargs).eval()
    x = torch.rand(2, *shape)
    feats = model.forward_features(x)
    assert feats.dim() == 5                               # N x D x T' x H' x W'
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).dim() == 2
    model.reset_classifier(6)
    assert model(x).shape == (2, 6)
    assert isinstance(model.layer("conv1"), nn.Conv2d | nn.Conv3d)


def test_frame_averaging_classifies_each_frame_and_averages_so_frame_order_is_lost():
    torch.manual_seed(0)
    kwargs, shape = TINY["frame_average"]
    model = models.create("frame_average", num_classes=3, **kwargs).eval()
    x = torch.rand(2, *shape)
    per_frame = [model.fc(model.grid(model.cnn(x[:, :, t])).flatten(1)) for t in range(3)]
    torch.testing.assert_close(model(x), torch.stack(per_frame).mean(0))
    reversed_ = x.flip(2)
    torch.testing.assert_close(model(reversed_), model(x))
    lstm = models.create("cnn_lstm", num_classes=3, **TINY["cnn_lstm"][0]).eval()
    assert not torch.allclose(lstm(reversed_), lstm(x))   # the LSTM follows the frames in order


def test_segments_go_through_the_3d_cnn_one_by_one():
    torch.manual_seed(0)
    model = models.create("c3d_lstm", num_classes=3, **TINY["c3d_lstm"][0]).eval()
    x = torch.rand(2, 2, 8, 16, 16)
    seq = torch.stack([model.grid(model.cnn(x[:, :, 4 * s:4 * s + 4]).mean(2)).flatten(1)
                       for s in range(2)], 1)        # each 4-frame segment alone, in order
    states, _ = model.lstm(seq)
    torch.testing.assert_close(model(x), model.fc(states[:, -1]))


def test_c3d_is_tran_s_network():
    """Tran et al. 2015: 8 convolutions of 3x3x3, pool1 1x2x2, pool5 to 1x4x4 (fc6 8192 -> 4096)."""
    model = models.info("c3d").meta_model
    assert model.default_input_shape == (3, 16, 112, 112) and model.num_classes == 487
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert [m.out_channels for m in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert all(m.kernel_size == (3, 3, 3) and m.padding == (1, 1, 1) for m in convs)
    assert model.layer("pool1").kernel_size == (1, 2, 2) and model.layer("fc6").in_features == 8192
    assert model.layer("conv3b").out_channels == 256 and model.layer("fc8").out_features == 487
    assert model(torch.zeros(1, 3, 16, 112, 112, device="meta")).shape == (1, 487)


def test_bad_shapes_are_refused():
    with pytest.raises(ModelError, match="frames=10 is not a whole number of 4-frame segments"):
        models.create("c3d_lstm", frames=10)
    model = models.create("c3d_lstm", **TINY["c3d_lstm"][0])
    with pytest.raises(ShapeError, match="a clip of 6 frames is not a whole number of 4-frame"):
        model(torch.zeros(1, 2, 6, 16, 16))
    with pytest.raises(ShapeError, match=r"takes clips \(N, C, T, H, W\)"):
        model(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ModelError, match="hidden must be a positive int"):
        models.create("cnn_lstm", hidden=0)
