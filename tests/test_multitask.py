"""Multi-task learning in the one engine: task sets, sampling, loss weighting, gradient surgery."""

from __future__ import annotations

import math

import pytest
import torch

from transferkit.data import TensorDataset
from transferkit.data.tasks import TaskSet, task_probabilities
from transferkit.engine import TrainConfig, Trainer
from transferkit.engine.batches import TaskBatches
from transferkit.errors import ConfigError
from transferkit.evaluation import evaluate
from transferkit.models import create_model, set_task_heads, task_model
from transferkit.multitask import MultiTask, cagrad, dwa_weights, gradnorm_loss, pcgrad, uncertainty_loss


# ------------------------------------------------------------------------------ by hand
def test_pcgrad_projects_conflicting_gradients():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    # g1 . g2 = -1 < 0: g1 - (-1/2) g2 = (0.5, 0.5); g2 - (-1/1) g1 = (0, 1); their sum
    assert torch.allclose(pcgrad(g), torch.tensor([0.5, 1.5]))
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(pcgrad(agreeing), agreeing.sum(0))  # no conflict: the plain sum


def test_cagrad_by_hand():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mean = g.mean(0)
    assert torch.allclose(cagrad(g, c=0.0), mean, atol=1e-6)
    # symmetric tasks: w = (1/2, 1/2), g_w = g0, d = (1 + c) g0 / (1 + c^2)
    assert torch.allclose(cagrad(g, c=0.5), (1.5 / 1.25) * mean, atol=1e-4)
    conflict = torch.tensor([[1.0, 0.2], [-0.8, 1.0]])
    d, g0 = cagrad(conflict, c=0.5), conflict.mean(0)
    # the worst-off task gains at least as much as with the average gradient
    assert float((conflict @ d).min()) >= float((conflict @ g0).min())


def test_weightings_by_hand():
    losses, s = torch.tensor([2.0, 0.5]), torch.tensor([0.0, math.log(4.0)])
    assert float(uncertainty_loss(losses, s)) == pytest.approx(2.0 + 0.5 / 4 + 0.5 * math.log(4.0))
    assert torch.equal(dwa_weights(torch.zeros(3), torch.zeros(3)), torch.ones(3))  # first epochs
    w = dwa_weights(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]), temperature=1.0)
    e = [math.exp(0.5), math.exp(1.0)]
    assert torch.allclose(w, torch.tensor([2 * e[0] / sum(e), 2 * e[1] / sum(e)]))
    norms, now, first = torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0])
    # ratios 0.5, 1 -> relative 2/3, 4/3; target mean(G)=2 times those (alpha 1): 4/3, 8/3
    assert float(gradnorm_loss(norms, now, first, alpha=1.0)) == pytest.approx(1 / 3 + 1 / 3)


def test_task_probabilities():
    sizes = {"a": 100, "b": 400}
    assert task_probabilities(sizes, "proportional") == pytest.approx({"a": 0.2, "b": 0.8})
    assert task_probabilities(sizes, "uniform") == pytest.approx({"a": 0.5, "b": 0.5})
    assert task_probabilities(sizes, "temperature", 2.0) == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    with pytest.raises(ConfigError, match="sampling must be one of"):
        task_probabilities(sizes, "random")


def _tiny(n: int, classes: int, name: str, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 4, generator=g), torch.arange(n) % classes, name=name)


def test_task_batches_all_and_sampled():
    tasks = TaskSet({"a": _tiny(100, 2, "a", 0), "b": _tiny(30, 3, "b", 1)})
    batches = TaskBatches(tasks, batch_size=20, seed=0)
    assert len(batches) == 5  # one pass over the largest task
    steps = list(batches.epoch(0))
    assert all(set(ex.tasks) == {"a", "b"} and len(ex.tasks["b"]) == 20 for ex in steps)
    seen_a = torch.cat([ex.tasks["a"].index for ex in steps])
    assert sorted(seen_a.tolist()) == list(range(100))  # every example of the largest task once
    again = [ex.tasks["b"].index for ex in TaskBatches(tasks, batch_size=20, seed=0).epoch(0)]
    assert all(torch.equal(x, ex.tasks["b"].index) for x, ex in zip(again, steps, strict=True))  # resumable
    sampled = TaskSet({"a": _tiny(900, 2, "a", 0), "b": _tiny(100, 3, "b", 1)}, sampling="proportional")
    picks = [ex.task for e in range(4) for ex in TaskBatches(sampled, batch_size=10, seed=0).epoch(e)]
    assert len(picks) == 400 and 0.83 < picks.count("a") / len(picks) < 0.97


# ------------------------------------------------------------------------------ training
def _parity(ds: TensorDataset) -> TensorDataset:
    return TensorDataset(ds.x, ds.y % 2, classes=["even", "odd"], name=f"{ds.name}-parity")


