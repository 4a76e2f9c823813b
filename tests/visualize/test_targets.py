"""Targets: their forms, their values, the probe's hook, and every bad-input message."""

import doctest

import pytest
import torch

from cnnlab import models
from cnnlab.errors import ModelError, ShapeError
from cnnlab.visualize import targets as targets_module
from cnnlab.visualize.targets import (
    Probe,
    Target,
    as_target,
    as_targets,
    check_images,
    inspecting,
    layer_names,
    parse_target,
    resolve_layer,
    select,
    target_values,
)


def test_the_modules_example_runs():
    failures, tried = doctest.testmod(targets_module)
    assert tried > 0 and failures == 0


@pytest.mark.parametrize("spec, expected", [
    (3, Target(None, 3)),
    (("c3", 7), Target("c3", 7)),
    (("c3", 7, (2, 4)), Target("c3", 7, (2, 4))),
    (("c3", 7, None), Target("c3", 7)),
    (("seq", 1, 5), Target("seq", 1, (5,))),
    ("4", Target(None, 4)),
    ("conv5:17", Target("conv5", 17)),
    ("conv5:17@4,6", Target("conv5", 17, (4, 6))),
    ("features.c1:2", Target("features.c1", 2)),
    (Target("f6", 1), Target("f6", 1)),
])
def test_target_forms(spec, expected):
    assert as_target(spec) == expected


def test_text_round_trips():
    for t in (Target(None, 3), Target("conv5", 17), Target("conv5", 17, (4, 6))):
        assert parse_target(str(t).replace("class ", "")) == t


def test_one_target_or_a_list():
    assert as_targets(("c3", 1)) == [Target("c3", 1)]
    assert as_targets([1, "c3:2"]) == [Target(None, 1), Target("c3", 2)]
    with pytest.raises(ShapeError, match="no targets given"):
        as_targets([])


@pytest.mark.parametrize("text", ["conv5:", "conv5:x", "conv5:3@", "conv5:3@1,", ":3", "3@1 2", ""])
def test_bad_target_text(text):
    with pytest.raises(ShapeError, match=r"cannot read target .*: write a class \(3\), a channel"):
        parse_target(text)


@pytest.mark.parametrize("spec, match", [
    (True, "got True"),
    (-1, "int >= 0, got -1"),
    (("c3", -2), "channel index must be an int >= 0, got -2"),
    (("c3", 1.5), "got 1.5"),
    (("c3", 1, (2, -1)), "position index must be an int >= 0, got -1"),
    ((1, 2), r"got \(1, 2\); e.g. 3 or \('conv5', 17\)"),
    (2.0, "got 2.0"),
])
def test_bad_target_values(spec, match):
    with pytest.raises(ShapeError, match=match):
        as_target(spec)


def test_layer_names_are_the_chapters(lenet):
    assert layer_names(lenet) == ["c1", "s2", "c3", "s4", "c5", "f6", "output"]
    assert resolve_layer(lenet, "c3") is lenet.features.c3
    assert resolve_layer(lenet, "features.c3") is lenet.features.c3       # module paths too


def test_unknown_layer_lists_the_names_and_near_matches(lenet):
    with pytest.raises(ModelError) as error:
        resolve_layer(lenet, "c7")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("LeNet5Modern has no layer 'c7': did you mean ")
    assert message.endswith("its layers are c1, s2, c3, s4, c5, f6, output")
    assert "c3" in message.split("?")[0]
    with pytest.raises(ModelError, match=r"no layer 'zzz': its layers are c1"):
        resolve_layer(lenet, "zzz")                                       # nothing near


def _hooked(model, layer, x):
    kept = {}
    handle = resolve_layer(model, layer).register_forward_hook(lambda m, i, o: kept.update(o=o))
    try:
        scores = model.eval()(x)
    finally:
        handle.remove()
        model.train()
    return scores, kept["o"]


