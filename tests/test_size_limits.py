"""Absurd sizes are refused from the text and the shapes, before anything is allocated (issue 9,
findings 5 and 6): the range of every number, and the limits on a whole network's parameters
and memory (CNNLAB_MAX_PARAMS, CNNLAB_MAX_ACTIVATION_BYTES)."""

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab import models
from cnnlab.cli import main
from cnnlab.errors import CnnlabError, SizeError, SpecError
from cnnlab.inspect import LIMITS, size_limits, summarize
from cnnlab.ops._shapes import MAX_SIZE, conv_output_length
from cnnlab.spec import build

ROOT = Path(__file__).resolve().parents[1]
PARAMS, MEMORY = LIMITS                  # the two variables' names


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------- numbers in range

@pytest.mark.parametrize("text, name, value", [
    ("C3D8p9223372036854775808", "padding", "9223372036854775808"),
    ("C3D8s9223372036854775808", "stride", "9223372036854775808"),
    ("C3D8d9223372036854775808", "dilation", "9223372036854775808"),
    ("FC100000000000000000000", "number of units", "100000000000000000000"),
    ("C3D2147483648", "number of filters", "2147483648"),
    ("C3x2147483648D8", "filter size", "2147483648"),
    ("C3D8g4294967296", "groups", "4294967296"),
    ("M2s99999999999", "stride", "99999999999"),
    ("A2p99999999999", "padding", "99999999999"),
    ("LRN99999999999", "LRN window", "99999999999"),
    ("C" + "9" * 5000, "filter size", "of 5000 digits"),  # past int()'s 4300-digit limit
])
def test_every_number_is_range_checked(text, name, value):
    with pytest.raises(SpecError) as err:
        build(text, (1, 8, 8))
    assert str(err.value).endswith(f": the {name} {value} is out of range: a number in the "
                                   f"notation is at most 2,147,483,647; write a smaller {name}")
    assert MAX_SIZE == 2**31 - 1


def test_the_largest_numbers_build_a_network_that_runs():
    """At 2**31 - 1 a stride is in range, and the network it builds runs forward."""
    big = MAX_SIZE
    net = build(f"C3D2s{big}p0 M1s{big} A1s{big} F3", (1, 8, 8))
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    # a padding or dilation that large is refused by what the filter allows, not by PyTorch
    with pytest.raises(SpecError, match=r"padding 2147483647 is more than its 3x3 filter allows"):
        build(f"C3D2p{big}", (1, 8, 8))
    with pytest.raises(SpecError, match=r"needs at least 4294967295x4294967295 but gets 8x8x1"):
        build(f"C3D2d{big}p0", (1, 8, 8))
    with pytest.raises(SpecError, match=r"only 1x1 of the 3x3 taps"):
        build(f"C3D2d{big}", (1, 8, 8))


def test_input_shapes_and_arguments_are_range_checked():
    with pytest.raises(SpecError, match=r"input_shape \(99999999999999999999, 32, 32\) has a size "
                       r"above 2,147,483,647, the most a kernel takes; give a smaller input"):
        build("C3D8", (99999999999999999999, 32, 32))
    with pytest.raises(SpecError, match=r"num_classes must be a positive int of at most "
                       r"2,147,483,647, got 10000000000"):
        build("C3D8 F", (1, 8, 8), num_classes=10**10)
    with pytest.raises(SpecError, match=r"width must be a positive int of at most"):
        build("C", (1, 8, 8), width=2**40)
    with pytest.raises(SpecError, match=r"token 'C' \(#41\): a bare C has 35,184,372,088,832 "
                       r"filters here \(the width doubles after each of the 40 pools, 8.4.3\)"):
        build("A1 " * 40 + "C", (1, 8, 8))


def test_strict_lists_divisors_of_a_huge_span_quickly():
    start = time.perf_counter()
    with pytest.raises(SpecError, match=r"stride S=5 does not divide L \+ 2P - F = 2147483647 "
                       r"\+ 2\*0 - 3 = 2147483644 .*divides 2147483644 \(1, 2, 4, 233, 466, 932, 1103, 2089\)"):
        build("C3D1s5p0", (1, MAX_SIZE), strict=True)
    assert time.perf_counter() - start < 1


