"""Turning arrays, torch datasets and files on disk into :class:`TensorDataset` objects.

Supported on-disk formats: IDX files (the MNIST family, optionally gzipped), image folders (one
sub-folder per class), ``.npz`` arrays and ``.csv`` tables. Everything is parsed with numpy / PIL;
nothing read from a file can run code (``.npz`` files are read with ``allow_pickle=False``).

Bad data is refused while loading, with one line naming the file (or dataset), the problem and the
fix: NaN / inf inputs, negative or gapped integer labels, truncated or corrupt files, wrong text
encodings, ragged or non-numeric tables.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import shlex
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
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
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with entries, an empty zip
_NPY_MAGIC = b"\x93NUMPY"
_REMAP_HINT = "e.g. np.unique(y, return_inverse=True)"


# -------------------------------------------------------------------------------------- messages
def _one_line(exc: BaseException, limit: int = 160) -> str:
    """``exc``'s message with whitespace collapsed to one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _count(n: int, word: str) -> str:
    """``"1 row"``, ``"3 rows"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _runs(values: Sequence[int], limit: int = 8) -> str:
    """Sorted distinct integers as runs: ``[0, 1, 2, 3, 9, 99]`` -> ``"0..3, 9, 99"``."""
    spans: list[tuple[int, int]] = []
    for v in values:
        if spans and v == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], v)
        else:
            spans.append((v, v))
    parts = [str(a) if a == b else (f"{a}, {b}" if b == a + 1 else f"{a}..{b}") for a, b in spans[:limit]]
    more = f", ... ({len(spans) - limit} more runs)" if len(spans) > limit else ""
    return ", ".join(parts) + more


def _check_finite(x: torch.Tensor, where: str, row_name: Callable[[int], str] = lambda i: f"row {i}") -> None:
    """Refuse NaN / inf in float ``x`` (integers are skipped).

    NaN and inf make the sum non-finite, so one ``x.sum()`` clears finite data: 17 ms for 47M
    floats on one CPU thread, against 700 ms for :func:`torch.isfinite`. Only a non-finite sum
    (bad values, or a sum that overflowed) pays for the exact :func:`torch.isfinite` pass.

    Raises:
        DataError: Naming ``where``, the number of bad values and rows, and the first bad row
            (``row_name(index)``).
    """
    if not x.is_floating_point() or x.numel() == 0 or bool(torch.isfinite(x.sum())):
        return
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    bad = ~finite.reshape(x.shape[0], -1)
    rows = torch.nonzero(bad.any(dim=1), as_tuple=True)[0]
    raise DataError(
        f"{where} holds {_count(int(bad.sum()), 'non-finite value')} (NaN or inf) in "
        f"{_count(len(rows), 'row')} (e.g. {row_name(int(rows[0]))}); clean or drop them"
    )


# --------------------------------------------------------------------------------------- arrays
def _to_tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    try:
        arr = np.asarray(a)
    except ValueError as exc:  # ragged nested lists
        raise DataError(
            f"{what} is not a rectangular array ({_one_line(exc)}); give every example the same shape"
        ) from exc
    if arr.dtype.kind not in "biuf":
        raise DataError(
            f"{what} must be numeric, got an array of dtype {arr.dtype}; "
            "convert it to numbers first (e.g. x.astype(np.float32))"
        )
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(np.ascontiguousarray(arr))


def _classes_of_indices(y: torch.Tensor, what: str) -> list[str]:
    """Class names ``"0" .. "K-1"`` of integer labels ``y`` that must cover ``0..K-1`` exactly.

    Raises:
        LabelError: A label is negative, or some index below the largest label never occurs (a
            stray ``99`` among ``0..9`` would make 100 classes, 89 of them empty).
    """
    present = torch.unique(y)
    if present.numel() == 0:
        return []
    k = int(present.numel())
    lo, hi = int(present[0]), int(present[-1])
    if lo < 0:
        negative = present[present < 0].tolist()
        raise LabelError(
            f"{what} include negative values ({_runs(negative)}); labels must be class indices "
            f"0..K-1: map them to 0..{k - 1} ({_REMAP_HINT})"
        )
    empty = hi + 1 - k
    if empty:
        raise LabelError(
            f"{what} take {k} distinct values ({_runs(present.tolist())}), so {empty} of the "
            f"{hi + 1} classes 0..{hi} would be empty; map the labels to 0..{k - 1} ({_REMAP_HINT})"
        )
    return [str(i) for i in range(hi + 1)]


def _labels(y: Any, classes: Sequence[str] | None, what: str) -> tuple[torch.Tensor, list[str]]:
    """Class indices ``(N,)`` and class names from integer or string labels.

    String labels map to ``classes`` (default: their sorted distinct values). Integer labels index
    ``classes``; without ``classes`` they must cover ``0..K-1`` (see :func:`_classes_of_indices`).
    ``what`` names the labels in error messages ("labels of dataset 'x'").
    """
    if not isinstance(y, torch.Tensor):
        try:
            arr = np.asarray(y)
        except ValueError as exc:
            raise DataError(
                f"{what} are not a flat array ({_one_line(exc)}); give one label per example"
            ) from exc
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.dtype.kind in "OUS" and arr.ndim == 1:  # string labels -> sorted class names
            names = [str(v) for v in arr.tolist()]
            if classes is None:
                classes = sorted(set(names))
            lookup = {c: i for i, c in enumerate(classes)}
            unknown = sorted(set(names) - set(lookup))
            if unknown:
                raise LabelError(
                    f"{what}: labels {unknown[:5]} are not among the classes {list(classes)[:10]}; "
                    "fix the labels or pass the full class list"
                )
            return torch.tensor([lookup[n] for n in names], dtype=torch.long), list(classes)
        y = _to_tensor(arr, what)
    y = y.detach().cpu()
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{what} have shape {tuple(y.shape)}; labels must be 1-D class indices "
            "(for one-hot labels take y.argmax(1))"
        )
    if y.is_floating_point():
        finite = torch.isfinite(y)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite, as_tuple=True)[0]
            raise LabelError(
                f"{what} hold {_count(len(bad), 'NaN or inf value')} (e.g. row {int(bad[0])}); "
                "every label must be a class index: fix or drop those rows"
            )
        fractional = torch.nonzero(y != y.round(), as_tuple=True)[0]
        if len(fractional):
            i = int(fractional[0])
            raise LabelError(
                f"{what} must be integer class indices, got non-integer floats (e.g. {float(y[i])} "
                f"in row {i}); round them or map them to classes first"
            )
    y = y.long()
    if len(y) == 0:
        return y, list(classes) if classes is not None else []
    if classes is None:
        return y, _classes_of_indices(y, what)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        _classes_of_indices(y, what)  # raises the negative-label error
    if hi >= len(classes):
        raise LabelError(
            f"{what} go up to {hi} but there are {len(classes)} classes {list(classes)[:10]}; labels "
            f"must lie in 0..{len(classes) - 1}: fix the labels or give the full class list"
        )
    return y, list(classes)


def _from_arrays(
    x: Any,
    y: Any,
    classes: Sequence[str] | None,
    name: str,
    where: str,
    keys: tuple[str, str] | None = None,
    row_name: Callable[[int], str] | None = None,
) -> TensorDataset:
    """:func:`from_arrays` whose errors call the data ``where`` (e.g. ``"npz file '/p/d.npz'"``).

    ``keys`` names the x and y arrays inside ``where``; ``row_name`` turns a row index into words
    for the non-finite message (default ``"row i"``, or ``"row i of 'x_train'"`` with ``keys``).
    """
    x_label = f"array {keys[0]!r}" if keys else "x"
    x_what = f"{x_label} of {where}"
    y_what = f"labels in array {keys[1]!r} of {where}" if keys else f"labels of {where}"
    if row_name is None:
        row_name = (lambda i: f"row {i} of {keys[0]!r}") if keys else (lambda i: f"row {i}")
    xt = _to_tensor(x, x_what)
    if xt.ndim == 0 or xt.shape[0] == 0:
        raise DataError(f"{where} is empty ({x_label} has shape {tuple(xt.shape)}); add examples")
    image = xt.ndim >= 3
    if xt.ndim == 3:
        xt = xt.unsqueeze(1)
    elif xt.ndim == 4 and xt.shape[-1] in (1, 3) and xt.shape[1] not in (1, 3):
        xt = xt.permute(0, 3, 1, 2)
    elif xt.ndim > 4 or xt.ndim == 1:
        raise DataError(
            f"{x_what} has shape {tuple(xt.shape)}; expected (N, D), (N, H, W), (N, H, W, C) or (N, C, H, W)"
        )
    if xt.dtype == torch.bool:
        xt = xt.float()
    elif not xt.is_floating_point():
        if image:
            lo, hi = int(xt.min()), int(xt.max())
            if lo < 0 or hi > 255:
                raise DataError(
                    f"integer images of {where} have values in [{lo}, {hi}], "
                    "expected 0..255; scale them to floats in [0, 1] first"
                )
            xt = xt.float() / 255.0
        else:
            xt = xt.float()
    else:
        xt = xt.float()
        _check_finite(xt, where, row_name)
    yt, names = _labels(y, classes, y_what)
    if len(yt) != len(xt):
        raise DataError(
            f"{where} has {len(xt)} inputs but {len(yt)} labels; give exactly one label per input"
        )
    return TensorDataset(xt.contiguous(), yt, names, name)


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
        DataError: The arrays are empty, not numeric, have an unsupported shape, out-of-range
            pixel values or NaN / inf values, or differ in length.
        LabelError: Labels are negative, not integers, outside ``classes``, or (without
            ``classes``) skip an index below the largest label, which would make empty classes.
    """
    return _from_arrays(x, y, classes, name, f"dataset {name!r}")


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
        raise DataNotFoundError(f"IDX file {str(path)!r} does not exist; check the path")
    fix = "delete it and download or reinstall the dataset"
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"IDX file {str(path)!r} is corrupt or truncated ({_one_line(exc)}); {fix}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        if raw[:2] == _GZIP_MAGIC:
            raise DataError(
                f"{str(path)!r} is gzip-compressed but not named .gz; rename it to "
                f"{path.name + '.gz'!r} or decompress it (gunzip)"
            )
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


