"""Adapters that map a student's features onto the shape of a teacher's features.

Feature distillation (FitNets, Romero et al., 2015, "FitNets: Hints for Thin Deep Nets") compares a
student layer with a teacher layer of another width, so a small trainable *regressor* maps the
student's features into the teacher's space first. :func:`build_adapter` picks one from the two
shapes (batch dimension excluded):

========================  ==============================================================
student -> teacher        ``kind="auto"`` builds
========================  ==============================================================
``(D,) -> (E,)``          ``Linear(D, E)``: ``y = W x + b``, the linear mapping of seed 001
``(C, H, W) -> (K, P, Q)`` spatial size matched (adaptive average pooling when the student map
                          is larger, bilinear interpolation when smaller), then ``Conv2d(C, K, 1)``
``(C, H, W) -> (E,)``     global average pooling to ``(C,)``, then ``Linear(C, E)``
``(D,) -> (K, P, Q)``     ``Linear(D, K*P*Q)``, reshaped to ``(K, P, Q)``
``(L, D) -> (M, E)``      tokens: ``Linear(D, E)`` on every token, token count matched by linear
                          interpolation when ``L != M``; with ``L == M`` any token count passes
                          (text batches are as long as their longest text)
========================  ==============================================================

``kind="mlp"`` puts ``Linear-ReLU-Linear`` (or ``conv1x1-ReLU-conv1x1`` between maps) where ``auto``
puts one linear map; ``kind="linear"`` is one affine map (it does not apply between two 4-D maps:
use ``"conv1x1"`` there); ``kind="conv1x1"`` applies only between two 4-D maps.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.errors import ConfigError, ShapeError

AdapterKind = Literal["auto", "linear", "mlp", "conv1x1"]
ADAPTER_KINDS: tuple[str, ...] = ("auto", "linear", "mlp", "conv1x1")

_RANK_NAMES = {1: "2-D (N, D)", 2: "3-D tokens (N, L, D)", 3: "4-D (N, C, H, W)"}


class _MatchSpatial(nn.Module):
    """Resize ``(N, C, H, W)`` maps to ``(N, C, *size)``: average pooling when they are larger in
    both dimensions, bilinear interpolation otherwise; a no-op when the size already matches."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def extra_repr(self) -> str:
        return f"size={self.size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == self.size:
            return x
        if h >= self.size[0] and w >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class _MatchTokens(nn.Module):
    """Resize token sequences ``(N, L, D)`` to ``(N, length, D)`` by linear interpolation."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = int(length)

    def extra_repr(self) -> str:
        return f"length={self.length}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.length:
            return x
        y = F.interpolate(x.transpose(1, 2), size=self.length, mode="linear", align_corners=False)
        return y.transpose(1, 2)


class _GlobalAvgPool(nn.Module):
    """``(N, C, H, W) -> (N, C)``: the mean over the spatial positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class FeatureAdapter(nn.Module):
    """A trainable map from student features ``(N, *student_shape)`` to ``(N, *teacher_shape)``.

    Built by :func:`build_adapter`; checks the input shape so a wrong layer pairing fails with a
    clear message instead of a matrix-size error deep inside.

    Attributes:
        student_shape: Expected input shape without the batch dimension.
        teacher_shape: Output shape without the batch dimension.
        kind: The kind actually built (``"linear"``, ``"mlp"`` or ``"conv1x1"``; never ``"auto"``).
        net: The underlying ``nn.Sequential``.
    """

    def __init__(
        self,
        net: nn.Module,
        student_shape: tuple[int, ...],
        teacher_shape: tuple[int, ...],
        kind: str,
    ) -> None:
        super().__init__()
        self.net = net
        self.student_shape = tuple(student_shape)
        self.teacher_shape = tuple(teacher_shape)
        self.kind = kind
        # tokens mapped one by one: the count may change from batch to batch (dynamic padding)
        self.any_length = len(self.student_shape) == 2 and self.student_shape[0] == self.teacher_shape[0]

    def extra_repr(self) -> str:
        return f"{self.student_shape} -> {self.teacher_shape}, kind={self.kind!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, *student_shape)`` to ``(N, *teacher_shape)``.

        Raises:
            ShapeError: ``x`` does not have the student shape the adapter was built for.
        """
        if self.any_length and x.ndim == 3 and x.shape[-1] == self.student_shape[1]:
            return self.net(x)
        if tuple(x.shape[1:]) != self.student_shape:
            raise ShapeError(
                f"adapter built for student features of shape (N, {_dims(self.student_shape)}) "
                f"got {tuple(x.shape)}; build it with build_adapter({tuple(x.shape[1:])}, "
                f"{self.teacher_shape})"
            )
        return self.net(x)


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(map(str, shape))


def _check_shape(which: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as exc:
        raise ShapeError(
            f"{which}_shape must be a tuple of ints (without the batch dimension), got {shape!r}"
        ) from exc
    if len(shape) not in _RANK_NAMES or any(d < 1 for d in shape):
        raise ShapeError(
            f"{which}_shape {shape} is not supported: pass the feature shape without the batch "
            "dimension, as (D,) for vectors, (L, D) for tokens or (C, H, W) for maps, all >= 1"
        )
    return shape


def _mlp(d_in: int, hidden: int, d_out: int) -> list[nn.Module]:
    return [nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out)]


def _vector_map(d_in: int, d_out: int, kind: str, hidden: int | None) -> list[nn.Module]:
    if kind == "mlp":
        return _mlp(d_in, hidden or max(d_in, d_out), d_out)
    return [nn.Linear(d_in, d_out)]


def build_adapter(
    student_shape: tuple[int, ...],
    teacher_shape: tuple[int, ...],
    kind: AdapterKind = "auto",
    hidden: int | None = None,
) -> FeatureAdapter:
    """A trainable adapter from student features to the teacher's feature shape.

    Args:
        student_shape: Student feature shape without the batch dimension: ``(D,)``, ``(L, D)``
            or ``(C, H, W)``.
        teacher_shape: Teacher feature shape, same conventions.
        kind: ``"auto"`` (one linear map suited to the shapes, see the module docstring),
            ``"linear"``, ``"mlp"`` (two layers with a ReLU) or ``"conv1x1"`` (4-D to 4-D only).
        hidden: Hidden width of ``"mlp"`` (channels between maps); default
            ``max(student width, teacher width)``. Only used by ``"mlp"``.

    Returns:
        A :class:`FeatureAdapter` mapping ``(N, *student_shape)`` to ``(N, *teacher_shape)``,
        freshly initialised on the CPU (move it with ``.to(device)``).

    Raises:
        ConfigError: unknown ``kind``, a kind that cannot map these shapes (``"conv1x1"`` with a
            2-D side, ``"linear"`` between two maps), or ``hidden`` < 1 or given without ``"mlp"``.
        ShapeError: a shape is not ``(D,)``, ``(L, D)`` or ``(C, H, W)`` with positive sizes, or
            one side is tokens and the other is not.
    """
    if kind not in ADAPTER_KINDS:
        raise ConfigError(
            f"unknown adapter kind {kind!r}; choose one of {', '.join(map(repr, ADAPTER_KINDS))}"
        )
    if hidden is not None:
        if kind != "mlp":
            raise ConfigError(
                f"hidden={hidden!r} is only used by adapter kind 'mlp', got kind={kind!r}; "
                "drop hidden or use kind='mlp'"
            )
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"adapter hidden width must be an integer >= 1, got {hidden!r}")
    s = _check_shape("student", student_shape)
    t = _check_shape("teacher", teacher_shape)
    rank = (len(s), len(t))
    pair = f"{_RANK_NAMES[len(s)]} -> {_RANK_NAMES[len(t)]} ({s} -> {t})"
    if kind == "conv1x1" and rank != (3, 3):
        raise ConfigError(
            f"adapter kind 'conv1x1' needs 4-D feature maps on both sides, got {pair}; "
            "use kind='auto', 'linear' or 'mlp'"
        )
    if kind == "linear" and rank == (3, 3):
        raise ConfigError(
            f"adapter kind 'linear' does not map between two 4-D feature maps ({pair}); use "
            "kind='conv1x1' (a linear map at every position) or 'auto'"
        )
    if (2 in rank) and rank != (2, 2):
        raise ShapeError(
            f"cannot map {pair}: token features map only onto token features; pick layers of the "
            "same kind on both models"
        )
    built = "mlp" if kind == "mlp" else ("conv1x1" if rank == (3, 3) else "linear")
    layers: list[nn.Module]
    if rank == (1, 1):
        layers = _vector_map(s[0], t[0], built, hidden)
    elif rank == (2, 2):
        layers = []
        if s[0] != t[0]:
            layers.append(_MatchTokens(t[0]))
        layers += _vector_map(s[1], t[1], built, hidden)
    elif rank == (3, 1):
        layers = [_GlobalAvgPool(), *_vector_map(s[0], t[0], built, hidden)]
    elif rank == (1, 3):
        layers = [*_vector_map(s[0], t[0] * t[1] * t[2], built, hidden), nn.Unflatten(1, t)]
    else:  # 4-D -> 4-D
        layers = [] if s[1:] == t[1:] else [_MatchSpatial((t[1], t[2]))]
        if built == "mlp":
            mid = hidden or max(s[0], t[0])
            layers += [nn.Conv2d(s[0], mid, 1), nn.ReLU(), nn.Conv2d(mid, t[0], 1)]
        else:
            layers.append(nn.Conv2d(s[0], t[0], 1))
    return FeatureAdapter(nn.Sequential(*layers), s, t, built)


__all__ = ["ADAPTER_KINDS", "AdapterKind", "FeatureAdapter", "build_adapter"]
