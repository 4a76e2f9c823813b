"""cnnlab.spec: the chapter's notation (8.2.7, Tables 8.1 and 8.2) as a grammar, both ways."""

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import cnnlab.nn as cnn
from cnnlab.errors import ModelError, SpecError
from cnnlab.nn import Classifier
from cnnlab.spec import SoftmaxOutput, SpecNet, build, parse, to_spec

HEAD = " FC4096 FC4096 FC1000 S"
VGG = {  # Table 8.2's columns, as written there
    "A": "C3D64 M C3D128 M C3D256 C3D256 M C3D512 C3D512 M C3D512 C3D512 M" + HEAD,
    "A-LRN": "C3D64 LRN M C3D128 M C3D256 C3D256 M C3D512 C3D512 M C3D512 C3D512 M" + HEAD,
    "B": "C3D64 C3D64 M C3D128 C3D128 M C3D256 C3D256 M C3D512 C3D512 M C3D512 C3D512 M" + HEAD,
    "C": "C3D64 C3D64 M C3D128 C3D128 M C3D256 C3D256 C1D256 M C3D512 C3D512 C1D512 M "
         "C3D512 C3D512 C1D512 M" + HEAD,
    "D": "C3D64 C3D64 M C3D128 C3D128 M C3D256 C3D256 C3D256 M C3D512 C3D512 C3D512 M "
         "C3D512 C3D512 C3D512 M" + HEAD,
    "E": "C3D64 C3D64 M C3D128 C3D128 M C3D256 C3D256 C3D256 C3D256 M "
         "C3D512 C3D512 C3D512 C3D512 M C3D512 C3D512 C3D512 C3D512 M" + HEAD,
}
# Table 8.1. AlexNet at 224 needs 2 pixels of padding on conv1, as torchvision's has
ALEXNET = ("C11D96s4p2 LRN M3s2 C5D256 LRN M3s2 C3D384 C3D384 C3D256 M3s2 "
           "FC4096 DROP FC4096 DROP FC1000 S")
# the original two-tower form at 227: conv2, conv4 and conv5 see only their own GPU's maps
ALEXNET_TWO_TOWER = ("C11D96s4p0 LRN M3s2 C5D256g2 LRN M3s2 C3D384 C3D384g2 C3D256g2 M3s2 "
                     "FC4096 FC4096 FC1000 S")
# ZFNet (Zeiler & Fergus): 224 -> 110 -> pool 55 -> 26 -> pool 13; Caffe's pools round up (c)
ZFNET = ("C7D96s2p1 M3s2c LRN C5D256s2p0 M3s2c LRN C3D512 C3D1024 C3D512 M3s2 "
         "FC4096 FC4096 FC1000 S")


def meta_build(*args, **kwargs) -> SpecNet:
    with torch.device("meta"):  # shapes and counts without allocating or computing
        return build(*args, **kwargs)


def params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def volumes(net: nn.Module, shape, kinds=(nn.Conv1d, nn.Conv2d, nn.Conv3d)):
    """Output volume (as the chapter writes it, depth last) of each layer of the given kinds."""
    out, x = {}, torch.zeros(1, *shape, device=next(net.parameters()).device)
    for name, m in net.named_children():
        x = m(x)
        if isinstance(m, kinds):
            out[name] = tuple(x.shape[2:]) + tuple(x.shape[1:2])
    return out


@pytest.fixture(scope="module")
def meta_vgg():
    return {k: meta_build(v, (3, 224, 224)) for k, v in VGG.items()}


# ------------------------------------------------------------------------------ the chapter

def test_vgg_d_has_torchvisions_parameter_count(meta_vgg):
    net = meta_vgg["D"]
    assert params(net) == 138_357_544                  # torchvision vgg16
    assert net.fc14.weight.numel() == 7 * 7 * 512 * 4096 == 102_760_448
    assert net.fc14.weight.numel() / params(net) > 0.74  # "nearly 75% ... in a single layer"
    assert sum(isinstance(m, nn.ReLU) for m in net) == 15  # 13 convs + 2 hidden FCs (Table 8.2)
    assert isinstance(net.softmax, SoftmaxOutput) and net.num_classes == 1000


@pytest.mark.parametrize("column, layers, count", [
    ("A", 11, 132_863_336), ("A-LRN", 11, 132_863_336), ("B", 13, 133_047_848),
    ("C", 16, 133_638_952), ("D", 16, 138_357_544), ("E", 19, 143_667_240)])
