"""Kim's sentence CNN (cnnlab.models.textcnn): max-over-time pooling and max-norm by hand,
the multichannel freezing, the one-hot form's parameters, and a tiny run through the trainer
with `cnnlab eval --text`."""

import json

import pytest
import torch

from cnnlab import models, ops
from cnnlab.errors import ModelError
from cnnlab.inspect import summarize
from cnnlab.models.textcnn import MAPS, WIDTHS, MaxOverTime


def test_max_over_time_by_hand():
    x = torch.tensor([[[1.0, 5.0, -2.0, 3.0],        # map 0: largest 5 at t=1
                       [-4.0, -1.0, -3.0, -2.0]],    # map 1: largest -1
                      [[0.0, 0.0, 7.0, 0.0],
                       [2.0, 2.0, 2.0, 9.0]]])
    for kernel in ("native", "reference"):
        with ops.kernels(kernel):
            assert MaxOverTime()(x).tolist() == [[5.0, -1.0], [7.0, 9.0]]


def test_the_features_are_each_map_s_maximum_over_the_sentence():
    torch.manual_seed(0)
    model = models.create("kim_cnn_rand", vocab_size=30, embed_dim=6).eval()
    ids = torch.randint(1, 30, (2, 9))
    feats = model.forward_features(ids)
    assert feats.shape == (2, MAPS * len(WIDTHS))
    # width 3's maps by hand: each window of 3 words (4 zero words each side), ReLU, max
    words = model.trained[0].weight[ids]                                   # 2 x 9 x 6
    padded = torch.cat([torch.zeros(2, 4, 6), words, torch.zeros(2, 4, 6)], dim=1)
    conv = model.convs[0]
    windows = padded.unfold(1, 3, 1)                                      # 2 x 15 x 6 x 3
    maps = torch.einsum("ntdk,mdk->nmt", windows, conv.weight) + conv.bias.view(1, -1, 1)
    torch.testing.assert_close(feats[:, :MAPS], maps.relu().amax(dim=2))


def test_max_norm_by_hand():
    model = models.create("kim_cnn_rand", vocab_size=10, embed_dim=4, num_classes=3)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.weight[0, :2] = torch.tensor([3.0, 4.0])     # norm 5 -> scaled to 3
        model.fc.weight[1, :1] = torch.tensor([2.0])          # norm 2: kept
        model.fc.weight[2, :3] = torch.tensor([6.0, 0.0, 8.0])  # norm 10 -> 3
        bias = model.fc.bias.clone()
    model.constrain()
    w = model.fc.weight
    torch.testing.assert_close(w[0, :2], torch.tensor([1.8, 2.4]))
    torch.testing.assert_close(w[1, :1], torch.tensor([2.0]))
    torch.testing.assert_close(w[2, :3], torch.tensor([1.8, 0.0, 2.4]))
    torch.testing.assert_close(model.fc.bias, bias)              # only the weight rows
    with pytest.raises(ModelError, match="max_norm is the largest L2 norm"):
        models.create("kim_cnn_rand", max_norm=0)


