"""Several tasks on one backbone: a head per task.

A multi-head model is a :class:`~transferkit.models.TransferNet` whose ``head`` is a :class:`TaskHeads`:
one classifier per task over the same features, the *active* task's head answering ``forward``. Merging
models of different tasks and multi-task training both produce it; ``model.info.tasks`` records the tasks
(name -> number of classes) so a saved folder rebuilds with its heads.

* :func:`set_task_heads` turns a model into a multi-head one (new heads, or given modules);
* :func:`select_task` makes one task's head the active one (and ``info.num_classes`` its size);
* :func:`task_model` is a single-task view (shares the backbone and that head, no copy) for
  :func:`~transferkit.evaluation.evaluate` and the other single-task tools;
* :func:`task_names` lists a model's tasks (empty for a single-head model).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import nn

from transferkit.errors import ConfigError, UnknownNameError
from transferkit.models.base import TransferNet

__all__ = ["TaskHeads", "select_task", "set_task_heads", "task_model", "task_names"]


class TaskHeads(nn.Module):
    """One classifier per task over the same features; ``forward`` runs the active task's.

    Args:
        heads: Task name -> classifier (``nn.Linear(feature_dim, classes)``), in order.
        active: The task ``forward`` answers for (default: the first).
    """

    def __init__(self, heads: Mapping[str, nn.Module], active: str | None = None) -> None:
        super().__init__()
        if not heads:
            raise ConfigError("TaskHeads needs at least one task's head")
        for name in heads:
            if not isinstance(name, str) or not name or "." in name:
                raise ConfigError(f"task names must be non-empty strings without dots, got {name!r}")
        self.heads = nn.ModuleDict(dict(heads))
        self.active = active if active is not None else next(iter(heads))
        if self.active not in self.heads:
            raise _unknown_task(self.active, list(self.heads))

    def extra_repr(self) -> str:
        return f"active={self.active!r}"

    def forward(self, features):  # type: ignore[no-untyped-def]
        return self.heads[self.active](features)


def _unknown_task(name: str, known: list[str]) -> UnknownNameError:
    return UnknownNameError(f"no task {name!r} in this model; its tasks: {', '.join(known)}")


def task_names(model: TransferNet) -> list[str]:
    """The model's task names in order; ``[]`` for a single-head model."""
    return list(model.head.heads) if isinstance(model.head, TaskHeads) else []


def set_task_heads(model: TransferNet, tasks: Mapping[str, int | nn.Module], *,
                   active: str | None = None) -> TransferNet:
    """Give ``model`` one head per task, in place: an int makes a fresh ``nn.Linear(feature_dim, n)``,
    a module is used as it is. Records ``info.tasks`` (name -> classes) and returns ``model``."""
    ref = next(model.parameters(), None)
    heads: dict[str, nn.Module] = {}
    sizes: dict[str, int] = {}
    for name, spec in tasks.items():
        if isinstance(spec, nn.Module):
            head = spec
            out = getattr(spec, "out_features", None)
            if not isinstance(out, int):
                raise ConfigError(f"task {name!r}'s head must be an nn.Linear (it has no out_features)")
        elif isinstance(spec, int) and not isinstance(spec, bool) and spec >= 1:
            head, out = nn.Linear(model.info.feature_dim, spec), spec
            if ref is not None:
                head = head.to(device=ref.device, dtype=ref.dtype)
        else:
            raise ConfigError(f"task {name!r}: give a number of classes >= 1 or a head module, got {spec!r}")
        heads[name], sizes[name] = head, out
    model.head = TaskHeads(heads, active)
    model.info.tasks = sizes
    model.info.class_names = None
    model.info.num_classes = sizes[model.head.active]
    return model


def select_task(model: TransferNet, name: str) -> TransferNet:
    """Make ``name``'s head the one ``model(x)`` answers with (in place); returns ``model``."""
    if not isinstance(model.head, TaskHeads):
        raise ConfigError("this model has a single head; select_task needs a multi-head model")
    if name not in model.head.heads:
        raise _unknown_task(name, list(model.head.heads))
    model.head.active = name
    model.info.num_classes = int(model.head.heads[name].out_features)
    return model


def task_model(model: TransferNet, name: str) -> TransferNet:
    """A single-task view of a multi-head model: the same backbone and ``name``'s head (shared
    parameters, no copy), with ``info.num_classes`` that head's size."""
    if not isinstance(model.head, TaskHeads):
        raise ConfigError("this model has a single head; task_model needs a multi-head model")
    if name not in model.head.heads:
        raise _unknown_task(name, list(model.head.heads))
    info = copy.deepcopy(model.info)
    info.tasks = None
    head = model.head.heads[name]
    info.num_classes = int(head.out_features)
    view = TransferNet(model.backbone, head, info, model.input_adapter)
    view.tokenizer = model.tokenizer
    return view
