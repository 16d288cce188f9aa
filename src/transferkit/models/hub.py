"""Models from other libraries, imported lazily: ``timm:<name>``, ``torchvision:<name>``,
``hf:<model id or path>``.

Each becomes a :class:`TransferNet` whose backbone returns pooled features ``(N, feature_dim)`` and
whose head is ``nn.Linear(feature_dim, num_classes)``; with pretrained weights and a matching
``num_classes`` the library's own classifier is kept as the head. ``info.arch`` is the full spec, so
a saved folder is rebuilt (without downloading) by :func:`transferkit.models.load_model`.

Nothing read from a file runs code. A model's options (``model.info.kwargs``, a YAML ``model.kwargs``,
the keyword arguments of :func:`~transferkit.models.create_model`) may come from a file, so each hub
takes only an allow-list of architecture options (:data:`HUB_OPTIONS`); options that load other files,
unpickle or run code (``trust_remote_code``, timm's ``checkpoint_path``, ...) are refused. Python code
shipped with a transformers model runs only inside :func:`allow_remote_code` (the CLI's
``--trust-remote-code``; ``load_model(..., trust_remote_code=True)``), and every transformers loader
is told ``trust_remote_code`` explicitly. A local folder is loaded with ``local_files_only=True``.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from transferkit.errors import CheckpointError, ConfigError, MissingDependencyError
from transferkit.models.base import ModelInfo, TransferNet
from transferkit.models.text import is_text_config
from transferkit.registry import Registry

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EXTRA = {"timm": "vision", "torchvision": "vision", "transformers": "text"}

_REMOTE_CODE: ContextVar[bool] = ContextVar("transferkit_allow_remote_code", default=False)
ALLOW_HINT = (
    "allow it only for a model you trust, explicitly: load_model(..., trust_remote_code=True), "
    "`with transferkit.models.allow_remote_code():` or the CLI flag --trust-remote-code"
)


@contextmanager
def allow_remote_code(allow: bool = True) -> Iterator[None]:
    """Let transformers models built inside the block run the Python code shipped with their files.

    Off by default: a model folder whose config asks for its own code (an ``auto_map``) is refused,
    or built from transformers' own classes where it has them. Only this context manager (which the
    CLI's ``--trust-remote-code`` wraps a command in) and ``load_model(..., trust_remote_code=True)``
    turn it on; no config file can. The setting is a context variable: it holds in this thread (or
    asyncio task) until the block ends.

    Example:
        >>> with allow_remote_code():  # doctest: +SKIP
        ...     model = load_model("hf:./my-custom-vit")

    Raises:
        ConfigError: ``allow`` is not a bool.
    """
    if not isinstance(allow, bool):
        raise ConfigError(f"allow_remote_code takes True or False, got {allow!r}")
    token = _REMOTE_CODE.set(allow)
    try:
        yield
    finally:
        _REMOTE_CODE.reset(token)


def remote_code_allowed() -> bool:
    """Whether the caller is inside :func:`allow_remote_code` (``--trust-remote-code``)."""
    return _REMOTE_CODE.get()


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRA.get(module, "vision")
        raise MissingDependencyError(
            f"models from {module!r} need the package {module!r}, which is not installed; "
            f"run `pip install 'transferkit[{extra}]'`"
        ) from exc


def _rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _size(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) == 2 and all(_positive_int(v) for v in value)
    return _positive_int(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200


_RATE = (_rate, "a number in [0, 1)")
_INT = (_positive_int, "a positive integer")
_SIZE = (_size, "a positive integer or [height, width]")
_TEXT = (_text, "a short string")

# The options each hub's builder takes from a model spec's kwargs: architecture arguments only. They
# may come from a file (a saved config.json, a YAML config), so nothing here loads files or runs code.
HUB_OPTIONS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "timm": {
        "drop_rate": _RATE,
        "drop_path_rate": _RATE,
        "drop_block_rate": _RATE,
        "attn_drop_rate": _RATE,
        "proj_drop_rate": _RATE,
        "in_chans": _INT,
        "img_size": _SIZE,
        "image_size": _INT,
        "global_pool": _TEXT,
    },
    "torchvision": {
        "image_size": _INT,
        "dropout": _RATE,
        "attention_dropout": _RATE,
        "stochastic_depth_prob": _RATE,
    },
    "hf": {
        "image_size": _INT,
        "revision": _TEXT,
        "hidden_dropout_prob": _RATE,
        "attention_probs_dropout_prob": _RATE,
        "drop_path_rate": _RATE,
        "pooling": (lambda v: v in ("mean", "cls"), "'mean' or 'cls' (text models)"),
        "max_length": (lambda v: _positive_int(v) and v >= 2, "an integer >= 2 (text models: tokens kept)"),
    },
}

# Why some options are refused, for the error message.
_REFUSED_WHY = {
    "trust_remote_code": f"it runs Python code from the model's files; {ALLOW_HINT}",
    "code_revision": "it picks Python code to download and run",
    "checkpoint_path": "it can load pickled files",
    "pretrained_cfg": "it can point the loader at other, pickled files",
    "pretrained_cfg_overlay": "it can point the loader at other, pickled files",
    "weights_only": "it can turn unpickling on",
    "use_safetensors": "it can turn loading of pickled .bin weights on",
    "weights": "it picks the weights file to download and unpickle",
    "from_tf": "it loads another file format",
    "from_flax": "it loads another file format",
    "gguf_file": "it loads another file format",
}


def check_hub_options(library: str, name: str, options: Mapping[str, Any]) -> None:
    """Refuse any option of ``library:name`` outside :data:`HUB_OPTIONS` or of the wrong type.

    Raises:
        UnknownNameError: ``library`` is not a registered hub (close names suggested).
        ConfigError: one line naming the model, the option (and why it is refused) and the options
            that are allowed.
    """
    HUBS.get(library)
    allowed = HUB_OPTIONS.get(library.lower(), {})  # a hub without an entry takes no options
    spec = f"{library}:{name}"
    bad = [key for key in options if key not in allowed]
    if bad:
        named = ", ".join(
            f"{key!r} ({_REFUSED_WHY[key]})" if key in _REFUSED_WHY else repr(key) for key in bad
        )
        raise ConfigError(
            f"model {spec!r} does not take option{'s' if len(bad) > 1 else ''} {named}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    for key, value in options.items():
        check, what = allowed[key]
        if not check(value):
            raise ConfigError(f"option {key!r} of model {spec!r} must be {what}, got {value!r}")


def build_hub_model(
    library: str,
    name: str,
    num_classes: int,
    pretrained: bool,
    options: Mapping[str, Any] | None = None,
    *,
    trust_remote_code: bool = False,
) -> TransferNet:
    """Dispatch ``library`` (``"timm"``, ``"torchvision"``, ``"hf"``: see :data:`HUBS`) to its builder.

    Args:
        library: The hub's registered name.
        name: The model's name in the hub (or a local path for ``hf``).
        num_classes: Head size.
        pretrained: Load the hub's pretrained weights.
        options: Architecture options, checked against :data:`HUB_OPTIONS` before anything is
            imported (they may come from a file).
        trust_remote_code: Let a transformers model run the code shipped with it; only from an
            explicit API argument or :func:`allow_remote_code`, never from ``options``.

    Raises:
        UnknownNameError: ``library`` is not a registered hub (close names suggested).
        ConfigError: an option that is not allowed.
    """
    entry = HUBS.get(library)
    options = dict(options or {})
    check_hub_options(library, name, options)
    if entry.takes_remote_code:
        options["trust_remote_code"] = bool(trust_remote_code)  # after the check: never from options
    return entry.build(name, num_classes, pretrained, **options)


def _linear_head(feature_dim: int, num_classes: int, old: nn.Module | None) -> nn.Module:
    if (
        isinstance(old, nn.Linear)
        and old.out_features == num_classes
        and old.in_features == feature_dim
    ):
        return old
    return nn.Linear(feature_dim, num_classes)


def _timm_source(name: str) -> str:
    """timm's name for ``name``: an existing local folder (``save_for_hf`` / hub layout, a
    ``config.json`` + ``model.safetensors``) becomes ``local-dir:<folder>``."""
    path = Path(name).expanduser()
    if path.is_dir():
        return f"local-dir:{path.resolve()}"
    return name


def _create_timm(timm: Any, name: str, pretrained: bool, image_size: int | None, kwargs: dict) -> nn.Module:
    """``timm.create_model`` at ``image_size``: passed as ``img_size`` to architectures that take
    one (ViTs resize their position embeddings when loading weights); others (CNNs) run at any size,
    so only the input adapter changes."""
    if image_size is not None and "img_size" not in kwargs:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=image_size, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def build_timm(
    name: str, num_classes: int, pretrained: bool, *, image_size: int | None = None, **kwargs: Any
) -> TransferNet:
    """``timm.create_model(name, pretrained=...)`` with its classifier reset; features
    ``(N, num_features)``. ``name`` may be a local folder in timm's hub layout (``config.json`` +
    ``model.safetensors``, as ``timm.models.save_for_hf`` writes), loaded through timm's own
    ``local-dir:`` path. Preprocessing (input size, mean, std, interpolation, centre crop) comes from
    timm's ``resolve_data_config`` of the model; ``image_size`` overrides the size. ``kwargs`` are
    checked against ``HUB_OPTIONS["timm"]`` before timm is imported; without network, pretrained
    weights that are not cached fail at once (:func:`check_downloadable`)."""
    sized = {"image_size": image_size} if image_size is not None else {}
    check_hub_options("timm", name, {**kwargs, **sized})
    timm = _require("timm")
    source = _timm_source(name)
    try:
        if pretrained and not source.startswith("local-dir:"):
            probe = _create_timm(timm, source, False, image_size, kwargs)
            check_downloadable(f"timm:{name}", _timm_weights(probe))
        net = _create_timm(timm, source, pretrained, image_size, kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "not a directory" in str(exc):
            raise ConfigError(f"timm cannot build {name!r}: {_first_line(exc)}") from exc
        raise
    pretrained_cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    classifier = pretrained_cfg.get("classifier")
    if source.startswith("local-dir:") and not kwargs and pretrained_cfg.get("architecture"):
        name = str(pretrained_cfg["architecture"])  # rebuilds without the folder; it is the source
    old = net.get_classifier() if pretrained else None
    net.reset_classifier(0)
    data_cfg = timm.data.resolve_data_config({}, model=net)
    input_size = tuple(data_cfg.get("input_size", (3, 224, 224)))
    if image_size is not None:
        input_size = (input_size[0], int(image_size), int(image_size))
    feature_dim = int(net.num_features)
    info = ModelInfo(
        arch=f"timm:{name}",
        kwargs={**kwargs, **sized},
        num_classes=num_classes,
        feature_dim=feature_dim,
        input_size=input_size,
        mean=tuple(data_cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(data_cfg.get("std", IMAGENET_STD)),
        interpolation=_interpolation(data_cfg.get("interpolation")),
        crop_pct=float(data_cfg.get("crop_pct") or 1.0),
        classifier=classifier if isinstance(classifier, str) else None,
        source=(source if source.startswith("local-dir:") else f"pretrained:timm:{name}")
        if pretrained
        else "random init",
    )
    return TransferNet(net, _linear_head(feature_dim, num_classes, old), info)


def _interpolation(value: Any) -> str:
    """A library's interpolation setting (timm's string, torchvision's ``InterpolationMode``, a
    PIL resample number) as the input adapter's mode; unknown ones fall back to bilinear."""
    text = str(getattr(value, "value", value)).lower()
    pil = {"0": "nearest", "2": "bilinear", "3": "bicubic"}
    text = pil.get(text, text)
    return text if text in ("bilinear", "bicubic", "nearest") else "bilinear"