def classes_of_label_files(labels: Sequence[Any], where: str) -> list[str] | None:
    """Class names of integer (or string) labels spread over several splits (train and test).

    A split may lack a class; the union of all splits must cover ``0..K-1`` exactly. ``None`` when
    a label array is not 1-D (each split's own check then names the bad shape).

    Raises:
        LabelError: The union has negative labels or gaps (see :func:`from_arrays`).
    """
    arrays = [np.asarray(a) for a in labels]
    arrays = [a[:, 0] if a.ndim == 2 and a.shape[1] == 1 else a for a in arrays]
    if any(a.ndim != 1 for a in arrays):
        return None  # each split's own check names the bad shape
    _, names = _labels(np.concatenate(arrays), None, f"labels of {where}")
    return names


# -------------------------------------------------------------------------------- image folders
def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _other_files(folder: Path, limit: int = 1000) -> list[Path]:
    """Up to ``limit`` visible files under ``folder`` that are not images."""
    out: list[Path] = []
    for p in folder.rglob("*"):
        if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS and not p.name.startswith("."):
            out.append(p)
            if len(out) >= limit:
                break
    return sorted(out)


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
            others = _other_files(d, limit=100)
            held = (
                f"it holds {_count(len(others), 'other file')} (e.g. {others[0].name!r}) but no images"
                if others
                else "it holds no images"
            )
            raise DataError(
                f"class folder {str(d)!r} is empty: {held} ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or remove the folder"
            )
        items.extend((f, index[d.name]) for f in files)
    return items


