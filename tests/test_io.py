"""Weights and file I/O: safetensors round trip, weights_only refusal, atomic writes."""

import os

import pytest
import torch
from torch import nn

from transferkit.errors import CheckpointError
from transferkit.io import atomic_write_text, load_state_dict, read_json, save_state_dict
from transferkit.io.files import atomic_write


def test_safetensors_round_trip_is_bit_identical(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2, dtype=torch.float64)}
    path = save_state_dict(state, tmp_path / "w.safetensors")
    loaded = load_state_dict(path)
    assert set(loaded) == set(state)
    for k in state:
        assert torch.equal(loaded[k], state[k]) and loaded[k].dtype == state[k].dtype


def test_shared_storage_is_saved(tmp_path):
    t = torch.randn(4)
    path = save_state_dict({"x": t, "y": t}, tmp_path / "w.safetensors")
    loaded = load_state_dict(path)
    assert torch.equal(loaded["x"], loaded["y"])


def test_pt_state_dict_and_nested_checkpoint(tmp_path):
    model = nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "a.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "b.pth")
    for name in ("a.pt", "b.pth"):
        loaded = load_state_dict(tmp_path / name)
        assert torch.equal(loaded["weight"], model.weight.detach())


def test_pickled_module_is_refused(tmp_path):
    torch.save(nn.Linear(3, 2), tmp_path / "model.pt")  # a whole module: pickled code
    with pytest.raises(CheckpointError, match="pickled"):
        load_state_dict(tmp_path / "model.pt")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_corrupt_and_truncated_checkpoints(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    if suffix == ".pt":
        torch.save({"w": torch.randn(100)}, good)
    else:
        save_state_dict({"w": torch.randn(100)}, good)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_state_dict(bad)


def test_missing_empty_and_unknown_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict(tmp_path / "empty.pt")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported"):
        load_state_dict(tmp_path / "w.h5")
    with pytest.raises(CheckpointError, match="folder"):
        load_state_dict(tmp_path)


def test_non_tensor_state_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a tensor"):
        save_state_dict({"w": [1, 2]}, tmp_path / "w.safetensors")


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def broken(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]  # no temporary left behind


def test_read_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
