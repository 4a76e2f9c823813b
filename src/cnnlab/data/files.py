"""Where data files live, how they are read, and whether they are the published ones.

The data folder is, in order: the ``data_dir`` argument (CLI ``--data-dir``), else the
environment variable ``CNNLAB_DATA``, else the per-user cache ``$XDG_CACHE_HOME/cnnlab``
(``~/.cache/cnnlab``). A data set's files are looked for in ``<dir>/<name>/`` (and the set's
other usual folders, e.g. torchvision's ``MNIST/raw``), then in ``<dir>/`` itself.

Every file with a known checksum is hashed before any of its bytes is parsed (decompressed,
unpickled or decoded), on every load: there is no cache, because hashing costs less than the
read and the conversion to float (on a 2-core machine: 7 ms of a 0.4 s load of MNIST's
training split, about 0.3 s of a 1.5 s one of CIFAR-10's). What is checked for each format
is said in :mod:`cnnlab.data.cifar`, :func:`verify` and the README's Data section.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.errors import DataError

if TYPE_CHECKING:
    from cnnlab.data.registry import FileInfo

ENV_VAR = "CNNLAB_DATA"
GZIP_MAGIC = b"\x1f\x8b"
REFETCH = "delete it and download again"
SUMS = "cnnlab.sha256"   # sha256sum-format file: hashes taken from a verified tarball


def refetch(name: str, root: Path) -> str:
    """The fix for a damaged file of data set ``name`` in data folder ``root``."""
    return f"delete it and run `cnnlab download {name} --data-dir {root}`"


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


def as_path(value: str | os.PathLike[str], what: str = "data_dir") -> Path:
    """``value`` as a Path with ``~`` expanded; anything else is a DataError."""
    try:
        return Path(value).expanduser()
    except (TypeError, RuntimeError) as err:   # not a path; ~user with no such user
        raise DataError(f"{what} must be a folder path, got {value!r} ({err})") from None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The data folder and where it came from (``"data_dir"``, ``"CNNLAB_DATA"``, ``"cache"``)."""
    if data_dir is not None and str(data_dir) != "":
        return as_path(data_dir), "data_dir"
    env = os.environ.get(ENV_VAR, "")
    if env:
        return as_path(env, ENV_VAR), ENV_VAR
    return default_data_dir(), "cache"


def kind(path: Path) -> str:
    """``"file"``, ``"dir"``, ``"other"`` (a pipe, a device) or ``"missing"``; a folder on
    the way that may not be searched is a DataError."""
    try:
        mode = path.stat().st_mode
    except PermissionError:
        raise DataError(f"cannot look into {path.parent}: permission denied; make it readable "
                        f"(chmod u+rx '{path.parent}') or point --data-dir at a readable "
                        "copy") from None
    except (OSError, ValueError):   # absent, a broken link, a file on the way, a NUL byte
        return "missing"
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def check_data_dir(root: Path, source: str, name: str, must_exist: bool) -> None:
    """Refuse a data folder that is a file, or, where the user named it and ``must_exist``,
    one that is missing (``name``: the data set, for the fix). One that may not be searched
    is refused by :func:`kind` when a file in it is looked for."""
    given = {"data_dir": "--data-dir", ENV_VAR: ENV_VAR}.get(source, "the per-user cache")
    what = f"data directory '{root}' (from {given})"
    found = kind(root)
    if found == "missing":
        if must_exist and source != "cache":
            raise DataError(f"{what} does not exist; point it at the folder that holds the "
                            f"data set, or run `cnnlab download {name} --data-dir {root}` to "
                            "fetch it there")
        return
    if found != "dir":
        if source == "cache":
            raise DataError(f"{what} is a file, not a folder; move it away, or pass --data-dir "
                            "(or set CNNLAB_DATA) to the folder that holds the data set")
        flag = f"{ENV_VAR}={root.parent}" if source == ENV_VAR else f"--data-dir {root.parent}"
        raise DataError(f"{what} is a file, not a folder; pass the folder that holds the data "
                        f"set's files, e.g. {flag}")


