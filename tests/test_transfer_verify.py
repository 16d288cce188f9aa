"""Copies behind layers that stayed new are flagged (TransferEntry.upstream_new, the summary and the
headline), and check_copied_function checks on a probe batch that the copied part reproduces the
source's features."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import transferkit.transfer.parameters as parameters_module
from test_parameters import _randomise as _random_weights
from transferkit.errors import ConfigError
from transferkit.models import LayerTap, ModelInfo, TransferNet, create_model
from transferkit.transfer import ProbeCheck, TransferEntry, check_copied_function, transfer_parameters


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics (test_parameters' helper), the model left in train mode."""
    return _random_weights(model, seed).train()


def _cnn(seed: int, num_classes: int = 10, **kwargs) -> TransferNet:
    torch.manual_seed(seed)
    return _randomise(create_model("small_cnn", num_classes=num_classes, **kwargs), seed)


def _net(kernels: tuple[int, int], seed: int, act: type[nn.Module] = nn.ReLU) -> TransferNet:
    """A TransferNet of two convs (no bias, kernels as given, 8 channels each: padding keeps the size)
    and two fully connected layers, whose shapes do not depend on the kernels."""
    torch.manual_seed(seed)
    k1, k2 = kernels
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, k1, padding=k1 // 2, bias=False),
        act(),
        nn.Conv2d(8, 8, k2, padding=k2 // 2, bias=False),
        act(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(128, 32),
        act(),
        nn.Linear(32, 16),
    )
    info = ModelInfo(arch="toy", num_classes=4, feature_dim=16, input_size=(3, 16, 16))
    return _randomise(TransferNet(backbone, nn.Linear(16, 4), info), seed)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_architecture_probe_confirms_the_backbone_and_touches_nothing(monkeypatch):
    source, target = _cnn(0, 10), _cnn(1, 5)
    traced = []
    real_trace = parameters_module.trace_dataflow
    monkeypatch.setattr(
        parameters_module, "trace_dataflow", lambda *a, **k: traced.append(1) or real_trace(*a, **k)
    )
    report = transfer_parameters(source, target, exclude=["head.*"])
    assert traced == []  # everything but the excluded head copied exactly: no trace needed
    assert all(e.upstream_new == [] for e in report.entries)
    assert report.summary()["fraction_params_behind_new"] == 0.0
    # mixed modes and a layer tap: all as they were afterwards, weights and statistics untouched
    source.train()
    target.eval()
    target.backbone.conv2.train()
    modes = {m: m.training for model in (source, target) for m in model.modules()}
    before = {"source": _state(source), "target": _state(target)}
    with LayerTap(target, ["backbone.conv1"]) as tap:
        check = check_copied_function(source, target, report)
        assert tap.features == {}
    assert {m: m.training for m in modes} == modes
    for name, model in (("source", source), ("target", target)):
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[name][k]), (name, k)

    assert isinstance(check, ProbeCheck) and report.probe is check
    assert check.checked and check.ok and (check.where, check.source_where) == ("backbone", "backbone")
    assert check.max_abs_diff == 0.0 and check.relative_diff == 0.0
    assert "the backbone features on a probe batch of 4" in check.reason
    line = report.headline()
    assert "WARNING" not in line and "behind" not in line
    assert line.endswith(
        "; a probe batch confirms the copied backbone reproduces the source's features (max |diff| 0)"
    )
    s = json.loads(json.dumps(report.to_dict()))["summary"]
    assert s["probe"]["checked"] is True and s["probe"]["where"] == "backbone"


def test_tampered_copy_is_caught_by_the_probe():
    source, target = _cnn(0, 10), _cnn(1, 5)
    report = transfer_parameters(source, target, exclude=["head.*"])
    with torch.no_grad():
        target.backbone.conv1[0].weight[0] += 0.5  # after the transfer, behind the report's back
    check = check_copied_function(source, target, report)
    assert check.checked and not check.ok and check.where == "backbone"
    assert check.relative_diff > 1e-2 and "above the tolerance 0.0001" in check.reason
    assert (
        "WARNING: the copied layers do NOT reproduce the source's features on a probe batch (relative diff"
        in (report.headline())
    )
    # a looser tolerance passes the same difference
    assert check_copied_function(source, target, report, tolerance=10.0).ok
    # NaN never passes (it compares as neither larger nor smaller than anything)
    with torch.no_grad():
        target.backbone.conv1[0].weight[0, 0, 0, 0] = float("nan")
    check = check_copied_function(source, target, report, tolerance=10.0)
    assert check.checked and not check.ok and "non-finite values" in check.reason
    assert json.loads(json.dumps(check.to_dict(), allow_nan=False))["relative_diff"] is None


