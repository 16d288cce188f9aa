"""The model wrapper transferkit builds around every backbone.

A :class:`TransferNet` is ``head(backbone(input_adapter(x)))``:

* ``input_adapter`` (:class:`InputAdapter`, no parameters) resizes, converts gray<->RGB and normalises
  the raw ``[0, 1]`` input to what the backbone was trained on, so datasets stay at native size;
* ``backbone`` maps the adapted input to a feature vector ``(N, feature_dim)``;
* ``head`` is the classifier (``nn.Linear(feature_dim, num_classes)``).

Because every model has the same three parts, freezing the backbone, linear probes, per-layer learning
rates and head replacement are generic. ``info`` records how the model was built (architecture name and
arguments) so a saved folder can be rebuilt.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.errors import CheckpointError, ShapeError

logger = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    """How a :class:`TransferNet` was built, saved as ``config.json`` beside its weights.

    Attributes:
        arch: Registered architecture name (``"small_cnn"``, ``"efficientnet_lite0"``, ``"timm:resnet18"``).
        kwargs: Arguments the architecture's builder was called with (JSON-serialisable).
        num_classes: Size of the head's output.
        feature_dim: Size of the backbone's output.
        input_size: The backbone's native input ``(C, H, W)`` (or ``(D,)`` for vectors).
        mean: Per-channel mean the backbone's input is normalised with (after scaling to [0, 1]).
        std: Per-channel std the backbone's input is normalised with.
        data_shape: Shape of the raw data the adapter accepts (``None`` = same as ``input_size``).
        source: Where the weights came from ("pretrained:imagenet", a path, ...).
        interpolation: How the input adapter resizes images (``"bilinear"``, ``"bicubic"`` or
            ``"nearest"``), as the source's library preprocessed them.
        crop_pct: Centre crop of the library's evaluation preprocessing: images are resized to
            ``size / crop_pct`` and the central ``size`` kept (1.0: no crop).
        classifier: Dotted name of the classifier inside the original module (``"fc"``,
            ``"head.fc"``), so a bare state dict of that module maps its classifier onto ``head``.
        growth: Structure changes applied after building, in order, as JSON dicts
            (``{"op": "widen", "layer": ..., "new_width": ...}``,
            ``{"op": "deepen", "after": ..., "activation": ..., "batchnorm": ...}``);
            :func:`transferkit.models.load_model` replays them on the rebuilt architecture.
        text: For a text model (input: token ids, ``input_size == (max_length,)``): where its
            tokenizer comes from (``"tokenizer"``: ``"minilm"``, ``"hf:<id>"`` or a folder), the id it
            pads with (``"pad_token_id"``) and the pooling (``"pooling"``); ``None`` otherwise.
        tasks: For a multi-head model (``head`` is a :class:`~transferkit.models.heads.TaskHeads`): task
            name -> number of classes, in order; ``None`` for a single head.
        class_names: The name of each class the head predicts, in order (the data it was trained
            on); ``None`` when unknown. ``transferkit predict`` writes them.
    """

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 0
    feature_dim: int = 0
    input_size: tuple[int, ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    data_shape: tuple[int, ...] | None = None
    source: str = ""
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    classifier: str | None = None
    growth: list[dict[str, Any]] = field(default_factory=list)
    text: dict[str, Any] | None = None
    tasks: dict[str, int] | None = None
    class_names: list[str] | None = None

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What the input adapter does to raw ``[0, 1]`` inputs: size, mean/std, resizing, crop."""
        from transferkit.models.specs import Preprocessing  # specs imports this module

        pre = Preprocessing(self.input_size, self.mean, self.std, self.interpolation, self.crop_pct)
        return pre.to_dict()

    def adapter(self) -> nn.Module:
        """A fresh input adapter configured from these fields: an :class:`InputAdapter`, or for a
        text model a :class:`~transferkit.models.text.TokenAdapter`."""
        if self.text is not None:
            from transferkit.models.text import TokenAdapter  # text imports this module

            return TokenAdapter(self.input_size[0], int(self.text.get("pad_token_id") or 0))
        return InputAdapter(
            self.input_size, self.mean, self.std, self.data_shape, self.interpolation, self.crop_pct
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("input_size", "mean", "std", "data_shape"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, origin: str = "the model config") -> ModelInfo:
        """Rebuild from :meth:`to_dict`'s output (a saved ``config.json``), checking every field.

        ``arch``, ``num_classes`` and ``input_size`` are required; unknown keys are ignored.

        Args:
            d: The dict read from the file.
            origin: What ``d`` was read from (the file's path), for error messages.

        Raises:
            CheckpointError: a field is missing or of the wrong type or length; the message names
                ``origin``, the field, what it should be and the value found.
        """
        if not isinstance(d, Mapping):
            raise CheckpointError(
                f"{origin} is malformed: it holds a {type(d).__name__}, not an object of fields; "
                "save the model again"
            )
        d = dict(d)
        for key in _REQUIRED_FIELDS:
            if key not in d:
                raise CheckpointError(
                    f"{origin} is malformed: field {key!r} is missing (it should be "
                    f"{_FIELD_RULES[key][1]}); fix the file or save the model again"
                )
        for key, (check, what) in _FIELD_RULES.items():
            if key in d and not check(d[key]):
                raise _field_error(origin, key, what, d[key])
        input_size = tuple(d["input_size"])
        # normalisation is per channel (images) or per value (vectors): 1 value broadcasts
        width = input_size[0]
        for key in ("mean", "std"):
            if d.get(key) is not None and len(d[key]) not in (1, width):
                count = "1 number" if width == 1 else f"1 or {width} numbers"
                what = f"{count} (one per channel of input_size {list(input_size)})"
                raise _field_error(origin, key, what, d[key])
        if d.get("std") is not None and any(v <= 0 for v in d["std"]):
            raise _field_error(origin, "std", "positive numbers", d["std"])
        for key in ("input_size", "mean", "std", "data_shape"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        d["kwargs"] = dict(d.get("kwargs") or {})
        d["growth"] = [dict(step) for step in d.get("growth") or []]
        d["text"] = dict(d["text"]) if d.get("text") is not None else None
        d["tasks"] = {str(k): int(v) for k, v in d["tasks"].items()} if d.get("tasks") else None
        names = d.get("class_names")
        if names is not None and len(names) != d["num_classes"]:  # names of an earlier head: not these
            logger.warning("%s names %d classes but its head predicts %d; the names are ignored",
                           origin, len(names), d["num_classes"])
            names = None
        d["class_names"] = list(names) if names is not None else None
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_list(lengths: tuple[int, ...] | None) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return (
            isinstance(value, (list, tuple))
            and (len(value) in lengths if lengths else len(value) > 0)
            and all(_is_int(v, 1) for v in value)
        )

    return check


def _number_list_or_none(value: Any) -> bool:
    return value is None or (
        isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_number(v) for v in value)
    )


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_REQUIRED_FIELDS = ("arch", "num_classes", "input_size")
_FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "arch": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string such as 'small_cnn'"),
    "kwargs": (
        lambda v: v is None or (isinstance(v, Mapping) and all(isinstance(k, str) for k in v)),
        "an object of architecture arguments (name -> value)",
    ),
    "num_classes": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "feature_dim": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "input_size": (_int_list((1, 3)), "a list of 1 or 3 positive integers ([D] or [C, H, W])"),
    "mean": (_number_list_or_none, "null or a list of finite numbers"),
    "std": (_number_list_or_none, "null or a list of finite numbers"),
    "data_shape": (lambda v: v is None or _int_list(None)(v), "null or a list of positive integers"),
    "source": (lambda v: isinstance(v, str), "a string"),
    "interpolation": (lambda v: v in INTERPOLATIONS, "one of 'bilinear', 'bicubic', 'nearest'"),
    "crop_pct": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "classifier": (lambda v: v is None or (isinstance(v, str) and bool(v)), "null or a dotted module name"),
    "growth": (
        lambda v: v is None or (isinstance(v, list) and all(isinstance(s, Mapping) for s in v)),
        "a list of objects (structure changes such as {\"op\": \"widen\", ...})",
    ),
    "text": (
        lambda v: v is None or (isinstance(v, Mapping) and isinstance(v.get("tokenizer"), str)
                                and _is_int(v.get("pad_token_id", 0), 0)),
        "null or an object with a 'tokenizer' string and a 'pad_token_id' integer",
    ),
    "class_names": (
        lambda v: v is None or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
        "null or a list of class names (strings)",
    ),
    "tasks": (
        lambda v: v is None or (isinstance(v, Mapping) and all(
            isinstance(k, str) and k and "." not in k and _is_int(n, 1) for k, n in v.items())),
        "null or an object of task name -> number of classes (integers >= 1)",
    ),
}