# ----------------------------------------------------------------------------------------------
# Pretrained weights without network: fail at once with what to do, never retry for a minute.

_OFFLINE_FIX = (
    "use weights on disk instead (--source FILE --source-arch {spec}, or put the file in the "
    "cache), or train without them: --no-pretrained (model.pretrained=false)"
)


@dataclass(frozen=True)
class WeightsLocation:
    """Where a hub's pretrained weights come from: an URL (cached under ``torch.hub``'s folder) or
    a Hugging Face hub repository (cached by ``huggingface_hub``)."""

    url: str | None = None
    hf_repo: str | None = None
    hf_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")


def _timm_weights(net: nn.Module) -> WeightsLocation:
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    extra = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else ()
    return WeightsLocation(
        url=cfg.get("url") or None,
        hf_repo=cfg.get("hf_hub_id") or None,
        hf_files=(*WeightsLocation.hf_files, *extra),
    )


def _cached(where: WeightsLocation) -> bool:
    if where.url:
        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(where.url).path).name
        if file.is_file():
            return True
    if where.hf_repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        for name in where.hf_files:
            found = try_to_load_from_cache(where.hf_repo, name)
            if isinstance(found, str) and Path(found).is_file():
                return True
    return False


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _offline_env() -> bool:
    switches = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in switches)


