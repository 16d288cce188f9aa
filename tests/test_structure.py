"""Net2Net growth (transferkit.transfer.structure): function preservation, reports, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from transferkit.errors import CheckpointError, ConfigError, ShapeError, UnknownNameError
from transferkit.models import create_model, load_model, save_model
from transferkit.transfer.clone import clone_structure
from transferkit.transfer.structure import GrowthReport, deepen, widen

TOL = 1e-5


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm affine params and running stats, so BN extension is really tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                c = m.num_features
                m.weight.copy_(1 + 0.5 * torch.randn(c, generator=gen))
                m.bias.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return model


@pytest.fixture(scope="module")
def images(digits):
    return digits.train.x[:32]  # real digits, (32, 1, 8, 8) or flat (32, 64)


@pytest.fixture()
def cnn():
    torch.manual_seed(0)
    return _randomise_bn(create_model("small_cnn", image_size=8, widths=(4, 8), feature_dim=16))


@pytest.fixture()
def mlp():
    torch.manual_seed(0)
    return create_model("mlp", in_features=64, hidden=(16, 12))


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor, train: bool = False) -> float:
    a.train(train)
    b.train(train)
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


# ------------------------------------------------------------------------------------ widen


@pytest.mark.parametrize(
    ("layer", "consumer"), [("backbone.fc1.0", "backbone.fc2.0"), ("backbone.fc2", "head")]
)
def test_widen_mlp_preserves_function(mlp, images, layer, consumer):
    before = _state(mlp)
    grown = widen(mlp, layer, 29, seed=3)
    assert _same_state(mlp, before)  # input untouched
    x = torch.rand(16, 64)
    assert _max_diff(mlp, grown, x) < TOL
    assert _max_diff(mlp, grown, images) < TOL
    rep = grown.growth_report
    assert isinstance(rep, GrowthReport)
    assert rep.consumer == consumer and rep.old_width in (16, 12) and rep.new_width == 29
    name = layer if layer.endswith(".0") else layer + ".0"
    assert grown.get_submodule(name).weight.shape[0] == 29
    assert rep.max_abs_diff < TOL


def test_widen_replicates_and_divides_by_hand(mlp):
    grown = widen(mlp, "backbone.fc1.0", 18, seed=0)
    src = grown.growth_report.replicated
    assert len(src) == 2
    w0, w1 = mlp.backbone.fc1[0].weight, grown.backbone.fc1[0].weight
    for j, i in enumerate(src, start=16):
        assert torch.equal(w1[j], w0[i])
    counts = torch.bincount(torch.tensor(list(range(16)) + src), minlength=16).float()
    c0, c1 = mlp.backbone.fc2[0].weight, grown.backbone.fc2[0].weight
    assert torch.allclose(c1[:, :16], c0 / counts)
    assert torch.allclose(c1[:, 16:], c0[:, src] / counts[src])
    # seeded: same seed same choice, other seed (almost surely) another one
    assert widen(mlp, "backbone.fc1.0", 18, seed=0).growth_report.replicated == src


def test_widen_conv_with_batchnorm_eval_and_train(cnn, images):
    before = _state(cnn)
    grown = widen(cnn, "backbone.conv1", 7, seed=1)
    assert _same_state(cnn, before) and cnn.info.kwargs["widths"] == [4, 8]
    assert grown.growth_report.batchnorms == ["backbone.conv1.1"]
    assert grown.growth_report.consumer == "backbone.conv2.0"
    bn0, bn1 = cnn.backbone.conv1[1], grown.backbone.conv1[1]
    src = grown.growth_report.replicated
    assert torch.equal(bn1.running_var[4:], bn0.running_var[src])
    assert torch.equal(bn1.weight[4:], bn0.weight[src])
    x = torch.rand(10, 1, 8, 8)
    assert _max_diff(cnn, grown, x) < TOL
    assert _max_diff(cnn, grown, images) < TOL
    # train mode: BN uses batch stats, identical for replicated channels
    assert _max_diff(cnn, grown, images, train=True) < TOL


def test_widen_last_conv_into_flatten_linear(cnn, images):
    grown = widen(cnn, "backbone.conv2.0", 11, seed=2)
    rep = grown.growth_report
    assert rep.consumer == "backbone.fc.2"
    # pool_size=2: each channel is 4 contiguous flattened inputs
    assert grown.backbone.fc[2].weight.shape == (16, 11 * 4)
    assert _max_diff(cnn, grown, torch.rand(10, 1, 8, 8)) < TOL
    assert _max_diff(cnn, grown, images) < TOL


def test_widen_feature_layer_updates_info_and_round_trips(cnn, images, tmp_path):
    grown = widen(cnn, "backbone.fc.2", 20)
    assert grown.growth_report.consumer == "head"
    assert grown.info.feature_dim == 20 and grown.info.kwargs["feature_dim"] == 16
    assert grown.info.growth == [
        {"op": "widen", "layer": "backbone.fc.2", "new_width": 20, "noise": 0.0, "seed": 0}
    ]
    assert cnn.info.growth == [] and cnn.info.feature_dim == 16  # input's info untouched
    grown2 = widen(grown, "backbone.conv1", 6)
    assert grown2.info.kwargs == cnn.info.kwargs and grown2.info.arch == "small_cnn"
    assert [s["layer"] for s in grown2.info.growth] == ["backbone.fc.2", "backbone.conv1.0"]
    assert grown2.growth_report.info_updated and len(grown.info.growth) == 1
    save_model(grown2, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert _max_diff(cnn, loaded, images) < TOL


def test_widen_noise_reports_measured_bound(mlp):
    x = torch.rand(8, 64)
    grown = widen(mlp, "backbone.fc1.0", 24, noise=0.5, seed=0, example=x)
    bound = grown.growth_report.max_abs_diff
    assert bound > 1e-4
    assert bound == pytest.approx(_max_diff(mlp, grown, x), abs=1e-6)
    # only the copies are perturbed
    assert torch.equal(grown.backbone.fc1[0].weight[:16], mlp.backbone.fc1[0].weight)


def test_widen_plain_module_needs_example():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Dropout(0.1), nn.Linear(4, 3))
    with pytest.raises(ConfigError, match="pass example="):
        widen(net, "0", 6)
    x = torch.randn(6, 5)
    grown = widen(net, "0", 6, example=x)
    assert _max_diff(net, grown, torch.randn(20, 5)) < TOL


def test_widen_refusals(mlp, cnn):
    with pytest.raises(ConfigError, match="larger than 'backbone.fc1.0'.s current width 16"):
        widen(mlp, "backbone.fc1.0", 16)
    with pytest.raises(ConfigError, match="new_width"):
        widen(mlp, "backbone.fc1.0", 8)
    with pytest.raises(ConfigError, match="noise"):
        widen(mlp, "backbone.fc1.0", 20, noise=-1.0)
    with pytest.raises(UnknownNameError, match="Did you mean .*'backbone.fc1.0'"):
        widen(mlp, "backbone.fc1.O", 20)
    with pytest.raises(ConfigError, match="nothing consumes"):
        widen(mlp, "head", 20)
    with pytest.raises(ConfigError, match="several"):
        widen(cnn, "backbone", 20)
    with pytest.raises(ConfigError, match="holds none"):
        widen(cnn, "backbone.conv1.2", 20)


def test_widen_refuses_unsupported_path():
    net = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    with pytest.raises(ShapeError, match="LayerNorm.*sits between"):
        widen(net, "0", 6, example=torch.randn(3, 5))

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(x) * 2)

    with pytest.raises(ShapeError, match="not a straight chain"):
        widen(Residual(), "a", 6, example=torch.randn(3, 4))


# ------------------------------------------------------------------------------------ deepen


@pytest.mark.parametrize("batchnorm", [False, True])
def test_deepen_after_linear_relu_block(mlp, images, batchnorm):
    before = _state(mlp)
    deep = deepen(mlp, "backbone.fc1", batchnorm=batchnorm, data=images)
    assert _same_state(mlp, before)
    names = [n for n, _ in deep.backbone.named_children()]
    assert names == ["fc1", "fc1_deep1", "fc2"]
    block = deep.backbone.fc1_deep1
    assert isinstance(block[0], nn.Linear) and block[0].weight.shape == (16, 16)
    assert any(isinstance(m, nn.BatchNorm1d) for m in block) == batchnorm
    assert _max_diff(mlp, deep, torch.rand(16, 64)) < TOL
    assert _max_diff(mlp, deep, images) < TOL
    assert deep.growth_report.consumer == "backbone.fc1_deep1"
    if batchnorm:  # stats from this very batch: identity in train mode too (no BN/dropout before)
        assert _max_diff(mlp, deep, images, train=True) < TOL
        deep.eval()
    assert deep.info.arch == "mlp" and deep.info.kwargs == mlp.info.kwargs
    assert deep.info.growth == [
        {"op": "deepen", "after": "backbone.fc1", "activation": "relu", "batchnorm": batchnorm}
    ]
    assert mlp.info.growth == [] and deep.growth_report.info_updated


@pytest.mark.parametrize("batchnorm", [None, False])
def test_deepen_after_conv_block(cnn, images, batchnorm):
    deep = deepen(cnn, "backbone.conv1", batchnorm=batchnorm, data=images)
    block = deep.backbone.conv1_deep1
    conv = block[0]
    kernel = conv.weight.detach()
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (4, 4, 3, 3)
    assert float(kernel.sum()) == 4.0 and float(kernel[2, 2, 1, 1]) == 1.0
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in block)
    assert has_bn == (batchnorm is None)  # None: conv1 holds a BatchNorm, so one is added
    assert _max_diff(cnn, deep, torch.rand(10, 1, 8, 8)) < TOL
    assert _max_diff(cnn, deep, images) < TOL


def test_deepen_then_widen_and_train(cnn, images, digits):
    deep = deepen(cnn, "backbone.conv2", batchnorm=True)  # no data: stats 0/1
    grown = widen(deep, "backbone.conv2_deep1.0", 12)
    assert grown.growth_report.batchnorms == ["backbone.conv2_deep1.1"]
    assert _max_diff(cnn, grown, images) < TOL
    grown.train()
    loss = nn.functional.cross_entropy(grown(images), digits.train.y[:32])
    loss.backward()
    for name, p in grown.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert sum(float(p.grad.abs().sum()) for p in grown.parameters()) > 0


def test_deepen_refusals(mlp, cnn):
    with pytest.raises(ConfigError, match="'tanh' cannot start as the identity"):
        deepen(mlp, "backbone.fc1", activation="tanh")
    with pytest.raises(ConfigError, match="gelu"):
        deepen(mlp, "backbone.fc1", activation="gelu")
    with pytest.raises(ConfigError, match=r"can be negative.*ReLU\(I x\) = x only for x >= 0"):
        deepen(mlp, "backbone.fc1.0")
    with pytest.raises(ConfigError, match="can be negative"):
        deepen(cnn, "backbone.conv1.1")  # BatchNorm output
    with pytest.raises(UnknownNameError, match="Did you mean 'backbone.fc2'"):
        deepen(mlp, "backbone.fc3")
    with pytest.raises(ConfigError, match="not an nn.Sequential"):
        deepen(mlp, "backbone")


def test_deepen_identity_activation_after_negative_output(mlp):
    deep = deepen(mlp, "backbone.fc1.0", activation="identity")
    assert [n for n, _ in deep.backbone.fc1.named_children()] == ["0", "0_deep1", "1"]
    assert _max_diff(mlp, deep, torch.rand(8, 64)) < TOL


# ------------------------------------------------------------------- persistence and cloning


def _grow(cnn: nn.Module, images: torch.Tensor) -> nn.Module:
    grown = widen(cnn, "backbone.conv1", 6, noise=0.3, seed=1)
    grown = widen(grown, "backbone.fc.2", 24, seed=2)
    return deepen(grown, "backbone.conv2", data=images)  # BatchNorm with data-driven stats


def test_grown_model_round_trips_by_replay(cnn, images, tmp_path):
    grown = _grow(cnn, images)
    assert [s["op"] for s in grown.info.growth] == ["widen", "widen", "deepen"]
    assert grown.info.arch == "small_cnn" and grown.info.kwargs == cnn.info.kwargs
    save_model(grown, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["growth"] == grown.info.growth and config["kwargs"]["widths"] == [4, 8]
    loaded = load_model(tmp_path / "m")
    mine, theirs = grown.state_dict(), loaded.state_dict()
    assert list(mine) == list(theirs)  # same modules, same order
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert loaded.info.growth == grown.info.growth and loaded.info.feature_dim == 24
    grown.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(grown(images), loaded(images))
    # the weights file alone, with its config.json beside it, is rebuilt the same way
    again = load_model(tmp_path / "m" / "model.safetensors")
    assert all(torch.equal(again.state_dict()[k], mine[k]) for k in mine)


def test_old_config_without_growth_still_loads(cnn, images, tmp_path):
    save_model(cnn, tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    config = json.loads(path.read_text())
    del config["growth"]
    path.write_text(json.dumps(config))
    loaded = load_model(tmp_path / "old")
    assert loaded.info.growth == []
    assert _max_diff(cnn, loaded, images) == 0.0


def test_unreplayable_growth_is_a_checkpoint_error(cnn, tmp_path):
    grown = widen(cnn, "backbone.conv1", 6)
    save_model(grown, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    config["growth"][0]["layer"] = "backbone.conv9"
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cannot replay growth step 0.*backbone.conv9"):
        load_model(tmp_path / "m")
    config["growth"] = [{"op": "shrink"}]
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="op 'widen' or 'deepen'"):
        load_model(tmp_path / "m")


def test_clone_structure_fresh_and_source(cnn, images):
    grown = _grow(cnn, images)
    shapes = {k: v.shape for k, v in grown.state_dict().items()}
    fresh = clone_structure(grown, seed=1)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes
    assert fresh.info.growth == grown.info.growth
    assert not torch.equal(fresh.backbone.conv1[0].weight, grown.backbone.conv1[0].weight)
    assert not torch.equal(fresh.head.weight, grown.head.weight)
    same = clone_structure(grown, weights="source")
    assert all(torch.equal(same.state_dict()[k], v) for k, v in grown.state_dict().items())
    assert _max_diff(grown, same, images) == 0.0
    five = clone_structure(grown, num_classes=5, weights="source")
    assert five.head.weight.shape == (5, 24) and five.info.num_classes == 5
    src = grown.state_dict()
    for k, v in five.state_dict().items():
        if k.startswith("head."):
            assert v.shape[0] == 5
        else:
            assert torch.equal(v, src[k]), k
    assert clone_structure(grown, num_classes=3).head.out_features == 3
    # seeded: the cnn fixture was built under torch.manual_seed(0)
    assert torch.equal(clone_structure(cnn, seed=0).head.weight, cnn.head.weight)


def test_clone_structure_refusals(cnn):
    with pytest.raises(ConfigError, match="weights must be 'fresh' or 'source'"):
        clone_structure(cnn, weights="pretrained")
    with pytest.raises(ConfigError, match="num_classes must be a positive integer, got 0"):
        clone_structure(cnn, num_classes=0)
    with pytest.raises(ConfigError, match="needs a TransferNet"):
        clone_structure(nn.Sequential(nn.Linear(2, 2)), num_classes=3)

    class Scale(nn.Module):  # a parameter without reset_parameters()
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return x * self.s

    with pytest.raises(ConfigError, match="no reset_parameters"):
        clone_structure(nn.Sequential(nn.Linear(2, 2), Scale()))
    assert isinstance(clone_structure(nn.Sequential(Scale()), weights="source")[0], Scale)


def test_clone_structure_of_models_without_a_registered_architecture():
    from transferkit.models import wrap_model

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    fresh = clone_structure(plain, seed=1)
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in plain.parameters()]
    assert not torch.equal(fresh[0].weight, plain[0].weight)  # newly initialised
    assert torch.equal(clone_structure(plain, seed=1)[0].weight, fresh[0].weight)  # seeded
    same = clone_structure(plain, weights="source")
    ref = plain.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in same.state_dict().items())
    wrapped = wrap_model(plain, input_size=(4,))
    clone = clone_structure(wrapped, num_classes=5, weights="source")
    assert clone.head.out_features == 5 and clone.info.num_classes == 5
    assert torch.equal(clone.backbone[0].weight, wrapped.backbone[0].weight)
    assert wrapped.head.out_features == 3  # the original is untouched


def test_widen_refuses_when_the_output_is_used_outside_the_traced_chain():
    """A sum over the hidden units in a custom forward is invisible to the tracing; the probe catches it."""

    class SumSkip(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)

        def forward(self, x):
            h = self.act(self.fc1(x))
            return self.fc2(h) + h.sum(1, keepdim=True)  # replicated units would be counted twice

    torch.manual_seed(0)
    model = SumSkip()
    with torch.no_grad():
        model.fc1.bias.fill_(1.0)  # every hidden unit active, so duplicates change the sum
    with pytest.raises(ShapeError, match="outside the traced chain"):
        widen(model, "fc1", 5, example=torch.rand(8, 4))
