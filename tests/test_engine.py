"""Tests of transferkit.engine: config, strategies, objectives, the trainer, checkpoints."""

from __future__ import annotations

import copy
import json
import logging
import math
from collections import OrderedDict

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from transferkit.data.base import TensorDataset
from transferkit.engine import (
    OBJECTIVES,
    Batch,
    CrossEntropy,
    Objective,
    TrainConfig,
    Trainer,
    apply_strategy,
    build_param_groups,
    lr_factor,
    predict_features,
)
from transferkit.engine.checkpoint import RunDir
from transferkit.engine.strategies import num_unfrozen_blocks
from transferkit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    LabelError,
    ShapeError,
    TrainingError,
    UnknownNameError,
)
from transferkit.io import load_state_dict
from transferkit.models.base import ModelInfo, TransferNet


def make_net(
    in_dim: int = 8,
    hidden: int = 16,
    classes: int = 3,
    blocks: int = 3,
    bn: bool = False,
    dropout: float = 0.0,
    seed: int = 0,
) -> TransferNet:
    """A vector TransferNet whose backbone has ``blocks`` named blocks block1..blockN."""
    torch.manual_seed(seed)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    d = in_dim
    for i in range(blocks):
        parts: list[nn.Module] = [nn.Linear(d, hidden)]
        if bn:
            parts.append(nn.BatchNorm1d(hidden))
        parts.append(nn.ReLU())
        if dropout:
            parts.append(nn.Dropout(dropout))
        layers[f"block{i + 1}"] = nn.Sequential(*parts)
        d = hidden
    info = ModelInfo(arch="test", num_classes=classes, feature_dim=hidden, input_size=(in_dim,))
    return TransferNet(nn.Sequential(layers), nn.Linear(hidden, classes), info)


def blobs(n: int = 96, in_dim: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    """Gaussian blobs, one per class, easily separable."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, in_dim, generator=g) * 3
    y = torch.arange(n) % classes
    x = centers[y] + torch.randn(n, in_dim, generator=g)
    return TensorDataset(x, y, name="blobs")


@pytest.fixture(scope="module")
def digits() -> tuple[TensorDataset, TensorDataset]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return TensorDataset(x[:1400], y[:1400], name="digits/train"), TensorDataset(
        x[1400:], y[1400:], name="digits/val"
    )


def cpu(cfg: dict | None = None, **kw) -> TrainConfig:
    base = {"device": "cpu", "amp": False, "scheduler": "none", "weight_decay": 0.0}
    base.update(cfg or {})
    base.update(kw)
    return TrainConfig(**base)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Recorder(Objective):
    """A zero loss that snapshots the model at each epoch start (= after the previous epoch)."""

    def __init__(self) -> None:
        super().__init__(weight=1.0)
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.modes: list[dict[str, bool]] = []

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.snapshots.append(state(trainer.model))
        self.modes.append({n: m.training for n, m in trainer.model.backbone.named_children()})

    def forward(self, batch: Batch) -> torch.Tensor:
        return batch.logits.sum() * 0.0


class Crash(Objective):
    """A zero loss that raises KeyboardInterrupt at the start of 0-based epoch ``at``."""

    def __init__(self, at: int | None = None) -> None:
        super().__init__()
        self.at = at

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if epoch == self.at:
            raise KeyboardInterrupt

    def forward(self, batch: Batch) -> torch.Tensor:
        return batch.logits.sum() * 0.0


class NanAt(Objective):
    """Returns NaN from 0-based epoch ``at`` on."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def forward(self, batch: Batch) -> torch.Tensor:
        value = float("nan") if batch.epoch >= self.at else 0.0
        return torch.tensor(value, device=batch.logits.device)


# ---------------------------------------------------------------------------- config
def test_config_defaults_and_unknown_key():
    cfg = TrainConfig.from_dict({"epochs": 3})
    assert cfg.epochs == 3 and cfg.optimizer == "adamw" and cfg.backbone_lr_scale == 0.1
    with pytest.raises(ConfigError, match=r"unknown training config key\(s\) 'bogus', 'lrr'"):
        TrainConfig.from_dict({"lrr": 0.1, "bogus": 1})


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ({"epochs": 0}, r"epochs=0: .*greater than or equal to 1"),
        ({"lr": -1.0}, r"lr=-1.0: .*greater than 0"),
        ({"layer_decay": 1.5}, r"layer_decay=1.5"),
        ({"optimizer": "rmsprop"}, r"optimizer='rmsprop'"),
        ({"device": "gpu"}, r"device='gpu'.*not a torch device"),
        ({"epochs": 2, "warmup_epochs": 2}, r"warmup_epochs=2 must be smaller than epochs=2"),
    ],
)
def test_config_bad_values_named(bad, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig.from_dict(bad)


def test_objective_registry_and_bad_args():
    assert OBJECTIVES.get("cross_entropy") is CrossEntropy
    assert CrossEntropy().name == "cross_entropy" and CrossEntropy.head_only
    with pytest.raises(ConfigError, match="label_smoothing=1.0: must be < 1; 0.1 is a common value"):
        CrossEntropy(label_smoothing=1.0)
    with pytest.raises(ConfigError, match="'cross_entropy': weight=-1: must be >= 0"):
        CrossEntropy(weight=-1)


# ---------------------------------------------------------------------------- strategies
def test_layer_decay_param_groups_hand_computed():
    model = make_net(blocks=3)
    cfg = cpu(lr=0.1, backbone_lr_scale=0.5, layer_decay=0.5)
    groups = build_param_groups(model, cfg)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("head", 0.1),
        ("backbone.block3", 0.05),
        ("backbone.block2", 0.025),
        ("backbone.block1", 0.0125),
    ]
    assert groups[1]["params"][0] is model.backbone.block3[0].weight
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(model.parameters()))
    # the trainer's optimiser carries the same rates (no schedule)
    trainer = Trainer(model, cfg.model_copy(update={"epochs": 1}))
    trainer.fit(blobs(24))
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.1, 0.05, 0.025, 0.0125]
    plain = build_param_groups(make_net(), cpu(lr=0.2, backbone_lr_scale=0.25))
    assert [(g["name"], g["lr"]) for g in plain] == [("head", 0.2), ("backbone", 0.05)]


