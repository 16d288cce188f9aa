"""Function-preserving growth: make a layer wider or insert an identity layer (Net2Net).

Chen, Goodfellow & Shlens (2016), "Net2Net: Accelerating Learning via Knowledge Transfer":

* :func:`widen` (Net2WiderNet) gives a ``Linear``/``Conv2d`` more output units by replicating
  randomly chosen existing units and dividing the consumer's incoming weights of every replicated
  unit by its replication count, so the grown network computes the same function;
* :func:`deepen` (Net2DeeperNet) inserts an identity-initialised ``Linear``/``Conv2d`` (+ optional
  BatchNorm) + ReLU block after a block whose output is non-negative.

Both return a NEW model (a deep copy; the input is untouched) with a :class:`GrowthReport` attached
as ``model.growth_report``, holding the measured output difference on a probe batch.

How "the next layer" is found: the model is run once (eval mode, no gradients) on a probe batch with
forward hooks on every leaf module, which gives the leaf modules in execution order. Starting at the
widened layer, the following leaves must form a straight chain (each one's input is the previous
one's output tensor) of elementwise activations, dropout, pooling, ``Flatten`` and BatchNorm up to
the first ``Linear``/``Conv2d``, the consumer. Limits: tensor ops written in a ``forward`` between
modules (``x + y``, ``torch.cat``, ``view``) are not seen by hooks: a chain broken by them is
refused, but a *second* use of the widened output (a residual connection) is not detected and would
make the result wrong; only ``groups=1`` convolutions are handled; a module called twice is refused.
"""

from __future__ import annotations

import copy
import difflib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError, ShapeError, UnknownNameError

logger = logging.getLogger(__name__)

# Largest output change (relative to the output's scale, when that is > 1) a growth step without
# noise may show on its probe batch; float32 round-off is far below it.
PRESERVE_TOL = 1e-4

#: Modules applied per element: they keep replicated units identical.
ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
)  # fmt: skip
#: Modules applied per channel of a (N, C, H, W) map.
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
#: Modules whose output is never negative (for :func:`deepen` with a ReLU).
NONNEGATIVE = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid)
#: Modules that keep a non-negative input non-negative.
SIGN_KEEPING = (*POOLS, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten, nn.Identity)
#: Activations :func:`deepen` can insert: each is the identity on its input's range.
DEEPEN_ACTIVATIONS = ("relu", "leaky_relu", "identity")


@dataclass
class GrowthReport:
    """What :func:`widen` or :func:`deepen` did, and how far the function moved.

    Attributes:
        operation: ``"widen"`` or ``"deepen"``.
        layer: The widened layer's name, or the block the new layer was inserted after.
        old_width: Units before (for deepen: the width of the inserted layer).
        new_width: Units after.
        consumer: Name of the layer whose inputs were rescaled (widen), or of the inserted block.
        batchnorms: BatchNorm layers that were extended (widen).
        replicated: For widen, the source unit of each new unit ``old_width .. new_width - 1``.
        noise: Relative std of the noise added to the copies (widen).
        max_abs_diff: Max ``|new(x) - old(x)|`` over the probe batch, both models in eval mode
            (a measured bound on this batch, not a guarantee on other inputs; ~1e-7 without noise).
        probe_shape: Shape of the probe batch.
        info_updated: Whether the step was appended to ``model.info.growth`` (so
            :func:`transferkit.models.load_model` rebuilds the grown architecture).
    """

    operation: str
    layer: str
    old_width: int
    new_width: int
    consumer: str
    batchnorms: list[str] = field(default_factory=list)
    replicated: list[int] = field(default_factory=list)
    noise: float = 0.0
    max_abs_diff: float = 0.0
    probe_shape: tuple[int, ...] = ()
    info_updated: bool = False


@dataclass
class _Call:
    name: str
    module: nn.Module
    inp: Any
    out: Any


