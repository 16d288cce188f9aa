"""Shared fixtures: small real data (scikit-learn digits) and tiny trained models."""

from __future__ import annotations

import pytest
import torch

from transferkit.data import load_dataset


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests use tiny tensors: one torch thread is as fast and avoids contention on 2 cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory):
    """Values transferkit keeps across runs (token ids) go to a folder of this test session."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRANSFERKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _checkpoint_every_epoch():
    """The kill-and-resume tests need a checkpoint after every epoch of their tiny models. Those writes take
    milliseconds, but on a loaded machine one can pass the trainer's 0.25 s "cheap write" bound and space
    the next writes out (measured: a LoRA kill test failed once that way beside a benchmark); 1 s keeps the
    tests independent of load, and the spacing test (a 2 s write) still sees spacing."""
    from transferkit.engine import trainer

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "CHEAP_CHECKPOINT_S", 1.0)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's real 8x8 digits, split train/val/test (test fixed)."""
    return load_dataset("digits", val_fraction=0.2, seed=0)


@pytest.fixture(scope="session")
def digits_source(tmp_path_factory, digits):
    """A small MLP trained for a few epochs on digits, saved as a model folder."""
    from transferkit.engine import TrainConfig, Trainer
    from transferkit.models import create_model, save_model

    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_features=64, hidden=(32, 32))
    Trainer(model, TrainConfig(epochs=5, lr=1e-2, backbone_lr_scale=1.0, seed=0)).fit(
        digits.train, digits.val
    )
    folder = tmp_path_factory.mktemp("source") / "digits-mlp"
    save_model(model, folder)
    return folder