@pytest.mark.parametrize("policy", ["skip", "slice"])
def test_fully_connected_copies_behind_a_conv_that_did_not_fit_are_flagged(policy):
    """The user report: a look-alike model took the fully connected layers but not the convolution;
    the copies are flagged, counted and named in the headline, and no probe can vouch for them."""
    source, target = _net((3, 3), 0), _net((3, 5), 1)
    report = transfer_parameters(source, target, shape_mismatch=policy)
    by_name = {e.target_name: e for e in report.entries}
    conv2 = by_name["backbone.2.weight"]
    assert conv2.status == ("new" if policy == "skip" else "partial") and conv2.upstream_new == []
    assert by_name["backbone.0.weight"].status == "copied" and by_name["backbone.0.weight"].upstream_new == []
    # the nearest layer not copied exactly, not every layer upstream of it
    for name in ("backbone.6.weight", "backbone.6.bias", "backbone.8.weight", "head.weight", "head.bias"):
        assert by_name[name].status == "copied" and by_name[name].upstream_new == ["backbone.2"], name
    s = report.summary()
    fc = 128 * 32 + 32 + 32 * 16 + 16 + 16 * 4 + 4
    assert s["params_behind_new"] == fc
    assert s["fraction_params_behind_new"] == pytest.approx(fc / (fc + 3 * 8 * 9))
    what = "stayed new" if policy == "skip" else "were only partially copied"
    line = report.headline()
    assert (
        f"% of the exact copies are behind layers that {what} (first: backbone.2), so they don't see" in line
    )
    assert "behind layers not copied exactly: backbone.2" in report.table()
    d = json.loads(json.dumps(report.to_dict()))
    assert d["entries"][-1]["upstream_new"] == ["backbone.2"]
    assert d["summary"]["params_behind_new"] == fc
    # the copied prefix is the first conv: the probe compares there and it passes
    check = check_copied_function(source, target, report)
    assert check.checked and check.ok and (check.where, check.source_where) == ("backbone.0", "backbone.0")
    assert check.max_abs_diff == 0.0
    assert "a probe batch confirms the copied layers up to backbone.0 reproduce the source's features" in (
        report.headline()
    )


def test_no_copied_prefix_when_the_first_conv_did_not_fit():
    source, target = _net((3, 3), 0), _net((5, 3), 1)
    report = transfer_parameters(source, target, shape_mismatch="skip")
    by_name = {e.target_name: e for e in report.entries}
    assert by_name["backbone.0.weight"].status == "new"
    # conv2 is copied but reads the new conv1; the fully connected layers read conv2 (copied exactly),
    # so their nearest layer not copied exactly is still conv1
    assert by_name["backbone.2.weight"].upstream_new == ["backbone.0"]
    assert by_name["head.weight"].upstream_new == ["backbone.0"]
    assert report.summary()["fraction_params_behind_new"] == 1.0
    assert "100.0% of the exact copies are behind layers that stayed new (first: backbone.0)" in (
        report.headline()
    )
    check = check_copied_function(source, target, report)
    assert not check.checked and not check.ok and check.max_abs_diff is None
    assert check.reason == (
        "no layer was copied exactly together with every layer before it "
        "(the first layer, backbone.0, is new)"
    )
    assert report.headline().endswith(
        "; the copied layers were not checked on a probe batch: " + check.reason
    )


def test_copied_prefix_of_a_deeper_target_is_checked_at_its_deepest_layer():
    source = _cnn(0, widths=(8, 16), feature_dim=32)
    target = _cnn(1, widths=(8, 16, 32), feature_dim=32)
    report = transfer_parameters(source, target)
    by_name = {e.target_name: e for e in report.entries}
    assert by_name["backbone.conv3.0.weight"].status == "new"
    assert by_name["backbone.fc.2.weight"].status == "new"  # refused: it reads the new conv3
    assert by_name["head.weight"].status == "copied" and by_name["head.weight"].upstream_new == [
        "backbone.fc.2"
    ]
    assert by_name["backbone.conv2.0.weight"].upstream_new == []
    check = check_copied_function(source, target, report)
    assert check.checked and check.ok
    assert (check.where, check.source_where) == ("backbone.conv2.1", "backbone.conv2.1")
    assert check.max_abs_diff == 0.0
    assert "target layer backbone.conv2.1 and source layer backbone.conv2.1" in check.reason
    # a changed running statistic in the prefix is caught there
    with torch.no_grad():
        target.backbone.conv2[1].running_var.mul_(4)
    check = check_copied_function(source, target, report)
    assert check.checked and not check.ok and check.where == "backbone.conv2.1"
    assert "(at backbone.conv2.1, relative diff" in report.headline()


