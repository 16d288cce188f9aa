"""Parameter transfer between the timm, torchvision and Hugging Face implementations of one architecture.

Every pair starts from random weights (BatchNorm running statistics included) on both sides; after
:func:`transferkit.transfer.transfer_parameters` the two models, in eval mode, must give the same
logits (or pooled features) on the same random input to 1e-5. Small variants keep it fast: ResNet
with one block per stage, ConvNeXt and ViT from small configs at 32 px, EfficientNet-B0 at 64 px.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
import transformers as tr
from torch import nn

from transferkit.transfer import transfer_parameters

TOL = 1e-5
CLASSES = 10


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights of a sensible scale (fan-in for matrices and kernels, around 1 for norm
    weights), random biases, running means and variances, class tokens, position embeddings and
    layer scales; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            r = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("weight") and t.dim() >= 2:
                t.copy_(r / t[0].numel() ** 0.5)
            elif name.endswith("weight"):
                t.copy_(1 + 0.2 * r)
            elif name.endswith(("bias", "running_mean")):
                t.copy_(0.1 * r)
            else:  # class token, position embedding, layer scale
                t.copy_(0.5 * r)
    return model.eval()


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model(x)
    for attr in ("logits", "pooler_output"):
        if hasattr(y, attr):
            return getattr(y, attr).flatten(1)
    return y


def _transfer_and_compare(source, target, x, out=_output, out_source=None):
    """Randomise both, transfer, return (report, max |difference|); the outputs must differ before."""
    _randomise(source, 0)
    _randomise(target, 1)
    out_source = out_source or out
    before = (out_source(source, x) - out(target, x)).abs().max().item()
    assert before > 1e-2
    report = transfer_parameters(source, target)
    return report, (out_source(source, x) - out(target, x)).abs().max().item()


def _all_copied(report) -> None:
    assert report.new == [] and report.partial == [] and report.unused == [], report.table()


# ---------------------------------------------------------------------------------------------
# Builders: small variants of each architecture in each library


def _resnet(lib: str) -> nn.Module:
    if lib == "timm":
        from timm.models.resnet import BasicBlock, ResNet

        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)
    if lib == "tv":
        from torchvision.models.resnet import BasicBlock, ResNet

        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)
    config = tr.ResNetConfig(
        layer_type="basic", depths=[1, 1, 1, 1], hidden_sizes=[64, 128, 256, 512], num_labels=CLASSES
    )
    return tr.ResNetForImageClassification(config) if lib == "hf" else tr.ResNetModel(config)


CONVNEXT_DIMS, CONVNEXT_DEPTHS = (8, 16, 24, 32), (1, 1, 2, 1)


def _convnext(lib: str) -> nn.Module:
    dims, depths = CONVNEXT_DIMS, CONVNEXT_DEPTHS
    if lib == "timm":
        return timm.create_model("convnext_atto", dims=dims, depths=depths, num_classes=CLASSES)
    if lib == "tv":
        from torchvision.models.convnext import CNBlockConfig, ConvNeXt

        stages = zip(dims, [*dims[1:], None], depths, strict=True)
        return ConvNeXt([CNBlockConfig(d, n, k) for d, n, k in stages], num_classes=CLASSES)
    config = tr.ConvNextConfig(
        hidden_sizes=list(dims), depths=list(depths), layer_norm_eps=1e-6, num_labels=CLASSES
    )
    return tr.ConvNextForImageClassification(config)


VIT = {"dim": 32, "depth": 2, "heads": 4, "patch": 8}


def _vit(lib: str, size: int = 32) -> nn.Module:
    d, depth, heads, patch = VIT["dim"], VIT["depth"], VIT["heads"], VIT["patch"]
    if lib == "timm":
        return timm.create_model(
            "vit_tiny_patch16_224", img_size=size, patch_size=patch, embed_dim=d, depth=depth,
            num_heads=heads, num_classes=CLASSES,
        )
    if lib == "tv":
        from torchvision.models import VisionTransformer

        return VisionTransformer(size, patch, depth, heads, d, 4 * d, num_classes=CLASSES)
    config = tr.ViTConfig(
        hidden_size=d, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=4 * d,
        image_size=size, patch_size=patch, layer_norm_eps=1e-6, num_labels=CLASSES,
    )
    return tr.ViTForImageClassification(config) if lib == "hf" else tr.ViTModel(config)


def _efficientnet(lib: str) -> nn.Module:
    if lib == "timm":
        return timm.create_model("efficientnet_b0", num_classes=CLASSES)
    if lib == "timm_tf":  # TF padding and BatchNorm eps, as the Hugging Face port
        return timm.create_model("tf_efficientnet_b0", num_classes=CLASSES)
    if lib == "tv":
        return torchvision.models.efficientnet_b0(num_classes=CLASSES)
    config = tr.EfficientNetConfig(
        width_coefficient=1.0, depth_coefficient=1.0, image_size=64, hidden_dim=1280, num_labels=CLASSES
    )
    return tr.EfficientNetForImageClassification(config)


def _x(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))


ALL_PAIRS = [("timm", "tv"), ("tv", "timm"), ("timm", "hf"), ("hf", "timm"), ("tv", "hf"), ("hf", "tv")]


# ---------------------------------------------------------------------------------------------
# Same outputs after transfer


@pytest.mark.parametrize(("src", "tgt"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_resnet_between_libraries(src, tgt):
    report, diff = _transfer_and_compare(_resnet(src), _resnet(tgt), _x(32))
    assert diff <= TOL
    _all_copied(report)
    stages = {e.stage for e in report.entries}
    # timm and torchvision share names; Hugging Face needs the structure stage, whose dataflow
    # order puts its shortcut (registered and run before the main path) where torchvision's is
    assert stages == ({"name"} if {src, tgt} == {"timm", "tv"} else {"structure"})


def test_resnet_into_hf_backbone_without_head():
    source, target = _resnet("timm"), _resnet("hf_model")

    def pooled(model, x):
        with torch.no_grad():
            return model.forward_head(model.forward_features(x), pre_logits=True)

    report, diff = _transfer_and_compare(source, target, _x(32), out_source=pooled)
    assert diff <= TOL
    assert report.new == [] and report.partial == []
    assert sorted(u.source_name for u in report.unused) == ["fc.bias", "fc.weight"]


@pytest.mark.parametrize(("src", "tgt"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_convnext_between_libraries(src, tgt):
    report, diff = _transfer_and_compare(_convnext(src), _convnext(tgt), _x(32))
    assert diff <= TOL
    _all_copied(report)
    if "tv" in (src, tgt):  # layer scale (C, 1, 1) in torchvision, (C,) elsewhere: a reshape
        scales = [e for e in report.entries if e.reason.endswith("reshaped (only size-1 dims differ)")]
        assert any(e.target_shape in ((8,), (8, 1, 1)) and e.source_shape != e.target_shape for e in scales)


@pytest.mark.parametrize(("src", "tgt"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_vit_between_libraries(src, tgt):
    report, diff = _transfer_and_compare(_vit(src), _vit(tgt), _x(32))
    assert diff <= TOL
    _all_copied(report)
    d = VIT["dim"]
    if tgt == "hf":  # timm's qkv / torchvision's in_proj_weight split into query, key, value
        e = next(e for e in report.entries if e.target_name == "vit.layers.1.attention.k_proj.weight")
        assert e.source_shape == (3 * d, d) and e.reason.startswith(f"split: rows {d}:{2 * d} of the source")
    if src == "hf":  # ... and fused back
        e = next(e for e in report.entries if e.target_shape == (3 * d, d))
        assert e.reason.startswith("fused: the 3 source tensors concatenated along dim 0")
        assert e.source_name.split(" + ")[0].endswith("q_proj.weight")


def test_vit_into_hf_model_without_head():
    source, target = _vit("timm"), _vit("hf_model")

    def cls_token(model, x):
        with torch.no_grad():
            if isinstance(model, tr.ViTModel):
                return model(x).last_hidden_state[:, 0]
            return model.forward_features(x)[:, 0]

    report, diff = _transfer_and_compare(source, target, _x(32), out=cls_token)
    assert diff <= TOL
    # everything but HF's pooler (dense + tanh, which timm does not have) is copied; the pooler is
    # left to the structure stage's gap filling (timm's 10-class head sliced into it, or nothing)
    pooler = [e for e in report.entries if e.target_name.startswith("pooler.")]
    assert len(pooler) == 2 and all(e.status != "copied" for e in pooler)
    assert all(e.status == "copied" for e in report.entries if e not in pooler)


EFFNET_PAIRS = [("timm", "tv"), ("tv", "timm"), ("timm_tf", "hf"), ("hf", "timm_tf")]


@pytest.mark.parametrize(("src", "tgt"), EFFNET_PAIRS, ids=[f"{a}->{b}" for a, b in EFFNET_PAIRS])
def test_efficientnet_between_libraries(src, tgt):
    report, diff = _transfer_and_compare(_efficientnet(src), _efficientnet(tgt), _x(64))
    assert diff <= TOL
    _all_copied(report)


def test_efficientnet_torchvision_into_hf():
    """torchvision's B0 pads symmetrically (BatchNorm eps 1e-5), the Hugging Face port like
    TensorFlow (eps 1e-3), so their outputs differ by design; the tensors torchvision -> HF land
    right if HF then equals timm's TF-style B0 filled from the same torchvision model."""
    source, target, reference = _efficientnet("tv"), _efficientnet("hf"), _efficientnet("timm_tf")
    _randomise(source, 0)
    _randomise(target, 1)
    _all_copied(transfer_parameters(source, target))
    _all_copied(transfer_parameters(source, reference))
    x = _x(64)
    assert (_output(target, x) - _output(reference.eval(), x)).abs().max().item() <= TOL


