"""Linear CKA and per-layer weight change: published properties and hand-computed values."""

from __future__ import annotations

import copy

import pytest
import torch

from transferkit.engine import TrainConfig, Trainer
from transferkit.errors import ShapeError
from transferkit.evaluation.similarity import layer_cka, linear_cka, weight_change
from transferkit.models import create_model


def test_linear_cka_is_one_up_to_rotation_and_scale_and_near_zero_for_unrelated_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)  # orthogonal map, scale, offset
    assert linear_cka(x, torch.randn(200, 16, generator=g)) < 0.15
    # by hand: x = [[1,0],[0,1],[-1,-1]] (centred), y = first column of x: ||y^T x||^2 = 2^2 + 1^2 = 5,
    # ||x^T x|| = ||[[2,1],[1,2]]|| = sqrt(10), ||y^T y|| = 2 -> 5 / (2 sqrt(10))
    xs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert linear_cka(xs, xs[:, :1]) == pytest.approx(5 / (2 * 10 ** 0.5))
    with pytest.raises(ShapeError, match="the same examples"):
        linear_cka(x, x[:10])


def test_a_model_matches_itself_and_a_fine_tuned_copy_differs_layer_by_layer(digits):
    torch.manual_seed(0)
    source = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8, widths=(8, 16))
    Trainer(source, TrainConfig(epochs=3, lr=3e-3, backbone_lr_scale=1.0, seed=0)).fit(digits.train)
    tuned = copy.deepcopy(source)
    Trainer(tuned, TrainConfig(epochs=3, lr=1e-2, backbone_lr_scale=1.0, seed=1)).fit(
        digits.train.subset(torch.arange(200)))
    x = digits.test.x[:256]
    same = layer_cka(source, copy.deepcopy(source), x)
    assert list(same) and all(v == pytest.approx(1.0) for v in same.values())
    cka = layer_cka(source, tuned, x)
    assert all(0.0 < v <= 1.0 + 1e-9 for v in cka.values())
    change = weight_change(source, tuned)
    assert set(change) <= set(cka) and all(v > 0 for v in change.values())
    assert weight_change(source, copy.deepcopy(source)) == {k: 0.0 for k in change}
