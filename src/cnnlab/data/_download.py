"""Fetch a data set's files from its publishers' addresses (never needed by the tests).

Each file is streamed into a temporary file beside its destination, its sha256 checked, and
only then renamed into place (``os.replace``), so an interrupted or corrupt download never
leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from cnnlab.data.archive import safe_extract
from cnnlab.data.cifar import find_split
from cnnlab.data.files import locate, resolve_data_dir
from cnnlab.data.registry import DatasetInfo, FileInfo, info
from cnnlab.errors import DataError

CHUNK = 1 << 16      # bytes per read
TIMEOUT = 60.0       # seconds without data before a mirror is given up


def _fetch(url: str, dest: Path, sha256: str, progress: bool, algorithm: str = "sha256"
           ) -> None:
    """Stream ``url`` to ``dest`` atomically; raise OSError/ValueError on any failure.
    ``sha256`` is the expected digest of ``algorithm`` (md5 where only that is published)."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
    try:
        digest = hashlib.new(algorithm, usedforsecurity=False)
        request = urllib.request.Request(url, headers={"User-Agent": "cnnlab"})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response, \
                open(tmp, "xb") as out, \
                tqdm(total=int(response.headers.get("Content-Length") or 0) or None,
                     unit="B", unit_scale=True, desc=dest.name, leave=False,
                     disable=None if progress else True) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise ValueError(f"{algorithm} is {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def download(name: str, data_dir: str | os.PathLike[str] | None = None, *,
             mirrors: Sequence[str] | None = None, progress: bool = True) -> Path:
    """Download the files of data set ``name`` that are missing into ``<data_dir>/<name>/``.

    ``data_dir`` defaults to ``CNNLAB_DATA``, else the per-user cache. Returns the folder.
    ``mirrors`` (base URLs, default: the publishers') are tried in order; every file is
    checked against its published sha256 before it is put in place.

    >>> download("mnist", "~/data")          # doctest: +SKIP
    PosixPath('/home/me/data/mnist')
    """
    entry = info(name)
    root, _ = resolve_data_dir(data_dir)
    if entry.embedded:
        return root  # nothing to fetch: it ships inside a dependency
    if entry.archives:
        return _download_archive(entry, root, mirrors, progress)
    folder = root / entry.folders[0]
    folder.mkdir(parents=True, exist_ok=True)
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


def _download_archive(entry: DatasetInfo, root: Path, mirrors: Sequence[str] | None,
                      progress: bool) -> Path:
    """Fetch the first tarball of ``entry`` (md5-checked), unpack it safely, delete it."""
    folder = root / entry.folders[0]
    if all(find_split(entry, split, root) for split in entry.archives[0].members):
        return folder
    archive = entry.archives[0]
    folder.mkdir(parents=True, exist_ok=True)
    urls = [m.rstrip("/") + "/" + archive.name for m in mirrors] if mirrors else [archive.url]
    tarball, failures = folder / archive.name, []
    for url in urls:
        try:
            _fetch(url, tarball, archive.md5, progress, algorithm="md5")
            break
        except (OSError, ValueError, urllib.error.URLError) as err:
            failures.append(f"{url}: {getattr(err, 'reason', None) or err}")
    else:
        raise DataError(f"could not download {entry.name} {archive.name} "
                        f"({'; '.join(failures)}); check the network, or fetch it by hand "
                        f"and unpack it into {folder}")
    try:
        safe_extract(tarball, folder)
    finally:
        tarball.unlink(missing_ok=True)
    return folder
