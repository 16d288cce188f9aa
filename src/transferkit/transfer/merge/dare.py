"""DARE: drop and rescale task vectors (Yu et al., 2024, "Language models are Super Mario: absorbing
abilities from homologous models as a free lunch", ICML).

Each entry of each task vector is kept with probability ``density`` (= 1 - drop rate) and the kept ones
are rescaled; the sparse task vectors are then added (``dare``, mergekit's ``dare_linear``) or go through
TIES's sign election (``dare_ties``, mergekit's ``dare_ties``). ``rescale="l1"`` restores each tensor's
L1 norm (mergekit's default), ``rescale="density"`` divides by the density (the paper's ``1 / (1 - p)``);
equal in expectation. ``seed`` fixes the random masks.
"""

from __future__ import annotations

import torch

from transferkit.transfer.merge.base import MERGE_METHODS, MergeMethod
from transferkit.transfer.merge.task_arithmetic import task_vector_merge

__all__: list[str] = []


def _dare(stack: torch.Tensor, base: torch.Tensor | None, weights: torch.Tensor, *, density: float,
          scale: float, rescale: str, seed: int, generator: torch.Generator | None = None,
          consensus: str | None = None) -> torch.Tensor:
    return task_vector_merge(stack, base, weights, scale=scale, density=density, sparsify_by="random",
                             consensus=consensus, rescale=rescale, seed=seed, generator=generator)


def _dare_ties(stack: torch.Tensor, base: torch.Tensor | None, weights: torch.Tensor, *, density: float,
               scale: float, rescale: str, seed: int, generator: torch.Generator | None = None,
               consensus: str = "sum") -> torch.Tensor:
    return _dare(stack, base, weights, density=density, scale=scale, rescale=rescale, seed=seed,
                 generator=generator, consensus=consensus)


_OPTIONS = {"density": 0.5, "scale": 1.0, "rescale": "l1", "seed": 0}
MERGE_METHODS.register("dare", MergeMethod(
    _dare,
    "DARE: drop task-vector entries at random, rescale the rest, add them to the base",
    options=dict(_OPTIONS),
    needs_base=True,
    merges_heads=False,
    reference="Yu et al., 2024, Language models are Super Mario (DARE), ICML",
))
MERGE_METHODS.register("dare_ties", MergeMethod(
    _dare_ties,
    "DARE's random drop, then TIES's sign election",
    options={**_OPTIONS, "consensus": "sum"},
    needs_base=True,
    merges_heads=False,
    reference="Yu et al., 2024 (DARE) with Yadav et al., 2023 (TIES)",
))
