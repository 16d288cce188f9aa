"""The ``adapt`` workflow and CLI: MNIST -> scikit-learn digits (a real digit domain shift), label-free
model choice, and the promise that target training labels are never read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run
from transferkit.data import load_dataset
from transferkit.errors import LabelError, ShapeError
from transferkit.workflows import adapt
from transferkit.workflows.adapt import CHOICES

FAST = {
    "image_size": 8,
    "model": {"arch": "mlp", "kwargs": {"hidden": [32]}},
    "train": {"epochs": 2, "batch_size": 128, "lr": 3e-3},
}


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt") / "run"
    result = adapt({**FAST, "out": str(out), "methods": [{"name": "coral"}, {"name": "dann"}],
                    "weights": [0.3, 1.0], "select": "snd"})
    return result, json.loads((out / "metrics.json").read_text())


def test_adapt_trains_every_arm_and_reports_the_model_choice(adapted):
    result, metrics = adapted
    names = [row["name"] for row in result.summary]
    assert names == ["adapt/source-only", "adapt/coral/w=0.3", "adapt/coral/w=1", "adapt/dann/w=0.3",
                     "adapt/dann/w=1", "adapt/target-oracle"]
    assert metrics["baseline"] == "adapt/source-only"
    rows = {r["method"]: r for r in metrics["model_choice"]["rows"]}
    assert set(rows) == {"source only", "coral", "dann"}
    for row in rows.values():
        for crit in CHOICES:
            assert len(row[crit]) == 1 and 0.0 <= row[crit][0] <= 1.0
        # the oracle picks the best of the same candidates, so no label-free pick beats it
        assert all(row["oracle"][0] >= row[c][0] for c in ("dev", "snd", "entropy"))
    html = (result.out_dir / "report.html").read_text()
    assert "Model choice without target labels" in html and "oracle (target labels)" in html


def test_saved_models_are_the_checkpoints_the_criterion_chose(adapted):
    _, metrics = adapted
    for run_ in metrics["runs"]:
        if run_["name"].endswith("target-oracle"):
            assert run_["select_metric"] == "val_accuracy"
            continue
        assert run_["select_metric"] == "target_snd"
        snd = [row["target_snd"] for row in run_["history"]]
        assert run_["best_epoch"] == 1 + int(np.argmax(snd))
        chosen = run_["history"][run_["best_epoch"] - 1]
        # the model kept is that epoch's: its test accuracy is the one recorded then
        assert run_["accuracy"] == pytest.approx(chosen["oracle_accuracy"], abs=1e-9)
        for key in ("dev_risk", "target_entropy", "domain_gap"):
            assert key in chosen


def test_the_weight_choice_uses_the_criterion_across_the_grid(adapted):
    _, metrics = adapted
    rows = {r["method"]: r for r in metrics["model_choice"]["rows"]}
    runs = [r for r in metrics["runs"] if "/dann/" in r["name"]]
    best = max(runs, key=lambda r: r["best_value"])  # SND: higher is better
    assert rows["dann"]["snd"][0] == pytest.approx(best["accuracy"], abs=1e-9)
    assert rows["dann"]["snd_picks"][0].startswith(best["name"].rsplit("/", 1)[-1])


def _digits_npz(path, shuffle_labels: bool, channels: int = 1, empty: bool = False):
    d = load_dataset("digits", val_fraction=0.0)
    y = d.train.y.numpy().copy()
    if shuffle_labels:
        y = np.random.default_rng(0).permutation(y)
    x = d.train.x.numpy()
    if channels == 3:
        x = np.repeat(x, 3, axis=1)
    if empty:
        x, y = x[:0], y[:0]
    np.savez(path, x_train=x, y_train=y, x_test=np.repeat(d.test.x.numpy(), channels, axis=1),
             y_test=d.test.y.numpy())
    return path


def test_target_training_labels_are_never_read(tmp_path):
    histories = []
    for shuffled in (False, True):
        target = _digits_npz(tmp_path / f"t{shuffled}.npz", shuffled)
        result = adapt({**FAST, "out": str(tmp_path / f"run{shuffled}"), "oracle": False,
                        "methods": [{"name": "coral"}], "train": {**FAST["train"], "epochs": 1},
                        "target_data": {"dataset": str(target), "val_fraction": 0.0}})
        histories.append([(r.name, r.metrics.accuracy, r.history[0]["dev_risk"]) for r in result.runs])
    assert histories[0] == histories[1]


def test_bad_domains_give_clear_errors(tmp_path):
    rgb = _digits_npz(tmp_path / "rgb.npz", False, channels=3)
    with pytest.raises(ShapeError, match="1 vs 3 channels.*match_shape"):
        adapt({**FAST, "out": str(tmp_path / "a"), "target_data": {"dataset": str(rgb)}})
    d = load_dataset("digits")
    few = tmp_path / "five.npz"
    keep = d.train.y < 5
    np.savez(few, x_train=d.train.x[keep].numpy(), y_train=d.train.y[keep].numpy(),
             x_test=d.test.x[d.test.y < 5].numpy(), y_test=d.test.y[d.test.y < 5].numpy())
    with pytest.raises(LabelError, match="source has 10 classes but target 5"):
        adapt({**FAST, "out": str(tmp_path / "b"), "target_data": {"dataset": str(few)}})


def test_cli_adapt_writes_the_run_folder_and_rejects_bad_input(tmp_path):
    out = tmp_path / "cli"
    res = run("adapt", "--method", "coral", "--source-data", "mnist5k", "--target-data", "digits",
              "--epochs", "1", "--weights", "1", "--no-oracle", "--image-size", "8", "--select", "entropy",
              "--out", out, "model.arch=mlp", "model.kwargs={hidden: [16]}", "train.batch_size=256")
    assert res.exit_code == 0, res.output
    assert (out / "metrics.json").exists() and (out / "report.html").exists() and (out / "model").is_dir()
    assert "adapt/coral/w=1" in res.output
    assert_one_line_error(run("adapt", "--method", "cross_entropy", "--out", tmp_path / "x"),
                          "method 'cross_entropy' does not adapt to target data", "dann")
    assert_one_line_error(run("adapt", "--method", "danm", "--out", tmp_path / "x"), "'danm'", "dann")
    assert_one_line_error(run("adapt", "--select", "accuracy", "--out", tmp_path / "y"), "select")
    # --ordered-split names the target file's order; the built-in source domain takes no file options
    target = _digits_npz(tmp_path / "ordered.npz", False)
    res = run("adapt", "--method", "coral", "--source-data", "mnist5k", "--target-data", target,
              "--ordered-split", "--epochs", "1", "--weights", "1", "--no-oracle", "--image-size", "8",
              "--unlabeled", "rest", "--out", tmp_path / "ordered", "model.arch=mlp",
              "model.kwargs={hidden: [16]}")
    assert res.exit_code == 0, res.output
    saved = (tmp_path / "ordered" / "config.yaml").read_text()
    assert "ordered: true" in saved and saved.count("ordered: true") == 1  # the target's only
    use = json.loads((tmp_path / "ordered" / "metrics.json").read_text())["about"]["data_use"]
    assert "1,131 training images without labels, 540 labelled test images" in use  # rest: the default
    rgb = _digits_npz(tmp_path / "rgb.npz", False, channels=3)
    assert_one_line_error(run("adapt", "--target-data", rgb, "--out", tmp_path / "z", "--image-size", "8"),
                          "channels")


def test_the_criterion_declares_its_direction_and_validate_takes_adapts_config(tmp_path, monkeypatch):
    """adapt keeps the epoch in the direction the criterion declares (not one guessed from its
    name): declared "min" for SND here, the kept epoch is the one with the lowest SND. The
    config.yaml that adapt writes validates as an adapt config."""
    from transferkit.transfer.adapt.monitor import CRITERIA

    monkeypatch.setitem(CRITERIA, "snd", ("target_snd", "min"))
    result = adapt({**FAST, "train": {**FAST["train"], "epochs": 3}, "out": str(tmp_path / "run"),
                    "methods": [], "select": "snd", "oracle": False})
    (run_,) = json.loads((result.out_dir / "metrics.json").read_text())["runs"]
    snd = [row["target_snd"] for row in run_["history"]]
    assert len(set(snd)) == 3 and run_["best_epoch"] == 1 + int(np.argmin(snd))
    res = run("validate", result.out_dir / "config.yaml")
    assert res.exit_code == 0 and "AdaptConfig" in res.stdout, res.output
