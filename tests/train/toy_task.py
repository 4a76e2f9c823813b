"""A task that is not classification, for the tests: regress each image's mean brightness.

Run as a script it trains one (``python toy_task.py OUT [--resume] [--slow]``), so a test
can kill it, resume it and launch it under torchrun.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from cnnlab.data import load
from cnnlab.train import TrainConfig, optim, train
from cnnlab.train.tasks import Task


class Brightness(Task):
    """Mean squared error on the brightness; figures: loss (MSE) and mean absolute error."""

    name = "brightness"
    monitor = "abs_error"
    headline = ("loss", "abs_error")

    def loss(self, output, target):
        return nn.functional.mse_loss(output.squeeze(1), target)

    def train_sums(self, output, target):
        return {"abs_error": (output.detach().squeeze(1) - target).abs().sum()}

    def eval_sums(self, prediction, target):
        error = prediction.squeeze(1) - target
        return {"loss": error.pow(2).sum(), "abs_error": error.abs().sum()}


def brightness_data(n_train: int = 256, n_test: int = 96):
    """Digits 8x8 whose target is the image's mean brightness (a float per example)."""
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        ds = load("digits", split).subset(torch.arange(n))
        ds.labels, ds.classes = ds.images.mean(dim=(1, 2, 3)), ()
        out.append(ds)
    return out[0], out[1]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.1),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 1))


def config(out: str, **kw) -> TrainConfig:
    values = {"model": "brightness", "epochs": 3, "batch_size": 32, "lr": 0.05, "out": out,
              "device": "cpu", "checkpoint_every": 3, "plots": False, **kw}
    return TrainConfig(**values)


def run(out: str, resume: bool = False) -> dict:
    """The run the script makes: 3 epochs of 8 steps, a checkpoint every 3 steps."""
    return train(config(out), net(), task=Brightness(), datasets=brightness_data(),
                 progress=False, resume=resume)


if __name__ == "__main__":
    out, flags = sys.argv[1], sys.argv[2:]
    if "--slow" in flags:
        real = optim.set_lr

        def slow(*args):
            time.sleep(0.05)
            real(*args)

        optim.set_lr = slow
    print(run(out, resume="--resume" in flags)["summary"])
