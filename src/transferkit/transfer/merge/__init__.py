"""Merging several trained models into one (``K_t = K_s + K_m``).

* :func:`merge` (also ``transferkit.merge``), the front door: weighted averaging / uniform soup
  (``average``), ``greedy_soup``, ``task_arithmetic``, ``ties``, ``dare``, ``dare_ties``, ``fisher``;
  heads of different tasks are kept (a multi-head model), optional permutation alignment first;
* one file per method (``average``, ``soup``, ``task_arithmetic``, ``ties``, ``dare``, ``fisher``), each
  registering a :class:`MergeMethod` in :data:`MERGE_METHODS`;
* ``rebasin``: Git Re-Basin permutation alignment (weight and activation matching) and the loss barrier
  along the line between two models.
"""

from transferkit.transfer.merge.base import MERGE_METHODS, MergeMethod, recompute_batchnorm
from transferkit.transfer.merge.core import MergeResult, merge
from transferkit.transfer.merge.task_arithmetic import consensus_mask, sparsify, task_vector_merge

__all__ = [
    "MERGE_METHODS",
    "MergeMethod",
    "MergeResult",
    "consensus_mask",
    "merge",
    "recompute_batchnorm",
    "sparsify",
    "task_vector_merge",
]
