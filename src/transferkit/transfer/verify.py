"""Check on a probe batch that the copied part of a target computes what it computed in the source.

A :class:`~transferkit.transfer.TransferReport` says which tensors moved; it cannot say whether the
copies still compute the source's function (a layer fed by a new one does not; two look-alike
models may differ in an activation, a pooling or the preprocessing). :func:`check_copied_function`
runs both models on one small batch and compares their outputs where the target holds an exact
copy of the source:

* both are :class:`~transferkit.models.TransferNet` s and every ``backbone.*`` tensor of the target
  was copied exactly from the source's backbone -> the backbone features;
* otherwise the deepest target layer that was copied exactly, one source tensor per target tensor,
  together with every layer upstream of it in the target's dataflow (a copied prefix) -> the
  output of that module and of the source module its tensors came from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from transferkit.errors import ConfigError
from transferkit.models.base import InputAdapter
from transferkit.transfer.dataflow import INPUT, Dataflow, _observers_off, example_inputs, trace_dataflow
from transferkit.transfer.parameters import TransferEntry, TransferReport, _group_key

logger = logging.getLogger(__name__)

#: Largest relative difference (max |target - source| / max |source|) accepted for outputs of
#: float32/float64 models: identical weights give identical outputs on one device up to the
#: rounding of a different summation order (~1e-6 relative for float32), far below 1e-4, while a
#: wrong or perturbed layer gives 1e-2 and more.
TOLERANCE = 1e-4
#: The same for float16/bfloat16 models (8-11 bits of mantissa).
TOLERANCE_HALF = 1e-2
#: Examples in the default probe batch, and the seed its values are drawn with.
PROBE_BATCH = 4
PROBE_TOKENS = 16
"""Length of a text model's probe texts (random token ids)."""
PROBE_SEED = 0


