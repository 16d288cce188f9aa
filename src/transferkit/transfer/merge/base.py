"""What every merge method shares: the method table, checks that models can be merged, and heads.

A merge method combines the same tensor of several models (stacked: ``(M, ...)``) into one, optionally
against a base model's tensor; it is registered in :data:`MERGE_METHODS` as a :class:`MergeMethod`.
The front door, :func:`transferkit.transfer.merge.merge`, applies it to every floating-point tensor of
the models' shared part (the backbone; the heads too when they are merged) and keeps each model's head
when the heads are kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError, ShapeError
from transferkit.models.base import TransferNet
from transferkit.models.heads import TaskHeads
from transferkit.registry import Registry

__all__ = ["MERGE_METHODS", "MergeMethod", "check_mergeable", "head_modules", "recompute_batchnorm"]

# combine(stack (M, ...), base tensor or None, weights (M,), **options) -> merged tensor
Combine = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class MergeMethod:
    """A registered way to merge models.

    Attributes:
        combine: ``combine(stack, base, weights, **options) -> tensor``: the models' tensors stacked on
            dim 0, the base model's tensor (``None`` when the method takes no base), one weight per model.
        summary: One line for ``transferkit merge --help`` and reports.
        options: Option name -> default; anything else is refused with the list of these.
        needs_base: The method works on task vectors ``theta_i - theta_base``: a base model is required.
        needs_data: ``"task"``: one dataset per model (its task; Fisher merging); ``"validation"``: one
            validation set of the shared task (greedy soups); ``None``: no data.
        merges_heads: Whether heads of one shape are merged like the rest by default (averages) or
            always kept, one per model (task-vector methods: each model's head belongs to its task).
        reference: The paper.
    """

    combine: Combine
    summary: str
    options: dict[str, Any] = field(default_factory=dict)
    needs_base: bool = False
    needs_data: str | None = None
    merges_heads: bool = True
    reference: str = ""

    def check_options(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(f"merge method {name!r} has no option {', '.join(map(repr, unknown))}; "
                              f"its options: {allowed}")
        return {**self.options, **options}


MERGE_METHODS: Registry[MergeMethod] = Registry(
    "merge method",
    modules=("transferkit.transfer.merge.average", "transferkit.transfer.merge.task_arithmetic",
             "transferkit.transfer.merge.ties", "transferkit.transfer.merge.dare",
             "transferkit.transfer.merge.fisher", "transferkit.transfer.merge.soup"),
)


def check_probability(name: str, value: Any, *, low_open: bool = True) -> float:
    """``value`` as a float in (0, 1] (``low_open``) or [0, 1]; a ConfigError naming ``name`` otherwise."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    v = float(value) if ok else float("nan")
    if not ok or not ((0 < v <= 1) if low_open else (0 <= v <= 1)):
        rng = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(f"{name} must be a number in {rng}, got {value!r}")
    return v


def head_modules(model: TransferNet, name: str) -> dict[str, nn.Module]:
    """A model's heads by task name: its own tasks for a multi-head model, else ``{name: head}``."""
    if isinstance(model.head, TaskHeads):
        return dict(model.head.heads.items())
    return {name: model.head}


def _shared_keys(model: TransferNet, with_heads: bool) -> list[str]:
    return [k for k in model.state_dict() if with_heads or not k.startswith("head.")]


def check_mergeable(models: Sequence[TransferNet], names: Sequence[str], with_heads: bool,
                    base: TransferNet | None = None) -> list[str]:
    """The state keys every model shares with the same shapes (the part to merge), or a ShapeError
    naming the first model and tensor that differ."""
    for model, name in zip(models, names, strict=True):
        if not isinstance(model, TransferNet):
            raise ConfigError(f"merge takes TransferNet models; {name!r} is a {type(model).__name__} "
                              "(wrap it with transferkit.models.wrap_model)")
    ref, ref_name = (base, "the base model") if base is not None else (models[0], repr(names[0]))
    keys = _shared_keys(ref, with_heads)
    ref_state = ref.state_dict()
    for model, name in zip(models, names, strict=True):
        if model is ref:
            continue
        state = model.state_dict()
        for k in keys:
            if k not in state or state[k].shape != ref_state[k].shape:
                found = "has no such tensor" if k not in state else f"has shape {tuple(state[k].shape)}"
                raise ShapeError(
                    f"cannot merge {name!r} with {ref_name}: tensor {k!r} is {tuple(ref_state[k].shape)} "
                    f"there and {name!r} {found}; merge models of one architecture (to move weights between "
                    "different ones use transferkit.transfer.transfer_parameters)")
        extra = [k for k in _shared_keys(model, with_heads) if k not in ref_state]
        if extra:
            raise ShapeError(f"cannot merge {name!r} with {ref_name}: {name!r} has tensors the other lacks "
                             f"(e.g. {extra[0]!r}); merge models of one architecture")
    return keys


def copy_model(model: TransferNet) -> TransferNet:
    """A deep copy (the tokenizer, if any, shared rather than copied)."""
    tokenizer, model.tokenizer = model.tokenizer, None
    try:
        out = copy.deepcopy(model)
    finally:
        model.tokenizer = tokenizer
    out.tokenizer = tokenizer
    return out


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 256) -> int:
    """Recompute every BatchNorm layer's running statistics of ``model`` from ``inputs`` (forward passes
    in train mode, no gradient, cumulative averages); returns the number of layers reset (0: none).

    A merged or interpolated model's averaged running statistics do not describe its own activations
    (the variance of an average is not the average of variances); this resets them, as is done before
    measuring the loss barrier between models (Ainsworth et al., 2023; Jordan et al., 2023, REPAIR).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or len(inputs) == 0:
        return 0
    saved = [(m, m.momentum) for m in layers]
    was = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
        model.train()
        for start in range(0, len(inputs), batch_size):
            model(inputs[start:start + batch_size].to(device))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was)
    return len(layers)
