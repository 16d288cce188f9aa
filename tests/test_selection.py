"""Tests for transferkit.selection: closed-form transferability scores."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from transferkit.errors import ConfigError, DataError, LabelError, ShapeError
from transferkit.selection import SCORES, ScoreSpec, gbc, h_score, knn_accuracy, leep, logme, nce
from transferkit.selection.logme import _logme_evidence


def _blobs(n: int = 120, d: int = 6, c: int = 3, sep: float = 4.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    centers = rng.standard_normal((c, d)) * sep
    return centers[y] + rng.standard_normal((n, d)), y


def _dense_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """Bayesian linear regression log evidence from its definition, with dense matrices."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    return (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * np.sum((y - f @ m) ** 2)
        - alpha / 2 * m @ m
        - np.linalg.slogdet(a)[1] / 2
    )


def _brute_logme(f: np.ndarray, labels: np.ndarray) -> float:
    out = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        res = minimize(
            lambda p, y=y: -_dense_log_evidence(f, y, np.exp(p[0]), np.exp(p[1])),
            x0=[0.0, 0.0],
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000},
        )
        out.append(-res.fun / f.shape[0])
    return float(np.mean(out))


# ----------------------------------------------------------------------------- LogME


@pytest.mark.parametrize("shape", [(40, 5), (8, 12)])  # N > D and N < D (Gram of rows)
def test_logme_evidence_formula_matches_dense(shape):
    rng = np.random.default_rng(1)
    f = rng.standard_normal(shape)
    y = (rng.integers(0, 2, shape[0])).astype(np.float64)
    if shape[0] >= shape[1]:
        sigma, v = np.linalg.eigh(f.T @ f)
        z2 = (v.T @ (f.T @ y[:, None])) ** 2
    else:
        sigma, u = np.linalg.eigh(f @ f.T)
        z2 = sigma[:, None] * (u.T @ y[:, None]) ** 2
    for alpha, beta in [(0.3, 2.0), (5.0, 0.7)]:
        ev, *_ = _logme_evidence(
            np.array([alpha]), np.array([beta]), sigma[:, None], z2, np.array([y @ y]), *shape
        )
        assert ev[0] == pytest.approx(_dense_log_evidence(f, y, alpha, beta), rel=1e-9)


@pytest.mark.parametrize("shape", [(60, 4), (10, 15)])
def test_logme_fixed_point_reaches_max_evidence(shape):
    rng = np.random.default_rng(2)
    f = rng.standard_normal(shape)
    labels = np.arange(shape[0]) % 3
    f[:, 0] += labels  # some signal
    assert logme(f, labels) == pytest.approx(_brute_logme(f, labels), abs=1e-6)


def test_logme_accepts_torch_and_float32():
    f, y = _blobs()
    ref = logme(f, y)
    assert logme(torch.from_numpy(f).float(), torch.from_numpy(y)) == pytest.approx(ref, rel=1e-5)


# ----------------------------------------------------------------------------- H-score


def test_h_score_matches_matrix_definition():
    f = np.array([[1.0, 2.0], [2.0, 0.0], [4.0, 1.0], [5.0, 5.0], [0.0, 1.0]])
    y = np.array([0, 0, 1, 1, 0])
    fc = f - f.mean(0)
    cov_f = fc.T @ fc / 5
    g = np.stack([fc[y == c].mean(0) for c in y])  # E[f|y_i] per sample
    cov_g = g.T @ g / 5
    assert h_score(f, y) == pytest.approx(np.trace(np.linalg.inv(cov_f) @ cov_g), rel=1e-10)


def test_h_score_shrinkage_matches_ledoit_wolf():
    from sklearn.covariance import LedoitWolf

    f, y = _blobs(n=30, d=4)
    lw = LedoitWolf().fit(f)
    fc = f - f.mean(0)
    g = np.stack([fc[y == c].mean(0) for c in y])
    expected = np.trace(np.linalg.inv(lw.covariance_) @ ((1 - lw.shrinkage_) * g.T @ g / 30))
    assert h_score(f, y, shrinkage=True) == pytest.approx(expected, rel=1e-8)
    assert SCORES["h_score_shrinkage"](f, y) == pytest.approx(expected, rel=1e-8)


