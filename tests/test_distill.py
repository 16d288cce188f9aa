"""Distillation: logit KD, feature hints and their adapters, and the shared Teacher."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from transferkit.data import TensorDataset
from transferkit.engine import OBJECTIVES, FitContext, TrainConfig, Trainer
from transferkit.engine.objectives import Batch, CrossEntropy
from transferkit.errors import ConfigError, ShapeError, UnknownNameError
from transferkit.models import create_model
from transferkit.transfer.distill.adapters import FeatureAdapter, build_adapter
from transferkit.transfer.distill.features import Hint, hint_loss
from transferkit.transfer.distill.logits import LogitKD, kd_loss, soft_targets
from transferkit.transfer.distill.teacher import Teacher

LN = math.log


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def small_digits(digits):
    """256 real digits training examples (N, 1, 8, 8)."""
    return digits.train.subset(torch.arange(256))


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=32, lr=1e-2, backbone_lr_scale=1.0, device="cpu",
                scheduler="none", seed=0, amp=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained_teacher_net(small_digits):
    """A small CNN trained for a few epochs on the digits subset (a confident teacher)."""
    torch.manual_seed(0)
    net = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8,
                       widths=(8, 16), feature_dim=32)
    Trainer(net, _cfg(epochs=4)).fit(small_digits)
    return net


def _teacher_copy(net: nn.Module, **kw) -> Teacher:
    clone = create_model("small_cnn", num_classes=10, in_channels=1, image_size=8,
                         widths=(8, 16), feature_dim=32)
    clone.load_state_dict(net.state_dict())
    return Teacher(clone, **kw)


def _student(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(1)
    return create_model("mlp", num_classes=num_classes, in_features=64, hidden=(16,))


def _cnn_student() -> nn.Module:
    torch.manual_seed(2)
    return create_model("small_cnn", num_classes=10, in_channels=1, image_size=8,
                        widths=(4, 8), feature_dim=16)


# ----------------------------------------------------------------------------- kd_loss
def test_kd_loss_matches_hand_computed_value():
    # T = 2. lg = 2 * ln([1, 1, 2]) so softmax(lg / 2) = [1/4, 1/4, 1/2]; softmax(0) = [1/3]*3.
    lg = 2 * torch.log(torch.tensor([1.0, 1.0, 2.0]))
    student = torch.stack([torch.zeros(3), lg])
    teacher = torch.stack([lg, torch.zeros(3)])
    # row 1: p = [1/4, 1/4, 1/2], q = 1/3: KL = 2 * 1/4 ln(3/4) + 1/2 ln(3/2) = 1/2 ln(9/8)
    # row 2: p = 1/3, q = [1/4, 1/4, 1/2]: KL = 1/3 (2 ln(4/3) + ln(2/3)) = 1/3 ln(32/27)
    # batchmean: (row1 + row2) / 2, times T^2 = 4  ->  ln(9/8) + 2/3 ln(32/27) = 0.231049
    expected = LN(9 / 8) + 2 / 3 * LN(32 / 27)
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.231049, abs=1e-6)


def test_kd_loss_zero_when_student_equals_teacher():
    z = torch.randn(5, 4)
    assert kd_loss(z, z.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # softmax is shift-invariant per row
    assert kd_loss(z + 7.0, z, 3.0).item() == pytest.approx(0.0, abs=1e-5)
    assert kd_loss(z, torch.randn(5, 4), 3.0).item() > 1e-4


@pytest.mark.parametrize("temperature", [1.0, 2.5, 8.0])
def test_kd_loss_is_t_squared_times_kl_of_softened_probabilities(temperature):
    s = torch.tensor([[0.5, -1.0, 2.0]])
    t = torch.tensor([[1.5, 0.0, -0.5]])
    p = torch.softmax(t / temperature, 1)[0].tolist()
    q = torch.softmax(s / temperature, 1)[0].tolist()
    kl = sum(pi * LN(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert kd_loss(s, t, temperature).item() == pytest.approx(temperature**2 * kl, rel=1e-5)


def test_kd_gradient_magnitude_roughly_constant_across_temperature():
    torch.manual_seed(0)
    t = 0.1 * torch.randn(4, 5)
    s0 = 0.1 * torch.randn(4, 5)
    norms = []
    for temperature in (2.0, 4.0, 8.0):
        s = s0.clone().requires_grad_(True)
        kd_loss(s, t, temperature).backward()
        norms.append(s.grad.norm().item())
    # without the T^2 factor these would shrink 4x per doubling of T
    assert max(norms) / min(norms) < 1.1


def test_multi_teacher_soft_targets_mix_matches_hand_value():
    lg = 2 * torch.log(torch.tensor([[1.0, 1.0, 2.0]]))  # softmax(lg / 2) = [1/4, 1/4, 1/2]
    zero = torch.zeros(1, 3)  # softmax = [1/3, 1/3, 1/3]
    # weights [3, 1] -> [3/4, 1/4]: mix = [3/16 + 1/12, 3/16 + 1/12, 3/8 + 1/12]
    #                                   = [13/48, 13/48, 22/48]
    mix = soft_targets([lg, zero], 2.0, [3.0, 1.0])
    assert mix[0].tolist() == pytest.approx([13 / 48, 13 / 48, 22 / 48], rel=1e-5)
    # KD of a zero student (q = 1/3) against the mix: T^2 * sum m ln(3 m)
    expected = 4 * (2 * 13 / 48 * LN(3 * 13 / 48) + 22 / 48 * LN(3 * 22 / 48))
    kd = LogitKD([Teacher(_Const(lg)), Teacher(_Const(zero))], temperature=2.0,
                 teacher_weights=[3.0, 1.0])
    batch = Batch(x=torch.zeros(1, 3), y=torch.zeros(1, dtype=torch.long), logits=zero,
                  features=zero)
    assert kd(batch).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.133947, abs=1e-5)


class _Const(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], -1)


@pytest.mark.parametrize(
    ("temperature", "reason"),
    [(0, "must be > 0"), (-1.0, "must be > 0"), (float("nan"), "must be a finite number"),
     (float("inf"), "must be a finite number"), ("hot", "must be a number")],
)
def test_bad_temperature_raises(temperature, reason):
    with pytest.raises(ConfigError, match=rf"^objective 'kd': temperature={temperature!r}: {reason}"):
        LogitKD(Teacher(nn.Linear(2, 2)), temperature=temperature)
    with pytest.raises(ConfigError, match="temperature must be"):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature)


def test_teacher_weights_validation():
    teachers = [Teacher(nn.Linear(2, 2)), Teacher(nn.Linear(2, 2))]
    with pytest.raises(ConfigError, match="1 value.*2 teacher"):
        LogitKD(teachers, teacher_weights=[1.0])
    with pytest.raises(ConfigError, match=r"teacher_weights=\[0.0, 0.0\]: must not be all zero"):
        LogitKD(teachers, teacher_weights=[0.0, 0.0])
    with pytest.raises(ConfigError, match=r"teacher_weights=\[-1.0, 2.0\]: item 0 must be >= 0"):
        LogitKD(teachers, teacher_weights=[-1.0, 2.0])
    assert LogitKD(teachers, teacher_weights=[1, 3]).teacher_weights == [0.25, 0.75]
    with pytest.raises(ConfigError, match="not a Teacher"):
        LogitKD([nn.Linear(2, 2)])


def test_kd_loss_shape_errors():
    with pytest.raises(ShapeError, match="batch sizes: 2 vs 3"):
        kd_loss(torch.zeros(2, 4), torch.zeros(3, 4), 2.0)
    with pytest.raises(ShapeError, match="4 classes but the teacher 5"):
        kd_loss(torch.zeros(2, 4), torch.zeros(2, 5), 2.0)


# ----------------------------------------------------------------------------- hint_loss
def test_hint_loss_hand_values():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[1.0, 0.0], [3.0, 6.0]])
    # differences 0, 2, 0, -2 -> squares 0, 4, 0, 4 -> mean 2
    assert hint_loss(s, t).item() == pytest.approx(2.0)
    # normalised: [3, 4] / 5 = [.6, .8] vs [4, 3] / 5 = [.8, .6] -> squares .04, .04 -> mean .04
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    assert hint_loss(a, b, normalize=True).item() == pytest.approx(0.04, rel=1e-5)
    with pytest.raises(ShapeError, match="equal shapes"):
        hint_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# ----------------------------------------------------------------------------- adapters
PAIRS = [
    ((6,), (10,)),          # 2-D -> 2-D
    ((4, 6, 6), (8, 3, 3)),  # 4-D -> 4-D, student map larger
    ((4, 2, 2), (8, 5, 5)),  # 4-D -> 4-D, student map smaller
    ((4, 3, 3), (8, 3, 3)),  # 4-D -> 4-D, same size
    ((4, 6, 6), (10,)),     # 4-D -> 2-D
    ((6,), (3, 4, 4)),      # 2-D -> 4-D
    ((5, 6), (7, 10)),      # tokens -> tokens
]


@pytest.mark.parametrize("kind", ["auto", "mlp"])
@pytest.mark.parametrize(("s_shape", "t_shape"), PAIRS)
def test_adapter_shapes_and_gradients(s_shape, t_shape, kind):
    adapter = build_adapter(s_shape, t_shape, kind)
    x = torch.randn(3, *s_shape)
    y = adapter(x)
    assert y.shape == (3, *t_shape)
    y.square().mean().backward()
    params = list(adapter.parameters())
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_adapter_kinds_built():
    assert build_adapter((6,), (10,)).kind == "linear"
    assert isinstance(build_adapter((6,), (10,)).net[0], nn.Linear)
    conv = build_adapter((4, 3, 3), (8, 3, 3))
    assert conv.kind == "conv1x1" and conv.net[0].kernel_size == (1, 1)
    assert build_adapter((4, 3, 3), (8, 3, 3), "conv1x1").kind == "conv1x1"
    assert build_adapter((4, 3, 3), (8,), "linear").kind == "linear"
    assert build_adapter((6,), (3, 2, 2), "linear")(torch.randn(2, 6)).shape == (2, 3, 2, 2)
    mlp = build_adapter((6,), (10,), "mlp", hidden=5)
    assert [type(m) for m in mlp.net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert mlp.net[0].out_features == 5


def test_adapter_linear_is_affine_map():
    adapter = build_adapter((2,), (2,), "linear")
    with torch.no_grad():
        adapter.net[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        adapter.net[0].bias.copy_(torch.tensor([0.5, 1.0]))
    # y = W x + b: [1 + 2*3 + .5, -3 + 1] = [7.5, -2]
    assert adapter(torch.tensor([[1.0, 3.0]]))[0].tolist() == pytest.approx([7.5, -2.0])


def test_adapter_spatial_matching_uses_average_pool_when_larger():
    adapter = build_adapter((1, 4, 4), (1, 2, 2), "conv1x1")
    with torch.no_grad():
        adapter.net[-1].weight.fill_(1.0)
        adapter.net[-1].bias.zero_()
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # 2x2 block means of 0..15 laid out 4x4: [[2.5, 4.5], [10.5, 12.5]]
    assert adapter(x)[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]


def test_adapter_errors():
    with pytest.raises(ConfigError, match="'conv1x1' needs 4-D"):
        build_adapter((6,), (10,), "conv1x1")
    with pytest.raises(ConfigError, match="'conv1x1' needs 4-D"):
        build_adapter((4, 3, 3), (10,), "conv1x1")
    with pytest.raises(ConfigError, match="use kind='conv1x1'"):
        build_adapter((4, 3, 3), (8, 3, 3), "linear")
    with pytest.raises(ConfigError, match="unknown adapter kind 'big'"):
        build_adapter((6,), (10,), "big")
    with pytest.raises(ConfigError, match="only used by adapter kind 'mlp'"):
        build_adapter((6,), (10,), "linear", hidden=4)
    with pytest.raises(ConfigError, match="integer >= 1"):
        build_adapter((6,), (10,), "mlp", hidden=0)
    with pytest.raises(ShapeError, match="without the batch"):
        build_adapter((1, 2, 3, 4), (10,))
    with pytest.raises(ShapeError, match="token features map only onto token"):
        build_adapter((5, 6), (10,))
    adapter = build_adapter((6,), (10,))
    assert isinstance(adapter, FeatureAdapter)
    with pytest.raises(ShapeError, match=r"got \(2, 7\)"):
        adapter(torch.zeros(2, 7))


# ----------------------------------------------------------------------------- registry
def test_objectives_registered():
    assert OBJECTIVES.get("kd") is LogitKD
    assert OBJECTIVES.get("hint") is Hint


# ----------------------------------------------------------------------------- in the Trainer
def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


class _GradProbe(CrossEntropy):
    """A zero-weight term that records which parameters got gradients at the first step."""

    def __init__(self, watch: dict[str, nn.Module]) -> None:
        super().__init__(weight=0.0)
        self.watch = watch
        self.seen: dict[str, bool] = {}

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.step == 1 and not self.seen:
            for name, mod in self.watch.items():
                self.seen[name] = any(
                    p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters()
                )
        return super().forward(batch)


def test_hint_and_kd_in_trainer_train_student_and_adapter_not_teacher(
    trained_teacher_net, small_digits
):
    teacher = _teacher_copy(trained_teacher_net)
    teacher_before = _params(teacher.model)
    student = _student()
    hint = Hint(teacher)  # default layers: student "backbone.fc1", teacher "backbone.fc"
    kd = LogitKD(teacher, temperature=4.0)
    probe = _GradProbe({"student": student.backbone, "hint": hint})
    trainer = Trainer(student, _cfg(epochs=1), [CrossEntropy(0.0), kd, hint, probe])
    student_before = _params(student)
    trainer.fit(small_digits.subset(torch.arange(64)))
    assert hint.student_layer == "backbone.fc1" and hint.teacher_layer == "backbone.fc"
    assert hint.taps == ("backbone.fc1",)
    assert hint.adapter.student_shape == (16,) and hint.adapter.teacher_shape == (32,)
    # gradients reached the student backbone and the adapter (zero CE weight: only KD + hint)
    assert probe.seen == {"student": True, "hint": True}
    assert any(not torch.equal(a, b) for a, b in zip(student_before, _params(student), strict=True))
    # the teacher is unchanged, frozen, in eval mode and not in the optimiser
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, _params(teacher.model),
                                                strict=True))
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in teacher.model.parameters()}
    assert {id(p) for p in hint.adapter.parameters()} <= in_opt
    assert "loss_kd" in trainer.history.epochs[0] and "loss_hint" in trainer.history.epochs[0]


def test_kd_training_lowers_distillation_loss(trained_teacher_net, small_digits):
    teacher = _teacher_copy(trained_teacher_net)
    student = _student()
    kd = LogitKD(teacher, temperature=2.0)
    # 4 epochs x 8 steps = 32 steps, KD only
    history = Trainer(student, _cfg(epochs=4), [kd]).fit(small_digits)
    losses = [row["loss_kd"] for row in history.epochs]
    assert losses[-1] < 0.6 * losses[0], losses


def test_hint_training_lowers_feature_loss_with_4d_maps(trained_teacher_net, small_digits):
    teacher = _teacher_copy(trained_teacher_net)
    student = _cnn_student()
    hint = Hint(teacher, student_layer="backbone.conv2", teacher_layer="backbone.conv1")
    history = Trainer(student, _cfg(epochs=4), [hint]).fit(small_digits)
    # student conv2 (8, 2, 2) -> teacher conv1 (8, 4, 4): interpolate + 1x1 conv
    assert hint.adapter.student_shape == (8, 2, 2) and hint.adapter.teacher_shape == (8, 4, 4)
    losses = [row["loss_hint"] for row in history.epochs]
    assert losses[-1] < 0.7 * losses[0], losses


def test_unknown_layer_names_suggest_close_ones(trained_teacher_net, small_digits):
    teacher = _teacher_copy(trained_teacher_net)
    with pytest.raises(UnknownNameError, match="(?i)did you mean 'backbone.conv1'"):
        Hint(teacher, teacher_layer="backbone.cnv1")
    hint = Hint(teacher, student_layer="backbone.fc9")
    with pytest.raises(UnknownNameError, match="(?i)did you mean 'backbone.fc1'"):
        Trainer(_student(), _cfg(), [hint]).fit(small_digits)


def test_hint_rejects_bad_arguments(trained_teacher_net):
    with pytest.raises(ConfigError, match="needs a Teacher"):
        Hint(trained_teacher_net)
    with pytest.raises(ConfigError, match="adapter='wide': must be one of 'auto', 'linear', 'mlp'"):
        Hint(_teacher_copy(trained_teacher_net), adapter="wide")


def test_kd_teacher_with_other_class_count_raises(trained_teacher_net, small_digits):
    teacher = _teacher_copy(trained_teacher_net)
    student = _student(num_classes=12)
    with pytest.raises(ShapeError, match="predicts 10 classes but the student 12"):
        Trainer(student, _cfg(), [LogitKD(teacher)]).fit(small_digits)
    # without model.info the class count is found by probing one example
    bare = Teacher(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    with pytest.raises(ShapeError, match="predicts 3 classes but the student 10"):
        Trainer(_student(), _cfg(), [LogitKD(bare)]).fit(small_digits)


class _Fixed(nn.Module):
    """Returns the same (1, 3) logits whatever the batch size (a broken teacher)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(1, 3)