def _field_error(origin: str, key: str, what: str, value: Any) -> CheckpointError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return CheckpointError(
        f"{origin} is malformed: field {key!r} must be {what}, got {type(value).__name__} {shown}; "
        "fix the file or save the model again"
    )


class InputAdapter(nn.Module):
    """Turns raw ``[0, 1]`` inputs into what a backbone expects. Holds no parameters or buffers.

    Steps, each only when needed: reshape flat vectors to images, gray->RGB (repeat) or RGB->gray
    (luma weights), resize to the backbone's ``(H, W)`` (with ``crop_pct < 1``: to ``(H, W) / crop_pct``,
    then the centre ``(H, W)``, as the library's evaluation transform does), normalise
    ``(x - mean) / std``, and flatten for vector backbones.

    Args:
        input_size: The backbone's input: ``(C, H, W)`` for images or ``(D,)`` for vectors.
        mean: Per-channel mean (length C, or 1 to broadcast); ``None`` skips normalisation.
        std: Per-channel std; ``None`` skips normalisation.
        data_shape: Raw data's per-example shape, used to reshape flat input to an image; optional.
        interpolation: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``; antialiased when
            shrinking (except nearest).
        crop_pct: Share of the resized image kept by the centre crop (1.0: no crop).
    """

    def __init__(
        self,
        input_size: tuple[int, ...],
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        data_shape: tuple[int, ...] | None = None,
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
    ) -> None:
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ShapeError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}"
            )
        if not 0 < float(crop_pct) <= 1:
            raise ShapeError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
        self.input_size = tuple(int(s) for s in input_size)
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None
        self.data_shape = tuple(int(s) for s in data_shape) if data_shape is not None else None
        self.interpolation = interpolation
        self.crop_pct = float(crop_pct)

    def extra_repr(self) -> str:
        extra = f", interpolation={self.interpolation}" if self.interpolation != "bilinear" else ""
        extra += f", crop_pct={self.crop_pct}" if self.crop_pct != 1.0 else ""
        return f"input_size={self.input_size}, mean={self.mean}, std={self.std}{extra}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.input_size) == 1:  # vector backbone
            shape = tuple(x.shape[1:])
            x = x.reshape(x.shape[0], -1)
            if x.shape[1] != self.input_size[0]:
                raise ShapeError(
                    f"input has {x.shape[1]} values per example but the model takes "
                    f"{self.input_size[0]} (input shape {shape}); resize the data or build the model with "
                    f"in_features={x.shape[1]}"
                )
            return self._normalise(x, vector=True)
        c, h, w = self.input_size
        if x.ndim == 2:
            shape = self.data_shape or _square_image_shape(x.shape[1])
            if shape is None or int(torch.tensor(shape).prod()) != x.shape[1]:
                raise ShapeError(
                    f"got flat inputs of {x.shape[1]} values, which is not an image; "
                    f"the model takes images of shape {self.input_size}"
                )
            x = x.reshape(x.shape[0], *shape)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4:
            raise ShapeError(
                f"expected images of shape (N, C, H, W), got {tuple(x.shape)}; "
                f"the model takes {self.input_size}"
            )
        if x.shape[1] != c:
            if x.shape[1] == 1:
                x = x.expand(-1, c, -1, -1)
            elif c == 1 and x.shape[1] == 3:
                lum = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
                x = (x * lum.view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                raise ShapeError(
                    f"input has {x.shape[1]} channels, the model takes {c}; only gray<->RGB "
                    "conversion is automatic: convert the data or change the model's in_channels"
                )
        if self.crop_pct < 1.0:
            rh, rw = (math.floor(side / self.crop_pct) for side in (h, w))
            x = self._resize(x, rh, rw)
            top, left = (rh - h) // 2, (rw - w) // 2
            x = x[:, :, top : top + h, left : left + w]
        else:
            x = self._resize(x, h, w)
        return self._normalise(x, vector=False)

    def _resize(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if tuple(x.shape[2:]) == (h, w):
            return x
        if self.interpolation == "nearest":
            return F.interpolate(x, size=(h, w), mode="nearest")
        # antialias when shrinking: plain bilinear sampling skips pixels (28 -> 8 would alias)
        shrink = h < x.shape[2] or w < x.shape[3]
        return F.interpolate(
            x, size=(h, w), mode=self.interpolation, align_corners=False, antialias=shrink
        )

    def _normalise(self, x: torch.Tensor, vector: bool) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)
        if not vector:
            mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        return (x - mean) / std


def _square_image_shape(n: int) -> tuple[int, int, int] | None:
    for ch in (1, 3):
        side = int(round((n / ch) ** 0.5))
        if side * side * ch == n:
            return (ch, side, side)
    return None


class TransferNet(nn.Module):
    """``head(backbone(input_adapter(x)))`` with metadata; see the module docstring.

    Args:
        backbone: Maps adapted inputs to features ``(N, feature_dim)``.
        head: The classifier, usually ``nn.Linear(feature_dim, num_classes)``.
        info: How the model was built.
        input_adapter: Defaults to one built from ``info``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        info: ModelInfo,
        input_adapter: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.input_adapter = input_adapter or info.adapter()
        self.backbone = backbone
        self.head = head
        self.info = info
        self.tokenizer: Any = None  # a text model's tokenizer (see transferkit.models.text)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of raw inputs, shape ``(N, feature_dim)``."""
        return self.backbone(self.input_adapter(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(N, num_classes)``."""
        return self.head(self.forward_features(x))

    @property
    def num_classes(self) -> int:
        return self.info.num_classes
