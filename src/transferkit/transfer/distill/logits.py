"""Logit distillation: the student matches the teacher's softened class probabilities.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network". With temperature
``T`` the soft targets are ``p_t = softmax(z_t / T)`` and the loss is
``T^2 * KL(p_t || softmax(z_s / T))`` averaged over the batch; the ``T^2`` factor keeps gradient
magnitudes roughly independent of ``T`` (the gradient of the KL term shrinks like ``1 / T^2``).

Several teachers (an ensemble, or the seeds' ``K_t = K_s (+) K_m``: a source-domain and a
middle-domain teacher) contribute the weighted average of their soft targets.

The mix with the hard-label loss, ``(1 - alpha) * CE + alpha * KD``, is done by the engine: pass
``[CrossEntropy(weight=1 - alpha), LogitKD(teacher, weight=alpha)]`` to the ctx.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from transferkit.engine.batches import first_input
from transferkit.engine.objectives import (
    OBJECTIVES,
    Batch,
    Coefficient,
    Objective,
    ObjectiveOptions,
    PositiveFloat,
)
from transferkit.errors import ConfigError, ShapeError
from transferkit.transfer.distill.teacher import Teacher

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext

logger = logging.getLogger(__name__)


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float, checked to be finite and > 0 (else :class:`ConfigError`)."""
    try:
        t = float(temperature)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"temperature must be a number > 0, got {temperature!r}") from exc
    if not (t > 0 and math.isfinite(t)):
        raise ConfigError(
            f"temperature must be a finite number > 0, got {temperature!r}; 1-10 is usual "
            "(Hinton et al. use 2-20; 4 is a common default)"
        )
    return t


def _check_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor, who: str) -> None:
    if student_logits.ndim != 2 or teacher_logits.ndim != 2:
        raise ShapeError(
            f"KD needs logits of shape (N, C); got student {tuple(student_logits.shape)} and "
            f"{who} {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ShapeError(
            f"student and {who} logits hold different batch sizes: "
            f"{student_logits.shape[0]} vs {teacher_logits.shape[0]}; feed the teacher the same "
            "batch (and, with precompute=True, the same training set) as the student"
        )
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ShapeError(
            f"student predicts {student_logits.shape[1]} classes but the {who} "
            f"{teacher_logits.shape[1]}; distil from a teacher trained on the same label set"
        )


def soft_targets(
    teacher_logits: Sequence[torch.Tensor],
    temperature: float,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """The weighted average of several teachers' softened probabilities.

    Args:
        teacher_logits: One ``(N, C)`` tensor per teacher.
        temperature: Softmax temperature ``T`` > 0.
        weights: One non-negative weight per teacher (normalised to sum to 1); ``None`` = equal.

    Returns:
        ``sum_i w_i * softmax(z_i / T)``, shape ``(N, C)``, float32.
    """
    t = check_temperature(temperature)
    logits = list(teacher_logits)
    if not logits:
        raise ConfigError("soft_targets needs at least one teacher's logits")
    w = normalise_weights(weights, len(logits))
    probs = [wi * F.softmax(z.float() / t, dim=1) for wi, z in zip(w, logits, strict=True)]
    return torch.stack(probs).sum(0)


def normalise_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """``n`` teacher weights scaled to sum to 1 (equal weights when ``weights`` is ``None``).

    Raises:
        ConfigError: wrong number of weights, a negative or non-finite weight, or all zero.
    """
    if weights is None:
        return [1.0 / n] * n
    try:
        w = [float(v) for v in weights]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"teacher_weights must be numbers, got {weights!r}") from exc
    if len(w) != n:
        raise ConfigError(
            f"teacher_weights has {len(w)} value(s) but there are {n} teacher(s); give one "
            "weight per teacher"
        )
    if any(not (v >= 0 and math.isfinite(v)) for v in w) or sum(w) <= 0:
        raise ConfigError(
            f"teacher_weights must be finite, >= 0 and not all zero, got {list(weights)}"
        )
    total = sum(w)
    return [v / total for v in w]


def kd_from_targets(
    student_logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(targets || softmax(student_logits / T))`` averaged over the batch.

    Args:
        student_logits: ``(N, C)``.
        targets: Soft target probabilities ``(N, C)`` (rows sum to 1), e.g. from
            :func:`soft_targets`.
        temperature: ``T`` > 0.

    Returns:
        A scalar (float32).
    """
    t = check_temperature(temperature)
    _check_pair(student_logits, targets, "teacher")
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, targets.float(), reduction="batchmean") * (t * t)


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton et al. (2015) knowledge-distillation loss.

    ``T^2 * (1/N) * sum_n KL(softmax(t_n / T) || softmax(s_n / T))``.

    Args:
        student_logits: ``(N, C)``, with gradients.
        teacher_logits: ``(N, C)`` (treated as constants by callers that detach them).
        temperature: ``T`` > 0; larger ``T`` softens both distributions.

    Returns:
        A scalar (float32), 0 when the logits are equal up to a per-row constant.

    Raises:
        ConfigError: ``temperature`` is not a finite number > 0.
        ShapeError: the logits are not ``(N, C)`` with the same ``N`` and ``C``.
    """
    t = check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, "teacher")
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


