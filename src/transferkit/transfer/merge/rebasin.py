"""Git Re-Basin: permute a model's hidden units to match another's before merging (Ainsworth, Hayase &
Srinivasa, 2023, "Git Re-Basin: merging models modulo permutation symmetries", ICLR).

Two networks trained from different initialisations compute the same functions with their hidden units
in different orders; averaging them unit by unit mixes unrelated units. Permuting one model's units (the
output rows of a layer, the matching input columns of the next, the BatchNorm entries between) changes
nothing it computes, and can bring it into the other's basin:

* **weight matching** (:func:`weight_matching`): coordinate descent over the layers' permutations, each
  step a linear assignment maximising ``sum_l <W_l^a, P_l W_l^b P_{l-1}^T>`` (the paper's Algorithm 1);
* **activation matching** (:func:`activation_matching`): per layer, the assignment maximising the
  correlation of the two models' unit activations on a few batches.

:func:`permutation_spec` reads which tensors share a permutation from the backbone's structure: chains
(``nn.Sequential``, nested) of ``Linear`` / ``Conv2d`` layers with ``BatchNorm`` / ``LayerNorm``,
elementwise activations, dropout, pooling and ``Flatten`` between them (the ``mlp`` and ``small_cnn``
models, and user models built the same way). Anything else (a residual block, attention) is refused with
the reason: aligning a residual stream needs one permutation shared by every block that writes to it.
:func:`loss_barrier` measures the loss and accuracy along the straight line between two models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from transferkit.errors import ConfigError, ShapeError
from transferkit.models.base import TransferNet
from transferkit.models.heads import TaskHeads
from transferkit.transfer.merge.base import copy_model, recompute_batchnorm

__all__ = ["PermutationSpec", "activation_matching", "align_models", "apply_permutation", "loss_barrier",
           "permutation_spec", "weight_matching"]

_PASS_THROUGH = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Mish,
                 nn.Hardswish, nn.ReLU6, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class Group:
    """One permutation: ``size`` hidden units; ``axes``: (state key, axis, block) entries it permutes
    (``block > 1``: the axis holds ``size`` blocks of ``block`` entries, a flattened feature map);
    ``tap``: the module whose output shows these units (for activation matching)."""

    name: str
    size: int
    axes: list[tuple[str, int, int]] = field(default_factory=list)
    tap: str = ""


@dataclass
class PermutationSpec:
    """The permutations a model's hidden units admit, input side first (see :func:`permutation_spec`)."""

    groups: list[Group]


def _refuse(name: str, module: nn.Module, why: str) -> ShapeError:
    return ShapeError(
        f"cannot align hidden units through {name!r} ({type(module).__name__}): {why}. Re-Basin alignment "
        "handles chains of Linear / Conv2d layers with BatchNorm, LayerNorm, elementwise activations, "
        "dropout, pooling and Flatten between them (nested nn.Sequential backbones such as mlp and "
        "small_cnn); merge models fine-tuned from one source instead (no alignment needed), or align=None")


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        out = []
        for name, child in module.named_children():
            out += _leaves(child, f"{prefix}.{name}")
        return out
    if len(list(module.children())) and not isinstance(module, _PASS_THROUGH):
        raise _refuse(prefix, module, "a module with its own forward (residual or otherwise branching "
                                      "structure), whose units this alignment cannot follow")
    return [(prefix, module)]


def permutation_spec(model: TransferNet) -> PermutationSpec:
    """Which tensors of ``model``'s state share each hidden-unit permutation (the backbone's layers and
    the heads' input columns).

    Raises:
        ShapeError: the backbone is not a chain this alignment can follow (the message says which module
            and why).
    """
    groups: list[Group] = []
    current: Group | None = None
    block = 1  # entries per unit on the next layer's input axis; -1 after a Flatten (read from its width)
    for name, mod in _leaves(model.backbone, "backbone"):
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                raise _refuse(name, mod, "grouped convolutions mix units in groups")
            if current is not None:
                current.axes.append((f"{name}.weight", 1, _block(name, mod, current, block,
                                                                 int(mod.weight.shape[1]))))
            current = Group(name, int(mod.weight.shape[0]), [(f"{name}.weight", 0, 1)], tap=name)
            if mod.bias is not None:
                current.axes.append((f"{name}.bias", 0, 1))
            groups.append(current)
            block = 1
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            if current is None or block != 1:
                raise _refuse(name, mod, "a normalisation before any Linear / Conv2d layer or after Flatten")
            if isinstance(mod, nn.LayerNorm) and tuple(mod.normalized_shape) != (current.size,):
                raise _refuse(name, mod, "a LayerNorm over more than the units' axis")
            for key in ("weight", "bias", "running_mean", "running_var"):
                if getattr(mod, key, None) is not None:
                    current.axes.append((f"{name}.{key}", 0, 1))
            current.tap = name
        elif isinstance(mod, nn.Flatten):
            block = -1
        elif isinstance(mod, _PASS_THROUGH):
            if current is not None and block == 1:
                current.tap = name
        else:
            raise _refuse(name, mod, "a layer whose effect on the units' order is unknown")
    if current is None:
        raise ShapeError("the backbone has no Linear or Conv2d layer: nothing to align")
    heads = model.head.heads.items() if isinstance(model.head, TaskHeads) else [("", model.head)]
    for task, head in heads:
        prefix = f"head.heads.{task}" if task else "head"
        if not isinstance(head, nn.Linear):
            raise _refuse(prefix, head, "the head is not a Linear layer")
        current.axes.append((f"{prefix}.weight", 1, _block(prefix, head, current, block, head.in_features)))
    return PermutationSpec(groups)


