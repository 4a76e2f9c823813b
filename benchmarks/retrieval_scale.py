"""Retrieval at scale (8.6.1): 1,000,000 codes of 256 dimensions, FAISS against plain torch.

Issue 11 (b). The codes are neural codes of REAL images, repeated with noise: the FC7 features
(1,024-d) of the 20,000 CIFAR-10 (JPEG copy) training images that ``benchmarks/retrieval.py``
indexes, from its trained zfnet_cifar (read from the features file it leaves beside the run),
L2-normalised, PCA to 256, normalised again. To reach ``--n`` (1,000,000) codes each real code
is repeated 50 times with Gaussian noise whose expected length is half the median distance
from a real code to its nearest other real code, then normalised again: the set keeps the real
codes' neighbourhoods, but is 20,000 tight clusters of 50 (easier for an approximate index
than 1,000,000 distinct images would be). The queries are the codes of ``--queries`` (1,000)
CIFAR-10 test images (not in the database), through the same PCA.

Side by side on the same codes and queries, k = 10: ``torch_search`` (cnnlab's chunked matrix
products with a running top-k), FAISS flat (exact), IVF (``nlist`` 4 sqrt(N), ``nprobe``
swept) and HNSW (M 32, ``efSearch`` swept; ``--kinds``). For each: build seconds, queries/s
(median of ``--repeats`` searches of all queries), the index's bytes (its serialisation) and
the process's resident memory growth while it was built, and recall@10 against exact search
(torch's top-10), also counting as found a neighbour within 1e-6 of the true 10th similarity
(neural codes crowd: neighbouring similarities differ by about 1e-5, so float32 rounding in
another summation order swaps some at rank 10, whatever the index).
Search runs on ``--threads`` (1) thread, torch and FAISS alike; builds on ``--build-threads``
(2) FAISS threads, since IVF's k-means and HNSW's graph take minutes on one.

    OMP_NUM_THREADS=1 nice python benchmarks/retrieval_scale.py --json \\
        benchmarks/results/retrieval_scale.json
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine, write_json
from pretraining import stratified
from retrieval import features_file

from cnnlab.apps.retrieval import (
    PCA,
    faiss_index,
    index_settings,
    l2_normalize,
    neural_codes,
    recall_at_k,
    torch_search,
)
from cnnlab.train.transfer import extract_features, load_features

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "runs" / "bench-retrieval-zfnet_cifar-cifar10-jpeg-30000"
K = 10


def rss() -> int:
    """This process's resident memory now, in bytes (Linux), after handing freed heap memory
    back to the system (so that an index built where another was freed still shows)."""
    import ctypes

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


SLOW = 30.0         # seconds: a search this slow is measured once, not ``--repeats`` times


def timed(search: Callable[[], Any], repeats: int) -> tuple[float, int, Any]:
    """(median seconds of ``repeats`` calls (one when the first takes over ``SLOW``), the
    calls made, the last call's result)."""
    times, out = [], None
    while len(times) < repeats and not (times and times[0] > SLOW):
        start = time.perf_counter()
        out = search()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times), out


TIE = 1e-6          # similarities this close to the true 10th count as ties (float32 rounding)


def tie_recall(found: torch.Tensor, queries: torch.Tensor, db: torch.Tensor,
               tenth: torch.Tensor) -> float:
    """The share of found neighbours (Q, k) whose similarity (float64) is at least the true
    k-th best's less ``TIE``: recall that forgives the order of near-equal similarities."""
    sims = (queries.double().unsqueeze(1) * db[found].double()).sum(-1)     # Q x k
    return float((sims >= tenth.double().unsqueeze(1) - TIE).double().mean())


