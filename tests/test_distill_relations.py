"""Attention transfer, RKD and FSP: hand-computed losses, invariances, objectives in a Trainer."""

from __future__ import annotations

import math

import pytest
import torch

from transferkit.data.base import TensorDataset
from transferkit.engine import TrainConfig, Trainer
from transferkit.engine.objectives import OBJECTIVES, Batch
from transferkit.errors import ConfigError, ShapeError, UnknownNameError
from transferkit.models import LayerTap, create_model
from transferkit.transfer.distill.attention import AttentionTransfer, at_loss, attention_map
from transferkit.transfer.distill.relations import (
    FSP,
    RKD,
    fsp_loss,
    fsp_matrix,
    rkd_angle_loss,
    rkd_distance_loss,
)
from transferkit.transfer.distill.teacher import Teacher, TeacherOutput

# --------------------------------------------------------------------------- attention


def test_attention_map_hand_computed():
    # channel 1 = [[1, 2], [3, 4]], channel 2 = [[1, 0], [1, 0]]
    # mean_c f^2 = [(1+1)/2, (4+0)/2, (9+1)/2, (16+0)/2] = [1, 2, 5, 8]; ||.|| = sqrt(94)
    feat = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [1.0, 0.0]]]])
    q = attention_map(feat)
    assert q.shape == (1, 4)
    assert torch.allclose(q, torch.tensor([[1.0, 2.0, 5.0, 8.0]]) / math.sqrt(94.0))
    # p = 1: mean_c |f| = [1, 1, 2, 2]; ||.|| = sqrt(10)
    assert torch.allclose(attention_map(-feat, p=1.0), torch.tensor([[1.0, 1, 2, 2]]) / 10**0.5)


def test_attention_map_scale_invariant_and_rejects_vectors():
    f = torch.randn(3, 4, 5, 5)
    assert torch.allclose(attention_map(7.5 * f), attention_map(f), atol=1e-6)
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\)"):
        attention_map(torch.randn(3, 10))


def test_at_loss_hand_computed():
    # example 1: Q_s = [1, 0], Q_t = [0, 1] -> squared differences [1, 1]
    # example 2: both [1, 0] -> [0, 0]; mean over 2 x 2 entries = 2 / 4 = 0.5
    s = torch.tensor([[[[1.0, 0.0]]], [[[3.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 2.0]]], [[[5.0, 0.0]]]])
    assert at_loss(s, t).item() == pytest.approx(0.5)
    assert at_loss(s, s).item() == 0.0


def test_at_loss_resizes_smaller_map_and_ignores_channels():
    # uniform maps stay uniform after bilinear upsampling: loss 0 despite 2x2 vs 4x4, 3 vs 5 ch
    assert at_loss(torch.ones(2, 3, 2, 2), torch.full((2, 5, 4, 4), 2.0)).item() == pytest.approx(
        0.0, abs=1e-12
    )
    # a student map peaked at one corner differs from a uniform teacher map
    s = torch.zeros(1, 1, 2, 2)
    s[0, 0, 0, 0] = 1.0
    assert at_loss(s, torch.ones(1, 1, 4, 4)).item() > 0.01
    with pytest.raises(ShapeError, match="student layer gives"):
        at_loss(torch.randn(2, 8), torch.randn(2, 3, 4, 4))
    with pytest.raises(ShapeError, match="batch sizes differ"):
        at_loss(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))


# --------------------------------------------------------------------------- RKD

SQ3 = math.sqrt(3.0)
EQUILATERAL = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, SQ3]])  # all sides 2


def test_rkd_distance_hand_computed():
    # student on a line at 0, 1, 3: distances 1, 3, 2; mean 2 -> normalised 0.5, 1.5, 1.0
    # teacher equilateral: normalised 1, 1, 1. Differences -0.5, 0.5, 0 (each twice in N x N);
    # smooth L1: 0.5 * 0.25 = 0.125 four times -> 0.5 / 9 entries
    student = torch.tensor([[0.0], [1.0], [3.0]])
    assert rkd_distance_loss(student, EQUILATERAL).item() == pytest.approx(0.5 / 9)


def test_rkd_distance_zero_and_scale_invariant():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 9)
    assert rkd_distance_loss(s, 3.0 * s).item() == pytest.approx(0.0, abs=1e-7)
    assert rkd_distance_loss(10.0 * s, t).item() == pytest.approx(rkd_distance_loss(s, t).item())
    assert rkd_distance_loss(s, t).item() > 0


