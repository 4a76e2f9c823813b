"""Pretrained weights, freezing the early layers and FC7 features (8.4.1, 8.4.7) on tiny runs."""

import json
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cnnlab import models
from cnnlab.cli import main
from cnnlab.data import load
from cnnlab.errors import CnnlabError, ModelError
from cnnlab.train import TrainConfig, train
from cnnlab.train.transfer import (
    apply_transfer,
    classifier_names,
    extract_features,
    features_of_run,
    freeze_until,
    load_features,
    load_pretrained,
    save_features,
)

HEAD = ("output.weight", "output.bias")     # lenet5_modern's output layer


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    train_ds, test_ds = load("digits", "train", size=32), load("digits", "test", size=32)
    return train_ds.subset(torch.arange(256)), test_ds.subset(torch.arange(64))


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits):
    """A finished 10-class lenet5_modern run folder."""
    out = tmp_path_factory.mktemp("runs") / "lenet"
    cfg = TrainConfig("lenet5_modern", epochs=1, lr=0.05, batch_size=32, out=str(out),
                      device="cpu", plots=False)
    train(cfg, progress=False, datasets=digits)
    return out


def trained_state(run):
    return load_file(str(run / "model.safetensors"))


def fresh(num_classes=10, seed=1):
    torch.manual_seed(seed)
    return models.create("lenet5_modern", num_classes=num_classes)


# -- load_pretrained --------------------------------------------------------------------------

@pytest.mark.parametrize("name, head", [
    ("lenet5", ("output.prototypes",)),                  # RBF prototypes: a buffer
    ("lenet5_modern", HEAD),
    ("alexnet", ("classifier.6.weight", "classifier.6.bias")),
    ("vgg_a", ("fc11.weight", "fc11.bias")),             # a notation network: flat names
])
def test_the_output_layer_is_what_reset_classifier_replaces(name, head):
    with torch.device("meta"):
        model = models.create(name)
    before = dict(model.state_dict(keep_vars=True))
    rng = torch.get_rng_state()
    assert classifier_names(model) == head
    assert all(v is before[k] for k, v in model.state_dict(keep_vars=True).items())
    assert torch.equal(torch.get_rng_state(), rng)        # the probe draws nothing visible
    assert classifier_names(nn.Linear(2, 3)) == ()       # not a cnnlab model: no known head


def test_a_run_loads_into_a_model_for_other_classes_with_a_fresh_head(run):
    model = fresh(num_classes=4)
    head = {k: v.clone() for k, v in model.state_dict().items() if k in HEAD}
    report = load_pretrained(model, run)
    assert report.skipped == HEAD and report.fresh == HEAD
    assert report.source.endswith("model.safetensors")
    state, source = model.state_dict(), trained_state(run)
    assert set(report.loaded) == set(source) - set(HEAD)
    assert all(torch.equal(state[k], source[k]) for k in report.loaded)
    assert all(torch.equal(state[k], head[k]) for k in HEAD)   # untouched by the load
    assert model.output.weight.shape == (4, 84)


def test_same_classes_load_everything_and_num_classes_resets_first(run):
    model = fresh()
    report = load_pretrained(model, run)
    assert report.skipped == report.fresh == () and len(report.loaded) == 10
    x = torch.randn(3, 1, 32, 32)
    again = fresh(seed=2)
    again.load_state_dict(trained_state(run))
    assert torch.equal(model.eval()(x), again.eval()(x))
    model = fresh()
    report = load_pretrained(model, run, num_classes=3)
    assert model.num_classes == 3 and model(x).shape == (3, 3) and report.skipped == HEAD
    with pytest.raises(ModelError, match="num_classes must be a positive int, got 0"):
        load_pretrained(fresh(), run, num_classes=0)


def test_a_torchvision_style_pth_state_dict_loads(tmp_path):
    source = fresh(seed=3)
    torch.save(OrderedDict(source.state_dict()), tmp_path / "weights.pth")
    model = fresh(seed=4)
    report = load_pretrained(model, tmp_path / "weights.pth")
    assert report.skipped == () and len(report.loaded) == 10
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    # saved from a DistributedDataParallel wrapper: every name starts with "module."
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "ddp.pt")
    assert len(load_pretrained(fresh(seed=5), tmp_path / "ddp.pt").loaded) == 10
    # a .safetensors file, with a 7-class head
    save_file(fresh(num_classes=7).state_dict(), str(tmp_path / "w.safetensors"))
    assert load_pretrained(fresh(), tmp_path / "w.safetensors").skipped == HEAD