def test_kd_batch_size_mismatch_raises():
    kd = LogitKD(Teacher(_Fixed()))
    batch = Batch(x=torch.zeros(2, 3), y=torch.zeros(2, dtype=torch.long),
                  logits=torch.zeros(2, 3), features=torch.zeros(2, 3))
    with pytest.raises(ShapeError, match="batch sizes: 2 vs 1"):
        kd(batch)


# ----------------------------------------------------------------------------- Teacher
class _CountCalls:
    def __init__(self, module: nn.Module) -> None:
        self.n = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.n += 1


def test_shared_teacher_runs_once_per_step(trained_teacher_net, small_digits):
    teacher = _teacher_copy(trained_teacher_net)
    objectives = [LogitKD(teacher), Hint(teacher), Hint(teacher, teacher_layer="backbone.conv2")]
    trainer = Trainer(_student(), _cfg(epochs=1), objectives)
    calls = _CountCalls(teacher.model)
    data = small_digits.subset(torch.arange(96))  # 3 steps of 32
    trainer.fit(data)
    # setup probes: LogitKD needs none (info has num_classes), each Hint probes once
    assert calls.n == 2 + 3


def test_precompute_equals_live_outputs_and_is_used(trained_teacher_net, small_digits):
    live = _teacher_copy(trained_teacher_net)
    pre = _teacher_copy(trained_teacher_net, precompute=True)
    ctx = FitContext(_student(), torch.device("cpu"), _cfg(), small_digits)
    pre.setup(ctx)
    live.setup(ctx)
    idx = torch.tensor([5, 0, 200, 17])
    batch = Batch(x=small_digits.x[idx], y=small_digits.y[idx], logits=torch.zeros(4, 10),
                  features=torch.zeros(4, 10), index=idx)
    calls = _CountCalls(pre.model)
    torch.testing.assert_close(pre.outputs(batch).logits, live.outputs(batch).logits)
    assert calls.n == 0  # answered from the table


