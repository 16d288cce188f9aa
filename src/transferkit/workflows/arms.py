"""Arms and the loop that runs them: every workflow is a list of :class:`Arm` s trained and evaluated
on the same data for every seed, so a transfer arm and its baseline always see the same examples and
budget."""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from transferkit.config import dump_config
from transferkit.data import DataSplits, TensorDataset, few_shot
from transferkit.data.text import TextDataset, tfidf_fit
from transferkit.data.tokens import model_inputs
from transferkit.engine import (
    Objective,
    TrainConfig,
    Trainer,
    predict_features,
)
from transferkit.engine.parameter_efficient import adapted_layers, save_adapters
from transferkit.engine.predict import backbone_digest
from transferkit.engine.strategies import ParameterCount
from transferkit.errors import ConfigError
from transferkit.evaluation import (
    Metrics,
    RunResult,
    classification_metrics,
    evaluate,
    evaluate_with_head,
    fit_warnings,
    format_table,
    summarize,
    write_metrics_json,
    write_report,
)
from transferkit.evaluation.similarity import block_pairs, layer_cka, weight_change
from transferkit.io import atomic_write_text
from transferkit.models import TransferNet, create_model, save_model
from transferkit.transfer import TransferReport, check_copied_function, transfer_parameters
from transferkit.workflows.output import OutputFolder, open_output

logger = logging.getLogger(__name__)


STRATEGY_NAMES = {
    "full": "full fine-tune",
    "linear_probe": "linear probe",
    "gradual": "gradual unfreezing",
    "lora": "LoRA / peft adapters",
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
        data: Training/validation splits of this arm when they are not the workflow's (domain
            adaptation trains on the source; its oracle on the labelled target); the test split
            is always the workflow's.
        target: Unlabelled target data for objectives that adapt to it (``Trainer.fit(target=)``).
        monitors: Builds the run's per-epoch monitors (``Trainer(monitors=)``).
        export: Whether the arm may be the exported ``model/`` (``False`` for an oracle that trains on
            labels a user would not have).
        lr_sweep: Learning rates to try for every seed; the run best on validation (the selection
            metric at its kept epoch) is kept, and the others are recorded. Empty: ``train.lr`` only.
        reference: For an arm that transfers no model but is not the baseline either (from scratch
            with unlabelled data): what its gain measures, shown instead of a negative-transfer flag.
        chained: ``objectives`` takes one argument: the models the arms before this one trained for the
            same seed, by arm name (``{}`` in the preflight check), e.g. a noisy-student round whose
            teacher is the previous round's student.
        compare_to: The model the report compares this arm's trained model with, layer by layer (linear
            CKA, weight change): default ``source``; a distilled student's teacher.
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
    data: DataSplits | None = None
    target: TensorDataset | None = None
    monitors: Callable[[], list[Callable[[Trainer], dict[str, Any]]]] | None = None
    export: bool = True
    lr_sweep: Sequence[float] = ()
    reference: str | None = None
    chained: bool = False
    compare_to: TransferNet | None = None

    def build_objectives(self, earlier: dict[str, TransferNet] | None = None) -> list[Objective] | None:
        """This arm's objectives (``None``: cross-entropy alone); ``earlier`` for a chained arm."""
        if self.objectives is None:
            return None
        return self.objectives(earlier or {}) if self.chained else self.objectives()  # type: ignore[call-arg]


