"""Label-free model-choice criteria for domain adaptation (labelled source, unlabelled target).

With no target labels, target accuracy cannot pick a checkpoint or a hyper-parameter. These
criteria can:

* :func:`prediction_entropy` -- mean entropy of the target predictions (lower = more confident;
  Morerio et al. 2018, "Minimal-entropy correlation alignment for unsupervised deep domain
  adaptation", ICLR);
* :func:`snd_score` -- Soft Neighborhood Density of the target predictions (higher = better;
  Saito et al. 2021, "Tune it the Right Way: Unsupervised Validation of Domain Adaptation via Soft
  Neighborhood Density", ICCV);
* :func:`dev_risk` / :func:`dev_weights` -- Deep Embedded Validation: the source validation loss
  importance-weighted towards the target, with a control variate (lower = better; You et al. 2019,
  "Towards Accurate Model Selection in Deep Unsupervised Domain Adaptation", ICML);
* :func:`domain_gap` / :func:`proxy_a_distance` -- how well a linear classifier tells source
  features from target features (0.5 / 0.0 = indistinguishable; Ben-David et al. 2007,
  "Analysis of representations for domain adaptation", NeurIPS).

Every function takes torch tensors (any device, any float dtype), computes in float64 on the CPU
and returns a plain Python float (:func:`dev_weights` returns a float64 tensor).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from transferkit.errors import ConfigError, DataError, ShapeError

logger = logging.getLogger(__name__)

__all__ = [
    "dev_risk",
    "dev_weights",
    "domain_gap",
    "prediction_entropy",
    "proxy_a_distance",
    "snd_score",
]


# --------------------------------------------------------------------------------------- checks
def _as_float64(x: Any, name: str, *, ndim: int, min_rows: int = 1) -> Tensor:
    """``x`` as a float64 CPU tensor after checking its rank, row count and finiteness."""
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{name} must be a torch tensor, got {type(x).__name__}: {e}") from e
    if t.ndim != ndim:
        want = "(n, d)" if ndim == 2 else "(n,)"
        raise ShapeError(f"{name} must have shape {want}, got shape {tuple(t.shape)}")
    if t.shape[0] < min_rows:
        what = "is empty" if t.shape[0] == 0 else f"has only {t.shape[0]} row(s)"
        raise DataError(f"{name} {what}; pass at least {min_rows} example(s)")
    if ndim == 2 and t.shape[1] == 0:
        raise ShapeError(f"{name} has zero columns (shape {tuple(t.shape)}); pass at least one")
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise DataError(f"{name} holds {bad} NaN or infinite value(s); remove or fix them first")
    return t


def _same_width(named: dict[str, Tensor]) -> None:
    widths = {name: t.shape[1] for name, t in named.items()}
    if len(set(widths.values())) > 1:
        raise ShapeError(
            f"feature widths differ: {widths}; all feature matrices must have the same d "
            "(take them from the same layer of the same model)"
        )


# ------------------------------------------------------------------------------------ entropy
def prediction_entropy(logits: Tensor) -> float:
    """Mean Shannon entropy (nats) of the softmax of ``logits``; lower = more confident.

    Morerio et al. (2018) choose the adaptation hyper-parameters with the lowest target entropy.
    It is 0 for one-hot predictions and ``log(C)`` for uniform ones.

    Args:
        logits: Unnormalised scores, shape ``(N, C)``.

    Returns:
        ``mean_i -sum_c p_ic log p_ic`` with ``p = softmax(logits, dim=1)``.

    Raises:
        ShapeError: ``logits`` is not 2-D.
        DataError: ``logits`` is empty or holds NaN/inf.
    """
    z = _as_float64(logits, "logits", ndim=2)
    log_p = F.log_softmax(z, dim=1)
    return float(-(log_p.exp() * log_p).sum(dim=1).mean())


# ---------------------------------------------------------------------------------------- SND
def snd_score(logits: Tensor, temperature: float = 0.05) -> float:
    """Soft Neighborhood Density of the target predictions (Saito et al. 2021); higher = better.

    ``p = softmax(logits)``, each row L2-normalised; ``S = p p^T`` (cosine similarities). For
    each example ``i`` the softmax of ``S[i, j] / temperature`` over the other ``N - 1`` examples
    ``j != i`` (self-similarity removed) gives a soft neighbour distribution; SND is the mean of
    its entropies. A model whose target predictions form dense, well-separated clusters has many
    near-equal neighbours per example and scores high; predictions scattered between clusters
    have few close neighbours and score low. The paper picks the model with the highest SND.

    Known blind spot: if all predictions are identical (every row uniform, or everything
    collapsed into one class) every row's neighbour distribution is uniform and SND reaches its
    maximum ``log(N - 1)``. Use it to compare models trained with the source labels, which
    rarely collapse, and look at :func:`prediction_entropy` too.

    The diagonal is removed exactly. The authors' code (``neighbor_density``) instead
    fills it with ``-1 / T``, which leaves the self term a weight of at most ``exp(-1/T)``
    (about 2e-9 at ``T = 0.05``) relative to any other; it also adds ``1e-5`` inside the log.
    Both differences are far below anything that changes a model ranking.

    Args:
        logits: Target logits, shape ``(N, C)``, ``N >= 2``.
        temperature: Softmax temperature over similarities, ``> 0`` (paper: 0.05).

    Returns:
        Mean neighbour entropy in nats, in ``[0, log(N - 1)]``.

    Raises:
        ConfigError: ``temperature`` is not a positive finite number.
        ShapeError: ``logits`` is not 2-D.
        DataError: fewer than 2 rows, or NaN/inf values.
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive number, got {temperature!r} (paper: 0.05)")
    z = _as_float64(logits, "logits", ndim=2, min_rows=2)
    n = z.shape[0]
    p = F.normalize(F.softmax(z, dim=1), dim=1)
    sim = p @ p.T
    off_diag = ~torch.eye(n, dtype=torch.bool)
    sim = sim[off_diag].view(n, n - 1) / temperature
    log_q = F.log_softmax(sim, dim=1)
    return float(-(log_q.exp() * log_q).sum(dim=1).mean())


