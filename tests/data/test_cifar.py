"""CIFAR-10/100 in both layouts, on tiny files the tests write; the restricted unpickler;
safe tar extraction; archive download from a local server."""

import dataclasses
import functools
import hashlib
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from cnnlab.data import (
    ChecksumError,
    download,
    info,
    load,
    parse_binary_batch,
    parse_python_batch,
    safe_extract,
    safe_unpickle,
)
from cnnlab.data import _download as download_mod
from cnnlab.data import cifar as cifar_mod
from cnnlab.data import datasets as datasets_mod
from cnnlab.data.registry import CIFAR100_CLASSES
from cnnlab.errors import DataError

RNG = np.random.default_rng(0)


def fake(n, classes=10):
    images = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    return images, RNG.integers(0, classes, n).tolist(), RNG.integers(0, 20, n).tolist()


def python_batch(images, labels, coarse=None, key=b"labels"):
    batch = {b"batch_label": b"fake", b"data": images, key: labels, b"filenames": [b"a.png"]}
    if coarse is not None:
        batch[b"coarse_labels"] = coarse
    # protocol 3: numpy's pre-5 array reduction, as in the published (Python 2, protocol 2)
    # files; Python 3 writes bytes at protocol 2 through _codecs.encode, which is refused
    return pickle.dumps(batch, protocol=3)


def binary_batch(images, labels, coarse=None):
    heads = [np.array(labels, np.uint8)[:, None]]
    if coarse is not None:
        heads.insert(0, np.array(coarse, np.uint8)[:, None])
    return np.concatenate([*heads, images], axis=1).tobytes()


def unchecked(name):
    """The registry entry without per-file md5s (the fake files cannot match them)."""
    entry = info(name)
    return dataclasses.replace(entry, archives=tuple(
        dataclasses.replace(a, members={s: tuple((f, "") for f, _ in m)
                                        for s, m in a.members.items()})
        for a in entry.archives))


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setattr(datasets_mod, "info", unchecked)


def write_cifar10(root, layout):
    """5 train batches of 3 images and a test batch of 2; returns (train, test) arrays."""
    folder = root / ("cifar-10-batches-py" if layout == "python" else "cifar-10-batches-bin")
    folder.mkdir(parents=True)
    out = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]),
                         ("test", ["test_batch"])):
        xs, ys = [], []
        for name in names:
            x, y, _ = fake(2 if split == "test" else 3)
            if layout == "python":
                (folder / name).write_bytes(python_batch(x, y))
            else:
                (folder / (name + ".bin")).write_bytes(binary_batch(x, y))
            xs.append(x)
            ys += y
        out[split] = (np.concatenate(xs), np.array(ys))
    return out


@pytest.mark.parametrize("layout", ["python", "binary"])
def test_cifar10_both_layouts(tmp_path, fake_registry, layout):
    truth = write_cifar10(tmp_path / "cifar10", layout)       # <dir>/<set>/<folder>/
    for split, n in (("train", 15), ("test", 2)):
        ds = load("cifar10", split, data_dir=tmp_path)
        assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.float32
        assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == truth[split][1].tolist()
        # channel-major records: the first 1024 bytes are the red plane, row by row
        x = truth[split][0]
        assert torch.equal(ds.images * 255, torch.from_numpy(x.reshape(n, 3, 32, 32)).float())
        assert ds.images[0, 1, 0, 5] * 255 == x[0, 1024 + 5]
    assert ds.classes[0] == "airplane" and ds.mean == (0.4914, 0.4822, 0.4465)
    # <dir>/<folder>/ and the folder itself work too
    folder = next((tmp_path / "cifar10").iterdir())
    assert len(load("cifar10", "test", data_dir=folder)) == 2
    assert load("cifar10", "test", data_dir=tmp_path / "cifar10", size=16).images.shape == (
        2, 3, 16, 16)


@pytest.mark.parametrize("layout", ["python", "binary"])
def test_cifar100_reads_fine_labels(tmp_path, fake_registry, layout):
    x, fine, coarse = fake(4, classes=100)
    if layout == "python":
        folder = tmp_path / "cifar-100-python"
        folder.mkdir()
        for split in ("train", "test"):
            (folder / split).write_bytes(python_batch(x, fine, coarse, key=b"fine_labels"))
    else:
        folder = tmp_path / "cifar-100-binary"
        folder.mkdir()
        for split in ("train", "test"):
            (folder / f"{split}.bin").write_bytes(binary_batch(x, fine, coarse))
    ds = load("cifar100", "test", data_dir=tmp_path)
    assert ds.labels.tolist() == fine and ds.num_classes == 100
    assert torch.equal(ds.images[2] * 255, torch.from_numpy(x[2].reshape(3, 32, 32)).float())


