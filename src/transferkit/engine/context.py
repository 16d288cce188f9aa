"""What objectives and monitors may see of a run: the contract between the loop and its plug-ins.

:meth:`Objective.setup <transferkit.engine.objectives.Objective.setup>`,
:meth:`Objective.on_epoch_start <transferkit.engine.objectives.Objective.on_epoch_start>`, a custom
:meth:`Objective.training_step <transferkit.engine.objectives.Objective.training_step>` and the
trainer's monitors receive a :class:`FitContext`, never the trainer. Everything a plug-in may read
is listed here; everything else about the loop may change without breaking a method.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from transferkit.engine.batches import Inputs, first_input, input_batches, move
from transferkit.engine.config import TrainConfig


@dataclass
class FitContext:
    """The run an objective or monitor is part of.

    Attributes:
        model: The student being trained (a TransferNet: ``forward_features``, ``head``), on
            ``device``.
        device: Where training runs.
        config: The run's :class:`~transferkit.engine.config.TrainConfig`.
        train_data: The training set (a TensorDataset, any map-style Dataset or a DataLoader).
        val_data: The validation set, or ``None``.
        target_data: The unlabelled target set (domain adaptation), or ``None``.
        steps_per_epoch: Optimisation steps in one epoch.
        run_dir: The run's folder, or ``None`` in memory.
        cache_dir: A folder shared by the runs of one workflow for values an objective computes
            once and keys by what they depend on (EWC's Fisher); ``None``: use ``run_dir``.
        rank, world_size: This process's rank and the number of data-parallel processes.
    """

    model: nn.Module
    device: torch.device
    config: TrainConfig
    train_data: Any = None
    val_data: Any = None
    target_data: Any = None
    steps_per_epoch: int = 0
    run_dir: Path | None = None
    cache_dir: Path | None = None
    rank: int = 0
    world_size: int = 1

    def first_input(self, data: Dataset | None = None) -> Inputs:
        """One training input as a batch of one ``(1, ...)`` on ``device`` (shape probes)."""
        return move(first_input(self.train_data if data is None else data), self.device)

    def input_batches(self, data: Dataset | None = None, batch_size: int | None = None) -> Iterator[Inputs]:
        """The inputs of ``data`` (the training set by default) in dataset order, on the CPU,
        ``config.eval_batch_size`` at a time, so per-example values computed from them line up
        with :attr:`Batch.index <transferkit.engine.objectives.Batch.index>`."""
        data = self.train_data if data is None else data
        return input_batches(data, batch_size or self.config.eval_batch_size, self.config.num_workers)


__all__ = ["FitContext"]
