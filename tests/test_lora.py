"""LoRA and the other peft adapters as ``strategy: lora`` (transferkit.engine.parameter_efficient)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from transferkit.engine import Batch, CrossEntropy, Objective, TrainConfig, Trainer, apply_strategy
from transferkit.engine.checkpoint import RunDir
from transferkit.engine.parameter_efficient import (
    adaptable_layers,
    adapted_layers,
    adapter_parameters,
    add_adapters,
    effective_parameters,
    load_adapted_model,
    merge_adapters,
    resolve_targets,
    save_adapters,
)
from transferkit.engine.strategies import build_param_groups, count_parameters
from transferkit.errors import ConfigError
from transferkit.evaluation import evaluate
from transferkit.models import create_model, load_model, replace_head, save_model
from transferkit.models.base import ModelInfo, TransferNet
from transferkit.transfer.distill import Hint, LogitKD, Teacher
from transferkit.transfer.regularize import EWC, L2SP


def cfg(**kw) -> TrainConfig:
    base = {"device": "cpu", "amp": False, "scheduler": "none", "weight_decay": 0.0, "epochs": 3,
            "lr": 1e-2, "strategy": "lora"}
    base.update(kw)
    return TrainConfig.from_dict(base)


def mlp(seed: int = 0) -> TransferNet:
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=10, in_features=64, hidden=(32, 32))


def cnn(seed: int = 0) -> TransferNet:
    torch.manual_seed(seed)
    return create_model("small_cnn", num_classes=10, in_channels=1, image_size=8, widths=(8, 16),
                        feature_dim=32)


@pytest.fixture(scope="module")
def source(digits_source):
    return load_model(digits_source)


def target_from(source: TransferNet) -> TransferNet:
    """The source with a fresh head: what a transfer run starts from."""
    torch.manual_seed(1)
    return replace_head(copy.deepcopy(source), 10)


def perturb_adapters(model: nn.Module) -> None:
    """Move the adapters off their initialisation (LoRA's B starts at 0: the update would be 0)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in adapter_parameters(model):
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_fit_improves_keeps_the_base_and_merges_exactly(digits, source):
    model = target_from(source)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc0 = evaluate(model, digits.test).accuracy
    history = Trainer(model, cfg(lora={"rank": 4, "save": "adapters"})).fit(digits.train, digits.val)
    acc = evaluate(model, digits.test).accuracy
    assert acc > acc0 + 0.4 and acc > 0.8, (acc0, acc)
    assert adapted_layers(model) == ["fc1.0", "fc2.0"]
    # the base weights did not move: only the adapters and the head trained
    state = model.state_dict()
    for key, value in before.items():
        wrapped = key.replace(".0.weight", ".0.base_layer.weight").replace(".0.bias", ".0.base_layer.bias")
        if key.startswith("head."):
            assert not torch.equal(state[key], value), key
        else:
            assert torch.equal(state[wrapped], value), key
    row = history.epochs[-1]
    assert row["trainable_params"] == 4 * (64 + 32) + 4 * (32 + 32) + 32 * 10 + 10
    assert row["total_params"] == sum(v.numel() for v in before.values()) + 4 * (96 + 64)

    x = digits.test.x[:64]
    model.eval()
    with torch.no_grad():
        adapted = model(x)
        merge_adapters(model)
        merged = model(x)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)
    assert list(model.state_dict()) == list(before) and type(model.backbone.fc1[0]) is nn.Linear
    assert not hasattr(model.backbone, "peft_config")


def test_merged_by_default_saves_and_loads_as_a_plain_model(digits, tmp_path):
    model = cnn()
    keys = list(model.state_dict())
    stats = model.backbone.conv1[1].running_mean.clone()
    history = Trainer(model, cfg(epochs=2, lora={"rank": 2, "dropout": 0.1})).fit(digits.train, digits.val)
    assert adapted_layers(model) == [] and list(model.state_dict()) == keys
    assert torch.equal(model.backbone.conv1[1].running_mean, stats)  # BatchNorm statistics kept
    assert [r["trainable_params"] for r in history.epochs] == [history.epochs[0]["trainable_params"]] * 2
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    x = digits.test.x[:32]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def two_linear() -> TransferNet:
    info = ModelInfo(arch="test", num_classes=3, feature_dim=7, input_size=(10,))
    backbone = nn.Sequential(OrderedDict(a=nn.Sequential(nn.Linear(10, 20), nn.ReLU()),
                                         b=nn.Sequential(nn.Linear(20, 7), nn.Tanh())))
    return TransferNet(backbone, nn.Linear(7, 3), info)


