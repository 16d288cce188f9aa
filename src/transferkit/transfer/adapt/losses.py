"""Pure losses of the domain-adaptation methods: gradient reversal, multi-kernel MMD, CORAL.

* Gradient reversal (Ganin et al., 2016, "Domain-Adversarial Training of Neural Networks"): identity
  forward, gradient multiplied by ``-coeff`` backward, so a feature extractor learns to fool a domain
  classifier trained on top of it.
* MMD with a family of Gaussian kernels (Long et al., 2015, "Learning Transferable Features with
  Deep Adaptation Networks"): the squared maximum mean discrepancy between source and target
  features, summed over kernel bandwidths set around the mean pairwise distance.
* Joint MMD (Long et al., 2017, "Deep Transfer Learning with Joint Adaptation Networks"): MMD of
  the joint distribution of several layers, with the product over layers of each layer's kernel.
* CORAL (Sun & Saenko, 2016, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation"): the
  squared Frobenius distance between the two feature covariances, divided by ``4 d**2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from transferkit.errors import ConfigError, ShapeError


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # type: ignore[override]
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity on ``x`` whose gradient is multiplied by ``-coeff`` (``coeff >= 0``)."""
    if not coeff >= 0:
        raise ConfigError(f"gradient reversal coeff must be >= 0, got {coeff!r}")
    return _Reverse.apply(x, float(coeff))


class GradientReversal(torch.nn.Module):
    """Module form of :func:`grad_reverse`; ``coeff`` may be changed during training (DANN's schedule)."""

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.coeff)


def _pair(source: torch.Tensor, target: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ShapeError(
            f"{what} needs source and target features of shape (n, d) with the same d, got "
            f"{tuple(source.shape)} and {tuple(target.shape)}; flatten or pool them first"
        )
    if len(source) < 2 or len(target) < 2:
        raise ShapeError(f"{what} needs at least 2 source and 2 target examples, got "
                         f"{len(source)} and {len(target)}")
    return source.float(), target.float()


def mmd_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    kernel_mul: float = 2.0,
    num_kernels: int = 5,
    bandwidths: Sequence[float] | None = None,
) -> torch.Tensor:
    """Squared MMD between two samples under a sum of Gaussian kernels (biased estimate).

    ``MMD² = mean k(s, s') + mean k(t, t') - 2 mean k(s, t)`` with ``k = Σ_b exp(-||a - b||² / b)``.

    Args:
        source: Source features ``(n, d)``.
        target: Target features ``(m, d)``.
        kernel_mul: Ratio between consecutive bandwidths.
        num_kernels: Number of kernels, centred (geometrically) on the mean pairwise squared distance.
        bandwidths: Explicit bandwidths; overrides the two arguments above.

    Returns:
        A scalar ``>= 0`` (up to round-off), zero when the two samples are identical.
    """
    s, t = _pair(source, target, "mmd_loss")
    k = _kernel_sum(s, t, kernel_mul, num_kernels, bandwidths)
    return _mmd_from_kernel(k, len(s))


