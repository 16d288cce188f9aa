"""Copy weights from a source model (or state dict) into a target model, and report what moved.

:func:`transfer_parameters` matches source tensors to target tensors in three stages (by name, by
name suffix, by structure: layer order from a traced dataflow, :mod:`transferkit.transfer.dataflow`),
converts layouts where two implementations differ (reshapes, fused <-> separate query/key/value,
resized position embeddings, stems for another channel count: :mod:`transferkit.transfer.layouts`),
copies every matched tensor in place and returns a :class:`TransferReport` with one entry per
target tensor, so a partial load is never silent (the timm convention: report the reason for every
tensor that was not loaded). A copy whose layer reads a layer that was not copied exactly is flagged
(:attr:`TransferEntry.upstream_new`, counted in the summary and the headline);
:func:`transferkit.transfer.check_copied_function` (:mod:`transferkit.transfer.verify`) then checks
on a probe batch that the copied part computes what it computed in the source.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from transferkit.errors import CheckpointError, ConfigError
from transferkit.transfer.dataflow import INPUT, Dataflow, trace_dataflow
from transferkit.transfer.layouts import adapt_input_channels, reshape_compatible, resize_position_embedding
from transferkit.transfer.vocabulary import token_row_map

if TYPE_CHECKING:
    from transferkit.transfer.verify import ProbeCheck

logger = logging.getLogger(__name__)

Status = Literal["copied", "partial", "new", "unused"]
Stage = Literal["name", "suffix", "structure"]

STAGES: tuple[str, ...] = ("name", "suffix", "structure")
SHAPE_POLICIES: tuple[str, ...] = ("slice", "skip")
#: Prefixes that wrappers put in front of state-dict names (DDP, torch.compile, Lightning, ...).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "model.", "backbone.", "base_model.")
#: Last name components treated as their own "kind" when aligning by structure.
KNOWN_KINDS: frozenset[str] = frozenset(
    {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
)
#: Last name components of buffers, used to drop buffers from a plain state dict when
#: ``include_buffers=False`` (a mapping does not say which entries are parameters).
BUFFER_KINDS: frozenset[str] = frozenset({"running_mean", "running_var", "num_batches_tracked"})


@dataclass
class TransferEntry:
    """What happened to one tensor.

    In :attr:`TransferReport.entries` there is one entry per target tensor; in
    :attr:`TransferReport.unused` one per source tensor that was not copied (``status="unused"``,
    ``target_name`` is the target it was paired with but not copied into, else ``None``).

    Attributes:
        target_name: State-dict name in the target (``None`` for an unused source tensor).
        source_name: State-dict name in the source the values came from, or ``None`` (the names of
            fused source tensors joined with ``" + "``).
        status: ``"copied"`` (whole tensor, possibly reshaped, fused or split), ``"partial"``
            (overlapping slice, or an adapted copy: resized position embedding, stem for another
            channel count), ``"new"`` (target keeps its own values) or ``"unused"`` (source tensor
            not copied anywhere).
        stage: Matching stage that paired the tensors (``"name"``, ``"suffix"``, ``"structure"``)
            or ``None``.
        target_shape: Shape of the target tensor (``None`` for an unused source tensor).
        source_shape: Shape of the source tensor, or ``None``.
        reason: Human-readable explanation (what slice was copied, why nothing was).
        is_parameter: Whether the tensor (the target's; the source's for unused entries) is a
            parameter rather than a buffer.
        numel_transferred: Number of target elements overwritten with source values.
        upstream_new: For a copied or partial target tensor: the nearest target layers upstream
            of its op in the target's dataflow (read directly, or through layers copied exactly)
            that were not copied exactly: they stayed ``"new"`` or hold partial (sliced, adapted)
            copies, so this copy does not see the inputs it was trained on. Module names, in
            forward order; empty when there are none or the target could not be traced. Layers
            left new on purpose (``exclude`` patterns, buffers with ``include_buffers=False``) do
            not count.
    """

    target_name: str | None
    source_name: str | None
    status: Status
    stage: Stage | None
    target_shape: tuple[int, ...] | None
    source_shape: tuple[int, ...] | None
    reason: str
    is_parameter: bool = True
    numel_transferred: int = 0
    upstream_new: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("target_shape", "source_shape"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


@dataclass
class TransferReport:
    """Result of :func:`transfer_parameters`.

    Attributes:
        entries: One entry per target tensor, in target state-dict order.
        unused: Source tensors that were not copied anywhere, with the reason.
        probe: Whether the copied part reproduces the source's features on a probe batch, set by
            :func:`transferkit.transfer.check_copied_function` (``None``: not run).
    """

    entries: list[TransferEntry] = field(default_factory=list)
    unused: list[TransferEntry] = field(default_factory=list)
    probe: ProbeCheck | None = None

    @property
    def copied(self) -> list[TransferEntry]:
        """Target tensors that received the whole source tensor."""
        return [e for e in self.entries if e.status == "copied"]

    @property
    def partial(self) -> list[TransferEntry]:
        """Target tensors that received an overlapping slice of a differently-shaped source, or an
        adapted copy of it (resized position embedding, stem for another channel count)."""
        return [e for e in self.entries if e.status == "partial"]

    @property
    def new(self) -> list[TransferEntry]:
        """Target tensors that kept their own values."""
        return [e for e in self.entries if e.status == "new"]

    def summary(self) -> dict[str, Any]:
        """Counts and the fraction of target parameter elements that now hold source values.

        Returns:
            ``{"copied", "partial", "new", "unused", "target_tensors", "by_stage",
            "params_transferred", "params_total", "fraction_params_transferred",
            "params_copied_exactly", "fraction_params_copied_exactly",
            "fraction_backbone_copied_exactly", "params_behind_new", "fraction_params_behind_new",
            "probe"}``. The fractions count parameters only (not buffers); they are ``0.0`` for a
            target without parameters. "Transferred" includes partial (sliced) copies, "copied
            exactly" only whole tensors; the backbone fraction is over a TransferNet's
            ``backbone.*`` parameters (``None`` for other targets). ``params_behind_new`` counts
            the parameters copied exactly whose layer reads, directly or through other copies, a
            layer that was not copied exactly (:attr:`TransferEntry.upstream_new`);
            ``fraction_params_behind_new`` is their share of the parameters copied exactly (``0.0``
            when none were). ``probe`` is :attr:`probe` as a dict, or ``None``.
        """
        by_stage: dict[str, int] = {s: 0 for s in STAGES}
        for e in self.entries:
            if e.status in ("copied", "partial") and e.stage is not None:
                by_stage[e.stage] += 1
        params = [e for e in self.entries if e.is_parameter]
        total = sum(math.prod(e.target_shape or ()) for e in params)
        moved = sum(e.numel_transferred for e in params)
        exact = sum(e.numel_transferred for e in params if e.status == "copied")
        backbone = [e for e in params if (e.target_name or "").startswith("backbone.")]
        backbone_total = sum(math.prod(e.target_shape or ()) for e in backbone)
        backbone_exact = sum(e.numel_transferred for e in backbone if e.status == "copied")
        behind = sum(e.numel_transferred for e in params if e.status == "copied" and e.upstream_new)
        return {
            "copied": len(self.copied),
            "partial": len(self.partial),
            "new": len(self.new),
            "unused": len(self.unused),
            "target_tensors": len(self.entries),
            "by_stage": by_stage,
            "params_transferred": moved,
            "params_total": total,
            "fraction_params_transferred": moved / total if total else 0.0,
            "params_copied_exactly": exact,
            "fraction_params_copied_exactly": exact / total if total else 0.0,
            "fraction_backbone_copied_exactly": backbone_exact / backbone_total if backbone_total else None,
            "params_behind_new": behind,
            "fraction_params_behind_new": behind / exact if exact else 0.0,
            "probe": self.probe.to_dict() if self.probe is not None else None,
        }

    def headline(self) -> str:
        """What a user should read first: the share of parameters copied exactly (partial copies
        counted apart), a warning when some exact copies sit behind layers that were not copied
        exactly (:attr:`TransferEntry.upstream_new`), a warning when little of the feature
        extractor was copied exactly, and the probe check's sentence when one was run
        (:func:`transferkit.transfer.check_copied_function`)."""
        s = self.summary()
        partial = s["fraction_params_transferred"] - s["fraction_params_copied_exactly"]
        text = f"copied exactly {s['fraction_params_copied_exactly']:.1%} of the target's parameters"
        if s["fraction_backbone_copied_exactly"] is not None:
            text += f" ({s['fraction_backbone_copied_exactly']:.1%} of its backbone)"
        if s["fraction_params_behind_new"] > 0:
            behind = s["fraction_params_behind_new"]
            text += f"; WARNING: {behind:.1%} of the exact copies are {self._behind()}"
        if partial > 0:
            text += f"; {partial:.1%} more as partial (sliced) copies, which are not the source's layers"
        if s["fraction_backbone_copied_exactly"] is not None and s["fraction_backbone_copied_exactly"] < 0.5:
            text += ("; WARNING: little of the feature extractor was copied exactly, so this arm is "
                     "mostly a new network, not the source")
        if self.probe is not None:
            text += "; " + self.probe.line()
        return text

    def _behind(self) -> str:
        """"behind layers that stayed new (first: X), so ..." for the headline."""
        layers = {n for e in self.entries if e.status == "copied" and e.is_parameter for n in e.upstream_new}
        statuses: dict[str, set[str]] = {}
        for e in self.entries:
            layer = _layer(e.target_name or "")
            if layer in layers:
                statuses.setdefault(layer, set()).add(e.status)
        first = next((x for e in self.entries if (x := _layer(e.target_name or "")) in layers), min(layers))
        kinds = {"stayed new" if st == {"new"} else "were only partially copied" for st in statuses.values()}
        what = " or ".join(sorted(kinds)) or "were not copied exactly"
        return (
            f"behind layers that {what} (first: {first}), so they don't see the inputs they were trained on"
        )

    def summary_line(self) -> str:
        """One line: counts and the fraction of parameters transferred."""
        s = self.summary()
        return (
            f"transferred {s['fraction_params_transferred']:.1%} of target parameters "
            f"({s['params_transferred']}/{s['params_total']}): {s['copied']} copied, "
            f"{s['partial']} partial, {s['new']} new, {s['unused']} source tensors unused"
        )

    def table(self, max_rows: int | None = None) -> str:
        """Plain-text table: a row per target tensor, then unused source tensors, then a summary.

        Args:
            max_rows: Show at most this many rows per section (the rest is counted); ``None``
                shows all.

        Returns:
            The table as one string (columns aligned with spaces).
        """
        if max_rows is not None and max_rows < 0:
            raise ConfigError(f"max_rows must be >= 0 or None, got {max_rows}")
        header = ("status", "target", "source", "shapes (source -> target)", "stage", "reason")
        rows = [_row(e) for e in self.entries]
        unused_rows = [_row(e) for e in self.unused]
        shown = rows[:max_rows] if max_rows is not None else rows
        shown_unused = unused_rows[:max_rows] if max_rows is not None else unused_rows
        widths = [max(len(r[i]) for r in [header, *shown, *shown_unused]) for i in range(len(header) - 1)]

        def fmt(r: tuple[str, ...]) -> str:
            cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
            return "  ".join([*cells, r[-1]]).rstrip()

        lines = [fmt(header), fmt(tuple("-" * w for w in widths) + ("-" * 6,))]
        lines += [fmt(r) for r in shown]
        if len(shown) < len(rows):
            lines.append(f"... {len(rows) - len(shown)} more target tensors")
        if unused_rows:
            lines += ["", f"unused source tensors ({len(unused_rows)}):"]
            lines += [fmt(r) for r in shown_unused]
            if len(shown_unused) < len(unused_rows):
                lines.append(f"... {len(unused_rows) - len(shown_unused)} more unused tensors")
        lines += ["", self.summary_line()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"entries": [...], "unused": [...], "summary": {...}}``."""
        return {
            "entries": [e.to_dict() for e in self.entries],
            "unused": [e.to_dict() for e in self.unused],
            "summary": self.summary(),
        }


