"""transferkit.transfer: move knowledge from a source model into a target model.

* parameters: :func:`transfer_parameters` copies weights by name, prefix or structure, with a
  :class:`TransferReport`;
* verify: :func:`check_copied_function` checks on a probe batch that the copied part reproduces
  the source's features (a :class:`ProbeCheck`, also stored in the report);
* structure: :func:`clone_structure`, function-preserving :func:`widen` / :func:`deepen` (Net2Net);
* ``transferkit.transfer.distill``: knowledge distillation objectives;
* ``transferkit.transfer.regularize``: fine-tuning regularisers that keep the source's knowledge.
"""

from transferkit.transfer.clone import clone_structure
from transferkit.transfer.parameters import TransferEntry, TransferReport, transfer_parameters
from transferkit.transfer.structure import GrowthReport, apply_growth, deepen, widen
from transferkit.transfer.verify import ProbeCheck, check_copied_function

__all__ = [
    "GrowthReport",
    "ProbeCheck",
    "TransferEntry",
    "TransferReport",
    "apply_growth",
    "check_copied_function",
    "clone_structure",
    "deepen",
    "transfer_parameters",
    "widen",
]
