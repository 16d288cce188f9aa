"""Shared CLI pieces: error handling, logging setup, rich output.

Every failure reaches the user as one line on stderr (``error: <problem>; <fix>``) and exit code 2,
never a traceback: transferkit's own errors, usage errors (a bad flag value), operating-system errors
on the paths given and, as a last resort, anything unexpected (with the hint to rerun under
``TRANSFERKIT_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

from transferkit.errors import TransferkitError

F = TypeVar("F", bound=Callable[..., Any])

console = Console(highlight=False)


DEBUG_ENV = "TRANSFERKIT_DEBUG"
# Click's usage-error base class, wherever this typer version keeps click (vendored or not).
ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


def one_line(text: str) -> str:
    """``text`` with its lines joined by ``" | "`` and runs of spaces collapsed (one stderr line)."""
    parts = [" ".join(line.split()) for line in str(text).splitlines()]
    return " | ".join(p for p in parts if p)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` as one line on stderr and return the exit (code 2) to raise."""
    typer.echo(f"error: {one_line(message)}", err=True)
    return typer.Exit(code=2)


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error on a path the user gave, with what to do."""
    path = exc.filename if exc.filename is not None else ""
    what = exc.strerror or str(exc)
    where = f"{str(path)!r}: " if path != "" else ""
    fixes = {
        "EACCES": "check its permissions or choose another path",
        "EROFS": "the file system is read-only: choose a writable path",
        "ENAMETOOLONG": "use a shorter name",
        "ENOSPC": "free some disk space",
        "EEXIST": "it already exists: choose another path",
        "ENOTDIR": "a part of the path is a file, not a folder: choose another path",
        "EISDIR": "it is a folder: give a file path",
        "ENOENT": "check the path",
    }
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"cannot use {where}{what}; {fixes.get(name, 'check the path and its permissions')}"


def handle_errors(func: F) -> F:
    """Turn every failure into one line on stderr and exit code 2, with no traceback.

    :class:`TransferkitError` messages are printed as they are; ``OSError`` names the path and the
    fix; anything else is reported as an unexpected error (the traceback is shown with the
    environment variable ``TRANSFERKIT_DEBUG=1``).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except TransferkitError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; completed epochs are checkpointed (rerun with --resume)", err=True)
            raise typer.Exit(code=130) from None
        except OSError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            raise fail(describe_os_error(exc)) from None
        except ValueError as exc:
            if os.environ.get(DEBUG_ENV) or "null byte" not in str(exc):
                raise _unexpected(exc) from None
            raise fail("a path you gave holds a null byte (\\x00); remove it") from None
        except Exception as exc:  # the last resort: one line, never a traceback
            raise _unexpected(exc) from None

    return wrapper  # type: ignore[return-value]


def _unexpected(exc: Exception) -> Exception:
    """The last resort for an error transferkit did not foresee: one line (or, with
    ``TRANSFERKIT_DEBUG=1``, the exception itself, to see its traceback)."""
    if os.environ.get(DEBUG_ENV):
        return exc
    return fail(
        f"unexpected {type(exc).__name__}: {exc} (rerun with {DEBUG_ENV}=1 for the traceback "
        "and report it)"
    )


class OneLineGroup(TyperGroup):
    """The command group: usage errors (unknown option, a value of the wrong type, a missing
    argument) become one ``error:`` line naming the problem and the ``--help`` to read, exit 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        from transferkit.workflows.output import set_command_line

        set_command_line(list(args) if args is not None else sys.argv[1:])  # reports show it
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `transferkit`: help was shown
                sys.exit(2)
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "transferkit"
            message = one_line(exc.format_message()).rstrip(".")
            typer.echo(f"error: {message}; see '{command} --help'", err=True)
            sys.exit(2)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)


def trust_remote_code_option() -> Any:
    """The ``--trust-remote-code`` flag: the only way to let a model's files run code."""
    return typer.Option(
        False,
        "--trust-remote-code",
        help="Let a transformers model run the Python code shipped in its files (runs code from the "
        "model's files: only for models you trust). Off by default; no config file can turn it on.",
    )


def augment_option() -> Any:
    """The repeatable ``--augment NAME[:key=value,...]`` flag (sets ``train.augment``)."""
    return typer.Option(
        None,
        "--augment",
        help="Train-time augmentation, repeatable and applied in order: hflip, vflip, crop[:scale=0.5], "
        "shift[:fraction=0.1], rotate, randaugment, trivialaugment, noise[:std=0.05], color, erase, "
        "mixup[:alpha=0.2], cutmix.",
    )