def test_trainable_count_is_rank_times_in_plus_out():
    model = two_linear()
    total = count_parameters(model).total
    config = cfg(lora={"rank": 3})
    assert add_adapters(model, config.lora) == ["a.0", "b.0"]
    assert apply_strategy(model, config, 0) == ["backbone.b", "backbone.a"]
    count = count_parameters(model)
    lora = 3 * (10 + 20) + 3 * (20 + 7)
    assert count.trainable == lora + 7 * 3 + 3 and count.total == total + lora
    share = 100 * (lora + 24) / (total + lora)
    assert str(count) == f"trainable {lora + 24:,} of {total + lora:,} ({share:.1f}%)"
    # the adapters train at lr, not lr * backbone_lr_scale; the frozen base is in the group too
    groups = {g["name"]: g for g in build_param_groups(model, config)}
    assert groups["backbone"]["lr"] == config.lr
    # only some layers, by name (with or without the backbone. prefix) or by block
    for targets in (["backbone.b.0"], ["b"], ["b*"]):
        other = two_linear()
        add_adapters(other, cfg(lora={"rank": 3, "target_modules": targets}).lora)
        assert adapted_layers(other) == ["b.0"], targets


@pytest.mark.parametrize(("options", "where", "fix"), [
    ({"rnk": 4}, "'lora.rnk'", "known options: method, rank, alpha"),
    ({"rank": 0}, "lora.rank=0", "greater than or equal to 1"),
    ({"method": "qlora"}, "lora.method='qlora'", "'lora', 'dora', 'loha', 'lokr' or 'ia3'"),
    ({"save": "both"}, "lora.save='both'", "'merged' or 'adapters'"),
    ({"method": "ia3", "rank": 4}, "rank=4", "remove it or pick method 'lora'"),
    ({"target_modules": []}, "lora.target_modules", "leave it out"),
    ({"target_modules": ["backbone.fc.9"]}, "'backbone.fc.9' matches no layer", "Did you mean 'fc.2'?"),
    ({"target_modules": ["head"]}, "'head' is the head", "always trains fully"),
    ({"target_modules": ["conv1.1"]}, "'conv1.1' is a BatchNorm2d", "adapts Linear, Conv1d and Conv2d"),
])
def test_bad_options_give_one_clear_error(digits, options, where, fix):
    with pytest.raises(ConfigError) as err:
        trainer = Trainer(cnn(), {"strategy": "lora", "device": "cpu", "lora": options})
        trainer.check(digits.train, digits.val)
    assert where in str(err.value) and fix in str(err.value), str(err.value)


def test_grouped_convolutions_are_left_out_or_refused():
    info = ModelInfo(arch="test", num_classes=2, feature_dim=4, input_size=(4, 5, 5))
    backbone = nn.Sequential(OrderedDict(
        dw=nn.Conv2d(4, 4, 3, groups=4), pw=nn.Conv2d(4, 4, 1), pool=nn.AdaptiveAvgPool2d(1),
        flat=nn.Flatten()))
    model = TransferNet(backbone, nn.Linear(4, 2), info)
    assert adaptable_layers(model.backbone) == ["pw"]
    with pytest.raises(ConfigError, match="'dw' is a grouped Conv2d .*cannot merge"):
        add_adapters(model, cfg(lora={"target_modules": ["dw"]}).lora)


@pytest.mark.parametrize("method", ["dora", "loha", "lokr", "ia3"])
def test_other_peft_methods_adapt_convs_and_merge_exactly(method):
    model = cnn()
    lora = {"method": method} if method == "ia3" else {"method": method, "rank": 2}
    add_adapters(model, cfg(lora=lora).lora)
    assert adapted_layers(model) == ["conv1.0", "conv2.0", "fc.2"]
    perturb_adapters(model)
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        adapted = model(x)
        merge_adapters(model)
        torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=0)
    assert list(model.state_dict()) == list(cnn().state_dict())


def test_effective_parameters_are_the_merged_weights_with_gradients():
    model = mlp()
    add_adapters(model, cfg(lora={"rank": 2}).lora)
    perturb_adapters(model)
    eff = effective_parameters(model)
    merged = merge_adapters(copy.deepcopy(model))
    assert set(eff) == {n for n, _ in merged.named_parameters()}
    for name, p in merged.named_parameters():
        torch.testing.assert_close(eff[name].detach(), p.detach(), atol=1e-6, rtol=0)
    eff["backbone.fc1.0.weight"].sum().backward()
    assert model.backbone.fc1[0].lora_B["default"].weight.grad.abs().sum() > 0


