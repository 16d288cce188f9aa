"""``finetune``: source model -> parameter transfer -> fine-tune -> comparison with scratch."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from transferkit.config import DataConfig, DomainDataConfig, FinetuneConfig, build_config
from transferkit.data import DataSplits, TensorDataset, TextDataset, load_dataset, match_shape, without_labels
from transferkit.data.text import TEXT_SUFFIXES, read_text_file
from transferkit.engine import (
    OBJECTIVES,
    CrossEntropy,
    Objective,
    TrainConfig,
    build_objectives,
)
from transferkit.errors import ConfigError, DataError
from transferkit.models import TransferNet, check_model_args, fitted_kwargs
from transferkit.models import load_source as load_source_model
from transferkit.recipes import Recipe, apply_recipe, auto_recipe, load_recipe
from transferkit.workflows.arms import STRATEGY_NAMES, Arm, WorkflowResult, run_arms
from transferkit.workflows.output import (
    data_fingerprint,
    describe_lines,
    describe_run,
    model_fingerprint,
)

logger = logging.getLogger(__name__)


def load_source(cfg: FinetuneConfig) -> TransferNet | None:
    """The source model named by ``cfg.model`` (``None`` when training from scratch)."""
    spec = cfg.model.source_spec()
    return load_source_model(spec) if spec is not None else None


def load_target_data(cfg: DataConfig, seed: int = 0) -> DataSplits:
    """The target dataset's splits (validation carved from training with ``seed``)."""
    return load_dataset(cfg.dataset, root=cfg.root, val_fraction=cfg.val_fraction, seed=seed,
                        classes=cfg.classes, **cfg.file_options())


#: ``data.unlabeled`` naming the target's own training split.
REST = "rest"


def overlaps(a: str, b: str) -> bool:
    """Whether datasets ``a`` and ``b`` may share examples: one built-in under two names (case or
    alias), a corpus and one of its domains (``tweets`` and ``tweets:apple``), one file or folder,
    or a folder and a path inside it."""
    from transferkit.data.builtin import DATASETS

    if a in DATASETS and b in DATASETS:
        base_a, _, domain_a = a.lower().partition(":")
        base_b, _, domain_b = b.lower().partition(":")
        return DATASETS.get(a) is DATASETS.get(b) or (base_a == base_b and not (domain_a and domain_b))
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if not (pa.exists() and pb.exists()):
        return False
    pa, pb = pa.resolve(), pb.resolve()
    return pa == pb or pa.is_relative_to(pb) or pb.is_relative_to(pa)


def load_unlabelled(cfg: DataConfig | DomainDataConfig, data: DataSplits, seed: int = 0) -> Any:
    """The unlabelled pool of ``cfg.unlabeled`` (``None`` when unset): the target's training split
    (``"rest"``), a text file's texts for a text target (``.txt``: one a line; ``.csv`` / ``.tsv`` /
    ``.jsonl``: the ``cfg.text_column`` column, labels not needed) or another dataset's training split
    at the target's input shape, labels dropped, ``cfg.unlabeled_size`` of it drawn with ``seed``.

    Raises:
        DataError: the pool is empty, overlaps the target data (see :func:`overlaps`: its held-out
            examples would be trained on), or is text for an image target (or the other way round).
    """
    if cfg.unlabeled is None:
        return None
    if cfg.unlabeled == REST:
        return without_labels(data.train, cfg.unlabeled_size, seed)
    path = Path(cfg.unlabeled).expanduser()
    if overlaps(cfg.unlabeled, cfg.dataset):
        raise DataError(f"unlabeled data {cfg.unlabeled!r} is (part of) the target data {cfg.dataset!r}: its "
                        "held-out (validation or test) examples would be trained on; use --unlabeled rest "
                        "(the target's training split without labels)")
    text_file = path.suffix.lower() in (".txt", *TEXT_SUFFIXES) and path.is_file()
    if text_file and isinstance(data.train, TextDataset):
        return without_labels(read_text_file(path, text_column=cfg.text_column, label_column=None),
                              cfg.unlabeled_size, seed)
    if path.suffix.lower() == ".txt" and path.is_file():
        raise DataError(f"unlabeled data {cfg.unlabeled!r} holds texts but the target {cfg.dataset!r} holds "
                        "images or vectors; give unlabelled data of the target's kind, or 'rest'")
    pool = load_dataset(cfg.unlabeled, val_fraction=0.0, seed=seed).train
    if isinstance(pool, TextDataset) != isinstance(data.train, TextDataset):
        kinds = ("texts", "images or vectors")
        have, want = (kinds[0], kinds[1]) if isinstance(pool, TextDataset) else (kinds[1], kinds[0])
        raise DataError(f"unlabeled data {cfg.unlabeled!r} holds {have} but the target {cfg.dataset!r} "
                        f"holds {want}; give unlabelled data of the target's kind, or 'rest'")
    shape = data.train.input_shape
    if isinstance(pool, TensorDataset) and pool.input_shape != shape:
        pool = match_shape(pool, shape)
    return without_labels(pool, cfg.unlabeled_size, seed)