def test_plain_modules_with_other_names_and_a_look_alike_with_another_activation():
    """No TransferNet, no input size: the probe's shape comes from a trace of the target; the
    structure stage pairs every layer, the probe compares the logits. A look-alike that uses
    another activation takes every tensor, and only the probe can tell it is not the source."""

    def seq(act: type[nn.Module]) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            act(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 5),
        )

    class Named(nn.Module):
        def __init__(self, act: type[nn.Module]) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act())
            self.classifier = nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.stem(x).mean(dim=(2, 3)))

    source, target = _randomise(seq(nn.ReLU), 0), _randomise(Named(nn.ReLU), 1)
    report = transfer_parameters(source, target)
    assert {e.status for e in report.entries} == {"copied"}
    check = check_copied_function(source, target, report)
    assert check.checked and check.ok and (check.where, check.source_where) == ("classifier", "5")
    assert check.relative_diff <= 1e-6

    target = _randomise(Named(nn.Tanh), 1)
    report = transfer_parameters(source, target)
    assert {e.status for e in report.entries} == {"copied"} and report.summary()[
        "fraction_params_behind_new"
    ] == 0
    check = check_copied_function(source, target, report)
    assert check.checked and not check.ok and check.where == "classifier"
    assert "WARNING: the copied layers do NOT reproduce" in report.headline()


def test_state_dict_source_is_not_checked():
    source, target = _cnn(0, 10), _cnn(1, 5)
    state = dict(source.state_dict())
    report = transfer_parameters(state, target, exclude=["head.*"])
    check = check_copied_function(state, target, report)
    assert not check.checked and not check.ok and report.probe is check
    assert check.reason.startswith("the source is a state dict, which cannot be run")
    assert (
        "the copied layers were not checked on a probe batch: the source is a state dict" in report.headline()
    )
    assert report.summary()["probe"]["checked"] is False


def test_models_reading_other_inputs_are_not_compared():
    """Same weights, other input size: the adapters resize differently, so the two are not the same
    function and the probe says so instead of warning about a difference."""
    source = _cnn(0, image_size=28)
    target = _cnn(1, image_size=32)
    report = transfer_parameters(source, target)
    assert report.new == [] and report.partial == []
    check = check_copied_function(source, target, report)
    assert not check.checked
    assert "input_size (1, 28, 28) vs (1, 32, 32)" in check.reason and "not the same function" in check.reason


def test_nothing_copied_and_bad_arguments():
    source, target = _net((3, 3), 0), _cnn(1)
    report = transfer_parameters(source, target, match=["name"], shape_mismatch="skip")
    assert report.copied == [] and report.partial == []
    check = check_copied_function(source, target, report)
    assert not check.checked and check.reason == "nothing was copied exactly"
    with pytest.raises(ConfigError, match="does not describe this target"):
        check_copied_function(source, _cnn(2, widths=(4,)), report)
    with pytest.raises(ConfigError, match="probe must be a tensor"):
        check_copied_function(source, target, report, probe=[1, 2])
    with pytest.raises(ConfigError, match="report must be the TransferReport"):
        check_copied_function(source, target, {"entries": []})


def test_given_probe_and_a_failing_forward():
    source, target = _cnn(0, 10), _cnn(1, 5)
    report = transfer_parameters(source, target, exclude=["head.*"])
    check = check_copied_function(source, target, report, probe=torch.rand(2, 1, 40, 40))
    assert check.checked and check.ok and "probe batch of 2" in check.reason
    check = check_copied_function(source, target, report, probe=torch.rand(2, 5, 28, 28))
    assert not check.checked
    assert check.reason.startswith("the target's forward pass on the probe failed: ShapeError")


def test_untraceable_target_or_trace_false_leaves_flags_empty(monkeypatch):
    source, target = _net((3, 3), 0), _net((3, 5), 1)
    report = transfer_parameters(source, target, shape_mismatch="skip", trace=False)
    assert all(e.upstream_new == [] for e in report.entries)
    monkeypatch.setattr(parameters_module, "trace_dataflow", lambda *a, **k: None)
    report = transfer_parameters(source, _net((3, 5), 1), shape_mismatch="skip")
    assert all(e.upstream_new == [] for e in report.entries)
    assert "behind" not in report.headline() and report.summary()["params_behind_new"] == 0


def test_layers_left_new_on_purpose_do_not_count():
    """Excluded layers (and buffers with include_buffers=False) are the user's choice, not a copy
    that failed: the layers after them are not flagged. The probe still finds no copied prefix."""
    source, target = _cnn(0), _cnn(1)
    report = transfer_parameters(source, target, exclude=["backbone.conv1.*"])
    assert all(e.upstream_new == [] for e in report.entries)
    assert not check_copied_function(source, target, report).checked
    report = transfer_parameters(source, _cnn(2), include_buffers=False)
    assert all(e.upstream_new == [] for e in report.entries)


def test_entry_defaults_keep_old_constructors_working():
    e = TransferEntry("a.weight", "a.weight", "copied", "name", (2,), (2,), "same shape", True, 2)
    assert e.upstream_new == [] and e.to_dict()["upstream_new"] == []
