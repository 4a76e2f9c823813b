"""Retrieval on neural codes (8.6.1): the mAP against a brute-force loop and scikit-learn, exact
search against a brute-force cosine search, an approximate index's recall against flat, the
index file's round trip and its corrupt and mismatched cases, and `cnnlab index` / `cnnlab
retrieve` end to end on a tiny trained run (exit codes, one-line errors, the PNG pages, nothing
half-written)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cnnlab import cli
from cnnlab.apps import retrieval
from cnnlab.apps.retrieval import (
    PCA,
    RetrievalIndex,
    build_index,
    l2_normalize,
    ranking_scores,
    recall_at_k,
    search,
    spaced,
)
from cnnlab.data import load
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, train
from cnnlab.train.run import read_metadata

pytest.importorskip("faiss")


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _train(out, model="lenet5_modern", seed=0):
    train_ds, test_ds = load("digits", "train", size=32), load("digits", "test", size=32)
    cfg = TrainConfig(model, epochs=1, lr=0.05, batch_size=32, out=str(out), device="cpu",
                      plots=False, tensorboard=False, seed=seed)
    train(cfg, progress=False, overwrite=True, datasets=(train_ds.subset(torch.arange(64)),
                                                         test_ds.subset(torch.arange(32))))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs on the digits (1 epoch on 64 images at 32 x 32): lenet5_modern and
    lenet5 (another model)."""
    root = tmp_path_factory.mktemp("runs")
    return {"lenet": _train(root / "lenet"), "other": _train(root / "other", "lenet5")}


@pytest.fixture(scope="module")
def index_file(runs, tmp_path_factory):
    """A flat index of the digits' training split (1,437 codes) with PCA to 16."""
    out = tmp_path_factory.mktemp("index") / "digits.index"
    assert cli.main(["index", str(runs["lenet"]), "--pca", "16", "--out", str(out),
                     "--quiet"]) == 0
    return out


def cnnlab(*words, capsys):
    """``cnnlab WORDS``: (exit status, stdout, stderr)."""
    code = cli.main([str(w) for w in words])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(*words, capsys, match):
    """The command exits 2 with one line ``error: ...`` that matches ``match``."""
    code, _, err = cnnlab(*words, capsys=capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert match in err, err
    return err


def _clusters(n=300, d=12, classes=3, seed=0):
    """Features around one random centre per class, and their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 2
    labels = torch.arange(n) % classes
    return centres[labels] + torch.randn(n, d, generator=g), labels


# -- mAP ------------------------------------------------------------------------------------

def _brute_ap(query, q_label, codes, labels, skip=-1):
    """AP of one query by a loop over its ranking: precision at each relevant item's rank."""
    sims = [(float(query @ codes[i]), i) for i in range(len(codes)) if i != skip]
    ranked = [i for _, i in sorted(sims, key=lambda t: -t[0])]
    hits, total = 0, 0.0
    for rank, i in enumerate(ranked, 1):
        if labels[i] == q_label:
            hits += 1
            total += hits / rank
    return total / hits


def test_map_is_the_mean_of_a_hand_computed_ranking():
    codes = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([1, 0, 1, 0])                 # ranking for [1, 0]: rel 1, 0, 1, 0
    got = ranking_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), codes, labels, k=2)
    assert got["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert got["precision_at_k"] == pytest.approx(0.5)


def test_map_matches_brute_force_and_sklearn(monkeypatch):
    from sklearn.metrics import average_precision_score

    features, labels = _clusters(60, d=6, classes=4, seed=3)
    codes = l2_normalize(features)
    queries, q_labels = l2_normalize(torch.randn(9, 6)), torch.arange(9) % 4
    monkeypatch.setattr(retrieval, "CHUNK_ELEMENTS", 130)     # two queries per chunk
    got = ranking_scores(queries, q_labels, codes, labels, k=5)
    brute = [_brute_ap(q, c, codes, labels) for q, c in zip(queries, q_labels, strict=True)]
    ours = got["ap"].tolist()
    assert ours == pytest.approx(brute, abs=1e-9)
    for q, c, ap in zip(queries, q_labels, ours, strict=True):
        assert ap == pytest.approx(average_precision_score((labels == c).numpy(),
                                                           (codes @ q).numpy()), abs=1e-6)
    assert got["map"] == pytest.approx(float(np.mean(brute)))
    top5 = (codes @ queries.T).T.topk(5).indices
    assert got["precision_at_k"] == pytest.approx(
        float((labels[top5] == q_labels[:, None]).float().mean()))


def test_map_leaves_out_the_query_itself():
    features, labels = _clusters(40, d=5, seed=1)
    codes = l2_normalize(features)
    exclude = torch.tensor([0, 7, -1])
    got = ranking_scores(codes[[0, 7, 9]], labels[[0, 7, 9]], codes, labels, k=3,
                         exclude=exclude)
    brute = [_brute_ap(codes[i], labels[i], codes, labels, skip=s)
             for i, s in ((0, 0), (7, 7), (9, -1))]
    assert got["ap"].tolist() == pytest.approx(brute, abs=1e-9)


def test_queries_without_a_relevant_item_are_counted_not_averaged():
    codes, labels = l2_normalize(torch.randn(5, 3)), torch.zeros(5, dtype=torch.long)
    got = ranking_scores(codes[:2], torch.tensor([0, 4]), codes, labels, k=2)
    assert got["queries_without_relevant"] == 1
    assert got["map"] == pytest.approx(1.0)
    with pytest.raises(CnnlabError, match="--k 6 is more than the 5 codes"):
        ranking_scores(codes, labels, codes, labels, k=6)


# -- codes, PCA, search ----------------------------------------------------------------------

def test_pca_finds_the_directions_of_largest_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 5, generator=g) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1])
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    data = x @ rotation.T + 3.0
    pca = PCA.fit(data, 2)
    assert pca.dims == (5, 2)
    # the two columns are the rotation's first two axes (up to sign), orthonormal
    assert (pca.matrix.T @ rotation[:, :2]).abs().diag() == pytest.approx([1, 1], abs=1e-2)
    assert pca.matrix.T @ pca.matrix == pytest.approx(torch.eye(2), abs=1e-5)
    assert pca.mean == pytest.approx(data.mean(0), abs=1e-5)
    with pytest.raises(CnnlabError, match="give a size from 1 to 5"):
        PCA.fit(x, 6)