def test_every_vgg_column_has_its_layer_count(meta_vgg, column, layers, count):
    # Table 8.2's "# Layers" row; A, B, D, E are torchvision's vgg11, vgg13, vgg16, vgg19
    net = meta_vgg[column]
    assert sum(isinstance(m, nn.Conv2d | nn.Linear) for m in net) == layers
    assert params(net) == count
    assert isinstance(getattr(net, "lrn1", None), cnn.LRN) == (column == "A-LRN")


def test_the_specs_in_the_docs_build():
    doc = (Path(__file__).parents[1] / "docs" / "notation.md").read_text().splitlines()
    fence, specs = None, []
    for line in doc:
        if line.startswith("```"):
            fence = line[3:] if fence is None else None
        elif fence == "" and line.strip() and not line.startswith("token"):
            specs.append(line.split("   ")[0].strip())
    assert len(specs) == 4
    for text in specs:
        shape = (1, 32, 32) if "F10" in text else (3, 227, 227) if "g2" in text else (3, 224, 224)
        net = meta_build(text, shape)
        assert net(torch.zeros(1, *shape, device="meta")).shape[-1] in (10, 1000)


def test_vgg_d_spatial_sizes_of_exercise_4():
    net = meta_build(VGG["D"], (3, 224, 224))
    sizes = [v[0] for v in volumes(net, (3, 224, 224)).values()]
    assert sizes == [224] * 2 + [112] * 2 + [56] * 3 + [28] * 3 + [14] * 3


def test_alexnet_reproduces_table_8_1():
    net = meta_build(ALEXNET, (3, 224, 224))
    assert list(volumes(net, (3, 224, 224)).values()) == [
        (55, 55, 96), (27, 27, 256), (13, 13, 384), (13, 13, 384), (13, 13, 256)]
    assert [n for n, m in net.named_children() if isinstance(m, nn.Linear)] == ["fc6", "fc7", "fc8"]
    assert [n for n, _ in net.named_children()][:4] == ["conv1", "relu1", "lrn1", "pool1"]
    # 227 without padding gives the same volumes, and then every stride fits exactly
    unpadded = meta_build(ALEXNET.replace("p2", "p0", 1), (3, 227, 227), strict=True)
    assert volumes(unpadded, (3, 227, 227)) == volumes(net, (3, 224, 224))
    with pytest.raises(SpecError, match=r"'C11D96s4p2' \(#1\): stride S=4 does not divide"):
        build(ALEXNET, (3, 224, 224), strict=True)


def test_two_tower_alexnet_has_the_papers_60_million_parameters():
    net = meta_build(ALEXNET_TWO_TOWER, (3, 227, 227))
    one_tower = meta_build(ALEXNET_TWO_TOWER.replace("g2", ""), (3, 227, 227))
    assert params(net) == 60_965_224
    assert net.conv2.groups == 2 and net.conv2.weight.shape == (256, 48, 5, 5)
    assert params(one_tower) - params(net) == (5 * 5 * 48 * 256 + 3 * 3 * 192 * 384
                                               + 3 * 3 * 192 * 256)


def test_zfnet_reproduces_table_8_1():
    net = meta_build(ZFNET, (3, 224, 224))
    pools = volumes(net, (3, 224, 224), kinds=nn.MaxPool2d)
    convs = volumes(net, (3, 224, 224))
    assert convs["conv1"] == (110, 110, 96) and pools["pool1"] == (55, 55, 96)
    assert convs["conv2"] == (26, 26, 256) and pools["pool2"] == (13, 13, 256)
    assert [convs[f"conv{i}"] for i in (3, 4, 5)] == [(13, 13, 512), (13, 13, 1024), (13, 13, 512)]
    assert pools["pool3"] == (6, 6, 512) and net.fc6.in_features == 6 * 6 * 512


def test_the_crcrp_pattern_of_8_2_7():
    net = build("CRCRPCRCRPCRCRPF", (3, 32, 32), num_classes=10)
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]  # doubling after P
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.ReLU) for m in net) == 6  # explicit Rs only
    assert [n for n, _ in net.named_children()][-3:] == ["pool3", "flatten", "fc7"]
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert build("CRCRPCRCRPCRCRPF", (3, 32, 32), num_classes=10, width=8).conv6.out_channels == 32
    # the same network, written with separators and Table 8.2's letters
    same = build("C R C R M, C R C R M, C R C R M, F", (3, 32, 32), num_classes=10)
    assert to_spec(same) == to_spec(net) == (
        "C3D32 R C3D32 R M C3D64 R C3D64 R M C3D128 R C3D128 R M FC10")


