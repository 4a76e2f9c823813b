"""Unpack a downloaded tarball without letting it write outside its destination."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath

from cnnlab.errors import DataError


def _check(member: tarfile.TarInfo, source: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
        raise DataError(f"{source}: member {member.name!r} would be written outside the "
                        "data folder; refusing the archive: delete it and download again")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{source}: member {member.name!r} is not a plain file or folder "
                        "(link or device); refusing the archive: delete it and download again")


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[str]:
    """Extract a (gzipped) tar into ``dest``: every member must be a plain file or folder with
    a relative path and no ``..``; otherwise nothing is written. Returns the member names.

    >>> safe_extract("cifar-10-python.tar.gz", "data/cifar10")   # doctest: +SKIP
    ['cifar-10-batches-py', 'cifar-10-batches-py/data_batch_4', ...]
    """
    source, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(source, "r:*") as tar:
            members = tar.getmembers()      # reads the whole archive: a cut or corrupt one
            for member in members:          # fails here; check all before writing anything
                _check(member, source)
            try:
                dest.mkdir(parents=True, exist_ok=True)
                tar.extractall(dest, members=members, filter="data")
            except OSError as err:          # a full disk or a read-only folder
                raise DataError(f"cannot unpack {source} into {dest}: {err.strerror or err}; "
                                "free some space there or pass a --data-dir you may write "
                                "to") from None
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{source}: cannot unpack ({err}); the file is truncated or corrupt: "
                        "delete it and download again") from None
    return [m.name for m in members]
