"""``transferkit rank``: score candidate source models on target data, without training."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._common import (
    allowed_code,
    console,
    file_kwargs,
    handle_errors,
    head_option,
    input_size_option,
    label_column_option,
    mean_option,
    ordered_split_option,
    pretrained_option,
    setup_logging,
    source_arch_option,
    source_spec_of,
    std_option,
    text_column_option,
    trust_remote_code_option,
)


@handle_errors
def rank(
    candidates: list[str] = typer.Option(
        ..., "--candidates", "--source", help="Candidate source model: folder, weights file, built-in or hub "
        "name (repeatable; --source as in finetune)."
    ),
    data: str = typer.Option(..., "--data", help="Target data: built-in name or path."),
    text_column: str | None = text_column_option(),
    label_column: str | None = label_column_option(),
    ordered_split: bool = ordered_split_option(),
    source_arch: str | None = source_arch_option(),
    head: str | None = head_option(),
    input_size: str | None = input_size_option(),
    mean: str | None = mean_option(),
    std: str | None = std_option(),
    pretrained: bool | None = pretrained_option(),
    image_size: int | None = typer.Option(
        None, "--image-size", min=8, help="Score every image candidate at this input size (the size you "
        "will fine-tune at; scores move with it); default: each model's own."
    ),
    scores: str = typer.Option(
        "logme,leep,nce,h_score_shrinkage,gbc",
        "--scores",
        help="Comma-separated scores: logme, leep, nce, h_score, h_score_shrinkage, gbc, knn.",
    ),
    shots: int | None = typer.Option(None, "--shots", min=1, help="Labelled examples per class."),
    seed: int = typer.Option(0, "--seed", help="Seed of the few-shot sample."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Examples per forward pass."),
    out: Path | None = typer.Option(None, "--out", help="Write the ranking (.json or .csv)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    trust_remote_code: bool = trust_remote_code_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each candidate's scores."),
) -> None:
    """Rank candidate source models by transferability scores on the target's training data."""
    from transferkit.cli.inspect import describe_preprocessing
    from transferkit.data import few_shot, load_dataset
    from transferkit.errors import ConfigError
    from transferkit.models import allow_remote_code, load_source
    from transferkit.selection import rank as run_rank

    setup_logging(verbose)
    names = [s.strip() for s in scores.split(",") if s.strip()]
    if out is not None and out.suffix.lower() not in (".json", ".csv"):
        raise ConfigError(f"--out {str(out)!r} must end in .json or .csv")
    if out is not None and out.exists() and not overwrite:
        raise ConfigError(
            f"--out {str(out)!r} already exists; pass --overwrite to replace it or choose another --out"
        )
    if len(set(candidates)) != len(candidates):
        raise ConfigError(f"--source repeats a model ({candidates}); give each one once")
    train = load_dataset(data, **file_kwargs(text_column, label_column, ordered_split)).train
    if shots is not None:
        train = few_shot(train, shots, seed)
    # --source-arch, --head and the preprocessing flags describe the candidates given as weights files
    specs = {
        c: source_spec_of(c, arch=source_arch, head=head, input_size=input_size, mean=mean, std=std,
                          pretrained=pretrained)
        if Path(c).is_file()
        else source_spec_of(c, arch=None, head=None, input_size=None, mean=None, std=None,
                            pretrained=pretrained)
        for c in candidates
    }
    with allow_remote_code(trust_remote_code), allowed_code(source_arch):
        models = {c: load_source(spec) for c, spec in specs.items()}
        for model in models.values():
            if image_size is not None:  # the size the recipes will fine-tune at, not the library's
                info = model.info
                info.input_size = (*info.input_size[:-2], image_size, image_size)
                model.input_adapter = info.adapter()
        result = run_rank(models, train, scores=names, batch_size=batch_size)
    per_class = f", {shots} per class (seed {seed})" if shots is not None else ""
    typer.echo(f"scored on {data}: {len(train)} labelled training examples{per_class}, "
               f"{train.num_classes} classes; higher is better for every score")
    typer.echo(result.table())
    if result.note is not None:  # too few candidates for the ranking to be checked against fine-tuning
        typer.echo(f"note: {result.note}")
    for c, model in models.items():  # what each score saw (scores move with size and normalisation)
        typer.echo(f"{c}: {model.info.arch}; preprocessing: {describe_preprocessing(model.info)}")
    if out is not None:
        from transferkit import __version__
        from transferkit.workflows.output import command_line, model_fingerprint

        result.about = {
            "command": command_line(),
            "transferkit_version": __version__,
            "data": {"spec": data, "examples": len(train), "shots": shots, "seed": seed,
                     "num_classes": train.num_classes},
            "candidates": [{**(model_fingerprint(m, c) or {}),
                            "preprocessing": describe_preprocessing(m.info)} for c, m in models.items()],
        }
        console.print(f"wrote {result.write(out)}")