def test_lora_with_l2sp_and_with_distillation(digits, source):
    # L2-SP without a source pulls the adapters back to their start (the model it started from)
    model = target_from(source)
    history = Trainer(model, cfg(epochs=2), [CrossEntropy(), L2SP(alpha=0.1, beta=0.01)]).fit(
        digits.train, digits.val)
    assert history.epochs[-1]["loss_l2sp"] > 0 and history.best_val_accuracy > 0.8

    # with a source it pulls each adapted layer's merged weight (base + update) towards the source's
    def drift(alpha: float) -> float:
        torch.manual_seed(0)
        model = target_from(source)
        with torch.no_grad():  # start away from the source, so the pull has something to do
            for p in model.backbone.parameters():
                p.add_(0.05 * torch.randn_like(p))
        Trainer(model, cfg(epochs=2), [CrossEntropy(), L2SP(source=source, alpha=alpha, beta=0.0)]).fit(
            digits.train, digits.val)
        src = dict(source.named_parameters())
        return sum(float((p.detach() - src[n].detach()).pow(2).sum()) for n, p in model.named_parameters()
                   if n.startswith("backbone.") and n in src)

    assert drift(10.0) < 0.5 * drift(0.0)

    # EWC matches its Fisher by name, on the merged weights too
    ewc = EWC(source=source, source_data=digits.train, max_examples=64)
    history = Trainer(target_from(source), cfg(epochs=1), [CrossEntropy(), ewc]).fit(
        digits.train, digits.val)
    assert len(ewc.fisher) > 2 and "loss_ewc" in history.epochs[-1]

    # KD and a feature hint tapping an adapted layer by its old name
    teacher = Teacher(source)
    objectives = [CrossEntropy(), LogitKD(teacher), Hint(teacher, student_layer="backbone.fc2.0")]
    model = target_from(source)
    history = Trainer(model, cfg(epochs=2), objectives).fit(digits.train, digits.val)
    row = history.epochs[-1]
    assert row["loss_kd"] > 0 and row["loss_hint"] > 0 and history.best_val_accuracy > 0.8


class Crash(Objective):
    """A zero loss that raises KeyboardInterrupt at the start of 0-based epoch ``at``."""

    def __init__(self, at: int | None = None) -> None:
        super().__init__()
        self.at = at

    def on_epoch_start(self, ctx, epoch: int) -> None:
        if epoch == self.at:
            raise KeyboardInterrupt

    def forward(self, batch: Batch) -> torch.Tensor:
        return batch.logits.sum() * 0.0


def test_a_killed_lora_run_resumes_to_the_same_model(digits, tmp_path):
    config = cfg(epochs=3, lora={"rank": 2, "dropout": 0.2})
    straight = mlp()
    Trainer(straight, config, [CrossEntropy(), Crash()], run_dir=tmp_path / "a").fit(digits.train, digits.val)
    with pytest.raises(KeyboardInterrupt):
        Trainer(mlp(), config, [CrossEntropy(), Crash(at=2)], run_dir=tmp_path / "b").fit(
            digits.train, digits.val)
    assert len(RunDir(tmp_path / "b").read_metrics()) == 2
    resumed = mlp(seed=5)  # another start: the weights come from the checkpoint
    history = Trainer(resumed, config, [CrossEntropy(), Crash()], run_dir=tmp_path / "b").fit(
        digits.train, digits.val, resume=True)
    assert len(history.epochs) == 3 and adapted_layers(resumed) == []
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_adapters_saved_beside_the_base(digits, tmp_path):
    model = mlp()
    Trainer(model, cfg(epochs=1, lora={"rank": 2, "save": "adapters"})).fit(digits.train)
    folder = save_adapters(model, tmp_path / "m")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors",
                                                  "adapters.safetensors", "adapters.json"}
    x = digits.test.x[:16]
    model.eval()
    loaded = load_adapted_model(folder).eval()
    base = load_model(folder).eval()  # the base alone: the frozen backbone and the trained head
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(load_adapted_model(folder, merge=True).eval()(x), model(x),
                                   atol=1e-5, rtol=0)
        assert not torch.allclose(base(x), model(x))
    assert adapted_layers(base) == []
    # a second fit goes on with the adapters the model has
    Trainer(model, cfg(epochs=1, lora={"rank": 2})).fit(digits.train)
    assert adapted_layers(model) == []


