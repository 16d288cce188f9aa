"""Models from other libraries, imported lazily: ``timm:<name>``, ``torchvision:<name>``,
``hf:<model id or path>``.

Each becomes a :class:`TransferNet` whose backbone returns pooled features ``(N, feature_dim)`` and
whose head is ``nn.Linear(feature_dim, num_classes)``; with pretrained weights and a matching
``num_classes`` the library's own classifier is kept as the head. ``info.arch`` is the full spec, so
a saved folder is rebuilt (without downloading) by :func:`transferkit.models.load_model`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError, MissingDependencyError
from transferkit.models.base import ModelInfo, TransferNet

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EXTRA = {"timm": "vision", "torchvision": "vision", "transformers": "text"}


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRA.get(module, "vision")
        raise MissingDependencyError(
            f"models from {module!r} need the package {module!r}, which is not installed; "
            f"run `pip install 'transferkit[{extra}]'`"
        ) from exc


def build_hub_model(
    library: str, name: str, num_classes: int, pretrained: bool, **kwargs: Any
) -> TransferNet:
    """Dispatch ``library`` (``"timm"``, ``"torchvision"``, ``"hf"``) to its builder."""
    builders = {"timm": build_timm, "torchvision": build_torchvision, "hf": build_hf}
    if library not in builders:
        raise ConfigError(f"unknown model library {library!r}; use one of {', '.join(builders)}")
    return builders[library](name, num_classes, pretrained, **kwargs)


def _linear_head(feature_dim: int, num_classes: int, old: nn.Module | None) -> nn.Module:
    if (
        isinstance(old, nn.Linear)
        and old.out_features == num_classes
        and old.in_features == feature_dim
    ):
        return old
    return nn.Linear(feature_dim, num_classes)


def build_timm(name: str, num_classes: int, pretrained: bool, **kwargs: Any) -> TransferNet:
    """``timm.create_model(name, pretrained=...)`` with its classifier reset; features
    ``(N, num_features)``; mean, std and input size from its ``pretrained_cfg``."""
    timm = _require("timm")
    net = timm.create_model(name, pretrained=pretrained, **kwargs)
    old = net.get_classifier() if pretrained else None
    net.reset_classifier(0)
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    feature_dim = int(net.num_features)
    info = ModelInfo(
        arch=f"timm:{name}",
        kwargs=dict(kwargs),
        num_classes=num_classes,
        feature_dim=feature_dim,
        input_size=tuple(cfg.get("input_size", (3, 224, 224))),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        source=f"pretrained:timm:{name}" if pretrained else "random init",
    )
    return TransferNet(net, _linear_head(feature_dim, num_classes, old), info)


_TV_CLASSIFIERS = ("fc", "classifier", "heads.head", "heads", "head")


def _get_path(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def build_torchvision(
    name: str, num_classes: int, pretrained: bool, *, image_size: int = 224, **kwargs: Any
) -> TransferNet:
    """``torchvision.models.get_model(name, weights="DEFAULT" or None)``; its classifier (``fc``,
    ``classifier[-1]`` or ``heads.head``) becomes ``nn.Identity`` and, when ``num_classes`` matches,
    our head. ImageNet mean and std."""
    tv = _require("torchvision")
    net = tv.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    linear: nn.Linear | None = None
    for path in _TV_CLASSIFIERS:
        holder = _get_path(net, path)
        if isinstance(holder, nn.Sequential) and len(holder) and isinstance(holder[-1], nn.Linear):
            linear = holder[-1]
            holder[-1] = nn.Identity()
            break
        if isinstance(holder, nn.Linear):
            linear = holder
            parent_path, _, attr = path.rpartition(".")
            parent = _get_path(net, parent_path) if parent_path else net
            setattr(parent, attr, nn.Identity())
            break
    if linear is None:
        raise ConfigError(
            f"cannot find the classifier of torchvision model {name!r} (looked for "
            f"{', '.join(_TV_CLASSIFIERS)}); build it yourself and use "
            "transferkit.models.wrap_model"
        )
    feature_dim = linear.in_features
    info = ModelInfo(
        arch=f"torchvision:{name}",
        kwargs={"image_size": image_size, **kwargs},
        num_classes=num_classes,
        feature_dim=feature_dim,
        input_size=(3, image_size, image_size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        source=f"pretrained:torchvision:{name}" if pretrained else "random init",
    )
    head = _linear_head(feature_dim, num_classes, linear if pretrained else None)
    return TransferNet(net, head, info)


class HFVisionBackbone(nn.Module):
    """A transformers vision model returning pooled features ``(N, hidden)``: ``pooler_output`` when
    the model has one, else the mean of ``last_hidden_state`` over tokens / spatial positions."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = out.last_hidden_state
            pooled = hidden.mean(dim=1) if hidden.ndim == 3 else hidden.flatten(2).mean(-1)
        return pooled.flatten(1)


def build_hf(
    model_id: str,
    num_classes: int,
    pretrained: bool,
    *,
    image_size: int | None = None,
    **kwargs: Any,
) -> TransferNet:
    """A transformers ``AutoModel`` vision backbone (``hf:google/vit-base-patch16-224`` or a local
    path); mean, std and size from its image processor when it has one."""
    tr = _require("transformers")
    if pretrained:
        net = tr.AutoModel.from_pretrained(model_id, **kwargs)
    else:
        net = tr.AutoModel.from_config(tr.AutoConfig.from_pretrained(model_id, **kwargs))
    cfg = net.config
    feature_dim = getattr(cfg, "hidden_size", None)
    if feature_dim is None and getattr(cfg, "hidden_sizes", None):
        feature_dim = cfg.hidden_sizes[-1]
    if feature_dim is None:
        raise ConfigError(f"cannot tell the feature size of {model_id!r} from its config")
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, getattr(cfg, "image_size", 224)
    try:
        proc = tr.AutoImageProcessor.from_pretrained(model_id)
        mean = tuple(getattr(proc, "image_mean", mean))
        std = tuple(getattr(proc, "image_std", std))
        psize = getattr(proc, "size", None) or {}
        size = psize.get("height") or psize.get("shortest_edge") or size
    except (OSError, ValueError, KeyError) as exc:
        logger.info("no image processor for %s (%s); using ImageNet mean/std", model_id, exc)
    side = int(image_size or (size if isinstance(size, int) else size[0]))
    channels = int(getattr(cfg, "num_channels", 3))
    info = ModelInfo(
        arch=f"hf:{model_id}",
        kwargs={"image_size": side, **kwargs},
        num_classes=num_classes,
        feature_dim=int(feature_dim),
        input_size=(channels, side, side),
        mean=mean,
        std=std,
        source=f"pretrained:hf:{model_id}" if pretrained else "random init",
    )
    return TransferNet(HFVisionBackbone(net), nn.Linear(int(feature_dim), num_classes), info)
