"""The CLI, in process: exit codes, one-line errors, outputs written."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cli_helpers import assert_one_line_error, run


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and "transferkit 0.1.0" in result.stdout


def test_validate_reports_unknown_keys(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trian:\n  epochs: 2\ndata:\n  dataset: digits\n")
    assert_one_line_error(run("validate", cfg), "unknown key 'trian'")
    cfg.write_text("train:\n  epochs: 2\n")
    result = run("validate", cfg, "train.lr=0.5")
    assert result.exit_code == 0 and "lr: 0.5" in result.stdout


def test_finetune_end_to_end(tmp_path, digits_source):
    out = tmp_path / "run"
    result = run(
        "finetune", "--source", digits_source, "--data", "digits", "--shots", "5",
        "--epochs", "3", "--out", out, "--strategy", "linear_probe", "data.val_fraction=0.2", "--progress",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    names = {r["name"] for r in metrics["runs"]}
    assert names == {"finetune/linear_probe", "finetune/scratch"}
    assert metrics["baseline"] == "finetune/scratch"
    for r in metrics["runs"]:
        assert {"name", "method", "accuracy", "macro_f1", "seconds"} <= set(r)
        assert r["train_examples"] == 50 and r["test_examples"] == 540  # fixed 30% of 1,797
    assert (out / "report.html").is_file() and (out / "model" / "model.safetensors").is_file()
    assert "copied" in (out / "transfer" / "finetune-linear_probe.txt").read_text()
    assert (out / "runs" / "finetune-scratch" / "seed0" / "metrics.jsonl").is_file()

    evaluated = run("evaluate", out / "model", "--data", "digits", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads(evaluated.stdout)
    assert 0.0 <= scores["accuracy"] <= 1.0
    # the saved model names its classes; predict on the test split agrees with evaluate
    import csv

    predicted = run("predict", out / "model", "--data", "digits", "--out", tmp_path / "p.csv")
    assert predicted.exit_code == 0, predicted.output
    assert "wrote 540 predictions (classes 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)" in predicted.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open(newline="")))
    assert list(rows[0]) == ["row", "prediction", "probability", "label"]
    assert sum(r["prediction"] == r["label"] for r in rows) / 540 == pytest.approx(scores["accuracy"])
    assert_one_line_error(run("predict", out / "model", "--data", "digits", "--split", "all", "--out",
                              tmp_path / "q.csv"), "--split must be train, val or test")


def test_finetune_bad_inputs(tmp_path, digits_source):
    assert_one_line_error(
        run("finetune", "--source", tmp_path / "missing", "--data", "digits", "--out", tmp_path / "o"),
        "missing",
    )
    assert_one_line_error(
        run("finetune", "--source", digits_source, "--data", tmp_path / "nodata", "--out", tmp_path / "o"),
        "nodata",
    )
    assert_one_line_error(run("finetune", "train.epochz=3"), "unknown key 'train.epochz'")


def test_corrupt_and_pickled_checkpoints(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert_one_line_error(run("inspect", bad, "--arch", "mlp"), "corrupt")
    pickled = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2), pickled)
    assert_one_line_error(run("inspect", pickled, "--arch", "mlp"), "pickled")


def test_inspect_layers_and_transfer_report(digits_source):
    result = run("inspect", digits_source, "--input-shape", "1,8,8")
    assert result.exit_code == 0, result.output
    assert "backbone" in result.stdout and "head" in result.stdout
    result = run("inspect", digits_source, "--target", digits_source)
    assert result.exit_code == 0, result.output
    assert "copied" in result.stdout


@pytest.mark.parametrize("split", ["bogus"])
def test_evaluate_bad_split(digits_source, split):
    assert_one_line_error(run("evaluate", digits_source, "--data", "digits", "--split", split), "--split")


def test_finetune_data_errors(tmp_path, digits_source):
    empty = tmp_path / "empty_images"
    empty.mkdir()
    assert_one_line_error(
        run("finetune", "--source", digits_source, "--data", empty, "--out", tmp_path / "o"), "empty"
    )
    # 10 features per row, but the source MLP takes 64 (8x8 digits)
    rows = ["label," + ",".join(f"f{i}" for i in range(10))]
    rows += [f"{i % 3}," + ",".join(str((i * j) % 7) for j in range(10)) for i in range(60)]
    csv = tmp_path / "table.csv"
    csv.write_text("\n".join(rows) + "\n")
    assert_one_line_error(
        run("finetune", "--source", digits_source, "--data", csv, "--out", tmp_path / "o2"),
        "10 values per example", "64",
    )


def test_finetune_nan_loss_is_one_clear_error(tmp_path, digits_source):
    out = tmp_path / "nan"
    result = run(
        "finetune", "--source", digits_source, "--data", "digits", "--shots", "5", "--epochs", "2",
        "--out", out, "train.lr=1e30", "train.optimizer=sgd", "train.backbone_lr_scale=1",
        "train.batch_size=64",  # one step per epoch: epoch 1 ends before the loss turns non-finite
        "data.val_fraction=0.2", "train.divergence_factor=null",  # off: else it stops after epoch 1
    )
    assert_one_line_error(result, "loss became non-finite", "lower the learning rate")
    assert (out / "config.yaml").is_file()  # what was written before the failure is intact
    run_dir = out / "runs" / "finetune-full" / "seed0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 kept


def test_distill_end_to_end(tmp_path, digits_source):
    out = tmp_path / "kd"
    result = run(
        "distill", "--teacher", digits_source, "--student", "narrow:2", "--data", "digits",
        "--shots", "5", "--epochs", "2", "--out", out, "-m", "cross_entropy:weight=0.5",
        "-m", "kd:weight=0.5,temperature=2", "-m", "hint", "data.val_fraction=0.2",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r["name"] for r in metrics["runs"]} == {"distill/kd+hint", "distill/scratch"}
    assert metrics["baseline"] == "distill/scratch"
    assert metrics["student"]["kwargs"]["hidden"] == [16, 16]  # the teacher's 32-32, halved
    assert metrics["teacher"]["params"] > 2 * metrics["student"]["params"]
    assert 0.5 < metrics["teacher"]["accuracy"] <= 1.0
    jsonl = out / "runs" / "distill-kd+hint" / "seed0" / "metrics.jsonl"
    row = json.loads(jsonl.read_text().splitlines()[0])
    assert {"loss_cross_entropy", "loss_kd", "loss_hint"} <= set(row)
    assert (out / "report.html").is_file()
    validated = run("validate", out / "config.yaml")
    assert validated.exit_code == 0 and "teacher:" in validated.stdout


def test_distill_bad_methods(tmp_path, digits_source):
    base = ["distill", "--teacher", digits_source, "--data", "digits", "--out", tmp_path / "o"]
    assert_one_line_error(run(*base, "-m", "kdd"), "unknown objective 'kdd'", "Did you mean 'kd'")
    assert_one_line_error(run(*base, "-m", "kd:temperature"), "is not key=value")
    assert_one_line_error(run(*base, "-m", "kd:temp=3"), "does not take 'temp'", "temperature")
    assert_one_line_error(run(*base, "-m", "kd:temperature=0"), "temperature")
    assert_one_line_error(run(*base, "--student", "narrow:x"), "narrow:N")
    assert_one_line_error(run(*base, "-m", "hint:student_layer=backbone.nope"), "backbone.nope")


def test_finetune_with_regularizers_and_source_retention(tmp_path, digits_source):
    out = tmp_path / "reg"
    result = run(
        "finetune", "--source", digits_source, "--data", "digits", "--shots", "5", "--epochs", "2",
        "--out", out, "--regularizer", "l2sp", "--regularizer", "rkd:weight=0.5", "--reg-weight", "2",
        "--source-data", "digits", "data.val_fraction=0.2", "train.weight_decay=0",
    )
    assert result.exit_code == 0, result.output
    assert "source acc. before -> after" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    run_ = next(r for r in metrics["runs"] if r["name"] == "finetune/full+l2sp+rkd")
    assert 0 < run_["source_accuracy_before"] <= 1 and 0 < run_["source_accuracy_after"] <= 1
    row = json.loads((out / "runs" / "finetune-full+l2sp+rkd" / "seed0" / "metrics.jsonl")
                     .read_text().splitlines()[0])
    assert {"loss_cross_entropy", "loss_l2sp", "loss_rkd"} <= set(row)
    cfg = (out / "config.yaml").read_text()
    assert "name: l2sp" in cfg and "weight: 2" in cfg and "weight: 0.5" in cfg


def test_l2sp_plus_kd_is_configuration(tmp_path, digits_source):
    out = tmp_path / "l2sp_kd"
    result = run(
        "distill", "--teacher", digits_source, "--student", digits_source, "--data", "digits",
        "--shots", "5", "--epochs", "2", "--out", out, "-m", "cross_entropy", "-m", "kd:temperature=2",
        "-m", "l2sp:alpha=0.1", "data.val_fraction=0.2",
    )
    assert result.exit_code == 0, result.output
    jsonl = out / "runs" / "distill-kd+l2sp" / "seed0" / "metrics.jsonl"
    assert {"loss_kd", "loss_l2sp"} <= set(json.loads(jsonl.read_text().splitlines()[0]))


def test_regularizer_errors(tmp_path, digits_source):
    base = ["finetune", "--source", digits_source, "--data", "digits", "--out", tmp_path / "o"]
    assert_one_line_error(run(*base, "--regularizer", "ewc"), "source data", "--source-data")
    assert_one_line_error(run(*base, "--regularizer", "l2sp", "--reg-weight", "-1"), "weight", "-1")
    assert_one_line_error(run(*base, "--reg-weight", "1"), "--reg-weight needs --regularizer")
    assert_one_line_error(run(*base, "--regularizer", "l2sp:alpha=-2"), "alpha", "-2")


def test_finetune_with_augmentation_flags(tmp_path, digits_source):
    out = tmp_path / "aug"
    result = run(
        "finetune", "--source", digits_source, "--data", "digits", "--shots", "5", "--epochs", "1",
        "--out", out, "--strategy", "linear_probe", "--augment", "hflip", "--augment", "noise:std=0.05",
        "baseline=false",
    )
    assert result.exit_code == 0, result.output
    written = (out / "config.yaml").read_text()
    assert "- hflip" in written and "noise:std=0.05" in written
    assert_one_line_error(
        run("finetune", "--source", digits_source, "--data", "digits", "--out", tmp_path / "bad",
            "--augment", "flp"),
        "unknown augmentation 'flp'; did you mean 'hflip'",
    )
