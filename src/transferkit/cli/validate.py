"""``transferkit validate``: check a config file and overrides, reporting every problem at once."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors


@handle_errors
def validate(
    config: Path = typer.Argument(..., help="YAML config file."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides."),
) -> None:
    """Validate a finetune config; print the resolved config when it is valid."""
    from transferkit.config import dump_config, load_config

    cfg = load_config(config, list(overrides or []))
    typer.echo(dump_config(cfg))
    console.print("config is valid")
