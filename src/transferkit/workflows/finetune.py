"""``finetune``: source model -> parameter transfer -> fine-tune -> comparison with scratch."""

from __future__ import annotations

import logging
from typing import Any

from transferkit.config import DataConfig, FinetuneConfig, build_config
from transferkit.data import DataSplits, load_dataset
from transferkit.engine import (
    CrossEntropy,
    Objective,
    build_objectives,
)
from transferkit.errors import ConfigError
from transferkit.models import TransferNet
from transferkit.models import load_source as load_source_model
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
    return load_dataset(cfg.dataset, root=cfg.root, val_fraction=cfg.val_fraction, seed=seed)


def finetune(cfg: FinetuneConfig | dict[str, Any]) -> WorkflowResult:
    """Transfer a source model to the target data, fine-tune it, and compare with training from scratch.

    Writes into ``cfg.out``: ``config.yaml`` (the resolved config), ``run.json`` (what the run was
    trained on: config, data and source fingerprints), ``metrics.json``, ``report.html`` with plots,
    ``transfer/<arm>.txt`` (what was copied, resized or left new), ``runs/<arm>/seed<k>/`` (per-epoch
    ``metrics.jsonl`` and checkpoints) and ``model/`` (the best model). Everything is validated before
    the folder is touched; a folder holding results needs ``resume`` (the same run) or ``overwrite``.

    Example:
        >>> finetune({"data": {"dataset": "digits", "shots": 10},
        ...           "model": {"source": "runs/source-model"},
        ...           "train": {"strategy": "linear_probe", "epochs": 20}})  # doctest: +SKIP
    """
    if not isinstance(cfg, FinetuneConfig):
        cfg = build_config(cfg)
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
    baseline = scratch_name if any(a.name == scratch_name for a in arms) else None
    fingerprints = {
        "data": data_fingerprint(data, cfg.data.dataset),
        "source": model_fingerprint(source, cfg.model.source),
        "source_data": data_fingerprint(source_splits, cfg.data.source_dataset) if source_splits else None,
    }
    t = cfg.train
    recipe = {"strategy": t.strategy, "epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size,
              "backbone_lr_scale": t.backbone_lr_scale}
    if regs:
        recipe["objectives"] = reg_names
    if scratch_name == baseline:
        baseline_text = (f"{arch} trained from scratch on the same examples, epochs and seeds "
                         "(full strategy, one learning rate)")
    else:
        baseline_text = "none (baseline off): no from-scratch run, so no gain is measured"
    about = describe_run("finetune", fingerprints=fingerprints, shots=cfg.data.shots,
                         val_shots=cfg.data.val_shots, seeds=cfg.seeds, recipe=recipe,
                         baseline=baseline_text)
    shots_text = f", {cfg.data.shots} labels per class" if cfg.data.shots else ""
    what = (f"{cfg.model.source} -> {cfg.data.dataset}" if source is not None
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
