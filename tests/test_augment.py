"""Train-time augmentation by name (kornia): parsing, shapes, mixup/cutmix targets, determinism."""

from __future__ import annotations

import pytest
import torch

from transferkit.data.augment import (
    AUGMENTATIONS,
    STRONG,
    WEAK,
    Augmentation,
    TwoViews,
    build_augmentation,
    build_views,
    mix_soft_targets,
    one_hot_targets,
    parse_spec,
    spec_names,
)
from transferkit.errors import ConfigError, LabelError, ShapeError


def _batch(n: int = 8, c: int = 3, size: int = 28) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- parsing


def test_parse_every_form():
    assert parse_spec("hflip") == ("hflip", {})
    assert parse_spec("crop:scale=0.5") == ("crop", {"scale": 0.5})
    assert parse_spec(" RandAugment:n=3, m=12 ") == ("randaugment", {"n": 3, "m": 12})
    assert isinstance(parse_spec("randaugment:n=3")[1]["n"], int)
    assert parse_spec({"name": "mixup", "alpha": 0.2}) == ("mixup", {"alpha": 0.2})
    assert parse_spec({"name": "crop", "scale": "0.5"}) == ("crop", {"scale": 0.5})
    assert parse_spec("rotate:degrees=30,p=1") == ("rotate", {"degrees": 30.0, "p": 1.0})


def test_spec_names_and_describe():
    specs = ["hflip", "crop:scale=0.5", {"name": "mixup", "alpha": 0.2}]
    assert spec_names(specs) == ["hflip", "crop(scale=0.5)", "mixup(alpha=0.2)"]
    assert build_augmentation(specs, num_classes=3).describe() == "hflip, crop(scale=0.5), mixup(alpha=0.2)"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("flp", r"unknown augmentation 'flp'; did you mean 'hflip' or 'vflip'\? known: hflip, vflip, crop"),
        ("mixpu", r"did you mean 'mixup'\? known:"),
        ("zzz", r"unknown augmentation 'zzz'; known: hflip"),
        ("crop:size=3", r"augmentation 'crop' has no option 'size'; known: scale, p"),
        ("trivialaugment:n=2", r"has no option 'n'; known: none"),
        ("crop:scale", r"option 'scale' in 'crop:scale' is not key=value"),
        ("crop:scale=big", r"option scale='big' is not a number"),
        ({"name": "crop", "scale": True}, r"option scale=True is not a number"),
        ("hflip:p=2", r"option p='2' is out of range; use a value in \[0, 1\]"),
        ("crop:scale=0", r"option scale='0' is out of range; use a value in \(0, 1\]"),
        ("mixup:alpha=0", r"option alpha='0' is out of range"),
        ("randaugment:n=2.5", r"option n='2.5' must be a whole number"),
        ("randaugment:m=30", r"option m='30' is out of range"),
        ({"scale": 0.5}, r"has no 'name'"),
        (3, r"must be a string 'name:key=value' or a mapping"),
    ],
)
def test_parse_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_spec(spec)


def test_build_errors():
    assert build_augmentation([]) is None
    with pytest.raises(ConfigError, match=r"must be a list of specs.*\['hflip'\]"):
        build_augmentation("hflip")
    with pytest.raises(ConfigError, match=r"mixup/cutmix need num_classes \(got None\)"):
        build_augmentation(["hflip", "cutmix"])
    with pytest.raises(ConfigError, match=r"strong view cannot use 'mixup'"):
        build_views(WEAK, ["mixup"])


