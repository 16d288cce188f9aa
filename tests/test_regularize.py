"""Regularisers that keep what the source knew: L2-SP, EWC and LwF."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from transferkit.data.base import TensorDataset
from transferkit.engine import FitContext, TrainConfig, Trainer
from transferkit.engine.objectives import OBJECTIVES, Batch, CrossEntropy, build_objectives
from transferkit.errors import ConfigError, ShapeError
from transferkit.models import create_model, load_model, save_model
from transferkit.transfer import transfer_parameters
from transferkit.transfer.distill.logits import kd_loss
from transferkit.transfer.regularize import ewc as ewc_mod
from transferkit.transfer.regularize.ewc import (
    EWC,
    _per_example_sq_grads,
    ewc_penalty,
    fisher_diagonal,
    fisher_info,
    load_fisher,
    save_fisher,
)
from transferkit.transfer.regularize.l2sp import L2SP, l2sp_penalty
from transferkit.transfer.regularize.lwf import LwF


@pytest.fixture(scope="module")
def source_task(digits):
    """Digits 0-4 (the source task) and an MLP 64-16-5 trained on it for 3 epochs."""
    keep = digits.train.y < 5
    data = TensorDataset(digits.train.x[keep], digits.train.y[keep], name="digits0-4")
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=5, in_features=64, hidden=(16,))
    cfg = TrainConfig(epochs=3, lr=1e-2, backbone_lr_scale=1.0, seed=0, batch_size=64)
    Trainer(model, cfg).fit(data)
    return model.eval(), data


def _student(source: nn.Module, num_classes: int = 10, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    student = create_model("mlp", num_classes=num_classes, in_features=64, hidden=(16,))
    transfer_parameters(source, student, exclude=["head.*"])
    return student


def _fake_trainer(model, data, **cfg):
    cfg = {"eval_batch_size": 4096, "weight_decay": 0.0, **cfg}
    return FitContext(model, torch.device("cpu"), TrainConfig(**cfg), data)


def _backbone(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.backbone.parameters()])


# ------------------------------------------------------------------------------------ L2-SP
def test_l2sp_penalty_hand_computed():
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0]),
              "c": torch.tensor([1.0, 1.0, 1.0])}
    reference = {"a": torch.tensor([0.0, 1.0]), "c": torch.zeros(2)}  # c: other shape -> beta
    # alpha/2 * ((1-0)^2 + (2-1)^2) + beta/2 * (3^2 + 3 * 1^2) = 1 * 2 + 2 * 12 = 26
    out = l2sp_penalty(params, reference, alpha=2.0, beta=4.0)
    assert out.item() == pytest.approx(26.0)
    assert l2sp_penalty(params, reference, alpha=2.0, beta=0.0).item() == pytest.approx(2.0)


def test_l2sp_zero_at_start_and_gradient_is_alpha_times_drift(source_task, digits):
    source, _ = source_task
    student = _student(source)
    obj = L2SP(alpha=0.5, beta=0.0)
    obj.setup(_fake_trainer(student, digits.train))
    assert set(obj.reference) == {"backbone.fc1.0.weight", "backbone.fc1.0.bias"}
    batch = Batch(x=digits.train.x[:2], y=digits.train.y[:2], logits=torch.zeros(2, 10),
                  features=torch.zeros(2, 16), model=student)
    assert obj(batch).item() == 0.0
    w0 = {n: p.detach().clone() for n, p in student.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    obj(batch).backward()
    for name, p in student.named_parameters():
        if name.startswith("head."):
            assert p.grad is None  # beta = 0: the new head is not regularised
        else:
            torch.testing.assert_close(p.grad, 0.5 * (p.detach() - w0[name]))


def test_l2sp_reference_from_source_module(source_task, digits):
    source, _ = source_task
    torch.manual_seed(5)
    student = create_model("mlp", num_classes=10, in_features=64, hidden=(16,))  # not transferred
    obj = L2SP(alpha=1.0, beta=0.0, source=source)
    obj.setup(_fake_trainer(student, digits.train))
    w = student.backbone.fc1[0].weight
    w_src = source.backbone.fc1[0].weight.detach()
    b, b_src = student.backbone.fc1[0].bias, source.backbone.fc1[0].bias.detach()
    want = 0.5 * ((w.detach() - w_src).pow(2).sum() + (b.detach() - b_src).pow(2).sum())
    batch = Batch(x=digits.train.x[:1], y=digits.train.y[:1], logits=torch.zeros(1, 10),
                  features=torch.zeros(1, 16), model=student)
    assert obj(batch).item() == pytest.approx(want.item(), rel=1e-6)


def test_l2sp_warns_about_weight_decay(source_task, digits, caplog):
    student = _student(source_task[0])
    with caplog.at_level(logging.WARNING, logger="transferkit.transfer.regularize.l2sp"):
        L2SP(alpha=0.1).setup(_fake_trainer(student, digits.train, weight_decay=1e-4))
    assert "weight_decay=0.0001" in caplog.text


def test_l2sp_reduces_drift_in_a_real_trainer(source_task, digits):
    source, _ = source_task
    cfg = TrainConfig(epochs=3, lr=2e-2, backbone_lr_scale=1.0, weight_decay=0.0, seed=0)
    w0 = _backbone(_student(source))
    drift = {}
    for alpha in (None, 10.0):
        student = _student(source)
        objectives = [CrossEntropy()] + ([L2SP(alpha=alpha, beta=0.0)] if alpha else [])
        hist = Trainer(student, cfg, objectives).fit(digits.train)
        assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in hist.epochs)
        drift[alpha] = float((_backbone(student) - w0).norm())
    assert drift[10.0] < 0.5 * drift[None]


# ------------------------------------------------------------------------------------ EWC
class _LogReg(nn.Module):
    """Binary logistic regression with 2 weights, as two logits ``[0, w.x]``."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        z = x @ self.w
        return torch.stack([torch.zeros_like(z), z], dim=1)


