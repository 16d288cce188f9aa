"""Transferability scores: rank candidate source models on target data without fine-tuning."""

from transferkit.selection.rank import DEFAULT_SCORES, KNOWN_SCORES, RankResult, rank
from transferkit.selection.scores import SCORES, ScoreSpec, gbc, h_score, knn_accuracy, leep, logme, nce

__all__ = [
    "DEFAULT_SCORES",
    "KNOWN_SCORES",
    "RankResult",
    "SCORES",
    "ScoreSpec",
    "gbc",
    "h_score",
    "knn_accuracy",
    "leep",
    "logme",
    "nce",
    "rank",
]