def test_ceil_mode_output_length_is_exact_past_2_to_53():
    n = 2**60 + 1                                  # float division would round this
    assert conv_output_length(n, 2, 2, 0, 1, ceil_mode=True) == 2**59 + 1
    assert conv_output_length(n, 3, 2, 0, 1, ceil_mode=True) == 2**59


# ------------------------------------------------------------------- whole-network limits

def test_a_huge_fc_is_refused_at_once_with_the_limit_named():
    start = time.perf_counter()
    with pytest.raises(SizeError) as err:
        build("F999999999", (6, 3, 64))
    assert time.perf_counter() - start < 1
    assert str(err.value) == (
        "the network 'F999999999' on input 6x3x64 has 1,152,999,998,847 parameters (layer 'fc1' "
        "from token 'F999999999' (#1) alone has 1,152,999,998,847), more than the limit of "
        "500,000,000; set CNNLAB_MAX_PARAMS higher to build it anyway, or make the network "
        "smaller")


def test_a_billion_parameters_are_not_built_silently(monkeypatch):
    text, shape = "C3D16 F1000", (3, 270, 270)    # 16*270*270*1000 + ... = 1.17 billion
    with pytest.raises(SizeError, match=r"has 1,166,401,448 parameters .*limit of 500,000,000"):
        build(text, shape)
    monkeypatch.setenv(PARAMS, "2000000000")        # the user raises the limit: it builds
    with torch.device("meta"):
        net = build(text, shape)
    assert sum(p.numel() for p in net.parameters()) == 1_166_401_448


def test_activation_memory_is_refused_and_names_the_largest_layer():
    with pytest.raises(SizeError) as err:
        build("C3D64 M GAP", (3, 20000, 20000))
    assert str(err.value) == (
        "the network 'C3D64 M GAP' on input 3x20000x20000 needs 219.0 GiB per example for its "
        "input and activations (layer 'conv1' from token 'C3D64' (#1) alone needs 95.4 GiB), "
        "more than the limit of 4.0 GiB; use a smaller input, or set "
        "CNNLAB_MAX_ACTIVATION_BYTES higher (in bytes)")


@pytest.mark.parametrize("text, shape", [
    ("C5D6p0 R P C5D16p0 R P F120 R F84 R F10", (1, 32, 32)),
    ("C3D8 LRN M3s2c DROP C3D16g2 A3s1p1 GAP F4 S", (3, 17, 17)),
    ("C5D4 M C3D4 F7", (2, 40)),
    ("C3D4 M C1D6 F3", (3, 8, 16, 16)),
    ("CRCRPF", (3, 8, 8)),
    ("FC5 R FC3", (7,)),
])
def test_the_check_counts_exactly_what_summarize_measures(monkeypatch, text, shape):
    """The limits are checked from the text; at the network's own figures it builds, one
    below it is refused (so the plan and the built network agree to the parameter and byte)."""
    s = summarize(build(text, shape, num_classes=5 if "F " in text + " " else None), shape)
    memory = s.totals.activation_bytes + math.prod(shape) * 4
    kwargs = {"num_classes": 5} if "F " in text + " " else {}
    for name, value in ((PARAMS, s.totals.params), (MEMORY, memory)):
        monkeypatch.setenv(name, str(value))
        build(text, shape, **kwargs)
        monkeypatch.setenv(name, str(value - 1))
        with pytest.raises(SizeError, match="more than the limit"):
            build(text, shape, **kwargs)
        monkeypatch.delenv(name)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_a_bad_limit_in_the_environment_is_one_line(monkeypatch, value):
    monkeypatch.setenv(PARAMS, value)
    with pytest.raises(SizeError) as err:
        size_limits()
    assert str(err.value) == (f"CNNLAB_MAX_PARAMS={value!r} is not a limit: give a positive "
                              "whole number, e.g. CNNLAB_MAX_PARAMS=2000000000 (the default is "
                              "500000000)")


