"""FractalNet (8.4.5, variations of skip architectures; Larsson, Maire and Shakhnarovich,
2017): very deep networks with no residual or pass-through connection, grown by repeating one
expansion rule, and regularised by dropping whole paths.

The rule: f_1(z) = conv(z), a 3x3 convolution followed by batch norm and ReLU, and
f_{C+1}(z) = join(f_C(f_C(z)), conv(z)), where a join is the element-wise mean of its inputs.
A block of C columns thus holds 2^C - 1 convolutions, 2^(C-1) of them on its longest path.
Laid out as the paper's Fig. 1, column k (col1 the shallowest) is a chain of 2^(k-1)
convolutions, and after the i-th layer of the deepest column one join averages every column
that completes a layer there; the nested joins of the recursion that meet at one point are a
single join of all their inputs, as in Fig. 1 and the authors' code. C = 3:

    input --+------------+------------+
            |            |          conv1
            |          conv1        conv2
            |            +--join2---+         join2 feeds col2.conv2 and col3.conv3
            |            |          conv3
          conv1        conv2        conv4
            +----------join4--------+ -> pool
           col1         col2         col3

The network is B blocks, each followed by a 2x2 max pool, then one FC layer: at 32x32 the five
pools leave 1x1x512. Its longest path has B * 2^(C-1) convolutions (20 for C = 3, 40 for C = 4).

Drop-path, the paper's regulariser, picks the paths each mini-batch trains:

- local: every join drops each of its inputs with probability ``drop_path_local`` (0.15),
  keeping one at random if it would drop them all;
- global: one column, drawn at random, serves the whole network; only its chain of
  convolutions runs (B * 2^(k-1) layers for column k);
- each training mini-batch is global with probability ``global_fraction`` (0.5), local
  otherwise; at test time every path runs. ``model(x, column=k)`` runs column k alone, the
  paper's "deepest column alone" subnetwork for k = C.

Dropout, when used, grows by block (0, 0.1, 0.2, 0.3, 0.4) and sits after each convolution,
before its batch norm, as in the authors' Caffe code.

Registered models (parameters at 10 classes, measured):

- ``fractalnet20_cifar`` (33,724,618): B = 5, C = 3, widths 64, 128, 256, 512, 512, so
  7 convolutions per block. The paper's Table 1 gives 38.6 M. Convolutions hold 33,698,880
  of ours, batch norm 20,608 and the FC 5,130; Caffe's BN-without-scale plus conv biases
  would give 10,304 fewer. Neither closes a 4.9 M gap, which the paper does not explain;
- ``fractalnet40_cifar`` (76,106,634): C = 4 at the same widths, 15 convolutions per block.
  The paper's 40-layer net has 22.9 M, fewer than its 20-layer one, so it must have been
  narrower; its widths are not stated in the text we could check. ``widths=`` sets them.

Departures: the authors pool each column before the block's last join (cheaper, and not the
same for a max pool); this module joins, then pools, as the text describes. Convolutions have
no bias and batch norm has torch's scale and shift (Caffe's had a conv bias and no scale).
Convolutions start from He normal, not the authors' Xavier.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab.errors import ModelError
from cnnlab.models._registry import preset, register
from cnnlab.nn.classifier import Classifier

CIFAR_WIDTHS = (64, 128, 256, 512, 512)     # filters of blocks 1-5 (the paper's CIFAR nets)
CIFAR_DROPOUT = (0.0, 0.1, 0.2, 0.3, 0.4)   # dropout rate of blocks 1-5


def drop_mask(n: int, p: float) -> list[bool]:
    """Local drop-path at a join of ``n`` inputs: which survive. Each is dropped with
    probability ``p``; if all would be, one chosen at random survives. Draws from torch's
    CPU generator, so ``torch.manual_seed`` repeats them."""
    keep = (torch.rand(n, device="cpu") >= p).tolist()
    if not any(keep):
        keep[int(torch.randint(n, (1,), device="cpu"))] = True
    return keep


class ConvUnit(nn.Sequential):
    """conv(z) of the expansion rule: 3x3 convolution, [dropout,] batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=cnn.Conv2d(in_channels, out_channels, 3, padding="half", bias=False))
        if dropout > 0:
            layers["drop"] = cnn.Dropout(dropout)
        layers["bn"] = nn.BatchNorm2d(out_channels)
        layers["relu"] = cnn.ReLU()
        super().__init__(layers)


