"""``transferkit inspect``: a model's layers, and what would transfer between two models."""

from __future__ import annotations

import typer

from transferkit.cli._common import console, handle_errors, setup_logging, trust_remote_code_option


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    from transferkit.errors import ConfigError

    if text is None:
        return None
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape) or len(shape) > 4:
        raise ConfigError(
            f"--input-shape must be 1 to 4 positive integers like 1,28,28 (C,H,W) or 64 (features), "
            f"got {text!r}"
        )
    return shape


@handle_errors
def inspect(
    model: str = typer.Argument(..., help="Model folder, weights file, built-in or hub name."),
    target: str | None = typer.Option(
        None, "--target", help="Second model: print the TransferReport from MODEL into it."
    ),
    arch: str | None = typer.Option(None, "--arch", help="Architecture of a bare weights file."),
    num_classes: int | None = typer.Option(None, "--num-classes", help="Head size for names."),
    input_shape: str | None = typer.Option(
        None, "--input-shape", help="Example input shape (e.g. 1,28,28) to show output shapes."
    ),
    trust_remote_code: bool = trust_remote_code_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Print a model's layers, or the parameter transfer between two models."""
    import torch

    from transferkit.models import allow_remote_code, format_layers, list_layers, load_model
    from transferkit.transfer import transfer_parameters

    setup_logging(verbose)
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    with allow_remote_code(trust_remote_code):
        src = load_model(model, arch=arch, pretrained=False, **kwargs)
    shape = _parse_shape(input_shape)
    if target is None:
        example = torch.zeros(2, *shape) if shape else None
        console.print(f"{model}: {src.info.arch}, {src.info.num_classes} classes")
        typer.echo(format_layers(list_layers(src, example)))
        return
    with allow_remote_code(trust_remote_code):
        tgt = load_model(target, pretrained=False, **kwargs)
    report = transfer_parameters(src, tgt)
    typer.echo(report.table())
