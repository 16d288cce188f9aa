"""DELTA and BSS: feature-level regularisers that keep what the source knew."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.engine import OBJECTIVES, Batch, CrossEntropy, TrainConfig, Trainer
from transferkit.engine.objectives import build_objectives
from transferkit.errors import ConfigError, ShapeError, UnknownNameError
from transferkit.models import LayerTap, create_model
from transferkit.transfer.regularize.bss import BSS, bss_penalty
from transferkit.transfer.regularize.delta import (
    DELTA,
    channel_importance,
    delta_penalty,
    importance_to_weights,
    supervised_channel_weights,
)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=64, lr=1e-2, backbone_lr_scale=1.0, scheduler="none",
                weight_decay=0.0, device="cpu", amp=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _cnn(seed: int = 0, num_classes: int = 10, widths=(8, 16)):
    torch.manual_seed(seed)
    return create_model("small_cnn", num_classes=num_classes, image_size=8, widths=widths,
                        feature_dim=16)


@pytest.fixture(scope="module")
def small_train(digits):
    return digits.train.subset(range(256))


# --------------------------------------------------------------------------- BSS
def test_bss_penalty_hand_computed_on_diagonal_features():
    f = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    assert bss_penalty(f, k=1).item() == pytest.approx(1.0, abs=1e-5)
    assert bss_penalty(f, k=2).item() == pytest.approx(1.0 + 4.0, abs=1e-5)
    # k above min(N, D) uses every singular value: ||F||_F^2
    assert bss_penalty(f, k=7).item() == pytest.approx(14.0, abs=1e-4)
    # non-square (N=4, D=3): an extra zero row changes nothing
    f4 = torch.cat([f, torch.zeros(1, 3)])
    assert bss_penalty(f4, k=2).item() == pytest.approx(5.0, abs=1e-5)


def test_bss_penalty_is_zero_over_the_null_directions_of_rank_deficient_features():
    f = torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [-1.0, -2.0, 0.0], [3.0, 6.0, 0.0]])
    # rank 1 with min(N, D) = 3: the two smallest singular values are 0
    assert bss_penalty(f, k=2).item() == pytest.approx(0.0, abs=1e-6)
    assert bss_penalty(f, k=3).item() == pytest.approx(float((f**2).sum()), rel=1e-5)


def test_bss_gradient_reaches_the_features():
    f = torch.diag(torch.tensor([3.0, 2.0, 1.0])).requires_grad_(True)
    bss_penalty(f, k=1).backward()
    # d sigma_min^2 / dF = 2 sigma_min u v^T with u = v = e_3
    expected = torch.zeros(3, 3)
    expected[2, 2] = 2.0
    torch.testing.assert_close(f.grad, expected, atol=1e-5, rtol=0)


def test_bss_objective_uses_batch_features_with_its_weight_and_registration():
    obj = BSS(k=2, weight=0.5)
    assert obj.name == "bss" and obj.weight == 0.5 and obj.head_only is False
    feats = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    batch = Batch(x=torch.zeros(3, 1), y=torch.zeros(3, dtype=torch.long),
                  logits=torch.zeros(3, 2), features=feats)
    assert obj(batch).item() == pytest.approx(5.0, abs=1e-5)
    assert OBJECTIVES.get("bss") is BSS
    built = build_objectives([{"name": "bss", "k": 3}])[0]
    assert isinstance(built, BSS) and built.k == 3 and built.weight == 0.001


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"k": 0}, r"k=0: must be >= 1; the paper uses k=1"), ({"k": 1.5}, r"k=1\.5: must be an integer"),
     ({"k": True}, "k=True: must be an integer"), ({"weight": -1.0}, r"weight=-1\.0: must be >= 0")],
)
def test_bss_rejects_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BSS(**kwargs)


def test_bss_penalty_rejects_non_matrix_features():
    with pytest.raises(ShapeError, match=r"\(N, D\), got shape \(2, 3, 4\)"):
        bss_penalty(torch.zeros(2, 3, 4))


# --------------------------------------------------------------------------- DELTA, pure parts
def test_delta_penalty_hand_computed():
    s_conv = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]], [[[0.0, 0.0]], [[1.0, 1.0]]]])  # (2,2,1,2)
    s_vec = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # (2, 3)
    student = {"conv": s_conv.requires_grad_(True), "vec": s_vec}
    source = {"conv": torch.zeros(2, 2, 1, 2), "vec": torch.zeros(2, 3)}
    weights = {"conv": torch.tensor([0.75, 0.25]), "vec": torch.full((3,), 1 / 3)}
    # conv: n0 -> 2*(0.75*5/2 + 0.25*9/2) = 6; n1 -> 2*(0.25*2/2) = 0.5; mean 3.25
    # vec:  n0 -> 3*(1/3*1) = 1; n1 -> 3*(1/3*4) = 4; mean 2.5
    value = delta_penalty(student, source, weights)
    assert value.item() == pytest.approx(3.25 + 2.5, abs=1e-6)
    value.backward()
    # d/dS of 1/N * C * w_c * (S - T)^2 / HW = 2 * C * w_c * S / (N * HW)
    torch.testing.assert_close(s_conv.grad[0, 0, 0], torch.tensor([0.75, 1.5]))
    assert delta_penalty(source, source, weights).item() == 0.0


def test_delta_penalty_errors():
    s = {"a": torch.zeros(2, 3, 2, 2)}
    with pytest.raises(ShapeError, match=r"'a'.*\(2, 3, 2, 2\).*\(2, 4, 2, 2\)"):
        delta_penalty(s, {"a": torch.zeros(2, 4, 2, 2)}, {"a": torch.ones(3) / 3})
    with pytest.raises(ShapeError, match=r"3 channels but its channel weights have shape \(2,\)"):
        delta_penalty(s, s, {"a": torch.ones(2)})
    with pytest.raises(ConfigError, match="no entry in channel_weights"):
        delta_penalty(s, s, {})
    with pytest.raises(ConfigError, match="no feature maps"):
        delta_penalty({}, {}, {})


def test_importance_to_weights_standardises_then_softmax():
    w = importance_to_weights(torch.tensor([2.0, 0.0]), temperature=5.0)
    e = math.exp(0.2)  # z = (+1, -1), divided by the temperature
    torch.testing.assert_close(w, torch.tensor([e / (e + 1 / e), (1 / e) / (e + 1 / e)]))
    torch.testing.assert_close(importance_to_weights(torch.tensor([0.3, 0.3, 0.3])),
                               torch.full((3,), 1 / 3))
    sharper = importance_to_weights(torch.tensor([2.0, 0.0]), temperature=0.5)
    assert sharper[0] > w[0]


def _toy_net() -> nn.Module:
    """x (N,1,1,1) -> 3 channels (5x, 0.5x, 0) -> logits (0, sum of channels)."""
    net = nn.Sequential(OrderedDict(
        feat=nn.Conv2d(1, 3, 1, bias=False), flat=nn.Flatten(), out=nn.Linear(3, 2)))
    with torch.no_grad():
        net.feat.weight.copy_(torch.tensor([5.0, 0.5, 0.0]).view(3, 1, 1, 1))
        net.out.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
        net.out.bias.zero_()
    return net


def test_channel_importance_scores_the_channel_that_matters_highest():
    net = _toy_net().train()
    x = torch.tensor([1.0, -1.0, 0.5, -0.5]).view(4, 1, 1, 1)
    y = (x.flatten() > 0).long()
    scores = channel_importance(net, ["feat"], x, y, batch_size=3)["feat"]
    ce = lambda scale: float(F.cross_entropy(  # noqa: E731
        torch.stack([torch.zeros(4), scale * x.flatten()], 1), y))
    torch.testing.assert_close(scores, torch.tensor([ce(0.5) - ce(5.5), ce(5.0) - ce(5.5), 0.0]))
    assert net.training  # mode restored
    w = supervised_channel_weights(net, ["feat"], x, y)["feat"]
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert w[0] > w[1] > w[2]


# --------------------------------------------------------------------------- DELTA, objective
def _setup(obj, model, data):
    trainer = Trainer(model, _cfg(), objectives=[CrossEntropy(), obj])
    trainer.context.train_data = data
    model.to(trainer.device)
    obj.setup(trainer.context)
    return trainer


def _eval_batch(model, layers, x, y):
    model.eval()
    with LayerTap(model, layers) as tap:
        feats = model.forward_features(x)
        logits = model.head(feats)
    return Batch(x=x, y=y, logits=logits, features=feats, taps=dict(tap.features), model=model)


def test_delta_is_zero_at_setup_and_grows_with_drift(small_train):
    model = _cnn()
    obj = DELTA(max_examples=64)
    _setup(obj, model, small_train)
    assert obj.name == "delta"
    assert obj.layers == ["backbone.conv1", "backbone.conv2"] and obj.taps == tuple(obj.layers)
    for name, c in (("backbone.conv1", 8), ("backbone.conv2", 16)):
        w = obj.channel_weights[name]
        assert w.shape == (c,) and w.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert float(w.max()) > float(w.min())  # supervised: not uniform
    x, y = small_train.x[:32], small_train.y[:32]
    assert obj(_eval_batch(model, obj.layers, x, y)).item() == 0.0
    with torch.no_grad():
        model.backbone.conv2[0].weight.add_(0.1 * torch.randn_like(model.backbone.conv2[0].weight))
    assert obj(_eval_batch(model, obj.layers, x, y)).item() > 1e-3
    assert obj.state_dict() == OrderedDict()  # the source stays out of checkpoints


def test_delta_attention_none_is_uniform_and_vector_layers_default_to_last_block(small_train):
    obj = DELTA(attention="none")
    _setup(obj, _cnn(), small_train)
    torch.testing.assert_close(obj.channel_weights["backbone.conv2"], torch.full((16,), 1 / 16))
    torch.manual_seed(0)
    mlp = create_model("mlp", num_classes=10, in_features=64, hidden=(8,))
    obj = DELTA(max_examples=16)
    _setup(obj, mlp, small_train)
    last = [n for n, _ in mlp.backbone.named_children()][-1]
    assert obj.layers == [f"backbone.{last}"]


def test_delta_and_bss_train_in_a_trainer_with_a_given_source(small_train):
    student = _cnn(seed=1)
    source = _cnn(seed=2, num_classes=5)  # own head; channel scores use the student's head
    source_state = copy.deepcopy(source.state_dict())
    start = copy.deepcopy(student.state_dict())
    delta, bss = DELTA(source=source, max_examples=64, weight=0.5), BSS(k=2, weight=0.01)
    trainer = Trainer(student, _cfg(), objectives=[CrossEntropy(), delta, bss])
    history = trainer.fit(small_train)
    for row in history.epochs:
        assert all(math.isfinite(row[k]) for k in ("train_loss", "loss_delta", "loss_bss"))
        assert row["loss_delta"] > 0 and row["loss_bss"] >= 0
    assert delta.teacher.model is source
    for k, v in source.state_dict().items():
        torch.testing.assert_close(v, source_state[k])
    assert not any(p.requires_grad for p in source.parameters())
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in source.parameters()}
    assert not torch.equal(student.state_dict()["backbone.conv1.0.weight"],
                           start["backbone.conv1.0.weight"])


def _drift(weight: float, data, probe) -> float:
    model = _cnn(seed=3)
    start = copy.deepcopy(model).eval()
    objectives = [CrossEntropy()] + ([DELTA(attention="none", weight=weight)] if weight else [])
    Trainer(model, _cfg(epochs=3, lr=3e-2), objectives=objectives).fit(data)
    layers = ["backbone.conv1", "backbone.conv2"]
    with torch.no_grad(), LayerTap(model.eval(), layers) as a, LayerTap(start, layers) as b:
        model(probe)
        start(probe)
    return sum(float((a.features[n] - b.features[n]).pow(2).mean()) for n in layers)


def test_delta_reduces_feature_drift_against_plain_fine_tuning(digits, small_train):
    probe = digits.val.x[:128]
    plain, kept = _drift(0.0, small_train, probe), _drift(20.0, small_train, probe)
    assert kept < 0.5 * plain


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"weight": -0.5}, r"weight=-0\.5: must be >= 0"),
     ({"temperature": 0.0}, r"temperature=0\.0: must be > 0; the authors use 5"),
     ({"attention": "channel"}, r"attention='channel': must be one of 'supervised', 'none'"),
     ({"max_examples": 0}, r"max_examples=0: must be >= 1"),
     ({"layers": []}, r"layers=\[\]: must not be empty"),
     ({"source": "resnet"}, r"source must be an nn\.Module or None .*got str")],
)
def test_delta_rejects_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DELTA(**kwargs)


def test_delta_unknown_or_mismatched_layers(small_train):
    with pytest.raises(UnknownNameError, match=r"no layer 'backbone\.conv9'.*backbone\.conv1"):
        DELTA(source=_cnn(), layers=["backbone.conv9"])
    with pytest.raises(UnknownNameError, match=r"no layer 'backbone\.nope'"):
        Trainer(_cnn(), _cfg(epochs=1), objectives=[DELTA(layers=["backbone.nope"])]).fit(
            small_train)
    wide = _cnn(widths=(8, 32))
    with pytest.raises(ShapeError, match=r"'backbone\.conv2' gives \(16, 2, 2\).*\(32, 2, 2\)"):
        _setup(DELTA(source=wide, layers=["backbone.conv2"]), _cnn(), small_train)


def test_delta_is_registered_and_takes_source_from_context():
    src = _cnn()
    obj = build_objectives([{"name": "delta", "weight": 0.5, "attention": "none"}], source=src)[0]
    assert OBJECTIVES.get("delta") is DELTA
    assert isinstance(obj, DELTA) and obj.weight == 0.5 and obj._source == (src,)
