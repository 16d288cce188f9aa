"""Weighted averaging of models; with equal weights, the uniform model soup.

``theta = sum_i w_i theta_i / sum_i w_i`` for every tensor (Wortsman et al., 2022, "Model soups:
averaging weights of multiple fine-tuned models improves accuracy without increasing inference time",
ICML: the uniform soup). Models should share a basin: fine-tuned from one pretrained model, or aligned
first (``align="weight"`` or ``"activation"``, Git Re-Basin).
"""

from __future__ import annotations

import torch

from transferkit.errors import ConfigError
from transferkit.transfer.merge.base import MERGE_METHODS, MergeMethod

__all__ = ["weighted_average"]


def weighted_average(stack: torch.Tensor, base: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i stack[i] / sum_i w_i`` (``base`` unused)."""
    total = float(weights.sum())
    if total == 0:
        raise ConfigError("merge weights sum to 0; give weights with a non-zero sum")
    w = weights.to(stack.dtype).view(-1, *([1] * (stack.ndim - 1)))
    return (stack * w).sum(0) / total


MERGE_METHODS.register("average", MergeMethod(
    weighted_average,
    "weighted average of the weights (equal weights: the uniform model soup)",
    reference="Wortsman et al., 2022, Model soups, ICML",
))