class Join(nn.Module):
    """The element-wise mean of its inputs. In training, with ``drop_prob`` > 0, the mean of
    the inputs that survive local drop-path (:func:`drop_mask`)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.training and self.drop_prob > 0:
            keep = drop_mask(len(inputs), self.drop_prob)
            inputs = [x for x, kept in zip(inputs, keep) if kept]
        return torch.stack(list(inputs)).mean(0)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class FractalBlock(nn.Module):
    """f_C as columns: ``col1`` ... ``colC`` (column k a chain ``conv1`` ... ``conv{2^(k-1)}``)
    and ``join{i}`` after layer i of the deepest column wherever two or more columns meet.

    >>> block = FractalBlock(3, 8, columns=3)
    >>> block.num_convs, block.depth, [n for n, _ in block.named_children()]
    (7, 4, ['col1', 'col2', 'col3', 'join2', 'join4'])
    """

    def __init__(self, in_channels: int, out_channels: int, columns: int,
                 dropout: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.columns = columns
        self.depth = 2 ** (columns - 1)             # the deepest column's length
        self.num_convs = 2 ** columns - 1
        for k in range(1, columns + 1):
            self.add_module(f"col{k}", nn.Sequential(OrderedDict(
                (f"conv{j}", ConvUnit(in_channels if j == 1 else out_channels, out_channels,
                                      dropout))
                for j in range(1, 2 ** (k - 1) + 1))))
        # column k completes its j-th layer where the deepest completes its (j * 2^(C-k))-th
        self.ends = {i: [k for k in range(1, columns + 1) if i % 2 ** (columns - k) == 0]
                     for i in range(1, self.depth + 1)}
        for i, meeting in self.ends.items():
            if len(meeting) > 1:
                self.add_module(f"join{i}", Join(drop_path))

    def column(self, k: int) -> nn.Sequential:
        """Column ``k``: 1 is the shallowest (one convolution), C the deepest."""
        if isinstance(k, bool) or k not in range(1, self.columns + 1):
            raise ModelError(f"column must be 1 (the shallowest) ... {self.columns} "
                             f"(the deepest), got column={k!r}")
        return cast(nn.Sequential, self.get_submodule(f"col{k}"))

    def forward(self, x: torch.Tensor, column: int | None = None) -> torch.Tensor:
        if column is not None:                      # one column alone: its chain, no joins
            y: torch.Tensor = self.column(column)(x)
            return y
        current = {k: x for k in range(1, self.columns + 1)}   # each column's latest output
        for i, meeting in self.ends.items():
            for k in meeting:
                j = i // 2 ** (self.columns - k)
                current[k] = self.column(k)[j - 1](current[k])
            if len(meeting) > 1:
                joined = self.get_submodule(f"join{i}")([current[k] for k in meeting])
                current.update(dict.fromkeys(meeting, joined))
        return current[self.columns]


def _probability(name: str, value: object, closed: bool = True) -> float:
    """``value`` as a probability in [0, 1] (or [0, 1)), or a clear error."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not (0 <= value <= 1 if closed else 0 <= value < 1)):
        span = "[0, 1]" if closed else "[0, 1)"
        raise ModelError(f"{name} must be a probability in {span}, got {name}={value!r}")
    return float(value)


def _rates(value: float | Sequence[float], blocks: int) -> list[float]:
    """The dropout rate of each block: one for all, or one per block."""
    if isinstance(value, int | float):
        return [_probability("dropout", value, closed=False)] * blocks
    rates = list(value)
    if len(rates) != blocks:
        raise ModelError(f"dropout needs one rate per block ({blocks} blocks) or one for all, "
                         f"got dropout={value!r}")
    return [_probability("dropout", r, closed=False) for r in rates]


