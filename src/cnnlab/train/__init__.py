"""Training: one typed config, mini-batch SGD, evaluation, run folders of safetensors weights,
checkpoints that resume a killed run to the bit.

>>> from cnnlab.train import TrainConfig, train, load_run, resume_config
>>> result = train(TrainConfig("lenet5", "digits", epochs=2, out="runs/demo"))  # doctest: +SKIP
>>> model, config = load_run("runs/demo")                                        # doctest: +SKIP
>>> train(resume_config("runs/killed"), resume=True)                             # doctest: +SKIP
"""

from cnnlab.train.batches import Batches
from cnnlab.train.checkpoint import resume_config
from cnnlab.train.config import TrainConfig
from cnnlab.train.ensemble import evaluate_ensemble, evaluate_run
from cnnlab.train.evaluation import evaluate
from cnnlab.train.loop import resolve_device, train, train_one_epoch
from cnnlab.train.metrics import time_to_accuracy, topk_correct
from cnnlab.train.optim import Schedule
from cnnlab.train.run import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    WEIGHTS,
    RunFolder,
    load_run,
    read_metadata,
)
from cnnlab.train.state import EpochTotals, StepRecipe
from cnnlab.train.tasks import Classification, Task

__all__ = [
    "CHECKPOINT", "CONFIG", "METRICS", "WEIGHTS", "Batches", "Classification", "EpochTotals",
    "RunFolder", "Schedule", "StepRecipe", "Task", "TrainConfig", "evaluate",
    "evaluate_ensemble", "evaluate_run", "load_run", "read_metadata", "resolve_device",
    "resume_config", "time_to_accuracy", "topk_correct", "train", "train_one_epoch",
]
