"""The honest, slower reference: k-NN accuracy on a held-out split of the target data."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from transferkit.errors import ConfigError, DataError
from transferkit.selection._checks import (
    _check_features,
)

logger = logging.getLogger(__name__)


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