def test_lr_schedule_values_hand_computed():
    cfg = cpu(epochs=5, warmup_epochs=1, scheduler="cosine")
    expected = [0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    assert [lr_factor(cfg, e) for e in range(5)] == pytest.approx(expected)
    step = cpu(epochs=6, scheduler="step")
    assert [lr_factor(step, e) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    hist = Trainer(make_net(), cfg.model_copy(update={"lr": 0.1})).fit(blobs(24))
    assert [r["lr"] for r in hist.epochs] == pytest.approx([0.1 * f for f in expected])


def test_gradual_unfreezing_changes_exactly_expected_blocks():
    model = make_net(blocks=3, bn=True)
    rec = Recorder()
    cfg = cpu(epochs=4, strategy="gradual", unfreeze_every=1, lr=0.05, backbone_lr_scale=1.0)
    Trainer(model, cfg, [CrossEntropy(), rec]).fit(blobs(48))
    snaps = rec.snapshots + [state(model)]  # weights before epoch 1 .. after epoch 4

    def changed(a, b, block):
        return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(f"backbone.{block}."))

    expected_changed = [set(), {"block3"}, {"block2", "block3"}, {"block1", "block2", "block3"}]
    for k, want in enumerate(expected_changed):
        got = {b for b in ("block1", "block2", "block3") if changed(snaps[k], snaps[k + 1], b)}
        assert got == want, f"epoch {k + 1}"
        assert not torch.equal(snaps[k]["head.weight"], snaps[k + 1]["head.weight"])
    # frozen blocks were in eval mode (BatchNorm statistics untouched)
    assert rec.modes[1] == {"block1": False, "block2": False, "block3": True}
    assert [num_unfrozen_blocks(cfg.model_copy(update={"unfreeze_every": 2}), e, 3)
            for e in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_apply_strategy_linear_probe_freezes_and_evals():
    model = make_net(bn=True)
    trained = apply_strategy(model, cpu(strategy="linear_probe"), 0)
    assert trained == []
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert not model.backbone.block1.training and model.head.training
    trained = apply_strategy(model, cpu(strategy="full"), 0)
    assert trained == ["backbone.block3", "backbone.block2", "backbone.block1"]
    assert all(p.requires_grad for p in model.parameters())
    apply_strategy(model, cpu(strategy="full", backbone_lr_scale=0.0), 0)
    assert not any(p.requires_grad for p in model.backbone.parameters())


# ---------------------------------------------------------------------------- training
def test_loss_falls_over_ten_steps():
    data = blobs(64)
    cfg = cpu(epochs=10, batch_size=64, lr=0.01, backbone_lr_scale=1.0)
    hist = Trainer(make_net(), cfg).fit(data)
    losses = [r["train_loss"] for r in hist.epochs]
    assert len(losses) == 10 and losses[-1] < 0.7 * losses[0]
    assert hist.epochs[0]["loss_cross_entropy"] == pytest.approx(losses[0])
    assert hist.best_epoch is None and hist.epochs[0]["val_accuracy"] is None


def test_mlp_on_digits_reaches_90_percent(digits):
    train, val = digits
    model = make_net(in_dim=64, hidden=64, classes=10, blocks=2)
    cfg = cpu(epochs=12, batch_size=64, lr=3e-3, backbone_lr_scale=1.0, scheduler="cosine")
    hist = Trainer(model, cfg).fit(train, val)
    assert hist.best_val_accuracy > 0.9
    # the model ends with the best epoch's weights
    _, acc = Trainer(model, cfg).evaluate(val)
    assert acc == pytest.approx(hist.best_val_accuracy)


def test_linear_probe_backbone_identical_and_cached_equals_uncached():
    train, val = blobs(90, seed=1), blobs(30, seed=2)
    base = make_net(bn=True, dropout=0.2)
    before = state(base)
    runs = {}
    for cache in (True, False):
        model = copy.deepcopy(base)
        calls = []
        model.backbone.register_forward_hook(lambda m, i, o, calls=calls: calls.append(len(i[0])))
        cfg = cpu(epochs=3, batch_size=16, lr=0.05, strategy="linear_probe", cache_features=cache)
        hist = Trainer(model, cfg).fit(train, val)
        runs[cache] = (model, hist, calls)
        for k, v in before.items():
            if k.startswith("backbone."):
                assert torch.equal(model.state_dict()[k], v), k  # weights and BN stats bit-identical
        assert not torch.equal(model.head.weight, base.head.weight)
    (m1, h1, c1), (m0, h0, c0) = runs[True], runs[False]
    torch.testing.assert_close(m1.head.weight, m0.head.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(m1.head.bias, m0.head.bias, atol=1e-6, rtol=1e-5)
    assert [r["val_accuracy"] for r in h1.epochs] == [r["val_accuracy"] for r in h0.epochs]
    # cached: probe + one pass over train and val; uncached: every batch of every epoch
    assert c1 == [1, 90, 30]
    assert len(c0) > 3 * 5


def test_predict_features_matches_forward_features():
    model, data = make_net(bn=True), blobs(20)
    model.train()
    feats = predict_features(model, data, batch_size=7, device="cpu")
    model.eval()
    torch.testing.assert_close(feats, model.forward_features(data.x).detach())
    model.train()
    predict_features(model, data)
    assert model.training  # mode restored


def test_objective_parameters_and_taps_reach_the_loop():
    class TapNorm(Objective):
        taps = ("backbone.block2",)

        def __init__(self):
            super().__init__(weight=0.5)
            self.scale = nn.Parameter(torch.tensor(1.0))
            self.shapes = []

        def forward(self, batch):
            tap = batch.taps["backbone.block2"]
            self.shapes.append(tuple(tap.shape))
            return (self.scale - 3.0) ** 2 + 0 * tap.sum()

    obj = TapNorm()
    trainer = Trainer(make_net(), cpu(epochs=2, batch_size=16, lr=0.1), [CrossEntropy(), obj])
    hist = trainer.fit(blobs(32))
    assert obj.shapes[0] == (16, 16)
    assert trainer.optimizer.param_groups[-1]["name"] == "objectives"
    assert obj.scale.item() > 1.1  # trained towards 3
    assert "loss_tap_norm" in hist.epochs[0]
    assert hist.epochs[0]["train_loss"] == pytest.approx(
        hist.epochs[0]["loss_cross_entropy"] + 0.5 * hist.epochs[0]["loss_tap_norm"], rel=1e-5
    )

    class BadTap(Objective):
        taps = ("backbone.blok2",)

        def forward(self, batch):
            return batch.logits.sum()

    with pytest.raises(UnknownNameError, match=r"(?i)'backbone.blok2'.*did you mean 'backbone.block2'"):
        Trainer(make_net(), cpu(epochs=1), [BadTap()]).fit(blobs(8))


def test_grad_clip_bounds_the_update_norm():
    model = make_net()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = cpu(epochs=1, batch_size=32, optimizer="sgd", momentum=0.0, lr=1.0,
              backbone_lr_scale=1.0, grad_clip=1e-3)
    Trainer(model, cfg).fit(blobs(32))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_early_stopping_and_best_weights(tmp_path):
    cfg = cpu(epochs=10, lr=1e-9, patience=2)
    hist = Trainer(make_net(), cfg).fit(blobs(30), blobs(30, seed=3))
    assert hist.stopped_early and len(hist.epochs) == 3 and hist.best_epoch == 1

    model = make_net()
    hist = Trainer(model, cpu(epochs=5, lr=0.02, batch_size=8), run_dir=tmp_path).fit(
        blobs(30), blobs(30, seed=4)
    )
    accs = [r["val_accuracy"] for r in hist.epochs]
    assert hist.best_epoch == accs.index(max(accs)) + 1 and hist.best_val_accuracy == max(accs)
    best = load_state_dict(tmp_path / "checkpoints" / "best.safetensors")
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------- run dir / resume
@pytest.mark.parametrize("mode", ["crash", "two_then_four"])
def test_resume_matches_straight_run(tmp_path, mode):
    train, val = blobs(60, seed=5), blobs(30, seed=6)
    sched = "cosine" if mode == "crash" else "none"
    cfg = cpu(epochs=4, batch_size=16, lr=0.02, scheduler=sched, weight_decay=1e-3)

    straight = make_net(dropout=0.3, bn=True)
    Trainer(straight, cfg, [CrossEntropy(), Crash()], run_dir=tmp_path / "a").fit(train, val)

    run = tmp_path / "b"
    first = make_net(dropout=0.3, bn=True)
    if mode == "crash":
        with pytest.raises(KeyboardInterrupt):
            Trainer(first, cfg, [CrossEntropy(), Crash(at=2)], run_dir=run).fit(train, val)
    else:
        Trainer(first, cfg.model_copy(update={"epochs": 2}), [CrossEntropy(), Crash()],
                run_dir=run).fit(train, val)
    assert len(RunDir(run).read_metrics()) == 2

    resumed = make_net(dropout=0.3, bn=True, seed=123)  # different init: weights come from disk
    hist = Trainer(resumed, cfg, [CrossEntropy(), Crash()], run_dir=run).fit(train, val, resume=True)
    assert len(hist.epochs) == 4
    for k, v in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    last_a, _ = RunDir(tmp_path / "a").load_checkpoint()
    last_b, _ = RunDir(run).load_checkpoint()
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.safetensors", "last.ckpt"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    rows_a = RunDir(tmp_path / "a").read_metrics()
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in rows_a]


def test_resume_without_checkpoint_starts_fresh(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="transferkit.engine"):
        hist = Trainer(make_net(), cpu(epochs=1), run_dir=tmp_path).fit(blobs(12), resume=True)
    assert len(hist.epochs) == 1 and "no checkpoint" in caplog.text
    with pytest.raises(ConfigError, match="resume=True needs a run_dir"):
        Trainer(make_net(), cpu(epochs=1)).fit(blobs(12), resume=True)
    with pytest.raises(CheckpointError, match="holds 1 objectives, this trainer has 2"):
        Trainer(make_net(), cpu(epochs=2), [CrossEntropy(), Crash()], run_dir=tmp_path).fit(
            blobs(12), resume=True
        )


def test_nan_loss_raises_and_keeps_checkpoint(tmp_path):
    trainer = Trainer(make_net(), cpu(epochs=3, lr=0.01), [CrossEntropy(), NanAt(1)], tmp_path)
    with pytest.raises(TrainingError, match=r"epoch 2, step 0 \(cross_entropy=.*nan_at=nan\); "
                       r"lower the learning rate \(lr=0.01\) or set grad_clip .*largest \|x\| in "
                       r"this batch: \d.*checkpoint \(epoch 1\) .* is kept$"):
        trainer.fit(blobs(24))
    weights, st = RunDir(tmp_path).load_checkpoint()
    assert st["epoch"] == 1 and len(RunDir(tmp_path).read_metrics()) == 1
    assert set(weights) == set(trainer.model.state_dict())
    # with the divergence check off, a huge step size ends in a non-finite loss
    with pytest.raises(TrainingError, match="non-finite.*lower the learning rate"):
        Trainer(make_net(), cpu(epochs=5, lr=1e30, optimizer="sgd", momentum=0.0,
                                backbone_lr_scale=1.0, divergence_factor=None)).fit(blobs(24))


def test_nan_inputs_are_blamed_instead_of_the_learning_rate():
    data = blobs(24)
    data.x[5, 2] = float("nan")
    data.x[7, 0] = float("inf")
    with pytest.raises(TrainingError, match=r"non-finite at epoch 1, step \d .*: this batch of "
                       r"'blobs' holds \d NaN/inf input value\(s\); remove or impute them") as exc:
        Trainer(make_net(), cpu(epochs=1, batch_size=4)).fit(data)
    assert "learning rate" not in str(exc.value) and "\n" not in str(exc.value)


def test_checkpoint_is_one_file_and_refuses_bad_ones(tmp_path):
    Trainer(make_net(), cpu(epochs=2), run_dir=tmp_path).fit(blobs(12))
    rd = RunDir(tmp_path)
    assert [p.name for p in rd.checkpoints.iterdir()] == ["last.ckpt"]  # no val set: no best
    weights, st = rd.load_checkpoint()
    assert st["epoch"] == 2 and set(st) >= {"optimizer", "history", "best_model", "guard"}
    good = rd.last.read_bytes()
    rd.last.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match=r"last.ckpt' could not be read .*delete .* start over"):
        rd.load_checkpoint()
    torch.save({"format": "transferkit-checkpoint", "version": 1, "model": {}, "state": {},
                "evil": nn.Linear(2, 2)}, rd.last)
    with pytest.raises(CheckpointError, match="objects other than tensors .*could run code"):
        rd.load_checkpoint()
    torch.save({"weights": weights}, rd.last)
    with pytest.raises(CheckpointError, match="not a transferkit training checkpoint"):
        rd.load_checkpoint()
    with pytest.raises(CheckpointError, match="not a transferkit training checkpoint"):
        Trainer(make_net(), cpu(epochs=3), run_dir=tmp_path).fit(blobs(12), resume=True)


def _shared(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@pytest.mark.parametrize("cache", [True, False])
def test_checkpoint_stores_weights_equal_to_the_best_ones_once(tmp_path, cache):
    """A linear probe's frozen backbone is in last.ckpt once, not as current and best weights."""
    net = make_net(hidden=256)
    backbone = {f"backbone.{k}" for k in net.backbone.state_dict()}
    cfg = cpu(epochs=3, strategy="linear_probe", cache_features=cache, lr=0.05)
    Trainer(net, cfg, run_dir=tmp_path).fit(blobs(48), blobs(48, seed=1))
    rd = RunDir(tmp_path)
    weights, st = rd.load_checkpoint()
    best = st["best_model"]
    assert set(best) == set(weights) and all(torch.equal(best[k], weights[k]) for k in backbone)
    assert all(_shared(best[k], weights[k]) for k in backbone)
    assert torch.equal(best["head.weight"], load_state_dict(rd.best_weights)["head.weight"])
    model_bytes = sum(v.numel() * v.element_size() for v in weights.values())
    assert rd.last.stat().st_size < 1.2 * model_bytes  # was 2x: current and best weights


def test_checkpoint_of_a_best_last_epoch_holds_the_model_once(tmp_path):
    """When the last epoch is the best, nothing is stored twice; an earlier best is kept apart."""
    train, val = blobs(48), blobs(48, seed=1)
    Trainer(make_net(hidden=64), cpu(epochs=1, optimizer="sgd", momentum=0.0), run_dir=tmp_path / "a").fit(
        train, val)
    weights, st = RunDir(tmp_path / "a").load_checkpoint()
    assert all(_shared(st["best_model"][k], weights[k]) for k in weights)
    # a run whose best epoch is not its last (a learning rate too high): stored apart
    hist = Trainer(make_net(hidden=64), cpu(epochs=4, lr=1.0, optimizer="sgd", momentum=0.0),
                   run_dir=tmp_path / "b").fit(train, val)
    assert hist.best_epoch < 4
    rd = RunDir(tmp_path / "b")
    weights, st = rd.load_checkpoint()
    assert not _shared(st["best_model"]["head.weight"], weights["head.weight"])
    best_file = load_state_dict(rd.best_weights)
    assert all(torch.equal(st["best_model"][k], best_file[k]) for k in best_file)


def test_old_two_file_checkpoint_is_refused_on_resume_and_cleared_on_a_fresh_run(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "last_state.pt").write_bytes(b"old")
    (ckpt / "last.safetensors").write_bytes(b"old")
    with pytest.raises(CheckpointError, match=r"last.safetensors' is a checkpoint of an older "
                       r"transferkit \(two files\) that cannot be resumed; start over"):
        Trainer(make_net(), cpu(epochs=1), run_dir=tmp_path).fit(blobs(12), resume=True)
    Trainer(make_net(), cpu(epochs=1), run_dir=tmp_path).fit(blobs(12))
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt"]


def test_fresh_run_deletes_the_old_checkpoint_before_training(tmp_path):
    """A fresh run killed in its first epoch must not leave the old run's checkpoint to resume."""
    Trainer(make_net(), cpu(epochs=2), run_dir=tmp_path).fit(blobs(12), blobs(12, seed=1))
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"last.ckpt", "best.safetensors"}
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_net(), cpu(epochs=2), [CrossEntropy(), Crash(at=0)], run_dir=tmp_path).fit(
            blobs(12), blobs(12, seed=1))
    assert RunDir(tmp_path).load_checkpoint() is None and RunDir(tmp_path).read_metrics() == []
    assert not (tmp_path / "checkpoints" / "best.safetensors").exists()