def check_downloadable(spec: str, where: WeightsLocation) -> None:
    """Refuse at once, in one line, pretrained weights that are not cached and can't be downloaded.

    Cached weights (``torch.hub`` checkpoints folder, Hugging Face cache) always pass; otherwise the
    download host must answer within 3 s (and Hugging Face's offline switches must be off). Without
    this, timm retries for about a minute and torchvision prints a long traceback.

    Raises:
        CheckpointError: naming the model, the host that can't be reached and what to do instead.
    """
    if not (where.url or where.hf_repo) or _cached(where):
        return
    hosts = [u for u in (_hf_endpoint() if where.hf_repo else None, where.url) if u]
    if not _offline_env() and any(_reachable(u) for u in hosts):
        return
    host = urlparse(hosts[0]).hostname
    why = "Hugging Face offline mode is on" if _offline_env() else f"{host} can't be reached"
    raise CheckpointError(
        f"the pretrained weights of {spec!r} are not on this machine and can't be downloaded "
        f"({why}); {_OFFLINE_FIX.format(spec=spec)}"
    )


_TV_CLASSIFIERS = ("fc", "classifier", "heads.head", "heads", "head")


def _get_path(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _check_torchvision_weights(tv: Any, name: str) -> None:
    """Load ``name``'s default weights once with ``weights_only=True`` before torchvision loads them.

    torchvision's builders load their weights through ``torch.hub.load_state_dict_from_url``, whose
    ``weights_only`` defaults to False; a cached file that is not plain tensors is refused here first.
    """
    weights = tv.models.get_model_weights(name).DEFAULT
    try:
        weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"the pretrained weights of 'torchvision:{name}' ({weights.url}) hold pickled code or "
            "objects, not only tensors, and are refused; delete the cached copy "
            "(~/.cache/torch/hub/checkpoints) so it is downloaded again"
        ) from exc


