"""Greedy model soup (Wortsman et al., 2022, "Model soups", ICML, Recipe 1).

Models of one task (fine-tuned from the same pretrained model with different hyper-parameters or seeds)
are sorted by their validation accuracy; starting from the best, each next model joins the soup when the
uniform average with it is at least as accurate on validation as the soup without it. The soup is the
uniform average of the chosen models (the chosen ones and every accuracy seen are in the merge's
report). Validation only: the test set never chooses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from transferkit.transfer.merge.average import weighted_average
from transferkit.transfer.merge.base import MERGE_METHODS, MergeMethod

__all__ = ["greedy_soup"]


def greedy_soup(count: int,
                accuracy_of: Callable[[Sequence[int]], float]) -> tuple[list[int], dict[str, Any]]:
    """Choose the greedy soup's ingredients among ``count`` models; ``accuracy_of(indices)`` is the
    validation accuracy of the uniform average of those models. Returns the chosen indices (best first)
    and a record of the accuracies seen (``"single"``, then each ``"tried"`` step)."""
    single = [accuracy_of([i]) for i in range(count)]
    order = sorted(range(count), key=lambda i: -single[i])
    chosen, best = [order[0]], single[order[0]]
    tried = []
    for i in order[1:]:
        acc = accuracy_of([*chosen, i])
        kept = acc >= best
        tried.append({"model": i, "accuracy": acc, "kept": kept})
        if kept:
            chosen, best = [*chosen, i], acc
    return chosen, {"single": single, "tried": tried, "chosen": chosen, "accuracy": best}


def _soup(stack: torch.Tensor, base: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
    return weighted_average(stack, base, weights)


MERGE_METHODS.register("greedy_soup", MergeMethod(
    _soup,
    "greedy model soup: add models, best first, while validation accuracy does not drop",
    needs_data="validation",
    reference="Wortsman et al., 2022, Model soups, ICML (greedy soup)",
))
