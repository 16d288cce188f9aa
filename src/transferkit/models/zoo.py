"""The model zoo: one front door, :func:`create_model`, over a registry of builders.

Every builder has the signature
``builder(num_classes: int, pretrained: bool, **kwargs) -> TransferNet`` and fills in
``model.info`` so the model can be saved and rebuilt. The backbone's *direct children* are its
blocks, in forward order (the engine unfreezes them gradually and gives each its own learning rate).

Built-ins: ``"mlp"``, ``"small_cnn"``, ``"efficientnet_lite0"``; hub specs ``"timm:<name>"``,
``"torchvision:<name>"`` and ``"hf:<model id or path>"`` are built by :mod:`transferkit.models.hub`.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError, ShapeError
from transferkit.models import custom, hub, text
from transferkit.models.base import ModelInfo, TransferNet
from transferkit.models.efficientnet import EFFICIENTNET_LITE0
from transferkit.models.specs import ArchSpec, Preprocessing
from transferkit.registry import Registry

logger = logging.getLogger(__name__)

Builder = Callable[..., TransferNet]

MODELS: Registry[ArchSpec] = Registry("model")
"""Registered architectures: name -> :class:`~transferkit.models.specs.ArchSpec` (the builder and
what is known about it, timm's ``default_cfgs`` pattern)."""

HUB_PREFIXES: Registry[hub.Hub] = hub.HUBS
"""The hub prefixes of a model spec (``"timm:..."``): the hub registry itself, so ``prefix in
HUB_PREFIXES`` sees every registered hub."""


def create_model(
    name: str, *, num_classes: int = 10, pretrained: bool = False, **kwargs: Any
) -> TransferNet:
    """Build a model by registered name or hub spec.

    Args:
        name: A registered name (``"mlp"``, ``"small_cnn"``, ``"efficientnet_lite0"``) or a hub spec
            (``"timm:resnet18"``, ``"torchvision:resnet18"``, ``"hf:google/vit-base-patch16-224"``).
        num_classes: Size of the head's output.
        pretrained: Load the architecture's pretrained weights (only where it has some).
        **kwargs: Architecture arguments (see each builder), recorded in ``model.info.kwargs``.
            They often come from a file (a saved ``config.json``, a YAML ``model.kwargs``), so they
            can never turn on code execution: hub specs take only the options in
            :data:`transferkit.models.hub.HUB_OPTIONS`, and ``trust_remote_code`` is refused here.
            To let a transformers model run the code shipped with it, build it inside
            ``with transferkit.models.allow_remote_code():`` (the CLI's ``--trust-remote-code``).

    Returns:
        The model; ``model(x)`` maps raw ``[0, 1]`` inputs to logits ``(N, num_classes)``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message suggests close names).
        ConfigError: ``num_classes`` < 1, an argument the builder does not take, or a hub option
            that is not allowed (``trust_remote_code``, ``checkpoint_path``, ...).
        MissingDependencyError: the architecture needs a package that is not installed.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if isinstance(name, type) or custom.is_code_spec(name):
        _check_code_kwargs(name, kwargs)
        return custom.build_code_model(name, num_classes, pretrained, **kwargs)
    spec = _hub_spec(name)
    if spec is not None:
        return hub.build_hub_model(
            *spec,
            num_classes,
            pretrained,
            kwargs,
            trust_remote_code=hub.remote_code_allowed(),
        )
    builder = MODELS.get(name).build
    _check_kwargs(name, builder, kwargs)
    model = builder(num_classes, pretrained, **kwargs)
    logger.debug("built %s (%d classes, pretrained=%s)", name, num_classes, pretrained)
    return model


def fitted_kwargs(arch: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Arguments that make a registered architecture take examples of ``shape`` natively (its
    spec's ``data_kwargs``: an MLP's ``in_features``, a small CNN's channels and size); nothing for
    hub models and user classes, whose input adapter resizes."""
    return MODELS.get(arch).data_kwargs(tuple(shape)) if arch in MODELS else {}


def check_model_args(name: str, kwargs: Mapping[str, Any] | None = None) -> None:
    """Check a model name and its arguments the way :func:`create_model` does, without building it.

    Cheap (nothing is imported or built): workflows call it on a config's ``model.kwargs`` before
    they touch any output folder. Hub specs take only :data:`transferkit.models.hub.HUB_OPTIONS`.

    Raises:
        UnknownNameError: ``name`` is not registered.
        ConfigError: an argument the builder does not take, or a hub option that is not allowed.
    """
    kwargs = dict(kwargs or {})
    if custom.is_code_spec(name):
        _check_code_kwargs(name, kwargs)
        return
    spec = _hub_spec(name)
    if spec is not None:
        hub.check_hub_options(*spec, kwargs)
        return
    _check_kwargs(name, MODELS.get(name).build, kwargs)


_CODE_KWARGS = ("init", "head", "input_size", "mean", "std")


def _check_code_kwargs(name: Any, kwargs: Mapping[str, Any]) -> None:
    unknown = sorted(set(kwargs) - set(_CODE_KWARGS))
    if unknown:
        raise ConfigError(
            f"a user architecture ({name!r}) takes {', '.join(_CODE_KWARGS)}, not "
            f"{', '.join(map(repr, unknown))}; put its constructor's arguments under 'init'"
        )
    if not isinstance(kwargs.get("init") or {}, Mapping):
        raise ConfigError(f"'init' of {name!r} must be a mapping of constructor arguments")


def _hub_spec(name: str) -> tuple[str, str] | None:
    """``"timm:resnet18"`` -> ``("timm", "resnet18")``; ``None`` for a name that is no hub spec.

    Raises:
        ConfigError: a hub prefix with no model after it (``"timm:"``).
    """
    prefix, sep, rest = str(name).partition(":")
    if not (sep and prefix in hub.HUBS):
        return None
    if not rest:
        raise ConfigError(f"model spec {name!r} names no model after {prefix!r}: e.g. 'timm:resnet18'")
    return prefix.lower(), rest


def _check_kwargs(name: str, builder: Builder, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in ("num_classes", "pretrained")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model {name!r} takes no argument(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted) or 'none'}"
        )


