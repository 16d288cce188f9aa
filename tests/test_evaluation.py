"""Tests of transferkit.evaluation: metrics, summaries against a baseline, JSON and HTML reports."""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from transferkit.data.base import TensorDataset
from transferkit.errors import ConfigError, DataError, LabelError
from transferkit.evaluation import (
    Metrics,
    RunResult,
    classification_metrics,
    evaluate,
    format_table,
    predict,
    summarize,
    write_metrics_json,
    write_report,
)

# y_true=[0,0,1,1,2,2], y_pred=[0,1,1,1,2,0]
#   class 0: TP=1 FP=1 FN=1 -> P=1/2 R=1/2 F1=1/2
#   class 1: TP=2 FP=1 FN=0 -> P=2/3 R=1   F1=4/5
#   class 2: TP=1 FP=0 FN=1 -> P=1   R=1/2 F1=2/3
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0]
F1_BY_HAND = [0.5, 0.8, 2 / 3]
CONFUSION_BY_HAND = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def _identity_linear() -> nn.Linear:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.zero_()
    return lin


def _run(name: str, method: str, acc: float, seed: int = 0, **kw) -> RunResult:
    m = Metrics(
        accuracy=acc,
        macro_f1=acc - 0.1,
        per_class_f1=[acc, acc],
        confusion=[[5, 1], [2, 4]],
        n=12,
        class_names=["cat", "dog"],
    )
    return RunResult(name=name, method=method, metrics=m, seconds=2.0 + seed, seed=seed, **kw)


# --------------------------------------------------------------------------- metrics


def test_classification_metrics_hand_computed() -> None:
    m = classification_metrics(torch.tensor(Y_TRUE), torch.tensor(Y_PRED), 3, ["a", "b", "c"])
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.per_class_f1 == pytest.approx(F1_BY_HAND)
    assert m.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m.confusion == CONFUSION_BY_HAND
    assert m.n == 6
    assert m.class_names == ["a", "b", "c"]
    d = m.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert Metrics.from_dict(d) == m


def test_classification_metrics_absent_class_counts_zero_in_macro() -> None:
    m = classification_metrics(Y_TRUE, np.array(Y_PRED), num_classes=4)
    assert m.per_class_f1 == pytest.approx([*F1_BY_HAND, 0.0])
    assert m.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 4)
    assert m.confusion[3] == [0, 0, 0, 0] and [r[3] for r in m.confusion] == [0, 0, 0, 0]
    assert m.class_names == ["0", "1", "2", "3"]


def test_classification_metrics_errors() -> None:
    with pytest.raises(DataError, match="0 examples"):
        classification_metrics([], [], 3)
    with pytest.raises(LabelError, match=r"y_true has values in \[0, 3\].*num_classes is 3"):
        classification_metrics([0, 3], [0, 1], 3)
    with pytest.raises(LabelError, match=r"y_pred has values in \[-1, 1\]"):
        classification_metrics([0, 1], [-1, 1], 3)
    with pytest.raises(DataError, match="y_true has 2 labels but y_pred has 3"):
        classification_metrics([0, 1], [0, 1, 1], 3)
    with pytest.raises(ConfigError, match="class_names has 2 names but num_classes is 3"):
        classification_metrics([0, 1], [0, 1], 3, ["a", "b"])
    with pytest.raises(ConfigError, match="num_classes must be a positive integer, got 0"):
        classification_metrics([0], [0], 0)
    with pytest.raises(LabelError, match="integer class indices"):
        classification_metrics([0.5, 1.0], [0, 1], 3)


def test_predict_fixed_linear_model_in_batches() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [-2.0, -1.0], [0.5, 0.7]])
    data = TensorDataset(x, torch.tensor([0, 1, 1, 1, 1]), ["a", "b"])
    y_pred, y_true = predict(_identity_linear(), data, batch_size=2)
    assert y_pred.tolist() == [0, 1, 0, 1, 1]
    assert y_true.tolist() == [0, 1, 1, 1, 1]
    assert y_pred.dtype == torch.int64 and y_pred.device.type == "cpu"

    m = evaluate(_identity_linear(), data, batch_size=2, device="cpu")
    assert m.accuracy == pytest.approx(4 / 5)
    assert m.confusion == [[1, 0], [1, 3]]
    assert m.class_names == ["a", "b"]