_X = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.5, -1.5]])
_Y = torch.tensor([1, 0, 1])


def test_fisher_matches_closed_form_on_logistic_regression():
    model = _LogReg([0.3, -0.2])
    data = TensorDataset(_X, _Y, name="toy")
    s = torch.sigmoid(_X @ model.w.detach())
    # d/dw log p(y|x) = (y - s) x; empirical F = mean_n ((y_n - s_n) x_n)^2
    emp = (((_Y - s)[:, None] * _X) ** 2).mean(0)
    # true F = mean_n [s (1-s)^2 + (1-s) s^2] x^2 = mean_n s (1-s) x^2
    true = ((s * (1 - s))[:, None] * _X**2).mean(0)
    for kind, want in (("empirical", emp), ("true", true)):
        got = fisher_diagonal(model, data, kind=kind, batch_size=2)  # 2 batches: 2 + 1
        torch.testing.assert_close(got["w"], want)
    # first example alone by hand: s = sigmoid(0.3 - 0.4) = sigmoid(-0.1)
    s0 = 1 / (1 + torch.exp(torch.tensor(0.1)))
    got = fisher_diagonal(model, data, kind="empirical", max_examples=1)["w"]
    torch.testing.assert_close(got, ((1 - s0) * torch.tensor([1.0, 2.0])) ** 2)


def test_fisher_vmap_equals_loop_and_autograd_on_mlp(source_task):
    source, data = source_task
    sub = TensorDataset(data.x[:6], data.y[:6], name="six")
    got = fisher_diagonal(source, sub, kind="true")
    want = {n: torch.zeros_like(p) for n, p in source.named_parameters()}
    for i in range(6):
        p = torch.softmax(source(sub.x[i:i + 1]), 1)[0].detach()
        for c in range(5):
            source.zero_grad()
            torch.log_softmax(source(sub.x[i:i + 1]), 1)[0, c].backward()
            for n, q in source.named_parameters():
                want[n] += p[c] * q.grad**2 / 6
    source.zero_grad()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-9)
    params = {k: v.detach() for k, v in source.named_parameters()}
    buffers = dict(source.named_buffers())
    a = _per_example_sq_grads(source, params, buffers, sub.x, sub.y, True)
    b = _per_example_sq_grads(source, params, buffers, sub.x, sub.y, False)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_ewc_penalty_hand_computed():
    params = {"a": torch.tensor([1.0, 1.0]), "new": torch.tensor([5.0])}
    ref = {"a": torch.tensor([0.0, 3.0])}
    fisher = {"a": torch.tensor([1.0, 2.0])}
    # lam/2 * (1 * 1^2 + 2 * (-2)^2) = 1.5 * 9 = 13.5; "new" has no reference -> 0
    assert ewc_penalty(params, ref, fisher, lam=3.0).item() == pytest.approx(13.5)