def test_the_lenet_like_sketch_of_the_design():
    text = "C5D6 R P C5D16 R P F120 R F84 R F10"
    net = build(text, (1, 32, 32))                     # odd filters are half-padded by default
    assert list(volumes(net, (1, 32, 32), (nn.Conv2d, nn.MaxPool2d, nn.Linear)).values()) == [
        (32, 32, 6), (16, 16, 6), (16, 16, 16), (8, 8, 16), (120,), (84,), (10,)]
    # valid padding gives LeNet-5's own volumes (8.2.7) and lenet5_modern's 61,706 parameters
    lenet = build("C5D6p0 R P C5D16p=valid R P F120 R F84 R F10", (1, 32, 32))
    assert list(volumes(lenet, (1, 32, 32), (nn.Conv2d, nn.MaxPool2d, nn.Linear)).values()) == [
        (28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16), (120,), (84,), (10,)]
    assert params(lenet) == 61_706
    assert [n for n, _ in lenet.named_children()] == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc3", "relu3", "fc4",
        "relu4", "fc5"]


def test_exercise_3_strides_on_13x13x64():
    for stride in (2, 5):  # (13 - 3) / S + 1 is a whole number
        net = build(f"C3D64s{stride}p0", (64, 13, 13), strict=True)
        assert net(torch.zeros(1, 64, 13, 13)).shape[-1] == 10 // stride + 1
    for stride in (3, 4):
        with pytest.raises(SpecError) as err:
            build(f"C3D64s{stride}p0", (64, 13, 13), strict=True)
        msg = str(err.value)
        assert f"token 'C3D64s{stride}p0' (#1)" in msg
        assert f"L=13, F=3, P=0, S={stride}" in msg and "1, 2, 5, 10" in msg
        build(f"C3D64s{stride}p0", (64, 13, 13))        # not strict: floored, as torch does


# ---------------------------------------------------------------------------- the grammar

def test_parse_gives_positions_and_fields():
    toks = parse("C11D96s4p2, LRN M3s2 DROP0.3 C3x5D8p=halfg2d2")
    assert [t.text for t in toks][:4] == ["C11D96s4p2", "LRN", "M3s2", "DROP0.3"]
    conv = toks[0]
    assert (conv.kind, conv.size, conv.out, conv.stride, conv.padding) == (
        "conv", (11,), 96, (4,), (2,))
    assert (conv.index, conv.offset) == (1, 0) and toks[1].offset == 12
    assert toks[3].rate == 0.3 and toks[4].padding == "half" and toks[4].size == (3, 5)
    assert (toks[4].groups, toks[4].dilation) == (2, (2,)) and len(toks) == 5
    packed = parse("CRCRPF")
    assert [t.kind for t in packed] == ["conv", "relu", "conv", "relu", "maxpool", "fc"]
    assert [t.offset for t in packed] == [0, 1, 2, 3, 4, 5]


def test_implied_relus_and_layer_names():
    net = build("C3D8 LRN M C3D16 M DROP FC32 DROP FC10 S", (3, 16, 16))
    assert [n for n, _ in net.named_children()] == [
        "conv1", "relu1", "lrn1", "pool1", "conv2", "relu2", "pool2", "drop2", "flatten", "fc3",
        "relu3", "drop3", "fc4", "softmax"]
    explicit = build("C3D8 R C3D8 FC10", (3, 8, 8))     # any R: only the Rs written
    assert [n for n, _ in explicit.named_children()] == ["conv1", "relu1", "conv2", "flatten",
                                                         "fc3"]


