"""Label-free model-choice criteria: entropy, SND, DEV, domain gap / proxy A-distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferkit.errors import ConfigError, DataError, ShapeError
from transferkit.evaluation import unsupervised as U
from transferkit.evaluation.unsupervised import (
    dev_risk,
    dev_weights,
    domain_gap,
    prediction_entropy,
    proxy_a_distance,
    snd_score,
)


def _randn(seed: int, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------------ entropy
def test_entropy_uniform_is_log_c_and_one_hot_is_zero():
    assert prediction_entropy(torch.zeros(5, 7)) == pytest.approx(math.log(7), abs=1e-12)
    assert prediction_entropy(torch.full((3, 4), 2.5)) == pytest.approx(math.log(4), abs=1e-12)
    one_hot = 100.0 * torch.eye(4)
    assert prediction_entropy(one_hot) == pytest.approx(0.0, abs=1e-30)


def test_entropy_two_rows_by_hand():
    # row 0: logits (0, ln 3) -> p = (1/4, 3/4); row 1: uniform over 2 -> ln 2.
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]], dtype=torch.float32)
    h0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert prediction_entropy(logits) == pytest.approx((h0 + math.log(2)) / 2, rel=1e-6)


def test_entropy_errors():
    with pytest.raises(ShapeError, match=r"must have shape \(n, d\), got shape \(3,\)"):
        prediction_entropy(torch.zeros(3))
    with pytest.raises(DataError, match="logits is empty"):
        prediction_entropy(torch.zeros(0, 3))
    with pytest.raises(DataError, match="1 NaN or infinite"):
        prediction_entropy(torch.tensor([[0.0, float("nan")]]))


# ---------------------------------------------------------------------------------------- SND
def _snd_loop(logits: torch.Tensor, temperature: float) -> float:
    """SND written out with plain Python loops (math module only)."""
    rows = logits.tolist()
    probs = []
    for r in rows:
        e = [math.exp(v - max(r)) for v in r]
        s = sum(e)
        p = [v / s for v in e]
        norm = math.sqrt(sum(v * v for v in p))
        probs.append([v / norm for v in p])
    n = len(probs)
    total = 0.0
    for i in range(n):
        sims = [
            sum(a * b for a, b in zip(probs[i], probs[j], strict=True)) / temperature
            for j in range(n)
            if j != i
        ]
        mx = max(sims)
        e = [math.exp(s - mx) for s in sims]
        z = sum(e)
        total += -sum((v / z) * math.log(v / z) for v in e)
    return total / n


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_snd_matches_double_loop(temperature):
    logits = 2.0 * _randn(0, 6, 3)
    assert snd_score(logits, temperature) == pytest.approx(_snd_loop(logits, temperature), rel=1e-10)


def test_snd_float32_input_and_row_permutation_invariance():
    logits = 3.0 * _randn(1, 20, 4, dtype=torch.float32)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(2))
    assert snd_score(logits[perm]) == pytest.approx(snd_score(logits), rel=1e-12)
    assert snd_score(logits) == pytest.approx(_snd_loop(logits.double(), 0.05), rel=1e-8)


def test_snd_confident_clusters_score_log_cluster_size():
    # 3 clusters of 10 near-one-hot predictions: each row's soft neighbours are its 9 cluster
    # mates (cosine 1 vs ~0 across clusters, at T = 0.05), so SND = log(9).
    labels = torch.arange(30) % 3
    logits = 20.0 * torch.nn.functional.one_hot(labels, 3).double()
    assert snd_score(logits) == pytest.approx(math.log(9), abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_snd_direction_clustered_beats_scattered(seed):
    """The paper picks the highest SND: dense clusters beat predictions spread between them."""
    labels = torch.arange(30) % 3
    one_hot = torch.nn.functional.one_hot(labels, 3).double()
    clustered = 8.0 * one_hot + 0.3 * _randn(seed, 30, 3)
    scattered = one_hot + 2.0 * _randn(100 + seed, 30, 3)
    assert snd_score(clustered) > snd_score(scattered) + 0.1


def test_snd_identical_predictions_reach_the_maximum():
    """Documented blind spot: identical (e.g. uniform) predictions give the maximum log(N - 1)."""
    n = 30
    uniform = snd_score(torch.zeros(n, 3))
    assert uniform == pytest.approx(math.log(n - 1), abs=1e-12)
    clustered = 20.0 * torch.nn.functional.one_hot(torch.arange(n) % 3, 3).double()
    assert uniform > snd_score(clustered)


def test_snd_errors():
    with pytest.raises(ConfigError, match="temperature must be a positive number, got 0"):
        snd_score(torch.zeros(4, 2), temperature=0)
    with pytest.raises(ConfigError, match="got nan"):
        snd_score(torch.zeros(4, 2), temperature=float("nan"))
    with pytest.raises(DataError, match="logits has only 1 row"):
        snd_score(torch.zeros(1, 3))
    with pytest.raises(ShapeError, match=r"got shape \(2, 2, 2\)"):
        snd_score(torch.zeros(2, 2, 2))


# ---------------------------------------------------------------------------------------- DEV
def test_dev_weights_near_one_without_shift_even_with_unequal_counts():
    # 600 source vs 150 target from the same law: without the n_s / n_t correction the weights
    # would average about 0.25.
    xs, xt, xv = _randn(0, 600, 3), _randn(1, 150, 3), _randn(2, 200, 3)
    w = dev_weights(xs, xt, xv)
    assert w.dtype == torch.float64 and w.shape == (200,)
    assert abs(float(w.mean()) - 1.0) < 0.1
    losses = torch.rand(200, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert dev_risk(xs, xt, xv, losses) == pytest.approx(float(losses.mean()), abs=0.05)


def test_dev_weights_follow_the_true_density_ratio():
    # source N(0, 1), target N(1, 1): p_t(x) / p_s(x) = exp(x - 0.5).
    xs = _randn(0, 2000, 1)
    xt = _randn(1, 1000, 1) + 1.0
    xv = _randn(2, 300, 1)
    w = dev_weights(xs, xt, xv).numpy()
    true = np.exp(xv.numpy()[:, 0] - 0.5)
    assert np.corrcoef(w, true)[0, 1] > 0.95
    # log w is linear in x with slope ~1 and intercept ~ -0.5.
    slope, intercept = np.polyfit(xv.numpy()[:, 0], np.log(w), 1)
    assert slope == pytest.approx(1.0, abs=0.15)
    assert intercept == pytest.approx(-0.5, abs=0.15)


def test_dev_risk_control_variate_by_hand(monkeypatch):
    # w = (1, 2, 3, 4), l = (1, 0, 0, 1): L = (1, 0, 0, 4), mean L = 1.25, mean w = 2.5,
    # Cov(L, w) = 4.5 / 3 = 1.5, Var(w) = 5 / 3, eta = -0.9,
    # risk = 1.25 - 0.9 * 2.5 + 0.9 = -0.1.
    seen = {}

    def fake(train, target, val, *, seed=0):
        seen["seed"] = seed
        return torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)

    monkeypatch.setattr(U, "dev_weights", fake)
    x = torch.zeros(4, 2)
    risk = dev_risk(x, x, x, torch.tensor([1.0, 0.0, 0.0, 1.0]), seed=7)
    assert risk == pytest.approx(-0.1, abs=1e-12)
    assert seen["seed"] == 7


def test_dev_risk_constant_weights_means_no_control_variate(monkeypatch):
    monkeypatch.setattr(U, "dev_weights", lambda *a, **k: torch.full((3,), 2.0, dtype=torch.float64))
    x = torch.zeros(3, 2)
    assert dev_risk(x, x, x, torch.tensor([0.5, 1.0, 3.0])) == pytest.approx(2.0 * 4.5 / 3)


def test_dev_risk_matches_weights_plus_formula():
    xs, xt, xv = _randn(0, 300, 2), _randn(1, 200, 2) + 0.5, _randn(2, 50, 2)
    losses = torch.rand(50, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w = dev_weights(xs, xt, xv).numpy()
    lw = w * losses.numpy()
    eta = -np.cov(lw, w)[0, 1] / np.var(w, ddof=1)
    expected = lw.mean() + eta * w.mean() - eta
    assert dev_risk(xs, xt, xv, losses) == pytest.approx(expected, rel=1e-10)


def test_dev_errors():
    x = _randn(0, 5, 3)
    with pytest.raises(ShapeError, match=r"feature widths differ.*'target_features': 2"):
        dev_weights(x, _randn(1, 5, 2), x)
    with pytest.raises(DataError, match="val_features is empty"):
        dev_weights(x, x, torch.zeros(0, 3))
    with pytest.raises(DataError, match="train_features has only 1 row"):
        dev_weights(x[:1], x, x)
    with pytest.raises(DataError, match="target_features has only 1 row"):
        dev_weights(x, x[:1], x)
    with pytest.raises(DataError, match="target_features holds 1 NaN"):
        dev_weights(x, torch.cat([x[:4], torch.tensor([[1.0, float("inf"), 0.0]])]), x)
    with pytest.raises(ShapeError, match="val_losses has 4 entries but val_features has 5 rows"):
        dev_risk(x, x, x, torch.ones(4))
    with pytest.raises(ShapeError, match=r"val_losses must have shape \(n,\)"):
        dev_risk(x, x, x, torch.ones(5, 1))
    with pytest.raises(DataError, match="val_losses must be >= 0, got minimum -1"):
        dev_risk(x, x, x, torch.tensor([0.0, 1.0, -1.0, 0.0, 0.0]))
    with pytest.raises(DataError, match="val_losses holds 1 NaN"):
        dev_risk(x, x, x, torch.tensor([0.0, 1.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(DataError, match="val_features has only 1 row"):
        dev_risk(x, x, x[:1], torch.ones(1))


# ------------------------------------------------------------------------------ domain gap / PAD
def test_domain_gap_identical_distributions_near_chance():
    acc = domain_gap(_randn(0, 400, 5), _randn(1, 300, 5))
    assert abs(acc - 0.5) < 0.1


def test_domain_gap_separated_domains():
    xs, xt = _randn(0, 200, 2), _randn(1, 150, 2)
    xt[:, 0] += 5.0
    assert domain_gap(xs, xt) > 0.95
    assert proxy_a_distance(xs, xt) > 1.8


def test_domain_gap_balanced_sample_and_seed():
    # With max_per_domain the sample is balanced and capped; same seed -> same value.
    xs, xt = _randn(0, 500, 3), _randn(1, 80, 3) + 0.7
    a = domain_gap(xs, xt, seed=3, max_per_domain=60, folds=4)
    assert a == domain_gap(xs, xt, seed=3, max_per_domain=60, folds=4)
    # accuracy is a mean of per-fold fractions of 30 held-out examples (120 / 4)
    assert 0.5 < a <= 1.0 and abs(a * 30 * 4 - round(a * 30 * 4)) < 1e-9


@pytest.mark.parametrize("shift", [0.0, 0.4, 5.0])
def test_proxy_a_distance_relation(shift):
    xs, xt = _randn(0, 150, 2), _randn(1, 150, 2) + shift
    acc = domain_gap(xs, xt, seed=1)
    pad = proxy_a_distance(xs, xt, seed=1)
    assert pad == pytest.approx(2.0 * (1.0 - 2.0 * (1.0 - acc)), abs=1e-12)
    assert pad == pytest.approx(4.0 * acc - 2.0, abs=1e-12)


def test_proxy_a_distance_is_not_clipped(monkeypatch):
    # Held-out accuracy below chance (possible when the domains are indistinguishable) must give
    # a negative proxy A-distance: 2 * (1 - 2 * 0.55) = -0.2, not 0.
    monkeypatch.setattr(U, "domain_gap", lambda *a, **k: 0.45)
    assert proxy_a_distance(torch.zeros(3, 1), torch.zeros(3, 1)) == pytest.approx(-0.2, abs=1e-12)


def test_domain_gap_errors():
    x = _randn(0, 10, 2)
    with pytest.raises(ConfigError, match="folds must be an integer >= 2, got 1"):
        domain_gap(x, x, folds=1)
    with pytest.raises(ConfigError, match="max_per_domain must be an integer >= 1, got 0"):
        domain_gap(x, x, max_per_domain=0)
    with pytest.raises(DataError, match=r"only 2 example\(s\) per domain.*needs at least 3"):
        domain_gap(x, x[:2])
    with pytest.raises(ShapeError, match="feature widths differ"):
        domain_gap(x, _randn(1, 10, 3))
    with pytest.raises(DataError, match="source_features is empty"):
        proxy_a_distance(torch.zeros(0, 2), x)