def _block(name: str, mod: nn.Module, current: Group, block: int, width: int) -> int:
    """Entries per unit of ``current`` on ``mod``'s input axis of ``width`` entries."""
    if block == -1 and width % current.size == 0:
        return width // current.size
    if width != current.size * block:
        raise _refuse(name, mod, f"it takes {width} inputs where {current.size} units"
                                 f"{'' if block == 1 else f' x {block}'} were expected")
    return block


def _flat_along(tensor: torch.Tensor, axis: int, size: int, block: int) -> torch.Tensor:
    """``tensor`` with the permuted axis first, as ``(size, everything else)``."""
    t = tensor.movedim(axis, 0)
    return t.reshape(size, -1) if block == 1 else t.reshape(size, block, *t.shape[1:]).reshape(size, -1)


def _permute_axis(tensor: torch.Tensor, axis: int, perm: torch.Tensor, block: int) -> torch.Tensor:
    if block == 1:
        return tensor.index_select(axis, perm)
    t = tensor.movedim(axis, 0)
    shape = t.shape
    t = t.reshape(len(perm), block, *shape[1:]).index_select(0, perm).reshape(shape)
    return t.movedim(0, axis)


def apply_permutation(state: dict[str, torch.Tensor], spec: PermutationSpec,
                      perms: Sequence[torch.Tensor], skip: int | None = None) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with each group's permutation applied to its axes (group ``skip`` left out)."""
    out = dict(state)
    for i, (group, perm) in enumerate(zip(spec.groups, perms, strict=True)):
        if i == skip:
            continue
        for key, axis, block in group.axes:
            out[key] = _permute_axis(out[key], axis, perm, block)
    return out


def _assign(score: torch.Tensor) -> torch.Tensor:
    _, cols = linear_sum_assignment(score.double().numpy(), maximize=True)
    return torch.as_tensor(cols, dtype=torch.long)


