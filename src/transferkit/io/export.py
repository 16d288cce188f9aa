"""Export a model to ONNX and check the file with onnxruntime.

:func:`export_onnx` exports the *whole* model, input adapter included, so the ONNX file takes what
``model(x)`` takes: raw ``[0, 1]`` inputs ``(batch, *input_shape)`` at the data's native size (it
resizes, converts gray<->RGB and normalises inside) and returns the logits ``(batch, num_classes)``.
The batch axis is dynamic (named ``batch``); the per-example shape is fixed at export time.

The exporter is torch's ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``), not the
legacy TorchScript one, because the legacy exporter fails on transferkit's own models once the batch
axis is dynamic: it cannot export ``adaptive_avg_pool2d`` on inputs of unknown size (``small_cnn``)
nor the antialiased bilinear resize the input adapter uses when it shrinks images
(``aten::_upsample_bilinear2d_aa``), while the dynamo exporter handles both (ONNX ``Resize`` with
``antialias``, opset >= 18) and matches PyTorch to about 1e-8 (small_cnn) and 1e-5
(efficientnet_lite0). Weights are stored inside the one ``.onnx`` file (no external-data files), so
the file can be written atomically; this limits a model to ONNX's 2 GiB protobuf size.

A text model's file takes what its tokenizer gives, ``input_ids`` and ``attention_mask`` (int64,
``(batch, sequence)``, both axes dynamic, sequence up to the model's ``max_length``), and returns the
logits; the tokenizer's files are written beside it (``<stem>.tokenizer/``), so the two together run
with onnxruntime and transformers' ``AutoTokenizer`` alone.

The file is first written to a temporary file beside the target; onnxruntime then runs it on a batch
of inputs (and on a batch of one, which exercises the dynamic axis) and its outputs are compared with
PyTorch's. Only a file that passes is renamed onto the target: a failed export or check leaves the
target as it was.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import transferkit
from transferkit.errors import ConfigError, ExportError, MissingDependencyError, ShapeError, TransferkitError
from transferkit.io.files import atomic_write, replace_folder

if TYPE_CHECKING:
    from transferkit.data import TensorDataset, TextDataset

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ATOL",
    "EXPORT_HINT",
    "ExportError",
    "ExportReport",
    "export_onnx",
    "parse_input_shape",
    "require_export_packages",
    "tokenizer_folder",
]

EXPORT_HINT = "pip install 'transferkit[export]'"
DEFAULT_ATOL = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"




@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how the check went.

    Attributes:
        path: The ONNX file.
        input_shape: Shape of one example; the file's input is ``(batch, *input_shape)``.
        opset: ONNX opset of the file.
        export_seconds: Time the exporter took (tracing, translation, optimisation).
        verified: Whether onnxruntime ran the file and its outputs were compared with PyTorch's.
        max_abs_diff: Largest absolute difference between onnxruntime's and PyTorch's outputs over
            every batch checked (``None`` when not verified).
        atol: The tolerance ``max_abs_diff`` was held to.
        checked: Number of examples compared.
        batch_sizes: Batch sizes the file was run with.
        agree: Examples whose predicted class (argmax) is the same in both (``None`` when not
            verified or the output is not ``(N, classes)``).
        inputs: What was compared: ``"random"`` or the name of the data given.
    """

    path: Path
    input_shape: tuple[int, ...]
    opset: int
    export_seconds: float
    verified: bool
    max_abs_diff: float | None
    atol: float
    checked: int
    batch_sizes: tuple[int, ...]
    agree: int | None
    inputs: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["input_shape"] = list(self.input_shape)
        d["batch_sizes"] = list(self.batch_sizes)
        return d


def require_export_packages(verify: bool = True) -> None:
    """Check that ONNX export (``onnx``, ``onnxscript``) and, with ``verify``, ``onnxruntime`` are
    importable.

    Raises:
        MissingDependencyError: a package is missing; the message names the extra to install.
    """
    names = ["onnx", "onnxscript"] + (["onnxruntime"] if verify else [])
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(
            f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed; run `{EXPORT_HINT}`"
        )


