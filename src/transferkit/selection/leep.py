"""LEEP (Nguyen et al., 2020): log expected empirical prediction through the source head."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from transferkit.errors import DataError, ShapeError
from transferkit.selection._checks import (
    _PROB_TOL,
    _check_target,
    _joint,
    _log_conditional,
    _to_numpy,
)

logger = logging.getLogger(__name__)


def leep(source_probs: Any, labels: Any) -> float:
    """LEEP: log expected empirical prediction of the source model's outputs.

    Nguyen et al. 2020, "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations" (ICML). With ``theta(x)`` the source softmax, the empirical joint is
    ``P(y, z) = 1/N sum_i theta(x_i)_z [y_i = y]`` and ``P(y | z) = P(y, z) / P(z)``;
    ``LEEP = 1/N sum_i log sum_z P(y_i | z) theta(x_i)_z``.

    Args:
        source_probs: (N, Z) source-class probabilities; each row non-negative, summing to 1.
        labels: (N,) integer target labels in [0, C).

    Returns:
        LEEP, a log-likelihood <= 0. Higher = better.

    Raises:
        ShapeError, LabelError, DataError: on malformed input or rows that are not
            probabilities.
    """
    p = _to_numpy(source_probs, "source_probs")
    if p.ndim != 2 or p.shape[1] < 1:
        raise ShapeError(f"source_probs must be 2-D (N, Z), got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        raise DataError(f"source_probs must be float probabilities, got dtype {p.dtype}")
    p = p.astype(np.float64)
    y = _check_target(labels, p.shape[0])
    if not np.all(np.isfinite(p)):
        raise DataError("source_probs contain NaN/inf values; fix the source model outputs")
    row_sums = p.sum(axis=1)
    if p.min() < 0 or np.max(np.abs(row_sums - 1.0)) > _PROB_TOL:
        raise DataError(
            f"source_probs rows must be probabilities (>= 0, summing to 1), got "
            f"min {p.min():.3g} and row sums in [{row_sums.min():.3g}, "
            f"{row_sums.max():.3g}]; apply softmax to the source logits"
        )
    cond = np.exp(_log_conditional(_joint(p, y)))  # (Z, K) P(y | z), 0 where P(z) = 0
    eep = np.einsum("nz,zn->n", p, cond[:, y])
    return float(np.mean(np.log(eep)))
