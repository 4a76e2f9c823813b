"""Examples beyond images: token ids and clips in an ImageDataset, the data set's hooks into
the model (its arguments, its initialisation, its metadata), and the step's constraint."""

import pytest
import torch
from torch import nn

from cnnlab.data import ImageDataset, load
from cnnlab.data.datasets import size_of
from cnnlab.errors import CnnlabError, DataError, ShapeError
from cnnlab.train import WEIGHTS, TrainConfig, train
from cnnlab.train.run import read_metadata


def _sentences(split, n=40, length=6, vocab=12):
    """Sentences whose class is whether word 1 occurs in them (ids 0 are padding)."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    ids = torch.randint(2, vocab, (n, length), generator=g)
    labels = torch.arange(n) % 2
    ids[labels == 1, 0] = 1
    return Sentences(ids, labels, name="words", split=split, classes=("no", "yes"), mean=(),
                     std=())


class Sentences(ImageDataset):
    vocab = 12
    prepared = 0

    def model_args(self):
        return {"vocab_size": self.vocab}

    def prepare_model(self, model):
        Sentences.prepared += 1
        with torch.no_grad():                       # word 1 stands out: "pretrained"
            model.embed.weight.zero_()
            model.embed.weight[1] = 6.0

    def metadata(self):
        return {"vocabulary": ["<pad>", "one"] + [f"w{i}" for i in range(2, self.vocab)]}


class BagOfWords(nn.Module):
    default_input_shape = (6,)
    default_input_dtype = torch.int64

    def __init__(self, vocab_size=12, num_classes=2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 4, padding_idx=0)
        self.fc = nn.Linear(4, num_classes)
        self.constrained = 0

    def forward(self, ids):                          # (N, L) -> (N, classes)
        return self.fc(self.embed(ids).mean(dim=1))

    def constrain(self):
        self.constrained += 1
        with torch.no_grad():
            self.fc.weight.clamp_(-1.0, 1.0)


def test_token_ids_and_clips_are_examples():
    ids = _sentences("train")
    assert ids.tokens and ids.shape == (6,) and ids.in_channels == 1 and ids.model_args()
    assert torch.equal(ids.normalize(ids.images), ids.images)        # ids stay ids
    assert "Sentences('words', split='train', n=40, shape=6, classes=2)" == repr(ids)
    with pytest.raises(ShapeError, match="token ids take no mean/std"):
        ImageDataset(ids.images, ids.labels, name="w", split="train", classes="ab",
                     mean=(0.5,), std=(1.0,))
    clips = ImageDataset(torch.rand(3, 2, 4, 5, 5), torch.zeros(3, dtype=torch.long), name="c",
                         split="train", classes="ab", mean=(0.5, 0.25), std=(0.5, 0.5))
    assert clips.shape == (2, 4, 5, 5) and not clips.tokens
    assert (ids.unit, clips.unit, clips.subset([0]).unit) == ("sentences", "clips", "clips")
    assert clips.model_args() == {"in_channels": 2}
    torch.testing.assert_close(clips.normalize(clips.images)[:, 1],
                               (clips.images[:, 1] - 0.25) / 0.5)
    with pytest.raises(ShapeError, match="not images"):
        clips.image_shape                                            # noqa: B018
    assert size_of((2, 4, 5, 5)) == (4, 5, 5) and size_of((6,), tokens=True) == (6,)
    assert size_of((3, 32, 32)) == (32, 32)


def test_a_subset_keeps_the_kind_of_data_set():
    ids = _sentences("train")
    part = ids.subset(torch.arange(5))
    assert type(part) is Sentences and len(part) == 5 and part.metadata() == ids.metadata()
    assert torch.equal(part.images, ids.images[:5]) and len(ids) == 40


def test_two_splits_join_as_one_data_set_of_their_kind():
    train, test = _sentences("train"), _sentences("test", n=10)
    both = train.join(test)
    assert type(both) is Sentences and len(both) == 50 and both.metadata() == train.metadata()
    assert torch.equal(both.images[40:], test.images) and torch.equal(both.labels[:40],
                                                                      train.labels)
    digits = load("digits", "test")
    with pytest.raises(ShapeError, match="cannot join"):
        train.join(digits)


def test_data_options_reach_only_the_readers_that_take_them():
    with pytest.raises(DataError, match="unknown data option"):
        load("digits", "test", options={"color": 1})
    with pytest.raises(DataError, match="digits is a data set of images: it takes no "
                                        "--vectors; drop it"):
        load("digits", "test", options={"vectors": "glove.txt", "frame_stride": 1})
    assert len(load("digits", "test", options=TrainConfig().data_options())) == 360


def test_the_trainer_builds_prepares_and_constrains_from_the_data(tmp_path):
    """The model gets the data's initialisation once, the constraint after every step, and
    the run keeps what the data decided of the model and the data's metadata."""
    Sentences.prepared = 0
    net = BagOfWords()
    config = TrainConfig("words", epochs=2, batch_size=10, lr=0.5, momentum=0.0,
                         weight_decay=0.0, out=str(tmp_path / "run"), tensorboard=False,
                         plots=False)
    result = train(config, net, datasets=(_sentences("train"), _sentences("test")),
                   progress=False)
    assert Sentences.prepared == 1
    assert net.constrained == 2 * 4                     # 40 sentences, 10 a step, 2 epochs
    assert net.fc.weight.abs().max() <= 1.0 + 1e-7      # the constraint held after each step
    assert result["test_top1"] == 1.0                   # word 1 decides: easy, once prepared
    meta = read_metadata(tmp_path / "run" / WEIGHTS)
    assert meta["model_args"] == {"vocab_size": 12} and meta["input_shape"] == [6]
    assert meta["data_metadata"]["vocabulary"][:2] == ["<pad>", "one"]


def test_a_model_of_pixels_is_refused_on_token_ids(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 2))
    config = TrainConfig("pixels", epochs=1, out=str(tmp_path / "run"), tensorboard=False,
                         plots=False)
    with pytest.raises(ShapeError, match="takes pixels but words holds token ids"):
        train(config, net, datasets=(_sentences("train"), _sentences("test")), progress=False)
    assert not (tmp_path / "run").exists()


def test_image_augmentation_is_refused_for_clips(tmp_path):
    clips = ImageDataset(torch.rand(8, 1, 2, 4, 4), torch.arange(8) % 2, name="c",
                         split="train", classes="ab", mean=(0.5,), std=(0.5,))
    net = nn.Sequential(nn.Flatten(), nn.Linear(32, 2))
    config = TrainConfig("clip", epochs=1, augment="flip", out=str(tmp_path / "run"),
                         tensorboard=False, plots=False)
    with pytest.raises(CnnlabError, match="transforms images, but c holds examples of shape "
                                          "1x2x4x4; use --augment none"):
        train(config, net, datasets=(clips, clips), progress=False)
