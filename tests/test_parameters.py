"""Tests for transferkit.transfer.parameters (weight mapping between models + TransferReport)."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
from torch import nn

from transferkit.errors import CheckpointError, ConfigError
from transferkit.models import create_model
from transferkit.transfer import TransferEntry, TransferReport, transfer_parameters


class SmallCNN(nn.Module):
    """conv(3->8) + BN + conv(8->16) + BN + pool + linear(16->5); module names configurable."""

    def __init__(self, names=("conv1", "bn1", "conv2", "bn2", "fc"), width=8, classes=5):
        super().__init__()
        self.names = names
        c1, b1, c2, b2, fc = names
        setattr(self, c1, nn.Conv2d(3, width, 3, padding=1))
        setattr(self, b1, nn.BatchNorm2d(width))
        setattr(self, c2, nn.Conv2d(width, 16, 3, padding=1))
        setattr(self, b2, nn.BatchNorm2d(16))
        setattr(self, fc, nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, b1, c2, b2, fc = (getattr(self, n) for n in self.names)
        x = torch.relu(b1(c1(x)))
        x = torch.relu(b2(c2(x)))
        return fc(x.mean(dim=(2, 3)))


class Renamed(nn.Module):
    """The same computation as SmallCNN, every module under a different name and nesting."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.classifier = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block(self.stem(x)).mean(dim=(2, 3)))


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and non-trivial BN statistics, so a wrong pairing changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + (0.5 if "running_var" in name else -0.5))
            else:
                t.fill_(int(torch.randint(1, 100, (1,), generator=g)))
    return model.eval()


def test_renamed_copy_structure_gives_identical_outputs():
    source = _randomise(SmallCNN(), 0)
    target = _randomise(Renamed(), 1)
    x = torch.rand(4, 3, 8, 8)
    assert not torch.allclose(source(x), target(x), atol=1e-3)
    before = {k: v.clone() for k, v in source.state_dict().items()}

    report = transfer_parameters(source, target)

    torch.testing.assert_close(target(x), source(x), atol=1e-6, rtol=0)
    assert len(report.entries) == len(target.state_dict()) == 16
    assert all(e.status == "copied" and e.stage == "structure" for e in report.entries)
    pairs = {e.target_name: e.source_name for e in report.entries}
    assert pairs["stem.1.running_var"] == "bn1.running_var"
    assert pairs["block.0.weight"] == "conv2.weight"
    assert pairs["classifier.bias"] == "fc.bias"
    assert report.unused == []
    # the source is never modified; integer buffers are copied as they are
    for k, v in source.state_dict().items():
        assert torch.equal(v, before[k])
    assert target.stem[1].num_batches_tracked.dtype == torch.int64
    assert int(target.stem[1].num_batches_tracked) == int(source.bn1.num_batches_tracked)
    assert report.summary()["fraction_params_transferred"] == 1.0


def test_same_names_use_name_stage():
    source, target = _randomise(SmallCNN(), 0), _randomise(SmallCNN(), 1)
    report = transfer_parameters(source, target)
    assert {e.stage for e in report.entries} == {"name"}
    assert {e.status for e in report.entries} == {"copied"}
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)


def test_prefixed_names_use_suffix_stage():
    source = _randomise(SmallCNN(), 0)
    target = nn.Module()
    target.backbone = _randomise(SmallCNN(), 1)  # names "backbone.conv1.weight", ...
    report = transfer_parameters(source, target)
    assert {e.stage for e in report.entries} == {"suffix"}
    assert report.entries[0].target_name == "backbone.conv1.weight"
    assert report.entries[0].source_name == "conv1.weight"
    torch.testing.assert_close(target.backbone.conv2.weight, source.conv2.weight)
    # and the other way round, from a DDP-style "module." state dict to a bare model
    state = {"module." + k: v for k, v in source.state_dict().items()}
    bare = _randomise(SmallCNN(), 2)
    report = transfer_parameters(state, bare, match=["suffix"])
    assert all(e.stage == "suffix" and e.status == "copied" for e in report.entries)
    torch.testing.assert_close(bare.fc.bias, source.fc.bias)