def test_forward_errors():
    aug = build_augmentation(["hflip"])
    with pytest.raises(ConfigError, match=r"augmentation needs images \(N, C, H, W\), got shape \(8, 10\)"):
        aug(torch.rand(8, 10))
    with pytest.raises(ConfigError, match=r"float images in \[0, 1\], got torch.uint8"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    mix = build_augmentation(["mixup"], num_classes=3)
    with pytest.raises(ConfigError, match=r"mixup mixes labels and needs y; pass labels"):
        mix(_batch())
    with pytest.raises(ShapeError, match=r"labels have shape \(8, 1\), expected \(8,\)"):
        mix(_batch(), torch.zeros(8, 1, dtype=torch.long))
    with pytest.raises(LabelError, match=r"labels span \[0, 3\] but mixup/cutmix know 3 classes"):
        mix(_batch(), torch.tensor([0, 1, 2, 3, 0, 1, 2, 0]))
    with pytest.raises(ConfigError, match=r"'color' needs 1- or 3-channel images, got 4"):
        build_augmentation(["color"])(_batch(c=4))


# ---------------------------------------------------------------- every name


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 32), (3, 32)])
def test_each_name_keeps_shape_dtype_range(name, channels, size):
    torch.manual_seed(0)
    aug = build_augmentation([name], num_classes=4)
    x = _batch(c=channels, size=size)
    y = torch.tensor([0, 1, 2, 3, -1, 0, 1, 2])
    out, soft = aug(x, y)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    if name in ("mixup", "cutmix"):
        assert soft.shape == (8, 4) and soft.dtype == torch.float32
    else:
        assert soft is None


def test_rgb_only_ops_on_one_channel_average_back():
    # a grey image repeated to 3 channels: brightness/contrast act the same on every channel
    torch.manual_seed(0)
    x = _batch(c=1)
    out1, _ = build_augmentation(["color:strength=1,p=1"])(x)
    torch.manual_seed(0)
    out3, _ = build_augmentation(["color:strength=1,p=1"])(x.repeat(1, 3, 1, 1))
    assert out1.shape == x.shape
    torch.testing.assert_close(out1, out3.mean(dim=1, keepdim=True), atol=1e-5, rtol=0)
    assert not torch.equal(out1, x)


def test_dtypes_kept():
    for dtype in (torch.float64, torch.float16):
        out, _ = build_augmentation(["crop", "noise"])(_batch().to(dtype))
        assert out.dtype == dtype


def test_hflip_with_p1_is_flip():
    x = _batch()
    out, _ = build_augmentation(["hflip:p=1"])(x)
    torch.testing.assert_close(out, x.flip(-1))
    out, _ = build_augmentation(["vflip:p=1"])(x)
    torch.testing.assert_close(out, x.flip(-2))


def test_noise_std():
    torch.manual_seed(0)
    x = torch.full((16, 3, 32, 32), 0.5)
    out, _ = build_augmentation(["noise:std=0.05"])(x)
    assert abs((out - x).std().item() - 0.05) < 0.2 * 0.05


# ---------------------------------------------------------------- mixup / cutmix targets


def test_conversion_on_known_triple():
    soft = one_hot_targets(torch.tensor([0, 2, -1]), 3)
    assert soft.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    # (row a, row b, weight of b): 0 mixes with 1 at 0.25; 1 with itself; 2 (unlabelled) with 0
    mix = torch.tensor([[0, 1, 0.25], [1, 1, 0.7], [2, 0, 0.4]])
    out = mix_soft_targets(soft, mix)
    torch.testing.assert_close(out, torch.tensor([[0.75, 0, 0.25], [0, 0, 1.0], [0.4, 0, 0]]))


def test_mixup_targets_match_kornia_params():
    torch.manual_seed(0)
    aug = build_augmentation(["mixup:alpha=0.4"], num_classes=8)
    x, y = _batch(), torch.arange(8)
    out, soft = aug(x, y)
    params = aug.ops[0]._params
    pairs, lam = params["mixup_pairs"], params["mixup_lambdas"]
    torch.testing.assert_close(out, ((1 - lam.view(-1, 1, 1, 1)) * x + lam.view(-1, 1, 1, 1) * x[pairs]))
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    expect = (1 - lam[:, None]) * one_hot_targets(y, 8) + lam[:, None] * one_hot_targets(y[pairs], 8)
    torch.testing.assert_close(soft, expect)
    for i in range(8):
        assert (soft[i] > 0).sum() == (1 if pairs[i] == i else 2)
    assert (pairs != torch.arange(8)).any()


