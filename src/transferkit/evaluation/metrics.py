"""Predictions and classification metrics (accuracy, macro-F1, per-class F1, confusion matrix).

The numbers come from scikit-learn (:func:`sklearn.metrics.accuracy_score`, :func:`f1_score`,
:func:`confusion_matrix`); this module only runs the model, checks the labels and packs the results
into a JSON-friendly :class:`Metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from transferkit.data.base import TensorDataset
from transferkit.data.tokens import model_inputs
from transferkit.engine.batches import labelled_batches, move
from transferkit.engine.predict import memory_batch_size
from transferkit.errors import ConfigError, DataError, LabelError

logger = logging.getLogger(__name__)


@dataclass
class Metrics:
    """Classification metrics of one model on one dataset.

    Attributes:
        accuracy: Fraction of correct predictions, in ``[0, 1]``.
        macro_f1: Unweighted mean of the per-class F1 scores over all ``num_classes`` classes
            (a class that never occurs and is never predicted scores 0).
        per_class_f1: F1 of each class, length ``num_classes``.
        confusion: Confusion matrix, ``confusion[i][j]`` = number of examples of true class ``i``
            predicted as class ``j``; shape ``(num_classes, num_classes)``.
        n: Number of examples.
        class_names: Name of each class, length ``num_classes``.
    """

    accuracy: float
    macro_f1: float
    per_class_f1: list[float] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    n: int = 0
    class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``per_class_f1``)."""
        return len(self.per_class_f1)

    def to_dict(self) -> dict[str, Any]:
        """The metrics as a JSON-serialisable dict (plain floats, ints, lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metrics:
        """Rebuild :class:`Metrics` from :meth:`to_dict` output (unknown keys are ignored)."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        missing = {"accuracy", "macro_f1"} - known.keys()
        if missing:
            raise ConfigError(
                f"metrics dict lacks key(s) {sorted(missing)}; got keys {sorted(d)}; "
                "pass the output of Metrics.to_dict()"
            )
        return cls(**known)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _head_size(model: nn.Module) -> int | None:
    """Number of classes the model's head predicts, when known without running it."""
    from transferkit.models.base import TransferNet  # models import evaluation lazily; avoid a cycle

    if not isinstance(model, TransferNet):
        return None
    if isinstance(model.head, nn.Linear):
        return int(model.head.out_features)
    return int(model.info.num_classes) if model.info.num_classes > 0 else None


def _check_head(data: TensorDataset, head: int) -> None:
    """Refuse data with more classes than the head predicts (its extra classes can never be right)."""
    if data.num_classes > head:
        raise LabelError(
            f"data {data.name!r} has {data.num_classes} classes but the model's head predicts {head}; "
            f"evaluate on data with the model's classes, or fine-tune a {data.num_classes}-class "
            "head first"
        )


