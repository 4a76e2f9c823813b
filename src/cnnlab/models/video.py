"""Video classifiers (8.6.5): 3-D convolutions, and 2-D or 3-D CNNs under a recurrent net.

A clip is a volume (C, T, H, W): ``C`` colour channels, ``T`` frames of ``H`` x ``W``. The
chapter's three ways to classify it are here, plus the baseline they are measured against:

- ``c3d`` and ``c3d_mnist``: 3-D CNNs, VGG generalised to time as in Tran et al. 2015 (C3D, the
  chapter's [500]): every convolution 3x3x3 at stride 1, padded to keep the volume, each pool
  2x2x2 except the first, 1x2x2, which keeps the frames ("not to merge the temporal signal too
  early"). ``c3d`` is the published network for 3x16x112x112 clips (fc6 and fc7 of 4096 units,
  487 Sports-1M classes); ``c3d_mnist`` the same rule at Moving-MNIST's size, ending in global
  average pooling and with batch normalisation after each convolution (``batch_norm=True``,
  torch's, not the chapter's; the sequence models have it too);
- ``cnn_lstm``: a 2-D CNN on each frame, an LSTM over the frame features, the classifier on its
  last state (8.6.5: "a recurrent network is used to carry over states from one frame to the
  next");
- ``c3d_lstm``: a 3-D CNN on each segment of ``segment`` frames, an LSTM over the segments;
- ``frame_average``: the single-frame baseline: the 2-D CNN and a classifier on each frame, the
  frames' scores averaged. The classifier is linear, so that average is the classifier of the
  time-averaged features: order and motion are lost, as the chapter's claim wants.

The small models' default input is (1, 16, 64, 64): Moving-MNIST's grey 64x64 frames (``cnnlab
make-data moving-mnist``) and C3D's 16-frame clips; ``frames``, ``size`` and ``in_channels``
change it. Their convolutions and pools run on :mod:`cnnlab.ops` (both kernels); the LSTM is
torch's ``nn.LSTM`` on either.

>>> model = create("cnn_lstm", num_classes=4)                           # doctest: +SKIP
>>> model(torch.zeros(2, 1, 16, 64, 64)).shape                          # doctest: +SKIP
torch.Size([2, 4])
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab import ops
from cnnlab.errors import ModelError, ShapeError
from cnnlab.models._registry import preset, register
from cnnlab.nn.classifier import Classifier, check_num_classes
from cnnlab.nn.layers import check_dropout
from cnnlab.spec import SpecNet, build

# The 3-D CNNs: name -> (input (C, T, H, W), classes, layers, batch norm by default). C3D (Tran
# et al. 2015, Fig. 3): 8 convolutions, 5 pools; pool5 in Caffe's ceil mode takes 2x7x7 to
# 1x4x4 (fc6: 8192 inputs). The small models normalise each convolution's batch: without it
# SGD leaves them at chance for epochs, more than 2 CPU cores can give (measured).
C3D_TABLE = {
    "c3d": ((3, 16, 112, 112), 487,
            ("C3D64 M1x2x2 C3D128 M C3D256 C3D256 M C3D512 C3D512 M C3D512 C3D512 Mc "
            "FC4096 DROP0.5 FC4096 DROP0.5 F"), False),
    "c3d_mnist": ((1, 16, 64, 64), 10, "C3D8 M1x2x2 C3D16 M C3D32 M C3D64 M GAP F", True),
}
# The CNNs of the sequence models, without their classifier: FRAME_CNN on each (C, H, W) frame
# (64x64 -> 4x4x64), SEGMENT_CNN on each (C, S, H, W) segment (4x64x64 -> 1x4x4x64): the layers
# of c3d_mnist, its third pool 1x2x2 (a 3x3x3 filter on one frame would meet padding only)
FRAME_CNN = "C3D8 M C3D16 M C3D32 M C3D64 M"
SEGMENT_CNN = "C3D8 M1x2x2 C3D16 M C3D32 M1x2x2 C3D64 M"
# name -> (layers, frames per piece: 1 a 2-D CNN per frame, S a 3-D CNN per S-frame segment,
# head: "average" the pieces' scores or an "lstm" over them, grid: a piece's vector averages
# its last volume over grid x grid places (1: global average pooling: an image classifier's
# features, where the object is does not matter; 4: the LSTM sees where it is, so it can
# follow it), summary)
SEQUENCE_TABLE = {
    "frame_average": (FRAME_CNN, 1, "average", 1, ("the single-frame baseline: a 2-D CNN classifies "
                      "each frame, the scores are averaged")),
    "cnn_lstm": (FRAME_CNN, 1, "lstm", 4, ("a 2-D CNN per frame, an LSTM over the frames, the "
                 "classifier on its last state")),
    "c3d_lstm": (SEGMENT_CNN, 4, "lstm", 4, ("a 3-D CNN per 4-frame segment, an LSTM over the "
                 "segments, the classifier on its last state")),
}
HEADS = ("average", "lstm")
_RECIPE = {"lr": 0.05, "batch_size": 16}   # SGD with momentum 0.9: trained on Moving-MNIST


def _c3d_names(net: SpecNet) -> dict[str, str]:
    """C3D's names -> the notation's: conv1a, conv2a, conv3a, conv3b, ... (a letter per
    convolution between pools), fc6, fc7, fc8 for the FCs."""
    names, stage, i = {}, 1, 0
    for name, m in net.named_children():
        if isinstance(m, nn.Conv3d):
            names[f"conv{stage}{'abcdefgh'[i]}"] = name
            i += 1
        elif isinstance(m, nn.MaxPool3d):
            stage, i = stage + 1, 0
    fcs = [name for name, m in net.named_children() if isinstance(m, nn.Linear)]
    return names | {f"fc{6 + k}": name for k, name in enumerate(fcs)}


def _init(model: nn.Module) -> None:
    """He initialisation of the convolutions (torchvision's VGG rule): torch's default shrinks
    the signal at every layer, and a small net under an LSTM then barely trains by SGD."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _batch_norm(net: SpecNet) -> SpecNet:
    """``net`` with a batch normalisation after each convolution (``bn1`` after ``conv1``).
    Not one of the chapter's operations: torch's BatchNorm2d/3d, the same on both kernels."""
    layers: dict[str, nn.Module] = {}
    for name, m in net.named_children():
        layers[name] = m
        if isinstance(m, nn.Conv2d | nn.Conv3d):
            norm = nn.BatchNorm2d if isinstance(m, nn.Conv2d) else nn.BatchNorm3d
            layers[name.replace("conv", "bn", 1)] = norm(m.out_channels)
    return SpecNet(layers, net.default_input_shape)


def _net(layers: str, shape: tuple[int, ...], num_classes: int | None,
         batch_norm: bool) -> SpecNet:
    net = build(layers, shape, num_classes)
    if batch_norm:
        net = _batch_norm(net)
    _init(net)
    return net


def c3d_net(layers: str, num_classes: int = 10, in_channels: int = 1, frames: int = 16,
            size: int = 64, batch_norm: bool = False) -> SpecNet:
    """A 3-D CNN in the notation for (in_channels, frames, size, size) clips, with batch norm
    after each convolution if ``batch_norm``."""
    net = _net(layers, (in_channels, frames, size, size), check_num_classes(num_classes),
               batch_norm)
    return net.name_layers(_c3d_names(net))


def _c3d(name: str) -> None:
    (c, t, h, _), classes, layers, norm = C3D_TABLE[name]

    def builder(num_classes: int = classes, in_channels: int = c, frames: int = t,
                size: int = h, batch_norm: bool = norm) -> SpecNet:
        return c3d_net(layers, num_classes, in_channels, frames, size, batch_norm)

    convs = sum(tok.startswith("C") for tok in layers.split())
    register(name, section="8.6.5", recipe=_RECIPE,
             summary=f"3-D CNN (C3D, Tran et al. 2015) of {convs} 3x3x3 convolutions for "
                     f"{c}x{t}x{h}x{h} clips")(builder)


class SequenceNet(Classifier):
    """A CNN on each piece of a clip (a frame: 2-D, or a segment of ``segment`` frames: 3-D),
    whose last volume, averaged over the frames left of the piece and over a ``grid`` x
    ``grid`` of places (torch's adaptive windows: the identity at the default size), is the
    piece's vector; then a head over the pieces: ``"average"`` (a linear classifier per piece,
    the scores averaged) or ``"lstm"`` (an LSTM of ``hidden`` units over the pieces in order, a
    linear classifier on its last state). The vector keeps where things are in the frame:
    global average pooling would leave an LSTM no motion to follow.

    With ``batch_norm`` (the default) each convolution of the CNN is followed by torch's batch
    normalisation: without it SGD leaves these small nets at chance for epochs.

    ``forward_features`` gives the pieces' last volumes side by side in time, (N, D, P·t, h, w)
    (P pieces, t frames left of each); ``forward_head(pre_logits=True)`` the averaged vectors
    or the LSTM's last state. Chapter names: the CNN's (``conv1``, ``pool1``, ...), ``lstm``,
    ``fc``.
    """

    output_layer = "fc"

    def __init__(self, layers: str, segment: int, head: str, num_classes: int = 10,
                 in_channels: int = 1, frames: int = 16, size: int = 64, hidden: int = 64,
                 grid: int = 4, dropout: float = 0.0, batch_norm: bool = True) -> None:
        super().__init__()
        if head not in HEADS:
            raise ModelError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        for name, value in (("frames", frames), ("size", size), ("hidden", hidden),
                            ("segment", segment), ("grid", grid)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"{name} must be a positive int, got {value!r}")
        if frames % segment:
            raise ModelError(f"frames={frames} is not a whole number of {segment}-frame "
                             f"segments; give frames a multiple of {segment}")
        self.segment, self.head = segment, head
        self.num_classes = check_num_classes(num_classes)
        self.default_input_shape = (in_channels, frames, size, size)
        piece = (in_channels, size, size) if segment == 1 else (in_channels, segment, size, size)
        self.cnn = _net(layers, piece, None, batch_norm)      # ends in its last volume
        with torch.device("meta"):                            # D and t, from the shapes alone
            out = build(layers, piece)(torch.zeros(1, *piece))
        self._piece_time = 1 if segment == 1 else int(out.shape[2])
        features = int(out.shape[1]) * grid * grid
        self.grid = cnn.AdaptiveAvgPool2d(grid)
        self.drop = cnn.Dropout(check_dropout(dropout))
        if head == "lstm":
            self.lstm = nn.LSTM(features, hidden, batch_first=True)
            features = hidden
        self.fc = cnn.Linear(features, self.num_classes)
        self.chapter_layers = {name: f"cnn.{path}" for name, path in self.cnn.chapter_layers.items()}
        self.chapter_layers |= {"lstm": "lstm"} if head == "lstm" else {}
        self.chapter_layers["fc"] = "fc"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> (N, D, P·t, h, w): each frame or segment through the CNN."""
        if x.dim() != 5:
            raise ShapeError(f"{type(self).__name__} takes clips (N, C, T, H, W), got shape "
                             f"{tuple(x.shape)}")
        n, c, t, h, w = x.shape
        if t % self.segment:
            raise ShapeError(f"a clip of {t} frames is not a whole number of {self.segment}-"
                             f"frame segments; give clips a multiple of {self.segment} frames")
        p = t // self.segment
        if self.segment == 1:
            pieces = x.transpose(1, 2).reshape(n * t, c, h, w)              # N·T x C x H x W
        else:
            pieces = (x.reshape(n, c, p, self.segment, h, w).transpose(1, 2)
                      .reshape(n * p, c, self.segment, h, w))               # N·P x C x S x H x W
        y: torch.Tensor = self.cnn(pieces)                    # N·P x D [x t] x h x w
        if self.segment == 1:
            y = y.unsqueeze(2)                                # N·P x D x 1 x h x w
        d, tt, hh, ww = y.shape[1:]
        return y.reshape(n, p, d, tt, hh, ww).transpose(1, 2).reshape(n, d, p * tt, hh, ww)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        n, d, pt, h, w = x.shape
        t = self._piece_time
        p = pt // t
        pieces = x.reshape(n, d, p, t, h, w).transpose(1, 2).reshape(n * p, d, t, h, w)
        if t > 1:                                     # the frames left of a segment: averaged
            pieces = ops.avg_pool(pieces, (t, 1, 1))
        placed: torch.Tensor = self.grid(pieces.reshape(n * p, d, h, w))  # N·P x D x g x g
        seq = placed.reshape(n, p, -1)                          # N x P x D·grid²: one a piece
        if self.head == "lstm":
            states, _ = self.lstm(seq)                          # N x P x hidden
            last: torch.Tensor = self.drop(states[:, -1])
            scores: torch.Tensor = last if pre_logits else self.fc(last)
            return scores
        if pre_logits:                                          # the average the scores are of
            return seq.mean(dim=1)
        scores = self.fc(self.drop(seq))                        # N x P x classes
        return scores.mean(dim=1)                               # each piece's, averaged


for _name in C3D_TABLE:
    _c3d(_name)
for _name, (_layers, _segment, _head, _grid, _summary) in SEQUENCE_TABLE.items():
    register(_name, section="8.6.5", recipe=_RECIPE, summary=_summary)(
        preset(SequenceNet, _layers, _segment, _head, grid=_grid))
