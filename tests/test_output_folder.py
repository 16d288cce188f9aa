"""Output folders are never clobbered or mixed: run.json records what a run is; a folder holding
results needs --resume (the same run) or --overwrite (swapped in only when the new run finishes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run
from transferkit.errors import ConfigError
from transferkit.workflows.output import data_fingerprint, differences, open_output


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), for byte-identity checks."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def finetune(source, out, *extra):
    return run("finetune", "--source", source, "--data", "digits", "--shots", "3", "--epochs", "1",
               "--strategy", "linear_probe", "--out", out, "data.val_fraction=0.2", *extra)


@pytest.fixture(scope="module")
def done(tmp_path_factory, digits_source):
    """A finished finetune run folder (module-scoped: the tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("done") / "run"
    result = finetune(digits_source, out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run_copy(tmp_path, done):
    import shutil

    dest = tmp_path / "run"
    shutil.copytree(done, dest)
    return dest


def test_run_json_records_data_source_and_config(done, digits_source):
    manifest = json.loads((done / "run.json").read_text())
    assert manifest["format"] == "transferkit-run" and manifest["kind"] == "finetune"
    ident = manifest["identity"]
    assert ident["config"]["data"]["shots"] == 3 and ident["config"]["seeds"] == [0]
    assert ident["data"]["spec"] == "digits" and ident["data"]["test_size"] == 540
    assert len(ident["data"]["sha256"]) == 64
    assert ident["source"]["spec"] == str(digits_source) and len(ident["source"]["weights_sha256"]) == 64
    assert not list(done.rglob("*.tmp")) and not (done / ".staging").exists()


def test_rerun_into_a_folder_with_results_is_refused(run_copy, digits_source):
    before = snapshot(run_copy)
    assert_one_line_error(finetune(digits_source, run_copy), "already holds results", "--resume",
                          "--overwrite")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    "change, named",
    [
        (("--shots", "2"), "data.shots: 3 -> 2"),
        (("--seeds", "0,1"), "seeds: [0] -> [0, 1]"),
        (("train.lr=0.5",), "train.lr"),
        (("--strategy", "full"), "train.strategy: linear_probe -> full"),
    ],
)
def test_resume_with_other_settings_is_refused_and_lists_them(run_copy, digits_source, change, named):
    before = snapshot(run_copy)
    assert_one_line_error(finetune(digits_source, run_copy, "--resume", *change), "--resume", named)
    assert snapshot(run_copy) == before


def test_resume_with_other_data_or_source_is_refused(tmp_path, digits_source, run_copy):
    before = snapshot(run_copy)
    result = run("finetune", "--source", digits_source, "--data", "digits", "--shots", "3", "--epochs", "1",
                 "--strategy", "linear_probe", "--out", run_copy, "data.val_fraction=0.3", "--resume")
    assert_one_line_error(result, "data.val_fraction: 0.2 -> 0.3", "data.train_size")
    # the same source path, other weights: a different model behind the same name
    import shutil

    from transferkit.models import load_model, save_model

    other = tmp_path / "other-source"
    shutil.copytree(digits_source, other)
    model = load_model(other)
    model.head.bias.data += 1.0
    save_model(model, other)
    result = finetune(other, run_copy, "--resume")
    assert_one_line_error(result, "source.weights_sha256")
    assert snapshot(run_copy) == before


def test_resume_of_the_same_run_reuses_it(run_copy, digits_source):
    before = snapshot(run_copy)
    result = finetune(digits_source, run_copy, "--resume")
    assert result.exit_code == 0, result.output
    after = snapshot(run_copy)
    assert after["model/model.safetensors"] == before["model/model.safetensors"]

    def scores(raw: bytes) -> list:  # the runs' results, without their timings
        return [(r["name"], r["seed"], r["accuracy"], r["macro_f1"], r["history"][-1]["train_loss"])
                for r in json.loads(raw)["runs"]]

    assert scores(after["metrics.json"]) == scores(before["metrics.json"])  # nothing retrained


def test_overwrite_replaces_only_when_the_new_run_finished(run_copy, digits_source):
    before = snapshot(run_copy)
    # a new run that fails in training (the loss overflows) leaves the old results byte-identical
    failed = finetune(digits_source, run_copy, "--overwrite", "--strategy", "full", "train.lr=1e30")
    assert_one_line_error(failed, "epoch 1")
    assert {k: v for k, v in snapshot(run_copy).items() if not k.startswith(".staging")} == before
    # a typo in the data name fails before anything is written: no staging folder either
    assert_one_line_error(
        run("finetune", "--source", digits_source, "--data", "digitz", "--out", run_copy, "--overwrite"),
        "digitz",
    )
    assert {k: v for k, v in snapshot(run_copy).items() if not k.startswith(".staging")} == before
    # a finished replacement swaps in: new settings recorded, the staging folder gone
    ok = finetune(digits_source, run_copy, "--overwrite", "--shots", "2")
    assert ok.exit_code == 0, ok.output
    assert not (run_copy / ".staging").exists()
    manifest = json.loads((run_copy / "run.json").read_text())
    assert manifest["identity"]["config"]["data"]["shots"] == 2
    runs = json.loads((run_copy / "metrics.json").read_text())["runs"]
    assert {r["train_examples"] for r in runs} == {20}


def test_out_that_is_a_file_or_unwritable(tmp_path, digits_source):
    f = tmp_path / "file"
    f.write_text("keep me")
    assert_one_line_error(finetune(digits_source, f), "is a file")
    assert f.read_text() == "keep me"
    assert_one_line_error(finetune(digits_source, tmp_path / ("x" * 300)), "cannot write")
    assert_one_line_error(finetune(digits_source, tmp_path / "a", "--resume", "--overwrite"), "contradict")


def test_differences_leave_out_how_to_run():
    old = {"config": {"out": "a", "resume": False, "train": {"progress": False, "lr": 0.1}}}
    new = {"config": {"out": "b", "resume": True, "train": {"progress": True, "lr": 0.2}}}
    assert differences(old, new) == ["train.lr: 0.1 -> 0.2"]


def test_a_run_recorded_before_the_data_file_options_still_resumes():
    """Runs recorded before text_column / label_column / ordered existed read with their defaults."""
    old = {"config": {"data": {"dataset": "x.csv"}, "train": {"lr": 0.1}}}
    new = {"config": {"data": {"dataset": "x.csv", "text_column": "text", "label_column": "label",
                               "ordered": False}, "train": {"lr": 0.1}}}
    assert differences(old, new) == []
    changed = {"config": {"data": {**new["config"]["data"], "ordered": True}, "train": {"lr": 0.1}}}
    assert differences(old, changed) == ["data.ordered: (absent) -> true"]
    assert differences(new, changed) == ["data.ordered: false -> true"]
    # adapt's domains gained unlabeled / unlabeled_size (null unless given)
    old_adapt = {"config": {"source_data": {"dataset": "a.csv"}, "target_data": {"dataset": "b.csv"}}}
    new_adapt = {"config": {d: {"dataset": f, "unlabeled": None, "unlabeled_size": None, "ordered": False}
                            for d, f in (("source_data", "a.csv"), ("target_data", "b.csv"))}}
    assert differences(old_adapt, new_adapt) == []
    new_adapt["config"]["target_data"]["unlabeled"] = "pool.txt"
    assert differences(old_adapt, new_adapt) == ["target_data.unlabeled: (absent) -> pool.txt"]


def test_open_output_on_an_empty_folder_and_leftovers(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / ".staging").mkdir()  # an interrupted replacement, nothing else
    folder = open_output(tmp_path / "o", {"a": 1})
    assert folder.work == tmp_path / "o" and not (tmp_path / "o" / ".staging").exists()
    assert json.loads((tmp_path / "o" / "run.json").read_text())["identity"] == {"a": 1}
    np.testing.assert_equal(sorted(p.name for p in (tmp_path / "o").iterdir()), ["run.json"])


def test_a_workflow_launched_as_one_of_several_processes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    pattern = r"the finetune workflow runs in one process.*one of 2 .*Trainer.fit under torchrun"
    with pytest.raises(ConfigError, match=pattern):
        open_output(tmp_path / "o", {"config": {}}, kind="finetune")
    assert not (tmp_path / "o").exists()


def test_an_unlabelled_pool_is_fingerprinted_by_its_contents():
    """A pool is one dataset without splits: its size and inputs are hashed, so a resume with another
    pool (another file at the same path) is refused."""
    import torch

    from transferkit.data import TensorDataset, TextDataset

    a = data_fingerprint(TextDataset(["one", "two"], torch.zeros(2)), "pool.txt")
    b = data_fingerprint(TextDataset(["one", "three"], torch.zeros(2)), "pool.txt")
    assert a["size"] == 2 and a["sha256"] != b["sha256"]
    images = [data_fingerprint(TensorDataset(torch.full((3, 1, 2, 2), v), torch.zeros(3)))
              for v in (0.0, 1.0)]
    assert images[0]["size"] == 3 and images[0]["sha256"] != images[1]["sha256"]
