"""Rank candidate source models on target data with transferability scores.

Each candidate's backbone features are computed once; every requested score is then computed
from those features (LEEP and NCE also use the candidate's own head on them). Scores are all
"higher is better", so the best candidate comes first in :meth:`RankResult.order`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.data.base import TensorDataset
from transferkit.errors import ConfigError
from transferkit.io import atomic_write_text
from transferkit.selection.scores import SCORES, ScoreSpec

logger = logging.getLogger(__name__)

KNOWN_SCORES: tuple[str, ...] = tuple(SCORES.names())
"""Every score name :func:`rank` accepts (the names in :data:`~transferkit.selection.SCORES` when
this module was imported)."""

# H-score's shrinkage variant by default: plain H-score ties at its maximum (C - 1) whenever the
# feature dimension exceeds the number of labelled examples, which at 10 labels per class is always.
DEFAULT_SCORES: tuple[str, ...] = ("logme", "leep", "nce", "h_score_shrinkage", "gbc")

MIN_POOL = 5
"""The fewest candidates whose ranking can be checked against fine-tuning: with ``n`` candidates in a
random order a perfect Kendall tau (1.0) happens with probability ``1 / n!`` and one swapped pair or
better with ``n / n!``; at 5 both are below 0.05 (1/120 = 0.0083 and 5/120 = 0.042), at 4 one swapped
pair already happens 1 time in 6."""


def _p(value: float) -> str:
    return f"{value:.2g}"


def pool_note(n: int) -> str | None:
    """One line saying why a pool of ``n < MIN_POOL`` candidates can't validate its ranking, with
    the exact one-sided p-value of a perfect ranking under the null of a random order (``1 / n!``);
    ``None`` for ``n >= MIN_POOL``.

    :func:`rank` computes no correlation itself; whoever fine-tunes the candidates to check that the
    scores rank them the same way (as ``bench/rank.py`` does, with Kendall's tau) can't tell a good
    score from luck on so few.
    """
    if n >= MIN_POOL:
        return None
    fact = math.factorial(MIN_POOL)
    advice = (f"rank at least {MIN_POOL} candidates (p = {_p(1 / fact)} for a perfect ranking) before "
              "trusting a correlation of the scores with fine-tuned accuracies")
    if n < 2:
        return (f"pool of {n} candidate{'s' if n != 1 else ''}: nothing is ranked, so no score can be "
                f"checked against fine-tuning; {advice}")
    chance = math.factorial(n)
    text = (f"pool of {n} candidates: too few to validate the ranking; even a perfect agreement with "
            f"fine-tuned accuracies would happen by chance 1 time in {chance} (p = {_p(1 / chance)}, "
            "Kendall tau = 1, one-sided)")
    if n >= 3:  # one swapped pair or better: the n orders with at most one inversion
        swapped = math.factorial(n - 1)
        text += f", at most one swapped pair 1 time in {swapped} (p = {_p(1 / swapped)})"
    return f"{text}; {advice}"


def _check_scores(scores: Sequence[str]) -> dict[str, ScoreSpec]:
    """Look up score names; return name (lower-cased) -> spec, de-duplicated, in the given order.

    Raises:
        ConfigError: no names.
        UnknownNameError: a name that is not in :data:`SCORES` (close names suggested).
    """
    if isinstance(scores, str):
        scores = [s for s in (p.strip() for p in scores.split(",")) if s]
    names = list(dict.fromkeys(str(s).strip().lower() for s in scores))
    if not names:
        raise ConfigError(
            f"no scores requested; pass at least one of {', '.join(SCORES.names())}"
        )
    return {name: SCORES.get(name) for name in names}


def _format(value: Any) -> str:
    """A table cell: floats with 4 significant digits, anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class RankResult:
    """Scores of every candidate.

    Attributes:
        rows: One dict per candidate, in the order given: ``name``, one float per score, and
            ``seconds_features`` / ``seconds_scores`` (wall time of the forward passes and of
            computing all scores).
        scores: The score names, in the order requested.
        note: Why the ranking can't be checked when the pool is small (fewer than
            :data:`MIN_POOL` candidates, see :func:`pool_note`), else ``None``.
        about: What was scored, for the written file (the CLI records its command line, the data
            and its size, and each candidate's spec, architecture, weights hash and preprocessing).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    scores: list[str] = field(default_factory=list)
    about: dict[str, Any] | None = None

    @property
    def note(self) -> str | None:
        """:func:`pool_note` of this pool's size: set below :data:`MIN_POOL` candidates."""
        return pool_note(len(self.rows))

    def order(self, score: str | None = None) -> list[str]:
        """Candidate names, best first, by ``score`` (default: the first score).

        Ties keep the candidates' given order; NaN scores go last.

        Raises:
            ConfigError: ``score`` is not one of :attr:`scores`.
        """
        key = self.scores[0] if score is None else score
        if key not in self.scores:
            raise ConfigError(
                f"score {key!r} was not computed; choose one of {', '.join(self.scores)}"
            )

        def sort_key(row: dict[str, Any]) -> float:
            value = float(row[key])
            return math.inf if math.isnan(value) else -value

        return [row["name"] for row in sorted(self.rows, key=sort_key)]

    def _columns(self) -> list[str]:
        return ["name", *self.scores, "seconds_features", "seconds_scores"]

    def table(self) -> str:
        """Aligned plain-text table, best candidate (by the first score) first, with a rank column."""
        by_name = {row["name"]: row for row in self.rows}
        header = ["rank", *self._columns()]
        body = [
            [str(i), *(_format(by_name[name][c]) for c in self._columns())]
            for i, name in enumerate(self.order() if self.scores else [], start=1)
        ]
        widths = [max(len(r[j]) for r in [header, *body]) for j in range(len(header))]

        def line(cells: list[str]) -> str:
            # names left-aligned, numbers right-aligned
            pairs = enumerate(zip(cells, widths, strict=True))
            return "  ".join(c.ljust(w) if j == 1 else c.rjust(w) for j, (c, w) in pairs).rstrip()

        return "\n".join(line(r) for r in [header, *body])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data: ``scores``, ``rows``, ``order`` (by the first score) and
        ``note`` (:attr:`note`: the small-pool warning or ``None``)."""
        return {
            "scores": list(self.scores),
            "rows": [dict(row) for row in self.rows],
            "order": self.order() if self.scores else [],
            "note": self.note,
            **({"about": self.about} if self.about is not None else {}),
        }

    def write(self, path: str | os.PathLike) -> Path:
        """Write the result atomically as ``.json`` (:meth:`to_dict`) or ``.csv`` (one row each; the
        :attr:`note` is left out of a CSV, which holds only the rows).

        Returns:
            The path written.

        Raises:
            ConfigError: the suffix is neither ``.json`` nor ``.csv``.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        elif suffix == ".csv":
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self._columns(), lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)
            text = buf.getvalue()
        else:
            raise ConfigError(
                f"cannot write a ranking to {str(path)!r} (suffix {path.suffix!r}); "
                "use a .json or .csv file"
            )
        return atomic_write_text(path, text)