def widen(
    model: nn.Module,
    layer: str,
    new_width: int,
    *,
    noise: float = 0.0,
    seed: int = 0,
    example: torch.Tensor | None = None,
) -> nn.Module:
    """Net2WiderNet: a copy of ``model`` whose ``layer`` has ``new_width`` output units.

    Unit ``j >= n`` of the widened layer copies the weights (and bias) of a random existing unit
    ``g(j)``; BatchNorms between the layer and its consumer are extended the same way (weight, bias,
    running mean and var); the consumer's incoming weights of every unit ``i`` are divided by the
    number of units that copy ``i`` (itself included). For ``Conv2d -> pool -> Flatten -> Linear``
    each channel is a contiguous group of ``H*W`` flattened inputs, treated as one unit. In train
    mode BatchNorm's batch statistics of replicated channels are identical, so it matches too.

    ``model.info`` keeps its ``arch`` and ``kwargs``; the step
    ``{"op": "widen", "layer", "new_width", "noise", "seed"}`` is appended to ``info.growth``, which
    :func:`transferkit.models.load_model` replays to rebuild the grown structure. If the consumer is
    the head, ``info.feature_dim`` becomes ``new_width``.

    Args:
        model: Any module (a :class:`~transferkit.models.TransferNet` needs no ``example``).
        layer: A ``Linear``/``Conv2d`` name from ``named_modules()`` (``"backbone.conv1.0"``), or a
            block holding exactly one (``"backbone.conv1"``).
        new_width: Output units after growth; must exceed the current width ``n``.
        noise: Adds ``N(0, (noise * std(W))^2)`` to the copies' weights to break symmetry; then the
            function changes and ``growth_report.max_abs_diff`` says by how much on the probe.
        seed: Seed of the unit choice and the noise.
        example: Probe input batch ``(N, *input_shape)`` for tracing and measuring; defaults to 8
            uniform ``[0, 1)`` examples of ``model.info.input_size``.

    Returns:
        The grown model (same device/dtype), with ``growth_report`` (:class:`GrowthReport`).

    Raises:
        UnknownNameError: ``layer`` is not a submodule (close names are suggested).
        ConfigError: bad ``new_width``/``noise``, ``layer`` holds no or several Linear/Conv2d, or its
            output is the model's output (nothing consumes it).
        ShapeError: something other than elementwise ops, pooling, Flatten or BatchNorm sits between
            the layer and its consumer, or a grouped convolution is involved.
    """
    modules = dict(model.named_modules())
    name = _resolve_layer(modules, layer)
    target = modules[name]
    n = target.out_features if isinstance(target, nn.Linear) else target.out_channels
    if isinstance(new_width, bool) or not isinstance(new_width, int) or new_width <= n:
        raise ConfigError(
            f"new_width must be an integer larger than {name!r}'s current width {n}, got "
            f"{new_width!r}; widen only grows layers (to shrink, build a narrower model and "
            "distill into it)"
        )
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not noise >= 0:
        raise ConfigError(f"noise must be a number >= 0, got {noise!r}")
    if isinstance(target, nn.Conv2d) and target.groups != 1:
        raise ShapeError(
            f"{name!r} is a grouped convolution (groups={target.groups}); widen handles only "
            "groups=1: pick another layer"
        )

    new = copy.deepcopy(model)
    target = new.get_submodule(name)
    modes = {m: m.training for m in new.modules()}
    new.eval()
    probe = _probe(new, example, seed)
    calls, ref = _trace(new, probe)
    idx = _single_call(calls, name)
    consumer, bns, group, ndim = _find_consumer(calls, idx, new)
    cons_mod = consumer.module
    if isinstance(cons_mod, nn.Conv2d) and (cons_mod.groups != 1 or group != 1 or ndim != 4):
        raise ShapeError(
            f"the consumer {consumer.name!r} of {name!r} is a grouped convolution or gets a "
            "flattened input; widen cannot rescale its inputs: pick another layer"
        )
    if isinstance(cons_mod, nn.Linear) and (ndim != 2 or cons_mod.in_features != n * group):
        raise ShapeError(
            f"the consumer {consumer.name!r} of {name!r} takes {cons_mod.in_features} features "
            f"from a {ndim}-D tensor, not {n} units x {group}; widen cannot preserve the function"
        )

    gen = torch.Generator().manual_seed(int(seed))
    g_new = torch.randint(0, n, (new_width - n,), generator=gen)
    g = torch.cat([torch.arange(n), g_new])
    counts = torch.bincount(g, minlength=n)

    with torch.no_grad():
        w = target.weight
        w_new = w[g.to(w.device)].clone()
        if noise > 0:
            eps = torch.randn(w_new[n:].shape, generator=gen).to(w.device, w.dtype)
            w_new[n:] += eps * float(noise) * w.std()
        target.weight = nn.Parameter(w_new, requires_grad=w.requires_grad)
        if target.bias is not None:
            b = target.bias
            target.bias = nn.Parameter(b[g.to(b.device)].clone(), requires_grad=b.requires_grad)
        if isinstance(target, nn.Linear):
            target.out_features = new_width
        else:
            target.out_channels = new_width
        for call, grp in bns:
            _extend_batchnorm(call.module, _expand(g, grp))
        cw = cons_mod.weight
        cols = _expand(g, group).to(cw.device)
        scale = counts[g].repeat_interleave(group).to(cw.device, cw.dtype)
        shape = (1, -1) + (1,) * (cw.ndim - 2)
        cons_mod.weight = nn.Parameter(cw[:, cols] / scale.view(shape), requires_grad=cw.requires_grad)
        if isinstance(cons_mod, nn.Linear):
            cons_mod.in_features = new_width * group
        else:
            cons_mod.in_channels = new_width

    info = getattr(new, "info", None)
    if info is not None and consumer.name == "head":
        info.feature_dim = new_width
    step = {"op": "widen", "layer": name, "new_width": int(new_width), "noise": float(noise),
            "seed": int(seed)}  # fmt: skip
    info_updated = _record(new, step)
    diff = _diff(new, probe, ref)
    for m, mode in modes.items():
        m.training = mode
    if noise == 0:
        _check_preserved(diff, ref, f"widening {name!r}")
    new.growth_report = GrowthReport(
        operation="widen",
        layer=name,
        old_width=n,
        new_width=new_width,
        consumer=consumer.name,
        batchnorms=[c.name for c, _ in bns],
        replicated=g_new.tolist(),
        noise=float(noise),
        max_abs_diff=diff,
        probe_shape=tuple(probe.shape),
        info_updated=info_updated,
    )
    logger.info("widened %s from %d to %d units (max |diff| %.3g)", name, n, new_width, diff)
    return new


