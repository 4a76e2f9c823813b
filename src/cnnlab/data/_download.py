"""Fetch a data set's files from its publishers' addresses (never needed by the tests).

Each file is streamed into a temporary file beside its destination, its published checksum
checked, and only then renamed into place (``os.replace``), so an interrupted or corrupt
download never leaves a file that looks complete. A CIFAR tarball already in the data set's
folder (fetched by hand) is checked and unpacked the same way, without the network.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from cnnlab.data.archive import safe_extract
from cnnlab.data.cifar import find_split
from cnnlab.data.files import (
    check_data_dir,
    compare,
    kind,
    locate,
    refetch,
    resolve_data_dir,
    write_sums,
)
from cnnlab.data.registry import Archive, DatasetInfo, FileInfo, info
from cnnlab.errors import DataError

CHUNK = 1 << 16      # bytes per read
TIMEOUT = 60.0       # seconds without data before a mirror is given up


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """Turn a failure to write ``dest`` (a full disk, a read-only folder) into a DataError,
    so that it is not taken for a network failure."""
    try:
        yield
    except OSError as err:
        fix = ("free some space there or pass --data-dir on another disk"
               if err.errno == errno.ENOSPC else "pass a --data-dir you may write to")
        raise DataError(f"cannot write {dest}: {err.strerror or err}; {fix}") from None


def _fetch(url: str, dest: Path, expected: str, progress: bool, algorithm: str = "sha256"
           ) -> None:
    """Stream ``url`` to ``dest`` atomically; ``expected`` is the published digest of
    ``algorithm`` (md5 where only that is published). A network failure or a wrong digest is
    an OSError/ValueError (the caller tries the next mirror); a local one a DataError."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
    try:
        digest = hashlib.new(algorithm, usedforsecurity=False)
        request = urllib.request.Request(url, headers={"User-Agent": "cnnlab"})
        with contextlib.ExitStack() as stack:
            with _writing(dest):
                out = stack.enter_context(open(tmp, "xb"))
            response = stack.enter_context(urllib.request.urlopen(request, timeout=TIMEOUT))
            size = int(response.headers.get("Content-Length") or 0) or None
            bar = stack.enter_context(tqdm(total=size, unit="B", unit_scale=True, desc=dest.name,
                                           leave=False, disable=None if progress else True))
            while chunk := response.read(CHUNK):
                with _writing(dest):
                    out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            with _writing(dest):
                out.flush()
                os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            raise ValueError(f"{algorithm} is {digest.hexdigest()}, expected {expected}")
        with _writing(dest):
            os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _make(folder: Path) -> None:
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)


def download(name: str, data_dir: str | os.PathLike[str] | None = None, *,
             mirrors: Sequence[str] | None = None, progress: bool = True) -> Path:
    """Download the files of data set ``name`` that are missing into ``<data_dir>/<name>/``.

    ``data_dir`` defaults to ``CNNLAB_DATA``, else the per-user cache. Returns the folder.
    ``mirrors`` (base URLs, default: the publishers') are tried in order; every file is
    checked against its published checksum before it is put in place. A CIFAR tarball
    already in the folder is checked and unpacked instead of fetched.

    >>> download("mnist", "~/data")          # doctest: +SKIP
    PosixPath('/home/me/data/mnist')
    """
    entry = info(name)
    root, source = resolve_data_dir(data_dir)
    if entry.embedded:
        return root  # nothing to fetch: it ships inside a dependency
    check_data_dir(root, source, entry.name, must_exist=False)
    if entry.archives:
        return _download_archive(entry, root, mirrors, progress)
    folder = root / entry.folders[0]
    _make(folder)
    for f in entry.all_files():
        if locate(root, f.name, entry.folders) is None:
            _download_file(entry.name, tuple(mirrors or entry.urls), f, folder, progress)
    return folder


def _download_file(name: str, urls: tuple[str, ...], f: FileInfo, folder: Path,
                   progress: bool) -> None:
    failures = []
    for base in urls:
        url = base.rstrip("/") + "/" + f.name + ".gz"
        try:
            _fetch(url, folder / (f.name + ".gz"), f.sha256, progress)
            return
        except (OSError, ValueError, urllib.error.URLError) as err:
            failures.append(f"{url}: {getattr(err, 'reason', None) or err}")
    raise DataError(f"could not download {name} {f.name}.gz ({'; '.join(failures)}); "
                    f"check the network, or fetch it by hand into {folder}")


def _digest(stream: IO[bytes], algorithm: str) -> str:
    h = hashlib.new(algorithm, usedforsecurity=False)
    while chunk := stream.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _md5_of(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return _digest(f, "md5")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}; make it readable, or "
                        "delete it to download it instead") from None


def _member_sums(tarball: Path, archive: Archive) -> dict[str, str]:
    """sha256 of each member of ``archive`` that has no published md5, read from the
    (verified) tarball itself: what :func:`read_cifar_split` later checks the files against."""
    wanted = {f"{archive.folder}/{n}": n for m in archive.members.values() for n, md5 in m
              if not md5}
    sums: dict[str, str] = {}
    if not wanted:
        return sums
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for member in tar:
                stream = tar.extractfile(member) if member.name in wanted else None
                if stream is not None:
                    sums[wanted[member.name]] = _digest(stream, "sha256")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{tarball}: cannot unpack ({err}); the file is truncated or corrupt: "
                        "delete it and download again") from None
    missing = sorted(set(wanted.values()) - set(sums))
    if missing:
        raise DataError(f"{tarball} lacks {', '.join(missing)}; it is not the published "
                        f"{archive.name}: delete it and download again")
    return sums


def _download_archive(entry: DatasetInfo, root: Path, mirrors: Sequence[str] | None,
                      progress: bool) -> Path:
    """Unpack a tarball of ``entry`` after checking its published md5: one already in the
    folder (fetched by hand; kept, and unpacked again over what is there), else, if a split
    is missing, the first, fetched (and deleted once unpacked).
    The sha256 of each member that has no published checksum goes to ``cnnlab.sha256``."""
    folder = root / entry.folders[0]
    local = [a for a in entry.archives if kind(folder / a.name) == "file"]
    if not local and all(find_split(entry, split, root) for split in entry.archives[0].members):
        return folder
    archive = local[0] if local else entry.archives[0]
    tarball = folder / archive.name
    if local:
        compare(tarball, "md5", _md5_of(tarball), archive.md5, f"the published {archive.name}",
                refetch(entry.name, root))
    else:
        _make(folder)
        urls = [m.rstrip("/") + "/" + archive.name for m in mirrors] if mirrors else [archive.url]
        failures = []
        for url in urls:
            try:
                _fetch(url, tarball, archive.md5, progress, algorithm="md5")
                break
            except (OSError, ValueError, urllib.error.URLError) as err:
                failures.append(f"{url}: {getattr(err, 'reason', None) or err}")
        else:
            raise DataError(f"could not download {entry.name} {archive.name} "
                            f"({'; '.join(failures)}); check the network, or fetch it by hand "
                            f"into {folder} and run this again")
    try:
        sums = _member_sums(tarball, archive)
        if sums:   # written first: a half-unpacked batch then fails its check
            with _writing(folder / archive.folder):
                write_sums(folder / archive.folder, sums)
        safe_extract(tarball, folder)
    finally:
        if not local:
            tarball.unlink(missing_ok=True)
    return folder
