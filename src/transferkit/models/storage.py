"""Save a model as a folder (``config.json`` + ``model.safetensors``) and load models from folders,
weights files, registered names and hub specs."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import transferkit
from transferkit.errors import CheckpointError, ConfigError, UnknownNameError
from transferkit.io import atomic_write_json, load_state_dict, read_json, save_state_dict
from transferkit.io.files import replace_folder
from transferkit.io.weights import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES
from transferkit.models.base import ModelInfo, TransferNet
from transferkit.models.custom import is_code_spec, normalise_spec, spec_of_class
from transferkit.models.hub import allow_remote_code, check_hub_options
from transferkit.models.surgery import replace_head
from transferkit.models.zoo import HUB_PREFIXES, MODELS, create_model

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "transferkit"
HF_FILES = "hf"
"""Subfolder of a saved text model: its tokenizer's files and, for an ``hf:`` encoder, the encoder's
transformers config, so the folder rebuilds without the model it came from (no weights there:
``model.safetensors`` holds them)."""


@dataclass(frozen=True)
class SourceSpec:
    """A source model as a user names it: where (``source``), its architecture (for a bare weights
    file; a user class allowed by :func:`~transferkit.models.allow_code`), whether to load a named
    model's pretrained weights, and, for a user class or where the files can't tell, its head and
    preprocessing (``input_size``, ``mean``, ``std``) and constructor arguments (``init``)."""

    source: str
    arch: str | None = None
    pretrained: bool = True
    head: str | None = None
    input_size: Sequence[int] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    init: Mapping[str, Any] = field(default_factory=dict)


def load_source(spec: SourceSpec, *, num_classes: int | None = None) -> TransferNet:
    """Load ``spec`` with :func:`load_model`: a user class gets its head, preprocessing and ``init``
    as builder arguments; any other model gets ``input_size`` / ``mean`` / ``std`` as overrides of
    the preprocessing its files recorded.

    Raises:
        As :func:`load_model`.
    """
    code = is_code_spec(spec.arch) or (spec.arch is None and is_code_spec(spec.source))
    given = _given_preprocessing(spec)
    kwargs: dict[str, Any] = {}
    if code:
        kwargs = {"init": dict(spec.init), "head": spec.head, **{k: list(v) for k, v in given.items()}}
    elif spec.head is not None or spec.init:
        raise ConfigError(
            "head and init are for a source built from your own class (--source-arch file.py:Class); "
            f"{spec.source!r} names its architecture itself"
        )
    model = load_model(spec.source, arch=spec.arch, num_classes=num_classes, pretrained=spec.pretrained,
                       **kwargs)
    if not code and given:
        info = model.info
        for key, value in given.items():
            setattr(info, key, tuple(value))
        model.input_adapter = info.adapter()
    return model


def _given_preprocessing(spec: SourceSpec) -> dict[str, Sequence[Any]]:
    return {k: v for k, v in (("input_size", spec.input_size), ("mean", spec.mean), ("std", spec.std))
            if v is not None}


def save_model(model: TransferNet, folder: str | os.PathLike) -> Path:
    """Save ``model`` to ``folder`` as ``model.safetensors`` then ``config.json`` (both atomic).

    The config is ``model.info.to_dict()`` plus ``{"format": "transferkit", "version": ...}``;
    writing it last means a folder with a config always has complete weights.

    Returns:
        The folder's path.

    Raises:
        CheckpointError: ``model`` is not a TransferNet or a state entry is not a tensor.
    """
    if not isinstance(model, TransferNet):
        raise CheckpointError(
            f"save_model takes a TransferNet, got {type(model).__name__}; wrap it with "
            "transferkit.models.wrap_model first, or save its state_dict with transferkit.io"
        )
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{str(folder)!r} is a file; save_model needs a folder path")
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(model.state_dict(), folder / WEIGHTS_NAME, metadata={"format": "pt"})
    _save_text_files(model, folder)
    config = {**model.info.to_dict(), "format": FORMAT, "version": transferkit.__version__}
    atomic_write_json(folder / CONFIG_NAME, config)
    logger.info("saved %s to %s", model.info.arch, folder)
    return folder


def _save_text_files(model: TransferNet, folder: Path) -> None:
    """A text model's tokenizer (and an ``hf:`` encoder's config) into ``folder/hf``, replaced as a
    whole; nothing for ``minilm``, whose files ship in a package."""
    text = model.info.text
    tokenizer = getattr(model, "tokenizer", None)
    if text is None or tokenizer is None or text.get("tokenizer") == "minilm":
        return

    def write(staging: str) -> None:
        tokenizer.save_pretrained(staging)
        if model.info.arch.startswith("hf:"):
            model.backbone.model.config.save_pretrained(staging)

    replace_folder(folder / HF_FILES, write)


def _from_saved_text_files(info: ModelInfo, folder: Path) -> tuple[str | type, dict[str, Any]]:
    """(architecture, arguments) that rebuild a saved text model from its ``hf`` subfolder; the
    recorded tokenizer becomes that copy."""
    files = folder / HF_FILES
    if info.text is None or not files.is_dir():
        return info.arch, info.kwargs
    copy = f"hf:{files}"
    info.text = {**info.text, "tokenizer": copy}
    if info.arch.startswith("hf:"):
        return copy, info.kwargs
    if "tokenizer" in info.kwargs:
        return info.arch, {**info.kwargs, "tokenizer": copy}
    return info.arch, info.kwargs


def load_model(
    source: str | os.PathLike,
    *,
    arch: str | type | None = None,
    num_classes: int | None = None,
    pretrained: bool = True,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> TransferNet:
    """Load a model from a saved folder, a weights file, or by name.

    Nothing read from the files runs code: weights are safetensors or ``torch.load(weights_only=True)``,
    weights holding NaN or inf are refused, and the saved architecture arguments may not turn on code
    execution or the loading of other files (see :data:`transferkit.models.hub.HUB_OPTIONS`).

    Args:
        source: (a) a folder written by :func:`save_model`; (b) a ``.safetensors`` / ``.pt`` /
            ``.pth`` file of weights (with ``arch=`` or a ``config.json`` beside it), keyed like a
            TransferNet (``backbone.*``, ``head.*``) or like the bare architecture; (c) a registered
            name or hub spec (``"efficientnet_lite0"``, ``"timm:resnet18"``).
        arch: Architecture of a weights file (overrides a ``config.json`` beside it): a registered
            name, a hub spec, or the user's own class (the class itself, or ``"file.py:Class"`` /
            ``"package.module:Class"`` inside :func:`~transferkit.models.allow_code`); with a user
            class, ``kwargs`` may hold ``init`` (constructor arguments), ``head`` (the classifier's
            dotted name), ``input_size``, ``mean`` and ``std``. Also rebuilds a saved folder of a
            wrapped module (``arch "custom"``) or of a user class.
        num_classes: Wanted head size; a loaded head of another size is replaced by a new one.
            For names, defaults to the pretrained head's size (1000) or 10.
        pretrained: For names only: load the architecture's pretrained weights where it has some.
        trust_remote_code: Let a transformers model (``hf:...``) run the Python code shipped with
            its files. Only for models you trust; the same as loading inside
            ``with transferkit.models.allow_remote_code():``. No config file can turn this on.
        **kwargs: Architecture arguments (override the saved ones). Never spread a config's
            ``kwargs`` here unchecked: ``trust_remote_code`` is an argument of its own.

    Raises:
        CheckpointError: the path is missing, the files are corrupt, hold pickled code or non-finite
            values, a saved config is malformed or asks for an option that is not allowed, or the
            keys or shapes do not fit the architecture.
        ConfigError: ``trust_remote_code`` is not a bool, or an argument is not allowed.
        UnknownNameError: ``source`` is neither a path nor a known model name.
    """
    if not isinstance(trust_remote_code, bool):
        raise ConfigError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    with allow_remote_code(True) if trust_remote_code else nullcontext():
        return _load(source, arch, num_classes, pretrained, kwargs)


def _load(
    source: str | os.PathLike,
    arch: str | type | None,
    num_classes: int | None,
    pretrained: bool,
    kwargs: dict[str, Any],
) -> TransferNet:
    path = Path(source)
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            model = _load_folder(path, arch, kwargs)
        elif (path / WEIGHTS_NAME).is_file():
            model = _load_weights(path / WEIGHTS_NAME, arch, kwargs)
        else:
            raise CheckpointError(
                f"folder {str(path)!r} holds neither {CONFIG_NAME} nor {WEIGHTS_NAME}; "
                "pass a folder written by transferkit.models.save_model or a weights file"
            )
    elif path.is_file():
        model = _load_weights(path, arch, kwargs)
    else:
        return _load_by_name(str(source), num_classes, pretrained, kwargs)
    if num_classes is not None and num_classes != model.info.num_classes:
        logger.info(
            "replacing the %d-class head by a new %d-class head",
            model.info.num_classes,
            num_classes,
        )
        replace_head(model, num_classes)
    return model


def _is_hub_spec(name: str) -> bool:
    prefix, sep, rest = name.partition(":")
    return bool(sep) and prefix.lower() in HUB_PREFIXES


def _load_by_name(
    name: str, num_classes: int | None, pretrained: bool, kwargs: dict[str, Any]
) -> TransferNet:
    # what a name builds new (a pretrained model's new head, an architecture without weights) is drawn from
    # a fixed seed: one name loads to the same weights every time (a run's record of its source matches
    # on --resume), and the caller's random stream is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _build_by_name(name, num_classes, pretrained, kwargs)


def _build_by_name(
    name: str, num_classes: int | None, pretrained: bool, kwargs: dict[str, Any]
) -> TransferNet:
    if _names_code(name):  # a user class without weights: fresh, like a registered name
        return create_model(name, num_classes=num_classes or 10, **kwargs)
    if _is_hub_spec(name) or name in MODELS:
        native = 1000 if _is_hub_spec(name) else MODELS.get(name).pretrained_classes
        use_pretrained = pretrained and native is not None
        n = num_classes if num_classes is not None else (native if use_pretrained and native else 10)
        return create_model(name, num_classes=n, pretrained=use_pretrained, **kwargs)
    path = Path(name)
    looks_like_path = path.suffix.lower() in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES or any(
        sep in name for sep in ("/", os.sep)
    )
    if looks_like_path:
        siblings = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
        close = difflib.get_close_matches(path.name, siblings, n=3, cutoff=0.5)
        hint = (
            f" Did you mean {', '.join(repr(str(path.parent / c)) for c in close)}?"
            if close
            else ""
        )
        raise CheckpointError(f"model path {name!r} does not exist.{hint} Check the path")
    try:
        MODELS.get(name)  # raises: the name is not registered
    except UnknownNameError as exc:
        raise UnknownNameError(f"{exc} (and no file or folder {name!r} exists)") from None
    return create_model(name, num_classes=num_classes or 10, pretrained=False, **kwargs)


def _check_saved_options(info: ModelInfo, origin: str) -> None:
    """Refuse saved architecture arguments that a hub model does not take (``trust_remote_code``,
    ``checkpoint_path``, ...), naming the file, before anything is imported or built."""
    prefix, sep, rest = info.arch.partition(":")
    if sep and prefix.lower() in HUB_PREFIXES and rest:
        try:
            check_hub_options(prefix.lower(), rest, info.kwargs)
        except ConfigError as exc:
            raise CheckpointError(
                f"{origin} is refused (a file may hold architecture options only: remove the "
                f"others from it): {exc}"
            ) from None
    elif "trust_remote_code" in info.kwargs:
        raise CheckpointError(
            f"{origin} is refused: its kwargs hold 'trust_remote_code', which no file may set; "
            "remove it from the file"
        )


def _load_folder(folder: Path, arch: str | type | None, kwargs: dict[str, Any]) -> TransferNet:
    config = read_json(folder / CONFIG_NAME)
    if not isinstance(config, Mapping) or config.get("format") != FORMAT or "arch" not in config:
        raise CheckpointError(
            f"{str(folder / CONFIG_NAME)!r} is not a transferkit model config (no "
            f'"format": "{FORMAT}" / "arch"); save the model with transferkit.models.save_model'
        )
    if config.get("version") != transferkit.__version__:
        logger.info(
            "model saved by transferkit %s, loading with %s",
            config.get("version"),
            transferkit.__version__,
        )
    origin = f"model config {str(folder / CONFIG_NAME)!r}"
    info = ModelInfo.from_dict(config, origin=origin)
    _check_saved_options(info, origin)
    build_arch: str | type = info.arch
    if _names_code(arch) and (info.arch == "custom" or is_code_spec(info.arch)):
        # a wrapped module or a user class: the class named now (perhaps moved since) builds it
        if info.arch == "custom":
            info.kwargs = _code_kwargs(info)
        build_arch = normalise_spec(arch) if isinstance(arch, str) else arch
        info.arch = build_arch if isinstance(build_arch, str) else spec_of_class(build_arch)
    overridden = bool(kwargs)
    info.kwargs = {**info.kwargs, **kwargs}
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(
            f"{str(folder)!r} has {CONFIG_NAME} but no {WEIGHTS_NAME}; the save did not finish: "
            "save the model again"
        )
    state = load_state_dict(weights)
    if build_arch == info.arch:
        build_arch, build_kwargs = _from_saved_text_files(info, folder)
    else:
        build_kwargs = info.kwargs
    model = _build(build_arch, info.num_classes, build_kwargs, info.growth)
    tasks = info.tasks
    info.source = str(folder)
    if not overridden:  # keep the saved metadata (it may have been edited after building)
        model.info = info
        model.input_adapter = info.adapter()
    else:
        model.info.source, model.info.arch, model.info.text = info.source, info.arch, info.text
    if tasks:  # a multi-head model: one head per task, the first active
        from transferkit.models.heads import set_task_heads

        set_task_heads(model, tasks)
    _load_strict(model, state, weights)
    return model


def _names_code(arch: Any) -> bool:
    return isinstance(arch, type) or is_code_spec(arch)


def _build(
    arch: str | type, num_classes: int, kwargs: dict[str, Any], growth: list[dict[str, Any]] | None = None
) -> TransferNet:
    if arch == "custom":
        raise CheckpointError(
            "this checkpoint is of a wrapped module (arch 'custom'), whose class transferkit can't "
            "know: name it: load_model(path, arch=TheClass) in Python, --source-arch "
            "file.py:TheClass on the command line (or wrap_model(..., init={...}) before saving)"
        )
    model = create_model(arch, num_classes=num_classes, pretrained=False, **kwargs)
    if growth:
        from transferkit.transfer.structure import apply_growth  # lazy: transfer imports models

        try:
            model = apply_growth(model, growth)
        except ConfigError as exc:
            raise CheckpointError(f"cannot rebuild the grown {arch!r}: {exc}") from exc
        model.__dict__.pop("growth_report", None)
    return model


def _load_weights(path: Path, arch: str | type | None, kwargs: dict[str, Any]) -> TransferNet:
    saved: ModelInfo | None = None
    beside = path.parent / CONFIG_NAME
    if beside.is_file():
        config = read_json(beside)
        if isinstance(config, Mapping) and "arch" in config:
            origin = f"model config {str(beside)!r}"
            saved = ModelInfo.from_dict(config, origin=origin)
            _check_saved_options(saved, origin)
    if arch is None and saved is None:
        raise CheckpointError(
            f"cannot tell the architecture of {str(path)!r}: name it with --source-arch (arch= in "
            f"Python): one of {', '.join(MODELS.names())}, a hub spec (timm:resnet50) or your own "
            f"class (path/to/file.py:ClassName), or put its {CONFIG_NAME} beside it; "
            f"`transferkit inspect {path}` lists its tensors"
        )
    if arch is None and saved is not None:
        arch = saved.arch
    same = saved is not None and saved.arch == arch
    kwargs = {**(saved.kwargs if same else {}), **kwargs}
    growth = saved.growth if same else []
    state = load_state_dict(path)
    if _names_code(arch):
        code = normalise_spec(arch) if isinstance(arch, str) else arch
        return _load_code_weights(path, code, state, kwargs)
    prefixed = any(k.startswith(("backbone.", "head.")) for k in state)
    if prefixed:
        head_w = state.get("head.weight")
        n = (
            int(head_w.shape[0])
            if head_w is not None and head_w.ndim == 2
            else (saved.num_classes if saved is not None and saved.num_classes else 10)
        )
        model = _build(arch, n, kwargs, growth)
    else:
        mats = [v for v in state.values() if v.ndim == 2 and v.is_floating_point()]
        n = int(mats[-1].shape[0]) if mats else 10
        model = _build(arch, n, kwargs, growth)
        state = _map_bare_keys(model, state)
    model.info.source = str(path)
    _load_strict(model, state, path)
    return model


def _code_kwargs(info: ModelInfo) -> dict[str, Any]:
    """Builder arguments of a user class from a saved wrapped model's fields."""
    return {
        "init": dict(info.kwargs.get("init") or {}),
        "head": info.classifier,
        "input_size": list(info.input_size),
        "mean": list(info.mean) if info.mean is not None else None,
        "std": list(info.std) if info.std is not None else None,
    }