def deepen(
    model: nn.Module,
    after: str,
    *,
    activation: str = "relu",
    batchnorm: bool | None = None,
    data: torch.Tensor | None = None,
    example: torch.Tensor | None = None,
) -> nn.Module:
    """Net2DeeperNet: a copy of ``model`` with an identity-initialised block after ``after``.

    For a ``(N, d)`` output the block is ``Linear(d, d)`` (identity weight, zero bias); for a
    ``(N, C, H, W)`` output it is ``Conv2d(C, C, 3, padding=1)`` (Dirac kernel, zero bias); then an
    optional BatchNorm and the activation. ``ReLU(I x) = x`` only for ``x >= 0``, so with ``"relu"``
    (or ``"leaky_relu"``) ``after`` must end in a non-negative activation (ReLU, sigmoid, ... possibly
    followed by pooling/dropout/flatten), checked from the module structure. ``"identity"`` inserts
    no activation and takes any input.

    The BatchNorm is the identity in **eval** mode: ``weight = sqrt(running_var + eps)``,
    ``bias = running_mean``, with running stats the per-channel mean and (biased) variance of
    ``after``'s output on ``data`` (computed in eval mode), or 0 and 1 without ``data``. In **train**
    mode BatchNorm normalises by batch statistics, so it is the identity only on a batch with those
    statistics (the batch ``data`` itself, if nothing before ``after`` behaves differently in train
    mode); training also moves the running stats.

    The block (``nn.Sequential``) goes into the ``nn.Sequential`` holding ``after``, right after
    it, named ``"<after's last name part>_deep<k>"`` (e.g. ``backbone.fc1_deep1``), so
    ``backbone_blocks`` lists it as a block when ``after`` is one. ``model.info`` keeps its
    ``arch``/``kwargs`` and gets ``{"op": "deepen", "after", "activation", "batchnorm"}`` appended
    to ``info.growth``, which :func:`transferkit.models.load_model` replays.

    Args:
        model: Any module (a :class:`~transferkit.models.TransferNet` needs no ``example``).
        after: Name of a module/block whose parent is an ``nn.Sequential``.
        activation: ``"relu"``, ``"leaky_relu"`` or ``"identity"``.
        batchnorm: Add a BatchNorm; ``None`` adds one when ``after`` contains a BatchNorm.
        data: Raw input batch ``(N, *input_shape)`` to estimate the BatchNorm's running stats.
        example: Probe batch for tracing and measuring; defaults to ``data``, else 8 uniform
            ``[0, 1)`` examples of ``model.info.input_size``.

    Returns:
        The deeper model with ``growth_report`` (:class:`GrowthReport`).

    Raises:
        UnknownNameError: ``after`` is not a submodule (close names are suggested).
        ConfigError: the activation is not the identity on its input (``"tanh"``, ``"gelu"``, ...),
            ``after``'s output can be negative, or ``after`` is not inside an ``nn.Sequential``.
        ShapeError: ``after``'s output is neither ``(N, d)`` nor ``(N, C, H, W)``.
    """
    if activation not in DEEPEN_ACTIVATIONS:
        raise ConfigError(
            f"activation {activation!r} cannot start as the identity: an identity-initialised "
            f"layer followed by {activation!r} computes {activation}(x) != x, so the function "
            f"would change; use one of {', '.join(DEEPEN_ACTIVATIONS)} (piecewise linear with "
            "slope 1 on the input's range)"
        )
    modules = dict(model.named_modules())
    if after not in modules or after == "":
        raise _unknown(after, [k for k in modules if k])
    parent_name, _, leaf = after.rpartition(".")
    parent = modules[parent_name] if parent_name else model
    if not isinstance(parent, nn.Sequential):
        raise ConfigError(
            f"{after!r} sits in a {type(parent).__name__}, not an nn.Sequential, so there is no "
            "'next position' to insert into; pick a block of the backbone (e.g. 'backbone.fc1')"
        )
    block = modules[after]
    if activation != "identity" and not _nonnegative(block):
        raise ConfigError(
            f"the output of {after!r} ({type(block).__name__}) can be negative, but ReLU(I x) = x "
            "only for x >= 0, so an identity layer + ReLU would change the function; insert "
            "after a block that ends in a ReLU, or pass activation='identity'"
        )
    if batchnorm is None:
        batchnorm = any(isinstance(m, BATCHNORMS) for m in block.modules())

    new = copy.deepcopy(model)
    modes = {m: m.training for m in new.modules()}
    new.eval()
    probe = _probe(new, example if example is not None else data, 0)
    calls, ref = _trace(new, probe, only=after)
    out = calls[_single_call(calls, after)].out
    if not isinstance(out, torch.Tensor) or out.ndim not in (2, 4):
        raise ShapeError(
            f"{after!r} outputs {getattr(out, 'shape', type(out).__name__)}; deepen needs "
            "(N, d) or (N, C, H, W)"
        )
    width = int(out.shape[1])
    if out.ndim == 2:
        layer: nn.Module = nn.Linear(width, width)
        nn.init.eye_(layer.weight)
    else:
        layer = nn.Conv2d(width, width, 3, padding=1)
        nn.init.dirac_(layer.weight)
    nn.init.zeros_(layer.bias)
    parts = [layer]
    if batchnorm:
        bn = (nn.BatchNorm1d if out.ndim == 2 else nn.BatchNorm2d)(width)
        if data is not None:
            x = _trace(new, data.to(out.device, out.dtype), only=after)[0][0].out
            dims = (0,) if x.ndim == 2 else (0, 2, 3)
            bn.running_mean.copy_(x.mean(dims))
            bn.running_var.copy_(x.var(dims, unbiased=False))
        with torch.no_grad():
            bn.weight.copy_(torch.sqrt(bn.running_var + bn.eps))
            bn.bias.copy_(bn.running_mean)
        parts.append(bn)
    if activation == "relu":
        parts.append(nn.ReLU())
    elif activation == "leaky_relu":
        parts.append(nn.LeakyReLU())
    inserted = nn.Sequential(*parts).to(device=out.device, dtype=out.dtype).eval()

    new_parent = new.get_submodule(parent_name) if parent_name else new
    k = 1
    while f"{leaf}_deep{k}" in new_parent._modules:
        k += 1
    block_name = f"{leaf}_deep{k}"
    items = list(new_parent._modules.items())
    pos = [key for key, _ in items].index(leaf) + 1
    items.insert(pos, (block_name, inserted))
    new_parent._modules.clear()
    new_parent._modules.update(items)

    full = f"{parent_name}.{block_name}" if parent_name else block_name
    step = {"op": "deepen", "after": after, "activation": activation, "batchnorm": bool(batchnorm)}
    info_updated = _record(new, step)
    diff = _diff(new, probe, ref)
    for m, mode in modes.items():
        m.training = mode
    inserted.train(modes[new_parent])
    _check_preserved(diff, ref, f"deepening after {after!r}")
    new.growth_report = GrowthReport(
        operation="deepen",
        layer=after,
        old_width=width,
        new_width=width,
        consumer=full,
        max_abs_diff=diff,
        probe_shape=tuple(probe.shape),
        info_updated=info_updated,
    )
    logger.info("inserted identity block %s after %s (max |diff| %.3g)", full, after, diff)
    return new