def parse_input_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,28,28"`` (or ``(1, 28, 28)``) -> ``(1, 28, 28)``: the shape of one example, no batch axis.

    Raises:
        ConfigError: not 1 to 4 positive integers.
    """
    what = (
        "the shape of one example without the batch axis: 1 to 4 positive integers separated by "
        "commas, e.g. 1,28,28 (channels, height, width) or 64 (a vector)"
    )
    if isinstance(text, str):
        parts = [p.strip() for p in text.replace("x", ",").split(",")]
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"input shape {text!r} is not {what}") from None
    else:
        shape = tuple(text)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
            raise ConfigError(f"input shape {text!r} is not {what}")
    if not 1 <= len(shape) <= 4 or any(s < 1 for s in shape):
        raise ConfigError(f"input shape {text!r} is not {what}")
    return shape


def default_input_shape(model: nn.Module) -> tuple[int, ...]:
    """A TransferNet's raw-data shape (``info.data_shape``) or else its backbone's input
    (``info.input_size``)."""
    info = getattr(model, "info", None)
    shape = getattr(info, "data_shape", None) or getattr(info, "input_size", None)
    if not shape:
        raise ConfigError(
            f"cannot tell the input shape of a {type(model).__name__}; pass input_shape= "
            "(--input-shape), e.g. 1,28,28"
        )
    return tuple(int(s) for s in shape)


def export_onnx(
    model: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    input_shape: str | Sequence[int] | None = None,
    inputs: torch.Tensor | TensorDataset | TextDataset | None = None,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    samples: int = 16,
    overwrite: bool = False,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` (input adapter included) to an ONNX file with a dynamic batch axis.

    Args:
        model: A :class:`~transferkit.models.TransferNet` (or any module taking one tensor), or
            anything :func:`transferkit.models.load_model` accepts (a saved folder, a name).
        path: The ``.onnx`` file to write.
        input_shape: Shape of one example (no batch axis), e.g. ``(1, 28, 28)`` or ``"1,28,28"``.
            Defaults to the shape of ``inputs``, else the model's ``info.data_shape`` or
            ``info.input_size``.
        inputs: Real examples to check the file on, ``(N, *input_shape)`` in ``[0, 1]`` (a tensor or
            a :class:`~transferkit.data.TensorDataset`; texts, a :class:`~transferkit.data.TextDataset`,
            for a text model); the first ``samples`` are used. Without
            them, ``samples`` uniform random inputs in ``[0, 1]`` (seeded by ``seed``) are used.
        verify: Run the file with onnxruntime and compare with PyTorch before keeping it.
        atol: Largest absolute difference allowed between the two.
        samples: Number of examples to check (in one batch, then the first alone).
        overwrite: Replace an existing ``path``.
        seed: Seed of the random example inputs.

    Returns:
        An :class:`ExportReport` (path, shapes, timings and the largest difference found).

    Raises:
        ConfigError: ``path`` exists (without ``overwrite``) or is a folder; a bad ``input_shape``,
            ``atol`` or ``samples``.
        ShapeError: the model cannot take inputs of ``input_shape``, or ``inputs`` have another shape.
        MissingDependencyError: onnx / onnxscript (or, with ``verify``, onnxruntime) is missing.
        ExportError: the exporter failed, or onnxruntime's outputs differ from PyTorch's by more
            than ``atol``; ``path`` is then left as it was.
    """
    path = Path(path)
    atol = check_atol(atol)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples must be an integer >= 1, got {samples!r}")
    check_output_path(path, overwrite)
    require_export_packages(verify)
    if isinstance(model, (str, os.PathLike)):
        from transferkit.models import load_model  # lazy: transferkit.models imports transferkit.io

        model = load_model(model)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"export_onnx takes a torch module or a model path or name, got {type(model).__name__}"
        )
    if getattr(model, "tokenizer", None) is not None:
        if input_shape is not None:
            raise ConfigError(
                "a text model's ONNX file takes token ids of any length up to its max_length; leave out "
                "--input-shape (input_shape)"
            )
        return _export_text(model, path, inputs=inputs, verify=verify, atol=atol, samples=samples,
                            overwrite=overwrite, seed=seed)

    data_name = "random"
    if inputs is not None:
        data_name = getattr(inputs, "name", "") or "inputs"
        inputs = getattr(inputs, "x", inputs)
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2 or len(inputs) == 0:
            raise ShapeError(
                "inputs must be a non-empty tensor (N, *input_shape) or a TensorDataset, got "
                f"{type(inputs).__name__} {tuple(getattr(inputs, 'shape', ()))}"
            )
    if input_shape is not None:
        shape = parse_input_shape(input_shape)
    elif inputs is not None:
        shape = tuple(int(s) for s in inputs.shape[1:])
    else:
        shape = default_input_shape(model)
    if inputs is not None:
        if tuple(inputs.shape[1:]) != shape:
            raise ShapeError(
                f"the input shape {_fmt(shape)} differs from the shape of the data's examples "
                f"{_fmt(tuple(inputs.shape[1:]))}; export at the data's shape (leave out --input-shape / "
                "input_shape) or check with data of that shape"
            )
        check_x = inputs[:samples].detach().to("cpu", torch.float32).contiguous()
    else:
        gen = torch.Generator().manual_seed(seed)
        check_x = torch.rand(samples, *shape, generator=gen)

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    # batch 2, not 1: torch.export specialises an axis of size 1, which would fix the batch at 1
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    modes = [(m, m.training) for m in model.modules()]  # restored one by one (frozen BN stays eval)
    model.eval()
    try:
        _try_forward(model, example, shape)
        program, seconds = _export(model, example)
        opset = int(program.model.opset_imports.get("", 0))
        _add_metadata(program, model, shape)
        result: dict[str, Any] = {}

        def write(tmp: str) -> None:
            program.save(tmp, external_data=False)
            if verify:
                result.update(_verify(tmp, model, check_x, device, atol, data_name))
            if not overwrite:
                check_output_path(path, overwrite)  # a file created there meanwhile is kept

        atomic_write(path, write)
    finally:
        for module, training in modes:
            module.training = training
    report = ExportReport(
        path=path,
        input_shape=shape,
        opset=opset,
        export_seconds=seconds,
        verified=verify,
        max_abs_diff=result.get("max_abs_diff"),
        atol=atol,
        checked=result.get("checked", 0),
        batch_sizes=result.get("batch_sizes", ()),
        agree=result.get("agree"),
        inputs=data_name if verify else "",
    )
    logger.info("exported to %s in %.1f s (max abs difference %s)", path, seconds, report.max_abs_diff)
    return report