@dataclass
class WorkflowResult:
    """What a workflow produced.

    Attributes:
        runs: One result per (arm, seed).
        summary: Per-arm means over seeds with the gain against the baseline.
        baseline: Name of the baseline arm.
        out_dir: Output folder.
        best_name: The exported arm (see :func:`choose_export`: chosen on validation, never on
            test); its first-seed model is in ``out_dir/model``.
        transfer_reports: Parameter-transfer report per arm (first seed).
    """

    runs: list[RunResult]
    summary: list[dict[str, Any]]
    baseline: str | None
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
    """Create the arm's target model and copy the source's parameters into it.

    A target of the source's architecture also takes the source's normalisation, resizing and crop
    (which the user may have set: ``--mean``, ``--std``), at its own input size."""
    model = create_model(arm.arch, num_classes=num_classes, pretrained=False, **arm.kwargs)
    if arm.source is None:
        return model, None
    src_info = getattr(arm.source, "info", None)
    if src_info is not None and src_info.arch == model.info.arch:
        for key in ("mean", "std", "interpolation", "crop_pct"):
            setattr(model.info, key, getattr(src_info, key))
        model.input_adapter = model.info.adapter()
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
    """Test metrics of a linear probe from backbone features computed once per frozen backbone."""
    if key not in cache:
        cache[key] = predict_features(model.to("cpu"), test, batch_size=batch_size, device="cpu")
    feats = cache[key]
    head = model.head.to("cpu").eval()
    with torch.inference_mode():
        preds = torch.cat([head(f).argmax(1) for f in feats.split(4096)])
    return classification_metrics(test.y, preds, test.num_classes, test.classes)


def preflight(arms: Sequence[Arm], data: DataSplits, splits: DataSplits) -> None:
    """Build every arm's model, objectives and trainer and run the trainer's checks
    (:meth:`Trainer.check`) on the first seed's data, training nothing and writing nothing: a bad
    architecture, option, device, label or input shape is refused before the output folder is touched.
    """
    for arm in arms:
        model, _ = build_target(arm, data.num_classes)
        trainer = Trainer(model, arm.train, objectives=arm.build_objectives())
        own = arm.data if arm.data is not None else splits
        trainer.check(own.train, own.val, target=arm.target)


