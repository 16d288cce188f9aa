"""The in-memory dataset container every part of transferkit passes around."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from transferkit.errors import DataError, LabelError


def checked_classes(y: torch.Tensor, classes: list[str], name: str) -> list[str]:
    """``classes`` (``"0" .. "n-1"`` when empty) after checking that every label indexes one.

    Raises:
        LabelError: a label lies outside ``[0, len(classes))``.
    """
    if not classes:
        n = int(y.max().item()) + 1 if len(y) else 0
        classes = [str(i) for i in range(n)]
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
        raise LabelError(
            f"dataset {name!r} has labels in [{int(y.min())}, {int(y.max())}] "
            f"but {len(classes)} classes; labels must lie in [0, {len(classes) - 1}]"
        )
    return classes


@dataclass
class TensorDataset(Dataset):
    """Inputs and integer labels held as tensors.

    Attributes:
        x: Inputs, float32. Images are ``(N, C, H, W)`` with values in ``[0, 1]``; tabular data is
            ``(N, D)``. Models adapt size, channels and normalisation themselves
            (:class:`transferkit.models.InputAdapter`), so data stays at its native size.
        y: Labels, int64, shape ``(N,)``, values in ``[0, len(classes))``.
        classes: Class names; ``len(classes)`` is the number of classes.
        name: A short name for reports ("fashion-mnist/train").
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise DataError("TensorDataset needs tensors for x and y; convert with torch.as_tensor")
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"dataset {self.name!r} has {self.x.shape[0]} inputs but {self.y.shape[0]} labels; "
                "they must be the same length"
            )
        if self.y.ndim != 1:
            raise DataError(
                f"labels of dataset {self.name!r} must be 1-D class indices, got shape "
                f"{tuple(self.y.shape)}; for one-hot labels take y.argmax(1)"
            )
        self.y = self.y.long()
        if self.x.dtype != torch.float32:
            self.x = self.x.float()
        self.classes = checked_classes(self.y, self.classes, self.name)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(self.x.shape[1:])

    def subset(self, indices: Sequence[int] | torch.Tensor, name: str | None = None) -> TensorDataset:
        """A new dataset with the rows at ``indices`` (same classes)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorDataset(self.x[idx], self.y[idx], list(self.classes), name or self.name)

    def class_counts(self) -> torch.Tensor:
        """Number of examples of each class, shape ``(num_classes,)``."""
        return torch.bincount(self.y, minlength=self.num_classes)


@dataclass
class DataSplits:
    """Train / validation / test splits of one dataset.

    The test split is fixed by the dataset (never depends on a seed) and is used only for the final
    report; model choice (early stopping, strategy choice) uses ``val``.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return self.train.num_classes