def test_modifiers_and_extensions():
    net = build("C7D8s2p3 A3s1p1 C1D16 C3D16g4d2 GAP DROP0.25 F", (4, 32, 32), num_classes=5)
    assert (net.conv1.stride, net.conv1.padding) == ((2, 2), (3, 3))
    assert isinstance(net.pool1, cnn.AvgPool2d) and net.conv2.padding == (0, 0)  # 1x1: none
    assert net.conv3.groups == 4 and net.conv3.dilation == (2, 2) and net.conv3.padding == (2, 2)
    assert isinstance(net.gap, cnn.GlobalAvgPool) and "flatten" not in dict(net.named_children())
    assert net.drop3.p == 0.25 and net.fc4.in_features == 16
    assert net(torch.zeros(2, 4, 32, 32)).shape == (2, 5)
    full = build("C3D2p=full", (1, 5, 5))
    assert full(torch.zeros(1, 1, 5, 5)).shape == (1, 2, 7, 7)       # 8.2.1: L + F - 1
    assert build("C4D2", (1, 6, 6)).conv1.padding == (0, 0)           # even filter: no padding
    assert build("LRN3", (8, 4, 4)).lrn0.size == 3


def test_1d_and_3d_inputs():
    text = build("C3D16 M C3D32 GAP F", (300, 50), num_classes=2)     # text CNN, 8.6.4
    assert isinstance(text.conv1, cnn.Conv1d) and isinstance(text.pool1, cnn.MaxPool1d)
    assert text(torch.zeros(2, 300, 50)).shape == (2, 2)
    video = build("C3D8 M C3D16 M F", (3, 8, 16, 16), num_classes=4)   # video, 8.6.5
    assert isinstance(video.conv1, cnn.Conv3d) and isinstance(video.pool2, cnn.MaxPool3d)
    assert video.fc3.in_features == 16 * 2 * 4 * 4
    assert build("C3x1D4", (1, 8, 8)).conv1.kernel_size == (3, 1)


def test_specnet_interface():
    alexnet = meta_build(ALEXNET, (3, 224, 224))
    x = torch.zeros(2, 3, 224, 224, device="meta")
    feats = alexnet.forward_features(x)
    assert feats.shape == (2, 256, 6, 6) and alexnet.default_input_shape == (3, 224, 224)
    assert alexnet.forward_head(feats, pre_logits=True).shape == (2, 4096)   # FC7 features
    net = build("C3D8 LRN M C3D16 M FC32 DROP FC32 DROP FC7 S", (3, 16, 16)).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(net.forward_head(net.forward_features(x)), net(x))
    pre = net.forward_head(net.forward_features(x), pre_logits=True)   # all but fc5 and S
    torch.testing.assert_close(pre, net[:-2](x))
    net.reset_classifier(10)
    assert net(x).shape == (2, 10) and net.num_classes == 10
    assert net.spec.endswith("FC32 R DROP FC10 S")
    gap = build("C3D8 GAP F", (3, 8, 8), num_classes=3)
    assert gap.forward_features(torch.zeros(1, 3, 8, 8)).shape == (1, 8, 8, 8)
    with pytest.raises(SpecError, match="no fully connected output layer"):
        build("C3D8", (3, 8, 8)).reset_classifier(3)


def test_specnet_is_a_classifier_with_the_notations_names():
    net = build("C3D8 M FC16 FC", (3, 8, 8), num_classes=5)
    assert isinstance(net, Classifier) and net.default_input_shape == (3, 8, 8)
    assert net.layer("fc2") is net.fc2 and net.chapter_layers["pool1"] == "pool1"
    assert net.name_layers({"fc7": "fc2"}) is net and net.layer("fc7") is net.fc2
    with pytest.raises(SpecError, match=r"cannot name layer 'fc9' 'fc8': this network has no "
                                        r"layer 'fc9'; its layers are conv1, relu1, pool1"):
        net.name_layers({"fc8": "fc9"})
    with pytest.raises(ModelError, match=r"SpecNet has no layer 'fc99': did you mean"):
        net.layer("fc99")
    assert build("C3D8", (3, 8, 8)).num_classes is None