# PIL reports unreadable or cut-short images with any of these.
_IMAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError, zlib.error)


def _image_error(f: Path, exc: BaseException) -> DataError:
    return DataError(
        f"cannot read image {str(f)!r}: it is corrupt, truncated or not an image "
        f"({_one_line(exc)}); remove or replace it"
    )


def _read_images(
    splits: list[list[tuple[Path, int]]], classes: list[str], names: list[str]
) -> list[TensorDataset]:
    from PIL import Image

    errors = (*_IMAGE_ERRORS, Image.DecompressionBombError)
    modes: list[str] = []
    sizes: list[tuple[int, int]] = []
    for items in splits:
        for f, _ in items:
            try:
                with Image.open(f) as im:
                    modes.append(im.mode)
                    sizes.append(im.size)
            except errors as exc:
                raise _image_error(f, exc) from exc
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
            try:  # the pixels are decoded only here: a cut-short file passes Image.open above
                with Image.open(f) as im:
                    arrs.append(np.asarray(im.convert(mode), dtype=np.uint8))
            except errors as exc:
                raise _image_error(f, exc) from exc
        x = np.stack(arrs)
        y = np.array([c for _, c in items], dtype=np.int64)
        out.append(from_arrays(x, y, classes, name))
    return out


def _no_dataset_hint(folder: Path) -> str:
    """What ``folder`` holds instead of a dataset, and where a dataset might be."""
    data_files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".npz", ".csv"))
    if data_files:
        return f"did you mean {str(data_files[0])!r}?"
    return (
        "point to an image folder (one sub-folder of images per class), an IDX folder, an .npz or a .csv file"
    )


