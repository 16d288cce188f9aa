"""Everything :meth:`Trainer.fit <transferkit.engine.Trainer.fit>` checks before it trains.

Workflows call :meth:`Trainer.check <transferkit.engine.Trainer.check>` for every arm before they
touch the output folder, so a bad input never leaves a half-written run behind. Datasets that are
not in memory are checked through what they tell without reading every example: their length,
their ``targets`` / ``labels`` when present, and one example for the shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from transferkit.engine.batches import data_name, first_input, input_shape, labels_of, move, num_examples
from transferkit.engine.config import TrainConfig
from transferkit.engine.objectives import CrossEntropy, Objective
from transferkit.errors import ConfigError, DataError, LabelError, ShapeError
from transferkit.models.surgery import LayerTap


def check_fit(model: nn.Module, objectives: Sequence[Objective], config: TrainConfig, device: torch.device,
              train: object, val: object | None, target: object | None) -> None:
    """Data sizes and labels, target data, one forward pass (input shape), the objectives' taps.

    Raises:
        DataError, LabelError, ShapeError, ConfigError, UnknownNameError: as
        :meth:`Trainer.fit <transferkit.engine.Trainer.fit>` documents.
    """
    if config.patience is not None and val is None and config.select_metric.startswith("val_"):
        raise ConfigError(
            f"patience={config.patience} (early stopping) needs a validation set; pass val= or "
            "set patience=None"
        )
    from transferkit.data.tasks import TaskSet

    if isinstance(train, TaskSet) or isinstance(val, TaskSet):
        check_tasks(model, objectives, config, device, train, val, target)
        return
    check_data(model, objectives, train, val)
    check_target(objectives, train, target)
    model.to(device)
    probe(model, train, val, device)
    taps = attach_taps(model, objectives)
    if taps is not None:
        taps.remove()


def check_tasks(model: nn.Module, objectives: Sequence[Objective], config: TrainConfig, device: torch.device,
                train: object, val: object | None, target: object | None) -> None:
    """A multi-task fit: TaskSets for training (and validation) with the same tasks, a model with a head
    per task, the multitask objective, each task's data checked with its own head."""
    from transferkit.data.tasks import TaskSet
    from transferkit.models.heads import TaskHeads, task_model

    if not isinstance(train, TaskSet) or (val is not None and not isinstance(val, TaskSet)):
        raise ConfigError("multi-task training takes a TaskSet for training and one (or None) for "
                          "validation; got a TaskSet for only one of them")
    if val is not None and set(val) != set(train):
        raise ConfigError(f"the validation TaskSet's tasks ({', '.join(val)}) differ from training's "
                          f"({', '.join(train)}); give each task a validation set, or val=None")
    if target is not None:
        raise ConfigError("multi-task training does not pair batches with unlabelled target data")
    if config.augment:
        raise ConfigError("train.augment is not applied to multi-task batches (a batch per task); drop it "
                          "for this run")
    if not any(o.owns_step() and o.name == "multitask" for o in objectives):
        raise ConfigError("a TaskSet trains with the multitask objective: pass "
                          "transferkit.multitask.MultiTask(...) among the objectives (-m multitask)")
    heads = model.head.heads if isinstance(model.head, TaskHeads) else {}
    missing = [t for t in train if t not in heads]
    if missing:
        raise ConfigError(f"the model has no head for task(s) {', '.join(missing)}: build it with "
                          "transferkit.models.set_task_heads(model, {task: classes, ...})")
    model.to(device)
    for t in train:
        view = task_model(model, t)
        check_data(view, [CrossEntropy()], train[t], None if val is None else val[t])
        probe(view, train[t], None if val is None else val[t], device)


