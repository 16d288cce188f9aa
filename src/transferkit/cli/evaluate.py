"""``transferkit evaluate``: accuracy, macro-F1, per-class F1 and confusion matrix of a saved model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli._common import (
    allowed_code,
    check_split,
    console,
    file_kwargs,
    handle_errors,
    label_column_option,
    load_for_inference,
    model_class_option,
    ordered_split_option,
    setup_logging,
    text_column_option,
    trust_remote_code_option,
)


@handle_errors
def evaluate(
    model: str = typer.Argument(..., help="Model folder (config.json + model.safetensors)."),
    data: str = typer.Option(..., "--data", help="Dataset: built-in name or path."),
    split: str = typer.Option("test", "--split", help="train | val | test"),
    root: Path | None = typer.Option(None, "--root", help="Folder with the dataset's files."),
    text_column: str | None = text_column_option(),
    label_column: str | None = label_column_option(),
    ordered_split: bool = ordered_split_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    arch: str | None = model_class_option(),
    trust_remote_code: bool = trust_remote_code_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Evaluate a model on a dataset split."""
    from transferkit.data import load_dataset
    from transferkit.evaluation import evaluate as run_evaluate

    setup_logging(verbose)
    check_split(split)
    with allowed_code(arch):
        net = load_for_inference(model, arch, trust_remote_code)
    splits = load_dataset(data, root=root, **file_kwargs(text_column, label_column, ordered_split))
    metrics = run_evaluate(net, getattr(splits, split))
    if as_json:
        typer.echo(json.dumps(metrics.to_dict(), indent=2))
        return
    console.print(f"{model} on {data}/{split} ({metrics.n} examples)")
    console.print(f"accuracy  {metrics.accuracy:.4f}")
    console.print(f"macro-F1  {metrics.macro_f1:.4f}")
    for name, f1 in zip(metrics.class_names, metrics.per_class_f1, strict=False):
        console.print(f"  F1 {name:>14s}  {f1:.3f}")
    console.print("confusion matrix (rows: true, columns: predicted)")
    for row in metrics.confusion:
        console.print("  " + " ".join(f"{v:5d}" for v in row))
