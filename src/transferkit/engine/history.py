"""What a fit records: the per-epoch history, the choice of the epoch to keep, the progress bar."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from transferkit.engine.config import TrainConfig
from transferkit.errors import ConfigError


@dataclass
class History:
    """What happened during :meth:`Trainer.fit`.

    Attributes:
        epochs: One dict per finished epoch: ``epoch`` (1-based), ``train_loss``, ``loss_<term>``
            for every objective, ``train_accuracy``, ``val_loss``, ``val_accuracy`` (``None``
            without a validation set), ``lr`` (head learning rate used in the epoch) and ``seconds``.
        best_epoch: 1-based epoch chosen by ``config.select_metric`` (highest validation accuracy
            by default; ``None`` when no epoch had the metric).
        best_val_accuracy: Validation accuracy of that epoch.
        best_value: The selection metric's value at that epoch.
        seconds: Total training time, summed over resumed runs.
        stopped_early: Whether early stopping ended training.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    best_value: float | None = None
    seconds: float = 0.0
    stopped_early: bool = False

    def to_list(self) -> list[dict[str, Any]]:
        """The per-epoch rows (copies)."""
        return [dict(row) for row in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-serialisable data."""
        return asdict(self)


def is_best(row: dict[str, Any], history: History, config: TrainConfig) -> bool:
    """Whether this epoch's ``config.select_metric`` beats every earlier epoch's.

    Raises:
        ConfigError: the metric is not among the epoch's values.
    """
    key = config.select_metric
    if key not in row:
        raise ConfigError(
            f"select_metric {key!r} is not among the epoch's values "
            f"({', '.join(sorted(row))}); pass a monitor that reports it or pick one of these"
        )
    value = row[key]
    if value is None or not math.isfinite(float(value)):
        return False
    if history.best_value is None:
        return True
    if config.selection_mode() == "max":
        return float(value) > history.best_value
    return float(value) < history.best_value


class Progress:
    """A rich progress bar over epochs and batches, or nothing."""

    def __init__(self, enabled: bool, epochs: int, start: int) -> None:
        self.bar = None
        if enabled:
            from rich.progress import Progress

            self.bar = Progress(transient=False)
            self.bar.start()
            self.epoch_task = self.bar.add_task("epochs", total=epochs, completed=start)
            self.batch_task = self.bar.add_task("batches", total=0)

    def start_epoch(self, epoch: int, batches: int) -> None:
        if self.bar is not None:
            self.bar.reset(self.batch_task, total=batches, description=f"epoch {epoch + 1}")

    def advance_batch(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.batch_task)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.epoch_task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()



__all__ = ["History", "Progress", "is_best"]
