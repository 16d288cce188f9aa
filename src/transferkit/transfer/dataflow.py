"""Which state-dict tensors feed which: a model's dataflow, traced from one forward pass.

:func:`trace_dataflow` runs the model once on the ``meta`` device (no memory, no arithmetic;
falling back to a real CPU pass on copies of the buffers if an op has no meta kernel) under a
:class:`torch.overrides.TorchFunctionMode` that follows every torch function. Each tensor the pass
creates carries the set of "nodes" whose output it derives from. A parameter (or buffer) is
*pending* until an op combines it with activations; that op realises its node, whose
predecessors are the nodes the activations came from. Parameter-only ops (``pos_embed.to(x)``,
``gamma.reshape(1, -1, 1, 1)``, slicing) stay pending, so layer-scale vectors and position
embeddings land where they are used, not where they are registered.

Nodes are sets of tensors: the tensors one op realises together (a conv's weight and bias, a
BatchNorm's four tensors, a ``nn.MultiheadAttention``'s in- and out-projections), joined with the
tensors that ``group_key`` puts together (parameters.py groups the weight/bias/running stats of one
module, so a LayerNorm written as ``weight * x + bias`` is still one node).

The result gives each node a depth (longest path from the input), a height (longest path to an
output) and its first use, and from them a canonical order of the tensors (depth, then the longer
remaining path first, then first use) that does not depend on the order in which a library
registers its modules or calls its parallel branches (Hugging Face's ResNet registers and runs the
shortcut before the main path, torchvision after it).
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

logger = logging.getLogger(__name__)

INPUT = "<input>"  # the pseudo-node of the model's input
_EMPTY: frozenset[str] = frozenset()
#: Image sides tried when the model does not say which input it takes.
FALLBACK_SIDES: tuple[int, ...] = (224, 64, 32)
MAX_TRIES = 6


@dataclass
class Dataflow:
    """A traced model's dataflow between its state-dict tensors.

    Attributes:
        node: state-dict name -> node id (tensors realised together share one).
        preds: node id -> the node ids its op reads (``INPUT`` for the model's input).
        first_use: node id -> index of the op that realised it (absent: never used).
        depth: node id -> longest path from the input (0 for a node reading only the input).
        height: node id -> longest path to a node nothing reads.
    """

    node: dict[str, str]
    preds: dict[str, frozenset[str]]
    first_use: dict[str, int]
    depth: dict[str, int]
    height: dict[str, int]

    def used(self, name: str) -> bool:
        return self.node.get(name) in self.first_use

    def producers(self, name: str) -> frozenset[str] | None:
        """Nodes whose output the op of tensor ``name`` reads (``None``: unknown or unused)."""
        node = self.node.get(name)
        return self.preds.get(node) if node in self.first_use else None

    def reads_input(self, name: str) -> bool:
        """Whether the op of ``name`` reads the model's input and no other node (a stem)."""
        return self.producers(name) == frozenset({INPUT})

    def forward_order(self) -> list[str]:
        """The used nodes in forward order: by depth from the input, then by first use (every node
        comes after the nodes it reads, unless a shared module makes the graph cyclic)."""
        return sorted(self.first_use, key=lambda n: (self.depth[n], self.first_use[n]))

    def sort_keys(self, names: Iterable[str]) -> list[tuple[int, ...]]:
        """Canonical sort keys for ``names`` (given in state-dict order).

        A used tensor's key is (depth, -height, first use); an unused one goes right after the
        tensor before it in ``names``.
        """
        keys: list[tuple[int, ...]] = []
        last: tuple[int, ...] = (-1, 0, -1)
        sub = 0
        for name in names:
            node = self.node.get(name)
            if node in self.first_use:
                last, sub = (self.depth[node], -self.height[node], self.first_use[node]), 0
                keys.append((*last, 0))
            else:
                sub += 1
                keys.append((*last, sub))
        return keys


#: Normalisations, whose output has the input's shape (computed directly on the meta device).
_NORMS = frozenset(
    {F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, torch.batch_norm, torch.layer_norm}
    | ({F.rms_norm} if hasattr(F, "rms_norm") else set())
)


class _Tracer(TorchFunctionMode):
    """Follows provenance through every torch function (see the module docstring)."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names  # id(tensor) -> state-dict name, for the tensors the pass is given
        self.prov: dict[int, tuple[Any, frozenset[str], frozenset[str]]] = {}
        self.uses: list[tuple[frozenset[str], frozenset[str]]] = []  # (realised names, their inputs)

    def mark_input(self, x: torch.Tensor) -> None:
        self.prov[id(x)] = (weakref.ref(x), frozenset({INPUT}), _EMPTY)

    def _lookup(self, t: torch.Tensor) -> tuple[frozenset[str], frozenset[str]]:
        name = self.names.get(id(t))
        if name is not None:
            return _EMPTY, frozenset((name,))
        rec = self.prov.get(id(t))
        if rec is not None and rec[0]() is t:
            return rec[1], rec[2]
        return _EMPTY, _EMPTY

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _NORMS and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            out = torch.empty_like(args[0])  # same shape; meta normalisation kernels are slow Python
        else:
            out = func(*args, **kwargs)
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if getattr(func, "__name__", "") == "__setitem__" and args and isinstance(args[0], torch.Tensor):
            outs.append(args[0])
        if not outs:
            return out
        acts: set[str] = set()
        pend: set[str] = set()
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                a, p = self._lookup(t)
                acts |= a
                pend |= p
        if pend and acts:  # parameters meet activations: this op realises their node
            self.uses.append((frozenset(pend), frozenset(acts)))
            new = (frozenset(pend), _EMPTY)
        else:
            new = (frozenset(acts), frozenset(pend))
        for t in outs:
            if id(t) not in self.names:
                self.prov[id(t)] = (weakref.ref(t), *new)
        return out


def _find(parent: dict[str, str], x: str) -> str:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def _build(
    names: list[str], uses: list[tuple[frozenset[str], frozenset[str]]], group_key: Callable[[str], Hashable]
) -> Dataflow:
    parent = {n: n for n in names}
    parent[INPUT] = INPUT

    def union(a: str, b: str) -> None:
        ra, rb = _find(parent, a), _find(parent, b)
        if ra != rb:
            parent[rb] = ra

    first_of_group: dict[Hashable, str] = {}
    for n in names:
        key = group_key(n)
        if key is not None:
            union(first_of_group.setdefault(key, n), n)
    for realised, _ in uses:
        first, *rest = sorted(realised)
        for n in rest:
            union(first, n)
    first_use: dict[str, int] = {}
    preds: dict[str, set[str]] = {}
    for k, (realised, inputs) in enumerate(uses):
        node = _find(parent, next(iter(realised)))
        first_use.setdefault(node, k)
        preds.setdefault(node, set()).update(_find(parent, a) for a in inputs)
    for node, p in preds.items():
        p.discard(node)
    order = sorted(first_use, key=first_use.__getitem__)
    depth: dict[str, int] = {}
    for node in order:
        depth[node] = 1 + max((depth.get(p, -1) for p in preds[node] if p != INPUT), default=-1)
    height: dict[str, int] = dict.fromkeys(order, 0)
    for node in reversed(order):
        for p in preds[node]:
            if p in height:
                height[p] = max(height[p], height[node] + 1)
    return Dataflow(
        node={n: _find(parent, n) for n in names},
        preds={k: frozenset(v) for k, v in preds.items()},
        first_use=first_use,
        depth=depth,
        height=height,
    )


def example_inputs(module: nn.Module) -> list[torch.Tensor]:
    """Inputs worth trying for a forward pass of ``module`` (on the meta device), best first.

    Looked up, in order: ``info.input_size`` (a transferkit model), ``config.image_size`` and
    ``config.num_channels`` (Hugging Face), ``pretrained_cfg["input_size"]`` (timm), attributes
    ``img_size`` / ``image_size`` of any submodule (timm, torchvision and Hugging Face ViTs), then
    the input channels of the first conv weight (or features of the first linear weight) at the
    sides in :data:`FALLBACK_SIDES`. Batch size 2, so BatchNorm in training mode accepts it.
    """
    shapes: list[tuple[int, ...]] = []
    info = getattr(module, "info", None)
    if info is not None and getattr(info, "input_size", None):
        shapes.append(tuple(info.input_size))
    first = next((p for p in module.parameters() if p.dim() in (2, 4)), None)
    channels = int(first.shape[1]) if first is not None and first.dim() == 4 else 3
    config = getattr(module, "config", None)
    if config is not None:
        channels = int(getattr(config, "num_channels", channels) or channels)
    sides: list[Any] = [getattr(config, "image_size", None)]
    cfg = getattr(module, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        sides.append(tuple(cfg["input_size"])[1:])
    for m in module.modules():
        sides += [getattr(m, "img_size", None), getattr(m, "image_size", None)]
    sides += list(FALLBACK_SIDES)
    for side in sides:
        if isinstance(side, int) and side > 0:
            shapes.append((channels, side, side))
        elif isinstance(side, (tuple, list)) and len(side) == 2 and all(isinstance(s, int) for s in side):
            shapes.append((channels, *side))
    if first is not None and first.dim() == 2:
        shapes.append((int(first.shape[1]),))
    unique = list(dict.fromkeys(shapes))[:MAX_TRIES]
    return [torch.zeros(2, *s, device="meta") for s in unique]


@contextmanager
def _observers_off(module: nn.Module) -> Iterator[None]:
    """The module's forward (post-)hooks off for the block: observers such as layer taps must not
    record the trace's meta tensors. Pre-hooks stay (some compute weights, e.g. weight norm)."""
    saved = [(m, m._forward_hooks) for m in module.modules() if m._forward_hooks]
    for m, _ in saved:
        m._forward_hooks = OrderedDict()
    try:
        yield
    finally:
        for m, hooks in saved:
            m._forward_hooks = hooks


def trace_dataflow(
    module: nn.Module,
    group_key: Callable[[str], Hashable] = lambda name: None,
    example: torch.Tensor | None = None,
) -> Dataflow | None:
    """Trace ``module``'s dataflow with one forward pass; ``None`` if no tried input runs.

    The module itself is not touched: the pass runs :func:`torch.func.functional_call` on meta
    copies of its tensors (or, if that fails, on its parameters and copies of its buffers, on CPU,
    without gradients). Its training/eval mode is kept.

    Args:
        module: The model.
        group_key: Names with the same non-``None`` key always share a node.
        example: The input to use (any device; it is moved to meta first); by default the inputs
            of :func:`example_inputs` are tried in turn.
    """
    state = module.state_dict(keep_vars=True)
    names = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    name_of = {id(v): k for k, v in state.items() if isinstance(v, torch.Tensor)}
    tensors = {k: v for k, v in module.named_parameters(remove_duplicate=False)}
    tensors.update(module.named_buffers(remove_duplicate=False))
    inputs = [example] if example is not None else example_inputs(module)
    buffers = dict(module.named_buffers(remove_duplicate=False))
    real = next(iter(tensors.values())).device if tensors else torch.device("cpu")
    for on_meta in (True, False):
        for x in inputs:
            if on_meta:
                swap = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
                x = x.to("meta")
            else:
                swap = {k: (v.detach().clone() if k in buffers else v) for k, v in tensors.items()}
                x = x.to(real) if x.device.type != "meta" else torch.rand(x.shape, device=real)
            ids = {id(swap[k]): name_of[id(v)] for k, v in tensors.items() if id(v) in name_of}
            tracer = _Tracer(ids)
            tracer.mark_input(x)
            try:
                with torch.no_grad(), _observers_off(module), tracer:
                    torch.func.functional_call(module, swap, (x,), strict=False, tie_weights=False)
            except Exception as exc:  # noqa: BLE001 - any failure means: try the next input
                where = "meta" if on_meta else real
                name = type(module).__name__
                logger.debug("tracing %s on %s %s failed: %s", name, where, tuple(x.shape), exc)
                continue
            if tracer.uses:
                return _build(names, tracer.uses, group_key)
    logger.info(
        "could not trace %s with inputs %s; transfer_parameters falls back to state-dict order",
        type(module).__name__,
        [tuple(x.shape) for x in inputs],
    )
    return None


__all__ = ["INPUT", "Dataflow", "example_inputs", "trace_dataflow"]