def test_rkd_angle_hand_computed():
    # student: right isosceles triangle (0,0), (1,0), (0,1): angles 90, 45, 45 degrees
    # teacher: equilateral, all angles 60 degrees (cos 0.5). Of the 27 index triples only the 6
    # with three distinct points differ: at the right angle cos 0 vs 0.5 (two ordered triples,
    # 0.5 * 0.5^2 = 0.125 each); at each 45-degree vertex cos 0.7071 vs 0.5 (four triples,
    # 0.5 * 0.2071^2 each)
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    d45 = math.sqrt(0.5) - 0.5
    expected = (2 * 0.125 + 4 * 0.5 * d45**2) / 27
    assert rkd_angle_loss(student, EQUILATERAL).item() == pytest.approx(expected)
    # rotated, shifted, scaled copies keep every angle
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    assert rkd_angle_loss(student, 4.0 * student @ rot + 1.0).item() == pytest.approx(
        0.0, abs=1e-7
    )


def test_rkd_small_batches_give_zero_with_gradient():
    s = torch.randn(2, 3, requires_grad=True)
    loss = rkd_angle_loss(s, torch.randn(2, 5))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert rkd_distance_loss(s[:1], torch.randn(1, 5)).item() == 0.0
    with pytest.raises(ShapeError, match=r"\(N, D\)"):
        rkd_distance_loss(torch.randn(3, 2, 2), torch.randn(3, 4))
    with pytest.raises(ShapeError, match="different batch sizes"):
        rkd_angle_loss(torch.randn(3, 2), torch.randn(4, 2))


def test_rkd_gradients_are_finite_with_duplicate_points():
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [2.0, 0.0]], requires_grad=True)
    (rkd_distance_loss(s, torch.randn(4, 3)) + rkd_angle_loss(s, torch.randn(4, 3))).backward()
    assert torch.isfinite(s.grad).all()


# --------------------------------------------------------------------------- FSP


def test_fsp_matrix_hand_computed():
    f1 = torch.tensor([[[[1.0, 2.0]]]])  # (1, 1, 1, 2)
    f2 = torch.tensor([[[[3.0, 4.0]], [[1.0, -1.0]]]])  # (1, 2, 1, 2)
    # G[0, 0] = (1*3 + 2*4) / 2 = 5.5; G[0, 1] = (1*1 + 2*(-1)) / 2 = -0.5
    g = fsp_matrix(f1, f2)
    assert g.shape == (1, 1, 2)
    assert torch.allclose(g, torch.tensor([[[5.5, -0.5]]]))
    # a 2x2 map is average-pooled to the other's 1x1: mean(1, 2, 3, 4) = 2.5; 2.5 * 2 / 1 = 5
    big = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert fsp_matrix(big, torch.full((1, 1, 1, 1), 2.0)).item() == pytest.approx(5.0)
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\)"):
        fsp_matrix(torch.randn(1, 4), f2)


def test_fsp_loss_hand_computed():
    # pair 0: per example ||[5.5] - [3.5]||^2 = 4; pair 1: identical -> 0; mean over pairs 2
    gs = [torch.tensor([[[5.5]]]), torch.ones(1, 2, 3)]
    gt = [torch.tensor([[[3.5]]]), torch.ones(1, 2, 3)]
    assert fsp_loss(gs, gt).item() == pytest.approx(2.0)
    # batch mean: examples with squared distances 1 + 1 = 2 and 0 -> 1
    a = torch.tensor([[[1.0, 1.0]], [[0.0, 0.0]]])
    assert fsp_loss(a, torch.zeros(2, 1, 2)).item() == pytest.approx(1.0)
    assert fsp_loss(gs, gs).item() == 0.0
    with pytest.raises(ShapeError, match="matching channels"):
        fsp_loss([torch.ones(1, 2, 3)], [torch.ones(1, 2, 4)])
    with pytest.raises(ShapeError, match="1 student and 2 teacher"):
        fsp_loss(gs[:1], gt)


# --------------------------------------------------------------------------- objectives


def _cnn(widths):
    return create_model("small_cnn", num_classes=10, widths=widths, feature_dim=32)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,),
                                                                               generator=g))


def _config(**kw):
    base = dict(epochs=3, batch_size=16, lr=1e-2, backbone_lr_scale=1.0, device="cpu", seed=0,
                scheduler="none")
    base.update(kw)
    return TrainConfig(**base)