def test_cifar100_classes_are_the_sorted_fine_names():
    assert len(CIFAR100_CLASSES) == 100 and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    assert CIFAR100_CLASSES[:3] == ("apple", "aquarium_fish", "baby")


def test_python_and_binary_give_the_same_tensors():
    x, y, _ = fake(5)
    a = parse_python_batch(python_batch(x, y))
    b = parse_binary_batch(binary_batch(x, y))
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def python2_batch(x, labels):
    """The opcodes Python 2's cPickle wrote for CIFAR's files (protocol 2, str as
    SHORT_BINSTRING, numpy.core), written out by hand."""
    raw = x.tobytes()
    return (b"\x80\x02}q\x00(U\x04dataq\x01"
            b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03"
            b"K\x00\x85U\x01b\x87Rq\x04"                             # _reconstruct(ndarray, (0,), 'b')
            b"(K\x01M" + struct.pack("<H", len(x)) + b"M\x00\x0c\x86"   # state: 1, (N, 3072),
            b"cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06"         # dtype('u1', 0, 1)
            b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb"         # False, the bytes
            b"U\x06labels]q\x07(" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu.")


def test_python2_pickle_as_published():
    x, y, _ = fake(3)
    images, labels = parse_python_batch(python2_batch(x, y))
    assert np.array_equal(images.reshape(3, -1), x) and labels.tolist() == y


def test_the_published_numpy_core_name_is_accepted():   # the files predate numpy 2
    x, y, _ = fake(2)
    data = python_batch(x, y)
    assert b"numpy._core.multiarray" in data
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    images, labels = parse_python_batch(old)
    assert np.array_equal(images.reshape(2, -1), x) and labels.tolist() == y


class Exploit:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("func", [os.system, eval, getattr, np.load, functools.partial])
def test_restricted_unpickler_refuses_any_other_global(tmp_path, func):
    marker = tmp_path / "ran"
    arg = f"touch {marker}" if func is os.system else "1"
    payload = pickle.dumps({b"data": Exploit(func, arg), b"labels": [0]}, protocol=3)
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=rf"{path}: not a CIFAR python batch \(refused global "
                                        r".*delete it and download again"):
        parse_python_batch(path.read_bytes(), path)
    assert not marker.exists()
    with pytest.raises(DataError, match="refused global"):
        safe_unpickle(pickle.dumps(Exploit(func, arg), protocol=4))


def test_batch_structure_errors_name_the_file(tmp_path):
    x, y, _ = fake(3)
    with pytest.raises(DataError, match=r"f1: a CIFAR batch is a dict with b'data'"):
        parse_python_batch(pickle.dumps([1, 2]), "f1")
    with pytest.raises(DataError, match=r"f2: b'data' must be uint8 \(N, 3072\)"):
        parse_python_batch(pickle.dumps({b"data": x[:, :100], b"labels": y}, protocol=3), "f2")
    with pytest.raises(DataError, match=r"f3: 3 images but labels of shape \(2,\)"):
        parse_python_batch(pickle.dumps({b"data": x, b"labels": y[:2]}, protocol=3), "f3")
    with pytest.raises(DataError, match=r"f4: not a CIFAR python batch"):
        parse_python_batch(python_batch(x, y)[:-20], "f4")


def test_truncated_binary_file_is_named(tmp_path, fake_registry):
    write_cifar10(tmp_path, "binary")
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=rf"{path}: 6,139 bytes is not a whole number of "
                                        r"3073-byte records; the file is truncated or corrupt: "
                                        r"delete it and download again"):
        load("cifar10", "test", data_dir=tmp_path)


def test_label_out_of_range_is_refused(tmp_path, fake_registry):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    x, _, _ = fake(2)
    (folder / "test_batch.bin").write_bytes(binary_batch(x, [3, 12]))
    with pytest.raises(DataError, match=r"test_batch.bin: labels must be in 0..9, found 3..12"):
        load("cifar10", "test", data_dir=tmp_path)


