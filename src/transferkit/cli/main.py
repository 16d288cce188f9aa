"""Entry point: ``transferkit <command>``; each command lives in its own module."""

from __future__ import annotations

import typer

from transferkit import __version__
from transferkit.cli import (
    adapt,
    compare,
    demo,
    distill,
    evaluate,
    export,
    finetune,
    grow,
    inspect,
    merge,
    multitask,
    predict,
    rank,
    recipes,
    validate,
)
from transferkit.cli._common import OneLineGroup

app = typer.Typer(
    cls=OneLineGroup,
    name="transferkit",
    help="Move knowledge from a source model into a target model, and prove it helped.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo)
app.command("adapt")(adapt.adapt)
app.command("compare")(compare.compare)
app.command("finetune", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})(
    finetune.finetune
)
app.command("distill")(distill.distill)
app.command("evaluate")(evaluate.evaluate)
app.command("export")(export.export)
app.command("grow")(grow.grow)
app.command("inspect")(inspect.inspect)
app.command("merge")(merge.merge)
app.command("multitask")(multitask.multitask)
app.command("predict")(predict.predict)
app.command("rank")(rank.rank)
app.command("recipes")(recipes.recipes)
app.command("validate")(validate.validate)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"transferkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """transferkit: parameter transfer, fine-tuning and honest comparison with training from scratch."""


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
