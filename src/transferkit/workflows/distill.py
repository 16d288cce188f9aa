"""``distill``: a student trained with distillation objectives against the same student from scratch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from transferkit.config import DistillConfig, build_config
from transferkit.engine import (
    OBJECTIVES,
    build_objectives,
)
from transferkit.engine.predict import examples_per_second
from transferkit.errors import ConfigError
from transferkit.evaluation import (
    evaluate,
)
from transferkit.models import TransferNet, create_model, load_model, load_source, narrow_model
from transferkit.workflows.arms import Arm, WorkflowResult, run_arms
from transferkit.workflows.finetune import check_unlabelled, load_target_data, load_unlabelled
from transferkit.workflows.output import (
    data_fingerprint,
    describe_lines,
    describe_run,
    method_weights,
    model_fingerprint,
)

logger = logging.getLogger(__name__)


def _device_name() -> str:
    import os

    return f"CPU, {torch.get_num_threads()} threads of {os.cpu_count()} cores"


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
    from transferkit.transfer.distill import LogitKD, Teacher

    if not isinstance(cfg, DistillConfig):
        cfg = build_config(cfg, DistillConfig)
    data = load_target_data(cfg.data, seed=cfg.seeds[0])
    teacher_model = load_source(cfg.teacher.source_spec())
    arch, kwargs, start = _build_student(cfg, teacher_model, data.num_classes)
    teacher = Teacher(teacher_model, precompute=cfg.teacher.precompute)
    unlabelled = load_unlabelled(cfg.data, data, cfg.seeds[0])
    methods = list(cfg.methods)
    if unlabelled is not None:  # logit KD distils on the unlabelled examples too (the transfer set)
        methods = [{**m, "unlabeled": True} if OBJECTIVES.get(str(m["name"])) is LogitKD
                   and "unlabeled" not in m else m for m in methods]
    built = build_objectives(methods, teacher=teacher)  # validate every method now, before training
    check_unlabelled([o.name for o in built if o.uses_target], unlabelled,
                     "-m kd (distillation on them), pseudo_label, fixmatch or mean_teacher")
    reads_unlabelled = any(o.uses_target for o in built)
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
            objectives=lambda: build_objectives(methods, teacher=teacher),
            target=unlabelled if reads_unlabelled else None,
            compare_to=teacher_model,
        )
    ]
    for r in range(2, cfg.rounds + 1):  # noisy student: the previous round's student teaches a fresh one
        previous = arms[-1].name

        def chained(earlier: dict, previous: str = previous) -> list:
            model = earlier.get(previous, teacher_model)  # the preflight check has no students yet
            return build_objectives(methods, teacher=Teacher(model, precompute=cfg.teacher.precompute,
                                                             name=f"student of {previous}"))

        arms.append(Arm(name=f"{cfg.name}/{label}/round{r}", method=f"noisy student round {r} ({label})",
                        arch=arch, train=cfg.train, source=start, kwargs=kwargs, objectives=chained,
                        target=arms[0].target, chained=True, compare_to=teacher_model))
    if cfg.baseline:
        arms.append(
            Arm(f"{cfg.name}/scratch", "student from scratch", arch, cfg.train, source=start, kwargs=kwargs,
                compare_to=teacher_model)
        )
    teacher_metrics = evaluate(teacher_model, data.test)
    student_proto = create_model(arch, num_classes=data.num_classes, **kwargs)
    student_params = sum(p.numel() for p in student_proto.parameters())
    # inference speed of both on the same test examples, one after the other on this machine
    speeds = {"teacher": examples_per_second(teacher_model, data.test),
              "student": examples_per_second(student_proto, data.test)}
    teacher_params = sum(p.numel() for p in teacher_model.parameters())
    fingerprints = {
        "data": data_fingerprint(data, cfg.data.dataset),
        "teacher": model_fingerprint(teacher_model, cfg.teacher.model),
        "student_start": model_fingerprint(start, cfg.student.model),
    }
    if unlabelled is not None:
        fingerprints["unlabeled"] = data_fingerprint(unlabelled, cfg.data.unlabeled)
    t = cfg.train
    recipe = {"strategy": t.strategy, "epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size,
              "backbone_lr_scale": t.backbone_lr_scale, "methods": method_weights(cfg.methods),
              **({"rounds": cfg.rounds} if cfg.rounds > 1 else {})}
    if unlabelled is not None:
        recipe["unlabeled"] = (f"{len(unlabelled):,} examples of {cfg.data.unlabeled}, "
                               f"{t.unlabeled_ratio} per labelled example in a step")
    origin = "from scratch" if start is None else f"from the same starting weights ({cfg.student.model})"
    if cfg.baseline:
        baseline_text = (f"the same student ({arch}) trained {origin} with cross-entropy only, on the same "
                         "examples, epochs and seeds (no teacher)")
    else:
        baseline_text = ("none (baseline off): no student trained without the teacher, so no gain from "
                         "distillation is measured")
    about = describe_run(
        "distill", fingerprints=fingerprints, shots=cfg.data.shots, val_shots=cfg.data.val_shots,
        seeds=cfg.seeds, recipe=recipe, baseline=baseline_text,
        student={"spec": cfg.student.model, "arch": arch, "kwargs": kwargs, "params": student_params,
                 "start": fingerprints["student_start"]},
    )
    notes = [
        *describe_lines(about),
        f"Teacher {teacher_model.info.arch} ({teacher_params:,} parameters): test accuracy "
        f"{teacher_metrics.accuracy:.3f}.",
        f"Student {arch} {kwargs} ({student_params:,} parameters, "
        f"{teacher_params / max(student_params, 1):.1f}x smaller).",
        f"Inference on this machine ({_device_name()}), batches of 64 test examples: teacher "
        f"{speeds['teacher']:,.0f} examples/s, student {speeds['student']:,.0f} examples/s "
        f"({speeds['student'] / max(speeds['teacher'], 1e-9):.1f}x).",
        "Both student arms: same data, same epochs, same seeds; only the objectives differ."
        if cfg.baseline else "One student arm (baseline off).",
        *([f"Noisy-student rounds: {cfg.rounds}; round r's teacher is round r-1's student (same seed), "
           "every round's student starts fresh."] if cfg.rounds > 1 else []),
    ]
    shots_text = f", {cfg.data.shots} labels per class" if cfg.data.shots else ""
    title = (f"transferkit distill ({cfg.name}): teacher {cfg.teacher.model} ({teacher_model.info.arch}) "
             f"-> student {arch} on {cfg.data.dataset}{shots_text}")
    return run_arms(
        arms,
        data,
        seeds=cfg.seeds,
        shots=cfg.data.shots,
        val_shots=cfg.data.val_shots,
        out_dir=cfg.out,
        baseline=arms[-1].name if cfg.baseline else None,
        title=title,
        notes=notes,
        resume=cfg.resume,
        overwrite=cfg.overwrite,
        config=cfg,
        fingerprints=fingerprints,
        kind="distill",
        extra={
            "about": about,
            "teacher": {
                "arch": teacher_model.info.arch,
                "params": teacher_params,
                "accuracy": teacher_metrics.accuracy,
                "macro_f1": teacher_metrics.macro_f1,
                "examples_per_second": speeds["teacher"],
            },
            "student": {"arch": arch, "kwargs": kwargs, "params": student_params,
                        "examples_per_second": speeds["student"]},
        },
    )
