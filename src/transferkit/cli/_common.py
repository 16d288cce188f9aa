"""Shared CLI pieces: error handling, logging setup, rich output."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from transferkit.errors import TransferkitError

F = TypeVar("F", bound=Callable[..., Any])

console = Console(highlight=False)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` as one line on stderr and return the exit (code 2) to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def handle_errors(func: F) -> F:
    """Turn a :class:`TransferkitError` into one line on stderr and exit code 2, with no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TransferkitError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; completed epochs are checkpointed (rerun with --resume)", err=True)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool) -> None:
    """INFO logs of transferkit on stderr when ``verbose``; warnings only otherwise."""
    level = logging.INFO if verbose else logging.WARNING
    logger = logging.getLogger("transferkit")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def parse_objective_spec(text: str, flag: str) -> dict[str, Any]:
    """``"kd:weight=0.9,temperature=4"`` -> ``{"name": "kd", "weight": 0.9, "temperature": 4}``.

    Values are parsed as YAML (numbers, booleans, lists); ``flag`` names the option in errors.
    """
    import yaml

    from transferkit.errors import ConfigError

    name, _, rest = text.partition(":")
    if not name.strip():
        raise ConfigError(f"{flag} {text!r} has no name; write e.g. kd:weight=0.9,temperature=4")
    spec: dict[str, Any] = {"name": name.strip()}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{flag} {text!r}: {item!r} is not key=value")
        spec[key.strip()] = yaml.safe_load(value)
    return spec
