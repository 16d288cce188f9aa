"""Splitting, few-shot sampling and shape matching of :class:`TensorDataset` objects.

Every function here is seeded and reproducible: the same data and seed give the same indices.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from transferkit.data.base import TensorDataset
from transferkit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "few_shot", "match_shape", "split_indices", "split_train_val", "stratified_indices", "without_labels",
]


def stratified_indices(y: torch.Tensor, test_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified ``(keep, held_out)`` split of labels ``y``.

    Uses :func:`sklearn.model_selection.train_test_split` with ``stratify=y``. When stratifying is
    impossible (a class with a single example, or fewer held-out rows than classes) it falls back
    to a plain random split and logs that at INFO level (tiny data often cannot be stratified; the
    split stays valid, only its class balance may differ).

    Args:
        y: Labels, shape ``(N,)``.
        test_size: Fraction in ``(0, 1)`` or a number of rows to hold out.
        seed: Random seed of the split.

    Returns:
        Two int64 arrays of row indices (keep, held out), disjoint, together covering ``range(N)``.
    """
    from sklearn.model_selection import train_test_split  # lazy: importing sklearn takes ~1 s

    labels = y.cpu().numpy()
    idx = np.arange(len(labels))
    try:
        keep, held = train_test_split(idx, test_size=test_size, random_state=seed, stratify=labels)
    except ValueError as exc:
        logger.info("cannot stratify the split (%s); using a plain random split", exc)
        try:
            keep, held = train_test_split(idx, test_size=test_size, random_state=seed)
        except ValueError as exc2:
            raise DataError(
                f"cannot split {len(labels)} examples with test_size={test_size!r}: {exc2}; "
                "use more data or a different fraction"
            ) from exc2
    return np.asarray(keep, dtype=np.int64), np.asarray(held, dtype=np.int64)


def _base_name(name: str) -> str:
    for suffix in ("/train", "/val", "/test"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def split_indices(
    y: torch.Tensor, test_size: float | int, seed: int, ordered: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)``: :func:`stratified_indices`, or with ``ordered`` the last
    ``test_size`` rows held out in their order (rows in time order: the held-out rows are the
    latest; as many as a stratified split holds out, ``ceil(test_size * N)`` of a fraction).

    Raises:
        DataError: an ordered split that would leave no row on one side.
    """
    if not ordered:
        return stratified_indices(y, test_size, seed)
    n = len(y)
    held = int(test_size) if isinstance(test_size, int) else math.ceil(float(test_size) * n)
    if not 0 < held < n:
        raise DataError(
            f"cannot split {n} examples in order with test_size={test_size!r}: it leaves a side empty; "
            "use more data or a different fraction"
        )
    return np.arange(n - held), np.arange(n - held, n)


def split_train_val(
    data: TensorDataset, val_fraction: float, seed: int, ordered: bool = False
) -> tuple[TensorDataset, TensorDataset]:
    """Carve a stratified validation split out of ``data``.

    Args:
        data: The training data.
        val_fraction: Fraction of ``data`` that goes to validation, in ``[0, 1)``. ``0`` gives an
            empty validation set with the same input shape and classes.
        seed: Random seed; the same seed gives the same split.
        ordered: Hold out the last rows instead (``data`` in time order: the model is chosen on
            later examples than it trains on); not stratified, ``seed`` unused.

    Returns:
        ``(train, val)``: disjoint subsets whose class proportions match ``data``'s (unless
        ``ordered``). They are named ``"<base>/train"`` and ``"<base>/val"``.

    Raises:
        ConfigError: ``val_fraction`` is outside ``[0, 1)``.
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(
            f"val_fraction must be in [0, 1), got {val_fraction!r}; use e.g. 0.1 for 10% validation"
        )
    base = _base_name(data.name)
    train_name, val_name = (f"{base}/train", f"{base}/val") if base else ("train", "val")
    if float(val_fraction) == 0.0 or len(data) == 0:
        return data.subset(torch.arange(len(data)), train_name), data.subset(
            torch.zeros(0, dtype=torch.long), val_name
        )
    keep, held = split_indices(data.y, float(val_fraction), seed, ordered)
    return data.subset(torch.from_numpy(keep), train_name), data.subset(torch.from_numpy(held), val_name)