def test_published_md5_is_checked(tmp_path):
    write_cifar10(tmp_path, "python")
    with pytest.raises(DataError, match=r"test_batch: md5 is [0-9a-f]{32}, expected "
                                        r"40351d587109b95175f43aff81a1287e \(the official "
                                        r"test_batch of cifar-10-python.tar.gz\)"):
        load("cifar10", "test", data_dir=tmp_path)


def test_a_tampered_python_batch_is_never_unpickled(tmp_path, monkeypatch):
    """The md5 is checked first: the unpickler is not even built for a file that fails it."""
    write_cifar10(tmp_path, "python")
    built = []

    class Recording(cifar_mod.SafeUnpickler):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(cifar_mod, "SafeUnpickler", Recording)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with pytest.raises(ChecksumError, match=rf"^{path}: md5 is "):
        load("cifar10", "test", data_dir=tmp_path)
    assert built == []
    monkeypatch.setattr(datasets_mod, "info", unchecked)      # the same file, no md5 to check:
    assert len(load("cifar10", "test", data_dir=tmp_path)) == 2
    assert built == [1]                                       # unpickled, so the probe works


def binary_tarball(src, dest):
    """Fake binary CIFAR-10 batches packed as ``dest`` (a cifar-10-binary.tar.gz)."""
    batches = write_cifar10(src, "binary")
    with tarfile.open(dest, "w:gz") as t:
        t.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    return batches


def with_binary_md5(md5):
    """cifar10 with the binary tarball's md5 set to ``md5``, the python one first as usual."""
    entry = info("cifar10")
    python, binary = entry.archives
    return dataclasses.replace(entry, archives=(python, dataclasses.replace(binary, md5=md5)))


