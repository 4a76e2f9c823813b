"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) in both published layouts.

python  ``cifar-10-batches-py/data_batch_1..5, test_batch`` (``cifar-100-python/train, test``):
        pickled dicts ``{b"data": uint8 array (N, 3072), b"labels": [int]}`` (CIFAR-100:
        ``b"fine_labels"``, ``b"coarse_labels"``). They are read with :class:`SafeUnpickler`,
        which builds numpy arrays and nothing else, so no code can run from a data file.
binary  ``cifar-10-batches-bin/data_batch_1..5.bin, test_batch.bin`` (``cifar-100-binary/
        train.bin, test.bin``): records of 1 label byte (CIFAR-100: coarse then fine) followed
        by 3072 pixel bytes.

Checked before a byte is parsed: a python batch against its md5 (the publisher gives only
the tarball's md5; the per-file md5s are torchvision's); a binary batch against the sha256
that :func:`~cnnlab.data.download` took from the md5-verified tarball and wrote to
``cnnlab.sha256`` beside the batches. The publisher gives no per-file checksum for binary
batches, so where that file is absent (batches unpacked by hand) only their structure is
checked: whole records and labels in range.

Pixels are stored channel-major (1024 red, 1024 green, 1024 blue, each row by row), so a
record reshapes directly to (3, 32, 32). A split is found in ``<dir>/<set>/<folder>/``,
``<dir>/<folder>/`` or ``<dir>/`` itself, the python layout first.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy._core.multiarray import _reconstruct

from cnnlab.data.files import REFETCH, SUMS, check, kind, read_file, read_sums, refetch
from cnnlab.errors import DataError

if TYPE_CHECKING:
    from cnnlab.data.registry import Archive, DatasetInfo

PIXELS = 3 * 32 * 32   # bytes per image

# the only globals a CIFAR batch refers to: what pickle needs to rebuild a numpy array. The
# published files (written by numpy 1) name numpy.core.multiarray, numpy 2's pickles _core.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except numpy's array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def safe_unpickle(data: bytes, source: str | Path = "<bytes>") -> Any:
    """Unpickle ``data`` (keys stay bytes, as the batches were written by Python 2) with
    :class:`SafeUnpickler`; anything else than plain data and numpy arrays is a DataError."""
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OverflowError, RecursionError) as err:
        raise DataError(f"{source}: not a CIFAR python batch ({err}); the file is corrupt or "
                        f"not the official one: {REFETCH}") from None


def parse_python_batch(data: bytes, source: str | Path = "<bytes>",
                       label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    """A pickled batch -> images uint8 (N, 3, 32, 32) and labels int64 (N,)."""
    batch = safe_unpickle(data, source)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{source}: a CIFAR batch is a dict with b'data' and {label_key!r}, "
                        f"found {keys}: {REFETCH}")
    images, labels = batch[b"data"], batch[label_key]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8
            and images.ndim == 2 and images.shape[1] == PIXELS):
        found = (images.dtype, images.shape) if isinstance(images, np.ndarray) else type(images)
        raise DataError(f"{source}: b'data' must be uint8 (N, {PIXELS}), found {found}: "
                        + REFETCH)
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{source}: labels are not integers: {REFETCH}") from None
    if label_array.shape != (len(images),):
        raise DataError(f"{source}: {len(images)} images but labels of shape "
                        f"{label_array.shape}: {REFETCH}")
    return images.reshape(-1, 3, 32, 32), label_array


def parse_binary_batch(data: bytes, source: str | Path = "<bytes>", label_bytes: int = 1
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Binary records -> images uint8 (N, 3, 32, 32) and the last label byte as int64 (N,)
    (CIFAR-100 stores coarse then fine: the fine label is returned)."""
    record = label_bytes + PIXELS
    if len(data) == 0 or len(data) % record:
        raise DataError(f"{source}: {len(data):,} bytes is not a whole number of "
                        f"{record}-byte records; the file is truncated or corrupt: {REFETCH}")
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy()
    return images, rows[:, label_bytes - 1].astype(np.int64)


def layout_dirs(info: DatasetInfo, archive: Archive, root: Path) -> list[Path]:
    """Folders that may hold ``archive``'s files, best first."""
    return [*(root / f / archive.folder for f in info.folders), root / archive.folder, root]


def find_split(info: DatasetInfo, split: str, root: Path) -> tuple[Archive, Path] | None:
    """The first layout whose files for ``split`` are all present, and its folder."""
    for archive in info.archives:
        for folder in layout_dirs(info, archive, root):
            if all(kind(folder / name) == "file" for name, _ in archive.members[split]):
                return archive, folder
    return None


def read_cifar_split(info: DatasetInfo, split: str, root: Path | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """A CIFAR split from ``root``: images (N, 3, 32, 32) float32 in [0, 1], labels int64.
    Each file is checked (see the module's docstring) before a byte of it is parsed."""
    assert root is not None  # load() resolves the data folder for file-based sets
    found = find_split(info, split, root)
    if found is None:
        raise DataError(f"{info.name}: no {split} files under {root}; expected "
                        + " or ".join(a.folder + "/" for a in info.archives))
    archive, folder = found
    fix = refetch(info.name, root)
    sums = read_sums(folder, f"delete {folder} and run `cnnlab download {info.name} "
                             f"--data-dir {root}`")
    fine, parts = len(info.classes) == 100, []
    for name, md5 in archive.members[split]:
        path = folder / name
        raw = read_file(path, fix)
        if md5:
            check(path, raw, "md5", md5, f"the official {name} of {archive.name}", fix)
        elif sums is not None:
            if name not in sums:
                raise DataError(f"{folder / SUMS} has no line for {name}: delete {folder} and "
                                f"run `cnnlab download {info.name} --data-dir {root}`")
            check(path, raw, "sha256", sums[name],
                  f"recorded in {SUMS} from the md5-verified {archive.name}", fix)
        if archive.layout == "python":
            parts.append(parse_python_batch(raw, path, b"fine_labels" if fine else b"labels"))
        else:
            parts.append(parse_binary_batch(raw, path, 2 if fine else 1))
        labels = parts[-1][1]
        if labels.size and not 0 <= labels.min() <= labels.max() < len(info.classes):
            raise DataError(f"{path}: labels must be in 0..{len(info.classes) - 1}, found "
                            f"{labels.min()}..{labels.max()}: {fix}")
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images).float().div_(255), torch.from_numpy(labels)  # N x 3 x 32 x 32
