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

from typing import ClassVar

import torch
import torch.nn.functional as F

from transferkit.engine.objectives import OBJECTIVES, Batch
from transferkit.errors import ConfigError
from transferkit.transfer.semi.pseudo_label import PseudoLabel, require_unlabelled


def require_views(batch: Batch, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The unlabelled batch's (weak, strong) views."""
    require_unlabelled(batch, who)
    if batch.target_views is None:
        raise ConfigError(f"{who} compares two augmented views of every unlabelled example, which the "
                          "engine makes for image batches only; use pseudo_label or mean_teacher on "
                          "other inputs")
    return batch.target_views


class FixMatch(PseudoLabel):
    """``mean_j 1[max p_j >= T(argmax p_j)] * CE(f(strong_j), argmax p_j)``, ``p_j =
    softmax(f(weak_j) / temperature)`` without gradient (Sohn et al., 2020): pseudo-labelling
    (:class:`~transferkit.transfer.semi.pseudo_label.PseudoLabel`, the same options and thresholds)
    whose labels come from the weak view and train the strong one."""

    class Options(PseudoLabel.Options):
        """FixMatch's options (the paper's defaults): ``tau`` is the confidence the weak view's
        prediction needs to become the strong view's label."""

    head_only: ClassVar[bool] = False  # forwards the views through the whole model
    needs_views: ClassVar[bool] = True

    def forward(self, batch: Batch) -> torch.Tensor:
        weak, strong = require_views(batch, self.name)
        model = batch.model
        with torch.no_grad():
            weak_logits = model(weak)
        labels, keep = self.select(weak_logits, batch.target_index)
        return (F.cross_entropy(model(strong), labels, reduction="none") * keep).mean()


OBJECTIVES.register("fixmatch", FixMatch)

__all__ = ["FixMatch", "require_views"]