RAN = []


class Payload:
    """A pickle that runs code when unpickled."""

    def __reduce__(self):
        return (RAN.append, ("ran",))


def test_files_that_are_not_plain_state_dicts_are_refused(tmp_path):
    torch.save({"features.c1.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ModelError) as refused:
        load_pretrained(fresh(), tmp_path / "evil.pth")
    # our words, not PyTorch's advice to unpickle an untrusted file anyway
    assert str(refused.value) == (
        f"{tmp_path / 'evil.pth'}: refused: it holds Python objects besides tensors, and cnnlab "
        "never unpickles objects from a file (they could run code); save the weights alone "
        "where the file comes from, with torch.save(model.state_dict(), path), or as "
        ".safetensors")
    assert RAN == []                                        # nothing from the file ran
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="holds a list, not a state dict"):
        load_pretrained(fresh(), tmp_path / "list.pth")
    torch.save({"model": fresh().state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    with pytest.raises(ModelError, match=r"not a flat dict of tensors .*checkpoint\['model'\]"):
        load_pretrained(fresh(), tmp_path / "ckpt.pth")
    (tmp_path / "junk.pth").write_text("not a pickle")
    with pytest.raises(ModelError, match=r"junk.pth: not a .pth file \(neither a torch.save "
                                         r"archive nor a pickle\); save the weights alone"):
        load_pretrained(fresh(), tmp_path / "junk.pth")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ModelError, match="unknown weight format '.npz'"):
        load_pretrained(fresh(), tmp_path / "w.npz")
    with pytest.raises(ModelError, match="do not exist; pass a run folder"):
        load_pretrained(fresh(), tmp_path / "nowhere.pth")
    with pytest.raises(CnnlabError, match="is not a finished run"):
        load_pretrained(fresh(), tmp_path)


def test_mismatches_are_listed_by_name(tmp_path):
    state = fresh().state_dict()
    for k in ("head.c5.weight", "head.c5.bias", "head.f6.weight", "head.f6.bias"):
        del state[k]
    state["extra.weight"] = torch.zeros(2)
    state["features.c1.weight"] = torch.zeros(6, 3, 5, 5)           # 3 input channels
    save_file(state, str(tmp_path / "w.safetensors"))
    model = fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError) as err:
        load_pretrained(model, tmp_path / "w.safetensors")
    message = str(err.value)
    assert "\n" not in message and "do not fit LeNet5Modern" in message
    assert "4 missing (head.c5.weight, head.c5.bias, head.f6.weight, ... and 1 more)" in message
    assert "1 unexpected (extra.weight)" in message
    assert "1 with another shape (features.c1.weight: 6x3x5x5 in the file, 6x1x5x5" in message
    assert "same model and in_channels" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # unchanged


# -- freeze_until -----------------------------------------------------------------------------

def test_freeze_until_fixes_exactly_the_early_layers(digits):
    model = fresh()
    frozen = freeze_until(model, "c3")
    early = ("features.c1.weight", "features.c1.bias", "features.c3.weight", "features.c3.bias")
    assert frozen.frozen == early
    assert frozen.trainable == ("head.c5.weight", "head.c5.bias", "head.f6.weight",
                                "head.f6.bias", *HEAD)
    assert freeze_until(fresh(), "s4").frozen == early     # a pool: up to where it sits
    assert freeze_until(fresh(), "features.c1").frozen == early[:2]   # a module path
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = digits[0].images[:32], digits[0].labels[:32]
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in early)
    assert all(not torch.equal(after[k], before[k]) for k in frozen.trainable)
    frozen.unfreeze()
    assert all(p.requires_grad for p in model.parameters())


