"""Data-parallel training: 2 CPU processes (gloo) reach the weights of 1 process with the same
global batch; only rank 0 writes; a killed 2-process run resumes to the same weights."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from transferkit.data import load_dataset
from transferkit.engine import CrossEntropy, Objective, RunDir, TrainConfig, Trainer
from transferkit.engine.objectives import build_objectives
from transferkit.models import create_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup():
    torch.set_num_threads(1)
    split = load_dataset("digits")
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_features=64, hidden=(32,))
    return split.train.subset(range(256)), split.val.subset(range(64)), split.test.subset(range(96)), model


def _cfg(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, lr=5e-3, device="cpu", amp=False, seed=3,
                       scheduler="cosine", backbone_lr_scale=1.0)


class Killed(Exception):
    pass


class KillAt(Objective):
    """A zero loss whose epoch hook stops the run at the start of 0-based epoch ``at`` (after the
    previous epoch's checkpoint), as a kill would."""

    def __init__(self, at: int | None) -> None:
        super().__init__(0.0)
        self.at = at

    def on_epoch_start(self, ctx, epoch: int) -> None:
        if epoch == self.at:
            raise Killed

    def forward(self, batch) -> torch.Tensor:
        return batch.logits.sum() * 0.0


def _objectives(method: str | None, kill_at: int | None):
    return [CrossEntropy(), KillAt(kill_at)] + (build_objectives([{"name": method}]) if method else [])


def _train(epochs: int, run_dir, resume: bool, method: str | None, kill_at: int | None = None):
    train, val, target, model = _setup()
    trainer = Trainer(model, _cfg(epochs), _objectives(method, kill_at), run_dir=run_dir)
    try:
        history = trainer.fit(train, val, target=target if method else None, resume=resume)
    except Killed:
        return None, None
    state = {k: v.clone() for k, v in model.state_dict().items()}
    extra = {f"objective{i}.{k}": v.clone() for i, o in enumerate(trainer.objectives)
             for k, v in o.state_dict().items()}
    return {**state, **extra}, history


def _refuse_writes() -> None:
    """Make every write of a run folder fail loudly (on ranks that must not write)."""
    def wrote(*args, **kwargs):
        raise AssertionError("a rank other than 0 wrote into the run folder")

    for name in ("save_checkpoint", "save_best", "write_metrics", "clear", "remove_stale_temporaries"):
        setattr(RunDir, name, wrote)


def _worker(rank: int, world: int, port: int, out: str, jobs: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    if rank > 0:
        _refuse_writes()
    try:
        for i, (run_dir, resume, method, kill_at) in enumerate(jobs):
            state, history = _train(2, run_dir, resume, method, kill_at)
            if state is not None:
                torch.save({"state": state, "rows": history.epochs}, f"{out}-{i}-rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _two_processes(tmp_path, jobs):
    out = str(tmp_path / "result")
    mp.start_processes(_worker, args=(2, _free_port(), out, jobs), nprocs=2, join=True,
                       start_method="spawn")
    return [[torch.load(f"{out}-{i}-rank{r}.pt", weights_only=True) for r in range(2)]
            if os.path.exists(f"{out}-{i}-rank0.pt") else None for i in range(len(jobs))]


def _close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("method", [None, "mcd"])  # MCD: its own step, a trainable second head
def test_two_processes_reach_the_weights_of_one_and_only_rank_0_writes(tmp_path, method):
    single, single_history = _train(2, None, False, method)
    run = str(tmp_path / "run")
    jobs = [(run, False, method, None),      # uninterrupted
            (run + "-b", False, method, 1),  # killed after epoch 1 ...
            (run + "-b", True, method, None)]  # ... and resumed
    (whole, killed, resumed) = _two_processes(tmp_path, jobs)
    assert killed is None
    for rank in range(2):
        _close(whole[rank]["state"], single)
        _close(resumed[rank]["state"], whole[0]["state"], atol=1e-6)
    # the epoch rows are global means over both processes
    for got, want in zip(whole[0]["rows"], single_history.epochs, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-5)
        assert got["train_accuracy"] == pytest.approx(want["train_accuracy"], abs=1e-9)
        assert got["val_accuracy"] == want["val_accuracy"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
