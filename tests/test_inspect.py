"""cnnlab.inspect: the per-layer table, checked against the chapter's own numbers."""

import json

import pytest
import torch
from torch import nn

import cnnlab.nn as cnn
from cnnlab import models
from cnnlab.errors import ShapeError
from cnnlab.inspect import Summary, summarize, volume
from cnnlab.spec import build

VGG_D = ("C3D64 C3D64 M C3D128 C3D128 M C3D256 C3D256 C3D256 M C3D512 C3D512 C3D512 M "
         "C3D512 C3D512 C3D512 M FC4096 FC4096 FC1000 S")


@pytest.fixture(scope="module")
def vgg_d():
    torch.manual_seed(0)
    net = build(VGG_D, (3, 224, 224))
    return net, summarize(net, (3, 224, 224))


def test_lenet5_as_published():
    s = summarize(models.create("lenet5"), (1, 32, 32))
    assert s.totals.params == 60_000 and s.totals.buffers == 10 * 84   # fixed RBF prototypes
    by_name = {r.name.split(".")[-1]: r for r in s.rows}
    assert [by_name[n].volume for n in ("c1", "s2", "c3", "s4", "c5", "f6", "output")] == [
        "28×28×6", "14×14×6", "10×10×16", "5×5×16", "1×1×120", "84", "10"]
    assert [by_name[n].params for n in ("c1", "s2", "c3", "s4", "c5", "f6")] == [
        156, 12, 1_516, 32, 48_120, 10_164]
    assert by_name["c3"].macs == 10 * 10 * 60 * 25          # only C3's 60 connections
    assert by_name["output"].macs == 84 * 10 and by_name["output"].buffers == 840
    assert by_name["c5"].receptive_field == (32, 32)         # C5 sees the whole 32x32 input
    assert by_name["f6"].receptive_field is None and by_name["f6"].jump is None


def test_receptive_fields_of_stacked_3x3_convolutions():
    s = summarize(build("C3D8 C3D8 C3D8", (1, 16, 16)), (1, 16, 16))
    convs = [r for r in s.rows if r.kind == "Conv2d"]
    assert [r.receptive_field for r in convs] == [(3, 3), (5, 5), (7, 7)]     # 8.2, 8.4.3
    assert {r.jump for r in convs} == {(1, 1)}
    relus = [r for r in s.rows if r.kind == "ReLU"]
    assert [r.receptive_field for r in relus] == [(3, 3), (5, 5), (7, 7)]     # unchanged


def test_a_pool_doubles_the_jump():
    s = summarize(build("C3D8 M C3D8 M3s2 C3D8s2 C3x1D8", (1, 32, 32)), (1, 32, 32))
    rows = [r for r in s.rows if r.kind != "ReLU"]
    assert [r.jump for r in rows] == [(1, 1), (2, 2), (2, 2), (4, 4), (8, 8), (8, 8)]
    assert [r.receptive_field for r in rows] == [
        (3, 3), (4, 4), (8, 8), (12, 12), (20, 20), (36, 20)]


def test_fields_in_1d_3d_and_through_functional_ops():
    s = summarize(build("C5D4 M C3D4", (2, 40)), (2, 40))
    assert [r.volume for r in s.rows if r.kind != "ReLU"] == ["40×4", "20×4", "20×4"]
    assert s.rows[-1].receptive_field == (5 + 1 + 2 * 2,)
    v = summarize(build("C3D4 M", (3, 8, 16, 16)), (3, 8, 16, 16))
    assert v.rows[-1].volume == "4×8×8×4" and v.rows[-1].receptive_field == (4, 4, 4)

    class Doubled(nn.Module):  # a functional op between two convolutions
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x) * 2)

    rows = summarize(Doubled(), (1, 9, 9)).rows
    assert [r.receptive_field for r in rows] == [(3, 3), (5, 5)]   # from the most recent row


def test_macs_of_figure_8_1():
    s = summarize(build("C5D5p0", (3, 32, 32)), (3, 32, 32))
    conv = s.rows[0]
    assert conv.volume == "28×28×5" and conv.macs == 28 * 28 * 5 * 75 == 294_000
    assert conv.params == 5 * 75 + 5
    grouped = summarize(nn.Conv2d(4, 8, 3, groups=2), (4, 5, 5)).rows[0]
    assert grouped.macs == 3 * 3 * 8 * (2 * 9)
    up = summarize(nn.ConvTranspose2d(4, 2, 2, stride=2), (4, 5, 5)).rows[0]
    assert up.volume == "10×10×2" and up.macs == 5 * 5 * 4 * 2 * 4  # over the input
    assert up.jump == (0.5, 0.5) and up.receptive_field == (1, 1)


