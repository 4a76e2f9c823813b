"""Convolutional autoencoders (8.5.2): tied weights (Eq. 8.5), switch unpooling, sizes restored
by every variant, both kernels."""

import doctest

import pytest
import torch
from _checks import kernels_agree

from cnnlab import models, ops
from cnnlab.errors import CnnlabError, ModelError, ShapeError
from cnnlab.models import autoencoder as family
from cnnlab.models.autoencoder import ROWS, ConvAutoencoder, Stage
from cnnlab.nn import Conv2d
from cnnlab.nn import autoencoder as layers
from cnnlab.nn.autoencoder import Deconv2d

AUTOENCODERS = list(ROWS)                   # the zoo's rows of section 8.5.2
CONV_ONLY = [n for n in AUTOENCODERS if models.create(n).code_units is None]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_zoo_lists_them_as_reconstruction_models_of_8_5_2():
    for name in AUTOENCODERS:
        assert models.info(name).section == "8.5.2"
        assert models.create(name).task == "reconstruction"


def test_parameter_counts_by_hand():
    # 16 filters 5x5x1 + 16 biases; the tied deconvolution adds only its 1 bias
    assert sum(p.numel() for p in models.create("cae").parameters()) == 16 * 25 + 16 + 1
    # untied: its own 16x1x5x5 filter too
    assert sum(p.numel() for p in models.create("cae_untied").parameters()) == 417 + 400
    # LeNet's C1 (156) and C3 (2,416), the deconvolutions' biases (6 + 1)
    assert sum(p.numel() for p in models.create("cae_lenet5").parameters()) == 156 + 2416 + 7


# -- Eq. 8.5: the deconvolution is the transposed, inverted encoder filter ----------------------

@pytest.mark.parametrize("padding, pad", [("valid", 0), ("half", 1)])
def test_a_tied_deconvolution_is_the_convolution_with_the_flipped_transposed_filter(padding,
                                                                                    pad):
    torch.manual_seed(0)
    conv = Conv2d(2, 3, 3, padding=padding).double()
    deconv = Deconv2d(conv).double()
    with torch.no_grad():
        deconv.bias.normal_()
    assert deconv.filter() is conv.weight and deconv.weight is None
    h = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    got = deconv(h, (6 + 2 * (1 - pad), 6 + 2 * (1 - pad)))
    w = conv.weight.detach()                                   # k x s x n x n
    n = w.shape[-1]
    # Eq. 8.5 index by index: u[s, k, i, j] = w[k, s, n - i + 1, n - j + 1] (1-based)
    u = torch.empty(w.shape[1], w.shape[0], n, n, dtype=w.dtype)
    for s in range(w.shape[1]):
        for k in range(w.shape[0]):
            for i in range(n):
                for j in range(n):
                    u[s, k, i, j] = w[k, s, n - 1 - i, n - 1 - j]
    # the chapter's deconvolution: a plain convolution with U, padded so the pair sums to F - 1
    expected = ops.conv(h, u, deconv.bias.detach(), padding=n - 1 - pad)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, ops.conv_transpose(h, w, deconv.bias.detach(), 1, pad))


def test_tied_weights_get_the_sum_of_both_gradients():
    torch.manual_seed(0)
    tied = models.create("cae_stacked").double()
    untied = models.create("cae_stacked", tied=False).double()
    untied.load_state_dict(tied.state_dict(), strict=False)      # same encoder and biases
    for name in ("deconv1", "deconv2"):                          # decoder filters = encoder's
        with torch.no_grad():
            untied.layer(name).weight.copy_(tied.layer(name).encoder.weight)
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    out_t, out_u = tied(x), untied(x)
    torch.testing.assert_close(out_t, out_u, rtol=0, atol=0)
    out_t.square().sum().backward()
    out_u.square().sum().backward()
    for conv, deconv in (("conv1", "deconv1"), ("conv2", "deconv2")):
        both = untied.layer(conv).weight.grad + untied.layer(deconv).weight.grad
        torch.testing.assert_close(tied.layer(conv).weight.grad, both, rtol=1e-12, atol=1e-14)
        assert untied.layer(deconv).weight.grad.abs().sum() > 0   # both uses contribute
    # one parameter: saved once, under the encoder's name
    assert not any(k.startswith("decoder.") and k.endswith(".weight") for k in tied.state_dict())


def test_unpooling_2x2_at_stride_2_leaves_exactly_three_quarters_zeros():
    x = (torch.randperm(2 * 3 * 8 * 8).float() + 1).view(2, 3, 8, 8)     # distinct, positive
    pooled, switches = ops.max_pool(x, 2, return_switches=True)
    back = ops.max_unpool(pooled, switches, 2, output_size=(8, 8))
    assert (back == 0).float().mean().item() == 0.75
    # the values copied are the maxima, at the places they came from
    assert torch.equal(back[back != 0], x[back != 0])
    assert torch.equal(ops.max_pool(back, 2), pooled)
    # the model's own unpooling layer does the same with the switches it kept
    ae = models.create("cae")
    seen = {}
    ae.layer("unpool1").register_forward_hook(lambda m, a, out: seen.update(out=out))
    with torch.no_grad():
        ae.layer("conv1").weight.zero_()
        ae.layer("conv1").bias.copy_(torch.arange(1.0, 17.0))    # every map constant > 0
        ae(x[:1, :1])
    # ties: max_pool picks one switch per pool, so still exactly one value in four
    assert (seen["out"] == 0).float().mean().item() == 0.75


