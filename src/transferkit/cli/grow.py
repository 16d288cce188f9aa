"""``transferkit grow``: widen layers / insert identity layers (Net2Net) and save the grown model."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._common import (
    allowed_code,
    handle_errors,
    head_option,
    input_size_option,
    mean_option,
    setup_logging,
    source_arch_option,
    source_spec_of,
    std_option,
    trust_remote_code_option,
)


def parse_widen(text: str) -> tuple[str, int]:
    """``"backbone.fc1=64"`` -> ``("backbone.fc1", 64)``.

    Raises:
        ConfigError: not ``LAYER=WIDTH`` with an integer width.
    """
    from transferkit.errors import ConfigError

    layer, eq, width = text.rpartition("=")
    try:
        value = int(width)
    except ValueError:
        value = None
    if not eq or not layer.strip() or value is None:
        raise ConfigError(
            f"--widen {text!r} is not LAYER=WIDTH with an integer width; write e.g. "
            "--widen backbone.fc1=64"
        )
    return layer.strip(), value


@handle_errors
def grow(
    model: str = typer.Argument(..., help="Model folder or weights file (with its config.json)."),
    source_arch: str | None = source_arch_option(),
    head: str | None = head_option(),
    input_size: str | None = input_size_option(),
    mean: str | None = mean_option(),
    std: str | None = std_option(),
    widen_specs: list[str] | None = typer.Option(
        None, "--widen", help="LAYER=WIDTH: widen LAYER to WIDTH units; repeatable."
    ),
    deepen_specs: list[str] | None = typer.Option(
        None, "--deepen", help="LAYER: insert an identity layer (+ReLU) after LAYER; repeatable."
    ),
    noise: float = typer.Option(
        0.0, "--noise", help="Relative noise on widened copies (breaks symmetry; changes outputs)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the replicated units and the noise."),
    out: Path = typer.Option(..., "--out", help="Folder to save the grown model to."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in --out."),
    trust_remote_code: bool = trust_remote_code_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Grow MODEL function-preservingly (Net2Net) and save it to --out.

    All --widen steps run first, in the order given, then all --deepen steps in the order given.
    Each step prints its report, with the measured max |change| of the outputs on a probe batch.
    """
    from transferkit.errors import ConfigError
    from transferkit.models import allow_remote_code, load_source, save_model
    from transferkit.transfer.structure import deepen, widen

    setup_logging(verbose)
    widens = [parse_widen(s) for s in widen_specs or []]
    deepens = list(deepen_specs or [])
    if not widens and not deepens:
        raise ConfigError("nothing to do: pass --widen LAYER=WIDTH and/or --deepen LAYER")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        what = "is a file" if not out.is_dir() else "already holds files"
        raise ConfigError(
            f"--out {str(out)!r} {what}; pass --overwrite to replace it or choose another --out"
        )
    spec = source_spec_of(model, arch=source_arch, head=head, input_size=input_size, mean=mean, std=std,
                          pretrained=False)
    with allow_remote_code(trust_remote_code), allowed_code(source_arch):
        net = load_source(spec)
    before = sum(p.numel() for p in net.parameters())
    for layer, width in widens:
        net = widen(net, layer, width, noise=noise, seed=seed)
        rep = net.growth_report
        typer.echo(
            f"widen {rep.layer}: {rep.old_width} -> {rep.new_width} units, consumer "
            f"{rep.consumer}, max |Δ output| {rep.max_abs_diff:.3g}"
        )
    for after in deepens:
        net = deepen(net, after)
        rep = net.growth_report
        typer.echo(
            f"deepen after {rep.layer}: inserted {rep.consumer} ({rep.new_width} units), "
            f"max |Δ output| {rep.max_abs_diff:.3g}"
        )
    after_count = sum(p.numel() for p in net.parameters())
    typer.echo(f"parameters: {before:,} -> {after_count:,}")
    folder = save_model(net, out)
    typer.echo(f"saved to {folder}")
