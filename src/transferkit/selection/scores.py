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

from collections.abc import Callable

from transferkit.selection.gbc import gbc
from transferkit.selection.hscore import h_score
from transferkit.selection.knn import knn_accuracy
from transferkit.selection.leep import leep
from transferkit.selection.logme import logme
from transferkit.selection.nce import nce

SCORES: dict[str, Callable[..., float]] = {
    "gbc": gbc,
    "h_score": h_score,
    "h_score_shrinkage": lambda features, labels: h_score(features, labels, shrinkage=True),
    "knn": knn_accuracy,
    "logme": logme,
}
"""Feature-based scores by name: each is ``fn(features (N, D), labels (N,)) -> float``."""

__all__ = ["SCORES", "gbc", "h_score", "knn_accuracy", "leep", "logme", "nce"]
