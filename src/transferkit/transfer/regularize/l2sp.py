"""L2-SP: keep fine-tuned weights close to the pre-trained starting point.

Li, Grandvalet & Davoine (2018), "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks" (ICML). Instead of weight decay towards 0, the parameters ``S`` that came from the source
are pulled back towards their pre-trained values ``w_S^0`` and only the new ones ``S̄`` (the new
head) are decayed towards 0::

    Ω(w) = α/2 · ||w_S − w_S^0||² + β/2 · ||w_S̄||²

The paper uses α = 0.01 ... 0.1 and β = 0.01 with SGD. Plain weight decay in the optimiser pulls
every weight to 0 and so works against the α term: train with ``weight_decay=0``.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from pydantic import Field, field_validator
from torch import nn

from transferkit.engine.objectives import (
    OBJECTIVES,
    Batch,
    Coefficient,
    Objective,
    ObjectiveOptions,
    check_coefficient,
)
from transferkit.engine.parameter_efficient import effective_parameters
from transferkit.errors import ConfigError

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext

logger = logging.getLogger(__name__)


def source_tensors(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The source's parameters by name, detached: ``named_parameters()`` of a module, or a mapping.

    Raises:
        ConfigError: ``source`` is neither an ``nn.Module`` nor a mapping of tensors.
    """
    if isinstance(source, nn.Module):
        return {n: p.detach() for n, p in source.named_parameters()}
    if isinstance(source, Mapping):
        bad = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ConfigError(
                f"source mapping entries {bad[:3]!r} are not tensors; pass a model or a state dict"
            )
        return {str(k): v.detach() for k, v in source.items()}
    raise ConfigError(
        f"source must be an nn.Module or a mapping of tensors (a state dict), got "
        f"{type(source).__name__}"
    )


