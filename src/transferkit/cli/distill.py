"""``transferkit distill``: train a smaller student from a teacher and compare it with scratch."""

from __future__ import annotations

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


@handle_errors
def distill(
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. train.lr=0.01"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file."),
    teacher: str | None = typer.Option(
        None, "--teacher", "--source", help="Teacher: model folder, weights file, built-in or hub name."
    ),
    source_arch: str | None = source_arch_option(),
    head: str | None = head_option(),
    input_size: str | None = input_size_option(),
    mean: str | None = mean_option(),
    std: str | None = std_option(),
    pretrained: bool | None = pretrained_option(),
    student: str | None = typer.Option(
        None, "--student", help="narrow:N (teacher N times narrower), a built-in name or a model folder."
    ),
    data: str | None = typer.Option(None, "--data", help="Data: built-in name or path."),
    text_column: str | None = text_column_option("the --data file and of an --unlabeled text file"),
    label_column: str | None = label_column_option(),
    ordered_split: bool = ordered_split_option(),
    method: list[str] | None = typer.Option(
        None,
        "--method",
        "-m",
        help="Objective NAME[:key=value,...], repeatable, e.g. -m cross_entropy:weight=0.1 "
        "-m kd:weight=0.9,temperature=4 -m hint:student_layer=backbone.conv2",
    ),
    unlabeled: str | None = unlabeled_option("-m kd (a transfer set: KD on it too), pseudo_label, fixmatch, "
                                             "mean_teacher"),
    epochs: int | None = typer.Option(None, "--epochs", help="Training budget in epochs."),
    shots: int | None = typer.Option(None, "--shots", help="Labelled examples per class."),
    seeds: str | None = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
    out: Path | None = typer.Option(None, "--out", help="Output folder."),
    baseline: bool | None = typer.Option(None, "--baseline/--no-baseline", help="Also train from scratch."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out (refused if its data, models or settings differ)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the results in --out (kept until the new run finishes)."
    ),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars (default: on when stderr is a terminal)."
    ),
    augment: list[str] | None = augment_option(),
    trust_remote_code: bool = trust_remote_code_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every epoch."),
) -> None:
    """Distil a teacher into a student (logits, hints, attention, relations) and compare with scratch."""
    from transferkit.config import DistillConfig, apply_overrides, build_config, read_yaml
    from transferkit.workflows import distill as run_distill

    setup_logging(verbose)
    base = read_yaml(config) if config is not None else {}
    pairs = {
        "teacher.model": teacher,
        "student.model": student,
        "data.dataset": data,
        "train.epochs": epochs,
        "data.shots": shots,
        "out": str(out) if out else None,
        "baseline": baseline,
        "resume": True if resume else None,
        "overwrite": True if overwrite else None,
    }
    items = [f"{k}={v}" for k, v in pairs.items() if v is not None] + unlabeled_override(unlabeled)
    items += file_overrides(["data"], text_column, label_column, ordered_split)
    items += source_overrides("teacher.", "arch", arch=source_arch, head=head, input_size=input_size,
                              mean=mean, std=std, pretrained=pretrained)
    if progress if progress is not None else sys.stderr.isatty():
        items.append("train.progress=true")
    if seeds is not None:
        items.append(f"seeds=[{seeds}]")
    merged = apply_augment(apply_overrides(base, items + list(overrides or [])), augment)
    if method:
        merged["methods"] = [parse_objective_spec(m, "--method") for m in method]
    cfg = build_config(merged, DistillConfig)
    from transferkit.models import allow_remote_code

    with allow_remote_code(trust_remote_code), allowed_code(source_arch):
        result = run_distill(cfg)
    typer.echo(result.table())
    console.print(f"wrote {result.out_dir / 'metrics.json'} and {result.out_dir / 'report.html'}")
