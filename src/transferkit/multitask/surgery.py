"""Gradient surgery: one update direction from several tasks' gradients on the shared parameters.

* :func:`pcgrad` (Yu et al., 2020, "Gradient surgery for multi-task learning", NeurIPS): each task's
  gradient loses its component along every other task's gradient it conflicts with (negative dot
  product), the others taken in random order; the projected gradients are summed.
* :func:`cagrad` (Liu et al., 2021, "Conflict-averse gradient descent for multi-task learning",
  NeurIPS): the direction ``d = g0 + (c ||g0|| / ||g_w||) g_w`` with ``g0`` the average gradient and ``w``
  on the simplex minimising ``g_w . g0 + c ||g0|| ||g_w||`` (solved on the tasks' Gram matrix, as the
  authors' code does with SLSQP), rescaled by ``1 / (1 + c^2)``.

Both take the tasks' gradients stacked as ``(K, P)`` (flattened shared parameters) and return ``(P,)``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

from transferkit.errors import ConfigError

__all__ = ["SURGERY", "cagrad", "pcgrad"]

SURGERY = (None, "pcgrad", "cagrad")


def pcgrad(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad's combined gradient of ``grads`` ``(K, P)``: the sum of each task's gradient projected
    off the normal planes of the tasks it conflicts with."""
    k = grads.shape[0]
    out = grads.clone()
    norms = (grads * grads).sum(1)
    for i in range(k):
        for j in torch.randperm(k, generator=generator).tolist():
            if j == i:
                continue
            dot = out[i] @ grads[j]
            if dot < 0 and norms[j] > 0:
                out[i] = out[i] - dot / norms[j] * grads[j]
    return out.sum(0)


def cagrad(grads: torch.Tensor, c: float = 0.4) -> torch.Tensor:
    """CAGrad's update direction for ``grads`` ``(K, P)`` with conflict-aversion ``c`` in [0, 1)
    (0: the average gradient)."""
    if not 0 <= float(c) < 1:
        raise ConfigError(f"cagrad's c must be in [0, 1), got {c!r}")
    k = grads.shape[0]
    g = grads.double()
    gram = (g @ g.T).cpu().numpy()
    g0_norm = float(np.sqrt(gram.mean() + 1e-8))
    start = np.ones(k) / k
    scale = float(c) * g0_norm + 1e-8

    def objective(x: np.ndarray) -> float:
        return float(x @ gram @ start + scale * np.sqrt(x @ gram @ x + 1e-8))

    res = minimize(objective, start, bounds=[(0.0, 1.0)] * k,
                   constraints=({"type": "eq", "fun": lambda x: 1.0 - x.sum()},))
    w = torch.as_tensor(res.x, dtype=torch.float64, device=grads.device)
    gw = w @ g
    direction = g.mean(0) + scale / (float(gw.norm()) + 1e-8) * gw
    return (direction / (1.0 + float(c) ** 2)).to(grads.dtype)