def apply_growth(model: nn.Module, steps: list[dict[str, Any]]) -> nn.Module:
    """Replay recorded growth steps (``info.growth``) on a model, in order.

    Widening is replayed without noise and deepening without data: the structure (module names,
    tensor shapes) is exactly the recorded one, the values are not (load the weights afterwards).

    Args:
        model: The model the steps were first applied to, rebuilt (same arch and kwargs).
        steps: Dicts as :func:`widen`/:func:`deepen` append to ``model.info.growth``.

    Returns:
        The grown model (a new object; ``model`` is untouched), its ``info.growth`` extended by
        the steps.

    Raises:
        ConfigError: a step is not a dict with a known ``"op"`` and its arguments, or no longer
            applies to the model (the message names the step).
    """
    for k, step in enumerate(steps):
        if not isinstance(step, dict) or step.get("op") not in ("widen", "deepen"):
            raise ConfigError(
                f"growth step {k} {step!r} is not a dict with op 'widen' or 'deepen'; fix or remove "
                "it from the model's config.json \"growth\" list"
            )
        try:
            if step["op"] == "widen":
                model = widen(model, step["layer"], step["new_width"], seed=int(step.get("seed", 0)))
            else:
                model = deepen(
                    model,
                    step["after"],
                    activation=step.get("activation", "relu"),
                    batchnorm=step.get("batchnorm"),
                )
        except KeyError as exc:
            raise ConfigError(f"growth step {k} {step!r} lacks {exc}; fix config.json") from None
        except (ConfigError, ShapeError, UnknownNameError) as exc:
            raise ConfigError(f"cannot replay growth step {k} {step!r}: {exc}") from exc
    return model