def _row(e: TransferEntry) -> tuple[str, ...]:
    shapes = " -> ".join("-" if s is None else str(tuple(s)) for s in (e.source_shape, e.target_shape))
    reason = e.reason
    if e.upstream_new:
        reason += f"; behind layers not copied exactly: {', '.join(e.upstream_new)}"
    return (e.status, e.target_name or "-", e.source_name or "-", shapes, e.stage or "-", reason)


# ----------------------------------------------------------------------------------------------
# Collecting tensors


@dataclass
class _Tensor:
    name: str
    value: torch.Tensor
    is_parameter: bool

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def kind(self) -> str:
        return _kind(self.name)

    @property
    def module(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name else ""


def _kind(name: str) -> str:
    """The last name component if it is a known kind; ``"in_proj_weight"``-style names count as
    ``"weight"``/``"bias"``; anything else is ``"other"``."""
    last = name.rsplit(".", 1)[-1]
    if last in KNOWN_KINDS:
        return last
    return next((k for k in ("weight", "bias") if last.endswith("_" + k)), "other")


def _group_key(name: str) -> str | None:
    """Tensors of one module with known kinds (weight, bias, running stats) form one layer."""
    return name.rsplit(".", 1)[0] if "." in name and _kind(name) != "other" else None


def _collect_target(target: nn.Module) -> list[_Tensor]:
    if not isinstance(target, nn.Module):
        raise ConfigError(
            f"target must be a torch.nn.Module, got {type(target).__name__}; "
            "pass the model whose weights should be filled"
        )
    state = target.state_dict(keep_vars=True)  # the live tensors, so copies land in the model
    out = [
        _Tensor(k, v, isinstance(v, nn.Parameter)) for k, v in state.items() if isinstance(v, torch.Tensor)
    ]
    if not out:
        raise ConfigError(
            f"target {type(target).__name__} has no parameters or buffers to fill; pass a model with weights"
        )
    return out


def _collect_source(source: nn.Module | Mapping[str, torch.Tensor]) -> list[_Tensor]:
    if isinstance(source, nn.Module):
        params = {name for name, _ in source.named_parameters(remove_duplicate=False)}
        state = source.state_dict()
        out = [_Tensor(k, v.detach(), k in params) for k, v in state.items() if isinstance(v, torch.Tensor)]
        if not out:
            raise ConfigError(
                f"source {type(source).__name__} has no parameters or buffers to copy; "
                "pass a model with weights"
            )
        return out
    if not isinstance(source, Mapping):
        raise ConfigError(
            f"source must be a torch.nn.Module or a mapping name -> tensor, got "
            f"{type(source).__name__}; load a checkpoint with transferkit.io.load_state_dict"
        )
    if not source:
        raise ConfigError(
            "source state dict is empty (no tensors to copy); check the checkpoint it came from"
        )
    out = []
    for name, value in source.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"source entry {name!r} is a {type(value).__name__}, not a tensor; "
                "pass a state dict holding only tensors (e.g. model.state_dict())"
            )
        kind = str(name).rsplit(".", 1)[-1]
        out.append(_Tensor(str(name), value.detach(), kind not in BUFFER_KINDS))
    return out


