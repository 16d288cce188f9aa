"""`transferkit multitask`: one model for several tasks against one model per task, on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run
from transferkit.data import load_dataset
from transferkit.models import load_model, select_task


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """The digits again, labelled even / odd: a second task on the same inputs."""
    d = load_dataset("digits", val_fraction=0.0)
    path = tmp_path_factory.mktemp("tasks") / "parity.npz"
    np.savez(path, x_train=d.train.x.numpy(), y_train=d.train.y.numpy() % 2, x_test=d.test.x.numpy(),
             y_test=d.test.y.numpy() % 2)
    return path


def test_multitask_against_single_task_models(parity, tmp_path):
    out = tmp_path / "mt"
    result = run("multitask", "--task", "digit=digits", "--task", f"parity={parity}", "--arch", "mlp",
                 "--weighting", "uncertainty", "--seeds", "0,1", "--epochs", "4", "--out", out,
                 "model.kwargs.in_features=64", "model.kwargs.hidden=[32]", "train.lr=0.01")
    assert result.exit_code == 0, result.output
    assert "digit" in result.output and "parity" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    runs = metrics["runs"]
    assert len(runs) == 2 * 2 * 2  # (multi, single) x tasks x seeds
    for task, rows in metrics["tasks"].items():
        by = {r["name"]: r for r in rows}
        multi, single = by[f"multi-task/{task}"], by[f"single-task/{task}"]
        assert single["is_baseline"] and multi["gain"] == pytest.approx(multi["accuracy_mean"]
                                                                       - single["accuracy_mean"])
        assert (task in metrics["negative_transfer"]) == multi["negative_transfer"] == (multi["gain"] < 0)
        assert multi["accuracy_mean"] > 0.6 and single["accuracy_mean"] > 0.6
    model = select_task(load_model(out / "model"), "parity")
    assert model.info.tasks == {"digit": 10, "parity": 2} and model.info.num_classes == 2
    page = (out / "report.html").read_text()
    assert "single-task" in page and "multi-task" in page and "negative transfer between tasks" in page


def test_a_task_file_with_its_own_label_column(parity, tmp_path):
    """--label-column names the label column of every --task file; the built-in task takes none."""
    d = load_dataset(str(parity), val_fraction=0.0)
    rows = [",".join(f"{v:g}" for v in x.flatten().tolist()) + f",{y}"
            for x, y in zip(d.train.x, d.train.y.tolist(), strict=True)]
    path = tmp_path / "parity.csv"
    path.write_text(",".join(f"p{i}" for i in range(64)) + ",odd\n" + "\n".join(rows) + "\n")
    out = tmp_path / "mt"
    result = run("multitask", "--task", "digit=digits", "--task", f"parity={path}", "--label-column", "odd",
                 "--arch", "mlp", "--seeds", "0", "--epochs", "2", "--no-baseline", "--out", out,
                 "model.kwargs.in_features=64", "model.kwargs.hidden=[32]", "train.lr=0.01")
    assert result.exit_code == 0, result.output
    tasks = json.loads((out / "metrics.json").read_text())["tasks"]
    assert [r["accuracy_mean"] > 0.6 for rows in tasks.values() for r in rows] == [True, True]


def test_multitask_errors(parity, tmp_path):
    out = tmp_path / "bad"
    assert_one_line_error(run("multitask", "--task", "digit=digits", "--out", out), "at least two tasks")
    assert_one_line_error(run("multitask", "--task", "digits", "--task", "p=digits", "--out", out),
                          "--task 'digits' is not NAME=DATA")
    assert_one_line_error(run("multitask", "--task", "a=digits", "--task", "b=digits", "--surgery", "pcgrad",
                              "--sampling", "uniform", "--out", out, "model.kwargs.image_size=8"),
                          "pcgrad combines every task's gradient", "sampling='all'")
    # a bad input found by the checks of training (10 validation images a class; digits has 12) leaves
    # no folder behind
    assert_one_line_error(run("multitask", "--task", "a=digits", "--task", "b=digits", "--shots", "13",
                              "--out", out, "model.kwargs.image_size=8"), "fewer than k=13")
    assert not out.exists()


def test_validate_reads_a_multitask_config(tmp_path):
    path = tmp_path / "mt.yaml"
    path.write_text("tasks:\n  mnist: {dataset: mnist5k, shots: 10}\n"
                    "  digits: {dataset: digits, weight: 0.5}\nweighting: dwa\nsampling: proportional\n")
    ok = run("validate", path)
    assert ok.exit_code == 0 and "config is valid (MultitaskConfig)" in ok.output
    path.write_text(path.read_text() + "surgery: pcgrad\n")
    assert_one_line_error(run("validate", path), "pcgrad combines every task's gradient",
                          "not 'proportional'")
