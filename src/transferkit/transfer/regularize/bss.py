"""BSS: shrink the smallest singular values of the batch's feature matrix.

Chen, Wang, Fu, Long & Wang (2019), "Catastrophic Forgetting Meets Negative Transfer: Batch Spectral
Shrinkage for Safe Transfer Learning", NeurIPS. The authors observe that the feature directions with
small singular values are the ones fine-tuning cannot transfer well (negative transfer), and
penalise them: ``L_bss = eta * sum_{i=1..k} sigma_{-i}^2``, the ``k`` smallest singular values of the
batch feature matrix ``F`` ``(N, D)``, squared and summed (paper: ``eta = 0.001``, ``k = 1``).

Three layers, as every method here: a pure function (:func:`bss_penalty`), an
:class:`~transferkit.engine.objectives.Objective` holding the hyper-parameters (:class:`BSS`),
registered as ``"bss"`` in :data:`transferkit.engine.objectives.OBJECTIVES`.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch
from pydantic import Field

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

logger = logging.getLogger(__name__)


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(
            f"BSS k (number of smallest singular values) must be an integer >= 1, got {k!r}; "
            "the paper uses k=1"
        )
    return k


def bss_penalty(features: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Sum of the squares of the ``k`` smallest singular values of ``features``.

    ``sum_{i=1..k} sigma_{-i}(F)^2`` (Chen et al., 2019, without ``eta``), with the singular
    values from :func:`torch.linalg.svdvals` in float32. ``F`` has ``min(N, D)`` singular values;
    when ``k`` exceeds that (a small last batch), all of them are used, which gives
    ``||F||_F^2``.

    Args:
        features: Batch feature matrix ``(N, D)``.
        k: How many of the smallest singular values to shrink (>= 1).

    Returns:
        Scalar float32 penalty, differentiable with respect to ``features``.

    Raises:
        ConfigError: ``k`` is not an integer >= 1.
        ShapeError: ``features`` is not 2-D.
    """
    k = _check_k(k)
    if features.ndim != 2:
        raise ShapeError(
            f"BSS needs a batch feature matrix (N, D), got shape {tuple(features.shape)}; "
            "flatten the features first"
        )
    sigma = torch.linalg.svdvals(features.float())  # (min(N, D),), descending
    k = min(k, sigma.shape[0])
    return sigma[sigma.shape[0] - k :].pow(2).sum()


class BSS(Objective):
    """Batch Spectral Shrinkage (Chen et al., NeurIPS 2019); registered as ``"bss"``.

    The loss is :func:`bss_penalty` of the student's backbone features ``batch.features``
    ``(N, D)``; its gradient flows into the backbone (so ``head_only`` is False). When a batch has
    fewer than ``k`` singular values (``min(N, D) < k``), all of them are used for that batch.

    Args:
        k: Number of smallest singular values to shrink (>= 1); the paper uses 1.
        weight: ``eta``, the multiplier in the total loss (>= 0); the paper uses 0.001.

    Raises:
        ConfigError: ``k`` < 1 or ``weight`` < 0 (named with the value).
    """

    class Options(ObjectiveOptions):
        """BSS's options."""

        k: PositiveInt = Field(
            1, description="Number of smallest singular values to shrink.",
            json_schema_extra={"hint": "the paper uses k=1"},
        )
        weight: Coefficient = Field(
            0.001, description="eta, the multiplier in the total loss (the paper uses 0.001).",
            json_schema_extra=TRADE_OFF,
        )

    head_only: ClassVar[bool] = False

    def __init__(self, k: int = 1, weight: float = 0.001) -> None:
        super().__init__(weight, k=k)
        self.name = "bss"
        self.k = self.options.k

    def extra_repr(self) -> str:
        return f"weight={self.weight}, k={self.k}"

    def forward(self, batch: Batch) -> torch.Tensor:
        """:func:`bss_penalty` of ``batch.features`` ``(N, D)``."""
        return bss_penalty(batch.features, self.k)


OBJECTIVES.register("bss", BSS)


__all__ = ["BSS", "bss_penalty"]
