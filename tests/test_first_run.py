"""The path a first-time user walks, end to end in process: their own .npz data, two sources against
one baseline, then rank, evaluate and inspect; every output names what it measured (the data, its
sizes, the shots, the sources, the recipe, the baseline) and the transfer reports are checked."""

from __future__ import annotations

import json

import numpy as np
import torch
from sklearn.datasets import load_digits

from cli_helpers import run
from transferkit.models import create_model, save_model


def test_two_sources_one_baseline_then_rank_evaluate_inspect(tmp_path):
    digits = load_digits()
    data = tmp_path / "own.npz"
    np.savez(data, x=(digits.images[:, None] / 16).astype(np.float32), y=digits.target)
    torch.manual_seed(0)
    a = save_model(create_model("small_cnn", num_classes=10, image_size=8, widths=(8, 16)),
                   tmp_path / "cnn-a")
    b = save_model(create_model("small_cnn", num_classes=10, image_size=8, widths=(16, 32)),
                   tmp_path / "cnn-b")
    out = tmp_path / "ft"

    ft = run("finetune", "--source", a, "--source", b, "--baseline-arch", "mlp", "--data", data,
             "--shots", "5", "--seeds", "0,1", "--epochs", "3", "--out", out)
    assert ft.exit_code == 0, ft.output
    lines = ft.output.splitlines()
    rows = [line.split()[2] for line in lines[2:5]]  # after the two words of the method
    assert rows == ["finetune/cnn-a/full", "finetune/cnn-b/full", "finetune/scratch"]
    for name in ("finetune/cnn-a/full", "finetune/cnn-b/full"):  # each transfer says what it copied
        (headline,) = [line for line in lines if line.startswith(f"{name}: copied exactly")]
        assert "(100.0% of its backbone)" in headline
        assert "a probe batch confirms the copied backbone reproduces the source's features" in headline
    metrics = json.loads((out / "metrics.json").read_text())
    about = metrics["about"]
    assert about["command"].startswith("transferkit finetune --source ")
    assert [s["spec"] for s in about["sources"]] == [str(a), str(b)]
    assert all(len(s["weights_sha256"]) == 64 and s["arch"] == "small_cnn" for s in about["sources"])
    target = about["target"]
    n_test = round(0.2 * len(digits.target))  # the fixed test split carved from x / y
    assert target["spec"] == str(data) and target["num_classes"] == 10
    assert abs(target["test_size"] - n_test) <= 1, target
    assert target["train_size"] + target["val_size"] + target["test_size"] == len(digits.target)
    assert (about["shots"], about["seeds"]) == (5, [0, 1])
    assert about["recipe"]["recipe"] == "few-shot (auto)" and about["recipe"]["epochs"] == 3
    assert about["baseline"].startswith("mlp trained from scratch on the same examples")
    assert all(r["test_examples"] == target["test_size"] and r["train_examples"] == 50
               for r in metrics["runs"])
    html = (out / "report.html").read_text()
    assert f"<h1>transferkit finetune (finetune): {a}, {b} -&gt; {data}, 5 labels per class</h1>" in html
    assert "Baseline: mlp trained from scratch" in html
    report_a = (out / "transfer" / "finetune-cnn-a-full.txt").read_text()
    assert "copied" in report_a and "head.weight" in report_a

    ranked = run("rank", "--source", a, "--source", b, "--data", data, "--shots", "5")
    assert ranked.exit_code == 0, ranked.output
    first = ranked.output.splitlines()[0]
    assert first == f"scored on {data}: 50 labelled training examples, 5 per class (seed 0), 10 classes; " \
                    "higher is better for every score"
    assert "logme" in ranked.output and "pool of 2 candidates" in ranked.output
    assert f"{a}: small_cnn; preprocessing: input 1x8x8" in ranked.output

    evaluated = run("evaluate", out / "model", "--data", data)
    assert evaluated.exit_code == 0, evaluated.output
    said = " ".join(evaluated.output.split())  # rich wraps long paths
    assert said.startswith(f"{out / 'model'} on {data}/test ({target['test_size']} examples) accuracy ")
    best = metrics["best"]
    accuracy = float(said.split(" accuracy ")[1].split()[0])
    best_acc = next(r["accuracy"] for r in metrics["runs"] if r["name"] == best and r["seed"] == 0)
    assert abs(accuracy - best_acc) < 1e-4  # the exported model is the first seed of the chosen arm

    inspected = run("inspect", out / "model")
    assert inspected.exit_code == 0, inspected.output
    arch = "mlp" if best == "finetune/scratch" else "small_cnn"
    said = " ".join(inspected.output.split())
    assert said.startswith(f"{out / 'model'}: {arch}, 10 classes preprocessing: input ")
