"""Models: the zoo (:func:`create_model`), loading and saving, surgery and layer taps.

Every model is a :class:`TransferNet`, ``head(backbone(input_adapter(x)))``; see
:mod:`transferkit.models.base`. Loading never runs code from a model's files; code shipped with a
transformers model runs only inside :func:`allow_remote_code` (see :mod:`transferkit.models.hub`).
"""

from transferkit.models.base import InputAdapter, ModelInfo, TransferNet
from transferkit.models.custom import allow_code
from transferkit.models.heads import TaskHeads, select_task, set_task_heads, task_model, task_names
from transferkit.models.hub import allow_remote_code, remote_code_allowed
from transferkit.models.storage import SourceSpec, load_model, load_source, save_model
from transferkit.models.surgery import (
    LayerInfo,
    LayerTap,
    backbone_blocks,
    format_layers,
    freeze,
    list_layers,
    replace_head,
    unfreeze,
)
from transferkit.models.zoo import (
    MODELS,
    check_model_args,
    create_model,
    fitted_kwargs,
    narrow_model,
    wrap_model,
)

__all__ = [
    "MODELS",
    "fitted_kwargs",
    "SourceSpec",
    "InputAdapter",
    "LayerInfo",
    "LayerTap",
    "ModelInfo",
    "TaskHeads",
    "TransferNet",
    "allow_code",
    "allow_remote_code",
    "backbone_blocks",
    "check_model_args",
    "create_model",
    "format_layers",
    "freeze",
    "list_layers",
    "load_model",
    "load_source",
    "narrow_model",
    "remote_code_allowed",
    "replace_head",
    "save_model",
    "select_task",
    "set_task_heads",
    "task_model",
    "task_names",
    "unfreeze",
    "wrap_model",
]
