"""DELTA: keep the student's feature maps close to the source model's, channel by channel.

Li, Xiong, Wang, Huan, Liu, Xu, Chen & Huan (2019), "DELTA: DEep Learning Transfer using Feature
Map with Attention for Convolutional Networks", ICLR. Instead of pulling the *weights* toward the
source (L2-SP), DELTA pulls the *behaviour*: the feature maps the fine-tuned network computes on the
target inputs should stay close to the ones the source network computes on the same inputs, and a
channel counts more when the source's prediction on the target task depends on it more ("supervised
attention").

Three layers, as every method here: pure functions (:func:`delta_penalty`,
:func:`channel_importance`, :func:`importance_to_weights`, :func:`supervised_channel_weights`), an
:class:`~transferkit.engine.objectives.Objective` holding the hyper-parameters (:class:`DELTA`),
registered as ``"delta"`` in :data:`transferkit.engine.objectives.OBJECTIVES`.

Normalisation used throughout (that of the authors' code, except that the batch is averaged and the
factor 1/2 dropped)::

    Omega = 1/N sum_n sum_l C_l sum_c W[l, c] * ||FM_student[n, l, c] - FM_source[n, l, c]||^2 / (H_l W_l)

with ``W[l]`` summing to 1 over the ``C_l`` channels of layer ``l``. ``C_l * W[l, c]`` averages 1
over the channels, so uniform weights (``attention="none"``) give the squared feature-map distance
summed over channels and averaged over positions and examples. A layer with vector output
``(N, D)`` counts as ``D`` channels of one position.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from transferkit.engine.batches import take
from transferkit.engine.objectives import (
    OBJECTIVES,
    Batch,
    LayerName,
    Objective,
    ObjectiveOptions,
    PositiveFloat,
    PositiveInt,
)
from transferkit.errors import ConfigError, ShapeError
from transferkit.models.surgery import LayerTap, backbone_blocks
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

# --------------------------------------------------------------------------- pure functions
def delta_penalty(
    student_maps: Mapping[str, torch.Tensor],
    source_maps: Mapping[str, torch.Tensor],
    channel_weights: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """The DELTA feature-map penalty (Li et al., 2019, with the normalisation above).

    ``Omega = 1/N sum_n sum_l C_l sum_c W[l,c] ||S[n,l,c] - T[n,l,c]||^2 / (H_l W_l)``; the source
    maps are detached, so gradients reach only the student.

    Args:
        student_maps: ``layer -> (N, C, H, W)`` (or ``(N, C)``, or any ``(N, C, ...)``) student
            outputs.
        source_maps: Same layers and shapes, from the source model on the same inputs.
        channel_weights: ``layer -> (C,)`` non-negative channel weights, normally summing to 1
            (see :func:`importance_to_weights`).

    Returns:
        Scalar float32 penalty; 0 when every student map equals the source's.

    Raises:
        ConfigError: no layers, or a layer misses from ``source_maps`` / ``channel_weights``.
        ShapeError: shapes differ between student and source, or weights do not have ``C`` entries.
    """
    if not student_maps:
        raise ConfigError("delta_penalty got no feature maps; pass at least one layer")
    terms = []
    for name, s in student_maps.items():
        for what, table in (("source_maps", source_maps), ("channel_weights", channel_weights)):
            if name not in table:
                raise ConfigError(
                    f"delta_penalty: layer {name!r} has a student map but no entry in {what} "
                    f"(it has {sorted(table)}); pass the same layers to all three"
                )
        t, w = source_maps[name], channel_weights[name]
        if s.ndim < 2 or tuple(s.shape) != tuple(t.shape):
            raise ShapeError(
                f"DELTA layer {name!r}: student map {tuple(s.shape)} and source map "
                f"{tuple(t.shape)} must have the same (N, C, ...) shape; pick layers where the two "
                "models have the same architecture"
            )
        n, c = s.shape[0], s.shape[1]
        if w.ndim != 1 or w.shape[0] != c:
            raise ShapeError(
                f"DELTA layer {name!r} has {c} channels but its channel weights have shape "
                f"{tuple(w.shape)}; give one weight per channel"
            )
        diff = (s.float() - t.detach().float()).reshape(n, c, -1)
        per_channel = diff.pow(2).mean(dim=2)  # (N, C): ||.||^2 / (H W)
        terms.append(c * (per_channel * w.to(per_channel)).sum(dim=1).mean())
    return torch.stack(terms).sum()


def importance_to_weights(scores: torch.Tensor, temperature: float = 5.0) -> torch.Tensor:
    """Channel weights from per-channel loss increases, as in the authors' code.

    The scores are standardised (``(s - mean) / std``, population std) and passed through
    ``softmax(z / temperature)``. When all scores are equal (or there is one channel) the weights
    are uniform.

    Args:
        scores: ``(C,)`` loss increase when each channel is zeroed.
        temperature: Softmax temperature (> 0); the reference code divides by 5.

    Returns:
        ``(C,)`` float32 weights, positive, summing to 1; a larger score gives a larger weight.
    """
    s = scores.detach().float().flatten()
    std = s.std(unbiased=False) if s.numel() > 1 else s.new_zeros(())
    if not torch.isfinite(std) or float(std) <= 1e-12:
        return torch.full_like(s, 1.0 / max(1, s.numel()))
    return torch.softmax((s - s.mean()) / std / float(temperature), dim=0)


@torch.no_grad()
def channel_importance(
    model: nn.Module,
    layers: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    head: nn.Module | None = None,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Increase of the mean cross-entropy on ``(x, y)`` when one output channel of a layer is zeroed.

    DELTA's "supervised attention" (Li et al., 2019): channel ``c`` of layer ``l`` scores
    ``CE(model with FM[l, c] := 0) - CE(model)``. Runs in eval mode without gradients (mode
    restored); costs ``1 + sum_l C_l`` passes over ``x``.

    Args:
        model: The source model; maps ``x`` to logits, or to features when ``head`` is given
            (``model.forward_features`` then).
        layers: Layer names (as in ``model.named_modules()``) whose output channels are scored.
        x: Inputs ``(M, ...)``.
        y: Labels ``(M,)`` int64.
        head: A head mapping ``model.forward_features(x)`` to target logits (the target head when
            the source model has its own, different head).
        batch_size: Examples per forward pass.

    Returns:
        ``layer -> (C,)`` float32 loss increases (on the CPU).

    Raises:
        UnknownNameError: a layer is not in ``model``.
        ShapeError: a layer's output is not a tensor ``(M, C, ...)``, or the logits do not fit ``y``.
    """
    LayerTap(model, layers)  # validates the names
    modules = dict(model.named_modules())
    device = next((p.device for p in model.parameters()), x.device)
    shapes = probe_shapes(model, layers, x[:1])
    modes = [(m, m.training) for m in (model, head) if m is not None]
    for m, _ in modes:
        m.eval()

    def mean_loss() -> float:
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            logits = head(model.forward_features(xb)) if head is not None else model(xb)
            if logits.ndim != 2 or int(yb.max()) >= logits.shape[1]:
                raise ShapeError(
                    f"DELTA's supervised attention needs target logits (N, classes) covering the "
                    f"labels (up to {int(yb.max())}), got {tuple(logits.shape)}; use "
                    "attention='none' or give the source the target head"
                )
            total += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
        return total / max(1, len(x))

    out: dict[str, torch.Tensor] = {}
    try:
        base = mean_loss()
        for name in layers:
            shape = shapes[name]
            if shape is None or len(shape) < 1:
                raise ShapeError(
                    f"DELTA layer {name!r} does not output an (N, C, ...) tensor (got "
                    f"{'nothing' if shape is None else shape}); pick a layer with feature maps"
                )
            scores = torch.zeros(shape[0])
            for c in range(shape[0]):
                handle = modules[name].register_forward_hook(_zero_channel(c))
                try:
                    scores[c] = mean_loss() - base
                finally:
                    handle.remove()
            out[name] = scores
    finally:
        for m, was in modes:
            m.train(was)
    return out


