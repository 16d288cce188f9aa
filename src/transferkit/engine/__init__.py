"""transferkit.engine: the one training loop every transfer method plugs into.

A :class:`Trainer` sums the loss terms of its :class:`Objective` list, backpropagates and steps;
a :class:`TrainConfig` picks optimiser, schedule, freezing strategy, early stopping and mixed
precision.
"""

from transferkit.engine.checkpoint import RunDir
from transferkit.engine.config import TrainConfig
from transferkit.engine.objectives import (
    OBJECTIVES,
    Batch,
    CrossEntropy,
    Objective,
    Phase,
    build_objectives,
    check_coefficient,
)
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
    "Batch",
    "CrossEntropy",
    "History",
    "Objective",
    "Phase",
    "RunDir",
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
]
