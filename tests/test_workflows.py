"""The finetune workflow: transfer vs scratch on the same data, resume after a kill, demo fallback."""

from __future__ import annotations

import json

import pytest
import torch

from transferkit.engine import Trainer
from transferkit.models import load_model
from transferkit.workflows import finetune


def _cfg(source, out, **extra):
    cfg = {
        "name": "ft",
        "out": str(out),
        "seeds": [0, 1],
        "data": {"dataset": "digits", "val_fraction": 0.2, "shots": 5},
        "model": {"source": str(source)},
        "train": {"epochs": 4, "lr": 1e-2, "batch_size": 16},
    }
    cfg.update(extra)
    return cfg


def test_transfer_arm_starts_from_the_source_and_baseline_shares_data(tmp_path, digits_source):
    result = finetune(_cfg(digits_source, tmp_path / "out"))
    report = result.transfer_reports["ft/full"]
    source = load_model(digits_source)
    backbone = [k for k in source.state_dict() if k.startswith("backbone.")]
    copied = {e.target_name for e in report.copied}
    assert set(backbone) <= copied  # every backbone tensor came from the source
    assert all(e.target_name.startswith("head.") for e in report.new)  # only the head is new
    by_seed = {}
    for run in result.runs:
        by_seed.setdefault(run.seed, []).append(run)
    for runs in by_seed.values():  # transfer and scratch: same number of examples, same test set
        assert {r.extra["train_examples"] for r in runs} == {50}
        assert {r.extra["test_examples"] for r in runs} == {540}
    names = [row["name"] for row in result.summary]
    assert names == ["ft/full", "ft/scratch"] and result.baseline == "ft/scratch"
    gain = result.summary[0]["gain"]
    accs = {row["name"]: row["accuracy_mean"] for row in result.summary}
    assert gain == pytest.approx(accs["ft/full"] - accs["ft/scratch"])


