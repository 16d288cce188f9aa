"""Parameter-efficient fine-tuning through `peft <https://github.com/huggingface/peft>`_: LoRA and its
relatives as a training strategy.

``strategy: lora`` (options in ``TrainConfig.lora``, a :class:`~transferkit.engine.config.LoraOptions`)
freezes every weight of the backbone and trains small adapters that peft puts on its ``nn.Linear``
and ``nn.Conv2d`` layers, together with the head, which always trains fully:

* :func:`add_adapters` injects them with :func:`peft.inject_adapter_in_model` into
  ``model.backbone``, in place. The model stays a TransferNet and the backbone keeps its blocks and
  module names: an adapted layer ``backbone.fc.2`` becomes a peft wrapper under the same name that
  holds the original layer as ``backbone.fc.2.base_layer``. Layer taps (feature distillation, DELTA,
  ...) therefore keep working and record the adapted outputs.
* :meth:`Trainer.fit <transferkit.engine.Trainer.fit>` adds them after its checks (initialised
  from ``config.seed``) and trains them and the head; the backbone's base weights and its BatchNorm
  statistics do not change. At the end, with ``lora.save: merged`` (the default), peft merges the
  adapters into the base weights (:func:`merge_adapters`): the model is a plain TransferNet again,
  with the architecture and state-dict keys it had before, and saves and loads with
  :func:`~transferkit.models.save_model` / :func:`~transferkit.models.load_model`.
* With ``lora.save: adapters`` the model keeps its adapters. :func:`save_adapters` writes the base
  as a normal model folder (with the trained head) and the adapters beside it
  (``adapters.safetensors`` and ``adapters.json``); :func:`load_adapted_model` reads both back.
* :func:`~transferkit.engine.strategies.count_parameters` counts trainable and total parameters;
  every epoch's row of the fit's history has ``trainable_params`` and ``total_params``.

Checkpoints of a lora run hold the adapted model's state (base weights under ``...base_layer`` names
and the adapters); ``fit(resume=True)`` adds the adapters to the fresh model before it restores them.

Objectives that pull parameters towards reference values they match by name (L2-SP, EWC) see the
adapted model's parameters: the frozen base weights (renamed ``...base_layer.weight``, their pull is
always 0), the adapters and the head. L2-SP without a ``source`` takes every parameter's start as its
reference and so pulls the adapters back to their start, where the adapted model is the model it
started from: a meaningful regulariser. With a ``source`` model (as the workflows pass), or EWC, the
references carry the source's names, which no trainable parameter has, and the pull would change
nothing (at most the head's pull, when the source head fits): :func:`check_objectives` refuses that
with a :class:`~transferkit.errors.ConfigError`.
:func:`effective_parameters` gives the merged weights under the plain names, with gradients to the
adapters, for objectives that want to compare those (L2-SP on merged weights).
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.engine.config import LoraOptions
from transferkit.errors import CheckpointError, ConfigError, MissingDependencyError, TrainingError

logger = logging.getLogger(__name__)

ADAPTER_NAME = "default"
ADAPTERS_WEIGHTS = "adapters.safetensors"
ADAPTERS_CONFIG = "adapters.json"
ADAPTERS_FORMAT = "transferkit-adapters"
_OPTIONS_ATTR = "_transferkit_lora"  # the LoraOptions the backbone's adapters were made with


def require_peft() -> Any:
    """The ``peft`` module.

    Raises:
        MissingDependencyError: peft is not installed (with the command that installs it).
    """
    try:
        import peft
    except ImportError as exc:
        raise MissingDependencyError(
            "strategy 'lora' uses the package 'peft', which is not installed; run "
            "`pip install 'transferkit[peft]'`"
        ) from exc
    return peft


# ------------------------------------------------------------------------------------ layers
def _layer_types(method: str) -> tuple[type[nn.Module], ...]:
    # peft's IA3 has no nn.Conv1d layer; LoRA, DoRA, LoHa and LoKr have Linear, Conv1d and Conv2d
    return (nn.Linear, nn.Conv2d) if method == "ia3" else (nn.Linear, nn.Conv1d, nn.Conv2d)


def _type_names(method: str, last: str) -> str:
    names = [t.__name__ for t in _layer_types(method)]
    return ", ".join(names[:-1]) + f" {last} {names[-1]}"


def _tuner_layer_type() -> type:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return BaseTunerLayer


def adaptable_layers(backbone: nn.Module, method: str = "lora") -> list[str]:
    """Names (inside ``backbone``) of the layers ``method`` can adapt and merge: every ``nn.Linear``
    and ``nn.Conv2d`` (and, except for ``ia3``, ``nn.Conv1d``), leaving out grouped (depthwise)
    convolutions, which peft cannot merge, and the output projection of ``nn.MultiheadAttention``,
    whose weight the attention reads directly (an adapter on it would never run)."""
    types = _layer_types(method)
    mha_out = {f"{name}.out_proj".lstrip(".") for name, m in backbone.named_modules()
               if isinstance(m, nn.MultiheadAttention)}
    return [
        name for name, m in backbone.named_modules()
        if name and isinstance(m, types) and getattr(m, "groups", 1) == 1 and name not in mha_out
        and _peft_can_copy(m, method)
    ]


_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _base_conv(layer: nn.Module) -> type[nn.Module]:
    return next(t for t in _PLAIN_CONVS if isinstance(layer, t))


def _peft_can_copy(layer: nn.Module, method: str) -> bool:
    """Whether peft's ``method`` can adapt the convolution subclass ``layer`` (plain layers always).

    LoRA builds its adapter layers as ``type(layer)(in_channels, rank, kernel_size, stride, padding,
    bias=False)``, which a subclass with another constructor (a "same"-padding conv that needs the
    image size, as in the PyPI EfficientNet-Lite package) refuses or reads as other settings; timm's
    ``Conv2dSame`` takes those arguments (and its adapter layers pad like it). LoHa and LoKr convolve
    with the layer's padding attributes, so a subclass that pads in its own forward only works 1x1
    at stride 1. IA3 scales outputs and works on any."""
    if not isinstance(layer, _PLAIN_CONVS) or type(layer) in _PLAIN_CONVS or method == "ia3":
        return True
    ones = (1,) * len(layer.kernel_size)
    if method not in ("lora", "dora"):
        # LoHa / LoKr add F.conv2d(x, delta) with the layer's own padding attributes: wrong for a
        # subclass that pads in its forward, unless the kernel is 1x1 at stride 1 (nothing to pad)
        own_forward = type(layer).forward is not _base_conv(layer).forward
        return not own_forward or (tuple(layer.kernel_size) == ones and tuple(layer.stride) == ones)
    try:
        with torch.device("meta"):  # lora_A as peft builds it, then lora_B
            a = type(layer)(layer.in_channels, 1, layer.kernel_size, layer.stride, layer.padding, bias=False)
            b = type(layer)(1, layer.out_channels, ones, ones, bias=False)
    except Exception:  # noqa: BLE001 - any refusal means peft would fail the same way
        return False
    # a subclass that took those arguments as something else pads or strides differently
    return a.padding == layer.padding and a.stride == layer.stride and b.stride == ones



def _no_match(raw: str, pattern: str, backbone: nn.Module, layers: list[str], method: str) -> ConfigError:
    where = "lora.target_modules"
    shown = ", ".join(layers[:12]) + (f", ... ({len(layers)} in all)" if len(layers) > 12 else "")
    known = (f"the backbone's adaptable layers are: {shown} (names inside the backbone, the "
             "'backbone.' prefix is optional; a block's name adapts all its layers, and glob "
             "patterns such as '*conv*' work)")
    if raw == "head" or raw.startswith("head."):
        return ConfigError(f"{where}: {raw!r} is the head, which is never adapted: it always trains "
                           f"fully under strategy 'lora'; name backbone layers only: {known}")
    module = dict(backbone.named_modules()).get(pattern)
    if module is not None:
        kind = type(module).__name__
        if isinstance(module, nn.Linear) and isinstance(module, _layer_types(method)):
            why = ("is the output projection of an nn.MultiheadAttention, which reads its weight "
                   "directly (an adapter on it would never run); leave it out")
        elif getattr(module, "groups", 1) > 1:
            why = (f"is a grouped {kind} (groups={module.groups}), which peft cannot merge "
                   "adapters into; leave it out")
        elif isinstance(module, _PLAIN_CONVS) and not _peft_can_copy(module, method):
            why = (f"is a {kind}, a convolution subclass whose constructor takes other arguments, so "
                   "peft can't build LoRA layers like it; use method 'loha' or 'lokr', or a model "
                   "built from plain nn.Conv2d (e.g. timm's)")
        else:
            why = f"is a {kind}; method {method!r} adapts {_type_names(method, 'and')} layers"
        return ConfigError(f"{where}: {raw!r} {why}; {known}")
    close = difflib.get_close_matches(pattern, layers, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    known = known[0].upper() + known[1:]
    return ConfigError(f"{where}: {raw!r} matches no layer of the backbone.{hint} {known}")


def resolve_targets(backbone: nn.Module, options: LoraOptions) -> list[str]:
    """The backbone layers (names inside ``backbone``) that ``options`` puts adapters on.

    ``options.target_modules`` ``None`` takes every :func:`adaptable_layers`; else each entry is an
    exact layer name, a module whose adaptable layers all count (a block), or a glob pattern, with or
    without the ``"backbone."`` prefix.

    Raises:
        ConfigError: an entry matches no adaptable layer (the message says why: the head, a layer
            of another type, a grouped convolution, a typo with close names), or the backbone has
            none at all.
    """
    layers = adaptable_layers(backbone, options.method)
    if not layers:
        raise ConfigError(
            f"strategy 'lora': the backbone has no {_type_names(options.method, 'or')} layer that "
            f"method {options.method!r} can adapt (grouped convolutions and convolution subclasses "
            "peft can't copy are left out); use method 'loha' or 'lokr', or strategy 'full', "
            "'gradual' or 'linear_probe' for this model"
        )
    if options.target_modules is None:
        return layers
    chosen: set[str] = set()
    for raw in options.target_modules:
        pattern = "*" if raw == "backbone" else raw.removeprefix("backbone.")
        hits = [n for n in layers
                if n == pattern or n.startswith(pattern + ".") or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise _no_match(raw, pattern, backbone, layers, options.method)
        chosen.update(hits)
    return [n for n in layers if n in chosen]


def check_targets(model: nn.Module, options: LoraOptions) -> None:
    """Check ``options`` against ``model`` without changing it (a model that already has adapters
    keeps them and passes).

    Raises:
        ConfigError: as :func:`resolve_targets`.
        MissingDependencyError: peft is not installed.
    """
    require_peft()
    if not adapted_layers(model):
        resolve_targets(model.backbone, options)


def peft_config(options: LoraOptions, targets: Iterable[str]) -> Any:
    """The peft config of ``options`` for exactly the layers ``targets`` (names inside the backbone).

    ``lora`` and ``dora``: ``LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
    use_dora=...)``; ``loha`` / ``lokr``: ``LoHaConfig`` / ``LoKrConfig(r=rank, alpha=alpha,
    rank_dropout=dropout)``; ``ia3``: ``IA3Config`` scaling every target's output.
    """
    require_peft()
    from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig

    # a full-match regex names exactly these layers (a list would also match name suffixes)
    regex = "^(?:" + "|".join(re.escape(t) for t in targets) + ")$"
    m = options.method
    if m in ("lora", "dora"):
        return LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                          target_modules=regex, use_dora=m == "dora", bias="none")
    if m == "loha":
        return LoHaConfig(r=options.rank, alpha=options.alpha, rank_dropout=options.dropout,
                          target_modules=regex)
    if m == "lokr":
        return LoKrConfig(r=options.rank, alpha=options.alpha, rank_dropout=options.dropout,
                          target_modules=regex)
    return IA3Config(target_modules=regex, feedforward_modules=[])


def _tuner_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name inside the backbone, layer)`` of the backbone's peft layers, outermost only."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or getattr(backbone, "peft_config", None) is None:
        return []  # peft marks the module it injected into; without it there is nothing to find
    tuner = _tuner_layer_type()
    out: list[tuple[str, nn.Module]] = []
    for name, module in backbone.named_modules():
        if isinstance(module, tuner) and not any(name.startswith(n + ".") for n, _ in out):
            out.append((name, module))
    return out


def adapted_layers(model: nn.Module) -> list[str]:
    """Names (inside the backbone) of the layers that have adapters (empty for a plain model)."""
    return [name for name, _ in _tuner_layers(model)]


def lora_options(model: nn.Module) -> LoraOptions | None:
    """The :class:`LoraOptions` the model's adapters were made with (``None`` without adapters)."""
    if not adapted_layers(model):
        return None
    return getattr(model.backbone, _OPTIONS_ATTR, None)


