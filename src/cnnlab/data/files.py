"""Where data files live and whether they are the published ones.

The data folder is, in order: the ``data_dir`` argument (CLI ``--data-dir``), else the
environment variable ``CNNLAB_DATA``, else the per-user cache ``$XDG_CACHE_HOME/cnnlab``
(``~/.cache/cnnlab``). A data set's files are looked for in ``<dir>/<name>/`` (and the set's
other usual folders, e.g. torchvision's ``MNIST/raw``), then in ``<dir>/`` itself.

Checksums: a gzipped file must have the official sha256 of the published ``.gz``; an
uncompressed file must have the published md5 of the uncompressed original (the publishers
give no sha256 for those). A file that passed is not hashed again in the same process while
its size and modification time stay the same.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.errors import DataError

if TYPE_CHECKING:
    from cnnlab.data.registry import FileInfo

ENV_VAR = "CNNLAB_DATA"
GZIP_MAGIC = b"\x1f\x8b"


class ChecksumError(DataError):
    """A data file's hash differs from the published one."""

    def __init__(self, message: str, path: Path, algorithm: str, actual: str) -> None:
        super().__init__(message)
        self.path, self.algorithm, self.actual = path, algorithm, actual


def default_data_dir() -> Path:
    """The per-user cache: ``$XDG_CACHE_HOME/cnnlab``, else ``~/.cache/cnnlab``."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec says a relative path is invalid and must be ignored
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return base / "cnnlab"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The data folder and where it came from (``"data_dir"``, ``"CNNLAB_DATA"``, ``"cache"``)."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), "data_dir"
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser(), ENV_VAR
    return default_data_dir(), "cache"


def candidates(root: Path, name: str, folders: tuple[str, ...]) -> list[Path]:
    """Paths where file ``name`` may be, best first: uncompressed before ``.gz``, the data
    set's own folders before ``root`` itself."""
    return [d / n for d in (*(root / f for f in folders), root) for n in (name, name + ".gz")]


def locate(root: Path, name: str, folders: tuple[str, ...]) -> Path | None:
    """The first existing candidate path of file ``name``, or None."""
    return next((p for p in candidates(root, name, folders) if p.is_file()), None)


_verified: set[tuple[str, int, int, str]] = set()   # (real path, size, mtime, expected sha256)


def _stamp(path: Path, entry: FileInfo) -> tuple[str, int, int, str]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns, entry.sha256


def verify(path: Path, data: bytes, entry: FileInfo) -> None:
    """Check ``data`` (the bytes of ``path``) against the published hash of ``entry``."""
    stamp = _stamp(path, entry)
    if stamp in _verified:
        return
    if data[:2] == GZIP_MAGIC:
        algorithm, expected, actual = "sha256", entry.sha256, hashlib.sha256(data).hexdigest()
        what = f"{entry.name}.gz"
    else:
        algorithm, expected = "md5", entry.md5
        actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
        what = entry.name
    if actual != expected:
        raise ChecksumError(
            f"{path}: {algorithm} is {actual}, expected {expected} (the published {what}); "
            "the file is corrupt or not the official one: delete it and download again",
            path, algorithm, actual)
    _verified.add(stamp)


def clear_verified() -> None:
    """Forget which files passed their checksum (they are hashed again on the next read)."""
    _verified.clear()