def _load_code_weights(
    path: Path, arch: str | type, state: dict[str, torch.Tensor], kwargs: dict[str, Any]
) -> TransferNet:
    """A user class's state dict (bare, as the class saves it, or ``backbone.*``/``head.*``): the
    head size is read from the classifier's weight, then the class is built and the weights load."""
    model = create_model(arch, num_classes=1, pretrained=False, **kwargs)
    head = model.info.classifier
    weight = state.get(f"{head}.weight") if head else None
    weight = state.get("head.weight") if weight is None else weight
    if weight is not None and weight.ndim == 2 and weight.shape[0] != 1:
        model = create_model(arch, num_classes=int(weight.shape[0]), pretrained=False, **kwargs)
    if not any(k.startswith(("backbone.", "head.")) for k in state):
        state = _map_bare_keys(model, state)
    model.info.source = str(path)
    _load_strict(model, state, path)
    return model


def _map_bare_keys(model: TransferNet, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a bare architecture's keys onto ``backbone.*`` / ``head.*``: by the architecture's key
    table, by its classifier's name (``fc.weight`` -> ``head.weight``) and prefixing, or (same count
    and shapes, in order) by position. Unmappable states are returned as they are, for
    :func:`_load_strict` to report."""
    ours = model.state_dict()
    bare_keys = MODELS.get(model.info.arch).bare_keys if model.info.arch in MODELS else None
    if bare_keys is not None:
        table = bare_keys(model)
        if all(k in table for k in state):
            return {table[k]: v for k, v in state.items()}
    classifier = f"{model.info.classifier}." if model.info.classifier else None
    prefixed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if classifier and key.startswith(classifier) and "head." + key[len(classifier) :] in ours:
            prefixed["head." + key[len(classifier) :]] = value
            continue
        for prefix in ("backbone.", "head."):
            if prefix + key in ours:
                prefixed[prefix + key] = value
                break
    if len(prefixed) == len(state):
        return prefixed
    if len(state) == len(ours) and all(
        a.shape == b.shape for a, b in zip(state.values(), ours.values(), strict=True)
    ):
        logger.info("mapped %d checkpoint tensors onto the model by position and shape", len(state))
        return dict(zip(ours, state.values(), strict=True))
    return state


def _load_strict(model: TransferNet, state: Mapping[str, torch.Tensor], origin: Path) -> None:
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in ours.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes (e.g. {'; '.join(wrong[:3])})")
        raise CheckpointError(
            f"weights in {str(origin)!r} do not fit {model.info.arch!r}: {', '.join(parts)}. "
            "Check arch= and its arguments; to move weights between models that differ use "
            "transferkit.transfer.transfer_parameters"
        )
    model.load_state_dict(state, strict=True)