def _zero_channel(c: int) -> Callable[[nn.Module, object, torch.Tensor], torch.Tensor]:
    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, c] = 0
        return output

    return hook


def supervised_channel_weights(
    model: nn.Module,
    layers: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    temperature: float = 5.0,
    head: nn.Module | None = None,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """:func:`channel_importance` turned into weights with :func:`importance_to_weights`.

    Returns:
        ``layer -> (C,)`` float32 weights summing to 1 (on the CPU).
    """
    scores = channel_importance(model, layers, x, y, head=head, batch_size=batch_size)
    return {name: importance_to_weights(s, temperature) for name, s in scores.items()}


# --------------------------------------------------------------------------- objective
class DELTA(Objective):
    """DELTA feature-map regularisation (Li et al., ICLR 2019); registered as ``"delta"``.

    The loss is :func:`delta_penalty` between the student's outputs of ``layers`` (read from
    ``batch.taps``) and the frozen source model's outputs on the same batch (a
    :class:`~transferkit.transfer.distill.teacher.Teacher`, which keeps the source out of the
    optimiser and the checkpoints and runs it once per step, in eval mode).

    Simplifications against the paper / authors' code, all documented:

    * Channel ``c`` is scored by zeroing the layer's *output* channel (a forward hook) rather than
      the conv filter's weights, on up to ``max_examples`` training examples drawn once with
      ``config.seed``; the target head is the student's head as it is at setup (the authors first
      train a fresh head on the frozen source for 10 epochs). Scores are standardised and passed
      through ``softmax(z / temperature)``, as in the authors' code.
    * The source runs in eval mode (BatchNorm running statistics, no dropout), so while the student
      trains in train mode the penalty is not exactly 0 even at step 0; in eval mode it is.

    Args:
        source: The source model, frozen in place (``requires_grad=False``). ``None`` (usual): a
            frozen deep copy of the student taken in :meth:`setup` — its starting point after
            transfer. Passing the student itself is treated as ``None``.
        layers: Layers compared on both models (names as in ``named_modules()``; they must exist
            with equal output shapes in both). ``None``: the backbone blocks with 4-D ``(N, C, H,
            W)`` outputs, or the last backbone block when none is spatial.
        attention: ``"supervised"`` (channel weights from the loss increase, above) or ``"none"``
            (uniform weights: a plain feature-map distance).
        temperature: Softmax temperature of the supervised weights (> 0); 5 as in the authors' code.
        max_examples: Training examples used to score the channels (>= 1).
        weight: Multiplier in the total loss (>= 0). A trade-off of 0.01 on half the batch *sum*
            (a common setting) is ``0.005 * batch_size`` on this batch mean.

    Attributes:
        layers: The layers in use (filled by :meth:`setup`).
        channel_weights: ``layer -> (C,)`` weights in use (filled by :meth:`setup`).
        teacher: The source's :class:`Teacher` (filled by :meth:`setup`).

    Raises:
        ConfigError: a bad hyper-parameter (named with its value), or ``source`` is not a module.
        UnknownNameError: a layer does not exist (in ``source`` at construction, in the student in
            :meth:`setup`).
        ShapeError: a layer's output differs between student and source.
    """

    class Options(ObjectiveOptions):
        """DELTA's options (the source model is an object the workflow passes, not an option)."""

        layers: list[LayerName] | None = Field(
            None, min_length=1,
            description="Layers compared on both models (one name or a list); None: the backbone "
                        "blocks with 4-D outputs, else the last backbone block.",
        )
        attention: Literal["supervised", "none"] = Field(
            "supervised", description="Channel weights: 'supervised' (from the loss increase when a "
                                      "channel is zeroed) or 'none' (uniform).",
        )
        temperature: PositiveFloat = Field(
            5.0, description="Softmax temperature of the supervised channel weights.",
            json_schema_extra={"hint": "the authors use 5"},
        )
        max_examples: PositiveInt = Field(
            256, description="Training examples used to score the channels.",
        )

        @field_validator("layers", mode="before")
        @classmethod
        def _one_layer(cls, v: object) -> object:
            return [v] if isinstance(v, str) else v

    def __init__(
        self,
        source: nn.Module | None = None,
        layers: Sequence[str] | None = None,
        attention: Literal["supervised", "none"] = "supervised",
        temperature: float = 5.0,
        max_examples: int = 256,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight, layers=layers, attention=attention, temperature=temperature,
                         max_examples=max_examples)
        self.name = "delta"
        if source is not None and not isinstance(source, nn.Module):
            raise ConfigError(
                f"DELTA source must be an nn.Module or None (a copy of the student), got "
                f"{type(source).__name__}"
            )
        layers = self.options.layers
        if layers is not None and source is not None:
            LayerTap(source, layers)  # unknown names raise now, with suggestions
        # A tuple keeps the source out of this module's submodules (state_dict, parameters()).
        self._source: tuple[nn.Module, ...] = (source,) if source is not None else ()
        self._given_layers = layers
        self.attention = self.options.attention
        self.temperature = self.options.temperature
        self.max_examples = self.options.max_examples
        self.layers: list[str] | None = None
        self.channel_weights: dict[str, torch.Tensor] = {}
        self.teacher: Teacher | None = None

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, attention={self.attention!r}, "
            f"temperature={self.temperature}, layers={self.layers or self._given_layers or 'auto'}"
        )

    @staticmethod
    def _default_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
        layers = spatial_blocks(model, example, "student")
        return layers or [backbone_blocks(model)[-1][0]]

    def setup(self, ctx: FitContext) -> None:
        """Freeze the source, resolve and check the layers, compute the channel weights."""
        student = ctx.model
        example = first_example(ctx)
        source = self._source[0] if self._source else None
        if source is student:
            logger.warning("DELTA: source is the student itself; using a frozen copy of it")
            source = None
        copied = source is None
        if copied:
            source = copy.deepcopy(student)
        layers = list(self._given_layers or self._default_layers(student, example))
        LayerTap(student, layers)  # unknown student names raise with suggestions
        teacher = Teacher(source, layers, name="delta source")
        teacher.setup(ctx)
        s_shapes = probe_shapes(student, layers, example)
        t_shapes = probe_shapes(source, layers, example)
        for name in layers:
            if s_shapes[name] is None or s_shapes[name] != t_shapes[name]:
                raise ShapeError(
                    f"DELTA layer {name!r} gives {s_shapes[name]} on the student but "
                    f"{t_shapes[name]} on the source (per example); pick layers with equal "
                    "(C, H, W) outputs on both models"
                )
        if self.attention == "supervised":
            data = ctx.train_data
            gen = torch.Generator().manual_seed(int(ctx.config.seed))
            pick = torch.randperm(len(data), generator=gen)[: self.max_examples]
            head = None if copied or not hasattr(source, "forward_features") else student.head
            chosen = take(data, pick)
            weights = supervised_channel_weights(
                source, layers, chosen.x, chosen.y, temperature=self.temperature,
                head=head, batch_size=ctx.config.eval_batch_size,
            )
        else:
            weights = {n: torch.full((s_shapes[n][0],), 1.0 / s_shapes[n][0]) for n in layers}
        self.channel_weights = {n: w.to(ctx.device) for n, w in weights.items()}
        self.layers, self.teacher = layers, teacher
        self.taps = tuple(layers)
        logger.info("DELTA on layers %s (attention=%s)", layers, self.attention)

    def forward(self, batch: Batch) -> torch.Tensor:
        """:func:`delta_penalty` between ``batch.taps`` and the source's maps of ``batch.x``."""
        if self.teacher is None or self.layers is None:
            raise ConfigError("DELTA.setup(ctx) has not run; train it with Trainer")
        missing = [n for n in self.layers if n not in batch.taps]
        if missing:
            raise ConfigError(
                f"DELTA needs the student's outputs of {missing} in batch.taps; run it through "
                "Trainer, which records the layers named in objective.taps"
            )
        out = self.teacher.outputs(batch)
        student = {n: batch.taps[n] for n in self.layers}
        source = {n: teacher_tap(out, n) for n in self.layers}
        return delta_penalty(student, source, self.channel_weights)


OBJECTIVES.register("delta", DELTA)


__all__ = [
    "DELTA",
    "channel_importance",
    "delta_penalty",
    "importance_to_weights",
    "supervised_channel_weights",
]
