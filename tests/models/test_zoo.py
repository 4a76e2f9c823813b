"""One parametrized test over the registry (as torchvision's test_models.py).

Models with small inputs, at most 20 M parameters and at most 400 M multiply-adds per image
(LeNet, AlexNet/VGG for CIFAR, ResNet-20 to 110, DenseNet-BC-100, ...) run for real, on both
kernels. The others (ImageNet-size models, WRN-28-10, DenseNet-BC-250) are checked for shapes
and interface on the meta device, which tracks shapes without memory or arithmetic; the smallest
of them per code path runs forward and backward for real at its input size, and their families'
own tests run them, or smaller members of the family, for real.
"""

import pytest
import torch
from _checks import kernels_agree

from cnnlab import models
from cnnlab.errors import CnnlabError, ModelError, RegistryError
from cnnlab.inspect import summarize
from cnnlab.models.lenet import LeNet5


def _cheap(name):
    """Small enough to run for real in float64 on both kernels in a second or two."""
    shape = models.info(name).input_shape
    if shape[-1] > 64:
        return False
    model = models.info(name).meta_model
    if sum(p.numel() for p in model.parameters()) > 20_000_000:
        return False
    return summarize(model, shape).totals.macs <= 400_000_000


SMALL = [n for n in models.names() if _cheap(n)]
# the tests of class scores; autoencoders (task "reconstruction") have their own in
# test_autoencoder.py, and share the kernel and layer-name tests here
CLASSIFIERS = [n for n in models.names() if models.info(n).task == "classification"]
SMALL_CLASSIFIERS = [n for n in SMALL if n in CLASSIFIERS]
IMAGENET = [n for n in models.names() if models.info(n).input_shape[-1] > 64]


def _example(name, n, device="cpu", dtype=torch.float32, shape=None):
    """``n`` random inputs of the model's kind: pixels (images, clips), or token ids (a text
    model: ids 1 to 19, none of them the padding 0)."""
    shape = shape or models.info(name).input_shape
    if not models.info(name).meta_model.default_input_dtype.is_floating_point:
        return torch.randint(1, 20, (n, *shape), device=device)
    return torch.randn(n, *shape, device=device, dtype=dtype)


def _build(name, device, **kwargs):
    with torch.device(device):
        return models.create(name, **kwargs)


def _device(name):
    return "cpu" if name in SMALL else "meta"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_output_shape_at_an_unusual_class_count(name):
    device = _device(name)
    model = _build(name, device, num_classes=42)
    shape = models.info(name).input_shape
    assert tuple(model.default_input_shape) == shape
    assert model(_example(name, 2, device)).shape == (2, 42)


@pytest.mark.parametrize("name", SMALL_CLASSIFIERS)
def test_forward_shape_and_every_parameter_learns(name):
    torch.manual_seed(0)
    model = models.create(name, num_classes=42)
    shape = models.info(name).input_shape
    assert tuple(model.default_input_shape) == shape
    x = _example(name, 2)
    out = model(x)
    assert out.shape == (2, 42)
    if model.stochastic_paths:          # a training pass may skip blocks; the full net may not
        out = model.eval()(x)
    loss = model.loss(out, torch.tensor([0, 41])) if hasattr(model, "loss") else out.sum()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: {pname} gets no gradient"


def _kernel_input(name):
    """Half the model's input side where every layer still fits (the fully convolutional
    CIFAR nets, a quarter of the arithmetic: the same layers, fewer positions), else its own;
    a sentence or a clip keeps its length."""
    shape = models.info(name).input_shape
    if len(shape) != 3:
        return shape
    c, h, w = shape
    half = (c, h // 2, w // 2)
    try:
        with torch.device("meta"):
            models.create(name).eval()(torch.zeros(1, *half))
    except (CnnlabError, RuntimeError, ValueError):
        return (c, h, w)
    return half


@pytest.mark.parametrize("name", SMALL)
def test_both_kernels_give_equal_results(name):
    torch.manual_seed(0)
    model = models.create(name).double().eval()
    # two images: enough to mix examples in a batch (im2col)
    x = _example(name, 2, dtype=torch.float64, shape=_kernel_input(name))
    # untrained deep nets in eval mode grow their activations with depth (gradients reach 1e14
    # in pre-activation ResNet-164): the absolute tolerance follows each tensor's scale
    kernels_agree(model, x, scale_atol=True)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_common_interface(name):
    device = _device(name)
    model = _build(name, device, num_classes=7).eval()
    x = _example(name, 2, device)
    feats = model.forward_features(x)
    # images: the last volume (N, D, H, W); a sentence's or clip's own form otherwise
    assert feats.dim() == 4 if len(models.info(name).input_shape) == 3 else feats.dim() >= 2
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.dim() == 2
    if device == "cpu":
        torch.testing.assert_close(model.forward_head(feats), model(x))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)


def test_unknown_model_names_near_matches():
    with pytest.raises(ModelError, match=r"unknown model 'lenet': did you mean lenet5"):
        models.create("lenet")


@pytest.mark.parametrize("name, classes, params", [("resnet50", 1000, 25_557_032),
                                                    ("resnet20", 10, 269_722)])
def test_default_class_count_is_the_published_head(name, classes, params):
    """create("resnet50") is torchvision's resnet50 (its weights load), a CIFAR model has 10."""
    with torch.device("meta"):
        model = models.create(name)
    assert model.num_classes == classes
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_num_classes(bad):
    with pytest.raises(ModelError, match="num_classes must be a positive int"):
        models.create("lenet5", num_classes=bad)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered") as err:
        models.register("lenet5", section="8.2.7")(lambda num_classes=10, in_channels=1: None)
    assert isinstance(err.value, CnnlabError)
    assert models.info("lenet5").builder is LeNet5


