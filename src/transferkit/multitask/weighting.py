"""Loss weighting across tasks: how much each task's loss counts in the shared update.

* ``equal``: fixed weights (1 each, or the ones given);
* ``uncertainty`` (Kendall, Gal & Cipolla, 2018, "Multi-task learning using uncertainty to weigh losses",
  CVPR): a learned log-variance ``s_t`` per task, ``L = sum_t exp(-s_t) L_t + s_t / 2`` (their
  classification form, ``L_t / sigma_t^2 + log sigma_t``);
* ``dwa`` (Liu, Johns & Davison, 2019, "End-to-end multi-task learning with attention", CVPR, Dynamic
  Weight Average): ``w_t = K exp(r_t / T) / sum_j exp(r_j / T)`` with ``r_t`` the ratio of task ``t``'s
  mean training loss in the last two epochs (1 for the first two epochs);
* ``gradnorm`` (Chen et al., 2018, "GradNorm: gradient normalization for adaptive loss balancing in deep
  multitask networks", ICML): learned weights whose gradient norms on the last shared layer are pulled
  towards the mean norm times ``(relative inverse training rate) ** alpha``; renormalised to sum to K.

The weights live in the :class:`~transferkit.multitask.objective.MultiTask` objective (its parameters and
buffers), so a checkpoint holds them and a resumed run continues with them.
"""

from __future__ import annotations

import torch

WEIGHTING = ("equal", "uncertainty", "dwa", "gradnorm")

__all__ = ["WEIGHTING", "dwa_weights", "gradnorm_loss", "uncertainty_loss"]


def uncertainty_loss(losses: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
    """``sum_t exp(-s_t) L_t + s_t / 2`` for task losses ``(K,)`` and learned log-variances ``s`` ``(K,)``."""
    return (torch.exp(-log_vars) * losses + 0.5 * log_vars).sum()


def dwa_weights(last: torch.Tensor, before: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """DWA's weights ``(K,)`` from each task's mean loss in the last epoch and the one before (zeros
    where not yet known: weights 1)."""
    k = len(last)
    if bool((last <= 0).any()) or bool((before <= 0).any()):
        return torch.ones(k, dtype=last.dtype)
    ratio = last / before
    return k * torch.softmax(ratio / float(temperature), dim=0)


def gradnorm_loss(norms: torch.Tensor, losses: torch.Tensor, initial: torch.Tensor,
                  alpha: float = 1.5) -> torch.Tensor:
    """GradNorm's loss ``sum_t |G_t - mean(G) r_t^alpha|``: ``norms`` ``(K,)`` the gradient norms of the
    weighted task losses on the last shared layer (differentiable in the weights), ``losses`` and
    ``initial`` the task losses now and at the first step (``r_t``: the task's loss ratio over the mean
    ratio); the target is held constant."""
    ratio = losses.detach() / initial
    target = (norms.mean() * (ratio / ratio.mean()) ** float(alpha)).detach()
    return (norms - target).abs().sum()