def _two_tasks(digits, sampling="all"):
    train = TaskSet({"digit": digits.train, "parity": _parity(digits.train)}, sampling=sampling)
    val = TaskSet({"digit": digits.val, "parity": _parity(digits.val)})
    return train, val


def _model():
    torch.manual_seed(0)
    return set_task_heads(create_model("mlp", num_classes=10, in_features=64, hidden=(32,)),
                          {"digit": 10, "parity": 2})


@pytest.mark.parametrize("options", [
    {}, {"weighting": "uncertainty"}, {"weighting": "dwa"}, {"weighting": "gradnorm"},
    {"surgery": "pcgrad"}, {"surgery": "cagrad"}, {"weighting": "uncertainty", "surgery": "pcgrad"},
])
def test_both_tasks_are_learned(digits, options):
    train, val = _two_tasks(digits)
    model = _model()
    history = Trainer(model, TrainConfig(epochs=4, lr=1e-2, backbone_lr_scale=1.0, batch_size=64),
                      [MultiTask(**options)]).fit(train, val)
    last = history.epochs[-1]
    assert {"val_accuracy_digit", "val_accuracy_parity", "loss_digit", "weight_parity"} <= set(last)
    digit = evaluate(task_model(model, "digit"), digits.test).accuracy
    parity = evaluate(task_model(model, "parity"), _parity(digits.test)).accuracy
    assert digit > 0.75 and parity > 0.75, (digit, parity)
    best = history.epochs[history.best_epoch - 1]
    mean = (best["val_accuracy_digit"] + best["val_accuracy_parity"]) / 2
    assert best["val_accuracy"] == pytest.approx(mean)
    if options.get("weighting") in ("uncertainty", "gradnorm", "dwa"):
        weights = [e["weight_digit"] for e in history.epochs]
        assert len(set(weights)) > 1  # the weights move


def test_sampled_tasks_train_too(digits):
    train, val = _two_tasks(digits, sampling="temperature")
    model = _model()
    Trainer(model, TrainConfig(epochs=3, lr=1e-2, backbone_lr_scale=1.0, batch_size=64),
            [MultiTask(weighting="uncertainty")]).fit(train, val)
    assert evaluate(task_model(model, "parity"), _parity(digits.test)).accuracy > 0.7


def test_killed_run_resumes_to_the_same_weights(digits, tmp_path, monkeypatch):
    train, val = _two_tasks(digits)
    cfg = TrainConfig(epochs=4, lr=1e-2, backbone_lr_scale=1.0, batch_size=64)
    straight = _model()
    Trainer(straight, cfg, [MultiTask(weighting="dwa")], run_dir=tmp_path / "a").fit(train, val)
    original = Trainer._run_epoch

    def killed(self, epoch, *args, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_run_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_model(), cfg, [MultiTask(weighting="dwa")], run_dir=tmp_path / "b").fit(train, val)
    monkeypatch.setattr(Trainer, "_run_epoch", original)
    resumed = _model()
    Trainer(resumed, cfg, [MultiTask(weighting="dwa")], run_dir=tmp_path / "b").fit(train, val, resume=True)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


def test_errors_name_the_fix(digits):
    train, val = _two_tasks(digits)
    cfg = TrainConfig(epochs=1)
    with pytest.raises(ConfigError, match="multitask objective"):
        Trainer(_model(), cfg).fit(train, val)
    plain = create_model("mlp", num_classes=10, in_features=64, hidden=(8,))
    with pytest.raises(ConfigError, match="no head for task\\(s\\) digit, parity.*set_task_heads"):
        Trainer(plain, cfg, [MultiTask()]).fit(train, val)
    sampled, _ = _two_tasks(digits, sampling="uniform")
    with pytest.raises(ConfigError, match="pcgrad combines every task's gradient.*sampling='all'"):
        Trainer(_model(), cfg, [MultiTask(surgery="pcgrad")]).fit(sampled, val)
    with pytest.raises(ConfigError, match="validation TaskSet's tasks \\(digit\\) differ"):
        Trainer(_model(), cfg, [MultiTask()]).fit(train, TaskSet({"digit": digits.val}))
    with pytest.raises(ConfigError, match="task_weights names unknown"):
        Trainer(_model(), cfg, [MultiTask(task_weights={"cats": 2.0})]).fit(train, val)
    with pytest.raises(ConfigError, match="c=1: must be < 1"):
        MultiTask(surgery="cagrad", c=1)


