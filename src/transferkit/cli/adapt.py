"""``transferkit adapt``: domain adaptation from labelled source data to unlabelled target data."""

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
    setup_logging,
    source_arch_option,
    source_overrides,
    std_option,
    text_column_option,
    trust_remote_code_option,
)

#: What the file options of ``adapt`` apply to.
_DOMAIN_FILES = "the --target-data file (and of --source-data when it is a file)"


@handle_errors
def adapt(
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. train.lr=0.01"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file."),
    method: list[str] | None = typer.Option(
        None,
        "--method",
        "-m",
        help="Adaptation method NAME[:key=value,...], repeatable: dann, cdan, cdan+e, dan, jan, coral, mcd "
        "(e.g. -m dann -m cdan:entropy=true).",
    ),
    source_data: str | None = typer.Option(None, "--source-data", help="Labelled source data: name or path."),
    target_data: str | None = typer.Option(
        None, "--target-data", help="Target data (its training labels are never used): name or path."
    ),
    text_column: str | None = text_column_option(_DOMAIN_FILES[:-1] + ", and of an --unlabeled table)"),
    label_column: str | None = label_column_option(_DOMAIN_FILES),
    ordered_split: bool = ordered_split_option(_DOMAIN_FILES),
    unlabeled: str | None = typer.Option(
        None, "--unlabeled", help="Unlabelled target inputs to adapt to, instead of the --target-data "
        "training split: a text file (.txt: one text a line; a table: its text column), a built-in name or "
        "a path; their labels are never read. The target's test split still gives the accuracy."
    ),
    weights: str | None = typer.Option(
        None, "--weights", help="Comma-separated grid of the trade-off weight, e.g. 0.1,0.3,1."
    ),
    select: str | None = typer.Option(
        None, "--select", help="Label-free model choice: dev | snd | entropy (default dev)."
    ),
    image_size: int | None = typer.Option(None, "--image-size", help="Bring both domains to this size."),
    arch: str | None = typer.Option(None, "--arch", help="Network (default small_cnn)."),
    source: str | None = typer.Option(
        None, "--source", help="Start from this model: folder, weights file, built-in or hub name."
    ),
    source_arch: str | None = source_arch_option(),
    head: str | None = head_option(),
    input_size: str | None = input_size_option(),
    mean: str | None = mean_option(),
    std: str | None = std_option(),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs (passes over the source)."),
    seeds: str | None = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
    out: Path | None = typer.Option(None, "--out", help="Output folder."),
    oracle: bool | None = typer.Option(
        None, "--oracle/--no-oracle", help="Also train on the labelled target (upper bound)."
    ),
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
    """Adapt to an unlabelled target domain (DANN, CDAN, DAN, JAN, CORAL, MCD); compare with source-only."""
    from transferkit.config import AdaptConfig, apply_overrides, build_config, read_yaml
    from transferkit.workflows import adapt as run_adapt

    setup_logging(verbose)
    base = read_yaml(config) if config is not None else {}
    pairs = {
        "source_data.dataset": source_data,
        "target_data.dataset": target_data,
        "select": select,
        "image_size": image_size,
        "model.arch": arch,
        "model.source": source,
        "train.epochs": epochs,
        "out": str(out) if out else None,
        "oracle": oracle,
        "resume": True if resume else None,
        "overwrite": True if overwrite else None,
    }
    items = [f"{k}={v}" for k, v in pairs.items() if v is not None]
    if unlabeled is not None:
        items.append(f"target_data.unlabeled={json.dumps(unlabeled)}")
    items += source_overrides("model.", "source_arch", arch=source_arch, head=head, input_size=input_size,
                              mean=mean, std=std, pretrained=None)
    if progress if progress is not None else sys.stderr.isatty():
        items.append("train.progress=true")
    if seeds is not None:
        items.append(f"seeds=[{seeds}]")
    if weights is not None:
        items.append(f"weights=[{weights}]")
    merged = apply_augment(apply_overrides(base, items + list(overrides or [])), augment)
    # the file options name the target file's columns, and the source's when it is a file too (a
    # built-in source domain takes none)
    src = (merged.get("source_data") or {}).get("dataset")
    domains = ["target_data"] + (["source_data"] if src and Path(str(src)).expanduser().is_file() else [])
    merged = apply_overrides(merged, file_overrides(domains, text_column, label_column, ordered_split))
    if method:
        merged["methods"] = [parse_objective_spec(m, "--method") for m in method]
    cfg = build_config(merged, AdaptConfig)
    from transferkit.models import allow_remote_code

    with allow_remote_code(trust_remote_code), allowed_code(source_arch, arch):
        result = run_adapt(cfg)
    typer.echo(result.table())
    console.print(f"wrote {result.out_dir / 'metrics.json'} and {result.out_dir / 'report.html'}")
