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
    """Validate a finetune or distill config (one with a ``teacher`` section); print it resolved."""
    from transferkit.config import (
        DistillConfig,
        FinetuneConfig,
        apply_overrides,
        build_config,
        dump_config,
        read_yaml,
    )

    data = apply_overrides(read_yaml(config), list(overrides or []))
    cfg = build_config(data, DistillConfig if "teacher" in data else FinetuneConfig)
    typer.echo(dump_config(cfg))
    console.print("config is valid")
