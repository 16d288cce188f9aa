"""End-to-end workflows: source model -> transfer -> fine-tune -> comparison with scratch -> report.

These are the public entry points the CLI is a thin layer over. A workflow is a list of
:class:`Arm` s (one way of building and training a target model each) run on the same data splits for
every seed, so a transfer arm and its from-scratch baseline always see the same examples and budget.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.config import DataConfig, DistillConfig, FinetuneConfig, build_config, dump_config
from transferkit.data import DataSplits, TensorDataset, few_shot, load_dataset
from transferkit.engine import (
    CrossEntropy,
    Objective,
    TrainConfig,
    Trainer,
    build_objectives,
    predict_features,
)
from transferkit.errors import ConfigError
from transferkit.evaluation import (
    Metrics,
    RunResult,
    classification_metrics,
    evaluate,
    evaluate_with_head,
    format_table,
    summarize,
    write_metrics_json,
    write_report,
)
from transferkit.io import atomic_write_text
from transferkit.models import TransferNet, create_model, load_model, narrow_model, save_model
from transferkit.transfer import TransferReport, transfer_parameters

logger = logging.getLogger(__name__)

STRATEGY_NAMES = {
    "full": "full fine-tune",
    "linear_probe": "linear probe",
    "gradual": "gradual unfreezing",
}


@dataclass
class Arm:
    """One way of producing a target model, trained and evaluated once per seed.

    Attributes:
        name: Unique name in reports ("mnist-cnn/full").
        method: Human-readable method ("full fine-tune", "from scratch").
        arch: Target architecture name (see :func:`transferkit.models.create_model`).
        train: Training configuration (strategy, budget, learning rates).
        source: Source model whose parameters are transferred; ``None`` = from scratch.
        kwargs: Arguments of the target architecture.
        exclude: Target tensors never transferred (fnmatch patterns); the new head by default.
        shape_mismatch: ``"slice"`` or ``"skip"`` for tensors whose shapes differ.
        objectives: Builds the run's loss terms (called once per run, so adapters start fresh);
            ``None`` trains with cross-entropy alone.
    """

    name: str
    method: str
    arch: str
    train: TrainConfig
    source: TransferNet | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    exclude: Sequence[str] = ("head.*",)
    shape_mismatch: str = "slice"
    objectives: Callable[[], list[Objective]] | None = None


@dataclass
class WorkflowResult:
    """What a workflow produced.

    Attributes:
        runs: One result per (arm, seed).
        summary: Per-arm means over seeds with the gain against the baseline.
        baseline: Name of the baseline arm.
        out_dir: Output folder.
        best_name: Arm with the highest mean test accuracy; its first-seed model is in ``out_dir/model``.
        transfer_reports: Parameter-transfer report per arm (first seed).
    """

    runs: list[RunResult]
    summary: list[dict[str, Any]]
    baseline: str
    out_dir: Path
    best_name: str
    transfer_reports: dict[str, TransferReport] = field(default_factory=dict)

    def table(self) -> str:
        return format_table(self.summary)


def target_splits(data: DataSplits, shots: int | None, val_shots: int | None, seed: int) -> DataSplits:
    """The training and validation sets one seed trains on; the test split is never subsampled.

    With ``shots`` set, the training set is ``shots`` examples per class drawn with ``seed``, and the
    validation set ``val_shots`` (default: ``shots``) per class from the validation split.
    """
    if shots is None:
        if val_shots is None:
            return data
        return DataSplits(data.train, few_shot(data.val, val_shots, seed), data.test)
    v = val_shots or shots
    return DataSplits(few_shot(data.train, shots, seed), few_shot(data.val, v, seed), data.test)


def build_target(arm: Arm, num_classes: int) -> tuple[TransferNet, TransferReport | None]:
    """Create the arm's target model and copy the source's parameters into it."""
    model = create_model(arm.arch, num_classes=num_classes, pretrained=False, **arm.kwargs)
    if arm.source is None:
        return model, None
    report = transfer_parameters(
        arm.source,
        model,
        exclude=list(arm.exclude),
        shape_mismatch=arm.shape_mismatch,  # type: ignore[arg-type]
    )
    return model, report


def _frozen_test_metrics(
    model: TransferNet, test: TensorDataset, cache: dict[str, torch.Tensor], key: str, batch_size: int
) -> Metrics:
    """Test metrics of a linear probe from backbone features computed once per source."""
    if key not in cache:
        cache[key] = predict_features(model.to("cpu"), test, batch_size=batch_size, device="cpu")
    feats = cache[key]
    head = model.head.to("cpu").eval()
    with torch.inference_mode():
        preds = torch.cat([head(f).argmax(1) for f in feats.split(4096)])
    return classification_metrics(test.y, preds, test.num_classes, test.classes)


def run_arms(
    arms: Sequence[Arm],
    data: DataSplits,
    *,
    seeds: Sequence[int] = (0,),
    shots: int | None = None,
    val_shots: int | None = None,
    out_dir: str | os.PathLike,
    baseline: str,
    title: str = "transferkit report",
    notes: Sequence[str] = (),
    on_run: Callable[[RunResult], None] | None = None,
    resume: bool = False,
    extra: dict[str, Any] | None = None,
    source_eval: TensorDataset | None = None,
) -> WorkflowResult:
    """Train and evaluate every arm on every seed, then write metrics.json, report.html and the best model.

    Args:
        arms: The arms; names must be unique and include ``baseline``.
        data: Target splits; only ``train``/``val`` are used for training and model choice, ``test``
            only for the final numbers.
        seeds: One run per seed (few-shot subsets and initialisation change with the seed).
        shots: Training examples per class (``None`` = all).
        val_shots: Validation examples per class.
        out_dir: Output folder.
        baseline: Name of the arm every other arm is compared with.
        on_run: Called after each run (e.g. to print progress).
        resume: Continue each run from its checkpoint in ``out_dir/runs`` (see ``Trainer.fit``).
        extra: More top-level entries for ``metrics.json``.
        source_eval: Labelled test data of the *source* task. When given, every arm with a source
            also reports the source-task accuracy of its fine-tuned backbone with the source head
            (LwF's jointly trained old head when LwF is among its objectives), before and after.
    """
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"arm names must be unique, got {names}; rename the repeated ones")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[RunResult] = []
    reports: dict[str, TransferReport] = {}
    feature_cache: dict[str, torch.Tensor] = {}
    first_models: dict[str, TransferNet] = {}
    source_before: dict[str, float] = {}
    for seed in seeds:
        splits = target_splits(data, shots, val_shots, seed)
        for arm in arms:
            start = time.perf_counter()
            torch.manual_seed(seed)
            model, report = build_target(arm, data.num_classes)
            if report is not None and arm.name not in reports:
                reports[arm.name] = report
            cfg = arm.train.model_copy(update={"seed": seed})
            run_dir = out / "runs" / arm.name.replace("/", "-") / f"seed{seed}"
            objectives = arm.objectives() if arm.objectives is not None else None
            trainer = Trainer(model, cfg, objectives=objectives, run_dir=run_dir)
            history = trainer.fit(splits.train, splits.val, resume=resume)
            if cfg.strategy == "linear_probe" and arm.source is not None:
                metrics = _frozen_test_metrics(model, data.test, feature_cache, arm.name, cfg.eval_batch_size)
            else:
                metrics = evaluate(model.to("cpu"), data.test, batch_size=cfg.eval_batch_size)
            seconds = time.perf_counter() - start
            retention = {}
            if source_eval is not None and arm.source is not None:
                if arm.name not in source_before:
                    source_before[arm.name] = evaluate(arm.source, source_eval).accuracy
                head = _source_head(arm.source, objectives)
                after = evaluate_with_head(model.to("cpu"), head.to("cpu"), source_eval).accuracy
                retention = {
                    "source_accuracy_before": source_before[arm.name],
                    "source_accuracy_after": after,
                    "forgetting": source_before[arm.name] - after,
                }
            result = RunResult(
                name=arm.name,
                method=arm.method,
                metrics=metrics,
                seconds=seconds,
                seed=seed,
                history=history.to_list(),
                extra={
                    "arch": arm.arch,
                    "strategy": cfg.strategy,
                    "train_examples": len(splits.train),
                    "val_examples": len(splits.val),
                    "test_examples": len(data.test),
                    "best_epoch": history.best_epoch,
                    **retention,
                },
            )
            runs.append(result)
            first_models.setdefault(arm.name, model)
            if on_run is not None:
                on_run(result)
    summary = summarize(runs, baseline)
    best = max(summary, key=lambda row: row["accuracy_mean"])["name"]
    save_model(first_models[best], out / "model")
    for name, report in reports.items():
        atomic_write_text(out / "transfer" / f"{name.replace('/', '-')}.txt", report.table() + "\n")
    info = {
        "best": best,
        "seeds": list(seeds),
        "shots": shots,
        "val_shots": val_shots,
        "transfer": {k: v.summary() for k, v in reports.items()},
        **(extra or {}),
    }
    write_metrics_json(out / "metrics.json", runs, baseline, extra=info)
    write_report(out, runs, baseline, title=title, notes=notes)
    return WorkflowResult(runs, summary, baseline, out, best, reports)


def _source_head(source: TransferNet, objectives: Sequence[Objective] | None) -> nn.Module:
    """The head to measure the source task with: an objective's own (LwF trains the old head)."""
    for obj in objectives or ():
        getter = getattr(obj, "source_head", None)
        if callable(getter):
            return getter()
    return source.head


def load_source(cfg: FinetuneConfig) -> TransferNet | None:
    """The source model named by ``cfg.model`` (``None`` when training from scratch)."""
    m = cfg.model
    if m.source is None:
        return None
    return load_model(m.source, arch=m.source_arch, pretrained=m.pretrained)


def load_target_data(cfg: DataConfig, seed: int = 0) -> DataSplits:
    """The target dataset's splits (validation carved from training with ``seed``)."""
    return load_dataset(cfg.dataset, root=cfg.root, val_fraction=cfg.val_fraction, seed=seed)


def finetune(cfg: FinetuneConfig | dict[str, Any]) -> WorkflowResult:
    """Transfer a source model to the target data, fine-tune it, and compare with training from scratch.

    Writes into ``cfg.out``: ``config.yaml`` (the resolved config), ``metrics.json``, ``report.html``
    with plots, ``transfer/<arm>.txt`` (what was copied, resized or left new), ``runs/<arm>/seed<k>/``
    (per-epoch ``metrics.jsonl`` and checkpoints) and ``model/`` (the best model).

    Example:
        >>> finetune({"data": {"dataset": "digits", "shots": 10},
        ...           "model": {"source": "runs/source-model"},
        ...           "train": {"strategy": "linear_probe", "epochs": 20}})  # doctest: +SKIP
    """
    if not isinstance(cfg, FinetuneConfig):
        cfg = build_config(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    data = load_target_data(cfg.data, seed=cfg.seeds[0])
    source = load_source(cfg)
    if source is None and cfg.model.arch is None:
        raise ConfigError(
            "give model.source (a model to transfer from) or model.arch (to train from scratch)"
        )
    arch = cfg.model.arch or source.info.arch  # type: ignore[union-attr]
    kwargs = dict(source.info.kwargs) if source is not None and cfg.model.arch is None else {}
    kwargs.update(cfg.model.kwargs)
    source_splits = (
        load_dataset(cfg.data.source_dataset, root=cfg.data.source_root, seed=cfg.seeds[0])
        if cfg.data.source_dataset is not None
        else None
    )
    regs = cfg.regularizers
    if regs:
        import transferkit.transfer.distill  # noqa: F401  (registers objectives)
        import transferkit.transfer.regularize  # noqa: F401
        from transferkit.transfer.distill import Teacher

        context = {
            "source": source,
            "source_data": source_splits.train if source_splits else None,
            # the source as a frozen teacher, for hint / attention / rkd / kd regularisers
            "teacher": Teacher(source, name="source") if source is not None else None,
            # EWC stores its Fisher beside the source's weights, so it is computed once
            "cache_dir": cfg.model.source if Path(str(cfg.model.source)).is_dir() else None,
        }
        build_objectives(regs, **context)  # validate the regularisers before any training

        def make_objectives() -> list[Objective]:
            return [CrossEntropy(), *build_objectives(regs, **context)]

    reg_names = "+".join(str(r["name"]) for r in regs)
    arms: list[Arm] = []
    if source is not None:
        arms.append(
            Arm(
                name=f"{cfg.name}/{cfg.train.strategy}" + (f"+{reg_names}" if regs else ""),
                method=STRATEGY_NAMES[cfg.train.strategy] + (f" + {reg_names}" if regs else ""),
                arch=arch,
                train=cfg.train,
                source=source,
                kwargs=kwargs,
                exclude=cfg.transfer.exclude,
                shape_mismatch=cfg.transfer.shape_mismatch,
                objectives=make_objectives if regs else None,
            )
        )
    scratch_name = f"{cfg.name}/scratch"
    if cfg.baseline or source is None:
        arms.append(
            Arm(
                name=scratch_name,
                method="from scratch",
                arch=arch,
                train=cfg.train.model_copy(
                    update={"strategy": "full", "backbone_lr_scale": 1.0, "layer_decay": None}
                ),
                kwargs=kwargs,
            )
        )
    baseline = scratch_name if any(a.name == scratch_name for a in arms) else arms[0].name
    return run_arms(
        arms,
        data,
        seeds=cfg.seeds,
        shots=cfg.data.shots,
        val_shots=cfg.data.val_shots,
        out_dir=out,
        baseline=baseline,
        title=f"transferkit finetune: {cfg.name}",
        resume=cfg.resume,
        source_eval=source_splits.test if source_splits is not None else None,
    )


def _build_student(
    cfg: DistillConfig, teacher: TransferNet, num_classes: int
) -> tuple[str, dict, TransferNet | None]:
    """(architecture, its arguments, weights to start from) for the student of ``cfg``."""
    spec = cfg.student.model
    if spec.startswith("narrow:"):
        try:
            factor = float(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"student {spec!r}: write narrow:N with a number N, e.g. narrow:4") from None
        proto = narrow_model(teacher, factor, num_classes=num_classes)
        return proto.info.arch, {**proto.info.kwargs, **cfg.student.kwargs}, None
    if Path(spec).exists():
        start = load_model(spec)
        return start.info.arch, dict(start.info.kwargs), start
    proto = create_model(spec, num_classes=num_classes, **cfg.student.kwargs)
    return proto.info.arch, dict(proto.info.kwargs), None


def distill(cfg: DistillConfig | dict[str, Any]) -> WorkflowResult:
    """Train a student with distillation objectives and compare it with the same student from scratch.

    Both arms train the same student architecture on the same examples for the same budget; the
    distilled arm adds the objectives in ``cfg.methods`` (logit KD, hints, attention, relations; any
    registered objective, also several teachers' worth). Output folder as :func:`finetune`, plus the
    teacher's own test accuracy and the parameter counts in ``metrics.json``.

    Example:
        >>> distill({"teacher": {"model": "runs/teacher"}, "student": {"model": "narrow:4"},
        ...          "data": {"dataset": "fashion-mnist"},
        ...          "methods": [{"name": "cross_entropy", "weight": 0.1},
        ...                      {"name": "kd", "weight": 0.9, "temperature": 4}]})  # doctest: +SKIP
    """
    import transferkit.transfer.distill  # noqa: F401  (registers the distillation objectives)
    from transferkit.transfer.distill import Teacher

    if not isinstance(cfg, DistillConfig):
        cfg = build_config(cfg, DistillConfig)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    data = load_target_data(cfg.data, seed=cfg.seeds[0])
    teacher_model = load_model(cfg.teacher.model, arch=cfg.teacher.arch)
    arch, kwargs, start = _build_student(cfg, teacher_model, data.num_classes)
    teacher = Teacher(teacher_model, precompute=cfg.teacher.precompute)
    build_objectives(cfg.methods, teacher=teacher)  # validate every method now, before training
    method_names = [str(m["name"]) for m in cfg.methods if m["name"] != "cross_entropy"]
    label = "+".join(method_names) or "cross_entropy"
    arms = [
        Arm(
            name=f"{cfg.name}/{label}",
            method=f"distillation ({label})",
            arch=arch,
            train=cfg.train,
            source=start,
            kwargs=kwargs,
            objectives=lambda: build_objectives(cfg.methods, teacher=teacher),
        )
    ]
    if cfg.baseline:
        arms.append(
            Arm(f"{cfg.name}/scratch", "student from scratch", arch, cfg.train, source=start, kwargs=kwargs)
        )
    teacher_metrics = evaluate(teacher_model, data.test)
    student_params = sum(
        p.numel() for p in create_model(arch, num_classes=data.num_classes, **kwargs).parameters()
    )
    teacher_params = sum(p.numel() for p in teacher_model.parameters())
    notes = [
        f"Teacher {teacher_model.info.arch} ({teacher_params:,} parameters): test accuracy "
        f"{teacher_metrics.accuracy:.3f}.",
        f"Student {arch} {kwargs} ({student_params:,} parameters, "
        f"{teacher_params / max(student_params, 1):.1f}x smaller).",
        "Both student arms: same data, same epochs, same seeds; only the objectives differ.",
    ]
    return run_arms(
        arms,
        data,
        seeds=cfg.seeds,
        shots=cfg.data.shots,
        val_shots=cfg.data.val_shots,
        out_dir=out,
        baseline=arms[-1].name,
        title=f"transferkit distill: {cfg.name}",
        notes=notes,
        resume=cfg.resume,
        extra={
            "teacher": {
                "arch": teacher_model.info.arch,
                "params": teacher_params,
                "accuracy": teacher_metrics.accuracy,
                "macro_f1": teacher_metrics.macro_f1,
            },
            "student": {"arch": arch, "kwargs": kwargs, "params": student_params},
        },
    )
