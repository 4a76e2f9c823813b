"""Content-based image retrieval on neural codes (8.6.1): a trained network's FC7 (or pooled
spatial) features of a data set, L2-normalised and optionally PCA-compressed, searched by cosine
similarity in a FAISS index, and evaluated by the mean average precision of the whole ranking.

Codes: features -> L2-normalise -> (PCA fitted on the indexed codes -> L2-normalise again),
as Babenko et al.'s neural codes; the inner product of two codes is then their cosine. The
index is exact (``flat``) by default; ``ivf`` (inverted lists over k-means cells) and ``hnsw``
(a navigable small-world graph) are approximate, and their recall@10 against exact search is
measured on a sample of the indexed codes when they are built.

An index file is one safetensors file, written atomically and never unpickled: the FAISS
index's own serialisation as a uint8 tensor (with its SHA-256, checked before FAISS reads it),
the ids (positions in the indexed split), labels and PCA as tensors, and a JSON description
(the run, layer, pool, input shape, normalisation, data set and split) as metadata.

>>> index = index_run("runs/lenet5-digits", split="train", pca=32)      # doctest: +SKIP
>>> index.save("digits.index")                                            # doctest: +SKIP
>>> found = search(index, query_codes(index, images))                     # doctest: +SKIP
>>> evaluate(index, data="digits", split="test")["rows"][0]["map"]        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from cnnlab.apps import requires
from cnnlab.data import ImageDataset
from cnnlab.errors import CnnlabError, ShapeError
from cnnlab.train._runs import RunInfo, run_data, run_info
from cnnlab.train.batches import normalizer
from cnnlab.train.run import WEIGHTS, load_run, storage_error, write_safetensors
from cnnlab.train.transfer import Pool, extract_features

__all__ = ["FORMAT", "KINDS", "PCA", "VERSION", "Hits", "Queries", "RetrievalIndex", "build_index",
           "default_nlist", "default_nprobe", "evaluate", "faiss_index", "index_run",
           "index_run_info", "index_settings", "l2_normalize", "neural_codes", "pick_queries",
           "pixel_codes", "query_codes", "ranking_scores", "read_queries", "recall_at_k", "search",
           "spaced", "torch_search"]

Kind = Literal["flat", "ivf", "hnsw"]
KINDS: tuple[Kind, ...] = ("flat", "ivf", "hnsw")
FORMAT, VERSION = "cnnlab-retrieval-index", 1     # an index file's metadata "format", "version"
PURPOSE = "retrieval (cnnlab index, cnnlab retrieve)"
RECALL_K, RECALL_SAMPLE = 10, 1000     # an approximate index's recall@10 on 1,000 indexed codes
HNSW_M, HNSW_EF_SEARCH = 32, 64        # graph links per node; candidates kept while searching
IVF_TRAIN_PER_CELL = 64                # codes per cell that IVF's k-means trains on, at most
CHUNK_ELEMENTS = 1 << 24               # similarities held at once by the torch searches (64 MiB)
EXACT_PCA_DIM = 4096                   # above this input size PCA is randomised (torch.pca_lowrank)


def _faiss() -> Any:
    return requires("faiss", PURPOSE)


# -- codes ------------------------------------------------------------------------------------

def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (N, D) divided by their length (an all-zero row stays zero), float32."""
    x = x.float()
    out: torch.Tensor = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return out


