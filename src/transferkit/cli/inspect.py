"""``transferkit inspect``: a model's layers, and what would transfer between two models."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._common import (
    allowed_code,
    console,
    handle_errors,
    head_option,
    mean_option,
    setup_logging,
    source_spec_of,
    std_option,
    trust_remote_code_option,
)


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
    arch: str | None = typer.Option(
        None, "--arch", "--source-arch", help="Architecture of a bare weights file: a built-in or hub "
        "name, or your own class as path/to/file.py:ClassName (imports and runs that file)."
    ),
    head: str | None = head_option(),
    mean: str | None = mean_option(),
    std: str | None = std_option(),
    num_classes: int | None = typer.Option(None, "--num-classes", help="Head size for names."),
    input_shape: str | None = typer.Option(
        None, "--input-shape", help="Example input shape (e.g. 1,28,28) to show output shapes."
    ),
    trust_remote_code: bool = trust_remote_code_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Print a model's layers and preprocessing, or the parameter transfer between two models.

    A weights file whose architecture is unknown (no --arch, no config.json beside it) is listed
    tensor by tensor.
    """
    import torch

    from transferkit.models import allow_remote_code, format_layers, list_layers, load_model, load_source
    from transferkit.models.custom import is_code_spec
    from transferkit.models.storage import CONFIG_NAME
    from transferkit.transfer import transfer_parameters

    setup_logging(verbose)
    shape = _parse_shape(input_shape)
    path = Path(model)
    if arch is None and path.is_file() and not (path.parent / CONFIG_NAME).is_file():
        _list_tensors(path)
        return
    # for your own class, --input-shape is also its input size (a named model knows its own)
    code = arch is not None and is_code_spec(arch)
    size = ",".join(map(str, shape)) if code and shape and len(shape) in (1, 3) else None
    spec = source_spec_of(model, arch=arch, head=head, input_size=size, mean=mean, std=std, pretrained=False)
    with allow_remote_code(trust_remote_code), allowed_code(arch):
        src = load_source(spec, num_classes=num_classes)
    if target is None:
        example = torch.zeros(2, *shape) if shape else None
        console.print(f"{model}: {src.info.arch}, {src.info.num_classes} classes")
        console.print(f"preprocessing: {describe_preprocessing(src.info)}")
        typer.echo(format_layers(list_layers(src, example)))
        return
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    with allow_remote_code(trust_remote_code), allowed_code(arch):
        tgt = load_model(target, pretrained=False, **kwargs)
    report = transfer_parameters(src, tgt)
    typer.echo(report.table())


def describe_preprocessing(info: object) -> str:
    """One line: the input adapter's size, normalisation, resizing and crop; for a text model its
    tokenizer, the tokens it reads and its pooling."""
    text = getattr(info, "text", None)
    if text is not None:
        return (f"text: tokenizer {text['tokenizer']}, first {info.input_size[0]} tokens, "  # type: ignore[attr-defined]
                f"{text.get('pooling', 'mean')} pooling")
    pre = info.preprocessing  # type: ignore[attr-defined]
    size = "x".join(map(str, pre["input_size"]))
    if pre["mean"] is None:
        norm = "no normalisation"
    else:
        norm = f"mean {_numbers(pre['mean'])}, std {_numbers(pre['std'])}"
    crop = f", centre crop {pre['crop_pct']:.3g}" if pre["crop_pct"] < 1 else ""
    return f"input {size}, {norm}, {pre['interpolation']} resize{crop}"


def _numbers(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _list_tensors(path: Path) -> None:
    """The tensors of a weights file whose architecture is unknown, and how to use it."""
    from transferkit.io import load_state_dict

    state = load_state_dict(path, check_finite=False)
    total = sum(v.numel() for v in state.values())
    console.print(f"{path}: {len(state)} tensors, {total:,} values; architecture unknown")
    width = max((len(k) for k in state), default=0)
    for key, value in state.items():
        shape = "x".join(map(str, value.shape)) or "scalar"
        typer.echo(f"  {key.ljust(width)}  {shape:>16s}  {str(value.dtype).removeprefix('torch.')}")
    console.print(
        "to use it, name its architecture: --arch NAME (built-in or hub), or your own class: "
        "--source-arch path/to/file.py:ClassName [--head NAME] [--input-shape C,H,W]"
    )
