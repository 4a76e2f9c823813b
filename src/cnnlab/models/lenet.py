"""LeNet-5 (8.2.7; LeCun, Bottou, Bengio and Haffner, 1998) as published, and a modern variant.

Published (32x32 grey input, 60,000 trainable parameters):

    input 32x32x1
    C1  6 filters 5x5              -> 28x28x6     156 params     then squash
    S2  2x2 trainable subsampling  -> 14x14x6      12 params     then squash
    C3  16 filters 5x5, Table I    -> 10x10x16  1,516 params     then squash
    S4  2x2 trainable subsampling  ->  5x5x16      32 params     then squash
    C5  120 filters 5x5            ->  1x1x120 48,120 params     then squash
    F6  84 units                   ->  84      10,164 params     then squash
    output: 10 Euclidean RBF units with fixed 7x12 prototypes     (0 trainable)

"Units in layers up to F6 ... are passed through a sigmoid squashing function" (the paper),
so every layer up to F6 is followed by f(a) = 1.7159 tanh(2a/3). Training uses the RBF
maximum a posteriori loss (:func:`cnnlab.nn.lenet.rbf_map_loss`).

The modern variant keeps the sizes and swaps in ReLU, 2x2 max pooling, a full C3 and a
softmax output trained with cross-entropy.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnlab import nn as cnn
from cnnlab.models._registry import register
from cnnlab.nn.classifier import Classifier
from cnnlab.nn.lenet import (
    LENET5_C3_TABLE,
    lecun_uniform_,
    rbf_log_proba,
    rbf_map_loss,
    rbf_prototypes,
)

_LENET_LAYERS = {"c1": "features.c1", "s2": "features.s2", "c3": "features.c3",
                 "s4": "features.s4", "c5": "head.c5", "f6": "head.f6", "output": "output"}


class _LeNet(Classifier):
    """What both forms share: ``features`` (C1 to S4), ``head`` (C5, F6) and ``output``, for
    32x32 inputs."""

    output_layer = "output"
    features: nn.Sequential
    head: nn.Sequential

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.default_input_shape = (in_channels, 32, 32)
        self.num_classes = num_classes
        self.chapter_layers = dict(_LENET_LAYERS)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.features(x)
        return y


class LeNet5(_LeNet):
    """LeNet-5 as published: squashing, trainable subsampling, partial C3, RBF output."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, rbf_j: float = 1.0) -> None:
        super().__init__(num_classes, in_channels)
        self.rbf_j = rbf_j
        # in_channels > 1: C1 sees every input channel; the paper only had grey images
        self.features = nn.Sequential(OrderedDict(
            c1=cnn.Conv2d(in_channels, 6, 5), c1_act=cnn.Squash(),         # 28x28x6
            s2=cnn.Subsampling(6), s2_act=cnn.Squash(),                    # 14x14x6
            c3=cnn.PartialConv2d(6, LENET5_C3_TABLE, 5), c3_act=cnn.Squash(),  # 10x10x16
            s4=cnn.Subsampling(16), s4_act=cnn.Squash(),                   # 5x5x16
        ))
        self.head = nn.Sequential(OrderedDict(
            c5=cnn.Conv2d(16, 120, 5), c5_act=cnn.Squash(),                # 1x1x120
            flatten=cnn.Flatten(),
            f6=cnn.Linear(120, 84), f6_act=cnn.Squash(),                   # 84
        ))
        self.output = cnn.RBF(rbf_prototypes(num_classes))                # 84 -> classes
        lecun_uniform_(self)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head(x)
        # scores are negative RBF distances: the largest score is the nearest prototype
        return x if pre_logits else -self.output(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.output = cnn.RBF(rbf_prototypes(num_classes).to(self.output.prototypes.device))

    def loss(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The paper's MAP criterion on the RBF outputs."""
        return rbf_map_loss(scores, target, self.rbf_j)

    def log_proba(self, scores: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities under that criterion (what evaluation scores)."""
        return rbf_log_proba(scores, self.rbf_j)


class LeNet5Modern(_LeNet):
    """LeNet-5's sizes with today's parts: ReLU, max pooling, full C3, softmax output."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0) -> None:
        super().__init__(num_classes, in_channels)
        self.features = nn.Sequential(OrderedDict(
            c1=cnn.Conv2d(in_channels, 6, 5), c1_act=cnn.ReLU(),    # 28x28x6
            s2=cnn.MaxPool2d(2),                                     # 14x14x6
            c3=cnn.Conv2d(6, 16, 5), c3_act=cnn.ReLU(),             # 10x10x16
            s4=cnn.MaxPool2d(2),                                     # 5x5x16
        ))
        self.head = nn.Sequential(OrderedDict(
            c5=cnn.Conv2d(16, 120, 5), c5_act=cnn.ReLU(),           # 1x1x120
            flatten=cnn.Flatten(),
            f6=cnn.Linear(120, 84), f6_act=cnn.ReLU(),              # 84
            drop=cnn.Dropout(dropout),
        ))
        self.output = cnn.Linear(84, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head(x)
        return x if pre_logits else self.output(x)


# Measured on MNIST (BENCHMARKS.md). The RBF loss starts near 84 (the squared distance to a
# prototype), so the published model needs a smaller step than softmax networks.
register("lenet5", section="8.2.7",
         recipe={"lr": 0.001, "batch_size": 32, "weight_decay": 0.0, "epochs": 20, "lr_step": 8},
         summary="LeNet-5 as published (squash, trainable subsampling, C3 table, RBF output)"
         )(LeNet5)
register("lenet5_modern", section="8.2.7",
         recipe={"lr": 0.05, "batch_size": 64, "weight_decay": 5e-4, "epochs": 20, "lr_step": 8},
         summary="LeNet-5 with ReLU, max pooling and a softmax output")(LeNet5Modern)