def _torchvision_weights(tv: Any, name: str) -> Any:
    """The default weights enum of ``name`` (their transforms and URL; nothing is downloaded), or
    ``None`` for an architecture without any."""
    try:
        return tv.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def _create_torchvision(tv: Any, name: str, weights: Any, image_size: int | None, kwargs: dict) -> nn.Module:
    """``get_model`` at ``image_size``: passed on to architectures that take one (ViT, Swin); the
    others run at any size, so only the input adapter changes."""
    try:
        if image_size is not None:
            try:
                return tv.models.get_model(name, weights=weights, image_size=image_size, **kwargs)
            except TypeError as exc:
                if "image_size" not in str(exc):
                    raise
        return tv.models.get_model(name, weights=weights, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"torchvision cannot build {name!r}: {_first_line(exc)}") from exc


def build_torchvision(
    name: str, num_classes: int, pretrained: bool, *, image_size: int | None = None, **kwargs: Any
) -> TransferNet:
    """``torchvision.models.get_model(name, weights="DEFAULT" or None)``; its classifier (``fc``,
    ``classifier[-1]`` or ``heads.head``) becomes ``nn.Identity`` and, when ``num_classes`` matches,
    our head. Preprocessing (crop size, resize size, mean, std, interpolation) comes from the default
    weights' ``transforms()``; ``image_size`` overrides the size. Options are checked against
    ``HUB_OPTIONS["torchvision"]`` before torchvision is imported; pretrained weights that are not
    cached fail at once without network, and are first loaded with ``weights_only=True``."""
    sized = {"image_size": image_size} if image_size is not None else {}
    check_hub_options("torchvision", name, {**sized, **kwargs})
    tv = _require("torchvision")
    weights = _torchvision_weights(tv, name)
    if pretrained:
        if weights is None:
            raise ConfigError(
                f"torchvision has no pretrained weights for {name!r}; use --no-pretrained "
                "(model.pretrained=false)"
            )
        check_downloadable(f"torchvision:{name}", WeightsLocation(url=weights.url))
        _check_torchvision_weights(tv, name)
    net = _create_torchvision(tv, name, weights if pretrained else None, image_size, kwargs)
    linear: nn.Linear | None = None
    classifier: str | None = None
    for path in _TV_CLASSIFIERS:
        holder = _get_path(net, path)
        if isinstance(holder, nn.Sequential) and len(holder) and isinstance(holder[-1], nn.Linear):
            linear = holder[-1]
            holder[-1] = nn.Identity()
            classifier = f"{path}.{len(holder) - 1}"
            break
        if isinstance(holder, nn.Linear):
            linear = holder
            parent_path, _, attr = path.rpartition(".")
            parent = _get_path(net, parent_path) if parent_path else net
            setattr(parent, attr, nn.Identity())
            classifier = path
            break
    if linear is None:
        raise ConfigError(
            f"cannot find the classifier of torchvision model {name!r} (looked for "
            f"{', '.join(_TV_CLASSIFIERS)}); build it yourself and use "
            "transferkit.models.wrap_model"
        )
    feature_dim = linear.in_features
    pre = _torchvision_preprocessing(weights)
    side = int(image_size) if image_size is not None else pre["size"]
    info = ModelInfo(
        arch=f"torchvision:{name}",
        kwargs={**sized, **kwargs},
        num_classes=num_classes,
        feature_dim=feature_dim,
        input_size=(3, side, side),
        mean=pre["mean"],
        std=pre["std"],
        interpolation=pre["interpolation"],
        crop_pct=pre["crop_pct"],
        classifier=classifier,
        source=f"pretrained:torchvision:{name}" if pretrained else "random init",
    )
    head = _linear_head(feature_dim, num_classes, linear if pretrained else None)
    return TransferNet(net, head, info)


