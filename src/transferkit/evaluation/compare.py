"""Comparing transfer runs with a from-scratch baseline: summary, gain, negative transfer.

A *run* is one training of one method with one seed (:class:`RunResult`). Runs that share a
``name`` are seeds of the same configuration; :func:`summarize` averages them and reports, for every
configuration other than the baseline, the gain in test accuracy over the baseline, whether that
gain is negative (*negative transfer*: the source knowledge hurt; Rosenstein et al., "To transfer or
not to transfer", NIPS 2005 workshop; Wang et al., "Characterizing and avoiding negative transfer",
CVPR 2019) and whether it is larger than two standard errors of the difference of the means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transferkit.errors import ConfigError
from transferkit.evaluation.metrics import Metrics

_RUN_KEYS = (
    "name",
    "method",
    "accuracy",
    "macro_f1",
    "seconds",
    "seed",
    "per_class_f1",
    "confusion",
    "history",
)


@dataclass
class RunResult:
    """The outcome of one training run (one method, one seed).

    Attributes:
        name: Identifies the configuration; runs with the same name are seeds of it
            (e.g. ``"mnist-cnn/full"``).
        method: Human-readable method (e.g. ``"full fine-tune"``, ``"from scratch"``).
        metrics: Test-set :class:`Metrics`.
        seconds: Wall-clock training time.
        seed: The random seed of this run.
        history: Per-epoch records, e.g. ``{"epoch": 1, "train_loss": 0.4, "val_accuracy": 0.9}``.
        extra: More JSON-serialisable fields copied into :meth:`to_dict` (must not reuse its keys).
    """

    name: str
    method: str
    metrics: Metrics
    seconds: float
    seed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"RunResult.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.metrics, Metrics):
            raise ConfigError(
                f"RunResult.metrics must be a Metrics (from evaluate()), got "
                f"{type(self.metrics).__name__}"
            )
        clash = sorted(set(self.extra) & set(_RUN_KEYS))
        if clash:
            raise ConfigError(
                f"RunResult.extra reuses reserved key(s) {clash} of run {self.name!r}; "
                "rename them (reserved: " + ", ".join(_RUN_KEYS) + ")"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: the run's fields, headline metrics, and ``extra`` merged in."""
        return {
            "name": self.name,
            "method": self.method,
            "accuracy": float(self.metrics.accuracy),
            "macro_f1": float(self.metrics.macro_f1),
            "seconds": float(self.seconds),
            "seed": int(self.seed),
            "per_class_f1": [float(v) for v in self.metrics.per_class_f1],
            "confusion": [[int(v) for v in row] for row in self.metrics.confusion],
            "history": [dict(h) for h in self.history],
            **self.extra,
        }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


GAIN_METRICS = ("accuracy", "macro_f1")


