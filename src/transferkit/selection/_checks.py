"""Input validation and empirical-distribution helpers shared by the transferability scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from transferkit.errors import DataError, LabelError, ShapeError

_PROB_TOL = 1e-3


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert a numpy array, torch tensor or sequence to a numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{name} cannot be converted to an array ({exc}); pass a numpy array or torch tensor"
        ) from exc


def _check_labels(labels: Any, n: int | None, name: str = "labels") -> np.ndarray:
    """Validate integer labels (N,); return them as int64 (and check length ``n`` if given)."""
    y = _to_numpy(labels, name)
    if y.ndim != 1:
        raise ShapeError(
            f"{name} must be 1-D (N,), got shape {y.shape}; flatten them or pass "
            "class indices instead of one-hot"
        )
    if n is not None and y.shape[0] != n:
        raise ShapeError(
            f"{name} has {y.shape[0]} entries but there are {n} samples; pass one label per sample"
        )
    if y.shape[0] == 0:
        raise DataError(f"{name} is empty; pass at least two samples")
    if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise LabelError(f"{name} must be integers, got dtype {y.dtype}; pass class indices")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            bad = y[~np.isfinite(y) | (y != np.round(y))][0]
            raise LabelError(f"{name} must be integers, got {bad!r}; pass class indices")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise LabelError(f"{name} must lie in [0, C), got {int(y.min())}; remap them to 0..C-1")
    return y


def _check_target(labels: Any, n: int) -> np.ndarray:
    """Validate target labels and return them remapped to the classes present, 0..K-1."""
    y = _check_labels(labels, n)
    num_classes = int(y.max()) + 1
    if n < num_classes:
        raise LabelError(
            f"fewer samples ({n}) than classes ({num_classes}, from the largest "
            "label); pass more samples or remap labels to 0..C-1"
        )
    present, inverse = np.unique(y, return_inverse=True)
    if present.size < 2:
        raise LabelError(
            f"labels hold a single class ({int(present[0])}); a transferability "
            "score needs at least two classes"
        )
    return inverse.astype(np.int64)


def _check_features(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate features (N, D) and labels (N,); return float64 features and remapped labels."""
    f = _to_numpy(features, "features")
    if f.ndim != 2:
        raise ShapeError(f"features must be 2-D (N, D), got shape {f.shape}; flatten or pool them first")
    if f.shape[0] < 2 or f.shape[1] < 1:
        raise ShapeError(f"features need at least 2 samples and 1 dimension, got shape {f.shape}")
    if not (np.issubdtype(f.dtype, np.floating) or np.issubdtype(f.dtype, np.integer)):
        raise DataError(f"features must be numeric, got dtype {f.dtype}")
    f = f.astype(np.float64)
    y = _check_target(labels, f.shape[0])
    finite = np.isfinite(f)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise DataError(
            f"features contain {int((~finite).sum())} NaN/inf values (first at "
            f"sample {row}, dim {col}: {f[row, col]}); fix the feature extractor or "
            "drop those samples"
        )
    if np.all(f.max(axis=0) == f.min(axis=0)):
        raise DataError(
            "features are constant across all samples (every dimension has zero "
            "variance), so they carry no information about the labels; check the "
            "feature extractor"
        )
    return f, y


# ----------------------------------------------------------------------------- LogME


def _joint(source: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Empirical joint P(z, y) (Z, K) from soft (N, Z) source predictions and labels (N,)."""
    onehot = (y[:, None] == np.arange(int(y.max()) + 1)[None, :]).astype(np.float64)
    return source.T @ onehot / source.shape[0]


def _log_conditional(joint: np.ndarray) -> np.ndarray:
    """log P(y | z) (Z, K) from the joint; source classes never predicted get log 0 = -inf."""
    marginal = joint.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(joint > 0, np.log(joint) - np.log(marginal), -np.inf)