# ----------------------------------------------------------------------------- LEEP / NCE


def test_leep_hand_worked():
    # joint P(y,z): y=0 -> (0.8+0.6)/4, (0.2+0.4)/4 = 0.35, 0.15; y=1 -> 0.15, 0.35
    # P(z) = 0.5, 0.5 so P(0|0)=0.7, P(0|1)=0.3, P(1|0)=0.3, P(1|1)=0.7
    # EEP: 0.7*0.8+0.3*0.2=0.62, 0.7*0.6+0.3*0.4=0.54, 0.3*0.2+0.7*0.8=0.62, 0.3*0.4+0.7*0.6=0.54
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.2, 0.8], [0.4, 0.6]])
    y = np.array([0, 0, 1, 1])
    assert leep(probs, y) == pytest.approx((np.log(0.62) + np.log(0.54)) / 2, rel=1e-12)


def test_nce_hand_worked():
    # joint: (y0,z0)=1/4, (y1,z0)=1/4, (y1,z1)=1/2; P(y|z): 1/2, 1/2, 1
    # NCE = 1/4 log 1/2 + 1/4 log 1/2 + 1/2 log 1 = -log(2)/2
    assert nce(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])) == pytest.approx(-np.log(2) / 2)
    assert nce([0, 0, 1, 1], [1, 1, 0, 0]) == 0.0  # z determines y


def test_leep_nce_invariant_to_label_renaming_and_order():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 50)
    probs = rng.dirichlet(np.ones(5), 50)
    hard = probs.argmax(1)
    rename = np.array([2, 0, 3, 1])
    perm = rng.permutation(50)
    for fn, src in [(leep, probs), (nce, hard)]:
        ref = fn(src, y)
        assert fn(src, rename[y]) == pytest.approx(ref, rel=1e-12)
        assert fn(src[perm], y[perm]) == pytest.approx(ref, rel=1e-12)


def test_leep_nce_informative_source_scores_higher():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 200)
    good = np.eye(3)[y] * 0.8 + 0.2 / 3
    noise = rng.dirichlet(np.ones(3), 200)
    assert leep(good, y) > leep(noise, y) + 0.3
    assert nce(good.argmax(1), y) > nce(noise.argmax(1), y) + 0.3


def test_leep_rejects_non_probabilities():
    with pytest.raises(DataError, match="softmax"):
        leep(np.array([[2.0, 1.0], [0.5, 0.5]]), [0, 1])
    with pytest.raises(DataError, match="NaN"):
        leep(np.array([[np.nan, 1.0], [0.5, 0.5]]), [0, 1])
    with pytest.raises(ShapeError, match="source_probs must be 2-D"):
        leep(np.array([0.5, 0.5]), [0, 1])
    with pytest.raises(ShapeError, match="one label per sample"):
        nce([0, 1, 1], [0, 1])


# ----------------------------------------------------------------------------- all feature scores


FEATURE_SCORES = [name for name, spec in SCORES.items() if not spec.needs_head]


@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_separable_features_beat_noise(name):
    good, y = _blobs(n=150, d=8, sep=3.0)
    noise = np.random.default_rng(5).standard_normal(good.shape)
    assert SCORES[name](good, y) > SCORES[name](noise, y)


@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_invariant_to_sample_order(name):
    f, y = _blobs(n=90, d=5, sep=1.0)
    perm = np.random.default_rng(6).permutation(len(y))
    assert SCORES[name](f[perm], y[perm]) == pytest.approx(SCORES[name](f, y), rel=1e-8, abs=1e-12)


def test_gbc_values():
    f, y = _blobs(n=60, d=3, c=3, sep=50.0)
    assert gbc(f, y, pca_dim=None) == pytest.approx(0.0, abs=1e-8)  # far apart: BC ~ 0
    same = np.random.default_rng(7).standard_normal((4000, 2))
    # classes from one distribution: D_B ~ 0, BC ~ 1 for each of the 2 ordered pairs
    assert gbc(same, np.arange(4000) % 2) == pytest.approx(-2.0, abs=0.01)
    assert -6.0 <= gbc(*_blobs(n=60, d=3, c=3, sep=0.5), pca_dim=2) <= 0.0


