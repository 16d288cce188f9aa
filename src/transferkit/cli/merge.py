"""``transferkit merge``: merge several models into one and report each task's accuracy before and after."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from transferkit.cli._common import (
    console,
    file_kwargs,
    handle_errors,
    label_column_option,
    ordered_split_option,
    parse_numbers,
    parse_objective_spec,
    setup_logging,
    text_column_option,
)

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def split_named(text: str, flag: str) -> tuple[str | None, str]:
    """``"name=path"`` -> ``("name", "path")``; ``"path"`` -> ``(None, "path")`` (also when the whole
    text is an existing path)."""
    from transferkit.errors import ConfigError

    name, eq, value = text.partition("=")
    if not eq or Path(text).exists():
        return None, text
    if not _NAME.match(name) or not value:
        raise ConfigError(f"{flag} {text!r} is not NAME=VALUE with a NAME of letters, digits, - and _; "
                          "write e.g. digits=runs/digits/model")
    return name, value


@handle_errors
def merge(
    models: list[str] = typer.Argument(
        ..., help="Model folders: FOLDER (named after the folder, or the run for RUN/model) or NAME=FOLDER; "
        "the names are the tasks of kept heads."),
    method: str = typer.Option(
        "average", "--method", "-m", help="average | greedy_soup | task_arithmetic | ties | dare | "
        "dare_ties | fisher, with options as METHOD:key=value,... (e.g. ties:density=0.2,scale=1)."),
    base: str | None = typer.Option(
        None, "--base", help="The model the inputs were fine-tuned from (task_arithmetic, ties, dare)."),
    data: list[str] | None = typer.Option(
        None, "--data", help="DATA (the task of every model) or NAME=DATA (one model's task); repeatable. "
        "Test splits give the report; training splits the Fisher, activations and BatchNorm statistics; "
        "the validation split a greedy soup's choices."),
    text_column: str | None = text_column_option("every --data file (not built-in names)"),
    label_column: str | None = label_column_option("every --data file (not built-in names)"),
    ordered_split: bool = ordered_split_option("every --data file (not built-in names)"),
    weights: str | None = typer.Option(None, "--weights", help="One weight per model, e.g. 1,1,2."),
    heads: str = typer.Option("auto", "--heads", help="auto | merge | keep (one head per model's task)."),
    align: str | None = typer.Option(
        None, "--align", help="weight | activation: permute hidden units to match the first model first "
        "(Git Re-Basin; models trained from different initialisations)."),
    batchnorm: bool = typer.Option(
        True, "--batchnorm/--no-batchnorm", help="Recompute the merged model's BatchNorm statistics on the "
        "training inputs."),
    seed: int = typer.Option(0, "--seed", help="Seeds the validation split and DARE's masks."),
    out: Path = typer.Option(..., "--out", help="Folder for model/, merge.json and report.html."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier results in --out."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Merge MODELS (one architecture) into one model and report each task's accuracy."""
    from transferkit.errors import ConfigError
    from transferkit.workflows.merge import merge_workflow

    setup_logging(verbose)
    named: dict[str, str] = {}
    for text in models:
        name, path = split_named(text, "MODEL")
        folder = Path(path.rstrip("/"))
        # a workflow's output keeps its model in <run>/model: name it after the run
        name = name or (folder.parent.name if folder.name == "model" and folder.parent.name else folder.name)
        if name in named:
            raise ConfigError(f"two models are named {name!r}; name them apart: NAME=FOLDER")
        named[name] = path
    spec = parse_objective_spec(method, "--method")
    data_spec: str | dict[str, str] | None = None
    for text in data or []:
        name, value = split_named(text, "--data")
        if (name is None and data_spec is not None) or (name is not None and isinstance(data_spec, str)):
            raise ConfigError("give one --data DATA for every model, or --data NAME=DATA per model, not both")
        data_spec = value if name is None else {**(data_spec or {}), name: value}
    run = merge_workflow(named, spec.pop("name"), base=base, data=data_spec,
                         weights=parse_numbers(weights, "--weights"), options=spec, heads=heads, align=align,
                         batchnorm=batchnorm, out=out, overwrite=overwrite, seed=seed,
                         file_options=file_kwargs(text_column, label_column, ordered_split))
    result = run.result
    console.print(f"merged {', '.join(result.names)} with {result.method} ({result.heads} heads)")
    for rec in result.alignment or []:
        if rec["how"] == "weight":
            console.print(f"aligned {rec['model']} to {rec['to']} by weight matching: cosine similarity "
                          f"{rec['similarity_before']:.3f} -> {rec['similarity_after']:.3f}")
        else:
            before = sum(rec["correlation_before"]) / len(rec["correlation_before"])
            after = sum(rec["correlation_after"]) / len(rec["correlation_after"])
            console.print(f"aligned {rec['model']} to {rec['to']} by activation matching: mean unit "
                          f"correlation {before:.3f} -> {after:.3f}")
    if "soup" in result.details:
        console.print(f"greedy soup: {', '.join(result.details['soup']['chosen'])}")
    if run.accuracy:
        console.print("test accuracy:\n" + run.table(), highlight=False)
    console.print(f"wrote {run.out}/model, merge.json and report.html")
