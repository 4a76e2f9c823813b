"""``cnnlab index`` and ``cnnlab retrieve``: content-based image retrieval on a trained run's
neural codes (8.6.1), on top of :mod:`cnnlab.apps.retrieval`.

``retrieve`` finds each query's nearest indexed images (a table, or JSON) and with ``--out``
draws each query beside them (PNG pages, green frame: same class as the query, red: another);
``--evaluate`` measures mAP and precision@k against raw-pixel baselines. Query files of another
size than the run's input are resized to it (a note says so; the channel count must match).
Nothing is half-written: the index is one file written atomically, the pictures are drawn in a
temporary folder moved to ``--out`` once complete; existing files are kept unless
``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError

__all__ = ["EPILOG_INDEX", "EPILOG_RETRIEVE", "PAGE_ROWS", "add_parser", "cmd_index",
           "cmd_retrieve"]

PAGE_ROWS = 10              # queries per PNG page
DEFAULT_COUNT = 10          # query images of a data set searched when --count is not given
SAME, OTHER = (0.16, 0.66, 0.24), (0.86, 0.16, 0.16)   # frame colours: same class, another
RESULTS = "results.json"    # beside the pictures: what the table shows

EPILOG_INDEX = """\
examples:
  cnnlab index runs/lenet5 --out digits.index                      # FC7 codes of the train split
  cnnlab index runs/zf --data mnist --data-dir DIR --pca 128 --out mnist.index
  cnnlab index runs/zf --kind ivf --nprobe 16 --out big.index      # approximate: recall printed
  cnnlab index runs/vgg --layer conv5_3 --pool avg --out pooled.index
"""

EPILOG_RETRIEVE = """\
examples:
  cnnlab retrieve digits.index --image a.png b.jpg --k 5 --out found/
  cnnlab retrieve digits.index --split test --count 20 --out found/ --json
  cnnlab retrieve digits.index --evaluate                          # mAP, P@10 vs raw pixels
  cnnlab retrieve mnist.index --evaluate --data mnist --data-dir DIR --count 1000
