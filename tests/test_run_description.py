"""Every finetune report and metrics file says what it measured: the command, the version, the
source (spec, architecture, weights hash), the target data and its sizes, shots, seeds, recipe and
what the baseline is; a run without a baseline says so instead of calling an arm the baseline."""

from __future__ import annotations

import json

import torch

from cli_helpers import run
from transferkit.models import create_model, save_model


def _source(tmp_path):
    torch.manual_seed(0)
    return save_model(create_model("small_cnn", num_classes=10, image_size=8), tmp_path / "src")


def test_finetune_outputs_describe_the_run(tmp_path):
    src = _source(tmp_path)
    out = tmp_path / "ft"
    result = run("finetune", "--source", src, "--data", "digits", "--shots", "3", "--epochs", "1",
                 "--seeds", "0,1", "--out", out)
    assert result.exit_code == 0, result.output
    about = json.loads((out / "metrics.json").read_text())["about"]
    assert about["command"].startswith("transferkit finetune --source ") and "--shots 3" in about["command"]
    assert about["transferkit_version"] == "0.1.0"
    (source,) = about["sources"]
    assert source["spec"] == str(src) and source["arch"] == "small_cnn"
    assert len(source["weights_sha256"]) == 64
    target = about["target"]
    assert target["spec"] == "digits" and target["test_size"] == 540 and target["num_classes"] == 10
    assert (about["shots"], about["val_shots"], about["seeds"]) == (3, 3, [0, 1])
    assert about["recipe"]["strategy"] == "full" and about["recipe"]["epochs"] == 1
    assert about["baseline"].startswith("small_cnn trained from scratch")
    html = (out / "report.html").read_text()
    assert f"<h1>transferkit finetune (finetune): {src} -&gt; digits, 3 labels per class</h1>" in html
    assert "Command: transferkit finetune" in html and "Target: digits (10 classes; splits" in html
    assert "Baseline: small_cnn trained from scratch" in html


def test_no_baseline_is_said_not_hidden(tmp_path):
    src = _source(tmp_path)
    out = tmp_path / "nb"
    result = run("finetune", "--source", src, "--data", "digits", "--shots", "3", "--epochs", "1",
                 "--no-baseline", "--out", out)
    assert result.exit_code == 0, result.output
    assert "(no baseline)" in result.output and "(baseline)" not in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline"] is None and metrics["about"]["baseline"].startswith("none")
    assert all(row["gain"] is None and not row["is_baseline"] for row in metrics["summary"])
    assert "<b>no baseline</b>" in (out / "report.html").read_text()


def test_several_sources_against_one_baseline(tmp_path):
    """``--source A --source B`` (or a YAML list) transfers each and compares them with ONE
    from-scratch baseline, whose architecture ``--baseline-arch`` chooses."""
    import yaml

    from cli_helpers import assert_one_line_error

    cnn = _source(tmp_path)
    torch.manual_seed(1)
    mlp = save_model(create_model("mlp", num_classes=10, in_features=64), tmp_path / "mlp-src")
    out = tmp_path / "two"
    result = run("finetune", "--source", cnn, "--source", mlp, "--baseline-arch", "small_cnn",
                 "--data", "digits", "--shots", "3", "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    names = [row["name"] for row in metrics["summary"]]
    assert names == ["finetune/src/full", "finetune/mlp-src/full", "finetune/scratch"]
    assert metrics["baseline"] == "finetune/scratch"
    archs = {r["name"]: r["arch"] for r in metrics["runs"]}
    assert archs == {"finetune/src/full": "small_cnn", "finetune/mlp-src/full": "mlp",
                     "finetune/scratch": "small_cnn"}
    assert [s["spec"] for s in metrics["about"]["sources"]] == [str(cnn), str(mlp)]
    assert all(row["gain"] is not None for row in metrics["summary"] if not row["is_baseline"])
    # the same as a YAML list; a repeated source is refused before anything runs
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"source": [str(cnn), str(cnn)]}, "data": {"dataset": "digits"},
                                   "out": str(tmp_path / "rep")}))
    assert_one_line_error(run("finetune", "--config", cfg), "repeats a model")
    assert not (tmp_path / "rep").exists()


def test_rank_prints_each_candidates_preprocessing_and_takes_the_image_size(tmp_path):
    src = _source(tmp_path)
    default = run("rank", "--candidates", src, "--data", "digits", "--shots", "3", "--scores", "logme")
    assert default.exit_code == 0, default.output
    assert f"{src}: small_cnn; preprocessing: input 1x8x8, no normalisation" in default.output
    sized = run("rank", "--candidates", src, "--data", "digits", "--shots", "3", "--scores", "logme",
                "--image-size", "16")
    assert sized.exit_code == 0, sized.output
    assert "preprocessing: input 1x16x16" in sized.output


def test_plain_h_score_warns_when_it_cannot_rank(tmp_path, caplog):
    """128 features for 30 examples: plain H-score sits at C - 1 for every candidate; it says so."""
    import logging

    from transferkit import few_shot, load_dataset, rank

    model = create_model("small_cnn", num_classes=10, image_size=8)
    data = few_shot(load_dataset("digits").train, 3, 0)
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        result = rank({"cnn": model}, data, scores=["h_score", "h_score_shrinkage"])
    assert "can't tell candidates apart; use h_score_shrinkage" in caplog.text
    assert abs(result.rows[0]["h_score"] - 9.0) < 0.05  # its maximum, C - 1
