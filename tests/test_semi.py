"""Learning from unlabelled target data: pseudo-labelling (FlexMatch thresholds), FixMatch, Mean Teacher,
KD on an unlabelled transfer set, the engine's unlabelled batches, and --unlabeled on the CLIs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cli_helpers import assert_one_line_error, run
from transferkit.data import DataSplits, few_shot, without_labels
from transferkit.engine import CrossEntropy, TrainConfig, Trainer
from transferkit.engine.batches import EpochOrder
from transferkit.engine.objectives import Batch
from transferkit.evaluation import evaluate
from transferkit.models import create_model
from transferkit.transfer.distill import LogitKD, Teacher
from transferkit.transfer.semi import ConfidenceMask, FixMatch, MeanTeacher, PseudoLabel


def _batch(logits: torch.Tensor, target_logits: torch.Tensor, **kw) -> Batch:
    n = len(logits)
    return Batch(x=torch.zeros(n, 2), y=torch.zeros(n, dtype=torch.long), logits=logits,
                 features=torch.zeros(n, 2), target_logits=target_logits,
                 target_features=torch.zeros(len(target_logits), 2), **kw)


# ----------------------------------------------------------------------------- the terms, by hand
def test_flexmatch_thresholds_follow_how_many_examples_each_class_has_learnt():
    mask = ConfidenceMask(tau=0.9, flex=True)
    mask.setup(6, torch.device("cpu"))
    assert torch.equal(mask.thresholds(3), torch.zeros(3))  # warm-up: nothing learnt yet
    mask.learnt = torch.tensor([0, 0, 0, 1, -1, -1])
    # sigma = (3, 1, 0), 2 unused: beta = sigma / max(3, 2) = (1, 1/3, 0); M(x) = x / (2 - x)
    assert torch.allclose(mask.thresholds(3), torch.tensor([0.9, 0.9 * (1 / 3) / (5 / 3), 0.0]))
    probs = torch.tensor([[0.95, 0.05, 0.0], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4]])
    labels, keep = mask(probs, torch.tensor([4, 5, 0]))
    assert labels.tolist() == [0, 1, 0] and keep.tolist() == [1.0, 1.0, 0.0]  # 0.5 < 0.9 for class 0
    assert mask.learnt.tolist() == [0, 0, 0, 1, 0, -1]  # only the prediction above tau is remembered
    fixed = ConfidenceMask(tau=0.9, flex=False)
    assert fixed(probs)[1].tolist() == [1.0, 0.0, 0.0]


def test_pseudo_label_is_cross_entropy_on_the_confident_unlabelled_predictions_only():
    target = torch.tensor([[4.0, 0.0], [0.2, 0.0], [0.0, 3.0]])  # confidences 0.98, 0.55, 0.95
    term = PseudoLabel(tau=0.9)
    loss = term(_batch(torch.zeros(2, 2), target))
    want = (F.cross_entropy(target[0:1], torch.tensor([0]))
            + F.cross_entropy(target[2:3], torch.tensor([1]))) / 3
    assert math.isclose(float(loss), float(want), rel_tol=1e-6) and term.mask_rate == pytest.approx(2 / 3)


def test_fixmatch_labels_the_strong_view_with_the_weak_views_confident_prediction():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.mul_(10)
    weak, strong = torch.randn(8, 4), torch.randn(8, 4)
    term = FixMatch(tau=0.8)
    loss = term(_batch(torch.zeros(2, 3), torch.zeros(8, 3), model=model, target_views=(weak, strong)))
    probs = torch.softmax(model(weak), 1)
    keep = (probs.max(1).values >= 0.8).float()
    want = (F.cross_entropy(model(strong), probs.argmax(1), reduction="none") * keep).mean()
    assert 0 < keep.sum() < 8 and torch.allclose(loss, want)
    loss.backward()  # the strong view carries the gradient
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


def test_fixmatch_on_inputs_without_views_says_which_methods_work_there():
    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match="use pseudo_label or mean_teacher on other inputs"):
        FixMatch()(_batch(torch.zeros(2, 3), torch.zeros(4, 3), model=nn.Linear(3, 3)))


def test_mean_teacher_keeps_an_exponential_average_of_the_student():
    from transferkit.engine.context import FitContext

    student = nn.Linear(3, 2)
    term = MeanTeacher(decay=0.9, views=False)
    term.setup(FitContext(model=student, device=torch.device("cpu"), config=TrainConfig()))
    start = term.teacher.weight.detach().clone()
    assert torch.equal(start, student.weight) and not term.teacher.weight.requires_grad
    assert not [p for p in term.parameters() if p.requires_grad]  # nothing for the optimiser
    with torch.no_grad():
        student.weight.add_(1.0)
    x = torch.randn(5, 3)
    loss = term(_batch(torch.zeros(2, 2), student(x), model=student, target_x=x))
    assert torch.allclose(term.teacher.weight, 0.9 * start + 0.1 * student.weight)
    want = ((torch.softmax(student(x), 1) - torch.softmax(term.teacher(x), 1)) ** 2).mean()
    assert torch.allclose(loss, want) and "teacher.weight" in term.state_dict()  # kept in checkpoints


def test_the_unlabelled_batch_is_ratio_times_the_labelled_one():
    order = EpochOrder(10, 4, seed=0, target_size=100, target_ratio=7)
    sizes = [(len(i), len(t)) for i, t in order.batches(0)]
    assert sizes == [(4, 28), (4, 28), (2, 14)]
    drawn = torch.cat([t for _, t in order.batches(0)])
    assert len(set(drawn.tolist())) == 70  # no example twice before the pool is used up


def test_without_labels_drops_the_labels_and_draws_a_seeded_subset(digits):
    pool = without_labels(digits.train, 100, seed=3)
    assert len(pool) == 100 and int(pool.y.abs().sum()) == 0 and "unlabelled" in pool.name
    assert torch.equal(pool.x, without_labels(digits.train, 100, seed=3).x)
    assert len(without_labels(digits.train)) == len(digits.train)


# ----------------------------------------------------------------------------- through the engine
def _few(digits, shots: int = 3, seed: int = 0) -> DataSplits:
    return DataSplits(few_shot(digits.train, shots, seed), few_shot(digits.val, shots, seed), digits.test)


def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=10, in_features=64, hidden=(64,))


@pytest.fixture(scope="module")
def digits_mlp(digits):
    """An MLP trained on 300 real digits: a source whose features a linear probe reads."""
    model = _mlp()
    Trainer(model, TrainConfig(epochs=10, lr=3e-3, backbone_lr_scale=1.0, seed=0)).fit(
        digits.train.subset(torch.arange(300)))
    return model.eval()


def test_pseudo_labels_kept_by_the_threshold_are_right_more_often_and_a_frozen_pool_is_read_once(
        digits, digits_mlp, monkeypatch):
    import copy

    import transferkit.engine.predict as predict

    few = _few(digits, shots=2)
    pool = without_labels(digits.train)
    calls = []
    real = predict.predict_features
    monkeypatch.setattr(predict, "predict_features",
                        lambda m, d, *a, **k: calls.append(d) or real(m, d, *a, **k))
    cfg = TrainConfig(epochs=40, batch_size=10, lr=3e-2, strategy="linear_probe", seed=0, unlabeled_ratio=8)
    for _ in range(2):  # two fits (two seeds or arms of a workflow) through the same frozen backbone
        model = copy.deepcopy(digits_mlp)
        history = Trainer(model, cfg, [CrossEntropy(), PseudoLabel(tau=0.8)]).fit(few.train, few.val,
                                                                                  target=pool)
    assert sum(d is pool for d in calls) == 1  # the pool's features were computed once
    assert max(row["loss_pseudo_label"] for row in history.epochs) > 0  # the term was active
    with torch.no_grad():
        probs = torch.softmax(model(pool.x), 1)
    labels, keep = ConfidenceMask(0.8, flex=False)(probs)
    right = (labels == digits.train.y).float()
    assert 0.05 < float(keep.mean()) < 1.0
    assert float(right[keep > 0].mean()) > float(right.mean()) + 0.05  # measured 0.96 vs 0.83


def test_kd_on_an_unlabelled_transfer_set_reads_the_teachers_table_by_position(digits):
    torch.manual_seed(0)
    teacher = create_model("mlp", num_classes=10, in_features=64, hidden=(64,))
    Trainer(teacher, TrainConfig(epochs=20, lr=3e-3, backbone_lr_scale=1.0, seed=0)).fit(digits.train)
    # 3 labels per class; validation on all 360 validation digits (30 would stop both arms at once)
    few = DataSplits(few_shot(digits.train, 3, 0), digits.val, digits.test)
    pool = without_labels(digits.train)
    cfg = TrainConfig(epochs=30, batch_size=10, lr=1e-2, backbone_lr_scale=1.0, seed=0, unlabeled_ratio=8)
    seen = []
    precomputed = Teacher(teacher, precompute=True)
    live = Teacher(teacher)
    original = precomputed.target_logits

    def check(batch):
        got = original(batch)
        seen.append(torch.allclose(got, live.target_logits(batch), atol=1e-5))
        return got

    precomputed.target_logits = check
    kd = LogitKD(precomputed, temperature=2.0, unlabeled=True)
    assert kd.uses_target and not kd.head_only
    student = _mlp(1)
    Trainer(student, cfg, [CrossEntropy(weight=0.1), kd]).fit(few.train, few.val, target=pool)
    alone = _mlp(1)
    Trainer(alone, cfg).fit(few.train, few.val)
    assert seen and all(seen)
    kd_acc, alone_acc = evaluate(student, digits.test).accuracy, evaluate(alone, digits.test).accuracy
    assert kd_acc > alone_acc + 0.1, (kd_acc, alone_acc)  # measured 0.935 (teacher 0.946)


# ----------------------------------------------------------------------------- the CLIs
def test_finetune_unlabeled_adds_a_scratch_arm_with_the_same_method_and_never_flags_it(digits_source,
                                                                                      tmp_path):
    out = tmp_path / "ft"
    result = run("finetune", "--source", digits_source, "--data", "digits", "--shots", "3", "--epochs", "3",
                 "--seeds", "0", "--unlabeled", "rest", "-m", "pseudo_label:tau=0.5", "--out", out,
                 "train.unlabeled_ratio=2", "data.unlabeled_size=300")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {r["name"]: r for r in metrics["summary"]}
    assert set(rows) == {"finetune/full+pseudo_label", "finetune/scratch", "finetune/scratch+pseudo_label"}
    assert rows["finetune/scratch+pseudo_label"]["reference"] == "no source: what the unlabelled data brings"
    assert not rows["finetune/scratch+pseudo_label"]["negative_transfer"]
    assert "(no source: what the unlabelled data brings)" in result.output
    run_json = json.loads((out / "run.json").read_text())
    assert "unlabeled" in run_json["identity"]  # a resumed run with other unlabelled data is refused


def test_unlabelled_data_and_the_methods_that_read_it_come_together(digits_source, tmp_path):
    needs = run("finetune", "--source", digits_source, "--data", "digits", "--shots", "3", "-m", "fixmatch",
                "--out", tmp_path / "a")
    assert_one_line_error(needs, "fixmatch learns from unlabelled examples", "--unlabeled rest")
    unused = run("finetune", "--source", digits_source, "--data", "digits", "--shots", "3", "--unlabeled",
                 "rest", "--out", tmp_path / "b")
    assert_one_line_error(unused, "--unlabeled (data.unlabeled) is given but no method reads", "fixmatch")
    kind = run("finetune", "--source", digits_source, "--data", "digits", "--shots", "3", "-m", "fixmatch",
               "--unlabeled", "20newsgroups", "--out", tmp_path / "c")
    assert_one_line_error(kind, "holds texts but the target 'digits' holds images or vectors")
    (tmp_path / "texts.txt").write_text("a text\nanother text\n")
    txt = run("finetune", "--source", digits_source, "--data", "digits", "--shots", "3", "-m", "fixmatch",
              "--unlabeled", tmp_path / "texts.txt", "--out", tmp_path / "d")
    assert_one_line_error(txt, "texts.txt' holds texts but the target 'digits' holds images or vectors")
    same = run("finetune", "--source", digits_source, "--data", "digits", "--shots", "3", "-m", "fixmatch",
               "--unlabeled", "digits", "--out", tmp_path / "e")
    assert_one_line_error(same, "unlabeled data 'digits' is (part of) the target data 'digits'",
                          "--unlabeled rest")
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_distill_unlabeled_distils_on_the_transfer_set(digits_source, tmp_path):
    out = tmp_path / "d"
    result = run("distill", "--teacher", digits_source, "--student", "narrow:2", "--data", "digits",
                 "--shots", "3", "--epochs", "3", "--seeds", "0", "--unlabeled", "rest", "-m", "kd",
                 "--out", out, "train.unlabeled_ratio=4")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["about"]["recipe"]["unlabeled"].endswith("rest, 4 per labelled example in a step")
    saved = (out / "config.yaml").read_text()
    assert "unlabeled: rest" in saved


def test_a_chained_arm_gets_the_models_its_seed_trained_before_it(digits, tmp_path):
    from transferkit.workflows import Arm, run_arms

    seen: list[tuple[list[str], float]] = []

    def chained(earlier):
        first = earlier.get("first")
        total = float(first.head.weight.detach().sum()) if first is not None else math.nan
        seen.append((sorted(earlier), total))
        return [CrossEntropy()]

    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-2, backbone_lr_scale=1.0)
    arms = [Arm("first", "first", "mlp", cfg, kwargs={"in_features": 64, "hidden": (8,)}),
            Arm("second", "second", "mlp", cfg, kwargs={"in_features": 64, "hidden": (8,)},
                objectives=chained, chained=True)]
    result = run_arms(arms, digits, seeds=[0, 1], shots=3, out_dir=tmp_path / "o", baseline="first")
    assert [names for names, _ in seen] == [[], ["first"], ["first"]]  # preflight, then one per seed
    assert seen[1][1] != seen[2][1]  # each seed's own first model
    assert {r.name for r in result.runs} == {"first", "second"}


def test_distill_noisy_student_rounds_are_arms_of_the_report(digits_source, tmp_path):
    out = tmp_path / "ns"
    result = run("distill", "--teacher", digits_source, "--student", "narrow:2", "--data", "digits",
                 "--shots", "3", "--epochs", "2", "--seeds", "0", "--unlabeled", "rest", "-m", "kd",
                 "--out", out, "rounds=3", "train.augment=[noise]")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    names = [r["name"] for r in metrics["summary"]]
    assert names == ["distill/kd", "distill/kd/round2", "distill/kd/round3", "distill/scratch"]
    assert metrics["about"]["recipe"]["rounds"] == 3
    assert "Noisy-student rounds: 3" in (out / "report.html").read_text()


def test_features_are_shared_only_between_models_that_compute_the_same_features():
    from transferkit.engine.predict import backbone_digest

    torch.manual_seed(0)
    a = create_model("small_cnn", num_classes=10, in_channels=1, image_size=16)
    b = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    b.backbone.load_state_dict(a.backbone.state_dict())  # the same weights, another input size
    same = create_model("small_cnn", num_classes=10, in_channels=1, image_size=16)
    same.load_state_dict(a.state_dict())
    same.head.reset_parameters()  # the head is not part of the features
    assert backbone_digest(a) == backbone_digest(same) and backbone_digest(a) != backbone_digest(b)


def test_finetune_distils_the_source_on_the_unlabelled_data_when_kd_asks(digits_source, tmp_path):
    out = tmp_path / "kd"
    result = run("finetune", "--source", digits_source, "--data", "digits", "--shots", "3", "--epochs", "2",
                 "--seeds", "0", "--unlabeled", "rest", "-m", "kd:unlabeled=true", "--out", out)
    assert result.exit_code == 0, result.output
    names = [r["name"] for r in json.loads((out / "metrics.json").read_text())["summary"]]
    assert names == ["finetune/full+kd", "finetune/scratch"]  # kd needs the source: no scratch twin


def test_mean_teacher_on_texts_compares_the_batch_as_it_is():
    from test_text_models import _sentiment

    student = create_model("text_transformer", num_classes=2, hidden=32, heads=2, layers=1)
    texts = _sentiment(32, 0, "t")
    term = MeanTeacher(weight=1.0)  # views=True by default: texts have none, so the batch as it is
    history = Trainer(student, TrainConfig(epochs=2, batch_size=8, lr=1e-3, backbone_lr_scale=1.0),
                      [CrossEntropy(), term]).fit(texts, target=without_labels(_sentiment(40, 1, "u")))
    assert not term.needs_views and all(math.isfinite(r["loss_mean_teacher"]) for r in history.epochs)


def test_datasets_that_may_share_examples_are_recognised(tmp_path):
    """The target data under another name, a corpus and its domain, or a folder and a path in it
    overlap (an unlabelled pool of them would hold held-out target examples); others don't."""
    from transferkit.workflows.finetune import overlaps

    assert overlaps("digits", "Digits") and overlaps("mnist5k", "mnist-5k")
    assert overlaps("tweets", "tweets:apple") and overlaps("tweets:apple", "TWEETS")
    assert not overlaps("tweets:apple", "tweets:airline") and not overlaps("digits", "mnist5k")
    (tmp_path / "imgs" / "test").mkdir(parents=True)
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("x")
    assert overlaps(str(tmp_path / "imgs"), str(tmp_path / "imgs" / "test"))
    assert overlaps(str(tmp_path / "a.txt"), str(tmp_path / "." / "a.txt"))
    assert not overlaps(str(tmp_path / "a.txt"), str(tmp_path / "b.txt"))
    assert not overlaps(str(tmp_path / "a.txt"), "digits")
