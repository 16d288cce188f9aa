"""The files of a training run folder, all written atomically.

Layout of ``run_dir``::

    metrics.jsonl                  one JSON object per finished epoch
    checkpoints/last.ckpt          everything to resume after the last finished epoch
    checkpoints/best.safetensors   model weights of the best validation epoch (for people; resume
                                   reads the best weights from last.ckpt)

``last.ckpt`` is one file, so one epoch's checkpoint is one atomic unit: it is written with
``torch.save`` to a temporary sibling, fsynced and renamed over the old one, so a run killed at any
instant resumes from the previous epoch or from the new one. It holds only tensors and plain
containers (model weights, optimiser/scheduler/scaler state, RNG, history, best weights, the
objectives' state, the config) and is read with ``torch.load(weights_only=True)``, so it cannot run
code; a best weight equal to the current one (a frozen layer, or all of them when the last epoch is
the best) is stored once. ``metrics.jsonl`` and ``best.safetensors`` are rewritten from it on resume.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transferkit.errors import CheckpointError
from transferkit.io import atomic_write_text, save_state_dict
from transferkit.io.files import atomic_write, remove_stale_temporaries

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
BEST_WEIGHTS = "best.safetensors"
METRICS = "metrics.jsonl"
FORMAT = "transferkit-checkpoint"
VERSION = 1
# The two files of the checkpoints written before last.ckpt (never read, only recognised).
OLD_FILES = ("last.safetensors", "last_state.pt")

logger = logging.getLogger(__name__)


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
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def best_weights(self) -> Path:
        return self.checkpoints / BEST_WEIGHTS

    def has_checkpoint(self) -> bool:
        """Whether a resumable checkpoint (``last.ckpt``) exists."""
        return self.last.is_file()

    def old_checkpoint_files(self) -> list[Path]:
        """The files of a checkpoint in the old two-file format that are present."""
        return [self.checkpoints / name for name in OLD_FILES if (self.checkpoints / name).exists()]

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporaries left by a write that was killed, in the run and checkpoint folders."""
        return remove_stale_temporaries(self.root) + remove_stale_temporaries(self.checkpoints)

    def clear(self) -> None:
        """Delete the checkpoints of an earlier run (before a fresh run starts in this folder),
        so an interrupted fresh run never resumes the old one."""
        for path in (self.last, self.best_weights, *self.old_checkpoint_files()):
            path.unlink(missing_ok=True)

    def save_checkpoint(self, model_state: Mapping[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Atomically replace ``last.ckpt`` with the model weights and training state
        (``state["epoch"]``: epochs done)."""
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "model": dict(model_state),
            "state": state,
        }
        atomic_write(self.last, lambda tmp: torch.save(payload, tmp))

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The last checkpoint's ``(model_state, state)``, or ``None`` when there is none.

        Raises:
            CheckpointError: ``last.ckpt`` is corrupt or not a transferkit checkpoint, or only a
                checkpoint of the old two-file format is present (it cannot be resumed).
        """
        if not self.has_checkpoint():
            old = self.old_checkpoint_files()
            if old:
                raise CheckpointError(
                    f"{str(old[0])!r} is a checkpoint of an older transferkit (two files) that "
                    "cannot be resumed; start over without resume (or delete "
                    f"{str(self.checkpoints)!r})"
                )
            return None
        where = str(self.last)
        try:
            payload = torch.load(where, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"checkpoint {where!r} holds objects other than tensors and plain containers and "
                "is refused (loading it could run code); delete "
                f"{str(self.checkpoints)!r} to start over"
            ) from exc
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {where!r} could not be read ({type(exc).__name__}: "
                f"{_one_line(exc)}); delete {str(self.checkpoints)!r} to start over"
            ) from exc
        ok = (
            isinstance(payload, dict) and payload.get("format") == FORMAT
            and isinstance(payload.get("model"), dict) and isinstance(payload.get("state"), dict)
            and "epoch" in payload["state"]
        )
        if not ok:
            raise CheckpointError(
                f"{where!r} is not a transferkit training checkpoint (no format/model/state); "
                f"delete {str(self.checkpoints)!r} to start over"
            )
        if payload.get("version") != VERSION:
            raise CheckpointError(
                f"checkpoint {where!r} has format version {payload.get('version')!r}, this "
                f"transferkit reads version {VERSION}; resume with the version that wrote it or "
                "start over without resume"
            )
        bad = sorted(k for k, v in payload["model"].items() if not isinstance(v, torch.Tensor))
        if bad:
            raise CheckpointError(
                f"checkpoint {where!r} holds non-tensor model entries ({', '.join(map(repr, bad))}); "
                f"delete {str(self.checkpoints)!r} to start over"
            )
        return payload["model"], payload["state"]

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


@dataclass
class TrainingState:
    """The parts of a fit a checkpoint holds (besides its history and best weights): what
    :meth:`save` writes after every epoch and :meth:`restore` puts back on resume."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    objectives: Sequence[torch.nn.Module]
    config: Any
    guard: Any
    device: torch.device

    def save(self, run_dir: RunDir, epoch: int, history: Any, best_state: dict | None,
             fixed: frozenset[str] = frozenset()) -> None:
        """Write ``last.ckpt`` after 1-based ``epoch`` (atomically, one file).

        The best weights are stored once where they equal the current ones (frozen parameters, or
        every tensor when this epoch is the best): the file holds the model once, not twice.

        Args:
            fixed: Keys whose tensors can't change in this fit (see :func:`cpu_state_dict`).
        """
        model_state = cpu_state_dict(self.model, fixed)
        state = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "history": history.to_dict(),
            "best_model": share_equal(best_state, model_state),
            "objectives": [o.state_dict() for o in self.objectives],
            "config": self.config.model_dump(),
            "guard": self.guard.state_dict(),
        }
        run_dir.save_checkpoint(model_state, state)

    def restore(self, run_dir: RunDir) -> tuple[Any, dict[str, torch.Tensor] | None] | None:
        """Load ``last.ckpt`` into the parts; returns ``(history, best weights)``, or ``None``
        (logged) when the folder has no checkpoint.

        Raises:
            CheckpointError: the checkpoint is unreadable, of the old format, or does not fit.
        """
        from transferkit.engine.history import History
        from transferkit.engine.strategies import lr_factor

        loaded = run_dir.load_checkpoint()
        if loaded is None:
            logger.info("resume=True but %s has no checkpoint; starting fresh", run_dir.root)
            return None
        weights, state = loaded
        load_training_state(state, weights, self.model, self.optimizer, self.scheduler, self.scaler,
                            self.objectives, where=str(run_dir.last))
        # the learning rate follows this run's schedule: a run extended to more epochs would
        # otherwise keep the old schedule's last rate (0 after a cosine schedule)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * lr_factor(self.config, self.scheduler.last_epoch)
        self.guard.load_state_dict(state.get("guard", {}))
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        old = state.get("config", {})
        changed = sorted(k for k, v in self.config.model_dump().items()
                         if k in old and old[k] != v and k not in ("epochs", "progress"))
        if changed:
            logger.warning("resuming with changed config values: %s", ", ".join(changed))
        history = History(**state["history"])
        if history.best_value is None and self.config.select_metric == "val_accuracy":
            history.best_value = history.best_val_accuracy  # checkpoints written before best_value
        logger.info("resuming from %s after epoch %d", run_dir.last, int(state["epoch"]))
        return history, state.get("best_model")


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
            f"checkpoint in {where!r} does not fit this model/optimizer/objectives "
            f"({_one_line(exc)}); resume with the same setup, or start fresh with resume=False"
        ) from exc


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (errors are one line), shortened to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cpu_state_dict(module: torch.nn.Module, fixed: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()`` (safe to keep while training goes on).

    Args:
        fixed: Keys whose tensors can't change during this fit (a frozen backbone under a cached
            linear probe): already on the CPU they are referenced, not copied.
    """
    return {k: v.detach() if k in fixed and v.device.type == "cpu" else v.detach().to("cpu", copy=True)
            for k, v in module.state_dict().items()}


def share_equal(best: Mapping[str, torch.Tensor] | None,
                current: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """``best`` with every tensor that equals ``current``'s under the same key replaced by that
    tensor, so that ``torch.save`` writes the storage once (it stores a shared storage once and
    loads it shared: frozen weights, or all weights when the last epoch is the best, cost nothing
    twice)."""
    if best is None:
        return None
    shared = {}
    for key, tensor in best.items():
        other = current.get(key)
        same = other is not None and other.dtype == tensor.dtype and other.shape == tensor.shape and (
            (other.data_ptr() == tensor.data_ptr() and other.stride() == tensor.stride())
            or torch.equal(other, tensor))
        shared[key] = other if same else tensor
    return shared


__all__ = ["RunDir", "TrainingState", "cpu_state_dict", "load_training_state", "share_equal"]
