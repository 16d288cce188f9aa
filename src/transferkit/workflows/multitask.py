"""The multi-task workflow: one model learns every task (a head each) in the one engine, and each task
is compared with its single-task model trained on the same data, from the same start, for the same
epochs; a task the shared model does worse on is flagged (negative transfer between tasks)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.config import DataConfig, MultitaskConfig, build_config
from transferkit.data import DataSplits
from transferkit.data.tasks import TaskSet
from transferkit.engine import Trainer
from transferkit.evaluation import RunResult, evaluate, summarize
from transferkit.evaluation.compare import format_gain
from transferkit.models import TransferNet, save_model, set_task_heads, task_model
from transferkit.multitask import MultiTask
from transferkit.workflows.arms import Arm, build_target, target_splits
from transferkit.workflows.finetune import load_source, load_target_data
from transferkit.workflows.output import open_output

logger = logging.getLogger(__name__)

__all__ = ["MultitaskResult", "multitask"]

MULTI, SINGLE = "multi-task", "single-task"
_HOWTO = ("Test accuracy on each task, mean over seeds. The multi-task row shows in brackets its difference "
          "in percentage points from the task's single-task model (same data, start and epochs); red: "
          "sharing the model cost that task accuracy (negative transfer between tasks).")


@dataclass
class MultitaskResult:
    """What :func:`multitask` did.

    Attributes:
        runs: One :class:`~transferkit.evaluation.RunResult` per (model, task, seed); names
            ``"multi-task/<task>"`` and ``"single-task/<task>"``.
        tasks: Per task, the summary rows (:func:`~transferkit.evaluation.summarize`) of the multi-task
            model against the single-task one (``gain``, ``negative_transfer``, ``significant``).
        out: The output folder.
        model: The multi-task model of the first seed (saved in ``out/model``).
    """

    runs: list[RunResult]
    tasks: dict[str, list[dict[str, Any]]]
    out: Path
    model: TransferNet | None = field(default=None, repr=False)

    def table(self) -> str:
        """Per task: the single-task and multi-task accuracies (mean ± std) and the gain."""
        lines = [f"{'task':<16} {'single-task':>16} {'multi-task':>16}  gain"]
        for task, rows in self.tasks.items():
            by = {r["name"].split("/")[0]: r for r in rows}
            cells = [f"{100 * by[k]['accuracy_mean']:.1f} ± {100 * by[k]['accuracy_std']:.1f} %" if k in by
                     else "-" for k in (SINGLE, MULTI)]
            gain = format_gain(by[MULTI]) if SINGLE in by else "(no single-task baseline)"
            lines.append(f"{task:<16} {cells[0]:>16} {cells[1]:>16}  {gain}")
        return "\n".join(lines)


def _task_data(cfg: MultitaskConfig, seed: int) -> dict[str, DataSplits]:
    return {t: load_target_data(DataConfig(dataset=c.dataset, root=c.root, val_fraction=c.val_fraction,
                                           classes=c.classes, **c.file_options()), seed=seed)
            for t, c in cfg.tasks.items()}


def multitask(cfg: MultitaskConfig | dict[str, Any]) -> MultitaskResult:
    """Train one model on every task of ``cfg.tasks`` and, with ``cfg.baseline``, one model per task;
    write ``metrics.json``, ``report.html`` and the multi-task model (``model/``) into ``cfg.out``.

    Example:
        >>> multitask({"tasks": {"mnist": {"dataset": "mnist5k", "shots": 20},
        ...                      "digits": {"dataset": "digits", "shots": 20}},
        ...            "model": {"arch": "small_cnn"}, "weighting": "uncertainty"})  # doctest: +SKIP
    """
    if not isinstance(cfg, MultitaskConfig):
        cfg = build_config(cfg, MultitaskConfig)
    source = load_source(cfg)  # type: ignore[arg-type]
    arch = cfg.model.arch or (source.info.arch if source is not None else "small_cnn")
    data = _task_data(cfg, cfg.seeds[0])
    classes = {t: d.num_classes for t, d in data.items()}
    arm = Arm("multi-task", "multi-task", arch, cfg.train, source=source, kwargs=dict(cfg.model.kwargs))
    _preflight(cfg, arm, data, classes)  # a bad input fails before the output folder is touched
    folder = open_output(cfg.out, {"config": cfg.model_dump(mode="json")}, overwrite=cfg.overwrite,
                         kind="multitask")
    runs: list[RunResult] = []
    first_model = None
    for seed in cfg.seeds:
        splits = {t: target_splits(d, cfg.tasks[t].shots, cfg.tasks[t].val_shots, seed)
                  for t, d in data.items()}
        train_cfg = cfg.train.model_copy(update={"seed": seed})
        model, _ = build_target(arm, next(iter(classes.values())))
        set_task_heads(model, classes)
        objective = _objective(cfg)
        start = time.perf_counter()
        train = TaskSet({t: s.train for t, s in splits.items()}, cfg.sampling, cfg.temperature)
        val = TaskSet({t: s.val for t, s in splits.items()})
        history = Trainer(model, train_cfg, [objective]).fit(train, val)
        seconds = time.perf_counter() - start
        for t, d in data.items():
            runs.append(RunResult(name=f"{MULTI}/{t}", method=f"{MULTI} ({cfg.weighting}"
                                  f"{', ' + cfg.surgery if cfg.surgery else ''}, sampling {cfg.sampling})",
                                  metrics=evaluate(task_model(model, t), d.test), seconds=seconds, seed=seed,
                                  history=history.to_list(),
                                  extra={"task": t, "best_epoch": history.best_epoch}))
        first_model = first_model or model
        if not cfg.baseline:
            continue
        for t, d in data.items():
            single, _ = build_target(arm, classes[t])
            start = time.perf_counter()
            hist = Trainer(single, train_cfg).fit(splits[t].train, splits[t].val)
            runs.append(RunResult(name=f"{SINGLE}/{t}", method=SINGLE, metrics=evaluate(single, d.test),
                                  seconds=time.perf_counter() - start, seed=seed, history=hist.to_list(),
                                  extra={"task": t, "best_epoch": hist.best_epoch}))
    per_task = {t: summarize([r for r in runs if r.extra["task"] == t],
                             f"{SINGLE}/{t}" if cfg.baseline else None) for t in data}
    result = MultitaskResult(runs, per_task, folder.root, first_model)
    _write(folder, cfg, result)
    return result


def _objective(cfg: MultitaskConfig) -> MultiTask:
    weights = {t: c.weight for t, c in cfg.tasks.items()}
    return MultiTask(weighting=cfg.weighting, surgery=cfg.surgery,
                     task_weights=weights if any(w != 1.0 for w in weights.values()) else None)


def _preflight(cfg: MultitaskConfig, arm: Arm, data: dict[str, DataSplits], classes: dict[str, int]) -> None:
    """Every check of training (data, labels, shapes, heads) on the first seed's data, without training."""
    splits = {t: target_splits(d, cfg.tasks[t].shots, cfg.tasks[t].val_shots, cfg.seeds[0])
              for t, d in data.items()}
    model, _ = build_target(arm, next(iter(classes.values())))
    set_task_heads(model, classes)
    Trainer(model, cfg.train, [_objective(cfg)]).check(
        TaskSet({t: s.train for t, s in splits.items()}, cfg.sampling, cfg.temperature),
        TaskSet({t: s.val for t, s in splits.items()}))