def test_nothing_is_made_before_the_whole_text_and_every_shape_are_checked(monkeypatch):
    """A bad token at position 5 costs nothing: no layer is constructed before it is found."""
    made = []
    real = nn.Module.__init__

    def counting(self, *args, **kwargs):
        made.append(type(self).__name__)
        real(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "__init__", counting)
    with pytest.raises(SpecError, match=r"token 'C3D8' \(#5\) is a convolution, but its input "
                       "is already flat"):
        build("C3D64 C3D64 FC4096 FC4096 C3D8", (3, 64, 64))
    with pytest.raises(SizeError):
        build("C3D64 FC999999 F10", (3, 64, 64))
    assert made == []
    build("C3D4 F2", (1, 4, 4))
    assert made == ["Conv2d", "ReLU", "Flatten", "Linear", "SpecNet"]


def test_the_defaults_are_documented_where_users_read_them():
    docs = (ROOT / "docs" / "notation.md").read_text() + (ROOT / "README.md").read_text()
    for name, default in LIMITS.items():
        assert re.search(rf"`{name}`[^\n]*{default:_}", docs.replace(",", "_")), name


# ------------------------------------------------------------------------ cnnlab summary

@pytest.mark.parametrize("argv, message", [
    (["vgg16", "--input", "3x99999x99999"],
     ("error: 'vgg16' on input 3x99999x99999 needs 20.9 TiB per example for its input and "
     "activations (layer 'features.0' alone needs 2.3 TiB), more than the limit of 4.0 GiB; "
     "use a smaller input, or set CNNLAB_MAX_ACTIVATION_BYTES higher (in bytes)\n")),
    (["lenet5", "--input", "99999999999999999999x32x32"],
     ("error: --input '99999999999999999999x32x32': 99999999999999999999 is above "
     "2,147,483,647, the largest size a kernel takes; give a smaller input\n")),
    (["C3D8p9223372036854775808", "--input", "1x8x8"],
     ("error: token 'C3D8p9223372036854775808' (#1): the padding 9223372036854775808 is out of "
     "range: a number in the notation is at most 2,147,483,647; write a smaller padding\n")),
    (["FC100000000000000000000", "--input", "3x32x32"],
     ("error: token 'FC100000000000000000000' (#1): the number of units 100000000000000000000 "
     "is out of range: a number in the notation is at most 2,147,483,647; write a smaller "
     "number of units\n")),
])
def test_summary_refuses_absurd_sizes_quickly_in_one_line(capsys, argv, message):
    start = time.perf_counter()
    code, out, err = run(capsys, "summary", *argv)
    assert (code, out, err) == (2, "", message)
    assert time.perf_counter() - start < 10        # meta device: shapes, never terabytes


def test_summary_limit_can_be_raised(capsys, monkeypatch):
    monkeypatch.setenv(MEMORY, str(30 * 1024**4))
    code, out, _ = run(capsys, "summary", "vgg16", "--input", "3x99999x99999")
    assert code == 0 and "features.0" in out and "99999×99999×64" in out


def test_summary_on_the_meta_device_equals_the_real_one(capsys):
    for target, shape in (("lenet5", (1, 32, 32)), ("alexnet_cifar", (3, 32, 32))):
        real = summarize(models.create(target), shape).to_dict()
        code, out, _ = run(capsys, "summary", target, "--json")
        assert code == 0 and json.loads(out) == real


def test_only_cnnlab_errors_escape_for_the_fuzzers_findings():
    for text in ("C3D8p9223372036854775808", "FC100000000000000000000", "F999999999"):
        with pytest.raises(CnnlabError):
            build(text, (6, 3, 64))


def test_summarize_refuses_an_input_it_cannot_hold_before_allocating_it():
    net = models.create("lenet5")
    with pytest.raises(SizeError, match=r"^an input of 1x99999x99999 needs 37.3 GiB per example"):
        summarize(net, (1, 99999, 99999))
    with pytest.raises(CnnlabError, match=r"input_shape \(1, 1099511627776, 3\) has a size above"):
        summarize(net, (1, 2**40, 3))
    with torch.device("meta"):                  # on the meta device the input costs nothing
        meta = models.create("lenet5")
        with pytest.raises(CnnlabError, match="does not fit the model"):
            summarize(meta, (1, 99999, 99999))
