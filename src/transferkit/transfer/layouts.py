"""Exact and adapting conversions between the tensor layouts of two implementations of one layer.

Used by :func:`transferkit.transfer.transfer_parameters` once two tensors are paired:

* :func:`reshape_compatible`: the same values under size-1 dims added or dropped at one end
  (``(C, 1, 1)`` <-> ``(C,)`` layer scale, ``(O, I, 1, 1)`` <-> ``(O, I)`` 1x1 conv / linear,
  ``(1, 1, D)`` <-> ``(1, D)`` class token), copied as a reshape;
* fusing/splitting along dim 0 (``qkv`` <-> ``query``/``key``/``value``) is done by the caller
  with ``torch.cat`` / row slices, see :func:`transferkit.transfer.parameters`;
* :func:`resize_position_embedding`: a ViT position embedding for another grid (bicubic
  interpolation of the patch part, prefix tokens kept);
* :func:`adapt_input_channels`: a stem conv for 1 <-> C input channels (sum over, or repeat and
  divide by C), so a gray image replicated to C channels gives the same output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Shape = tuple[int, ...]
#: Most prefix (class, register, distillation) tokens looked for in a position embedding.
MAX_PREFIX_TOKENS = 16


def _lstrip1(shape: Shape) -> Shape:
    i = 0
    while i < len(shape) and shape[i] == 1:
        i += 1
    return shape[i:]


def _rstrip1(shape: Shape) -> Shape:
    i = len(shape)
    while i > 0 and shape[i - 1] == 1:
        i -= 1
    return shape[:i]


def reshape_compatible(a: Shape, b: Shape) -> bool:
    """Whether ``a`` and ``b`` differ only by size-1 dims at the start, or only at the end.

    ``(C, 1, 1)`` ~ ``(C,)``, ``(O, I, 1, 1)`` ~ ``(O, I)``, ``(1, 1, D)`` ~ ``(D,)``; but
    ``(1, 4)`` !~ ``(4, 1)`` (a row is not a column: that would be a transpose).
    """
    if a == b:
        return True
    if math.prod(a) != math.prod(b):
        return False
    return _lstrip1(a) == _lstrip1(b) or _rstrip1(a) == _rstrip1(b)


def _square(n: int) -> int | None:
    side = math.isqrt(n) if n > 0 else 0
    return side if side > 0 and side * side == n else None


def position_grid(src: Shape, tgt: Shape) -> tuple[int, int, int] | None:
    """``(prefix tokens, source side, target side)`` if ``src``/``tgt`` look like ViT position
    embeddings of two square grids, else ``None``.

    Both must be ``(1, N, D)`` or ``(N, D)`` with the same ``D`` and different ``N``; the prefix is
    the smallest ``p`` (at most :data:`MAX_PREFIX_TOKENS`) for which ``N - p`` is a square on both.
    """
    if len(src) != len(tgt) or len(src) not in (2, 3) or src[-1] != tgt[-1] or src == tgt:
        return None
    if len(src) == 3 and (src[0], tgt[0]) != (1, 1):
        return None
    ns, nt = src[-2], tgt[-2]
    for p in range(min(MAX_PREFIX_TOKENS, ns, nt) + 1):
        gs, gt = _square(ns - p), _square(nt - p)
        if gs and gt:
            return p, gs, gt
    return None


def resize_position_embedding(value: torch.Tensor, tgt: Shape) -> tuple[torch.Tensor, str] | None:
    """``value`` resized to shape ``tgt`` (see :func:`position_grid`), with a reason; or ``None``.

    The prefix tokens are kept as they are; the grid part is interpolated bicubically
    (``align_corners=False``, ``antialias=True``: the defaults of timm's ``resample_abs_pos_embed``,
    so the result equals timm's), in float32.
    """
    grid = position_grid(tuple(value.shape), tgt)
    if grid is None:
        return None
    p, gs, gt = grid
    d = value.shape[-1]
    flat = value.reshape(-1, d).float()
    patches = flat[p:].reshape(1, gs, gs, d).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(gt, gt), mode="bicubic", align_corners=False, antialias=True)
    out = torch.cat([flat[:p], patches.permute(0, 2, 3, 1).reshape(gt * gt, d)])
    reason = (
        f"position embedding resized: {p} prefix token(s) kept, {gs}x{gs} grid -> {gt}x{gt} "
        "by bicubic interpolation"
    )
    return out.reshape(tgt).to(value.dtype), reason


def adapt_input_channels(value: torch.Tensor, tgt: Shape) -> tuple[torch.Tensor, str] | None:
    """A stem conv weight ``(O, C, k, k)`` for ``(O, 1, k, k)`` (sum over the C input channels) or
    ``(O, 1, k, k)`` for ``(O, C, k, k)`` (repeated C times, divided by C), with a reason; else
    ``None``. Either way a gray image replicated to C channels gives the same output.
    """
    src = tuple(value.shape)
    if len(src) != 4 or len(tgt) != 4 or src[0] != tgt[0] or src[2:] != tgt[2:]:
        return None
    cs, ct = src[1], tgt[1]
    if cs > 1 and ct == 1:
        return value.sum(dim=1, keepdim=True), f"input channels adapted: sum over the {cs} source channels"
    if cs == 1 and ct > 1:
        out = value.repeat(1, ct, 1, 1) / ct
        return out, f"input channels adapted: the 1 source channel repeated {ct} times, divided by {ct}"
    return None


__all__ = [
    "MAX_PREFIX_TOKENS",
    "adapt_input_channels",
    "position_grid",
    "reshape_compatible",
    "resize_position_embedding",
]
