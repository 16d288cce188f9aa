"""``transferkit compare``: what differs between two models, layer by layer (linear CKA, weight change)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli._common import (
    check_split,
    console,
    file_kwargs,
    handle_errors,
    label_column_option,
    ordered_split_option,
    setup_logging,
    text_column_option,
)


@handle_errors
def compare(
    model_a: str = typer.Argument(..., help="First model folder (e.g. the source)."),
    model_b: str = typer.Argument(..., help="Second model folder (e.g. the fine-tuned model)."),
    data: str = typer.Option(..., "--data", help="Dataset whose inputs both models see (name or path)."),
    text_column: str | None = text_column_option(),
    label_column: str | None = label_column_option(),
    ordered_split: bool = ordered_split_option(),
    split: str = typer.Option("test", "--split", help="train | val | test"),
    examples: int = typer.Option(512, "--examples", min=2, help="How many inputs the CKA is measured on."),
    out: Path | None = typer.Option(None, "--out", help="Folder for compare.json and similarity.png."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Linear CKA between MODEL_A's and MODEL_B's representations at every backbone block they share, on
    --data's inputs, and each block's relative weight change from A to B."""
    from transferkit.data import load_dataset
    from transferkit.evaluation.similarity import compare_models
    from transferkit.models import load_model

    setup_logging(verbose)
    check_split(split)
    a, b = load_model(model_a), load_model(model_b)
    splits = load_dataset(data, **file_kwargs(text_column, label_column, ordered_split))
    result = compare_models(a, b, getattr(splits, split), examples=examples)
    if out is not None:
        from transferkit.evaluation.report import plot_similarity
        from transferkit.io import atomic_write_bytes, atomic_write_json

        atomic_write_json(out / "compare.json", {"a": model_a, "b": model_b, "data": data, "split": split,
                                                 **result})
        panels = {"linear CKA": {"A vs B": result["cka"]}}
        if result["weight_change"]:
            panels["relative weight change"] = {"A -> B": result["weight_change"]}
        atomic_write_bytes(out / "similarity.png", plot_similarity(panels))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print(f"A = {model_a}\nB = {model_b}\n{result['examples']} inputs of {data}/{split}")
    console.print(f"{'block':<28} {'CKA':>6} {'weight change':>14}", highlight=False)
    for block, cka in result["cka"].items():
        change = result["weight_change"].get(block)
        shown = f"{change:14.3f}" if change is not None else f"{'-':>14}"
        console.print(f"{block:<28} {cka:6.3f} {shown}", highlight=False)
    for key, label in (("accuracy_a", "A"), ("accuracy_b", "B")):
        if result.get(key) is not None:
            console.print(f"accuracy of {label} on {data}/{split}: {100 * result[key]:.1f}%", highlight=False)
    if out is not None:
        console.print(f"wrote {out}/compare.json and similarity.png")