@dataclass
class ProbeCheck:
    """Whether the copied part of a target reproduces the source on a probe batch.

    Attributes:
        checked: Whether outputs were compared (``False``: see ``reason``).
        where: What was compared in the target: ``"backbone"`` (the features) or a module name.
        source_where: The same in the source.
        max_abs_diff: Largest absolute difference between target and source outputs.
        relative_diff: ``max_abs_diff / max |source output|`` (0 when both are 0).
        ok: Checked and ``relative_diff <= tolerance``.
        reason: What was compared, or why nothing was.
        tolerance: The relative difference accepted (:data:`TOLERANCE`, :data:`TOLERANCE_HALF`).
    """

    checked: bool
    where: str | None = None
    source_where: str | None = None
    max_abs_diff: float | None = None
    relative_diff: float | None = None
    ok: bool = False
    reason: str = ""
    tolerance: float = TOLERANCE

    def line(self) -> str:
        """One sentence for a report's headline."""
        if not self.checked:
            return f"the copied layers were not checked on a probe batch: {self.reason}"
        part = "backbone reproduces" if self.where == "backbone" else f"layers up to {self.where} reproduce"
        if self.ok:
            diff = f"max |diff| {self.max_abs_diff:.3g}"
            return f"a probe batch confirms the copied {part} the source's features ({diff})"
        at = "" if self.where == "backbone" else f"at {self.where}, "
        return (
            f"WARNING: the copied layers do NOT reproduce the source's features on a probe batch "
            f"({at}relative diff {self.relative_diff:.3g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields (a non-finite difference becomes ``None``; ``reason`` says why)."""
        d = asdict(self)
        for key in ("max_abs_diff", "relative_diff"):
            if d[key] is not None and not math.isfinite(d[key]):
                d[key] = None
        return d


class _Stop(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def check_copied_function(
    source: nn.Module | Mapping[str, torch.Tensor],
    target: nn.Module,
    report: TransferReport,
    probe: torch.Tensor | None = None,
    *,
    tolerance: float | None = None,
) -> ProbeCheck:
    """Run ``source`` and ``target`` on a probe batch and compare them where the target holds an
    exact copy of the source (see the module docstring); store the result in ``report.probe``.

    What is compared: the backbone features when both models are TransferNets and every target
    ``backbone.*`` tensor was copied exactly from the source's backbone (all of it); otherwise the
    output of the deepest target layer (a node of the target's traced dataflow) whose tensors were
    all copied exactly 1:1 (status ``"copied"``, one source tensor each, no fused or split copies)
    and whose upstream layers all were too, hooked on the smallest module holding its tensors, and
    of the source module holding their source tensors; either module must hold only such tensors.

    Nothing is compared (``checked=False``, with the reason) when the source is a state dict,
    nothing was copied exactly, the two models' input adapters differ (input size, mean/std,
    resizing or crop: they are not the same function), no copied prefix exists, the outputs differ
    in shape, or a forward pass fails.

    The probe is fed as raw input to each model (a TransferNet through its own input adapter; a
    model without one gets the other model's adapted input, or the raw probe if neither has one).
    Both models run in eval mode under ``torch.no_grad`` with their forward hooks off (layer taps
    record nothing); their train/eval modes are restored and no weight or buffer changes.

    Args:
        source: The model the weights came from (a state dict cannot be run).
        target: The model :func:`~transferkit.transfer.transfer_parameters` filled.
        report: Its report (``report.probe`` is set to the result).
        probe: Raw input batch; by default :data:`PROBE_BATCH` values uniform in ``[0, 1]``
            (seed :data:`PROBE_SEED`) of the target's ``info.input_size`` (else the source's, else
            the first input shape the target can be traced with).
        tolerance: Relative difference accepted; default :data:`TOLERANCE`
            (:data:`TOLERANCE_HALF` for 16-bit models).

    Returns:
        The :class:`ProbeCheck` (also in ``report.probe``).

    Raises:
        ConfigError: ``target`` is not a module, ``report`` is not a TransferReport of it, or
            ``probe`` is not a tensor.
    """
    if not isinstance(target, nn.Module):
        raise ConfigError(f"target must be a torch.nn.Module, got {type(target).__name__}")
    if not isinstance(report, TransferReport):
        raise ConfigError(
            f"report must be the TransferReport of transfer_parameters, got {type(report).__name__}"
        )
    names = {k for k, v in target.state_dict().items() if isinstance(v, torch.Tensor)}
    if {e.target_name for e in report.entries} != names:
        raise ConfigError(
            "report does not describe this target (its entries name other tensors); pass the report "
            "transfer_parameters returned for this target"
        )
    if probe is not None and not isinstance(probe, torch.Tensor):
        raise ConfigError(f"probe must be a tensor (a raw input batch) or None, got {type(probe).__name__}")
    if tolerance is None:
        tolerance = TOLERANCE_HALF if _dtype(target) in (torch.float16, torch.bfloat16) else TOLERANCE
    result = _check(source, target, report, probe, float(tolerance))
    logger.info("check_copied_function: %s", result.line())
    report.probe = result
    return result


def _check(
    source: nn.Module | Mapping[str, torch.Tensor],
    target: nn.Module,
    report: TransferReport,
    probe: torch.Tensor | None,
    tolerance: float,
) -> ProbeCheck:
    def skip(reason: str) -> ProbeCheck:
        return ProbeCheck(checked=False, reason=reason, tolerance=tolerance)

    if not isinstance(source, nn.Module):
        return skip(
            "the source is a state dict, which cannot be run; load it into a model of its architecture "
            "and check against that"
        )
    if not report.copied:
        return skip("nothing was copied exactly")
    pre_s, pre_t = _preprocessing(source), _preprocessing(target)
    if pre_s is not None and pre_t is not None and pre_s != pre_t:
        diff = [f"{k} {pre_s[k]} vs {pre_t[k]}" for k in pre_s if pre_s[k] != pre_t[k]]
        return skip(
            "the two models read their inputs differently (source vs target: " + "; ".join(diff) + "), "
            "so they are not the same function"
        )
    flow: Dataflow | None = None
    if probe is None:
        probe, flow = _default_probe(source, target)
        if probe is None:
            return skip("the target's input shape is unknown (no info.input_size) and it could not be traced")
    inputs = _inputs(source, target, probe)
    if isinstance(inputs, str):
        return skip(inputs)
    x_s, x_t = _to(source, inputs[0]), _to(target, inputs[1])
    by_target = {e.target_name: e for e in report.entries}
    if _backbone_copied(source, target, report):
        with _probing(source, target):
            out_t = _run("target", lambda: target.backbone(target.input_adapter(x_t)))
            out_s = _run("source", lambda: source.backbone(source.input_adapter(x_s)))
        if isinstance(out_t, _Failed) or isinstance(out_s, _Failed):
            return skip(str(out_t if isinstance(out_t, _Failed) else out_s))
        return _compare(out_s, out_t, "backbone", "backbone", tolerance, "the backbone features")
    if flow is None:
        flow = trace_dataflow(target, _group_key, probe)
    if flow is None:
        return skip("the target's dataflow could not be traced, so its copied prefix is unknown")
    found = _copied_prefix(source, target, by_target, flow)
    if isinstance(found, str):
        return skip(found)
    t_mod, s_mod = found
    with _probing(source, target):
        out_t = _run("target", lambda: _capture(target, t_mod, x_t))
        out_s = _run("source", lambda: _capture(source, s_mod, x_s))
    if isinstance(out_t, _Failed) or isinstance(out_s, _Failed):
        return skip(str(out_t if isinstance(out_t, _Failed) else out_s))
    what = (
        f"the outputs of target layer {t_mod or '(the model)'} and source layer {s_mod or '(the model)'} "
        "(the deepest layer copied exactly together with every layer before it)"
    )
    return _compare(out_s, out_t, t_mod, s_mod, tolerance, what)


def _compare(
    out_s: Any, out_t: Any, where: str, source_where: str, tolerance: float, what: str
) -> ProbeCheck:
    leaves_s = [t for t in tree_leaves(out_s) if isinstance(t, torch.Tensor)]
    leaves_t = [t for t in tree_leaves(out_t) if isinstance(t, torch.Tensor)]
    shapes_s, shapes_t = [tuple(t.shape) for t in leaves_s], [tuple(t.shape) for t in leaves_t]
    if not leaves_s or shapes_s != shapes_t:
        return ProbeCheck(
            False,
            where,
            source_where,
            reason=f"{what} differ in shape (source {shapes_s}, target {shapes_t})",
            tolerance=tolerance,
        )
    diff = scale = 0.0
    finite = True
    for a, b in zip(leaves_s, leaves_t, strict=True):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        finite = finite and bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())
        if a.numel() and finite:
            diff = max(diff, float((a - b).abs().max()))
            scale = max(scale, float(a.abs().max()))
    if not finite:  # NaN compares as neither larger nor smaller: never let it pass
        diff = rel = math.inf
    else:
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
    ok = rel <= tolerance
    n = leaves_s[0].shape[0] if leaves_s[0].dim() else 1
    found = f"relative diff {rel:.3g}" if finite else "non-finite values (NaN or inf)"
    return ProbeCheck(
        True,
        where,
        source_where,
        diff,
        rel,
        ok,
        f"compared {what} on a probe batch of {n}: {found} "
        f"({'within' if ok else 'above'} the tolerance {tolerance:g})",
        tolerance,
    )


def _preprocessing(model: nn.Module) -> dict[str, Any] | None:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:  # a text model: the same tokenizer makes the same ids
        from transferkit.data.tokens import tokenizer_key

        return {"tokenizer": tokenizer_key(tokenizer)}
    adapter = getattr(model, "input_adapter", None)
    if not isinstance(adapter, InputAdapter):
        return None
    keys = ("input_size", "mean", "std", "interpolation", "crop_pct")
    return {k: getattr(adapter, k) for k in keys}


def _default_probe(source: nn.Module, target: nn.Module) -> tuple[torch.Tensor | None, Dataflow | None]:
    """The default probe batch, and the target's dataflow when finding its shape needed a trace."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    tokenizer = getattr(target, "tokenizer", None)
    if tokenizer is not None:  # token ids of the vocabulary, all positions real
        return torch.randint(0, len(tokenizer), (PROBE_BATCH, PROBE_TOKENS), generator=g), None
    for model in (target, source):
        size = getattr(getattr(model, "info", None), "input_size", None)
        if size:
            return torch.rand(PROBE_BATCH, *size, generator=g), None
    for example in example_inputs(target):
        flow = trace_dataflow(target, _group_key, example)
        if flow is not None:
            return torch.rand(PROBE_BATCH, *example.shape[1:], generator=g), flow
    return None, None


def _inputs(
    source: nn.Module, target: nn.Module, probe: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | str:
    """The raw input for each model: the probe for a model with an input adapter, else the other
    model's adapted probe (or the probe itself when neither has an adapter); or why not."""
    has_s, has_t = (isinstance(getattr(m, "input_adapter", None), nn.Module) for m in (source, target))
    x_s = x_t = probe
    try:
        with torch.no_grad():
            if has_t and not has_s:
                x_s = target.input_adapter(probe)
            elif has_s and not has_t:
                x_t = source.input_adapter(probe)
    except Exception as exc:  # noqa: BLE001
        side = "target" if has_t else "source"
        return f"the probe {tuple(probe.shape)} does not pass the {side}'s input adapter: {exc}"
    return x_s, x_t


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _to(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the model's device, in its floating dtype when ``x`` is floating."""
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else x.device
    return x.to(device=device, dtype=_dtype(model)) if x.is_floating_point() else x.to(device)


@contextmanager
def _probing(*models: nn.Module) -> Iterator[None]:
    """Eval mode, no gradients, forward hooks off; modes restored afterwards."""
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        with torch.no_grad(), _observers_off(models[0]), _observers_off(models[1]):
            yield
    finally:
        for m, mode in saved:
            m.training = mode


class _Failed(str):
    """Why a forward pass failed (a string, so it can be the skip reason)."""


def _run(side: str, forward: Callable[[], Any]) -> Any:
    try:
        return forward()
    except Exception as exc:  # noqa: BLE001 - any failure: not checkable, say why
        return _Failed(f"the {side}'s forward pass on the probe failed: {type(exc).__name__}: {exc}")


def _capture(model: nn.Module, name: str, x: torch.Tensor) -> Any:
    """The output of submodule ``name`` when ``model`` runs on ``x`` (the pass stops there)."""
    out: dict[str, Any] = {}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        out["y"] = output
        raise _Stop

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "y" not in out:
        raise RuntimeError(f"the forward pass never called {name or 'the model'}")
    return out["y"]


def _sources(e: TransferEntry) -> list[str]:
    return (e.source_name or "").split(" + ") if e.source_name else []


def _backbone_copied(source: nn.Module, target: nn.Module, report: TransferReport) -> bool:
    """Both TransferNet-like, and the target's backbone holds exact copies of all the source's."""
    for model in (source, target):
        if not all(isinstance(getattr(model, k, None), nn.Module) for k in ("backbone", "input_adapter")):
            return False
    entries = [e for e in report.entries if (e.target_name or "").startswith("backbone.")]
    if not entries or any(e.status != "copied" for e in entries):
        return False
    used = {s for e in entries for s in _sources(e)}
    wanted = {"backbone." + k for k, v in source.backbone.state_dict().items() if isinstance(v, torch.Tensor)}
    return used == wanted


def _module(names: list[str]) -> str:
    """The smallest module holding all these tensors (longest common dotted prefix of their modules)."""
    parts = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _copied_prefix(
    source: nn.Module, target: nn.Module, by_target: dict[str | None, TransferEntry], flow: Dataflow
) -> tuple[str, str] | str:
    """(target module, source module) at the deepest layer of the copied prefix, or why none."""
    split = {}
    for e in by_target.values():
        for s in _sources(e):
            split[s] = split.get(s, 0) + 1

    def one_to_one(name: str) -> bool:
        e = by_target.get(name)
        return e is not None and e.status == "copied" and len(_sources(e)) == 1 and split[e.source_name] == 1

    members: dict[str, list[str]] = {}
    for name, node in flow.node.items():
        if node in flow.first_use:
            members.setdefault(node, []).append(name)
    order = flow.forward_order()
    in_prefix: dict[str, bool] = {}
    for node in order:
        in_prefix[node] = all(one_to_one(n) for n in members[node]) and all(
            p == INPUT or in_prefix.get(p, False) for p in flow.preds.get(node, ())
        )
    if not any(in_prefix.values()):
        first = next(n for n in order if not in_prefix[n])
        statuses = {by_target[n].status for n in members[first]}
        if statuses == {"copied"}:
            what = "copied from fused or split tensors, not 1:1"
        elif len(statuses) == 1:
            what = {"new": "new", "partial": "a partial copy"}[statuses.pop()]
        else:
            what = f"only partly copied: {' and '.join(sorted(statuses))} tensors"
        return (
            f"no layer was copied exactly together with every layer before it (the first layer, "
            f"{_module(members[first]) or first}, is {what})"
        )
    prefix_tensors = {n for node, ok in in_prefix.items() if ok for n in members[node]}
    s_state = source.state_dict()
    t_state = target.state_dict()
    for node in reversed(order):
        if not in_prefix[node]:
            continue
        t_mod = _module(members[node])
        inside = [k for k in t_state if not t_mod or k.startswith(t_mod + ".")]
        unused = {k for k in inside if flow.node.get(k) not in flow.first_use}
        if not all(k in prefix_tensors or (k in unused and one_to_one(k)) for k in inside):
            continue
        s_names = [by_target[n].source_name for n in members[node]]
        s_mod = _module([s for s in s_names if s])
        s_inside = {k for k in s_state if not s_mod or k.startswith(s_mod + ".")}
        if s_inside != {by_target[k].source_name for k in inside}:
            continue
        try:
            target.get_submodule(t_mod)
            source.get_submodule(s_mod)
        except AttributeError:
            continue
        return t_mod, s_mod
    return "no module holds exactly the layers copied exactly at the end of the copied prefix"


__all__ = ["PROBE_BATCH", "PROBE_SEED", "TOLERANCE", "TOLERANCE_HALF", "ProbeCheck", "check_copied_function"]
