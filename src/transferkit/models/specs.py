"""What transferkit knows about each registered architecture, in one place beside its builder.

timm keeps a ``default_cfgs`` entry next to every model (input size, mean, std, interpolation,
crop, where the weights come from, the classifier's name). :class:`ArchSpec` is the same idea for
transferkit's registry (:data:`transferkit.models.MODELS`): the builder, its native preprocessing,
the head size and origin of its pretrained weights, the arguments that set its widths (for
:func:`~transferkit.models.narrow_model`) and its input (for fitting it to a dataset), and how a bare
state dict of the original implementation maps onto it. Hub models (timm, torchvision, Hugging Face)
get the same facts from their own library at build time (:mod:`transferkit.models.hub`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transferkit.models.base import TransferNet


@dataclass(frozen=True)
class Preprocessing:
    """How raw ``[0, 1]`` inputs reach the backbone (see :class:`~transferkit.models.InputAdapter`).

    Attributes:
        input_size: ``(C, H, W)`` (or ``(D,)``) at the builder's defaults.
        mean: Per-channel mean, or ``None`` for no normalisation.
        std: Per-channel std, or ``None``.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        crop_pct: Centre crop of evaluation (1.0: none).
    """

    input_size: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }


def _no_data_kwargs(shape: tuple[int, ...]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture: its builder and the facts about it.

    Attributes:
        build: ``build(num_classes, pretrained, **kwargs) -> TransferNet``.
        preprocessing: Its native input at the builder's defaults.
        pretrained_classes: Head size of its pretrained weights; ``None`` when it has none.
        weights: Where the pretrained weights come from (shown by ``inspect`` and in errors).
        width_kwargs: Builder arguments holding its widths (``narrow_model`` divides them).
        data_kwargs: ``data_kwargs(shape) -> kwargs`` making the architecture take examples of
            ``shape`` natively (``in_channels``, ``image_size``, ``in_features``); ``{}`` when its
            input adapter resizes instead.
        bare_keys: ``bare_keys(model) -> {original key: our key}`` for a state dict saved by the
            original implementation (``None``: keys map by prefixing ``backbone.`` / ``head.``).
    """

    build: Callable[..., TransferNet]
    preprocessing: Preprocessing
    pretrained_classes: int | None = None
    weights: str = ""
    width_kwargs: tuple[str, ...] = ()
    data_kwargs: Callable[[tuple[int, ...]], dict[str, Any]] = field(default=_no_data_kwargs)
    bare_keys: Callable[[TransferNet], dict[str, str]] | None = None

    @property
    def has_pretrained(self) -> bool:
        return self.pretrained_classes is not None
