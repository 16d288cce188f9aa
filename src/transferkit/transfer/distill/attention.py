"""Attention transfer: the student mimics where the teacher's feature maps are active.

Zagoruyko & Komodakis (2017), "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR. The spatial *attention map* of a
feature map ``(N, C, H, W)`` is the channel mean of ``|f|^p``, flattened to ``(N, H*W)`` and
L2-normalised per example; the loss is the squared distance between the student's and the
teacher's maps at several depths. Attention maps have no channel dimension, so student and teacher
may have different widths without any adapter.

Three layers, as every method here: pure functions (:func:`attention_map`, :func:`at_loss`), an
:class:`~transferkit.engine.objectives.Objective` holding the hyper-parameters
(:class:`AttentionTransfer`), registered as ``"attention"`` in
:data:`transferkit.engine.objectives.OBJECTIVES`.

The module also holds the small probing helpers the layer-pairing objectives share
(:func:`probe_shapes`, :func:`spatial_blocks`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from transferkit.engine.objectives import (
    OBJECTIVES,
    Batch,
    FiniteFloat,
    LayerPair,
    Objective,
    ObjectiveOptions,
)
from transferkit.errors import ConfigError, ShapeError
from transferkit.transfer.distill.layers import (
    first_example,
    probe_shapes,
    spatial_blocks,
    teacher_tap,
)
from transferkit.transfer.distill.teacher import Teacher

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext

logger = logging.getLogger(__name__)


def _dims(shape: tuple[int, ...] | None) -> str:
    return "not a tensor" if shape is None else "(N, " + ", ".join(map(str, shape)) + ")"


# --------------------------------------------------------------------------- pure functions
def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention map of a feature map (Zagoruyko & Komodakis, 2017, Eq. 2 with F_mean^p).

    ``Q = normalize(mean_c |f_c|^p)``: the channel mean of ``|f|^p`` at every position, flattened
    and divided by its L2 norm per example (``F.normalize``, eps 1e-12, so an all-zero map stays
    zero). Scaling ``feat`` by a positive constant does not change the map.

    Args:
        feat: Feature map ``(N, C, H, W)``.
        p: Exponent (> 0); the paper uses 2.

    Returns:
        ``(N, H*W)`` float32 maps of unit L2 norm.

    Raises:
        ShapeError: ``feat`` is not 4-D.
    """
    if feat.ndim != 4:
        raise ShapeError(
            f"attention maps need feature maps (N, C, H, W), got shape {tuple(feat.shape)}; "
            "pick convolutional layers (attention transfer does not apply to vector features)"
        )
    q = feat.float().abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(q, p=2.0, dim=1)


def at_loss(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2.0
) -> torch.Tensor:
    """Attention-transfer loss between one student and one teacher feature map.

    Follows the authors' reference implementation (github.com/szagoruyko/attention-transfer,
    ``at_loss``): ``(Q_s - Q_t).pow(2).mean()``, the squared difference of the normalised maps
    averaged over the batch *and* the ``H*W`` positions. (The paper writes the un-squared
    ``||Q_s - Q_t||_2`` summed with weight ``beta/2``; the reference code trains with this mean
    and ``beta = 1000``, i.e. a term weight of 500.)

    When the spatial sizes differ, the feature map with the smaller size is bilinearly
    interpolated (``align_corners=False``) to ``(max H, max W)`` *before* its attention map is
    computed, so both maps have the same positions.

    Args:
        student_feat: ``(N, C_s, H_s, W_s)``.
        teacher_feat: ``(N, C_t, H_t, W_t)``; channel counts may differ.
        p: Exponent of :func:`attention_map`.

    Returns:
        Scalar float32 loss; 0 when the maps agree.

    Raises:
        ShapeError: an input is not 4-D or the batch sizes differ.
    """
    for which, f in (("student", student_feat), ("teacher", teacher_feat)):
        if f.ndim != 4:
            raise ShapeError(
                f"attention transfer needs (N, C, H, W) feature maps, but the {which} layer gives "
                f"{tuple(f.shape)}; pick convolutional layers on both models (an MLP has none: "
                "use 'hint' or 'rkd' instead)"
            )
    if student_feat.shape[0] != teacher_feat.shape[0]:
        raise ShapeError(
            f"student and teacher batch sizes differ ({student_feat.shape[0]} vs "
            f"{teacher_feat.shape[0]}); both must see the same examples"
        )
    size = (
        max(student_feat.shape[2], teacher_feat.shape[2]),
        max(student_feat.shape[3], teacher_feat.shape[3]),
    )
    feats = []
    for f in (student_feat.float(), teacher_feat.float()):
        if tuple(f.shape[2:]) != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        feats.append(f)
    return (attention_map(feats[0], p) - attention_map(feats[1], p)).pow(2).mean()