def codes_at_scale(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(database codes (n, 256), query codes (q, 256), how they were made)."""
    from cnnlab.train._runs import run_data, run_info
    from cnnlab.train.run import load_run

    path = features_file(str(args.run), args.db_count)
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run benchmarks/retrieval.py first (it trains "
                         "the run and writes the database's FC7 features)")
    features, _, _ = load_features(path)
    info = run_info(args.run)
    test = run_data(info, split="test")
    queries_ds = test.subset(stratified(test.labels, args.queries, seed=3))
    model, _ = load_run(args.run)
    q_features, _ = extract_features(model, queries_ds, "fc7", mean=info.mean, std=info.std)
    pca = PCA.fit(l2_normalize(features), args.dim)
    real, queries = neural_codes(features, pca), neural_codes(q_features, pca)
    # nearest other real code: the noise's scale
    sims, _ = torch_search(real, real, 2)
    nn_distance = (2 - 2 * sims[:, 1].clamp(max=1)).sqrt().median().item()
    sigma = 0.5 * nn_distance / args.dim ** 0.5          # E|noise| ~ sigma sqrt(D)
    copies = -(-args.n // len(real))
    g = torch.Generator().manual_seed(0)
    db = torch.empty(args.n, args.dim)
    for c in range(copies):                               # copy c of every code, in turn
        rows = slice(c * len(real), min(args.n, (c + 1) * len(real)))
        base = real[: rows.stop - rows.start]
        noise = torch.randn(base.shape, generator=g) * (sigma if c else 0.0)
        db[rows] = l2_normalize(base + noise)
    data = info.config.data + (f" ({Path(info.config.data_dir).name})"
                               if info.config.data == "folder" and info.config.data_dir else "")
    return db, queries, {"real_codes": len(real), "copies": copies, "noise_sigma": sigma,
                         "median_nn_distance": nn_distance, "source": str(path), "data": data,
                         "model": info.model}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=RUN)
    parser.add_argument("--db-count", type=int, default=20000, help="real codes (the features "
                        "file benchmarks/retrieval.py wrote)")
    parser.add_argument("--n", type=int, default=1_000_000, help="database codes")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100, help="flat: also in batches of this")
    parser.add_argument("--threads", type=int, default=1, help="search threads")
    parser.add_argument("--build-threads", type=int, default=2, help="FAISS build threads")
    parser.add_argument("--kinds", nargs="+", default=["ivf", "hnsw"], choices=["ivf", "hnsw"])
    parser.add_argument("--nprobe", type=int, nargs="+", help="ivf nprobe values to search "
                        "with (default: the default, a quarter and four times it)")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    import faiss

    torch.set_num_threads(args.threads)
    db, queries, made = codes_at_scale(args)
    q = np.ascontiguousarray(queries.numpy())
    print(f"{args.n:,} codes of {args.dim} dims ({made['real_codes']:,} real {made['model']} "
          f"FC7 + PCA codes of {made['data']} x {made['copies']} noisy copies, noise sigma "
          f"{made['noise_sigma']:.4f} per dim), {len(q):,} test-image queries, k = {K}; search "
          f"on {args.threads} thread(s), FAISS builds on {args.build_threads}", flush=True)
    rows: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        recall = ("" if row.get("recall_at_10") is None else f"  recall@10 "
                  f"{row['recall_at_10']:.4f} (ties {row['recall_at_10_ties']:.4f})")
        print(f"{row['method']:<40} build {row['build_seconds']:7.1f} s  "
              f"{row['queries_per_second']:9.1f} queries/s  index {row['index_bytes'] / 2**20:7.0f}"
              f" MiB  RSS +{row['rss_growth'] / 2**20:6.0f} MiB{recall}", flush=True)

    seconds, calls, (exact_sims, exact) = timed(partial(torch_search, queries, db, K),
                                                args.repeats)
    tenth = exact_sims[:, -1]
    report({"method": "torch matmul + top-k", "build_seconds": 0.0, "index_bytes":
            db.numel() * 4, "rss_growth": 0, "queries_per_second": len(q) / seconds,
            "search_seconds": seconds, "repeats": calls, "recall_at_10": None, "exact": True})

    def build(kind: str, settings: dict[str, int]) -> tuple[Any, float, int, int]:
        before = rss()
        faiss.omp_set_num_threads(args.build_threads)
        start = time.perf_counter()
        index = faiss_index(db, kind, settings)                 # type: ignore[arg-type]
        took = time.perf_counter() - start
        grown = rss() - before
        size = len(faiss.serialize_index(index))
        faiss.omp_set_num_threads(args.threads)
        return index, took, size, grown

    flat, took, size, grown = build("flat", {})
    # FAISS 1.15's flat search takes BLAS for a large batch of queries (1,000 here) but a loop
    # of SIMD dot products for a small one (below its default distance_compute_blas_threshold
    # of 128,000 "queries", which it compares with more than the query count): all 1,000
    # queries at once and in batches of --batch, with the default and with threshold 20
    default_threshold = faiss.cvar.distance_compute_blas_threshold

    def batched(index: Any) -> tuple[Any, Any]:
        parts = [index.search(q[i:i + args.batch], K) for i in range(0, len(q), args.batch)]
        return np.concatenate([d for d, _ in parts]), np.concatenate([i for _, i in parts])

    for threshold in (default_threshold, 20):
        faiss.cvar.distance_compute_blas_threshold = threshold
        for batch in (len(q), args.batch):
            search = partial(flat.search, q, K) if batch == len(q) else partial(batched, flat)
            seconds, calls, (_, found) = timed(search, args.repeats)
            report({"method": f"faiss flat, {batch:,} a batch, thr {threshold:,}",
                    "build_seconds": took, "index_bytes": size, "rss_growth": grown,
                    "queries_per_second": len(q) / seconds, "search_seconds": seconds,
                    "repeats": calls, "exact": True, "blas_threshold": threshold,
                    "batch": batch,
                    "recall_at_10": recall_at_k(torch.from_numpy(found).long(), exact),
                    "recall_at_10_ties": tie_recall(torch.from_numpy(found).long(), queries, db,
                                                    tenth)})
    faiss.cvar.distance_compute_blas_threshold = default_threshold
    del flat
    for kind in args.kinds:
        settings = index_settings(kind, args.n)                 # type: ignore[arg-type]
        index, took, size, grown = build(kind, settings)
        if kind == "ivf":
            default = settings["nprobe"]
            sweep = args.nprobe or [max(1, default // 4), default, min(settings["nlist"],
                                                                      4 * default)]
        else:
            sweep = args.ef_search
        for value in sweep:
            if kind == "ivf":
                index.nprobe = value
                label = f"faiss ivf{settings['nlist']} nprobe {value}"
            else:
                index.hnsw.efSearch = value
                label = f"faiss hnsw{settings['m']} efSearch {value}"
            seconds, calls, (_, found) = timed(partial(index.search, q, K), args.repeats)
            report({"method": label, "kind": kind, "settings": {**settings, **(
                {"nprobe": value} if kind == "ivf" else {"ef_search": value})},
                "build_seconds": took, "index_bytes": size, "rss_growth": grown,
                "queries_per_second": len(q) / seconds, "search_seconds": seconds,
                "repeats": calls, "exact": False,
                "recall_at_10": recall_at_k(torch.from_numpy(found).long(), exact),
                    "recall_at_10_ties": tie_recall(torch.from_numpy(found).long(), queries, db,
                                                    tenth)})
        del index
    if args.json:
        write_json(args.json, {
            "benchmark": "retrieval_scale", "machine": machine(), "faiss": faiss.__version__,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                         if k != "json"},
            "codes": made, "k": K, "rows": rows,
            "note": "1,000,000 codes = 20,000 real CIFAR-10 (JPEG) FC7+PCA-256 codes x 50 "
                    "copies with small Gaussian noise; queries: real test images' codes; "
                    "recall@10 against torch's exact top-10; median of the repeats"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
