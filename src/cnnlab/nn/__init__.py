"""Layers (torch.nn modules) that run on cnnlab.ops, so every network can switch kernels."""

from cnnlab.nn.classifier import Classifier, fresh_linear
from cnnlab.nn.layers import (
    LRN,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Linear,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
    MaxUnpool1d,
    MaxUnpool2d,
    MaxUnpool3d,
    ReLU,
)
from cnnlab.nn.lenet import RBF, PartialConv2d, Squash, Subsampling, rbf_map_loss

__all__ = [
    "LRN", "RBF", "AdaptiveAvgPool2d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "Classifier",
    "Conv1d", "Conv2d", "Conv3d",
    "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Dropout", "Flatten",
    "GlobalAvgPool", "Linear", "MaxPool1d", "MaxPool2d", "MaxPool3d", "MaxUnpool1d",
    "MaxUnpool2d", "MaxUnpool3d", "PartialConv2d", "ReLU", "Squash", "Subsampling",
    "fresh_linear", "rbf_map_loss",
]