def test_save_load_fisher_round_trip(tmp_path):
    fisher = {"w": torch.tensor([0.5, 0.25]), "b.c": torch.tensor([[1.0]])}
    path = save_fisher(fisher, tmp_path, kind="true", n_examples=3)
    assert path == tmp_path / "fisher.safetensors"
    loaded = load_fisher(tmp_path)
    assert set(loaded) == set(fisher)
    for k in fisher:
        assert torch.equal(loaded[k], fisher[k])
    assert fisher_info(path) == {"kind": "true", "n_examples": "3"}


def test_ewc_setup_matches_backbone_and_caches(source_task, digits, tmp_path, monkeypatch):
    source, data = source_task
    calls = []
    real = ewc_mod.fisher_diagonal

    def counting(*args, **kwargs):
        calls.append(kwargs.get("kind"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ewc_mod, "fisher_diagonal", counting)
    for _ in range(2):
        obj = EWC(source, data, kind="true", lam=2.0, max_examples=50, cache_dir=str(tmp_path))
        student = _student(source)
        obj.setup(_fake_trainer(student, digits.train))
        assert set(obj.fisher) == {"backbone.fc1.0.weight", "backbone.fc1.0.bias"}
    assert calls == ["true"]  # the second setup read the cached Fisher
    assert obj.computed is False
    key = ewc_mod.fisher_key(source, data, 50, "true")
    (cached,) = tmp_path.glob("fisher-true-*.safetensors")
    assert cached.name == f"fisher-true-{key[:16]}.safetensors"
    assert fisher_info(cached) == {"kind": "true", "n_examples": "50", "key": key}
    batch = Batch(x=data.x[:1], y=data.y[:1], logits=torch.zeros(1, 10),
                  features=torch.zeros(1, 16), model=student)
    assert obj(batch).item() == 0.0  # student backbone == source backbone
    with torch.no_grad():
        student.backbone.fc1[0].bias.add_(1.0)
    f = obj.fisher["backbone.fc1.0.bias"]
    assert obj(batch).item() == pytest.approx(0.5 * 2.0 * f.sum().item(), rel=1e-5)


def test_ewc_cache_is_keyed_by_source_weights_data_and_count(source_task, digits, tmp_path, monkeypatch):
    source, data = source_task
    calls = []
    real = ewc_mod.fisher_diagonal
    monkeypatch.setattr(ewc_mod, "fisher_diagonal", lambda *a, **k: calls.append(1) or real(*a, **k))

    def setup(src, examples, max_examples=40):
        obj = EWC(src, examples, max_examples=max_examples)
        obj.setup(FitContext(_student(src), torch.device("cpu"), TrainConfig(weight_decay=0.0),
                             digits.train, run_dir=tmp_path / "run"))
        return obj

    setup(source, data)
    assert len(calls) == 1 and len(list((tmp_path / "run").glob("fisher-empirical-*"))) == 1
    assert setup(source, data).computed is False and len(calls) == 1   # same source, data, count
    setup(source, data.subset(range(1, 60)))                           # other source examples
    setup(source, data, max_examples=30)                               # other count
    other = copy.deepcopy(source)
    with torch.no_grad():
        other.backbone.fc1[0].bias.add_(0.1)
    setup(other, data)                                                 # other source weights
    assert len(calls) == 4 and len(list((tmp_path / "run").glob("fisher-empirical-*"))) == 4


def test_ewc_reads_fisher_stored_with_the_model(source_task, digits, tmp_path, monkeypatch):
    source, data = source_task
    folder = save_model(source, tmp_path / "src")
    fisher = fisher_diagonal(source, data, kind="empirical", max_examples=20)
    loaded = load_model(folder)
    # saved without saying what it was estimated from: never reused silently
    save_fisher(fisher, folder, kind="empirical", n_examples=20)
    obj = EWC(loaded, data, kind="empirical", max_examples=20)
    obj.setup(_fake_trainer(_student(loaded), digits.train))
    assert obj.computed
    save_fisher(fisher, folder, kind="empirical", n_examples=20,
                key=ewc_mod.fisher_key(loaded, data, 20, "empirical"))
    monkeypatch.setattr(ewc_mod, "fisher_diagonal", lambda *a, **k: pytest.fail("recomputed"))
    obj = EWC(loaded, data, kind="empirical", max_examples=20)
    obj.setup(_fake_trainer(_student(loaded), digits.train))
    assert torch.equal(obj.fisher["backbone.fc1.0.weight"], fisher["backbone.fc1.0.weight"])
    with pytest.raises(ConfigError, match="EWC needs source data"):  # refused when built, not later
        EWC(source, cache_dir=str(tmp_path / "empty"))  # cache miss and no data to compute
    with pytest.raises(ShapeError, match="belongs to another model"):
        bad = {"backbone.fc1.0.weight": torch.ones(3, 3)}
        EWC(loaded, fisher=bad).setup(_fake_trainer(_student(loaded), digits.train))


# ------------------------------------------------------------------------------------ LwF
def test_lwf_old_head_reproduces_source_and_loss_starts_at_zero(source_task, digits):
    source, _ = source_task
    student = _student(source)
    obj = LwF(source, temperature=2.0)
    obj.setup(_fake_trainer(student, digits.train))
    with torch.no_grad():
        feats = student.eval().forward_features(digits.train.x)
        assert torch.equal(obj.source_head()(feats), source(digits.train.x))
        assert torch.equal(obj.targets, source(digits.train.x))
    assert obj.targets.shape == (len(digits.train), 5)
    assert not obj.targets.requires_grad
    assert all(p.requires_grad for p in obj.old_head.parameters())
    assert obj.source_head() is not source.head
    batch = Batch(x=digits.train.x, y=digits.train.y, logits=student.head(feats),
                  features=feats, model=student, index=torch.arange(len(digits.train)))
    assert obj(batch).item() == 0.0 == kd_loss(obj.targets, obj.targets, 2.0).item()


def test_lwf_trains_old_head_in_a_real_trainer(source_task, digits):
    source, _ = source_task
    source_before = copy.deepcopy(source.state_dict())
    student = _student(source)
    obj = LwF(source, temperature=2.0)
    cfg = TrainConfig(epochs=2, lr=1e-2, backbone_lr_scale=1.0, seed=0)
    hist = Trainer(student, cfg, [CrossEntropy(), obj]).fit(digits.train)
    last = hist.epochs[-1]
    assert torch.isfinite(torch.tensor(last["loss_lwf"])) and last["loss_lwf"] > 0
    assert not torch.equal(obj.source_head().weight, source.head.weight)  # trained jointly
    for k, v in source.state_dict().items():
        assert torch.equal(v, source_before[k])  # the source itself is untouched


def test_lwf_feature_size_mismatch(source_task, digits):
    source, _ = source_task
    student = create_model("mlp", num_classes=10, in_features=64, hidden=(8,))
    with pytest.raises(ShapeError, match=r"features of shape \(8,\).*takes \(16,\)"):
        LwF(source).setup(_fake_trainer(student, digits.train))


# ------------------------------------------------------------------------------------ all three
def test_each_objective_trains_in_a_real_trainer(source_task, digits):
    source, data = source_task
    cfg = TrainConfig(epochs=1, lr=1e-2, backbone_lr_scale=1.0, weight_decay=0.0, seed=0)
    specs = [{"name": "l2sp", "alpha": 0.1}, {"name": "ewc", "lam": 10.0, "max_examples": 100},
             {"name": "lwf", "temperature": 2.0}]
    for spec in specs:
        objs = build_objectives([{"name": "cross_entropy"}, spec], source=source,
                                source_data=data)
        student = _student(source)
        hist = Trainer(student, cfg, objs).fit(digits.train)
        key = f"loss_{spec['name']}"
        assert torch.isfinite(torch.tensor(hist.epochs[-1]["train_loss"]))
        assert hist.epochs[-1][key] >= 0.0


def test_registered():
    assert OBJECTIVES.get("l2sp") is L2SP
    assert OBJECTIVES.get("ewc") is EWC
    assert OBJECTIVES.get("lwf") is LwF


def test_bad_input(source_task):
    source, data = source_task
    with pytest.raises(ConfigError, match="EWC needs source data.*source_data="):
        EWC(source)
    with pytest.raises(ConfigError, match="EWC needs the source model"):
        EWC(None, data)
    with pytest.raises(ConfigError, match=r"'l2sp': alpha=-1: must be >= 0; 0.01-0.1 is usual"):
        L2SP(alpha=-1)
    with pytest.raises(ConfigError, match=r"'l2sp': beta=nan: must be a finite number"):
        L2SP(beta=float("nan"))
    with pytest.raises(ConfigError, match=r"'ewc': lam=-0.5: must be >= 0"):
        EWC(source, data, lam=-0.5)
    with pytest.raises(ConfigError, match="kind='fake': must be one of 'empirical', 'true'"):
        EWC(source, data, kind="fake")
    with pytest.raises(ConfigError, match="LwF needs the source model"):
        LwF()
    with pytest.raises(ConfigError, match="'lwf': temperature=0: must be > 0"):
        LwF(source, temperature=0)
    with pytest.raises(ConfigError, match="no old head yet"):
        LwF(source).source_head()