def add_adapters(model: nn.Module, options: LoraOptions) -> list[str]:
    """Inject ``options``' adapters into ``model.backbone`` with peft, in place.

    The backbone's weights are frozen; the adapters are trainable and placed on their layer's
    device; the head (outside the backbone) is left as it is. A model that already has adapters
    keeps them (a fit that continues one kept with ``save: adapters``).

    Returns:
        Names (inside the backbone) of the adapted layers.

    Raises:
        ConfigError: as :func:`resolve_targets`.
        MissingDependencyError: peft is not installed.
    """
    existing = adapted_layers(model)
    if existing:
        logger.info("the model already has adapters on %d layer(s); training them on", len(existing))
        return existing
    require_peft()
    from peft import inject_adapter_in_model

    targets = resolve_targets(model.backbone, options)
    inject_adapter_in_model(peft_config(options, targets), model.backbone, adapter_name=ADAPTER_NAME)
    setattr(model.backbone, _OPTIONS_ATTR, options.model_copy(update={"target_modules": targets}))
    count = sum(p.numel() for _, p in adapter_parameters(model))
    logger.info("%s adapters (rank %d) on %d backbone layer(s): %d adapter parameters",
                options.method, options.rank, len(targets), count)
    return targets


def adapter_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name in model, parameter)`` of every adapter parameter (what trains in the backbone)."""
    ids: set[int] = set()
    for _, layer in _tuner_layers(model):
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr, None)
            if isinstance(container, nn.Module):
                ids.update(id(p) for p in container.parameters())
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


def _adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' state-dict entries, under their names in ``model``."""
    out: dict[str, torch.Tensor] = {}
    for lname, layer in _tuner_layers(model):
        prefix = f"backbone.{lname}."
        for key, value in layer.state_dict().items():
            if key.split(".", 1)[0] in layer.adapter_layer_names:
                out[prefix + key] = value
    return out