class _TokenLogits(nn.Module):
    """A text model as ``(input_ids, attention_mask) -> logits``: what its ONNX file takes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model({"input_ids": input_ids, "attention_mask": attention_mask})


def tokenizer_folder(path: Path) -> Path:
    """Where :func:`export_onnx` writes a text model's tokenizer: ``<file stem>.tokenizer`` beside it."""
    return path.with_name(f"{path.stem}.tokenizer")


def _export_text(
    model: nn.Module, path: Path, *, inputs: Any, verify: bool, atol: float, samples: int, overwrite: bool,
    seed: int,
) -> ExportReport:
    """A text model's ONNX file: inputs ``input_ids`` and ``attention_mask`` (int64, ``(batch,
    sequence)``, both axes dynamic, sequence up to the model's ``max_length``), output the logits; its
    tokenizer's files in :func:`tokenizer_folder`. Checked on the given texts or on random token ids."""
    from transferkit.data import TextDataset
    from transferkit.data.tokens import PAD, TokenDataset, model_inputs

    info = model.info  # type: ignore[union-attr]
    length = int(info.input_size[0])
    tokenizer = model.tokenizer  # type: ignore[union-attr]
    folder = tokenizer_folder(path)
    if folder.exists() and not overwrite:
        raise ConfigError(f"{str(folder)!r} already exists; pass --overwrite (overwrite=True) to replace it")
    if inputs is not None:
        if not isinstance(inputs, (TextDataset, TokenDataset)):
            raise ShapeError(
                f"a text model is checked on texts (a TextDataset such as a text file's test split), got "
                f"{type(inputs).__name__}"
            )
        data_name = inputs.name or "texts"
        n = min(samples, len(inputs))
        ids = model_inputs(inputs, model).x[:n]
    else:
        data_name = "random token-id"
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, len(tokenizer), (samples, length), generator=gen)
        lengths = torch.randint(1, length + 1, (samples,), generator=gen)
        ids[torch.arange(length)[None, :] >= lengths[:, None]] = PAD
    adapter = model.input_adapter  # type: ignore[union-attr]
    wrapper = _TokenLogits(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed + 1)
    # batch 2 and 3 tokens: torch.export specialises axes of size 1 and ties axes of equal size
    example = (torch.randint(0, len(tokenizer), (2, 3), generator=gen).to(device),
               torch.ones(2, 3, dtype=torch.long, device=device))
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    sequence = torch.export.Dim("sequence", min=1, max=length)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        program, seconds = _export(wrapper, example, ("input_ids", "attention_mask"),
                                   ({0: batch, 1: sequence}, {0: batch, 1: sequence}))
        opset = int(program.model.opset_imports.get("", 0))
        _add_metadata(program, model, (length,))
        program.model.metadata_props["transferkit.input"] = (
            f"input_ids and attention_mask, int64 ({BATCH_AXIS}, sequence), sequence <= {length}, from the "
            f"tokenizer in {folder.name}/ ({info.text['tokenizer']}); output: logits ({BATCH_AXIS}, classes)"
        )
        result: dict[str, Any] = {}

        def write(tmp: str) -> None:
            program.save(tmp, external_data=False)
            if verify:
                batches = [ids, ids[:1]] if len(ids) > 1 else [ids]
                feeds = [({k: v.numpy() for k, v in adapter(b).items()}, b) for b in batches]
                result.update(_compare(tmp, feeds, lambda b: model(b.to(device)), atol,
                                       f"{len(ids)} {data_name} inputs"))
            if not overwrite:
                check_output_path(path, overwrite)
            replace_folder(folder, lambda staging: tokenizer.save_pretrained(staging))

        atomic_write(path, write)
    finally:
        for module, training in modes:
            module.training = training
    return ExportReport(
        path=path, input_shape=(length,), opset=opset, export_seconds=seconds, verified=verify,
        max_abs_diff=result.get("max_abs_diff"), atol=atol, checked=result.get("checked", 0),
        batch_sizes=result.get("batch_sizes", ()), agree=result.get("agree"),
        inputs=data_name if verify else "",
    )