def _batch(model, obj, x, y):
    """A Batch for ``obj`` as the trainer builds it (student taps still in the graph)."""
    model.train()
    with LayerTap(model, list(obj.taps)) as tap:
        feats = model.forward_features(x)
        logits = model.head(feats)
    return Batch(x=x, y=y, logits=logits, features=feats, taps=dict(tap.features), model=model)


MAKERS = {
    "attention": lambda t: AttentionTransfer(t, weight=100.0),
    "rkd": lambda t: RKD(t),
    "fsp": lambda t: FSP(t),
}


def test_registered():
    assert OBJECTIVES.get("attention") is AttentionTransfer
    assert OBJECTIVES.get("rkd") is RKD
    assert OBJECTIVES.get("fsp") is FSP


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_objective_trains_student_not_teacher(name, data):
    torch.manual_seed(0)
    student, teacher_model = _cnn((8, 16)), _cnn((16, 32))
    before = {k: v.clone() for k, v in teacher_model.state_dict().items()}
    obj = MAKERS[name](Teacher(teacher_model))
    history = Trainer(student, _config(), [obj]).fit(data)
    losses = [row[f"loss_{obj.name}"] for row in history.epochs]
    assert losses[-1] < losses[0], losses
    after = teacher_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in teacher_model.parameters())
    # gradients of the term alone reach the student's first block
    student.zero_grad()
    loss = obj(_batch(student, obj, data.x[:8], data.y[:8]))
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    grad = student.backbone.conv1[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_default_pairs(data):
    s, t = _cnn((8, 16)), _cnn((16, 32, 32))
    at, fsp = AttentionTransfer(Teacher(t)), FSP(Teacher(t))
    Trainer(s, _config(epochs=1), [at, fsp]).fit(data)
    # paired from the top: the student's 2 maps with the teacher's top 2
    assert at.pairs == [("backbone.conv1", "backbone.conv2"), ("backbone.conv2", "backbone.conv3")]
    assert at.taps == ("backbone.conv1", "backbone.conv2")
    assert fsp.student_pairs_ == [("backbone.conv1", "backbone.conv2")]
    assert fsp.teacher_pairs_ == [("backbone.conv2", "backbone.conv3")]
    # 8 -> 32 and 16 -> 32 channels need adapters, which are trained parameters
    assert sorted(fsp.adapters) == ["pair0_a", "pair0_b"]
    assert fsp.adapters["pair0_a"].teacher_shape == (32, 14, 14)


def test_fsp_equal_widths_need_no_adapter_and_explicit_pairs(data):
    s, t = _cnn((8, 16)), _cnn((8, 16))
    fsp = FSP(Teacher(t), student_pairs=[("backbone.conv1", "backbone.conv2")],
              teacher_pairs=[("backbone.conv1", "backbone.conv2")], adapter=None)
    Trainer(s, _config(epochs=1), [fsp]).fit(data)
    assert len(fsp.adapters) == 0


def test_rkd_explicit_layers_and_mlp_student(data):
    torch.manual_seed(0)
    mlp = create_model("mlp", num_classes=10, hidden=(16,))
    rkd = RKD(Teacher(_cnn((8, 16))), teacher_layer="backbone.conv2", student_layer="backbone.fc1")
    Trainer(mlp, _config(epochs=1), [rkd]).fit(data)
    assert rkd.taps == ("backbone.fc1",)
    loss = rkd(_batch(mlp, rkd, data.x[:8], data.y[:8]))  # 4-D teacher map flattened
    assert torch.isfinite(loss) and loss.item() > 0


# --------------------------------------------------------------------------- bad input


def test_unknown_layers():
    teacher = Teacher(_cnn((8, 16)))
    with pytest.raises(UnknownNameError, match="backbone.conv9"):
        AttentionTransfer(teacher, pairs=[("backbone.conv1", "backbone.conv9")])
    with pytest.raises(UnknownNameError, match="Did you mean"):
        FSP(teacher, student_pairs=[("a", "b")], teacher_pairs=[("backbone.conv1", "backbone.cnv2")])
    with pytest.raises(UnknownNameError, match="no layer"):
        RKD(teacher, teacher_layer="backbone.nope")


def test_unknown_student_layer_fails_in_fit(data):
    teacher = Teacher(_cnn((8, 16)))
    for obj in (
        AttentionTransfer(teacher, pairs=[("backbone.cnv1", "backbone.conv1")]),
        RKD(teacher, student_layer="backbone.nope"),
    ):
        with pytest.raises(UnknownNameError, match="Did you mean|no layer"):
            Trainer(_cnn((8, 16)), _config(epochs=1), [obj]).fit(data)


def test_vector_layers_rejected(data):
    teacher = Teacher(_cnn((8, 16)))
    mlp = create_model("mlp", num_classes=10, hidden=(16,))
    with pytest.raises(ShapeError, match="student.*no backbone block with a 4-D"):
        Trainer(mlp, _config(epochs=1), [AttentionTransfer(teacher)]).fit(data)
    with pytest.raises(ShapeError, match="FSP needs two backbone blocks.*student"):
        Trainer(mlp, _config(epochs=1), [FSP(teacher)]).fit(data)
    bad = AttentionTransfer(teacher, pairs=[("backbone.fc", "backbone.conv2")])
    with pytest.raises(ShapeError, match=r"'backbone.fc' gives \(N, 32\)"):
        Trainer(_cnn((8, 16)), _config(epochs=1), [bad]).fit(data)


def test_fsp_channel_mismatch_without_adapter(data):
    fsp = FSP(Teacher(_cnn((16, 32))), adapter=None)
    with pytest.raises(ShapeError, match="8 channels but teacher layer 'backbone.conv1' has 16"):
        Trainer(_cnn((8, 16)), _config(epochs=1), [fsp]).fit(data)


def test_config_errors(data):
    teacher = Teacher(_cnn((8, 16)))
    with pytest.raises(ConfigError, match="batch_size=2"):
        Trainer(_cnn((8, 16)), _config(epochs=1, batch_size=2), [RKD(teacher)]).fit(data)
    with pytest.raises(ConfigError, match="both 0"):
        RKD(teacher, distance_weight=0, angle_weight=0)
    with pytest.raises(ConfigError, match="angle_weight=-1: must be >= 0"):
        RKD(teacher, angle_weight=-1)
    with pytest.raises(ConfigError, match="both student_pairs and teacher_pairs"):
        FSP(teacher, student_pairs=[("backbone.conv1", "backbone.conv2")])
    with pytest.raises(ConfigError, match="adapter='conv3x3': must be one of 'auto', .*'conv1x1'"):
        FSP(teacher, adapter="conv3x3")
    with pytest.raises(ConfigError, match="p=0: must be >= 1; the paper uses p=2"):
        AttentionTransfer(teacher, p=0)
    # below 1, |f|^p has an infinite slope at exact zeros: NaN gradients on ReLU features
    feat = torch.tensor([[[[0.0, 1.0]]]], requires_grad=True)
    from transferkit.transfer.distill.attention import attention_map

    attention_map(feat, p=0.5).sum().backward()
    assert torch.isnan(feat.grad).any()
    with pytest.raises(ConfigError, match="p=0.5: must be >= 1"):
        AttentionTransfer(teacher, p=0.5)
    with pytest.raises(ConfigError, match=r"pairs=\['backbone.conv1'\]: item 0 must be a pair"):
        AttentionTransfer(teacher, pairs=["backbone.conv1"])
    with pytest.raises(ConfigError, match="needs a Teacher"):
        RKD(_cnn((8, 16)))
    with pytest.raises(ConfigError, match="setup"):
        AttentionTransfer(teacher)(_batch(_cnn((8, 16)), RKD(teacher), data.x[:4], data.y[:4]))


def test_missing_teacher_tap_is_explained():
    obj = RKD(Teacher(_cnn((8, 16))))
    obj.teacher.outputs = lambda batch: TeacherOutput(torch.zeros(4, 10))  # a logits-only table
    batch = Batch(x=torch.rand(4, 1, 28, 28), y=torch.zeros(4, dtype=torch.long),
                  logits=torch.zeros(4, 10), features=torch.randn(4, 32))
    with pytest.raises(ConfigError, match=r"teacher.request"):
        obj(batch)


def test_precomputing_teacher_shared_by_kd_and_layer_objectives(data):
    """KD set up first builds a logits table; attention then asks for layers: a live forward wins."""
    from transferkit.transfer.distill import LogitKD

    torch.manual_seed(0)
    teacher = Teacher(_cnn((16, 32)), precompute=True)
    kd, at = LogitKD(teacher), AttentionTransfer(teacher, weight=100.0)
    history = Trainer(_cnn((8, 16)), _config(epochs=2), [kd, at]).fit(data)
    assert teacher.layers and teacher._table is None
    assert history.epochs[-1]["loss_attention"] > 0
