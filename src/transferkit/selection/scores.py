"""Closed-form transferability scores: rank candidate source models without fine-tuning.

Every score takes arrays (numpy or torch; torch tensors are converted) and returns a Python
``float`` where **higher means the source is expected to transfer better**. Inputs:

* ``features`` (N, D): float features a candidate model extracts from the N target samples.
* ``labels`` (N,): integer target labels in ``[0, C)``. Only the classes that occur are used.
* ``source_probs`` (N, Z) for LEEP: the source model's softmax over its own Z classes.
* ``source_labels`` (N,) for NCE: the source model's hard predictions (integers in ``[0, Z)``).

Degenerate input raises a typed error (:class:`~transferkit.errors.ShapeError`,
:class:`~transferkit.errors.LabelError`, :class:`~transferkit.errors.DataError`) instead of
returning NaN. Features that are constant across all samples (every column constant) carry no
information and raise :class:`~transferkit.errors.DataError`; some constant columns are fine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg

from transferkit.errors import ConfigError, DataError, LabelError, ShapeError

logger = logging.getLogger(__name__)

_PROB_TOL = 1e-3


# ----------------------------------------------------------------------------- validation


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


def _joint(source: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Empirical joint P(z, y) (Z, K) from soft (N, Z) source predictions and labels (N,)."""
    onehot = (y[:, None] == np.arange(int(y.max()) + 1)[None, :]).astype(np.float64)
    return source.T @ onehot / source.shape[0]


def _log_conditional(joint: np.ndarray) -> np.ndarray:
    """log P(y | z) (Z, K) from the joint; source classes never predicted get log 0 = -inf."""
    marginal = joint.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(joint > 0, np.log(joint) - np.log(marginal), -np.inf)


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


def nce(source_labels: Any, labels: Any) -> float:
    """NCE: negative conditional entropy of the target labels given the source labels.

    Tran et al. 2019, "Transferability and Hardness of Supervised Classification Tasks"
    (ICCV). From the empirical joint ``P(y, z)`` of hard source predictions z and target labels
    y, ``NCE = -H(Y | Z) = sum_{y,z} P(y, z) log P(y | z)``.

    Args:
        source_labels: (N,) integer source predictions in [0, Z).
        labels: (N,) integer target labels in [0, C).

    Returns:
        ``-H(Y | Z)`` in nats, <= 0; 0 when z determines y. Higher = better.

    Raises:
        ShapeError, LabelError, DataError: on malformed input.
    """
    z = _check_labels(source_labels, None, "source_labels")
    y = _check_target(labels, z.shape[0])
    _, z = np.unique(z, return_inverse=True)
    zhot = (z[:, None] == np.arange(int(z.max()) + 1)[None, :]).astype(np.float64)
    joint = _joint(zhot, y)
    log_cond = _log_conditional(joint)
    return float(np.sum(joint[joint > 0] * log_cond[joint > 0]))


# ----------------------------------------------------------------------------- feature scores


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


def knn_accuracy(
    features: Any, labels: Any, *, k: int = 5, val_fraction: float = 0.3, seed: int = 0
) -> float:
    """k-nearest-neighbour accuracy on a held-out split: the honest, slower reference score.

    A stratified split (``val_fraction`` held out, seeded) is drawn after putting the samples in
    a canonical, content-defined order, so the result does not depend on the order of the
    input. sklearn's ``KNeighborsClassifier`` (Euclidean) is fit on the rest.

    Args:
        features: (N, D) float features.
        labels: (N,) integer labels in [0, C); each class needs at least 2 samples.
        k: number of neighbours (clipped to the training-set size).
        val_fraction: fraction of samples held out, in (0, 1).
        seed: seed of the split.

    Returns:
        Held-out accuracy in [0, 1]. Higher = better.

    Raises:
        ConfigError: on a bad ``k`` or ``val_fraction``.
        ShapeError, LabelError, DataError: on malformed input or too few samples per class.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    f, y = _check_features(features, labels)
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier

    key = f @ np.random.default_rng(12345).standard_normal(f.shape[1])
    order = np.lexsort((key, y))
    f, y = f[order], y[order]
    try:
        f_tr, f_va, y_tr, y_va = train_test_split(f, y, test_size=val_fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        raise DataError(
            f"cannot make a stratified split with val_fraction={val_fraction} "
            f"({exc}); pass more samples per class (at least 2)"
        ) from exc
    clf = KNeighborsClassifier(n_neighbors=min(k, len(y_tr))).fit(f_tr, y_tr)
    return float(clf.score(f_va, y_va))


SCORES: dict[str, Callable[..., float]] = {
    "gbc": gbc,
    "h_score": h_score,
    "h_score_shrinkage": lambda features, labels: h_score(features, labels, shrinkage=True),
    "knn": knn_accuracy,
    "logme": logme,
}
"""Feature-based scores by name: each is ``fn(features (N, D), labels (N,)) -> float``."""
