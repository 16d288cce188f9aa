"""The merge workflow and CLI (`transferkit merge`, `transferkit compare`) on real digits models."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from cli_helpers import assert_one_line_error, run
from transferkit.data import load_dataset
from transferkit.engine import TrainConfig, Trainer
from transferkit.models import create_model, replace_head, save_model
from transferkit.workflows.merge import MERGED, UNALIGNED, merge_workflow


def _fit(model, data, epochs, seed):
    Trainer(model, TrainConfig(epochs=epochs, lr=1e-2, backbone_lr_scale=1.0, seed=seed)).fit(data)
    return model


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A base MLP trained on digits, fine-tuned on two tasks (digits; parity of the digit, an npz file),
    and two MLPs trained on digits from different initialisations."""
    root = tmp_path_factory.mktemp("merge")
    digits = load_dataset("digits", val_fraction=0.0)
    parity = root / "parity.npz"
    np.savez(parity, x_train=digits.train.x.numpy(), y_train=digits.train.y.numpy() % 2,
             x_test=digits.test.x.numpy(), y_test=digits.test.y.numpy() % 2)
    splits = load_dataset("digits", val_fraction=0.1, seed=0)
    torch.manual_seed(0)
    base = _fit(create_model("mlp", num_classes=10, in_features=64, hidden=(64,)), splits.train, 2, 0)
    save_model(base, root / "base")
    tuned = _fit(copy.deepcopy(base), splits.train, 3, 1)
    save_model(tuned, root / "digits")
    par = replace_head(copy.deepcopy(base), 2)
    _fit(par, load_dataset(str(parity), val_fraction=0.1, seed=0).train, 3, 2)
    save_model(par, root / "parity")
    for seed in (1, 2):
        torch.manual_seed(seed)
        own = create_model("mlp", num_classes=10, in_features=64, hidden=(64, 64))
        own = _fit(own, splits.train, 6, seed)
        save_model(own, root / f"indep{seed}")
    return root


def test_task_arithmetic_keeps_both_tasks(zoo, tmp_path):
    out = tmp_path / "ta"
    result = run("merge", f"digits={zoo / 'digits'}", f"parity={zoo / 'parity'}", "--method",
                 "task_arithmetic:scale=1", "--base", zoo / "base", "--data", "digits=digits", "--data",
                 f"parity={zoo / 'parity.npz'}", "--out", out)
    assert result.exit_code == 0, result.output
    assert "task_arithmetic (kept heads)" in result.output
    record = json.loads((out / "merge.json").read_text())
    acc = record["accuracy"]
    assert acc["digits"]["parity"] is None and acc["parity"]["digits"] is None
    assert acc["parity"]["parity"] > 0.8 and acc["digits"]["digits"] > 0.8
    # the merged model answers both tasks: within 10 pp of each task's own model
    assert acc[MERGED]["digits"] > acc["digits"]["digits"] - 0.10
    assert acc[MERGED]["parity"] > acc["parity"]["parity"] - 0.10
    assert record["heads"] == "kept" and record["options"] == {"scale": 1}
    # a task's data as a csv whose label column is named otherwise (the built-in digits takes no option)
    parity = load_dataset(str(zoo / "parity.npz"), val_fraction=0.0)
    rows = [",".join(f"{v:g}" for v in x.flatten().tolist()) + f",{y}"
            for x, y in zip(parity.test.x, parity.test.y.tolist(), strict=True)]
    header = ",".join(f"p{i}" for i in range(64)) + ",odd"
    (tmp_path / "parity.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    csv_run = run("merge", f"digits={zoo / 'digits'}", f"parity={zoo / 'parity'}", "--method",
                  "task_arithmetic:scale=1", "--base", zoo / "base", "--data", "digits=digits", "--data",
                  f"parity={tmp_path / 'parity.csv'}", "--label-column", "odd", "--out", tmp_path / "csv")
    assert csv_run.exit_code == 0, csv_run.output
    acc_csv = json.loads((tmp_path / "csv" / "merge.json").read_text())["accuracy"]
    assert acc_csv["parity"]["parity"] > 0.8 and acc_csv["digits"]["digits"] == acc["digits"]["digits"]
    page = (out / "report.html").read_text()
    assert "parity" in page and "linear CKA to the merged model" in record["similarity"]
    assert (out / "similarity.png").stat().st_size > 1000
    from transferkit.models import load_model, select_task

    merged = select_task(load_model(out / "model"), "parity")
    assert merged.info.tasks == {"digits": 10, "parity": 2}


def test_alignment_rescues_the_average_of_independent_models(zoo):
    run_ = merge_workflow({"a": str(zoo / "indep1"), "b": str(zoo / "indep2")}, "average", data="digits",
                          align="weight")
    acc = run_.accuracy
    assert acc[MERGED]["digits"] > acc[UNALIGNED]["digits"] + 0.05
    assert run_.result.alignment[0]["similarity_after"] > run_.result.alignment[0]["similarity_before"]
    # weight change is measured against the permuted input (the one that was merged)
    assert max(run_.similarity["relative weight change to the merged model"]["b"].values()) < 1.0


def test_models_in_run_folders_are_named_after_their_runs(zoo, tmp_path):
    import shutil

    for run_name in ("first", "second"):
        shutil.copytree(zoo / "indep1", tmp_path / run_name / "model")
    result = run("merge", tmp_path / "first" / "model", tmp_path / "second" / "model", "--out",
                 tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "merge.json").read_text())["names"] == ["first", "second"]


def test_cli_errors_leave_nothing_behind(zoo, tmp_path):
    out = tmp_path / "none"
    assert_one_line_error(run("merge", zoo / "digits", zoo / "parity", "--method", "ties", "--out", out),
                          "pass base=")
    assert_one_line_error(run("merge", zoo / "digits", zoo / "parity", "--method", "ties:dens=0.3", "--base",
                              zoo / "base", "--out", out), "no option 'dens'", "density")
    assert_one_line_error(run("merge", zoo / "digits", zoo / "parity", "--data", "digits", "--data",
                              "parity=digits", "--out", out), "not both")
    assert_one_line_error(run("merge", zoo / "digits", zoo / "parity", "--data", "cats=digits", "--out", out),
                          "--data names task 'cats'", "digits, parity")
    assert_one_line_error(run("merge", zoo / "digits", zoo / "indep1", "--out", out), "cannot merge")
    assert not out.exists()


def test_compare_a_model_with_itself_and_its_fine_tune(zoo, tmp_path):
    same = run("compare", zoo / "base", zoo / "base", "--data", "digits", "--json")
    assert same.exit_code == 0, same.output
    result = json.loads(same.output)
    assert all(v == pytest.approx(1.0) for v in result["cka"].values())
    assert all(v == 0 for v in result["weight_change"].values())
    tuned = run("compare", zoo / "base", zoo / "digits", "--data", "digits", "--out", tmp_path / "cmp")
    assert tuned.exit_code == 0, tuned.output
    record = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert 0 < record["weight_change"]["backbone.fc1"] < 1 and 0.5 < record["cka"]["backbone.fc1"] <= 1.0
    assert record["accuracy_b"] > 0.8
    assert_one_line_error(run("compare", zoo / "base", zoo / "digits", "--data", "digits", "--split", "dev"),
                          "--split must be train, val or test")
