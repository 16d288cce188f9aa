"""The merge workflow: load models -> merge -> each input's and the merged model's accuracy on every
task -> what the merge changed, layer by layer -> a saved model, ``merge.json`` and ``report.html``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transferkit.data import DataSplits, load_dataset
from transferkit.data.tokens import model_inputs
from transferkit.errors import ConfigError
from transferkit.evaluation import evaluate
from transferkit.evaluation.similarity import layer_cka, weight_change
from transferkit.models import TransferNet, load_model, save_model, task_model
from transferkit.transfer.merge import MERGE_METHODS, MergeResult, merge

logger = logging.getLogger(__name__)

__all__ = ["MergeRun", "merge_workflow"]

#: Rows of the accuracy table besides the inputs.
MERGED, UNALIGNED = "merged", "merged without alignment"


@dataclass
class MergeRun:
    """What :func:`merge_workflow` did.

    Attributes:
        result: The :class:`~transferkit.transfer.merge.MergeResult` (the merged model in ``result.model``).
        accuracy: Test accuracy, ``{row: {task: value or None}}``; rows are the inputs (on their own
            task, or every task when the heads were merged), ``"merged"``, and with alignment
            ``"merged without alignment"``.
        similarity: ``{"linear CKA to the merged model": {input: {block: value}}, "relative weight change
            to the merged model": {...}}``.
        out: The output folder (``None`` when nothing was written).
    """

    result: MergeResult
    accuracy: dict[str, dict[str, float | None]]
    similarity: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    out: Path | None = None

    def table(self) -> str:
        """The accuracy table as aligned text (percent)."""
        tasks = list(dict.fromkeys(t for row in self.accuracy.values() for t in row))
        width = max(len(r) for r in self.accuracy)
        lines = [f"{'':<{width}}  " + "  ".join(f"{t:>12}" for t in tasks)]
        for row, accs in self.accuracy.items():
            cells = [f"{100 * accs[t]:>11.1f}%" if accs.get(t) is not None else f"{'-':>12}" for t in tasks]
            lines.append(f"{row:<{width}}  " + "  ".join(cells))
        return "\n".join(lines)


def _load(spec: str | TransferNet) -> TransferNet:
    return spec if isinstance(spec, TransferNet) else load_model(spec)


def _task_data(data: str | Mapping[str, str] | None, names: Sequence[str], seed: int,
               file_options: Mapping[str, Any]) -> dict[str, DataSplits]:
    if data is None:
        return {}

    def options(spec: str) -> Mapping[str, Any]:  # a built-in dataset takes no file options
        return file_options if Path(spec).expanduser().exists() else {}

    if isinstance(data, str):
        splits = load_dataset(data, val_fraction=0.1, seed=seed, **options(data))
        return {n: splits for n in names}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"--data names task {unknown[0]!r}, which is none of the models "
                          f"({', '.join(names)}); write --data NAME=DATA with a model's name")
    loaded: dict[str, DataSplits] = {}
    cache: dict[str, DataSplits] = {}
    for name, spec in data.items():
        if spec not in cache:
            cache[spec] = load_dataset(spec, val_fraction=0.1, seed=seed, **options(spec))
        loaded[name] = cache[spec]
    return loaded


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def merge_workflow(
    models: Mapping[str, str | TransferNet],
    method: str = "average",
    *,
    base: str | TransferNet | None = None,
    data: str | Mapping[str, str] | None = None,
    weights: Sequence[float] | None = None,
    options: Mapping[str, Any] | None = None,
    heads: str = "auto",
    align: str | None = None,
    batchnorm: bool = True,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    seed: int = 0,
    file_options: Mapping[str, Any] | None = None,
) -> MergeRun:
    """Merge models and report what it gave, task by task.

    Args:
        models: Name -> model folder (or a loaded model). The names are the tasks of kept heads.
        method: A merge method (see :data:`~transferkit.transfer.merge.MERGE_METHODS`).
        base: The model the inputs were fine-tuned from (task-vector methods).
        data: The tasks' data: one dataset for all (models of one task), or name -> dataset. Test
            splits give the report's accuracies; training splits the Fisher (``fisher``), the activations
            (``align="activation"``) and the BatchNorm statistics; validation splits the greedy soup's
            choices. The test split never chooses anything.
        weights, options, heads, align: As in :func:`~transferkit.transfer.merge.merge`.
        batchnorm: Recompute the merged model's BatchNorm statistics on the training inputs (when it
            has BatchNorm layers and ``data`` is given).
        out: Folder for ``model/``, ``merge.json``, ``report.html`` and ``similarity.png`` (``None``: write
            nothing).
        overwrite: Replace earlier results in ``out`` (only once the new ones are complete).
        seed: Seeds the validation split (and DARE's masks unless ``options`` sets ``seed``).
        file_options: How the ``data`` files (not built-in names) are read (``text_column``,
            ``label_column``, ``ordered``; see :func:`~transferkit.data.load_dataset`).
    """
    spec = MERGE_METHODS.get(method)
    names = list(models)
    loaded = {n: _load(m) for n, m in models.items()}
    base_model = _load(base) if base is not None else None
    tasks = _task_data(data, names, seed, file_options or {})
    inputs = list(loaded.values())
    kwargs: dict[str, Any] = dict(options or {})
    if "seed" in spec.options and "seed" not in kwargs:
        kwargs["seed"] = seed
    if spec.needs_data == "task":
        missing = [n for n in names if n not in tasks]
        if missing:
            raise ConfigError(f"merge method {method!r} needs each model's training data: give --data for "
                              f"{', '.join(missing)}")
        kwargs["data"] = [tasks[n].train for n in names]
    elif spec.needs_data == "validation":
        if not tasks:
            raise ConfigError(f"merge method {method!r} chooses on validation data: give --data (the task's "
                              "dataset)")
        kwargs["data"] = tasks[names[0]].val
    reference = base_model if base_model is not None else inputs[0]
    train_x = _train_inputs(tasks, names, reference)
    if align == "activation":
        if train_x is None:
            raise ConfigError("align='activation' needs input examples: give --data")
        kwargs["align_data"] = train_x
    if batchnorm and train_x is not None and _has_batchnorm(reference):
        kwargs["batchnorm_data"] = train_x
    result = merge(loaded, method, base=base_model, weights=weights, heads=heads, align=align, **kwargs)
    rows = {n: m for n, m in loaded.items()}
    rows[MERGED] = result.model
    if align is not None:
        rows[UNALIGNED] = merge(loaded, method, base=base_model, weights=weights, heads=heads,
                                **{k: v for k, v in kwargs.items() if k != "align_data"}).model
    if isinstance(data, str) and result.heads == "merged":  # one task: one column, named by its data
        tasks, task_names = {data: tasks[names[0]]}, [data]
    else:
        task_names = names
    accuracy = _accuracy_table(rows, result, tasks, task_names)
    # permuted inputs where aligned: weight change is not blind to the order of units (CKA is)
    compared = dict(zip(names, result.aligned, strict=True)) if result.aligned else loaded
    similarity = _similarity(compared, result.model, tasks, task_names)
    run = MergeRun(result, accuracy, similarity)
    if out is not None:  # opened only now: a merge that fails leaves no folder behind
        from transferkit.workflows.output import open_output

        folder = open_output(out, {"models": {n: str(m) for n, m in models.items()}, "method": method,
                                   "base": str(base), "data": data, "weights": weights,
                                   "options": dict(options or {}), "heads": heads, "align": align},
                             overwrite=overwrite, kind="merge")
        run.out = _write(folder, run, method)
    return run


def _train_inputs(tasks: Mapping[str, DataSplits], names: Sequence[str], model: TransferNet,
                  per_task: int = 512) -> torch.Tensor | None:
    """Up to ``per_task`` training inputs of each task's data as ``model`` takes them (token ids for
    text), those of the first's shape."""
    xs, seen = [], set()
    for n in names:
        if n not in tasks or id(tasks[n]) in seen:
            continue
        seen.add(id(tasks[n]))
        x = model_inputs(tasks[n].train, model).x[:per_task]
        if not xs or x.shape[1:] == xs[0].shape[1:]:
            xs.append(x)
    return torch.cat(xs) if xs else None