def _unload(model: nn.Module, merge: bool) -> nn.Module:
    layers = _tuner_layers(model)
    for lname, layer in layers:
        if merge:
            try:
                layer.merge(safe_merge=True, adapter_names=[ADAPTER_NAME])
            except ValueError as exc:  # peft's safe merge refuses non-finite results
                raise TrainingError(
                    f"merging the adapters of backbone.{lname} gives non-finite weights ({exc}); the "
                    "adapters diverged: lower lr or train with lora.save: adapters to inspect them"
                ) from exc
        parent_name, _, child = lname.rpartition(".")
        parent = model.backbone.get_submodule(parent_name) if parent_name else model.backbone
        setattr(parent, child, layer.get_base_layer())
    for attr in ("peft_config", _OPTIONS_ATTR):
        if attr in model.backbone.__dict__:
            delattr(model.backbone, attr)
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Merge the adapters into the base weights with peft and remove them, in place.

    The model is a plain TransferNet again: same modules, same state-dict keys as before
    :func:`add_adapters`, with weights ``base + update``. Its outputs equal the adapted model's
    (in eval mode, up to float rounding). A model without adapters is returned unchanged.

    Returns:
        ``model``.

    Raises:
        TrainingError: the merged weights would not be finite.
    """
    return _unload(model, merge=True)


def remove_adapters(model: nn.Module) -> nn.Module:
    """Remove the adapters without merging them, in place: the base model (with its head)."""
    return _unload(model, merge=False)


# ------------------------------------------------------------------------------------ objectives
def effective_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters under the names of the model without adapters, each adapted layer's
    ``weight`` being the merged ``base + update`` (with gradients to the adapters). Without adapters
    it is ``dict(model.named_parameters())``.

    This is what an objective that compares weights with a source by name (L2-SP) should read under
    ``strategy: lora`` to pull the merged weights towards the source's.

    Raises:
        ConfigError: the adapters are DoRA or IA3, whose merged weight is not ``base + update``.
    """
    layers = _tuner_layers(model)
    inside = {id(p) for _, layer in layers for p in layer.parameters()}
    out = {n: p for n, p in model.named_parameters() if id(p) not in inside}
    for lname, layer in layers:
        dora = getattr(layer, "use_dora", {}).get(ADAPTER_NAME, False)
        if dora or not hasattr(layer, "get_delta_weight"):
            method = "dora" if dora else type(layer).__module__.split(".")[-2]
            raise ConfigError(
                f"effective_parameters: the merged weight of a {method} adapter is not base + update; "
                "use method 'lora', 'loha' or 'lokr' (or merge_adapters on a copy)"
            )
        base = layer.get_base_layer()
        for pname, p in base.named_parameters():
            out[f"backbone.{lname}.{pname}"] = p
        out[f"backbone.{lname}.weight"] = base.weight + layer.get_delta_weight(ADAPTER_NAME)
    return out