def weight_matching(reference: TransferNet, model: TransferNet, *, max_iter: int = 100,
                    seed: int = 0) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The permutations of ``model``'s units that best match ``reference``'s weights (Algorithm 1 of
    Ainsworth et al.: coordinate descent, layers in random order, until no permutation changes).

    Returns:
        One permutation per group (``model``'s unit ``perm[i]`` goes to position ``i``) and a record:
        iterations, and the cosine similarity of the permuted tensors before and after.
    """
    spec = permutation_spec(reference)
    ref = {k: v.detach().float().cpu() for k, v in reference.state_dict().items()}
    other = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    perms = [torch.arange(g.size) for g in spec.groups]
    rng = np.random.default_rng(seed)
    iterations = 0
    for _ in range(max_iter):
        iterations += 1
        changed = False
        for gi in rng.permutation(len(spec.groups)):
            group = spec.groups[gi]
            permuted = apply_permutation(other, spec, perms, skip=int(gi))
            score = torch.zeros(group.size, group.size, dtype=torch.float64)
            for key, axis, block in group.axes:
                a = _flat_along(ref[key], axis, group.size, block).double()
                b = _flat_along(permuted[key], axis, group.size, block).double()
                score += a @ b.T
            new = _assign(score)
            old_score = float(score[torch.arange(group.size), perms[gi]].sum())
            new_score = float(score[torch.arange(group.size), new].sum())
            if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
                perms[gi], changed = new, True
        if not changed:
            break
    keys = sorted({key for g in spec.groups for key, _, _ in g.axes})
    record = {"how": "weight", "groups": len(spec.groups), "iterations": iterations,
              "similarity_before": _cosine(ref, other, keys),
              "similarity_after": _cosine(ref, apply_permutation(other, spec, perms), keys)}
    return perms, record


def _cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: Sequence[str]) -> float:
    va = torch.cat([a[k].reshape(-1).double() for k in keys])
    vb = torch.cat([b[k].reshape(-1).double() for k in keys])
    return float(F.cosine_similarity(va, vb, dim=0))


@torch.no_grad()
def _unit_activations(model: TransferNet, spec: PermutationSpec, inputs: torch.Tensor,
                      batch_size: int = 256) -> list[torch.Tensor]:
    modules = dict(model.named_modules())
    found: dict[str, list[torch.Tensor]] = {g.tap: [] for g in spec.groups}

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def hook(_m, _i, out):  # type: ignore[no-untyped-def]
            units = out.movedim(1, -1).reshape(-1, out.shape[1]) if out.ndim > 2 else out
            found[name].append(units.double().cpu())
        return hook

    handles = [modules[g.tap].register_forward_hook(hook_for(g.tap)) for g in spec.groups]
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start:start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return [torch.cat(found[g.tap]) for g in spec.groups]


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    za = (a - a.mean(0)) / (a.std(0) + 1e-8)
    zb = (b - b.mean(0)) / (b.std(0) + 1e-8)
    return za.T @ zb / max(1, len(a) - 1)


def _mean(values: torch.Tensor, where: torch.Tensor) -> float:
    return float(values[where].mean()) if bool(where.any()) else 0.0


def activation_matching(reference: TransferNet, model: TransferNet,
                        inputs: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The permutations of ``model``'s units that best correlate with ``reference``'s on ``inputs``
    (each layer's linear assignment on the correlation of its units' activations; for feature maps,
    every position is an observation). Returns the permutations and a record with the mean matched
    correlation per layer before and after (over the units that vary on ``inputs``)."""
    if inputs is None or len(inputs) < 2:
        raise ConfigError("activation matching needs input examples (align_data=, at least 2; a few hundred "
                          "is typical)")
    spec = permutation_spec(reference)
    acts_a = _unit_activations(reference, spec, inputs)
    acts_b = _unit_activations(model, spec, inputs)
    perms, before, after = [], [], []
    for a, b in zip(acts_a, acts_b, strict=True):
        corr = _correlation(a, b)
        perm = _assign(corr)
        perms.append(perm)
        live_a, live_b = a.std(0) > 0, b.std(0) > 0  # units that never vary (dead ReLUs) match anything
        idx = torch.arange(len(perm))
        before.append(_mean(corr[idx, idx], live_a | live_b))
        after.append(_mean(corr[idx, perm], live_a | live_b[perm]))
    return perms, {"how": "activation", "groups": len(spec.groups), "examples": len(inputs),
                   "correlation_before": before, "correlation_after": after}


def align_models(models: Sequence[TransferNet], names: Sequence[str], *, how: str,
                 data: torch.Tensor | None = None) -> tuple[list[TransferNet], list[dict[str, Any]]]:
    """Permuted copies of ``models[1:]`` matching ``models[0]`` (which is returned as it is), and one
    record per aligned model. ``how``: ``"weight"`` or ``"activation"`` (``data``: input examples)."""
    if how not in ("weight", "activation"):
        raise ConfigError(f"align must be 'weight' or 'activation' (or None), got {how!r}")
    reference = models[0]
    spec = permutation_spec(reference)
    out, records = [reference], []
    for model, name in zip(models[1:], names[1:], strict=True):
        perms, record = (weight_matching(reference, model) if how == "weight"
                         else activation_matching(reference, model, data))
        aligned = copy_model(model)
        aligned.load_state_dict(apply_permutation(aligned.state_dict(), spec, perms))
        out.append(aligned)
        records.append({"model": name, "to": names[0], **record})
    return out, records


def _interpolate(a: TransferNet, b: TransferNet, t: float, into: TransferNet) -> TransferNet:
    sa, sb = a.state_dict(), b.state_dict()
    into.load_state_dict({k: (1 - t) * v + t * sb[k] if v.is_floating_point() else v for k, v in sa.items()})
    return into


@torch.no_grad()
def loss_barrier(model_a: TransferNet, model_b: TransferNet, data: Any, *, steps: int = 11,
                 batchnorm_data: torch.Tensor | None = None) -> dict[str, Any]:
    """Loss and accuracy on ``data`` (a TensorDataset) at ``steps`` points of ``(1 - t) theta_a + t theta_b``.

    The barrier is the largest rise of the loss above the straight line between the ends,
    ``max_t L(t) - ((1 - t) L(0) + t L(1))`` (Frankle et al., 2020; Ainsworth et al., 2023), and likewise
    the accuracy's largest drop below its line. ``batchnorm_data``: recompute BatchNorm statistics at
    every point (needed for models with BatchNorm).
    """
    from transferkit.evaluation.metrics import _model_device

    if steps < 2:
        raise ConfigError(f"steps must be >= 2, got {steps!r}")
    probe = copy_model(model_a)
    device = _model_device(model_a)
    ts = [i / (steps - 1) for i in range(steps)]
    losses, accs = [], []
    for t in ts:
        _interpolate(model_a, model_b, t, probe)
        if batchnorm_data is not None:
            recompute_batchnorm(probe, batchnorm_data)
        probe.eval()
        total, correct, n = 0.0, 0, 0
        for start in range(0, len(data), 512):
            x = data.x[start:start + 512].to(device)
            y = data.y[start:start + 512].to(device)
            logits = probe(x)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
        losses.append(total / n)
        accs.append(correct / n)
    loss_line = [(1 - t) * losses[0] + t * losses[-1] for t in ts]
    acc_line = [(1 - t) * accs[0] + t * accs[-1] for t in ts]
    return {"t": ts, "loss": losses, "accuracy": accs,
            "loss_barrier": max(v - line for v, line in zip(losses, loss_line, strict=True)),
            "accuracy_barrier": max(line - v for v, line in zip(accs, acc_line, strict=True))}
