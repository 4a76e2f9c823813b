"""Data folder resolution, file lookup and checksums."""

import gzip
import hashlib
import os
from pathlib import Path

import pytest

from cnnlab.data import ChecksumError, FileInfo, default_data_dir, load, resolve_data_dir
from cnnlab.data import files as files_mod
from cnnlab.data.files import locate, verify
from cnnlab.errors import DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")


# -- where the data folder is -------------------------------------------------------------

def test_argument_beats_environment_beats_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == (tmp_path / "arg", "data_dir")
    assert resolve_data_dir(None) == (tmp_path / "env", "CNNLAB_DATA")
    monkeypatch.delenv("CNNLAB_DATA")
    assert resolve_data_dir(None) == (tmp_path / "xdg" / "cnnlab", "cache")


def test_cache_falls_back_to_home(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".cache" / "cnnlab"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")   # invalid by the XDG spec
    assert default_data_dir() == tmp_path / ".cache" / "cnnlab"


def test_missing_data_dir_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError, match=rf"data directory '{missing}' \(from --data-dir\) "
                                        "does not exist"):
        load("mnist", "train", data_dir=missing)
    monkeypatch.setenv("CNNLAB_DATA", str(missing))
    with pytest.raises(DataError, match=r"\(from CNNLAB_DATA\) does not exist"):
        load("mnist", "train")


def test_missing_files_are_listed_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))     # an empty, absent cache
    with pytest.raises(DataError) as err:
        load("fashion-mnist", "test")
    message = str(err.value)
    assert "t10k-images-idx3-ubyte(.gz)" in message and "t10k-labels-idx1-ubyte(.gz)" in message
    assert "train-" not in message                          # only the split asked for
    assert "download=True" in message and "fashion-mnist.s3" in message
    assert "\n" not in message


def test_files_are_found_in_the_set_folder_or_the_folder_itself(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    assert locate(tmp_path, "f", ("mnist", "MNIST/raw")) is None
    (tmp_path / "f.gz").write_bytes(b"x")
    assert locate(tmp_path, "f", ("mnist", "MNIST/raw")) == tmp_path / "f.gz"
    (tmp_path / "MNIST" / "raw" / "f").write_bytes(b"x")
    assert locate(tmp_path, "f", ("mnist", "MNIST/raw")) == tmp_path / "MNIST" / "raw" / "f"
    (tmp_path / "mnist" / "f.gz").write_bytes(b"x")
    assert locate(tmp_path, "f", ("mnist", "MNIST/raw")) == tmp_path / "mnist" / "f.gz"
    (tmp_path / "mnist" / "f").write_bytes(b"x")            # uncompressed first
    assert locate(tmp_path, "f", ("mnist", "MNIST/raw")) == tmp_path / "mnist" / "f"


# -- checksums ----------------------------------------------------------------------------

def _entry(raw: bytes) -> FileInfo:
    return FileInfo("tiny", hashlib.sha256(gzip.compress(raw, mtime=0)).hexdigest(),
                    hashlib.md5(raw).hexdigest())


def test_checksum_of_gz_and_raw(tmp_path):
    raw = b"\0\0\x08\x01\0\0\0\x02\x05\x06"
    entry = _entry(raw)
    gz, plain = tmp_path / "tiny.gz", tmp_path / "tiny"
    gz.write_bytes(gzip.compress(raw, mtime=0))
    plain.write_bytes(raw)
    verify(gz, gz.read_bytes(), entry)
    verify(plain, plain.read_bytes(), entry)


def test_tampered_copy_names_file_and_both_hashes(tmp_path):
    raw = b"\0\0\x08\x01\0\0\0\x02\x05\x06"
    entry = _entry(raw)
    bad = bytearray(gzip.compress(raw, mtime=0))
    bad[-1] ^= 1
    path = tmp_path / "tiny.gz"
    path.write_bytes(bytes(bad))
    actual = hashlib.sha256(bytes(bad)).hexdigest()
    with pytest.raises(ChecksumError, match=rf"{path}: sha256 is {actual}, expected "
                                            rf"{entry.sha256} .*delete it and download again"):
        verify(path, path.read_bytes(), entry)
    plain = tmp_path / "tiny"
    plain.write_bytes(raw[:-1] + b"\x07")
    with pytest.raises(ChecksumError, match=rf"md5 is .*, expected {entry.md5}"):
        verify(plain, plain.read_bytes(), entry)


def test_a_verified_file_is_not_hashed_again(tmp_path, monkeypatch):
    raw = b"\0\0\x08\x01\0\0\0\x01\x03"
    entry = _entry(raw)
    path = tmp_path / "tiny"
    path.write_bytes(raw)
    verify(path, raw, entry)
    calls = []
    md5 = hashlib.md5
    monkeypatch.setattr(files_mod.hashlib, "md5", lambda *a, **k: calls.append(1) or md5(*a, **k))
    verify(path, raw, entry)
    assert calls == []
    os.utime(path, ns=(1, 1))                                # touched: hashed again
    verify(path, raw, entry)
    assert calls == [1]


needs_shared = pytest.mark.skipif(not (SHARED / "mnist").is_dir(),
                                  reason=f"real data not present at {SHARED}")


@needs_shared
def test_tampered_mnist_copy_is_refused(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes((SHARED / "mnist" / name).read_bytes())
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[8] = (raw[8] + 1) % 10                               # relabel the first test digit
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: sha256 is [0-9a-f]{64}, "
                                        r"expected f7ae60f9"):
        load("mnist", "test", data_dir=tmp_path)


@needs_shared
def test_files_of_another_set_are_recognised():
    with pytest.raises(DataError, match=r"holds fashion-mnist t10k-images-idx3-ubyte, not "
                                        r"mnist test data; point --data-dir"):
        load("mnist", "test", data_dir=SHARED / "fashion-mnist")