def test_a_builder_must_name_its_arguments():
    with pytest.raises(RegistryError, match=r"the builder of 'lenet_x' takes \*args or \*\*kwargs"):
        models.register("lenet_x", section="8.2.7")(lambda **kw: LeNet5(**kw))
    assert "lenet_x" not in models.names()


@pytest.mark.parametrize("name, key, match", [
    ("vgg16", "drop", (r"vgg16 has no argument 'drop': did you mean dropout\? it takes dropout "
                      r"\(besides num_classes and in_channels\)")),
    ("vgg16", "batch_norm", r"vgg16 has no argument 'batch_norm': it takes dropout"),  # vgg16_bn's
    ("resnet50", "norm", (r"resnet50 has no argument 'norm': did you mean norm_layer\? it takes "
                         r"zero_init_residual, norm_layer, stochastic_depth, stochastic_depth_mode")),
    ("lenet5", "dropout", r"lenet5 has no argument 'dropout': it takes rbf_j \(besides"),
])
def test_create_checks_keyword_arguments_against_the_builder(name, key, match):
    with pytest.raises(ModelError, match=match):
        models.create(name, **{key: 0.1})


def test_bad_values_for_named_arguments_are_cnnlab_errors():
    with torch.device("meta"), pytest.raises(ModelError, match=r"dropout is the probability of "
                                                               r"dropping a unit, in \[0, 1\].*"
                                                               r"got dropout=1.5"):
        models.create("vgg16", dropout=1.5)
    with pytest.raises(ModelError, match="in_channels must be a positive int, got 0"):
        models.create("lenet5", in_channels=0)
    with torch.device("meta"):      # norm_layer is an argument of every ImageNet ResNet
        model = models.create("resnet50", norm_layer=lambda c: torch.nn.GroupNorm(32, c))
    assert isinstance(model.bn1, torch.nn.GroupNorm)


def test_the_input_shape_is_read_from_the_model_without_touching_the_generator():
    entry = models.ModelInfo("grey_vgg", lambda num_classes=10, in_channels=1: models.create(
        "vgg_cifar", num_classes=num_classes, in_channels=in_channels), "8.4.3", "", {})
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert entry.input_shape == (1, 32, 32)             # built once, at its defaults, on meta
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", models.names())
def test_layers_by_the_chapters_names(name):
    model = models.info(name).meta_model        # create(name) on meta, built once and shared
    assert model.chapter_layers, f"{name} names none of its layers"
    for chapter_name, path in model.chapter_layers.items():
        assert model.layer(chapter_name) is model.get_submodule(path)
    with pytest.raises(ModelError, match="has no layer 'fc99'"):
        model.layer("fc99")


LARGE = [n for n in CLASSIFIERS if n not in SMALL]


def _code_path(name):
    """What a real run of ``name`` exercises beyond the meta-device checks: the model's class,
    its input shape and the kinds of modules in it (grouped convolutions a kind of their own)."""
    model = models.info(name).meta_model
    kinds = {type(m).__name__ + ("/grouped" if isinstance(m, torch.nn.Conv2d) and m.groups > 1
                                 else "") for m in model.modules()}
    return type(model).__name__, models.info(name).input_shape, frozenset(kinds)


def _one_per_code_path(names):
    """The model with the fewest parameters of each code path: vgg11_bn stands for vgg13_bn,
    vgg16_bn and vgg19_bn (the same modules, more of them), resnext50_32x4d for resnet101 and
    wide_resnet50_2. A path whose kinds of modules all occur in another of the same class and
    input shape is run by that one's model (vgg11 is vgg11_bn without the batch norms)."""
    paths = {}
    for name in names:
        paths.setdefault(_code_path(name), []).append(name)
    kept = [(cls, shape, kinds) for cls, shape, kinds in paths
            if not any((c, s) == (cls, shape) and kinds < k for c, s, k in paths)]
    return [min(paths[path], key=lambda n: sum(p.numel() for p in models.info(n).meta_model
                                               .parameters()))
            for path in kept]


@pytest.mark.slow
@pytest.mark.parametrize("name", _one_per_code_path(LARGE))
def test_forward_and_backward_at_the_native_input_size(name):
    """The models the tests above only shape-check on the meta device run once for real: one
    per code path (each of the others is the same modules in other numbers or sizes)."""
    torch.manual_seed(0)
    model = models.create(name, num_classes=1000 if name in IMAGENET else 10)
    x = _example(name, 1)
    out = model(x)
    scores = out[0] if isinstance(out, tuple) else out
    assert scores.shape == (1, model.num_classes)
    loss = model.loss(out, torch.tensor([3])) if hasattr(model, "loss") else scores.sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("name", [n for n in CLASSIFIERS if "in_channels" in models.info(n)
                                  .arguments()])
def test_in_channels_reaches_the_first_layer_and_the_input_shape(name):
    """Grey images (MNIST) into an RGB architecture, or colour into LeNet: the trainer checks
    the data against ``default_input_shape``, so it must follow ``in_channels``."""
    channels = 3 if models.info(name).input_shape[0] == 1 else 1
    model = _build(name, "meta", in_channels=channels).eval()
    shape = (channels, *models.info(name).input_shape[1:])
    assert tuple(model.default_input_shape) == shape
    classes = models.info(name).meta_model.num_classes    # the builder's own default
    assert model(torch.zeros(2, *shape, device="meta")).shape == (2, classes)
