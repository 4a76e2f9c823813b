"""The trainer on tiny data: learning, the run folder, reloading, determinism, failures."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from cnnlab import ops
from cnnlab.data import load
from cnnlab.errors import CnnlabError
from cnnlab.train import (
    CHECKPOINT,
    METRICS,
    WEIGHTS,
    TrainConfig,
    checkpoint,
    evaluate,
    evaluate_run,
    load_run,
    read_metadata,
    time_to_accuracy,
    topk_correct,
    train,
)
from cnnlab.train import run as run_mod

# what a finished run folder holds
FINISHED = ["config.json", "confusion.json", "confusion.png", "curves.png", METRICS, WEIGHTS,
            "tensorboard"]

RECORD_KEYS = {"epoch", "lr", "lr_end", "train_loss", "train_top1", "train_images", "test_loss", "test_top1",
               "test_top5", "test_error", "test_top5_error", "epoch_seconds", "images_per_second",
               "eval_seconds", "elapsed_seconds", "test_per_class_top1"}


class Tiny(nn.Module):
    """8x8 grey digits -> 10 scores, in a few hundred parameters."""

    default_input_shape = (1, 8, 8)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)       # N x 4 x 4 x 4
        return self.fc(x.flatten(1))


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    train, test = load("digits", "train"), load("digits", "test")
    return train.subset(torch.arange(320)), test.subset(torch.arange(120))


def config(tmp_path, **kw):
    # no PNGs (matplotlib, ~0.4 s a run) unless a test asks: the run folder's test does
    values = {"model": "tiny", "epochs": 2, "batch_size": 32, "lr": 0.05,
              "out": str(tmp_path / "run"), "device": "cpu", "plots": False}
    values.update(kw)
    return TrainConfig(**values)


def test_loss_falls_and_the_run_folder_is_written(tmp_path, digits):
    model = tiny()
    cfg = config(tmp_path, epochs=3, plots=True)
    result = train(cfg, model, progress=False, datasets=digits)
    history = result["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result["test_top1"] > 0.5 and result["test_error"] == 1 - result["test_top1"]
    assert json.loads(json.dumps(result)) == result               # JSON-ready
    assert result["time_to_accuracy"]["elapsed_seconds"] == [r["elapsed_seconds"]
                                                             for r in history]
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == FINISHED
    lines = (run / METRICS).read_text().splitlines(keepends=True)
    assert len(lines) == 3 and all(line.endswith("\n") for line in lines)
    records = [json.loads(line) for line in lines]
    assert records == history and set(records[0]) == RECORD_KEYS
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == cfg


def test_weights_reload_with_identical_outputs(tmp_path, digits):
    model = tiny()
    train(config(tmp_path, epochs=1), model, progress=False, datasets=digits)
    meta = read_metadata(tmp_path / "run" / WEIGHTS)
    assert meta["model"] == "tiny" and meta["num_classes"] == 10 and meta["in_channels"] == 1
    assert meta["input_shape"] == [1, 8, 8] and meta["mean"] == list(digits[0].mean)
    again, cfg = load_run(tmp_path / "run", model=tiny(seed=1))
    assert cfg.model == "tiny" and not again.training
    x = digits[1].images[:16]
    model.eval()
    assert torch.equal(model(x), again(x))
    state = load_file(str(tmp_path / "run" / WEIGHTS))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_same_seed_same_weights(tmp_path, digits):
    def weights(seed: int, out: str) -> dict:
        model = tiny()
        train(config(tmp_path, seed=seed, out=str(tmp_path / out)), model, progress=False,
              datasets=digits)
        return model.state_dict()

    a, b, c = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)        # the seed shuffles differently


def test_worker_processes_see_the_same_batches(tmp_path, digits):
    class Dropping(Tiny):                          # dropout draws from the global RNG
        def forward(self, x):
            return F.dropout(super().forward(x), 0.5, self.training)

    torch.manual_seed(0)
    a = Dropping()
    torch.manual_seed(0)
    b = Dropping()
    train(config(tmp_path, epochs=2, out=str(tmp_path / "a")), a, progress=False,
          datasets=digits)
    # two passes through one DataLoader whose worker lives on between them
    train(config(tmp_path, epochs=2, num_workers=1, out=str(tmp_path / "b")), b,
          progress=False, datasets=digits)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_refuses_to_overwrite_a_finished_run(tmp_path, digits):
    train(config(tmp_path, epochs=1), tiny(), progress=False, datasets=digits)
    with pytest.raises(CnnlabError, match=r"already holds a trained model; pick another --out, "
                                          r"or pass --overwrite"):
        train(config(tmp_path, epochs=1), tiny(), progress=False, datasets=digits)
    result = train(config(tmp_path, epochs=2), tiny(), progress=False, datasets=digits,
                   overwrite=True)
    assert len((tmp_path / "run" / METRICS).read_text().splitlines()) == 2
    assert len(result["history"]) == 2


def test_the_models_own_loss_is_used(tmp_path, digits):
    class WithLoss(Tiny):
        calls = 0

        def loss(self, output, target):
            WithLoss.calls += 1
            return F.multi_margin_loss(output, target)

    torch.manual_seed(0)
    model = WithLoss()
    result = train(config(tmp_path, epochs=1, batch_size=64), model, progress=False,
                   datasets=digits)
    assert WithLoss.calls == 320 // 64                       # every one of the 5 steps
    # evaluation scores probabilities (one evaluator for runs and ensembles): without a
    # log_proba of its own, the test loss is the NLL of the scores' softmax
    train_ds, test = digits                          # normalised with the training set's
    with torch.no_grad():
        scores = model((test.images - train_ds.mean[0]) / train_ds.std[0])
    nll = F.cross_entropy(scores, test.labels).item()
    assert result["test_loss"] == pytest.approx(nll, rel=1e-5)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_part_way_leaves_whole_files_only(tmp_path, digits, error):
    class Breaks(Tiny):
        calls = 0

        def forward(self, x):
            Breaks.calls += 1
            if Breaks.calls == 14:                            # epoch 2, after 10 + 1 + 2 calls
                raise error("boom")
            return super().forward(x)

    torch.manual_seed(0)
    with pytest.raises(error, match="boom"):
        train(config(tmp_path, epochs=3), Breaks(), progress=False, datasets=digits)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT, "config.json", METRICS,
                                             "tensorboard"]
    lines = (run / METRICS).read_text().splitlines(keepends=True)
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    assert checkpoint.describe(run / CHECKPOINT) == {"epoch": 2, "step": 0, "global_step": 10}


def test_interrupted_metrics_write_keeps_the_old_file(tmp_path, monkeypatch):
    folder = run_mod.RunFolder(tmp_path / "run")
    folder.start(TrainConfig(out=str(tmp_path / "run")))
    folder.log({"epoch": 1})
    before = (tmp_path / "run" / METRICS).read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        folder.log({"epoch": 2})
    assert (tmp_path / "run" / METRICS).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", METRICS]


def test_the_folder_is_made_only_when_training_starts(tmp_path):
    with pytest.raises(CnnlabError, match=r"got data='digts' \(did you mean 'digits'\?\)"):
        train(config(tmp_path, data="digts"), tiny(), progress=False)
    assert not (tmp_path / "run").exists()


def test_divergence_is_reported(tmp_path, digits):
    class Nan(Tiny):
        def loss(self, output, target):
            return F.cross_entropy(output, target) * float("nan")

    with pytest.raises(CnnlabError, match=r"training diverged: .*nan in epoch 1 \(by step \d+\); "
                                          r"lower the learning rate \(lr=0.05\)"):
        train(config(tmp_path), Nan(), progress=False, datasets=digits)
    assert not (tmp_path / "run" / WEIGHTS).exists()
    assert not (tmp_path / "run" / CHECKPOINT).exists()       # nothing good to keep


def test_training_runs_on_the_chosen_kernel(tmp_path, digits):
    seen = set()

    class Spy(Tiny):
        def forward(self, x):
            seen.add(ops.current_kernel())
            return super().forward(x)

    train(config(tmp_path, epochs=1, kernel="reference"), Spy(), progress=False,
          datasets=digits)
    assert seen == {"reference"} and ops.current_kernel() == "native"


def test_evaluate_and_topk():
    scores = torch.tensor([[0.1, 0.9, 0.0, 0.3, 0.2, 0.5, 0.4],     # target 1: top-1
                           [0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.0],     # target 6: last
                           [0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.0]])    # target 3: 3rd, top-5
    target = torch.tensor([1, 6, 3])
    assert [int(c) for c in topk_correct(scores, target, (1, 5))] == [1, 2]
    # 3 classes: every row is in its top 5
    assert [int(c) for c in topk_correct(scores[:, :3], torch.tensor([2, 1, 0]), (1, 5))] == [1, 3]
    ds = load("digits", "test").subset(torch.arange(50))
    ds.classes = ds.classes[:4]                              # pretend: 4 classes, top-5 is 1
    ds.labels = ds.labels % 4
    torch.manual_seed(0)
    result = evaluate(Tiny(num_classes=4), ds, batch_size=16)
    assert result["n"] == 50 and result["top5"] == 1.0 and 0 <= result["top1"] <= 1
    history = [{"test_top1": 0.5, "elapsed_seconds": 1.0},
               {"test_top1": 0.991, "elapsed_seconds": 2.5}]
    assert time_to_accuracy(history, 0.99) == 2.5 and time_to_accuracy(history, 0.995) is None


def test_registered_model_end_to_end(tmp_path):
    cfg = TrainConfig(model="lenet5_modern", epochs=1, lr=0.05, out=str(tmp_path / "run"),
                      device="cpu")
    result = train(cfg, progress=False)
    assert result["test_top1"] > 0.2
    model, back = load_run(tmp_path / "run")
    assert back == cfg and model.default_input_shape == (1, 32, 32)
    metrics = evaluate_run(tmp_path / "run")
    assert (metrics["data"], metrics["split"], metrics["n"]) == ("digits", "test", 360)
    assert metrics["top1"] == pytest.approx(result["test_top1"])


def test_load_run_names_what_is_missing(tmp_path):
    with pytest.raises(CnnlabError, match="run folder .* does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(CnnlabError, match="is not a finished run: model.safetensors is missing"):
        load_run(tmp_path / "half")


def test_cudnn_autotuner_on_for_gpu_runs_only_and_restored():
    import torch

    from cnnlab.train.loop import _cudnn_autotune

    before = torch.backends.cudnn.benchmark
    with _cudnn_autotune(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark == before
    with _cudnn_autotune(torch.device("cuda")):       # only the flag: no GPU needed
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == before


def test_a_batch_above_the_training_set_is_warned_with_a_size_that_fits(tmp_path, digits,
                                                                       capsys):
    small = (digits[0].subset(torch.arange(36)), digits[1])
    train(config(tmp_path, epochs=1, batch_size=50), tiny(), progress=False, datasets=small)
    err = capsys.readouterr().err
    assert ("warning: batch_size=50 exceeds the 36 training examples, so each epoch is one "
            "step of 36; lower --batch-size (e.g. 8) unless") in err