def test_cutmix_weight_is_pasted_area():
    torch.manual_seed(3)
    n = 8
    x = ((torch.arange(n, dtype=torch.float32) + 1) / (n + 1)).view(n, 1, 1, 1).expand(n, 3, 32, 32)
    aug = build_augmentation(["cutmix"], num_classes=n)
    out, soft = aug(x.contiguous(), torch.arange(n))
    torch.testing.assert_close(soft.sum(1), torch.ones(n))
    pasted_any = False
    for i in range(n):
        for j in range(n):
            if j != i:
                frac = (out[i] == x[j, 0, 0, 0]).float().mean().item()
                assert soft[i, j].item() == pytest.approx(frac, abs=1e-6)
                pasted_any |= frac > 0
        assert soft[i, i].item() == pytest.approx((out[i] == x[i, 0, 0, 0]).float().mean().item(), abs=1e-6)
    assert pasted_any


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_unlabelled_rows_pass_through(name):
    torch.manual_seed(0)
    y = torch.tensor([0, 1, -1, -1, 2, -1, 0, 1])
    out, soft = build_augmentation([name], num_classes=3)(_batch(), y)
    assert out.shape == (8, 3, 28, 28) and soft.shape == (8, 3)
    assert (soft >= 0).all() and (soft.sum(1) <= 1 + 1e-6).all()
    y_all = torch.full((8,), -1)
    _, soft = build_augmentation([name], num_classes=3)(_batch(), y_all)
    assert soft.abs().sum() == 0


def test_mixup_then_cutmix_compose():
    torch.manual_seed(0)
    aug = build_augmentation(["mixup", "cutmix"], num_classes=5)
    _, soft = aug(_batch(), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]))
    torch.testing.assert_close(soft.sum(1), torch.ones(8))


# ---------------------------------------------------------------- determinism and views


def test_deterministic_under_manual_seed():
    specs = ["hflip", "crop:scale=0.5", "randaugment", "color", "noise", "erase", "mixup", "cutmix"]
    x, y = _batch(), torch.tensor([0, 1, 2, 3, -1, 0, 1, 2])
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(build_augmentation(specs, num_classes=4)(x, y))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)
    torch.manual_seed(1)
    assert not torch.equal(build_augmentation(specs, num_classes=4)(x, y)[0], runs[0][0])


def test_two_views():
    assert WEAK == ["hflip", "crop:scale=0.8"]
    assert STRONG == ["hflip", "crop:scale=0.8", "randaugment", "erase"]
    torch.manual_seed(0)
    views = build_views()
    assert isinstance(views, TwoViews) and isinstance(views.strong, Augmentation)
    x = _batch(c=1, size=32)
    weak, strong = views(x)
    assert weak.shape == strong.shape == x.shape
    assert not torch.equal(weak, strong) and not torch.equal(weak, x)
    assert views.describe() == (
        "weak: hflip, crop(scale=0.8); strong: hflip, crop(scale=0.8), randaugment, erase"
    )
    weak, strong = build_views([], ["hflip:p=1"])(x)
    assert torch.equal(weak, x) and torch.equal(strong, x.flip(-1))


def test_shift_translates_without_rescaling():
    torch.manual_seed(0)
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    out, _ = build_augmentation(["shift:fraction=0.2"])(x)
    assert out.shape == x.shape
    # the bright square keeps its size (no rescaling) but moves
    assert torch.allclose(out.sum((1, 2, 3)), x.sum((1, 2, 3)), atol=2.0)
    assert not torch.equal(out, x)
    with pytest.raises(ConfigError, match="fraction"):
        build_augmentation(["shift:fraction=0.9"])
