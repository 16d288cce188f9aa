"""Cross-architecture weight transfer within the small_cnn family (issue 6).

A small_cnn with widths (8, 16) is transferred into a deeper (8, 16, 32) and a wider (16, 32)
small_cnn with :func:`transferkit.transfer.transfer_parameters`; the report must account for every
target and every source tensor with a reason, and the copied numbers must be the source's.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferkit.models import create_model
from transferkit.transfer import TransferReport, transfer_parameters
from transferkit.transfer.structure import widen


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Non-default BatchNorm params and running stats, so copied buffers differ from a fresh init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.5 * torch.randn(c, generator=gen))
                m.bias.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.num_batches_tracked.fill_(7)
    return model


def _cnn(widths: tuple[int, ...], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    # 3 pooling blocks need image_size >= 2**3 = 8.
    return _randomise(create_model("small_cnn", image_size=8, widths=widths, feature_dim=16), seed)


@pytest.fixture()
def source() -> nn.Module:
    return _cnn((8, 16), seed=0)


def _accounted(report: TransferReport, source: nn.Module, target: nn.Module) -> None:
    """Every target tensor has one entry, every source tensor is used or listed unused; reasons."""
    t_names = list(target.state_dict())
    s_names = list(source.state_dict())
    assert [e.target_name for e in report.entries] == t_names
    assert all(e.status in ("copied", "partial", "new") for e in report.entries)
    assert all(e.reason for e in report.entries)
    used = [e.source_name for e in report.entries if e.status in ("copied", "partial")]
    unused = [u.source_name for u in report.unused]
    assert all(u.status == "unused" and u.reason for u in report.unused)
    assert sorted(used + unused) == sorted(s_names)  # each source tensor exactly once
    for e in report.entries:
        if e.status == "new":  # either nothing matched, or a match that could not be copied
            assert e.source_name is None or e.source_name in unused
        else:
            assert e.source_name in s_names and e.stage in ("name", "suffix", "structure")


def test_deeper_target_takes_first_blocks_from_same_positions(source):
    target = _cnn((8, 16, 32), seed=1)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_parameters(source, target)
    _accounted(report, source, target)
    by_target = {e.target_name: e for e in report.entries}
    src, tgt = source.state_dict(), target.state_dict()
    for block in ("conv1", "conv2"):
        for key in ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
            name = f"backbone.{block}.{key}"
            entry = by_target[name]
            assert (entry.source_name, entry.status) == (name, "copied")
            assert torch.equal(tgt[name], src[name])
    assert int(tgt["backbone.conv2.1.num_batches_tracked"]) == 7
    # The extra block has no counterpart: "new", untouched, with the reason.
    for key in ("0.weight", "1.weight", "1.running_var"):
        entry = by_target[f"backbone.conv3.{key}"]
        assert entry.status == "new" and entry.source_name is None
        assert "no matching source tensor" in entry.reason
        assert torch.equal(tgt[f"backbone.conv3.{key}"], fresh[f"backbone.conv3.{key}"])
    assert by_target["head.weight"].status == "copied"
    assert torch.equal(tgt["head.weight"], src["head.weight"])
    # fc reads the new conv3 here, conv2 in the source: no slice of the source's fc goes into it
    for key in ("weight", "bias"):
        entry = by_target[f"backbone.fc.2.{key}"]
        assert entry.status == "new" and entry.source_name == f"backbone.fc.2.{key}"
        assert "its input comes from target layer backbone.conv3.1, which is not the copy of source " \
            "layer backbone.conv2.1 that fed it" in entry.reason
        assert torch.equal(tgt[f"backbone.fc.2.{key}"], fresh[f"backbone.fc.2.{key}"])
    assert sorted(u.source_name for u in report.unused) == ["backbone.fc.2.bias", "backbone.fc.2.weight"]


def test_wider_target_gets_source_values_in_the_overlap(source):
    target = _cnn((16, 32), seed=1)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_parameters(source, target)
    _accounted(report, source, target)
    by_target = {e.target_name: e for e in report.entries}
    src, tgt = source.state_dict(), target.state_dict()

    entry = by_target["backbone.conv2.0.weight"]
    assert entry.status == "partial" and entry.source_name == "backbone.conv2.0.weight"
    assert entry.source_shape == (16, 8, 3, 3) and entry.target_shape == (32, 16, 3, 3)
    assert "[:16, :8]" in entry.reason
    name = "backbone.conv2.0.weight"
    w_src, w_tgt, w_old = src[name], tgt[name], fresh[name]
    assert torch.equal(w_tgt[:16, :8], w_src)
    assert w_tgt[3, 5, 1, 2] == w_src[3, 5, 1, 2]  # one number, by hand
    assert torch.equal(w_tgt[16:], w_old[16:]) and torch.equal(w_tgt[:16, 8:], w_old[:16, 8:])

    var = tgt["backbone.conv1.1.running_var"]
    assert torch.equal(var[:8], src["backbone.conv1.1.running_var"])
    assert torch.equal(var[8:], fresh["backbone.conv1.1.running_var"][8:])  # target's own beyond
    # Flatten is channel-major, so fc's first 16 * 2 * 2 input columns are channels 0..15 of conv2:
    # the overlap [:, :64] is exactly the source's columns.
    assert by_target["backbone.fc.2.weight"].status == "partial"
    assert torch.equal(tgt["backbone.fc.2.weight"][:, :64], src["backbone.fc.2.weight"])
    assert by_target["head.weight"].status == "copied"
    assert report.summary()["unused"] == 0 and report.unused == []


def test_widened_model_loads_into_the_built_wider_architecture(source):
    grown = widen(source, "backbone.conv1", 12, example=torch.rand(4, 1, 8, 8))
    target = create_model("small_cnn", image_size=8, widths=(12, 16), feature_dim=16)
    report = transfer_parameters(grown, target)
    _accounted(report, grown, target)
    assert {e.status for e in report.entries} == {"copied"} and report.unused == []
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    grown.eval()
    target.eval()
    source.eval()
    with torch.no_grad():
        assert torch.equal(target(x), grown(x))
        assert torch.allclose(target(x), source(x), atol=1e-5)


def test_skip_policy_leaves_mismatched_tensors_new_and_reports_the_source_unused(source):
    target = _cnn((16, 32), seed=1)
    report = transfer_parameters(source, target, shape_mismatch="skip")
    _accounted(report, source, target)
    entry = next(e for e in report.entries if e.target_name == "backbone.conv2.0.weight")
    assert entry.status == "new"
    unused = {u.source_name: u for u in report.unused}
    assert "backbone.conv2.0.weight" in unused
    assert "backbone.conv2.0.weight" in unused["backbone.conv2.0.weight"].reason
