"""The IDX reader on tiny files the test writes itself: gzipped and raw, good and broken."""

import gzip
import struct

import numpy as np
import pytest

from cnnlab.data import parse_idx, read_idx
from cnnlab.errors import DataError


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


IMAGES = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
LABELS = np.array([7, 0, 9], dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_reads_images_and_labels(tmp_path, compress):
    for name, array, magic in (("img", IMAGES, 2051), ("lbl", LABELS, 2049)):
        data = idx_bytes(array)
        assert int.from_bytes(data[:4], "big") == magic
        path = tmp_path / name
        # the format is detected from the bytes, not the name: no .gz suffix here
        path.write_bytes(gzip.compress(data) if compress else data)
        out = read_idx(path, magic=magic)
        assert out.dtype == np.uint8 and out.flags.writeable
        np.testing.assert_array_equal(out, array)


def test_other_types_come_back_in_native_byte_order():
    values = np.array([[1.5, -2.0], [3.25, 1e6]], dtype=np.float32)
    out = parse_idx(idx_bytes(values, type_code=0x0D))
    assert out.dtype == np.float32 and out.dtype.byteorder in "=<|"
    np.testing.assert_array_equal(out, values)
    shorts = np.array([-3, 300], dtype=np.int16)
    np.testing.assert_array_equal(parse_idx(idx_bytes(shorts, type_code=0x0B)), shorts)


def test_wrong_magic_names_file_and_numbers(tmp_path):
    path = tmp_path / "labels-as-images"
    path.write_bytes(idx_bytes(LABELS))
    with pytest.raises(DataError, match=r"labels-as-images.*2049, expected 2051"):
        read_idx(path, magic=2051)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello world")
    with pytest.raises(DataError, match=r"notes.txt: not an IDX file .*download again"):
        read_idx(path)


@pytest.mark.parametrize("cut", [3, 10, 16, 17, 50])
def test_truncated_file(tmp_path, cut):
    path = tmp_path / "cut"
    path.write_bytes(idx_bytes(IMAGES)[:cut])
    with pytest.raises(DataError, match=r"cut.*(truncated|cut short|not an IDX).*delete it"):
        read_idx(path, magic=2051)


def test_header_size_mismatch(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(IMAGES) + b"\0" * 7)   # 7 bytes more than the header says
    with pytest.raises(DataError, match=r"long: IDX data is 83 bytes but its header "
                                        r"\(shape \(3, 4, 5\)\) needs 76"):
        read_idx(path)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(IMAGES))[:-12])
    with pytest.raises(DataError, match=r"cut.gz: truncated gzip data \(the stream ends after "
                                        r"\d+ bytes, before its end marker\); the file was cut "
                                        r"short: delete it and download again"):
        read_idx(path)
    path.write_bytes(gzip.compress(idx_bytes(IMAGES))[:10] + b"\xff" * 30)
    with pytest.raises(DataError, match=r"cut.gz: broken gzip data \(.*\); the file is corrupt"):
        read_idx(path)


def test_empty_files_say_so(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{path} is empty \(0 bytes\), left by an interrupted "
                                        r"copy or download: delete it and download again$"):
        read_idx(path)
    with pytest.raises(DataError, match=r"^src is empty \(0 bytes\), not an IDX file"):
        parse_idx(b"", "src")
    with pytest.raises(DataError, match=r"^src: its gzip data holds nothing \(0 bytes once "
                                        r"decompressed\), not an IDX file"):
        parse_idx(gzip.compress(b""), "src")


def test_a_folder_or_an_unreadable_file(tmp_path, monkeypatch):
    (tmp_path / "folder.gz").mkdir()
    with pytest.raises(DataError, match=r"folder.gz is a folder where the data file folder.gz "
                                        r"is expected; move it out of the way"):
        read_idx(tmp_path / "folder.gz")
    path = tmp_path / "locked"
    path.write_bytes(idx_bytes(LABELS))

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_bytes", denied)    # root may read anything
    with pytest.raises(DataError, match=rf"^cannot read {path}: permission denied; make it "
                                        rf"readable \(chmod a\+r '{path}'\)"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read .*nothing-here"):
        read_idx(tmp_path / "nothing-here")