class LogitKD(Objective):
    """Knowledge distillation from one or more frozen teachers' logits (Hinton et al., 2015).

    Combine with the hard-label loss through the objective weights:
    ``[CrossEntropy(weight=1 - alpha), LogitKD(teacher, weight=alpha)]``.

    Args:
        teacher: A :class:`Teacher`, or several (their soft targets are averaged).
        temperature: Softmax temperature ``T`` > 0.
        weight: Multiplier of this term in the total loss.
        teacher_weights: One weight per teacher (normalised to sum to 1); ``None`` = equal.

    Attributes:
        teachers: The teachers, in order.
        teacher_weights: The normalised weights.

    Note:
        With every teacher built with ``precompute=True`` (and no teacher layers requested by other
        objectives) the term needs only the student's logits and ``batch.index``, so it is
        ``head_only`` and a frozen-backbone run can cache the backbone features.

    Raises:
        ConfigError: a teacher is not a :class:`Teacher`, bad ``temperature`` or
            ``teacher_weights``.
    """

    class Options(ObjectiveOptions):
        """Logit distillation's options."""

        temperature: PositiveFloat = Field(
            4.0, description="Softmax temperature T of both the teachers and the student.",
            json_schema_extra={"hint": "1-10 is usual (Hinton et al. use 2-20; 4 is a common default)"},
        )
        teacher_weights: list[Coefficient] | None = Field(
            None, min_length=1,
            description="One weight per teacher, normalised to sum to 1; None weighs them equally.",
        )
        unlabeled: bool = Field(
            False, description="Distil on the unlabelled examples paired with every batch too (a "
            "transfer set: Trainer.fit(target=...), --unlabeled); the loss averages over both.",
        )

        @field_validator("teacher_weights")
        @classmethod
        def _not_all_zero(cls, v: list[float] | None) -> list[float] | None:
            if v is not None and sum(v) <= 0:
                raise ValueError("must not be all zero")
            return v

    def __init__(
        self,
        teacher: Teacher | Sequence[Teacher],
        temperature: float = 4.0,
        weight: float = 1.0,
        teacher_weights: Sequence[float] | None = None,
        unlabeled: bool = False,
    ) -> None:
        super().__init__(weight, temperature=temperature, teacher_weights=teacher_weights,
                         unlabeled=unlabeled)
        self.uses_target = bool(self.options.unlabeled)
        teachers = [teacher] if isinstance(teacher, Teacher) else list(teacher)
        if not teachers:
            raise ConfigError("LogitKD needs at least one Teacher; pass teacher=Teacher(model)")
        for i, t in enumerate(teachers):
            if not isinstance(t, Teacher):
                raise ConfigError(
                    f"LogitKD teacher #{i} is a {type(t).__name__}, not a Teacher; wrap the model: "
                    "Teacher(model)"
                )
        self.teachers: list[Teacher] = teachers
        self.temperature = self.options.temperature
        # how many weights there are is about the teachers passed, not an option: checked here
        self.teacher_weights = normalise_weights(self.options.teacher_weights, len(teachers))
        self.name = "kd"

    @property
    def head_only(self) -> bool:  # type: ignore[override]
        """True when every teacher answers from its precomputed table (needs only logits) and no
        unlabelled batch is read."""
        return not self.uses_target and all(t.precompute and not t.layers for t in self.teachers)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, temperature={self.temperature}, "
            f"teachers={[t.name for t in self.teachers]}, teacher_weights={self.teacher_weights}"
        )

    def setup(self, ctx: FitContext) -> None:
        """Set up every teacher and check that it predicts as many classes as the student.

        Raises:
            ShapeError: a teacher's number of classes differs from the student's.
        """
        probe = None
        if ctx.train_data is not None and len(ctx.train_data):
            probe = first_input(ctx.train_data)
        student = _num_classes(ctx.model, probe, ctx.device)
        for t in self.teachers:
            t.setup(ctx)
            teacher = t.num_classes or _num_classes(t.model, probe, t.device)
            if student is not None and teacher is not None and student != teacher:
                raise ShapeError(
                    f"teacher {t.name!r} predicts {teacher} classes but the student {student}; "
                    "KD compares class probabilities, so both need the same label set: give the "
                    f"student a {teacher}-class head (replace_head(model, {teacher})) or use a "
                    "teacher trained on the target classes"
                )

    def forward(self, batch: Batch) -> torch.Tensor:
        """``T^2 * KL(mix of teachers' softened probabilities || softened student)``, a scalar."""
        outs = [t.outputs(batch).logits for t in self.teachers]
        student = batch.logits
        if self.uses_target and batch.target_logits is not None:  # the transfer set's examples too
            student = torch.cat([student, batch.target_logits])
            outs = [torch.cat([z, t.target_logits(batch).to(z.dtype)])
                    for t, z in zip(self.teachers, outs, strict=True)]
        for t, z in zip(self.teachers, outs, strict=True):
            _check_pair(student, z, f"teacher {t.name!r}")
        if len(outs) == 1:
            return kd_loss(student, outs[0], self.temperature)
        targets = soft_targets(outs, self.temperature, self.teacher_weights)
        return kd_from_targets(student, targets, self.temperature)


def _num_classes(
    model: torch.nn.Module, probe: torch.Tensor | None, device: torch.device
) -> int | None:
    """``model.info.num_classes``, else the width of its output for ``probe`` (eval mode)."""
    info = getattr(model, "info", None)
    if info is not None and getattr(info, "num_classes", None):
        return int(info.num_classes)
    if probe is None:
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe.to(device))
    finally:
        model.train(was_training)
    return int(out.shape[-1])


OBJECTIVES.register("kd", LogitKD)

__all__ = ["LogitKD", "kd_from_targets", "kd_loss", "normalise_weights", "soft_targets"]