def test_vgg_d_parameters_sit_in_fc6_and_activations_in_the_first_blocks(vgg_d):
    _, s = vgg_d
    fc6 = next(r for r in s.rows if r.kind == "Linear")
    assert fc6.params == 102_760_448 + 4096 and fc6.macs == 102_760_448
    assert s.totals.params == 138_357_544 and s.totals.frozen_params == 0
    first_two_blocks = sum(r.activations for r in s.rows[:s.rows.index(
        next(r for r in s.rows if r.name == "pool2")) + 1])
    assert first_two_blocks > s.totals.activations / 2
    assert s.totals.activation_bytes == 4 * s.totals.activations
    assert s.totals.macs == sum(r.macs for r in s.rows) > 15_000_000_000  # ~15.5 GMACs
    assert next(r for r in s.rows if r.name == "pool5").receptive_field == (212, 212)


def test_text_and_json(vgg_d):
    net, s = vgg_d
    text = s.to_text()
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["layer", "kind", "volume", "params"]
    assert "102,764,544" in text and "138,357,544" in text
    assert lines[-2].startswith("total")
    assert len({len(line) for line in lines[3:-3]}) == 1     # aligned columns
    data = json.loads(json.dumps(s.to_dict()))
    assert Summary.from_dict(data) == s
    assert data["rows"][0]["volume"] == "224×224×64" and data["totals"]["params"] == 138_357_544
    assert net.training                                      # the training flag is restored


def test_training_flags_are_restored_and_frozen_counted():
    net = build("C3D4 DROP F", (1, 8, 8), num_classes=2)
    net.conv1.eval()
    net.conv1.weight.requires_grad_(False)
    s = summarize(net, (1, 8, 8), batch_size=3, dtype=torch.float32)
    assert net.training and not net.conv1.training
    assert s.totals.frozen_params == 36 and s.rows[0].frozen_params == 36
    assert s.rows[0].params == 4 and s.rows[0].output_shape == (3, 4, 8, 8)
    assert s.rows[0].activations == 4 * 8 * 8                # per example


def test_shapes_that_do_not_fit():
    with pytest.raises(ShapeError) as err:
        summarize(models.create("lenet5"), (3, 32, 32))
    msg = str(err.value)
    assert "\n" not in msg and "3x32x32" in msg and "1x32x32" in msg
    assert "expects 1 input channel" in msg
    with pytest.raises(ShapeError, match="input shape 1x20x20 does not fit the model at layer"):
        summarize(models.create("lenet5"), (1, 20, 20))
    with pytest.raises(ShapeError, match="input_shape must be"):
        summarize(models.create("lenet5"), (0, 32, 32))
    with pytest.raises(ShapeError, match=r"dtype=torch.float64 does not match.*model.to"):
        summarize(models.create("lenet5"), (1, 32, 32), dtype=torch.float64)
    double = summarize(models.create("lenet5").double(), (1, 32, 32), dtype=torch.float64)
    assert double.rows[0].activation_bytes == 8 * 28 * 28 * 6 and double.dtype == "float64"


def test_volume_is_written_depth_last():
    assert volume((6, 28, 28)) == "28×28×6" and volume((84,)) == "84"
    assert volume((16, 50)) == "50×16" and volume((3, 8, 16, 16)) == "8×16×16×3"
    assert summarize(cnn.ReLU(), (4,)).rows[0].volume == "4"


def test_start_is_the_first_pixel_unit_zero_sees():
    s = summarize(build("C3D8 M C3D8 M3s2 C3D8s2 C3x1D8", (1, 32, 32)), (1, 32, 32))
    rows = [r for r in s.rows if r.kind != "ReLU"]
    # half padding of 1 moves the window 1 jump back: -1, -1 - 2, -3 - 4, (-7 - 8, -7 - 0)
    assert [r.start for r in rows] == [(-1, -1), (-1, -1), (-3, -3), (-3, -3), (-7, -7),
                                       (-15, -7)]
    up = summarize(nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1), (4, 5, 5)).rows[0]
    assert up.start == (0, 0)            # output 0 takes input 0 through the filter's centre
    data = json.loads(json.dumps(s.to_dict()))
    assert data["rows"][-1]["start"] == [-15, -7] and Summary.from_dict(data) == s


def test_start_jump_and_field_bound_the_gradient_of_every_unit():
    torch.manual_seed(0)
    net = build("C3D2d2p1 C5D2s2p3 A3s2p1", (1, 12, 12)).double()
    for m in net.modules():                       # positive weights: no cancellation
        if isinstance(m, nn.Conv2d):
            nn.init.uniform_(m.weight, 0.1, 1.0)
    row = summarize(net, (1, 12, 12), dtype=torch.float64).rows[-1]
    (rf, _), (j, _), (a, _) = row.receptive_field, row.jump, row.start
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    out = net(x)
    for i in range(out.shape[2]):
        (g,) = torch.autograd.grad(out[0, 0, i, i], x, retain_graph=True)
        rows = g[0, 0].abs().sum(1).nonzero().flatten().tolist()
        first, last = a + i * j, a + i * j + rf - 1          # may lie in the padding
        assert rows == list(range(max(first, 0), min(last, 11) + 1))


def _rows(s):
    return {r.name: r for r in s.rows}


