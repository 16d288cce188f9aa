"""Data-parallel training across processes, on ``torch.distributed``.

Launch a script that calls :meth:`Trainer.fit <transferkit.engine.Trainer.fit>` once per process
with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``)::

    torchrun --nproc_per_node 2 train.py

(The workflows -- ``finetune``, ``distill``, ``adapt`` -- run in one process and refuse to start as one
of several.)

Every rank builds the same model from the same seed, walks the same epoch order and trains on its
share of each global batch (``TrainConfig.batch_size`` is the global batch). After each backward
pass the gradients of every trainable parameter -- the model's and the objectives' own (adapters,
discriminators) -- are averaged across ranks, weighted by each rank's example count, so every rank
takes the same optimiser step. This is what ``DistributedDataParallel`` does, done explicitly:
objectives call the model's parts (``forward_features``, ``head``, hooked layers) separately, which
DDP's wrapper does not follow. Frozen teachers and source models are never synchronised (they have
no gradients). Only rank 0 writes checkpoints and metrics; every rank reads the checkpoint on resume.
BatchNorm statistics stay per rank (as with DDP without SyncBatchNorm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from transferkit.errors import ConfigError


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes.

    Attributes:
        rank: 0-based rank; rank 0 writes. ``world_size``: number of processes (1 alone).
        local_rank: Rank on this machine (picks the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


def processes(device_type: str = "cpu") -> Processes:
    """The process group this run belongs to: set up from ``torchrun``'s environment variables
    (gloo on CPU, NCCL on CUDA) on the first call, or a single process when they are absent."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Processes()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise ConfigError(
                f"WORLD_SIZE={world} but MASTER_ADDR / MASTER_PORT are not set; launch with "
                "torchrun --nproc_per_node N ..."
            )
        backend = "nccl" if device_type == "cuda" and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return Processes(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


@torch.no_grad()
def average_gradients(grads: list[torch.Tensor], count: int) -> None:
    """Replace every gradient with the example-weighted mean over the ranks: each rank's gradient
    of its own mean loss over its ``count`` examples, weighted by ``count``, so shares of unequal
    size still give the gradient of the global batch's mean loss."""
    total = torch.tensor([float(count)], dtype=torch.float64)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for g in grads:
        buckets.setdefault((g.dtype, g.device), []).append(g)
    for group in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in group]) * (count / float(total))
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in group:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def mean_across(values: torch.Tensor) -> torch.Tensor:
    """``values`` (a float tensor) averaged over the ranks."""
    out = values.detach().clone().float()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


__all__ = ["Processes", "average_gradients", "barrier", "mean_across", "processes"]
