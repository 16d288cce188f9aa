"""Deep CORAL: align the second-order statistics of source and target features.

Sun & Saenko (2016), "Deep CORAL: Correlation Alignment for Deep Domain Adaptation" (ECCV
workshops). The loss is ``||C_s - C_t||_F² / (4 d²)`` between the ``(d, d)`` covariances of the
source and target features of a batch (:func:`~transferkit.transfer.adapt.losses.coral_loss`).
The paper picks the weight so that the CORAL and classification losses are about equal at the end
of training. Use beside ``cross_entropy``: ``[CrossEntropy(), CORAL()]``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from transferkit.engine.objectives import OBJECTIVES, Batch, Objective, ObjectiveOptions
from transferkit.transfer.adapt.dann import require_target
from transferkit.transfer.adapt.losses import coral_loss


class CORAL(Objective):
    """CORAL loss between the batch's source and target features (Sun & Saenko, 2016).

    Args:
        weight: Multiplier in the total loss (the paper's ``λ``).
    """

    class Options(ObjectiveOptions):
        """CORAL's options: its weight alone (the paper's lambda)."""

    uses_target: ClassVar[bool] = True

    def forward(self, batch: Batch) -> torch.Tensor:
        """``||cov(f_s) - cov(f_t)||_F² / (4 d²)``."""
        target_features, _ = require_target(batch, self.name)
        return coral_loss(batch.features, target_features)


OBJECTIVES.register("coral", CORAL)

__all__ = ["CORAL"]
