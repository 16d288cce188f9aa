"""``transferkit multitask``: one model learns several tasks (a head each), against one model per task."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from transferkit.cli._common import (
    console,
    file_kwargs,
    handle_errors,
    label_column_option,
    ordered_split_option,
    setup_logging,
    text_column_option,
)

_TASK_FILES = "every --task given as a file"


@handle_errors
def multitask(
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. train.lr=0.01"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file."),
    task: list[str] | None = typer.Option(
        None, "--task", help="NAME=DATA (built-in name or path), repeatable: the tasks, at least two."),
    arch: str | None = typer.Option(None, "--arch", help="The shared model's architecture (from scratch)."),
    source: str | None = typer.Option(
        None, "--source", help="A source model whose backbone starts every model."),
    weighting: str | None = typer.Option(None, "--weighting", help="equal | uncertainty | dwa | gradnorm"),
    surgery: str | None = typer.Option(None, "--surgery", help="pcgrad | cagrad (gradient surgery)"),
    sampling: str | None = typer.Option(
        None, "--sampling", help="all | proportional | uniform | temperature"),
    text_column: str | None = text_column_option(_TASK_FILES),
    label_column: str | None = label_column_option(_TASK_FILES),
    ordered_split: bool = ordered_split_option(_TASK_FILES),
    shots: int | None = typer.Option(None, "--shots", help="Labelled examples per class, every task."),
    epochs: int | None = typer.Option(None, "--epochs", help="Training budget in epochs (every model)."),
    seeds: str | None = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
    baseline: bool | None = typer.Option(
        None, "--baseline/--no-baseline", help="Also train one single-task model per task (default on)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the results in --out."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bars."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every epoch."),
) -> None:
    """Train one model with a head per task on every --task, and each task's single-task model on the
    same data, start and epochs; report each task's accuracy and flag tasks the sharing hurt."""
    from transferkit.cli.merge import split_named
    from transferkit.config import MultitaskConfig, apply_overrides, build_config, read_yaml
    from transferkit.errors import ConfigError
    from transferkit.workflows.multitask import multitask as run_multitask

    setup_logging(verbose)
    base = read_yaml(config) if config is not None else {}
    items = [f"{k}={v}" for k, v in {
        "model.arch": arch, "model.source": source, "weighting": weighting, "surgery": surgery,
        "sampling": sampling, "train.epochs": epochs, "out": str(out) if out else None, "baseline": baseline,
        "overwrite": True if overwrite else None}.items() if v is not None]
    if seeds is not None:
        items.append(f"seeds=[{seeds}]")
    if progress if progress is not None else sys.stderr.isatty():
        items.append("train.progress=true")
    merged = apply_overrides(base, items)
    for text in task or []:
        name, data = split_named(text, "--task")
        if name is None:
            raise ConfigError(f"--task {text!r} is not NAME=DATA; write e.g. --task digits=digits")
        merged.setdefault("tasks", {})[name] = {"dataset": data}
        if Path(data).expanduser().is_file():  # a built-in task takes no file options
            merged["tasks"][name].update(file_kwargs(text_column, label_column, ordered_split))
    if shots is not None:
        for spec in (merged.get("tasks") or {}).values():
            if isinstance(spec, dict):
                spec["shots"] = shots
    merged = apply_overrides(merged, list(overrides or []))
    if source is not None and arch is None:
        merged.setdefault("model", {})["arch"] = None  # the source's architecture with new heads
    result = run_multitask(build_config(merged, MultitaskConfig))
    typer.echo(result.table())
    console.print(f"wrote {result.out / 'metrics.json'}, report.html and model/")