def test_the_trainer_fine_tunes_only_the_deeper_layers(run, digits, tmp_path):
    """8.4.7 end to end: a 10-class run fine-tuned on a 5-class task, c1 to c3 fixed."""
    five = [ds.subset(ds.labels < 5) for ds in digits]
    for ds in five:
        ds.classes = ds.classes[:5]
    model = fresh(num_classes=5)
    assert load_pretrained(model, run).skipped == HEAD
    frozen = freeze_until(model, "c3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig("lenet5_modern", epochs=1, lr=0.05, batch_size=32,
                      out=str(tmp_path / "tuned"), device="cpu", plots=False)
    train(cfg, model, progress=False, datasets=five)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in frozen.frozen)
    assert all(not torch.equal(after[k], before[k]) for k in frozen.trainable)


def test_frozen_batch_norm_keeps_its_running_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(2, 1, 8, 8))
    frozen = freeze_until(model, "1")                       # a plain module: by its path
    assert frozen.frozen == ("0.weight", "0.bias", "1.weight", "1.bias")
    assert frozen.norm_layers == ("1",)
    model.train()
    stats = model[1].running_mean.clone(), model[4].running_mean.clone()
    model(torch.randn(8, 1, 8, 8) + 3)
    assert torch.equal(model[1].running_mean, stats[0])                  # frozen: eval mode
    assert not torch.equal(model[4].running_mean, stats[1])              # trained: follows
    frozen.unfreeze()                                                    # hook removed
    model.train()
    model(torch.randn(8, 1, 8, 8) + 3)
    assert not torch.equal(model[1].running_mean, stats[0])


def test_freeze_until_names_unknown_and_useless_layers():
    with pytest.raises(ModelError, match=r"LeNet5Modern has no layer 'c9': did you mean "):
        freeze_until(fresh(), "c9")
    with pytest.raises(ModelError, match="leaves no parameter to train; name an earlier layer"):
        freeze_until(fresh(), "output")
    with pytest.raises(ModelError, match="Sequential has no layer 'conv'; name a module path"):
        freeze_until(nn.Sequential(nn.Linear(2, 2)), "conv")
    model = fresh()
    with pytest.raises(ModelError):
        freeze_until(model, "c9")
    assert all(p.requires_grad for p in model.parameters())            # nothing half done


# -- FC7 features -----------------------------------------------------------------------------

def test_fc7_features_are_the_penultimate_layer(digits):
    model = fresh().train()
    ds = digits[1]
    features, labels = extract_features(model, ds, "fc7", batch_size=20)
    assert model.training                                       # mode restored
    assert features.shape == (64, 84) and features.dtype == torch.float32
    assert torch.equal(labels, ds.labels)
    model.eval()
    with torch.no_grad():
        x = ds.normalize(ds.images)
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(features, expected, atol=1e-6)
    pre, _ = extract_features(model, ds, "pre_logits", batch_size=64)
    assert torch.allclose(pre, features, atol=1e-6)
    # a named volume, flattened or averaged over its positions
    with torch.no_grad():
        c3 = model.features.c3(model.features.s2(model.features.c1_act(model.features.c1(x))))
    flat, _ = extract_features(model, ds, "c3")
    avg, _ = extract_features(model, ds, "c3", pool="avg")
    assert flat.shape == (64, 16 * 10 * 10) and avg.shape == (64, 16)
    assert torch.allclose(flat, c3.flatten(1), atol=1e-6)
    assert torch.allclose(avg, c3.mean((2, 3)), atol=1e-6)
    with pytest.raises(ModelError, match="has no layer 'c7'"):
        extract_features(model, ds, "c7")
    assert not model.features.c3._forward_hooks                 # hooks removed


