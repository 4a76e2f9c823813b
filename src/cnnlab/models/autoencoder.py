"""Convolutional autoencoders (8.5.2): encoder, code, decoder, trained to give back their input.

The chapter's simplest one has seven layers counting the input:

    input -> conv1 -> ReLU -> pool1 (switches kept) = code -> unpool1 (same switches)
          -> ReLU -> deconv1 -> reconstruction

Every variant here is a row of one class, :class:`ConvAutoencoder`, built from
:class:`Stage` rows (a conv, its ReLU and optionally a max-pool), mirrored by the decoder in
reverse order (unpool with the stored switches, ReLU, deconvolution):

- ``cae`` / ``cae_untied``: the seven-layer form, deconvolution tied to the encoder's filter
  (Eq. 8.5: the same parameter, transposed and spatially inverted) or with a filter of its
  own;
- ``cae_stacked``: two conv/pool stages;
- ``cae_strided``: strided convolutions instead of pooling, undone by fractionally strided
  ones (stride S: S - 1 zeros between input rows and columns);
- ``cae_dilated``: dilated filters (zeros inside the filter), half padding;
- ``cae_fc``: a fully connected code (flatten -> FC -> code -> FC -> reshape) after a strided
  encoder, so the code alone decodes (no switches), for applications;
- ``ae_dense``: no convolution at all, the traditional autoencoder of Fig. 8.17(a), with the
  same code size as the stacked ones, for comparison;
- ``cae_lenet5``: an encoder of exactly LeNet-5 (modern)'s C1 and C3 (names, shapes,
  paddings), so ``cnnlab train lenet5_modern --init RUN`` starts from it (pretraining).

Paddings of a conv/deconv pair sum to F - 1 in the chapter's terms (half + half, or valid +
full), which restores every size; pooling restores odd sizes from its switches and the sizes
it recorded, and a strided pair picks the ``output_padding`` that gives the size back.

>>> from cnnlab import models
>>> ae = models.create("cae")
>>> x = torch.rand(2, 1, 28, 28)
>>> ae(x).shape, ae.forward_features(x).shape          # reconstruction, code
(torch.Size([2, 1, 28, 28]), torch.Size([2, 16, 14, 14]))
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab import ops
from cnnlab.errors import ModelError, ShapeError
from cnnlab.models._registry import preset, register
from cnnlab.nn.autoencoder import Deconv2d
from cnnlab.nn.classifier import Classifier

RECONSTRUCTION = "reconstruction"     # the trainer's task for these models (cnnlab.train.tasks)


@dataclass(frozen=True)
class Stage:
    """One encoder stage: ``out_channels`` filters of ``kernel`` x ``kernel`` (``padding``:
    an int or 'valid' / 'half' / 'full'; ``stride``, ``dilation``), a ReLU, then a
    ``pool`` x ``pool`` max-pool at stride ``pool`` (0: none). ``names``: the chapter's names
    of its conv, pool, unpool and deconv layers (default: conv<i>, pool<i>, unpool<i>,
    deconv<i>)."""

    out_channels: int
    kernel: int = 5
    padding: int | str = "half"
    stride: int = 1
    dilation: int = 1
    pool: int = 2
    names: tuple[str, str, str, str] | None = None

    def layer_names(self, i: int) -> tuple[str, str, str, str]:
        return self.names or (f"conv{i}", f"pool{i}", f"unpool{i}", f"deconv{i}")


class ConvAutoencoder(Classifier):
    """A convolutional autoencoder (8.5.2): :class:`Stage` rows, their mirror image as the
    decoder, a spatial code (or, with ``code_units``, a fully connected one).

    ``tied``: each deconvolution uses its encoder convolution's filter (Eq. 8.5), else one of
    its own. ``input_size``: the side of the square images the model is made for (the data
    are sized to it); only a fully connected code fixes it, a spatial code takes any size the
    convolutions fit. ``num_classes`` is accepted (the trainer passes the data set's) and
    unused: an autoencoder has no output classes.

    The output is the reconstruction before any squashing: pixels for the squared or L1
    error, logits for binary cross-entropy (the trainer's task applies the sigmoid).
    """

    task: ClassVar[str] = RECONSTRUCTION
    output_layer = "decoder"
    code_act: nn.Module
    decode_fc: nn.Module

    def __init__(self, stages: Sequence[Stage], num_classes: int | None = None,
                 in_channels: int = 1, input_size: int = 28, tied: bool = True,
                 code_units: int | None = None) -> None:
        super().__init__()
        if not stages and code_units is None:
            raise ModelError("an autoencoder needs at least one stage or a fully connected "
                             "code (code_units)")
        if code_units is not None and (isinstance(code_units, bool) or
                                       not isinstance(code_units, int) or code_units < 1):
            raise ModelError(f"code_units must be a positive int, got {code_units!r}")
        self.stages = tuple(stages)
        self._min_side: int | None = None          # min_input_size(), worked out once
        self.in_channels, self.input_size, self.tied = in_channels, input_size, bool(tied)
        self.default_input_shape = (in_channels, input_size, input_size)
        self.num_classes = None
        encoder: OrderedDict[str, nn.Module] = OrderedDict()
        convs = []
        channels = in_channels
        for i, s in enumerate(self.stages, 1):
            conv_name, pool_name, _, _ = s.layer_names(i)
            conv = cnn.Conv2d(channels, s.out_channels, s.kernel, s.stride, s.padding,
                              s.dilation)
            encoder[conv_name], encoder[f"{conv_name}_act"] = conv, cnn.ReLU()
            if s.pool:
                encoder[pool_name] = cnn.MaxPool2d(s.pool, return_indices=True)
            convs.append(conv)
            channels = s.out_channels
        # the decoder mirrors the stages, last first, in the order it runs
        decoder: OrderedDict[str, nn.Module] = OrderedDict()
        for i in reversed(range(len(self.stages))):
            s, (_, _, unpool_name, deconv_name) = self.stages[i], self.stages[i].layer_names(i + 1)
            if s.pool:
                decoder[unpool_name] = cnn.MaxUnpool2d(s.pool)
            decoder[f"{deconv_name}_act"] = cnn.ReLU()
            decoder[deconv_name] = Deconv2d(convs[i], self.tied)
        self.encoder = nn.ModuleDict(encoder)
        self.code_units = code_units
        self.code_shape = self._code_shape(input_size)             # C x h x w before any FC
        self.code: nn.Module = nn.Identity()                        # a spatial code: itself
        if code_units is not None:
            c, h, w = self.code_shape
            self.code = nn.Sequential(OrderedDict(flatten=cnn.Flatten(),
                                                  fc=cnn.Linear(c * h * w, code_units)))
            self.code_act = cnn.ReLU()
            self.decode_fc = cnn.Linear(code_units, c * h * w)
        self.decoder = nn.ModuleDict(decoder)
        # the layers a classifier can take over (pretraining): the encoder's weights
        self.encoder_layers = tuple(s.layer_names(i)[0] for i, s in enumerate(self.stages, 1)
                                    ) + (("code",) if code_units is not None else ())
        named = [(n, f"encoder.{n}") for n in encoder] + [("code", "code")] + (
            [("decode", "decode_fc")] if code_units is not None else []) + [
            (n, f"decoder.{n}") for n in decoder]
        self.chapter_layers = {n: path for n, path in named if not n.endswith("_act")}

    # -- sizes ---------------------------------------------------------------------------------

    def _sizes(self, side: int) -> list[tuple[int, int]] | None:
        """(after conv, after pool) sides of each stage for a ``side`` x ``side`` input; None
        when a filter does not fit or a map shrinks to nothing."""
        out = []
        for s in self.stages:
            k = s.dilation * (s.kernel - 1) + 1
            pad = ops.resolve_padding(s.padding, (s.kernel,), (s.dilation,))[0]
            if side + 2 * pad < k:
                return None
            side = ops.conv_output_length(side, s.kernel, s.stride, pad, s.dilation)
            conv_side = side
            if s.pool:
                side = ops.conv_output_length(side, s.pool, s.pool)
            if side < 1:
                return None
            out.append((conv_side, side))
        return out

    def min_input_size(self) -> int:
        """The smallest square input side every stage fits."""
        if self._min_side is None:
            side = 1
            while self._sizes(side) is None:
                side += 1
            self._min_side = side
        return self._min_side

    def _code_shape(self, side: int) -> tuple[int, int, int]:
        sizes = self._sizes(side)
        if sizes is None:
            raise ModelError(f"input_size={side} is too small for this autoencoder: its "
                             f"stages need at least {self.min_input_size()}x"
                             f"{self.min_input_size()} inputs")
        last = sizes[-1][1] if sizes else side
        channels = self.stages[-1].out_channels if self.stages else self.in_channels
        return (channels, last, last)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"this autoencoder takes N x {self.in_channels} x H x W images, "
                             f"got {tuple(x.shape)}; build it with in_channels="
                             f"{x.shape[1] if x.dim() == 4 else '...'} or give "
                             f"{self.in_channels}-channel images")
        h, w = x.shape[2:]
        if self.code_units is not None and (h, w) != (self.input_size, self.input_size):
            raise ShapeError(f"a fully connected code fixes the input size: this autoencoder "
                             f"takes {self.input_size}x{self.input_size} images, got {h}x{w}; "
                             f"build it with input_size={h} (square images) or resize them")
        if min(h, w) < self.min_input_size():
            raise ShapeError(f"a {h}x{w} input is too small for this autoencoder: its stages "
                             f"need at least {self.min_input_size()}x{self.min_input_size()}; "
                             "give larger images")

    # -- encoder, code, decoder ---------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Size, ...]],
                                                list[torch.Tensor | None]]:
        """``(code, sizes, switches)``: the code, each stage's (input, pre-pool) sizes and its
        pooling switches (None without pooling), which the decoder needs."""
        self._check_input(x)
        sizes: list[tuple[torch.Size, ...]] = []
        switches: list[torch.Tensor | None] = []
        for i, s in enumerate(self.stages, 1):
            conv_name, pool_name, _, _ = s.layer_names(i)
            before = x.shape[2:]
            x = self.encoder[f"{conv_name}_act"](self.encoder[conv_name](x))
            pooled = x.shape[2:]
            where = None
            if s.pool:
                x, where = self.encoder[pool_name](x)           # N x C x h/P x w/P, switches
            sizes.append((before, pooled))
            switches.append(where)
        code = self.code(x)
        if self.code_units is not None:
            code = self.code_act(code)                          # N x code_units
        return code, sizes, switches

    def decode(self, code: torch.Tensor, sizes: Sequence[tuple[torch.Size, ...]],
               switches: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """The reconstruction from a code and what :meth:`encode` recorded."""
        x = code
        if self.code_units is not None:
            x = self.decode_fc(x).view(len(x), *self.code_shape)    # N x C x h x w
        for i in reversed(range(len(self.stages))):
            s = self.stages[i]
            _, _, unpool_name, deconv_name = s.layer_names(i + 1)
            before, pooled = sizes[i]
            where = switches[i]
            if s.pool and where is not None:
                x = self.decoder[unpool_name](x, where, pooled)     # zeros off the switches
            x = self.decoder[f"{deconv_name}_act"](x)
            x = self.decoder[deconv_name](x, before)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The code: N x C x h x w (spatial) or N x code_units (fully connected)."""
        return self.encode(x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise ModelError("an autoencoder has no classification head (its decoder needs the "
                         "switches as well as the code): call the model for reconstructions, "
                         "forward_features for codes, or name the layer 'code'")

    def reset_classifier(self, num_classes: int) -> None:
        raise ModelError("an autoencoder has no output layer of classes to reset; train a "
                         "classifier with --init from the autoencoder's run instead")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code, sizes, switches = self.encode(x)
        return self.decode(code, sizes, switches)


# -- the zoo's rows ------------------------------------------------------------------------------

_SEVEN = (Stage(16, 5, "half", pool=2),)
_STACKED = (Stage(16, 5, "half", pool=2), Stage(8, 5, "half", pool=2))
_STRIDED = (Stage(16, 3, 1, stride=2, pool=0), Stage(8, 3, 1, stride=2, pool=0))
_DILATED = (Stage(16, 3, "half", dilation=2, pool=2), Stage(8, 3, "half", dilation=2, pool=2))
_FC = (Stage(16, 3, 1, stride=2, pool=0), Stage(32, 3, 1, stride=2, pool=0))
# LeNet-5 (modern)'s C1 and C3 with its pools S2 and S4, valid convolutions on 32x32 inputs;
# the deconvolutions are full (valid + full = F - 1)
_LENET = (Stage(6, 5, "valid", pool=2, names=("c1", "s2", "u2", "d1")),
          Stage(16, 5, "valid", pool=2, names=("c3", "s4", "u4", "d3")))
# SGD on the per-pixel error takes a larger step than cross-entropy does; no weight decay
# (it pulls the reconstruction towards zero). Measured on 8x8 and 16x16 digits.
_RECIPE = {"lr": 0.1, "weight_decay": 0.0}

_SEVEN_FORM = "the 7-layer convolutional autoencoder"
ROWS: dict[str, tuple[tuple[Stage, ...], dict[str, object], str]] = {
    "cae": (_SEVEN, {}, f"{_SEVEN_FORM}, deconvolution tied to the encoder (Eq. 8.5)"),
    "cae_untied": (_SEVEN, {"tied": False}, f"{_SEVEN_FORM}, untied deconvolution"),
    "cae_stacked": (_STACKED, {}, "two conv/pool stages, tied; 8x7x7 code"),
    "cae_strided": (_STRIDED, {}, "strided encoder, fractionally strided decoder, tied"),
    "cae_dilated": (_DILATED, {}, "dilated 3x3 filters, half padding, tied"),
    "cae_fc": (_FC, {"code_units": 32}, "strided encoder, fully connected 32-unit code"),
    "ae_dense": ((), {"code_units": 392}, "no convolution, a 392-unit code (Fig. 8.17a)"),
    "cae_lenet5": (_LENET, {"input_size": 32},
                   "encoder = LeNet-5 (modern)'s C1 and C3, to pretrain it (--init)"),
}

for _name, (_stages, _fixed, _summary) in ROWS.items():
    register(_name, section="8.5.2", recipe=_RECIPE, summary=_summary)(
        preset(ConvAutoencoder, _stages, **_fixed))