def _accuracy_table(rows: Mapping[str, TransferNet], result: MergeResult, tasks: Mapping[str, DataSplits],
                    names: Sequence[str]) -> dict[str, dict[str, float | None]]:
    table: dict[str, dict[str, float | None]] = {}
    for row, model in rows.items():
        table[row] = {}
        for task in names:
            if task not in tasks:
                continue
            if row in (MERGED, UNALIGNED):
                net = task_model(model, task) if result.heads == "kept" else model
            elif row == task or result.heads == "merged":
                net = model
            else:
                table[row][task] = None  # another task's model: its head does not answer this task
                continue
            table[row][task] = float(evaluate(net, tasks[task].test).accuracy)
    return table


def _similarity(inputs: Mapping[str, TransferNet], merged: TransferNet, tasks: Mapping[str, DataSplits],
                names: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    first = next(iter(inputs.values()))
    probe = next((model_inputs(tasks[n].test, first).x[:256] for n in names if n in tasks), None)
    panels: dict[str, dict[str, dict[str, float]]] = {"relative weight change to the merged model": {}}
    if probe is not None:
        panels = {"linear CKA to the merged model": {}, **panels}
    for name, model in inputs.items():
        if probe is not None:
            panels["linear CKA to the merged model"][name] = layer_cka(model, merged, probe)
        panels["relative weight change to the merged model"][name] = weight_change(model, merged)
    return panels


def _write(folder: Any, run: MergeRun, method: str) -> Path:
    from transferkit.evaluation.report import write_merge_report
    from transferkit.io import atomic_write_json

    save_model(run.result.model, folder.work / "model")
    atomic_write_json(folder.work / "merge.json", {**run.result.to_dict(), "accuracy": run.accuracy,
                                                   "similarity": run.similarity})
    write_merge_report(folder.work, run.accuracy, run.similarity, run.result.to_dict(),
                       title=f"transferkit merge report: {method}")
    folder.commit()
    return folder.root