def _folder_classes(train_dir: Path) -> list[str]:
    """Names of the class sub-folders of ``train_dir``, sorted.

    Raises:
        DataError: ``train_dir`` has no class sub-folders (loose images, other files or nothing),
            or none of them holds images.
    """
    class_dirs = _class_dirs(train_dir)
    classes = [d.name for d in class_dirs]
    if not classes:
        loose = _image_files(train_dir)
        if loose:
            raise DataError(
                f"image folder {str(train_dir)!r} holds {_count(len(loose), 'image')} but no class "
                "sub-folders; put each class's images in a sub-folder named after the class"
            )
        others = _other_files(train_dir, limit=100)
        held = f"it holds {_count(len(others), 'file')} but no images" if others else "it is empty"
        raise DataError(f"folder {str(train_dir)!r} is no dataset: {held}; {_no_dataset_hint(train_dir)}")
    if not any(_image_files(d) for d in class_dirs):
        shown = ", ".join(repr(c) for c in classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise DataError(
            f"folder {str(train_dir)!r} is no dataset: none of its {_count(len(classes), 'sub-folder')} "
            f"({shown}) holds images ({', '.join(sorted(IMAGE_EXTENSIONS))}); {_no_dataset_hint(train_dir)}"
        )
    return classes


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
        DataError: The folder is no image folder or is empty, a class folder holds no images, an
            image is corrupt or truncated, or an image has an odd size.
    """
    from transferkit.data.sampling import stratified_indices

    root = Path(path)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {str(root)!r} does not exist; check the path")
    split_dirs = root / "train", root / "test"
    separate = all(d.is_dir() for d in split_dirs)
    train_dir = split_dirs[0] if separate else root
    classes = _folder_classes(train_dir)
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
def _read_npz(p: Path) -> dict[str, Any]:
    """Every entry of the ``.npz`` file ``p``, read with ``allow_pickle=False``.

    Raises:
        DataError: The file is no zip archive (a lone ``.npy``, a pickle, ...), is truncated or
            corrupt, or holds object arrays (they would need pickle, which can run code).
    """
    where = f"npz file {str(p)!r}"
    fix = "write it again with np.savez(path, x=x, y=y)"
    with p.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(_NPY_MAGIC):
        raise DataError(
            f"{where} is a single .npy array, not an .npz archive of inputs and labels; "
            "save both with np.savez(path, x=x, y=y)"
        )
    if not head.startswith(_ZIP_MAGICS):
        if head[:1] == b"\x80":
            raise DataError(
                f"{where} is a Python pickle, not an .npz archive; it is refused because unpickling "
                f"can run code; {fix}"
            )
        if head[:2] == _GZIP_MAGIC:
            raise DataError(f"{where} is gzip-compressed, not an .npz archive; decompress it (gunzip)")
        raise DataError(
            f"{where} is not an .npz (zip) archive (it starts with bytes {head[:4].hex()}); {fix}"
        )
    arrays: dict[str, Any] = {}
    key = ""
    try:
        with np.load(p, allow_pickle=False) as z:
            for key in z.files:
                arrays[key] = z[key]
    except Exception as exc:  # a corrupt entry surfaces as BadZipFile, zlib.error, EOFError,
        # ValueError, or even SyntaxError / TokenError from numpy parsing a garbled .npy header
        if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
            raise DataError(
                f"array {key!r} of {where} holds Python objects (dtype=object); it is refused "
                "because loading it would need pickle, which can run code; save numbers "
                "(e.g. x.astype(np.float32)) and string labels as np.array(labels, dtype=str)"
            ) from exc
        part = f"array {key!r} of " if key else ""
        raise DataError(f"{part}{where} is truncated or corrupt ({_one_line(exc)}); {fix}") from exc
    return arrays


def load_npz(
    path: str | os.PathLike, name: str, test_fraction: float = 0.2, test_seed: int = 0, ordered: bool = False
) -> tuple[TensorDataset, TensorDataset]:
    """Read ``x``/``y`` (test split carved with a fixed seed) or ``x_train``/``y_train``/
    ``x_test``/``y_test`` arrays from an ``.npz`` file; an optional ``classes`` array names them.

    The file is read with ``allow_pickle=False``: object arrays are refused. Without ``classes``,
    integer labels of all splits together must cover ``0..K-1``. With ``ordered`` the test split of
    ``x``/``y`` is its last rows (rows in time order; see :func:`~transferkit.data.split_indices`).

    Raises:
        DataNotFoundError: The file does not exist.
        DataError: The file is empty, not an ``.npz``, truncated or corrupt, holds object arrays,
            lacks the keys, or its inputs hold NaN / inf.
        LabelError: Labels are negative, not integers, or leave classes empty.
    """
    from transferkit.data.sampling import split_indices

    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"npz file {str(p)!r} does not exist; check the path")
    if p.stat().st_size == 0:
        raise DataError(f"npz file {str(p)!r} is empty (0 bytes); write arrays with np.savez")
    arrays = _read_npz(p)
    where = f"npz file {str(p)!r}"
    classes = None
    if "classes" in arrays:
        names = np.asarray(arrays["classes"])
        if names.ndim != 1:
            raise DataError(
                f"array 'classes' of {where} has shape {names.shape}; it must be a 1-D array of "
                "class names, one per label index"
            )
        classes = [str(c) for c in names.tolist()]
    if {"x_train", "y_train", "x_test", "y_test"} <= set(arrays):
        if classes is None:  # a split may lack a class; both together must cover 0..K-1
            classes = classes_of_label_files([arrays["y_train"], arrays["y_test"]], where)
        train = _from_arrays(
            arrays["x_train"], arrays["y_train"], classes, f"{name}/train", where, ("x_train", "y_train")
        )
        test = _from_arrays(
            arrays["x_test"],
            arrays["y_test"],
            classes or train.classes,
            f"{name}/test",
            where,
            ("x_test", "y_test"),
        )
        return train, test
    if {"x", "y"} <= set(arrays):
        full = _from_arrays(arrays["x"], arrays["y"], classes, name, where, ("x", "y"))
        keep, held = split_indices(full.y, test_fraction, test_seed, ordered)
        return full.subset(torch.from_numpy(keep), f"{name}/train"), full.subset(
            torch.from_numpy(held), f"{name}/test"
        )
    found = sorted(arrays) or "none"
    raise DataError(
        f"npz file {str(p)!r} has keys {found}; expected 'x' and 'y', or 'x_train', 'y_train', "
        "'x_test' and 'y_test'; save it again with those names (np.savez(path, x=x, y=y))"
    )


def _read_csv_rows(p: Path) -> tuple[list[list[str]], list[int]]:
    """The non-blank rows of the UTF-8 csv file ``p`` and the line each starts on.

    Raises:
        DataError: The file is gzip-compressed, not UTF-8 text, binary, or badly quoted.
    """
    where = f"csv file {str(p)!r}"
    raw = p.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        raise DataError(f"{where} is gzip-compressed; decompress it (gunzip) to a plain-text .csv first")
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is dropped
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{where} is not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line} is not valid "
            "UTF-8 (latin-1 or cp1252?); re-save it as UTF-8, e.g. "
            "`iconv -f latin1 -t utf-8 in.csv > out.csv`"
        ) from exc
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(
            f"{where} holds a NUL byte on line {line}, so it is a binary file, not a csv table; "
            "export the data again as plain-text csv"
        )
    rows: list[list[str]] = []
    lines: list[int] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if row and any(c.strip() for c in row):
                rows.append(row)
                lines.append(start)
    except csv.Error as exc:
        raise DataError(
            f"{where} is not a valid csv table at line {end + 1} ({_one_line(exc)}); "
            "fix the quoting on that line"
        ) from exc
    return rows, lines


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_csv(
    path: str | os.PathLike,
    name: str,
    label_column: str = "label",
    test_fraction: float = 0.2,
    test_seed: int = 0,
    ordered: bool = False,
) -> tuple[TensorDataset, TensorDataset]:
    """Read a UTF-8 table with a header row: ``label_column`` holds labels, every other column is a
    numeric feature. Integer labels are class indices (covering ``0..K-1``); other labels map to
    sorted class names.

    Returns:
        ``(train, test)`` with ``x`` of shape ``(N, D)``; the test split (``test_fraction``) is
        stratified with the fixed ``test_seed``, or with ``ordered`` the last rows.

    Raises:
        DataNotFoundError: The file does not exist.
        DataError: The file is empty, not UTF-8, has ragged rows, no label column, an empty label,
            a feature that is not numeric, or NaN / inf values (each message names the line).
        LabelError: Integer labels are negative or leave classes empty.
    """
    import difflib

    from transferkit.data.sampling import split_indices

    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"csv file {str(p)!r} does not exist; check the path")
    where = f"csv file {str(p)!r}"
    rows, lines = _read_csv_rows(p)
    if not rows:
        raise DataError(f"{where} is empty; it needs a header row and data rows")
    header, body, body_lines = [h.strip() for h in rows[0]], rows[1:], lines[1:]
    if label_column not in header:
        close = difflib.get_close_matches(label_column, header, n=1)
        fix = (
            f"did you mean --label-column {shlex.quote(close[0])} (label_column={close[0]!r} in Python or "
            "a config)?"
            if close
            else "its first line looks like data: add a header row naming the columns"
            if all(_is_number(h) for h in header)
            else f"name the label column {label_column!r} or pass --label-column NAME (label_column=)"
        )
        raise DataError(f"{where} has no label column {label_column!r} (columns: {header[:12]}); {fix}")
    if header.count(label_column) > 1:
        raise DataError(
            f"{where} has {header.count(label_column)} columns named {label_column!r}; rename all but one"
        )
    if not body:
        raise DataError(f"{where} is empty: it has a header but no data rows; add rows")
    li = header.index(label_column)
    feats = [i for i in range(len(header)) if i != li]
    if not feats:
        raise DataError(f"{where} has only the label column {label_column!r}; add feature columns")
    for row, line in zip(body, body_lines, strict=True):
        if len(row) != len(header):
            raise DataError(
                f"line {line} of {where} has {len(row)} fields but the header has {len(header)}; "
                "fix that line (a missing or extra comma, or an unquoted comma inside a value)"
            )
    raw_labels = [row[li].strip() for row in body]
    for value, line in zip(raw_labels, body_lines, strict=True):
        if not value:
            raise DataError(
                f"line {line} of {where} has an empty label in column {label_column!r}; "
                "fill it in or drop the row"
            )
    cols = np.array([[row[i] for i in feats] for row in body], dtype=object)
    try:
        x64 = cols.astype(np.float64)
    except ValueError:
        for j, i in enumerate(feats):
            for r, value in enumerate(cols[:, j]):
                if not _is_number(value):
                    shown = repr(value) if value.strip() else "an empty field"
                    text = (f"; for text classification name the text column with --text-column "
                            f"{shlex.quote(header[i])}"
                            if value.strip() else "")
                    raise DataError(
                        f"column {header[i]!r} of {where} is not numeric: line {body_lines[r]} holds "
                        f"{shown}; every column except the label column {label_column!r} must hold "
                        f"numbers (fix the value, drop the column, or pass --label-column){text}"
                    ) from None
        raise
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are refused below
        x = x64.astype(np.float32)
    _check_finite(torch.from_numpy(x), where, lambda r: f"line {body_lines[r]}")
    try:
        y: Any = np.array([int(v) for v in raw_labels], dtype=np.int64)
    except (ValueError, OverflowError):
        y = np.array(raw_labels, dtype=str)
    full = _from_arrays(x, y, None, name, where)
    keep, held = split_indices(full.y, test_fraction, test_seed, ordered)
    return full.subset(torch.from_numpy(keep), f"{name}/train"), full.subset(
        torch.from_numpy(held), f"{name}/test"
    )