def test_values_are_the_scores_and_the_units(lenet, images):
    x = images(lenet, 3)
    scores, c3 = _hooked(lenet, "c3", x)
    _, f6 = _hooked(lenet, "f6", x)
    values = target_values(lenet.eval(), x, [2, ("c3", 5), ("c3", 5, (2, 3)), ("f6", 3)])
    lenet.train()
    assert values.shape == (3, 4)
    torch.testing.assert_close(values[:, 0], scores[:, 2])
    torch.testing.assert_close(values[:, 1], c3[:, 5].flatten(1).max(dim=1).values)
    torch.testing.assert_close(values[:, 2], c3[:, 5, 2, 3])
    torch.testing.assert_close(values[:, 3], f6[:, 3])
    mean = target_values(lenet.eval(), x, ("c3", 5), reduce="mean")
    lenet.train()
    torch.testing.assert_close(mean[:, 0], c3[:, 5].mean(dim=(1, 2)))


def test_the_strongest_unit_takes_the_whole_gradient_even_among_ties():
    maps = torch.zeros(1, 2, 3, 3, requires_grad=True)     # every unit ties at 0
    select(maps, Target("m", 1)).sum().backward()
    assert maps.grad.sum() == 1 and maps.grad.count_nonzero() == 1
    assert maps.grad[0, 1, 0, 0] == 1                       # the first of the strongest


@pytest.mark.parametrize("spec, match", [
    (("c3", 16), r"channel 16 is out of range: layer 'c3' has 16 channels \(0..15\)$"),
    (10, r"class 10 is out of range: the model has 10 classes \(0..9\)$"),
    (("c3", 0, (10, 0)), (r"position \(10, 0\) lies outside layer 'c3', which has a 10x10 map; "
                         r"give 2 indices below \(10, 10\)")),
    (("c3", 0, (3,)), r"position \(3,\) lies outside layer 'c3'.*give 2 indices"),
    (("f6", 0, (1,)), (r"position \(1,\) given, but layer 'f6' has no spatial map; drop the "
                      "position")),
])
def test_targets_that_do_not_fit_the_layer(lenet, images, spec, match):
    with pytest.raises(ShapeError, match=match):
        target_values(lenet, images(lenet, 1), spec)


def test_the_probes_hook_is_removed_after_the_block_also_on_error(lenet, images):
    module = lenet.features.c3
    before = len(module._forward_hooks)
    with Probe(lenet, "c3") as probe:
        assert len(module._forward_hooks) == before + 1
        lenet(images(lenet, 1))
    assert probe.output.shape == (1, 16, 10, 10)
    assert len(module._forward_hooks) == before
    with pytest.raises(ShapeError), Probe(lenet, "c3"):
        lenet(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    assert len(module._forward_hooks) == before
    with pytest.raises(ShapeError), Probe(lenet, "c3"):                   # and on a bad target
        target_values(lenet, images(lenet, 1), ("c3", 99))
    assert len(module._forward_hooks) == before


def test_a_probe_of_a_layer_that_did_not_run(lenet):
    with Probe(lenet, "c3") as probe:
        pass
    with pytest.raises(ModelError, match="layer 'c3' did not run"):
        _ = probe.output


@pytest.mark.parametrize("x, match", [
    ([[0.0]], "images must be a tensor"),
    (torch.zeros(2, 1, 32, 32, dtype=torch.uint8), "floating point.*torch.uint8"),
    (torch.zeros(0, 1, 32, 32), r"no images given \(shape \(0, 1, 32, 32\)\)"),
    (torch.zeros(2, 1, 28, 28), (r"\(2, 1, 28, 28\) do not fit LeNet5Modern, which takes "
                                "N x 1 x 32 x 32$")),
    (torch.zeros(1, 32, 32), r"add a batch dimension"),
    (torch.zeros(()), r"images of shape \(\) do not fit"),
])
def test_images_that_do_not_fit(lenet, x, match):
    with pytest.raises(ShapeError, match=match):
        check_images(lenet, x)


def test_images_fit():
    x = torch.zeros(2, 1, 32, 32)

    with torch.device("meta"):
        model = models.create("lenet5_modern")
    assert check_images(model, x) is x
    assert check_images(torch.nn.Identity(), torch.zeros(2, 5)) is not None   # no declared shape


def test_inspecting_restores_modes_and_flags_also_on_error(build):
    model = build("lenet5_modern")
    model.head.eval()
    model.output.bias.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="inside"), inspecting(model):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
