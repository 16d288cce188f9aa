"""DANN: features that a domain discriminator cannot tell apart, by gradient reversal.

Ganin, Ustinova, Ajakan, Germain, Larochelle, Laviolette, Marchand & Lempitsky (2016),
"Domain-Adversarial Training of Neural Networks" (JMLR 17). A discriminator ``D`` learns to tell
source features (domain 0) from target features (domain 1) with a binary cross-entropy; between the
features and ``D`` sits a gradient-reversal layer, so the same loss trains ``D`` to separate the
domains and the feature extractor to confuse it. The reversal strength grows from 0 to
``max_coeff`` over training (the paper's schedule, ``gamma = 10``)::

    λ(p) = max_coeff · (2 / (1 + exp(-γ p)) − 1),   p = fraction of training done

``p`` is ``Batch.progress``, counted against the configured ``epochs``: resuming a run with a larger
``epochs`` than it started with continues on the longer schedule (λ drops back for a while).

The discriminator is ``Linear-BatchNorm1d-ReLU`` twice, then ``Linear`` to one logit; it is built in
:meth:`DANN.setup` from the model's ``feature_dim`` and trained in the objectives' optimiser group.
Use beside ``cross_entropy`` on the labelled source: ``objectives=[CrossEntropy(), DANN()]``.

The schedule and the discriminator are shared with CDAN (:mod:`transferkit.transfer.adapt.cdan`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from transferkit.engine.objectives import (
    OBJECTIVES,
    Batch,
    Coefficient,
    Objective,
    ObjectiveOptions,
    PositiveInt,
)
from transferkit.errors import ConfigError
from transferkit.transfer.adapt.losses import grad_reverse

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext

SCHEDULES = ("ganin", "constant")


def grl_coefficient(
    progress: float, *, max_coeff: float = 1.0, gamma: float = 10.0, schedule: str = "ganin"
) -> float:
    """Gradient-reversal strength at ``progress`` (fraction of training done, in ``[0, 1]``).

    Args:
        progress: Fraction of training done before this step.
        max_coeff: The strength reached at the end (``"ganin"``) or throughout (``"constant"``).
        gamma: Steepness of the ``"ganin"`` ramp (10 in the paper).
        schedule: ``"ganin"``: ``max_coeff * (2 / (1 + exp(-gamma * progress)) - 1)``, 0 at the
            start, ``≈ max_coeff`` at the end; ``"constant"``: ``max_coeff``.

    Raises:
        ConfigError: unknown ``schedule``.
    """
    if schedule == "constant":
        return float(max_coeff)
    if schedule == "ganin":
        return float(max_coeff) * (2.0 / (1.0 + math.exp(-float(gamma) * float(progress))) - 1.0)
    raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}; "
                      "'ganin' ramps the reversal up from 0 as in the DANN paper")


class DomainDiscriminator(nn.Sequential):
    """Source-vs-target classifier: ``(Linear-BatchNorm1d-ReLU) x 2 -> Linear`` to one logit.

    Args:
        in_features: Width ``K`` of its input.
        hidden: Width of the two hidden layers.

    Shape:
        ``(B, K) -> (B, 1)`` domain logits (positive = target).
    """

    def __init__(self, in_features: int, hidden: int = 256) -> None:
        super().__init__(
            nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )


def require_target(batch: Batch, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    if batch.target_features is None or batch.target_logits is None:
        raise ConfigError(f"{who} adapts to unlabelled target data but the batch has none; pass "
                          "Trainer.fit(..., target=<unlabelled target dataset>)")
    return batch.target_features, batch.target_logits


class DANN(Objective):
    """Domain-adversarial loss (Ganin et al., 2016): discriminator BCE through gradient reversal.

    The loss is ``BCE(D(GRL_λ(cat(f_s, f_t))), domain)`` averaged over the ``N + M`` examples
    (``domain``: 0 source, 1 target); its gradient trains ``D`` and, reversed and scaled by ``λ``,
    the feature extractor.

    Args:
        weight: Multiplier in the total loss (also scales how fast ``D`` learns).
        hidden: Width of the discriminator's hidden layers.
        max_coeff: Largest gradient-reversal strength ``λ``.
        gamma: Steepness of the ``"ganin"`` schedule.
        schedule: ``"ganin"`` (ramp from 0 to ``max_coeff``) or ``"constant"``.
        **options: A subclass's further options (CDAN's), validated with its ``Options``.

    Attributes:
        discriminator: The :class:`DomainDiscriminator` (after :meth:`setup` / :meth:`build`).
        last_coeff: ``λ`` used at the last step.
        last_accuracy: The discriminator's accuracy on the last batch (0.5 = domains confused).
    """

    class Options(ObjectiveOptions):
        """DANN's options."""

        hidden: PositiveInt = Field(256, description="Width of the discriminator's hidden layers.")
        max_coeff: Coefficient = Field(1.0, description="Largest gradient-reversal strength lambda.")
        gamma: Coefficient = Field(
            10.0, description="Steepness of the 'ganin' schedule.",
            json_schema_extra={"hint": "10 is the DANN paper's value"},
        )
        schedule: Literal["ganin", "constant"] = Field(
            "ganin", description="'ganin' (reversal ramped up from 0, as in the paper) or 'constant'.",
        )

    uses_target: ClassVar[bool] = True

    def __init__(
        self,
        weight: float = 1.0,
        hidden: int = 256,
        max_coeff: float = 1.0,
        gamma: float = 10.0,
        schedule: str = "ganin",
        **options: object,
    ) -> None:
        super().__init__(weight, hidden=hidden, max_coeff=max_coeff, gamma=gamma, schedule=schedule,
                         **options)
        opts = self.options
        self.hidden = opts.hidden
        self.max_coeff = opts.max_coeff
        self.gamma = opts.gamma
        self.schedule = opts.schedule
        self.discriminator: nn.Module | None = None
        self.last_coeff: float | None = None
        self.last_accuracy: float | None = None

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, hidden={self.hidden}, max_coeff={self.max_coeff}, "
                f"gamma={self.gamma}, schedule={self.schedule!r}")

    # ------------------------------------------------------------------ building
    def discriminator_input_dim(self, feature_dim: int, num_classes: int) -> int:
        """Width of what the discriminator sees: the features (``feature_dim``)."""
        return int(feature_dim)

    def build(self, feature_dim: int, num_classes: int) -> None:
        """Create the discriminator for features of width ``feature_dim`` (fresh random weights
        from the global torch generator, which the trainer seeds before :meth:`setup`)."""
        dim = self.discriminator_input_dim(feature_dim, num_classes)
        self.discriminator = DomainDiscriminator(dim, self.hidden)

    def setup(self, ctx: FitContext) -> None:
        """Build the discriminator from ``ctx.model.info`` on ``ctx.device``."""
        info = ctx.model.info
        self.build(int(info.feature_dim), int(info.num_classes))
        self.to(ctx.device)

    # ------------------------------------------------------------------ loss
    def coefficient(self, progress: float) -> float:
        """The reversal strength ``λ`` at ``progress`` under this objective's schedule."""
        return grl_coefficient(progress, max_coeff=self.max_coeff, gamma=self.gamma,
                               schedule=self.schedule)

    def discriminator_inputs(self, batch: Batch) -> torch.Tensor:
        """``cat(f_s, f_t)`` ``(N + M, D)``: what the discriminator classifies."""
        target_features, _ = require_target(batch, self.name)
        return torch.cat([batch.features, target_features])

    def example_weights(self, batch: Batch) -> torch.Tensor | None:
        """Per-example BCE weights summing to 1, ``(N + M,)``; ``None`` = plain mean."""
        return None

    def forward(self, batch: Batch) -> torch.Tensor:
        """Weighted BCE of the discriminator on source (0) and target (1) examples."""
        if self.discriminator is None:
            raise ConfigError(f"{self.name}: the discriminator is built in setup(); train with "
                              "Trainer(...).fit(source, target=...) or call build(feature_dim, "
                              "num_classes) first")
        inputs = self.discriminator_inputs(batch)
        coeff = self.coefficient(batch.progress)
        out = self.discriminator(grad_reverse(inputs, coeff)).squeeze(1).float()
        domain = batch.domain.to(out.dtype)
        weights = self.example_weights(batch)
        if weights is None:
            loss = F.binary_cross_entropy_with_logits(out, domain)
        else:
            per_example = F.binary_cross_entropy_with_logits(out, domain, reduction="none")
            loss = (weights.to(per_example.dtype) * per_example).sum()
        with torch.no_grad():
            self.last_coeff = coeff
            self.last_accuracy = float(((out > 0).to(domain.dtype) == domain).float().mean())
        return loss


OBJECTIVES.register("dann", DANN)

__all__ = ["DANN", "SCHEDULES", "DomainDiscriminator", "grl_coefficient"]