# -- sizes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", AUTOENCODERS)
def test_every_variant_gives_back_its_input_size(name):
    model = models.create(name)
    shape = model.default_input_shape
    x = torch.rand(2, *shape)
    out = model(x)
    assert out.shape == x.shape
    code = model.forward_features(x)
    units = model.code_units
    assert tuple(code.shape) == ((2, *model.code_shape) if units is None else (2, units))


@pytest.mark.parametrize("name", CONV_ONLY)
@pytest.mark.parametrize("side", [13, 16, 17])          # odd sizes too: switches and strides
def test_a_spatial_code_restores_other_and_odd_sizes(name, side):
    model = models.create(name)
    side = max(side, model.min_input_size())
    x = torch.rand(1, 1, side, side + 1)                 # not even square
    assert model(x).shape == x.shape


@pytest.mark.parametrize("name", ["cae_fc", "ae_dense"])
def test_a_fully_connected_code_fixes_the_size_and_says_so(name):
    model = models.create(name)
    with pytest.raises(ShapeError, match=r"takes 28x28 images, got 16x16; build it with "
                                         r"input_size=16"):
        model(torch.rand(1, 1, 16, 16))
    small = models.create(name, input_size=16)
    assert small(torch.rand(3, 1, 16, 16)).shape == (3, 1, 16, 16)


def test_bad_images_are_one_line_errors():
    lenet = models.create("cae_lenet5")
    with pytest.raises(ShapeError, match=r"a 8x8 input is too small for this autoencoder: its "
                                         r"stages need at least 16x16") as err:
        lenet(torch.rand(1, 1, 8, 8))
    assert "\n" not in str(err.value)
    with pytest.raises(ShapeError, match=r"takes N x 1 x H x W images, got \(2, 3, 32, 32\); "
                                         r"build it with in_channels=3"):
        lenet(torch.rand(2, 3, 32, 32))
    assert models.create("cae_lenet5", in_channels=3)(torch.rand(1, 3, 32, 32)).shape[1] == 3
    with pytest.raises(ModelError, match=r"input_size=8 is too small for this autoencoder: "
                                         r"its stages need at least 16x16 inputs"):
        ConvAutoencoder([Stage(4, 5, "valid"), Stage(4, 5, "valid")], input_size=8,
                        code_units=8)
    with pytest.raises(ModelError, match="code_units must be a positive int, got 0"):
        ConvAutoencoder([Stage(4)], code_units=0)
    with pytest.raises(ShapeError, match="cannot give back 9"):       # the decoder's own check
        Deconv2d(Conv2d(1, 2, 3))(torch.rand(1, 2, 5, 5), (9, 9))


# -- the model interface ------------------------------------------------------------------------

def test_the_lenet_variant_has_lenet5_modern_s_encoder_layers():
    ae, lenet = models.create("cae_lenet5"), models.create("lenet5_modern")
    assert ae.encoder_layers == ("c1", "c3")
    for name in ae.encoder_layers:
        a, b = ae.layer(name), lenet.layer(name)
        assert (a.weight.shape, a.bias.shape) == (b.weight.shape, b.bias.shape)
        assert (a.padding, a.stride, a.dilation) == (b.padding, b.stride, b.dilation)
    assert ae.default_input_shape == lenet.default_input_shape == (1, 32, 32)
    assert list(ae.chapter_layers) == ["c1", "s2", "c3", "s4", "code", "u4", "d3", "u2", "d1"]


def test_codes_names_and_what_an_autoencoder_has_not():
    ae = models.create("cae", num_classes=10)          # the trainer passes it; unused
    assert ae.num_classes is None
    assert list(ae.chapter_layers) == ["conv1", "pool1", "code", "unpool1", "deconv1"]
    x = torch.rand(2, 1, 28, 28)
    assert ae.forward_features(x).shape == (2, 16, 14, 14)          # the code
    with pytest.raises(ModelError, match="no classification head"):
        ae.forward_head(ae.forward_features(x))
    with pytest.raises(ModelError, match="--init"):
        ae.reset_classifier(3)
    assert isinstance(ae.layer("deconv1"), Deconv2d)
    with pytest.raises(CnnlabError, match="did you mean deconv1"):
        ae.layer("deconv9")


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_every_parameter_learns(name):
    torch.manual_seed(0)
    model = models.create(name, input_size=16) if name != "cae_lenet5" else models.create(name)
    x = torch.rand(2, *model.default_input_shape)
    (model(x) - x).square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: {pname} gets no gradient"


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_both_kernels_agree_in_float64_at_odd_sizes(name):
    torch.manual_seed(0)
    fixed = models.create(name).code_units is not None or name == "cae_lenet5"
    model = (models.create(name, input_size=15) if fixed and name != "cae_lenet5"
             else models.create(name)).double()
    side = 15 if name != "cae_lenet5" else 17
    x = torch.rand(2, 1, side, side, dtype=torch.float64)
    kernels_agree(model, x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("module", [family, layers])
def test_the_docstring_examples_run(module):
    failures, tried = doctest.testmod(module)
    assert tried >= 2 and failures == 0
