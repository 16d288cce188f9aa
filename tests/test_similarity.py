"""Linear CKA and per-layer weight change: published properties and hand-computed values."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

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


def test_linear_cka_of_features_wider_than_the_examples_is_exact_and_never_builds_a_feature_square():
    g = torch.Generator().manual_seed(1)
    # by hand, wide: the same 3 centred examples padded with zero columns (p = 40 > N = 3) score as before
    xs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    wide = torch.cat([xs, torch.zeros(3, 38)], 1)
    assert linear_cka(wide, xs[:, :1]) == pytest.approx(5 / (2 * 10 ** 0.5))
    # against the feature-space formula on moderate widths (the narrow path's own arithmetic)
    x, y = torch.randn(30, 50, generator=g).double(), torch.randn(30, 70, generator=g).double()
    x[:, :20] += y[:, :20]
    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = (yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    assert linear_cka(x, y) == pytest.approx(float(direct), rel=1e-9)
    # a text block's output (64 texts x 128 tokens x 384): a 49,152 x 49,152 feature square would take
    # 19 GB; the Gram form takes 64 x 64
    block = torch.randn(64, 128, 384, generator=g)
    assert linear_cka(block, 2.0 * block) == pytest.approx(1.0)
    # ... where CKA drifts towards 1 even for unrelated features: why layer_cka pools a sequence's tokens
    assert linear_cka(block, torch.randn(64, 128, 384, generator=g)) > 0.99


class _Tokens(nn.Module):
    """A 'block' emitting (N, tokens, hidden) features, optionally with each sequence's tokens in its own
    order (``order``: one permutation per example)."""

    def __init__(self, order: torch.Tensor | None = None) -> None:
        super().__init__()
        self.block, self.order = nn.Identity(), order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order is not None:
            x = torch.gather(x, 1, self.order[:, :, None].expand_as(x))
        return self.block(x)


def test_layer_cka_compares_sequence_blocks_by_their_mean_token():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 6, 4, generator=g)
    shuffled = _Tokens(torch.stack([torch.randperm(6, generator=g) for _ in range(200)]))
    # every sequence's tokens in another order: the same mean token (CKA 1), though flattened they differ
    assert layer_cka(_Tokens(), shuffled, x, layers=["block"])["block"] == pytest.approx(1.0)
    assert linear_cka(x, shuffled(x)) < 0.5
    other = torch.randn(200, 6, 4, generator=g)
    assert layer_cka(_Tokens(), _Tokens(), x, layers=["block"], inputs_b=other)["block"] < 0.2


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