def _unknown(name: str, known: list[str]) -> UnknownNameError:
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return UnknownNameError(
        f"model has no layer {name!r}.{hint} Names are those of model.named_modules() "
        "(see transferkit.models.list_layers(model))"
    )


def _resolve_layer(modules: dict[str, nn.Module], layer: str) -> str:
    if layer not in modules or layer == "":
        raise _unknown(layer, [k for k in modules if k])
    mod = modules[layer]
    if isinstance(mod, (nn.Linear, nn.Conv2d)):
        return layer
    inner = [f"{layer}.{k}" for k, m in mod.named_modules() if k and isinstance(m, (nn.Linear, nn.Conv2d))]
    if len(inner) != 1:
        found = f"several: {', '.join(inner)}" if inner else "none"
        raise ConfigError(
            f"{layer!r} ({type(mod).__name__}) must be, or hold exactly one, nn.Linear/nn.Conv2d "
            f"to widen; it holds {found}: name the layer itself"
        )
    return inner[0]


def _probe(model: nn.Module, example: torch.Tensor | None, seed: int) -> torch.Tensor:
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    if example is not None:
        if not isinstance(example, torch.Tensor) or example.ndim < 1 or len(example) == 0:
            raise ConfigError(f"example/data must be a non-empty tensor batch, got {example!r}")
        return example.to(device)
    size = getattr(getattr(model, "info", None), "input_size", None)
    if not size:
        raise ConfigError(
            "cannot make a probe input for a model without info.input_size; pass example= "
            "(a small input batch)"
        )
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(8, *size, generator=gen).to(device, dtype)


@torch.no_grad()
def _trace(model: nn.Module, x: torch.Tensor, only: str | None = None) -> tuple[list[_Call], Any]:
    """Leaf modules (or just ``only``) in execution order with their input/output tensors."""
    calls: list[_Call] = []

    def hook(name: str):
        def record(mod: nn.Module, inputs: tuple, output: Any) -> None:
            calls.append(_Call(name, mod, inputs[0] if inputs else None, output))

        return record

    if only is not None:
        targets = [(only, model.get_submodule(only))]
    else:  # leaf modules
        targets = [(n, m) for n, m in model.named_modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook(n)) for n, m in targets]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return calls, out


def _single_call(calls: list[_Call], name: str) -> int:
    idx = [i for i, c in enumerate(calls) if c.name == name]
    if len(idx) != 1:
        raise ShapeError(
            f"{name!r} ran {len(idx)} times in one forward pass (expected once); a layer that is "
            "skipped or shared cannot be grown function-preservingly"
        )
    return idx[0]


