"""Freezing strategies and optimiser parameter groups.

Every :class:`~transferkit.models.TransferNet` has the same three parts, and the backbone's direct
children, in order, are its blocks. So the strategies are generic:

* ``full``: everything trains; the backbone at ``lr * backbone_lr_scale``, optionally with
  per-layer decay (block ``i`` counted from the head trains at
  ``lr * backbone_lr_scale * layer_decay**i``, as in BEiT, Bao et al., 2022);
  ``backbone_lr_scale == 0`` freezes the backbone.
* ``linear_probe``: the backbone is frozen and kept in eval mode (no BatchNorm statistics updates,
  no dropout); only the head trains.
* ``gradual``: only the head trains at first; every ``unfreeze_every`` epochs one more backbone
  block, from the top, is unfrozen (ULMFiT, Howard & Ruder, 2018). Frozen blocks stay in eval mode.
* ``lora``: every backbone weight is frozen and only the adapters that
  :mod:`~transferkit.engine.parameter_efficient` puts on its Linear/Conv layers train (at ``lr``;
  ``layer_decay`` applies per block), with the head. The backbone stays in train mode (dropout,
  the adapters' dropout) except its BatchNorm layers, which keep their statistics: the base model
  does not change at all, so the adapters alone carry what was learnt.

:func:`count_parameters` counts what trains (after :func:`apply_strategy`).

Optimiser groups hold every parameter from the start (frozen ones simply get no gradient, and the
optimisers skip parameters without one), so unfreezing never needs a new optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from transferkit.engine.config import TrainConfig
from transferkit.errors import ConfigError
from transferkit.models.surgery import backbone_blocks


def _loose_backbone_params(model: nn.Module) -> list[nn.Parameter]:
    """Backbone parameters that belong to no block (registered on the backbone itself)."""
    if not list(model.backbone.named_children()):
        return []
    in_blocks = {id(p) for _, blk in backbone_blocks(model) for p in blk.parameters()}
    return [p for p in model.backbone.parameters() if id(p) not in in_blocks]


@dataclass(frozen=True)
class ParameterCount:
    """How many of a model's parameter values train.

    Attributes:
        trainable: Values of parameters with ``requires_grad``.
        total: Values of all parameters (under ``lora`` the frozen base and the adapters).
    """

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        """``trainable / total`` (0 for a model without parameters)."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} of {self.total:,} ({100 * self.fraction:.1f}%)"

    def to_dict(self) -> dict[str, int]:
        """``{"trainable_params": ..., "total_params": ...}``, as in the fit's history rows."""
        return {"trainable_params": self.trainable, "total_params": self.total}


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable (``requires_grad``) and total parameter values of ``model``, each tensor once.

    After :func:`apply_strategy` this is what the strategy trains in that epoch (objectives' own
    parameters, such as a distillation regressor, are not the model's and not counted).
    """
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return ParameterCount(trainable, total)


def backbone_frozen_throughout(config: TrainConfig) -> bool:
    """Whether the backbone never trains under ``config`` (linear probe or a zero backbone lr)."""
    return config.strategy == "linear_probe" or (
        config.strategy == "full" and config.backbone_lr_scale == 0
    )


def num_unfrozen_blocks(config: TrainConfig, epoch: int, num_blocks: int) -> int:
    """How many backbone blocks (from the top) train in 0-based ``epoch``.

    ``full`` trains all (none when ``backbone_lr_scale == 0``), ``linear_probe`` none, and
    ``gradual`` ``epoch // unfreeze_every`` (capped at ``num_blocks``): head only in the first
    ``unfreeze_every`` epochs, then one more block from the top at each step. ``lora`` counts every
    block (their adapters train; their base weights never do).
    """
    if backbone_frozen_throughout(config):
        return 0
    if config.strategy in ("full", "lora"):
        return num_blocks
    return min(num_blocks, epoch // config.unfreeze_every)


def apply_strategy(model: nn.Module, config: TrainConfig, epoch: int) -> list[str]:
    """Set ``requires_grad`` and train/eval modes of ``model`` for 0-based ``epoch``.

    Puts the model in train mode, then freezes (``requires_grad=False``) and switches to eval mode
    every backbone block that does not train this epoch (and, with ``freeze_bn``, every BatchNorm
    layer of the backbone). Parameters registered directly on the
    backbone (outside its blocks) train only once every block trains.

    Under ``lora`` (the model has adapters, see :mod:`~transferkit.engine.parameter_efficient`)
    only the adapters and the parameters outside the backbone train, and the backbone's BatchNorm
    layers are in eval mode.

    Returns:
        Names of the backbone blocks that train this epoch, top first.

    Raises:
        ConfigError: ``lora`` on a model without adapters.
    """
    if config.strategy == "lora":
        return _apply_lora(model)
    blocks = backbone_blocks(model)
    n = num_unfrozen_blocks(config, epoch, len(blocks))
    model.train()
    trainable = blocks[len(blocks) - n :] if n else []
    frozen = blocks[: len(blocks) - n]
    still = {id(p) for _, block in frozen for p in block.parameters()}
    if frozen:
        still.update(id(p) for p in _loose_backbone_params(model))
    for p in model.parameters():  # only flags that change are set (a probe keeps them all epochs)
        if p.requires_grad != (id(p) not in still):
            p.requires_grad_(id(p) not in still)
    for _, block in frozen:
        block.eval()
    if config.freeze_bn:
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return [name for name, _ in reversed(trainable)]


def _apply_lora(model: nn.Module) -> list[str]:
    from transferkit.engine.parameter_efficient import adapter_parameters

    adapters = {id(p) for _, p in adapter_parameters(model)}
    if not adapters:
        raise ConfigError(
            "strategy 'lora' but the model has no adapters; Trainer.fit adds them, or call "
            "transferkit.engine.parameter_efficient.add_adapters(model, config.lora) first"
        )
    in_backbone = {id(p) for p in model.backbone.parameters()}
    model.train()
    for p in model.parameters():
        train = id(p) in adapters or id(p) not in in_backbone
        if p.requires_grad != train:
            p.requires_grad_(train)
    for module in model.backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return [name for name, block in reversed(backbone_blocks(model))
            if any(id(p) in adapters for p in block.parameters())]


def build_param_groups(
    model: nn.Module, config: TrainConfig, extra: Iterable[nn.Parameter] = ()
) -> list[dict]:
    """Optimiser parameter groups for ``model`` under ``config``, holding every parameter.

    Groups, in order: ``"head"`` (``lr``; also any parameter outside the backbone), then the
    backbone (one ``"backbone"`` group at ``lr * backbone_lr_scale``, or with ``layer_decay`` one group per
    block named ``"backbone.<block>"``, top block first at ``lr * backbone_lr_scale * decay**i``;
    under ``lora``, where only the adapters in the backbone train, ``lr`` replaces
    ``lr * backbone_lr_scale``;
    loose backbone parameters join the bottom block's group), then ``"objectives"`` (``extra``, at
    ``lr``). Each group has keys ``params``, ``lr`` and ``name``; empty groups are left out and a
    parameter shared by several places appears once.

    Args:
        model: A TransferNet (needs ``.backbone``).
        config: Training config (``lr``, ``backbone_lr_scale``, ``layer_decay``).
        extra: Trainable parameters of the objectives.
    """
    seen: set[int] = set()

    def take(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        out = []
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    backbone_ids = {id(p) for p in model.backbone.parameters()}
    head = take(p for p in model.parameters() if id(p) not in backbone_ids)
    groups: list[dict] = [{"name": "head", "params": head, "lr": config.lr}]
    base = config.lr if config.strategy == "lora" else config.lr * config.backbone_lr_scale
    blocks = backbone_blocks(model)
    if config.layer_decay is None:
        groups.append({"name": "backbone", "params": take(model.backbone.parameters()), "lr": base})
    else:
        loose = _loose_backbone_params(model)
        for i, (name, block) in enumerate(reversed(blocks)):
            params = take(block.parameters())
            if i == len(blocks) - 1:
                params += take(loose)
            groups.append({"name": name, "params": params, "lr": base * config.layer_decay**i})
    groups.append({"name": "objectives", "params": take(extra), "lr": config.lr})
    return [g for g in groups if g["params"]]


def build_optimizer(param_groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``config.optimizer`` over ``param_groups``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            param_groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Multiplier of every group's base learning rate in 0-based ``epoch``.

    Linear warm-up ``(epoch + 1) / (warmup_epochs + 1)`` for the first ``warmup_epochs`` epochs,
    then ``cosine``: ``0.5 * (1 + cos(pi * t / T))`` with ``t`` epochs since warm-up out of ``T``;
    ``step``: ``0.1 ** (t // max(1, T // 3))``; ``none``: 1.
    """
    warm = config.warmup_epochs
    if epoch < warm:
        return (epoch + 1) / (warm + 1)
    t, total = epoch - warm, max(1, config.epochs - warm)
    if config.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t / total))
    if config.scheduler == "step":
        return 0.1 ** (t // max(1, total // 3))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch scheduler applying :func:`lr_factor` to every group."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(config, e))


__all__ = [
    "ParameterCount",
    "apply_strategy",
    "backbone_blocks",
    "backbone_frozen_throughout",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "count_parameters",
    "lr_factor",
    "num_unfrozen_blocks",
]