def test_binary_batches_are_checked_by_the_sums_of_the_verified_tarball(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    tar = folder / "cifar-10-binary.tar.gz"      # fetched by hand: no network needed
    batches = binary_tarball(tmp_path / "src", tar)
    entry = with_binary_md5(hashlib.md5(tar.read_bytes()).hexdigest())
    monkeypatch.setattr(download_mod, "info", lambda name: entry)
    monkeypatch.setattr(datasets_mod, "info", lambda name: entry)
    assert download("cifar10", tmp_path / "data", progress=False) == folder
    assert tar.is_file()                          # the user's own tarball is kept
    batch_dir = folder / "cifar-10-batches-bin"
    sums = (batch_dir / "cnnlab.sha256").read_text().splitlines()
    test_bin = batch_dir / "test_batch.bin"
    assert f"{hashlib.sha256(test_bin.read_bytes()).hexdigest()}  test_batch.bin" in sums
    assert len(sums) == 6
    assert load("cifar10", "test", data_dir=tmp_path / "data").labels.tolist() == (
        batches["test"][1].tolist())
    # one pixel changed, same size: refused by the recorded sha256 before it is parsed
    data = bytearray(test_bin.read_bytes())
    data[100] ^= 1
    test_bin.write_bytes(bytes(data))
    parsed = []
    monkeypatch.setattr(cifar_mod, "parse_binary_batch", lambda *a: parsed.append(a) or 1 / 0)
    with pytest.raises(ChecksumError, match=rf"^{test_bin}: sha256 is [0-9a-f]{{64}}, expected "
                                            r"[0-9a-f]{64} \(recorded in cnnlab.sha256 from the "
                                            r"md5-verified cifar-10-binary.tar.gz\); the file is "
                                            r"corrupt or not the official one: delete it and run "
                                            r"`cnnlab download cifar10 --data-dir "):
        load("cifar10", "test", data_dir=tmp_path / "data")
    assert parsed == []
    # unpacked by hand (no cnnlab.sha256): no per-file checksum exists, so only the structure
    # is checked, as the README says
    monkeypatch.undo()
    monkeypatch.setattr(datasets_mod, "info", lambda name: entry)
    (batch_dir / "cnnlab.sha256").unlink()
    assert len(load("cifar10", "test", data_dir=tmp_path / "data")) == 2


def test_a_hand_fetched_tarball_with_a_wrong_md5_is_not_unpacked(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    tar = folder / "cifar-10-binary.tar.gz"
    binary_tarball(tmp_path / "src", tar)
    monkeypatch.setattr(download_mod, "info", lambda name: with_binary_md5("0" * 32))
    with pytest.raises(ChecksumError, match=rf"^{tar}: md5 is [0-9a-f]{{32}}, expected 0{{32}} "
                                            r"\(the published cifar-10-binary.tar.gz\)"):
        download("cifar10", tmp_path / "data", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_a_folder_where_a_batch_is_expected(tmp_path):
    write_cifar10(tmp_path, "python")
    where = tmp_path / "cifar-10-batches-py" / "test_batch"
    where.unlink()
    where.mkdir()
    with pytest.raises(DataError, match=rf"^{where} is a folder where the data file test_batch "
                                        r"is expected; move it out of the way"):
        load("cifar10", "test", data_dir=tmp_path)


def test_missing_files_say_where_to_get_them(tmp_path):
    with pytest.raises(DataError, match=r"cifar100 test files missing: none of "
                                        r"cifar-100-python/, cifar-100-binary/ under .* holds "
                                        rf"them; run `cnnlab download cifar100 --data-dir "
                                        rf"{tmp_path}` .*https://www.cs.toronto.edu/~kriz/"
                                        r"cifar-100-python.tar.gz into .*cifar100 and run that "
                                        r"command \(it checks the tarball's md5, then unpacks"):
        load("cifar100", "test", data_dir=tmp_path)


# -- tarballs -------------------------------------------------------------------------------

def make_tar(path, members):
    """members: (name, bytes) for files, (name, None) for a symlink to /etc/passwd."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return path


@pytest.mark.parametrize("bad", ["../evil", "/tmp/evil", "a/../../evil", "link"])
def test_safe_extract_refuses_escaping_members(tmp_path, bad):
    tar = make_tar(tmp_path / "x.tar.gz", [("ok/file", b"1"),
                                           (bad, None if bad == "link" else b"2")])
    with pytest.raises(DataError, match=rf"x.tar.gz: member '{bad}' .*refusing the archive"):
        safe_extract(tar, tmp_path / "out")
    assert not (tmp_path / "out").exists()            # checked before anything is written


def test_safe_extract_unpacks_plain_members(tmp_path):
    tar = make_tar(tmp_path / "x.tar.gz", [("d/a", b"1"), ("d/b", b"22")])
    assert safe_extract(tar, tmp_path / "out") == ["d/a", "d/b"]
    assert (tmp_path / "out" / "d" / "b").read_bytes() == b"22"
    (tmp_path / "broken.tar.gz").write_bytes(tar.read_bytes()[:30])
    with pytest.raises(DataError, match="broken.tar.gz: cannot unpack"):
        safe_extract(tmp_path / "broken.tar.gz", tmp_path / "out2")


def test_download_checks_md5_then_unpacks(server, tmp_path, monkeypatch):
    www, url = server
    batches = write_cifar10(tmp_path / "src", "python")
    tar = www / "cifar-10-python.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    entry = unchecked("cifar10")
    first = dataclasses.replace(entry.archives[0],
                                md5=hashlib.md5(tar.read_bytes()).hexdigest())
    entry = dataclasses.replace(entry, archives=(first, *entry.archives[1:]))
    monkeypatch.setattr(download_mod, "info", lambda name: entry)
    monkeypatch.setattr(datasets_mod, "info", lambda name: entry)
    folder = download("cifar10", tmp_path / "data", mirrors=["http://127.0.0.1:9/", url],
                      progress=False)
    assert folder == tmp_path / "data" / "cifar10"
    assert not (folder / "cifar-10-python.tar.gz").exists()     # unpacked, then removed
    ds = load("cifar10", "train", data_dir=tmp_path / "data")
    assert ds.labels.tolist() == batches["train"][1].tolist()
    # a tarball with the wrong md5 is never unpacked
    bad = dataclasses.replace(entry, archives=(dataclasses.replace(first, md5="0" * 32),))
    monkeypatch.setattr(download_mod, "info", lambda name: bad)
    with pytest.raises(DataError, match=r"could not download cifar10 cifar-10-python.tar.gz "
                                        r".*md5 is [0-9a-f]{32}, expected 0{32}"):
        download("cifar10", tmp_path / "data2", mirrors=[url], progress=False)
    assert not any((tmp_path / "data2" / "cifar10").iterdir())
