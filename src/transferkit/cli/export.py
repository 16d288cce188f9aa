"""``transferkit export``: write a model as an ONNX file and check it with onnxruntime."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from transferkit.cli._common import (
    console,
    file_kwargs,
    handle_errors,
    label_column_option,
    ordered_split_option,
    setup_logging,
    text_column_option,
    trust_remote_code_option,
)


def default_output(model: str) -> Path:
    """``<folder>/model.onnx`` for a model folder, ``<weights>.onnx`` beside a weights file, else
    ``./<name>.onnx`` for a built-in name or hub spec."""
    path = Path(model)
    if path.is_dir():
        return path / "model.onnx"
    if path.is_file():
        return path.with_suffix(".onnx")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") or "model"
    return Path(f"{name}.onnx")


@handle_errors
def export(
    model: str = typer.Argument(..., help="Model folder, weights file, built-in or hub name."),
    fmt: str = typer.Option("onnx", "--format", help="Output format (onnx)."),
    out: Path | None = typer.Option(
        None, "--out", help="File to write; default <model folder>/model.onnx or ./<name>.onnx."
    ),
    input_shape: str | None = typer.Option(
        None,
        "--input-shape",
        help="Shape of one raw example without the batch axis, e.g. 1,28,28; default the --data's "
        "shape, else the model's data or input shape. The batch axis is always dynamic.",
    ),
    data: str | None = typer.Option(
        None, "--data", help="Check on real examples of this dataset's test split (built-in name or path)."
    ),
    root: Path | None = typer.Option(None, "--root", help="Folder with the dataset's files."),
    text_column: str | None = text_column_option(),
    label_column: str | None = label_column_option(),
    ordered_split: bool = ordered_split_option(),
    samples: int = typer.Option(16, "--samples", min=1, help="Examples to check the file on."),
    atol: float = typer.Option(
        1e-4, "--atol", help="Largest absolute difference allowed between onnxruntime and PyTorch."
    ),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Run the file with onnxruntime and compare with PyTorch."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    as_json: bool = typer.Option(False, "--json", help="Print the export report as JSON."),
    trust_remote_code: bool = trust_remote_code_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Export a model to ONNX (input resizing and normalisation included) and check it with onnxruntime."""
    from transferkit.errors import ConfigError
    from transferkit.io.export import (
        check_atol,
        check_output_path,
        export_onnx,
        parse_input_shape,
        require_export_packages,
    )
    from transferkit.models import load_model

    setup_logging(verbose)
    if fmt.lower() != "onnx":
        raise ConfigError(f"--format must be onnx (the only format so far), got {fmt!r}")
    check_atol(atol)
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    target = out if out is not None else default_output(model)
    check_output_path(target, overwrite)
    require_export_packages(verify)
    net = load_model(model, trust_remote_code=trust_remote_code)
    examples = None
    if data is not None:
        from transferkit.data import load_dataset

        examples = load_dataset(data, root=root, **file_kwargs(text_column, label_column, ordered_split)).test
    report = export_onnx(
        net,
        target,
        input_shape=shape,
        inputs=examples,
        verify=verify,
        atol=atol,
        samples=samples,
        overwrite=overwrite,
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    if getattr(net, "tokenizer", None) is not None:
        from transferkit.io.export import tokenizer_folder

        inputs = (f"inputs input_ids and attention_mask (batch, sequence <= {report.input_shape[0]}); "
                  f"tokenizer files in {tokenizer_folder(report.path)}")
    else:
        inputs = f"input (batch, {', '.join(map(str, report.input_shape))})"
    console.print(
        f"exported {model} to {report.path} (ONNX opset {report.opset}, {inputs}, "
        f"{report.export_seconds:.1f} s)",
        soft_wrap=True,
    )
    if not report.verified:
        console.print("not checked with onnxruntime (--no-verify)")
        return
    agree = f"; predictions agree on {report.agree}/{report.checked}" if report.agree is not None else ""
    console.print(
        f"checked with onnxruntime on {report.checked} {report.inputs} inputs (batch sizes "
        f"{' and '.join(map(str, report.batch_sizes))}): max abs difference {report.max_abs_diff:.2e} "
        f"<= {report.atol:g}{agree}",
        soft_wrap=True,
    )