def test_stale_temporaries_are_removed_when_a_run_starts(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    stale = [ckpt / ".last.ckpt.ab_c12x9.tmp", tmp_path / ".metrics.jsonl.k2j4h5g6.tmp"]
    keep = [ckpt / "last.ckpt.tmp", ckpt / ".last.ckpt.tmp", tmp_path / "notes.tmp",
            ckpt / ".last.ckpt.abc.tmp"]
    for p in stale + keep:
        p.write_bytes(b"x")
    Trainer(make_net(), cpu(epochs=1), run_dir=tmp_path).fit(blobs(12), resume=True)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


# ---------------------------------------------------------------------------- divergence
class LrJump(Objective):
    """A zero loss that sets every learning rate to ``lr`` at the start of 0-based epoch ``at``."""

    def __init__(self, at: int, lr: float) -> None:
        super().__init__()
        self.at, self.lr = at, lr

    def training_step(self, runner, ex):
        if runner.epoch == self.at and runner.step == 0:
            for group in runner.optimizer.param_groups:
                group["lr"] = self.lr
        return runner.default_step(ex)

    def forward(self, batch: Batch) -> torch.Tensor:
        return batch.logits.sum() * 0.0


def test_divergence_stops_before_inf_and_keeps_the_last_good_epoch(tmp_path, digits):
    train, val = digits
    cfg = cpu(epochs=3, lr=1e-2, optimizer="adam", backbone_lr_scale=1.0)
    calm = make_net(in_dim=64, hidden=32, classes=10)
    Trainer(calm, cfg.model_copy(update={"epochs": 1}), [CrossEntropy(), LrJump(1, 1e6)]).fit(
        train, val)
    # one calm epoch, then lr=1e6 from epoch 2 on: the total loss explodes, still finite
    trainer = Trainer(make_net(in_dim=64, hidden=32, classes=10), cfg,
                      [CrossEntropy(), LrJump(1, 1e6)], run_dir=tmp_path)
    with pytest.raises(TrainingError, match=r"^training diverged at epoch 2, step 1: the total "
                       r"loss reached [\d.e+]+, over 100x the first step's [\d.]+ .*; lower the "
                       r"learning rate \(lr=0.01\) or set grad_clip \(now None\); the last good "
                       r"checkpoint \(epoch 1\) .* is kept; .*raise divergence_factor \(now 100\) "
                       r"or set it to None$"):
        trainer.fit(train, val)
    weights, st = RunDir(tmp_path).load_checkpoint()
    assert st["epoch"] == 1 and len(RunDir(tmp_path).read_metrics()) == 1
    assert all(torch.equal(weights[k], v) for k, v in calm.state_dict().items())
    best = load_state_dict(tmp_path / "checkpoints" / "best.safetensors")
    assert all(torch.equal(best[k], v) for k, v in calm.state_dict().items())
    norm = math.sqrt(sum(float(w.double().pow(2).sum()) for w in weights.values()))
    assert norm < 50


def test_divergence_from_scratch_saves_nothing_and_can_be_disabled(tmp_path, digits):
    train, val = digits
    with pytest.raises(TrainingError, match="training diverged at epoch 1") as exc:
        Trainer(make_net(in_dim=64, classes=10), cpu(epochs=3, lr=1e6, optimizer="adam"),
                run_dir=tmp_path).fit(train, val)
    assert "checkpoint" not in str(exc.value) and "\n" not in str(exc.value)
    assert RunDir(tmp_path).load_checkpoint() is None
    assert not (tmp_path / "checkpoints" / "best.safetensors").exists()
    # weights that grow far beyond their start while the loss stays modest (last step of an epoch)
    model = make_net(in_dim=64, classes=10)
    cfg = cpu(epochs=1, lr=1e6, optimizer="adam", batch_size=len(train))  # one step per epoch
    with pytest.raises(TrainingError, match=r"end of epoch 1: the weights' norm grew from "
                       r"[\d.]+ to [\d.e+]+, over 100x"):
        Trainer(model, cfg).fit(train)
    # None turns the check off (it then trains to a broken model, as asked)
    hist = Trainer(make_net(in_dim=64, classes=10), cfg.model_copy(
        update={"divergence_factor": None})).fit(train)
    assert len(hist.epochs) == 1
    with pytest.raises(ConfigError, match=r"divergence_factor=1.0: Input should be greater than 1"):
        TrainConfig.from_dict({"divergence_factor": 1.0})


def test_sane_runs_never_trip_the_divergence_check(digits):
    """Fast but sane settings: the loss may rise well above its start, yet stays far from 100x."""
    train, val = digits
    for opt, lr in (("sgd", 0.2), ("adamw", 0.1), ("adam", 0.03)):
        trainer = Trainer(make_net(in_dim=64, hidden=32, classes=10), cpu(
            epochs=3, lr=lr, optimizer=opt, backbone_lr_scale=1.0))
        hist = trainer.fit(train, val)
        assert len(hist.epochs) == 3 and hist.best_val_accuracy > 0.5, (opt, lr)
        assert trainer._guard.peak_loss_ratio < 10 and trainer._guard.peak_norm_ratio < 10


# ---------------------------------------------------------------------------- input checks
def test_input_errors():
    with pytest.raises(LabelError, match=r"train labels go up to 4 but the model's head predicts 3 "
                       r"classes .*replace_head\(model, 5\) or .*num_classes=5"):
        Trainer(make_net(classes=3), cpu(epochs=1)).fit(blobs(10, classes=5))
    empty = TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), classes=["a"])
    with pytest.raises(DataError, match="training set .* is empty"):
        Trainer(make_net(), cpu(epochs=1)).fit(empty)
    with pytest.raises(ShapeError, match="input has 5 values per example but the model takes 8"):
        Trainer(make_net(in_dim=8), cpu(epochs=1)).fit(blobs(10, in_dim=5))
    with pytest.raises(ConfigError, match="patience=2 .* needs a validation set"):
        Trainer(make_net(), cpu(epochs=3, patience=2)).fit(blobs(10))
    with pytest.raises(ConfigError, match="unknown training config key.*'epoch'"):
        Trainer(make_net(), {"epoch": 3})
    with pytest.raises(ConfigError, match="Trainer needs a TransferNet"):
        Trainer(nn.Linear(2, 2))