def test_spaced_positions():
    assert spaced(10, 4).tolist() == [0, 3, 6, 9]
    assert spaced(3, 5).tolist() == [0, 1, 2]
    assert spaced(7, 1).tolist() == [0]


def test_flat_search_is_a_brute_force_cosine_search():
    features, labels = _clusters(200, d=10)
    index = build_index(features, labels, {}, ids=torch.arange(200) + 1000)
    queries = l2_normalize(torch.randn(7, 10))
    hits = search(index, queries, k=6)
    cosine = queries @ (features / features.norm(dim=1, keepdim=True)).T
    top = cosine.topk(6)
    assert torch.equal(hits.positions, top.indices)
    assert hits.similarities == pytest.approx(top.values, abs=1e-5)
    assert torch.equal(hits.ids, top.indices + 1000)
    assert torch.equal(hits.labels, labels[top.indices])
    assert index.codes() == pytest.approx(l2_normalize(features), abs=1e-6)


def test_pca_codes_are_compressed_then_normalised_again():
    features, labels = _clusters(100, d=10)
    index = build_index(features, labels, {}, pca=4)
    expected = l2_normalize(index.pca(l2_normalize(features)))
    assert index.dim == 4 and index.description["raw_dim"] == 10
    assert index.codes() == pytest.approx(expected, abs=1e-5)


def test_torch_search_merges_chunks_into_the_exact_top_k(monkeypatch):
    codes, queries = l2_normalize(torch.randn(500, 8)), l2_normalize(torch.randn(30, 8))
    top = (queries @ codes.T).topk(7)
    monkeypatch.setattr(retrieval, "CHUNK_ELEMENTS", 400)     # 8 queries meet 50 codes a time
    sims, positions = retrieval.torch_search(queries, codes, 7, block=8)
    assert torch.equal(positions, top.indices)
    assert torch.equal(sims, top.values)


def test_recall_at_k_counts_the_shared_neighbours():
    exact = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(torch.tensor([[3, 2, 1], [4, 9, 8]]), exact) == pytest.approx(4 / 6)


