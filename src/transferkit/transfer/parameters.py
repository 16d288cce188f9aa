"""Copy weights from a source model (or state dict) into a target model, and report what moved.

:func:`transfer_parameters` matches source tensors to target tensors in three stages (by name, by
name suffix, by structure), copies every matched tensor in place and returns a
:class:`TransferReport` with one entry per target tensor, so a partial load is never silent (the
timm convention: report the reason for every tensor that was not loaded).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from transferkit.errors import CheckpointError, ConfigError

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
        source_name: State-dict name in the source the values came from, or ``None``.
        status: ``"copied"`` (whole tensor), ``"partial"`` (overlapping slice), ``"new"`` (target
            keeps its own values) or ``"unused"`` (source tensor not copied anywhere).
        stage: Matching stage that paired the tensors (``"name"``, ``"suffix"``, ``"structure"``)
            or ``None``.
        target_shape: Shape of the target tensor (``None`` for an unused source tensor).
        source_shape: Shape of the source tensor, or ``None``.
        reason: Human-readable explanation (what slice was copied, why nothing was).
        is_parameter: Whether the tensor (the target's; the source's for unused entries) is a
            parameter rather than a buffer.
        numel_transferred: Number of target elements overwritten with source values.
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
    """

    entries: list[TransferEntry] = field(default_factory=list)
    unused: list[TransferEntry] = field(default_factory=list)

    @property
    def copied(self) -> list[TransferEntry]:
        """Target tensors that received the whole source tensor."""
        return [e for e in self.entries if e.status == "copied"]

    @property
    def partial(self) -> list[TransferEntry]:
        """Target tensors that received an overlapping slice of a differently-shaped source."""
        return [e for e in self.entries if e.status == "partial"]

    @property
    def new(self) -> list[TransferEntry]:
        """Target tensors that kept their own values."""
        return [e for e in self.entries if e.status == "new"]

    def summary(self) -> dict[str, Any]:
        """Counts and the fraction of target parameter elements that now hold source values.

        Returns:
            ``{"copied", "partial", "new", "unused", "target_tensors", "by_stage",
            "params_transferred", "params_total", "fraction_params_transferred"}``. The fraction
            counts parameters only (not buffers); it is ``0.0`` for a target without parameters.
        """
        by_stage: dict[str, int] = {s: 0 for s in STAGES}
        for e in self.entries:
            if e.status in ("copied", "partial") and e.stage is not None:
                by_stage[e.stage] += 1
        params = [e for e in self.entries if e.is_parameter]
        total = sum(math.prod(e.target_shape or ()) for e in params)
        moved = sum(e.numel_transferred for e in params)
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
        }

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
    return (e.status, e.target_name or "-", e.source_name or "-", shapes, e.stage or "-", e.reason)


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
        last = self.name.rsplit(".", 1)[-1]
        return last if last in KNOWN_KINDS else "other"

    @property
    def module(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name else ""


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


def _copy(src: _Tensor, tgt: _Tensor, policy: str) -> tuple[Status, str, int]:
    """Copy ``src`` into ``tgt`` in place if shapes allow; return (status, reason, numel)."""
    ss, ts = src.shape, tgt.shape
    if ss == ts:
        tgt.value.copy_(src.value.to(device=tgt.value.device, dtype=tgt.value.dtype))
        return "copied", "same shape", tgt.value.numel()
    if len(ss) != len(ts):
        return "new", f"source {ss} -> target {ts}: different number of dims, not copied", 0
    if policy == "skip":
        return (
            "new",
            f"source {ss} -> target {ts}: shape differs, skipped (shape_mismatch='skip')",
            0,
        )
    src_idx, tgt_idx = _overlap(ss, ts, tgt.kind)
    part = src.value[src_idx].to(device=tgt.value.device, dtype=tgt.value.dtype)
    tgt.value[tgt_idx].copy_(part)
    s_str, t_str = _index_str(src_idx, ss, ts), _index_str(tgt_idx, ts, ss)
    where = f"copied {t_str}" if s_str == t_str else f"copied source{s_str} into {t_str}"
    return "partial", f"source {ss} -> target {ts}: {where}", part.numel()


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
    over suffix relations) and both tensors have the same number of dims.
    """
    s_norm = [_strip_wrappers(t.name) for t in sources]
    t_norm = [_strip_wrappers(t.name) for t in targets]
    s_cands, t_cands = _candidates(s_norm, t_norm), _candidates(t_norm, s_norm)
    pairs = []
    for i, cands in enumerate(s_cands):
        if len(cands) == 1:
            (j,) = cands
            if t_cands[j] == {i} and sources[i].value.dim() == targets[j].value.dim():
                pairs.append((i, j))
    return pairs


def _groups(tensors: list[_Tensor]) -> list[list[int]]:
    """Indices of consecutive tensors that belong to one module (same name prefix)."""
    groups: list[list[int]] = []
    for i, t in enumerate(tensors):
        if groups and tensors[groups[-1][-1]].module == t.module:
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


def _structure_pairs(sources: list[_Tensor], targets: list[_Tensor], policy: str) -> list[tuple[int, int]]:
    """Pair remaining tensors by order and shape (see :func:`transfer_parameters`)."""
    if not sources or not targets:
        return []
    s_groups, t_groups = _groups(sources), _groups(targets)

    def sig(tensors: list[_Tensor], group: list[int]) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return tuple((tensors[k].kind, tensors[k].shape) for k in group)

    s_sigs = [sig(sources, g) for g in s_groups]
    t_sigs = [sig(targets, g) for g in t_groups]

    def module_score(a: int, b: int) -> float:
        sa, tb = s_sigs[a], t_sigs[b]
        if sa == tb:
            return 1.0
        if policy != "slice" or len(sa) != len(tb):
            return 0.0
        fracs = []
        for (ka, shape_a), (kb, shape_b) in zip(sa, tb, strict=True):
            if ka != kb or len(shape_a) != len(shape_b):
                return 0.0
            big = math.prod(max(x, y) for x, y in zip(shape_a, shape_b, strict=True))
            small = math.prod(min(x, y) for x, y in zip(shape_a, shape_b, strict=True))
            fracs.append(small / big if big else 1.0)
        return 0.25 * (0.5 + 0.5 * sum(fracs) / len(fracs))

    if s_sigs == t_sigs:  # same architecture, different names: pair everything in order
        module_pairs = [(k, k) for k in range(len(s_sigs))]
    else:
        module_pairs = _align(len(s_groups), len(t_groups), module_score)
    return [(si, ti) for a, b in module_pairs for si, ti in zip(s_groups[a], t_groups[b], strict=True)]


# ----------------------------------------------------------------------------------------------
# Public entry point


def transfer_parameters(
    source: nn.Module | Mapping[str, torch.Tensor],
    target: nn.Module,
    *,
    shape_mismatch: Literal["slice", "skip"] = "slice",
    exclude: Sequence[str] = (),
    match: Sequence[Literal["name", "suffix", "structure"]] = ("name", "suffix", "structure"),
    include_buffers: bool = True,
) -> TransferReport:
    """Copy every source tensor that has a place in ``target``, in place, and report what moved.

    Matching runs in stages, always in this order (those not listed in ``match`` are skipped);
    each stage sees only the tensors the earlier stages left unpaired:

    1. ``"name"``: identical state-dict names. The pair is final even when the shapes do not
       allow a copy (then the target stays ``"new"`` and the source is ``"unused"``, with why).
    2. ``"suffix"``: names equal after stripping wrapper prefixes (:data:`WRAPPER_PREFIXES`, e.g.
       ``"module."``, ``"_orig_mod."``, ``"model."``, ``"backbone."``), or one stripped name is a
       dotted suffix of the other (``"conv1.weight"`` <-> ``"features.conv1.weight"``). Only pairs
       that are unambiguous on both sides and have the same number of dims are taken.
    3. ``"structure"``: for two implementations of one architecture under different names. The
       remaining tensors of each side, in state-dict order, are grouped into modules (consecutive
       tensors with the same name prefix) and each module gets a signature: the list of
       ``(kind, shape)`` of its tensors, where kind is the last name component for
       ``weight``/``bias``/``running_mean``/``running_var``/``num_batches_tracked`` and ``"other"``
       otherwise. The two module sequences are aligned by a weighted longest common subsequence
       (dynamic programming): equal signatures score 1; with ``shape_mismatch="slice"``, modules
       with the same kinds and ndims but other sizes score 0.125-0.25 (more for more overlap), so
       they only fill gaps between exact matches. Pairs keep the order of both models, so a deeper
       or shallower target still pairs the layers that correspond; ties go to the earliest pairs
       (extra repeated blocks of a deeper target are left at its end). Tensors of a paired module
       move together; a module is never split.

       Limits: it cannot tell apart modules whose signatures coincide (two 64-wide BatchNorm
       layers swapped in order get swapped weights; a LayerNorm and an affine-only norm of the
       same width look alike); it assumes both state dicts list layers in forward order and both
       implementations group the same tensors into a module (a conv whose bias lives in another
       module is not matched); it does not reshape (a Linear never matches a 1x1 conv); the
       dynamic program costs O(n*m) in the number of modules.

    Shapes: equal -> ``"copied"``. Same ndim but different sizes -> with ``shape_mismatch="slice"``
    the overlapping region is copied (leading slice in each dim; centred crop/pad for the spatial
    dims of ``weight`` tensors with >= 3 dims, i.e. conv kernels) -> ``"partial"``; with
    ``"skip"`` -> ``"new"`` with the reason. Different ndim -> never copied.

    Target tensors keep their dtype and device (values are converted with ``.to``); integer
    buffers such as ``num_batches_tracked`` are copied as they are. The source is never modified.

    Args:
        source: Model or state dict (name -> tensor) to copy from.
        target: Model to fill, in place (under ``torch.no_grad``).
        shape_mismatch: ``"slice"`` copies the overlap of differently-sized tensors, ``"skip"``
            leaves them.
        exclude: ``fnmatch`` patterns on TARGET names (e.g. ``"head.*"``); matching tensors stay
            ``"new"`` and are never a match target (a source tensor that would go there by name is
            reported unused). A pattern that matches nothing raises a warning.
        match: Which stages to run (any of ``"name"``, ``"suffix"``, ``"structure"``).
        include_buffers: If ``False``, only parameters are matched (target buffers stay ``"new"``;
            for a state-dict source, entries ending in ``running_mean``/``running_var``/
            ``num_batches_tracked`` are treated as buffers).

    Returns:
        A :class:`TransferReport` with one entry per target tensor and the unused source tensors.

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
    patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    targets = _collect_target(target)
    sources = _collect_source(source)

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
    if not include_buffers:
        why = "buffer not considered (include_buffers=False)"
        for j, t in enumerate(targets):
            if not t.is_parameter and j not in t_entries:
                t_entries[j] = _new_entry(t, why)
        for i, s in enumerate(sources):
            if not s.is_parameter:
                s_unused[i] = _unused_entry(s, why)
    paired_s: set[int] = set()
    paired_t: set[int] = set()

    def pair(i: int, j: int, stage: Stage) -> None:
        s, t = sources[i], targets[j]
        paired_s.add(i)
        paired_t.add(j)
        if j in excluded:
            why = f"target {t.name!r} excluded by pattern {excluded[j]!r}"
            s_unused[i] = _unused_entry(s, why, stage, t)
            return
        status, reason, numel = _copy(s, t, shape_mismatch)
        t_entries[j] = TransferEntry(
            t.name, s.name, status, stage, t.shape, s.shape, reason, t.is_parameter, numel
        )
        if status == "new":
            s_unused[i] = _unused_entry(s, f"paired with target {t.name!r} but {reason}", stage, t)

    def open_sources() -> list[int]:
        return [i for i in range(len(sources)) if i not in s_unused and i not in paired_s]

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
                    pair(i, t_by_name[sources[i].name], "name")
        if "suffix" in match_list:
            os_, ot = open_sources(), open_targets(with_excluded=True)
            for a, b in _suffix_pairs([sources[i] for i in os_], [targets[j] for j in ot]):
                pair(os_[a], ot[b], "suffix")
        if "structure" in match_list:
            os_, ot = open_sources(), open_targets(with_excluded=False)
            s_list, t_list = [sources[i] for i in os_], [targets[j] for j in ot]
            for a, b in _structure_pairs(s_list, t_list, shape_mismatch):
                pair(os_[a], ot[b], "structure")

    stages_run = ", ".join(m for m in STAGES if m in match_list)
    no_source = f"no matching source tensor (stages: {stages_run})"
    no_target = f"no matching target tensor (stages: {stages_run})"
    entries = [t_entries.get(j) or _new_entry(t, no_source) for j, t in enumerate(targets)]
    unused = [
        s_unused[i] if i in s_unused else _unused_entry(s, no_target)
        for i, s in enumerate(sources)
        if i in s_unused or i not in paired_s
    ]
    report = TransferReport(entries=entries, unused=unused)
    logger.info("transfer_parameters: %s", report.summary_line())
    return report


__all__ = ["TransferEntry", "TransferReport", "transfer_parameters"]