def check_output_path(path: Path, overwrite: bool) -> None:
    """Refuse a folder, or an existing file unless ``overwrite``.

    Raises:
        ConfigError: ``path`` is a folder, or exists and ``overwrite`` is false.
    """
    if path.is_dir():
        raise ConfigError(
            f"output {str(path)!r} is a folder; give a file path such as {str(path / 'model.onnx')!r}"
        )
    if path.exists() and not overwrite:
        raise ConfigError(
            f"output {str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it, "
            "or choose another path"
        )


def check_atol(atol: Any) -> float:
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) or atol < 0:
        raise ConfigError(f"atol must be a finite number >= 0, got {atol!r}")
    return float(atol)


def _fmt(shape: Sequence[int]) -> str:
    return ",".join(str(s) for s in shape)


def _try_forward(model: nn.Module, example: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Run the model once in PyTorch, so a wrong input shape is reported before exporting."""
    try:
        with torch.no_grad():
            model(example)
    except TransferkitError:
        raise
    except Exception as exc:
        raise ShapeError(
            f"the model cannot take inputs of shape (batch, {_fmt(shape)}) ({type(exc).__name__}: "
            f"{_first_line(exc)}); give the shape of one example of its data, e.g. 1,28,28"
        ) from exc


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = _ANSI.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of ``exc``'s ``__cause__`` chain (what actually went wrong)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _export(
    model: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    input_names: Sequence[str] = (INPUT_NAME,),
    dynamic_shapes: tuple[dict[int, Any], ...] | None = None,
) -> tuple[Any, float]:
    """``torch.onnx.export`` (dynamo) to an in-memory ONNXProgram; returns it and the seconds taken.
    One input with a dynamic batch axis unless ``input_names`` and ``dynamic_shapes`` say otherwise.

    What the exporter prints (progress, and graph dumps on failure) is captured and logged at DEBUG
    level, so a failure reaches the user as one error naming its cause.
    """
    start = time.perf_counter()
    args = example if isinstance(example, tuple) else (example,)
    if dynamic_shapes is None:
        dynamic_shapes = ({0: torch.export.Dim(BATCH_AXIS, min=1)},)
    captured = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(captured),
            contextlib.redirect_stderr(captured),
        ):
            warnings.simplefilter("ignore")  # the exporter's deprecation/trace notes are noise here
            program = torch.onnx.export(
                model,
                args,
                None,
                dynamo=True,
                verbose=False,
                input_names=list(input_names),
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                optimize=True,
            )
    except TransferkitError:
        raise
    except Exception as exc:
        cause = _root_cause(exc)
        why = f"{type(exc).__name__}: {_first_line(exc)}"
        if cause is not exc:
            why = f"{type(exc).__name__}, caused by {type(cause).__name__}: {_first_line(cause)}"
        raise ExportError(
            f"torch.onnx could not export the model ({why}); its code may branch on tensor values, "
            "fix the batch size or use an operation with no ONNX equivalent"
        ) from exc
    finally:
        if captured.getvalue():
            logger.debug("torch.onnx output:\n%s", captured.getvalue())
    if program is None:  # pragma: no cover - dynamo=True always returns the program
        raise ExportError("torch.onnx.export returned no program; upgrade torch")
    return program, time.perf_counter() - start


def _add_metadata(program: Any, model: nn.Module, shape: tuple[int, ...]) -> None:
    props = program.model.metadata_props
    props["transferkit.version"] = transferkit.__version__
    props["transferkit.input"] = (
        f"raw [0, 1] inputs ({BATCH_AXIS}, {_fmt(shape)}); resizing and normalisation are inside"
    )
    info = getattr(model, "info", None)
    if info is not None:
        props["transferkit.arch"] = str(info.arch)
        props["transferkit.num_classes"] = str(info.num_classes)
        props["transferkit.source"] = str(info.source)


def _outputs(value: Any) -> list[np.ndarray]:
    if isinstance(value, torch.Tensor):
        return [value.detach().float().cpu().numpy()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
        return [v.detach().float().cpu().numpy() for v in value]
    raise ExportError(
        f"cannot compare the model's output of type {type(value).__name__} with the ONNX file's; "
        "export with verification off (--no-verify, verify=False)"
    )


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    diff[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0  # equal infinities and NaNs in the same places
    diff = np.nan_to_num(diff, nan=np.inf)
    return float(diff.max()) if diff.size else 0.0


def _verify(
    file: str, model: nn.Module, x: torch.Tensor, device: torch.device, atol: float, data_name: str
) -> dict[str, Any]:
    """Run ``file`` with onnxruntime on ``x`` and on ``x[:1]``; compare with the model."""
    batches = [x, x[:1]] if len(x) > 1 else [x]
    return _compare(file, [({INPUT_NAME: xb.numpy()}, xb) for xb in batches],
                    lambda xb: model(xb.to(device)), atol, f"{len(x)} {data_name} inputs")


def _compare(
    file: str, batches: list[tuple[dict[str, np.ndarray], Any]], run_model: Any, atol: float, what: str
) -> dict[str, Any]:
    """Run ``file`` with onnxruntime on each batch's feeds and the model on its own input; the
    largest difference, held to ``atol``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initializers on stderr
    try:
        session = ort.InferenceSession(file, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(
            f"onnxruntime cannot load the exported file ({type(exc).__name__}: {_first_line(exc)}); "
            "the file was not written"
        ) from exc
    worst = 0.0
    agree: int | None = None
    sizes = []
    for i, (feeds, xb) in enumerate(batches):
        size = len(next(iter(feeds.values())))
        sizes.append(size)
        try:
            got = session.run(None, feeds)
        except Exception as exc:
            raise ExportError(
                f"onnxruntime failed on a batch of {size} ({type(exc).__name__}: {_first_line(exc)}); "
                "the file was not written"
            ) from exc
        with torch.no_grad():
            want = _outputs(run_model(xb))
        if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want, strict=False)):
            raise ExportError(
                f"the ONNX file's outputs {[g.shape for g in got]} differ in shape from PyTorch's "
                f"{[w.shape for w in want]} on a batch of {size}; the file was not written"
            )
        worst = max(worst, *(_max_diff(g, w) for g, w in zip(got, want, strict=True)))
        if i == 0 and want[0].ndim == 2:
            agree = int((got[0].argmax(1) == want[0].argmax(1)).sum())
    if not worst <= atol:
        raise ExportError(
            f"the ONNX file's outputs differ from PyTorch's by up to {worst:.3g} on {what}, above the "
            f"tolerance {atol:g}; the file was not written: raise the tolerance "
            "(--atol) if that is acceptable, or export without the check (--no-verify)"
        )
    return {"max_abs_diff": worst, "checked": sizes[0], "batch_sizes": tuple(sizes), "agree": agree}
