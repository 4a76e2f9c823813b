"""Optimisation settings: schedules against torch's, and that each setting reaches the step."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data import ImageDataset, load
from cnnlab.errors import CnnlabError
from cnnlab.train import Schedule, TrainConfig, optim, train
from cnnlab.train import loop as loop_mod
from cnnlab.train import tasks as tasks_mod


class Tiny(nn.Module):
    default_input_shape = (1, 8, 8)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)       # N x 4 x 4 x 4
        return self.fc(x.flatten(1))


def tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    train_ds, test_ds = load("digits", "train"), load("digits", "test")
    return train_ds.subset(torch.arange(160)), test_ds.subset(torch.arange(60))


def config(tmp_path, **kw):
    # no PNGs (matplotlib, ~0.4 s a run): the tests here read weights and records
    values = {"model": "tiny", "epochs": 2, "batch_size": 32, "lr": 0.05,
              "out": str(tmp_path / "run"), "device": "cpu", "plots": False}
    values.update(kw)
    return TrainConfig(**values)


def curve(schedule: Schedule, steps: int) -> list[float]:
    return [schedule.lr_at(i) for i in range(steps)]


def torch_curve(scheduler_of, steps: int, lr: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    scheduler = scheduler_of(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


# -- the curves ---------------------------------------------------------------------------

def test_step_schedule_is_torchs_steplr_per_epoch():
    s = Schedule(TrainConfig(lr=0.1, epochs=9, lr_step=3, lr_gamma=0.5), steps_per_epoch=4)
    per_epoch = torch_curve(lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5), 9)
    assert curve(s, 36) == pytest.approx([lr for lr in per_epoch for _ in range(4)])
    assert (s.lr_at(0), s.lr_at(11), s.lr_at(12), s.lr_at(24)) == pytest.approx(
        (0.1, 0.1, 0.05, 0.025))


def test_constant_and_step_without_drops_keep_the_rate():
    for kind in ("constant", "step"):
        s = Schedule(TrainConfig(lr=0.1, epochs=3, schedule=kind), steps_per_epoch=5)
        assert curve(s, 15) == [0.1] * 15


def test_cosine_is_torchs_cosine_annealing_per_step():
    s = Schedule(TrainConfig(lr=0.1, epochs=4, schedule="cosine"), steps_per_epoch=5)
    ref = torch_curve(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20), 20)
    assert curve(s, 20) == pytest.approx(ref, abs=1e-12)
    assert s.lr_at(10) == pytest.approx(0.05)               # half way: half the rate


def test_cosine_with_linear_warmup():
    s = Schedule(TrainConfig(lr=0.1, epochs=5, schedule="cosine", warmup_epochs=1),
                 steps_per_epoch=4)                           # 4 warm-up steps of 20
    assert curve(s, 4) == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert s.lr_at(4) == pytest.approx(0.1)                   # the cosine starts at the top
    assert s.lr_at(12) == pytest.approx(0.05)                 # half way through its 16 steps
    assert s.lr_at(19) == pytest.approx(0.1 * (1 + math.cos(math.pi * 15 / 16)) / 2)


def test_step_schedule_with_warmup():
    s = Schedule(TrainConfig(lr=0.1, epochs=4, lr_step=2, warmup_epochs=0.5),
                 steps_per_epoch=4)                           # 2 warm-up steps
    assert curve(s, 16) == pytest.approx([0.05, 0.1] + [0.1] * 6 + [0.01] * 8)


@pytest.mark.parametrize("warmup_epochs,pct", [(0.0, 0.3), (1.0, 0.1)])
def test_onecycle_is_torchs_onecycle(warmup_epochs, pct):
    s = Schedule(TrainConfig(lr=0.1, epochs=10, schedule="onecycle",
                             warmup_epochs=warmup_epochs), steps_per_epoch=10)
    ref = torch_curve(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.1, total_steps=100, pct_start=pct, cycle_momentum=False), 100)
    assert curve(s, 100) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert s.lr_at(0) == pytest.approx(0.1 / 25) and max(curve(s, 100)) == pytest.approx(0.1)


def test_plateau_divides_after_patience_epochs_without_a_better_error():
    s = Schedule(TrainConfig(lr=0.1, epochs=10, schedule="plateau", patience=2),
                 steps_per_epoch=3)
    rates = []
    for error in (0.5, 0.4, 0.4, 0.45, 0.3, 0.35, 0.31, 0.32):
        s.observe(error)
        rates.append(s.lr_at(0))
    # stalls at 0.4 -> 0.4, 0.45: drop; 0.3 is a new best; 0.35, 0.31: drop again
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001])
    again = Schedule(TrainConfig(lr=0.1, epochs=10, schedule="plateau", patience=2), 3)
    again.load_state_dict(s.state_dict())
    assert again.lr_at(5) == s.lr_at(5) and again.state_dict() == s.state_dict()


def test_the_trainer_follows_the_schedule_and_records_it(tmp_path, digits, monkeypatch):
    seen = []
    real = loop_mod.optim.set_lr

    def spy(optimizer, lr):
        seen.append(lr)
        real(optimizer, lr)

    monkeypatch.setattr(loop_mod.optim, "set_lr", spy)
    result = train(config(tmp_path, schedule="onecycle", epochs=3), tiny(), progress=False,
                   datasets=digits)
    s = Schedule(config(tmp_path, schedule="onecycle", epochs=3), steps_per_epoch=5)
    assert seen == curve(s, 15)
    history = result["history"]
    assert [h["lr"] for h in history] == [s.lr_at(0), s.lr_at(5), s.lr_at(10)]
    assert [h["lr_end"] for h in history] == [s.lr_at(4), s.lr_at(9), s.lr_at(14)]


def test_plateau_run_drops_the_rate_when_the_test_error_stalls(tmp_path, digits):
    class Stalls(Tiny):                  # never learns: the test error never improves
        def forward(self, x):
            return super().forward(x) * 0

    torch.manual_seed(0)
    result = train(config(tmp_path, schedule="plateau", patience=1, epochs=3, lr_gamma=0.1),
                   Stalls(), progress=False, datasets=digits)
    assert [h["lr"] for h in result["history"]] == pytest.approx([0.05, 0.05, 0.005])


# -- each setting reaches the step -----------------------------------------------------------

def test_nesterov_reaches_the_optimizer(tmp_path, digits, monkeypatch):
    made = []
    real = torch.optim.SGD

    class Spy(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.defaults)

    monkeypatch.setattr(torch.optim, "SGD", Spy)
    train(config(tmp_path, epochs=1, nesterov=True, momentum=0.8), tiny(), progress=False,
          datasets=digits)
    assert made[0]["nesterov"] is True and made[0]["momentum"] == 0.8


@pytest.mark.parametrize("name,cls,extra", [
    ("sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    ("adadelta", torch.optim.Adadelta, {"rho": 0.95, "eps": 1e-6}),     # Zeiler's and Kim's
    ("adam", torch.optim.Adam, {"betas": (0.9, 0.999)}),
    ("adamw", torch.optim.AdamW, {"betas": (0.9, 0.999)}),
])
def test_each_optimizer_is_torchs_with_the_configs_rate_and_decay(name, cls, extra):
    w = nn.Parameter(torch.zeros(3))
    opt = optim.make([w], TrainConfig(optimizer=name, lr=0.5, weight_decay=1e-3))
    assert type(opt) is cls
    assert {k: opt.defaults[k] for k in ("lr", "weight_decay", *extra)} == \
        {"lr": 0.5, "weight_decay": 1e-3, **extra}


def test_the_schedule_sets_adadeltas_rate_too(tmp_path, digits):
    result = train(config(tmp_path, epochs=2, optimizer="adadelta", lr=1.0, schedule="step",
                          lr_step=1, lr_gamma=0.5), tiny(), progress=False, datasets=digits)
    assert [h["lr"] for h in result["history"]] == [1.0, 0.5]
    assert math.isfinite(result["history"][-1]["train_loss"])


def test_nesterov_is_refused_for_another_optimizer():
    with pytest.raises(CnnlabError, match=r"nesterov=True is SGD's, got optimizer='adam'; "
                                          r"drop --nesterov or use --optimizer sgd"):
        TrainConfig(optimizer="adam", nesterov=True)


def test_label_smoothing_is_cross_entropys(tmp_path, digits, monkeypatch):
    losses = []
    real = F.cross_entropy

    def spy(out, target, **kw):
        value = real(out, target, **kw)
        if out.requires_grad:                                  # training steps only
            losses.append((value.item(), real(out, target, label_smoothing=0.2).item(),
                           real(out, target).item()))
        return value

    monkeypatch.setattr(tasks_mod.F, "cross_entropy", spy)
    train(config(tmp_path, epochs=1, label_smoothing=0.2), tiny(), progress=False,
          datasets=digits)
    assert len(losses) == 5
    assert all(v == smooth and v != plain for v, smooth, plain in losses)


def test_label_smoothing_is_refused_for_a_models_own_loss(tmp_path, digits):
    class WithLoss(Tiny):
        def loss(self, output, target):
            return F.multi_margin_loss(output, target)

    with pytest.raises(CnnlabError, match=r"label_smoothing=0.1 applies to cross-entropy, but "
                                          r"WithLoss trains with its own loss"):
        train(config(tmp_path, label_smoothing=0.1), WithLoss(), progress=False,
              datasets=digits)
    assert not (tmp_path / "run").exists()


def test_clipping_bounds_the_gradient_norm(tmp_path, digits, monkeypatch):
    norms = []
    real = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads])).item())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    train(config(tmp_path, epochs=1, lr=1.0), tiny(), progress=False, datasets=digits)
    assert max(norms) > 0.05                        # the unclipped gradients are larger
    norms.clear()
    train(config(tmp_path, epochs=1, lr=1.0, clip_grad_norm=0.05), tiny(), progress=False,
          datasets=digits, overwrite=True)
    assert len(norms) == 5 and max(norms) <= 0.05 * (1 + 1e-5)


def test_bf16_autocast_runs_on_the_cpu(tmp_path, digits):
    dtypes = set()

    class Spy(Tiny):
        def forward(self, x):
            out = super().forward(x)
            if self.training:
                dtypes.add(out.dtype)
            return out

    torch.manual_seed(0)
    model = Spy()
    result = train(config(tmp_path, epochs=1, amp="bf16"), model, progress=False,
                   datasets=digits)
    assert dtypes == {torch.bfloat16} and math.isfinite(result["history"][0]["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())   # master weights


def test_fp16_is_refused_on_the_cpu(tmp_path, digits):
    with pytest.raises(CnnlabError, match=r"amp='fp16' needs a CUDA GPU .* use --amp bf16"):
        train(config(tmp_path, amp="fp16", device="auto"), tiny(), progress=False,
              datasets=digits)


def test_channels_last_reaches_model_and_inputs(tmp_path):
    layouts = []

    class Spy(nn.Module):
        default_input_shape = (3, 8, 8)

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            if self.training:
                layouts.append(x.stride(1) == 1)               # channels innermost: NHWC
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    g = torch.Generator().manual_seed(0)
    rgb = [ImageDataset(torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % 10,
                        name="synthetic", split=split, classes=[str(i) for i in range(10)],
                        mean=(0.5,) * 3, std=(0.3,) * 3) for n, split in ((64, "train"),
                                                                           (20, "test"))]
    torch.manual_seed(0)
    model = Spy()
    train(config(tmp_path, epochs=1, channels_last=True), model, progress=False,
          datasets=(rgb[0], rgb[1]))
    assert layouts == [True, True]
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_reaches_torch_compile(tmp_path, digits, monkeypatch):
    compiled = []

    class Compiled:                          # like torch's OptimizedModule: no truth value
        def __init__(self, model):
            self.model = model

        def __len__(self):
            raise TypeError("no len()")

        def __call__(self, x):
            compiled.append("called")
            return self.model(x)

    def fake_compile(model, *args, **kwargs):
        compiled.append(model)
        return Compiled(model)

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = tiny()
    train(config(tmp_path, epochs=1, compile=True), model, progress=False, datasets=digits)
    assert compiled[0] is model and compiled.count("called") == 5
