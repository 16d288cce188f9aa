"""Domain adaptation: labelled source, unlabelled target (pure losses so far; objectives next)."""

from transferkit.transfer.adapt.losses import (
    GradientReversal,
    coral_loss,
    grad_reverse,
    mmd_loss,
)

__all__ = ["GradientReversal", "coral_loss", "grad_reverse", "mmd_loss"]
