"""CDAN and CDAN+E: a domain discriminator conditioned on the classifier's predictions.

Long, Cao, Wang & Jordan (2018), "Conditional Adversarial Domain Adaptation" (NeurIPS). Instead of
the features ``f`` alone (DANN), the discriminator sees the multilinear map ``f ⊗ g`` of the
features and the class probabilities ``g = softmax(logits)`` -- the flattened outer product
``(N, D*C)`` -- so it can align the class-conditional distributions, which are multimodal. As in
the authors' code, ``g`` is detached: the adversarial gradient reaches the backbone through ``f``.

When ``D*C`` exceeds ``max_dim`` the *randomized* multilinear map replaces it:
``(f R_f) ⊙ (g R_g) / sqrt(r)`` with fixed Gaussian matrices ``R_f (D, r)``, ``R_g (C, r)`` drawn
once from a seeded generator and kept as buffers (so a resumed run uses the same ones).

CDAN+E (``entropy=True``, registered as ``cdan_e``) weights each example by
``w = 1 + exp(-H(g))`` (``H`` the prediction entropy), putting easy-to-transfer, confident examples
first. As in the reference implementation, the weights are normalised *within* the source and
*within* the target half, so each domain keeps its share ``N / (N + M)`` and ``M / (N + M)`` of the
total weight 1 (the reference's ``1/2`` each, for equal halves). Unlike the reference, no gradient
flows through the weights (they come from the detached ``g``).

The gradient-reversal schedule and the discriminator are DANN's
(:mod:`transferkit.transfer.adapt.dann`).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from transferkit.engine.objectives import OBJECTIVES, Batch, Integer, PositiveInt
from transferkit.errors import ShapeError
from transferkit.transfer.adapt.dann import DANN, require_target


def multilinear_map(features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The flattened outer product ``f ⊗ g``: ``out[n, d * C + c] = f[n, d] * g[n, c]``.

    Args:
        features: ``(N, D)``.
        probs: ``(N, C)`` (class probabilities).

    Returns:
        ``(N, D * C)``.
    """
    if features.ndim != 2 or probs.ndim != 2 or len(features) != len(probs):
        raise ShapeError(f"multilinear_map needs features (N, D) and probabilities (N, C) with the "
                         f"same N, got {tuple(features.shape)} and {tuple(probs.shape)}")
    return torch.einsum("nd,nc->ndc", features, probs).reshape(len(features), -1)


