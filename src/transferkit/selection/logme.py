"""LogME (You et al., 2021): the evidence of a Bayesian linear model of the labels on the features."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.linalg

from transferkit.selection._checks import (
    _check_features,
)

logger = logging.getLogger(__name__)


def _logme_stats(
    t: np.ndarray, sigma: np.ndarray, z2: np.ndarray, y2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``gamma``, ``||m||^2`` and ``||y - F m||^2`` (each (C,)) for ``t = alpha / beta`` (C,)."""
    inv = 1.0 / (sigma + t)
    gamma = (sigma * inv).sum(axis=0)
    w = z2 * inv * inv
    m2 = w.sum(axis=0)
    # ||y - Fm||^2 = ||y||^2 - sum z^2 (sigma + 2t) / (sigma + t)^2: no division by sigma.
    res2 = np.maximum(y2 - (w * (sigma + 2 * t)).sum(axis=0), 1e-12 * y2)
    return gamma, m2, res2


def _logme_evidence(
    alpha: np.ndarray,
    beta: np.ndarray,
    sigma: np.ndarray,
    z2: np.ndarray,
    y2: np.ndarray,
    n: int,
    d: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Log evidence and its pieces for each target column, given the spectrum of F^T F.

    Args:
        alpha, beta: (C,) prior and noise precisions.
        sigma: (k, 1) non-zero-side eigenvalues of F^T F (squared singular values of F).
        z2: (k, C) squared projections ``(V^T F^T y)^2`` of each target column.
        y2: (C,) ``||y||^2`` per column.

    Returns:
        ``(evidence, gamma, m2, res2)``, each (C,): log p(y | F, alpha, beta) (not divided by N),
        effective number of parameters, ``||m||^2`` and ``||y - F m||^2``.
    """
    gamma, m2, res2 = _logme_stats(alpha / beta, sigma, z2, y2)
    logdet = np.log(alpha + beta * sigma).sum(axis=0) + (d - sigma.shape[0]) * np.log(alpha)
    evidence = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - logdet / 2
    )
    return evidence, gamma, m2, res2


def logme(features: Any, labels: Any, *, max_iter: int = 1000, tol: float = 1e-5) -> float:
    """LogME: maximum log evidence of a Bayesian linear model on the features.

    You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"
    (ICML). For each class c the one-hot column ``y = [labels == c]`` is modelled as
    ``y ~ N(F w, 1/beta)``, ``w ~ N(0, 1/alpha)``; alpha and beta are set by the paper's
    fixed-point iteration ``alpha = gamma / m^T m``, ``beta = (N - gamma) / ||y - F m||^2``.
    The spectrum of F (the eigendecomposition of the smaller Gram matrix, i.e. the SVD of F) is
    computed once and all classes iterate together. Computed in float64.

    Args:
        features: (N, D) float features of the target samples.
        labels: (N,) integer labels in [0, C); classes that do not occur are ignored.
        max_iter: maximum fixed-point iterations.
        tol: stop when ``alpha / beta`` changes by less than this relative amount for all
            classes.

    Returns:
        Mean over classes of ``log p(y_c | F, alpha*, beta*) / N``. Higher = better.

    Raises:
        ShapeError, LabelError, DataError: on malformed input (see module docstring).
    """
    f, y = _check_features(features, labels)
    n, d = f.shape
    onehot = (y[:, None] == np.arange(int(y.max()) + 1)[None, :]).astype(np.float64)  # (N, C)
    if n >= d:  # eigh of F^T F (D, D) = V S^2 V^T; z = V^T F^T y
        sigma, vecs = scipy.linalg.eigh(f.T @ f, check_finite=False, overwrite_a=True)
        z2 = (vecs.T @ (f.T @ onehot)) ** 2
    else:  # eigh of F F^T (N, N) = U S^2 U^T; z = S U^T y
        sigma, vecs = scipy.linalg.eigh(f @ f.T, check_finite=False, overwrite_a=True)
        z2 = np.clip(sigma, 0.0, None)[:, None] * (vecs.T @ onehot) ** 2
    sigma = np.clip(sigma, 0.0, None)[:, None]  # (k, 1); round-off can make tiny ones < 0
    y2 = onehot.sum(axis=0)
    alpha = np.ones(onehot.shape[1])
    beta = np.ones(onehot.shape[1])
    for _ in range(max_iter):
        t_old = alpha / beta
        gamma, m2, res2 = _logme_stats(t_old, sigma, z2, y2)
        alpha = gamma / np.maximum(m2, 1e-300)
        beta = (n - gamma) / res2
        alpha = np.clip(alpha, 1e-300, 1e300)
        if np.all(np.abs(alpha / beta - t_old) <= tol * t_old):
            break
    else:
        logger.debug("LogME fixed point did not converge in %d iterations", max_iter)
    evidence, *_ = _logme_evidence(alpha, beta, sigma, z2, y2, n, d)
    return float(np.mean(evidence) / n)


# ----------------------------------------------------------------------------- LEEP / NCE