def run_arms(
    arms: Sequence[Arm],
    data: DataSplits,
    *,
    seeds: Sequence[int] = (0,),
    shots: int | None = None,
    val_shots: int | None = None,
    out_dir: str | os.PathLike,
    baseline: str | None,
    title: str = "transferkit report",
    notes: Sequence[str] = (),
    on_run: Callable[[RunResult], None] | None = None,
    resume: bool = False,
    extra: dict[str, Any] | None = None,
    source_eval: TensorDataset | None = None,
    finalize: Callable[[list[RunResult]], tuple[list[tuple[str, str]], dict[str, Any]]] | None = None,
    overwrite: bool = False,
    config: BaseModel | None = None,
    fingerprints: Mapping[str, Any] | None = None,
    kind: str = "run",
    output: OutputFolder | None = None,
    classical: bool = True,
    gain_metric: str = "accuracy",
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
        baseline: Name of the arm every other arm is compared with (``None``: no comparison).
        on_run: Called after each run (e.g. to print progress).
        resume: Continue each run from its checkpoint in ``out_dir/runs`` (see ``Trainer.fit``).
        extra: More top-level entries for ``metrics.json``.
        source_eval: Labelled test data of the *source* task. When given, every arm with a source
            also reports the source-task accuracy of its fine-tuned backbone with the source head
            (LwF's jointly trained old head when LwF is among its objectives), before and after.
        finalize: Called with all runs before anything is written; returns ``(tables, info)``:
            ``(title, text)`` tables for the report and more ``metrics.json`` entries.
        overwrite: Replace earlier results in ``out_dir`` once this run has finished (see
            :func:`transferkit.workflows.output.open_output`; without it or ``resume``, a folder
            holding results is refused).
        config: The workflow's resolved config, written as ``config.yaml``; with ``fingerprints``
            (the data and source models, see :mod:`transferkit.workflows.output`) it is what the run
            is, recorded in ``run.json`` and compared on ``resume``.
        fingerprints: The data and source-model fingerprints of the run.
        kind: The workflow's name in ``run.json``.
        output: An output folder the caller opened (and commits); ``out_dir``, ``overwrite`` and
            ``fingerprints`` are then not used.
        classical: On text data, also fit TF-IDF + logistic regression on every seed's examples (C
            chosen on validation), a row of the comparison named :data:`TFIDF_NAME`.
        gain_metric: What gains over the baseline are measured in: ``"accuracy"`` or ``"macro_f1"``
            (classes of very different sizes in the test split).

    Raises:
        ConfigError: repeated arm names, or the output folder can't be used (see ``open_output``).
    """
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"arm names must be unique, got {names}; rename the repeated ones")
    preflight(arms, data, target_splits(data, shots, val_shots, seeds[0]))
    identity = {"config": config.model_dump(mode="json") if config is not None else None,
                **(fingerprints or {})}
    folder = output if output is not None else open_output(
        out_dir, identity, resume=resume, overwrite=overwrite, kind=kind
    )
    out = folder.work
    if config is not None:
        atomic_write_text(out / "config.yaml", dump_config(config))
    runs: list[RunResult] = []
    reports: dict[str, TransferReport] = {}
    feature_cache: dict[str, torch.Tensor] = {}
    first_models: dict[str, TransferNet] = {}
    source_before: dict[str, float] = {}
    for seed in seeds:
        splits = target_splits(data, shots, val_shots, seed)
        trained: dict[str, TransferNet] = {}  # this seed's models, for chained arms
        for arm in arms:
            start = time.perf_counter()
            train_splits = arm.data if arm.data is not None else splits
            run_dir = out / "runs" / arm.name.replace("/", "-") / f"seed{seed}"
            tried: dict[str, float | None] = {}
            best = None
            for lr in arm.lr_sweep or (None,):
                update = {"seed": seed} if lr is None else {"seed": seed, "lr": lr}
                cfg = arm.train.model_copy(update=update)
                trial = _train(arm, cfg, data, train_splits, run_dir if lr is None else run_dir / f"lr{lr:g}",
                               out, resume, probe=arm.name not in reports, earlier=trained)
                if lr is not None:
                    tried[f"{lr:g}"] = trial[2].best_value
                if best is None or _better(trial[2], best[2], cfg):
                    best = (*trial, cfg)
            assert best is not None
            model, report, history, objectives, cfg = best
            trained[arm.name] = model
            if report is not None and arm.name not in reports:
                reports[arm.name] = report
            if cfg.strategy == "linear_probe" and arm.source is not None:
                # keyed by the frozen backbone's weights: arms reading the same features share one pass
                metrics = _frozen_test_metrics(model, data.test, feature_cache, backbone_digest(model),
                                               cfg.eval_batch_size)
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
                    "train_examples": len(train_splits.train),
                    "val_examples": len(train_splits.val),
                    "test_examples": len(data.test),
                    "best_epoch": history.best_epoch,
                    "select_metric": cfg.select_metric,
                    "best_value": history.best_value,
                    **_fit_accuracy(history.epochs),
                    **({"lr": cfg.lr, "lr_sweep": tried} if tried else {}),
                    **_parameter_counts(history.epochs),
                    **retention,
                    **({"reference": arm.reference} if arm.reference else {}),
                },
            )
            runs.append(result)
            first_models.setdefault(arm.name, model)
            if on_run is not None:
                on_run(result)
        if classical and isinstance(splits.train, TextDataset):  # the classical text baseline, same examples
            runs.append(_tfidf_run(splits, seed, data))
            if on_run is not None:
                on_run(runs[-1])
    summary = summarize(runs, baseline, gain_metric)
    best, export_rule = choose_export(runs, arms)
    best_model = first_models[best]
    classes = list(getattr(splits.test, "classes", []) or [])  # the target's (adapt trains on the source)
    if len(classes) == best_model.info.num_classes and best_model.info.tasks is None:
        best_model.info.class_names = classes  # `transferkit predict` names its predictions
    if adapted_layers(best_model):  # lora with save: adapters: the base folder + the adapter files
        save_adapters(best_model, out / "model")
    else:
        save_model(best_model, out / "model")
    for name, report in reports.items():
        atomic_write_text(out / "transfer" / f"{name.replace('/', '-')}.txt", report.table() + "\n")
    tables, finalize_info = finalize(runs) if finalize is not None else ([], {})
    tables = [*tables, *_trainable_table(runs)]
    info = {
        "best": best,
        "best_chosen_by": export_rule,
        "seeds": list(seeds),
        "shots": shots,
        "val_shots": val_shots,
        "transfer": {k: v.summary() for k, v in reports.items()},
        "warnings": fit_warnings(summary),
        **(extra or {}),
        **finalize_info,
    }
    similarity = similarity_panels(arms, first_models, data.test)
    if similarity:
        info["similarity"] = similarity
    write_metrics_json(out / "metrics.json", runs, baseline, extra=info, metric=gain_metric)
    write_report(out, runs, baseline, title=title, notes=notes, tables=tables, metric=gain_metric,
                 similarity=similarity, similarity_intro=SIMILARITY_INTRO)
    if output is None:
        folder.commit()
    return WorkflowResult(runs, summary, baseline, folder.root, best, reports)


SIMILARITY_INTRO = (
    "Rows: the arms with a source (or a teacher), their first seed; columns: the trained model's backbone "
    "blocks, input side first. Linear CKA between the source's (teacher's) representation and the trained "
    "model's on test inputs (1: the same up to rotation and scale; a student's block is compared with the "
    "teacher's block at the same relative depth), and each block's relative weight change from the source "
    "(models of one architecture).")
CKA_PANEL, CHANGE_PANEL = "linear CKA to the source / teacher", "relative weight change from the source"


def similarity_panels(arms: Sequence[Arm], models: Mapping[str, TransferNet], test: Any,
                      examples: int = 256) -> dict[str, dict[str, dict[str, float]]]:
    """What each arm's training changed, layer by layer, against its source or teacher (the report's
    heat maps); arms without either, or whose layers can't be compared, are left out (logged)."""
    cka: dict[str, dict[str, float]] = {}
    change: dict[str, dict[str, float]] = {}
    for arm in arms:
        ref = arm.compare_to if arm.compare_to is not None else arm.source
        model = models.get(arm.name)
        if ref is None or model is None:
            continue
        try:
            ref, model = ref.to("cpu"), model.to("cpu")
            xa, xb = model_inputs(test, ref).x[:examples], model_inputs(test, model).x[:examples]
            cka[arm.name] = layer_cka(ref, model, xa, inputs_b=xb, pairs=block_pairs(ref, model))
            moved = weight_change(ref, model)
            if moved:
                change[arm.name] = moved
        except Exception as exc:  # an optional section of a finished run's report: said, never fatal
            logger.warning("no layer-by-layer comparison for %s in the report: %s", arm.name, exc)
    return {k: v for k, v in ((CKA_PANEL, cka), (CHANGE_PANEL, change)) if v}


