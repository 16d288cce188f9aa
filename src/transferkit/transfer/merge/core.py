"""The front door of merging: :func:`merge` several models into one, with a :class:`MergeResult`."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.models.base import TransferNet
from transferkit.models.heads import TaskHeads, set_task_heads
from transferkit.transfer.merge.base import (
    MERGE_METHODS,
    MergeMethod,
    check_mergeable,
    copy_model,
    head_modules,
    recompute_batchnorm,
)

__all__ = ["MergeResult", "merge"]

HEADS = ("auto", "merge", "keep")


@dataclass
class MergeResult:
    """What :func:`merge` made.

    Attributes:
        model: The merged model: one head (``heads == "merged"``) or one head per input's task
            (``"kept"``, a :class:`~transferkit.models.TaskHeads` named after the inputs).
        method: The merge method's registered name.
        options: Its options, defaults filled in.
        names: The inputs' names, in order.
        weights: One weight per input.
        heads: ``"merged"`` or ``"kept"``.
        alignment: Per aligned input, what the permutation alignment did (``None``: not aligned).
        details: Method-specific record (a greedy soup's accuracies and chosen inputs; the Fisher's
            examples).
        aligned: With alignment, the inputs as they were merged (the first as given, the others
            permuted to match it); ``None`` otherwise.
    """

    model: TransferNet
    method: str
    options: dict[str, Any]
    names: list[str]
    weights: list[float]
    heads: str
    alignment: list[dict[str, Any]] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    aligned: list[TransferNet] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "options": dict(self.options), "names": list(self.names),
                "weights": list(self.weights), "heads": self.heads, "alignment": self.alignment,
                "details": self.details}


def _named(models: Sequence[TransferNet] | Mapping[str, TransferNet],
           names: Sequence[str] | None) -> tuple[list[TransferNet], list[str]]:
    if isinstance(models, Mapping):
        if names is not None:
            raise ConfigError("give the models' names either as the mapping's keys or as names=, not both")
        names, models = list(models), list(models.values())
    models = list(models)
    if names is None:
        names = [f"model{i + 1}" for i in range(len(models))]
    names = [str(n) for n in names]
    if len(names) != len(models):
        raise ConfigError(f"got {len(names)} names for {len(models)} models; give one name per model")
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must differ, got {names}")
    return models, names


def _weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    w = list(weights)
    if len(w) != count or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                  and math.isfinite(v) for v in w):
        raise ConfigError(f"weights must be {count} finite numbers (one per model), got {weights!r}")
    return [float(v) for v in w]


def _head_shapes(models: Sequence[TransferNet]) -> set[tuple[Any, ...]]:
    shapes = set()
    for m in models:
        if isinstance(m.head, TaskHeads):
            shapes.add(("multi",))
        else:
            shapes.add(tuple((k, tuple(v.shape)) for k, v in m.head.state_dict().items()))
    return shapes


def _decide_heads(heads: str, spec: MergeMethod, models: Sequence[TransferNet], method: str) -> bool:
    """True when the heads are merged with the rest."""
    if heads not in HEADS:
        raise ConfigError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")
    shapes = _head_shapes(models)
    same = len(shapes) == 1 and ("multi",) not in shapes
    if heads == "merge" and not same:
        raise ConfigError("heads='merge' needs single heads of one shape in every model; these differ "
                          "(each model's task has its own classes): use heads='keep' (one head per task)")
    merged = same and spec.merges_heads if heads == "auto" else heads == "merge"
    if spec.needs_data == "validation" and not merged:
        raise ConfigError(f"{method!r} averages models of one task: their heads must be merged (single heads "
                          "of one shape, heads='auto' or 'merge')")
    return merged


def _kept_heads(models: Sequence[TransferNet], names: Sequence[str]) -> dict[str, nn.Module]:
    heads: dict[str, nn.Module] = {}
    for model, name in zip(models, names, strict=True):
        for task, head in head_modules(model, name).items():
            if task in heads:
                raise ConfigError(f"two inputs have a task named {task!r}; name the models apart "
                                  "(names= / --name)")
            heads[task] = copy.deepcopy(head)
    return heads


def merge(
    models: Sequence[TransferNet] | Mapping[str, TransferNet],
    method: str = "average",
    *,
    base: TransferNet | None = None,
    weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    heads: str = "auto",
    data: Any = None,
    align: str | None = None,
    align_data: torch.Tensor | None = None,
    batchnorm_data: torch.Tensor | None = None,
    **options: Any,
) -> MergeResult:
    """Merge several models of one architecture into one.

    Args:
        models: The models (a list, or a mapping name -> model).
        method: A name in :data:`~transferkit.transfer.merge.MERGE_METHODS`: ``average`` (weighted; equal
            weights = uniform soup), ``greedy_soup``, ``task_arithmetic``, ``ties``, ``dare``,
            ``dare_ties``, ``fisher``.
        base: The model the inputs were fine-tuned from (task-vector methods need it; the others refuse it).
        weights: One weight per model (default: all 1).
        names: The models' names (default ``model1``, ``model2``, ...): the kept heads' task names.
        heads: ``"auto"`` (merge heads of one shape for averaging methods; keep one head per model
            otherwise and for task-vector methods), ``"merge"`` or ``"keep"``.
        data: ``greedy_soup``: the shared task's validation :class:`~transferkit.data.TensorDataset`;
            ``fisher``: one dataset per model (a list in the models' order, or a mapping by name).
        align: ``None``, ``"weight"`` or ``"activation"``: permute each model's hidden units to match the
            first model's before merging (Git Re-Basin; models trained from different initialisations).
        align_data: Inputs for ``align="activation"`` (a few batches).
        batchnorm_data: Inputs to recompute the merged model's BatchNorm statistics on (recommended after
            merging or aligning models with BatchNorm).
        **options: The method's options (``scale``, ``density``, ``seed``, ...); others are refused.

    Returns:
        A :class:`MergeResult`; the inputs are left unchanged.

    Raises:
        ConfigError: unknown method or option, a missing base or data, bad weights or names.
        ShapeError: the models' architectures differ.
    """
    spec = MERGE_METHODS.get(method)
    method = MERGE_METHODS.name_of(spec) or method
    models, names = _named(models, names)
    if len(models) < (1 if spec.needs_base else 2):
        raise ConfigError(f"merge method {method!r} needs at least {1 if spec.needs_base else 2} models, "
                          f"got {len(models)}")
    opts = spec.check_options(method, options)
    w = _weights(weights, len(models))
    if spec.needs_base and base is None:
        raise ConfigError(f"merge method {method!r} works on task vectors (model - base): pass base= (the "
                          "model the inputs were fine-tuned from; --base on the command line)")
    if not spec.needs_base and base is not None:
        raise ConfigError(f"merge method {method!r} takes no base model; task_arithmetic, ties, dare and "
                          "dare_ties do")
    if spec.needs_data == "validation" and weights is not None:
        raise ConfigError(f"{method!r} averages its chosen models uniformly: drop weights=")
    merged_heads = _decide_heads(heads, spec, models, method)
    keys = check_mergeable(models, names, merged_heads, base)  # before aligning: a clear message first
    alignment = None
    if align is not None:
        from transferkit.transfer.merge.rebasin import align_models

        models, alignment = align_models(models, names, how=align, data=align_data)
    details: dict[str, Any] = {}
    extras = _method_extras(spec, method, models, names, data, opts, details)
    chosen = list(range(len(models)))
    if spec.needs_data == "validation":
        chosen = _choose_soup(models, names, keys, data, details)
    use = [models[i] for i in chosen]
    use_w = torch.tensor([w[i] for i in chosen], dtype=torch.float64)
    generator = torch.Generator().manual_seed(int(opts["seed"])) if "seed" in opts else None
    state = _combine(spec, use, keys, base, use_w, opts, generator,
                     {k: v[chosen] for k, v in extras.items()} if extras else None)
    out = copy_model(base if base is not None else models[0])
    class_names = [m.info.class_names for m in models]
    same = all(n == class_names[0] for n in class_names)
    out.info.class_names = class_names[0] if merged_heads and same else None
    if not merged_heads:
        set_task_heads(out, _kept_heads(models, names))
    own = out.state_dict()
    own.update(state)
    out.load_state_dict(own)
    if batchnorm_data is not None:
        details["batchnorm_layers_reset"] = recompute_batchnorm(out, batchnorm_data)
    out.info.source = f"merge:{method}({', '.join(names)})"
    return MergeResult(out, method, opts, names, w, "merged" if merged_heads else "kept", alignment, details,
                       aligned=list(models) if alignment is not None else None)


def _combine(spec: MergeMethod, models: Sequence[TransferNet], keys: Sequence[str], base: TransferNet | None,
             weights: torch.Tensor, opts: Mapping[str, Any], generator: torch.Generator | None,
             extras: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    states = [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in models]
    base_state = {k: v.detach().cpu() for k, v in base.state_dict().items()} if base is not None else None
    call_opts = {k: v for k, v in opts.items()}
    if generator is not None:
        call_opts["generator"] = generator
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        stack = torch.stack([s[k] for s in states])
        if not stack.is_floating_point():  # counters (BatchNorm's num_batches_tracked)
            out[k] = (base_state or states[0])[k].clone()
            continue
        kw = dict(call_opts)
        if spec.needs_data == "task":
            kw["fisher"] = extras.get(k) if extras else None
        out[k] = spec.combine(stack, base_state[k] if base_state is not None else None, weights, **kw)
        out[k] = out[k].to(states[0][k].dtype)
    return out


def _by_name(data: Any, names: Sequence[str], what: str) -> list[Any]:
    if isinstance(data, Mapping):
        missing = [n for n in names if n not in data]
        if missing:
            raise ConfigError(f"{what}: no data for {', '.join(missing)}; give one dataset per model")
        return [data[n] for n in names]
    if not isinstance(data, Sequence) or len(data) != len(names):
        raise ConfigError(f"{what} needs one dataset per model ({len(names)}), in the models' order or "
                          "by name")
    return list(data)


def _method_extras(spec: MergeMethod, method: str, models: Sequence[TransferNet], names: Sequence[str],
                   data: Any, opts: Mapping[str, Any], details: dict[str, Any]) -> dict[str, torch.Tensor]:
    if spec.needs_data is None:
        if data is not None:
            raise ConfigError(f"merge method {method!r} reads no data; fisher and greedy_soup do")
        return {}
    if data is None:
        which = ("one dataset per model (its own task's training data)" if spec.needs_data == "task"
                 else "the task's validation data")
        raise ConfigError(f"merge method {method!r} needs {which}: pass data=")
    if spec.needs_data != "task":
        return {}
    from transferkit.transfer.regularize.ewc import fisher_diagonal

    datasets = _by_name(data, names, f"merge method {method!r}")
    fishers = [fisher_diagonal(m, d, kind=opts["kind"], max_examples=int(opts["examples"]))
               for m, d in zip(models, datasets, strict=True)]
    details["fisher_examples"] = [min(len(d), int(opts["examples"])) for d in datasets]
    shared = set.intersection(*(set(f) for f in fishers))  # kept heads of other sizes are not merged
    return {k: torch.stack([f[k] for f in fishers]) for k in shared
            if len({tuple(f[k].shape) for f in fishers}) == 1}


def _choose_soup(models: Sequence[TransferNet], names: Sequence[str], keys: Sequence[str], data: Any,
                 details: dict[str, Any]) -> list[int]:
    from transferkit.evaluation.metrics import evaluate

    average = MERGE_METHODS.get("average")
    trial = copy_model(models[0])

    def accuracy_of(indices: Sequence[int]) -> float:  # the uniform average, as the final merge computes it
        own = trial.state_dict()
        own.update(_combine(average, [models[i] for i in indices], keys, None,
                            torch.ones(len(indices), dtype=torch.float64), {}, None, None))
        trial.load_state_dict(own)
        return float(evaluate(trial, data).accuracy)

    from transferkit.transfer.merge.soup import greedy_soup

    chosen, record = greedy_soup(len(models), accuracy_of)
    record["chosen"] = [names[i] for i in chosen]
    record["single"] = dict(zip(names, record["single"], strict=True))
    for step in record["tried"]:
        step["model"] = names[step["model"]]
    details["soup"] = record
    return chosen