def test_killed_run_resumes_to_the_same_result(tmp_path, digits_source, monkeypatch):
    straight = finetune(_cfg(digits_source, tmp_path / "straight"))

    original = Trainer._run_epoch

    def killed_at_epoch_2_of_scratch_seed_1(self, epoch, *args, **kwargs):
        if epoch == 2 and "ft-scratch/seed1" in str(self.run_dir.root):
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_run_epoch", killed_at_epoch_2_of_scratch_seed_1)
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(digits_source, tmp_path / "killed"))
    monkeypatch.setattr(Trainer, "_run_epoch", original)
    lines = (tmp_path / "killed/runs/ft-scratch/seed1/metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # two finished epochs were checkpointed before the kill

    resumed = finetune(_cfg(digits_source, tmp_path / "killed", resume=True))
    for a, b in zip(straight.runs, resumed.runs, strict=True):
        assert (a.name, a.seed) == (b.name, b.seed)
        assert a.metrics.accuracy == b.metrics.accuracy
        assert a.metrics.confusion == b.metrics.confusion
    m1 = load_model(tmp_path / "straight" / "model").state_dict()
    m2 = load_model(tmp_path / "killed" / "model").state_dict()
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    lines = (tmp_path / "killed/runs/ft-scratch/seed1/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4]


def test_demo_falls_back_to_digits_without_fashion_mnist(monkeypatch):
    import transferkit.demo as demo

    monkeypatch.setattr(demo, "available_datasets", lambda: {"fashion-mnist": False, "digits": True})
    said = []
    splits, name = demo.load_demo_target(None, echo=said.append)
    assert name == "digits" and splits.num_classes == 10
    assert len(said) == 1 and "apt-get install dataset-fashion-mnist" in said[0]


def test_source_retention_is_measured_before_and_after(tmp_path, digits_source, digits):
    from transferkit.evaluation import evaluate

    source_acc = evaluate(load_model(digits_source), digits.test).accuracy
    probe = finetune(_cfg(digits_source, tmp_path / "probe", seeds=[0],
                          train={"epochs": 3, "strategy": "linear_probe", "lr": 1e-2},
                          data={"dataset": "digits", "val_fraction": 0.2, "shots": 5,
                                "source_dataset": "digits"}))
    run = next(r for r in probe.runs if r.name == "ft/linear_probe")
    assert run.extra["source_accuracy_before"] == source_acc
    assert run.extra["source_accuracy_after"] == source_acc  # frozen backbone + source head: unchanged
    assert run.extra["forgetting"] == 0.0
    scratch = next(r for r in probe.runs if r.name == "ft/scratch")
    assert "source_accuracy_after" not in scratch.extra  # no source head to measure with
    row = next(r for r in probe.summary if r["name"] == "ft/linear_probe")
    assert row["source_after_mean"] == source_acc
    assert "source acc. before -> after" in probe.table()
    assert (tmp_path / "probe" / "retention.png").is_file()
    # what transfer changed, layer by layer: a frozen backbone is the source's, block by block
    panels = json.loads((tmp_path / "probe" / "metrics.json").read_text())["similarity"]
    cka = panels["linear CKA to the source / teacher"]
    assert list(cka) == ["ft/linear_probe"]  # scratch has no source to compare with
    assert all(v == pytest.approx(1.0) for v in cka["ft/linear_probe"].values())
    assert set(panels["relative weight change from the source"]["ft/linear_probe"].values()) == {0.0}
    assert (tmp_path / "probe" / "similarity.png").is_file()
    assert "What transfer changed, layer by layer" in (tmp_path / "probe" / "report.html").read_text()

    full = finetune(_cfg(digits_source, tmp_path / "full", seeds=[0],
                         train={"epochs": 3, "lr": 5e-2, "backbone_lr_scale": 1.0},
                         data={"dataset": "digits", "val_fraction": 0.2, "shots": 5,
                               "source_dataset": "digits"}))
    run = next(r for r in full.runs if r.name == "ft/full")
    assert run.extra["source_accuracy_after"] != source_acc  # fine-tuning moved the backbone
    panels = json.loads((tmp_path / "full" / "metrics.json").read_text())["similarity"]
    assert all(0 < v < 1 for v in panels["linear CKA to the source / teacher"]["ft/full"].values())
    assert all(v > 0 for v in panels["relative weight change from the source"]["ft/full"].values())
    assert run.extra["forgetting"] == pytest.approx(source_acc - run.extra["source_accuracy_after"])


def test_ewc_fisher_is_computed_once_per_run_into_its_cache_folder(tmp_path, digits_source, monkeypatch):
    import shutil

    import transferkit.transfer.regularize.ewc as ewc

    source = tmp_path / "source"
    shutil.copytree(digits_source, source)
    calls = []
    original = ewc.fisher_diagonal
    monkeypatch.setattr(ewc, "fisher_diagonal", lambda *a, **k: calls.append(1) or original(*a, **k))
    cfg = _cfg(source, tmp_path / "a", seeds=[0, 1], baseline=False,
               regularizers=[{"name": "ewc", "lam": 10.0, "max_examples": 200}],
               data={"dataset": "digits", "val_fraction": 0.2, "shots": 5, "source_dataset": "digits"})
    finetune(cfg)
    assert len(calls) == 1  # computed once for two seeds ...
    assert len(list((tmp_path / "a" / "cache").glob("fisher-empirical-*.safetensors"))) == 1
    assert not list(source.glob("fisher*"))  # ... into the run's folder, never the user's source folder
    finetune({**cfg, "out": str(tmp_path / "a"), "resume": True})
    assert len(calls) == 1  # a resumed run reuses it
    finetune({**cfg, "out": str(tmp_path / "b"),
              "regularizers": [{"name": "ewc", "lam": 10.0, "max_examples": 100}]})
    assert len(calls) == 2  # estimated from another number of source examples: computed again


def test_the_exported_model_is_chosen_on_validation_never_on_test():
    """choose_export reads each run's selection metric at the epoch it kept: the arm best on test but
    worse on validation is not exported, and an oracle arm (export=False) never is."""
    from transferkit.engine import TrainConfig
    from transferkit.evaluation import RunResult, classification_metrics
    from transferkit.workflows.arms import Arm, choose_export

    def result(name, seed, test_acc, vals, best_epoch):
        y = torch.arange(10) % 2
        right = int(test_acc * 10)
        pred = torch.cat([y[:right], 1 - y[right:]])
        history = [{"epoch": i + 1, "val_accuracy": v, "dev_risk": 1 - v} for i, v in enumerate(vals)]
        return RunResult(name, name, classification_metrics(y, pred, 2), 1.0, seed, history,
                         {"best_epoch": best_epoch})

    cfg = TrainConfig()
    arms = [Arm("a", "a", "mlp", cfg), Arm("b", "b", "mlp", cfg)]
    runs = [result("a", 0, 0.9, [0.5, 0.6], 2), result("a", 1, 0.9, [0.6, 0.5], 1),
            result("b", 0, 0.5, [0.7, 0.2], 1), result("b", 1, 0.5, [0.65, 0.1], 1)]
    assert choose_export(runs, arms) == ("b", "val_accuracy (max), mean over seeds")
    # a label-free criterion shared by the arms decides, in its own direction; the oracle is skipped
    dev = TrainConfig(select_metric="dev_risk", select_mode="min")
    arms = [Arm("a", "a", "mlp", dev), Arm("b", "b", "mlp", dev), Arm("o", "o", "mlp", cfg, export=False)]
    runs += [result("o", 0, 1.0, [0.99], 1)]
    assert choose_export(runs, arms) == ("b", "dev_risk (min), mean over seeds")
