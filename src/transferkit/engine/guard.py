"""Stops a run that goes wrong, with a message that says why and what to change.

:class:`DivergenceGuard` tells when training diverges before the loss overflows; :func:`nan_message`
explains a non-finite loss (NaN/inf inputs in the batch, or a step size too large).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from transferkit.engine.config import TrainConfig


class DivergenceGuard:
    """Tells when training diverges, before the loss overflows to inf/NaN.

    Two signs, both relative to where the run started (kept in the checkpoint, so a resumed run
    compares with the same start): a step's total loss more than ``factor`` times the first step's
    in magnitude, the first counted as at least 1 (terms that start near 0, such as L2-SP's or
    a distillation term's, would make any rise look huge); or the model's weight norm more than
    ``factor`` times its start. Non-finite weights are always a problem, even with ``factor=None``.

    Attributes:
        loss0: The first step's total loss. ``norm0``: the model's weight norm before training.
        peak_loss_ratio, peak_norm_ratio: The largest ratios seen by this fit (diagnostics).
    """

    def __init__(self, factor: float | None) -> None:
        self.factor = factor
        self.loss0: float | None = None
        self.norm0: float | None = None
        self.peak_loss_ratio = 0.0
        self.peak_norm_ratio = 0.0
        self._frozen: dict[int, float] = {}  # norms of parameters that don't train, by id

    def start(self, model: nn.Module) -> None:
        """Record the weight norm to compare with (unless a resumed checkpoint brought it)."""
        if self.norm0 is None:
            self.norm0 = weight_norm(model)

    def loss_problem(self, value: float) -> str | None:
        """What is wrong with a step's finite total loss ``value``, or ``None``."""
        if self.loss0 is None:
            self.loss0 = value
        scale = max(abs(self.loss0), 1.0)
        ratio = abs(value) / scale
        self.peak_loss_ratio = max(self.peak_loss_ratio, ratio)
        if self.factor is None or ratio <= self.factor:
            return None
        return (f"the total loss reached {value:.3g}, over {self.factor:g}x the first step's "
                f"{self.loss0:.3g} (counted as at least 1)")

    def weight_problem(self, model: nn.Module) -> str | None:
        """What is wrong with the model's weights, or ``None``."""
        norm = weight_norm(model, self._frozen)
        if not math.isfinite(norm):
            return "the weights hold NaN/inf values"
        ratio = norm / self.norm0 if self.norm0 else 0.0
        self.peak_norm_ratio = max(self.peak_norm_ratio, ratio)
        if self.factor is None or ratio <= self.factor:
            return None
        return (f"the weights' norm grew from {self.norm0:.3g} to {norm:.3g}, over "
                f"{self.factor:g}x")

    def state_dict(self) -> dict[str, float | None]:
        return {"loss0": self.loss0, "norm0": self.norm0}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loss0, self.norm0 = state.get("loss0"), state.get("norm0")


def weight_norm(model: nn.Module, frozen: dict[int, float] | None = None) -> float:
    """The L2 norm of all the model's parameters (in float64, so 1e30-sized weights don't overflow).

    Args:
        frozen: A cache of the norms of parameters that do not train (``requires_grad`` False),
            by ``id``: they can't have changed since they were cached, so a frozen backbone is
            measured once, not every epoch. A parameter seen training is measured again.
    """
    norms = []
    with torch.no_grad():
        for p in model.parameters():
            if frozen is not None and not p.requires_grad and id(p) in frozen:
                norms.append(frozen[id(p)])
                continue
            n = float(torch.linalg.vector_norm(p.detach(), dtype=torch.float64))
            if frozen is not None:
                if p.requires_grad:
                    frozen.pop(id(p), None)
                else:
                    frozen[id(p)] = n
            norms.append(n)
    return math.sqrt(math.fsum(n * n for n in norms))


def nan_message(
    where: str,
    names: Sequence[str],
    values: Sequence[torch.Tensor],
    inputs: Sequence[tuple[str, Any]],
    config: TrainConfig,
    kept: str = "",
) -> str:
    """Says which terms went non-finite and why: the batch's inputs when they hold NaN/inf,
    else the step size (or inputs too large for the model).

    Args:
        where: ``"epoch 3, step 7"``.
        names, values: The loss terms.
        inputs: ``(dataset name, batch inputs)`` of the step (tensors or dicts of tensors).
        config: The run's config (learning rate and clipping are named in the advice).
        kept: Where the last good checkpoint is (appended as is).
    """
    pairs = zip(names, values, strict=True)
    terms = ", ".join(f"{n}={float(v.detach()):.4g}" for n, v in pairs)
    head = f"the loss became non-finite at {where} ({terms})"
    largest = 0.0
    for name, x in inputs:
        for t in (x.values() if isinstance(x, dict) else [x]):
            if not t.is_floating_point():
                continue
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return (
                    f"{head}: this batch of {name!r} holds {bad} NaN/inf input value(s); "
                    f"remove or impute them before training{kept}"
                )
            if t.numel():
                largest = max(largest, float(t.abs().max()))
    return (
        f"{head}; lower the learning rate (lr={config.lr:g}) or set grad_clip (now "
        f"{config.grad_clip}), or, if the inputs are far from unit scale (largest |x| in "
        f"this batch: {largest:.3g}), normalise them{kept}"
    )


def divergence_message(where: str, problem: str, config: TrainConfig, kept: str = "") -> str:
    """The message of a :class:`~transferkit.errors.TrainingError` for a diverged run."""
    allow = ""
    if config.divergence_factor is not None and "NaN" not in problem:
        allow = (f"; if this is expected, raise divergence_factor (now "
                 f"{config.divergence_factor:g}) or set it to None")
    return (
        f"training diverged at {where}: {problem}; lower the learning rate (lr={config.lr:g}) "
        f"or set grad_clip (now {config.grad_clip}){kept}{allow}"
    )


__all__ = ["DivergenceGuard", "divergence_message", "nan_message", "weight_norm"]