def check_objectives(model: nn.Module, objectives: Iterable[nn.Module]) -> None:
    """Refuse objectives that would do nothing under ``strategy: lora``.

    An objective with a ``reference`` mapping (parameter name -> value it pulls the parameter to:
    L2-SP, EWC) is checked after its ``setup``: at least one of its names must be an adapter
    parameter or an adapted layer's merged ``weight`` (see :func:`effective_parameters`), else its
    pull would leave the backbone free (it could at most reach the head).

    Raises:
        ConfigError: an objective's references name only frozen base weights or the head.
    """
    adapters = [n for n, _ in adapter_parameters(model)]
    relevant = set(adapters) | {f"backbone.{n}.weight" for n in adapted_layers(model)}
    for obj in objectives:
        ref = getattr(obj, "reference", None)
        if not isinstance(ref, Mapping) or set(ref) & relevant:
            continue
        name = getattr(obj, "name", type(obj).__name__)
        example = adapters[0] if adapters else "backbone.<layer>.lora_A.default.weight"
        hint = ""
        if name == "l2sp":
            hint = ("; or, from Python, L2SP(source=None): it pulls the adapters back to their "
                    "start, where the adapted model is the model it started from")
        raise ConfigError(
            f"objective {name!r} pulls parameters towards reference values it matches by name, but "
            "under strategy 'lora' no backbone parameter that trains has one: the adapted layers' "
            "weights are frozen (kept as '<layer>.base_layer.weight') and the adapters that train "
            f"(e.g. {example!r}) exist in no source model, so {name!r} would leave the backbone "
            f"free and change nothing there. Use {name!r} with strategy 'full' or 'gradual'{hint}"
        )


