"""End-to-end workflows: source model -> transfer -> train -> comparison with a baseline -> report.

These are the public entry points the CLI is a thin layer over. A workflow is a list of
:class:`Arm` s (one way of building and training a target model each) run on the same data splits for
every seed, so a transfer arm and its baseline always see the same examples and budget:

* :func:`finetune` (``arms.py`` runs the arms) -- parameter transfer and fine-tuning vs scratch;
* :func:`distill` -- a student with distillation objectives vs the same student from scratch;
* :func:`adapt` -- domain adaptation (labelled source, unlabelled target) vs source-only and a
  target-oracle, with label-free model choice;
* :func:`multitask` -- one model with a head per task vs one single-task model per task;
* :func:`merge_workflow` -- several trained models merged into one, scored on every task.
"""

from transferkit.workflows.adapt import adapt
from transferkit.workflows.arms import (
    STRATEGY_NAMES,
    Arm,
    WorkflowResult,
    build_target,
    run_arms,
    target_splits,
)
from transferkit.workflows.distill import distill
from transferkit.workflows.finetune import finetune, load_source, load_target_data
from transferkit.workflows.merge import merge_workflow
from transferkit.workflows.multitask import multitask

__all__ = [
    "STRATEGY_NAMES",
    "Arm",
    "WorkflowResult",
    "adapt",
    "build_target",
    "distill",
    "finetune",
    "load_source",
    "load_target_data",
    "merge_workflow",
    "multitask",
    "run_arms",
    "target_splits",
]
