"""Training: one typed config, mini-batch SGD, evaluation, run folders of safetensors weights.

>>> from cnnlab.train import TrainConfig, train, load_run
>>> result = train(TrainConfig("lenet5", "digits", epochs=2, out="runs/demo"))  # doctest: +SKIP
>>> model, config = load_run("runs/demo")                                        # doctest: +SKIP
"""

from cnnlab.train.config import TrainConfig
from cnnlab.train.loop import (
    Batches,
    evaluate,
    evaluate_run,
    loss_function,
    resolve_device,
    train,
    train_one_epoch,
)
from cnnlab.train.metrics import time_to_accuracy, topk_correct
from cnnlab.train.run import CONFIG, METRICS, WEIGHTS, RunFolder, load_run, read_metadata

__all__ = [
    "CONFIG", "METRICS", "WEIGHTS", "Batches", "RunFolder", "TrainConfig", "evaluate",
    "evaluate_run", "load_run", "loss_function", "read_metadata", "resolve_device",
    "time_to_accuracy", "topk_correct", "train", "train_one_epoch",
]