# ------------------------------------------------------------------------------------ files
def save_adapters(model: nn.Module, folder: str | os.PathLike, *, base: bool = True) -> Path:
    """Write the model's adapters, and the base model beside them, into ``folder``.

    Files: ``adapters.safetensors`` (the adapter weights, under their names in the adapted model,
    e.g. ``backbone.fc.2.lora_A.default.weight``), ``adapters.json`` (format, transferkit and peft
    versions, the :class:`LoraOptions` and the adapted layers) and, with ``base``, the base model
    as a normal model folder (``model.safetensors`` + ``config.json`` of the model without its
    adapters: the frozen backbone and the trained head), written by
    :func:`~transferkit.models.save_model`. :func:`load_adapted_model` reads the folder back;
    :func:`~transferkit.models.load_model` alone gives the base without adapters.

    Returns:
        The folder's path.

    Raises:
        ConfigError: the model has no adapters (a fit with ``lora.save: merged`` already merged
            them: save it with ``save_model``).
    """
    import transferkit
    from transferkit.io import atomic_write_json, save_state_dict
    from transferkit.models import save_model

    layers = adapted_layers(model)
    if not layers:
        raise ConfigError(
            "save_adapters: the model has no adapters (a fit with lora.save: merged merges them "
            "into the weights); save it with transferkit.models.save_model, or train with "
            "lora.save: adapters"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if base:
        save_model(remove_adapters(copy.deepcopy(model)), folder)
    options = lora_options(model) or LoraOptions()
    save_state_dict(_adapter_state(model), folder / ADAPTERS_WEIGHTS,
                    metadata={"format": ADAPTERS_FORMAT, "method": options.method})
    atomic_write_json(folder / ADAPTERS_CONFIG, {
        "format": ADAPTERS_FORMAT,
        "version": transferkit.__version__,
        "peft_version": require_peft().__version__,
        "options": options.model_dump(mode="json"),
        "layers": layers,
    })
    logger.info("saved %s adapters of %d layer(s) to %s", options.method, len(layers), folder)
    return folder


def load_adapters(model: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Put the adapters :func:`save_adapters` wrote in ``folder`` on ``model`` (its base), in place.

    Returns:
        ``model``, with adapters (merge them with :func:`merge_adapters` for a plain model).

    Raises:
        CheckpointError: the files are missing or malformed, or their weights do not fit the model.
        ConfigError: the model already has adapters.
    """
    from transferkit.io import load_state_dict, read_json

    folder = Path(folder)
    meta_path = folder / ADAPTERS_CONFIG
    if not meta_path.is_file():
        raise CheckpointError(f"{str(folder)!r} holds no {ADAPTERS_CONFIG}; save it with save_adapters")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != ADAPTERS_FORMAT or "options" not in meta:
        raise CheckpointError(f"{str(meta_path)!r} is not a transferkit adapters file; save it again "
                              "with save_adapters")
    if adapted_layers(model):
        raise ConfigError("load_adapters: the model already has adapters; load into its base model")
    try:
        options = LoraOptions(**{**meta["options"], "target_modules": list(meta["layers"])})
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{str(meta_path)!r} holds invalid options ({exc}); save it again") from exc
    try:
        add_adapters(model, options)
    except ConfigError as exc:
        raise CheckpointError(f"the adapters in {str(folder)!r} do not fit this model: {exc}") from exc
    state = load_state_dict(folder / ADAPTERS_WEIGHTS)
    expected = set(_adapter_state(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        remove_adapters(model)
        raise CheckpointError(
            f"the adapters in {str(folder)!r} do not fit this model (missing: {missing[:3]}, "
            f"unexpected: {unexpected[:3]}); load them into the model they were trained on"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        remove_adapters(model)
        raise CheckpointError(f"the adapters in {str(folder)!r} do not fit this model: {exc}") from exc
    return model


def load_adapted_model(folder: str | os.PathLike, *, merge: bool = False) -> nn.Module:
    """The model :func:`save_adapters` wrote (base and adapters) from ``folder``.

    Args:
        merge: Merge the adapters into the weights (a plain TransferNet).
    """
    from transferkit.models import load_model

    model = load_adapters(load_model(folder), folder)
    return merge_adapters(model) if merge else model


__all__ = [
    "ADAPTERS_CONFIG",
    "ADAPTERS_WEIGHTS",
    "adaptable_layers",
    "adapted_layers",
    "adapter_parameters",
    "add_adapters",
    "check_objectives",
    "check_targets",
    "effective_parameters",
    "load_adapted_model",
    "load_adapters",
    "lora_options",
    "merge_adapters",
    "peft_config",
    "remove_adapters",
    "require_peft",
    "resolve_targets",
    "save_adapters",
]
