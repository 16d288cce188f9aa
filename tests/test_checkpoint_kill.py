"""Kill tests: a training process SIGKILLed inside a checkpoint write resumes to the same weights.

Each case forks a child process (cheaper than a fresh interpreter: torch is already imported) that
trains a small MLP on real digits with a run folder and kills itself with SIGKILL at a chosen
instant of the n-th write of one of the run's files. The parent then resumes the run from what the
kill left on disk and compares every tensor with an uninterrupted run.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
import torch

from transferkit.engine import TrainConfig, Trainer
from transferkit.engine.checkpoint import RunDir
from transferkit.io import load_state_dict
from transferkit.models import create_model

EPOCHS = 4
CFG = TrainConfig(epochs=EPOCHS, batch_size=64, lr=1e-2, backbone_lr_scale=1.0, seed=0,
                  device="cpu", amp=False)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=10, in_features=64, hidden=(32,))


def _train(digits, run_dir: Path, resume: bool, seed: int = 0) -> tuple[torch.nn.Module, list[dict]]:
    model = _model(seed)
    history = Trainer(model, CFG, run_dir=run_dir).fit(digits.train, digits.val, resume=resume)
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in history.epochs]
    return model, rows


def _install_kill(name: str, when: str, nth: int) -> None:
    """In the child: SIGKILL this process at ``when`` of the ``nth`` write of file ``name``."""
    calls = {"n": 0}
    real_save, real_replace = torch.save, os.replace

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def save(obj, f, *args, **kwargs):  # the checkpoint's bytes go through torch.save
        target = isinstance(f, str) and (Path(f).name == name or Path(f).name.startswith(f".{name}."))
        if when == "half" and target:
            calls["n"] += 1
            if calls["n"] == nth:
                buf = io.BytesIO()
                real_save(obj, buf)
                data = buf.getvalue()
                with open(f, "wb") as fh:  # the file being written (a temporary), half written
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                die()
        return real_save(obj, f, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        hit = when != "half" and Path(dst).name == name
        if hit:
            calls["n"] += 1
            if calls["n"] == nth and when == "before_rename":  # temporary complete and fsynced
                die()
        real_replace(src, dst, *args, **kwargs)
        if hit and calls["n"] == nth and when == "after_rename":
            die()

    torch.save, os.replace = save, replace


def _killed_child(digits, run_dir: Path, name: str, when: str, nth: int) -> None:
    """Train in a forked child that kills itself; assert it died of SIGKILL."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            torch.set_num_threads(1)
            _install_kill(name, when, nth)
            _train(digits, run_dir, resume=False)
        finally:
            os._exit(3)  # reached only when the kill did not happen
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


@pytest.fixture(scope="module")
def straight(digits, tmp_path_factory):
    """An uninterrupted run: final model, last checkpoint weights, per-epoch rows."""
    run_dir = tmp_path_factory.mktemp("straight")
    model, rows = _train(digits, run_dir, resume=False)
    weights, state = RunDir(run_dir).load_checkpoint()
    assert state["epoch"] == EPOCHS and len(rows) == EPOCHS
    return model.state_dict(), weights, rows


def _temporaries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("name", "when", "nth", "epoch_on_disk"),
    [
        ("last.ckpt", "half", 1, None),  # first epoch: no checkpoint yet, starts over
        ("last.ckpt", "half", 2, 1),
        ("last.ckpt", "before_rename", 2, 1),
        ("last.ckpt", "after_rename", 2, 2),  # metrics.jsonl and best.safetensors lag behind
        ("last.ckpt", "after_rename", 3, 3),  # epoch 3 is the best one and no later epoch beats it
        ("last.ckpt", "after_rename", EPOCHS, EPOCHS),
        ("best.safetensors", "before_rename", 2, 2),
        ("metrics.jsonl", "before_rename", 3, 2),  # 1st write: the empty file at the start
    ],
)
def test_kill_inside_a_write_resumes_to_identical_weights(
    digits, straight, tmp_path, name, when, nth, epoch_on_disk
):
    final_ref, last_ref, rows_ref = straight
    _killed_child(digits, tmp_path, name, when, nth)

    loaded = RunDir(tmp_path).load_checkpoint()  # readable whatever the instant of the kill
    assert (loaded[1]["epoch"] if loaded else None) == epoch_on_disk
    if when != "after_rename":
        assert _temporaries(tmp_path), "the kill should have left a temporary behind"

    # with a checkpoint, another init shows the weights come from disk; without, the run starts over
    model, rows = _train(digits, tmp_path, resume=True, seed=0 if loaded is None else 123)
    assert rows == rows_ref
    for k, v in final_ref.items():
        assert torch.equal(model.state_dict()[k], v), k
    weights, state = RunDir(tmp_path).load_checkpoint()
    assert state["epoch"] == EPOCHS
    for k, v in last_ref.items():
        assert torch.equal(weights[k], v), k
    assert [r["epoch"] for r in RunDir(tmp_path).read_metrics()] == list(range(1, EPOCHS + 1))
    best = load_state_dict(tmp_path / "checkpoints" / "best.safetensors")
    for k, v in final_ref.items():  # the model ends with the best epoch's weights
        assert torch.equal(best[k], v), k
    assert _temporaries(tmp_path) == []


def test_remove_stale_temporaries_removes_only_what_a_killed_atomic_write_left(tmp_path):
    from transferkit.io.files import atomic_write, remove_stale_temporaries

    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")
    pid = os.fork()
    if pid == 0:
        try:
            def writer(tmp: str) -> None:
                Path(tmp).write_text("half")
                os.kill(os.getpid(), signal.SIGKILL)

            atomic_write(target, writer)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    (left,) = [p for p in tmp_path.iterdir() if p.name != "metrics.jsonl"]
    assert left.name.startswith(".metrics.jsonl.") and target.read_text() == "old\n"
    look_alike_dir = tmp_path / ".data.abcdefgh.tmp"
    look_alike_dir.mkdir()
    others = [tmp_path / n for n in ("metrics.jsonl.tmp", ".metrics.jsonl.tmp", "a.abcdefgh.tmp")]
    for p in others:
        p.write_text("keep")
    assert remove_stale_temporaries(tmp_path) == [left]
    assert not left.exists() and look_alike_dir.is_dir() and all(p.exists() for p in others)
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_run_extended_on_resume_follows_the_new_schedule(tmp_path, digits):
    """Training 1 epoch, then resuming with epochs=2, uses the 2-epoch cosine schedule's rates
    (the restored optimiser held the 1-epoch schedule's last rate, 0)."""
    cfg = TrainConfig(epochs=2, batch_size=64, device="cpu", amp=False, scheduler="cosine")
    whole = Trainer(_model(), cfg).fit(digits.train)
    Trainer(_model(), cfg.model_copy(update={"epochs": 1}), run_dir=tmp_path).fit(digits.train)
    extended = Trainer(_model(), cfg, run_dir=tmp_path).fit(digits.train, resume=True)
    assert [r["lr"] for r in extended.epochs] == [r["lr"] for r in whole.epochs] == [cfg.lr, cfg.lr / 2]