def test_knn_accuracy_perfect_and_configs():
    f, y = _blobs(n=60, sep=50.0)
    assert knn_accuracy(f, y, k=3) == 1.0
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        knn_accuracy(f, y, k=0)
    with pytest.raises(ConfigError, match="val_fraction"):
        knn_accuracy(f, y, val_fraction=1.0)
    with pytest.raises(DataError, match="stratified split"):
        knn_accuracy(f[:4], np.array([0, 1, 2, 2]))
    with pytest.raises(ConfigError, match="pca_dim"):
        gbc(f, y, pca_dim=0)


@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_degenerate_inputs_raise(name):
    fn = SCORES[name]
    f, y = _blobs(n=12, d=3)
    with pytest.raises(ShapeError, match="12 samples"):
        fn(f, y[:10])
    with pytest.raises(ShapeError, match="2-D"):
        fn(f[:, 0], y)
    with pytest.raises(LabelError, match="must lie in"):
        fn(f, np.where(y == 0, -1, y))
    with pytest.raises(LabelError, match="must be integers"):
        fn(f, y + 0.5)
    with pytest.raises(LabelError, match="single class"):
        fn(f, np.zeros(12, dtype=int))
    with pytest.raises(LabelError, match="fewer samples"):
        fn(f[:3], np.array([0, 1, 5]))
    bad = f.copy()
    bad[4, 1] = np.nan
    with pytest.raises(DataError, match="NaN/inf.*sample 4, dim 1"):
        fn(bad, y)
    bad[4, 1] = np.inf
    with pytest.raises(DataError, match="NaN/inf"):
        fn(bad, y)
    with pytest.raises(DataError, match="constant across all samples"):
        fn(np.ones((12, 3)), y)


@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_some_constant_columns_are_fine(name):
    f, y = _blobs(n=60, d=4)
    f[:, 2] = 3.0
    assert np.isfinite(SCORES[name](f, y))


def test_integral_float_labels_accepted():
    f, y = _blobs(n=30)
    assert logme(f, y.astype(np.float32)) == pytest.approx(logme(f, y))



# ----------------------------------------------------------------------------- the score registry


def _source_probs(n: int = 30, z: int = 5, c: int = 3, seed: int = 0):
    """Softmax outputs of a stand-in source head (N, Z) that partly predict the labels (N,)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    logits = rng.standard_normal((n, z))
    logits[np.arange(n), y] += 2.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


#: Tiny inputs for each registered score: ``(features (N, D) or, for a head score, source
#: probabilities (N, Z), labels (N,))``. A newly registered score needs a row here.
SCORE_INPUTS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "gbc": lambda: _blobs(n=30, d=4),
    "h_score": lambda: _blobs(n=30, d=4),
    "h_score_shrinkage": lambda: _blobs(n=30, d=4),
    "knn": lambda: _blobs(n=30, d=4),
    "logme": lambda: _blobs(n=30, d=4),
    "leep": _source_probs,
    "nce": _source_probs,
}


def test_the_input_table_has_a_row_for_every_registered_score_and_no_other():
    assert sorted(SCORE_INPUTS) == SCORES.names()


@pytest.mark.parametrize("name", SCORES.names())
def test_every_registered_score_returns_a_finite_float(name):
    assert name in SCORE_INPUTS, f"score {name!r} is registered but has no row in SCORE_INPUTS"
    spec = SCORES.get(name)
    assert isinstance(spec, ScoreSpec) and callable(spec.fn)
    inputs, labels = SCORE_INPUTS[name]()
    value = spec(inputs, labels)
    assert type(value) is float and math.isfinite(value)
    assert spec(torch.from_numpy(inputs), torch.from_numpy(labels)) == pytest.approx(value)


def test_head_scores_are_marked_in_the_registry_and_read_the_source_probabilities():
    assert [name for name, spec in SCORES.items() if spec.needs_head] == ["leep", "nce"]
    probs, y = _source_probs()
    assert SCORES["leep"](probs, y) == leep(probs, y)
    assert SCORES["nce"](probs, y) == nce(probs.argmax(1), y)
    with pytest.raises(ShapeError, match="source_probs must be 2-D"):
        SCORES["nce"](probs.argmax(1), y)