def summarize(
    runs: Sequence[RunResult], baseline: str | None, metric: str = "accuracy"
) -> list[dict[str, Any]]:
    """Average runs over seeds and compare every configuration with the baseline.

    Runs are grouped by ``name`` in first-seen order. Each row holds ``name``, ``method`` (of the
    first run of the group), ``n_seeds``, ``accuracy_mean``, ``accuracy_std``, ``macro_f1_mean``,
    ``macro_f1_std`` (sample std, ddof=1; 0.0 for one seed), ``seconds_mean`` and ``is_baseline``,
    and:

    * ``gain``: mean ``metric`` (accuracy by default) minus the baseline's, as a fraction (0.213 =
      +21.3 percentage points); ``None`` on the baseline row; ``gain_metric`` names the metric;
    * ``gain_macro_f1``: the same for macro-F1;
    * ``negative_transfer``: ``gain < 0`` (``False`` on the baseline row and on ``reference`` rows);
    * ``reference``: the runs are a reference method that transfers nothing (``extra["reference"]``:
      ``True`` for TF-IDF + logistic regression beside text arms, or the text shown instead of
      "reference, no model transferred", such as a from-scratch arm that learns from unlabelled data);
    * ``significant``: ``|gain| > 2 * sqrt(sa**2/na + sb**2/nb)`` (two standard errors of the
      difference of means, with sample stds ``s`` and seed counts ``n``); ``None`` when either
      side has a single seed (its spread is unknown) and on the baseline row;
    * when the runs record ``train_accuracy`` (the best of their epochs on their training examples):
      ``train_accuracy_mean`` and ``underfit`` (a few-shot arm, at most
      :data:`FEW_SHOT_PER_CLASS` examples per class, below :data:`UNDERFIT_BELOW`).

    Args:
        runs: The runs, any number of seeds per name.
        baseline: The ``name`` of the baseline (usually from-scratch) configuration; ``None`` when
            the run has none (every gain is ``None``).
        metric: What the gain is measured in: ``"accuracy"`` or ``"macro_f1"`` (for classes of
            very different sizes, where predicting the largest class scores a high accuracy).

    Returns:
        One dict per configuration.

    Raises:
        ConfigError: ``runs`` is empty or ``baseline`` is not one of the run names.
    """
    if not runs:
        raise ConfigError("summarize() got no runs; pass at least the baseline run")
    if metric not in GAIN_METRICS:
        raise ConfigError(f"the gain metric must be one of {', '.join(GAIN_METRICS)}, got {metric!r}")
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.name, []).append(run)
    if baseline is not None and baseline not in groups:
        raise ConfigError(f"baseline {baseline!r} is not a run name; choose one of {list(groups)}")
    rows: list[dict[str, Any]] = []
    for name, group in groups.items():
        acc_mean, acc_std = _mean_std([r.metrics.accuracy for r in group])
        f1_mean, f1_std = _mean_std([r.metrics.macro_f1 for r in group])
        rows.append(
            {
                "name": name,
                "method": group[0].method,
                "n_seeds": len(group),
                "accuracy_mean": acc_mean,
                "accuracy_std": acc_std,
                "macro_f1_mean": f1_mean,
                "macro_f1_std": f1_std,
                "seconds_mean": float(np.mean([r.seconds for r in group])),
                "is_baseline": name == baseline,
                "gain_metric": metric,
                "reference": next((r.extra["reference"] for r in group if r.extra.get("reference")), False),
                **_retention(group),
                **_fit(group),
            }
        )
    base = next((r for r in rows if r["is_baseline"]), None)
    for row in rows:
        if base is None:  # no baseline: nothing to compare with
            row.update(gain=None, gain_macro_f1=None, negative_transfer=False, significant=None)
            continue
        if row["is_baseline"]:
            row.update(gain=None, gain_macro_f1=None, negative_transfer=False, significant=None)
            continue
        gain = row[f"{metric}_mean"] - base[f"{metric}_mean"]
        row["gain"] = gain
        row["gain_macro_f1"] = row["macro_f1_mean"] - base["macro_f1_mean"]
        row["negative_transfer"] = bool(gain < 0) and not row["reference"]  # a reference transfers nothing
        if row["n_seeds"] < 2 or base["n_seeds"] < 2:
            row["significant"] = None
        else:
            se = math.sqrt(
                row[f"{metric}_std"] ** 2 / row["n_seeds"]
                + base[f"{metric}_std"] ** 2 / base["n_seeds"]
            )
            row["significant"] = bool(abs(gain) > 2 * se)
    return rows


def _retention(group: list[RunResult]) -> dict[str, Any]:
    """Source-task accuracy before/after fine-tuning, averaged over seeds, when the runs have it."""
    after = [r.extra["source_accuracy_after"] for r in group if "source_accuracy_after" in r.extra]
    if not after:
        return {}
    before = [r.extra["source_accuracy_before"] for r in group if "source_accuracy_before" in r.extra]
    a_mean, a_std = _mean_std(after)
    b_mean = float(np.mean(before)) if before else float("nan")
    return {"source_before_mean": b_mean, "source_after_mean": a_mean, "source_after_std": a_std,
            "forgetting": b_mean - a_mean}


#: A few-shot arm (at most :data:`FEW_SHOT_PER_CLASS` training examples per class) whose best training
#: accuracy stays below this underfit: a model that learns fits so few examples far better (on 100
#: Fashion-MNIST images the few-shot recipe's arms reach 77 % (MNIST CNN source), 88 % (scratch) and
#: 100 % (EfficientNet-Lite0), means over 3 seeds; ``TrainConfig``'s defaults alone, 20 steps in all,
#: 23-64 %: bench/results/first_run.md).
UNDERFIT_BELOW = 0.75
FEW_SHOT_PER_CLASS = 100


def _fit(group: list[RunResult]) -> dict[str, Any]:
    """The best training accuracy of the runs (``train_accuracy``: the highest of any epoch),
    averaged over seeds, and whether the arm underfit: a few-shot training set not fitted to
    :data:`UNDERFIT_BELOW` on average or in any one seed (``underfit_seeds``: those seeds, so one
    seed that never learnt is not hidden by a mean over the others)."""
    fitted = [(r.seed, r.extra["train_accuracy"]) for r in group if r.extra.get("train_accuracy") is not None]
    if not fitted:
        return {}
    mean = float(np.mean([acc for _, acc in fitted]))
    run = group[0]
    classes = len(run.metrics.confusion) or 1
    few_shot = run.extra.get("train_examples", math.inf) / classes <= FEW_SHOT_PER_CLASS
    low = [seed for seed, acc in fitted if acc < UNDERFIT_BELOW] if few_shot else []  # a low mean has some
    return {"train_accuracy_mean": mean, "train_accuracy_min": float(min(acc for _, acc in fitted)),
            "underfit": bool(low),
            "underfit_seeds": low if mean >= UNDERFIT_BELOW and len(fitted) > 1 else []}


