"""DAN and JAN: align source and target by kernel mean embeddings (MMD).

* DAN -- Long, Cao, Wang & Jordan (2015), "Learning Transferable Features with Deep Adaptation
  Networks" (ICML): the multi-kernel MMD between source and target features (a family of Gaussian
  kernels whose bandwidths are spread by ``kernel_mul`` around the mean pairwise squared distance).
  DAN adapts several task-specific layers; ``logits=True`` adds the MMD of the softmax outputs, the
  last such layer.
* JAN -- Long, Zhu, Wang & Jordan (2017), "Deep Transfer Learning with Joint Adaptation Networks"
  (ICML): the joint MMD of (features, softmax outputs), whose kernel is the product of a
  multi-kernel Gaussian on the features and a single Gaussian on the softmax outputs,
  ``exp(-||p - p'||² / 1.68)``: the fixed bandwidth of the authors' code (``sigma = 0.92``,
  ``2 sigma² ≈ 1.69``).

With every feature row equal (collapsed ReLU features), no bandwidth can be derived; both then use
the exact value of the collapsed layer's kernel (1 everywhere) instead of failing mid-training.

Both are used beside ``cross_entropy`` on the labelled source: ``[CrossEntropy(), DAN()]``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from transferkit.engine.objectives import (
    OBJECTIVES,
    Batch,
    Objective,
    ObjectiveOptions,
    PositiveFloat,
    PositiveInt,
)
from transferkit.transfer.adapt.dann import require_target
from transferkit.transfer.adapt.losses import jmmd_loss, mmd_loss


class _KernelOptions(ObjectiveOptions):
    """The multi-kernel Gaussian options DAN and JAN share."""

    kernel_mul: PositiveFloat = Field(
        2.0, description="Ratio between consecutive Gaussian bandwidths.",
        json_schema_extra={"hint": "2.0 is DAN's value"},
    )
    num_kernels: PositiveInt = Field(5, description="Number of Gaussian kernels.")


def _collapsed(source: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether every source and target row is the same point (all pairwise distances 0)."""
    both = torch.cat([source, target]).detach()
    return bool((both == both[:1]).all())


def _mmd(source: torch.Tensor, target: torch.Tensor, kernel_mul: float, num_kernels: int) -> torch.Tensor:
    """:func:`mmd_loss`, except that fully collapsed features (every row equal, so no distance scale
    to set bandwidths from) give the exact MMD 0 instead of an error in the middle of training."""
    bandwidths = [1.0] if _collapsed(source, target) else None
    return mmd_loss(source, target, kernel_mul=kernel_mul, num_kernels=num_kernels, bandwidths=bandwidths)


class DAN(Objective):
    """Multi-kernel MMD between source and target features (Long et al., 2015).

    Args:
        weight: Multiplier in the total loss (DAN's ``λ``; 1.0 is common).
        kernel_mul: Ratio between consecutive Gaussian bandwidths.
        num_kernels: Number of Gaussian kernels.
        logits: Also add the MMD of the softmax outputs (adapting the classifier layer too).
    """

    class Options(_KernelOptions):
        """DAN's options."""

        logits: bool = Field(
            False, description="Also add the MMD of the softmax outputs (adapt the classifier too).",
        )

    uses_target: ClassVar[bool] = True

    def __init__(
        self, weight: float = 1.0, kernel_mul: float = 2.0, num_kernels: int = 5, logits: bool = False
    ) -> None:
        super().__init__(weight, kernel_mul=kernel_mul, num_kernels=num_kernels, logits=logits)
        self.kernel_mul = self.options.kernel_mul
        self.num_kernels = self.options.num_kernels
        self.logits = self.options.logits

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, kernel_mul={self.kernel_mul}, num_kernels={self.num_kernels}, "
                f"logits={self.logits}")

    def forward(self, batch: Batch) -> torch.Tensor:
        """``MMD²(f_s, f_t)`` (``+ MMD²(softmax_s, softmax_t)`` with ``logits=True``)."""
        target_features, target_logits = require_target(batch, self.name)
        loss = _mmd(batch.features, target_features, self.kernel_mul, self.num_kernels)
        if self.logits:
            loss = loss + _mmd(F.softmax(batch.logits.float(), dim=1),
                               F.softmax(target_logits.float(), dim=1), self.kernel_mul, self.num_kernels)
        return loss


class JAN(Objective):
    """Joint MMD of (features, softmax outputs) (Long et al., 2017).

    Args:
        weight: Multiplier in the total loss.
        kernel_mul: Ratio between consecutive Gaussian bandwidths on the features.
        num_kernels: Number of Gaussian kernels on the features.
        softmax_bandwidth: Bandwidth ``b`` of the single kernel ``exp(-||p - p'||² / b)`` on the
            softmax outputs (1.68 as in the authors' code).
    """

    class Options(_KernelOptions):
        """JAN's options."""

        softmax_bandwidth: PositiveFloat = Field(
            1.68, description="Bandwidth b of the kernel exp(-||p - p'||^2 / b) on the softmax outputs.",
            json_schema_extra={"hint": "1.68 is JAN's value"},
        )

    uses_target: ClassVar[bool] = True

    def __init__(
        self,
        weight: float = 1.0,
        kernel_mul: float = 2.0,
        num_kernels: int = 5,
        softmax_bandwidth: float = 1.68,
    ) -> None:
        super().__init__(weight, kernel_mul=kernel_mul, num_kernels=num_kernels,
                         softmax_bandwidth=softmax_bandwidth)
        self.kernel_mul = self.options.kernel_mul
        self.num_kernels = self.options.num_kernels
        self.softmax_bandwidth = self.options.softmax_bandwidth

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, kernel_mul={self.kernel_mul}, num_kernels={self.num_kernels}, "
                f"softmax_bandwidth={self.softmax_bandwidth}")

    def forward(self, batch: Batch) -> torch.Tensor:
        """``JMMD²((f_s, p_s), (f_t, p_t))`` with ``p = softmax(logits)``."""
        target_features, target_logits = require_target(batch, self.name)
        feature_bandwidths = [1.0] if _collapsed(batch.features, target_features) else None
        return jmmd_loss(
            [batch.features, F.softmax(batch.logits.float(), dim=1)],
            [target_features, F.softmax(target_logits.float(), dim=1)],
            kernel_mul=self.kernel_mul, num_kernels=self.num_kernels,
            bandwidths=[feature_bandwidths, [self.softmax_bandwidth]],
        )


OBJECTIVES.register("dan", DAN)
OBJECTIVES.register("jan", JAN)

__all__ = ["DAN", "JAN"]