# ------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("text, shape, kwargs, match", [
    ("C3D8 C3D64q2", (3, 8, 8), {},
     r"token 'C3D64q2' \(#2, at character 5\) is malformed: a convolution is C\[<filter>\]"),
    ("C3D8 X5", (3, 8, 8), {}, r"token 'X5' \(#2.*expected one of C \(conv\), R \(ReLU\)"),
    ("c3d8", (3, 8, 8), {}, r"upper case"),
    ("C3D8 R P FC3D8", (3, 8, 8), {}, r"token 'D8' \(#5.*D<filters> belongs to a convolution"),
    ("C3D8s2s2", (3, 8, 8), {}, r"modifier 's' twice"),
    ("C5D6p0 R P C5D16p0 R", (1, 12, 12), {},
     r"token 'C5D16p0' \(#4\) needs at least 5x5 but gets 4x4x6"),
    ("M5", (3, 4, 4), {}, r"token 'M5' \(#1\) needs at least 5x5 but gets 4x4x3"),
    ("C3D8 F10 C3D8", (3, 8, 8), {},
     r"token 'C3D8' \(#3\) is a convolution, but its input is already flat \(10 features\)"),
    ("C3D8 F10 LRN", (3, 8, 8), {}, r"token 'LRN' \(#3\) is local response normalisation"),
    ("C3D8 GAP GAP", (3, 8, 8), {}, r"'GAP' \(#3\) is global average pooling, but"),
    ("", (3, 8, 8), {}, r"the spec is empty"),
    (" , ", (3, 8, 8), {}, r"the spec is empty"),
    ("C3D8 F", (3, 8, 8), {}, r"'F' \(#2\) is the output layer.*pass num_classes"),
    ("C3D8 F F10", (3, 8, 8), {}, r"'F' \(#2\): a bare F is the output layer"),
    ("C3D8 FC1000 S", (3, 8, 8), {"num_classes": 10}, r"has 1000 units but num_classes=10"),
    ("C3D8", (3, 8, 8), {"num_classes": 10}, r"no F/FC output layer"),
    ("C3D8 S F10", (3, 8, 8), {}, r"'S' \(#2\) marks the softmax output"),
    ("C3x3D8", (3, 8), {}, r"gives 2 values for the filter size of a 1-D input"),
    ("C3D8g3", (4, 8, 8), {}, r"groups g3 must divide both the input depth \(4"),
    ("C4D8p=half", (3, 8, 8), {}, r"'C4D8p=half' \(#1\): padding='half'.*odd filter"),
    ("M3p2", (3, 8, 8), {}, r"padding must be at most half its size"),
    ("LRN4", (8, 4, 4), {}, r"LRN window must be a positive odd number"),
    ("DROP2", (8, 4, 4), {}, r"dropout probability lies in \[0, 1\], got 2.0"),
    ("C0D8", (3, 8, 8), {}, r"filter size must be at least 1"),
    ("C3D8", (3, 8, 8, 8, 8), {}, r"input_shape must be 1 to 4 positive ints"),
    ("C3D8", (3, 8, 8), {"width": 0}, r"width must be a positive int"),
    # issue 9: an incomplete D is the convolution's, not the start of DROP
    ("C3D", (3, 8, 8), {}, (r"^token 'C3D' \(#1, at character 0\) is malformed: the D of a "
     r"convolution is followed by its number of filters, e.g. C3D64; a convolution is ")),
    ("C5D8 C3Ds2", (3, 8, 8), {}, r"^token 'C3Ds2' \(#2, at character 5\) is malformed: the D"),
    ("C3 D", (3, 8, 8), {}, r"^token 'D' \(#2, at character 3\): D<filters> belongs to a conv"),
    ("C3DR", (3, 8, 8), {}, r"^token 'DR' \(#2, at character 2\) is malformed: dropout is DROP"),
    # issue 9: weights that never meet the input, padding past full
    ("C99D4", (1, 8, 8), {}, (r"^token 'C99D4' \(#1\): only 15x15 of the 99x99 taps of its filter "
     r"\(padding 49\) ever meet its 8x8x1 input; the others see padding only and would never be "
     r"used or trained; use a filter of at most 15x15, or a larger input$")),
    ("C3D8 M M C3D8", (1, 4, 4), {}, r"'C3D8' \(#4\): only 1x1 of the 3x3 taps .* 1x1x8 input"),
    ("C9x3D4", (1, 3, 8), {}, r"only 5x3 of the 9x3 taps of its filter \(padding 4x1\)"),
    ("C3D8p5", (1, 8, 8), {}, (r"^token 'C3D8p5' \(#1\): padding 5 is more than its 3x3 filter "
     r"allows: at most F - 1 = 2 \(full padding, 8.2.1\); past that the outputs at the border "
     r"see padding only; lower p$")),
    ("C3D8d2p5", (1, 8, 8), {}, r"padding 5 is more than its 5x5 filter allows: at most F - 1 = 4"),
    ("C3D8 LRN99", (1, 8, 8), {}, (r"^token 'LRN99' \(#2\): a window of 99 maps is wider than the "
     r"2C - 1 = 15 that already reaches all 8 maps of its 8x8x8 input; write LRN15 or less$")),
])
def test_errors_name_the_token_and_the_fix(text, shape, kwargs, match):
    with pytest.raises(SpecError, match=match):
        build(text, shape, **kwargs)