def _seed_list(seeds: Sequence[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _underfit_tag(row: dict[str, Any]) -> str:
    """The table's flag of an underfit arm: its mean best training accuracy, or the seeds that fell short."""
    seeds = row.get("underfit_seeds") or []
    if seeds:
        return f"UNDERFIT ({_seed_list(seeds)}: train {100 * row['train_accuracy_min']:.0f} %)"
    return f"UNDERFIT (train {100 * row['train_accuracy_mean']:.0f} %)"


def fit_warnings(summary: Sequence[dict[str, Any]]) -> list[str]:
    """One line per arm that underfit (see :func:`summarize`), saying what it means and what to do."""
    lines = []
    for row in summary:
        if row.get("underfit"):
            seeds = row.get("underfit_seeds") or []
            where = f"{100 * row['train_accuracy_mean']:.0f} % on its own training examples"
            if seeds:
                where = (f"{100 * row['train_accuracy_min']:.0f} % on its own training examples in "
                         f"{_seed_list(seeds)} of {row['n_seeds']}")
            lines.append(
                f"UNDERFIT: {row['name']} reached at best {where} (a few-shot arm should pass "
                f"{100 * UNDERFIT_BELOW:.0f} %), so its "
                "accuracy and gain are not a verdict on transfer; train longer or at a higher learning "
                "rate (train.epochs, train.lr): the recipes' settings fit few labels (transferkit recipes)"
                + ("; a frozen backbone whose features don't separate the classes can't fit them either"
                   if "linear probe" in str(row.get("method", "")) else "")
            )
    return lines


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f} %"


def format_gain(row: dict[str, Any]) -> str:
    """The gain cell of a summary row: ``"(baseline)"``, ``"+21.3 pp"``, ``"-2.0 pp  NEGATIVE
    TRANSFER"``; ``"  (n.s.)"`` is appended when the gain is not significant."""
    if row.get("is_baseline"):
        return "(baseline)" + (f"  {_underfit_tag(row)}" if row.get("underfit") else "")
    gain = row.get("gain")
    if gain is None:
        return "(no baseline)"
    text = f"{100 * gain:+.1f} pp"
    reference = row.get("reference")
    if reference:
        text += f"  ({reference if isinstance(reference, str) else 'reference, no model transferred'})"
    if row.get("negative_transfer"):
        text += "  NEGATIVE TRANSFER"
    if row.get("significant") is False:
        text += "  (n.s.)"
    if row.get("underfit"):
        text += f"  {_underfit_tag(row)}"
    return text


def format_table(summary: list[dict[str, Any]]) -> str:
    """An aligned plain-text table of :func:`summarize` output.

    Columns: method, name, seeds, accuracy (mean ± std, %), macro-F1 (mean ± std, %), seconds
    (mean), and the gain in accuracy over the baseline in percentage points. The baseline row says
    ``(baseline)``; a negative gain is followed by ``NEGATIVE TRANSFER``; ``(n.s.)`` marks a gain
    within two standard errors.
    """
    retention = any("source_after_mean" in row for row in summary)
    header = ["method", "name", "seeds", "accuracy", "macro-F1", "seconds"]
    header += ["source acc. before -> after"] if retention else []
    metric = summary[0].get("gain_metric", "accuracy") if summary else "accuracy"
    header += ["gain vs baseline" + ("" if metric == "accuracy" else " (macro-F1)")]
    body = []
    for row in summary:
        cells = [
            str(row.get("method", "")),
            str(row.get("name", "")),
            str(row.get("n_seeds", "")),
            _pct(row["accuracy_mean"], row["accuracy_std"]),
            _pct(row["macro_f1_mean"], row["macro_f1_std"]),
            f"{row['seconds_mean']:.1f}",
        ]
        if retention and "source_after_mean" in row:
            after = _pct(row["source_after_mean"], row["source_after_std"])
            cells.append(f"{100 * row['source_before_mean']:.1f} -> {after}")
        elif retention:
            cells.append("-")
        body.append([*cells, format_gain(row)])
    table = [header, *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    numeric = {2, 3, 4, 5}

    def fmt(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in body]
    warnings = fit_warnings(summary)
    return "\n".join(lines + ([""] + warnings if warnings else []))
