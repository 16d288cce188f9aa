"""``transferkit recipes``: list the built-in training recipes, or print one to copy."""

from __future__ import annotations

import typer

from transferkit.cli._common import handle_errors


@handle_errors
def recipes(
    name: str | None = typer.Argument(None, help="A recipe to print (its YAML file), e.g. few-shot."),
) -> None:
    """List the training recipes of finetune (--recipe NAME), or print one to copy and edit."""
    from transferkit.recipes import FEW_SHOT_MAX, available_recipes, load_recipe

    if name is not None:
        typer.echo(load_recipe(name).path.read_text(encoding="utf-8").rstrip())  # type: ignore[union-attr]
        return
    found = available_recipes()
    width = max(map(len, found))
    for recipe, description in found.items():
        typer.echo(f"{recipe.ljust(width)}  {description}")
    typer.echo(
        f"\nauto (the default) picks linear-probe for --strategy linear_probe, lora for --strategy lora, "
        f"few-shot up to {FEW_SHOT_MAX} labelled examples per class and full above. A recipe fills only "
        "what you leave unset; copy one with `transferkit recipes NAME > my.yaml` and pass "
        "--recipe my.yaml."
    )