def test_each_task_trains_with_its_own_objectives(digits):
    """A task whose only objective is weighted 0 learns nothing; the other learns as usual."""
    from transferkit.engine.objectives import CrossEntropy

    train, val = _two_tasks(digits)
    model = _model()
    Trainer(model, TrainConfig(epochs=3, lr=1e-2, backbone_lr_scale=1.0, batch_size=64),
            [MultiTask(task_objectives={"parity": [CrossEntropy(weight=0.0)]})]).fit(train, val)
    assert evaluate(task_model(model, "digit"), digits.test).accuracy > 0.75
    assert evaluate(task_model(model, "parity"), _parity(digits.test)).accuracy < 0.65


@pytest.mark.parametrize("options", [{"surgery": "pcgrad"}, {"weighting": "gradnorm"}])
def test_frozen_backbone_leaves_nothing_to_share(digits, options):
    """A linear probe per task: surgery and GradNorm have no shared parameter to act on; the heads learn."""
    train, val = _two_tasks(digits)
    model = _model()
    before = [p.clone() for p in model.backbone.parameters()]
    Trainer(model, TrainConfig(epochs=2, lr=1e-2, strategy="linear_probe", batch_size=64),
            [MultiTask(**options)]).fit(train, val)
    assert all(torch.equal(a, b) for a, b in zip(before, model.backbone.parameters(), strict=True))
    assert evaluate(task_model(model, "parity"), _parity(digits.test)).accuracy > 0.55


def test_augmentation_is_refused_for_task_batches(digits):
    train, val = _two_tasks(digits)
    with pytest.raises(ConfigError, match="train.augment is not applied to multi-task batches"):
        Trainer(_model(), TrainConfig(epochs=1, augment=["noise"]), [MultiTask()]).fit(train, val)


def test_text_tasks_share_one_encoder():
    """Two text tasks (the sentiment word's polarity; whether the text is long) on one small transformer:
    each task's texts are tokenised for the model and batched on their own."""
    from test_text_models import _sentiment
    from transferkit.data import TextDataset

    def length_task(data: TextDataset) -> TextDataset:
        y = torch.tensor([int(len(t.split()) > 7) for t in data.texts])
        return TextDataset(list(data.texts), y, ["short", "long"], f"{data.name}-length")

    train, test = _sentiment(256, 0, "train"), _sentiment(128, 1, "test")
    torch.manual_seed(0)
    model = set_task_heads(create_model("text_transformer", num_classes=2, hidden=32, heads=2, layers=1,
                                        dropout=0.0), {"polarity": 2, "length": 2})
    tasks = TaskSet({"polarity": train, "length": length_task(train)})
    Trainer(model, TrainConfig(epochs=6, lr=3e-3, backbone_lr_scale=1.0, batch_size=32),
            [MultiTask(weighting="uncertainty")]).fit(tasks)
    assert evaluate(task_model(model, "polarity"), test).accuracy > 0.8
    assert evaluate(task_model(model, "length"), length_task(test)).accuracy > 0.7


def test_several_teachers_distil_into_one_multi_task_student(digits):
    """Each task's head learns from its own teacher's soft labels alone (no labels): multi-teacher
    distillation of single-task models into one student, through the same step."""
    from transferkit.transfer.distill import LogitKD, Teacher

    train, val = _two_tasks(digits)
    teachers = {}
    for task, data, classes in (("digit", digits.train, 10), ("parity", _parity(digits.train), 2)):
        torch.manual_seed(1)
        teacher = create_model("mlp", num_classes=classes, in_features=64, hidden=(64,))
        Trainer(teacher, TrainConfig(epochs=4, lr=1e-2, backbone_lr_scale=1.0)).fit(data)
        teachers[task] = teacher.eval()
    model = _model()
    kd = {t: [LogitKD(Teacher(m), temperature=2.0)] for t, m in teachers.items()}
    Trainer(model, TrainConfig(epochs=4, lr=1e-2, backbone_lr_scale=1.0, batch_size=64),
            [MultiTask(task_objectives=kd)]).fit(train, val)
    assert evaluate(task_model(model, "digit"), digits.test).accuracy > 0.75
    assert evaluate(task_model(model, "parity"), _parity(digits.test)).accuracy > 0.75


def test_a_task_weight_scales_its_share(digits):
    """Fixed task weights (an auxiliary task below 1): at 0 a task's head learns nothing, the other does."""
    train, val = _two_tasks(digits)
    model = _model()
    history = Trainer(model, TrainConfig(epochs=3, lr=1e-2, backbone_lr_scale=1.0, batch_size=64),
                      [MultiTask(task_weights={"parity": 0.0})]).fit(train, val)
    assert history.epochs[-1]["weight_parity"] == 0.0 and history.epochs[-1]["weight_digit"] == 1.0
    assert evaluate(task_model(model, "digit"), digits.test).accuracy > 0.75
    assert evaluate(task_model(model, "parity"), _parity(digits.test)).accuracy < 0.65
