"""FixMatch: a confident prediction on a weak view is the label of a strong view.

Sohn et al. (2020), "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence"
(NeurIPS), eq. 4: for every unlabelled image, the prediction on a weakly augmented view (flip and
shift) gives a hard pseudo-label where its confidence reaches ``tau`` (0.95), and the model is trained
with cross-entropy to predict it on a strongly augmented view (RandAugment-style distortions and
cutout), averaged over the unlabelled batch (``mu`` times the labelled batch in the paper:
``TrainConfig.unlabeled_ratio``). With ``flex=True`` the thresholds are FlexMatch's per-class ones
(:class:`~transferkit.transfer.semi.pseudo_label.ConfidenceMask`).

The two views come from the engine's augmentation seam (``TrainConfig.weak_augment`` /
``strong_augment``, defaults :data:`~transferkit.data.augment.WEAK` / ``STRONG``); the weak view's
prediction runs without gradient. Use beside ``cross_entropy``: ``[CrossEntropy(), FixMatch()]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from transferkit.engine.objectives import OBJECTIVES, Batch, Objective, ObjectiveOptions
from transferkit.errors import ConfigError
from transferkit.transfer.semi.pseudo_label import ConfidenceMask, require_unlabelled

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext


def require_views(batch: Batch, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The unlabelled batch's (weak, strong) views."""
    require_unlabelled(batch, who)
    if batch.target_views is None:
        raise ConfigError(f"{who} compares two augmented views of every unlabelled example, which the "
                          "engine makes for image batches only; use pseudo_label or mean_teacher on "
                          "other inputs")
    return batch.target_views


class FixMatch(Objective):
    """``mean_j 1[max p_j >= T(argmax p_j)] * CE(f(strong_j), argmax p_j)``, ``p_j =
    softmax(f(weak_j) / temperature)`` without gradient (Sohn et al., 2020)."""

    class Options(ObjectiveOptions):
        """FixMatch's options (the paper's defaults)."""

        tau: float = Field(0.95, ge=0.0, le=1.0, description="Confidence the weak view's prediction "
                           "needs to become the strong view's label.")
        flex: bool = Field(False, description="FlexMatch's per-class thresholds (curriculum "
                           "pseudo-labelling) instead of one tau.")
        temperature: float = Field(1.0, gt=0.0, description="Softmax temperature of the weak view's "
                                   "prediction.")

    uses_target: ClassVar[bool] = True
    needs_views: ClassVar[bool] = True

    def __init__(self, weight: float = 1.0, tau: float = 0.95, flex: bool = False,
                 temperature: float = 1.0) -> None:
        super().__init__(weight, tau=tau, flex=flex, temperature=temperature)
        self.mask = ConfidenceMask(self.options.tau, self.options.flex)
        self.mask_rate = 0.0

    def setup(self, ctx: FitContext) -> None:
        size = len(ctx.target_data) if ctx.target_data is not None else 0
        self.mask.setup(size, ctx.device)

    def forward(self, batch: Batch) -> torch.Tensor:
        weak, strong = require_views(batch, self.name)
        model = batch.model
        with torch.no_grad():
            probs = torch.softmax(model(weak).float() / self.options.temperature, dim=1)
            labels, keep = self.mask(probs, batch.target_index)
        self.mask_rate = float(keep.mean()) if len(keep) else 0.0
        return (F.cross_entropy(model(strong), labels, reduction="none") * keep).mean()


OBJECTIVES.register("fixmatch", FixMatch)

__all__ = ["FixMatch", "require_views"]