def test_workflow_reports_trainable_parameters(tmp_path, digits_source):
    import json

    from transferkit.workflows import finetune

    result = finetune({
        "name": "ft", "out": str(tmp_path / "out"), "seeds": [0],
        "data": {"dataset": "digits", "val_fraction": 0.2, "shots": 10},
        "model": {"source": str(digits_source)},
        "train": {"epochs": 2, "lr": 1e-2, "batch_size": 16, "strategy": "lora", "lora": {"rank": 2}},
        "regularizers": [{"name": "kd"}],
    })
    runs = {r["name"]: r for r in json.loads((result.out_dir / "metrics.json").read_text())["runs"]}
    lora, scratch = runs["ft/lora+kd"], runs["ft/scratch"]
    assert lora["method"] == "LoRA / peft adapters + kd"
    assert lora["trainable_params"] == 2 * (64 + 32) + 2 * (32 + 32) + 32 * 10 + 10
    assert scratch["trainable_params"] == scratch["total_params"] == lora["total_params"] - 2 * (96 + 64)
    html = (result.out_dir / "report.html").read_text()
    assert "Trainable parameters" in html and f"trainable {lora['trainable_params']:,} of" in html
    assert adapted_layers(load_model(result.out_dir / "model")) == []


def test_workflow_saves_adapters_beside_the_base_by_choice(tmp_path, digits_source):
    from transferkit.engine.parameter_efficient import load_adapted_model
    from transferkit.workflows import finetune

    result = finetune({
        "name": "ft", "out": str(tmp_path / "out"), "seeds": [0], "baseline": False,
        "data": {"dataset": "digits", "val_fraction": 0.2, "shots": 5},
        "model": {"source": str(digits_source)},
        "train": {"epochs": 1, "lr": 1e-2, "batch_size": 16, "strategy": "lora",
                  "lora": {"rank": 2, "save": "adapters"}},
    })
    folder = result.out_dir / "model"
    assert (folder / "adapters.safetensors").is_file() and (folder / "model.safetensors").is_file()
    adapted = load_adapted_model(folder)
    assert adapted_layers(adapted)
    x = torch.rand(4, 64)
    merged = load_adapted_model(folder, merge=True)
    torch.testing.assert_close(adapted.eval()(x), merged.eval()(x), atol=1e-5, rtol=0)
    # evaluate and predict read the adapters too: the model as trained, not its base
    import json

    from cli_helpers import run
    from transferkit.data import load_dataset
    from transferkit.evaluation import evaluate

    test = load_dataset("digits").test
    expected = evaluate(merged, test).accuracy
    assert expected != evaluate(load_model(folder), test).accuracy  # the base alone differs
    scores = run("evaluate", folder, "--data", "digits", "--json")
    assert scores.exit_code == 0, scores.output
    assert json.loads(scores.stdout)["accuracy"] == pytest.approx(expected)
    done = run("predict", folder, "--data", "digits", "--out", tmp_path / "p.csv")
    assert done.exit_code == 0, done.output
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    hits = [r.split(",")[1] == r.split(",")[3] for r in rows]
    assert sum(hits) / len(hits) == pytest.approx(expected)


def test_a_missing_peft_is_named_with_its_install_command(digits, monkeypatch):
    import sys

    from transferkit.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'transferkit\[peft\]'"):
        Trainer(mlp(), cfg()).check(digits.train, digits.val)


class StaticSameConv(nn.Conv2d):
    """A "same"-padding conv whose constructor needs the image size and which pads in its forward,
    like the PyPI EfficientNet-Lite package's: peft can't build LoRA layers like it."""

    def __init__(self, cin, cout, kernel_size, stride=1, image_size=None, **kw):
        assert image_size is not None
        super().__init__(cin, cout, kernel_size, stride, padding=0, **kw)
        pad = (self.kernel_size[0] - 1) // 2
        self.static_padding = nn.ZeroPad2d(pad)

    def forward(self, x):
        return super().forward(self.static_padding(x))


def test_conv_subclasses_peft_cannot_copy_are_left_out_with_the_reason():
    from transferkit.engine import LoraOptions

    backbone = nn.Sequential(OrderedDict(
        conv3=StaticSameConv(1, 4, 3, image_size=8), conv1=StaticSameConv(4, 4, 1, image_size=8),
        pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), fc=nn.Linear(4, 4)))
    info = ModelInfo("custom", num_classes=2, feature_dim=4, input_size=(1, 8, 8))
    model = TransferNet(backbone, nn.Linear(4, 2), info).eval()
    assert resolve_targets(model.backbone, LoraOptions()) == ["fc"]  # the convs are left out
    with pytest.raises(ConfigError, match="'conv3' is a StaticSameConv, a convolution subclass"):
        resolve_targets(model.backbone, LoraOptions(target_modules=["conv3"]))
    # LoHa convolves with the layer's own padding: only the 1x1 conv is adaptable, and it runs
    assert resolve_targets(model.backbone, LoraOptions(method="loha")) == ["conv1", "fc"]
    x = torch.rand(3, 1, 8, 8)
    add_adapters(model, LoraOptions(method="loha"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hada" in name:
                p.normal_(0, 0.3)
        adapted = model(x)
    merge_adapters(model)
    torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=0)