# --------------------------------------------------------------------------- objective
class AttentionTransfer(Objective):
    """Attention transfer (Zagoruyko & Komodakis, 2017) from a frozen teacher; name ``"attention"``.

    The loss is the **sum** over the layer pairs of :func:`at_loss` (as the reference code sums
    its groups). Student layer outputs come from ``batch.taps``; teacher ones from
    :meth:`Teacher.outputs`.

    Args:
        teacher: The frozen :class:`~transferkit.transfer.distill.teacher.Teacher`.
        pairs: ``(student_layer, teacher_layer)`` names (as in ``named_modules()``), each giving a
            4-D map. ``None``: probe one training example in :meth:`setup` and pair the backbone
            blocks with 4-D outputs from the top (last with last, then the ones below, as many as
            the shallower model has).
        p: Exponent of the attention map (> 0; the paper uses 2).
        weight: Multiplier in the total loss. The reference code uses ``beta/2 = 500`` with this
            mean-reduced loss; start around 100-1000.

    Attributes:
        pairs: The layer pairs in use (filled by :meth:`setup` when defaulted), bottom first.

    Raises:
        ConfigError: bad ``pairs`` / ``p`` (see :attr:`Options`), or the teacher is not a
            :class:`Teacher`.
        UnknownNameError: a layer name does not exist (teacher names at construction, student
            names in :meth:`setup`).
        ShapeError: a paired layer does not output ``(N, C, H, W)`` (e.g. an MLP student).
    """

    class Options(ObjectiveOptions):
        """Attention transfer's options."""

        pairs: list[LayerPair] | None = Field(
            None, min_length=1,
            description="(student layer, teacher layer) pairs of 4-D maps; None: the backbone "
                        "blocks paired from the top.",
        )
        p: Annotated[FiniteFloat, Field(ge=1.0)] = Field(
            2.0,
            description="Exponent of the attention map (the paper uses 2).",
            json_schema_extra={"hint": "the paper uses p=2; below 1 the gradient of |f|^p is "
                                       "infinite at exact zeros, which ReLU features are full of"},
        )

    def __init__(
        self,
        teacher: Teacher,
        pairs: Sequence[tuple[str, str]] | None = None,
        p: float = 2.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight, pairs=pairs, p=p)
        if not isinstance(teacher, Teacher):
            raise ConfigError(
                f"AttentionTransfer needs a Teacher, got {type(teacher).__name__}; wrap the model "
                "with transferkit.transfer.distill.teacher.Teacher(model)"
            )
        self.teacher = teacher
        self.p = self.options.p
        self._given = self.options.pairs
        self.pairs: list[tuple[str, str]] | None = None
        if self._given is not None:
            teacher.request([t for _, t in self._given])

    def extra_repr(self) -> str:
        return f"weight={self.weight}, p={self.p}, pairs={self.pairs or self._given or 'auto'}"

    def setup(self, ctx: FitContext) -> None:
        """Resolve and check the layer pairs on one training example, then set the taps."""
        example = first_example(ctx)
        student, tmodel = ctx.model, self.teacher.model
        if self._given is None:
            s_blocks = spatial_blocks(student, example, "student")
            t_blocks = spatial_blocks(tmodel, example, "teacher")
            for role, blocks, model in (("student", s_blocks, student), ("teacher", t_blocks,
                                                                          tmodel)):
                if not blocks:
                    arch = getattr(getattr(model, "info", None), "arch", type(model).__name__)
                    raise ShapeError(
                        f"the {role} ({arch}) has no backbone block with a 4-D (N, C, H, W) "
                        "output; attention transfer needs convolutional feature maps on both "
                        "models (an MLP has none): use 'kd', 'hint' or 'rkd' instead"
                    )
            k = min(len(s_blocks), len(t_blocks))
            pairs = list(zip(s_blocks[-k:], t_blocks[-k:], strict=True))
        else:
            pairs = list(self._given)
        s_shapes = probe_shapes(student, [s for s, _ in pairs], example)
        t_shapes = probe_shapes(tmodel, [t for _, t in pairs], example)
        for s, t in pairs:
            for role, name, shape in (("student", s, s_shapes[s]), ("teacher", t, t_shapes[t])):
                if shape is None or len(shape) != 3:
                    raise ShapeError(
                        f"attention transfer needs (N, C, H, W) feature maps, but {role} layer "
                        f"{name!r} gives {_dims(shape)}; pick convolutional layers (an MLP has "
                        "none: use 'hint' or 'rkd' instead)"
                    )
        self.pairs = pairs
        self.taps = tuple(dict.fromkeys(s for s, _ in pairs))
        self.teacher.request([t for _, t in pairs])
        self.teacher.setup(ctx)
        logger.info("attention transfer on pairs %s", pairs)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Sum over pairs of :func:`at_loss` of the student's and teacher's maps."""
        if self.pairs is None:
            raise ConfigError("AttentionTransfer.setup(ctx) has not run; train it with Trainer")
        out = self.teacher.outputs(batch)
        losses = [at_loss(batch.taps[s], teacher_tap(out, t), self.p) for s, t in self.pairs]
        return torch.stack(losses).sum()


OBJECTIVES.register("attention", AttentionTransfer)


__all__ = [
    "AttentionTransfer",
    "at_loss",
    "attention_map",
    "probe_shapes",
    "spatial_blocks",
]