def _positive_ints(name: str, values: Sequence[int] | int, allow_empty: bool = False) -> tuple:
    vals = (values,) if isinstance(values, int) else tuple(values)
    if (not vals and not allow_empty) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals
    ):
        raise ConfigError(f"{name} must be positive integers, got {values!r}")
    return vals


def build_mlp(
    num_classes: int,
    pretrained: bool = False,
    *,
    in_features: int = 784,
    hidden: Sequence[int] = (64, 64),
    dropout: float = 0.0,
) -> TransferNet:
    """A multilayer perceptron: blocks ``fc1``, ``fc2``, ... (Linear + ReLU [+ Dropout]).

    Input ``(N, in_features)`` (any shape with ``in_features`` values per example is flattened);
    features ``(N, hidden[-1])``; default 784-64-64-10.
    """
    _no_pretrained("mlp", pretrained)
    (in_features,) = _positive_ints("in_features", in_features)
    hidden = _positive_ints("hidden", hidden, allow_empty=True)
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers: list[nn.Module] = [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(float(dropout)))
        blocks[f"fc{i}"] = nn.Sequential(*layers)
        width = h
    info = ModelInfo(
        arch="mlp",
        kwargs={"in_features": in_features, "hidden": list(hidden), "dropout": float(dropout)},
        num_classes=num_classes,
        feature_dim=width,
        input_size=(in_features,),
        data_shape=(1, 28, 28) if in_features == 784 else None,
        source="random init",
    )
    return TransferNet(nn.Sequential(blocks), nn.Linear(width, num_classes), info)


