"""distill and adapt reports describe themselves, as finetune's do: ``metrics.json["about"]`` records
the command, the version, the teacher / source model (spec, architecture, weights hash), the data
(spec, split sizes, classes, hash; adapt: both domains), shots, seeds, the recipe with its methods and
what the baseline is; ``report.html`` shows a title saying what ran and these lines."""

from __future__ import annotations

import html
import json

import torch

from cli_helpers import run
from transferkit.models import create_model, load_model, save_model
from transferkit.workflows import distill, output
from transferkit.workflows.output import describe_lines, model_fingerprint


def _mlp_folder(path, hidden=(32, 32)):
    torch.manual_seed(0)
    return save_model(create_model("mlp", num_classes=10, in_features=64, hidden=hidden), path)


def _report(out):
    return (out / "report.html").read_text()


def test_distill_outputs_describe_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(output, "_COMMAND_LINE", None)  # from Python, whatever ran before in this process
    teacher = _mlp_folder(tmp_path / "teacher")
    out = tmp_path / "kd"
    distill({"teacher": {"model": str(teacher)}, "student": {"model": "narrow:2"},
             "data": {"dataset": "digits", "shots": 3},
             "methods": [{"name": "cross_entropy", "weight": 0.5}, {"name": "kd", "temperature": 2}],
             "train": {"epochs": 1, "batch_size": 64}, "seeds": [0, 1], "out": str(out)})
    metrics = json.loads((out / "metrics.json").read_text())
    about = metrics["about"]
    assert about["kind"] == "distill" and about["command"] is None and about["transferkit_version"] == "0.1.0"
    want = model_fingerprint(load_model(teacher), str(teacher))
    assert about["teacher"] == want and len(want["weights_sha256"]) == 64 and want["arch"] == "mlp"
    student = about["student"]
    assert (student["spec"], student["arch"], student["kwargs"]["hidden"]) == ("narrow:2", "mlp", [16, 16])
    assert student["start"] is None and student["params"] == metrics["student"]["params"]
    target = about["target"]
    assert (target["spec"], target["test_size"], target["num_classes"]) == ("digits", 540, 10)
    assert target["train_size"] + target["val_size"] == 1257 and len(target["sha256"]) == 64
    assert (about["shots"], about["val_shots"], about["seeds"]) == (3, 3, [0, 1])
    recipe = about["recipe"]
    assert (recipe["strategy"], recipe["epochs"], recipe["batch_size"]) == ("full", 1, 64)
    assert recipe["methods"] == [{"name": "cross_entropy", "weight": 0.5},
                                 {"name": "kd", "weight": 1.0, "temperature": 2.0}]
    assert about["baseline"].startswith("the same student (mlp) trained from scratch with cross-entropy only")
    assert metrics["baseline"] == "distill/scratch"
    # the student's blocks against the teacher's (same names, half the width): both arms compared
    cka = metrics["similarity"]["linear CKA to the source / teacher"]
    assert set(cka) == {"distill/kd", "distill/scratch"}
    assert all(list(row) == ["backbone.fc1", "backbone.fc2"] and all(0 < v <= 1 for v in row.values())
               for row in cka.values())
    assert "relative weight change from the source" not in metrics["similarity"]  # other shapes
    page = _report(out)
    title = (f"transferkit distill (distill): teacher {teacher} (mlp) -> student mlp on digits, "
             "3 labels per class")
    assert f"<h1>{html.escape(title)}</h1>" in page
    lines = describe_lines(about)
    assert lines[0] == "Run from Python with transferkit 0.1.0."
    sha = want["weights_sha256"][:12]
    assert f"Teacher: {teacher} (mlp, {want['params']:,} values, weights sha256 {sha})." in lines
    assert "Target: digits (10 classes; splits 1,131 train, 126 val, 540 test)." in lines
    assert "Data per seed: 3 training and 3 validation examples per class; seeds [0, 1]; test on the whole " \
           "test split." in lines
    assert any(ln.startswith("Recipe: strategy full, epochs 1,") and ln.endswith(
        "methods cross_entropy (weight 0.5) + kd (weight 1.0, temperature 2.0).") for ln in lines)
    assert any(ln.startswith("Student: narrow:2 = mlp") and ln.endswith("fresh weights.") for ln in lines)
    for line in lines:
        assert f"<li>{html.escape(line)}</li>" in page, line


def test_distill_without_baseline_has_none(tmp_path):
    teacher = _mlp_folder(tmp_path / "teacher", hidden=(16,))
    out = tmp_path / "nb"
    distill({"teacher": {"model": str(teacher)}, "student": {"model": str(teacher)}, "baseline": False,
             "data": {"dataset": "digits", "shots": 2}, "methods": [{"name": "kd"}],
             "train": {"epochs": 1}, "out": str(out)})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline"] is None  # the distilled arm is not called its own baseline
    about = metrics["about"]
    assert about["baseline"].startswith("none (baseline off)")
    assert about["student"]["start"]["weights_sha256"] == about["teacher"]["weights_sha256"]
    assert "Baseline: none (baseline off)" in _report(out)


def test_adapt_outputs_describe_the_run(tmp_path):
    src = _mlp_folder(tmp_path / "src", hidden=(16,))
    out = tmp_path / "da"
    res = run("adapt", "--source", src, "--method", "dann", "--source-data", "mnist5k", "--target-data",
              "digits", "--epochs", "1", "--weights", "0.5", "--image-size", "8", "--out", out,
              "train.batch_size=256")
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    about = metrics["about"]
    assert about["kind"] == "adapt" and about["command"].startswith("transferkit adapt --source ")
    assert "--method dann" in about["command"]
    (source,) = about["sources"]
    want = model_fingerprint(load_model(src), str(src))
    assert source == want
    domains = about["source_data"], about["target"]
    assert [d["spec"] for d in domains] == ["mnist5k", "digits"]
    assert [d["test_size"] for d in domains] == [1000, 540]
    assert domains[0]["train_size"] + domains[0]["val_size"] == 4000
    assert all(d["num_classes"] == 10 and len(d["sha256"]) == 64 for d in domains)
    assert about["shots"] is None and about["seeds"] == [0]
    assert "1,131 training images without labels" in about["data_use"]
    recipe = about["recipe"]
    assert recipe["methods"] == [{"name": "dann"}] and recipe["weights"] == [0.5]
    assert recipe["select"] == "dev" and recipe["arch"] == "mlp" and recipe["epochs"] == 1
    assert about["baseline"].startswith(
        "source only: the same mlp trained with cross-entropy on the labelled source alone")
    assert "target oracle: trained on the labelled target training split" in about["baseline"]
    page = _report(out)
    title = "transferkit adapt (adapt): mnist5k -> digits, methods dann; chosen by dev"
    assert f"<h1>{html.escape(title)}</h1>" in page
    lines = describe_lines(about)
    assert lines[0].startswith("Command: transferkit adapt --source")
    assert lines[0].endswith("(transferkit 0.1.0).")
    sha = want["weights_sha256"][:12]
    assert f"Source model: {src} (mlp, {want['params']:,} values, weights sha256 {sha})." in lines
    assert "Source domain: mnist5k (10 classes; splits 3,600 train, 400 val, 1,000 test)." in lines
    assert "Target domain: digits (10 classes; splits 1,131 train, 126 val, 540 test)." in lines
    assert any(ln.startswith("Recipe: arch mlp,") and "methods dann, weights [0.5], select dev" in ln
               for ln in lines)
    for line in lines:
        assert f"<li>{html.escape(line)}</li>" in page, line
