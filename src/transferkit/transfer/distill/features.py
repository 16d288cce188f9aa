"""Feature (hint) distillation: a student layer, through a trainable adapter, mimics a teacher layer.

Romero et al. (2015), "FitNets: Hints for Thin Deep Nets": the student's *guided* layer is mapped by
a regressor onto the teacher's *hint* layer and trained with the mean squared error. The adapter
(see :mod:`transferkit.transfer.distill.adapters`) is a sub-module of the objective, so the trainer
puts it in the optimiser; the teacher stays frozen and out of it.

Several teachers: use one :class:`Hint` per teacher (each builds its own adapter), e.g.
``[CrossEntropy(), Hint(teacher_a, weight=0.5), Hint(teacher_b, weight=0.5)]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field

from transferkit.engine.batches import first_input
from transferkit.engine.objectives import OBJECTIVES, Batch, LayerName, Objective, ObjectiveOptions
from transferkit.errors import ConfigError, ShapeError, TrainingError
from transferkit.models.surgery import LayerTap, backbone_blocks
from transferkit.transfer.distill.adapters import AdapterKind, FeatureAdapter, build_adapter
from transferkit.transfer.distill.teacher import Teacher

if TYPE_CHECKING:
    from torch import nn

    from transferkit.engine.context import FitContext

logger = logging.getLogger(__name__)


def hint_loss(
    student_mapped: torch.Tensor, teacher_feat: torch.Tensor, *, normalize: bool = False
) -> torch.Tensor:
    """FitNets hint loss: the mean squared error between mapped student and teacher features.

    Args:
        student_mapped: Adapter output ``(N, *S)``.
        teacher_feat: Teacher features ``(N, *S)`` (same shape).
        normalize: L2-normalise each example's flattened features first, so the loss compares
            directions only (insensitive to the teacher's activation scale).

    Returns:
        A scalar (float32): ``mean((student_mapped - teacher_feat) ** 2)`` over all elements.

    Raises:
        ShapeError: the shapes differ.
    """
    if student_mapped.shape != teacher_feat.shape:
        raise ShapeError(
            f"hint_loss needs equal shapes, got student {tuple(student_mapped.shape)} and teacher "
            f"{tuple(teacher_feat.shape)}; map the student features with build_adapter first"
        )
    s, t = student_mapped.float(), teacher_feat.float()
    if normalize:
        s = F.normalize(s.flatten(1), dim=1)
        t = F.normalize(t.flatten(1), dim=1)
    return F.mse_loss(s, t)


def last_block_name(model: nn.Module, who: str) -> str:
    """Qualified name of the last backbone block of a TransferNet (``"backbone.fc"``).

    Raises:
        ConfigError: ``model`` has no backbone blocks; name the layer explicitly.
    """
    blocks = backbone_blocks(model) if hasattr(model, "backbone") else []
    if not blocks:
        raise ConfigError(
            f"cannot pick a default {who} layer: the {who} model has no backbone blocks; name the "
            f"layer explicitly ({who}_layer=...; see transferkit.models.list_layers(model))"
        )
    return blocks[-1][0]


class Hint(Objective):
    """FitNets hint distillation from a frozen teacher layer (Romero et al., 2015).

    Loss: ``mse(adapter(student_layer(x)), teacher_layer(x))`` where ``adapter`` is built in
    :meth:`setup` from the two layers' output shapes and trained with the student.

    Args:
        teacher: The :class:`Teacher`.
        student_layer: Student module name (as in ``model.named_modules()``); default: its last
            backbone block (``"backbone.fc"`` for ``small_cnn``).
        teacher_layer: Teacher module name; default: the teacher's last backbone block.
        adapter: Adapter kind for :func:`~transferkit.transfer.distill.adapters.build_adapter`:
            ``"auto"``, ``"linear"``, ``"mlp"`` or ``"conv1x1"``.
        weight: Multiplier of this term in the total loss.
        normalize: Compare L2-normalised per-example features (see :func:`hint_loss`).

    Attributes:
        adapter: The :class:`FeatureAdapter` (``None`` until :meth:`setup`).
        taps: ``(student_layer,)`` once resolved.

    Raises:
        ConfigError: ``teacher`` is not a :class:`Teacher` or ``adapter`` is unknown.
        UnknownNameError: ``teacher_layer`` (here) or ``student_layer`` (in setup) is not a module;
            the message suggests close names.
    """

    class Options(ObjectiveOptions):
        """Hint distillation's options."""

        student_layer: LayerName | None = Field(
            None, description="Student module whose output is mapped; None: its last backbone block.",
        )
        teacher_layer: LayerName | None = Field(
            None, description="Teacher module to mimic; None: its last backbone block.",
        )
        adapter: AdapterKind = Field(
            "auto", description="Kind of the trainable adapter from the student to the teacher layer.",
        )
        normalize: bool = Field(
            False, description="Compare L2-normalised per-example features (directions only).",
        )

    def __init__(
        self,
        teacher: Teacher,
        student_layer: str | None = None,
        teacher_layer: str | None = None,
        adapter: str = "auto",
        weight: float = 1.0,
        normalize: bool = False,
    ) -> None:
        super().__init__(weight, student_layer=student_layer, teacher_layer=teacher_layer,
                         adapter=adapter, normalize=normalize)
        if not isinstance(teacher, Teacher):
            raise ConfigError(
                f"Hint needs a Teacher, got a {type(teacher).__name__}; wrap the model: "
                "Teacher(model)"
            )
        opts = self.options
        self.teacher = teacher
        self.teacher_layer = opts.teacher_layer or last_block_name(teacher.model, "teacher")
        # Requested now (not in setup) so that every objective sharing the teacher sees the layer
        # before any teacher.setup, and a precomputed logits-only table is never built for it.
        teacher.request([self.teacher_layer])
        self.student_layer = opts.student_layer
        self.adapter_kind = opts.adapter
        self.normalize = opts.normalize
        self.adapter: FeatureAdapter | None = None
        self.taps = (self.student_layer,) if self.student_layer else ()
        self.name = "hint"

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, student_layer={self.student_layer!r}, "
            f"teacher_layer={self.teacher_layer!r}, adapter={self.adapter_kind!r}, "
            f"normalize={self.normalize}"
        )

    def setup(self, ctx: FitContext) -> None:
        """Resolve the student layer, probe both layers' shapes and build the adapter.

        The adapter is created on ``ctx.device`` as a sub-module, before the optimiser is
        built, so it trains with the student. Calling setup again keeps an adapter whose shapes
        still match.

        Raises:
            UnknownNameError: the student layer does not exist (with suggestions).
            ConfigError: the trainer has no training data to probe shapes with.
            ShapeError: the layer outputs are not tensors the adapters can map.
        """
        model = ctx.model
        self.student_layer = self.student_layer or last_block_name(model, "student")
        LayerTap(model, [self.student_layer])  # validates the name, with suggestions
        self.taps = (self.student_layer,)
        self.teacher.request([self.teacher_layer])
        self.teacher.setup(ctx)
        data = ctx.train_data
        if data is None or len(data) == 0:
            raise ConfigError("Hint.setup needs ctx.train_data to probe layer shapes; call fit")
        s_shape, t_shape = _layer_shapes(ctx, self.teacher, self.student_layer, self.teacher_layer)
        old = self.adapter
        if old is not None and (old.student_shape, old.teacher_shape) == (s_shape, t_shape):
            self.adapter = old.to(ctx.device)
            return
        self.adapter = build_adapter(s_shape, t_shape, self.adapter_kind).to(ctx.device)
        logger.info(
            "hint %s %s -> teacher %s %s via %s adapter (%d parameters)",
            self.student_layer, s_shape, self.teacher_layer, t_shape, self.adapter.kind,
            sum(p.numel() for p in self.adapter.parameters()),
        )

    def forward(self, batch: Batch) -> torch.Tensor:
        """MSE between the adapted student layer output and the teacher layer output, a scalar."""
        if self.adapter is None:
            raise TrainingError("Hint.forward called before setup(ctx); train with a Trainer")
        if self.student_layer not in batch.taps:
            raise TrainingError(
                f"batch.taps has no output of student layer {self.student_layer!r}; the trainer "
                "records the layers named in objective.taps (features must not be cached)"
            )
        student = batch.taps[self.student_layer]
        teacher = self.teacher.outputs(batch).taps[self.teacher_layer]
        if student.shape[0] != teacher.shape[0]:
            raise ShapeError(
                f"student layer {self.student_layer!r} gave {student.shape[0]} examples but "
                f"teacher layer {self.teacher_layer!r} {teacher.shape[0]}; both must see the batch"
            )
        return hint_loss(self.adapter(student), teacher, normalize=self.normalize)