def check_split(split: str) -> None:
    """Refuse a ``--split`` that names no dataset split (train, val, test).

    Raises:
        ConfigError: any other value (one line naming the three).
    """
    from transferkit.errors import ConfigError

    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split must be train, val or test, got {split!r}")


def model_class_option() -> Any:
    """The ``--arch`` flag of commands that load a saved model built from the user's own code."""
    return typer.Option(None, "--arch", "--source-arch", help="The class of a model built from your own "
                        "code (path/to/file.py:ClassName; imports and runs that file).")


def load_for_inference(model: str, arch: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model in folder or file ``model``, with the LoRA adapters saved beside it (``lora.save:
    adapters``) merged in: what it was trained as, ready to predict."""
    from pathlib import Path

    from transferkit.engine.parameter_efficient import ADAPTERS_CONFIG, load_adapters, merge_adapters
    from transferkit.models import load_model

    net = load_model(model, arch=arch, trust_remote_code=trust_remote_code)
    if (Path(model) / ADAPTERS_CONFIG).is_file():
        net = merge_adapters(load_adapters(net, model))
    return net


def text_column_option(where: str = "the --data file") -> Any:
    """The ``--text-column NAME`` flag: the text column of ``where`` (a .csv / .tsv / .jsonl file)."""
    return typer.Option(None, "--text-column", help=f"Text column of {where} (.csv / .tsv / .jsonl; "
                        "default: text).")


def label_column_option(where: str = "the --data file") -> Any:
    """The ``--label-column NAME`` flag: the label column of ``where``."""
    return typer.Option(None, "--label-column", help=f"Label column of {where} (.csv / .tsv / .jsonl, "
                        "numeric .csv; default: label).")


def ordered_split_option(where: str = "the --data file") -> Any:
    """The ``--ordered-split`` flag: the rows of ``where`` are in time order."""
    return typer.Option(False, "--ordered-split", help=f"The rows of {where} are in time order: test is its "
                        "last 20 % of rows (an .npz with its own test arrays keeps them), validation the "
                        "last rows before them; not shuffled.")


def file_kwargs(text_column: str | None, label_column: str | None, ordered: bool = False) -> dict[str, Any]:
    """``--text-column`` / ``--label-column`` / ``--ordered-split`` as
    :func:`~transferkit.data.load_dataset` arguments (those given)."""
    given = {"text_column": text_column, "label_column": label_column, "ordered": ordered or None}
    return {k: v for k, v in given.items() if v is not None}


def file_overrides(
    sections: Sequence[str], text_column: str | None, label_column: str | None, ordered: bool = False
) -> list[str]:
    """``--text-column`` / ``--label-column`` / ``--ordered-split`` as ``key=value`` overrides of each
    config section."""
    return [f"{section}.{k}={json.dumps(v)}" for section in sections
            for k, v in file_kwargs(text_column, label_column, ordered).items()]


def unlabeled_option(readers: str) -> Any:
    """The ``--unlabeled DATA`` flag (sets ``data.unlabeled``); ``readers`` names the methods that read it."""
    return typer.Option(
        None, "--unlabeled", help=f"Unlabelled target data for {readers}: 'rest' (the target's training "
        "split without labels), a built-in name or a path (for text: also a .txt file, one text a line, "
        "or a table without labels)."
    )


def unlabeled_override(unlabeled: str | None) -> list[str]:
    """``--unlabeled`` as a ``key=value`` override (none when not given)."""
    return [] if unlabeled is None else [f"data.unlabeled={json.dumps(unlabeled)}"]


def apply_augment(merged: dict[str, Any], augment: list[str] | None) -> dict[str, Any]:
    """``merged`` with ``train.augment`` set from ``--augment`` flags (when given)."""
    if augment:
        merged.setdefault("train", {})["augment"] = list(augment)
    return merged


def setup_logging(verbose: bool) -> None:
    """INFO logs of transferkit on stderr when ``verbose``; warnings only otherwise."""
    level = logging.INFO if verbose else logging.WARNING
    logger = logging.getLogger("transferkit")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not the stream of the first
    call), so logs follow redirections such as an in-process test runner's."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it; the property ignores it
        pass


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
        try:
            spec[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(
                f"{flag} {text!r}: value {value!r} of {key.strip()!r} is not valid YAML (options are "
                "separated by commas, so a list can't be given here: put it in a YAML config)"
            ) from None
    return spec


# ----------------------------------------------------------------------------------------------
# A source model's options, shared by the commands that take one (finetune, distill, rank, grow,
# inspect, evaluate). A user's own class named here is the only way its code is imported.


def source_arch_option(flag: str = "--source-arch") -> Any:
    """``--source-arch``: the architecture of a bare weights file, including the user's own class."""
    return typer.Option(
        None,
        flag,
        help="Architecture of a bare weights file: a built-in or hub name, or your own class as "
        "path/to/file.py:ClassName or package.module:ClassName (imports and runs that file: naming "
        "it here is the only way; a config file can't).",
    )


def head_option() -> Any:
    return typer.Option(
        None, "--head", help="Your class's classifier, a dotted module name (default: the last nn.Linear)."
    )


def input_size_option() -> Any:
    return typer.Option(
        None, "--input-size", help="The source's input C,H,W (e.g. 3,32,32) where its files can't tell."
    )


def mean_option() -> Any:
    return typer.Option(None, "--mean", help="Per-channel input mean, e.g. 0.485,0.456,0.406.")


def std_option() -> Any:
    return typer.Option(None, "--std", help="Per-channel input std, e.g. 0.229,0.224,0.225.")


def pretrained_option() -> Any:
    return typer.Option(
        None,
        "--pretrained/--no-pretrained",
        help="Load a built-in or hub model's pretrained weights (default: yes; they must be cached or "
        "downloadable).",
    )


def parse_numbers(text: str | None, flag: str, *, integers: bool = False) -> list[Any] | None:
    """``"3,32,32"`` -> ``[3, 32, 32]`` (``None`` stays ``None``); one error line for bad text."""
    from transferkit.errors import ConfigError

    if text is None:
        return None
    try:
        values = [(int if integers else float)(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        values = []
    if not values or (integers and any(v < 1 for v in values)):
        kind = "positive integers" if integers else "numbers"
        example = "3,224,224" if integers else "0.485,0.456,0.406"
        raise ConfigError(f"{flag} takes comma-separated {kind} like {example}, got {text!r}")
    return values


def source_overrides(
    prefix: str,
    arch_key: str,
    *,
    arch: str | None,
    head: str | None,
    input_size: str | None,
    mean: str | None,
    std: str | None,
    pretrained: bool | None,
) -> list[str]:
    """The source flags as ``key=value`` overrides under ``prefix`` (``model.``, ``teacher.``)."""
    items = []
    if arch is not None:
        items.append(f"{prefix}{arch_key}={arch}")
    if head is not None:
        items.append(f"{prefix}head={head}")
    for key, values in _preprocessing_flags(input_size, mean, std).items():
        items.append(f"{prefix}{key}=[{','.join(map(str, values))}]")
    if pretrained is not None:
        items.append(f"{prefix}pretrained={str(pretrained).lower()}")
    return items


def source_spec_of(
    source: str,
    *,
    arch: str | None,
    head: str | None,
    input_size: str | None,
    mean: str | None,
    std: str | None,
    pretrained: bool | None,
) -> Any:
    """A :class:`~transferkit.models.SourceSpec` from a command's source flags."""
    from transferkit.models import SourceSpec

    return SourceSpec(
        source, arch, True if pretrained is None else pretrained, head,
        **_preprocessing_flags(input_size, mean, std),
    )


def _preprocessing_flags(input_size: str | None, mean: str | None, std: str | None) -> dict[str, list[Any]]:
    """``--input-size`` / ``--mean`` / ``--std`` parsed, the ones given only."""
    parsed = {
        "input_size": parse_numbers(input_size, "--input-size", integers=True),
        "mean": parse_numbers(mean, "--mean"),
        "std": parse_numbers(std, "--std"),
    }
    return {k: v for k, v in parsed.items() if v is not None}


def allowed_code(*archs: str | None) -> Any:
    """The context in which the user classes named on the command line (and only they) may be
    imported: :func:`~transferkit.models.allow_code` of the flags' values that name code."""
    from transferkit.models import allow_code
    from transferkit.models.custom import is_code_spec

    return allow_code(*[a for a in archs if a is not None and is_code_spec(a)])