class _ModeSpy(nn.Module):
    """Records whether it ran in training mode and with gradients enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.lin(x)


@pytest.mark.parametrize("start_training", [True, False])
def test_predict_runs_in_eval_no_grad_and_restores_mode(start_training: bool) -> None:
    model = _ModeSpy()
    model.train(start_training)
    data = TensorDataset(torch.randn(5, 2), torch.tensor([0, 1, 2, 0, 1]))
    predict(model, data, batch_size=2)
    assert model.seen == [(False, False)] * 3
    assert model.training is start_training
    assert model.lin.training is start_training


def test_predict_restores_mode_when_forward_raises() -> None:
    model = nn.Sequential(nn.Linear(3, 2))  # wrong input size for the data below
    model.train()
    data = TensorDataset(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(RuntimeError):
        predict(model, data)
    assert model.training


def test_predict_and_evaluate_errors() -> None:
    empty = TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), name="empty")
    with pytest.raises(DataError, match="'empty'.*0 examples"):
        predict(_identity_linear(), empty)
    with pytest.raises(DataError, match="0 examples"):
        evaluate(_identity_linear(), empty)
    data = TensorDataset(torch.tensor([[0.0, 5.0]]), torch.tensor([0]), ["only"])
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        predict(_identity_linear(), data, batch_size=0)
    with pytest.raises(DataError, match=r"output of shape \(2,\) for a batch of 1"):
        predict(nn.Flatten(0), data)


def test_evaluate_head_larger_than_data_counts_extra_classes_as_errors() -> None:
    """A 4-class head on 2-class data: predictions of classes 2 and 3 are wrong, not an error."""
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(4))
        lin.bias.zero_()
    x = torch.eye(4)[[0, 1, 3, 2, 1]]  # predicts 0, 1, 3, 2, 1
    data = TensorDataset(x, torch.tensor([0, 1, 1, 0, 1]), ["a", "b"], "two")
    m = evaluate(lin, data)
    # class a: TP=1 FN=1 (predicted 2) -> F1 2/3; class b: TP=2 FN=1 (predicted 3) -> F1 4/5
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.per_class_f1 == pytest.approx([2 / 3, 0.8])
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)
    assert m.confusion == [[1, 0], [0, 2]]
    assert (m.n, m.class_names) == (5, ["a", "b"])
    one = TensorDataset(torch.tensor([[0.0, 5.0]]), torch.tensor([0]), ["only"])
    assert evaluate(_identity_linear(), one).accuracy == 0.0  # predicts class 1 the data lacks


def test_evaluate_refuses_data_with_more_classes_than_the_head() -> None:
    from transferkit.models import create_model

    three = TensorDataset(torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2]), name="three")
    with pytest.raises(LabelError) as exc:
        evaluate(_identity_linear(), three)  # a plain module: found from its logits' width
    assert str(exc.value) == (
        "data 'three' has 3 classes but the model's head predicts 2; evaluate on data with the "
        "model's classes, or fine-tune a 3-class head first"
    )
    net = create_model("mlp", num_classes=10, in_features=4, hidden=(8,))
    twelve = TensorDataset(torch.randn(24, 7), torch.arange(24) % 12, name="x")  # wrong width too
    with pytest.raises(LabelError, match=r"^data 'x' has 12 classes but the model's head predicts 10; "):
        evaluate(net, twelve)  # refused before the forward pass (which would fail on 7 features)


def test_evaluate_cli_refuses_more_classes_than_the_head(tmp_path) -> None:
    from cli_helpers import assert_one_line_error, run
    from transferkit.models import create_model, save_model

    folder = save_model(create_model("mlp", num_classes=10, in_features=4, hidden=(8,)), tmp_path / "m")
    x = np.random.default_rng(0).normal(size=(240, 4)).astype(np.float32)
    np.savez(tmp_path / "twelve.npz", x=x, y=np.arange(240) % 12)
    result = run("evaluate", folder, "--data", tmp_path / "twelve.npz")
    assert_one_line_error(
        result,
        "data 'twelve/test' has 12 classes but the model's head predicts 10",
        "fine-tune a 12-class head first",
    )
    np.savez(tmp_path / "ten.npz", x=x, y=np.arange(240) % 10)
    ok = run("evaluate", folder, "--data", tmp_path / "ten.npz", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["n"] == 48  # the fixed 20% test split


# --------------------------------------------------------------------------- compare


def _three_methods() -> list[RunResult]:
    return [
        _run("t/scratch", "from scratch", 0.60, seed=0),
        _run("t/full", "full fine-tune", 0.85, seed=0),
        _run("t/bad", "bad source", 0.60, seed=0),
        _run("t/scratch", "from scratch", 0.70, seed=1),
        _run("t/full", "full fine-tune", 0.87, seed=1),
        _run("t/bad", "bad source", 0.66, seed=1),
    ]


def test_summarize_hand_computed() -> None:
    rows = summarize(_three_methods(), baseline="t/scratch")
    assert [r["name"] for r in rows] == ["t/scratch", "t/full", "t/bad"]
    base, full, bad = rows
    assert base["is_baseline"] and base["gain"] is None and base["significant"] is None
    assert base["negative_transfer"] is False
    assert base["n_seeds"] == 2
    assert base["accuracy_mean"] == pytest.approx(0.65)
    assert base["accuracy_std"] == pytest.approx(math.sqrt(0.005))  # ddof=1: (0.05²·2)/1
    assert base["macro_f1_mean"] == pytest.approx(0.55)
    assert base["seconds_mean"] == pytest.approx(2.5)
    assert full["method"] == "full fine-tune"
    assert full["accuracy_mean"] == pytest.approx(0.86)
    assert full["accuracy_std"] == pytest.approx(math.sqrt(0.0002))
    assert full["gain"] == pytest.approx(0.21)
    assert full["gain_macro_f1"] == pytest.approx(0.21)
    assert full["negative_transfer"] is False
    assert bad["gain"] == pytest.approx(-0.02)
    assert bad["negative_transfer"] is True


def test_significance_rule() -> None:
    rows = summarize(_three_methods(), baseline="t/scratch")
    # full: SE = sqrt(0.005/2 + 0.0002/2) = 0.0510; |0.21| > 0.102 -> significant
    assert rows[1]["significant"] is True
    # bad: SE = sqrt(0.005/2 + 0.0018/2) = 0.0583; |-0.02| < 0.117 -> not significant
    assert rows[2]["significant"] is False
    # exactly on the 2·SE edge is not significant: gain 0.1, stds 0.1 -> 2·SE = 2·sqrt(0.005+0.005)
    edge = [
        _run("b", "b", 0.5, 0), _run("b", "b", 0.5 + 0.1 * math.sqrt(2), 1),
        _run("m", "m", 0.6, 0), _run("m", "m", 0.6 + 0.1 * math.sqrt(2), 1),
    ]  # fmt: skip
    row = summarize(edge, "b")[1]
    assert row["gain"] == pytest.approx(0.1)
    assert row["significant"] is False  # 0.1 < 2 * sqrt(0.01/2 + 0.01/2) = 0.2
    # one seed on either side -> unknown
    one = summarize([_run("b", "b", 0.5), _run("m", "m", 0.9)], "b")
    assert one[1]["significant"] is None and one[1]["gain"] == pytest.approx(0.4)
    mixed = summarize([_run("b", "b", 0.5), _run("m", "m", 0.9), _run("m", "m", 0.8, 1)], "b")
    assert mixed[1]["significant"] is None


def test_summarize_errors() -> None:
    with pytest.raises(ConfigError, match=r"baseline 'nope' is not a run name.*'t/scratch'"):
        summarize(_three_methods(), baseline="nope")
    with pytest.raises(ConfigError, match="no runs"):
        summarize([], baseline="x")
    with pytest.raises(ConfigError, match=r"reserved key\(s\) \['accuracy'\]"):
        _run("a", "a", 0.5, extra={"accuracy": 1.0})
    with pytest.raises(ConfigError, match="must be a Metrics"):
        RunResult("a", "a", {"accuracy": 0.5}, 1.0)  # type: ignore[arg-type]


def test_format_table_marks_only_negative_row() -> None:
    table = format_table(summarize(_three_methods(), baseline="t/scratch"))
    lines = table.splitlines()
    assert len(lines) == 5  # header, rule, 3 rows
    base_line = next(ln for ln in lines if "t/scratch" in ln)
    full_line = next(ln for ln in lines if "t/full" in ln)
    bad_line = next(ln for ln in lines if "t/bad" in ln)
    assert "(baseline)" in base_line and "NEGATIVE TRANSFER" not in base_line
    assert "+21.0 pp" in full_line and "NEGATIVE TRANSFER" not in full_line
    assert "-2.0 pp  NEGATIVE TRANSFER" in bad_line and "(n.s.)" in bad_line
    assert table.count("NEGATIVE TRANSFER") == 1
    assert "86.0 ± 1.4 %" in full_line
    # columns are aligned: the accuracy column ends at the same offset on every row
    ends = {ln.index(" %") for ln in lines[2:]}
    assert len(ends) == 1


def test_run_to_dict() -> None:
    run = _run("a", "m", 0.5, seed=3, history=[{"epoch": 1, "val_accuracy": 0.4}], extra={"k": 1})
    d = run.to_dict()
    assert d["name"] == "a" and d["method"] == "m" and d["seed"] == 3 and d["k"] == 1
    assert d["accuracy"] == 0.5 and d["macro_f1"] == pytest.approx(0.4) and d["seconds"] == 5.0
    assert d["confusion"] == [[5, 1], [2, 4]]
    assert d["history"] == [{"epoch": 1, "val_accuracy": 0.4}]


# --------------------------------------------------------------------------- reports


def test_write_metrics_json_round_trip(tmp_path) -> None:
    runs = _three_methods()
    path = write_metrics_json(tmp_path / "sub" / "metrics.json", runs, "t/scratch", {"task": "t"})
    obj = json.loads(path.read_text())
    assert obj["baseline"] == "t/scratch" and obj["task"] == "t"
    assert len(obj["runs"]) == 6
    for rd in obj["runs"]:
        assert {"name", "method", "accuracy", "macro_f1", "seconds"} <= rd.keys()
    assert obj["runs"][1]["accuracy"] == 0.85
    assert [r["name"] for r in obj["summary"]] == ["t/scratch", "t/full", "t/bad"]
    assert obj["summary"][2]["negative_transfer"] is True
    assert not list(tmp_path.glob("sub/.*.tmp"))
    with pytest.raises(ConfigError, match=r"reserved key\(s\) \['runs'\]"):
        write_metrics_json(tmp_path / "m.json", runs, "t/scratch", {"runs": []})
    with pytest.raises(ConfigError, match="baseline 'x'"):
        write_metrics_json(tmp_path / "m.json", runs, "x")
    assert not (tmp_path / "m.json").exists()


def test_write_report(tmp_path) -> None:
    runs = _three_methods()
    for r in runs:
        r.history = [
            {"epoch": e, "train_loss": 1.0 / e, "val_accuracy": r.metrics.accuracy * e / 3} for e in (1, 2, 3)
        ]
    runs.append(_run("t/<script>x</script>", "evil & co", 0.5))  # one seed, no history
    path = write_report(
        tmp_path / "out", runs, "t/scratch", title="My <report>", notes=["note <b>1</b>", "n2"]
    )
    assert path == tmp_path / "out" / "report.html"
    text = path.read_text()
    imgs = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', text)
    assert len(imgs) == 3
    assert all(base64.b64decode(b).startswith(b"\x89PNG") for b in imgs)
    for name in ("curves.png", "accuracy.png", "confusion.png"):
        png = (tmp_path / "out" / name).read_bytes()
        assert png.startswith(b"\x89PNG")
    assert base64.b64decode(imgs[2]) == (tmp_path / "out" / "confusion.png").read_bytes()
    assert '<table class="summary">' in text and text.count("<tr") == 1 + 4
    assert "(baseline)" in text and "+21.0 pp" in text
    neg_rows = re.findall(r'<tr class="negative">.*?</tr>', text)
    assert len(neg_rows) == 2 and any("t/bad" in r for r in neg_rows)
    assert "NEGATIVE TRANSFER" in neg_rows[0]
    assert "<script>" not in text and "&lt;script&gt;" in text and "evil &amp; co" in text
    assert "<title>My &lt;report&gt;</title>" in text
    assert "<li>note &lt;b&gt;1&lt;/b&gt;</li>" in text and "<li>n2</li>" in text
    assert "How to read this" in text
    assert "Confusion matrix of the best run: full fine-tune (t/full, seed 0)" in text
    with pytest.raises(ConfigError, match="baseline 'zzz'"):
        write_report(tmp_path / "o2", runs, "zzz")


def test_gain_in_macro_f1_for_classes_of_different_sizes(tmp_path) -> None:
    def run(name: str, acc: float, f1: float, seed: int) -> RunResult:
        m = Metrics(accuracy=acc, macro_f1=f1, per_class_f1=[f1, f1], confusion=[[5, 1], [2, 4]], n=12,
                    class_names=["cat", "dog"])
        return RunResult(name=name, method=name, metrics=m, seconds=1.0, seed=seed)

    # the baseline predicts the large class: high accuracy, low macro-F1
    runs = [run("scratch", 0.80, 0.30, 0), run("scratch", 0.78, 0.32, 1),
            run("transfer", 0.70, 0.60, 0), run("transfer", 0.72, 0.62, 1),
            run("tfidf", 0.50, 0.20, 0), run("tfidf", 0.50, 0.20, 1)]
    runs[4].extra["reference"] = runs[5].extra["reference"] = True
    by_acc = {r["name"]: r for r in summarize(runs, "scratch")}
    assert by_acc["transfer"]["gain"] == pytest.approx(-0.08) and by_acc["transfer"]["negative_transfer"]
    rows = summarize(runs, "scratch", "macro_f1")
    by_f1 = {r["name"]: r for r in rows}
    assert by_f1["transfer"]["gain"] == pytest.approx(0.30) and not by_f1["transfer"]["negative_transfer"]
    assert by_f1["transfer"]["significant"] is True and by_f1["transfer"]["gain_metric"] == "macro_f1"
    assert by_f1["tfidf"]["gain"] == pytest.approx(-0.11) and not by_f1["tfidf"]["negative_transfer"]
    table = format_table(rows)
    assert "gain vs baseline (macro-F1)" in table and "+30.0 pp" in table
    assert "-11.0 pp  (reference, no model transferred)" in table
    write_metrics_json(tmp_path / "m.json", runs, "scratch", metric="macro_f1")
    assert json.loads((tmp_path / "m.json").read_text())["summary"][1]["gain"] == pytest.approx(0.30)
    html_text = write_report(tmp_path, runs, "scratch", metric="macro_f1").read_text()
    assert "gain vs baseline (macro-F1)" in html_text and "difference in mean macro-F1" in html_text
    with pytest.raises(ConfigError, match="gain metric must be one of accuracy, macro_f1, got 'f1'"):
        summarize(runs, "scratch", "f1")