def test_precomputed_kd_is_head_only_and_works_with_cached_features(
    trained_teacher_net, small_digits
):
    pre = _teacher_copy(trained_teacher_net, precompute=True)
    kd = LogitKD(pre, temperature=2.0)
    assert kd.head_only
    assert not LogitKD(_teacher_copy(trained_teacher_net)).head_only
    calls = _CountCalls(pre.model)
    student = _student()
    backbone_before = _params(student.backbone)
    history = Trainer(student, _cfg(epochs=3, strategy="linear_probe"),
                      [CrossEntropy(0.5), kd]).fit(small_digits)
    # the teacher ran only to fill its table (eval_batch_size 512 -> one pass), never per step
    assert calls.n == 1
    assert all(torch.equal(a, b) for a, b in zip(backbone_before, _params(student.backbone),
                                                strict=True))
    assert history.epochs[-1]["loss_kd"] < history.epochs[0]["loss_kd"]


def test_hint_disables_precompute_of_shared_teacher(trained_teacher_net):
    teacher = _teacher_copy(trained_teacher_net, precompute=True)
    kd = LogitKD(teacher)
    assert kd.head_only
    Hint(teacher)  # requests a teacher layer: the logits-only table cannot serve it
    assert not kd.head_only


def test_teacher_is_frozen_and_in_eval_mode():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    teacher = Teacher(net)
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())
    x = torch.randn(3, 4)
    batch = Batch(x=x, y=torch.zeros(3, dtype=torch.long), logits=torch.zeros(3, 2),
                  features=x)
    out = teacher.outputs(batch).logits
    assert not out.requires_grad
    torch.testing.assert_close(out, net(x))  # deterministic: dropout off


def test_distill_on_synthetic_images_with_cnn_teacher_and_mlp_student():
    """28x28 synthetic inputs, the spec's model sizes: logits KD + hint across architectures."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=gen)
    data = TensorDataset(x, torch.randint(0, 4, (64,), generator=gen))
    torch.manual_seed(0)
    tnet = create_model("small_cnn", num_classes=4, widths=(8, 16), feature_dim=32)
    teacher = Teacher(tnet)
    student = create_model("mlp", num_classes=4, in_features=784, hidden=(16,))
    hint = Hint(teacher, teacher_layer="backbone.conv2")  # 2-D student -> (16, 7, 7) teacher
    trainer = Trainer(student, _cfg(), [CrossEntropy(), LogitKD(teacher), hint])
    history = trainer.fit(data)
    assert hint.adapter.teacher_shape == (16, 7, 7)
    assert all(math.isfinite(v) for k, v in history.epochs[0].items() if k.startswith("loss_"))
