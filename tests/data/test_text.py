"""Sentences (cnnlab.data.text): Kim's tokeniser, the vocabulary, MR (the real files), text
folders written here, word vectors into a model, and the bad input of issue 12."""

from pathlib import Path

import pytest
import torch

from cnnlab import models
from cnnlab.data import load
from cnnlab.data.text import (
    MR_CLASSES,
    TextDataset,
    build_vocabulary,
    encode,
    holdout,
    load_text_folder,
    sentence_ids,
    tokenize,
)
from cnnlab.errors import DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")
needs_mr = pytest.mark.skipif(not (SHARED / "mr" / "rt-polarity.pos").is_file(),
                              reason=f"MR not present at {SHARED}")


@pytest.mark.parametrize("text, tokens", [
    ("a gorgeous, witty film", ["a", "gorgeous", ",", "witty", "film"]),
    ("It's GREAT!", ["it", "'s", "great", "!"]),
    ("we've they're i'd you'll don't", ["we", "'ve", "they", "'re", "i", "'d", "you", "'ll",
                                        "do", "n't"]),
    ("(really?)", ["(", "really", "?", ")"]),
    ("caf\u00e9 -- noir; 2 stars\u2026", ["caf", "noir", "2", "stars"]),   # not kept: a space
    ("`quoted'", ["`quoted'"]),                        # ` and ' are kept, inside tokens too
    ("  \t\n", []),
])
def test_kim_s_tokeniser(text, tokens):
    assert tokenize(text) == tokens


def test_the_vocabulary_is_by_count_then_alphabetical_and_0_is_the_padding():
    sentences = [["b", "a", "c"], ["c", "a"], ["a", "d"]]
    vocabulary = build_vocabulary(sentences)
    assert vocabulary == ["a", "c", "b", "d"]                 # a:3, c:2, then b, d
    ids = encode(sentences, vocabulary, length=4)
    assert ids.dtype == torch.int64
    assert ids.tolist() == [[3, 1, 2, 0], [2, 1, 0, 0], [1, 4, 0, 0]]
    assert encode([["a"] * 6], vocabulary, 4).shape == (1, 6)   # the longest sets L
    assert encode([["zz", "a"]], vocabulary, 2).tolist() == [[1, 0]]   # unknown: dropped


def test_the_holdout_is_stratified_seeded_and_disjoint():
    labels = [0] * 50 + [1] * 30
    parts = holdout(labels)
    assert parts == holdout(labels)
    assert sorted(parts["train"] + parts["test"]) == list(range(80))
    assert [labels[i] for i in parts["test"]].count(0) == 5
    assert [labels[i] for i in parts["test"]].count(1) == 3


@needs_mr
def test_mr_the_real_files():
    train, test = (load("mr", s, data_dir=SHARED) for s in ("train", "test"))
    assert isinstance(train, TextDataset) and train.classes == MR_CLASSES
    assert len(train) + len(test) == 10_662
    assert (train.labels.bincount() + test.labels.bincount()).tolist() == [5331, 5331]
    assert test.labels.bincount().tolist() == [533, 533]
    # Kim's figures for MR: |V| = 18,765, the longest sentence 56 tokens
    assert train.vocab_size == 18_766 and train.vocabulary == test.vocabulary
    assert train.shape == test.shape == (56,)
    assert train.model_args() == {"vocab_size": 18_766}
    meta = train.metadata()
    assert meta["tokenizer"] == "kim" and meta["max_length"] == 56
    # the Windows-1252 decoding: 0xe9 (é) is not one of Kim's characters, so "caf"
    assert "caf" not in train.vocabulary or "café" not in train.vocabulary
    # the registry's defaults are MR's
    meta_model = models.info("kim_cnn_rand").meta_model
    assert meta_model.vocab_size == train.vocab_size and meta_model.default_input_shape == (56,)
    # the first positive sentence of the file, tokenised and encoded
    first = (SHARED / "mr" / "rt-polarity.pos").read_bytes().decode("cp1252").split("\n")[0]
    ids = {w: i + 1 for i, w in enumerate(train.vocabulary)}
    whole = load("mr", "train", data_dir=SHARED)
    row = [ids[t] for t in tokenize(first)]
    pos = [i for i in range(len(whole)) if whole.images[i, :len(row)].tolist() == row]
    assert pos and int(whole.labels[pos[0]]) == 1


@needs_mr
def test_mr_refuses_a_frame_stride_and_names_missing_files(tmp_path):
    with pytest.raises(DataError, match="--frame-stride 2 does not apply to sentences"):
        load("mr", "train", data_dir=SHARED, options={"frame_stride": 2})
    with pytest.raises(DataError, match=r"MR file .*rt-polarity.neg is missing; put "
                                        r"rt-polarity.pos and rt-polarity.neg"):
        load("mr", "train", data_dir=tmp_path)


