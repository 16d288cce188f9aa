"""transferkit: move knowledge from one deep-learning model into another, and prove it helped.

The curated public API (loaded lazily, so ``import transferkit.io`` stays light); everything else
lives in the sub-packages (``transferkit.data``, ``transferkit.models``, ``transferkit.transfer``,
``transferkit.engine``, ``transferkit.evaluation``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AdaptConfig": "transferkit.config",
    "adapt": "transferkit.workflows",
    "DataSplits": "transferkit.data",
    "FinetuneConfig": "transferkit.config",
    "LayerTap": "transferkit.models",
    "Metrics": "transferkit.evaluation",
    "Objective": "transferkit.engine",
    "TensorDataset": "transferkit.data",
    "TrainConfig": "transferkit.engine",
    "Trainer": "transferkit.engine",
    "TransferNet": "transferkit.models",
    "TransferReport": "transferkit.transfer",
    "create_model": "transferkit.models",
    "evaluate": "transferkit.evaluation",
    "few_shot": "transferkit.data",
    "distill": "transferkit.workflows",
    "finetune": "transferkit.workflows",
    "load_config": "transferkit.config",
    "load_dataset": "transferkit.data",
    "load_model": "transferkit.models",
    "narrow_model": "transferkit.models",
    "replace_head": "transferkit.models",
    "save_model": "transferkit.models",
    "transfer_parameters": "transferkit.transfer",
    "clone_structure": "transferkit.transfer",
    "rank": "transferkit.selection",
    "wrap_model": "transferkit.models",
    "allow_code": "transferkit.models",
    "load_source": "transferkit.models",
    "SourceSpec": "transferkit.models",
    "export_onnx": "transferkit.io",
    "LoraOptions": "transferkit.engine",
    "count_parameters": "transferkit.engine",
    "load_recipe": "transferkit.recipes",
    "available_recipes": "transferkit.recipes",
    "check_copied_function": "transferkit.transfer",
    "merge": "transferkit.transfer.merge",
    "multitask": "transferkit.workflows",
    "TaskSet": "transferkit.data.tasks",
    "set_task_heads": "transferkit.models",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
