"""``adapt``: domain adaptation with model choice that never reads target labels.

Labelled source data and unlabelled target data of the same task. Every adaptation method (an
objective next to cross-entropy on the source) is trained for every trade-off weight and seed, next
to a source-only model and a target oracle. Checkpoint and weight are picked by a label-free
criterion (:mod:`transferkit.transfer.adapt.monitor`); the target test accuracy of every epoch is
recorded only to show, in the report, how far each criterion's choice is from the oracle choice.
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import Any

from transferkit.config import AdaptConfig, DomainDataConfig, adapt_method_name, build_config
from transferkit.data import DataSplits, TextDataset, load_dataset, match_shape, without_labels
from transferkit.engine import OBJECTIVES, CrossEntropy, Objective, build_objectives, check_coefficient
from transferkit.errors import ConfigError, LabelError, ShapeError
from transferkit.evaluation import RunResult
from transferkit.models import fitted_kwargs, load_source
from transferkit.transfer.adapt.monitor import CRITERIA
from transferkit.workflows.arms import Arm, WorkflowResult, run_arms
from transferkit.workflows.finetune import REST, load_unlabelled
from transferkit.workflows.output import data_fingerprint, describe_lines, describe_run, model_fingerprint

logger = logging.getLogger(__name__)

#: Label-free criteria shown in the report, then the oracle: label -> (epoch-row key, mode).
CHOICES: dict[str, tuple[str, str]] = {**CRITERIA, "oracle": ("oracle_accuracy", "max")}


def _load_domain(cfg: DomainDataConfig, seed: int) -> DataSplits:
    return load_dataset(cfg.dataset, root=cfg.root, val_fraction=cfg.val_fraction, seed=seed,
                        classes=cfg.classes, **cfg.file_options())


def _to_shape(splits: DataSplits, shape: tuple[int, ...]) -> DataSplits:
    return DataSplits(*(match_shape(d, shape) for d in (splits.train, splits.val, splits.test)))


def prepare_domains(
    source: DataSplits, target: DataSplits, image_size: int | None = None
) -> tuple[DataSplits, DataSplits]:
    """Bring both domains' images to one shape (same channels required; resized to
    ``image_size`` or the larger of the two sizes).

    Raises:
        LabelError: The domains have different numbers of classes (not the same task).
        ShapeError: The domains' inputs differ in channels or in rank.
    """
    if source.num_classes != target.num_classes:
        raise LabelError(
            f"source has {source.num_classes} classes but target {target.num_classes}; domain "
            "adaptation needs the same task (the same classes) in both domains"
        )
    s, t = source.train.input_shape, target.train.input_shape
    if len(s) != len(t) or (len(s) == 3 and s[0] != t[0]) or (len(s) != 3 and s != t):
        what = f"{s[0]} vs {t[0]} channels" if len(s) == len(t) == 3 else f"{s} vs {t}"
        raise ShapeError(
            f"source inputs {s} and target inputs {t} differ ({what}); convert one domain first, "
            f"e.g. transferkit.data.match_shape(target_split, {s})"
        )
    if len(s) != 3:
        return source, target
    size = image_size or max(s[1], s[2], t[1], t[2])
    shape = (s[0], size, size)
    return _to_shape(source, shape), _to_shape(target, shape)


def _model_kwargs(arch: str, given: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    """``given`` completed with what makes ``arch`` take ``shape`` natively (its spec's
    ``data_kwargs``; nothing for hub models and user classes, whose input adapter resizes)."""
    return {**fitted_kwargs(arch, shape), **given}


def _method_grid(methods: list[dict[str, Any]], weights: list[float]) -> list[tuple[str, float, dict]]:
    """(label, trade-off weight, objective spec) for every method and weight of the grid."""
    out = []
    for spec in methods:
        spec = dict(spec)
        name = adapt_method_name(spec["name"])
        spec["name"] = name
        cls = OBJECTIVES.get(name)
        if not getattr(cls, "uses_target", False):
            raise ConfigError(
                f"method {name!r} does not adapt to target data; use one of "
                f"{', '.join(n for n in OBJECTIVES.names() if OBJECTIVES.get(n).uses_target)}"
            )
        arg = cls.trade_off_option()
        grid = [spec[arg]] if arg in spec else weights
        for w in grid:
            w = check_coefficient(f"method {name!r}", arg, w, "e.g. 0.3")
            out.append((name, w, {**spec, arg: w}))
    return out


def _better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def choose(runs: list[RunResult], names: list[str], seed: int, key: str, mode: str) -> dict | None:
    """The (run, epoch) among ``names``' runs of ``seed`` with the best ``key`` in their history;
    returns ``{"name", "epoch", "value", "accuracy", "domain_gap"}`` or ``None``."""
    best: dict | None = None
    for run in runs:
        if run.name not in names or run.seed != seed:
            continue
        for row in run.history:
            v = row.get(key)
            if v is None or not math.isfinite(float(v)):
                continue
            if _better(float(v), None if best is None else best["value"], mode):
                best = {"name": run.name, "epoch": row["epoch"], "value": float(v),
                        "accuracy": row.get("oracle_accuracy"), "domain_gap": row.get("domain_gap")}
    return best


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def model_choice_table(
    runs: list[RunResult], groups: dict[str, list[str]], seeds: list[int], selected: str
) -> tuple[str, list[dict[str, Any]]]:
    """Target test accuracy of each criterion's choice (checkpoint and weight) per method.

    Args:
        runs: All runs (their histories hold every criterion and ``oracle_accuracy`` per epoch).
        groups: Method label -> names of its arms (one per trade-off weight).
        seeds: Seeds to average over.
        selected: The criterion the saved models were chosen by.

    Returns:
        The table as text and its rows as data.
    """
    rows: list[dict[str, Any]] = []
    for label, names in groups.items():
        row: dict[str, Any] = {"method": label}
        for crit, (key, mode) in CHOICES.items():
            picks = [choose(runs, names, s, key, mode) for s in seeds]
            picks = [p for p in picks if p is not None and p["accuracy"] is not None]
            row[crit] = [p["accuracy"] for p in picks]
            row[f"{crit}_picks"] = [f"{p['name'].rsplit('/', 1)[-1]}@{p['epoch']}" for p in picks]
            row[f"{crit}_gap"] = [p["domain_gap"] for p in picks if p["domain_gap"] is not None]
        rows.append(row)
    crits = list(CHOICES)
    head = ["method", *[f"{c} (label-free)" if c != "oracle" else "oracle (target labels)" for c in crits],
            f"oracle - {selected}", f"domain gap @{selected}"]
    table = [head]
    for row in rows:
        gap = [o - s for o, s in zip(row["oracle"], row[selected], strict=False)]
        table.append([row["method"], *[_fmt(row[c]) for c in crits],
                      f"{100 * statistics.fmean(gap):.1f} pp" if gap else "-",
                      f"{statistics.fmean(row[f'{selected}_gap']):.3f}" if row[f"{selected}_gap"] else "-"])
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"Accuracy: target test set, mean ± std over seeds {seeds}, of the checkpoint and weight "
                 "each criterion picks (label-free: source labels + unlabelled target only).")
    lines.append("Domain gap: accuracy of a linear classifier telling source from target features "
                 "(0.5 = aligned).")
    for row in rows:
        lines.append(f"{row['method']}: {selected} picked {', '.join(row[f'{selected}_picks'])}; "
                     f"oracle picked {', '.join(row['oracle_picks'])}")
    return "\n".join(lines), rows


def adapt(cfg: AdaptConfig | dict[str, Any]) -> WorkflowResult:
    """Adapt a model from labelled source data to unlabelled target data; compare with source-only.

    Writes into ``cfg.out`` what :func:`transferkit.workflows.finetune` writes, plus a model-choice
    table (report and ``metrics.json["model_choice"]``): per method, the target accuracy that each
    label-free criterion's choice of checkpoint and trade-off weight gave, next to the oracle choice.

    Example:
        >>> adapt({"source_data": {"dataset": "mnist5k"}, "target_data": {"dataset": "digits"},
        ...        "methods": [{"name": "dann"}, {"name": "coral"}], "weights": [0.3, 1.0],
        ...        "seeds": [0, 1, 2], "train": {"epochs": 10}})  # doctest: +SKIP

    Raises:
        LabelError: the domains have different classes.
        ShapeError: the domains' images differ in channels.
        DataError: a domain is empty.
        ConfigError: an unknown method, criterion or option.
    """
    import transferkit.transfer.adapt  # noqa: F401  (registers the adaptation objectives)
    from transferkit.transfer.adapt.monitor import AdaptationMonitor

    if not isinstance(cfg, AdaptConfig):
        cfg = build_config(cfg, AdaptConfig)
    grid = _method_grid(cfg.methods, cfg.weights)
    for _, _, spec in grid:
        build_objectives([spec])  # validate every method before any data or training
    if not grid and not cfg.source_only:
        raise ConfigError("nothing to train: give methods or set source_only=true")
    seed0 = cfg.seeds[0]
    source, target = prepare_domains(
        _load_domain(cfg.source_data, seed0), _load_domain(cfg.target_data, seed0), cfg.image_size
    )
    pool = cfg.target_data.unlabeled if cfg.target_data.unlabeled != REST else None
    if pool is None:
        unlabelled = without_labels(target.train, cfg.target_data.unlabeled_size, seed0)
    else:
        unlabelled = load_unlabelled(cfg.target_data, target, seed0)
    shape = source.train.input_shape
    spec = cfg.model.source_spec()
    start = load_source(spec) if spec is not None else None
    default = "text_transformer" if isinstance(source.train, TextDataset) else "small_cnn"
    arch = cfg.model.arch or (start.info.arch if start is not None else default)
    kwargs = _model_kwargs(arch, cfg.model.kwargs if start is None else start.info.kwargs, shape)
    # the criterion's epoch-row key and its declared direction, never guessed from the name
    select_key, select_mode = CRITERIA.get(cfg.select)
    train_cfg = cfg.train.model_copy(update={"select_metric": select_key, "select_mode": select_mode})

    def monitors() -> list[AdaptationMonitor]:
        return [AdaptationMonitor(source.train, source.val, unlabelled, oracle=target.test)]

    common = dict(arch=arch, train=train_cfg, source=start, kwargs=kwargs, exclude=(), data=source,
                  monitors=monitors)
    arms: list[Arm] = []
    groups: dict[str, list[str]] = {}
    if cfg.source_only:
        arms.append(Arm(f"{cfg.name}/source-only", "source only", **common))
        groups["source only"] = [arms[-1].name]
    for name, w, spec in grid:
        arm_name = f"{cfg.name}/{name}/w={w:g}"

        def objectives(spec: dict = spec) -> list[Objective]:
            return [CrossEntropy(), *build_objectives([spec])]

        arms.append(Arm(arm_name, f"{name} (w={w:g})", objectives=objectives, target=unlabelled, **common))
        groups.setdefault(name, []).append(arm_name)
    if cfg.oracle:
        arms.append(Arm(f"{cfg.name}/target-oracle", "target oracle (trained on target labels)", arch,
                        cfg.train, source=start, kwargs=kwargs, exclude=(), data=target, export=False))
    baseline = arms[0].name if cfg.source_only else None  # no method arm passes for the baseline

    def finalize(runs: list[RunResult]) -> tuple[list[tuple[str, str]], dict[str, Any]]:
        text, rows = model_choice_table(runs, groups, cfg.seeds, cfg.select)
        logger.info("model choice:\n%s", text)
        return ([("Model choice without target labels", text)],
                {"model_choice": {"criterion": cfg.select, "rows": rows}})

    fingerprints = {
        "source_data": data_fingerprint(source, cfg.source_data.dataset),
        "target_data": data_fingerprint(target, cfg.target_data.dataset),
        "start": model_fingerprint(start, cfg.model.source),
    }
    if pool is not None:
        fingerprints["unlabeled"] = data_fingerprint(unlabelled, pool)
    method_names = list(dict.fromkeys(name for name, _, _ in grid))
    t = cfg.train
    recipe = {
        "arch": arch, "strategy": t.strategy, "epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size,
        "backbone_lr_scale": t.backbone_lr_scale,
        "methods": [{"name": adapt_method_name(m["name"]),
                     **{k: v for k, v in m.items() if k != "name"}} for m in cfg.methods],
        "weights": list(cfg.weights), "select": cfg.select,
    }
    if cfg.source_only:
        baseline_text = (f"source only: the same {arch} trained with cross-entropy on the labelled source "
                         f"alone (same epochs and seeds, checkpoint chosen by {cfg.select})")
    else:
        baseline_text = "none (source_only off): no source-only model, so no gain from adapting is measured"
    if cfg.oracle:
        baseline_text += ("; target oracle: trained on the labelled target training split, an upper bound "
                          "that needs the target labels adaptation does without")
    items = "texts" if isinstance(source.train, TextDataset) else "images"
    oracle_text = (f"; the target oracle trains on {len(target.train):,} labelled target training {items} "
                   f"({len(target.val):,} validation)" if cfg.oracle else "")
    inputs = "; inputs: texts" if items == "texts" else f"; inputs {shape}"
    data_use = (
        f"source {cfg.source_data.dataset}: all {len(source.train):,} labelled training {items} "
        f"({len(source.val):,} validation {items} for model choice); target {cfg.target_data.dataset}: "
        f"{len(unlabelled):,} {'training ' if pool is None else ''}{items} without labels"
        f"{'' if pool is None else f' ({pool})'}, {len(target.test):,} labelled test {items} "
        f"used only for the reported accuracy{oracle_text}{inputs}"
    )
    about = describe_run(
        "adapt",
        fingerprints={"source": fingerprints["start"], "source_data": fingerprints["source_data"],
                      "data": fingerprints["target_data"]},
        shots=None, val_shots=None, seeds=cfg.seeds, recipe=recipe, baseline=baseline_text,
        data_use=data_use,
    )
    notes = [
        *describe_lines(about),
        f"Checkpoints and trade-off weights chosen by {cfg.select} ({select_key}), which reads only source "
        "labels and unlabelled target inputs"
        + ("; the target oracle trains on target labels (an upper bound)." if cfg.oracle else "."),
    ]
    what = f"methods {', '.join(method_names)}" if method_names else "source only"
    return run_arms(
        arms,
        DataSplits(source.train, source.val, target.test),
        seeds=cfg.seeds,
        out_dir=cfg.out,
        baseline=baseline,
        title=(f"transferkit adapt ({cfg.name}): {cfg.source_data.dataset} -> {cfg.target_data.dataset}, "
               f"{what}; chosen by {cfg.select}"),
        notes=notes,
        resume=cfg.resume,
        overwrite=cfg.overwrite,
        config=cfg,
        fingerprints=fingerprints,
        kind="adapt",
        finalize=finalize,
        extra={"about": about, "source_data": cfg.source_data.dataset,
               "target_data": cfg.target_data.dataset},
    )


__all__ = ["CHOICES", "adapt", "choose", "model_choice_table", "prepare_domains"]
