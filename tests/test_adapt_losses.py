"""Domain-adaptation losses against direct computations."""

import math

import pytest
import torch

from transferkit.errors import ConfigError, ShapeError
from transferkit.transfer.adapt import GradientReversal, coral_loss, grad_reverse, mmd_loss


def test_gradient_reversal_flips_the_sign_with_the_factor():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)  # identity forward
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.5, -1.0, -1.5]))
    layer = GradientReversal(2.0)
    x.grad = None
    layer(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -2.0))
    with pytest.raises(ConfigError, match="coeff must be >= 0"):
        grad_reverse(x, -1.0)


def test_mmd_is_zero_for_identical_samples_and_matches_a_direct_kernel_sum():
    torch.manual_seed(0)
    s = torch.randn(5, 3)
    assert mmd_loss(s, s.clone()).abs().item() < 1e-6
    t = torch.randn(4, 3) + 1.0
    bw = [0.5, 2.0]

    def k(a, b):
        return sum(math.exp(-float(((a - b) ** 2).sum()) / w) for w in bw)

    direct = (sum(k(a, b) for a in s for b in s) / 25 + sum(k(a, b) for a in t for b in t) / 16
              - 2 * sum(k(a, b) for a in s for b in t) / 20)
    assert mmd_loss(s, t, bandwidths=bw).item() == pytest.approx(direct, rel=1e-5)
    assert mmd_loss(s, t).item() > mmd_loss(s, s + 0.01).item()  # a shifted domain is farther


def test_coral_matches_its_formula():
    s = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 1.0]])
    # unbiased covariances by hand: s columns (1,3,0), (2,0,1): var 7/3 and 1, cov (-1/3-5/3)/2 = -1;
    # t columns (0,2,4), (0,2,1): var 4 and 1, cov 2/2 = 1
    cs = torch.tensor([[7 / 3, -1.0], [-1.0, 1.0]])
    ct = torch.tensor([[4.0, 1.0], [1.0, 1.0]])
    expected = float(((cs - ct) ** 2).sum()) / (4 * 2 * 2)
    assert expected == pytest.approx((25 / 9 + 4 + 4) / 16)
    assert coral_loss(s, t).item() == pytest.approx(expected, rel=1e-6)
    assert coral_loss(s, s).item() == 0.0


def test_bad_inputs():
    with pytest.raises(ShapeError, match="same d"):
        mmd_loss(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ShapeError, match="at least 2"):
        coral_loss(torch.zeros(1, 2), torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="bandwidths must be positive"):
        mmd_loss(torch.ones(3, 2), torch.ones(3, 2))


def test_joint_mmd_with_one_layer_is_mmd_and_multiplies_kernels_across_layers():
    from transferkit.transfer.adapt import jmmd_loss

    torch.manual_seed(1)
    s, t = torch.randn(5, 3), torch.randn(4, 3) + 0.5
    assert jmmd_loss([s], [t]).item() == pytest.approx(mmd_loss(s, t).item(), rel=1e-6)
    assert jmmd_loss([s], [t], kernel_mul=3.0, num_kernels=2).item() == pytest.approx(
        mmd_loss(s, t, kernel_mul=3.0, num_kernels=2).item(), rel=1e-6)
    ps, pt = torch.softmax(torch.randn(5, 2), 1), torch.softmax(torch.randn(4, 2), 1)
    bw = [[0.5, 2.0], [1.68]]

    def k(i, j, a, b):  # product over the two layers of each layer's kernel sum
        k1 = sum(math.exp(-float(((a[0][i] - b[0][j]) ** 2).sum()) / w) for w in bw[0])
        return k1 * math.exp(-float(((a[1][i] - b[1][j]) ** 2).sum()) / 1.68)

    src, tgt = (s, ps), (t, pt)
    direct = (sum(k(i, j, src, src) for i in range(5) for j in range(5)) / 25
              + sum(k(i, j, tgt, tgt) for i in range(4) for j in range(4)) / 16
              - 2 * sum(k(i, j, src, tgt) for i in range(5) for j in range(4)) / 20)
    assert jmmd_loss([s, ps], [t, pt], bandwidths=bw).item() == pytest.approx(direct, rel=1e-5)
    # a layer on which every example agrees contributes a kernel of 1: the joint MMD is the other's
    same = torch.ones(5, 2), torch.ones(4, 2)
    assert jmmd_loss([s, same[0]], [t, same[1]], bandwidths=[None, [1.0]]).item() == pytest.approx(
        mmd_loss(s, t).item(), rel=1e-6)


def test_joint_mmd_bad_inputs():
    from transferkit.transfer.adapt import jmmd_loss

    s, t = torch.randn(5, 3), torch.randn(4, 3)
    with pytest.raises(ShapeError, match="one source and one target tensor per layer"):
        jmmd_loss([s, s], [t])
    with pytest.raises(ShapeError, match="at least one"):
        jmmd_loss([], [])
    with pytest.raises(ShapeError, match="same examples"):
        jmmd_loss([s, s[:4]], [t, t])
    with pytest.raises(ConfigError, match="one entry .* per layer: 2 layer"):
        jmmd_loss([s, s], [t, t], bandwidths=[None])
    with pytest.raises(ConfigError, match="bandwidths must be positive"):
        jmmd_loss([s], [t], bandwidths=[[0.0]])


def test_mmd_and_joint_mmd_keep_float32_precision_under_a_large_offset():
    """Gaussian-kernel MMD depends only on distances: shifting both domains by 1000 must not change it
    (before centring, float32 distances from cdist's matrix-product form were 8 % off here)."""
    from transferkit.transfer.adapt import jmmd_loss

    g = torch.Generator().manual_seed(0)
    s = torch.randn(64, 32, generator=g)
    t = torch.randn(64, 32, generator=g) + 0.5
    exact = mmd_loss(s.double(), t.double()).item()
    shifted = mmd_loss(s + 1000.0, t + 1000.0).item()
    assert shifted == pytest.approx(exact, rel=1e-3)
    js = jmmd_loss([s + 1000.0, s[:, :8] - 500.0], [t + 1000.0, t[:, :8] - 500.0]).item()
    jd = jmmd_loss([s.double(), s[:, :8].double()], [t.double(), t[:, :8].double()]).item()
    assert js == pytest.approx(jd, rel=1e-3)
