"""What transfer changed in a model: representation similarity and weight change, layer by layer.

* :func:`linear_cka`: linear centred kernel alignment of two representations of the same examples
  (Kornblith et al., 2019, "Similarity of Neural Network Representations Revisited", ICML):
  ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred ``X (N, p)``, ``Y (N, q)``; 1 for
  representations equal up to an orthogonal transform and isotropic scaling, near 0 for unrelated ones.
* :func:`layer_cka`: that score for every backbone block two models share (source vs fine-tuned,
  teacher vs student, before vs after a merge), on the same inputs; feature maps are flattened, a
  sequence block's tokens averaged.
* :func:`weight_change`: each block's relative weight change ``||W_b - W_a|| / ||W_a||``;
* :func:`compare_models`: both on a dataset's examples, with each model's accuracy (``transferkit compare``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from transferkit.errors import ShapeError

__all__ = ["block_pairs", "compare_models", "layer_cka", "linear_cka", "weight_change"]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between ``x (N, ...)`` and ``y (N, ...)`` (flattened per example, float64).

    Raises:
        ShapeError: different numbers of examples, or fewer than 2.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ShapeError(f"linear_cka needs the same examples (at least 2) in both: got {x.shape[0]} and "
                         f"{y.shape[0]}")
    x = x.reshape(len(x), -1).double()
    y = y.reshape(len(y), -1).double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    if max(x.shape[1], y.shape[1]) > len(x):
        # wide features (a text block's tokens x hidden, a feature map's channels x pixels): the same value
        # from the N x N Gram matrices, ||Y^T X||_F^2 = <X X^T, Y Y^T>, never a p x p matrix
        kx, ky = x @ x.T, y @ y.T
        cross, norm = (kx * ky).sum(), torch.linalg.matrix_norm(kx) * torch.linalg.matrix_norm(ky)
    else:
        cross = torch.linalg.matrix_norm(y.T @ x) ** 2
        norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm) if float(norm) > 0 else 0.0


def _blocks(model: nn.Module) -> list[str]:
    from transferkit.models.surgery import backbone_blocks  # lazy: models imports evaluation helpers

    return [name for name, _ in backbone_blocks(model)]  # type: ignore[arg-type]


def block_pairs(model_a: nn.Module, model_b: nn.Module) -> list[tuple[str, str]]:
    """Which block of ``model_a`` to compare with each backbone block of ``model_b``: the block of the
    same name when every one of ``model_b``'s is in ``model_a`` (a fine-tuned copy), else the block at
    the same relative depth (a student against its teacher: block ``i`` of ``S`` pairs with block
    ``round((i + 1) T / S) - 1`` of ``T``, TinyBERT's uniform mapping)."""
    a, b = _blocks(model_a), _blocks(model_b)
    if all(name in a for name in b):
        return [(name, name) for name in b]
    return [(a[max(0, round((i + 1) * len(a) / len(b)) - 1)], name) for i, name in enumerate(b)]


def _tapped(model: nn.Module, names: Sequence[str], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    from transferkit.models.surgery import LayerTap

    was = model.training
    model.eval()
    try:
        with LayerTap(model, list(dict.fromkeys(names)), detach=True) as tap:
            model(inputs)
        return {n: tap.features[n] for n in names}
    finally:
        model.train(was)


@torch.no_grad()
def layer_cka(model_a: nn.Module, model_b: nn.Module, inputs: torch.Tensor,
              layers: Sequence[str] | None = None, *, inputs_b: torch.Tensor | None = None,
              pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, float]:
    """Linear CKA of the two models' outputs at each layer on the same examples (both in eval mode;
    their train/eval modes are restored), keyed by ``model_b``'s layer names.

    Args:
        inputs: The examples as ``model_a`` takes them.
        layers: Names present in both (default: the backbone blocks they share, input side first).
        inputs_b: The same examples as ``model_b`` takes them (another tokenizer); default ``inputs``.
        pairs: ``(layer of a, layer of b)`` to compare instead (see :func:`block_pairs`).
    """
    if pairs is None:
        if layers is None:
            shared = set(_blocks(model_b))
            layers = [n for n in _blocks(model_a) if n in shared]
        pairs = [(n, n) for n in layers]
    feats_a = _tapped(model_a, [p[0] for p in pairs], inputs)
    feats_b = _tapped(model_b, [p[1] for p in pairs], inputs if inputs_b is None else inputs_b)
    return {b: linear_cka(_pooled(feats_a[a]), _pooled(feats_b[b])) for a, b in pairs}


def _pooled(features: torch.Tensor) -> torch.Tensor:
    """A sequence block's output ``(N, tokens, hidden)`` averaged over its tokens: flattened, its
    ``tokens * hidden`` columns would outnumber the examples many times over, where linear CKA drifts
    towards 1 even for unrelated representations (0.999 for random 64 x 128 x 384 features). Feature
    maps ``(N, C, H, W)`` and vectors are kept as they are (flattened by :func:`linear_cka`)."""
    return features.float().mean(1) if features.dim() == 3 else features


def weight_change(before: nn.Module, after: nn.Module) -> dict[str, float]:
    """Relative change ``||W_after - W_before|| / ||W_before||`` of every backbone block's parameters
    (all of a block's tensors together); blocks whose shapes differ are left out."""
    a, b = dict(before.named_parameters()), dict(after.named_parameters())
    result = {}
    for block in _blocks(before):
        keys = [k for k in a if k.startswith(block + ".") and k in b and a[k].shape == b[k].shape]
        if not keys:
            continue
        diff = sum(float((b[k].detach() - a[k].detach()).double().pow(2).sum()) for k in keys) ** 0.5
        base = sum(float(a[k].detach().double().pow(2).sum()) for k in keys) ** 0.5
        result[block] = diff / base if base > 0 else float("inf") if diff > 0 else 0.0
    return result


def compare_models(model_a: nn.Module, model_b: nn.Module, data: object, *, examples: int = 512) -> dict:
    """Layer-by-layer comparison of two models on the same examples of ``data`` (a dataset; text is
    tokenised for each model): ``{"cka": {block: value}, "weight_change": {block: value}, "examples": n,
    "accuracy_a": ..., "accuracy_b": ...}`` (accuracies ``None`` when a model's head does not answer the
    data's classes).

    Raises:
        ShapeError: the models share no backbone block, or see the inputs differently (different
            tokenizers).
    """
    from transferkit.data.tokens import model_inputs
    from transferkit.errors import DataError, LabelError
    from transferkit.evaluation.metrics import evaluate

    xa, xb = model_inputs(data, model_a), model_inputs(data, model_b)
    if xa.x.shape != xb.x.shape or not torch.equal(xa.x[:examples], xb.x[:examples]):
        raise ShapeError("the two models read the data differently (another tokenizer or input size); "
                         "compare models that take the same inputs")
    cka = layer_cka(model_a, model_b, xa.x[:examples])
    if not cka:
        raise ShapeError("the two models share no backbone block (their block names differ); compare models "
                         "of one architecture, e.g. a source and its fine-tuned copy")
    accuracy = {}
    for key, model, x in (("accuracy_a", model_a, xa), ("accuracy_b", model_b, xb)):
        try:
            accuracy[key] = float(evaluate(model, x).accuracy)
        except (LabelError, DataError):
            accuracy[key] = None
    return {"cka": cka, "weight_change": weight_change(model_a, model_b), "examples": min(examples, len(xa)),
            **accuracy}
