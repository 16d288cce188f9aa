"""transferkit.transfer: move knowledge from a source model into a target model.

* parameters: :func:`transfer_parameters` copies weights by name, prefix or structure, with a
  :class:`TransferReport`;
* structure: :func:`clone_structure`, function-preserving :func:`widen` / :func:`deepen` (Net2Net);
* ``transferkit.transfer.distill``: knowledge distillation objectives;
* ``transferkit.transfer.regularize``: fine-tuning regularisers that keep the source's knowledge.
"""

from transferkit.transfer.clone import clone_structure
from transferkit.transfer.parameters import TransferEntry, TransferReport, transfer_parameters
from transferkit.transfer.structure import GrowthReport, apply_growth, deepen, widen

__all__ = [
    "GrowthReport",
    "TransferEntry",
    "TransferReport",
    "apply_growth",
    "clone_structure",
    "deepen",
    "transfer_parameters",
    "widen",
]
