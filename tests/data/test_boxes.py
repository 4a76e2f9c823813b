"""Data with boxes: PASCAL VOC folders and the CSV format, made by hand as a user's would be."""

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import BoxRecord, load, load_boxes, read_boxes, write_boxes
from cnnlab.data.boxes import CSV_HEADER
from cnnlab.errors import DataError


def image(path, size=(10, 8), mode="RGB", seed=0):
    """A random image of ``size`` (width, height); its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w) if mode == "L" else (h, w, 3),
                                                  dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return pixels


def xml(root, stem, objects, size=(10, 8), extra=""):
    """Annotations/<stem>.xml; objects are (name, xmin, ymin, xmax, ymax[, difficult])."""
    rows = "".join(
        f"<object><name>{o[0]}</name><difficult>{o[5] if len(o) > 5 else 0}</difficult>"
        f"<bndbox><xmin>{o[1]}</xmin><ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax>"
        "</bndbox></object>" for o in objects)
    path = root / "Annotations" / f"{stem}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{stem}.jpg</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height><depth>3</depth></size>{rows}{extra}</annotation>")
    return path


def split_list(root, name, stems):
    path = root / "ImageSets" / "Main" / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s}\n" for s in stems))
    return path


@pytest.fixture
def voc(tmp_path):
    """A VOC folder: two training images (a .jpg in JPEGImages, a .png in images), one test."""
    root = tmp_path / "voc"
    image(root / "JPEGImages" / "a.jpg", seed=1)
    image(root / "images" / "b.png", size=(20, 16), seed=2)
    image(root / "JPEGImages" / "c.jpg", seed=3)
    xml(root, "a", [("dog", 2, 3, 5, 8), ("cat", 1, 1, 10, 8)])
    xml(root, "b", [("cat", 11, 9, 20, 16), ("bird", 1, 1, 2, 2, 1)], size=(20, 16))
    xml(root, "c", [("dog", 1, 1, 4, 4)])
    split_list(root, "train", ["a", "b"])
    split_list(root, "test", ["c"])
    return root


def test_voc_corners_become_pixel_edges_and_classes_are_sorted_names(voc):
    records, classes = read_boxes("voc", voc, "train")
    assert classes == ("cat", "dog")             # bird is only difficult: skipped by default
    a, b = records
    assert a.path == voc / "JPEGImages" / "a.jpg" and (a.width, a.height) == (10, 8)
    assert torch.equal(a.boxes, torch.tensor([[1.0, 2, 5, 8], [0, 0, 10, 8]]))
    assert a.labels.tolist() == [1, 0] and a.boxes.dtype == torch.float32
    assert b.path == voc / "images" / "b.png" and b.boxes.tolist() == [[10, 8, 20, 16]]
    records, classes = read_boxes("voc", voc, "train", difficult=True)
    assert classes == ("bird", "cat", "dog") and records[1].labels.tolist() == [1, 0]
    assert records[1].boxes[1].tolist() == [0, 0, 2, 2]


def test_load_voc_resizes_and_normalises_boxes_with_training_statistics(voc):
    train = load("voc", "train", data_dir=voc, size=(4, 6))
    assert train.images.shape == (2, 3, 4, 6) and train.classes == ("cat", "dog")
    assert isinstance(train.labels, list) and train.labels[0].dtype == torch.float32
    assert torch.allclose(train.labels[0], torch.tensor([[1, 0.1, 0.25, 0.5, 1.0],
                                                         [0, 0, 0, 1, 1]]))
    assert torch.allclose(train.labels[1], torch.tensor([[0, 0.5, 0.5, 1, 1]]))
    assert train.mean == pytest.approx(train.images.mean(dim=(0, 2, 3)).tolist())
    test = load_boxes("voc", voc, "test", size=(4, 6))
    assert len(test) == 1 and test.mean == train.mean and test.classes == train.classes
    assert torch.allclose(test.labels[0], torch.tensor([[1, 0, 0, 0.4, 0.5]]))
    image_, target = test[0]
    assert image_.shape == (3, 4, 6) and target.shape == (1, 5)


def test_a_lazy_set_reads_the_same_images_when_indexed(voc):
    eager = load("voc", "test", data_dir=voc, size=8)
    lazy = load("voc", "test", data_dir=voc, size=8, lazy=True)
    assert lazy.lazy and not eager.lazy and lazy.image_shape == eager.image_shape
    assert torch.equal(lazy[0][0], eager[0][0]) and torch.equal(lazy[0][1], eager[0][1])
    assert lazy.mean == pytest.approx(eager.mean) and lazy.std == pytest.approx(eager.std)


def test_voc_pixels_are_the_files_and_grey_gives_one_channel(tmp_path):
    root = tmp_path / "grey"
    pixels = image(root / "images" / "g.png", size=(6, 5), mode="L", seed=4)
    xml(root, "g", [("x", 1, 1, 6, 5)], size=(6, 5))
    split_list(root, "train", ["g"])
    ds = load("voc", "train", data_dir=root)
    assert ds.images.shape == (1, 1, 5, 6)
    assert torch.equal(ds.images[0, 0] * 255, torch.from_numpy(pixels).float())


def test_a_colour_set_with_a_grey_image_is_three_channels(voc):
    image(voc / "JPEGImages" / "a.jpg", mode="L", seed=5)        # now grey among colour ones
    ds = load("voc", "train", data_dir=voc, size=8)
    assert ds.in_channels == 3
    assert torch.equal(ds.images[0, 0], ds.images[0, 1])           # grey replicated


def test_voc_test_split_falls_back_to_val_and_classes_txt_fixes_the_order(voc):
    (voc / "ImageSets" / "Main" / "test.txt").rename(voc / "ImageSets" / "Main" / "val.txt")
    (voc / "classes.txt").write_text("dog\ncat\n\nbird\n")
    records, classes = read_boxes("voc", voc, "test")
    assert classes == ("dog", "cat", "bird") and records[0].labels.tolist() == [0]


def test_csv_groups_rows_per_image_keeps_decimals_and_images_without_objects(tmp_path):
    image(tmp_path / "images" / "p.png", seed=6)
    image(tmp_path / "images" / "q.png", size=(4, 4), seed=7)
    (tmp_path / "train.csv").write_text(
        "file,xmin,ymin,xmax,ymax,class\n"
        "images/p.png,0.5,1.25,3,4,\"a, b\"\n"
        "images/q.png,,,,,\n"
        "images/p.png,0,0,10,8,c\n")
    (tmp_path / "test.csv").write_text("file,xmin,ymin,xmax,ymax,class\nimages/q.png,1,1,2,2,z\n")
    records, classes = read_boxes("csv", tmp_path, "train")
    assert classes == ("a, b", "c", "z")           # both splits' names, sorted
    p, q = records
    assert p.boxes.tolist() == [[0.5, 1.25, 3, 4], [0, 0, 10, 8]] and p.labels.tolist() == [0, 1]
    assert q.boxes.shape == (0, 4) and q.labels.shape == (0,) and (q.width, q.height) == (4, 4)
    ds = load("csv", "train", data_dir=tmp_path, size=4)
    assert ds.labels[1].shape == (0, 5)
    assert torch.allclose(ds.labels[0][0], torch.tensor([0, 0.05, 1.25 / 8, 0.3, 0.5]))


def records_of(root, sizes):
    """BoxRecords of new images in root/images, with boxes of odd (decimal) coordinates."""
    out = []
    for i, (w, h) in enumerate(sizes):
        path = root / "images" / f"im{i}.png"
        image(path, size=(w, h), seed=i)
        boxes = torch.tensor([[0.4, 1.6, w - 0.3, h - 1.0], [1.0, 1.0, 3.0, 2.0]])[:i + 1]
        out.append(BoxRecord(path, w, h, boxes, torch.tensor([1, 0])[:i + 1]))
    return out


@pytest.mark.parametrize("fmt", ["voc", "csv"])
def test_write_then_read_gives_the_boxes_back(tmp_path, fmt):
    train, test = records_of(tmp_path, [(9, 7), (12, 5)]), records_of(tmp_path / "t", [(3, 4)])
    test = [r._replace(path=r.path.rename(tmp_path / "images" / "t.png")) for r in test]
    write_boxes(fmt, tmp_path, "train", train, ["cat", "dog"])
    write_boxes(fmt, tmp_path, "test", test, ["cat", "dog"])
    with pytest.raises(DataError, match="a stem names one annotation") if fmt == "voc" else (
            contextlib.nullcontext()):                 # VOC: an image in one split only
        write_boxes(fmt, tmp_path, "test", train[:1], ["cat", "dog"])
    write_boxes(fmt, tmp_path, "test", test, ["cat", "dog"])
    assert (tmp_path / "classes.txt").read_text() == "cat\ndog\n"
    back, classes = read_boxes(fmt, tmp_path, "train")
    assert classes == ("cat", "dog") and [r.path for r in back] == [r.path for r in train]
    for got, want in zip(back, train, strict=True):
        assert torch.equal(got.labels, want.labels)
        if fmt == "csv":
            assert torch.equal(got.boxes, want.boxes)                     # exactly
        else:
            assert torch.equal(got.boxes, want.boxes.round())             # VOC's whole pixels
    assert [r.path for r in read_boxes(fmt, tmp_path, "test")[0]] == [test[0].path]


def test_write_refuses_what_the_reader_would(tmp_path):
    (rec,) = records_of(tmp_path, [(9, 7)])
    write_boxes("csv", tmp_path, "train", [rec], ["cat", "dog"])
    with pytest.raises(DataError, match="classes.txt lists other classes"):
        write_boxes("csv", tmp_path, "test", [rec], ["dog", "cat"])
    outside = rec._replace(boxes=torch.tensor([[0.0, 0, 10, 7]]), labels=torch.tensor([0]))
    with pytest.raises(DataError, match="outside its 9x7 image"):
        write_boxes("csv", tmp_path, "test", [outside], ["cat", "dog"])
    thin = rec._replace(boxes=torch.tensor([[1.2, 1, 1.4, 3]]), labels=torch.tensor([0]))
    write_boxes("csv", tmp_path, "test", [thin], ["cat", "dog"])     # fine as decimals
    with pytest.raises(DataError, match="VOC stores whole pixels"):
        write_boxes("voc", tmp_path, "test", [thin], ["cat", "dog"])
    with pytest.raises(DataError, match="label 2 is not a class id"):
        write_boxes("csv", tmp_path, "test", [rec._replace(labels=torch.tensor([2]))],
                    ["cat", "dog"])


# -- bad input: one line naming the file and the fix ------------------------------------------

def set_box(voc, corners):
    xml(voc, "c", [("dog", *corners)])


BAD_VOC = {
    "box outside": (lambda v: set_box(v, (0, 1, 4, 4)),
                    (r"c.xml object 1 \(dog\): box xmin=0 ymin=1 xmax=4 ymax=4 lies outside its "
                     r"10x8 image; VOC corners")),
    "box too wide": (lambda v: set_box(v, (1, 1, 11, 4)), "lies outside its 10x8 image"),
    "zero area": (lambda v: set_box(v, (5, 1, 4, 4)), r"c.xml object 1 \(dog\): box .* zero area"),
    "not a number": (lambda v: set_box(v, ("a", 1, 4, 4)), "bndbox/xmin is 'a', not a number"),
    "missing field": (lambda v: (v / "Annotations" / "c.xml").write_text(
        "<annotation><size><width>10</width><height>8</height></size><object><name>dog</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax></bndbox></object></annotation>"),
        "c.xml object 1 has no bndbox/ymax; add <bndbox><ymax> to c.xml"),
    "missing size": (lambda v: (v / "Annotations" / "c.xml").write_text(
        "<annotation><object/></annotation>"), r"c.xml has no size/width; add"),
    "not XML": (lambda v: (v / "Annotations" / "c.xml").write_text("<annotation><size>"),
                r"c.xml is not valid XML \(no element found: line 1, column 18\); fix"),
    "not VOC": (lambda v: (v / "Annotations" / "c.xml").write_text("<html/>"),
                "the top element is <html>, not VOC's <annotation>"),
    "wrong size": (lambda v: xml(v, "c", [("dog", 1, 1, 4, 4)], size=(11, 8)),
                   r"c.xml gives the size 11x8 but .*c.jpg is 10x8 \(width x height\); correct"),
    "no annotation": (lambda v: (v / "Annotations" / "c.xml").unlink(),
                      r"c.xml is missing, but .*test.txt lists 'c'; add the annotation"),
    "no image": (lambda v: (v / "JPEGImages" / "c.jpg").unlink(),
                 (r"c.xml: its image c.jpg/.jpeg/.png is in neither .*JPEGImages nor .*images; "
                  r"add the image, or remove c from .*test.txt")),
    "not an image": (lambda v: (v / "JPEGImages" / "c.jpg").write_bytes(b"not a picture"),
                     (r"cannot read image .*c.jpg \(cannot identify image file .*\); delete or "
                      r"replace the file")),
    "unknown class": (lambda v: (v / "classes.txt").write_text("cat\nbird\n"),
                      r"c.xml object 1: class 'dog' is not in .*classes.txt; add it there"),
    "empty split": (lambda v: split_list(v, "test", []),
                    r"test.txt lists no images: the test split is empty"),
    "no split list": (lambda v: (v / "ImageSets" / "Main" / "test.txt").unlink(),
                      r"ImageSets/Main/test.txt is missing: a VOC folder lists the stems"),
    "listed twice": (lambda v: split_list(v, "test", ["c", "a", "c"]),
                     r"test.txt lists 'c' twice \(lines 1 and 3\); remove one"),
}


@pytest.mark.parametrize("case", BAD_VOC)
def test_bad_voc_input_is_one_line_naming_the_file_and_fix(voc, case):
    spoil, message = BAD_VOC[case]
    spoil(voc)
    with pytest.raises(DataError, match=message) as err:
        read_boxes("voc", voc, "test")
    assert "\n" not in str(err.value)


def test_an_image_that_does_not_decode_is_named_when_loaded(voc):
    path = voc / "JPEGImages" / "c.jpg"
    path.write_bytes(path.read_bytes()[:-40])          # the header survives, the pixels don't
    read_boxes("voc", voc, "test")                     # its size is still known
    with pytest.raises(DataError, match=r"b.png is 20x16 but .*a.jpg is 10x8 .* pass size="):
        load("voc", "test", data_dir=voc)              # images of two sizes need a size
    with pytest.raises(DataError, match=r"cannot read image .*c.jpg .*delete or replace"):
        load("voc", "test", data_dir=voc, size=8)


def csv_set(root, text):
    image(root / "images" / "p.png", seed=8)
    (root / "train.csv").write_text(",".join(CSV_HEADER) + "\n" + text)
    return root


BAD_CSV = {
    "box outside": ("images/p.png,0,0,10.5,8,a\n",
                    (r"train.csv line 2 \(images/p.png\): box 0,0,10.5,8 lies outside its 10x8 "
                     r"image; the CSV's corners are pixel edges")),
    "negative": ("images/p.png,-1,0,3,3,a\n", "lies outside its 10x8 image"),
    "zero area": ("images/p.png,1,1,5,1,a\n", r"line 2 \(images/p.png\): box 1,1,5,1 has zero area"),
    "not a number": ("images/p.png,1,x,5,5,a\n", r"train.csv line 2: ymin is 'x', not a number"),
    "nan": ("images/p.png,1,nan,5,5,a\n", r"ymin is 'nan', not a number"),
    "no image": ("images/p.png,1,1,5,5,a\nimages/gone.png,1,1,2,2,a\n",
                 r"train.csv line 3: image .*gone.png is missing; add it, or remove its rows"),
    "no class": ("images/p.png,1,1,5,5,\n", "line 2 has a box but no class"),
    "fields": ("images/p.png,1,1,5,a\n", r"line 2 has 5 fields, expected 6"),
    "empty split": ("", r"train.csv has no rows: the train split is empty; add a row per box"),
}


@pytest.mark.parametrize("case", BAD_CSV)
def test_bad_csv_input_is_one_line_naming_the_file_and_fix(tmp_path, case):
    text, message = BAD_CSV[case]
    csv_set(tmp_path, text)
    with pytest.raises(DataError, match=message) as err:
        read_boxes("csv", tmp_path, "train")
    assert "\n" not in str(err.value)


def test_csv_header_split_file_and_class_list_are_checked(tmp_path):
    csv_set(tmp_path, "images/p.png,1,1,5,5,a\n")
    with pytest.raises(DataError, match=r"test.csv is missing: a CSV data set has"):
        load("csv", "test", data_dir=tmp_path)
    (tmp_path / "train.csv").write_text("path,x0,y0,x1,y1,label\nimages/p.png,1,1,5,5,a\n")
    with pytest.raises(DataError, match="the first line must be the header file,xmin"):
        read_boxes("csv", tmp_path, "train")
    csv_set(tmp_path, "images/p.png,1,1,5,5,a\n")
    (tmp_path / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match="classes.txt lists the class 'a' twice"):
        read_boxes("csv", tmp_path, "train")


def test_load_needs_a_folder_and_a_known_format(tmp_path):
    with pytest.raises(DataError, match="reads images with boxes from data_dir=ROOT"):
        load("voc", "train")
    with pytest.raises(DataError, match=r"VOC folder .*nowhere does not exist"):
        load("voc", "train", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown box format 'coco'"):
        read_boxes("coco", tmp_path)
    with pytest.raises(DataError, match="unknown split 'val'"):
        read_boxes("csv", tmp_path, "val")
