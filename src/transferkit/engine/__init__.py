"""transferkit.engine: the one training loop every transfer method plugs into.

A :class:`Trainer` sums the loss terms of its :class:`Objective` list, backpropagates and steps;
a :class:`TrainConfig` picks optimiser, schedule, freezing strategy, early stopping and mixed
precision.
"""

from transferkit.engine.batches import UNLABELLED, Examples
from transferkit.engine.checkpoint import RunDir
from transferkit.engine.config import LoraOptions, TrainConfig
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
from transferkit.engine.parameter_efficient import (
    add_adapters,
    load_adapted_model,
    merge_adapters,
    save_adapters,
)
from transferkit.engine.step import StepOutput, StepRunner
from transferkit.engine.strategies import (
    ParameterCount,
    apply_strategy,
    backbone_blocks,
    build_optimizer,
    build_param_groups,
    build_scheduler,
    count_parameters,
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
    "LoraOptions",
    "Objective",
    "ObjectiveOptions",
    "ParameterCount",
    "RunDir",
    "StepOutput",
    "StepRunner",
    "TrainConfig",
    "Trainer",
    "add_adapters",
    "apply_strategy",
    "backbone_blocks",
    "build_objectives",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "check_coefficient",
    "count_parameters",
    "load_adapted_model",
    "lr_factor",
    "merge_adapters",
    "predict_features",
    "save_adapters",
    "validate_method_spec",
]