def _folder(root, layout):
    texts = {"positive": ["a gorgeous, witty film", "witty and warm", "a gorgeous film"],
             "negative": ["a dull film", "dull, flat and long", "flat"]}
    for c, items in texts.items():
        for i, t in enumerate(items):
            for split in (["train", "test"] if layout == "split" else [""]):
                d = root / split / c
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{i}.txt").write_text(t + "\n", encoding="utf-8")
    return root


def test_a_text_folder_with_splits(tmp_path):
    root = _folder(tmp_path, "split")
    train = load_text_folder("train", root)
    test = load("text", "test", data_dir=root)
    assert train.classes == ("negative", "positive") and len(train) == len(test) == 6
    assert train.vocabulary == test.vocabulary and train.shape == (5,)   # at least width 5
    assert load_text_folder("train", root, size=(9,)).shape == (9,)


def test_a_text_folder_without_splits_is_split_90_10(tmp_path):
    root = _folder(tmp_path, "flat")
    train, test = (load_text_folder(s, root) for s in ("train", "test"))
    assert len(train) + len(test) == 6 and len(test) == 0 + 2 * round(0.1 * 3)


def test_text_folder_bad_input(tmp_path):
    root = _folder(tmp_path, "split")
    (root / "train" / "positive" / "9.txt").write_text("... --- ...", encoding="utf-8")
    with pytest.raises(DataError, match=r"9\.txt holds no words after Kim's tokenisation \(an "
                                        r"empty sentence\); delete it or write its sentence"):
        load_text_folder("train", root)
    (root / "train" / "positive" / "9.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match=r"9\.txt is not UTF-8 text; re-save it as UTF-8"):
        load_text_folder("train", root)
    with pytest.raises(DataError, match=r"pass --data-dir"):
        load_text_folder("train", None)


def test_vectors_into_each_variant(tmp_path):
    root = _folder(tmp_path / "data", "split")
    vec = tmp_path / "v.txt"
    vec.write_text("film 1 2 3 4\nwitty 0.5 0.5 0.5 0.5\na -1 0 1 0\n", encoding="utf-8")
    ds = load_text_folder("train", root, options={"vectors": str(vec)})
    assert ds.model_args() == {"vocab_size": ds.vocab_size, "embed_dim": 4}
    ids = {w: i + 1 for i, w in enumerate(ds.vocabulary)}
    known = torch.tensor([1, 2, 3, 4, 0.5, 0.5, 0.5, 0.5, -1, 0, 1, 0])
    a = float((3 * known.var()).sqrt())                 # Kim: the known vectors' variance
    torch.manual_seed(0)
    for variant in ("static", "nonstatic", "multichannel"):
        model = models.create(f"kim_cnn_{variant}", num_classes=2, **ds.model_args())
        ds.prepare_model(model)
        for table in model.embeddings():
            assert table[ids["film"]].tolist() == [1, 2, 3, 4]
            assert table[0].abs().sum() == 0                    # the padding stays zeros
            assert 0 < table[ids["dull"]].abs().max() <= a      # drawn, Kim's way
    with pytest.raises(DataError, match=r"kim_cnn_rand learns its word vectors from random "
                                        r"ones \(CNN-rand\); drop --vectors"):
        ds.prepare_model(models.create("kim_cnn_rand", num_classes=2, **ds.model_args()))
    wrong = models.create("kim_cnn_static", num_classes=2, vocab_size=ds.vocab_size, embed_dim=7)
    with pytest.raises(DataError, match=r"v\.txt holds 4-d vectors but the model's embedding is "
                                        r"7-d; build it with embed_dim=4"):
        ds.prepare_model(wrong)
    plain = load_text_folder("train", root)
    with pytest.raises(DataError, match=r"kim_cnn_static starts from pre-trained word vectors; "
                                        r"pass --vectors PATH"):
        plain.prepare_model(models.create("kim_cnn_static", **plain.model_args()))


def test_a_sentence_at_prediction_time():
    meta = {"vocabulary": ["film", "witty", "a"], "tokenizer": "kim", "max_length": 6}
    assert sentence_ids("A witty, witty FILM!", meta).tolist() == [[3, 2, 2, 1, 0, 0]]
    with pytest.raises(DataError, match=r"the sentence '' holds no words after Kim's "
                                        r"tokenisation.*give a sentence with words"):
        sentence_ids("", meta)
    with pytest.raises(DataError, match=r"none of the words of 'dull flat' is in the run's "
                                        r"vocabulary of 3 words"):
        sentence_ids("dull; flat.", meta)
    with pytest.raises(DataError, match="not trained on sentences"):
        sentence_ids("a film", {})