def test_single_class_training_set_is_refused():
    data = blobs(12)
    one = TensorDataset(data.x, torch.full((12,), 2), classes=["a", "b", "c"], name="only-c")
    with pytest.raises(DataError, match=r"^training set 'only-c' has one class \(label 2\); a "
                       r"classifier needs examples of at least two classes"):
        Trainer(make_net(), cpu(epochs=1)).fit(one)
    # a one-class validation set is fine; so is a run whose objectives never read labels
    assert len(Trainer(make_net(), cpu(epochs=1)).fit(data, one).epochs) == 1
    assert len(Trainer(make_net(), cpu(epochs=1), [Crash()]).fit(one).epochs) == 1


def test_unavailable_device_is_one_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:3"):
        with pytest.raises(ConfigError, match=rf"^device='{device}' is not available: .*; use "
                           r"device='auto' \(CUDA when present, else CPU\) or device='cpu'$") as exc:
            Trainer(make_net(), {"device": device})
        assert "\n" not in str(exc.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"only 2 CUDA device\(s\) are visible \(cuda:0..cuda:1\)"):
        TrainConfig(device="cuda:3").resolve_device()
    assert TrainConfig(device="cuda:1").resolve_device() == torch.device("cuda:1")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device='mps' is not available: no Apple MPS GPU"):
        TrainConfig(device="mps").resolve_device()
    assert TrainConfig(device="cpu").resolve_device() == torch.device("cpu")