def test_features_file_and_command(run, tmp_path, capsys):
    features, labels, meta = features_of_run(run, split="test")
    assert features.shape == (360, 84) and len(labels) == 360
    path = save_features(tmp_path / "f.safetensors", features, labels, meta)
    back, back_labels, back_meta = load_features(path)
    assert torch.equal(back, features) and torch.equal(back_labels, labels)
    assert back_meta["model"] == "lenet5_modern" and back_meta["layer"] == "fc7"
    assert (back_meta["data"], back_meta["split"]) == ("digits", "test")
    assert back_meta["classes"] == [str(i) for i in range(10)]
    out = tmp_path / "cli.safetensors"
    argv = ["features", str(run), "--split", "train", "--layer", "c5", "--out", str(out),
            "--quiet"]
    assert main(argv) == 0
    assert "1,437 x 120 features (lenet5_modern at c5 on digits train)" in capsys.readouterr().out
    c5, c5_labels, c5_meta = load_features(out)
    assert c5.shape == (1437, 120) and c5_meta["split"] == "train"
    assert torch.equal(c5_labels, load("digits", "train").labels)
    assert main(argv) == 2
    assert "already exists; pick another --out, or pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["features", str(run), "--out", str(tmp_path / "x.npz")]) == 2
    assert "end the name with .safetensors" in capsys.readouterr().err
    assert main(["features", str(run), "--layer", "fc9", "--out", str(tmp_path / "y.safetensors"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no layer 'fc9'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y.safetensors").exists()
    assert json.loads(json.dumps(meta)) == meta


def test_init_and_freeze_until_from_the_config_and_the_command_line(run, tmp_path, capsys):
    """`cnnlab train lenet5_modern --init RUN --freeze-until c3`: the early layers keep the
    pretrained weights exactly, the later ones move on."""
    out = tmp_path / "tuned"
    code = main(["train", "lenet5_modern", "--epochs", "1", "--batch-size", "64",
                     "--init", str(run), "--freeze-until", "c3", "--out", str(out),
                     "--device", "cpu", "--quiet", "--no-plots", "--no-tensorboard"])
    assert code == 0
    before, after = trained_state(run), load_file(str(out / "model.safetensors"))
    early = [k for k in before if k.startswith(("features.c1", "features.c3"))]
    assert early and all(torch.equal(after[k], before[k]) for k in early)
    assert not torch.equal(after["head.f6.weight"], before["head.f6.weight"])
    assert json.loads((out / "config.json").read_text())["freeze_until"] == "c3"


def test_init_from_weights_of_another_model_names_the_mismatch(tmp_path, digits, run):
    cfg = TrainConfig("lenet5", epochs=1, out=str(tmp_path / "x"), device="cpu",
                      init=str(run))
    with pytest.raises(ModelError, match="do not fit LeNet5"):
        train(cfg, progress=False, datasets=digits)


def test_init_and_freeze_until_say_what_they_did(run, digits, tmp_path, capsys):
    """One line: tensors loaded, the output layer replaced or not, layers frozen, parameters
    left to train; on resume the checkpoint's weights stand, and the line says so."""
    total = sum(p.numel() for p in fresh().parameters())
    early = sum(p.numel() for n, p in fresh().named_parameters()
                if n.startswith(("features.c1", "features.c3")))
    cfg = TrainConfig("lenet5_modern", epochs=1, out=str(tmp_path / "a"), device="cpu",
                      init=str(run), freeze_until="c3", plots=False, tensorboard=False)
    train(cfg, progress=True, datasets=digits)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"--init {run / 'model.safetensors'}: 10 tensors loaded, output layer "
                        "loaded too; --freeze-until c3: 2 layers frozen (features.c1 to "
                        f"features.c3); {total - early:,} of {total:,} parameters train")
    four = [ds.subset(torch.nonzero(ds.labels < 4).flatten()) for ds in digits]
    four = [type(ds)(ds.images, ds.labels, name=ds.name, split=ds.split, classes=list("0123"),
                     mean=ds.mean, std=ds.std) for ds in four]
    cfg = TrainConfig("lenet5_modern", epochs=1, out=str(tmp_path / "b"), device="cpu",
                      init=str(run), plots=False, tensorboard=False)
    train(cfg, progress=True, datasets=(four[0], four[1]))
    assert capsys.readouterr().out.splitlines()[0] == (
        f"--init {run / 'model.safetensors'}: 8 tensors loaded, output layer replaced (the "
        "file's output.weight, output.bias are for another class count); "
        f"{sum(p.numel() for p in fresh(4).parameters()):,} of "
        f"{sum(p.numel() for p in fresh(4).parameters()):,} parameters train")
    resumed = apply_transfer(fresh(), str(run), "c3", resumed=True)
    assert resumed is not None and resumed.loaded is None
    assert resumed.summary().startswith(f"--init {run}: not loaded again, the checkpoint holds "
                                        "the weights; --freeze-until c3: 2 layers frozen")
    assert apply_transfer(fresh()) is None
