"""GBC (Pándy et al., 2022): Gaussian Bhattacharyya coefficient between classes."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from transferkit.errors import ConfigError
from transferkit.selection._checks import (
    _check_features,
)

logger = logging.getLogger(__name__)


def gbc(features: Any, labels: Any, pca_dim: int | None = 64) -> float:
    """GBC: Gaussian Bhattacharyya coefficient class separability (diagonal variant).

    Pándy et al. 2022, "Transferability Estimation using Bhattacharyya Class Separability"
    (CVPR). Features are optionally reduced by PCA to ``pca_dim`` dimensions; each class is
    modelled as a Gaussian with **diagonal** covariance (the paper's "diagonal" variant), and
    ``GBC = - sum_i sum_{j != i} exp(-D_B(c_i, c_j))`` (the paper's sum over ordered pairs,
    i.e. twice the sum over unordered pairs), with the Bhattacharyya distance
    ``D_B = 1/8 dmu^T S^-1 dmu + 1/2 log(det S / sqrt(det S_i det S_j))``, ``S = (S_i + S_j)/2``.
    A variance floor of 1e-6 x the mean feature variance keeps single-sample classes finite.

    Args:
        features: (N, D) float features.
        labels: (N,) integer labels in [0, C).
        pca_dim: PCA dimension (clipped to min(N, D)); ``None`` skips PCA.

    Returns:
        GBC, in [-C(C-1), 0]; 0 means perfectly separated classes. Higher = better.

    Raises:
        ConfigError: if ``pca_dim`` < 1.
        ShapeError, LabelError, DataError: on malformed input.
    """
    if pca_dim is not None and (isinstance(pca_dim, bool) or pca_dim < 1):
        raise ConfigError(f"pca_dim must be a positive integer or None, got {pca_dim!r}")
    f, y = _check_features(features, labels)
    if pca_dim is not None and pca_dim < f.shape[1]:
        from sklearn.decomposition import PCA

        dim = min(pca_dim, f.shape[0])
        f = PCA(n_components=dim, svd_solver="full", random_state=0).fit_transform(f)
    counts = np.bincount(y).astype(np.float64)[:, None]
    means = np.zeros((counts.size, f.shape[1]))
    sq = np.zeros_like(means)
    np.add.at(means, y, f)
    np.add.at(sq, y, f * f)
    means /= counts
    floor = 1e-6 * max(float(f.var(axis=0).mean()), np.finfo(np.float64).tiny)
    var = np.maximum(sq / counts - means**2, 0.0) + floor  # (K, d) per-class diagonal
    avg = (var[:, None, :] + var[None, :, :]) / 2  # (K, K, d)
    diff = means[:, None, :] - means[None, :, :]
    log_var = np.log(var)
    dist = (diff**2 / avg).sum(-1) / 8 + 0.5 * (
        np.log(avg).sum(-1) - 0.5 * (log_var.sum(-1)[:, None] + log_var.sum(-1)[None, :])
    )
    coeff = np.exp(-dist)
    np.fill_diagonal(coeff, 0.0)
    return float(-coeff.sum())
