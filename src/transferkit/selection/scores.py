"""Closed-form transferability scores: rank candidate source models without fine-tuning.

Every score takes arrays (numpy or torch; torch tensors are converted) and returns a Python
``float`` where **higher means the source is expected to transfer better**. Inputs:

* ``features`` (N, D): float features a candidate model extracts from the N target samples.
* ``labels`` (N,): integer target labels in ``[0, C)``. Only the classes that occur are used.
* ``source_probs`` (N, Z) for LEEP: the source model's softmax over its own Z classes.
* ``source_labels`` (N,) for NCE: the source model's hard predictions (integers in ``[0, Z)``).

:data:`SCORES` is the registry of every score by name, each entry a :class:`ScoreSpec` saying
whether the score reads the features or the source model's head output.

Degenerate input raises a typed error (:class:`~transferkit.errors.ShapeError`,
:class:`~transferkit.errors.LabelError`, :class:`~transferkit.errors.DataError`) instead of
returning NaN. Features that are constant across all samples (every column constant) carry no
information and raise :class:`~transferkit.errors.DataError`; some constant columns are fine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transferkit.errors import ShapeError
from transferkit.registry import Registry
from transferkit.selection._checks import _to_numpy
from transferkit.selection.gbc import gbc
from transferkit.selection.hscore import h_score
from transferkit.selection.knn import knn_accuracy
from transferkit.selection.leep import leep
from transferkit.selection.logme import logme
from transferkit.selection.nce import nce


@dataclass(frozen=True)
class ScoreSpec:
    """One registered score; calling it calls :attr:`fn`.

    Attributes:
        fn: ``fn(inputs, labels (N,)) -> float``, higher = the source transfers better. ``inputs``
            are the candidate's features ``(N, D)``, or with :attr:`needs_head` the softmax of
            its own (source) head on them, ``(N, Z)``.
        needs_head: The score reads the source model's head output (LEEP, NCE), not the features;
            :func:`~transferkit.selection.rank` then needs candidates with a ``head``.
    """

    fn: Callable[[Any, Any], float]
    needs_head: bool = False

    def __call__(self, inputs: Any, labels: Any) -> float:
        return self.fn(inputs, labels)


def _nce_of_probs(source_probs: Any, labels: Any) -> float:
    """NCE on the source model's hard predictions, the argmax of ``source_probs`` ``(N, Z)``."""
    p = _to_numpy(source_probs, "source_probs")
    if p.ndim != 2:
        raise ShapeError(f"source_probs must be 2-D (N, Z), got shape {p.shape}")
    return nce(p.argmax(axis=1), labels)


def _h_score_shrinkage(features: Any, labels: Any) -> float:
    return h_score(features, labels, shrinkage=True)


SCORES: Registry[ScoreSpec] = Registry("score")
"""Every score by name (``SCORES.get(name)`` or ``SCORES[name]``): a :class:`ScoreSpec`, callable as
``spec(features (N, D), labels (N,)) -> float`` or, where ``spec.needs_head``,
``spec(source_probs (N, Z), labels (N,)) -> float``."""

SCORES.register("gbc", ScoreSpec(gbc))
SCORES.register("h_score", ScoreSpec(h_score))
SCORES.register("h_score_shrinkage", ScoreSpec(_h_score_shrinkage))
SCORES.register("knn", ScoreSpec(knn_accuracy))
SCORES.register("leep", ScoreSpec(leep, needs_head=True))
SCORES.register("logme", ScoreSpec(logme))
SCORES.register("nce", ScoreSpec(_nce_of_probs, needs_head=True))

__all__ = ["SCORES", "ScoreSpec", "gbc", "h_score", "knn_accuracy", "leep", "logme", "nce"]