def check_unlabelled(users: list[str], unlabelled: Any, methods: str = "-m pseudo_label, fixmatch or "
                     "mean_teacher") -> None:
    """Unlabelled data is given exactly when some method (``users``) learns from it.

    Raises:
        ConfigError: methods that need unlabelled data without it, or unlabelled data no method reads.
    """
    if users and unlabelled is None:
        verb = "learns" if len(users) == 1 else "learn"
        raise ConfigError(f"{', '.join(users)} {verb} from unlabelled examples; give them with --unlabeled "
                          "rest (the target's training split without labels) or --unlabeled DATASET "
                          "(data.unlabeled)")
    if not users and unlabelled is not None:
        raise ConfigError(f"--unlabeled (data.unlabeled) is given but no method reads unlabelled data; add "
                          f"one: {methods}")


def finetune(cfg: FinetuneConfig | dict[str, Any]) -> WorkflowResult:
    """Transfer a source model to the target data, fine-tune it, and compare with training from scratch.

    Writes into ``cfg.out``: ``config.yaml`` (the resolved config), ``run.json`` (what the run was
    trained on: config, data and source fingerprints), ``metrics.json``, ``report.html`` with plots,
    ``transfer/<arm>.txt`` (what was copied, resized or left new), ``runs/<arm>/seed<k>/`` (per-epoch
    ``metrics.jsonl`` and checkpoints) and ``model/`` (the best model). Everything is validated before
    the folder is touched; a folder holding results needs ``resume`` (the same run) or ``overwrite``.

    Training settings the config leaves unset come from its recipe (``recipe: auto``: few-shot up to
    100 labelled examples per class, see :func:`resolve_recipe`); every arm records its best training
    accuracy, and a few-shot arm that did not fit its examples is flagged ``UNDERFIT``. With
    ``lr_sweep`` every arm trains once per rate and seed and keeps the run best on validation.

    Example:
        >>> finetune({"data": {"dataset": "digits", "shots": 10},
        ...           "model": {"source": "runs/source-model"},
        ...           "train": {"strategy": "linear_probe", "epochs": 20}})  # doctest: +SKIP
    """
    if not isinstance(cfg, FinetuneConfig):
        cfg = build_config(cfg)
    data = load_target_data(cfg.data, seed=cfg.seeds[0])
    cfg, recipe, base_train = resolve_recipe(cfg, data)
    sources = [load_source_model(spec) for spec in cfg.model.source_specs()]
    if not sources and cfg.model.arch is None:
        raise ConfigError(
            "give model.source (a model to transfer from) or model.arch (to train from scratch)"
        )
    source = sources[0] if sources else None
    source_splits = (
        load_dataset(cfg.data.source_dataset, root=cfg.data.source_root, seed=cfg.seeds[0])
        if cfg.data.source_dataset is not None
        else None
    )
    regs = cfg.regularizers
    reg_names = "+".join(str(r["name"]) for r in regs)
    unlabelled = load_unlabelled(cfg.data, data, cfg.seeds[0])
    readers = [r for r in regs if _reads_unlabelled(r)]
    # the methods that need no source (kd on the unlabelled data reads the source as its teacher)
    semi = [r for r in readers if getattr(OBJECTIVES.get(str(r["name"])), "uses_target", False)]
    entries = cfg.model.entries
    labels = _source_labels([e.label or e.model for e in entries])
    arms: list[Arm] = []
    check_unlabelled([str(r["name"]) for r in readers], unlabelled)
    for src, label, entry in zip(sources, labels, entries, strict=True):
        arch = cfg.model.arch or src.info.arch
        kwargs = dict(src.info.kwargs) if cfg.model.arch is None else {}
        kwargs.update(cfg.model.kwargs)
        kwargs.update(entry.kwargs)
        prefix = f"{cfg.name}/{label}/" if len(sources) > 1 else f"{cfg.name}/"
        arms.append(
            Arm(
                name=f"{prefix}{cfg.train.strategy}" + (f"+{reg_names}" if regs else ""),
                method=STRATEGY_NAMES[cfg.train.strategy] + (f" + {reg_names}" if regs else ""),
                arch=arch,
                train=cfg.train,
                source=src,
                kwargs=kwargs,
                exclude=cfg.transfer.exclude,
                shape_mismatch=cfg.transfer.shape_mismatch,
                objectives=_objectives(regs, src, source_splits) if regs else None,
                target=unlabelled if readers else None,
                lr_sweep=cfg.lr_sweep or (),
            )
        )
    scratch_name = f"{cfg.name}/scratch"
    text_source = source is not None and source.info.text is not None
    base_arch = cfg.model.baseline_arch or cfg.model.arch or (
        TEXT_BASELINE if text_source else source.info.arch)  # type: ignore[union-attr]
    if cfg.baseline or source is None:
        same = source is not None and base_arch == source.info.arch and cfg.model.arch is None
        base_kwargs = {**(dict(source.info.kwargs) if same else {}), **cfg.model.kwargs,  # type: ignore[union-attr]
                       **(entries[0].kwargs if same else {})}
        if cfg.model.baseline_arch is not None and not same:  # the user's baseline, fitted to the data
            base_kwargs = fitted_kwargs(base_arch, data.train.input_shape)
        if text_source and base_arch == TEXT_BASELINE:  # the source's tokenizer and length, new weights
            length = {**cfg.model.kwargs, **entries[0].kwargs}.get("max_length", source.info.input_size[0])  # type: ignore[union-attr]
            base_kwargs = {"tokenizer": source.info.text["tokenizer"], "max_length": length}  # type: ignore[union-attr]
        check_model_args(base_arch, base_kwargs)
        if same and cfg.model.baseline_arch is None and source is not None:
            size = sum(p.numel() for p in source.parameters())
            if size > LARGE_BASELINE:
                logger.warning(
                    "the baseline is %s (%.1fM parameters) trained from scratch, as costly as the transfer "
                    "arms; pass --baseline-arch (model.baseline_arch), e.g. small_cnn, for a cheaper one",
                    base_arch, size / 1e6,
                )
        arms.append(
            Arm(
                name=scratch_name,
                method="from scratch",
                arch=base_arch,
                train=base_train,
                kwargs=base_kwargs,
                lr_sweep=cfg.lr_sweep or (),
            )
        )
        if semi:  # what the unlabelled data brings without a source, beside plain scratch
            semi_names = "+".join(str(r["name"]) for r in semi)
            arms.append(
                Arm(
                    name=f"{scratch_name}+{semi_names}",
                    method=f"from scratch + {semi_names}",
                    arch=base_arch,
                    train=base_train,
                    kwargs=base_kwargs,
                    objectives=_objectives(semi, None, None),
                    target=unlabelled,
                    lr_sweep=cfg.lr_sweep or (),
                    reference="no source: what the unlabelled data brings",
                )
            )
    baseline = scratch_name if any(a.name == scratch_name for a in arms) else None
    fingerprints = {
        "data": data_fingerprint(data, cfg.data.dataset),
        "source": model_fingerprint(source, cfg.model.sources[0] if sources else None),
        "source_data": data_fingerprint(source_splits, cfg.data.source_dataset) if source_splits else None,
    }
    if unlabelled is not None:
        fingerprints["unlabeled"] = data_fingerprint(unlabelled, cfg.data.unlabeled)
    if len(sources) > 1:
        fingerprints["sources"] = [model_fingerprint(m, spec) for m, spec in zip(sources, cfg.model.sources,
                                                                                 strict=True)]
    arch = base_arch
    t = cfg.train
    recipe_text = {"recipe": recipe.name + (" (auto)" if cfg.recipe == "auto" else ""),
                   "strategy": t.strategy, "epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size,
                   "backbone_lr_scale": t.backbone_lr_scale, "freeze_bn": t.freeze_bn}
    if cfg.lr_sweep:
        recipe_text["lr_sweep"] = "/".join(f"{lr:g}" for lr in cfg.lr_sweep)
    if regs:
        recipe_text["objectives"] = reg_names
    if scratch_name == baseline:
        baseline_text = (f"{arch} trained from scratch on the same examples, epochs and seeds "
                         f"(full strategy, one learning rate, lr {base_train.lr:g}"
                         f"{', each of the swept rates' if cfg.lr_sweep else ''})")
    else:
        baseline_text = "none (baseline off): no from-scratch run, so no gain is measured"
    about = describe_run("finetune", fingerprints=fingerprints, shots=cfg.data.shots,
                         val_shots=cfg.data.val_shots, seeds=cfg.seeds, recipe=recipe_text,
                         baseline=baseline_text)
    about["sources"] = [dict(s) for s in about["sources"]]
    for described, entry in zip(about["sources"], entries, strict=True):  # a source's own options
        own = entry.model_dump(mode="json", exclude_unset=True, exclude={"model"})
        if own:
            described["options"] = own
    shots_text = f", {cfg.data.shots} labels per class" if cfg.data.shots else ""
    what = (f"{', '.join(cfg.model.sources)} -> {cfg.data.dataset}" if source is not None
            else f"{arch} on {cfg.data.dataset}")
    return run_arms(
        arms,
        data,
        seeds=cfg.seeds,
        shots=cfg.data.shots,
        val_shots=cfg.data.val_shots,
        out_dir=cfg.out,
        baseline=baseline,
        title=f"transferkit finetune ({cfg.name}): {what}{shots_text}",
        notes=describe_lines(about),
        extra={"about": about},
        resume=cfg.resume,
        overwrite=cfg.overwrite,
        config=cfg,
        fingerprints=fingerprints,
        kind="finetune",
        source_eval=source_splits.test if source_splits is not None else None,
    )


