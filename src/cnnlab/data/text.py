"""Sentences as token ids (8.6.4): Kim's tokenisation and vocabulary, MR and text folders.

A sentence becomes a row of token ids (int64), padded with 0 to the corpus's longest sentence
(at least :data:`MIN_LENGTH`, the widest filter of Kim's CNN), so that a data set is (N, L).

**Tokenisation** (:func:`tokenize`) follows Kim's ``clean_str``: every character but
``A-Za-z0-9(),!?'``` becomes a space; the clitics ``'s 've n't 're 'd 'll`` and the marks
``, ! ( ) ?`` are split off as tokens; the text is lower-cased (his setting for MR). One
departure: his ``re.sub`` replacement strings leave a backslash before ``(``, ``)`` and ``?``
(the tokens ``\\(``, ``\\)``, ``\\?``, which no word vectors hold); here they are ``(``, ``)``
and ``?``.

**Vocabulary** (:func:`build_vocabulary`): every token of the whole corpus (both splits, as
Kim's ``build_data_cv`` counts them, so the splits share ids and every word gets a vector),
ordered by count, then alphabetically; id 0 is the padding, word k has id k + 1. MR has
18,765 words and a longest sentence of 56 tokens, Kim's figures.

**MR** (:func:`load_mr`, ``load("mr", split, data_dir=...)``): ``rt-polarity.pos`` and
``rt-polarity.neg`` (Windows-1252, 5,331 sentences each) in ``DATA_DIR/mr`` or ``DATA_DIR``;
classes ``("negative", "positive")``. It comes without a split (Kim used 10-fold
cross-validation: ``cnnlab train --folds 10``); ``"train"``/``"test"`` here are a fixed
stratified 90/10 partition (:func:`holdout`): each class's sentences in the order of
``random.Random(0).shuffle``, the first tenth of each (533 + 533) the test split, the rest
(4,798 + 4,798) the training split.

**Text folder** (:func:`load_text_folder`, ``load("text", split, data_dir=ROOT)``): one UTF-8
file per sentence or document, in a folder per class: ``ROOT/train/<class>/*.txt`` and
``ROOT/test/<class>/*.txt``, or, without a split, ``ROOT/<class>/*.txt``, which is then split
90/10 as MR is. Classes are the training folders' names, sorted.

**Word vectors**: ``options["vectors"]`` (``--vectors``) names a vectors file or
``glove-6b-50d`` (:mod:`cnnlab.data.vectors`); the data set then gives the model their
dimension and copies them into its embedding (:meth:`TextDataset.prepare_model`), the words
they lack drawn as Kim does. Without vectors the model's embedding stays random (CNN-rand).

>>> ds = load_mr("train", "shared/data")            # doctest: +SKIP
>>> ds, ds.model_args()                             # doctest: +SKIP
(TextDataset('mr', split='train', n=9596, shape=56, classes=2), {'vocab_size': 18766})
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.data.datasets import DATA_OPTIONS, SPLITS, ImageDataset
from cnnlab.data.files import as_path, kind, resolve_data_dir
from cnnlab.data.vectors import GLOVE_6B_50D, dimension, kim_fill, lookup
from cnnlab.errors import DataError

__all__ = ["MIN_LENGTH", "MR_CLASSES", "TOKENIZER", "TextDataset", "build_vocabulary",
           "encode", "holdout", "load_mr", "load_text_folder", "predict_text", "tokenize"]

TOKENIZER = "kim"                     # the name saved with a model (metadata "tokenizer")
MIN_LENGTH = 5                        # the widest filter of Kim's CNN: a row is at least this
MR_CLASSES = ("negative", "positive")
MR_FILES = {"negative": "rt-polarity.neg", "positive": "rt-polarity.pos"}
MR_ENCODING = "cp1252"                # MR's README: Windows-1252, not UTF-8
TEST_FRACTION = 0.1                   # the held-out tenth of a corpus without a split
SPLIT_SEED = 0                        # random.Random(SPLIT_SEED) orders each class for it
SUFFIXES = frozenset({".txt"})

_NOT_KEPT = re.compile(r"[^A-Za-z0-9(),!?'`]")
_SPLIT_OFF = [(re.compile(p), r) for p, r in (
    (r"'s", " 's"), (r"'ve", " 've"), (r"n't", " n't"), (r"'re", " 're"), (r"'d", " 'd"),
    (r"'ll", " 'll"), (r",", " , "), (r"!", " ! "), (r"\(", " ( "), (r"\)", " ) "),
    (r"\?", " ? "))]


def tokenize(text: str) -> list[str]:
    """Kim's ``clean_str``, lower-cased, as a list of tokens.

    >>> tokenize("It's a gorgeous, witty film (isn't it?)")
    ['it', "'s", 'a', 'gorgeous', ',', 'witty', 'film', '(', 'is', "n't", 'it', '?', ')']
    """
    s = _NOT_KEPT.sub(" ", text)
    for pattern, replacement in _SPLIT_OFF:
        s = pattern.sub(replacement, s)
    return s.lower().split()


def build_vocabulary(sentences: Sequence[Sequence[str]]) -> list[str]:
    """Every token of ``sentences``, most frequent first, ties alphabetical: word k gets id
    k + 1 (0 is the padding)."""
    counts = Counter(t for s in sentences for t in s)
    return sorted(counts, key=lambda w: (-counts[w], w))


def encode(sentences: Sequence[Sequence[str]], vocabulary: Sequence[str] | Mapping[str, int],
           length: int) -> torch.Tensor:
    """Token ids (N, max(length, longest)) int64, padded with 0 at the end; unknown words
    are dropped."""
    ids = vocabulary if isinstance(vocabulary, Mapping) else _ids(vocabulary)
    rows = [[ids[t] for t in s if t in ids] for s in sentences]
    out = torch.zeros(len(rows), max([length, *map(len, rows)]), dtype=torch.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.int64)
    return out


def _ids(vocabulary: Sequence[str]) -> dict[str, int]:
    return {w: i + 1 for i, w in enumerate(vocabulary)}


def holdout(labels: Sequence[int], fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
            ) -> dict[str, list[int]]:
    """The fixed stratified split of a corpus without one: per class (in id order), its
    examples' indices shuffled by ``random.Random(seed)`` (one generator for all classes),
    the first ``round(fraction * n)`` to ``"test"``; both lists sorted."""
    rng = random.Random(seed)
    parts: dict[str, list[int]] = {"train": [], "test": []}
    for c in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == c]
        rng.shuffle(members)
        cut = round(fraction * len(members))
        parts["test"] += members[:cut]
        parts["train"] += members[cut:]
    return {k: sorted(v) for k, v in parts.items()}


class TextDataset(ImageDataset):
    """Sentences as token ids (N, L) with their vocabulary and, optionally, word vectors.

    ``model_args()`` gives the model its vocabulary size (and the vectors' dimension);
    ``prepare_model(model)`` copies the vectors into its embedding; ``metadata()`` is what
    prediction needs (the vocabulary, the tokeniser, the padded length).
    """

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor, *, name: str, split: str,
                 classes: Sequence[str], vocabulary: Sequence[str],
                 vectors: str | None = None) -> None:
        super().__init__(ids, labels, name=name, split=split, classes=classes, mean=(), std=())
        self.vocabulary = list(vocabulary)
        self.vectors = vectors

    @property
    def vocab_size(self) -> int:
        """Words plus the padding id 0."""
        return len(self.vocabulary) + 1

    def model_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"vocab_size": self.vocab_size}
        if self.vectors is not None:
            args["embed_dim"] = dimension(self.vectors)
        return args

    def word_vectors(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """(vocab_size, D): row 0 zeros (the padding), then each word's vector, those the
        vectors lack drawn as Kim does (:func:`~cnnlab.data.vectors.kim_fill`)."""
        if self.vectors is None:
            raise DataError(f"{self.name} was loaded without word vectors; pass --vectors PATH "
                            f"or --vectors {GLOVE_6B_50D}")
        table = lookup(self.vocabulary, self.vectors)
        return torch.cat([torch.zeros(1, table.dim), kim_fill(table, generator)])

    def prepare_model(self, model: nn.Module) -> None:
        """Copy the word vectors into the model's embedding(s) (``model.load_vectors``); a
        model that needs vectors (static, non-static, multichannel) refuses to start
        without them, and CNN-rand refuses them."""
        needs = getattr(model, "needs_vectors", None)    # "required", "refused", "optional"
        if needs is None:
            return
        label = getattr(model, "name", type(model).__name__)
        if needs == "required" and self.vectors is None:
            raise DataError(f"{label} starts from pre-trained word vectors; pass --vectors "
                            f"PATH (word2vec .bin, GloVe .txt, fastText .vec) or --vectors "
                            f"{GLOVE_6B_50D}, or train kim_cnn_rand")
        if needs == "refused" and self.vectors is not None:
            raise DataError(f"{label} learns its word vectors from random ones (CNN-rand); "
                            f"drop --vectors {self.vectors}, or train kim_cnn_nonstatic to "
                            "start from them")
        if self.vectors is None:
            return
        want = int(getattr(model, "embed_dim", 0))
        have = dimension(self.vectors)
        if want != have:
            raise DataError(f"{self.vectors} holds {have}-d vectors but the model's embedding "
                            f"is {want}-d; build it with embed_dim={have} (the trainer does), "
                            f"or pass {want}-d vectors")
        model.load_vectors(self.word_vectors())     # type: ignore[operator]

    def metadata(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary, "tokenizer": TOKENIZER,
                "max_length": int(self.images.shape[1])}


def sentence_ids(text: str, metadata: Mapping[str, Any]) -> torch.Tensor:
    """One sentence as ids (1, L) with a trained model's vocabulary and padded length; an
    empty sentence or one of unknown words only is refused."""
    if metadata.get("tokenizer") != TOKENIZER or not isinstance(metadata.get("vocabulary"), list):
        raise DataError("the run was not trained on sentences (its weights carry no "
                        "vocabulary); pass --text to a run of a text model only")
    tokens = tokenize(text)
    if not tokens:
        raise DataError(f"the sentence {text!r} holds no words after Kim's tokenisation (only "
                        "letters, digits and ( ) , ! ? ' ` are kept); give a sentence with words")
    ids = _ids(metadata["vocabulary"])
    known = [t for t in tokens if t in ids]
    if not known:
        shown = " ".join(tokens[:8]) + (" ..." if len(tokens) > 8 else "")
        raise DataError(f"none of the words of {shown!r} is in the run's vocabulary of "
                        f"{len(ids):,} words; give a sentence in the language and words of "
                        "its training data")
    return encode([known], ids, int(metadata.get("max_length", MIN_LENGTH)))


def predict_text(run: str | os.PathLike[str], text: str) -> dict[str, float]:
    """Class probabilities of one sentence by a trained text run (``cnnlab eval RUN
    --text``), tokenised and encoded with the vocabulary saved with its weights."""
    from cnnlab.train.run import WEIGHTS, load_run, read_metadata

    model, _ = load_run(run)
    meta = read_metadata(Path(run) / WEIGHTS)
    x = sentence_ids(text, meta.get("data_metadata") or {})
    with torch.no_grad():
        p = torch.softmax(model(x.to(next(model.parameters()).device)).float(), dim=1)[0]
    return {str(c): float(v) for c, v in zip(meta["classes"], p.tolist())}


# -- readers --------------------------------------------------------------------------------

def _check_options(options: Mapping[str, Any] | None) -> str | None:
    opts = {**DATA_OPTIONS, **(options or {})}
    if opts["frame_stride"] != DATA_OPTIONS["frame_stride"]:
        raise DataError(f"--frame-stride {opts['frame_stride']} does not apply to sentences "
                        "(it takes frames of videos); drop it")
    vectors = opts["vectors"]
    if vectors is not None:
        dimension(str(vectors))             # exists, is readable and has a dimension
    return None if vectors is None else str(vectors)


def _dataset(name: str, split: str, sentences: list[list[str]], labels: list[int],
             classes: Sequence[str], parts: Mapping[str, list[int]] | None,
             size: Sequence[int] | None, vectors: str | None) -> TextDataset:
    """The data set of ``split`` from the whole corpus (so both splits share the vocabulary
    and length): ``parts`` the indices of each split, None when the corpus is that split."""
    vocabulary = build_vocabulary(sentences)
    length = max(MIN_LENGTH, int(size[0]) if size else 0)
    ids = encode(sentences, vocabulary, length)
    y = torch.tensor(labels, dtype=torch.int64)
    if parts is not None:
        index = torch.tensor(parts[split], dtype=torch.int64)
        ids, y = ids[index], y[index]
    return TextDataset(ids, y, name=name, split=split, classes=classes, vocabulary=vocabulary,
                       vectors=vectors)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")


def load_mr(split: str = "train", data_dir: str | os.PathLike[str] | None = None,
            size: Sequence[int] | None = None, options: Mapping[str, Any] | None = None
            ) -> TextDataset:
    """MR sentence polarity (Pang and Lee 2005, Kim's copy): ``split`` of the fixed 90/10
    partition (see the module); ``data_dir`` holds ``mr/`` or the two files (default
    ``$CNNLAB_DATA``, else the per-user cache); ``size`` (L,) the least padded length;
    ``options["vectors"]`` word vectors."""
    _check_split(split)
    vectors = _check_options(options)
    root, _ = resolve_data_dir(data_dir)
    folder = next((d for d in (root / "mr", root) if (d / MR_FILES["positive"]).is_file()),
                  root / "mr")
    sentences: list[list[str]] = []
    labels: list[int] = []
    for label, cls in enumerate(MR_CLASSES):
        path = folder / MR_FILES[cls]
        try:
            text = path.read_bytes().decode(MR_ENCODING, errors="replace")
        except FileNotFoundError:
            raise DataError(f"MR file {path} is missing; put rt-polarity.pos and "
                            f"rt-polarity.neg (Kim's copy, from yoonkim/CNN_sentence) in "
                            f"{root / 'mr'} or point --data-dir at their folder") from None
        except OSError as err:
            raise DataError(f"cannot read {path} ({err.strerror or err}); make it "
                            "readable") from None
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            tokens = tokenize(line)
            if not tokens:
                raise DataError(f"{path} line {number} holds no words after Kim's "
                                f"tokenisation ({line.strip()[:40]!r}); delete that line")
            sentences.append(tokens)
            labels.append(label)
    return _dataset("mr", split, sentences, labels, MR_CLASSES, holdout(labels), size,
                    vectors)


def _read_folder(split_dir: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """(classes, sentences, labels) of ``split_dir/<class>/*.txt``."""
    from cnnlab.data.folder import scan  # the class folders, as an image folder's

    classes, files = scan(split_dir, SUFFIXES, "text")
    sentences, labels = [], []
    for path, cls in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path} is not UTF-8 text; re-save it as UTF-8 (iconv -f "
                            "cp1252 -t utf-8)") from None
        except OSError as err:
            raise DataError(f"cannot read {path} ({err.strerror or err}); make it "
                            "readable") from None
        tokens = tokenize(text)
        if not tokens:
            raise DataError(f"{path} holds no words after Kim's tokenisation (an empty "
                            "sentence); delete it or write its sentence")
        sentences.append(tokens)
        labels.append(classes.index(cls))
    return classes, sentences, labels


def load_text_folder(split: str = "train", data_dir: str | os.PathLike[str] | None = None,
                     size: Sequence[int] | None = None,
                     options: Mapping[str, Any] | None = None) -> TextDataset:
    """Text files per class (see the module): ``ROOT/train|test/<class>/*.txt``, or
    ``ROOT/<class>/*.txt`` split 90/10; ``size`` (L,) the least padded length;
    ``options["vectors"]`` word vectors."""
    _check_split(split)
    if data_dir is None:
        raise DataError("load('text', ...) reads text files from data_dir=ROOT (ROOT/<class>/"
                        "*.txt, or ROOT/train/<class>/ and ROOT/test/<class>/): pass --data-dir")
    vectors = _check_options(options)
    base = as_path(data_dir)
    if kind(base) != "dir":
        raise DataError(f"text folder {base} is {'a file' if kind(base) == 'file' else 'missing'}"
                        "; pass the folder that holds <class>/*.txt or train/ and test/")
    if kind(base / "train") == "dir" and kind(base / "test") == "dir":
        classes, sentences, labels = _read_folder(base / "train")
        test_classes, test_sentences, test_labels = _read_folder(base / "test")
        extra = sorted(set(test_classes) - set(classes))
        if extra:
            raise DataError(f"{base / 'test'} has classes not in {base / 'train'}: "
                            f"{', '.join(extra)}; every test class needs training files")
        n = len(sentences)
        sentences += test_sentences
        labels += [classes.index(test_classes[y]) for y in test_labels]
        parts = {"train": list(range(n)), "test": list(range(n, len(sentences)))}
    else:
        classes, sentences, labels = _read_folder(base)
        parts = holdout(labels)
    empty = [c for i, c in enumerate(classes) if i not in labels]
    if empty:
        raise DataError(f"class folder {empty[0]} of {base} holds no .txt files; add some or "
                        "remove it")
    return _dataset("text", split, sentences, labels, classes, parts, size, vectors)
