"""``transferkit predict``: a saved model's predictions on data (new texts, or a dataset's split) as CSV."""

from __future__ import annotations

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

_TEXT_FILES = (".txt", ".csv", ".tsv", ".jsonl")


@handle_errors
def predict(
    model: str = typer.Argument(..., help="Model folder (config.json + model.safetensors)."),
    data: str = typer.Option(..., "--data", help="A text file to label (.txt: one text a line; a table: its "
                             "text column; labels not needed), or a dataset (built-in name or path)."),
    out: Path = typer.Option(..., "--out", help="CSV file to write: row, [text], prediction, probability, "
                             "[label]."),
    split: str | None = typer.Option(
        None, "--split", help="train | val | test: predict a dataset's split, its true labels beside "
        "(default: every row of a text file; test of a dataset)."),
    root: Path | None = typer.Option(None, "--root", help="Folder with the dataset's files."),
    text_column: str | None = text_column_option(),
    label_column: str | None = label_column_option(),
    ordered_split: bool = ordered_split_option(),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Examples per forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    arch: str | None = model_class_option(),
    trust_remote_code: bool = trust_remote_code_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Label data with a saved model: its predicted class and that class's probability per example."""
    from transferkit.data import load_dataset
    from transferkit.data.text import read_text_file
    from transferkit.errors import ConfigError
    from transferkit.evaluation import prediction_rows, write_predictions

    setup_logging(verbose)
    if split is not None:
        check_split(split)
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"--out {str(out)!r} must end in .csv")
    if out.is_dir() or (out.exists() and not overwrite):
        what = "is a folder;" if out.is_dir() else "already exists; pass --overwrite to replace it, or"
        raise ConfigError(f"--out {str(out)!r} {what} choose another .csv file")
    with allowed_code(arch):
        net = load_for_inference(model, arch, trust_remote_code)
    path = Path(data).expanduser()
    whole_text_file = (split is None and net.info.text is not None and path.is_file()
                       and path.suffix.lower() in _TEXT_FILES)
    if whole_text_file:
        examples = read_text_file(path, text_column=text_column or "text", label_column=None)
    else:
        options = file_kwargs(text_column, label_column, ordered_split)
        examples = getattr(load_dataset(data, root=root, **options), split or "test")
    rows = prediction_rows(net, examples, labelled=not whole_text_file, batch_size=batch_size)
    write_predictions(rows, out)
    named = net.info.class_names
    if named:
        what = f"classes {', '.join(named)}"
    elif rows and isinstance(rows[0]["prediction"], str):
        what = f"classes {', '.join(examples.classes)}, named as the data names them (the model records none)"
    else:
        what = "class indices: the model records no class names"
    console.print(f"wrote {len(rows):,} prediction{'s' * (len(rows) != 1)} ({what}) to {out}")