def _new_entry(t: _Tensor, reason: str) -> TransferEntry:
    """A target tensor that keeps its own values."""
    return TransferEntry(t.name, None, "new", None, t.shape, None, reason, t.is_parameter)


def _unused_entry(
    s: _Tensor, reason: str, stage: Stage | None = None, t: _Tensor | None = None
) -> TransferEntry:
    """A source tensor that was not copied (``t``: the target it was paired with, if any)."""
    t_name, t_shape = (t.name, t.shape) if t else (None, None)
    return TransferEntry(t_name, s.name, "unused", stage, t_shape, s.shape, reason, s.is_parameter)


# ----------------------------------------------------------------------------------------------
# Copying


def _overlap(
    src_shape: tuple[int, ...], tgt_shape: tuple[int, ...], kind: str
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Overlapping region: leading slice per dim, centred for conv kernels' spatial dims."""
    src_idx: list[slice] = []
    tgt_idx: list[slice] = []
    for d, (ns, nt) in enumerate(zip(src_shape, tgt_shape, strict=True)):
        n = min(ns, nt)
        centred = kind == "weight" and len(src_shape) >= 3 and d >= 2
        s0 = (ns - n) // 2 if centred else 0
        t0 = (nt - n) // 2 if centred else 0
        src_idx.append(slice(s0, s0 + n))
        tgt_idx.append(slice(t0, t0 + n))
    return tuple(src_idx), tuple(tgt_idx)


def _index_str(idx: tuple[slice, ...], own: tuple[int, ...], other: tuple[int, ...]) -> str:
    """``[:64]``-style text for ``idx`` into a tensor of shape ``own`` (``other``: the other side)."""
    parts = []
    for sl, n, m in zip(idx, own, other, strict=True):
        parts.append(":" if n == m else f":{sl.stop}" if sl.start == 0 else f"{sl.start}:{sl.stop}")
    while len(parts) > 1 and parts[-1] == ":":
        parts.pop()
    return "[" + ", ".join(parts) + "]"


#: Report status of each way of moving values (see :class:`_Plan`).
_STATUS: dict[str, Status] = {
    "same": "copied",
    "reshape": "copied",
    "fuse": "copied",
    "split": "copied",
    "resize": "partial",
    "stem": "partial",
    "slice": "partial",
    "none": "new",
}


@dataclass
class _Plan:
    """How source tensor(s) ``src`` go into target tensor(s) ``tgt`` (indices; more than one on
    one side for a fused <-> split pair). ``how`` is a key of :data:`_STATUS`; ``value`` is the
    converted tensor for ``"resize"`` and ``"stem"``."""

    src: tuple[int, ...]
    tgt: tuple[int, ...]
    stage: Stage
    how: str
    reason: str
    value: torch.Tensor | None = None


def _cat_shape(shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """Shape of ``torch.cat`` along dim 0 of tensors of these shapes."""
    if len(shapes) == 1:
        return tuple(shapes[0])
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def _plan(
    srcs: list[_Tensor], tgts: list[_Tensor], policy: str, is_stem: Callable[[], bool]
) -> tuple[str, str, torch.Tensor | None]:
    """(how, reason, converted value) for copying ``srcs`` into ``tgts``; see transfer_parameters."""
    if len(srcs) > 1 or len(tgts) > 1:
        ss, ts = _cat_shape([s.shape for s in srcs]), _cat_shape([t.shape for t in tgts])
        if ss != ts:
            return "none", f"source {ss} -> target {ts}: fused shapes differ, not copied", None
        if len(srcs) > 1:
            return "fuse", (
                f"fused: the {len(srcs)} source tensors concatenated along dim 0 (parallel layers of one "
                "shape reading the same input, e.g. query/key/value)"
            ), None
        return "split", "split: the fused source's rows go to the separate target tensors", None
    s, t = srcs[0], tgts[0]
    ss, ts = s.shape, t.shape
    head = f"source {ss} -> target {ts}: "
    if ss == ts:
        return "same", "same shape", None
    if reshape_compatible(ss, ts):
        return "reshape", head + "reshaped (only size-1 dims differ)", None
    if len(ss) != len(ts):
        return "none", head + "different number of dims, not copied", None
    if policy == "skip":
        return "none", head + "shape differs, skipped (shape_mismatch='skip')", None
    if s.kind == t.kind == "other" and (resized := resize_position_embedding(s.value, ts)):
        return "resize", head + resized[1], resized[0]
    if s.kind == t.kind == "weight" and (adapted := adapt_input_channels(s.value, ts)) and is_stem():
        return "stem", head + adapted[1] + " (a stem: the layer reads the model's input)", adapted[0]
    src_idx, tgt_idx = _overlap(ss, ts, t.kind)
    s_str, t_str = _index_str(src_idx, ss, ts), _index_str(tgt_idx, ts, ss)
    where = f"copied {t_str}" if s_str == t_str else f"copied source{s_str} into {t_str}"
    return "slice", head + where, None


def _execute(
    plan: _Plan, sources: list[_Tensor], targets: list[_Tensor]
) -> tuple[list[TransferEntry], list[TransferEntry]]:
    """Write ``plan`` into the target tensors; return their entries and the unused-source entries."""
    srcs, tgts = [sources[i] for i in plan.src], [targets[j] for j in plan.tgt]
    src_name = " + ".join(s.name for s in srcs)
    src_shape = _cat_shape([s.shape for s in srcs])
    status = _STATUS[plan.how]
    entries: list[TransferEntry] = []
    if status == "new":
        for t in tgts:
            entries.append(
                TransferEntry(
                    t.name, src_name, "new", plan.stage, t.shape, src_shape, plan.reason, t.is_parameter
                )
            )
        why = f"paired with target {tgts[0].name!r} but {plan.reason}"
        return entries, [_unused_entry(s, why, plan.stage, tgts[0]) for s in srcs]
    if plan.value is not None:
        value = plan.value
    else:
        value = torch.cat([s.value for s in srcs]) if len(srcs) > 1 else srcs[0].value
    row = 0
    for k, t in enumerate(tgts):
        reason, out = plan.reason, t.value
        if plan.how == "slice":
            src_idx, tgt_idx = _overlap(src_shape, t.shape, t.kind)
            part = value[src_idx]
            out = t.value[tgt_idx]
        elif len(tgts) > 1:
            part = value[row : row + t.shape[0]]
            reason = (
                f"split: rows {row}:{row + t.shape[0]} of the source (part {k + 1} of {len(tgts)}; the "
                "target has parallel layers of one shape reading the same input, e.g. query/key/value)"
            )
            row += t.shape[0]
        else:
            part = value.reshape(t.shape)
        out.copy_(part.to(device=t.value.device, dtype=t.value.dtype))
        entries.append(
            TransferEntry(
                t.name, src_name, status, plan.stage, t.shape, src_shape, reason, t.is_parameter, out.numel()
            )
        )
    return entries, []


# ----------------------------------------------------------------------------------------------
# Matching stages


def _strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                name = name[len(prefix) :]
                changed = True
    return name


def _candidates(names: list[str], others: list[str]) -> list[set[int]]:
    """For each name, the indices of ``others`` equal to it or, if none is, in a dotted-suffix relation."""
    exact: dict[str, list[int]] = {}
    by_suffix: dict[str, list[int]] = {}
    for j, n in enumerate(others):
        exact.setdefault(n, []).append(j)
        parts = n.split(".")
        for k in range(1, len(parts)):
            by_suffix.setdefault(".".join(parts[k:]), []).append(j)
    out = []
    for n in names:
        if n in exact:
            out.append(set(exact[n]))
            continue
        parts = n.split(".")
        cands = set(by_suffix.get(n, []))  # the other name ends with ".<n>"
        for k in range(1, len(parts)):  # n ends with ".<other name>"
            cands.update(exact.get(".".join(parts[k:]), []))
        out.append(cands)
    return out


def _suffix_pairs(sources: list[_Tensor], targets: list[_Tensor]) -> list[tuple[int, int]]:
    """Pairs (source index, target index) whose names agree after stripping wrappers / as suffixes.

    A pair is taken only when each side is the other's only candidate (an equal stripped name wins
    over suffix relations) and both tensors have the same number of dims (or differ by a reshape).
    """
    s_norm = [_strip_wrappers(t.name) for t in sources]
    t_norm = [_strip_wrappers(t.name) for t in targets]
    s_cands, t_cands = _candidates(s_norm, t_norm), _candidates(t_norm, s_norm)
    pairs = []
    for i, cands in enumerate(s_cands):
        if len(cands) == 1:
            (j,) = cands
            s, t = sources[i], targets[j]
            if t_cands[j] == {i} and (s.value.dim() == t.value.dim() or reshape_compatible(s.shape, t.shape)):
                pairs.append((i, j))
    return pairs


def _groups(tensors: list[_Tensor]) -> list[list[int]]:
    """Indices of consecutive tensors that belong to one module (same name prefix); a tensor of kind
    ``"other"`` (class token, position embedding, layer scale) is a group of its own."""
    groups: list[list[int]] = []
    for i, t in enumerate(tensors):
        last = tensors[groups[-1][-1]] if groups else None
        if last is not None and last.module == t.module and "other" not in (last.kind, t.kind):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _align(n: int, m: int, score: Any) -> list[tuple[int, int]]:
    """Weighted longest-common-subsequence alignment of two sequences of lengths n and m.

    ``score(i, j)`` > 0 allows pairing item i with item j. Returns in-order pairs maximising the
    total score; ties go to the earliest pairs.
    """
    scores = [[score(i, j) for j in range(m)] for i in range(n)]
    dp = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = dp[i], dp[i + 1]
        srow = scores[i]
        for j in range(m - 1, -1, -1):
            best = below[j] if below[j] > row[j + 1] else row[j + 1]
            s = srow[j]
            if s > 0 and s + below[j + 1] > best:
                best = s + below[j + 1]
            row[j] = best
    pairs: list[tuple[int, int]] = []
    i = j = 0
    eps = 1e-9
    while i < n and j < m:
        s = scores[i][j]
        if s > 0 and dp[i][j] <= s + dp[i + 1][j + 1] + eps:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif dp[i][j] <= dp[i][j + 1] + eps:
            j += 1
        else:
            i += 1
    return pairs


def _units(tensors: list[_Tensor], flow: Dataflow | None) -> list[list[int]]:
    """Indices of the tensors of each layer, in forward order when ``flow`` is given.

    Without a flow: consecutive tensors with one module prefix, in state-dict order. With one:
    tensors sorted by :meth:`Dataflow.sort_keys` (the dataflow's canonical order), then grouped by
    (node, module), so a parameter registered on a parent module (a class token, a layer scale)
    is its own unit at the place it is used.
    """
    if flow is None:
        return _groups(tensors)
    keys = flow.sort_keys([t.name for t in tensors])
    units: list[list[int]] = []
    last: tuple[str | None, str] | None = None
    for k in sorted(range(len(tensors)), key=keys.__getitem__):
        gid = (flow.node.get(tensors[k].name), tensors[k].module)
        if units and gid == last:
            units[-1].append(k)
        else:
            units.append([k])
        last = gid
    return units


def _parallel(trio: list[list[int]], tensors: list[_Tensor], flow: Dataflow | None) -> bool:
    """Whether three units are parallel layers of one shape (weight, optional bias) reading one input."""
    sigs = {tuple((tensors[k].kind, tensors[k].shape) for k in u) for u in trio}
    if len(sigs) != 1:
        return False
    (sig,) = sigs
    if not {kind for kind, _ in sig} <= {"weight", "bias"} or not any(
        kind == "weight" and len(shape) >= 2 for kind, shape in sig
    ):
        return False
    if flow is None:
        return True
    inputs = [flow.producers(tensors[u[0]].name) for u in trio]
    return inputs[0] is not None and inputs.count(inputs[0]) == 3


def _fuse(
    units: list[list[int]],
    tensors: list[_Tensor],
    flow: Dataflow | None,
    other: set[tuple[str, tuple[int, ...]]],
) -> list[list[tuple[int, ...]]]:
    """Units as lists of items (tuples of tensor indices). Three consecutive parallel units (see
    :func:`_parallel`, e.g. query/key/value) become one unit of fused items when the other model
    has a weight of the fused shape (a ``qkv`` or ``in_proj_weight``); every other item is one
    tensor."""
    out: list[list[tuple[int, ...]]] = []
    a = 0
    while a < len(units):
        trio = units[a : a + 3]
        if len(trio) == 3 and _parallel(trio, tensors, flow):
            fused = [tuple(u[c] for u in trio) for c in range(len(trio[0]))]
            if any(_item_sig(item, tensors) in other for item in fused if tensors[item[0]].kind == "weight"):
                out.append(fused)
                a += 3
                continue
        out.append([(k,) for k in units[a]])
        a += 1
    return out


def _item_sig(item: tuple[int, ...], tensors: list[_Tensor]) -> tuple[str, tuple[int, ...]]:
    return tensors[item[0]].kind, _cat_shape([tensors[k].shape for k in item])


def _structure_pairs(
    sources: list[_Tensor],
    targets: list[_Tensor],
    policy: str,
    flow_s: Dataflow | None = None,
    flow_t: Dataflow | None = None,
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pair remaining tensors by order and shape (see :func:`transfer_parameters`)."""
    if not sources or not targets:
        return []
    ordered = flow_s is not None and flow_t is not None
    s_items = _fuse(
        _units(sources, flow_s if ordered else None), sources, flow_s, {(t.kind, t.shape) for t in targets}
    )
    t_items = _fuse(
        _units(targets, flow_t if ordered else None), targets, flow_t, {(t.kind, t.shape) for t in sources}
    )
    s_sigs = [tuple(_item_sig(it, sources) for it in unit) for unit in s_items]
    t_sigs = [tuple(_item_sig(it, targets) for it in unit) for unit in t_items]

    def module_score(a: int, b: int) -> float:
        sa, tb = s_sigs[a], t_sigs[b]
        if sa == tb:
            return 1.0
        if len(sa) != len(tb):
            return 0.0
        fracs = []
        for (ka, shape_a), (kb, shape_b) in zip(sa, tb, strict=True):
            if ka != kb:
                return 0.0
            if reshape_compatible(shape_a, shape_b):
                fracs.append(1.0)
                continue
            if policy != "slice" or len(shape_a) != len(shape_b):
                return 0.0
            big = math.prod(max(x, y) for x, y in zip(shape_a, shape_b, strict=True))
            small = math.prod(min(x, y) for x, y in zip(shape_a, shape_b, strict=True))
            fracs.append(small / big if big else 1.0)
        if all(f == 1.0 for f in fracs):
            return 1.0
        return 0.25 * (0.5 + 0.5 * sum(fracs) / len(fracs))

    if s_sigs == t_sigs:  # same architecture, different names: pair everything in order
        module_pairs = [(k, k) for k in range(len(s_sigs))]
    else:
        module_pairs = _align(len(s_items), len(t_items), module_score)
    # layers left out whose signature is unique among the leftovers of both sides go together (a
    # class token registered before the patch projection in one library and after it in another)
    paired_a, paired_b = {a for a, _ in module_pairs}, {b for _, b in module_pairs}
    left_s = Counter(s_sigs[a] for a in range(len(s_sigs)) if a not in paired_a)
    left_t = {t_sigs[b]: b for b in range(len(t_sigs)) if b not in paired_b}
    left_t_count = Counter(t_sigs[b] for b in range(len(t_sigs)) if b not in paired_b)
    for a in range(len(s_sigs)):
        if a not in paired_a and left_s[s_sigs[a]] == 1 and left_t_count[s_sigs[a]] == 1:
            module_pairs.append((a, left_t[s_sigs[a]]))
    return [(si, ti) for a, b in module_pairs for si, ti in zip(s_items[a], t_items[b], strict=True)]


# ----------------------------------------------------------------------------------------------
# Public entry point


class _Flows:
    """The source's and the target's dataflow, traced on first use (``None``: not traceable)."""

    def __init__(
        self,
        source: nn.Module | Mapping[str, torch.Tensor],
        target: nn.Module,
        trace: bool,
        examples: Sequence[torch.Tensor | None],
    ) -> None:
        src = source if isinstance(source, nn.Module) and trace else None
        self._todo = {"source": (src, examples[0]), "target": (target if trace else None, examples[1])}
        self._done: dict[str, Dataflow | None] = {}

    def get(self, side: str) -> Dataflow | None:
        if side not in self._done:
            module, example = self._todo[side]
            self._done[side] = None if module is None else trace_dataflow(module, _group_key, example)
        return self._done[side]


def _layer(node: str) -> str:
    """The module name of a dataflow node (node ids are tensor names)."""
    return node.rsplit(".", 1)[0] if "." in node else node


def _is_stem(s: _Tensor, t: _Tensor, sources: list[_Tensor], targets: list[_Tensor], flows: _Flows) -> bool:
    """Whether both tensors belong to a layer that reads the model's input.

    From the dataflow when traced; otherwise: each is the first 4-dim tensor of its model.
    """
    for tensor, tensors, side in ((s, sources, "source"), (t, targets, "target")):
        flow = flows.get(side)
        if flow is not None and flow.used(tensor.name):
            if not flow.reads_input(tensor.name):
                return False
        elif next((x for x in tensors if x.value.dim() == 4), None) is not tensor:
            return False
    return True


def _misfed(
    plan: _Plan,
    sources: list[_Tensor],
    targets: list[_Tensor],
    fed: dict[str, list[_Plan]],
    flow_t: Dataflow,
    flow_s: Dataflow | None,
) -> str | None:
    """Why the layer of sliced ``plan`` must stay new (its input is not what the source layer
    read), or ``None`` when its input comes from the copy of the source layer that fed it.

    With the source's dataflow, each target layer feeding it must hold a copy of a source layer
    that fed the source tensor, at least one must, and unpaired feeders (new layers) are allowed
    only beside such a copy (a new block adding into a residual stream). Without it (a state-dict
    source), a paired feeder must have the same width ratio on both sides (the target tensor's
    input width over the feeder's output width).
    """
    s, t = sources[plan.src[0]], targets[plan.tgt[0]]
    feeders = flow_t.producers(t.name)
    if not feeders or INPUT in feeders:
        return None
    s_feeders = flow_s.producers(s.name) if flow_s is not None else None
    consistent, problems = False, []
    for node in sorted(feeders):
        plans = fed.get(node)
        if not plans:
            problems.append((node, "it has no source counterpart", False))
            continue
        held = sorted({sources[i].module or sources[i].name for q in plans for i in q.src})
        holds = f"it holds the copy of source layer {' + '.join(held)}"
        if s_feeders:
            ok = any(flow_s.node.get(sources[i].name) in s_feeders for q in plans for i in q.src)
        else:  # widths: the sliced tensor's input (dim 1, or 0 for a vector) and the feeder's output
            q = next((q for q in plans if targets[q.tgt[0]].shape and len(q.src) == 1), None)
            ok = q is None
            if q is not None:
                t_out, s_out = targets[q.tgt[0]].shape[0], sources[q.src[0]].shape[0]
                t_in, s_in = (t.shape[1], s.shape[1]) if len(t.shape) > 1 else (t.shape[0], s.shape[0])
                ok = t_in * s_out == s_in * t_out
                holds += f"; widths {s_out} -> {t_out} there, but {s_in} -> {t_in} at the input of {t.name!r}"
        consistent |= ok
        if not ok:
            problems.append((node, holds, True))
    bad = [p for p in problems if p[2]] or ([] if consistent else problems)
    if not bad:
        return None
    node, what, _ = bad[0]
    fed_by = "source layer " + " + ".join(sorted(map(_layer, s_feeders))) if s_feeders else "the source layer"
    return (
        f"its input comes from target layer {_layer(node)}, which is not the copy of {fed_by} "
        f"that fed it ({what})"
    )


def _refuse_misfed(plans: list[_Plan], sources: list[_Tensor], targets: list[_Tensor], flows: _Flows) -> None:
    """Turn every layer holding a slice whose input comes from another layer than in the source into
    ``"none"`` (all of that layer's tensors), in forward order, so a refused layer counts as new for
    the layers it feeds."""
    if not any(p.how == "slice" for p in plans):
        return
    flow_t = flows.get("target")
    if flow_t is None:
        return
    flow_s = flows.get("source")
    fed: dict[str, list[_Plan]] = {}
    for p in plans:
        if p.how != "none":
            for j in p.tgt:
                fed.setdefault(flow_t.node[targets[j].name], []).append(p)
    key = dict(zip((t.name for t in targets), flow_t.sort_keys(t.name for t in targets), strict=True))
    for node in sorted(fed, key=key.__getitem__):  # node ids are target tensor names
        slices = [p for p in fed[node] if p.how == "slice"]
        if not slices:
            continue
        # judge the layer by its sliced tensor of most dims (a weight's dim 1 is its input)
        judged = max(slices, key=lambda p: len(targets[p.tgt[0]].shape))
        why = _misfed(judged, sources, targets, fed, flow_t, flow_s)
        if why is None:
            continue
        for q in fed.pop(node):
            ss = _cat_shape([sources[i].shape for i in q.src])
            ts = _cat_shape([targets[j].shape for j in q.tgt])
            q.how, q.reason, q.value = "none", f"source {ss} -> target {ts}: left new: {why}", None


def _flag_upstream_new(entries: list[TransferEntry], deliberate: set[int], flows: _Flows) -> None:
    """Fill :attr:`TransferEntry.upstream_new` of every copied or partial entry (see there).

    Traces the target (meta device, cached in ``flows``) only when it can matter: something was
    moved and some layer was not copied exactly (a partial copy, or a new tensor left new not on
    purpose; in a model with a ``backbone.`` part, a new tensor there). ``deliberate``: indices of
    entries left new on purpose, which count as neither copied nor new. Nothing is flagged when the
    target cannot be traced.
    """
    if not any(e.status in ("copied", "partial") for e in entries):
        return
    scoped = [e for j, e in enumerate(entries) if j not in deliberate]
    if any((e.target_name or "").startswith("backbone.") for e in entries):
        scoped = [e for e in scoped if e.status == "partial" or (e.target_name or "").startswith("backbone.")]
    if not any(e.status in ("new", "partial") for e in scoped):
        return
    flow = flows.get("target")
    if flow is None:
        return
    by_node: dict[str, list[TransferEntry]] = {}
    for j, e in enumerate(entries):
        node = flow.node.get(e.target_name or "")
        if j not in deliberate and node in flow.first_use:
            by_node.setdefault(node, []).append(e)
    bad = {n for n, es in by_node.items() if {e.status for e in es} != {"copied"}}
    if not bad:
        return
    # nearest not-exact layers upstream of each node: through exact (and deliberate) layers, not
    # past a bad one; repeated until stable, as a shared module can make the graph cyclic
    order = flow.forward_order()
    behind: dict[str, frozenset[str]] = {}
    changed = True
    while changed:
        changed = False
        for node in order:
            acc: set[str] = set()
            for p in flow.preds.get(node, ()):
                if p in bad:
                    acc.add(p)
                elif p != INPUT:
                    acc |= behind.get(p, frozenset())
            if acc != behind.get(node, frozenset()):
                behind[node] = frozenset(acc)
                changed = True
    rank = {n: k for k, n in enumerate(order)}
    for node, es in by_node.items():
        if behind.get(node):
            names = list(dict.fromkeys(_layer(n) for n in sorted(behind[node], key=rank.__getitem__)))
            for e in es:
                if e.status in ("copied", "partial"):
                    e.upstream_new = names


_TOKEN_TYPES = "embeddings.token_type_embeddings.weight"
_POSITIONS = "embeddings.position_embeddings.weight"


def _fold_token_types(sources: list[_Tensor], targets: list[_Tensor], t_entries: dict[int, TransferEntry],
                      s_unused: dict[int, TransferEntry], paired_s: set[int]) -> None:
    """A BERT-style source adds a token-type (segment) embedding to every token, row 0 for
    single-segment text; a target without token types (DistilBERT) gets that row added to its copied
    position embeddings, so it computes what the source computed on single-segment text. The other
    way round, a target's token-type table that no source tensor filled is set to zeros."""
    tt = next((i for i, s in enumerate(sources) if s.name.endswith(_TOKEN_TYPES)), None)
    t_tt = next((j for j, t in enumerate(targets) if t.name.endswith(_TOKEN_TYPES)), None)
    if tt is None and t_tt is not None and t_tt not in t_entries and any(
            s.name.endswith(_POSITIONS) for s in sources):
        with torch.no_grad():
            targets[t_tt].value.zero_()
        t_entries[t_tt] = _new_entry(targets[t_tt], "set to zeros: the source adds no token-type embedding")
        return
    if tt is None or t_tt is not None:
        return
    j = next((j for j, t in enumerate(targets) if t.name.endswith(_POSITIONS) and j in t_entries
              and t_entries[j].status == "copied"), None)
    if j is None or sources[tt].shape[-1] != targets[j].shape[-1]:
        return
    with torch.no_grad():
        targets[j].value += sources[tt].value[0].to(targets[j].value.dtype)
    entry = t_entries[j]
    why = (f"; plus the source's token-type-0 (segment) embedding {sources[tt].name!r}, which the target "
           "has no table for")
    t_entries[j] = TransferEntry(**{**asdict(entry), "reason": entry.reason + why})
    s_unused.pop(tt, None)
    paired_s.add(tt)


def transfer_parameters(
    source: nn.Module | Mapping[str, torch.Tensor],
    target: nn.Module,
    *,
    shape_mismatch: Literal["slice", "skip"] = "slice",
    exclude: Sequence[str] = (),
    match: Sequence[Literal["name", "suffix", "structure"]] = ("name", "suffix", "structure"),
    include_buffers: bool = True,
    trace: bool = True,
    example_inputs: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> TransferReport:
    """Copy every source tensor that has a place in ``target``, in place, and report what moved.

    Matching runs in stages, always in this order (those not listed in ``match`` are skipped);
    each stage sees only the tensors the earlier stages left unpaired:

    1. ``"name"``: identical state-dict names. The pair is final even when the shapes do not
       allow a copy (then the target stays ``"new"`` and the source is ``"unused"``, with why).
    2. ``"suffix"``: names equal after stripping wrapper prefixes (:data:`WRAPPER_PREFIXES`, e.g.
       ``"module."``, ``"_orig_mod."``, ``"model."``, ``"backbone."``), or one stripped name is a
       dotted suffix of the other (``"conv1.weight"`` <-> ``"features.conv1.weight"``). Only pairs
       that are unambiguous on both sides and have the same number of dims (or differ only by a
       reshape, below) are taken.
    3. ``"structure"``: for two implementations of one architecture under different names (timm,
       torchvision and Hugging Face ResNet, ConvNeXt, ViT, EfficientNet). The remaining tensors of
       each side are grouped into layers and put in order. When both models are modules that can
       be traced (see ``trace``), a layer is the set of tensors one op uses together (plus the
       weight/bias/running stats of one module), and the order is the dataflow's: by depth from the
       input, then the longer remaining path first, then first use, so it does not depend on the
       order a library registers modules or runs parallel branches in (Hugging Face's ViT registers
       its LayerNorms after attention and MLP, its ResNet registers and runs the shortcut first;
       a class token, position embedding or layer scale lands where it is used). Otherwise a layer
       is a run of consecutive tensors with one name prefix, in state-dict order. Each layer gets
       a signature: the ``(kind, shape)`` of its tensors, kind being the last name component for
       ``weight``/``bias``/``running_mean``/``running_var``/``num_batches_tracked`` (``*_weight``
       and ``*_bias`` count as weight and bias) and ``"other"`` otherwise. Three consecutive
       layers of one signature (weight of >= 2 dims, optional bias) that read the same input
       (query/key/value) are fused into one layer of concatenated tensors when the other model has
       a weight of the fused shape (timm's ``qkv``, torchvision's ``in_proj_weight``). The two
       layer sequences are aligned by a weighted longest common subsequence (dynamic
       programming): signatures equal up to reshapes (below) score 1; with
       ``shape_mismatch="slice"``, layers with the same kinds and ndims but other sizes score
       0.125-0.25 (more for more overlap), so they only fill gaps between exact matches. Pairs
       keep the order of both models, so a deeper or shallower target still pairs the layers that
       correspond; ties go to the earliest pairs (extra repeated blocks of a deeper target are left
       at its end). Layers left out on both sides whose signature is unique among those leftovers
       are then paired with each other (a class token registered before the patch projection in
       one library and after it in another). Tensors of a paired layer move together; a layer is
       never split.

       Limits: it cannot tell apart layers whose signatures coincide and whose order is the same
       in the dataflow (two 64-wide BatchNorm layers on parallel branches of equal length); a
       state-dict source is never traced, so then both sides use state-dict order (load it into a
       module of its architecture first when that order differs from the target's: Hugging Face
       ViT); the dynamic program costs O(n*m) in the number of layers.

    Shapes and conversions, per pair (the reason in the report names the conversion):

    * equal -> ``"copied"``;
    * equal up to size-1 dims at the start or at the end (``(C, 1, 1)`` <-> ``(C,)`` layer scale,
      ``(O, I, 1, 1)`` <-> ``(O, I)``, ``(1, 1, D)`` <-> ``(1, D)``) -> reshaped, ``"copied"``;
    * fused <-> split (query/key/value above): concatenated along dim 0 into the fused target, or
      the fused source's row blocks copied into the separate targets -> ``"copied"``;
    * different ndim otherwise -> never copied; with ``shape_mismatch="skip"`` nothing below is
      done either (``"new"``, with the reason);
    * a ViT position embedding (``(1, N, D)`` or ``(N, D)``, not a ``weight``/``bias``) for another
      square grid (``N - p`` square on both sides for the fewest prefix tokens ``p``): prefix
      tokens kept, the grid resized by bicubic interpolation (as timm's
      ``resample_abs_pos_embed``) -> ``"partial"``;
    * a stem conv weight (its layer reads the model's input; without a trace: the first 4-dim
      tensor of both models) from C to 1 input channels gets the sum over the C channels, from 1
      to C the weight repeated C times divided by C, so a gray image replicated to C channels
      gives the same output -> ``"partial"``;
    * the input embeddings of two text models whose tokenizers differ (``tokenizer`` attributes,
      :mod:`transferkit.models.text`): rows moved by token string, each target token getting its
      own vector from the source (:mod:`transferkit.transfer.vocabulary`); ``"partial"`` with the
      count of tokens found, whatever the two vocabularies' sizes;
    * same ndim, other sizes -> with ``shape_mismatch="slice"`` the overlapping region is copied
      (leading slice in each dim; centred crop/pad for the spatial dims of ``weight`` tensors with
      >= 3 dims, i.e. conv kernels) -> ``"partial"``. A slice is only copied into a layer whose
      input comes from the copy of the source layer that fed the source tensor (checked from the
      traced dataflow of the target, and of the source when it is a module): a 3-block model's
      classifier is not sliced into a 4-block model's, whose classifier reads the new 4th block,
      while a wider model of the same depth is sliced layer by layer. Otherwise every tensor of
      that target layer stays ``"new"`` with the reason ("its input comes from target layer X,
      which is not the copy of source layer Y that fed it (...)").

    Target tensors keep their dtype and device (values are converted with ``.to``); integer
    buffers such as ``num_batches_tracked`` are copied as they are. The source is never modified.

    Args:
        source: Model or state dict (name -> tensor) to copy from.
        target: Model to fill, in place (under ``torch.no_grad``).
        shape_mismatch: ``"slice"`` copies the overlap of differently-sized tensors and adapts
            position embeddings and stems; ``"skip"`` leaves them (exact reshapes and fused/split
            copies still happen).
        exclude: ``fnmatch`` patterns on TARGET names (e.g. ``"head.*"``); matching tensors stay
            ``"new"`` and are never a match target (a source tensor that would go there by name is
            reported unused). A pattern that matches nothing raises a warning.
        match: Which stages to run (any of ``"name"``, ``"suffix"``, ``"structure"``).
        include_buffers: If ``False``, only parameters are matched (target buffers stay ``"new"``;
            for a state-dict source, entries ending in ``running_mean``/``running_var``/
            ``num_batches_tracked`` are treated as buffers).
        trace: Trace the models' dataflow when needed (structure stage, stems, slices): one forward
            pass each, on the ``meta`` device (no compute, the models are not touched; a CPU pass
            on copies of the buffers if an op has no meta kernel). ``False``: state-dict order, and
            slices are not checked. A model that cannot be traced is handled as with ``False``.
        example_inputs: ``(source input, target input)`` for the trace (either may be ``None``); by
            default the input size is read from the model (transferkit ``info.input_size``, a
            Hugging Face ``config.image_size``, timm's ``pretrained_cfg``, ``img_size`` attributes)
            or guessed (224, 64, 32 pixels).

    After copying, every copied or partial entry whose layer reads (directly, or through layers
    copied exactly) a target layer that was not copied exactly (left new, or a partial copy) names
    the nearest such layers in :attr:`TransferEntry.upstream_new`: a copy behind a new layer does
    not see the inputs it was trained on (a foreign CNN whose fully connected layers fit the target
    but whose convolutions do not). This needs the target's dataflow, traced (on the meta device)
    only when some layer was not copied exactly; with ``trace=False`` or a target that cannot be
    traced nothing is flagged. Whether the copied part really computes what it computed in the
    source is checked afterwards on a probe batch by
    :func:`transferkit.transfer.check_copied_function` (not run here).

    Returns:
        A :class:`TransferReport` with one entry per target tensor and the unused source tensors.
        An entry's ``source_name`` joins the names of fused sources with ``" + "``.

    Raises:
        ConfigError: an option is invalid, the target has no tensors, or the source is empty.
        CheckpointError: the source mapping holds something other than tensors.
    """
    if shape_mismatch not in SHAPE_POLICIES:
        raise ConfigError(f"shape_mismatch must be one of {list(SHAPE_POLICIES)}, got {shape_mismatch!r}")
    match_list = [match] if isinstance(match, str) else list(match)
    bad = [m for m in match_list if m not in STAGES]
    if bad or not match_list:
        raise ConfigError(f"match must be a non-empty list of stages from {list(STAGES)}, got {match!r}")
    if example_inputs is None:
        example_inputs = (None, None)
    if (
        not isinstance(example_inputs, (tuple, list))
        or len(example_inputs) != 2
        or not all(x is None or isinstance(x, torch.Tensor) for x in example_inputs)
    ):
        raise ConfigError(
            "example_inputs must be a pair (source input, target input), either may be None; "
            f"got {type(example_inputs).__name__}"
        )
    patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    targets = _collect_target(target)
    sources = _collect_source(source)
    flows = _Flows(source, target, trace, example_inputs)

    t_entries: dict[int, TransferEntry] = {}
    s_unused: dict[int, TransferEntry] = {}
    excluded: dict[int, str] = {}
    for j, t in enumerate(targets):
        pat = next((p for p in patterns if fnmatch.fnmatchcase(t.name, p)), None)
        if pat is not None:
            excluded[j] = pat
            t_entries[j] = _new_entry(t, f"excluded by pattern {pat!r}")
    for pat in patterns:
        if pat not in excluded.values():
            warnings.warn(
                f"exclude pattern {pat!r} matches no target tensor name; "
                f"check it against the target's state-dict names (e.g. {targets[0].name!r})",
                stacklevel=2,
            )
    why_buffers = "buffer not considered (include_buffers=False)"
    if not include_buffers:
        for j, t in enumerate(targets):
            if not t.is_parameter and j not in t_entries:
                t_entries[j] = _new_entry(t, why_buffers)
        for i, s in enumerate(sources):
            if not s.is_parameter:
                s_unused[i] = _unused_entry(s, why_buffers)
    paired_s: set[int] = set()
    paired_t: set[int] = set()
    plans: list[_Plan] = []

    def pair(src: tuple[int, ...], tgt: tuple[int, ...], stage: Stage) -> None:
        paired_s.update(src)
        paired_t.update(tgt)
        if tgt[0] in excluded:
            t = targets[tgt[0]]
            why = f"target {t.name!r} excluded by pattern {excluded[tgt[0]]!r}"
            for i in src:
                s_unused[i] = _unused_entry(sources[i], why, stage, t)
            return
        srcs, tgts = [sources[i] for i in src], [targets[j] for j in tgt]
        how, reason, value = _plan(
            srcs, tgts, shape_mismatch, lambda: _is_stem(srcs[0], tgts[0], sources, targets, flows)
        )
        plans.append(_Plan(src, tgt, stage, how, reason, value))

    def open_sources() -> list[int]:
        return [i for i in range(len(sources)) if i not in s_unused and i not in paired_s]

    vocab = token_row_map(source, target)  # text models with different tokenizers
    if vocab is not None:
        i_s = next((i for i, s in enumerate(sources) if s.name == vocab.source_name), None)
        j_t = next((j for j, t in enumerate(targets) if t.name == vocab.target_name), None)
        if i_s is not None and j_t is not None and j_t not in excluded:
            s, t = sources[i_s], targets[j_t]
            with torch.no_grad():
                t.value[vocab.target_rows] = s.value[vocab.source_rows].to(t.value.dtype)
            status: Status = "copied" if vocab.shared == t.shape[0] else "partial"
            t_entries[j_t] = TransferEntry(t.name, s.name, status, "name", t.shape, s.shape, vocab.reason(),
                                           t.is_parameter, vocab.shared * t.shape[1])
            paired_s.add(i_s)
            paired_t.add(j_t)

    def open_targets(with_excluded: bool) -> list[int]:
        return [
            j
            for j in range(len(targets))
            if (j not in t_entries or (with_excluded and j in excluded)) and j not in paired_t
        ]

    with torch.no_grad():
        if "name" in match_list:
            t_by_name = {targets[j].name: j for j in open_targets(with_excluded=True)}
            for i in open_sources():
                if sources[i].name in t_by_name:
                    pair((i,), (t_by_name[sources[i].name],), "name")
        if "suffix" in match_list:
            os_, ot = open_sources(), open_targets(with_excluded=True)
            for a, b in _suffix_pairs([sources[i] for i in os_], [targets[j] for j in ot]):
                pair((os_[a],), (ot[b],), "suffix")
        if "structure" in match_list:
            os_, ot = open_sources(), open_targets(with_excluded=False)
            if os_ and ot:
                s_list, t_list = [sources[i] for i in os_], [targets[j] for j in ot]
                flow_s, flow_t = flows.get("source"), flows.get("target")
                for a, b in _structure_pairs(s_list, t_list, shape_mismatch, flow_s, flow_t):
                    pair(tuple(os_[x] for x in a), tuple(ot[y] for y in b), "structure")
        _refuse_misfed(plans, sources, targets, flows)
        for plan in plans:
            entries, unused_here = _execute(plan, sources, targets)
            for j, e in zip(plan.tgt, entries, strict=True):
                t_entries[j] = e
            for i, u in zip(plan.src, unused_here, strict=False):
                s_unused[i] = u
        _fold_token_types(sources, targets, t_entries, s_unused, paired_s)

    stages_run = ", ".join(m for m in STAGES if m in match_list)
    no_source = f"no matching source tensor (stages: {stages_run})"
    no_target = f"no matching target tensor (stages: {stages_run})"
    entries = [t_entries.get(j) or _new_entry(t, no_source) for j, t in enumerate(targets)]
    unused = [
        s_unused[i] if i in s_unused else _unused_entry(s, no_target)
        for i, s in enumerate(sources)
        if i in s_unused or i not in paired_s
    ]
    deliberate = set(excluded) | {j for j, e in t_entries.items() if e.reason == why_buffers}
    _flag_upstream_new(entries, deliberate, flows)
    report = TransferReport(entries=entries, unused=unused)
    logger.info("transfer_parameters: %s", report.summary_line())
    return report


__all__ = ["TransferEntry", "TransferReport", "transfer_parameters"]
