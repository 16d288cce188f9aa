"""Model surgery: replace the head, freeze and unfreeze, list blocks and layers, tap outputs."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from transferkit.errors import ConfigError, UnknownNameError
from transferkit.models.base import TransferNet


def replace_head(model: TransferNet, num_classes: int) -> TransferNet:
    """Give ``model`` a fresh ``nn.Linear(feature_dim, num_classes)`` head, in place.

    The new head is on the old head's device and dtype; ``model.info.num_classes`` is updated.

    Returns:
        ``model`` itself.

    Raises:
        ConfigError: ``num_classes`` is not an integer >= 1.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    ref = next(model.head.parameters(), None)
    if ref is None:
        ref = next(model.parameters(), None)
    head = nn.Linear(model.info.feature_dim, num_classes)
    if ref is not None:
        head = head.to(device=ref.device, dtype=ref.dtype)
    model.head = head
    model.info.num_classes = num_classes
    model.info.class_names = None  # a new head: its classes are not the old ones
    return model


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter of ``module``; returns ``module``."""
    module.requires_grad_(False)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=True`` on every parameter of ``module``; returns ``module``."""
    module.requires_grad_(True)
    return module


def backbone_blocks(model: TransferNet) -> list[tuple[str, nn.Module]]:
    """The backbone's blocks in forward order (input side first): its direct children, named
    ``"backbone.<child>"``; a backbone without children is one block named ``"backbone"``. A backbone
    with a ``blocks()`` method (a text encoder: embeddings, each transformer layer, pooler) names its
    blocks itself.

    Gradual unfreezing, per-layer learning rates and default layer pairings all use this order.
    """
    own = getattr(model.backbone, "blocks", None)
    if callable(own):
        return [(f"backbone.{name}", child) for name, child in own()]
    children = [(f"backbone.{name}", child) for name, child in model.backbone.named_children()]
    return children or [("backbone", model.backbone)]


def _unknown_layer(name: str, known: Sequence[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return UnknownNameError(
        f"model has no layer {name!r}.{hint} Run `transferkit inspect <model>` "
        "(or transferkit.models.list_layers(model)) to see the layer names"
    )


class LayerTap:
    """Record the outputs of named submodules during forward passes.

    Example::

        with LayerTap(model, ["backbone.conv1", "backbone.fc"]) as tap:
            logits = model(x)
        tap.features["backbone.fc"]  # (N, feature_dim), still attached to the graph

    Args:
        model: Any module; names are those of ``model.named_modules()``.
        layers: Names of the submodules to record.
        detach: Store detached outputs (no gradients) instead of the live tensors.

    Attributes:
        features: ``name -> output`` of the latest forward pass (overwritten by each pass).

    Raises:
        UnknownNameError: a name is not a submodule (the message suggests close names).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], detach: bool = False) -> None:
        if isinstance(layers, str):
            layers = [layers]
        modules = dict(model.named_modules())
        for name in layers:
            if name not in modules or name == "":
                raise _unknown_layer(name, [n for n in modules if n])
        self.model = model
        self.layers = list(layers)
        self.detach = detach
        self.features: dict[str, Any] = {}
        self._modules = {name: modules[name] for name in self.layers}
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str):
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self.detach and isinstance(output, torch.Tensor):
                output = output.detach()
            self.features[name] = output

        return record

    def attach(self) -> LayerTap:
        """Register the hooks (done by ``with``); idempotent."""
        if not self._handles:
            self._handles = [
                module.register_forward_hook(self._hook(name))
                for name, module in self._modules.items()
            ]
        return self

    def remove(self) -> None:
        """Remove the hooks (done on leaving ``with``); ``features`` are kept."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> LayerTap:
        self.features = {}
        return self.attach()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


@dataclass
class LayerInfo:
    """One row of :func:`list_layers`.

    Attributes:
        name: Dotted module name (as in ``named_modules()``).
        type: Class name.
        n_params: Parameters in the module and its children.
        trainable: Whether any of those parameters requires a gradient.
        out_shape: Output shape for the example input, or ``None``.
    """

    name: str
    type: str
    n_params: int
    trainable: bool
    out_shape: tuple[int, ...] | None = None


@torch.no_grad()
def list_layers(
    model: nn.Module, example_input: torch.Tensor | None = None, *, max_depth: int | None = None
) -> list[LayerInfo]:
    """Every named submodule of ``model``: parameter count and, given an example, output shape.

    Args:
        model: The model.
        example_input: A batch to run once (in eval mode, without gradients) to record output
            shapes; ``None`` skips it.
        max_depth: Only modules with at most this many dots + 1 in their name (1 = direct children).
    """
    rows: list[LayerInfo] = []
    modules: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not name or (max_depth is not None and name.count(".") + 1 > max_depth):
            continue
        params = list(module.parameters())
        rows.append(
            LayerInfo(
                name=name,
                type=type(module).__name__,
                n_params=sum(p.numel() for p in params),
                trainable=any(p.requires_grad for p in params),
            )
        )
        modules[name] = module
    if example_input is not None:
        shapes: dict[str, tuple[int, ...]] = {}

        def hook(name: str):
            def record(_m: nn.Module, _i: Any, out: Any) -> None:
                if isinstance(out, torch.Tensor):
                    shapes[name] = tuple(out.shape)

            return record

        handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
        was_training = model.training
        model.eval()
        try:
            model(example_input)
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        for row in rows:
            row.out_shape = shapes.get(row.name)
    return rows


def format_layers(layers: Sequence[LayerInfo]) -> str:
    """A plain-text table of :func:`list_layers` rows."""
    header = ("name", "type", "params", "trainable", "output shape")
    body = [
        (
            r.name,
            r.type,
            f"{r.n_params:,}",
            "yes" if r.trainable else "no",
            "" if r.out_shape is None else "x".join(map(str, r.out_shape)),
        )
        for r in layers
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