# ---------------------------------------------------------------------------------------- DEV
def _domain_classifier(seed: int) -> Pipeline:
    """Standardise, then L2-regularised logistic regression (deterministic lbfgs solver)."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


def dev_weights(
    train_features: Tensor, target_features: Tensor, val_features: Tensor, *, seed: int = 0
) -> Tensor:
    """Importance weights ``w(x) = p_target(x) / p_source(x)`` on the source validation features.

    A domain classifier (standardised features, logistic regression) is fitted on the source
    *training* features (label 0) against the target features (label 1), with the raw, possibly
    unequal counts ``n_s`` and ``n_t``. Its odds are then corrected for the class prior:
    ``w(x) = (n_s / n_t) * P(target | x) / P(source | x)``, as in You et al. (2019) and their
    reference code. The odds come from the classifier's log-odds (``decision_function``), which
    is exact where ``predict_proba`` would round to 0 or 1.

    Args:
        train_features: Source training features, shape ``(n_s, d)``, ``n_s >= 2``.
        target_features: Target features, shape ``(n_t, d)``, ``n_t >= 2``.
        val_features: Source validation features, shape ``(n_val, d)``, ``n_val >= 1``.
        seed: ``random_state`` of the logistic regression (its lbfgs solver is deterministic, so
            the weights do not actually vary with it).

    Returns:
        Weights, shape ``(n_val,)``, float64, all ``> 0``; their mean is about 1 when the
        source validation set is drawn like the source training set.

    Raises:
        ShapeError: a feature matrix is not 2-D, or the widths ``d`` differ.
        DataError: an input is empty or holds NaN/inf, or a domain has fewer than 2 examples.
    """
    xs = _as_float64(train_features, "train_features", ndim=2, min_rows=2)
    xt = _as_float64(target_features, "target_features", ndim=2, min_rows=2)
    xv = _as_float64(val_features, "val_features", ndim=2, min_rows=1)
    _same_width({"train_features": xs, "target_features": xt, "val_features": xv})
    n_s, n_t = xs.shape[0], xt.shape[0]
    x = torch.cat([xs, xt]).numpy()
    y = np.r_[np.zeros(n_s, dtype=np.int64), np.ones(n_t, dtype=np.int64)]
    clf = _domain_classifier(seed).fit(x, y)
    log_odds = clf.decision_function(xv.numpy())  # log P(target|x) / P(source|x)
    w = np.exp(log_odds + math.log(n_s / n_t))
    if not np.isfinite(w).all():
        raise DataError(
            "importance weights overflowed: the domains are almost perfectly separable, so "
            "DEV cannot reweight source losses towards the target; compare with domain_gap()"
        )
    logger.debug("dev weights: mean %.4f, min %.4g, max %.4g", w.mean(), w.min(), w.max())
    return torch.from_numpy(w)


def dev_risk(
    train_features: Tensor,
    target_features: Tensor,
    val_features: Tensor,
    val_losses: Tensor,
    *,
    seed: int = 0,
) -> float:
    """Deep Embedded Validation risk (You et al. 2019): estimated target loss; lower = better.

    With the importance weights ``w`` of :func:`dev_weights` and the per-example source
    validation losses ``l``: ``L = w * l``; control variate ``eta = -Cov(L, w) / Var(w)`` (both
    with ``ddof = 1``, ``eta = 0`` when ``Var(w) == 0``); risk ``= mean(L) + eta * mean(w) - eta``.
    Since ``E[w] = 1`` the correction has mean zero and only removes variance; the result can be
    slightly negative on small samples.

    Args:
        train_features: Source training features, shape ``(n_s, d)``, ``n_s >= 2``.
        target_features: Target features, shape ``(n_t, d)``, ``n_t >= 2``.
        val_features: Source validation features, shape ``(n_val, d)``, ``n_val >= 2``.
        val_losses: Per-example losses (e.g. cross-entropy or 0/1 error) of the model on the
            validation examples, shape ``(n_val,)``, all ``>= 0``.
        seed: Passed to :func:`dev_weights`.

    Returns:
        The DEV risk estimate.

    Raises:
        ShapeError: bad ranks, differing widths, or ``len(val_losses) != len(val_features)``.
        DataError: empty inputs, NaN/inf, negative losses, or fewer than 2 examples per domain.
    """
    xv = _as_float64(val_features, "val_features", ndim=2, min_rows=2)
    losses = _as_float64(val_losses, "val_losses", ndim=1, min_rows=1)
    if losses.shape[0] != xv.shape[0]:
        raise ShapeError(
            f"val_losses has {losses.shape[0]} entries but val_features has {xv.shape[0]} rows; "
            "pass one loss per validation example"
        )
    if (losses < 0).any():
        raise DataError(
            f"val_losses must be >= 0, got minimum {float(losses.min()):.4g}; pass per-example "
            "losses such as cross-entropy or 0/1 error"
        )
    w = dev_weights(train_features, target_features, xv, seed=seed).numpy()
    weighted = w * losses.numpy()
    var_w = float(np.var(w, ddof=1))
    if var_w <= 1e-12 * float(np.mean(w)) ** 2:
        eta = 0.0
    else:
        eta = -float(np.cov(weighted, w, ddof=1)[0, 1]) / var_w
    return float(np.mean(weighted) + eta * np.mean(w) - eta)


# ----------------------------------------------------------------------------------- domain gap
def domain_gap(
    source_features: Tensor,
    target_features: Tensor,
    *,
    seed: int = 0,
    folds: int = 3,
    max_per_domain: int = 2000,
) -> float:
    """Cross-validated accuracy of a linear classifier telling source from target features.

    ``m = min(n_s, n_t, max_per_domain)`` examples are drawn from each domain without
    replacement (``numpy.random.default_rng(seed)``), so chance level is exactly 0.5. A
    standardise + logistic-regression pipeline is scored by stratified ``folds``-fold
    cross-validation (shuffled with ``seed``).

    Args:
        source_features: Shape ``(n_s, d)``.
        target_features: Shape ``(n_t, d)``.
        seed: Seed of the subsample and the fold split.
        folds: Number of cross-validation folds, ``>= 2``.
        max_per_domain: Cap on the examples drawn per domain, ``>= 1``.

    Returns:
        Mean held-out accuracy: about 0.5 when the domains are indistinguishable, 1.0 when a
        linear classifier separates them perfectly.

    Raises:
        ConfigError: ``folds < 2`` or ``max_per_domain < 1``.
        ShapeError: bad ranks or differing widths.
        DataError: NaN/inf, or fewer than ``folds`` examples in the balanced sample per domain.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2, got {folds!r}")
    if isinstance(max_per_domain, bool) or not isinstance(max_per_domain, int) or max_per_domain < 1:
        raise ConfigError(f"max_per_domain must be an integer >= 1, got {max_per_domain!r}")
    xs = _as_float64(source_features, "source_features", ndim=2)
    xt = _as_float64(target_features, "target_features", ndim=2)
    _same_width({"source_features": xs, "target_features": xt})
    m = min(xs.shape[0], xt.shape[0], max_per_domain)
    if m < folds:
        raise DataError(
            f"only {m} example(s) per domain in the balanced sample (source {xs.shape[0]}, "
            f"target {xt.shape[0]}, max_per_domain {max_per_domain}); {folds}-fold "
            f"cross-validation needs at least {folds} per domain"
        )
    rng = np.random.default_rng(seed)
    s_idx = rng.choice(xs.shape[0], size=m, replace=False)
    t_idx = rng.choice(xt.shape[0], size=m, replace=False)
    x = np.concatenate([xs.numpy()[s_idx], xt.numpy()[t_idx]])
    y = np.r_[np.zeros(m, dtype=np.int64), np.ones(m, dtype=np.int64)]
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(_domain_classifier(seed), x, y, cv=cv, scoring="accuracy")
    return float(np.mean(scores))


def proxy_a_distance(
    source_features: Tensor,
    target_features: Tensor,
    *,
    seed: int = 0,
    folds: int = 3,
    max_per_domain: int = 2000,
) -> float:
    """Proxy A-distance ``2 * (1 - 2 * err)`` with ``err = 1 - domain_gap(...)`` (Ben-David et al.).

    About 0 for indistinguishable domains, 2 for linearly separable ones. The raw value is
    returned, *not* clipped at 0: with indistinguishable domains the held-out error fluctuates
    around 0.5, so the value can come out slightly negative, and clipping would bias it upwards.

    Args:
        source_features: Shape ``(n_s, d)``.
        target_features: Shape ``(n_t, d)``.
        seed: See :func:`domain_gap`.
        folds: See :func:`domain_gap`.
        max_per_domain: See :func:`domain_gap`.

    Returns:
        The proxy A-distance, in ``[-2, 2]``.

    Raises:
        The errors of :func:`domain_gap`.
    """
    acc = domain_gap(source_features, target_features, seed=seed, folds=folds, max_per_domain=max_per_domain)
    return 2.0 * (1.0 - 2.0 * (1.0 - acc))