def _resolve(candidate: Any, name: str) -> nn.Module:
    """A model from a module, a :class:`~transferkit.models.SourceSpec` or a
    :func:`~transferkit.models.load_model` spec."""
    from transferkit.models import SourceSpec, load_model, load_source

    if isinstance(candidate, nn.Module):
        model = candidate
    elif isinstance(candidate, SourceSpec):
        model = load_source(candidate)
    elif isinstance(candidate, (str, os.PathLike)):
        model = load_model(candidate)
    else:
        raise ConfigError(
            f"candidate {name!r} is a {type(candidate).__name__}; pass an nn.Module, a model "
            "folder or a model name"
        )
    if not hasattr(model, "forward_features"):
        raise ConfigError(
            f"candidate {name!r} ({type(model).__name__}) has no forward_features(); wrap it "
            "with transferkit.models.wrap_model"
        )
    return model


def rank(
    candidates: Mapping[str, nn.Module | str | os.PathLike],
    data: TensorDataset,
    *,
    scores: Sequence[str] = DEFAULT_SCORES,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> RankResult:
    """Score every candidate source model on the target data, without training.

    For each candidate the backbone features ``(N, D)`` are computed once. LEEP uses the
    candidate's own head on them (softmax, ``(N, Z)``) and NCE its hard predictions ``(N,)``;
    the other scores use the features and ``data.y`` ``(N,)`` directly.

    Args:
        candidates: Name -> model (a TransferNet or anything with ``forward_features`` and,
            for LEEP/NCE, ``head``) or a spec for :func:`~transferkit.models.load_model`
            (folder, weights file, built-in name).
        data: Target data ``x`` ``(N, ...)``, ``y`` ``(N,)``.
        scores: Score names registered in :data:`~transferkit.selection.SCORES`: ``logme``,
            ``leep``, ``nce``, ``h_score``, ``h_score_shrinkage``, ``gbc``, ``knn``.
        batch_size: Examples per forward pass.
        device: Where to run the models (they are moved there); default: each model's own.

    Returns:
        A :class:`RankResult`; ``seconds_features`` includes the head's forward pass; its
        :attr:`~RankResult.note` says so when fewer than :data:`MIN_POOL` candidates were given (too
        few for any check of the ranking against fine-tuning to mean much).

    Raises:
        ConfigError: no candidates, no scores, a bad ``batch_size`` or an unusable candidate.
        UnknownNameError: an unknown score name (the message lists the known ones).
        DataError, ShapeError, LabelError: from the scores on degenerate features or labels.
    """
    specs = _check_scores(scores)
    names = list(specs)
    if not candidates:
        raise ConfigError("no candidates to rank; pass at least one name -> model or model spec")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    labels = data.y.detach().cpu().numpy()
    head_scores = [n for n, spec in specs.items() if spec.needs_head]
    rows: list[dict[str, Any]] = []
    for cand_name, candidate in candidates.items():
        model = _resolve(candidate, str(cand_name))
        if head_scores and not isinstance(getattr(model, "head", None), nn.Module):
            raise ConfigError(
                f"candidate {cand_name!r} has no head module, which {', '.join(head_scores)} "
                "read; drop them from scores"
            )
        if device is not None:
            model = model.to(device)
        from transferkit.engine import predict_features

        start = time.perf_counter()
        feats = predict_features(model, data, batch_size=batch_size, device=device)
        probs = None
        if head_scores:
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    probs = torch.softmax(model.head(feats).float(), dim=-1).cpu().numpy()
            finally:
                model.train(was_training)
        feats_np = feats.detach().float().cpu().numpy()
        seconds_features = time.perf_counter() - start
        if "h_score" in specs and feats_np.shape[1] >= feats_np.shape[0]:
            logger.warning(
                "h_score of %s: %d features for %d examples, so it sits at its maximum (classes - 1) "
                "and can't tell candidates apart; use h_score_shrinkage", cand_name,
                feats_np.shape[1], feats_np.shape[0],
            )

        row: dict[str, Any] = {"name": str(cand_name)}
        start = time.perf_counter()
        for score, spec in specs.items():
            row[score] = float(spec(probs if spec.needs_head else feats_np, labels))
        row["seconds_features"] = seconds_features
        row["seconds_scores"] = time.perf_counter() - start
        logger.info("ranked %s: %s", cand_name, {k: row[k] for k in names})
        rows.append(row)
    return RankResult(rows=rows, scores=names)


__all__ = ["DEFAULT_SCORES", "KNOWN_SCORES", "MIN_POOL", "RankResult", "pool_note", "rank"]