#: The default baseline of a text source: a small transformer with the source's tokenizer, new weights.
TEXT_BASELINE = "text_transformer"

#: A default baseline (the source's architecture from scratch) above this many parameters is named as costly.
LARGE_BASELINE = 2_000_000

#: Training settings specific to adapting a pretrained model; the from-scratch baseline never takes them.
_TRANSFER_ONLY = ("strategy", "backbone_lr_scale", "layer_decay", "freeze_bn", "lora", "unfreeze_every")


def resolve_recipe(cfg: FinetuneConfig, data: DataSplits) -> tuple[FinetuneConfig, Recipe, TrainConfig]:
    """The config with its recipe applied (:mod:`transferkit.recipes`), the recipe, and the training
    settings of the from-scratch baseline.

    ``recipe: auto`` picks by the strategy and the labelled training examples per class (``shots``,
    else the training split's size over the classes). The recipe fills the ``train`` values (and
    ``min_steps``, ``lr_sweep``) the user left unset. The baseline trains every weight at one rate:
    the recipe's for full fine-tuning at this data size (a linear probe's or LoRA's rate is for a head
    or adapters), with the user's own values except those specific to a pretrained model (strategy,
    backbone rate, layer decay, frozen BatchNorm statistics, adapters; the learning rate too when the
    arms only train a head or adapters), and the transfer arms' number of epochs.
    """
    classes = max(1, data.num_classes)
    n_train = cfg.data.shots * classes if cfg.data.shots else len(data.train)
    per_class = n_train / classes
    given = cfg.train.model_fields_set
    if cfg.recipe == "auto":
        recipe = load_recipe(auto_recipe(cfg.train.strategy if "strategy" in given else "full", per_class))
    else:
        recipe = load_recipe(cfg.recipe)
    if "min_steps" in cfg.model_fields_set:
        recipe = replace(recipe, min_steps=cfg.min_steps)
    lr_sweep = cfg.lr_sweep if "lr_sweep" in cfg.model_fields_set else recipe.lr_sweep
    train = apply_recipe(cfg.train, recipe, n_train)
    full_like = train.strategy in ("full", "gradual")
    base_recipe = recipe if recipe.train.get("strategy", "full") in ("full", "gradual") else load_recipe(
        auto_recipe("full", per_class))
    keep = {k: getattr(cfg.train, k) for k in given if k not in _TRANSFER_ONLY and (full_like or k != "lr")}
    base_user = TrainConfig(**{**keep, "epochs": train.epochs})
    base_train = apply_recipe(base_user, base_recipe).model_copy(
        update={"strategy": "full", "backbone_lr_scale": 1.0, "layer_decay": None, "freeze_bn": False}
    )
    resolved = cfg.model_copy(update={"train": train, "min_steps": recipe.min_steps, "lr_sweep": lr_sweep})
    return resolved, recipe, base_train