def _kernel_sum(
    s: torch.Tensor,
    t: torch.Tensor,
    kernel_mul: float,
    num_kernels: int,
    bandwidths: Sequence[float] | None,
) -> torch.Tensor:
    """``Σ_b exp(-||a - c||² / b)`` over all pairs of ``cat([s, t])``, ``(n + m, n + m)``."""
    both = torch.cat([s, t])
    # Distances don't change when every point moves by the same vector; centring first keeps float32
    # precision when features share a large offset (cdist's matrix-product form loses it).
    both = both - both.detach().mean(dim=0, keepdim=True)
    d2 = torch.cdist(both, both).pow(2)
    if bandwidths is None:
        n = len(both)
        base = d2.detach().sum() / (n * n - n)
        base = base / kernel_mul ** (num_kernels // 2)
        bandwidths = [float(base) * kernel_mul**i for i in range(num_kernels)]
    if not bandwidths or any(not b > 0 for b in bandwidths):
        raise ConfigError(f"bandwidths must be positive numbers, got {list(bandwidths)}; "
                          "identical features everywhere give a zero distance scale")
    return sum(torch.exp(-d2 / b) for b in bandwidths)


def _mmd_from_kernel(k: torch.Tensor, n_s: int) -> torch.Tensor:
    return k[:n_s, :n_s].mean() + k[n_s:, n_s:].mean() - 2 * k[:n_s, n_s:].mean()


def jmmd_loss(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    *,
    kernel_mul: float = 2.0,
    num_kernels: int = 5,
    bandwidths: Sequence[Sequence[float] | None] | None = None,
) -> torch.Tensor:
    """Squared joint MMD of several layers (JAN): the kernel is the product of the layers' kernels.

    ``k((a_1..a_L), (c_1..c_L)) = Π_l k_l(a_l, c_l)``, each ``k_l`` a sum of Gaussian kernels as in
    :func:`mmd_loss`; then ``JMMD² = mean k(s, s') + mean k(t, t') - 2 mean k(s, t)`` (biased
    estimate). With one layer this is exactly :func:`mmd_loss`.

    Args:
        sources: One source tensor per layer, ``(n, d_l)`` each (same ``n``).
        targets: The matching target tensors, ``(m, d_l)`` each (same ``m``).
        kernel_mul: Ratio between consecutive bandwidths of a layer whose bandwidths are derived.
        num_kernels: Number of derived bandwidths per such layer, centred on its mean pairwise
            squared distance.
        bandwidths: Per layer, explicit bandwidths or ``None`` (derive them as above); ``None``
            derives every layer's. JAN uses ``[None, [1.68]]`` for (features, softmax outputs).

    Returns:
        A scalar ``>= 0`` (up to round-off).

    Raises:
        ShapeError: no layers, unequal numbers of source and target layers, a layer not
            ``(n, d)`` / ``(m, d)``, or layers with different numbers of examples.
        ConfigError: ``bandwidths`` has the wrong length or a non-positive bandwidth.
    """
    sources, targets = list(sources), list(targets)
    if not sources or len(sources) != len(targets):
        raise ShapeError(f"jmmd_loss needs one source and one target tensor per layer (at least one "
                         f"layer), got {len(sources)} source and {len(targets)} target tensor(s)")
    if bandwidths is None:
        bandwidths = [None] * len(sources)
    if len(bandwidths) != len(sources):
        raise ConfigError(f"bandwidths must hold one entry (a list or None) per layer: "
                          f"{len(sources)} layer(s), got {len(bandwidths)} entries")
    pairs = [_pair(s, t, f"jmmd_loss layer {i}")
             for i, (s, t) in enumerate(zip(sources, targets, strict=True))]
    if len({len(s) for s, _ in pairs}) > 1 or len({len(t) for _, t in pairs}) > 1:
        raise ShapeError(
            f"jmmd_loss layers must hold the same examples: source sizes "
            f"{[len(s) for s, _ in pairs]}, target sizes {[len(t) for _, t in pairs]}"
        )
    k = None
    for (s, t), bw in zip(pairs, bandwidths, strict=True):
        k_l = _kernel_sum(s, t, kernel_mul, num_kernels, bw)
        k = k_l if k is None else k * k_l
    return _mmd_from_kernel(k, len(pairs[0][0]))


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CORAL: ``||C_s - C_t||_F² / (4 d²)`` with unbiased feature covariances ``(d, d)``."""
    s, t = _pair(source, target, "coral_loss")
    d = s.shape[1]
    cs, ct = torch.cov(s.T), torch.cov(t.T)
    if d == 1:
        cs, ct = cs.reshape(1, 1), ct.reshape(1, 1)
    return (cs - ct).pow(2).sum() / (4 * d * d)
