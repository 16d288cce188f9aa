"""Models: the zoo (:func:`create_model`), loading and saving, surgery and layer taps.

Every model is a :class:`TransferNet`, ``head(backbone(input_adapter(x)))``; see
:mod:`transferkit.models.base`.
"""

from transferkit.models.base import InputAdapter, ModelInfo, TransferNet
from transferkit.models.storage import load_model, save_model
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
from transferkit.models.zoo import MODELS, create_model, narrow_model, wrap_model

__all__ = [
    "MODELS",
    "InputAdapter",
    "LayerInfo",
    "LayerTap",
    "ModelInfo",
    "TransferNet",
    "backbone_blocks",
    "create_model",
    "format_layers",
    "freeze",
    "list_layers",
    "load_model",
    "narrow_model",
    "replace_head",
    "save_model",
    "unfreeze",
    "wrap_model",
]
