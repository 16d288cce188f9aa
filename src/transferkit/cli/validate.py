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
    """Validate a finetune, distill or adapt config (the config.yaml each run writes, too); print it
    resolved."""
    from transferkit.config import apply_overrides, build_config, config_class, dump_config, read_yaml

    data = apply_overrides(read_yaml(config), list(overrides or []))
    cls = config_class(data)
    cfg = build_config(data, cls)
    typer.echo(dump_config(cfg))
    console.print(f"config is valid ({cls.__name__})")
    recipe = getattr(cfg, "recipe", None)
    if recipe == "auto":  # finetune: the train values left unset are filled when the data is known
        console.print("recipe auto: picked by strategy and labels per class when the run starts; it sets "
                      "the train values left unset here (see `transferkit recipes`)")
    elif recipe is not None:
        from transferkit.recipes import load_recipe

        fills = sorted(set(load_recipe(recipe).train) - cfg.train.model_fields_set)
        console.print(f"recipe {recipe} sets train values left unset here: {', '.join(fills) or 'none'}")