"""


def add_parser(subparsers: Any) -> None:
    """Add ``index`` and ``retrieve`` to ``cnnlab``'s subcommands."""
    from cnnlab.apps.retrieval import HNSW_EF_SEARCH, HNSW_M, KINDS, RECALL_K
    from cnnlab.data import SPLITS
    from cnnlab.train.config import SETTINGS
    from cnnlab.train.transfer import Pool

    batch = SETTINGS["eval_batch_size"].default
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "index", help="index a data set's neural codes from a trained run (FAISS)",
        description="Pass a split of a data set through a trained run and index one code per "
        "image for retrieval (8.6.1): the layer's features, L2-normalised, optionally "
        "compressed by PCA (fitted on these codes) and normalised again; searched by cosine "
        "similarity. The index file (safetensors) holds the FAISS index, the ids, labels and "
        "class names, the PCA, and what the codes are (run, layer, data).",
        epilog=EPILOG_INDEX, formatter_class=fmt)
    p.add_argument("run", help="run folder written by `cnnlab train`")
    p.add_argument("--data", help="data set (default: the one the run was trained on)")
    p.add_argument("--data-dir", help="folder with the data files")
    p.add_argument("--split", choices=SPLITS, default="train", help="split to index "
                   "(default train)")
    p.add_argument("--layer", default="fc7", help="fc7 (default: the penultimate layer), or a "
                   "chapter layer name (conv3, c5, ...) or module path")
    p.add_argument("--pool", choices=typing.get_args(Pool), default="flatten",
                   help="a spatial volume C x H x W: all C*H*W values (flatten), or the mean of "
                   "each map (avg)")
    p.add_argument("--pca", type=int, metavar="D", help="compress the codes to D dimensions by "
                   "PCA (the neural-codes paper keeps its accuracy at 128)")
    p.add_argument("--kind", choices=KINDS, default="flat", help="flat: exact search "
                   "(default); ivf: inverted lists over k-means cells; hnsw: a neighbour graph "
                   f"(both approximate: their recall@{RECALL_K} against exact search is printed)")
    p.add_argument("--nlist", type=int, help="ivf: cells (default about 4 sqrt(N))")
    p.add_argument("--nprobe", type=int, help="ivf: cells visited per query (default nlist/32, "
                   "at least 8)")
    p.add_argument("--m", type=int, help=f"hnsw: links per node (default {HNSW_M})")
    p.add_argument("--ef-search", type=int, help="hnsw: candidates kept while searching "
                   f"(default {HNSW_EF_SEARCH})")
    p.add_argument("--out", required=True, metavar="INDEX", help="the index file to write")
    p.add_argument("--batch-size", type=int, default=batch,
                   help=f"images per batch (default {batch})")
    p.add_argument("--json", action="store_true", help="print the index's description as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = subparsers.add_parser(
        "retrieve", help="nearest indexed images of query images; --evaluate: mAP",
        description="Search an index built by `cnnlab index` (8.6.1). Queries are image files "
        "(--image; another size is resized to the run's input, the channel count must match) "
        "or images of a data set (default: the index's, split test), turned into codes by the "
        "index's own run and layer. Prints each query's k nearest with their cosine "
        "similarity; --out DIR draws them. --evaluate ranks the whole index for every query "
        "(exact) and reports mAP and precision@k, class labels as relevance, next to raw "
        "pixels and PCA of raw pixels to the same dimension.",
        epilog=EPILOG_RETRIEVE, formatter_class=fmt)
    p.add_argument("index", help="index file written by `cnnlab index`")
    p.add_argument("--image", nargs="+", metavar="PATH", help="query image files (PNG, JPEG, "
                   "...)")
    p.add_argument("--data", help="query data set (default: the index's)")
    p.add_argument("--data-dir", help="folder with the data files")
    p.add_argument("--split", choices=SPLITS, help="query split (default test)")
    p.add_argument("--count", type=int, help="queries, evenly spaced through the split (default "
                   f"{DEFAULT_COUNT}; --evaluate: the whole split)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query; --evaluate: the k "
                   "of precision@k (default 10)")
    p.add_argument("--evaluate", action="store_true", help="mAP and precision@k of the split as "
                   "queries, with raw-pixel baselines")
    p.add_argument("--no-baselines", action="store_true", help="--evaluate: the index's codes "
                   "alone")
    p.add_argument("--out", metavar="DIR", help=f"draw the queries and their neighbours here "
                   f"(PNG pages of {PAGE_ROWS} queries) with {RESULTS}")
    p.add_argument("--run", help="the index's run folder, where it is now if it moved")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--batch-size", type=int, default=batch,
                   help=f"images per batch (default {batch})")
    p.add_argument("--overwrite", action="store_true", help="replace files in an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_retrieve)


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CnnlabError(f"--{name.replace('_', '-')} {value}: give a positive number")


def cmd_index(args: argparse.Namespace) -> int:
    from cnnlab.apps.retrieval import index_run

    _positive(args, "batch_size", "pca")
    out = Path(args.out)
    if out.is_dir():
        raise CnnlabError(f"--out {args.out!r} is a folder; give the index a file name, e.g. "
                          f"{out / 'codes.index'}")
    if out.exists() and not args.overwrite:
        raise CnnlabError(f"--out {args.out!r} already exists; pick another --out, or pass "
                          "--overwrite to replace it")
    index = index_run(args.run, args.data, args.data_dir, args.split, args.layer,
                      pool=args.pool, pca=args.pca, kind=args.kind, nlist=args.nlist,
                      nprobe=args.nprobe, m=args.m, ef_search=args.ef_search,
                      batch_size=args.batch_size, progress=not args.quiet)
    index.save(out)
    d = index.description
    if args.json:
        print(json.dumps({"index": str(out), **d}, indent=2))
        return 0
    pca = f", PCA {d['raw_dim']:,} -> {d['dim']}" if d["pca"] else ""
    kind = {"flat": "exact search (flat)",
            "ivf": f"ivf, {d.get('nlist')} cells, {d.get('nprobe')} visited per query",
            "hnsw": f"hnsw, {d.get('m')} links, ef-search {d.get('ef_search')}"}[d["kind"]]
    print(f"{len(index):,} codes of {d['dim']:,} dimensions ({d['run']['model']} at "
          f"{d['run']['layer']} on {d['data']} {d['split']}{pca}); {kind}; written to {out}")
    if d["kind"] != "flat":
        print(f"recall@{d['recall_k']} against exact search: {d['recall_at_k']:.4f} "
              f"({d['recall_queries']:,} of the indexed codes as queries)")
    return 0


def _check_retrieve(args: argparse.Namespace) -> None:
    _positive(args, "count", "k", "batch_size")
    data_given = [f"--{n.replace('_', '-')}" for n in ("data", "data_dir", "split", "count")
                  if getattr(args, n) is not None]
    if args.image and data_given:
        raise CnnlabError(f"--image and {', '.join(data_given)} both name queries; give one "
                          "or the other")
    if args.evaluate and args.image:
        raise CnnlabError("--evaluate measures a labelled split (--data, --split), not "
                          "--image files; drop --image")
    if args.evaluate and args.out:
        raise CnnlabError("--evaluate prints figures and draws nothing; drop --out (or drop "
                          "--evaluate to draw the neighbours)")
    if args.no_baselines and not args.evaluate:
        raise CnnlabError("--no-baselines belongs to --evaluate; drop it")
    if args.out and Path(args.out).is_file():
        raise CnnlabError(f"--out {args.out!r} is a file; give a folder for the pictures")
    if args.out and Path(args.out).is_dir() and any(Path(args.out).iterdir()) \
            and not args.overwrite:
        raise CnnlabError(f"--out {args.out!r} already holds files; pick another folder, or "
                          "pass --overwrite to replace files of the same names")


def cmd_retrieve(args: argparse.Namespace) -> int:
    from cnnlab.apps.retrieval import RetrievalIndex, evaluate

    _check_retrieve(args)
    index = RetrievalIndex.load(args.index)
    if args.evaluate:
        result = evaluate(index, args.data, args.data_dir, args.split or "test", args.k,
                          count=args.count, run=args.run, baselines=not args.no_baselines,
                          batch_size=args.batch_size, progress=not args.quiet)
        print(json.dumps(result, indent=2) if args.json else _evaluation_table(result))
        return 0
    queries = _queries(index, args)
    result = _search(index, queries, args)
    if args.out:
        _draw(index, queries, result, args)
    print(json.dumps(result, indent=2) if args.json else _hits_table(result))
    return 0


class _Query(typing.NamedTuple):
    pixels: torch.Tensor          # Q x C x H x W in [0, 1]
    names: list[str]
    labels: list[int | None]      # class ids where known
    classes: list[str | None]     # their names in the query's data set


def _queries(index: Any, args: argparse.Namespace) -> _Query:
    from cnnlab.apps.retrieval import index_run_info, pick_queries, read_queries
    from cnnlab.train._runs import run_data

    info = index_run_info(index, args.run)
    if args.image:
        pixels, notes = read_queries(args.image, info.image_shape)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return _Query(pixels, [Path(p).name for p in args.image], [None] * len(pixels),
                      [None] * len(pixels))
    desc = index.description
    name = args.data or desc["data"]
    data_dir = args.data_dir if args.data_dir is not None or name != desc["data"] \
        else desc["data_dir"]
    split = args.split or "test"
    picked = pick_queries(run_data(info, name, data_dir, split), args.count or DEFAULT_COUNT)
    labels = picked.ds.labels
    known = isinstance(labels, torch.Tensor) and labels.dim() == 1
    classes = picked.ds.classes
    ids: list[int | None] = [None] * len(picked.ids)
    if known and isinstance(labels, torch.Tensor):
        ids = [int(v) for v in labels.tolist()]
    names_of = [None if c is None else classes[c] for c in ids]
    names = [f"{picked.ds.name} {split} #{i}" + (f" ({c})" if c is not None else "")
             for i, c in zip(picked.ids, names_of, strict=True)]
    images = picked.ds.images
    pixels = images if isinstance(images, torch.Tensor) else images[torch.arange(len(images))]
    return _Query(pixels.float(), names, ids, names_of)


def _search(index: Any, queries: _Query, args: argparse.Namespace) -> dict[str, Any]:
    from cnnlab.apps.retrieval import query_codes, search

    codes = query_codes(index, queries.pixels, run=args.run, batch_size=args.batch_size,
                        progress=not args.quiet)
    hits = search(index, codes, args.k)
    classes = index.classes
    rows = []
    for q, (name, label, cls) in enumerate(zip(queries.names, queries.labels, queries.classes,
                                               strict=True)):
        found = [{"rank": r + 1, "id": int(hits.ids[q, r]),
                  "similarity": round(float(hits.similarities[q, r]), 6),
                  "label": int(hits.labels[q, r]), "class": classes[int(hits.labels[q, r])],
                  **({"same_class": int(hits.labels[q, r]) == label} if label is not None
                     else {})} for r in range(args.k)]
        rows.append({"query": name, "label": label, "class": cls, "neighbours": found})
    d = index.description
    return {"index": args.index, "kind": d["kind"], "database": {
        "data": d["data"], "split": d["split"], "count": len(index)}, "k": args.k,
        "queries": rows}


def _hits_table(result: dict[str, Any]) -> str:
    db = result["database"]
    head = (f"{len(result['queries'])} queries against {db['count']:,} images of {db['data']} "
            f"{db['split']} ({result['kind']} index), top {result['k']} by cosine similarity")
    lines = [head]
    for row in result["queries"]:
        lines += ["", f"query {row['query']}:", "  rank        id  cosine  class"]
        for hit in row["neighbours"]:
            mark = {True: "  same", False: "  other"}.get(hit.get("same_class"), "")
            lines.append(f"  {hit['rank']:>4}  {hit['id']:>8,}  {hit['similarity']:6.4f}  "
                         f"{hit['class']}{mark}")
    return "\n".join(lines)


def _evaluation_table(result: dict[str, Any]) -> str:
    db = result["database"]
    k = result["k"]
    rows = result["rows"]
    width = max(len("codes"), *(len(r["codes"]) for r in rows))
    lines = [f"{result['queries']:,} queries of {result['data']} {result['split']} against "
             f"{db['count']:,} of {db['data']} {db['split']}: {result['search']}, class labels "
             "as relevance" + (", each query's own entry left out" if result["left_out_self"]
                               else ""),
             f"{'codes':<{width}}  {'dim':>6}  {'mAP':>6}  {'P@' + str(k):>6}"]
    for r in rows:
        lines.append(f"{r['codes']:<{width}}  {r['dim']:>6,}  {r['map']:6.4f}  "
                     f"{r['precision_at_k']:6.4f}")
    missing = max(r["queries_without_relevant"] for r in rows)
    if missing:
        lines.append(f"({missing:,} queries have no image of their class in the index: mAP "
                     "leaves them out)")
    return "\n".join(lines)


def _framed(image: torch.Tensor, colour: tuple[float, float, float] | None) -> torch.Tensor:
    """An image (C, H, W) as RGB with a frame of ``colour`` (white: none), a 16th of its side."""
    rgb = image.float().expand(3, -1, -1)
    width = max(1, round(max(rgb.shape[1:]) / 16))
    fill = (1.0, 1.0, 1.0) if colour is None else colour
    out = torch.tensor(fill).view(3, 1, 1).expand(3, rgb.shape[1] + 2 * width,
                                                  rgb.shape[2] + 2 * width).clone()
    out[:, width:-width, width:-width] = rgb
    return out


def _draw(index: Any, queries: _Query, result: dict[str, Any], args: argparse.Namespace) -> None:
    from cnnlab.apps.retrieval import index_run_info
    from cnnlab.train._runs import run_data
    from cnnlab.train.run import staged_folder, write_text
    from cnnlab.visualize.pictures import save_grid

    desc = index.description
    db = run_data(index_run_info(index, args.run), desc["data"], desc["data_dir"], desc["split"])
    wanted = torch.tensor([h["id"] for row in result["queries"] for h in row["neighbours"]])
    if int(wanted.max()) >= len(db):
        raise CnnlabError(f"{desc['data']} {desc['split']} now holds {len(db):,} images but the "
                          f"index names image {int(wanted.max()):,}; build the index again")
    found = db.subset(wanted).images                         # (Q*k) x C x H x W
    found = found if isinstance(found, torch.Tensor) else found[torch.arange(len(found))]
    k = args.k
    r = desc["run"]
    title = (f"{r['model']} {r['layer']}: top {k} of {len(index):,} in {desc['data']} "
             f"{desc['split']}" + ("; green: same class, red: another"
                                   if any(q is not None for q in queries.labels) else ""))
    out = Path(args.out)
    with staged_folder(out, "the pages", merge=True) as folder:
        for page, start in enumerate(range(0, len(queries.names), PAGE_ROWS), 1):
            cells, captions, labels = [], [], []
            for q in range(start, min(start + PAGE_ROWS, len(queries.names))):
                row = result["queries"][q]
                cells.append([_framed(queries.pixels[q], None)] + [
                    _framed(found[q * k + i], None if "same_class" not in h else
                            SAME if h["same_class"] else OTHER)
                    for i, h in enumerate(row["neighbours"])])
                captions.append([f"query ({row['class']})" if row["class"] else "query"] + [
                    f"{h['similarity']:.2f} {h['class']}"[:14] for h in row["neighbours"]])
                labels.append(queries.names[q][-24:])
            save_grid(cells, folder / f"retrieval-{page}.png", captions=captions,
                      row_labels=labels, title=title)
        write_text(folder / RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"pictures of {len(queries.names)} queries written to {out}", file=sys.stderr)