def _torchvision_preprocessing(weights: Any) -> dict[str, Any]:
    """Size, mean, std, interpolation and crop of a weights enum's ``transforms()`` (ImageNet's
    224 px bilinear, no crop, for an architecture without weights)."""
    out: dict[str, Any] = {
        "size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear", "crop_pct": 1.0
    }
    if weights is None:
        return out
    try:
        t = weights.transforms()
    except Exception:  # noqa: BLE001 - a transform we can't read: keep the ImageNet defaults
        return out
    crop = getattr(t, "crop_size", None)
    resize = getattr(t, "resize_size", None)
    side = int(crop[0]) if crop else 224
    out["size"] = side
    if getattr(t, "mean", None):
        out["mean"] = tuple(float(v) for v in t.mean)
    if getattr(t, "std", None):
        out["std"] = tuple(float(v) for v in t.std)
    out["interpolation"] = _interpolation(getattr(t, "interpolation", None))
    if resize and int(resize[0]) > side:
        out["crop_pct"] = side / int(resize[0])
    return out


class HFVisionBackbone(nn.Module):
    """A transformers vision model returning pooled features ``(N, hidden)``: ``pooler_output`` when
    the model has one, else the mean of ``last_hidden_state`` over tokens / spatial positions."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = out.last_hidden_state
            pooled = hidden.mean(dim=1) if hidden.ndim == 3 else hidden.flatten(2).mean(-1)
        return pooled.flatten(1)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@contextmanager
def _no_progress_bars(tr: Any) -> Iterator[None]:
    """transformers' progress bars off for the block (a local load is quick; stderr stays clean)."""
    log = getattr(getattr(tr, "utils", None), "logging", None)
    if log is None or not hasattr(log, "disable_progress_bar"):
        yield
        return
    was_on = log.is_progress_bar_enabled()
    log.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            log.enable_progress_bar()