def test_wider_target_copies_leading_slice_and_keeps_rest():
    source = _randomise(SmallCNN(width=8), 0)
    target = _randomise(SmallCNN(width=12), 1)
    old = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_parameters(source, target)
    by_name = {e.target_name: e for e in report.entries}

    e = by_name["conv1.weight"]
    assert e.status == "partial" and e.stage == "name"
    assert e.reason == "source (8, 3, 3, 3) -> target (12, 3, 3, 3): copied [:8]"
    assert e.numel_transferred == 8 * 27
    w = target.conv1.weight
    torch.testing.assert_close(w[:8], source.conv1.weight)
    torch.testing.assert_close(w[8:], old["conv1.weight"][8:])
    e = by_name["conv2.weight"]
    assert e.reason == "source (16, 8, 3, 3) -> target (16, 12, 3, 3): copied [:, :8]"
    torch.testing.assert_close(target.conv2.weight[:, :8], source.conv2.weight)
    torch.testing.assert_close(target.conv2.weight[:, 8:], old["conv2.weight"][:, 8:])
    torch.testing.assert_close(target.bn1.running_mean[:8], source.bn1.running_mean)
    torch.testing.assert_close(target.bn1.running_mean[8:], old["bn1.running_mean"][8:])
    assert by_name["fc.weight"].status == "copied"
    # parameters of the target: conv1 12*27+12, bn1 12+12, conv2 16*12*9+16, bn2 16+16, fc 16*5+5
    total = 12 * 27 + 12 + 24 + 16 * 12 * 9 + 16 + 32 + 85
    moved = 8 * 27 + 8 + 16 + 16 * 8 * 9 + 16 + 32 + 85
    s = report.summary()
    assert (s["params_total"], s["params_transferred"]) == (total, moved)
    assert s["fraction_params_transferred"] == pytest.approx(moved / total)
    assert s["partial"] == 7  # conv1 w/b, bn1 w/b/mean/var, conv2 w
    assert s["copied"] == 9  # bn1.num_batches_tracked, conv2.bias, bn2 (5), fc (2)


def test_narrower_target_and_centred_kernel():
    src = {"conv.weight": torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)}
    tgt = nn.Module()
    tgt.conv = nn.Conv2d(1, 1, 3, bias=False)
    report = transfer_parameters(src, tgt)
    torch.testing.assert_close(tgt.conv.weight, src["conv.weight"][:1, :, 1:4, 1:4])
    assert report.entries[0].reason == (
        "source (2, 1, 5, 5) -> target (1, 1, 3, 3): copied source[:1, :, 1:4, 1:4] into [:1, :, :3, :3]"
    )
    # a bigger kernel: the source is pasted in the centre, the border keeps its values
    big = nn.Conv2d(1, 1, 7, bias=False)
    border = big.weight.detach().clone()
    transfer_parameters({"weight": src["conv.weight"][:1]}, big)
    torch.testing.assert_close(big.weight[:, :, 1:6, 1:6], src["conv.weight"][:1])
    torch.testing.assert_close(big.weight[:, :, 0], border[:, :, 0])