def build_small_cnn(
    num_classes: int,
    pretrained: bool = False,
    *,
    in_channels: int = 1,
    image_size: int = 28,
    widths: Sequence[int] = (32, 64),
    feature_dim: int = 128,
    pool_size: int = 2,
) -> TransferNet:
    """A small CNN: blocks ``conv1``, ``conv2``, ... (3x3 conv, BatchNorm, ReLU, 2x2 max-pool) then
    ``fc`` (adaptive average pool to ``pool_size`` x ``pool_size``, flatten, Linear, ReLU).

    Input ``(N, in_channels, image_size, image_size)``; features ``(N, feature_dim)``. About 53k
    parameters at the defaults.
    """
    _no_pretrained("small_cnn", pretrained)
    (in_channels,) = _positive_ints("in_channels", in_channels)
    (image_size,) = _positive_ints("image_size", image_size)
    widths = _positive_ints("widths", widths)
    (feature_dim,) = _positive_ints("feature_dim", feature_dim)
    (pool_size,) = _positive_ints("pool_size", pool_size)
    if image_size < 2 ** len(widths):
        raise ConfigError(
            f"image_size={image_size} is too small for {len(widths)} pooling blocks; "
            f"use image_size >= {2 ** len(widths)} or fewer widths"
        )
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    ch = in_channels
    for i, w in enumerate(widths, start=1):
        blocks[f"conv{i}"] = nn.Sequential(
            nn.Conv2d(ch, w, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        ch = w
    blocks["fc"] = nn.Sequential(
        nn.AdaptiveAvgPool2d(pool_size),
        nn.Flatten(),
        nn.Linear(ch * pool_size * pool_size, feature_dim),
        nn.ReLU(),
    )
    info = ModelInfo(
        arch="small_cnn",
        kwargs={
            "in_channels": in_channels,
            "image_size": image_size,
            "widths": list(widths),
            "feature_dim": feature_dim,
            "pool_size": pool_size,
        },
        num_classes=num_classes,
        feature_dim=feature_dim,
        input_size=(in_channels, image_size, image_size),
        source="random init",
    )
    return TransferNet(nn.Sequential(blocks), nn.Linear(feature_dim, num_classes), info)


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ConfigError(
            f"model {name!r} has no pretrained weights; pass pretrained=False, or load your own "
            "weights with transferkit.models.load_model(path, arch=...)"
        )


def _mlp_data_kwargs(shape: tuple[int, ...]) -> dict[str, Any]:
    return {"in_features": math.prod(shape)}


def _small_cnn_data_kwargs(shape: tuple[int, ...]) -> dict[str, Any]:
    return {"in_channels": shape[0], "image_size": shape[1]} if len(shape) == 3 else {}


MODELS.register(
    "mlp",
    ArchSpec(
        build_mlp,
        Preprocessing((784,)),
        width_kwargs=("hidden",),
        data_kwargs=_mlp_data_kwargs,
    ),
)
MODELS.register(
    "small_cnn",
    ArchSpec(
        build_small_cnn,
        Preprocessing((1, 28, 28)),
        width_kwargs=("widths", "feature_dim"),
        data_kwargs=_small_cnn_data_kwargs,
    ),
)
MODELS.register("efficientnet_lite0", EFFICIENTNET_LITE0)
MODELS.register("minilm", text.MINILM)
MODELS.register("text_transformer", text.TEXT_TRANSFORMER)


def narrow_model(model: TransferNet, factor: float, *, num_classes: int | None = None) -> TransferNet:
    """A fresh model with ``model``'s architecture but every width divided by ``factor``.

    The usual distillation student: "the same as the teacher, N times narrower" (about N² fewer
    parameters in the hidden layers). Widths are rounded and kept >= 1; weights are newly initialised.

    Args:
        model: A built-in model (``mlp`` or ``small_cnn``).
        factor: Width divisor (> 0; 4 means a quarter of the channels / units).
        num_classes: Head size; defaults to ``model``'s.

    Raises:
        ConfigError: ``factor`` is not positive or the architecture has no known width arguments.
    """
    if not factor > 0:
        raise ConfigError(f"factor must be > 0, got {factor!r}; e.g. 4 for a 4x narrower model")
    arch = model.info.arch
    widths = MODELS.get(arch).width_kwargs if arch in MODELS else ()
    if not widths:
        narrowable = sorted(n for n, spec in MODELS.items() if spec.width_kwargs)
        raise ConfigError(
            f"don't know the width arguments of {arch!r}; narrowing works for "
            f"{', '.join(narrowable)}: build the student with create_model instead"
        )
    kwargs = dict(model.info.kwargs)
    for key in widths:
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            kwargs[key] = [max(1, round(v / factor)) for v in value]
        else:
            kwargs[key] = max(1, round(value / factor))
    n = model.info.num_classes if num_classes is None else num_classes
    return create_model(arch, num_classes=n, **kwargs)


def wrap_model(
    module: nn.Module,
    *,
    num_classes: int | None = None,
    input_size: tuple[int, ...],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    head: str | None = None,
    init: Mapping[str, Any] | None = None,
) -> TransferNet:
    """Turn any classifier ``nn.Module`` into a :class:`TransferNet`.

    The head is the submodule named ``head`` (a dotted path) if given, else a submodule called
    ``head``, else the *last* ``nn.Linear`` in ``module.named_modules()`` order. It is replaced by
    ``nn.Identity`` inside ``module`` (which becomes the backbone, modified in place) and moved to
    ``.head``. The module's direct children become the backbone's blocks.

    Args:
        module: The classifier, mapping ``(N, *input_size)`` to logits.
        num_classes: If given and different from the head's output size, a new head is made.
        input_size: The module's input shape without the batch dim: ``(C, H, W)`` or ``(D,)``.
        mean: Per-channel normalisation mean (inputs in [0, 1]); ``None`` for none.
        std: Per-channel normalisation std.
        head: Dotted name of the head submodule.
        init: The arguments ``module``'s class was constructed with (JSON values). With them the
            model records its class (``info.arch == "package.module:Class"``) and a saved folder
            rebuilds like any architecture (loading allowed by passing the class or
            :func:`~transferkit.models.allow_code`).

    Returns:
        The wrapped model. Without ``init``, ``info.arch == "custom"``: a saved folder loads back
        with ``load_model(folder, arch=TheClass)`` (or ``--source-arch file.py:Class``), the class
        built without arguments, or with ``init=`` given there.

    Raises:
        ConfigError: no head can be found, or ``input_size`` / ``num_classes`` is invalid.
    """
    input_size = _positive_ints("input_size", tuple(input_size))
    if len(input_size) not in (1, 3):
        raise ConfigError(f"input_size must be (C, H, W) or (D,), got {input_size!r}")
    head_name = head if head is not None else _find_head(module)
    modules = dict(module.named_modules())
    if head_name not in modules or head_name == "":
        raise ConfigError(
            f"module has no submodule {head_name!r} to use as head; "
            f"pass head= one of {', '.join(n for n in modules if n)[:300]}"
        )
    head_module = modules[head_name]
    parent_name, _, attr = head_name.rpartition(".")
    parent = modules[parent_name] if parent_name else module
    _set_child(parent, attr, nn.Identity())
    feature_dim = getattr(head_module, "in_features", None)
    if not isinstance(feature_dim, int):
        feature_dim = _probe_feature_dim(module, input_size)
    out = getattr(head_module, "out_features", None)
    if num_classes is not None and (num_classes < 1 or isinstance(num_classes, bool)):
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if num_classes is not None and num_classes != out:
        head_module = nn.Linear(feature_dim, num_classes)
        out = num_classes
    if not isinstance(out, int):
        raise ConfigError(
            f"head {head_name!r} ({type(head_module).__name__}) has no out_features; "
            "pass num_classes= so a Linear head can be made"
        )
    info = ModelInfo(
        arch="custom",
        kwargs={},
        num_classes=out,
        feature_dim=feature_dim,
        input_size=input_size,
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
        classifier=head_name,
        source=f"wrapped {type(module).__name__}",
    )
    if init is not None:
        info.arch = custom.spec_of_class(type(module))
        info.kwargs = {
            "init": dict(init),
            "head": head_name,
            "input_size": list(input_size),
            "mean": list(info.mean) if info.mean is not None else None,
            "std": list(info.std) if info.std is not None else None,
        }
    return TransferNet(module, head_module, info)


def _find_head(module: nn.Module) -> str:
    names = [n for n, _ in module.named_modules()]
    if "head" in names:
        return "head"
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"{type(module).__name__} has no nn.Linear to use as head; pass head='<submodule name>'"
        )
    return linears[-1]


def _set_child(parent: nn.Module, name: str, child: nn.Module) -> None:
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and name.isdigit():
        parent[int(name)] = child
    else:
        setattr(parent, name, child)


@torch.no_grad()
def _probe_feature_dim(backbone: nn.Module, input_size: tuple[int, ...]) -> int:
    was_training = backbone.training
    backbone.eval()
    try:
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        out = backbone(torch.zeros(2, *input_size, device=device))
    finally:
        backbone.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ShapeError(
            f"the backbone (module without its head) returns {getattr(out, 'shape', type(out))}, "
            "not features (N, D); pick another head= or flatten inside the module"
        )
    return int(out.shape[1])