def test_multichannel_keeps_its_static_channel_through_a_step():
    torch.manual_seed(0)
    model = models.create("kim_cnn_multichannel", vocab_size=20, embed_dim=5)
    vectors = torch.randn(20, 5)
    model.load_vectors(vectors)
    static, tuned = model.static0.clone(), model.trained[0].weight.detach().clone()
    torch.testing.assert_close(static, tuned)
    assert "static0" not in dict(model.named_parameters())     # nothing for an optimiser
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.randint(1, 20, (4, 7))
    torch.nn.functional.cross_entropy(model(ids), torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    model.constrain()
    assert torch.equal(model.static0, static)                   # the fixed channel: unchanged
    changed = (model.trained[0].weight.detach() - tuned).abs().sum(dim=1)
    used = ids.unique()
    assert (changed[used] > 0).all() and (changed[0] == 0)      # the words seen moved; not 0
    assert "static0" in model.state_dict()                      # saved with the weights
    # both channels reach every filter: 2 x 5 input depth
    assert model.convs[0].weight.shape == (MAPS, 10, 3)


def test_static_keeps_every_word_vector():
    model = models.create("kim_cnn_static", vocab_size=20, embed_dim=5)
    assert [n for n, _ in model.named_parameters() if "trained" in n] == []
    assert model.embeddings()[0].shape == (20, 5)


def test_the_one_hot_form_s_first_layer():
    """8.6.4: one-hot words make the depth the lexicon size, so the first layer's weights grow
    with it: per width w, V x w x 100 against k x w x 100 for k-d embeddings."""
    v = 18_766

    def first_layer(name, **kw):
        with torch.device("meta"):
            s = summarize(models.create(name, **kw), (56,))
        return sum(r.params for r in s.rows if r.kind == "Conv1d")

    assert first_layer("kim_cnn_onehot") == sum(v * w * 100 + 100 for w in WIDTHS)
    assert first_layer("kim_cnn_rand") == sum(300 * w * 100 + 100 for w in WIDTHS)
    assert first_layer("kim_cnn_rand", embed_dim=50) == sum(50 * w * 100 + 100 for w in WIDTHS)
    # and it computes what an embedding of identity vectors would
    torch.manual_seed(0)
    onehot = models.create("kim_cnn_onehot", vocab_size=12).eval()
    rand = models.create("kim_cnn_rand", vocab_size=12, embed_dim=12).eval()
    rand.load_state_dict({**onehot.state_dict(), "trained.0.weight": torch.eye(12)})
    ids = torch.randint(0, 12, (2, 6))
    torch.testing.assert_close(onehot(ids), rand(ids))


def test_ids_outside_the_vocabulary_are_refused():
    model = models.create("kim_cnn_rand", vocab_size=10, embed_dim=4)
    with pytest.raises(ModelError, match=r"token ids 1..10 fall outside kim_cnn_rand's "
                                         r"vocabulary of ids 0..9"):
        model(torch.tensor([[1, 10]]))
    with pytest.raises(ModelError, match=r"takes token ids \(N, L\) int64"):
        model(torch.zeros(1, 3))


def test_a_tiny_run_through_the_trainer_and_eval_text(tmp_path, capsys, one_thread):
    from cnnlab.cli import main
    from cnnlab.train import TrainConfig, train
    from cnnlab.train.run import WEIGHTS, read_metadata

    root = tmp_path / "data"
    words = {"positive": ["gorgeous", "witty", "warm", "moving"],
             "negative": ["dull", "flat", "tedious", "bland"]}
    g = torch.Generator().manual_seed(0)
    for c, good in words.items():
        for split, n in (("train", 40), ("test", 10)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pick = torch.randint(0, 4, (3,), generator=g).tolist()
                (root / split / c / f"{i}.txt").write_text(
                    f"a {good[pick[0]]} and {good[pick[1]]} film , {good[pick[2]]}")
    vec = tmp_path / "v.vec"
    vec.write_text("3 4\nfilm 0.1 0.2 0.3 0.4\na 0 0 0 1\ngorgeous 1 0 0 0\n")
    out = tmp_path / "run"
    config = TrainConfig.for_model({"model": "kim_cnn_multichannel", "data": "text",
                                    "data_dir": str(root), "epochs": 6, "lr": 0.03,
                                    "vectors": str(vec), "out": str(out),
                                    "tensorboard": False, "plots": False, "device": "cpu"})
    result = train(config, progress=False)
    assert result["test_top1"] >= 0.9
    meta = read_metadata(out / WEIGHTS)
    assert meta["model_args"]["embed_dim"] == 4
    assert meta["data_metadata"]["tokenizer"] == "kim"
    assert "gorgeous" in meta["data_metadata"]["vocabulary"]
    assert main(["eval", str(out), "--text", "a gorgeous, witty film", "--json"]) == 0
    probs = json.loads(capsys.readouterr().out)
    assert set(probs) == {"negative", "positive"} and probs["positive"] > 0.5
    assert main(["eval", str(out), "--text", "a gorgeous, witty film"]) == 0
    assert "positive" in capsys.readouterr().out
    assert main(["eval", str(out), "--text", "zebra quantum"]) != 0
    assert "none of the words of 'zebra quantum'" in capsys.readouterr().err
