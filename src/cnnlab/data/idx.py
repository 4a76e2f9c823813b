"""The IDX format of MNIST and Fashion-MNIST (LeCun et al.), gzipped or not.

An IDX file is a header -- two zero bytes, a type code, the number of dimensions, then each
dimension as a big-endian uint32 -- followed by the values in row-major order. MNIST's image
files have magic 0x00000803 = 2051 (uint8, 3 dims: N x 28 x 28), label files 0x00000801 = 2049
(uint8, 1 dim: N).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cnnlab.data.files import (
    GZIP_MAGIC,
    REFETCH,
    as_path,
    locate,
    read_file,
    refetch,
    verify,
)
from cnnlab.errors import DataError

if TYPE_CHECKING:
    from cnnlab.data.registry import DatasetInfo

IMAGES_MAGIC = 2051  # 0x0803: uint8, 3 dims
LABELS_MAGIC = 2049  # 0x0801: uint8, 1 dim

# IDX type code -> big-endian numpy dtype
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def gunzip_if_needed(data: bytes, source: str | Path) -> bytes:
    """``data`` decompressed if it starts with gzip's magic bytes, else unchanged."""
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except EOFError:
        raise DataError(f"{source}: truncated gzip data (the stream ends after {len(data):,} "
                        f"bytes, before its end marker); the file was cut short: {REFETCH}"
                        ) from None
    except (OSError, zlib.error) as err:
        raise DataError(f"{source}: broken gzip data ({err}); the file is corrupt: {REFETCH}"
                        ) from None


def parse_idx(data: bytes, source: str | Path = "<bytes>", magic: int | None = None
              ) -> np.ndarray:
    """Decode IDX bytes (gzipped or not) into an array of the header's shape, native byte order.

    ``magic`` (2051 images, 2049 labels), when given, must match the header's.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DataError(f"parse_idx needs the file's bytes, got {type(data).__name__}; "
                        "read_idx(path) reads a file")
    data = bytes(data)
    if not data:
        raise DataError(f"{source} is empty (0 bytes), not an IDX file: {REFETCH}")
    data = gunzip_if_needed(data, source)
    if not data:
        raise DataError(f"{source}: its gzip data holds nothing (0 bytes once decompressed), "
                        f"not an IDX file: {REFETCH}")
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _TYPES:
        found = data[:4].hex()
        raise DataError(f"{source}: not an IDX file (first bytes 0x{found}, expected "
                        f"0x0000 then a type code and a dimension count): {REFETCH}")
    found_magic = int.from_bytes(data[:4], "big")
    if magic is not None and found_magic != magic:
        raise DataError(f"{source}: IDX magic number is {found_magic}, expected {magic} "
                        f"({'images' if magic == IMAGES_MAGIC else 'labels'}); is it the "
                        "wrong file, or corrupt? Otherwise " + REFETCH)
    ndim, dtype = data[3], np.dtype(_TYPES[data[2]])
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{source}: IDX header is cut short ({len(data)} bytes, needs {header} "
                        f"for {ndim} dimensions): {REFETCH}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{source}: IDX data is {len(data):,} bytes but its header "
                        f"(shape {dims}) needs {expected:,}; the file is truncated or corrupt: "
                        + REFETCH)
    values = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="))  # a writable copy in native order


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Read an IDX file, gzipped or not (detected by its first bytes, not by its name).

    >>> read_idx("../shared/data/mnist/t10k-labels-idx1-ubyte.gz", magic=2049).shape
    (10000,)
    """
    path = as_path(path, "path")
    return parse_idx(read_file(path), path, magic)


def read_idx_split(info: DatasetInfo, split: str, root: Path | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """An IDX data set's split from ``root``: images (N, 1, H, W) float32 in [0, 1], labels int64.

    Each file is checked against its published checksum before a byte of it is decompressed
    or parsed.
    """
    assert root is not None  # load() resolves the data folder for file-based sets
    image_file, label_file = info.files[split]
    arrays, fix = [], refetch(info.name, root)
    for entry, magic in ((image_file, IMAGES_MAGIC), (label_file, LABELS_MAGIC)):
        path = locate(root, entry.name, info.folders)
        if path is None:
            raise DataError(f"{info.name}: {entry.name}(.gz) is missing from {root}")
        raw = read_file(path, fix)
        verify(path, raw, entry, fix)
        arrays.append(parse_idx(raw, path, magic))
    images, labels = arrays
    shape = info.shape[1:]
    if images.ndim != 3 or images.shape[1:] != shape:
        raise DataError(f"{info.name} {split}: images are {images.shape[1:]}, expected {shape}")
    if len(images) != len(labels):
        raise DataError(f"{info.name} {split}: {len(images)} images but {len(labels)} labels; "
                        "the files belong to different sets: " + fix)
    if labels.size and int(labels.max()) >= len(info.classes):
        raise DataError(f"{info.name} {split}: label {int(labels.max())} is out of range "
                        f"0..{len(info.classes) - 1}: {fix}")
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255)  # N x 1 x 28 x 28
    return x, torch.from_numpy(labels).long()