def few_shot(data: TensorDataset, k: int, seed: int) -> TensorDataset:
    """Exactly ``k`` examples of every class, drawn at random.

    Args:
        data: The dataset to sample from.
        k: Examples per class, ``>= 1``.
        seed: Random seed; the same seed gives the same indices.

    Returns:
        A dataset of ``k * num_classes`` rows (in shuffled order), named ``"<name>/<k>-shot"``.

    Raises:
        ConfigError: ``k`` is not a positive integer.
        DataError: A class has fewer than ``k`` examples (the message names it and its count).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k (examples per class) must be a positive integer, got {k!r}")
    counts = data.class_counts()
    short = [(c, int(n)) for c, n in enumerate(counts.tolist()) if n < k]
    empty = [c for c, n in short if n == 0]
    if empty:
        c = empty[0]
        raise DataError(
            f"class {data.classes[c]!r} (index {c}) of dataset {data.name!r} has no examples, so "
            f"{k}-shot sampling cannot draw any; sample from a split that holds every class "
            "(e.g. the full training split) or drop the class"
        )
    if short:
        c, n = short[0]
        raise DataError(
            f"class {data.classes[c]!r} (index {c}) of dataset {data.name!r} has only {n} "
            f"examples, fewer than k={k}; lower k to at most {min(n for _, n in short)} or add data"
        )
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for c in range(data.num_classes):
        members = torch.nonzero(data.y == c, as_tuple=True)[0]
        picked.append(members[torch.randperm(len(members), generator=gen)[:k]])
    idx = torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)
    idx = idx[torch.randperm(len(idx), generator=gen)]
    return data.subset(idx, f"{data.name}/{k}-shot" if data.name else f"{k}-shot")


def match_shape(data: TensorDataset, shape: tuple[int, ...], batch_size: int = 1024) -> TensorDataset:
    """Resize and convert gray<->RGB so every input has shape ``shape`` (no normalisation).

    Uses :class:`transferkit.models.base.InputAdapter` (bilinear resize, channel repeat or luma), so
    data and models adapt inputs the same way.

    Args:
        data: Inputs ``(N, C, H, W)`` (or flat ``(N, D)``).
        shape: Target per-example shape, ``(C, H, W)`` or ``(D,)``.
        batch_size: Rows converted at once, to bound memory.

    Returns:
        A new dataset with ``x`` of shape ``(N, *shape)`` and the same labels, classes and name.

    Raises:
        ShapeError: The data cannot be converted (e.g. 2 channels to 3).
    """
    from transferkit.models.base import InputAdapter  # models import data lazily; avoid a cycle

    target = tuple(int(s) for s in shape)
    if data.input_shape == target:
        return data.subset(torch.arange(len(data)))
    adapter = InputAdapter(target)
    with torch.no_grad():
        parts = [adapter(data.x[i : i + batch_size]) for i in range(0, len(data), batch_size)]
    x = torch.cat(parts) if parts else torch.zeros((0, *target))
    return TensorDataset(x.contiguous(), data.y.clone(), list(data.classes), data.name)


def without_labels(data, size: int | None = None, seed: int = 0):  # noqa: ANN001, ANN201 (any dataset)
    """``data``'s inputs as an unlabelled pool: ``size`` examples drawn with ``seed`` (all when
    ``None`` or larger), labels replaced by zeros in in-memory datasets (images, vectors, texts) so no
    code can read them; the engine marks every unlabelled (target) example ``-1`` anyway.

    Raises:
        DataError: ``data`` is empty.
    """
    n = len(data)
    if n == 0:
        raise DataError(f"the unlabelled data {getattr(data, 'name', '')!r} is empty")
    if size is not None and size < n:
        gen = torch.Generator().manual_seed(seed)
        data = data.subset(torch.sort(torch.randperm(n, generator=gen)[:size]).values)
    name = f"{getattr(data, 'name', '') or 'data'} (unlabelled)"
    zeros = torch.zeros(len(data), dtype=torch.long)
    if isinstance(data, TensorDataset):
        return TensorDataset(data.x, zeros, list(data.classes), name)
    if hasattr(data, "texts"):  # a TextDataset (imported lazily: transferkit.data.text imports this module)
        return type(data)(list(data.texts), zeros, list(data.classes), name)
    return data