@pytest.mark.parametrize("kind, settings", [("ivf", {"nlist": 16, "nprobe": 2}),
                                            ("hnsw", {"m": 8, "ef_search": 16})])
def test_approximate_index_recall_is_measured_against_flat(kind, settings):
    features, labels = _clusters(2000, d=16, classes=20, seed=2)
    index = build_index(features, labels, {}, kind=kind, **settings)
    d = index.description
    assert d["recall_k"] == 10 and d["recall_queries"] == 1000
    sample = spaced(2000, 1000)
    codes = l2_normalize(features)
    exact = (codes[sample] @ codes.T).topk(10).indices
    found = search(index, codes[sample], k=10).positions
    assert d["recall_at_k"] == pytest.approx(recall_at_k(found, exact))
    assert 0.3 < d["recall_at_k"] <= 1.0
    # every code is stored exactly, whatever the index
    assert index.codes() == pytest.approx(codes, abs=1e-6)


def test_index_settings_are_checked():
    features, labels = _clusters(100, d=4)
    with pytest.raises(CnnlabError, match="--nlist 200 is more cells than the 100 codes"):
        build_index(features, labels, {}, kind="ivf", nlist=200)
    with pytest.raises(CnnlabError, match="--m set an index of another kind"):
        build_index(features, labels, {}, kind="ivf", m=4)
    with pytest.raises(CnnlabError, match="--pca 11"):
        build_index(features, labels, {}, pca=11)


# -- the index file ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_round_trip(tmp_path, kind):
    features, labels = _clusters(600, d=8, classes=5)
    index = build_index(features, labels, {"note": "x"}, ids=torch.arange(600) * 2, pca=6,
                        kind=kind)
    queries = l2_normalize(torch.randn(5, 6))
    before = search(index, queries, k=4)
    back = RetrievalIndex.load(index.save(tmp_path / "a.index"))
    after = search(back, queries, k=4)
    assert torch.equal(before.positions, after.positions)
    assert torch.equal(before.ids, after.ids) and torch.equal(before.labels, after.labels)
    assert torch.equal(before.similarities, after.similarities)
    assert back.description == json.loads(json.dumps(index.description))
    assert torch.equal(back.pca.matrix, index.pca.matrix)
    assert torch.equal(back.codes(), index.codes())
    assert [p.name for p in tmp_path.iterdir()] == ["a.index"]     # no temporary file left


def _rewrite(path, out, **change):
    """A copy of the index file at ``out`` with tensors or metadata entries changed."""
    tensors, meta = load_file(str(path)), read_metadata(path)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    for key, value in change.items():
        (tensors if isinstance(value, torch.Tensor) else meta)[key] = value
    save_file(tensors, str(out), metadata=meta)
    return out