class RandomizedMultilinearMap(nn.Module):
    """``(f R_f) ⊙ (g R_g) / sqrt(r)``: an unbiased low-dimensional stand-in for ``f ⊗ g``.

    Its inner products approximate those of :func:`multilinear_map` (Long et al., 2018, Thm. 1).

    Args:
        feature_dim: ``D``.
        num_classes: ``C``.
        output_dim: ``r``.
        seed: Seed of the generator drawing ``R_f`` and ``R_g`` (standard normal entries).

    Shape:
        ``(N, D), (N, C) -> (N, r)``.
    """

    def __init__(self, feature_dim: int, num_classes: int, output_dim: int = 1024, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        self.output_dim = int(output_dim)
        self.register_buffer("r_f", torch.randn(int(feature_dim), self.output_dim, generator=gen))
        self.register_buffer("r_g", torch.randn(int(num_classes), self.output_dim, generator=gen))

    def extra_repr(self) -> str:
        return (f"feature_dim={self.r_f.shape[0]}, num_classes={self.r_g.shape[0]}, "
                f"output_dim={self.output_dim}")

    def forward(self, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.r_f.shape[0] or probs.shape[-1] != self.r_g.shape[0]:
            raise ShapeError(
                f"randomized multilinear map built for features of width {self.r_f.shape[0]} and "
                f"{self.r_g.shape[0]} classes, got {tuple(features.shape)} and {tuple(probs.shape)}"
            )
        f = features @ self.r_f.to(features.dtype)
        g = probs @ self.r_g.to(probs.dtype)
        return f * g / math.sqrt(self.output_dim)


def entropy_weights(probs: torch.Tensor, n_source: int) -> torch.Tensor:
    """CDAN+E example weights: ``w = 1 + exp(-H(p))``, normalised within each domain.

    Args:
        probs: Class probabilities ``(N + M, C)``, the ``n_source`` source rows first.
        n_source: ``N``.

    Returns:
        ``(N + M,)`` weights; the source rows sum to ``N / (N + M)``, the target rows to
        ``M / (N + M)`` (total 1). No gradient flows through them.
    """
    p = probs.detach().float()
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)
    w = 1.0 + torch.exp(-h)
    total = len(w)
    if not 0 < n_source < total:
        raise ShapeError(f"entropy_weights needs source and target rows, got n_source={n_source} of "
                         f"{total} rows")
    src, tgt = w[:n_source], w[n_source:]
    return torch.cat([src / src.sum() * (n_source / total), tgt / tgt.sum() * ((total - n_source) / total)])


class CDAN(DANN):
    """Conditional domain-adversarial loss (Long et al., 2018) on ``f ⊗ softmax(logits)``.

    Args:
        weight: Multiplier in the total loss.
        hidden: Width of the discriminator's hidden layers (1024 as in the authors' code).
        max_coeff: Largest gradient-reversal strength.
        gamma: Steepness of the ``"ganin"`` schedule.
        schedule: ``"ganin"`` or ``"constant"`` (see
            :func:`~transferkit.transfer.adapt.dann.grl_coefficient`).
        entropy: CDAN+E: weight examples by prediction certainty ``1 + exp(-H(g))``.
        max_dim: Largest ``D * C`` for the exact map; above it the randomized map is used.
        random_dim: Output width ``r`` of the randomized map.
        seed: Seed of the randomized map's fixed matrices.

    Attributes:
        random_map: The :class:`RandomizedMultilinearMap`, or ``None`` when the exact map is used.
        discriminator, last_coeff, last_accuracy: As in :class:`~transferkit.transfer.adapt.dann.DANN`.
    """

    class Options(DANN.Options):
        """CDAN's options: DANN's and the conditioning's."""

        hidden: PositiveInt = Field(
            1024, description="Width of the discriminator's hidden layers (1024 in the authors' code).",
        )
        entropy: bool = Field(
            False, description="CDAN+E: weight examples by prediction certainty 1 + exp(-H(g)).",
        )
        max_dim: PositiveInt = Field(
            4096, description="Largest D * C for the exact multilinear map; above it the randomized "
                              "map is used.",
        )
        random_dim: PositiveInt = Field(1024, description="Output width r of the randomized map.")
        seed: Annotated[Integer, Field(ge=0)] = Field(
            0, description="Seed of the randomized map's fixed matrices.",
        )

    def __init__(
        self,
        weight: float = 1.0,
        hidden: int = 1024,
        max_coeff: float = 1.0,
        gamma: float = 10.0,
        schedule: str = "ganin",
        entropy: bool = False,
        max_dim: int = 4096,
        random_dim: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__(weight, hidden, max_coeff, gamma, schedule, entropy=entropy, max_dim=max_dim,
                         random_dim=random_dim, seed=seed)
        opts = self.options
        self.entropy = opts.entropy
        self.max_dim = opts.max_dim
        self.random_dim = opts.random_dim
        self.seed = opts.seed
        self.random_map: RandomizedMultilinearMap | None = None

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, entropy={self.entropy}, max_dim={self.max_dim}, "
                f"random_dim={self.random_dim}")

    def discriminator_input_dim(self, feature_dim: int, num_classes: int) -> int:
        """``D * C``, or ``random_dim`` when that exceeds ``max_dim`` (then the random map is built)."""
        if feature_dim * num_classes > self.max_dim:
            self.random_map = RandomizedMultilinearMap(feature_dim, num_classes, self.random_dim, self.seed)
            return self.random_dim
        self.random_map = None
        return feature_dim * num_classes

    def conditional_map(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``f ⊗ softmax(logits).detach()``, exact or randomized: ``(B, D*C)`` or ``(B, r)``."""
        probs = F.softmax(logits.float(), dim=1).detach().to(features.dtype)
        if self.random_map is not None:
            return self.random_map(features, probs)
        return multilinear_map(features, probs)

    def discriminator_inputs(self, batch: Batch) -> torch.Tensor:
        target_features, target_logits = require_target(batch, self.name)
        f = torch.cat([batch.features, target_features])
        return self.conditional_map(f, torch.cat([batch.logits, target_logits]))

    def example_weights(self, batch: Batch) -> torch.Tensor | None:
        if not self.entropy:
            return None
        _, target_logits = require_target(batch, self.name)
        logits = torch.cat([batch.logits, target_logits]).float()
        return entropy_weights(F.softmax(logits, dim=1), len(batch.logits))


class CDANE(CDAN):
    """CDAN+E: :class:`CDAN` with entropy conditioning on by default (registered as ``cdan_e``)."""

    class Options(CDAN.Options):
        """CDAN+E's options: CDAN's, with ``entropy`` on."""

        entropy: bool = Field(
            True, description="Weight examples by prediction certainty 1 + exp(-H(g)) (CDAN+E).",
        )

    def __init__(
        self,
        weight: float = 1.0,
        hidden: int = 1024,
        max_coeff: float = 1.0,
        gamma: float = 10.0,
        schedule: str = "ganin",
        entropy: bool = True,
        max_dim: int = 4096,
        random_dim: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__(weight, hidden, max_coeff, gamma, schedule, entropy, max_dim, random_dim, seed)


OBJECTIVES.register("cdan", CDAN)
OBJECTIVES.register("cdan_e", CDANE)

__all__ = ["CDAN", "CDANE", "RandomizedMultilinearMap", "entropy_weights", "multilinear_map"]
