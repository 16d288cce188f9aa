"""The engine's domain-adaptation support: target batches, extra update phases, monitors and
label-free epoch selection, on real digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferkit.data import TensorDataset
from transferkit.engine import Batch, CrossEntropy, Objective, StepRunner, TrainConfig, Trainer
from transferkit.errors import ConfigError, DataError, ShapeError
from transferkit.models import create_model


def _mlp():
    torch.manual_seed(0)
    return create_model("mlp", num_classes=10, in_features=64, hidden=(16,))


class Recorder(Objective):
    """Uses the target batch lightly and records what every step saw."""

    uses_target = True

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.seen: list[dict] = []

    def forward(self, batch: Batch) -> torch.Tensor:
        self.seen.append({
            "n": len(batch.y), "m": len(batch.target_x), "index": batch.target_index.clone(),
            "domain": batch.domain.clone(), "progress": batch.progress, "phase": batch.phase,
            "same_forward": torch.equal(batch.target_logits, batch.model.head(batch.target_features)),
        })
        return batch.target_features.pow(2).mean()


def test_target_batches_pair_every_source_batch_and_cycle_the_smaller_set(digits):
    source = digits.train.subset(range(100))
    target = digits.val.subset(range(30))
    rec = Recorder(weight=0.01)
    cfg = TrainConfig(epochs=2, batch_size=32, seed=3)
    Trainer(_mlp(), cfg, objectives=[rec]).fit(source, target=target)
    # 100 source examples in batches of 32: 32, 32, 36 (a last batch of 4 stays separate)
    steps = [s for s in rec.seen if s["phase"] == "main"]
    assert [s["n"] for s in steps[:4]] == [32, 32, 32, 4]
    assert all(s["m"] == s["n"] for s in steps)
    first_epoch = torch.cat([s["index"] for s in steps[:4]])
    # 100 draws from 30 target examples: three full passes, then 10 of a fourth
    counts = torch.bincount(first_epoch, minlength=30)
    assert counts.sum() == 100 and counts.min() >= 3 and counts.max() <= 4
    assert sorted(first_epoch[:30].tolist()) == list(range(30))
    # explicit domain labels: source rows then target rows
    assert steps[0]["domain"].tolist() == [0] * 32 + [1] * 32
    assert all(s["same_forward"] for s in steps)
    assert [round(s["progress"], 3) for s in steps[:5]] == [0.0, 0.125, 0.25, 0.375, 0.5]
    # the order is seeded: a second run draws the same target examples
    rec2 = Recorder(weight=0.01)
    Trainer(_mlp(), cfg, objectives=[rec2]).fit(source, target=target)
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(rec.seen, rec2.seen, strict=True))


def test_target_is_not_forwarded_when_no_objective_uses_it(digits):
    source = digits.train.subset(range(64))
    model = _mlp()
    calls = []
    model.head.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    Trainer(model, TrainConfig(epochs=1, batch_size=64)).fit(source, target=digits.val)
    assert calls[:2] == [1, 64]  # the shape probe, then the first step: the source batch alone


class OwnStep(Objective):
    """Main loss exactly zero; its own step then pulls the logits to zero ``repeat`` times,
    updating only the parameters named by ``update``."""

    def __init__(self, update: str, repeat: int = 3) -> None:
        super().__init__(1.0)
        self.update, self.repeat = update, repeat
        self.extra = nn.Parameter(torch.ones(1))
        self.calls: list[str] = []

    def forward(self, batch: Batch) -> torch.Tensor:
        self.calls.append(batch.phase)
        if batch.phase == "main":
            return 0.0 * (batch.logits.sum() + self.extra.sum())
        return batch.logits.pow(2).mean() + self.extra.pow(2).sum()

    def training_step(self, runner: StepRunner, ex):
        out = runner.default_step(ex)
        only = {"heads": runner.head_params, "backbone": runner.backbone_params, "all": None}[self.update]
        total = 0.0
        for _ in range(self.repeat):
            batch = runner.forward(ex, "pull", frozen_features=self.update == "heads")
            (loss,) = runner.losses(batch, [self])
            runner.update(loss, only)
            total += float(loss.detach())
        out.terms["loss_pull"] = total / self.repeat
        return out


@pytest.mark.parametrize(
    ("update", "changed"),
    [("heads", {"head", "extra"}), ("backbone", {"backbone"}), ("all", {"head", "extra", "backbone"})],
)
def test_an_objectives_own_step_updates_only_the_parameters_it_names(digits, update, changed):
    source = digits.train.subset(range(64))
    model = _mlp()
    obj = OwnStep(update)
    before = {k: v.clone() for k, v in model.named_parameters()}
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.1,
                      backbone_lr_scale=1.0, scheduler="none")
    history = Trainer(model, cfg, objectives=[obj]).fit(source)
    assert obj.calls == ["main", "pull", "pull", "pull"]
    moved = set()
    for name, p in model.named_parameters():
        if not torch.equal(p, before[name]):
            moved.add(name.split(".")[0])
    if not torch.equal(obj.extra.detach(), torch.ones(1)):
        moved.add("extra")
    assert moved == changed
    assert history.epochs[0]["loss_pull"] > 0


def test_two_objectives_with_their_own_steps_are_refused():
    with pytest.raises(ConfigError, match="at most one objective"):
        Trainer(_mlp(), objectives=[OwnStep("all"), OwnStep("heads")])


class Scripted:
    """A monitor returning given values per epoch and remembering the weights it saw."""

    def __init__(self, values):
        self.values, self.states = list(values), []

    def __call__(self, trainer):
        self.states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return {"score": self.values[len(self.states) - 1]}


@pytest.mark.parametrize(("mode", "best"), [("min", 2), ("max", 4), ("auto", 4)])
def test_select_metric_from_a_monitor_picks_the_epoch_and_its_weights(digits, mode, best):
    mon = Scripted([3.0, 1.0, float("nan"), 5.0, 2.0])
    model = _mlp()
    cfg = TrainConfig(epochs=5, batch_size=128, select_metric="score", select_mode=mode)
    history = Trainer(model, cfg, monitors=[mon]).fit(digits.train)  # no val set needed
    assert history.best_epoch == best
    assert history.best_value == [3.0, 1.0, None, 5.0, 2.0][best - 1]
    assert [row["score"] for row in history.epochs][:2] == [3.0, 1.0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, mon.states[best - 1][k]), k


def test_auto_mode_minimises_risks_and_losses():
    assert TrainConfig(select_metric="dev_risk").selection_mode() == "min"
    assert TrainConfig(select_metric="target_entropy").selection_mode() == "min"
    assert TrainConfig(select_metric="target_snd").selection_mode() == "max"


def test_unknown_select_metric_names_the_available_values(digits):
    cfg = TrainConfig(epochs=1, select_metric="snd")
    with pytest.raises(ConfigError, match="select_metric 'snd' is not among.*val_accuracy"):
        Trainer(_mlp(), cfg).fit(digits.train.subset(range(50)), digits.val)


def test_patience_works_with_a_monitor_metric(digits):
    mon = Scripted([1.0, 2.0, 1.5, 1.2, 1.1, 1.0])
    cfg = TrainConfig(epochs=6, batch_size=256, select_metric="score", patience=2)
    history = Trainer(_mlp(), cfg, monitors=[mon]).fit(digits.train)
    assert history.stopped_early and len(history.epochs) == 4 and history.best_epoch == 2


def test_target_errors_are_clear(digits):
    source = digits.train.subset(range(40))
    with pytest.raises(ConfigError, match="'recorder' adapt to unlabelled target data; pass it"):
        Trainer(_mlp(), objectives=[Recorder()]).fit(source)
    empty = digits.val.subset([])
    with pytest.raises(DataError, match="target set .* is empty"):
        Trainer(_mlp(), objectives=[Recorder()]).fit(source, target=empty)
    rgb = TensorDataset(digits.val.x.repeat(1, 3, 1, 1), digits.val.y, name="rgb")
    with pytest.raises(ShapeError, match=r"target has 3 channel\(s\), source 1.*match_shape"):
        Trainer(_mlp(), objectives=[Recorder()]).fit(source, target=rgb)


def test_resumed_adaptation_equals_an_uninterrupted_run(digits, tmp_path):
    source, target = digits.train.subset(range(120)), digits.test.subset(range(50))

    def run(epochs, resume, folder):
        torch.manual_seed(0)
        model = _mlp()
        cfg = TrainConfig(epochs=epochs, batch_size=32, seed=1, scheduler="none")
        Trainer(model, cfg, objectives=[Recorder(0.1)], run_dir=folder).fit(
            source, digits.val, target=target, resume=resume)
        return model

    full = run(3, False, tmp_path / "a")
    run(2, False, tmp_path / "b")
    resumed = run(3, True, tmp_path / "b")
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_one_class_check_reads_the_labelled_source_only(digits):
    """Target sets carry dummy zero labels that are never read; a one-class source is refused."""
    source = digits.train.subset(range(64))
    target = TensorDataset(digits.val.x[:40], torch.zeros(40, dtype=torch.long), list(digits.val.classes),
                           "target (unlabelled)")
    hist = Trainer(_mlp(), TrainConfig(epochs=1, batch_size=32),
                   objectives=[CrossEntropy(), Recorder(0.01)]).fit(source, target=target)
    assert len(hist.epochs) == 1
    sevens = digits.train.subset((digits.train.y == 7).nonzero().flatten().tolist())
    with pytest.raises(DataError, match=r"has one class \(label 7\)"):
        Trainer(_mlp(), TrainConfig(epochs=1), objectives=[CrossEntropy(), Recorder(0.01)]).fit(
            sevens, target=target)