def test_skip_policy_leaves_mismatched_tensors_new():
    source = _randomise(SmallCNN(width=8), 0)
    target = _randomise(SmallCNN(width=12), 1)
    old = target.conv1.weight.detach().clone()
    report = transfer_parameters(source, target, shape_mismatch="skip")
    e = next(e for e in report.entries if e.target_name == "conv1.weight")
    assert e.status == "new" and e.source_name == "conv1.weight"
    assert "skipped (shape_mismatch='skip')" in e.reason
    assert torch.equal(target.conv1.weight, old)
    assert "conv1.weight" in [u.source_name for u in report.unused]
    bn2 = [f"bn2.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
    assert [x.target_name for x in report.copied] == [
        "bn1.num_batches_tracked",
        "conv2.bias",
        *bn2,
        "bn2.num_batches_tracked",
        "fc.weight",
        "fc.bias",
    ]
    assert len(report.new) == 7


class Deeper(nn.Module):
    """Renamed SmallCNN with an extra conv(8->8, 5x5) + BN inserted between the two blocks."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.extra = nn.Sequential(nn.Conv2d(8, 8, 5, padding=2), nn.BatchNorm2d(8))
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.out = nn.Linear(16, 5)


def test_deeper_target_pairs_corresponding_layers_and_leaves_extra_new():
    source = _randomise(SmallCNN(), 0)
    target = _randomise(Deeper(), 1)
    old_extra = {k: v.clone() for k, v in target.extra.state_dict().items()}
    report = transfer_parameters(source, target)
    by_name = {e.target_name: e for e in report.entries}
    for t, s in [
        ("a.0.weight", "conv1.weight"),
        ("a.1.running_var", "bn1.running_var"),
        ("b.0.weight", "conv2.weight"),
        ("b.1.bias", "bn2.bias"),
        ("out.weight", "fc.weight"),
    ]:
        assert by_name[t].source_name == s and by_name[t].status == "copied", t
        assert by_name[t].stage == "structure"
        torch.testing.assert_close(target.state_dict()[t], source.state_dict()[s])
    extra = [e for e in report.entries if e.target_name.startswith("extra.")]
    assert len(extra) == 7 and all(e.status == "new" and e.source_name is None for e in extra)
    for k, v in target.extra.state_dict().items():
        assert torch.equal(v, old_extra[k])
    assert report.unused == []


def test_shallower_target_leaves_extra_source_layer_unused():
    source = _randomise(Deeper(), 0)
    target = _randomise(SmallCNN(), 1)
    report = transfer_parameters(source, target)
    assert len(report.copied) == 16
    torch.testing.assert_close(target.bn1.running_mean, source.a[1].running_mean)
    torch.testing.assert_close(target.conv2.weight, source.b[0].weight)
    assert len(report.unused) == 7
    assert all(u.source_name.startswith("extra.") for u in report.unused)


def test_deeper_target_with_same_names_uses_name_stage():
    source = _randomise(SmallCNN(), 0)
    target = _randomise(SmallCNN(), 1)
    target.extra = nn.Conv2d(8, 8, 5)  # registered last, used in the middle: names still match
    report = transfer_parameters(source, target)
    assert len(report.copied) == 16 and {e.stage for e in report.copied} == {"name"}
    assert [e.target_name for e in report.new] == ["extra.weight", "extra.bias"]


def test_exclude_head():
    source = _randomise(SmallCNN(), 0)
    target = _randomise(SmallCNN(classes=3), 1)
    old = target.fc.weight.detach().clone()
    report = transfer_parameters(source, target, exclude=["fc.*"])
    heads = [e for e in report.entries if e.target_name.startswith("fc.")]
    assert [e.reason for e in heads] == ["excluded by pattern 'fc.*'"] * 2
    assert all(e.status == "new" for e in heads)
    assert torch.equal(target.fc.weight, old)
    assert {u.source_name for u in report.unused} == {"fc.weight", "fc.bias"}
    assert "excluded by pattern 'fc.*'" in report.unused[0].reason
    assert len(report.copied) == 14
    # excluded tensors are never a structure match target either
    renamed = _randomise(Renamed(), 2)
    old = renamed.classifier.bias.detach().clone()
    report = transfer_parameters(source, renamed, exclude="classifier.*")
    assert torch.equal(renamed.classifier.bias, old)
    assert len(report.copied) == 14 and len(report.unused) == 2


def test_state_dict_source_and_dtype_device_kept():
    source = _randomise(SmallCNN(), 0)
    state = {k: v.double() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    target = _randomise(Renamed(), 1)
    report = transfer_parameters(state, target)
    assert len(report.copied) == 16
    assert target.stem[0].weight.dtype == torch.float32
    assert isinstance(target.stem[0].weight, nn.Parameter)
    torch.testing.assert_close(target.stem[0].weight, source.conv1.weight)


def test_include_buffers_false_only_moves_parameters():
    source, target = _randomise(SmallCNN(), 0), _randomise(Renamed(), 1)
    old_mean = target.stem[1].running_mean.clone()
    report = transfer_parameters(source, target, include_buffers=False)
    assert torch.equal(target.stem[1].running_mean, old_mean)
    torch.testing.assert_close(target.stem[1].weight, source.bn1.weight)
    assert len(report.copied) == 10
    buffers = [e for e in report.new]
    assert len(buffers) == 6 and not any(e.is_parameter for e in buffers)
    assert "include_buffers=False" in buffers[0].reason
    assert len(report.unused) == 6
    # a state-dict source: buffers recognised by their names
    report = transfer_parameters(dict(source.state_dict()), target, include_buffers=False)
    assert len(report.copied) == 10 and len(report.unused) == 6


def test_report_table_summary_and_dict(caplog):
    source = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    target = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 6), nn.Linear(6, 1))
    with caplog.at_level(logging.INFO, logger="transferkit.transfer.parameters"):
        report = transfer_parameters(source, target, match=["name"])
    # target params: 12 + 3 + 18 + 6 + 6 + 1 = 46; transferred: 12 + 3 (copied) + 6 + 2 (partial)
    s = report.summary()
    assert (s["copied"], s["partial"], s["new"], s["unused"]) == (2, 2, 2, 0)
    assert (s["params_transferred"], s["params_total"]) == (23, 46)
    assert s["fraction_params_transferred"] == 0.5
    assert s["by_stage"] == {"name": 4, "suffix": 0, "structure": 0}
    text = report.table()
    for name in ("0.weight", "1.bias", "2.weight"):
        assert name in text
    assert "source (2, 3) -> target (6, 3): copied [:2]" in text
    assert "transferred 50.0% of target parameters (23/46)" in text.splitlines()[-1]
    assert str(report) == text
    assert "... 4 more target tensors" in report.table(max_rows=2)
    assert "transferred 50.0%" in caplog.text
    d = json.loads(json.dumps(report.to_dict()))
    assert d["entries"][2]["target_shape"] == [6, 3]
    assert d["summary"]["fraction_params_transferred"] == 0.5
    assert isinstance(report, TransferReport) and isinstance(report.entries[0], TransferEntry)


def test_unused_source_tensors_listed_in_table():
    source = {"x.weight": torch.ones(3, 3), "y.kernel": torch.ones(7, 2, 2, 2)}
    target = nn.Linear(3, 3)
    report = transfer_parameters(source, target)
    assert report.entries[0].source_name == "x.weight"
    assert report.entries[0].stage == "suffix"
    assert [u.source_name for u in report.unused] == ["y.kernel"]
    assert "unused source tensors (1):" in report.table()
    assert "y.kernel" in report.table()


def test_reshape_only_differences_are_copied_other_ndims_never():
    target = nn.Linear(4, 2)
    w = torch.arange(8.0).reshape(2, 4, 1, 1)  # a 1x1 conv's weight
    report = transfer_parameters({"weight": w}, target)
    e = report.entries[0]
    assert e.status == "copied" and e.numel_transferred == 8
    assert e.reason == "source (2, 4, 1, 1) -> target (2, 4): reshaped (only size-1 dims differ)"
    assert torch.equal(target.weight, w.reshape(2, 4))
    old = target.weight.detach().clone()
    report = transfer_parameters({"weight": torch.ones(2, 4, 3, 3)}, target)
    assert torch.equal(target.weight, old)
    assert report.entries[0].status == "new"
    assert "different number of dims" in report.entries[0].reason
    # a row is not a column: (4, 1) -> (1, 4) is no reshape (it is sliced like any other size)
    row = nn.Linear(4, 1, bias=False)
    report = transfer_parameters({"weight": torch.ones(4, 1)}, row)
    assert report.entries[0].status == "partial" and "reshaped" not in report.entries[0].reason


def test_errors():
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="no parameters or buffers"):
        transfer_parameters(model, nn.ReLU())
    with pytest.raises(ConfigError, match="source state dict is empty"):
        transfer_parameters({}, model)
    with pytest.raises(CheckpointError, match="'weight' is a list, not a tensor"):
        transfer_parameters({"weight": [1.0, 2.0]}, model)
    with pytest.raises(ConfigError, match="shape_mismatch must be one of .* got 'crop'"):
        transfer_parameters(model, model, shape_mismatch="crop")
    with pytest.raises(ConfigError, match="match must be .* got \\['names'\\]"):
        transfer_parameters(model, model, match=["names"])
    with pytest.raises(ConfigError, match="target must be a torch.nn.Module, got dict"):
        transfer_parameters(model, {"weight": torch.ones(2, 2)})
    with pytest.raises(ConfigError, match="source must be a torch.nn.Module or a mapping"):
        transfer_parameters([torch.ones(2)], model)
    with pytest.raises(ConfigError, match="source ReLU has no parameters"):
        transfer_parameters(nn.ReLU(), model)
    with pytest.raises(ConfigError, match="max_rows must be >= 0"):
        transfer_parameters(model, nn.Linear(2, 2)).table(max_rows=-1)


def test_exclude_pattern_matching_nothing_warns():
    source, target = nn.Linear(2, 2), nn.Linear(2, 2)
    with pytest.warns(UserWarning, match="exclude pattern 'head.*' matches no target") as rec:
        report = transfer_parameters(source, target, exclude=["head.*", "bias"])
    assert rec[0].filename == __file__
    assert len(report.copied) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transfer_parameters(source, target, exclude=["bias"])


def test_suffix_prefers_equal_stripped_name_and_refuses_ambiguity():
    target = nn.Module()
    target.fc = nn.Linear(2, 2, bias=False)
    target.head = nn.Module()
    target.head.fc = nn.Linear(2, 2, bias=False)
    w = torch.full((2, 2), 3.0)
    report = transfer_parameters({"model.fc.weight": w}, target, match=["suffix"])
    assert report.entries[0].source_name == "model.fc.weight" and report.entries[0].stage == "suffix"
    assert torch.equal(target.fc.weight, w) and not torch.equal(target.head.fc.weight, w)
    # "weight" is a suffix of both target names: ambiguous, so nothing is copied
    report = transfer_parameters({"weight": w * 2}, target, match=["suffix"])
    assert len(report.new) == 2 and report.unused[0].source_name == "weight"
    assert torch.equal(target.fc.weight, w)


def test_structure_slices_compatible_modules_of_a_wider_renamed_target():
    source = _randomise(SmallCNN(width=8), 0)
    target = _randomise(SmallCNN(names=("p", "q", "r", "s", "t"), width=12), 1)
    old = target.p.weight.detach().clone()
    report = transfer_parameters(source, target)
    by_name = {e.target_name: e for e in report.entries}
    assert by_name["p.weight"].status == "partial" and by_name["p.weight"].stage == "structure"
    assert by_name["p.weight"].source_name == "conv1.weight"
    torch.testing.assert_close(target.p.weight[:8], source.conv1.weight)
    torch.testing.assert_close(target.p.weight[8:], old[8:])
    assert by_name["s.running_var"].status == "copied"
    assert by_name["s.running_var"].source_name == "bn2.running_var"
    # with "skip", compatible-but-different modules are not paired by structure
    target = _randomise(SmallCNN(names=("p", "q", "r", "s", "t"), width=12), 1)
    report = transfer_parameters(source, target, shape_mismatch="skip")
    assert [e.target_name for e in report.new][:2] == ["p.weight", "p.bias"]
    assert report.partial == [] and len(report.copied) == 7  # s (5 tensors) and t (2)


def test_structure_ties_go_to_the_earliest_blocks():
    source = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    target = nn.Module()
    for name in ("x", "y", "z"):
        setattr(target, name, nn.Linear(4, 4))
    z_old = target.z.weight.detach().clone()
    report = transfer_parameters(source, target)
    assert [(e.target_name, e.source_name) for e in report.copied] == [
        ("x.weight", "0.weight"),
        ("x.bias", "0.bias"),
        ("y.weight", "1.weight"),
        ("y.bias", "1.bias"),
    ]
    assert torch.equal(target.z.weight, z_old)
    assert report.summary()["fraction_params_transferred"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------------------------
# Dataflow: registration order vs forward order, and slices into layers fed by another layer


class Backwards(nn.Module):
    """Three 8 -> 8 linear layers registered in reverse: the state dict lists the last one first."""

    def __init__(self):
        super().__init__()
        self.c, self.b, self.a = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_structure_follows_the_traced_forward_order_not_registration_order():
    def mlp():
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))

    source = _randomise(mlp(), 0)
    target = _randomise(Backwards(), 1)
    report = transfer_parameters(source, target)  # input (2, 8) guessed from the first weight
    x = torch.rand(4, 8)
    torch.testing.assert_close(target(x), source(x), atol=1e-6, rtol=0)
    assert {e.status for e in report.entries} == {"copied"} and report.unused == []
    pairs = {e.target_name: e.source_name for e in report.entries}
    assert (pairs["a.weight"], pairs["b.bias"], pairs["c.weight"]) == ("0.weight", "2.bias", "4.weight")
    # the same with an explicit input, and without tracing (state-dict order: a <- 4, c <- 0)
    target = _randomise(Backwards(), 1)
    transfer_parameters(source, target, example_inputs=(torch.zeros(2, 8), torch.zeros(2, 8)))
    torch.testing.assert_close(target(x), source(x), atol=1e-6, rtol=0)
    target = _randomise(Backwards(), 1)
    report = transfer_parameters(source, target, trace=False)
    assert {e.target_name: e.source_name for e in report.entries}["a.weight"] == "4.weight"


def _cnn(widths, seed):
    torch.manual_seed(seed)
    return _randomise(create_model("small_cnn", widths=list(widths)), seed)


@pytest.mark.parametrize("as_state_dict", [False, True])
def test_deeper_small_cnn_gets_no_slice_into_the_layer_after_the_new_block(as_state_dict):
    source, target = _cnn((32, 64, 128), 0), _cnn((32, 64, 128, 256), 1)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_parameters(dict(source.state_dict()) if as_state_dict else source, target)
    by_name = {e.target_name: e for e in report.entries}
    fed_by = "the source layer" if as_state_dict else "source layer backbone.conv3.1"
    for key in ("weight", "bias"):
        e = by_name[f"backbone.fc.2.{key}"]
        assert e.status == "new" and e.source_name == f"backbone.fc.2.{key}" and e.numel_transferred == 0
        assert e.reason.endswith(
            f"left new: its input comes from target layer backbone.conv4.1, which is not the copy of "
            f"{fed_by} that fed it (it has no source counterpart)"
        )
        assert torch.equal(target.state_dict()[e.target_name], fresh[e.target_name])
    assert sorted(u.source_name for u in report.unused) == ["backbone.fc.2.bias", "backbone.fc.2.weight"]
    assert any(u.reason.startswith("paired with target 'backbone.fc.2.weight' but") for u in report.unused)
    assert all(by_name[f"backbone.conv{i}.0.weight"].status == "copied" for i in (1, 2, 3))
    assert by_name["backbone.conv4.0.weight"].status == "new" and by_name["head.weight"].status == "copied"
    # trace=False: the old behaviour, the slice is copied unchecked
    report = transfer_parameters(source, _cnn((32, 64, 128, 256), 1), trace=False)
    assert {e.target_name: e for e in report.entries}["backbone.fc.2.weight"].status == "partial"


@pytest.mark.parametrize("as_state_dict", [False, True])
def test_shallower_small_cnn_gets_no_slice_of_a_layer_that_read_a_deeper_one(as_state_dict):
    source, target = _cnn((32, 64, 128), 0), _cnn((32, 64), 1)
    report = transfer_parameters(dict(source.state_dict()) if as_state_dict else source, target)
    e = next(e for e in report.entries if e.target_name == "backbone.fc.2.weight")
    assert e.status == "new"
    assert "its input comes from target layer backbone.conv2.1, which is not the copy of" in e.reason
    assert "it holds the copy of source layer backbone.conv2.1" in e.reason
    if as_state_dict:  # no source graph: told apart by widths (64 channels fed 512 inputs, now 256)
        assert "widths 64 -> 64 there, but 512 -> 256 at the input of 'backbone.fc.2.weight'" in e.reason
    else:
        assert "source layer backbone.conv3.1 that fed it" in e.reason


@pytest.mark.parametrize("as_state_dict", [False, True])
def test_wider_small_cnn_of_the_same_depth_is_still_sliced(as_state_dict):
    source, target = _cnn((32, 64, 128), 0), _cnn((64, 128, 256), 1)
    report = transfer_parameters(dict(source.state_dict()) if as_state_dict else source, target)
    assert report.new == [] and report.unused == []
    e = next(e for e in report.entries if e.target_name == "backbone.fc.2.weight")
    assert e.status == "partial" and e.reason.endswith("copied [:, :512]")
    fc_s, fc_t = source.backbone.fc[2].weight, target.backbone.fc[2].weight
    torch.testing.assert_close(fc_t[:, :512], fc_s, atol=0, rtol=0)
    assert len(report.partial) == 16  # conv1-3 (weight + 4 BatchNorm tensors each) and fc.2.weight


def test_example_inputs_must_be_a_pair():
    with pytest.raises(ConfigError, match="example_inputs must be a pair"):
        transfer_parameters(nn.Linear(2, 2), nn.Linear(2, 2), example_inputs=torch.ones(1, 2))


def test_tracing_leaves_layer_taps_alone():
    """The structure stage traces the models' forward pass; a tap attached to either records
    nothing from it (its forward hooks are off while tracing, and back on after)."""
    from transferkit.models import LayerTap, create_model

    source = create_model("small_cnn", widths=(8, 16))
    target = create_model("small_cnn", widths=(8, 16, 32))
    with LayerTap(target, ["backbone.conv1"]) as tap:
        transfer_parameters(source, target)
        assert tap.features == {}
        target(torch.rand(2, 1, 28, 28))
        assert tap.features["backbone.conv1"].device.type == "cpu"


def test_headline_counts_exact_copies_and_warns_when_little_of_the_backbone_was_copied():
    """A look-alike target that gets only sliced copies of the feature extractor is not praised:
    the headline counts exact copies only and warns."""
    from transferkit.models import create_model

    source = create_model("small_cnn", widths=(8, 16), feature_dim=32)
    same = create_model("small_cnn", widths=(8, 16), feature_dim=32)
    report = transfer_parameters(source, same, exclude=["head.*"])
    assert report.summary()["fraction_backbone_copied_exactly"] == 1.0
    assert "WARNING" not in report.headline() and "(100.0% of its backbone)" in report.headline()
    wider = create_model("small_cnn", widths=(12, 24), feature_dim=48)
    report = transfer_parameters(source, wider, exclude=["head.*"])
    s = report.summary()
    assert s["fraction_params_copied_exactly"] < 0.05 < s["fraction_params_transferred"]
    line = report.headline()
    assert "partial (sliced) copies" in line and "WARNING: little of the feature extractor" in line