@dataclass(frozen=True)
class PCA:
    """x -> (x - mean) @ matrix: the ``dim`` directions of largest variance of the codes it was
    fitted on, largest first (``matrix`` (D_in, dim), ``mean`` (D_in,), float32)."""

    mean: torch.Tensor
    matrix: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, dim: int) -> PCA:
        """Fit on ``x`` (N, D_in): the covariance's eigenvectors in float64 (up to
        ``EXACT_PCA_DIM`` inputs), else a randomised SVD with a fixed seed."""
        n, d_in = x.shape
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= d_in:
            raise ShapeError(f"PCA to {dim!r} dimensions of {d_in}-d codes: give a size from 1 "
                             f"to {d_in}")
        if n < 2:
            raise ShapeError(f"PCA needs at least 2 codes to fit, got {n}")
        mean = x.double().mean(0)
        if d_in <= EXACT_PCA_DIM:
            cov = torch.zeros(d_in, d_in, dtype=torch.float64)
            rows = max(1, CHUNK_ELEMENTS // d_in)
            for start in range(0, n, rows):                      # X^T X in chunks of rows
                c = x[start:start + rows].double() - mean
                cov += c.T @ c
            _, vectors = torch.linalg.eigh(cov / (n - 1))        # ascending eigenvalues
            matrix = vectors.flip(1)[:, :dim]
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                _, _, v = torch.pca_lowrank(x.float() - mean.float(), q=min(dim + 10, n, d_in),
                                            center=False, niter=4)
            matrix = v[:, :dim].double()
        return cls(mean.float(), matrix.float().contiguous())

    @property
    def dims(self) -> tuple[int, int]:
        """(D_in, dim)."""
        return int(self.matrix.shape[0]), int(self.matrix.shape[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) @ self.matrix


def neural_codes(features: torch.Tensor, pca: PCA | None = None) -> torch.Tensor:
    """Features (N, D_in) as codes: L2-normalised, then (with ``pca``) compressed and
    normalised again."""
    codes = l2_normalize(features)
    return codes if pca is None else l2_normalize(pca(codes))


def pixel_codes(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
                ) -> torch.Tensor:
    """The raw-pixel baseline: images (N, C, H, W) normalised per channel with ``mean``/``std``
    (as the network sees them) and flattened, (N, C*H*W); :func:`neural_codes` normalises."""
    return normalizer(mean, std, torch.device("cpu"))(images.float()).flatten(1)


# -- the FAISS index ------------------------------------------------------------------------

def default_nlist(n: int) -> int:
    """IVF cells for ``n`` codes: about 4 sqrt(n), with at least 39 codes per cell (what FAISS's
    k-means asks for)."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def default_nprobe(nlist: int) -> int:
    """IVF cells visited per query: 1/32 of them, at least 8 (or all when fewer)."""
    return min(nlist, max(8, round(nlist / 32)))


def faiss_index(codes: torch.Tensor, kind: Kind, settings: dict[str, int]) -> Any:
    """A FAISS inner-product index of ``codes`` (N, D), trained and filled; ``settings`` as
    :func:`index_settings` gives them."""
    faiss = _faiss()
    x = np.ascontiguousarray(codes.numpy(), dtype=np.float32)
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, settings["nlist"],
                                   faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0                        # k-means' initial centroids: reproducible
        # k-means on at most 64 codes per cell (FAISS: 256; it asks for 39): a quarter of the
        # training time, and the cells are as good for search
        index.cp.max_points_per_centroid = IVF_TRAIN_PER_CELL
        index.train(x)
        index.nprobe = settings["nprobe"]
    else:
        index = faiss.IndexHNSWFlat(d, settings["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = settings["ef_search"]
    index.add(x)
    return index


def index_settings(kind: Kind, n: int, nlist: int | None = None, nprobe: int | None = None,
                   m: int | None = None, ef_search: int | None = None) -> dict[str, int]:
    """The settings of a ``kind`` index of ``n`` codes, defaults filled in and checked:
    ivf ``nlist``, ``nprobe``; hnsw ``m``, ``ef_search``; flat none."""
    given = {"nlist": nlist, "nprobe": nprobe, "m": m, "ef_search": ef_search}
    for name, value in given.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise CnnlabError(f"--{name.replace('_', '-')} {value!r}: give a positive number")
    wrong = [name for name, value in given.items() if value is not None
             and name not in {"ivf": ("nlist", "nprobe"), "hnsw": ("m", "ef_search")}.get(kind, ())]
    if wrong:
        flags = ", ".join(f"--{w.replace('_', '-')}" for w in wrong)
        raise CnnlabError(f"{flags} set an index of another kind than --kind {kind}; drop "
                          f"{flags} (--nlist, --nprobe: ivf; --m, --ef-search: hnsw)")
    if kind == "ivf":
        cells = nlist or default_nlist(n)
        if cells > n:
            raise CnnlabError(f"--nlist {cells} is more cells than the {n:,} codes to index; "
                              f"give --nlist {default_nlist(n)} or less")
        probes = nprobe or default_nprobe(cells)
        if probes > cells:
            raise CnnlabError(f"--nprobe {probes} is more than the index's {cells} cells; give "
                              f"--nprobe {cells} or less")
        return {"nlist": cells, "nprobe": probes}
    if kind == "hnsw":
        return {"m": m or HNSW_M, "ef_search": ef_search or HNSW_EF_SEARCH}
    return {}


def torch_search(queries: torch.Tensor, codes: torch.Tensor, k: int, block: int = 1024
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-``k`` by plain torch matrix products: ``(similarities (Q, k),
    positions (Q, k))``, best first. ``block`` queries at a time meet the database in chunks
    of ``CHUNK_ELEMENTS`` similarities; each chunk's top-k is merged into the running one, so
    the database is read once per block of queries."""
    _check_k(k, len(codes), "k")
    q_all, n = queries.float(), len(codes)
    rows = max(k, CHUNK_ELEMENTS // max(1, min(len(q_all), block)))   # database rows a chunk
    sims, positions = [], []
    for qs in range(0, len(q_all), block):
        q = q_all[qs:qs + block]
        best_v = q.new_empty(len(q), 0)
        best_i = torch.empty(len(q), 0, dtype=torch.long)
        for start in range(0, n, rows):
            s = q @ codes[start:start + rows].float().T                    # b x rows
            top = s.topk(min(k, s.shape[1]), dim=1)
            v = torch.cat([best_v, top.values], 1)                         # b x (<= 2k)
            i = torch.cat([best_i, top.indices + start], 1)
            merged = v.topk(min(k, v.shape[1]), dim=1)
            best_v, best_i = merged.values, i.gather(1, merged.indices)
        sims.append(best_v)
        positions.append(best_i)
    return torch.cat(sims), torch.cat(positions)


def recall_at_k(found: torch.Tensor, exact: torch.Tensor) -> float:
    """The mean share of each row of ``exact`` (Q, k) (the true k nearest) that the same row of
    ``found`` (Q, k) holds."""
    if found.shape != exact.shape or found.dim() != 2 or found.shape[1] == 0:
        raise ShapeError(f"recall_at_k needs two (Q, k) tensors of positions, got "
                         f"{tuple(found.shape)} and {tuple(exact.shape)}")
    hits = (found.unsqueeze(2) == exact.unsqueeze(1)).any(2)       # Q x k: found[i] in exact
    return float(hits.float().sum(1).div(exact.shape[1]).mean())


@dataclass
class Hits:
    """What a search found: ``similarities`` (Q, k) best first, ``positions`` (Q, k) in the
    index, and their ``ids`` (the examples' indices in the indexed split) and ``labels``."""

    similarities: torch.Tensor
    positions: torch.Tensor
    ids: torch.Tensor
    labels: torch.Tensor


@dataclass
class RetrievalIndex:
    """A FAISS index of codes with what they are: ``ids`` (N,) (positions in the indexed
    split), ``labels`` (N,), the ``pca`` applied after the first normalisation (or None), and
    a JSON-ready ``description`` (run, layer, data, kind, recall, ...)."""

    index: Any
    ids: torch.Tensor
    labels: torch.Tensor
    description: dict[str, Any]
    pca: PCA | None = None
    _codes: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def classes(self) -> list[str]:
        return list(self.description["classes"])

    def codes(self) -> torch.Tensor:
        """Every indexed code (N, D), read back from the index (exact: flat storage)."""
        if self._codes is None:
            index = self.index
            if self.description["kind"] == "ivf":
                index = _faiss().clone_index(index)
                index.make_direct_map()                 # IVF lists -> position lookups
            self._codes = torch.from_numpy(index.reconstruct_n(0, len(self)))
        return self._codes

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index file atomically (see the module's docstring)."""
        out = Path(path)
        blob = _faiss().serialize_index(self.index)                 # uint8 numpy array
        tensors = {"faiss": torch.from_numpy(np.ascontiguousarray(blob)),
                   "ids": self.ids.contiguous(), "labels": self.labels.contiguous()}
        if self.pca is not None:
            tensors |= {"pca_mean": self.pca.mean.contiguous(),
                        "pca_matrix": self.pca.matrix.contiguous()}
        metadata = {"format": FORMAT, "version": str(VERSION),
                    "faiss_sha256": hashlib.sha256(blob.tobytes()).hexdigest(),
                    "description": json.dumps(self.description)}
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise storage_error(f"cannot create the folder {str(out.parent)!r}", err) from None
        write_safetensors(out, tensors, metadata)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RetrievalIndex:
        """Read an index file; anything else, or a damaged one, is a one-line error."""
        where = str(path)
        rebuild = "build it again with `cnnlab index`"
        if not Path(where).is_file():
            raise CnnlabError(f"index {where!r} does not exist; build one with `cnnlab index "
                              "RUN --out FILE`")
        try:
            with safe_open(where, framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(where)
        except (SafetensorError, OSError, ValueError) as err:
            raise CnnlabError(f"{where} is not a readable index file ({_first_line(err)}); "
                              f"{rebuild}") from None
        if meta.get("format") != FORMAT:
            raise CnnlabError(f"{where} is a safetensors file but not a retrieval index (no "
                              f"format {FORMAT!r}); {rebuild}")
        version = meta.get("version", "")
        if not version.isdigit() or int(version) > VERSION:
            raise CnnlabError(f"{where} has index format version {version!r}, this cnnlab "
                              f"reads up to {VERSION}; update cnnlab, or {rebuild}")
        try:
            description = json.loads(meta["description"])
            blob, ids, labels = tensors["faiss"], tensors["ids"], tensors["labels"]
            pca = (PCA(tensors["pca_mean"], tensors["pca_matrix"]) if "pca_matrix" in tensors
                   else None)
            dim, kind = int(description["dim"]), description["kind"]
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
            raise CnnlabError(f"{where} lacks part of an index ({type(err).__name__}: "
                              f"{_first_line(err)}); {rebuild}") from None
        raw = blob.numpy()
        if (blob.dtype != torch.uint8 or blob.dim() != 1
                or hashlib.sha256(raw.tobytes()).hexdigest() != meta.get("faiss_sha256")):
            raise CnnlabError(f"{where}: the FAISS index inside is damaged (its checksum does "
                              f"not match); {rebuild}")
        faiss = _faiss()
        try:
            index = faiss.deserialize_index(raw)
        except RuntimeError as err:
            raise CnnlabError(f"{where}: FAISS cannot read the index inside "
                              f"({_first_line(err, last=True)}); "
                              f"{rebuild}") from None
        n = int(index.ntotal)
        problems = [what for what, bad in (
            (f"{ids.shape[0]} ids", ids.shape != (n,)), (f"{labels.shape[0]} labels",
                                                        labels.shape != (n,)),
            (f"dimension {index.d}, described as {dim}", int(index.d) != dim),
            ("not an inner-product index", index.metric_type != faiss.METRIC_INNER_PRODUCT),
            (f"kind {kind!r}", kind not in KINDS),
            ("a PCA of another size", pca is not None and (
                pca.matrix.dim() != 2 or pca.matrix.shape[1] != dim
                or pca.mean.shape != pca.matrix.shape[:1]))) if bad]
        if problems:
            raise CnnlabError(f"{where}: the parts of the index do not fit together "
                              f"({'; '.join(problems)} for {n:,} codes); {rebuild}")
        return cls(index, ids.long(), labels.long(), description, pca)


def _first_line(err: BaseException, width: int = 120, last: bool = False) -> str:
    """The first line of an exception's message, cut to ``width`` (its end where ``last``:
    FAISS puts its reason after the source location)."""
    line = (str(err).splitlines() or [type(err).__name__])[0]
    return line[-width:] if last else line[:width]


def build_index(features: torch.Tensor, labels: torch.Tensor, description: dict[str, Any],
                *, ids: torch.Tensor | None = None, pca: int | None = None,
                kind: Kind = "flat", nlist: int | None = None, nprobe: int | None = None,
                m: int | None = None, ef_search: int | None = None) -> RetrievalIndex:
    """Index ``features`` (N, D_in) as neural codes (:func:`neural_codes`, with a PCA to
    ``pca`` dimensions fitted on them). ``kind``: ``"flat"`` (exact), ``"ivf"`` (``nlist``
    cells, ``nprobe`` visited; defaults :func:`default_nlist`, :func:`default_nprobe`) or
    ``"hnsw"`` (``m`` links, ``ef_search``); an approximate index's recall@10 against exact
    search on ``RECALL_SAMPLE`` evenly spaced indexed codes goes into its description."""
    if features.dim() != 2 or labels.shape != features.shape[:1] or len(features) == 0:
        raise ShapeError(f"build_index needs features (N, D) and labels (N,), N >= 1, got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    if kind not in KINDS:
        raise CnnlabError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
    n, raw_dim = features.shape
    ids = torch.arange(n) if ids is None else ids.long()
    if ids.shape != (n,):
        raise ShapeError(f"build_index: {tuple(ids.shape)} ids for {n} features; give one each")
    settings = index_settings(kind, n, nlist, nprobe, m, ef_search)
    if pca is not None and not 1 <= pca <= min(raw_dim, n):
        raise CnnlabError(f"--pca {pca}: the codes have {raw_dim} dimensions and there are "
                          f"{n:,} of them; give a size from 1 to {min(raw_dim, n)}")
    codes = l2_normalize(features)
    fitted = None if pca is None else PCA.fit(codes, pca)
    if fitted is not None:
        codes = l2_normalize(fitted(codes))                  # = neural_codes(features, fitted)
    built = faiss_index(codes, kind, settings)
    desc = {**description, "kind": kind, **settings, "raw_dim": raw_dim,
            "dim": int(codes.shape[1]), "pca": pca, "count": n}
    if kind != "flat":
        desc |= _recall(built, codes)
    return RetrievalIndex(built, ids, labels.long().clone(), desc, fitted, codes)


def _recall(index: Any, codes: torch.Tensor) -> dict[str, Any]:
    """recall@10 of ``index`` against exact search, the queries ``RECALL_SAMPLE`` evenly
    spaced indexed codes (each finds itself first in both)."""
    n = len(codes)
    k = min(RECALL_K, n)
    sample = spaced(n, RECALL_SAMPLE)
    queries = codes[sample]
    _, exact = torch_search(queries, codes, k)
    _, found = index.search(np.ascontiguousarray(queries.numpy()), k)
    return {"recall_at_k": recall_at_k(torch.from_numpy(found).long(), exact),
            "recall_k": k, "recall_queries": len(sample)}


def search(index: RetrievalIndex, codes: torch.Tensor, k: int = 10) -> Hits:
    """The ``k`` nearest indexed codes (inner product = cosine) of each query code (Q, D),
    through the FAISS index (approximate when the index is)."""
    _check_k(k, len(index), "--k")
    if codes.dim() != 2 or codes.shape[1] != index.dim:
        raise ShapeError(f"query codes {tuple(codes.shape)} do not fit the index's "
                         f"{index.dim}-d codes")
    sims, positions = index.index.search(np.ascontiguousarray(codes.float().numpy()), k)
    p = torch.from_numpy(positions).long()
    if (p < 0).any():                       # FAISS pads with -1 when it found fewer than k
        raise CnnlabError(f"the {index.description['kind']} index found fewer than {k} "
                          "neighbours for a query; give a smaller --k, or build the index "
                          "with more --nprobe / --ef-search")
    return Hits(torch.from_numpy(sims), p, index.ids[p], index.labels[p])


def _check_k(k: int, n: int, flag: str) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise CnnlabError(f"{flag} {k!r}: give a positive number")
    if k > n:
        raise CnnlabError(f"{flag} {k} is more than the {n:,} codes in the index; give {flag} "
                          f"{n} or less")


# -- the run behind an index ------------------------------------------------------------------

def _weights_digest(run: Path) -> str:
    h = hashlib.sha256()
    with open(run / WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def index_run(run: str | os.PathLike[str], data: str | None = None,
              data_dir: str | None = None, split: str = "train", layer: str = "fc7", *,
              pool: Pool = "flatten", pca: int | None = None, kind: Kind = "flat",
              nlist: int | None = None, nprobe: int | None = None, m: int | None = None,
              ef_search: int | None = None, batch_size: int = 500, progress: bool = False
              ) -> RetrievalIndex:
    """Index the codes of ``split`` of ``data`` (default: the run's own data set) at ``layer``
    of a trained run (:func:`build_index`)."""
    info = run_info(run)
    ds = run_data(info, data, data_dir, split)
    model = _model(info)
    features, labels = extract_features(model, ds, layer, pool=pool, batch_size=batch_size,
                                        mean=info.mean, std=info.std, progress=progress)
    name = data or info.config.data
    if data_dir is None and name == info.config.data:
        data_dir = info.config.data_dir                # what run_data read
    description = {
        "run": {"path": str(info.path.resolve()), "model": info.model, "layer": layer,
                "pool": pool, "input_shape": list(info.input_shape), "mean": list(info.mean),
                "std": list(info.std), "data": info.config.data,
                "weights_sha256": _weights_digest(info.path)},
        "data": name, "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
        "split": split, "classes": list(ds.classes)}
    return build_index(features, labels, description, pca=pca, kind=kind, nlist=nlist,
                       nprobe=nprobe, m=m, ef_search=ef_search)


def _model(info: RunInfo) -> nn.Module:
    from cnnlab.train.loop import resolve_device

    model, _ = load_run(info.path)
    return model.to(resolve_device("auto"))


def index_run_info(index: RetrievalIndex, run: str | os.PathLike[str] | None = None) -> RunInfo:
    """The run behind ``index`` (its folder, or ``run`` where it moved), checked to be the run
    the index was built from: same model, input and normalisation, same weights."""
    desc = index.description["run"]
    path = Path(run) if run is not None else Path(desc["path"])
    rebuild = f"build the index again with `cnnlab index {path} ...`"
    if run is None and not path.is_dir():
        raise CnnlabError(f"the index's run folder {str(path)!r} no longer exists; pass --run "
                          "with where it is now, or build the index again")
    info = run_info(path)
    theirs = {"model": info.model, "input_shape": list(info.input_shape),
              "mean": list(info.mean), "std": list(info.std)}
    wrong = [f"{k} {theirs[k]} (the index: {desc[k]})" for k in theirs if theirs[k] != desc[k]]
    if wrong:
        raise CnnlabError(f"the index was built from another run than {path}: {'; '.join(wrong)}"
                          f"; query with the run it was built from, or {rebuild}")
    if _weights_digest(info.path) != desc["weights_sha256"]:
        raise CnnlabError(f"the weights in {path / WEIGHTS} are not those the index was built "
                          f"from (the run was trained again, or is another {info.model} run); "
                          f"{rebuild}")
    return info


def query_codes(index: RetrievalIndex, images: ImageDataset | torch.Tensor, *,
                run: str | os.PathLike[str] | None = None, batch_size: int = 500,
                progress: bool = False) -> torch.Tensor:
    """Codes (Q, D) of query images, from the index's run, layer and pool, normalised and
    compressed as the indexed codes were. ``images``: a data set sized for the run, or pixels
    (Q, C, H, W) in [0, 1] of the run's input shape."""
    info = index_run_info(index, run)
    desc = index.description["run"]
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or tuple(images.shape[1:]) != info.input_shape:
            raise ShapeError(f"query images {tuple(images.shape)} do not fit the run's input "
                             f"{info.input_shape}; give (Q, C, H, W) of that shape")
        images = ImageDataset(images, torch.full((len(images),), -1), name="queries",
                              split="query", classes=info.classes, mean=info.mean,
                              std=info.std)
    features, _ = extract_features(_model(info), images, desc["layer"], pool=desc["pool"],
                                   batch_size=batch_size, mean=info.mean, std=info.std,
                                   progress=progress)
    raw_dim = int(index.description["raw_dim"])
    if features.shape[1] != raw_dim:
        raise CnnlabError(f"{info.path} gives {features.shape[1]}-d features at "
                          f"{desc['layer']!r} but the index holds {raw_dim}-d ones; query with "
                          "the run and layer it was built from")
    return neural_codes(features, index.pca)


def read_queries(paths: Sequence[str | os.PathLike[str]], shape: tuple[int, int, int]
                 ) -> tuple[torch.Tensor, list[str]]:
    """Query image files as pixels (Q, C, H, W) in [0, 1] for a run of input ``shape``: the
    channel count must match (grey for 1, RGB for 3); another size is resized to the run's
    (bilinear, antialiased when shrinking, as data sets are resized when loaded). Returns the
    pixels and a note for each image that was resized."""
    from PIL import Image

    from cnnlab.data import resize
    from cnnlab.visualize.command import read_images

    c, h, w = shape
    out, notes = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                own = (c, img.height, img.width)
        except (OSError, ValueError, Image.DecompressionBombError):
            own = shape                                 # read_images says what is wrong
        pixels = read_images([path], own)               # 1 x C x H' x W', channels checked
        if own[1:] != (h, w):
            pixels = resize(pixels, (h, w))
            notes.append(f"{path} is {own[1]} x {own[2]} (H x W); resized to the run's "
                         f"{h} x {w}")
        out.append(pixels)
    if not out:
        raise CnnlabError("--image names no files; give at least one")
    return torch.cat(out), notes


# -- evaluation -------------------------------------------------------------------------------

def ranking_scores(queries: torch.Tensor, query_labels: torch.Tensor, codes: torch.Tensor,
                   labels: torch.Tensor, k: int = 10, exclude: torch.Tensor | None = None
                   ) -> dict[str, Any]:
    """Retrieval mAP and precision@k of ``queries`` (Q, D) against the whole database ``codes``
    (N, D), ranked by inner product, relevance = same label.

    AP of a query = the mean, over its relevant database items, of the precision at each one's
    rank (relevant items counted by rank: a cumulative sum); mAP is its mean over the queries
    with at least one relevant item. Equal similarities keep the database's order.
    ``exclude`` (Q,): a database position to leave out of each query's ranking (the query
    itself, when it is in the database; -1: none). Queries go through in chunks of
    ``CHUNK_ELEMENTS`` similarities."""
    n = len(codes)
    _check_k(k, n - (exclude is not None), "--k")
    rows = max(1, CHUNK_ELEMENTS // n)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    aps, precisions, relevant = [], [], []
    for start in range(0, len(queries), rows):
        q = queries[start:start + rows].float()
        sims = q @ codes.float().T                                           # q x N
        rel = labels.view(1, -1) == query_labels[start:start + rows].view(-1, 1)
        if exclude is not None:
            drop = exclude[start:start + rows]
            hit = (drop >= 0).nonzero().flatten()
            sims[hit, drop[hit]] = -math.inf                     # ranked last ...
            rel[hit, drop[hit]] = False                          # ... and not relevant
        order = sims.argsort(dim=1, descending=True, stable=True)
        ranked = rel.gather(1, order)                                        # q x N, by rank
        hits = ranked.cumsum(1, dtype=torch.float64)        # relevant items up to each rank
        total = hits[:, -1]
        ap = (hits / ranks * ranked).sum(1) / total.clamp_min(1)
        aps.append(ap[total > 0])
        precisions.append(ranked[:, :k].double().mean(1))
        relevant.append(total)
    ap_all, prec = torch.cat(aps), torch.cat(precisions)
    return {"map": float(ap_all.mean()) if len(ap_all) else math.nan,
            "precision_at_k": float(prec.mean()), "k": k, "queries": len(queries),
            "queries_without_relevant": len(queries) - len(ap_all), "database": n,
            "ap": ap_all}


def evaluate(index: RetrievalIndex, data: str | None = None, data_dir: str | None = None,
             split: str = "test", k: int = 10, *, count: int | None = None,
             run: str | os.PathLike[str] | None = None, baselines: bool = True,
             batch_size: int = 500, progress: bool = False) -> dict[str, Any]:
    """mAP and precision@k of ``split`` of ``data`` (default: the index's data set) as queries
    against every indexed code, ranked exactly (all codes, torch; whatever the index's kind),
    next to the same figures for raw pixels and for PCA of raw pixels to the codes' dimension.
    ``count``: that many queries, evenly spaced through the split. The queries' own entry is
    left out when they come from the indexed split itself."""
    desc = index.description
    info = index_run_info(index, run)
    name = data or desc["data"]
    if data_dir is None and name == desc["data"]:
        data_dir = desc["data_dir"]
    queries = pick_queries(run_data(info, name, data_dir, split), count)
    _check_k(k, len(index), "--k")
    if not isinstance(queries.ds.labels, torch.Tensor) or queries.ds.labels.dim() != 1:
        raise CnnlabError(f"{name} {split} has no class labels, which --evaluate takes as "
                          "relevance; evaluate on a classification data set")
    same = name == desc["data"] and split == desc["split"]
    position = {int(i): p for p, i in enumerate(index.ids.tolist())} if same else {}
    exclude = (torch.tensor([position.get(int(i), -1) for i in queries.ids]) if same else None)
    q_labels = queries.ds.labels
    codes = query_codes(index, queries.ds, run=run, batch_size=batch_size, progress=progress)
    r = desc["run"]
    what = f"{r['model']} {r['layer']}" + (f" ({r['pool']})" if r["pool"] != "flatten" else "")
    rows = [{"codes": what + (f" + PCA {index.dim}" if index.pca is not None else ""),
             "dim": index.dim, **ranking_scores(codes, q_labels, index.codes(), index.labels,
                                                k, exclude)}]
    if baselines:
        db = run_data(info, desc["data"], desc["data_dir"], desc["split"])
        if len(db) <= int(index.ids.max()):
            raise CnnlabError(f"{desc['data']} {desc['split']} now holds {len(db):,} images but "
                              f"the index has ids up to {int(index.ids.max()):,}; build the "
                              "index again")
        db_pixels = pixel_codes(_pixels(db.subset(index.ids)), info.mean, info.std)
        q_pixels = pixel_codes(_pixels(queries.ds), info.mean, info.std)
        dim = min(index.dim, db_pixels.shape[1], len(db_pixels))
        pca = PCA.fit(l2_normalize(db_pixels), dim)
        for label, fitted in (("raw pixels", None), (f"raw pixels + PCA {dim}", pca)):
            rows.append({"codes": label, "dim": int(dim if fitted else db_pixels.shape[1]),
                         **ranking_scores(neural_codes(q_pixels, fitted), q_labels,
                                          neural_codes(db_pixels, fitted), index.labels, k,
                                          exclude)})
    for row in rows:
        row.pop("ap")
    return {"data": queries.ds.name, "split": split, "queries": len(queries.ids),
            "database": {"data": desc["data"], "split": desc["split"], "count": len(index)},
            "index_kind": desc["kind"], "search": "exact (every indexed code ranked)", "k": k,
            "left_out_self": same, "rows": rows}


def _pixels(ds: ImageDataset) -> torch.Tensor:
    """Every image of ``ds`` (N, C, H, W), decoded now when the folder stays on disk."""
    return ds.images if isinstance(ds.images, torch.Tensor) else ds.images[torch.arange(len(ds))]


@dataclass
class Queries:
    """Query images: a data set and each one's index in the split it was taken from."""

    ds: ImageDataset
    ids: list[int]


def pick_queries(ds: ImageDataset, count: int | None) -> Queries:
    """``count`` images evenly spaced through ``ds`` (a folder is sorted by class), or all."""
    if len(ds) == 0:
        raise CnnlabError(f"{ds.name} {ds.split} holds no images; pick another --data or "
                          "--split")
    if count is None or count >= len(ds):
        return Queries(ds, list(range(len(ds))))
    if count < 1:
        raise CnnlabError(f"--count {count}: give a positive number")
    ids = spaced(len(ds), count)
    return Queries(ds.subset(ids), ids.tolist())


def spaced(n: int, count: int) -> torch.Tensor:
    """``min(count, n)`` positions evenly spaced over ``0 .. n - 1``, the first and last
    included, ascending (int64)."""
    if count >= n:
        return torch.arange(n)
    if count == 1:
        return torch.zeros(1, dtype=torch.long)
    return torch.tensor([round(i * (n - 1) / (count - 1)) for i in range(count)])
