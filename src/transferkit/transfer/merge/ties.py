"""TIES-merging: trim, elect sign, disjoint merge (Yadav et al., 2023, "TIES-Merging: resolving
interference when merging models", NeurIPS).

Each task vector keeps its ``density`` share of largest-magnitude entries (trim, per tensor), the sign
of the weighted sum is elected per entry, and the entries agreeing with it are averaged (weighted,
``normalize``), then scaled: mergekit's ``ties`` (magnitude sparsification, "sum" consensus,
normalize on, no rescaling). The paper keeps the top 20 % (``density=0.2``, the default here; mergekit's
default is 1) and scales by ``lambda = 1``.
"""

from __future__ import annotations

import torch

from transferkit.transfer.merge.base import MERGE_METHODS, MergeMethod
from transferkit.transfer.merge.task_arithmetic import task_vector_merge

__all__: list[str] = []


def _ties(stack: torch.Tensor, base: torch.Tensor | None, weights: torch.Tensor, *, density: float,
          scale: float, consensus: str, normalize: bool) -> torch.Tensor:
    return task_vector_merge(stack, base, weights, scale=scale, density=density, sparsify_by="magnitude",
                             consensus=consensus, normalize=normalize)


MERGE_METHODS.register("ties", MergeMethod(
    _ties,
    "TIES: keep each task vector's largest entries, elect a sign per entry, average those that agree",
    options={"density": 0.2, "scale": 1.0, "consensus": "sum", "normalize": True},
    needs_base=True,
    merges_heads=False,
    reference="Yadav et al., 2023, TIES-Merging, NeurIPS",
))
