"""The files of a training run folder, all written atomically.

Layout of ``run_dir``::

    metrics.jsonl                  one JSON object per finished epoch
    checkpoints/last.safetensors   model weights after the last finished epoch
    checkpoints/last_state.pt      optimiser/scheduler/scaler state, epoch, RNG, history, best weights
    checkpoints/best.safetensors   model weights of the best validation epoch

``last_state.pt`` holds only tensors and plain containers, written with ``torch.save`` to a
temporary file then renamed, and read with ``torch.load(weights_only=True)``. The weights file records
its epoch in its metadata, so a run killed between the two writes is detected instead of silently
resuming from mismatched files.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from transferkit.errors import CheckpointError
from transferkit.io import atomic_write_text, load_state_dict, save_state_dict
from transferkit.io.files import atomic_write

CHECKPOINT_DIR = "checkpoints"
LAST_WEIGHTS = "last.safetensors"
LAST_STATE = "last_state.pt"
BEST_WEIGHTS = "best.safetensors"
METRICS = "metrics.jsonl"


class RunDir:
    """Paths of one run folder (nothing is created until something is written).

    Args:
        root: The run folder.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def last_weights(self) -> Path:
        return self.root / CHECKPOINT_DIR / LAST_WEIGHTS

    @property
    def last_state(self) -> Path:
        return self.root / CHECKPOINT_DIR / LAST_STATE

    @property
    def best_weights(self) -> Path:
        return self.root / CHECKPOINT_DIR / BEST_WEIGHTS

    def has_checkpoint(self) -> bool:
        """Whether a last checkpoint (either of its two files) exists."""
        return self.last_weights.exists() or self.last_state.exists()

    def save_checkpoint(
        self, model_state: Mapping[str, torch.Tensor], state: dict[str, Any]
    ) -> None:
        """Write the model weights, then the training state (``state["epoch"]``: epochs done)."""
        epoch = int(state["epoch"])
        save_state_dict(model_state, self.last_weights, metadata={"epoch": str(epoch)})
        atomic_write(self.last_state, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The last checkpoint's ``(model_state, state)``, or ``None`` when there is none.

        Raises:
            CheckpointError: one of the two files is missing, corrupt, or from another epoch.
        """
        if not self.has_checkpoint():
            return None
        for path in (self.last_weights, self.last_state):
            if not path.exists():
                raise CheckpointError(
                    f"checkpoint file {str(path)!r} is missing while its partner exists; the run "
                    "was interrupted while saving: delete the checkpoints folder to start over"
                )
        try:
            state = torch.load(str(self.last_state), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
            raise CheckpointError(
                f"training state {str(self.last_state)!r} could not be read "
                f"({type(exc).__name__}: {exc}); delete the checkpoints folder to start over"
            ) from exc
        if not isinstance(state, dict) or "epoch" not in state:
            raise CheckpointError(
                f"{str(self.last_state)!r} is not a transferkit training state (no 'epoch'); "
                "delete the checkpoints folder to start over"
            )
        weights = load_state_dict(self.last_weights)
        weights_epoch = _metadata_epoch(self.last_weights)
        if weights_epoch is not None and weights_epoch != int(state["epoch"]):
            raise CheckpointError(
                f"{str(self.last_weights)!r} is from epoch {weights_epoch} but "
                f"{str(self.last_state)!r} from epoch {state['epoch']}; the run was interrupted "
                "while saving: delete the checkpoints folder to start over"
            )
        return weights, state

    def save_best(self, model_state: Mapping[str, torch.Tensor], epoch: int) -> None:
        """Write the best validation epoch's weights."""
        save_state_dict(model_state, self.best_weights, metadata={"epoch": str(int(epoch))})

    def write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` with one line per row (the whole history, atomically)."""
        atomic_write_text(self.metrics, "".join(json.dumps(dict(r)) + "\n" for r in rows))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` (empty when it does not exist)."""
        if not self.metrics.exists():
            return []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def load_training_state(
    state: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    objectives: Sequence[torch.nn.Module],
    where: str,
) -> None:
    """Load a checkpoint's model weights and optimiser/scheduler/scaler/objective states in place.

    Raises:
        CheckpointError: the checkpoint does not fit this model, optimiser or objectives.
    """
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        saved = state.get("objectives", [])
        if len(saved) != len(objectives):
            raise ValueError(f"it holds {len(saved)} objectives, this trainer has {len(objectives)}")
        for obj, sd in zip(objectives, saved, strict=True):
            obj.load_state_dict(sd)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint in {where!r} does not fit this model/optimizer/objectives ({exc}); "
            "resume with the same setup, or start fresh with resume=False"
        ) from exc


def _metadata_epoch(path: Path) -> int | None:
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return int(meta["epoch"]) if "epoch" in meta else None


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()`` (safe to keep while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


__all__ = ["RunDir", "cpu_state_dict", "load_training_state"]