def _layer_shapes(ctx: FitContext, teacher: Teacher, s_layer: str, t_layer: str
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Output shapes (without the batch dimension) of a student and a teacher layer on the first
    training example (a text teacher with another tokenizer reads its own ids of it). Token-by-token
    pairs between text models that tokenise differently are refused (their tokens do not
    correspond); pooled features (the backbones' outputs) still compare."""
    probe = first_input(ctx.train_data)
    t_probe = probe if teacher._own is None else first_input(teacher._own)
    s_shape = _probe_shape(ctx.model, s_layer, probe, ctx.device, "student")
    t_shape = _probe_shape(teacher.model, t_layer, t_probe, teacher.device, "teacher")
    if teacher._own is not None and (len(s_shape) == 2 or len(t_shape) == 2):
        raise ShapeError(
            f"student layer {s_layer!r} and teacher layer {t_layer!r} give one vector per token, but the "
            "two models tokenise differently, so their tokens do not correspond; hint the pooled "
            "features instead (student_layer='backbone', teacher_layer='backbone') or use one tokenizer"
        )
    return s_shape, t_shape


def _probe_shape(
    model: nn.Module, layer: str, probe: torch.Tensor, device: torch.device, who: str
) -> tuple[int, ...]:
    """Output shape (without the batch dimension) of ``layer`` for one example, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), LayerTap(model, [layer], detach=True) as tap:
            model(probe.to(device))
    finally:
        model.train(was_training)
    out = tap.features.get(layer)
    if not isinstance(out, torch.Tensor):
        raise ShapeError(
            f"{who} layer {layer!r} returned {type(out).__name__}, not a tensor; pick a layer "
            "whose output is one tensor (see transferkit.models.list_layers(model))"
        )
    return tuple(out.shape[1:])


def layer_names(model: nn.Module) -> list[str]:
    """The model's layers in forward order for layer-to-layer distillation: a text encoder's
    transformer layers (``backbone.model.encoder.layer.0`` ...), else its backbone blocks."""
    layers = getattr(getattr(model, "backbone", None), "layers", None)
    names = [f"backbone.{n}" for n in layers()] if callable(layers) else []
    return names or [name for name, _ in backbone_blocks(model)]


def uniform_layer_map(student: Sequence[str], teacher: Sequence[str]) -> list[tuple[str, str]]:
    """Student layer ``i`` (1-based, of ``S``) paired with teacher layer ``round(i * T / S)``: every
    student layer learns from the teacher layer at the same relative depth, the last from the last
    (TinyBERT's uniform mapping, Jiao et al., 2020: a 4-layer student of a 12-layer teacher mimics
    layers 3, 6, 9 and 12)."""
    if not student or not teacher:
        raise ConfigError("layer mapping needs at least one layer on each side")
    s, t = len(student), len(teacher)
    return [(student[i - 1], teacher[max(1, round(i * t / s)) - 1]) for i in range(1, s + 1)]


class LayerHints(Objective):
    """Hints at every student layer from the teacher layer at the same relative depth: the hidden-state
    distillation of TinyBERT (Jiao et al., 2020), one trainable adapter per pair.

    Loss: the mean over pairs of ``mse(adapter_k(student_layer_k), teacher_layer_g(k))`` with the
    uniform mapping :func:`uniform_layer_map` over :func:`layer_names` of both models (for text
    encoders their transformer layers; token by token, so both must use one tokenizer).

    Args:
        teacher: The :class:`Teacher`.
        adapter: Adapter kind of every pair.
        weight: Multiplier of this term in the total loss.
        normalize: Compare L2-normalised per-example features.
    """

    class Options(ObjectiveOptions):
        """Layer-mapped hints' options."""

        adapter: AdapterKind = Field("auto", description="Kind of every pair's trainable adapter.")
        normalize: bool = Field(False, description="Compare L2-normalised per-example features.")

    def __init__(self, teacher: Teacher, adapter: str = "auto", weight: float = 1.0,
                 normalize: bool = False) -> None:
        super().__init__(weight, adapter=adapter, normalize=normalize)
        if not isinstance(teacher, Teacher):
            raise ConfigError(f"LayerHints needs a Teacher, got a {type(teacher).__name__}; wrap the model")
        self.teacher = teacher
        self.teacher_layers = layer_names(teacher.model)
        teacher.request(self.teacher_layers)
        self.pairs: list[tuple[str, str]] = []
        self.adapters = torch.nn.ModuleList()
        self.taps: tuple[str, ...] = ()
        self.name = "layer_hints"

    def setup(self, ctx: FitContext) -> None:
        """Pair the layers, probe their shapes and build one adapter per pair."""
        model = ctx.model
        self.pairs = uniform_layer_map(layer_names(model), self.teacher_layers)
        self.taps = tuple(s for s, _ in self.pairs)
        self.teacher.setup(ctx)
        data = ctx.train_data
        if data is None or len(data) == 0:
            raise ConfigError("LayerHints.setup needs ctx.train_data to probe layer shapes; call fit")
        adapters = [build_adapter(*_layer_shapes(ctx, self.teacher, s, t), self.options.adapter)
                    for s, t in self.pairs]
        self.adapters = torch.nn.ModuleList(adapters).to(ctx.device)
        logger.info("layer hints: %s", ", ".join(f"{s} -> {t}" for s, t in self.pairs))

    def forward(self, batch: Batch) -> torch.Tensor:
        """Mean MSE over the layer pairs, a scalar."""
        if not self.pairs:
            raise TrainingError("LayerHints.forward called before setup(ctx); train with a Trainer")
        taps = self.teacher.outputs(batch).taps
        losses = [hint_loss(adapter(batch.taps[s]), taps[t], normalize=self.options.normalize)
                  for adapter, (s, t) in zip(self.adapters, self.pairs, strict=True)]
        return torch.stack(losses).mean()


OBJECTIVES.register("hint", Hint)
OBJECTIVES.register("layer_hints", LayerHints)

__all__ = ["Hint", "LayerHints", "hint_loss", "last_block_name", "layer_names", "uniform_layer_map"]
