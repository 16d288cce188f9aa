"""``transferkit finetune``: transfer a source model to target data and compare with scratch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from transferkit.cli._common import (
    allowed_code,
    apply_augment,
    augment_option,
    console,
    file_overrides,
    handle_errors,
    head_option,
    input_size_option,
    label_column_option,
    mean_option,
    ordered_split_option,
    parse_objective_spec,
    pretrained_option,
    setup_logging,
    source_arch_option,
    source_overrides,
    std_option,
    text_column_option,
    trust_remote_code_option,
    unlabeled_option,
    unlabeled_override,
)


def flag_overrides(
    source: list[str] | str | None,
    data: str | None,
    strategy: str | None,
    epochs: int | None,
    shots: int | None,
    seeds: str | None,
    out: Path | None,
    arch: str | None,
    baseline: bool | None,
    resume: bool,
    overwrite: bool = False,
) -> list[str]:
    """The command-line flags as ``key=value`` overrides (applied before the free overrides)."""
    if isinstance(source, list):  # --source repeated: a YAML list (JSON strings quote any path)
        source = (source[0] if len(source) == 1 else "[" + ",".join(json.dumps(x) for x in source) + "]"
                  ) if source else None
    pairs = {
        "model.source": source,
        "model.arch": arch,
        "data.dataset": data,
        "data.shots": shots,
        "train.strategy": strategy,
        "train.epochs": epochs,
        "out": str(out) if out is not None else None,
        "baseline": baseline,
    }
    items = [f"{k}={v}" for k, v in pairs.items() if v is not None]
    if seeds is not None:
        items.append(f"seeds=[{seeds}]")
    if resume:
        items.append("resume=true")
    if overwrite:
        items.append("overwrite=true")
    return items


@handle_errors
def finetune(
    overrides: list[str] | None = typer.Argument(
        None, help="key=value overrides, e.g. train.lr=0.01 data.shots=10"
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file."),
    source: list[str] | None = typer.Option(
        None, "--source", help="Source model: folder, weights file, built-in or hub name; repeat it to "
        "compare several sources against one baseline."
    ),
    baseline_arch: str | None = typer.Option(
        None, "--baseline-arch", help="Architecture of the from-scratch baseline (default: the first "
        "source's), e.g. small_cnn for a large source."
    ),
    source_arch: str | None = source_arch_option(),
    head: str | None = head_option(),
    input_size: str | None = input_size_option(),
    mean: str | None = mean_option(),
    std: str | None = std_option(),
    pretrained: bool | None = pretrained_option(),
    data: str | None = typer.Option(None, "--data", help="Target data: built-in name or path."),
    text_column: str | None = text_column_option("the --data file and of an --unlabeled text file"),
    label_column: str | None = label_column_option(),
    ordered_split: bool = ordered_split_option(),
    strategy: str | None = typer.Option(
        None, "--strategy", help="full | linear_probe | gradual | lora (peft adapters; see --lora)"
    ),
    recipe: str | None = typer.Option(
        None, "--recipe", help="Training recipe: auto (default: by strategy and labels per class), few-shot, "
        "linear-probe, full, lora, or a YAML file; it fills what you leave unset (`transferkit recipes`)."
    ),
    lr_sweep: str | None = typer.Option(
        None, "--lr-sweep", help="Learning rates to try per arm and seed, e.g. 1e-3,3e-3,1e-2; the best on "
        "validation is kept (test never looked at)."
    ),
    lora: str | None = typer.Option(
        None, "--lora", help="Adapter options for --strategy lora: method=lora|dora|loha|lokr|ia3, rank=8, "
        "alpha=16, dropout=0, save=merged|adapters (target modules: train.lora.target_modules=[...])."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Training budget in epochs."),
    shots: int | None = typer.Option(None, "--shots", help="Labelled examples per class."),
    seeds: str | None = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
    arch: str | None = typer.Option(None, "--arch", help="Target architecture (default: source's)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder."),
    baseline: bool | None = typer.Option(
        None, "--baseline/--no-baseline", help="Also train from scratch for comparison."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out (refused if its data, source or settings differ)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the results in --out (kept until the new run finishes)."
    ),
    regularizer: list[str] | None = typer.Option(
        None,
        "--regularizer",
        "-r",
        "--method",
        "-m",
        help="Objective added to cross-entropy, NAME[:key=value,...], repeatable: regularisers l2sp, delta, "
        "bss, ewc, lwf; learning from --unlabeled data: pseudo_label, fixmatch, mean_teacher (or kd, ...).",
    ),
    unlabeled: str | None = unlabeled_option("-m pseudo_label / fixmatch / mean_teacher"),
    reg_weight: float | None = typer.Option(
        None, "--reg-weight", help="Weight of each --regularizer that does not set its own."
    ),
    source_data: str | None = typer.Option(
        None, "--source-data", help="Source task's data: reports source retention; EWC's Fisher."
    ),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars (default: on when stderr is a terminal)."
    ),
    augment: list[str] | None = augment_option(),
    trust_remote_code: bool = trust_remote_code_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every epoch."),
) -> None:
    """Fine-tune a transferred model and compare it with training from scratch."""
    from transferkit.config import FinetuneConfig, apply_overrides, build_config, read_yaml
    from transferkit.errors import ConfigError
    from transferkit.workflows import finetune as run_finetune

    setup_logging(verbose)
    items = flag_overrides(source, data, strategy, epochs, shots, seeds, out, arch, baseline, resume,
                           overwrite)
    if progress if progress is not None else sys.stderr.isatty():
        items.append("train.progress=true")
    if baseline_arch is not None:
        items.append(f"model.baseline_arch={baseline_arch}")
    if recipe is not None:
        items.append(f"recipe={json.dumps(recipe)}")
    if lr_sweep is not None:
        items.append(f"lr_sweep=[{lr_sweep}]")
    items += source_overrides("model.", "source_arch", arch=source_arch, head=head, input_size=input_size,
                              mean=mean, std=std, pretrained=pretrained)
    if lora is not None:
        items += [f"train.lora.{k}={v}" for k, v in parse_objective_spec(f"lora:{lora}", "--lora").items()
                  if k != "name"]
    if source_data is not None:
        items.append(f"data.source_dataset={source_data}")
    items += unlabeled_override(unlabeled)
    items += file_overrides(["data"], text_column, label_column, ordered_split)
    merged = apply_overrides(read_yaml(config) if config else {}, items + list(overrides or []))
    merged = apply_augment(merged, augment)
    if reg_weight is not None and not regularizer:
        raise ConfigError("--reg-weight needs --regularizer NAME (e.g. --regularizer l2sp)")
    if regularizer:
        specs = [parse_objective_spec(r, "--regularizer") for r in regularizer]
        if reg_weight is not None:
            specs = [{"weight": reg_weight, **spec} for spec in specs]
        merged["regularizers"] = specs
    cfg = build_config(merged, FinetuneConfig)
    from transferkit.models import allow_remote_code

    with allow_remote_code(trust_remote_code), allowed_code(source_arch, arch, baseline_arch):
        result = run_finetune(cfg)
    typer.echo(result.table())
    for name, report in result.transfer_reports.items():
        typer.echo(f"{name}: {report.headline()} (details: {result.out_dir / 'transfer'})")
    console.print(f"wrote {result.out_dir / 'metrics.json'} and {result.out_dir / 'report.html'}")
