"""Task arithmetic, and the task-vector merge that TIES and DARE specialise.

A task vector is a fine-tuned model minus the base it was fine-tuned from, ``tau_i = theta_i -
theta_base`` (Ilharco et al., 2023, "Editing models with task arithmetic", ICLR). Task arithmetic adds
their weighted sum back: ``theta = theta_base + lambda * sum_i w_i tau_i``.

:func:`task_vector_merge` is the general form, with mergekit's semantics (its
``generalized_task_arithmetic`` method, checked side by side on the same tensors): each ``tau_i`` is
sparsified (``"magnitude"``: keep the ``density`` share of largest ``|tau|`` entries of the tensor;
``"random"``: keep each entry with probability ``density``), optionally rescaled (``"l1"``: to the
tensor's L1 norm before sparsifying, mergekit's default for DARE; ``"density"``: by ``1 / density``, the
DARE paper's), weighted by ``w_i``; a sign consensus (``"sum"``: the sign of ``sum_i w_i tau_i``, TIES's
"elect"; ``"count"``: the majority of signs) masks out entries that disagree; the masked sum is divided
by the sum of the weights that took part (``normalize``, TIES's disjoint mean) and scaled by ``lambda``.
"""

from __future__ import annotations

import torch

from transferkit.errors import ConfigError
from transferkit.transfer.merge.base import MERGE_METHODS, MergeMethod, check_probability

__all__ = ["consensus_mask", "sparsify", "task_vector_merge"]

SPARSIFY = (None, "magnitude", "random")
CONSENSUS = (None, "sum", "count")
RESCALE = (None, "l1", "density")


def sparsify(delta: torch.Tensor, density: float, how: str, *, rescale: str | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep a ``density`` share of ``delta``'s entries (``how``: ``"magnitude"`` keeps the largest
    ``|delta|``, at least one; ``"random"`` keeps each with probability ``density``) and zero the rest;
    ``rescale``: ``"l1"`` multiplies the kept entries so the L1 norm is unchanged, ``"density"`` by
    ``1 / density``, ``None`` leaves them."""
    if density >= 1:
        return delta
    if how == "magnitude":
        k = max(1, int(density * delta.numel()))
        mask = torch.zeros_like(delta)
        top = torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]
        mask.view(-1)[top] = 1
    elif how == "random":
        probs = torch.full(delta.shape, float(density), dtype=torch.float32, device=delta.device)
        mask = torch.bernoulli(probs, generator=generator).to(delta.dtype)
    else:
        raise ConfigError(f"sparsify must be one of 'magnitude', 'random', got {how!r}")
    kept = delta * mask
    if rescale == "density":
        return kept / density
    if rescale == "l1":
        before, after = delta.abs().sum(), kept.abs().sum()
        if before < 1e-7 or after < 1e-7:
            return kept
        return kept * (before / after)
    return kept


def consensus_mask(weighted: torch.Tensor, how: str) -> torch.Tensor:
    """Which entries of the stacked weighted task vectors ``(M, ...)`` agree with the elected sign:
    ``"sum"``: the sign of their sum (TIES), ``"count"``: the sign most of them have; 0 counts as +."""
    sign = weighted.sign()
    if how == "sum":
        elected = (weighted.sum(0) >= 0).to(weighted.dtype) * 2 - 1
    elif how == "count":
        elected = (sign.sum(0) >= 0).to(weighted.dtype) * 2 - 1
    else:
        raise ConfigError(f"consensus must be one of 'sum', 'count', got {how!r}")
    return (sign == elected).to(weighted.dtype)


def task_vector_merge(stack: torch.Tensor, base: torch.Tensor | None, weights: torch.Tensor, *,
                      scale: float = 1.0, density: float = 1.0, sparsify_by: str | None = None,
                      consensus: str | None = None, normalize: bool = False, rescale: str | None = None,
                      seed: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``base + scale * mix(w_i * sparsify(stack[i] - base))`` as described in the module docstring.

    Args:
        stack: The models' tensors ``(M, ...)``.
        base: The base model's tensor.
        weights: ``w_i``, one per model.
        scale: ``lambda``.
        density: Share of each task vector's entries kept (1: all).
        sparsify_by: ``None``, ``"magnitude"`` (TIES) or ``"random"`` (DARE).
        consensus: ``None``, ``"sum"`` (TIES) or ``"count"``.
        normalize: Divide by the sum of the weights that took part at each entry (0 -> 1).
        rescale: ``None``, ``"l1"`` or ``"density"`` (see :func:`sparsify`).
        seed: Seeds the random mask when no ``generator`` is given.
        generator: The random masks' generator (the front door passes one per merge).
    """
    if base is None:
        raise ConfigError("task vectors need a base model: pass base= (the model the inputs were fine-tuned "
                          "from), --base on the command line")
    if sparsify_by not in SPARSIFY or consensus not in CONSENSUS or rescale not in RESCALE:
        raise ConfigError(f"sparsify must be one of {SPARSIFY}, consensus one of {CONSENSUS}, rescale one of "
                          f"{RESCALE}; got {sparsify_by!r}, {consensus!r}, {rescale!r}")
    density = check_probability("density", density)
    if not stack.is_floating_point():
        return base
    deltas = stack - base.unsqueeze(0)
    if sparsify_by is not None:
        if generator is None and sparsify_by == "random":
            generator = torch.Generator(device=stack.device).manual_seed(int(seed))
        deltas = torch.stack([sparsify(d, density, sparsify_by, rescale=rescale, generator=generator)
                              for d in deltas])
    w = weights.to(deltas.dtype).view(-1, *([1] * (deltas.ndim - 1)))
    weighted = deltas * w
    if consensus is not None:
        mask = consensus_mask(weighted, consensus)
        mixed = (weighted * mask).sum(0)
        divisor = (w * mask).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(0)
        divisor = w.sum(0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return (base + float(scale) * mixed).to(base.dtype)


def _task_arithmetic(stack: torch.Tensor, base: torch.Tensor | None, weights: torch.Tensor, *,
                     scale: float) -> torch.Tensor:
    return task_vector_merge(stack, base, weights, scale=scale)


MERGE_METHODS.register("task_arithmetic", MergeMethod(
    _task_arithmetic,
    "base + scale * the weighted sum of task vectors (model - base)",
    options={"scale": 1.0},
    needs_base=True,
    merges_heads=False,
    reference="Ilharco et al., 2023, Editing models with task arithmetic, ICLR",
))