TFIDF_NAME = "tfidf+lr"


def _tfidf_run(splits: DataSplits, seed: int, data: DataSplits) -> RunResult:
    """TF-IDF + logistic regression (``C`` chosen on validation) on one seed's examples."""
    start = time.perf_counter()
    metrics, val_accuracy, c = tfidf_fit(splits)
    return RunResult(
        name=TFIDF_NAME, method="TF-IDF + logistic regression", metrics=metrics,
        seconds=time.perf_counter() - start, seed=seed,
        extra={"arch": "tfidf", "reference": True, "C": c, "best_value": val_accuracy,
               "select_metric": "val_accuracy", "train_examples": len(splits.train),
               "val_examples": len(splits.val), "test_examples": len(data.test)},
    )


def _train(
    arm: Arm, cfg: TrainConfig, data: DataSplits, splits: DataSplits, run_dir: Path, out: Path, resume: bool,
    *, probe: bool, earlier: dict[str, TransferNet] | None = None,
) -> tuple[TransferNet, TransferReport | None, Any, list[Objective] | None]:
    """Build, transfer into and train one arm's model for one seed and learning rate; with ``probe``
    (the run whose transfer report is kept: the first seed's) check the copy on a probe batch first."""
    torch.manual_seed(cfg.seed)
    model, report = build_target(arm, data.num_classes)
    if probe and report is not None and arm.source is not None:  # the copy computes what the source did?
        check_copied_function(arm.source, model, report)
    objectives = arm.build_objectives(earlier)
    monitors = arm.monitors() if arm.monitors is not None else None
    trainer = Trainer(model, cfg, objectives=objectives, run_dir=run_dir, monitors=monitors,
                      cache_dir=out / "cache")
    history = trainer.fit(splits.train, splits.val, target=arm.target, resume=resume)
    return model, report, history, objectives


