"""Fisher-weighted merging (Matena & Raffel, 2022, "Merging models with Fisher-weighted averaging",
NeurIPS).

Each parameter is averaged with per-entry weights ``w_i F_i``, ``F_i`` the diagonal Fisher information of
model ``i`` on its own task's data: ``theta = sum_i w_i F_i theta_i / sum_i w_i F_i`` (entries whose
Fisher is below ``floor`` everywhere fall back to the plain weighted average, as the paper's floor does).
The Fisher is EWC's (:func:`transferkit.transfer.regularize.ewc.fisher_diagonal`): ``kind="true"`` (the
expectation over the model's predicted classes, the paper's choice) or ``"empirical"`` (observed labels),
on ``examples`` examples of each model's data. Buffers (BatchNorm statistics) have no Fisher and are
averaged plainly.
"""

from __future__ import annotations

import torch

from transferkit.transfer.merge.average import weighted_average
from transferkit.transfer.merge.base import MERGE_METHODS, MergeMethod

__all__ = ["fisher_average"]


def fisher_average(stack: torch.Tensor, base: torch.Tensor | None, weights: torch.Tensor, *,
                   fisher: torch.Tensor | None = None, floor: float = 1e-6, examples: int = 256,
                   kind: str = "true") -> torch.Tensor:
    """``sum_i w_i F_i stack[i] / sum_i w_i F_i`` with ``F_i = max(fisher[i], floor)``; the weighted
    average where ``fisher`` is ``None`` (a buffer). ``examples`` and ``kind`` are read by the caller
    that estimates the Fisher."""
    if fisher is None or not stack.is_floating_point():
        return weighted_average(stack, base, weights) if stack.is_floating_point() else stack[0]
    w = weights.to(stack.dtype).view(-1, *([1] * (stack.ndim - 1)))
    f = fisher.to(stack.dtype).clamp_min(float(floor)) * w
    return (f * stack).sum(0) / f.sum(0)


MERGE_METHODS.register("fisher", MergeMethod(
    fisher_average,
    "average weighted per entry by each model's Fisher information on its own task's data",
    options={"floor": 1e-6, "examples": 256, "kind": "true"},
    needs_data="task",
    reference="Matena & Raffel, 2022, Merging models with Fisher-weighted averaging, NeurIPS",
))
