"""Inference over a whole dataset: backbone features and the validation loss / accuracy."""

from __future__ import annotations

import contextlib
import hashlib
import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data.tokens import model_inputs
from transferkit.engine.batches import input_batches, labelled_batches, move

#: Input values one evaluation forward pass may see: 64 RGB images at 224 px. Evaluation never needs
#: big batches for speed, and memory grows with them (EfficientNet-Lite0 at 224 px peaked at 9.5 GB
#: with 512 images a batch, 1.7 GB with 64, same numbers).
EVAL_BUDGET = 64 * 3 * 224 * 224


def memory_batch_size(model: nn.Module, requested: int) -> int:
    """``requested``, lowered so that one forward pass at the model's input size (after its input
    adapter: ``model.info.input_size``) holds at most :data:`EVAL_BUDGET` values: 512 stays 512 up
    to 3x64x64 inputs, becomes 256 at 112 px and 64 at 224 px."""
    size = getattr(getattr(model, "info", None), "input_size", None)
    if not size:
        return requested
    return max(1, min(int(requested), EVAL_BUDGET // max(1, math.prod(size))))


#: Features of unlabelled pools computed in this process, by (frozen backbone's weights, pool): the
#: seeds and arms of a workflow that read the same pool through the same frozen backbone share one pass.
_POOLS: dict[tuple[str, int], tuple[weakref.ref, torch.Tensor]] = {}


def backbone_digest(model: nn.Module) -> str:
    """A digest of everything that computes the features: the model's description (architecture and
    arguments, input size, normalisation), the input adapter's settings and the adapter's and
    backbone's state."""
    h = hashlib.sha1()
    h.update(repr(getattr(model, "info", None)).encode())
    h.update(repr(getattr(model, "input_adapter", None)).encode())
    for part in ("input_adapter", "backbone"):
        module = getattr(model, part, None)
        if module is None:
            continue
        for key, value in module.state_dict().items():
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def pool_features(model: nn.Module, data: object, batch_size: int = 512,
                  device: str | torch.device | None = None) -> torch.Tensor:
    """:func:`predict_features` of an unlabelled pool, remembered for the process: a later call with
    the same dataset object and a backbone with the same weights returns the same features at once."""
    for stale in [k for k, (ref, _) in _POOLS.items() if ref() is None]:  # pools no longer alive
        del _POOLS[stale]
    key = (backbone_digest(model), id(data))
    hit = _POOLS.get(key)
    if hit is not None and hit[0]() is data:
        return hit[1].to(device) if device is not None else hit[1]
    feats = predict_features(model, data, batch_size, device)
    try:
        _POOLS[key] = (weakref.ref(data), feats)
    except TypeError:  # not weakly referenceable: not remembered
        pass
    return feats


def predict_features(
    model: nn.Module,
    data: object,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Backbone features of every example, in eval mode and without gradients.

    Args:
        model: A TransferNet (``model.forward_features``), already on ``device``.
        data: A dataset (any map-style Dataset) or raw inputs ``(N, ...)``.
        batch_size: Examples per forward pass (at most; see :func:`memory_batch_size`).
        device: Where inputs go and features stay; defaults to the model's device.
        num_workers: DataLoader workers for datasets that are not in memory.
        autocast: Context of each forward pass (the trainer's mixed precision); features come back
            as float32 whatever it computes in.

    Returns:
        Features ``(N, feature_dim)`` on ``device``, in dataset order. The model's train/eval mode
        is restored.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    batch_size = memory_batch_size(model, batch_size)
    data = model_inputs(data, model)
    by_length = callable(getattr(data, "lengths", None))  # token ids: shortest texts first
    if isinstance(data, torch.Tensor):
        batches = (data[s : s + batch_size] for s in range(0, len(data), batch_size))
    elif by_length:
        examples = list(labelled_batches(data, batch_size, num_workers))
        batches = (ex.x for ex in examples)
    else:
        batches = input_batches(data, batch_size, num_workers)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for x in batches:
                with autocast():
                    f = model.forward_features(move(x, device))
                chunks.append(f.float() if f.dtype in (torch.float16, torch.bfloat16) else f)
    finally:
        model.train(was_training)
    if not chunks:
        dim = getattr(getattr(model, "info", None), "feature_dim", 0)
        return torch.empty(0, dim, device=device)
    feats = torch.cat(chunks)
    if by_length:  # back to dataset order
        order = torch.cat([ex.index for ex in examples]).to(feats.device)
        feats = torch.empty_like(feats).index_copy_(0, order, feats)
    return feats


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: object,
    batch_size: int,
    device: torch.device,
    feats: torch.Tensor | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    num_workers: int = 0,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on the labelled examples of ``data`` (eval
    mode, no gradients); with ``feats`` (precomputed backbone features, dataset order) only the
    head runs."""
    data = model_inputs(data, model)
    (model.head if feats is not None else model).eval()  # on cached features only the head runs
    if feats is None:
        batch_size = memory_batch_size(model, batch_size)
    total = correct = 0.0
    n = 0
    for ex in labelled_batches(data, batch_size, num_workers):
        y = ex.y.to(device)
        with autocast():
            if feats is not None:
                logits = model.head(feats[ex.index.to(feats.device)])
            else:
                logits = model(move(ex.x, device))
        keep = y >= 0
        total += float(F.cross_entropy(logits.float()[keep], y[keep], reduction="sum"))
        correct += float((logits.argmax(1)[keep] == y[keep]).sum())
        n += int(keep.sum())
    n = max(1, n)
    return total / n, correct / n


def examples_per_second(model: nn.Module, data: object, max_examples: int = 512, batch_size: int = 64,
                        device: str | torch.device | None = None) -> float:
    """Inference speed of ``model``: examples per second of eval-mode forward passes over the first
    ``max_examples`` examples of ``data`` (after one warm-up batch), on ``device`` (the model's own
    by default). Texts are tokenised for the model first, outside the timing."""
    import time

    data = model_inputs(data, model)
    n = min(len(data), int(max_examples))  # type: ignore[arg-type]
    if n == 0:
        return 0.0
    part = data.subset(torch.arange(n)) if hasattr(data, "subset") else data
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    batches = [ex.x for ex in labelled_batches(part, batch_size)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(move(batches[0], torch.device(device)))
            start = time.perf_counter()
            for x in batches:
                model(move(x, torch.device(device)))
            seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    return n / max(seconds, 1e-9)


__all__ = ["EVAL_BUDGET", "evaluate", "examples_per_second", "memory_batch_size", "predict_features"]