def _better(history: Any, than: Any, cfg: TrainConfig) -> bool:
    """Whether a learning-rate trial's kept epoch beats the best so far on the selection metric."""
    if history.best_value is None:
        return False
    if than.best_value is None:
        return True
    if cfg.selection_mode() == "max":
        return history.best_value > than.best_value
    return history.best_value < than.best_value


def _fit_accuracy(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The best training accuracy the run reached in any epoch (measured while training, on its own
    training examples): how well the arm fit its data."""
    accs = [float(r["train_accuracy"]) for r in rows if r.get("train_accuracy") is not None]
    return {"train_accuracy": max(accs)} if accs else {}


def choose_export(runs: Sequence[RunResult], arms: Sequence[Arm]) -> tuple[str, str]:
    """The arm whose model is exported, chosen on validation data only, and the rule used.

    Each run contributes the value of its selection metric at the epoch it kept (its validation
    accuracy by default; a label-free criterion in domain adaptation); an arm's score is the mean over
    seeds. When the exportable arms select by different metrics, validation accuracy decides. Arms
    with ``export=False`` (an oracle) are never chosen. Test numbers are never read.

    Returns:
        ``(arm name, rule)``, the rule as text for ``metrics.json`` (``"val_accuracy (max), mean over
        seeds"``).
    """
    eligible = [a for a in arms if a.export] or list(arms)
    names = {a.name for a in eligible}
    modes = {a.train.select_metric: a.train.selection_mode() for a in eligible}
    key, mode = next(iter(modes.items())) if len(modes) == 1 else ("val_accuracy", "max")
    scores: dict[str, list[float]] = {a.name: [] for a in eligible}
    for run in runs:
        if run.name not in names or not run.history:
            continue
        epoch = run.extra.get("best_epoch") or len(run.history)
        value = run.history[epoch - 1].get(key)
        if value is not None and math.isfinite(float(value)):
            scores[run.name].append(float(value))
    rated = {n: statistics.fmean(v) for n, v in scores.items() if v}
    rule = f"{key} ({mode}), mean over seeds"
    if not rated:
        return eligible[0].name, "no validation values: the first arm"
    pick = max(rated, key=rated.get) if mode == "max" else min(rated, key=rated.get)
    return pick, rule


def _parameter_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The trainable and total parameter counts of a run's last epoch (from its history rows)."""
    last = rows[-1] if rows else {}
    trainable, total = last.get("trainable_params"), last.get("total_params")
    if trainable is None or not total:
        return {}
    return {"trainable_params": trainable, "total_params": total, "trainable_fraction": trainable / total}


def _trainable_table(runs: Sequence[RunResult]) -> list[tuple[str, str]]:
    """A report section with every arm's trainable parameters (first seed), when the runs have them."""
    lines, seen = [], set()
    for run in runs:
        if run.name in seen or "trainable_params" not in run.extra:
            continue
        seen.add(run.name)
        count = ParameterCount(run.extra["trainable_params"], run.extra["total_params"])
        lines.append((run.name, f"{run.method}: {count}"))
    width = max((len(name) for name, _ in lines), default=0)
    return [("Trainable parameters", "\n".join(f"{n.ljust(width)}  {t}" for n, t in lines))] if lines else []


def _source_head(source: TransferNet, objectives: Sequence[Objective] | None) -> nn.Module:
    """The head to measure the source task with: an objective's own (LwF trains the old head)."""
    for obj in objectives or ():
        getter = getattr(obj, "source_head", None)
        if callable(getter):
            return getter()
    return source.head