# ------------------------------------------------------------------------------ to_spec

def test_to_spec_writes_nested_sequentials_and_defaults():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True),
                      nn.MaxPool2d(3, 2), cnn.LRN()),
        nn.Sequential(nn.Conv2d(64, 64, 3, padding="same"), nn.ReLU(), nn.AvgPool2d(2),
                      nn.Conv2d(64, 8, 1), nn.ReLU(), cnn.GlobalAvgPool()),
        nn.Dropout(0.2), nn.Linear(8, 10), SoftmaxOutput())
    text = to_spec(model)
    assert text == "C11D64s4p2 R M3s2 LRN C3D64 R A C1D8 R GAP DROP0.2 FC10 S"
    rebuilt = build(text, (3, 224, 224))
    assert params(rebuilt) == params(model)
    assert to_spec(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4, 2))) == "C3D4p0 R FC2"


@pytest.mark.parametrize("model, match", [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh()), r"'1' \(Tanh\)"),
    (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Softmax(-1)),
     r"'3' \(Softmax\).*drop the nn.Softmax"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU()), r"have a bias"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool1d(2)), r"1-D but earlier layers are 2-D"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2)), r"no Flatten before it"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)), r"no ReLU"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2, return_indices=True)),
     r"return no switches"),
    (nn.Sequential(nn.ReLU(), cnn.LRN(5, alpha=1e-3)), r"alpha=1e-4"),
    (nn.Sequential(), r"no layers"),
])
def test_to_spec_names_what_it_cannot_write(model, match):
    with pytest.raises(SpecError, match=match):
        to_spec(model)


# ---------------------------------------------------------------- round trip (hypothesis)

MODS = st.sampled_from(["", "s2", "p0", "p1", "p=valid", "p=full", "g2", "d2", "s2p0"])
CONV = st.builds(lambda k, n, m: f"C{k}D{n}{m}", st.sampled_from(["", "1", "3", "5", "2", "3x1"]),
                 st.sampled_from([2, 4, 6]), MODS)
SPATIAL = st.one_of(CONV, st.just("C"), st.sampled_from(
    ["R", "P", "M", "M3s2", "A", "A3s1p1", "M2s1c", "LRN", "LRN3", "DROP", "DROP0.1"]))
HEAD = st.sampled_from(["", "F", "FC7 F", "F6 R DROP F", "GAP F", "GAP", "F S", "GAP FC5 S"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(body=st.lists(SPATIAL, min_size=1, max_size=7), head=HEAD,
       sep=st.sampled_from([" ", ", ", ""]), dims=st.sampled_from([1, 2, 3]))
def test_to_spec_round_trips(body, head, sep, dims):
    shape = (2,) + (9,) * dims
    text = sep.join(body) + " " + head
    try:
        net = build(text, shape, num_classes=3 if "F" in head else None, width=2)
    except SpecError:  # the generator also makes sizes that do not fit; those must say so
        return
    canonical = to_spec(net)
    again = build(canonical, shape)
    assert isinstance(again, SpecNet) and to_spec(again) == canonical     # idempotent
    assert [(n, type(m)) for n, m in net.named_children()] == \
        [(n, type(m)) for n, m in again.named_children()]
    assert [p.shape for p in net.parameters()] == [p.shape for p in again.parameters()]
    x = torch.zeros(1, *shape)
    for a, b in zip(net, again):
        x, y = a(x), b(x)
        assert x.shape == y.shape


def test_filters_that_meet_their_input_still_build():
    """The largest filter every weight of which meets the input, and full padding, build."""
    assert volumes(build("C15D4", (1, 8, 8)), (1, 8, 8)) == {"conv1": (8, 8, 4)}
    assert volumes(build("C3D4p=full C3D4p2", (1, 1, 1)), (1, 1, 1)) == {
        "conv1": (3, 3, 4), "conv2": (5, 5, 4)}
    assert volumes(build("C1D4 C8D4p0", (1, 8, 8)), (1, 8, 8)) == {
        "conv1": (8, 8, 4), "conv2": (1, 1, 4)}
    assert volumes(build("C3D4s2 LRN5", (1, 3, 3)), (1, 3, 3)) == {"conv1": (2, 2, 4)}
