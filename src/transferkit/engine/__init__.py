"""transferkit.engine: the one training loop every transfer method plugs into.

A :class:`Trainer` sums the loss terms of its :class:`Objective` list, backpropagates and steps;
a :class:`TrainConfig` picks optimiser, schedule, freezing strategy, early stopping and mixed
precision.
"""

from transferkit.engine.batches import UNLABELLED, Examples
from transferkit.engine.checkpoint import RunDir
from transferkit.engine.config import TrainConfig
from transferkit.engine.context import FitContext
from transferkit.engine.objectives import (
    OBJECTIVES,
    Batch,
    CrossEntropy,
    Objective,
    ObjectiveOptions,
    build_objectives,
    check_coefficient,
    validate_method_spec,
)
from transferkit.engine.step import StepOutput, StepRunner
from transferkit.engine.strategies import (
    apply_strategy,
    backbone_blocks,
    build_optimizer,
    build_param_groups,
    build_scheduler,
    lr_factor,
)
from transferkit.engine.trainer import History, Trainer, predict_features

__all__ = [
    "OBJECTIVES",
    "UNLABELLED",
    "Batch",
    "CrossEntropy",
    "Examples",
    "FitContext",
    "History",
    "Objective",
    "ObjectiveOptions",
    "RunDir",
    "StepOutput",
    "StepRunner",
    "TrainConfig",
    "Trainer",
    "apply_strategy",
    "backbone_blocks",
    "build_objectives",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "check_coefficient",
    "lr_factor",
    "predict_features",
    "validate_method_spec",
]