def predict(
    model: nn.Module,
    data: TensorDataset,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Predicted and true labels of ``model`` on ``data``.

    The model runs in eval mode under :func:`torch.inference_mode`; its previous train/eval mode is
    restored afterwards (also when the forward pass raises). The model is not moved: pass
    ``device`` only when it matches where the model lives.

    Args:
        model: Any module mapping inputs ``(B, *input_shape)`` to logits ``(B, num_classes)``.
        data: The dataset; ``data.x`` is ``(N, *input_shape)``, ``data.y`` is ``(N,)``.
        batch_size: Examples per forward pass.
        device: Where to run the batches; ``None`` means the device of the model's parameters
            (CPU for a model without parameters).

    Returns:
        ``(y_pred, y_true)``: two int64 CPU tensors of shape ``(N,)``.

    Raises:
        DataError: ``data`` is empty.
        ConfigError: ``batch_size`` is not a positive integer.
        DataError: The model's output is not logits of shape ``(B, num_classes)``.
    """
    y_pred, y_true, _, _ = _predict(model, data, batch_size, device)
    return y_pred, y_true


def predict_proba(
    model: nn.Module,
    data: TensorDataset,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> Tensor:
    """Class probabilities (softmax of the logits) of ``model`` on every example of ``data``, as
    :func:`predict` runs it (eval mode, inference mode, the model not moved).

    Returns:
        A float32 CPU tensor of shape ``(N, num_classes)``.
    """
    return _predict(model, data, batch_size, device, keep_probs=True)[3]


def _predict(
    model: nn.Module, data: TensorDataset, batch_size: int, device: str | torch.device | None,
    keep_probs: bool = False,
) -> tuple[Tensor, Tensor, int, Tensor | None]:
    """:func:`predict` plus the width of the model's logits (its number of classes) and, with
    ``keep_probs``, the softmax probabilities. ``data`` may also be any map-style Dataset with
    ``classes`` (a streamed image folder)."""
    if len(data) == 0:
        raise DataError(
            f"cannot evaluate on dataset {data.name!r}: it has 0 examples; pass a non-empty split"
        )
    data = model_inputs(data, model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    dev = torch.device(device) if device is not None else _model_device(model)
    batch_size = memory_batch_size(model, batch_size)
    was_training = model.training
    model.eval()
    preds: list[Tensor] = []
    labels: list[Tensor] = []
    probs: list[Tensor] = []
    width = 0
    try:
        with torch.inference_mode():
            for ex in labelled_batches(data, batch_size):  # tensors sliced; other datasets loaded
                logits = model(move(ex.x, dev))
                if logits.ndim != 2 or logits.shape[0] != len(ex):
                    raise DataError(
                        f"model returned output of shape {tuple(logits.shape)} for a batch of "
                        f"{len(ex)}; it must return logits of shape (batch, num_classes)"
                    )
                width = int(logits.shape[1])
                preds.append(logits.argmax(dim=1).cpu())
                labels.append(ex.y.cpu())
                if keep_probs:
                    probs.append(logits.float().softmax(dim=1).cpu())
    finally:
        model.train(was_training)
    y_pred = torch.cat(preds).long()
    return y_pred, torch.cat(labels).long(), width, torch.cat(probs) if keep_probs else None


def _as_label_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{what} must be 1-D class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise LabelError(f"{what} must be integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def classification_metrics(
    y_true: Tensor | Sequence[int] | np.ndarray,
    y_pred: Tensor | Sequence[int] | np.ndarray,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> Metrics:
    """Accuracy, macro-F1, per-class F1 and confusion matrix over classes ``0..num_classes-1``.

    Args:
        y_true: True labels, shape ``(N,)``, values in ``[0, num_classes)``.
        y_pred: Predicted labels, shape ``(N,)``, values in ``[0, num_classes)``.
        num_classes: Number of classes; every class gets an F1 score and a confusion row, even
            one absent from both ``y_true`` and ``y_pred`` (its F1 is 0).
        class_names: Names of the classes (length ``num_classes``); ``None`` gives
            ``"0"``, ``"1"``, ...

    Returns:
        The :class:`Metrics`.

    Raises:
        DataError: No examples, or ``y_true`` and ``y_pred`` differ in length.
        LabelError: A label or prediction lies outside ``[0, num_classes)``.
        ConfigError: ``num_classes`` < 1 or ``class_names`` has the wrong length.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    names = [str(c) for c in class_names] if class_names is not None else None
    if names is not None and len(names) != num_classes:
        raise ConfigError(
            f"class_names has {len(names)} names but num_classes is {num_classes}; "
            "give one name per class"
        )
    yt = _as_label_array(y_true, "y_true")
    yp = _as_label_array(y_pred, "y_pred")
    if yt.size == 0:
        raise DataError("cannot compute metrics of 0 examples; pass at least one label")
    if yt.shape != yp.shape:
        raise DataError(
            f"y_true has {yt.size} labels but y_pred has {yp.size}; they must be the same length"
        )
    for what, arr in (("y_true", yt), ("y_pred", yp)):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_classes:
            raise LabelError(
                f"{what} has values in [{lo}, {hi}] but num_classes is {num_classes}; "
                f"labels must lie in [0, {num_classes - 1}] (check num_classes or the model's head)"
            )
    labels = list(range(num_classes))
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score  # ~2 s to import: only here

    per_class = f1_score(yt, yp, labels=labels, average=None, zero_division=0)
    macro = f1_score(yt, yp, labels=labels, average="macro", zero_division=0)
    cm = confusion_matrix(yt, yp, labels=labels)
    return Metrics(
        accuracy=float(accuracy_score(yt, yp)),
        macro_f1=float(macro),
        per_class_f1=[float(v) for v in per_class],
        confusion=[[int(v) for v in row] for row in cm],
        n=int(yt.size),
        class_names=names if names is not None else [str(i) for i in labels],
    )


def evaluate(
    model: nn.Module,
    data: TensorDataset,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> Metrics:
    """Run ``model`` on ``data`` and compute its :class:`Metrics` over ``data.classes``.

    The head must predict at least ``data``'s classes (checked before the model runs when it is a
    TransferNet). A head with more classes is fine: the metrics stay over ``data.classes``, and a
    prediction of a class the data lacks counts as an error (it adds to no confusion column).

    Args:
        model: Any module mapping inputs ``(B, *input_shape)`` to logits ``(B, num_classes)``.
        data: The dataset; its ``classes`` give the number of classes and their names.
        batch_size: Examples per forward pass (at most: lowered for large inputs, see
            :func:`transferkit.engine.predict.memory_batch_size`).
        device: Where to run; ``None`` = the model's parameters' device.

    Raises:
        DataError: ``data`` is empty.
        LabelError: ``data`` has more classes than the model's head predicts.
    """
    head = _head_size(model)
    if head is not None:  # refuse before running the model when the head's size is known
        _check_head(data, head)
    y_pred, y_true, width, _ = _predict(model, data, batch_size, device)
    _check_head(data, width)
    k = data.num_classes
    full = classification_metrics(y_true, y_pred, max(width, k))
    outside = int((y_pred >= k).sum())
    if outside:
        logger.info(
            "%d of %d predictions on %r are classes the data lacks (>= %d); they count as errors",
            outside,
            len(y_pred),
            data.name,
            k,
        )
    per_class = full.per_class_f1[:k]
    metrics = Metrics(
        accuracy=full.accuracy,
        macro_f1=float(np.mean(per_class)),
        per_class_f1=per_class,
        confusion=[row[:k] for row in full.confusion[:k]],
        n=full.n,
        class_names=list(data.classes),
    )
    logger.debug(
        "evaluated on %r: accuracy %.4f, macro-F1 %.4f (n=%d)",
        data.name,
        metrics.accuracy,
        metrics.macro_f1,
        metrics.n,
    )
    return metrics


def evaluate_with_head(
    model: nn.Module,
    head: nn.Module,
    data: TensorDataset,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> Metrics:
    """Metrics of ``model``'s input adapter and backbone under another ``head``.

    Measures what fine-tuning did to the source task: the fine-tuned backbone with the *source*
    head, on the source task's test data (source retention; Li & Hoiem, 2017).

    Args:
        model: A TransferNet (``input_adapter``, ``backbone``).
        head: A classifier over the backbone's features, e.g. the source model's head.
        data: Labelled data of the head's task.
    """
    from transferkit.models.base import TransferNet

    if not isinstance(model, TransferNet):
        raise ConfigError(f"evaluate_with_head needs a TransferNet, got {type(model).__name__}")
    view = TransferNet(model.backbone, head, model.info, model.input_adapter)
    view.tokenizer = model.tokenizer  # a text model's texts are tokenised as for the model
    return evaluate(view, data, batch_size=batch_size, device=device)