def _find_consumer(
    calls: list[_Call], idx: int, model: nn.Module
) -> tuple[_Call, list[tuple[_Call, int]], int, int]:
    """Walk the chain after ``calls[idx]``: (consumer, [(batchnorm, group)], group, ndim)."""
    start = calls[idx]
    prev = start.out
    group, bns = 1, []
    for call in calls[idx + 1 :]:
        mod = call.module
        if call.inp is not prev:
            raise ShapeError(
                f"{call.name!r} ({type(mod).__name__}) does not take the output of the module "
                f"before it, so the path from {start.name!r} to its consumer is not a straight "
                "chain of modules (tensor ops in forward?); widen cannot preserve the function"
            )
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            return call, bns, group, prev.ndim
        if isinstance(mod, BATCHNORMS):
            bns.append((call, group))
        elif isinstance(mod, nn.Flatten) and prev.ndim == 4 and call.out.ndim == 2 and group == 1:
            group = int(prev.shape[2] * prev.shape[3])
        elif isinstance(mod, POOLS) and prev.ndim == 4 and group == 1:
            pass
        elif isinstance(mod, ELEMENTWISE) or (isinstance(mod, nn.PReLU) and mod.num_parameters == 1):
            pass
        else:
            raise ShapeError(
                f"{call.name!r} ({type(mod).__name__}) sits between {start.name!r} and the next "
                "Linear/Conv2d; widen preserves the function only through elementwise "
                "activations, dropout, pooling, Flatten and BatchNorm: pick another layer"
            )
        prev = call.out
    raise ConfigError(
        f"nothing consumes the output of {start.name!r}: it is the model's output, and widening "
        "it would change the output size; widen a hidden layer instead"
    )


def _expand(g: torch.Tensor, group: int) -> torch.Tensor:
    """Source feature index of each new feature when every unit spans ``group`` features."""
    return (g[:, None] * group + torch.arange(group)).reshape(-1)


def _extend_batchnorm(bn: nn.Module, index: torch.Tensor) -> None:
    for key in ("weight", "bias"):
        p = getattr(bn, key)
        if p is not None:
            setattr(bn, key, nn.Parameter(p[index.to(p.device)].clone(), p.requires_grad))
    for key in ("running_mean", "running_var"):
        buf = getattr(bn, key)
        if buf is not None:
            setattr(bn, key, buf[index.to(buf.device)].clone())
    bn.num_features = len(index)


def _record(model: nn.Module, step: dict[str, Any]) -> bool:
    """Append ``step`` to ``model.info.growth`` (if the model has a ModelInfo); whether it did."""
    info = getattr(model, "info", None)
    growth = getattr(info, "growth", None)
    if not isinstance(growth, list):
        return False
    growth.append(step)
    return True


@torch.no_grad()
def _diff(model: nn.Module, probe: torch.Tensor, ref: Any) -> float:
    out = model(probe)
    if not isinstance(out, torch.Tensor) or not isinstance(ref, torch.Tensor):
        return float("nan")
    if out.shape != ref.shape:
        return float("inf")
    return float((out - ref).abs().max()) if out.numel() else 0.0


def _check_preserved(diff: float, ref: Any, what: str) -> None:
    """Refuse a growth step whose measured output change exceeds float tolerance.

    The tracing sees only the chain from the grown layer to its consumer; a model that uses the
    layer's output elsewhere (a residual connection or a sum inside a custom ``forward``) would be
    changed silently. The probe catches that, whatever the cause.
    """
    scale = float(ref.abs().max()) if isinstance(ref, torch.Tensor) and ref.numel() else 1.0
    if not diff <= PRESERVE_TOL * max(1.0, scale):
        raise ShapeError(
            f"{what} changed the model's output by {diff:.3g} on the probe batch (tolerance "
            f"{PRESERVE_TOL:g}): the model uses this layer's output outside the traced chain (for "
            "example a residual connection or a sum in a custom forward), so the function cannot "
            "be preserved; grow another layer or restructure the model as nn.Sequential blocks"
        )


def _nonnegative(module: nn.Module) -> bool:
    """Whether ``module``'s output is >= 0 for every input, judged from its structure."""
    if isinstance(module, NONNEGATIVE):
        return True
    if isinstance(module, nn.Sequential):
        for child in reversed(list(module.children())):
            if isinstance(child, SIGN_KEEPING):
                continue
            return _nonnegative(child)
    return False


__all__ = ["GrowthReport", "apply_growth", "deepen", "widen"]