def match_reference(
    params: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """The reference tensors whose name and shape match one of ``params`` (float32, detached copies).

    Args:
        params: The student's parameters by name.
        reference: Candidate reference tensors by name.
        device: Where to put the copies (default: each parameter's device).

    Returns:
        ``{name: w0}`` for every ``name`` in both with equal shapes.
    """
    out: dict[str, torch.Tensor] = {}
    for name, w in params.items():
        ref = reference.get(name)
        if ref is not None and tuple(ref.shape) == tuple(w.shape):
            dev = w.device if device is None else device
            out[name] = ref.detach().to(device=dev, dtype=torch.float32).clone()
    return out


def l2sp_penalty(
    params: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """``α/2 Σ_{i∈S} ||w_i − w0_i||² + β/2 Σ_{i∉S} ||w_i||²`` (Li et al., 2018).

    Args:
        params: Current parameters by name, any shapes.
        reference: Starting values ``w0`` by name; a parameter is in ``S`` when ``reference`` has
            its name with the same shape, else it gets the β term.
        alpha: Pull towards the starting point (>= 0).
        beta: Decay of the parameters without a reference (>= 0).

    Returns:
        A float32 scalar with gradients to ``params``.
    """
    alpha = check_coefficient("l2sp_penalty", "alpha", alpha)
    beta = check_coefficient("l2sp_penalty", "beta", beta)
    near: list[torch.Tensor] = []
    new: list[torch.Tensor] = []
    device = None
    for name, w in params.items():
        device = w.device
        ref = reference.get(name)
        if ref is not None and tuple(ref.shape) == tuple(w.shape):
            if alpha:
                near.append((w.float() - ref.to(w.device, torch.float32)).pow(2).sum())
        elif beta:
            new.append(w.float().pow(2).sum())
    total = torch.zeros((), device=device, dtype=torch.float32)
    if near:
        total = total + 0.5 * alpha * torch.stack(near).sum()
    if new:
        total = total + 0.5 * beta * torch.stack(new).sum()
    return total


class L2SP(Objective):
    """The L2-SP regulariser (Li, Grandvalet & Davoine, 2018) as a loss term.

    Use it beside the task loss: ``[CrossEntropy(), L2SP(alpha=0.1, beta=0.01)]``.

    Args:
        alpha: Weight of ``1/2 ||w_S − w_S^0||²`` (>= 0); 0.01-0.1 in the paper.
        beta: Weight of ``1/2 ||w_S̄||²`` on parameters with no reference (>= 0).
        source: The pre-trained weights ``w^0``: a model or a state dict, matched to the student's
            parameters by name and shape. ``None`` takes the student's own parameters at
            :meth:`setup` (its starting point after parameter transfer).
        weight: Multiplier of this term in the total loss.
        exclude: Glob patterns of student parameter names that are new whatever ``source`` holds
            (they get β): the new head by default, even when it has the source head's shape.

    Attributes:
        reference: After :meth:`setup`, ``{name: w0}`` (float32 on the training device) for the
            parameters in ``S``; every other student parameter is in ``S̄``.

    Note:
        Train with ``weight_decay=0``: plain weight decay pulls every weight to 0, against the α
        term that pulls it to ``w0`` (setup logs a warning otherwise).

    Raises:
        ConfigError: ``alpha`` or ``beta`` negative or not finite; ``source`` of a wrong type.
    """

    class Options(ObjectiveOptions):
        """L2-SP's options."""

        alpha: Coefficient = Field(
            0.01, description="Weight of 1/2 ||w_S - w_S^0||^2, the pull to the start point.",
            json_schema_extra={"hint": "0.01-0.1 is usual"},
        )
        beta: Coefficient = Field(
            0.01, description="Weight of 1/2 ||w||^2 on the parameters without a reference.",
            json_schema_extra={"hint": "0.01 is usual"},
        )
        exclude: tuple[str, ...] = Field(
            ("head.*",), description="Glob patterns of student parameters that are new whatever the "
                                     "source holds (they get beta); one pattern or a list.",
        )

        @field_validator("exclude", mode="before")
        @classmethod
        def _one_pattern(cls, v: object) -> object:
            return (v,) if isinstance(v, str) else v

    def __init__(
        self,
        alpha: float = 0.01,
        beta: float = 0.01,
        source: nn.Module | Mapping[str, torch.Tensor] | None = None,
        weight: float = 1.0,
        exclude: Sequence[str] = ("head.*",),
    ) -> None:
        super().__init__(weight, alpha=alpha, beta=beta, exclude=exclude)
        self.alpha = self.options.alpha
        self.beta = self.options.beta
        self.exclude = self.options.exclude
        # Plain dict on purpose: the source's tensors must not become parameters of the objective.
        self._source = None if source is None else source_tensors(source)
        self.reference: dict[str, torch.Tensor] = {}
        self.name = "l2sp"

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, alpha={self.alpha}, beta={self.beta}, "
            f"source={'given' if self._source is not None else 'start point'}"
        )

    def setup(self, ctx: FitContext) -> None:
        """Record ``w0`` for the student's parameters (from ``source`` or the starting weights)."""
        model = ctx.model
        params = {  # under strategy lora: each adapted layer's merged weight, under its plain name
            n: p for n, p in effective_parameters(model).items()
            if not any(fnmatch.fnmatchcase(n, pat) for pat in self.exclude)
        }
        ref = self._source if self._source is not None else params
        self.reference = match_reference(params, ref, ctx.device)
        n_ref = sum(t.numel() for t in self.reference.values())
        n_all = sum(p.numel() for p in model.parameters())
        logger.info(
            "L2-SP: %d of %d parameter values are pulled to their start point, %d decayed to 0",
            n_ref, n_all, n_all - n_ref,
        )
        if not self.reference:
            logger.warning(
                "L2-SP: no student parameter matches the source by name and shape; the "
                "regulariser is plain weight decay (beta=%g)", self.beta,
            )
        decay = float(getattr(ctx.config, "weight_decay", 0.0) or 0.0)
        if decay > 0 and self.alpha > 0:
            logger.warning(
                "L2-SP with weight_decay=%g: weight decay pulls weights to 0, against L2-SP's pull "
                "to the start point; set weight_decay: 0", decay,
            )

    def forward(self, batch: Batch) -> torch.Tensor:
        """``Ω(w)`` of the student's current parameters, a float32 scalar."""
        if batch.model is None:
            raise ConfigError("L2SP needs batch.model (the student); the trainer sets it")
        return l2sp_penalty(effective_parameters(batch.model), self.reference, self.alpha, self.beta)


OBJECTIVES.register("l2sp", L2SP)

__all__ = ["L2SP", "l2sp_penalty", "match_reference", "source_tensors"]