class FractalNet(Classifier):
    """B fractal blocks of C columns, each followed by a 2x2 max pool, then an FC layer.

    ``widths`` gives each block's filters (B = ``len(widths)``), ``columns`` is C, ``dropout``
    one rate for every block or one per block, ``drop_path_local`` the chance that a join drops
    each input and ``global_fraction`` the share of training calls that keep one column alone
    (0 turns either off); ``input_size`` the side of the square input. Chapter names:
    ``block1`` ... ``blockB``, ``pool1`` ... ``poolB``, ``fc``.

    ``forward(x, column=k)`` runs column k alone in every block (k = C: the deepest column),
    in training or test; without it, training draws local or global drop-path per call.

    >>> net = FractalNet(widths=(8, 16), columns=2, input_size=8).eval()
    >>> net(torch.zeros(1, 3, 8, 8)).shape, net.depth, net.layer("block2").num_convs
    (torch.Size([1, 10]), 4, 3)
    """

    stochastic_paths = True

    def __init__(self, widths: Sequence[int] = CIFAR_WIDTHS, columns: int = 3,
                 num_classes: int = 10, in_channels: int = 3,
                 dropout: float | Sequence[float] = 0.0,
                 drop_path_local: float = 0.15, global_fraction: float = 0.5,
                 input_size: int = 32) -> None:
        super().__init__()
        if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
            raise ModelError(f"a fractal block needs columns >= 1 (the paper uses 3 or 4), "
                             f"got columns={columns!r}")
        if (isinstance(widths, str | int) or len(widths) == 0
                or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)):
            raise ModelError(f"widths gives each block's filter count, e.g. {CIFAR_WIDTHS}; "
                             f"got widths={widths!r}")
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise ModelError(f"input_size is the side of the square input in pixels, "
                             f"got input_size={input_size!r}")
        if input_size >> len(widths) < 1:
            fit = input_size.bit_length() - 1
            raise ModelError(f"{len(widths)} blocks pool a {input_size}x{input_size} input "
                             f"below 1x1; use at most {fit} widths, got widths={widths!r}")
        rates = _rates(dropout, len(widths))
        self.drop_path_local = _probability("drop_path_local", drop_path_local)
        self.global_fraction = _probability("global_fraction", global_fraction)
        self.columns, self.blocks = columns, len(widths)
        self.depth = self.blocks * 2 ** (columns - 1)       # convolutions on the longest path
        self.num_classes = num_classes
        self.default_input_shape = (in_channels, input_size, input_size)
        channels = in_channels
        for b, (width, rate) in enumerate(zip(widths, rates), start=1):
            self.add_module(f"block{b}", FractalBlock(channels, width, columns, rate,
                                                      self.drop_path_local))
            self.add_module(f"pool{b}", cnn.MaxPool2d(2, 2))
            channels = width
        self.global_pool = cnn.GlobalAvgPool()      # a reshape where the last volume is 1x1
        self.fc = cnn.Linear(channels, num_classes)
        names = {f"{kind}{b}": f"{kind}{b}" for kind in ("block", "pool")
                 for b in range(1, self.blocks + 1)}
        self.chapter_layers = names | {"fc": "fc"}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def block(self, b: int) -> FractalBlock:
        """Block ``b`` (1 ... B)."""
        return cast(FractalBlock, self.get_submodule(f"block{b}"))

    def forward_features(self, x: torch.Tensor, column: int | None = None) -> torch.Tensor:
        if column is not None:
            self.block(1).column(column)            # refuses a column the net does not have
        elif (self.training and self.global_fraction > 0
              and float(torch.rand(1, device="cpu")) < self.global_fraction):
            column = int(torch.randint(1, self.columns + 1, (1,), device="cpu"))   # global
        for b in range(1, self.blocks + 1):
            x = self.block(b)(x, column)
            x = self.get_submodule(f"pool{b}")(x)
        return x                                    # N x 512 x 1 x 1 at 32x32

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor, column: int | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, column))


# the paper's: SGD, batch 100, momentum 0.9, lr 0.02 for 400 epochs, divided by 10 each time
# the remaining epochs halve (a schedule TrainConfig's fixed lr_step cannot express)
_CIFAR_RECIPE = {"lr": 0.02, "momentum": 0.9, "batch_size": 100}


for _columns, _depth in ((3, 20), (4, 40)):       # depth: 5 blocks x 2^(C-1) convolutions
    register(f"fractalnet{_depth}_cifar", section="8.4.5", recipe=_CIFAR_RECIPE,
             summary=f"FractalNet, {_depth} layers (5 blocks of {_columns} columns) for 32x32 "
                     "images, with drop-path")(
        preset(functools.partial(FractalNet, dropout=CIFAR_DROPOUT), columns=_columns,
               input_size=32))