def in_the_way(path: Path) -> DataError:
    """The error for a folder (or pipe, device) where data file ``path`` is expected."""
    what = "a folder" if kind(path) == "dir" else "not a regular file"
    return DataError(f"{path} is {what} where the data file {path.name} is expected; move it "
                     "out of the way and put the file there")


def check_not_in_the_way(paths: list[Path]) -> None:
    """Raise :func:`in_the_way` for the first of ``paths`` that exists but is not a file."""
    for p in paths:
        if kind(p) in ("dir", "other"):
            raise in_the_way(p)


def candidates(root: Path, name: str, folders: tuple[str, ...]) -> list[Path]:
    """Paths where file ``name`` may be, best first: uncompressed before ``.gz``, the data
    set's own folders before ``root`` itself."""
    return [d / n for d in (*(root / f for f in folders), root) for n in (name, name + ".gz")]


def locate(root: Path, name: str, folders: tuple[str, ...]) -> Path | None:
    """The first candidate path of file ``name`` that is a file, or None."""
    return next((p for p in candidates(root, name, folders) if kind(p) == "file"), None)


def read_file(path: Path, fix: str = REFETCH) -> bytes:
    """The bytes of data file ``path``; unreadable or empty is a DataError that ends in
    ``fix`` (what to do about a damaged file)."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise in_the_way(path) from None
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied; make it readable (chmod a+r "
                        f"'{path}') or point --data-dir at a readable copy") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}; {fix}") from None
    if not data:
        raise DataError(f"{path} is empty (0 bytes), left by an interrupted copy or download: "
                        + fix)
    return data


def check(path: Path, data: bytes, algorithm: str, expected: str, what: str,
          fix: str = REFETCH) -> None:
    """Raise :class:`ChecksumError` unless ``data`` (the bytes of ``path``) hashes to
    ``expected`` under ``algorithm``; ``what`` says whose hash ``expected`` is."""
    compare(path, algorithm, hashlib.new(algorithm, data, usedforsecurity=False).hexdigest(),
            expected, what, fix)


def compare(path: Path, algorithm: str, actual: str, expected: str, what: str,
            fix: str = REFETCH) -> None:
    """Raise :class:`ChecksumError` unless digest ``actual`` of ``path`` is ``expected``."""
    if actual != expected:
        raise ChecksumError(f"{path}: {algorithm} is {actual}, expected {expected} ({what}); "
                            f"the file is corrupt or not the official one: {fix}",
                            path, algorithm, actual)


def verify(path: Path, data: bytes, entry: FileInfo, fix: str = REFETCH) -> None:
    """Check an IDX file of the registry: gzipped, against the sha256 of the official ``.gz``
    (the file whose md5 the publishers give); else against the md5 of the uncompressed
    original."""
    if data[:2] == GZIP_MAGIC:
        check(path, data, "sha256", entry.sha256, f"the published {entry.name}.gz", fix)
    else:
        check(path, data, "md5", entry.md5, f"the published {entry.name}", fix)


def read_sums(folder: Path, fix: str) -> dict[str, str] | None:
    """The ``SUMS`` file of ``folder`` as {file name: sha256}, or None where there is none."""
    path = folder / SUMS
    if kind(path) != "file":
        return None
    sums = {}
    for line in read_file(path, fix).splitlines():
        digest, _, name = line.decode("utf-8", "replace").partition("  ")
        if len(digest) != 64 or not name:
            raise DataError(f"{path}: not a sha256sum line: {line[:80]!r}; {fix}")
        sums[name] = digest
    return sums


def write_sums(folder: Path, sums: dict[str, str]) -> None:
    """Write ``sums`` ({file name: sha256}) as ``folder/SUMS`` (``sha256sum -c`` reads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUMS).write_text("".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))
