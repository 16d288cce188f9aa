"""Streaming image folders (transferkit.data.folder): same pixels, labels and splits as the
in-memory load_image_folder, resizing, one-line errors at read time, DataLoader workers, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from transferkit.data.folder import ImageFolder, open_image_folder
from transferkit.data.sources import load_image_folder
from transferkit.errors import ConfigError, DataError

CLASSES = ["cat", "dog", "eel"]


def _write(folder, counts=(4, 5, 6), mode="RGB", ext="png", size=(12, 10), seed=0):
    """``counts[k]`` random images of PIL ``size`` (width, height) per class under ``folder``."""
    rng = np.random.default_rng(seed)
    for k, (cls, n) in enumerate(zip(CLASSES, counts, strict=True)):
        d = folder / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            arr[0, 0] = 40 * k  # a class mark, so labels are checked against pixels
            Image.fromarray(arr, mode=mode).save(d / f"img_{i:03d}.{ext}")
    return folder


def _stack(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return torch.stack(xs), torch.stack(ys)


@pytest.mark.parametrize(("mode", "ext"), [("RGB", "png"), ("L", "png"), ("RGB", "jpg"), ("L", "jpg")])
def test_same_pixels_labels_and_split_as_load_image_folder(tmp_path, mode, ext):
    _write(tmp_path, mode=mode, ext=ext)
    ref_train, ref_test = load_image_folder(tmp_path, "toy")
    train, test = open_image_folder(tmp_path, "toy")
    assert (train.name, test.name) == ("toy/train", "toy/test")
    for ds, ref in ((train, ref_train), (test, ref_test)):
        assert ds.classes == ref.classes == CLASSES and ds.num_classes == 3
        assert len(ds) == len(ref) and ds.targets.dtype == torch.int64
        assert torch.equal(ds.targets, ref.y)  # same examples, same order
        assert ds.input_shape == ref.input_shape == ((3 if mode == "RGB" else 1), 10, 12)
        x, y = _stack(ds)
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.ndim == 1
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        # the same decoder and the same uint8 -> float op: exact for PNG and JPEG alike
        assert torch.equal(x, ref.x)
        assert torch.equal(y, ref.y)


def test_construction_decodes_nothing_and_labels_follow_folders(tmp_path):
    _write(tmp_path, counts=(2, 3, 1))
    ds = ImageFolder(tmp_path, name="toy")
    assert ds.targets.tolist() == [0, 0, 1, 1, 1, 2]
    assert ds.mode == "RGB" and ds.input_shape == (3, 10, 12) and len(ds) == 6
    assert ds.path(2).parent.name == "dog"
    for i in range(len(ds)):  # the class mark written at pixel (0, 0)
        x, y = ds[i]
        assert y.ndim == 0 and round(float(x[0, 0, 0]) * 255) == 40 * int(y)
    assert ds.class_counts().tolist() == [2, 3, 1]


def test_mode_from_first_image_of_each_class(tmp_path):
    _write(tmp_path, mode="L")
    assert ImageFolder(tmp_path).mode == "L"
    # one colour image that is the first of its class: RGB
    arr = np.zeros((10, 12, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "dog" / "img_000.png")
    ds = ImageFolder(tmp_path)
    assert ds.mode == "RGB" and ds.input_shape[0] == 3
    assert ds[0][0].shape == (3, 10, 12)  # gray files are converted to RGB
    assert ImageFolder(tmp_path, mode="L")[4][0].shape == (1, 10, 12)


def test_train_test_subfolders(tmp_path):
    _write(tmp_path / "train", counts=(3, 3, 3), seed=1)
    _write(tmp_path / "test", counts=(1, 2, 1), seed=2)
    ref_train, ref_test = load_image_folder(tmp_path, "toy")
    train, test = open_image_folder(tmp_path, "toy")
    assert test.targets.tolist() == [0, 1, 1, 2]
    assert torch.equal(_stack(train)[0], ref_train.x) and torch.equal(_stack(test)[0], ref_test.x)
    assert train.classes == test.classes == CLASSES


def test_test_folder_of_another_size_is_refused(tmp_path):
    _write(tmp_path / "train", size=(12, 10))
    _write(tmp_path / "test", size=(8, 8))
    with pytest.raises(DataError, match=r"is 8x8 but the training images are 12x10.*size="):
        open_image_folder(tmp_path, "toy")
    train, test = open_image_folder(tmp_path, "toy", size=(6, 5))
    assert train.input_shape == test.input_shape == (3, 6, 5)


def test_stratified_split_matches_load_image_folder(tmp_path):
    _write(tmp_path, counts=(10, 10, 10))
    ref_train, ref_test = load_image_folder(tmp_path, "toy", test_fraction=0.3, test_seed=7)
    train, test = open_image_folder(tmp_path, "toy", test_fraction=0.3, test_seed=7)
    assert len(test) == 9 and torch.bincount(test.targets).tolist() == [3, 3, 3]
    assert torch.equal(_stack(test)[0], ref_test.x) and torch.equal(_stack(train)[0], ref_train.x)
    files = {p for ds in (train, test) for p in map(ds.path, range(len(ds)))}
    assert len(files) == 30  # disjoint and complete


def test_size_resizes_bilinear(tmp_path):
    _write(tmp_path, size=(12, 10))
    ds = ImageFolder(tmp_path, size=(7, 5))
    assert ds.input_shape == (3, 7, 5)
    x, _ = ds[0]
    want = np.asarray(Image.open(ds.path(0)).convert("RGB").resize((5, 7), Image.Resampling.BILINEAR))
    assert x.shape == (3, 7, 5)
    assert torch.equal(x, torch.from_numpy(want.copy()).permute(2, 0, 1).float() / 255.0)
    assert ImageFolder(tmp_path, size=4).input_shape == (3, 4, 4)


def test_mismatched_size_raises_at_read(tmp_path):
    _write(tmp_path)
    odd = tmp_path / "dog" / "img_002.png"
    Image.fromarray(np.zeros((9, 7, 3), dtype=np.uint8)).save(odd)
    ds = ImageFolder(tmp_path)
    i = [ds.path(j) for j in range(len(ds))].index(odd)
    assert ds[i - 1][0].shape == (3, 10, 12)
    with pytest.raises(DataError, match=r"img_002\.png' is 7x9 but .* are 12x10 .*pass size="):
        ds[i]
    assert ImageFolder(tmp_path, size=(10, 12))[i][0].shape == (3, 10, 12)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_image_raises_at_read_naming_the_file(tmp_path, damage):
    _write(tmp_path, size=(64, 64))
    bad = tmp_path / "eel" / "img_003.png"
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"not an image at all")
    ds = ImageFolder(tmp_path)  # only the first image of each class is opened here
    i = [ds.path(j) for j in range(len(ds))].index(bad)
    with pytest.raises(DataError, match=r"cannot read image '.*img_003\.png': it is corrupt.*remove or rep"):
        ds[i]


def test_first_image_corrupt_raises_at_construction(tmp_path):
    _write(tmp_path)
    (tmp_path / "cat" / "img_000.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"cannot read image '.*cat.img_000\.png'"):
        ImageFolder(tmp_path)


def test_folder_errors_as_load_image_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        open_image_folder(tmp_path, "toy")
    _write(tmp_path / "train")
    (tmp_path / "train" / "fox").mkdir()
    with pytest.raises(DataError, match="class folder .*fox' is empty"):
        ImageFolder(tmp_path / "train")
    with pytest.raises(ConfigError, match="mode must be"):
        ImageFolder(tmp_path / "train", mode="CMYK")
    with pytest.raises(ConfigError, match="size must be"):
        ImageFolder(tmp_path / "train", size=(0, 3))


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dataloader_workers_and_pickle(tmp_path, context):
    _write(tmp_path, counts=(5, 6, 7))
    train, _ = open_image_folder(tmp_path, "toy")
    ref_x, ref_y = _stack(train)
    loader = DataLoader(train, batch_size=4, num_workers=2, multiprocessing_context=context)
    batches = list(loader)
    assert torch.equal(torch.cat([b[0] for b in batches]), ref_x)
    assert torch.equal(torch.cat([b[1] for b in batches]), ref_y)
    zero = list(DataLoader(train, batch_size=4, num_workers=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, zero, strict=True))

    back = pickle.loads(pickle.dumps(train))
    assert (back.classes, back.name, back.input_shape, len(back)) == (
        train.classes,
        train.name,
        train.input_shape,
        len(train),
    )
    assert torch.equal(back.targets, train.targets) and torch.equal(_stack(back)[0], ref_x)


def test_a_model_trains_and_evaluates_on_a_streamed_folder_as_on_the_loaded_one(tmp_path):
    from transferkit.data.sources import load_image_folder
    from transferkit.engine import TrainConfig, Trainer
    from transferkit.evaluation import evaluate
    from transferkit.models import create_model

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(12):
            pixels = (rng.random((8, 8)) * 80 + c * 80).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    streamed, s_test = open_image_folder(root, "imgs", test_fraction=0.25)
    loaded, l_test = load_image_folder(root, "imgs", test_fraction=0.25)
    weights = []
    for train in (streamed, loaded):
        torch.manual_seed(0)
        model = create_model("small_cnn", num_classes=3, in_channels=1, image_size=8, widths=(4,),
                             feature_dim=8)
        Trainer(model, TrainConfig(epochs=3, batch_size=9, device="cpu", amp=False, seed=1)).fit(train)
        weights.append(model)
    for a, b in zip(weights[0].state_dict().values(), weights[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert evaluate(weights[0], s_test).accuracy == evaluate(weights[1], l_test).accuracy
