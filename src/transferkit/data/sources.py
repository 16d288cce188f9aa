"""Turning arrays, torch datasets and files on disk into :class:`TensorDataset` objects.

Supported on-disk formats: IDX files (the MNIST family, optionally gzipped), image folders (one
sub-folder per class), ``.npz`` arrays and ``.csv`` tables. Everything is parsed with numpy / PIL.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.data.base import TensorDataset
from transferkit.errors import DataError, DataNotFoundError, LabelError

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "find_idx_file",
    "from_arrays",
    "from_torch_dataset",
    "load_csv",
    "load_image_folder",
    "load_npz",
    "read_idx",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/ file format).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------------------- arrays
def _to_tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    arr = np.asarray(a)
    if arr.dtype.kind in "OUS":
        raise DataError(f"{what} must be numeric, got an array of dtype {arr.dtype}")
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(np.ascontiguousarray(arr))


def _labels(y: Any, classes: Sequence[str] | None) -> tuple[torch.Tensor, list[str] | None]:
    """Class indices ``(N,)`` and class names from integer or string labels."""
    if not isinstance(y, torch.Tensor):
        arr = np.asarray(y)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.dtype.kind in "OUS":  # string labels -> sorted class names
            names = [str(v) for v in arr.tolist()]
            if classes is None:
                classes = sorted(set(names))
            lookup = {c: i for i, c in enumerate(classes)}
            unknown = sorted(set(names) - set(lookup))
            if unknown:
                raise LabelError(
                    f"labels {unknown[:5]} are not among the classes {list(classes)[:10]}; "
                    "fix the labels or pass the full class list"
                )
            return torch.tensor([lookup[n] for n in names], dtype=torch.long), list(classes)
        y = _to_tensor(arr, "y")
    y = y.detach().cpu()
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise DataError(
                "labels must be integer class indices, got non-integer floats; "
                "round them or map them to classes first"
            )
    elif y.dtype == torch.bool:
        y = y.long()
    return y.long(), (list(classes) if classes is not None else None)


def from_arrays(x: Any, y: Any, classes: Sequence[str] | None = None, name: str = "") -> TensorDataset:
    """Build a dataset from numpy arrays or tensors.

    Images: ``(N, H, W)`` gets a channel dimension; ``(N, H, W, C)`` with ``C`` in ``{1, 3}`` (and
    a second dimension that is not 1 or 3) is moved to ``(N, C, H, W)``; integer images must lie in
    ``0..255`` and are scaled to ``[0, 1]``. Two-dimensional ``(N, D)`` data is kept as features.

    Args:
        x: Inputs, ``(N, D)``, ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``.
        y: Labels ``(N,)``: integer class indices or strings (mapped to sorted class names).
        classes: Class names; default: the sorted string labels, or ``"0" .. "K-1"``.
        name: Name of the dataset.

    Returns:
        The dataset (float32 ``x``, int64 ``y``).

    Raises:
        DataError: The arrays are empty, not numeric, have an unsupported shape or out-of-range
            pixel values.
    """
    xt = _to_tensor(x, "x")
    if xt.ndim == 0 or xt.shape[0] == 0:
        raise DataError(f"dataset {name!r} is empty (x has shape {tuple(xt.shape)}); add examples")
    image = xt.ndim >= 3
    if xt.ndim == 3:
        xt = xt.unsqueeze(1)
    elif xt.ndim == 4 and xt.shape[-1] in (1, 3) and xt.shape[1] not in (1, 3):
        xt = xt.permute(0, 3, 1, 2)
    elif xt.ndim > 4 or xt.ndim == 1:
        raise DataError(
            f"x of dataset {name!r} has shape {tuple(xt.shape)}; expected (N, D), (N, H, W), "
            "(N, H, W, C) or (N, C, H, W)"
        )
    if xt.dtype == torch.bool:
        xt = xt.float()
    elif not xt.is_floating_point():
        if image:
            lo, hi = int(xt.min()), int(xt.max())
            if lo < 0 or hi > 255:
                raise DataError(
                    f"integer images of dataset {name!r} have values in [{lo}, {hi}], "
                    "expected 0..255; scale them to floats in [0, 1] first"
                )
            xt = xt.float() / 255.0
        else:
            xt = xt.float()
    yt, names = _labels(y, classes)
    return TensorDataset(xt.float().contiguous(), yt, names or [], name)


def from_torch_dataset(ds: Any, classes: Sequence[str] | None = None, name: str = "") -> TensorDataset:
    """Materialise a map-style dataset of ``(input, label)`` pairs into a :class:`TensorDataset`.

    Inputs may be PIL images, numpy arrays or tensors (all of one shape); the rules of
    :func:`from_arrays` apply to the stacked inputs. Datasets with ``data`` and ``targets``
    attributes and no transforms (torchvision's MNIST family, CIFAR) are read without iterating.

    Args:
        ds: A dataset with ``__len__`` and ``__getitem__`` returning ``(input, int label)``.
        classes: Class names; default ``ds.classes`` when it exists.
        name: Name of the dataset.

    Returns:
        The dataset.

    Raises:
        DataError: The dataset is empty or its inputs differ in shape.
    """
    if classes is None and getattr(ds, "classes", None) is not None:
        classes = [str(c) for c in ds.classes]
    if (
        hasattr(ds, "data")
        and hasattr(ds, "targets")
        and getattr(ds, "transform", None) is None
        and getattr(ds, "target_transform", None) is None
        and getattr(ds, "transforms", None) is None
    ):
        return from_arrays(ds.data, ds.targets, classes, name)
    n = len(ds)
    if n == 0:
        raise DataError(f"dataset {name or type(ds).__name__!r} is empty; it has no examples")
    xs, ys = [], []
    for i in range(n):
        inp, label = ds[i]
        # PIL images and arrays become tensors; np.array copies (PIL arrays are read-only)
        if isinstance(inp, torch.Tensor):
            arr = inp.detach().cpu()
        else:
            arr = torch.from_numpy(np.array(inp))
        if xs and arr.shape != xs[0].shape:
            raise DataError(
                f"example {i} of {name or type(ds).__name__!r} has shape {tuple(arr.shape)} but "
                f"example 0 has {tuple(xs[0].shape)}; resize all inputs to one size "
                "(e.g. a Resize transform)"
            )
        xs.append(arr)
        ys.append(int(label))
    return from_arrays(torch.stack(xs), torch.tensor(ys), classes, name)


# ------------------------------------------------------------------------------------------ IDX
def find_idx_file(folder: str | os.PathLike, stem: str) -> Path | None:
    """``folder/stem.gz`` or ``folder/stem`` (also ``stem`` with ``.idx``), if present."""
    folder = Path(folder)
    variants = [stem, stem.replace("-idx", ".idx")]
    for v in variants:
        for candidate in (folder / f"{v}.gz", folder / v):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array.

    The header is two zero bytes, a type byte (``0x08`` = uint8, ...), a byte giving the number of
    dimensions, then each dimension as a big-endian int32; the data follows in row-major order.

    Args:
        path: The file (``*.gz`` is decompressed).
        ndim: Expected number of dimensions (3 for images, 1 for labels); ``None`` accepts any.

    Returns:
        The array, e.g. ``(60000, 28, 28)`` uint8 images or ``(60000,)`` uint8 labels.

    Raises:
        DataNotFoundError: The file does not exist.
        DataError: The file is corrupt or truncated (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file {str(path)!r} does not exist")
    fix = "delete it and download or reinstall the dataset"
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"IDX file {str(path)!r} is corrupt or truncated ({exc}); {fix}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(
            f"{str(path)!r} is not an IDX file (bad magic number {raw[:4].hex() or 'none'}); {fix}"
        )
    dims_n = raw[3]
    if ndim is not None and dims_n != ndim:
        raise DataError(
            f"IDX file {str(path)!r} has {dims_n} dimensions, expected {ndim}; is it the right file?"
        )
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise DataError(f"IDX file {str(path)!r} is truncated inside its header; {fix}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=dims_n, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"IDX file {str(path)!r} holds {len(raw) - header} data bytes but its header "
            f"{shape} needs {expected}: the file is truncated or corrupt; {fix}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


# -------------------------------------------------------------------------------- image folders
def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _scan(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    items: list[tuple[Path, int]] = []
    index = {c: i for i, c in enumerate(classes)}
    for d in _class_dirs(folder):
        if d.name not in index:
            raise DataError(
                f"class folder {str(d)!r} is not among the training classes {classes}; "
                "give train/ and test/ the same class folders"
            )
        files = _image_files(d)
        if not files:
            raise DataError(f"class folder {str(d)!r} is empty: it holds no images; add some")
        items.extend((f, index[d.name]) for f in files)
    return items


def _read_images(
    splits: list[list[tuple[Path, int]]], classes: list[str], names: list[str]
) -> list[TensorDataset]:
    from PIL import Image, UnidentifiedImageError

    modes: list[str] = []
    sizes: list[tuple[int, int]] = []
    for items in splits:
        for f, _ in items:
            try:
                with Image.open(f) as im:
                    modes.append(im.mode)
                    sizes.append(im.size)
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"cannot read image {str(f)!r} ({exc}); remove or fix it") from exc
    mode = "L" if all(m in _GRAY_MODES for m in modes) else "RGB"
    common = Counter(sizes).most_common(1)[0][0]
    flat = [f for items in splits for f, _ in items]
    for f, size in zip(flat, sizes, strict=True):
        if size != common:
            raise DataError(
                f"image {str(f)!r} is {size[0]}x{size[1]} but most images are "
                f"{common[0]}x{common[1]}; resize all images to one size first"
            )
    out = []
    for items, name in zip(splits, names, strict=True):
        arrs = []
        for f, _ in items:
            with Image.open(f) as im:
                arrs.append(np.asarray(im.convert(mode), dtype=np.uint8))
        x = np.stack(arrs)
        y = np.array([c for _, c in items], dtype=np.int64)
        out.append(from_arrays(x, y, classes, name))
    return out


def load_image_folder(
    path: str | os.PathLike, name: str, test_fraction: float = 0.2, test_seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Read a folder of images with one sub-folder per class.

    If ``path`` has ``train/`` and ``test/`` sub-folders, each holds class sub-folders and gives
    that split; otherwise a stratified test split of ``test_fraction`` is carved with the fixed
    ``test_seed``. Images are read as gray (``"L"``) when all are gray, else as RGB, and must all
    share one size.

    Returns:
        ``(train, test)`` with ``x`` of shape ``(N, C, H, W)`` in ``[0, 1]``.

    Raises:
        DataNotFoundError: ``path`` does not exist.
        DataError: The folder is empty, a class folder is empty, or an image has an odd size.
    """
    from transferkit.data.sampling import stratified_indices

    root = Path(path)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {str(root)!r} does not exist")
    split_dirs = root / "train", root / "test"
    separate = all(d.is_dir() for d in split_dirs)
    train_dir = split_dirs[0] if separate else root
    classes = [d.name for d in _class_dirs(train_dir)]
    if not classes:
        loose = _image_files(train_dir)
        hint = (
            f"it holds {len(loose)} images but no class sub-folders; put each class's images in "
            "a sub-folder named after the class"
            if loose
            else "it holds no class sub-folders with images; add one sub-folder per class"
        )
        raise DataError(f"image folder {str(train_dir)!r} is empty: {hint}")
    if separate:
        train, test = _read_images(
            [_scan(split_dirs[0], classes), _scan(split_dirs[1], classes)],
            classes,
            [f"{name}/train", f"{name}/test"],
        )
        return train, test
    (full,) = _read_images([_scan(root, classes)], classes, [name])
    keep, held = stratified_indices(full.y, test_fraction, test_seed)
    return full.subset(torch.from_numpy(keep), f"{name}/train"), full.subset(
        torch.from_numpy(held), f"{name}/test"
    )


# ----------------------------------------------------------------------------------- npz / csv
def load_npz(
    path: str | os.PathLike, name: str, test_fraction: float = 0.2, test_seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Read ``x``/``y`` (test split carved with a fixed seed) or ``x_train``/``y_train``/
    ``x_test``/``y_test`` arrays from an ``.npz`` file; an optional ``classes`` array names them.

    Raises:
        DataNotFoundError: The file does not exist.
        DataError: The file is empty, unreadable or lacks the keys.
    """
    from transferkit.data.sampling import stratified_indices

    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"npz file {str(p)!r} does not exist")
    if p.stat().st_size == 0:
        raise DataError(f"npz file {str(p)!r} is empty (0 bytes); write arrays with np.savez")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read npz file {str(p)!r} ({exc}); write it with np.savez") from exc
    classes = [str(c) for c in arrays["classes"].tolist()] if "classes" in arrays else None
    if {"x_train", "y_train", "x_test", "y_test"} <= set(arrays):
        train = from_arrays(arrays["x_train"], arrays["y_train"], classes, f"{name}/train")
        test = from_arrays(arrays["x_test"], arrays["y_test"], classes or train.classes, f"{name}/test")
        return train, test
    if {"x", "y"} <= set(arrays):
        full = from_arrays(arrays["x"], arrays["y"], classes, name)
        keep, held = stratified_indices(full.y, test_fraction, test_seed)
        return full.subset(torch.from_numpy(keep), f"{name}/train"), full.subset(
            torch.from_numpy(held), f"{name}/test"
        )
    found = sorted(arrays) or "none"
    raise DataError(
        f"npz file {str(p)!r} has keys {found}; expected 'x' and 'y', or 'x_train', 'y_train', "
        "'x_test' and 'y_test'"
    )


def load_csv(
    path: str | os.PathLike,
    name: str,
    label_column: str = "label",
    test_fraction: float = 0.2,
    test_seed: int = 0,
) -> tuple[TensorDataset, TensorDataset]:
    """Read a table with a header row: ``label_column`` holds labels, every other column is a
    numeric feature. Integer labels are class indices; other labels map to sorted class names.

    Returns:
        ``(train, test)`` with ``x`` of shape ``(N, D)``; the test split (``test_fraction``) is
        stratified with the fixed ``test_seed``.

    Raises:
        DataNotFoundError: The file does not exist.
        DataError: The file is empty, has no label column, or a feature is not numeric.
    """
    from transferkit.data.sampling import stratified_indices

    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"csv file {str(p)!r} does not exist")
    with p.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"csv file {str(p)!r} is empty; it needs a header row and data rows")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if label_column not in header:
        raise DataError(
            f"csv file {str(p)!r} has no label column {label_column!r} (columns: {header}); "
            "name the label column 'label' or pass label_column="
        )
    if not body:
        raise DataError(f"csv file {str(p)!r} is empty: it has a header but no data rows")
    li = header.index(label_column)
    feats = [i for i in range(len(header)) if i != li]
    if not feats:
        raise DataError(
            f"csv file {str(p)!r} has only the label column {label_column!r}; add feature columns"
        )
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"row {r} of csv file {str(p)!r} has {len(row)} fields, the header has "
                f"{len(header)}; fix the row"
            )
    raw_labels = [row[li].strip() for row in body]
    cols = np.array([[row[i] for i in feats] for row in body], dtype=object)
    try:
        x = cols.astype(np.float64).astype(np.float32)
    except ValueError:
        for j, i in enumerate(feats):
            try:
                cols[:, j].astype(np.float64)
            except ValueError:
                raise DataError(
                    f"column {header[i]!r} of csv file {str(p)!r} is not numeric; every column "
                    f"except the label column {label_column!r} must hold numbers"
                ) from None
        raise
    try:
        y: Any = np.array([int(v) for v in raw_labels], dtype=np.int64)
    except ValueError:
        y = np.array(raw_labels, dtype=str)
    full = from_arrays(x, y, None, name)
    keep, held = stratified_indices(full.y, test_fraction, test_seed)
    return full.subset(torch.from_numpy(keep), f"{name}/train"), full.subset(
        torch.from_numpy(held), f"{name}/test"
    )
