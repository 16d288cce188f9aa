"""Transferability scores: rank candidate source models on target data without fine-tuning."""

from transferkit.selection.scores import SCORES, gbc, h_score, knn_accuracy, leep, logme, nce

__all__ = ["SCORES", "gbc", "h_score", "knn_accuracy", "leep", "logme", "nce"]
