"""EWC: elastic weight consolidation, a Fisher-weighted pull towards the source's weights.

Kirkpatrick et al. (2017), "Overcoming catastrophic forgetting in neural networks" (PNAS). The
weights important for the source task (large diagonal Fisher information ``F_i``, estimated on the
source data with the source head) are held close to their source values ``w*_i``::

    Ω(w) = λ/2 · Σ_i F_i (w_i − w*_i)²

Two estimates of the diagonal Fisher are offered:

* ``"empirical"``: ``F = 1/N Σ_n (∇ log p(y_n | x_n))²`` with the observed labels ``y_n``;
* ``"true"``: ``F = 1/N Σ_n Σ_c p(c | x_n) (∇ log p(c | x_n))²``, the expectation over the model's
  own predictive distribution, computed exactly (one gradient per class, no sampling).

Per-example gradients come from ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``), with a
per-example loop as fallback for models ``vmap`` cannot batch. The Fisher is computed once and can
be stored beside the source model (:func:`save_fisher`, :func:`load_fisher`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from safetensors import safe_open
from torch import nn
from torch.func import functional_call, grad, vmap

from transferkit.data.base import TensorDataset
from transferkit.data.tokens import model_inputs
from transferkit.engine.objectives import (
    OBJECTIVES,
    Batch,
    Coefficient,
    Objective,
    ObjectiveOptions,
    PositiveInt,
    check_coefficient,
)
from transferkit.engine.parameter_efficient import effective_parameters
from transferkit.errors import CheckpointError, ConfigError, LabelError, ShapeError
from transferkit.io import load_state_dict, save_state_dict
from transferkit.io.weights import tensor_digest
from transferkit.transfer.regularize.l2sp import match_reference

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext

logger = logging.getLogger(__name__)

FISHER_NAME = "fisher.safetensors"
KINDS = ("empirical", "true")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(
            f"Fisher kind must be 'empirical' (observed labels) or 'true' (the model's own "
            f"predictive distribution), got {kind!r}"
        )
    return kind


# ---------------------------------------------------------------------------- Fisher estimate
def _per_example_sq_grads(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
    vectorise: bool,
) -> dict[str, torch.Tensor]:
    """Squared gradients of ``log p(target_n | x_n)`` per example: ``{name: (N, *shape)}``."""

    def log_lik(p: dict[str, torch.Tensor], xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.log_softmax(out.float(), dim=-1)[0].gather(0, ti.reshape(1))[0]

    if vectorise:
        g = vmap(grad(log_lik), in_dims=(None, 0, 0))(params, x, targets)
        sq = {k: v.pow(2) for k, v in g.items()}
    else:
        rows = [grad(log_lik)(params, x[i], targets[i]) for i in range(len(x))]
        sq = {k: torch.stack([r[k] for r in rows]).pow(2) for k in params}
    return sq


def fisher_diagonal(
    model: nn.Module,
    data: TensorDataset,
    *,
    kind: Literal["empirical", "true"] = "empirical",
    batch_size: int = 64,
    max_examples: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """The diagonal Fisher information of ``model``'s parameters on ``data``.

    Args:
        model: The source model with its source head, mapping ``x`` ``(N, ...)`` to logits
            ``(N, C)``. It is evaluated in eval mode (restored afterwards) and left unchanged.
        data: Source-task examples; with ``kind="empirical"`` their labels must lie in ``[0, C)``.
        kind: ``"empirical"``: mean over examples of ``(∇_w log p(y_n | x_n))²`` with the observed
            labels. ``"true"``: mean over examples of ``Σ_c p(c | x_n) (∇_w log p(c | x_n))²``
            (exact expectation over the model's predictive distribution).
        batch_size: Examples per vectorised batch (lower it if memory runs short).
        max_examples: Use only the first ``max_examples`` examples; ``None`` = all.
        device: Where to compute (default: the model's device).

    Returns:
        ``{name: F}`` for every parameter of ``model`` (also frozen ones), ``F`` with the
        parameter's shape, float32, on the CPU.

    Raises:
        ConfigError: unknown ``kind``, ``batch_size`` < 1, ``max_examples`` < 1, or empty data.
        LabelError: an empirical-Fisher label the model cannot predict.
    """
    _check_kind(kind)
    if int(batch_size) < 1:
        raise ConfigError(f"fisher_diagonal batch_size must be >= 1, got {batch_size!r}")
    if max_examples is not None and int(max_examples) < 1:
        raise ConfigError(
            f"fisher_diagonal max_examples must be >= 1 or None (all), got {max_examples!r}"
        )
    n = len(data) if max_examples is None else min(len(data), int(max_examples))
    if n == 0:
        raise ConfigError(
            f"cannot estimate the Fisher information on an empty dataset ({data.name!r})"
        )
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    params = {k: v.detach().to(device) for k, v in model.named_parameters()}
    buffers = {k: v.detach().to(device) for k, v in model.named_buffers()}
    sums = {k: torch.zeros(v.shape, dtype=torch.float32, device=device) for k, v in params.items()}
    was_training = model.training
    model.eval()
    vectorise = True
    try:
        for start in range(0, n, int(batch_size)):
            x = data.x[start:min(n, start + int(batch_size))].to(device)
            with torch.no_grad():
                log_p = F.log_softmax(functional_call(model, (params, buffers), (x,)).float(), -1)
            n_classes = log_p.shape[1]
            if kind == "empirical":
                y = data.y[start:start + len(x)].to(device)
                if int(y.max()) >= n_classes:
                    raise LabelError(
                        f"source data {data.name!r} has label {int(y.max())} but the model "
                        f"predicts {n_classes} classes; pass the source model WITH its source head "
                        "and data of the source task"
                    )
                plan = [(y, None)]
            else:
                probs = log_p.exp()
                plan = [(torch.full((len(x),), c, device=device, dtype=torch.long), probs[:, c])
                        for c in range(n_classes)]
            for targets, w in plan:
                sq, vectorise = _sq_grads_any(model, params, buffers, x, targets, vectorise)
                for k, v in sq.items():
                    if w is not None:
                        v = v * w.view(-1, *([1] * (v.ndim - 1)))
                    sums[k] += v.sum(0)
    finally:
        model.train(was_training)
    logger.info("estimated the %s Fisher information on %d examples of %r", kind, n, data.name)
    return {k: (v / n).cpu() for k, v in sums.items()}


def _sq_grads_any(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
    vectorise: bool,
) -> tuple[dict[str, torch.Tensor], bool]:
    """Vectorised per-example squared gradients, falling back to a loop where vmap fails."""
    if vectorise:
        try:
            return _per_example_sq_grads(model, params, buffers, x, targets, True), True
        except (RuntimeError, NotImplementedError) as exc:
            logger.info("vmap cannot batch this model (%s); computing gradients one by one", exc)
    return _per_example_sq_grads(model, params, buffers, x, targets, False), False


# ---------------------------------------------------------------------------- storage
def _fisher_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / FISHER_NAME if path.is_dir() or not path.suffix else path


def save_fisher(
    fisher: Mapping[str, torch.Tensor],
    folder_or_file: str | os.PathLike,
    *,
    kind: str = "empirical",
    n_examples: int | None = None,
    key: str | None = None,
) -> Path:
    """Write a diagonal Fisher as safetensors (atomically), e.g. into the source model's folder.

    Args:
        fisher: ``{name: F}`` as returned by :func:`fisher_diagonal`.
        folder_or_file: A folder (the file is ``<folder>/fisher.safetensors``) or a file path.
        kind: ``"empirical"`` or ``"true"``, stored in the file's metadata.
        n_examples: Number of examples it was estimated on, stored in the metadata.
        key: What it was estimated from (:func:`fisher_key`), stored in the metadata so a cache
            is only reused for the same source weights, source examples and kind.

    Returns:
        The file written.
    """
    meta = {"kind": _check_kind(kind), "n_examples": str(n_examples if n_examples else "")}
    if key:
        meta["key"] = key
    return save_state_dict(fisher, _fisher_file(folder_or_file), metadata=meta)


def fisher_info(path: str | os.PathLike) -> dict[str, str]:
    """The metadata (``kind``, ``n_examples``) of a Fisher file or of a folder's fisher file.

    Raises:
        CheckpointError: the file is missing or not safetensors.
    """
    file = _fisher_file(path)
    if not file.is_file():
        raise CheckpointError(f"Fisher file {str(file)!r} does not exist; compute it first")
    try:
        with safe_open(str(file), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(
            f"{str(file)!r} is not a valid safetensors Fisher file ({exc}); delete it and "
            "compute the Fisher again"
        ) from exc


def load_fisher(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a Fisher written by :func:`save_fisher` (a file, or a folder holding fisher.safetensors).

    Raises:
        CheckpointError: missing or corrupt file.
    """
    return load_state_dict(_fisher_file(path))


def fisher_key(source: nn.Module, data: TensorDataset, n_examples: int, kind: str) -> str:
    """What a Fisher estimate depends on, as one SHA-256: the source's weights, the first
    ``n_examples`` source examples (inputs and labels) and the kind."""
    weights = tensor_digest(sorted(source.state_dict().items()))
    examples = tensor_digest([("x", data.x[:n_examples]), ("y", data.y[:n_examples])])
    return tensor_digest([(f"{weights}|{examples}|{n_examples}|{kind}", torch.empty(0))])


def cache_file_name(kind: str, key: str) -> str:
    """``fisher-<kind>-<first 16 hex of key>.safetensors``."""
    return f"fisher-{kind}-{key[:16]}.safetensors"


def find_cached_fisher(folder: str | os.PathLike, kind: str, key: str) -> Path | None:
    """A Fisher in ``folder`` estimated from exactly what ``key`` describes (:func:`fisher_key`):
    ``fisher-<kind>-<key>.safetensors``, or ``fisher.safetensors`` / ``fisher-<kind>.safetensors``
    whose metadata records the same key. Files of other weights, data or counts are never used."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for candidate in (folder / cache_file_name(kind, key), folder / f"fisher-{kind}.safetensors",
                      folder / FISHER_NAME):
        if candidate.is_file():
            try:
                meta = fisher_info(candidate)
            except CheckpointError as exc:
                logger.warning("ignoring unreadable cached Fisher: %s", exc)
                continue
            if meta.get("kind") == kind and meta.get("key") == key:
                return candidate
            logger.info("EWC: not using %s: it was estimated from other source weights, source "
                        "examples or counts (pass fisher= to use it anyway)", candidate)
    return None


def ewc_penalty(
    params: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    fisher: Mapping[str, torch.Tensor],
    lam: float,
) -> torch.Tensor:
    """``λ/2 Σ_i F_i (w_i − w*_i)²`` (Kirkpatrick et al., 2017).

    Args:
        params: Current parameters by name.
        reference: Source values ``w*`` by name.
        fisher: Diagonal Fisher ``F`` by name, same shapes as ``reference``.
        lam: ``λ`` >= 0.

    Returns:
        A float32 scalar; parameters missing from ``reference`` or ``fisher`` (or of another
        shape) contribute nothing.
    """
    lam = check_coefficient("ewc_penalty", "lam", lam)
    terms = []
    device = None
    for name, w in params.items():
        device = w.device
        ref, f = reference.get(name), fisher.get(name)
        if ref is None or f is None or tuple(ref.shape) != tuple(w.shape):
            continue
        diff = w.float() - ref.to(w.device, torch.float32)
        terms.append((f.to(w.device, torch.float32) * diff.pow(2)).sum())
    if not terms:
        return torch.zeros((), device=device, dtype=torch.float32)
    return 0.5 * lam * torch.stack(terms).sum()


class EWC(Objective):
    """Elastic weight consolidation (Kirkpatrick et al., 2017) as a loss term.

    Use beside the task loss: ``[CrossEntropy(), EWC(source, source_data, lam=100)]``.

    Args:
        source: The source model WITH its source head: gives ``w*`` and, unless ``fisher`` is
            given, the model whose Fisher is estimated. ``None`` with a given ``fisher`` takes the
            student's own parameters at setup as ``w*``.
        source_data: Examples of the source task for the Fisher estimate.
        fisher: A precomputed Fisher: ``{name: F}``, or a path to a file (or folder) written by
            :func:`save_fisher`.
        kind: ``"empirical"`` or ``"true"`` (see :func:`fisher_diagonal`).
        lam: ``λ`` >= 0; the Fisher of a trained model is small, so 1-10^4 is usual.
        max_examples: Source examples used for the estimate (``None`` = all).
        weight: Multiplier of this term in the total loss.
        cache_dir: A folder for the computed Fisher (``fisher-<kind>-<key>.safetensors``); without
            it the Fisher is kept in the workflow's cache folder (``FitContext.cache_dir``, shared
            by its seeds and arms), else in the run's folder (``FitContext.run_dir``). A cached Fisher is
            reused only when it was estimated from the same source weights, the same source
            examples and count, and the same kind (:func:`fisher_key`); a Fisher saved beside a
            source model's files with :func:`save_fisher` (``key=``) is read under the same rule.

    Attributes:
        fisher: ``{name: F}`` on the training device, after :meth:`setup`, for the student
            parameters matched by name and shape (the backbone; the new head gets no penalty).
        reference: ``{name: w*}`` for the same parameters.
        computed: Whether setup computed the Fisher (False when given or read from a cache).

    Raises:
        ConfigError: neither ``source_data`` nor ``fisher``, bad ``kind``, negative ``lam``,
            ``max_examples`` < 1.
    """

    class Options(ObjectiveOptions):
        """EWC's options (the source model, source data and a given Fisher are objects the workflow
        passes, not options)."""

        kind: Literal["empirical", "true"] = Field(
            "empirical", description="Fisher estimate: 'empirical' (observed labels) or 'true' (the "
                                     "model's own predictive distribution).",
        )
        lam: Coefficient = Field(
            1.0, description="lambda, the strength of the pull to the source weights.",
            json_schema_extra={"hint": "1-10^4 is usual"},
        )
        max_examples: PositiveInt | None = Field(
            1000, description="Source examples used for the Fisher estimate; None: all.",
        )
        cache_dir: str | None = Field(
            None, description="Folder for the computed Fisher (default: the run's folder); a cached "
                              "one is reused only for the same source weights, examples and kind.",
        )

        @field_validator("cache_dir", mode="before")
        @classmethod
        def _path_as_text(cls, v: object) -> object:
            return os.fspath(v) if isinstance(v, os.PathLike) else v

    def __init__(
        self,
        source: nn.Module | None = None,
        source_data: TensorDataset | None = None,
        fisher: Mapping[str, torch.Tensor] | str | os.PathLike | None = None,
        kind: str = "empirical",
        lam: float = 1.0,
        max_examples: int | None = 1000,
        weight: float = 1.0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(weight, kind=kind, lam=lam, max_examples=max_examples, cache_dir=cache_dir)
        self.kind = kind = self.options.kind
        self.lam = self.options.lam
        max_examples, cache_dir = self.options.max_examples, self.options.cache_dir
        if source is not None and not isinstance(source, nn.Module):
            raise ConfigError(f"EWC source must be an nn.Module, got {type(source).__name__}")
        if fisher is None and source_data is None:
            raise ConfigError(_NO_DATA)
        if fisher is None and source is None:
            raise ConfigError(
                "EWC needs the source model (with its source head) to estimate the Fisher: pass "
                "source= (e.g. --source path/to/model) or a saved fisher="
            )
        self.max_examples = max_examples
        self.source_data = source_data
        self.cache_dir = cache_dir
        self._fisher_arg = fisher
        # Kept out of the module tree on purpose: the source must not be trained or saved.
        self.__dict__["_source"] = source
        self.fisher: dict[str, torch.Tensor] = {}
        self.reference: dict[str, torch.Tensor] = {}
        self.computed = False
        self.name = "ewc"

    def extra_repr(self) -> str:
        return f"weight={self.weight}, lam={self.lam}, kind={self.kind!r}"

    def _get_fisher(self, ctx: FitContext) -> dict[str, torch.Tensor]:
        """The given Fisher, else a cached one of exactly this source, data, count and kind, else
        computed (and cached in ``cache_dir`` or the run folder)."""
        if isinstance(self._fisher_arg, Mapping):
            return dict(self._fisher_arg)
        if self._fisher_arg is not None:
            return load_fisher(self._fisher_arg)
        source: nn.Module = self.__dict__["_source"]
        data = model_inputs(self.source_data, source)  # texts: the source's token ids
        n = len(data) if self.max_examples is None else min(len(data), self.max_examples)
        key = fisher_key(source, data, n, self.kind)
        origin = getattr(getattr(source, "info", None), "source", "") or None
        store = self.cache_dir or ctx.cache_dir or ctx.run_dir
        for folder in (store, origin):
            hit = find_cached_fisher(folder, self.kind, key) if folder else None
            if hit is not None:
                logger.info("EWC: using the cached %s Fisher %s", self.kind, hit)
                return load_fisher(hit)
        fisher = fisher_diagonal(source, data, kind=self.kind, max_examples=self.max_examples,
                                 device=ctx.device)
        self.computed = True
        if store is not None and ctx.rank == 0:
            try:
                path = save_fisher(fisher, Path(store) / cache_file_name(self.kind, key), kind=self.kind,
                                   n_examples=n, key=key)
                logger.info("EWC: saved the Fisher to %s", path)
            except OSError as exc:  # a read-only folder: train on, without the cache
                logger.warning("EWC: could not cache the Fisher in %s (%s); it will be computed "
                               "again next time", store, exc.strerror or exc)
        return fisher

    def setup(self, ctx: FitContext) -> None:
        """Get the Fisher (given, cached or computed) and ``w*``; match them to the student.

        Raises:
            ShapeError: a Fisher entry's shape differs from its source parameter's.
        """
        self.computed = False
        source: nn.Module | None = self.__dict__["_source"]
        student = effective_parameters(ctx.model)  # under lora: merged weights, plain names
        fisher = self._get_fisher(ctx)
        ref_all = ({n: p.detach() for n, p in source.named_parameters()} if source is not None
                   else {n: p.detach() for n, p in student.items()})
        for name, f in fisher.items():
            ref = ref_all.get(name)
            if ref is not None and tuple(ref.shape) != tuple(f.shape):
                raise ShapeError(
                    f"EWC Fisher entry {name!r} has shape {tuple(f.shape)} but the source "
                    f"parameter {tuple(ref.shape)}; the Fisher belongs to another model: delete "
                    "the cached file or pass the matching fisher="
                )
        self.reference = match_reference(student, ref_all, ctx.device)
        self.fisher = {n: fisher[n].to(ctx.device, torch.float32)
                       for n in list(self.reference) if n in fisher}
        self.reference = {n: self.reference[n] for n in self.fisher}
        if not self.fisher:
            logger.warning("EWC: no student parameter matches the source's Fisher by name and "
                           "shape; the penalty is 0")
        else:
            logger.info("EWC: penalising %d parameter tensors (%s)", len(self.fisher),
                        ", ".join(list(self.fisher)[:4]) + (" ..." if len(self.fisher) > 4 else ""))

    def forward(self, batch: Batch) -> torch.Tensor:
        """``λ/2 Σ F (w − w*)²`` of the student's current parameters, a float32 scalar."""
        if batch.model is None:
            raise ConfigError("EWC needs batch.model (the student); the trainer sets it")
        return ewc_penalty(effective_parameters(batch.model), self.reference, self.fisher,
                           self.lam)


_NO_DATA = (
    "EWC needs source data to estimate the Fisher information: pass source_data= "
    "(e.g. --source-data mnist5k) or a saved fisher="
)

OBJECTIVES.register("ewc", EWC)

__all__ = [
    "EWC",
    "ewc_penalty",
    "cache_file_name",
    "find_cached_fisher",
    "fisher_key",
    "fisher_diagonal",
    "fisher_info",
    "load_fisher",
    "save_fisher",
]