def check_data(model: nn.Module, objectives: Sequence[Objective], train: object, val: object | None) -> None:
    if num_examples(train) == 0:
        raise DataError(
            f"training set {data_name(train)!r} is empty; pass a dataset with at least one example"
        )
    if val is not None and num_examples(val) == 0:
        raise DataError(
            f"validation set {data_name(val)!r} is empty; pass val=None or a non-empty set"
        )
    y = labels_of(train)
    if y is not None and any(isinstance(o, CrossEntropy) for o in objectives):
        classes = torch.unique(y[y >= 0])
        if len(classes) == 1:
            raise DataError(
                f"training set {data_name(train)!r} has one class (label {int(classes[0])}); a "
                "classifier needs examples of at least two classes: add examples of the others"
            )
    head = int(getattr(getattr(model, "info", None), "num_classes", 0) or 0)
    if head > 0:
        check_labels(train, val, head)


def check_target(objectives: Sequence[Objective], train: object, target: object | None) -> None:
    users = [o.name for o in objectives if o.uses_target]
    if target is None:
        if users:
            raise ConfigError(
                f"objective(s) {', '.join(map(repr, users))} adapt to unlabelled target data; "
                "pass it with fit(train, val, target=target_data)"
            )
        return
    if num_examples(target) == 0:
        raise DataError(
            f"target set {data_name(target)!r} is empty; domain adaptation needs unlabelled target "
            "examples (at least one batch)"
        )
    t_shape, s_shape = input_shape(target), input_shape(train)
    token_ids = all(callable(getattr(d, "lengths", None)) for d in (target, train))  # padded when paired
    if t_shape is not None and s_shape is not None and t_shape != s_shape and not token_ids:
        hint = ""
        if len(t_shape) == len(s_shape) == 3:
            hint = f" (target has {t_shape[0]} channel(s), source {s_shape[0]})"
        raise ShapeError(
            f"target inputs have shape {t_shape} but source inputs {s_shape}{hint}; bring them to "
            f"one shape first, e.g. transferkit.data.match_shape(target, {s_shape})"
        )


def check_labels(train: object, val: object | None, head: int) -> None:
    """Labels that the head cannot predict (where the dataset tells its labels)."""
    for split, ds in (("train", train), ("val", val)):
        y = None if ds is None else labels_of(ds)
        if y is None or not len(y):
            continue
        top = int(y.max())
        if top >= head:
            raise LabelError(
                f"{split} labels go up to {top} but the model's head predicts {head} classes "
                f"(labels 0..{head - 1}); give the model a head of {top + 1} outputs with "
                f"replace_head(model, {top + 1}) or build it with num_classes={top + 1}"
            )


def check_batch_labels(y: torch.Tensor, head: int, name: str, learns: bool = False) -> None:
    """Labels of one batch from a dataset that does not tell its labels up front: none beyond the
    head (``head`` > 0), and, when an objective ``learns`` from labels, at least one labelled."""
    if learns and len(y) and int(y.max()) < 0:
        raise DataError(
            f"a batch of {name!r} holds no labelled example (every label is -1 or missing) but "
            "cross_entropy learns from labels; return (inputs, label) items or a 'label' key"
        )
    if head > 0 and len(y) and int(y.max()) >= head:
        raise LabelError(
            f"a batch of {name!r} holds label {int(y.max())} but the model's head predicts {head} "
            f"classes (labels 0..{head - 1}); give the model a head of {int(y.max()) + 1} outputs "
            "or fix the labels"
        )


def probe(model: nn.Module, train: object, val: object | None, device: torch.device) -> None:
    """One forward pass on one example so shape problems surface before training."""
    model.eval()
    with torch.no_grad():
        out = model(move(first_input(train), device))
    if out.ndim != 2:
        raise ShapeError(
            f"the model returned logits of shape {tuple(out.shape)} for one example; "
            "expected (1, num_classes): check the head"
        )
    if not getattr(getattr(model, "info", None), "num_classes", 0):
        check_labels(train, val, int(out.shape[1]))


def attach_taps(model: nn.Module, objectives: Sequence[Objective]) -> LayerTap | None:
    """Forward hooks on the modules the objectives tap (unknown names raise with suggestions)."""
    names = sorted({t for o in objectives for t in o.taps})
    return LayerTap(model, names).attach() if names else None


__all__ = ["attach_taps", "check_batch_labels", "check_fit"]
