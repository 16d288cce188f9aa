"""A saved model's predictions on data, as rows and as a CSV file (``transferkit predict``)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from torch import nn

from transferkit.evaluation.metrics import _check_head, _head_size, predict_proba


def prediction_rows(
    model: nn.Module, data: Any, *, labelled: bool = True, batch_size: int = 512
) -> list[dict[str, Any]]:
    """One row per example of ``data``: ``row`` (its index), ``text`` (text data), ``prediction`` (the
    class name the model records, else the class index), ``probability`` (of that class) and, when
    ``labelled``, the true ``label`` (the data's class name).

    Args:
        model: A classifier (a :class:`~transferkit.models.TransferNet` names its classes through
            ``info.class_names``).
        data: A dataset (images, vectors or texts); its labels are read only when ``labelled``.
        labelled: Whether ``data`` holds true labels to put beside the predictions.
        batch_size: Examples per forward pass.
    """
    head = _head_size(model)
    if labelled and head is not None:
        _check_head(data, head)  # the data's classes must be the model's: refused otherwise
    probs = predict_proba(model, data, batch_size=batch_size)
    data_classes = list(getattr(data, "classes", []) or [])
    names = getattr(getattr(model, "info", None), "class_names", None)
    if not names and labelled and len(data_classes) == probs.shape[1]:
        names = data_classes  # as evaluate compares them: class k of the model is the data's k
    best_p, best = probs.max(dim=1)
    texts = getattr(data, "texts", None)
    rows = []
    for i, (k, p) in enumerate(zip(best.tolist(), best_p.tolist(), strict=True)):
        row: dict[str, Any] = {"row": i}
        if texts is not None:
            row["text"] = texts[i]
        row["prediction"] = names[k] if names and k < len(names) else k
        row["probability"] = round(float(p), 4)
        if labelled:
            y = int(data.y[i])
            row["label"] = data_classes[y] if y < len(data_classes) else y
        rows.append(row)
    return rows


def predictions_csv(rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV text with a header (quoted where needed, texts included)."""
    out = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def write_predictions(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write :func:`predictions_csv` to ``path`` atomically."""
    from transferkit.io import atomic_write_text

    return atomic_write_text(path, predictions_csv(rows))


__all__ = ["prediction_rows", "predictions_csv", "write_predictions"]