def test_progress_bar_and_single_example_last_batch(tmp_path):
    # 17 examples, batch 8: the last batch of one joins the previous one (BatchNorm needs > 1)
    model = make_net(bn=True)
    hist = Trainer(model, cpu(epochs=2, batch_size=8, progress=True), run_dir=tmp_path).fit(blobs(17))
    assert len(hist.epochs) == 2
    # a fresh (non-resume) run in the same folder starts its metrics over
    Trainer(make_net(bn=True), cpu(epochs=1, batch_size=8), run_dir=tmp_path).fit(blobs(17))
    assert [r["epoch"] for r in RunDir(tmp_path).read_metrics()] == [1]


def test_batch_index_points_at_the_training_examples():
    data = blobs(40)
    seen = []

    class Spy(Objective):
        def forward(self, batch):
            assert torch.equal(batch.x.cpu(), data.x[batch.index])
            assert torch.equal(batch.y.cpu(), data.y[batch.index])
            seen.append(batch.index.clone())
            return batch.logits.sum() * 0.0

    Trainer(make_net(), cpu(epochs=2, batch_size=16), [CrossEntropy(), Spy()]).fit(data)
    epoch1 = torch.cat(seen[: len(seen) // 2])
    assert sorted(epoch1.tolist()) == list(range(40))  # each example once per epoch


def test_check_coefficient_is_the_one_non_negative_rule():
    from transferkit.engine import check_coefficient

    assert check_coefficient("X", "w", 3) == 3.0 and check_coefficient("X", "w", 0.0) == 0.0
    for bad, msg in [(True, "must be a number"), ("1", "must be a number"),
                     (-1, "must be a finite number >= 0, got -1.0"),
                     (float("inf"), "must be a finite number >= 0, got inf"),
                     (float("nan"), "must be a finite number >= 0, got nan")]:
        with pytest.raises(ConfigError, match=f"X w {msg}"):
            check_coefficient("X", "w", bad)
    with pytest.raises(ConfigError, match="; try 1"):
        check_coefficient("X", "w", -2, "try 1")


def test_bfloat16_mixed_precision_runs_on_the_cpu_and_float16_stays_off(digits):
    """amp_dtype="bfloat16" autocasts on the CPU (the backbone computes in bfloat16; weights, optimiser
    state and the best weights stay float32, and it learns as float32 does); the default float16 is
    off on the CPU (float32 throughout)."""
    train, val = digits
    seen: dict[str, list] = {}
    accs = {}
    for dtype in ("bfloat16", "float16", None):
        model = make_net(in_dim=64, hidden=64, classes=10, blocks=2)
        dtypes = seen.setdefault(str(dtype), [])
        model.backbone.block1.register_forward_hook(lambda m, i, o, dtypes=dtypes: dtypes.append(o.dtype))
        kw = {"amp": False} if dtype is None else {"amp": True, "amp_dtype": dtype}
        cfg = cpu(epochs=6, batch_size=64, lr=3e-3, backbone_lr_scale=1.0, **kw)
        trainer = Trainer(model, cfg)
        assert trainer.use_amp == (dtype == "bfloat16")
        hist = trainer.fit(train, val)
        accs[str(dtype)] = hist.best_val_accuracy
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert all(v.dtype == torch.float32 for s in trainer.optimizer.state.values()
                   for v in s.values() if torch.is_tensor(v) and v.is_floating_point())
    # every pass in bfloat16 but the one-example shape check before training
    assert seen["bfloat16"][0] == torch.float32 and set(seen["bfloat16"][1:]) == {torch.bfloat16}
    assert len(seen["bfloat16"]) > 6 * 2
    assert set(seen["float16"]) == set(seen["None"]) == {torch.float32}
    assert accs["bfloat16"] > 0.9 and abs(accs["bfloat16"] - accs["None"]) < 0.03


def test_cached_features_under_bfloat16_come_back_float32():
    """A linear probe with CPU bfloat16 computes its cached features in bfloat16 (one pass over the
    training examples) and keeps them as float32, within bfloat16's rounding of the float32 ones."""
    train = blobs(90, seed=1)
    model = make_net()
    feats = {}
    for amp in (True, False):
        trainer = Trainer(copy.deepcopy(model), cpu(epochs=2, batch_size=16, lr=0.05, strategy="linear_probe",
                                                    amp=amp, amp_dtype="bfloat16"))
        feats[amp] = predict_features(trainer.model, train, 32, "cpu", autocast=trainer._autocast)
        calls: list = []
        trainer.model.backbone.register_forward_hook(
            lambda m, i, o, calls=calls: calls.append((len(o), o.dtype)))
        trainer.fit(train)
        # the one-example shape check in float32, then one pass over the 90 examples
        assert calls == [(1, torch.float32), (90, torch.bfloat16 if amp else torch.float32)]
    assert feats[True].dtype == torch.float32
    assert not torch.equal(feats[True], feats[False])
    torch.testing.assert_close(feats[True], feats[False], rtol=2e-2, atol=2e-2)
