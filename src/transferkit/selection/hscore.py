"""H-score (Bao et al., 2019) and its shrinkage-regularised variant (Ibrahim et al., 2022)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from transferkit.selection._checks import (
    _check_features,
)

logger = logging.getLogger(__name__)


def h_score(features: Any, labels: Any, shrinkage: bool = False) -> float:
    """H-score: how much feature variance the class-conditional means explain.

    Bao et al. 2019, "An Information-Theoretic Approach to Transferability in Task Transfer
    Learning" (ICIP): ``H = tr(cov(f)^+ cov(E[f | y]))`` with the pseudo-inverse. With
    ``shrinkage=True`` it is the regularised H-score of Ibrahim et al. 2022, "Newer is not
    always better: Rethinking transferability metrics, their peculiarities, stability and
    performance" (ECML-PKDD): ``tr(cov_a(f)^-1 (1 - a) cov(E[f | y]))`` with ``cov_a`` the
    Ledoit-Wolf shrunk covariance and ``a`` its shrinkage.

    Args:
        features: (N, D) float features.
        labels: (N,) integer labels in [0, C).
        shrinkage: use the Ledoit-Wolf regularised variant (better when N is small vs. D).

    Returns:
        The H-score, in [0, min(D, C - 1)] for the plain variant. Higher = better.

    Raises:
        ShapeError, LabelError, DataError: on malformed input.
    """
    f, y = _check_features(features, labels)
    f = f - f.mean(axis=0)
    counts = np.bincount(y).astype(np.float64)
    means = np.zeros((counts.size, f.shape[1]))
    np.add.at(means, y, f)
    means /= counts[:, None]
    cov_g = (means.T * counts) @ means / f.shape[0]  # cov of E[f|y] over samples, ddof 0
    if shrinkage:
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf(assume_centered=True).fit(f)
        cov_f, cov_g = lw.covariance_, (1.0 - lw.shrinkage_) * cov_g
    else:
        cov_f = f.T @ f / f.shape[0]
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))
