"""MCD: two classifiers that disagree on the target, and features that make them agree.

Saito, Watanabe, Ushiku & Harada (2018), "Maximum Classifier Discrepancy for Unsupervised Domain
Adaptation" (CVPR). A feature generator ``G`` (the backbone) feeds two classifiers ``F1`` and
``F2``; the discrepancy of their target predictions,
``d(p1, p2) = mean |softmax(F1(G(x_t))) - softmax(F2(G(x_t)))|`` (L1 averaged over classes and
examples), detects target examples outside the support of the source. Each batch runs three steps:

A. (``"main"``, the default step) train ``G``, ``F1``, ``F2`` on the labelled source;
B. (``"classifiers"``, heads only) ``CE(F1) + CE(F2) - trade_off · d`` on source + target: the
   classifiers learn to disagree on the target while staying right on the source;
C. (``"generator"``, backbone only, ``num_k`` times) ``trade_off · d``: the features move so the
   classifiers agree.

:meth:`MCD.training_step` runs the three steps on every batch (the method owns its update
sequence; the trainer's loop has one plain step). ``F1`` is the model's own head; :class:`MCD`
holds ``F2``, a re-initialised copy of the head built in :meth:`MCD.setup`. MCD must be used beside
``cross_entropy`` (``[CrossEntropy(), MCD()]``): in step A the ``cross_entropy`` objective trains
``F1`` and this objective adds ``CE(F2)`` only.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from transferkit.engine.objectives import (
    OBJECTIVES,
    TRADE_OFF,
    Batch,
    Coefficient,
    Objective,
    ObjectiveOptions,
    PositiveInt,
)
from transferkit.errors import ConfigError, ShapeError
from transferkit.transfer.adapt.dann import require_target

if TYPE_CHECKING:
    from transferkit.engine.batches import Examples
    from transferkit.engine.context import FitContext
    from transferkit.engine.step import StepOutput, StepRunner


def classifier_discrepancy(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """MCD's discrepancy: ``mean |softmax(logits1) - softmax(logits2)|`` over examples and classes.

    Args:
        logits1: ``(N, C)``.
        logits2: ``(N, C)``.

    Returns:
        A scalar in ``[0, 2 / C]``.
    """
    if logits1.shape != logits2.shape or logits1.ndim != 2:
        raise ShapeError(f"classifier_discrepancy needs two (N, C) logit tensors of the same shape, got "
                         f"{tuple(logits1.shape)} and {tuple(logits2.shape)}")
    return (F.softmax(logits1.float(), dim=1) - F.softmax(logits2.float(), dim=1)).abs().mean()


def reinitialised_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every sub-module's ``reset_parameters()`` called (fresh weights
    from the global torch generator) and all parameters trainable."""
    out = copy.deepcopy(module)
    for sub in out.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
    out.requires_grad_(True)
    return out


class MCD(Objective):
    """Maximum Classifier Discrepancy (Saito et al., 2018); use beside ``cross_entropy``.

    Args:
        weight: Multiplier of every MCD loss (steps A, B and C).
        num_k: How many times step C (the generator update) runs per batch (4 in the paper's code).
        trade_off: Weight of the discrepancy in steps B and C.

    Attributes:
        classifier2: ``F2`` after :meth:`setup` (also :meth:`second_head`).
    """

    class Options(ObjectiveOptions):
        """MCD's options; ``trade_off`` (not ``weight``) is what a trade-off grid varies."""

        weight: Coefficient = Field(1.0, description="Multiplier of every MCD loss (steps A, B and C).")
        num_k: PositiveInt = Field(
            4, description="How many times step C (the generator update) runs per batch.",
            json_schema_extra={"hint": "4 in the paper's code"},
        )
        trade_off: Coefficient = Field(
            1.0, description="Weight of the discrepancy in steps B and C.",
            json_schema_extra={**TRADE_OFF, "hint": "1.0 is the usual value"},
        )

    uses_target: ClassVar[bool] = True

    def __init__(self, weight: float = 1.0, num_k: int = 4, trade_off: float = 1.0) -> None:
        super().__init__(weight, num_k=num_k, trade_off=trade_off)
        self.num_k = self.options.num_k
        self.trade_off = self.options.trade_off
        self.classifier2: nn.Module | None = None

    def extra_repr(self) -> str:
        return f"weight={self.weight}, num_k={self.num_k}, trade_off={self.trade_off}"

    def setup(self, ctx: FitContext) -> None:
        """Build ``F2``: the model's head copied and re-initialised (seeded by the trainer)."""
        self.classifier2 = reinitialised_copy(ctx.model.head).to(ctx.device)

    def training_step(self, runner: StepRunner, ex: Examples) -> StepOutput:
        """Steps A, B and C on one batch; B and C are logged as ``loss_mcd_classifiers`` and
        ``loss_mcd_generator`` (mean over C's ``num_k`` updates)."""
        out = runner.default_step(ex)
        for phase, only, repeat in (("classifiers", runner.head_params, 1),
                                    ("generator", runner.backbone_params, self.num_k)):
            total = 0.0
            for _ in range(repeat):
                batch = runner.forward(ex, phase, frozen_features=phase == "classifiers")
                (loss,) = runner.losses(batch, [self])
                runner.check(ex, [f"{self.name}_{phase}"], [loss], loss, diverge=False)
                runner.update(self.weight * loss, only)
                total += float(loss.detach())
            out.terms[f"loss_{self.name}_{phase}"] = total / repeat
        return out

    def second_head(self) -> nn.Module:
        """The second classifier ``F2`` (same architecture as the model's head).

        Raises:
            ConfigError: called before :meth:`setup` built it.
        """
        if self.classifier2 is None:
            raise ConfigError("MCD's second classifier is built in setup(); train with "
                              "Trainer(...).fit(source, target=...) first")
        return self.classifier2

    def forward(self, batch: Batch) -> torch.Tensor:
        """Step A (``"main"``): ``CE(F2(f_s), y)``; B (``"classifiers"``): ``CE(F1) + CE(F2) -
        trade_off · d(F1(f_t), F2(f_t))``; C (``"generator"``): ``trade_off · d(F1(f_t), F2(f_t))``."""
        f2 = self.second_head()
        if batch.phase == "main":
            return F.cross_entropy(f2(batch.features).float(), batch.y)
        target_features, target_logits = require_target(batch, self.name)
        discrepancy = classifier_discrepancy(target_logits, f2(target_features))
        if batch.phase == "classifiers":
            ce = (F.cross_entropy(batch.logits.float(), batch.y)
                  + F.cross_entropy(f2(batch.features).float(), batch.y))
            return ce - self.trade_off * discrepancy
        if batch.phase == "generator":
            return self.trade_off * discrepancy
        raise ConfigError(f"MCD has no phase {batch.phase!r}; its phases are main, classifiers, generator")


OBJECTIVES.register("mcd", MCD)

__all__ = ["MCD", "classifier_discrepancy", "reinitialised_copy"]