def _hf_error(model_id: str, exc: Exception) -> ConfigError:
    """One-line error for a transformers loader's failure."""
    if "trust_remote_code" in str(exc):
        return ConfigError(
            f"model 'hf:{model_id}' needs the Python code shipped with it (its config.json has an "
            f"auto_map) and running that code is off; read that code first, then {ALLOW_HINT}"
        )
    return ConfigError(f"transformers cannot load 'hf:{model_id}': {_first_line(exc)}")


def build_hf(
    model_id: str,
    num_classes: int,
    pretrained: bool,
    *,
    image_size: int | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> TransferNet:
    """A transformers ``AutoModel`` vision backbone (``hf:google/vit-base-patch16-224`` or a local
    path); mean, std and size from its image processor when it has one.

    ``kwargs`` are checked against ``HUB_OPTIONS["hf"]``. Every transformers loader is passed
    ``trust_remote_code`` explicitly (so code shipped with the model runs only when it is True) and,
    for an existing local folder, ``local_files_only=True`` (no network access).
    """
    sized = {"image_size": image_size} if image_size is not None else {}
    check_hub_options("hf", model_id, {**kwargs, **sized})
    tr = _require("transformers")
    common: dict[str, Any] = {"trust_remote_code": bool(trust_remote_code)}
    quiet: AbstractContextManager[None] = nullcontext()
    if Path(model_id).expanduser().is_dir():
        common["local_files_only"] = True
        quiet = _no_progress_bars(tr)
    else:  # a hub id: cached, or the hub must answer (no minute of retries without network)
        check_downloadable(f"hf:{model_id}", WeightsLocation(hf_repo=model_id, hf_files=("config.json",)))
    text_opts = {k: kwargs.pop(k) for k in ("pooling", "max_length") if k in kwargs}
    try:
        with quiet:
            config = tr.AutoConfig.from_pretrained(model_id, **common, **kwargs)
            if is_text_config(config) and not sized:
                return _build_hf_text(tr, model_id, config, num_classes, pretrained, common, kwargs,
                                      text_opts)
            if text_opts:
                raise ConfigError(f"{', '.join(text_opts)} are options of text models; 'hf:{model_id}' "
                                  "is a vision model")
            if pretrained:
                net = tr.AutoModel.from_pretrained(model_id, **common, **kwargs)
            else:
                net = tr.AutoModel.from_config(config, trust_remote_code=common["trust_remote_code"])
    except (OSError, ValueError, KeyError) as exc:
        raise _hf_error(model_id, exc) from exc
    cfg = net.config
    feature_dim = getattr(cfg, "hidden_size", None)
    if feature_dim is None and getattr(cfg, "hidden_sizes", None):
        feature_dim = cfg.hidden_sizes[-1]
    if feature_dim is None:
        raise ConfigError(f"cannot tell the feature size of {model_id!r} from its config")
    pre = _hf_preprocessing(tr, model_id, common, getattr(cfg, "image_size", 224))
    size = pre["size"]
    side = int(image_size or (size if isinstance(size, int) else size[0]))
    channels = int(getattr(cfg, "num_channels", 3))
    info = ModelInfo(
        arch=f"hf:{model_id}",
        kwargs={"image_size": side, **kwargs},
        num_classes=num_classes,
        feature_dim=int(feature_dim),
        input_size=(channels, side, side),
        mean=pre["mean"],
        std=pre["std"],
        interpolation=pre["interpolation"],
        crop_pct=pre["crop_pct"],
        source=f"pretrained:hf:{model_id}" if pretrained else "random init",
    )
    return TransferNet(HFVisionBackbone(net), nn.Linear(int(feature_dim), num_classes), info)


def _build_hf_text(tr: Any, model_id: str, config: Any, num_classes: int, pretrained: bool,
                   common: dict[str, Any], kwargs: dict[str, Any], text_opts: dict[str, Any]) -> TransferNet:
    """``hf:<id>`` of a text model: ``AutoModel`` + ``AutoTokenizer`` (same loader options) as a
    text :class:`TransferNet` (:mod:`transferkit.models.text`)."""
    from transferkit.models.text import DEFAULT_MAX_LENGTH, load_tokenizer, text_model

    if pretrained:
        net = tr.AutoModel.from_pretrained(model_id, **common, **kwargs)
    else:
        net = tr.AutoModel.from_config(config, trust_remote_code=common["trust_remote_code"])
    tok = load_tokenizer(f"hf:{model_id}", trust_remote_code=common["trust_remote_code"])
    pooling = text_opts.get("pooling", "mean")
    positions = int(getattr(config, "max_position_embeddings", 0) or DEFAULT_MAX_LENGTH)
    max_length = text_opts.get("max_length", min(DEFAULT_MAX_LENGTH, positions))
    return text_model(net, tok, arch=f"hf:{model_id}", kwargs={**kwargs, **text_opts},
                      num_classes=num_classes, pooling=pooling, max_length=max_length,
                      tokenizer_spec=f"hf:{model_id}",
                      source=f"pretrained:hf:{model_id}" if pretrained else "random init")


def _hf_preprocessing(tr: Any, model_id: str, common: dict[str, Any], size: Any) -> dict[str, Any]:
    """Mean, std, size, resampling and centre crop from the model's image processor (ImageNet's
    mean and std, no crop, when it has none)."""
    out: dict[str, Any] = {
        "size": size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear", "crop_pct": 1.0
    }
    try:
        proc = tr.AutoImageProcessor.from_pretrained(model_id, **common)
    except (OSError, ValueError, KeyError) as exc:
        logger.info("no image processor for %s (%s); using ImageNet mean/std", model_id, exc)
        return out
    out["mean"] = tuple(getattr(proc, "image_mean", None) or IMAGENET_MEAN)
    out["std"] = tuple(getattr(proc, "image_std", None) or IMAGENET_STD)
    out["interpolation"] = _interpolation(getattr(proc, "resample", None))
    psize = dict(getattr(proc, "size", None) or {})
    resize = psize.get("height") or psize.get("shortest_edge")
    crop = dict(getattr(proc, "crop_size", None) or {}).get("height")
    if getattr(proc, "do_center_crop", False) and crop:
        out["size"] = int(crop)
        if resize and int(resize) > int(crop):
            out["crop_pct"] = int(crop) / int(resize)
    elif resize:
        out["size"] = int(resize)
    return out


@dataclass(frozen=True)
class Hub:
    """A model hub's entry in :data:`HUBS`.

    Attributes:
        build: ``build(name, num_classes, pretrained, **options) -> TransferNet``; ``options`` are
            checked against the hub's :data:`HUB_OPTIONS` entry first (none allowed without one).
        takes_remote_code: ``build`` also takes ``trust_remote_code=``, which
            :func:`build_hub_model` passes only from an explicit argument, never from ``options``.
    """

    build: Callable[..., TransferNet]
    takes_remote_code: bool = False


HUBS: Registry[Hub] = Registry("model hub")
"""The hubs a ``"<hub>:<name>"`` model spec can name: hub name -> :class:`Hub`."""

HUBS.register("timm", Hub(build_timm))
HUBS.register("torchvision", Hub(build_torchvision))
HUBS.register("hf", Hub(build_hf, takes_remote_code=True))
