"""Pseudo-labelling: the model's own confident predictions on unlabelled examples as labels.

Lee (2013), "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep Neural
Networks" (ICML workshop): cross-entropy between the model's prediction on an unlabelled example and
its own arg-max class, here kept only where the prediction's confidence reaches a threshold ``tau``
(as in FixMatch). With ``flex=True`` the threshold is per class and follows how well each class is
learnt (FlexMatch's curriculum pseudo-labelling, Zhang et al., 2021): a class that few unlabelled
examples are confidently predicted as gets a lower threshold, so hard classes are not starved.

FlexMatch's warm-up starts every threshold at 0, so early on every prediction is a label. That is
what it was designed for inside FixMatch, where the label trains another (strongly augmented) view;
plain pseudo-labelling with ``flex`` from a fresh network confirms its own first guesses (measured:
scikit-learn digits, 10 labels per class, from scratch 47.8 +- 27.7 % against 85.4 % without
unlabelled data; ``bench/results/semi.md``). Use ``flex`` with ``fixmatch``, or from a model that
already predicts well.

The unlabelled examples are the target batches the engine pairs with every labelled batch
(``Trainer.fit(train, target=unlabelled)``; their labels are never read). Use beside
``cross_entropy``: ``[CrossEntropy(), PseudoLabel(tau=0.95)]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from transferkit.engine.objectives import OBJECTIVES, Batch, Objective, ObjectiveOptions
from transferkit.errors import ConfigError

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext


def require_unlabelled(batch: Batch, who: str) -> torch.Tensor:
    """The batch's unlabelled logits, or a :class:`ConfigError` saying how to give unlabelled data."""
    if batch.target_logits is None:
        raise ConfigError(f"{who} learns from unlabelled examples but the batch has none; pass "
                          "Trainer.fit(..., target=<unlabelled dataset>) (--unlabeled on the command line)")
    return batch.target_logits


class ConfidenceMask(torch.nn.Module):
    """Which pseudo-labels to keep: confidence >= ``tau``, or FlexMatch's per-class thresholds.

    FlexMatch (Zhang et al., 2021, eqs. 6-7 with the threshold warm-up and the convex mapping
    ``M(x) = x / (2 - x)``): every unlabelled example's latest confident prediction is remembered
    (``-1`` until it has one, by its position in the unlabelled set); ``sigma_c`` counts the examples
    whose latest confident class is ``c``, ``beta_c = sigma_c / max(max_c sigma_c, unused)`` where
    ``unused`` counts examples with no confident prediction yet, and class ``c``'s threshold is
    ``M(beta_c) * tau``. The memory is a buffer, so a resumed run continues with it.

    Args:
        tau: The confidence threshold (the upper bound of FlexMatch's thresholds).
        flex: Use FlexMatch's per-class thresholds.
    """

    def __init__(self, tau: float, flex: bool) -> None:
        super().__init__()
        self.tau, self.flex = float(tau), bool(flex)
        self.register_buffer("learnt", torch.empty(0, dtype=torch.long))

    def setup(self, size: int, device: torch.device) -> None:
        """Forget every prediction; ``size`` unlabelled examples."""
        if self.flex:
            self.learnt = torch.full((size,), -1, dtype=torch.long, device=device)

    def thresholds(self, num_classes: int) -> torch.Tensor:
        """Each class's threshold ``(C,)`` (all ``tau`` without ``flex``)."""
        if not self.flex or not len(self.learnt):
            return torch.full((num_classes,), self.tau, device=self.learnt.device)
        known = self.learnt[self.learnt >= 0]
        sigma = torch.bincount(known, minlength=num_classes)[:num_classes].float()
        unused = float((self.learnt < 0).sum())
        beta = sigma / max(float(sigma.max()), unused, 1.0)
        return beta / (2.0 - beta) * self.tau

    def forward(self, probs: torch.Tensor,
                index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pseudo-labels (M,), keep mask (M,) float)`` of predicted probabilities ``(M, C)``;
        ``index``: the examples' positions in the unlabelled set (FlexMatch's memory)."""
        conf, labels = probs.max(1)
        keep = conf >= self.thresholds(probs.shape[1])[labels]
        if self.flex and index is not None and len(self.learnt):
            over = conf > self.tau  # FlexMatch counts an example as learnt above the fixed tau
            at = index.to(self.learnt.device)
            self.learnt[at[over]] = labels[over].to(self.learnt.device)
        return labels, keep.float()


class PseudoLabel(Objective):
    """Cross-entropy toward the model's own confident predictions on unlabelled examples.

    ``loss = mean_j 1[max p_j >= T(argmax p_j)] * CE(z_j, argmax p_j)`` over the unlabelled batch
    (``z_j`` its logits, ``p_j = softmax(z_j / temperature)`` without gradient), ``T`` the threshold
    of :class:`ConfidenceMask`. ``mask_rate`` holds the last batch's share of kept examples.
    """

    class Options(ObjectiveOptions):
        """Pseudo-labelling's options."""

        tau: float = Field(0.95, ge=0.0, le=1.0, description="Confidence a prediction needs to become "
                           "a label (FlexMatch: the highest class threshold).")
        flex: bool = Field(False, description="Per-class thresholds that follow how well each class is "
                           "learnt (FlexMatch).")
        temperature: float = Field(1.0, gt=0.0, description="Softmax temperature of the predictions "
                                   "that give the pseudo-labels (below 1 sharpens them).")

    uses_target: ClassVar[bool] = True
    head_only: ClassVar[bool] = True  # reads only logits: a frozen backbone's features are cached

    def __init__(self, weight: float = 1.0, tau: float = 0.95, flex: bool = False,
                 temperature: float = 1.0) -> None:
        super().__init__(weight, tau=tau, flex=flex, temperature=temperature)
        self.mask = ConfidenceMask(self.options.tau, self.options.flex)
        self.mask_rate = 0.0

    def setup(self, ctx: FitContext) -> None:
        size = len(ctx.target_data) if ctx.target_data is not None else 0
        self.mask.setup(size, ctx.device)

    def select(self, logits: torch.Tensor, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pseudo-labels, keep mask)`` from the logits that give them (no gradient)."""
        with torch.no_grad():
            probs = torch.softmax(logits.detach().float() / self.options.temperature, dim=1)
            labels, keep = self.mask(probs, index)
        self.mask_rate = float(keep.mean()) if len(keep) else 0.0
        return labels, keep

    def forward(self, batch: Batch) -> torch.Tensor:
        logits = require_unlabelled(batch, self.name)
        labels, keep = self.select(logits, batch.target_index)
        return (F.cross_entropy(logits, labels, reduction="none") * keep).mean()


OBJECTIVES.register("pseudo_label", PseudoLabel)

__all__ = ["ConfidenceMask", "PseudoLabel", "require_unlabelled"]
