"""Data folder resolution, file lookup and checksums."""

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from cnnlab.data import (
    ChecksumError,
    FileInfo,
    default_data_dir,
    download,
    load,
    resolve_data_dir,
)
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


@pytest.mark.parametrize("source", ["--data-dir", "CNNLAB_DATA"])
def test_a_data_dir_that_is_a_file_says_so(tmp_path, monkeypatch, source):
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    path.parent.mkdir()
    path.write_bytes(b"x")
    monkeypatch.setenv("CNNLAB_DATA", str(path))
    flag = "--data-dir" if source == "--data-dir" else "CNNLAB_DATA="
    message = (rf"^data directory '{path}' \(from {source}\) is a file, not a folder; pass the "
               rf"folder that holds the data set's files, e.g. {flag} ?{path.parent}$")
    data_dir = path if source == "--data-dir" else None
    for call in (lambda: load("mnist", "test", data_dir=data_dir),
                 lambda: load("mnist", "test", data_dir=data_dir, download=True),
                 lambda: download("cifar10", data_dir, progress=False)):
        with pytest.raises(DataError, match=message):
            call()


def test_a_cache_that_is_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "cnnlab").write_bytes(b"")
    with pytest.raises(DataError, match=rf"^data directory '{tmp_path}/cnnlab' \(from the "
                                        r"per-user cache\) is a file, not a folder; move it "
                                        r"away, or pass --data-dir \(or set CNNLAB_DATA\)"):
        load("mnist", "test")


def test_a_data_dir_that_is_not_a_path(tmp_path):
    with pytest.raises(DataError, match=r"^data_dir must be a folder path, got 123 \("):
        load("mnist", "test", data_dir=123)
    with pytest.raises(DataError, match=r"^data_dir must be a folder path, got '~no-such-user-x/"):
        load("mnist", "test", data_dir="~no-such-user-x/data")


def test_a_folder_where_a_file_is_expected(tmp_path):
    where = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    where.mkdir(parents=True)
    with pytest.raises(DataError, match=rf"^{where} is a folder where the data file "
                                        r"t10k-images-idx3-ubyte.gz is expected; move it out of "
                                        r"the way and put the file there$"):
        load("mnist", "test", data_dir=tmp_path)


def test_a_data_dir_that_may_not_be_searched(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    real = Path.stat

    def stat(self, **kw):          # what a folder without x permission gives (root passes)
        if self.parent == tmp_path / "mnist":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, **kw)

    monkeypatch.setattr(Path, "stat", stat)
    with pytest.raises(DataError, match=rf"^cannot look into {tmp_path}/mnist: permission "
                                        rf"denied; make it readable \(chmod u\+rx "
                                        rf"'{tmp_path}/mnist'\) or point --data-dir at a "
                                        r"readable copy$"):
        load("mnist", "test", data_dir=tmp_path)


def test_missing_files_are_listed_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))     # an empty, absent cache
    with pytest.raises(DataError) as err:
        load("fashion-mnist", "test")
    message = str(err.value)
    assert "t10k-images-idx3-ubyte(.gz)" in message and "t10k-labels-idx1-ubyte(.gz)" in message
    assert "train-" not in message                          # only the split asked for
    assert "download=True" in message and "fashion-mnist.s3" in message
    assert f"`cnnlab download fashion-mnist --data-dir {tmp_path / 'cnnlab'}`" in message
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


def test_there_is_no_checksum_cache():
    assert not hasattr(files_mod, "_verified") and not hasattr(files_mod, "clear_verified")


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


def _copy_mnist_test(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(SHARED / "mnist" / name, folder / name)
    return folder


@needs_shared
def test_a_file_changed_after_a_load_is_checked_again(tmp_path):
    labels = _copy_mnist_test(tmp_path) / "t10k-labels-idx1-ubyte.gz"
    assert len(load("mnist", "test", data_dir=tmp_path)) == 10000
    st = labels.stat()
    data = bytearray(labels.read_bytes())
    data[-9] ^= 1                                    # same size, same mtime: no cache hides it
    labels.write_bytes(bytes(data))
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ChecksumError, match=r"t10k-labels-idx1-ubyte.gz: sha256 is "):
        load("mnist", "test", data_dir=tmp_path)


@needs_shared
def test_empty_and_truncated_gz_files(tmp_path):
    labels = _copy_mnist_test(tmp_path) / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{labels} is empty \(0 bytes\), left by an "
                                        r"interrupted copy or download: delete it and run "
                                        rf"`cnnlab download mnist --data-dir {tmp_path}`$"):
        load("mnist", "test", data_dir=tmp_path)
    # cut short: refused by its checksum, before gzip reads a byte of it
    labels.write_bytes((SHARED / "mnist" / labels.name).read_bytes()[:-100])
    with pytest.raises(ChecksumError, match=rf"^{labels}: sha256 is [0-9a-f]{{64}}, expected "
                                            r"f7ae60f9[0-9a-f]{56} \(the published "
                                            r"t10k-labels-idx1-ubyte.gz\); the file is corrupt "
                                            r"or not the official one: delete it and run "
                                            rf"`cnnlab download mnist --data-dir {tmp_path}`$"):
        load("mnist", "test", data_dir=tmp_path)


@needs_shared
def test_the_checksum_comes_before_any_parsing(tmp_path, monkeypatch):
    from cnnlab.data import idx

    labels = _copy_mnist_test(tmp_path) / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-1]))
    parsed = []
    real = idx.parse_idx
    monkeypatch.setattr(idx, "parse_idx", lambda *a, **k: parsed.append(a[1]) or real(*a, **k))
    with pytest.raises(ChecksumError):
        load("mnist", "test", data_dir=tmp_path)
    assert [p.name for p in parsed] == ["t10k-images-idx3-ubyte.gz"]   # not the bad labels
