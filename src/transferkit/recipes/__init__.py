"""Named training recipes: settings of ``finetune`` that fit the data, in YAML files a user can copy.

A recipe is a partial :class:`~transferkit.config.FinetuneConfig`: ``train`` values (any
:class:`~transferkit.engine.TrainConfig` key), ``min_steps`` and ``lr_sweep``, with a one-line
``description``. It fills only what the user left unset: a value given on the command line, in a
``--config`` file or in Python always wins. The built-in recipes are the YAML files beside this
module (``few-shot``, ``linear-probe``, ``full``, ``lora``); ``transferkit recipes`` lists them and
``transferkit recipes few-shot`` prints one to copy. ``--recipe path/to/file.yaml`` uses a user's file.

``recipe: auto`` (the default) picks by the strategy and the number of labelled examples per class:
``linear_probe`` -> ``linear-probe``, ``lora`` -> ``lora``, otherwise ``few-shot`` up to
:data:`FEW_SHOT_MAX` examples per class and ``full`` above. The defaults of ``TrainConfig`` alone
(10 epochs of batches of 64) underfit a 10-labels-per-class target: 2 steps per epoch, 20 in all, and
18-37 % training accuracy measured on 100 Fashion-MNIST images; the few-shot recipe fits them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from transferkit.engine.config import TrainConfig, format_validation_error
from transferkit.errors import ConfigError

#: Up to this many labelled training examples per class, ``recipe: auto`` fine-tunes with ``few-shot``.
FEW_SHOT_MAX = 100
_HERE = Path(__file__).parent


class _RecipeFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    min_steps: int | None = Field(None, ge=1)
    lr_sweep: list[float] | None = None
    train: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Recipe:
    """A loaded recipe.

    Attributes:
        name: Its name (the file's stem) or the path it was read from.
        description: One line saying what it is for.
        train: The ``TrainConfig`` values it sets (checked).
        min_steps: Training runs at least this many optimisation steps: ``epochs`` is raised on a
            training set too small for it (unless the user set ``epochs``). ``None``: no minimum.
        lr_sweep: Learning rates tried per arm and seed, the best on validation kept; ``None``: none.
        path: The YAML file.
    """

    name: str
    description: str
    train: dict[str, Any] = field(default_factory=dict)
    min_steps: int | None = None
    lr_sweep: list[float] | None = None
    path: Path | None = None


def available_recipes() -> dict[str, str]:
    """The built-in recipes: name -> description."""
    return {p.stem: load_recipe(p.stem).description for p in sorted(_HERE.glob("*.yaml"))}


def recipe_path(name: str) -> Path:
    """The YAML file of a built-in recipe name, or of a path.

    Raises:
        ConfigError: neither a built-in recipe nor an existing file.
    """
    builtin = _HERE / f"{name}.yaml"
    if "/" not in name and builtin.is_file():
        return builtin
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    names = ", ".join(sorted(p.stem for p in _HERE.glob("*.yaml")))
    raise ConfigError(
        f"recipe {name!r} is neither a built-in recipe ({names}, or auto) nor a YAML file; "
        "see `transferkit recipes`"
    )


def load_recipe(name: str | os.PathLike) -> Recipe:
    """Read and check a recipe by built-in name or path (YAML, read with ``safe_load``).

    Raises:
        ConfigError: unknown name, unreadable file, unknown keys or invalid training values.
    """
    path = recipe_path(str(name))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML text ({exc}); fix the file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {str(path)!r} must hold a mapping (train: ..., min_steps: ...)")
    try:
        parsed = _RecipeFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"unknown key {'.'.join(map(str, e['loc']))!r} (a recipe holds description, min_steps, "
            "lr_sweep and train)" if e["type"] == "extra_forbidden"
            else f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"recipe {str(path)!r}: {problems}") from None
    try:
        TrainConfig(**parsed.train)
    except ValidationError as exc:
        raise ConfigError(f"recipe {str(path)!r}: {format_validation_error(exc)}") from None
    except TypeError as exc:
        raise ConfigError(f"recipe {str(path)!r}: train: {exc}") from None
    if parsed.lr_sweep is not None and (not parsed.lr_sweep or any(not lr > 0 for lr in parsed.lr_sweep)):
        raise ConfigError(
            f"recipe {str(path)!r}: lr_sweep must list learning rates > 0, got {parsed.lr_sweep}"
        )
    is_builtin = path.parent == _HERE
    return Recipe(path.stem if is_builtin else str(path), parsed.description, dict(parsed.train),
                  parsed.min_steps, parsed.lr_sweep, path)


def auto_recipe(strategy: str, examples_per_class: float | None) -> str:
    """The built-in recipe ``recipe: auto`` picks for a strategy and the labelled examples per class."""
    if strategy == "linear_probe":
        return "linear-probe"
    if strategy == "lora":
        return "lora"
    if examples_per_class is not None and examples_per_class > FEW_SHOT_MAX:
        return "full"
    return "few-shot"


def apply_recipe(train: TrainConfig, recipe: Recipe, n_train: int | None = None) -> TrainConfig:
    """``train`` with the recipe's values in every field the user did not set; with ``n_train``
    (labelled training examples) and the recipe's ``min_steps``, ``epochs`` is raised so that
    training takes at least that many optimisation steps, unless the user set ``epochs``.

    Raises:
        ConfigError: the recipe's values and the user's don't make a valid ``TrainConfig``.
    """
    given = {k: getattr(train, k) for k in train.model_fields_set}
    merged = {**recipe.train, **given}
    epochs = merged.get("epochs", TrainConfig.model_fields["epochs"].default)
    if "warmup_epochs" not in given and merged.get("warmup_epochs", 0) >= epochs:
        merged.pop("warmup_epochs", None)  # the user's short run: no room for the recipe's warm-up
    try:
        filled = TrainConfig(**merged)
        if recipe.min_steps and n_train and "epochs" not in given:
            steps_per_epoch = math.ceil(n_train / filled.batch_size)
            epochs = max(filled.epochs, math.ceil(recipe.min_steps / steps_per_epoch))
            if epochs != filled.epochs:
                filled = TrainConfig(**{**filled.model_dump(exclude_unset=True), "epochs": epochs})
    except ValidationError as exc:
        problem = format_validation_error(exc)
        raise ConfigError(f"recipe {recipe.name!r} with your settings: {problem}") from None
    return filled


__all__ = [
    "FEW_SHOT_MAX",
    "Recipe",
    "apply_recipe",
    "auto_recipe",
    "available_recipes",
    "load_recipe",
    "recipe_path",
]