def _write(folder: Any, cfg: MultitaskConfig, result: MultitaskResult) -> None:
    from transferkit.evaluation.report import write_task_report
    from transferkit.io import atomic_write_json, atomic_write_text

    out = folder.work
    if result.model is not None:
        save_model(result.model, out / "model")
    negative = [t for t, rows in result.tasks.items() if any(r["negative_transfer"] for r in rows)]
    atomic_write_json(out / "metrics.json", {
        "config": cfg.model_dump(mode="json"), "runs": [r.to_dict() for r in result.runs],
        "tasks": result.tasks, "negative_transfer": negative})
    accuracy = {row: {t: next((r["accuracy_mean"] for r in rows if r["name"] == f"{row}/{t}"), None)
                      for t, rows in result.tasks.items()} for row in (SINGLE, MULTI)}
    if not cfg.baseline:
        accuracy.pop(SINGLE)
    details = {"table (mean ± std over seeds)": result.table(),
               "negative transfer between tasks": ", ".join(negative) or "none"}
    about = {"method": f"multi-task learning ({cfg.weighting})", "options": {"surgery": cfg.surgery,
             "sampling": cfg.sampling}, "names": [SINGLE], "weights": [c.weight for c in cfg.tasks.values()],
             "heads": "one per task", "details": details}
    write_task_report(out, accuracy, {}, about, title=f"transferkit multitask report: {cfg.name}",
                      howto=_HOWTO)
    atomic_write_text(out / "summary.txt", result.table() + "\n")
    folder.commit()