def _source_labels(specs: list[str]) -> list[str]:
    """Short, distinct names of the sources for the arms (``runs/mnist`` -> ``mnist``)."""
    labels = []
    for spec in specs:
        label = Path(spec).name or spec
        label = "".join(c if c.isalnum() or c in "-_." else "-" for c in label) or "source"
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


def _reads_unlabelled(spec: dict[str, Any]) -> bool:
    """Whether the objective of a config entry learns from unlabelled (target) batches: its class
    always does (pseudo_label, fixmatch, ...), or the entry asks it to (``kd`` with ``unlabeled``)."""
    return bool(getattr(OBJECTIVES.get(str(spec["name"])), "uses_target", False) or spec.get("unlabeled"))


def _objectives(regs: list[dict[str, Any]], source: TransferNet | None, source_splits: Any) -> Any:
    """A factory of the arm's objectives: cross-entropy plus the regularisers, with ``source`` as
    the source (and frozen teacher; ``None`` for the from-scratch arm's semi-supervised methods);
    checked once here, before any training."""
    from transferkit.transfer.distill import Teacher

    context = {
        "source": source,
        "source_data": source_splits.train if source_splits else None,
        # the source as a frozen teacher, for hint / attention / rkd / kd regularisers
        "teacher": Teacher(source, name="source") if source is not None else None,
    }
    build_objectives(regs, **context)

    def make() -> list[Objective]:
        return [CrossEntropy(), *build_objectives(regs, **context)]

    return make