# ---------------------------------------------------------------------------------------------
# Adapted tensors: position embeddings for another image size, stems for other channel counts


@pytest.mark.parametrize("tgt", ["timm", "hf"])
def test_vit_position_embedding_resized_for_another_image_size(tgt):
    from timm.layers import resample_abs_pos_embed

    source, target = _randomise(_vit("timm", 32), 0), _randomise(_vit(tgt, 48), 1)
    report = transfer_parameters(source, target)
    (e,) = report.partial
    d = VIT["dim"]
    assert (e.source_name, e.source_shape, e.target_shape) == ("pos_embed", (1, 17, d), (1, 37, d))
    assert e.reason.endswith(
        "position embedding resized: 1 prefix token(s) kept, 4x4 grid -> 6x6 by bicubic interpolation"
    )
    assert e.numel_transferred == 37 * d
    resized = target.state_dict()[e.target_name]
    expected = resample_abs_pos_embed(source.pos_embed.detach(), [6, 6], num_prefix_tokens=1)
    torch.testing.assert_close(resized, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(resized[:, 0], source.pos_embed[:, 0].detach(), atol=0, rtol=0)
    assert report.new == [] and report.unused == []


@pytest.mark.parametrize(("cs", "ct"), [(3, 1), (1, 3)])
def test_stem_adapted_to_another_channel_count(cs, ct):
    from timm.models.resnet import BasicBlock, ResNet

    source = _randomise(ResNet(BasicBlock, [1, 1, 1, 1], in_chans=cs, num_classes=CLASSES), 0)
    target = _randomise(ResNet(BasicBlock, [1, 1, 1, 1], in_chans=ct, num_classes=CLASSES), 1)
    report = transfer_parameters(source, target)
    (e,) = report.partial
    assert e.target_name == "conv1.weight" and e.numel_transferred == 64 * ct * 49
    how = "sum over the 3 source channels" if cs == 3 else "the 1 source channel repeated 3 times"
    assert f"input channels adapted: {how}" in e.reason
    gray = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y_src, y_tgt = source(gray.expand(-1, cs, -1, -1)), target(gray.expand(-1, ct, -1, -1))
    assert (y_src - y_tgt).abs().max().item() <= TOL
    assert len(report.copied) == len(report.entries) - 1


def test_state_dict_source_uses_state_dict_order():
    """A bare state dict cannot be traced, so both sides are taken in state-dict order: timm lists
    the position embedding before the patch projection, torchvision after it; the alignment keeps
    one of the two and the leftover pass pairs the other (its signature is unique)."""
    source, target = _randomise(_vit("timm"), 0), _randomise(_vit("tv"), 1)
    report = transfer_parameters(dict(source.state_dict()), target)
    x = _x(32)
    assert (_output(source, x) - _output(target, x)).abs().max().item() <= TOL
    _all_copied(report)