def test_an_autoencoders_deconvolution_costs_what_a_transposed_convolution_does():
    for tied in (True, False):
        s = summarize(models.create("cae", tied=tied), (1, 28, 28))
        rows = _rows(s)
        deconv, conv = rows["decoder.deconv1"], rows["encoder.conv1"]
        # the decoder's 16 -> 1 maps, 5x5 filters, half padding, on 28x28 inputs
        torch_up = summarize(nn.ConvTranspose2d(16, 1, 5, padding=2), (16, 28, 28)).rows[0]
        assert deconv.kind == "Deconv2d" and deconv.volume == torch_up.volume == "28×28×1"
        assert deconv.macs == torch_up.macs == 28 * 28 * 16 * 25
        assert deconv.macs == conv.macs                   # the same products, transposed
        assert s.totals.macs == conv.macs + deconv.macs == sum(r.macs for r in s.rows)
        assert deconv.params == 1 + (0 if tied else 16 * 25)      # tied: only its bias
        # unpooling puts each of pool1's units (field 6, jump 2) back in its 2x2 window:
        # a field of 6 per output; then the 5x5 deconvolution spans 3 pooled units: 6 + 2·2
        assert rows["decoder.unpool1"].receptive_field == (6, 6)
        assert deconv.receptive_field == (10, 10) and deconv.jump == (1, 1)
        assert all(isinstance(j, float) for j in deconv.jump)    # not an exact window


def test_a_strided_decoder_has_the_fields_of_torchs_transposed_convolutions():
    ae = models.create("cae_strided")
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.Conv2d(16, 8, 3, 2, 1),
                         nn.ConvTranspose2d(8, 16, 3, 2, 1, output_padding=1),
                         nn.ConvTranspose2d(16, 1, 3, 2, 1, output_padding=1))
    mine = [r for r in summarize(ae, (1, 28, 28)).rows if r.kind in ("Conv2d", "Deconv2d")]
    want = summarize(twin, (1, 28, 28)).rows
    assert [r.kind for r in mine] == ["Conv2d", "Conv2d", "Deconv2d", "Deconv2d"]
    for a, b in zip(mine, want, strict=True):
        assert (a.volume, a.macs, a.receptive_field, a.jump, a.start) == (
            b.volume, b.macs, b.receptive_field, b.jump, b.start)
    assert [r.macs for r in mine] == [14 * 14 * 16 * 9, 7 * 7 * 8 * 16 * 9,
                                      7 * 7 * 8 * 16 * 9, 14 * 14 * 16 * 9]


# -- clips (C, T, H, W) and token ids ------------------------------------------------------------

def test_a_3d_cnn_has_receptive_fields_in_time_too():
    s = summarize(models.create("c3d_mnist"), (1, 16, 64, 64))
    rows = _rows(s)
    assert s.rows[0].volume == "16×64×64×8" and rows["conv1"].macs == 16 * 64 * 64 * 8 * 27
    assert rows["conv1"].receptive_field == (3, 3, 3) and rows["conv1"].jump == (1, 1, 1)
    # pool1 is 1x2x2 (time kept): conv2 sees 3 + 2 = 5 frames; pool2 (2x2x2) 6 at a jump of 2,
    # so conv3 sees 6 + 2·2 = 10 frames and 10 + 2·4 = 18 pixels
    assert rows["pool1"].receptive_field == (3, 4, 4) and rows["pool1"].jump == (1, 2, 2)
    assert rows["conv2"].receptive_field == (5, 8, 8)
    assert rows["conv3"].receptive_field == (10, 18, 18) and rows["conv3"].jump == (2, 4, 4)
    text = s.to_text()
    assert "3×4×4" in text and "1×2×2" in text and "16×64×64×1" in text   # the input, T×H×W×C


def test_a_frame_cnn_sees_one_frame_and_an_lstm_multiplies_its_matrices_each_step():
    s = summarize(models.create("cnn_lstm"), (1, 16, 64, 64))
    rows = _rows(s)
    assert rows["cnn.conv1"].receptive_field == (3, 3)          # within a frame
    assert rows["cnn.conv1"].macs == 16 * 64 * 64 * 8 * 9        # every frame of the clip
    lstm = models.create("cnn_lstm").lstm
    assert rows["lstm"].macs == 16 * 4 * 64 * (lstm.input_size + 64)
    assert rows["lstm"].params == sum(p.numel() for p in lstm.parameters())


def test_the_probe_follows_the_model_s_input_dtype():
    class Ids(nn.Module):
        default_input_dtype = torch.int64

        def __init__(self):
            super().__init__()
            self.embed, self.fc = nn.Embedding(20, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.embed(x).mean(1))

    s = summarize(Ids(), (7,))
    assert s.dtype == "int64" and [r.volume for r in s.rows] == ["4×7", "2"]
    with pytest.raises(ShapeError, match="does not fit"):
        summarize(Ids(), (7,), dtype=torch.float32)          # an embedding takes no floats


def test_the_summary_command_takes_clip_shapes(capsys):
    from cnnlab.cli import main

    assert main(["summary", "c3d_mnist", "--input", "3x16x112x112"]) == 0
    out = capsys.readouterr().out
    assert "16×112×112×3" in out and "16×112×112×8" in out and "3×4×4" in out