def test_damaged_index_files_are_one_line_errors(tmp_path):
    features, labels = _clusters(100, d=4)
    good = build_index(features, labels, {}).save(tmp_path / "good.index")
    blob = load_file(str(good))["faiss"]
    flipped = blob.clone()
    flipped[len(flipped) // 2] ^= 0xFF
    truncated = tmp_path / "cut.index"
    truncated.write_bytes(good.read_bytes()[:-50])
    noise = tmp_path / "noise.index"
    noise.write_bytes(bytes(range(256)) * 4)
    other = tmp_path / "features.safetensors"
    save_file({"features": features}, str(other))
    cases = {
        truncated: "not a readable index file",
        noise: "not a readable index file",
        other: "not a retrieval index",
        tmp_path / "missing.index": "does not exist",
        _rewrite(good, tmp_path / "v9.index", version="9"): "format version '9'",
        _rewrite(good, tmp_path / "flip.index", faiss=flipped): "checksum does not match",
        _rewrite(good, tmp_path / "ids.index", ids=torch.arange(99)): "99 ids",
        _rewrite(good, tmp_path / "desc.index", description="{"): "lacks part of an index",
    }
    for path, message in cases.items():
        with pytest.raises(CnnlabError, match=message) as info:
            RetrievalIndex.load(path)
        assert "\n" not in str(info.value)
    # bytes that pass the checksum but are no FAISS index: FAISS's own error, on one line
    import hashlib

    junk = torch.tensor(list(b"IxF2 not an index at all"), dtype=torch.uint8)
    path = _rewrite(good, tmp_path / "junk.index", faiss=junk,
                    faiss_sha256=hashlib.sha256(junk.numpy().tobytes()).hexdigest())
    with pytest.raises(CnnlabError, match="FAISS cannot read the index") as info:
        RetrievalIndex.load(path)
    assert "\n" not in str(info.value)


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import os

    features, labels = _clusters(50, d=4)
    index = build_index(features, labels, {})

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(CnnlabError, match="No space left on device"):
        index.save(tmp_path / "a.index")
    assert list(tmp_path.iterdir()) == []


# -- the commands on a trained run ------------------------------------------------------------

def test_index_command_writes_and_describes(index_file, runs, capsys):
    index = RetrievalIndex.load(index_file)
    d = index.description
    assert len(index) == 1437 and index.dim == 16 and d["raw_dim"] == 84
    assert d["run"]["model"] == "lenet5_modern" and d["run"]["layer"] == "fc7"
    assert d["data"] == "digits" and d["split"] == "train" and len(d["classes"]) == 10
    assert torch.equal(index.ids, torch.arange(1437))
    assert torch.equal(index.labels, load("digits", "train").labels)
    refused("index", runs["lenet"], "--out", index_file, capsys=capsys,
            match="already exists; pick another --out, or pass --overwrite")


def test_index_command_prints_recall_of_an_approximate_index(runs, tmp_path, capsys):
    code, out, _ = cnnlab("index", runs["lenet"], "--kind", "ivf", "--out",
                          tmp_path / "ivf.index", "--quiet", capsys=capsys)
    assert code == 0
    recall = RetrievalIndex.load(tmp_path / "ivf.index").description["recall_at_k"]
    assert f"recall@10 against exact search: {recall:.4f}" in out


def test_retrieve_prints_and_draws(index_file, tmp_path, capsys):
    out = tmp_path / "found"
    code, text, err = cnnlab("retrieve", index_file, "--count", "3", "--k", "4", "--out", out,
                             "--json", "--quiet", capsys=capsys)
    assert code == 0, err
    result = json.loads(text)
    assert [len(q["neighbours"]) for q in result["queries"]] == [4, 4, 4]
    assert json.loads((out / "results.json").read_text()) == result
    with Image.open(out / "retrieval-1.png") as png:
        assert png.mode == "RGB" and png.width > 5 * 80
    first = result["queries"][0]
    assert first["query"] == "digits test #0 (7)" and first["class"] == "7"
    sims = [h["similarity"] for h in first["neighbours"]]
    assert sims == sorted(sims, reverse=True)
    assert all(h["same_class"] == (h["label"] == 7) for h in first["neighbours"])
    # the same neighbours as a search of the index with the run's codes
    index = RetrievalIndex.load(index_file)
    queries = load("digits", "test", size=32).subset([0])
    hits = search(index, retrieval.query_codes(index, queries), k=4)
    assert [h["id"] for h in first["neighbours"]] == hits.ids[0].tolist()
    refused("retrieve", index_file, "--count", "1", "--out", out, capsys=capsys,
            match="already holds files")


def test_retrieve_image_files(index_file, tmp_path, capsys):
    digits = load("digits", "test", size=32)
    pixels = (digits.images[0, 0] * 255).round().byte().numpy()
    Image.fromarray(pixels, mode="L").save(tmp_path / "same.png")
    Image.fromarray(pixels, mode="L").resize((48, 40)).save(tmp_path / "large.png")
    code, text, err = cnnlab("retrieve", index_file, "--image", tmp_path / "same.png",
                             tmp_path / "large.png", "--k", "3", "--json", "--quiet",
                             capsys=capsys)
    assert code == 0, err
    assert "large.png is 40 x 48 (H x W); resized to the run's 32 x 32" in err
    result = json.loads(text)
    assert result["queries"][0]["query"] == "same.png" and result["queries"][0]["label"] is None
    index = RetrievalIndex.load(index_file)
    hits = search(index, retrieval.query_codes(index, digits.subset([0])), k=3)
    assert [h["id"] for h in result["queries"][0]["neighbours"]] == hits.ids[0].tolist()
    Image.new("RGB", (32, 32)).save(tmp_path / "colour.png")
    refused("retrieve", index_file, "--image", tmp_path / "colour.png", capsys=capsys,
            match="is colour (3 channels) (RGB) but the run's model takes grey")
    (tmp_path / "text.png").write_text("not an image")
    refused("retrieve", index_file, "--image", tmp_path / "text.png", capsys=capsys,
            match="cannot read image")


def test_retrieve_bad_requests(index_file, tmp_path, capsys):
    refused("retrieve", index_file, "--k", "1438", capsys=capsys,
            match="--k 1438 is more than the 1,437 codes in the index; give --k 1437 or less")
    refused("retrieve", index_file, "--image", "a.png", "--split", "test", capsys=capsys,
            match="--image and --split both name queries")
    refused("retrieve", index_file, "--evaluate", "--out", tmp_path, capsys=capsys,
            match="drop --out")
    refused("retrieve", tmp_path / "none.index", capsys=capsys, match="does not exist")


def test_a_failed_drawing_leaves_no_folder(index_file, tmp_path, monkeypatch, capsys):
    from cnnlab.visualize import pictures

    calls = []

    def fail_second(rows, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(rows, path, **kw)

    real = pictures.save_grid
    monkeypatch.setattr(pictures, "save_grid", fail_second)
    code, _, err = cnnlab("retrieve", index_file, "--count", "12", "--k", "2", "--out",
                          tmp_path / "found", "--quiet", capsys=capsys)
    assert code == 1 and "No space left on device" in err
    assert list(tmp_path.iterdir()) == []


def test_a_mismatched_run_is_refused(index_file, runs, tmp_path, capsys):
    refused("retrieve", index_file, "--run", runs["other"], capsys=capsys,
            match="the index was built from another run than")
    moved = tmp_path / "moved"
    shutil.copytree(runs["lenet"], moved)
    code, _, err = cnnlab("retrieve", index_file, "--run", moved, "--count", "1", "--quiet",
                          capsys=capsys)
    assert code == 0, err                                    # a copy of the same run
    _train(moved, seed=1)                                    # trained again: other weights
    refused("retrieve", index_file, "--run", moved, capsys=capsys,
            match="are not those the index was built from")
    index = RetrievalIndex.load(index_file)
    index.description["run"]["path"] = str(tmp_path / "gone")
    index.save(tmp_path / "gone.index")
    refused("retrieve", tmp_path / "gone.index", capsys=capsys,
            match="no longer exists; pass --run")


def test_another_layer_is_refused(runs, index_file):
    index = RetrievalIndex.load(index_file)
    index.description["run"]["layer"] = "c3"          # 16 x 10 x 10 = 1,600 values, not 84
    with pytest.raises(CnnlabError, match="1600-d features at 'c3' but the index holds 84-d"):
        retrieval.query_codes(index, load("digits", "test", size=32).subset([0]))


def test_evaluate(index_file, capsys):
    code, text, err = cnnlab("retrieve", index_file, "--evaluate", "--count", "60", "--json",
                             "--quiet", capsys=capsys)
    assert code == 0, err
    result = json.loads(text)
    assert result["queries"] == 60 and result["database"]["count"] == 1437
    assert [r["codes"] for r in result["rows"]] == [
        "lenet5_modern fc7 + PCA 16", "raw pixels", "raw pixels + PCA 16"]
    assert [r["dim"] for r in result["rows"]] == [16, 1024, 16]
    assert not result["left_out_self"]
    # the first row is ranking_scores of the run's codes against the indexed codes
    index = RetrievalIndex.load(index_file)
    test = load("digits", "test", size=32).subset(spaced(360, 60))
    expected = ranking_scores(retrieval.query_codes(index, test), test.labels, index.codes(),
                              index.labels, k=10)
    assert result["rows"][0]["map"] == pytest.approx(expected["map"])
    assert all(0 < r["map"] <= 1 and 0 < r["precision_at_k"] <= 1 for r in result["rows"])
    code, text, _ = cnnlab("retrieve", index_file, "--evaluate", "--split", "train", "--count",
                           "30", "--no-baselines", "--quiet", capsys=capsys)
    assert code == 0 and "each query's own entry left out" in text
    assert len([line for line in text.splitlines() if "PCA" in line]) == 1
    assert not math.isnan(expected["map"])
