"""Bad data is refused at load time with one clear line (issue 12).

Every bad file is written here in its real on-disk format (``np.savez`` then cut short, csv text in
latin-1, PNGs via PIL then corrupted, IDX bytes); each case asserts the error type, that the message
is one line, and that it names the file (or dataset) and the problem.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.data import TensorDataset, few_shot, from_arrays, load_dataset, read_idx
from transferkit.errors import DataError, DataNotFoundError, LabelError


def assert_one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message, message
    for frag in fragments:
        assert frag in message, f"{frag!r} not in {message!r}"


def blobs(n: int = 30, d: int = 4, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 rows of ``d`` features, labels cycling through ``0..classes-1``."""
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    return x, np.arange(n) % classes


def write_csv(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def csv_lines(n: int = 12) -> list[str]:
    return ["a,b,label"] + [f"{i},{i * 0.5},{i % 3}" for i in range(n)]


def rezip(src: Path, dst: Path, member: str, cut: int) -> Path:
    """Copy the zip ``src`` to ``dst`` with ``member``'s bytes cut ``cut`` bytes short."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, data[:-cut] if info.filename == member else data)
    return dst


def write_idx(path: Path, arr: np.ndarray, type_byte: int = 0x08, gz: bool = True) -> Path:
    """IDX bytes: 0, 0, type, ndim, big-endian dims, then the big-endian data."""
    dtype = {0x08: ">u1", 0x0D: ">f4"}[type_byte]
    header = bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    data = header + np.ascontiguousarray(arr, dtype=dtype).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def idx_folder(folder: Path, train_labels: np.ndarray, test_labels: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (len(train_labels), 4, 4)))
    write_idx(folder / "train-labels-idx1-ubyte", train_labels)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (len(test_labels), 4, 4)))
    write_idx(folder / "t10k-labels-idx1-ubyte", test_labels)
    return folder


def png_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (6, 5)) -> Path:
    for i, (cls, n) in enumerate(classes.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.new("L", size, 10 * i + j).save(root / cls / f"img{j}.png")
    return root


# ------------------------------------------------------------------------------------- npz files
def npz_truncated_zip(tmp: Path) -> Path:
    x, y = blobs()
    np.savez(tmp / "cut.npz", x=x, y=y)
    raw = (tmp / "cut.npz").read_bytes()
    (tmp / "cut.npz").write_bytes(raw[: len(raw) // 2])
    return tmp / "cut.npz"


def npz_entry_cut_short(tmp: Path) -> Path:
    x, y = blobs()
    np.savez(tmp / "whole.npz", x=x, y=y)
    return rezip(tmp / "whole.npz", tmp / "short.npz", "x.npy", cut=40)


def npz_compressed_corrupt(tmp: Path) -> Path:
    x, y = blobs(200, 8)
    np.savez_compressed(tmp / "bad.npz", x=x, y=y)
    raw = bytearray((tmp / "bad.npz").read_bytes())
    raw[200:260] = b"\x07" * 60  # inside the deflated x.npy
    (tmp / "bad.npz").write_bytes(bytes(raw))
    return tmp / "bad.npz"


def npz_object_array(tmp: Path) -> Path:
    np.savez(tmp / "obj.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    return tmp / "obj.npz"


def npz_wrong_keys(tmp: Path) -> Path:
    np.savez(tmp / "keys.npz", images=np.zeros((3, 2)), targets=np.zeros(3))
    return tmp / "keys.npz"


def npz_lone_npy(tmp: Path) -> Path:
    np.save(tmp / "arr.npy", np.zeros((3, 2)))
    (tmp / "arr.npy").rename(tmp / "lone.npz")
    return tmp / "lone.npz"


def npz_pickle(tmp: Path) -> Path:
    (tmp / "pick.npz").write_bytes(pickle.dumps({"x": [1, 2]}))
    return tmp / "pick.npz"


def npz_text(tmp: Path) -> Path:
    (tmp / "text.npz").write_text("x,y\n1,2\n")
    return tmp / "text.npz"


def npz_nan(tmp: Path) -> Path:
    x, y = blobs()
    x[17, 0] = np.nan
    x[17, 3] = np.inf
    x[21, 1] = -np.inf
    np.savez(tmp / "nan.npz", x=x, y=y)
    return tmp / "nan.npz"


def npz_nan_test_split(tmp: Path) -> Path:
    x, y = blobs()
    x[4, 2] = np.nan
    np.savez(tmp / "split.npz", x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])
    return tmp / "split.npz"


def npz_length_mismatch(tmp: Path) -> Path:
    np.savez(tmp / "len.npz", x=np.zeros((5, 2), np.float32), y=np.array([0, 1, 0, 1]))
    return tmp / "len.npz"


def npz_strings_as_x(tmp: Path) -> Path:
    np.savez(tmp / "str.npz", x=np.array([["a", "b"], ["c", "d"]]), y=np.array([0, 1]))
    return tmp / "str.npz"


def npz_stray_label(tmp: Path) -> Path:
    x, _ = blobs(41)
    y = np.append(np.arange(40) % 10, 99)
    np.savez(tmp / "stray.npz", x=x, y=y)
    return tmp / "stray.npz"


def npz_negative_labels(tmp: Path) -> Path:
    x, y = blobs()
    np.savez(tmp / "neg.npz", x=x, y=np.where(y == 2, -1, y))
    return tmp / "neg.npz"


def npz_split_gap(tmp: Path) -> Path:
    """Train has classes 0, 1 and test 3: class 2 is missing from the whole file."""
    x, y = blobs()
    np.savez(tmp / "gap.npz", x_train=x, y_train=y % 2, x_test=x[:4], y_test=np.full(4, 3))
    return tmp / "gap.npz"


def npz_nan_labels(tmp: Path) -> Path:
    x, y = blobs()
    y = y.astype(np.float64)
    y[5] = np.nan
    np.savez(tmp / "ynan.npz", x=x, y=y)
    return tmp / "ynan.npz"


# ------------------------------------------------------------------------------------- csv files
def csv_latin1(tmp: Path) -> Path:
    return write_csv(tmp / "latin.csv", ["a,b,label", "1,2,caf\u00e9", "3,4,th\u00e9"], encoding="latin-1")


def csv_empty(tmp: Path) -> Path:
    (tmp / "empty.csv").write_bytes(b"")
    return tmp / "empty.csv"


def csv_ragged(tmp: Path) -> Path:
    lines = csv_lines()
    lines[3] = "1,2"
    return write_csv(tmp / "ragged.csv", lines)


def csv_no_label_column(tmp: Path) -> Path:
    return write_csv(tmp / "nolabel.csv", ["a,b,target", "1,2,0", "3,4,1"])


def csv_close_label_column(tmp: Path) -> Path:
    return write_csv(tmp / "close.csv", ["a,b,Label", "1,2,0", "3,4,1"])


def csv_headerless(tmp: Path) -> Path:
    return write_csv(tmp / "nohead.csv", ["1,2,0", "3,4,1"])


def csv_text_feature(tmp: Path) -> Path:
    lines = csv_lines()
    lines[3] = "2,abc,2"
    return write_csv(tmp / "text.csv", lines)


def csv_empty_feature(tmp: Path) -> Path:
    lines = csv_lines()
    lines[5] = "4,,1"
    return write_csv(tmp / "hole.csv", lines)


def csv_empty_label(tmp: Path) -> Path:
    lines = csv_lines()
    lines[2] = "1,0.5,"
    return write_csv(tmp / "nolab.csv", lines)


def csv_nan(tmp: Path) -> Path:
    lines = csv_lines()
    lines[3] = "nan,inf,2"  # line 4 of the file
    lines[8] = "7,-inf,1"
    return write_csv(tmp / "nan.csv", lines)


def csv_overflow(tmp: Path) -> Path:
    lines = csv_lines()
    lines[6] = "1e39,2,2"  # finite as text, inf as float32
    return write_csv(tmp / "huge.csv", lines)


def csv_gzipped(tmp: Path) -> Path:
    (tmp / "packed.csv").write_bytes(gzip.compress("\n".join(csv_lines()).encode()))
    return tmp / "packed.csv"


def csv_nul(tmp: Path) -> Path:
    (tmp / "binary.csv").write_bytes(b"a,b,label\n1,2,0\n\x00\x01\x02,3,1\n")
    return tmp / "binary.csv"


def csv_one_based(tmp: Path) -> Path:
    return write_csv(tmp / "onebased.csv", ["a,label"] + [f"{i},{1 + i % 3}" for i in range(12)])


def csv_negative(tmp: Path) -> Path:
    return write_csv(tmp / "pm.csv", ["a,label"] + [f"{i},{(-1) ** i}" for i in range(12)])


# ---------------------------------------------------------------------------------- image folders
def images_truncated(tmp: Path) -> Path:
    root = png_folder(tmp / "imgs", {"cat": 4, "dog": 4})
    bad = root / "dog" / "img2.png"
    noise = np.random.default_rng(0).integers(0, 256, (5, 6), dtype=np.uint8)
    Image.fromarray(noise).save(bad)
    bad.write_bytes(bad.read_bytes()[:60])  # the header survives, the pixels do not
    return root


def images_garbage(tmp: Path) -> Path:
    root = png_folder(tmp / "imgs", {"cat": 4, "dog": 4})
    (root / "cat" / "img1.png").write_bytes(b"this is not a png at all")
    return root


def images_hollow_class(tmp: Path) -> Path:
    root = png_folder(tmp / "imgs", {"cat": 4, "dog": 4})
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("no pictures yet")
    return root


def folder_of_text(tmp: Path) -> Path:
    (tmp / "proj").mkdir()
    (tmp / "proj" / "README.md").write_text("hello")
    (tmp / "proj" / "table.csv").write_text("a,label\n1,0\n")
    return tmp / "proj"


def folder_of_code(tmp: Path) -> Path:
    for sub in ("src", "tests"):
        (tmp / "code" / sub).mkdir(parents=True)
        (tmp / "code" / sub / "main.py").write_text("print(1)")
    return tmp / "code"


# ------------------------------------------------------------------------------------ IDX folders
def idx_truncated(tmp: Path) -> Path:
    folder = idx_folder(tmp / "idx", np.arange(20) % 10, np.arange(10))
    p = folder / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-7]))
    return folder


def idx_cut_gzip(tmp: Path) -> Path:
    folder = idx_folder(tmp / "idx", np.arange(20) % 10, np.arange(10))
    p = folder / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:25])
    return folder


def idx_partial(tmp: Path) -> Path:
    folder = idx_folder(tmp / "idx", np.arange(20) % 10, np.arange(10))
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    return folder


def idx_label_gap(tmp: Path) -> Path:
    return idx_folder(tmp / "idx", np.arange(20) % 5, np.array([0, 1, 7]))


def idx_float_nan(tmp: Path) -> Path:
    folder = idx_folder(tmp / "idx", np.arange(20) % 2, np.arange(4) % 2)
    images = np.random.default_rng(1).random((20, 4, 4))
    images[3, 1, 1] = np.nan
    write_idx(folder / "train-images-idx3-ubyte", images, type_byte=0x0D)
    return folder


# ----------------------------------------------------------------------------------------- names
def missing_sibling(tmp: Path) -> Path:
    write_csv(tmp / "data.csv", csv_lines())
    return tmp / "dta.csv"


def missing_parent(tmp: Path) -> Path:
    return tmp / "nowhere" / "data.npz"


def lone_npy_suffix(tmp: Path) -> Path:
    np.save(tmp / "x.npy", np.zeros((3, 2)))
    return tmp / "x.npy"


Case = tuple[Callable[[Path], Path], type[Exception], tuple[str, ...]]
CASES: dict[str, Case] = {
    # npz
    "npz-truncated-zip": (npz_truncated_zip, DataError, ("cut.npz'", "truncated or corrupt", "np.savez")),
    "npz-entry-cut-short": (
        npz_entry_cut_short,
        DataError,
        ("array 'x' of npz file", "short.npz'", "truncated"),
    ),
    "npz-compressed-corrupt": (npz_compressed_corrupt, DataError, ("bad.npz'", "truncated or corrupt")),
    "npz-object-array": (
        npz_object_array,
        DataError,
        ("array 'x'", "obj.npz'", "dtype=object", "need pickle"),
    ),
    "npz-wrong-keys": (
        npz_wrong_keys,
        DataError,
        ("keys.npz'", "['images', 'targets']", "expected 'x' and 'y'"),
    ),
    "npz-lone-npy": (npz_lone_npy, DataError, ("lone.npz'", "single .npy array", "np.savez")),
    "npz-pickle": (npz_pickle, DataError, ("pick.npz'", "pickle", "can run code")),
    "npz-text": (npz_text, DataError, ("text.npz'", "not an .npz (zip) archive")),
    "npz-nan": (
        npz_nan,
        DataError,
        (
            "nan.npz'",
            "holds 3 non-finite values (NaN or inf) in 2 rows (e.g. row 17 of 'x')",
            "clean or drop",
        ),
    ),
    "npz-nan-test-split": (npz_nan_test_split, DataError, ("split.npz'", "1 non-finite value", "'x_train'")),
    "npz-length": (npz_length_mismatch, DataError, ("len.npz'", "5 inputs but 4 labels")),
    "npz-string-x": (npz_strings_as_x, DataError, ("array 'x' of npz file", "str.npz'", "must be numeric")),
    "npz-stray-label": (
        npz_stray_label,
        LabelError,
        ("stray.npz'", "11 distinct values (0..9, 99)", "89 of the 100 classes", "map the labels to 0..10"),
    ),
    "npz-negative-labels": (npz_negative_labels, LabelError, ("neg.npz'", "negative values (-1)", "0..2")),
    "npz-split-gap": (npz_split_gap, LabelError, ("gap.npz'", "(0, 1, 3)", "1 of the 4 classes")),
    "npz-nan-labels": (npz_nan_labels, LabelError, ("ynan.npz'", "1 NaN or inf value (e.g. row 5)")),
    # csv
    "csv-latin1": (csv_latin1, DataError, ("latin.csv'", "not UTF-8", "line 2", "iconv")),
    "csv-empty": (csv_empty, DataError, ("empty.csv'", "is empty", "header row")),
    "csv-ragged": (
        csv_ragged,
        DataError,
        ("line 4 of csv file", "ragged.csv'", "2 fields but the header has 3"),
    ),
    "csv-no-label-column": (
        csv_no_label_column,
        DataError,
        ("nolabel.csv'", "no label column 'label'", "pass --label-column NAME (label_column=)"),
    ),
    "csv-close-label-column": (
        csv_close_label_column,
        DataError,
        (
            "close.csv'",
            "did you mean --label-column Label (label_column='Label' in Python or a config)?",
        ),
    ),
    "csv-headerless": (csv_headerless, DataError, ("nohead.csv'", "first line looks like data")),
    "csv-text-feature": (csv_text_feature, DataError, ("column 'b'", "text.csv'", "line 4 holds 'abc'")),
    "csv-empty-feature": (
        csv_empty_feature,
        DataError,
        ("column 'b'", "hole.csv'", "line 6 holds an empty field"),
    ),
    "csv-empty-label": (csv_empty_label, DataError, ("line 3 of csv file", "nolab.csv'", "empty label")),
    "csv-nan": (
        csv_nan,
        DataError,
        ("nan.csv'", "holds 3 non-finite values (NaN or inf) in 2 rows (e.g. line 4)", "clean or drop"),
    ),
    "csv-overflow": (csv_overflow, DataError, ("huge.csv'", "1 non-finite value", "line 7")),
    "csv-gzipped": (csv_gzipped, DataError, ("packed.csv'", "gzip-compressed", "gunzip")),
    "csv-nul": (csv_nul, DataError, ("binary.csv'", "NUL byte on line 3")),
    "csv-one-based-labels": (
        csv_one_based,
        LabelError,
        ("onebased.csv'", "(1..3)", "1 of the 4 classes", "0..2"),
    ),
    "csv-negative-labels": (csv_negative, LabelError, ("pm.csv'", "negative values (-1)", "0..1")),
    # image folders
    "image-truncated": (
        images_truncated,
        DataError,
        ("img2.png'", "dog", "corrupt, truncated", "remove or replace"),
    ),
    "image-garbage": (images_garbage, DataError, ("img1.png'", "cat", "not an image")),
    "image-hollow-class": (
        images_hollow_class,
        DataError,
        ("emu'", "1 other file (e.g. 'notes.txt') but no images"),
    ),
    "folder-of-text": (folder_of_text, DataError, ("proj'", "is no dataset", "did you mean", "table.csv'")),
    "folder-of-code": (folder_of_code, DataError, ("code'", "none of its 2 sub-folders ('src', 'tests')")),
    # IDX folders
    "idx-truncated": (idx_truncated, DataError, ("t10k-images-idx3-ubyte.gz'", "truncated or corrupt")),
    "idx-cut-gzip": (idx_cut_gzip, DataError, ("train-images-idx3-ubyte.gz'", "corrupt or truncated")),
    "idx-partial": (idx_partial, DataNotFoundError, ("idx'", "lacks t10k-labels-idx1-ubyte[.gz]")),
    "idx-label-gap": (idx_label_gap, LabelError, ("IDX folder", "(0..4, 7)", "2 of the 8 classes")),
    "idx-float-nan": (
        idx_float_nan,
        DataError,
        ("train-images-idx3-ubyte.gz'", "1 non-finite value", "row 3"),
    ),
    # names and paths
    "missing-sibling": (missing_sibling, DataNotFoundError, ("dta.csv'", "did you mean", "data.csv'")),
    "missing-parent": (
        missing_parent,
        DataNotFoundError,
        ("nowhere", "does not exist either", "check the path"),
    ),
    "npy-suffix": (lone_npy_suffix, DataError, ("x.npy'", "single .npy array", "np.savez")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_is_one_clear_line(tmp_path, case):
    build, error, fragments = CASES[case]
    path = build(tmp_path)
    with pytest.raises(error) as exc:
        load_dataset(path)
    assert_one_line(exc, *fragments)


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("digitz", ("'digitz'", "Did you mean 'digits'")),
        ("fashon-mnist", ("Did you mean 'fashion-mnist'",)),
        ("zzqqxx", ("'zzqqxx'", "neither a built-in dataset", "check the spelling")),
        ("no/such/dir", ("'no/such/dir'", "check the path")),
    ],
)
def test_dataset_name_typos(name, fragments):
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset(name)
    assert_one_line(exc, *fragments)


def test_read_idx_gzip_without_suffix(tmp_path):
    p = write_idx(tmp_path / "labels-idx1-ubyte", np.arange(5))
    plain = p.rename(tmp_path / "labels-idx1-ubyte")
    with pytest.raises(DataError) as exc:
        read_idx(plain)
    assert_one_line(exc, "labels-idx1-ubyte'", "gzip-compressed", "rename it")


# ------------------------------------------------------------------------ what still loads
def test_split_lacking_a_class_still_loads(tmp_path):
    """Only the whole file must cover 0..K-1; one split may lack a class."""
    x, y = blobs()
    np.savez(tmp_path / "s.npz", x_train=x, y_train=y, x_test=x[:4], y_test=np.array([0, 1, 0, 1]))
    splits = load_dataset(tmp_path / "s.npz", val_fraction=0.0)
    assert splits.num_classes == 3 and splits.test.num_classes == 3
    assert splits.test.class_counts().tolist() == [2, 2, 0]
    folder = idx_folder(tmp_path / "idx", np.arange(20) % 5, np.array([0, 1, 1]))
    idx = load_dataset(folder, val_fraction=0.0)
    assert idx.test.classes == ["0", "1", "2", "3", "4"] and idx.train.num_classes == 5


def test_csv_utf8_bom_and_crlf_load(tmp_path):
    text = "\r\n".join(csv_lines()) + "\r\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    splits = load_dataset(tmp_path / "bom.csv", val_fraction=0.0)
    assert splits.num_classes == 3 and splits.train.input_shape == (2,)
    assert len(splits.train) + len(splits.test) == 12


def test_npz_string_labels_union_over_splits(tmp_path):
    x, _ = blobs(6)
    np.savez(
        tmp_path / "named.npz",
        x_train=x,
        y_train=np.array(["cat", "dog"] * 3),
        x_test=x[:2],
        y_test=np.array(["emu", "cat"]),
    )
    splits = load_dataset(tmp_path / "named.npz", val_fraction=0.0)
    assert splits.classes == ["cat", "dog", "emu"] and splits.test.y.tolist() == [2, 0]


# ------------------------------------------------------------------------------- from_arrays
@pytest.mark.parametrize(
    ("x", "y", "error", "fragments"),
    [
        (
            np.array([[0.0, 1.0], [2.0, 3.0], [np.nan, 1.0], [1.0, 1.0]]),
            [0, 1, 0, 1],
            DataError,
            ("dataset 'arr'", "holds 1 non-finite value (NaN or inf) in 1 row (e.g. row 2)"),
        ),
        (
            torch.full((3, 4, 4), float("inf")),
            [0, 1, 1],
            DataError,
            ("dataset 'arr'", "48 non-finite values (NaN or inf) in 3 rows (e.g. row 0)"),
        ),
        (
            np.zeros((11, 2)),
            [*range(10), 99],
            LabelError,
            ("dataset 'arr'", "0..9, 99", "89 of the 100 classes"),
        ),
        (np.zeros((3, 2)), [0, -2, 1], LabelError, ("dataset 'arr'", "negative values (-2)", "0..2")),
        (
            np.zeros((2, 2)),
            [0.0, float("nan")],
            LabelError,
            ("dataset 'arr'", "NaN or inf value (e.g. row 1)"),
        ),
        (
            np.zeros((2, 2)),
            [0.0, 1.5],
            LabelError,
            ("dataset 'arr'", "non-integer floats (e.g. 1.5 in row 1)"),
        ),
        (np.zeros((2, 2)), np.eye(2), DataError, ("dataset 'arr'", "shape (2, 2)", "y.argmax(1)")),
        (np.zeros((2, 2)), [0, 5], LabelError, ("dataset 'arr'", "go up to 5 but there are 2 classes")),
        (np.zeros((3, 2)), [0, 1], DataError, ("dataset 'arr'", "3 inputs but 2 labels")),
        (np.zeros((2, 2), dtype=complex), [0, 1], DataError, ("x of dataset 'arr'", "must be numeric")),
    ],
)
def test_from_arrays_refuses(x, y, error, fragments):
    classes = ["a", "b"] if fragments[-1].startswith("go up to") else None
    with pytest.raises(error) as exc:
        from_arrays(x, y, classes, name="arr")
    assert_one_line(exc, *fragments)


def test_from_arrays_accepts_named_classes_with_empty_ones():
    """Explicit class lists may hold classes absent from this array (a split of a bigger set)."""
    ds = from_arrays(np.ones((2, 3), np.float32), [0, 2], classes=["a", "b", "c"], name="part")
    assert ds.class_counts().tolist() == [1, 0, 1]


def test_few_shot_names_an_empty_class():
    data = TensorDataset(torch.zeros(6, 2), torch.tensor([0, 0, 0, 2, 2, 2]), ["a", "b", "c"], "d/val")
    with pytest.raises(DataError) as exc:
        few_shot(data, 2, seed=0)
    assert_one_line(exc, "class 'b' (index 1)", "'d/val'", "has no examples", "full training split")


def test_finite_check_is_cheap_and_exact():
    """Fashion-MNIST-sized float data (47M values) is checked in well under a second (one sum; a
    torch.isfinite pass alone takes ~0.7 s on one thread); huge but finite values still load."""
    import time

    x = np.ones((60000, 784), np.float32)
    start = time.perf_counter()
    from_arrays(x, np.arange(60000) % 10, name="big")
    assert time.perf_counter() - start < 0.4
    huge = from_arrays(np.full((4, 3), 3e38, np.float32), [0, 1, 0, 1], name="huge")  # the sum is inf
    assert bool(torch.isfinite(huge.x).all())


def test_quoted_errors_stay_one_line():
    """Messages quote the underlying error on one line even when it spans several."""
    from transferkit.data.sources import _one_line

    assert _one_line(ValueError("first\nsecond\r\n  third")) == "first second third"
    assert len(_one_line(ValueError("x" * 500))) == 160
