"""``download`` against a local HTTP server: checksum before rename, mirrors in order."""

import errno
import gzip
import hashlib
from pathlib import Path

import pytest

from cnnlab.data import _download as download_mod
from cnnlab.data import download, load
from cnnlab.data.registry import DatasetInfo, FileInfo
from cnnlab.errors import DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")


def tiny_set(payload: bytes) -> tuple[DatasetInfo, bytes]:
    gz = gzip.compress(payload, mtime=0)
    f = FileInfo("tiny-labels", hashlib.sha256(gz).hexdigest(), hashlib.md5(payload).hexdigest())
    entry = DatasetInfo(name="tiny", summary="", classes=("a",), shape=(1, 1, 1), mean=(0.0,),
                        std=(1.0,), reader=lambda *a: None,  # type: ignore[arg-type,return-value]
                        files={"train": (f, f)}, urls=("http://127.0.0.1:9/",),
                        folders=("tiny",))
    return entry, gz


def test_download_checks_then_renames(server, tmp_path, monkeypatch):
    www, url = server
    entry, gz = tiny_set(b"\0\0\x08\x01\0\0\0\x01\x00")
    monkeypatch.setattr(download_mod, "info", lambda name: entry)
    (www / "tiny-labels.gz").write_bytes(gz)
    # the first mirror refuses the connection, the second serves the file
    folder = download("tiny", tmp_path / "data", mirrors=["http://127.0.0.1:9/", url],
                      progress=False)
    assert folder == tmp_path / "data" / "tiny"
    assert (folder / "tiny-labels.gz").read_bytes() == gz
    assert [p.name for p in folder.iterdir()] == ["tiny-labels.gz"]


def test_corrupt_download_leaves_nothing(server, tmp_path, monkeypatch):
    www, url = server
    entry, gz = tiny_set(b"\0\0\x08\x01\0\0\0\x01\x00")
    monkeypatch.setattr(download_mod, "info", lambda name: entry)
    (www / "tiny-labels.gz").write_bytes(gz[:-1] + bytes([gz[-1] ^ 1]))
    with pytest.raises(DataError, match=r"could not download tiny tiny-labels.gz \(.*sha256 is "
                                        r"[0-9a-f]+, expected " + entry.files["train"][0].sha256):
        download("tiny", tmp_path / "data", mirrors=[url], progress=False)
    assert list((tmp_path / "data" / "tiny").iterdir()) == []


def test_a_full_disk_is_not_taken_for_a_network_failure(server, tmp_path, monkeypatch):
    www, url = server
    entry, gz = tiny_set(b"\0\0\x08\x01\0\0\0\x01\x00")
    monkeypatch.setattr(download_mod, "info", lambda name: entry)
    (www / "tiny-labels.gz").write_bytes(gz)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_mod.os, "fsync", full)
    dest = tmp_path / "data" / "tiny" / "tiny-labels.gz"
    with pytest.raises(DataError, match=rf"^cannot write {dest}: No space left on device; free "
                                        r"some space there or pass --data-dir on another disk$"):
        download("tiny", tmp_path / "data", mirrors=[url, url], progress=False)
    assert list(dest.parent.iterdir()) == []                # the partial file is gone


def test_a_folder_that_cannot_be_created(tmp_path, monkeypatch):
    entry, _ = tiny_set(b"\0\0\x08\x01\0\0\0\x01\x00")
    monkeypatch.setattr(download_mod, "info", lambda name: entry)

    def denied(self, *a, **k):                               # root may write anywhere
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(DataError, match=rf"^cannot write {tmp_path}/tiny: Permission denied; "
                                        r"pass a --data-dir you may write to$"):
        download("tiny", tmp_path, progress=False)


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason=f"no MNIST files at {SHARED}")
def test_load_with_download_fetches_missing_files(server, tmp_path, monkeypatch):
    www, url = server
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
              "train-labels-idx1-ubyte.gz"):
        (www / f).write_bytes((SHARED / "mnist" / f).read_bytes())
    have = tmp_path / "data" / "mnist"
    have.mkdir(parents=True)      # train images are "already there": not fetched again
    (have / "train-images-idx3-ubyte.gz").symlink_to(SHARED / "mnist" / "train-images-idx3-ubyte.gz")
    real = download_mod.download
    monkeypatch.setattr("cnnlab.data.datasets.fetch",
                        lambda name, root: real(name, root, mirrors=[url], progress=False))
    test = load("mnist", "test", data_dir=tmp_path / "data", download=True)
    assert len(test) == 10000
    assert sorted(p.name for p in have.iterdir()) == sorted(
        ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
         "train-labels-idx1-ubyte.gz"])
