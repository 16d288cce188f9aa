"""timm, torchvision and Hugging Face models for real: built offline, saved in each library's own
format, loaded back through transferkit's pretrained paths; preprocessing from the library; image
size; a fast one-line failure when weights can't be downloaded."""

from __future__ import annotations

import argparse
import time

import pytest
import timm
import torch
import torchvision
import transformers
from safetensors.torch import save_file

from cli_helpers import assert_one_line_error, run
from transferkit.errors import CheckpointError
from transferkit.models import create_model, load_model, save_model


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture()
def no_caches(tmp_path, monkeypatch):
    """Empty torch-hub and Hugging Face caches (nothing downloaded before)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


def test_timm_folder_in_its_own_hub_format(tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=1000).eval()
    timm.models.save_for_hf(net, tmp_path / "timm-r18", safe_serialization=True)
    model = create_model(f"timm:{tmp_path / 'timm-r18'}", num_classes=1000, pretrained=True)
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(_logits(model, x), _logits(net, model.input_adapter(x)))
    # preprocessing is timm's: bicubic resize, centre crop 0.95, ImageNet mean/std
    pre = model.info.preprocessing
    assert pre["interpolation"] == "bicubic" and pre["crop_pct"] == pytest.approx(0.95)
    assert pre["input_size"] == [3, 224, 224] and pre["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # the saved transferkit model rebuilds by architecture name, without the timm folder
    assert model.info.arch == "timm:resnet18"
    saved = save_model(model, tmp_path / "saved")
    for f in (tmp_path / "timm-r18").iterdir():
        f.unlink()
    assert torch.equal(_logits(load_model(saved), x), _logits(model, x))


def test_timm_pretrained_name_from_the_hugging_face_cache(no_caches, monkeypatch):
    """``timm:resnet18`` with pretrained weights goes through timm's own download path, which finds
    the file in the Hugging Face cache (offline)."""
    import huggingface_hub.constants as hf_constants

    torch.manual_seed(1)
    net = timm.create_model("resnet18").eval()
    repo = no_caches / "hf-cache" / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(net.state_dict(), snapshot / "model.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    model = create_model("timm:resnet18", num_classes=1000, pretrained=True)
    x = torch.rand(2, 3, 40, 40)
    assert torch.equal(_logits(model, x), _logits(net, model.input_adapter(x)))
    assert model.info.source == "pretrained:timm:resnet18"
    ten = create_model("timm:resnet18", num_classes=10, pretrained=True)  # new head, same backbone
    assert torch.equal(ten.backbone.conv1.weight, net.conv1.weight) and ten.head.out_features == 10


def test_timm_training_checkpoint_file(tmp_path):
    """A timm train.py checkpoint (weights under ``state_dict`` beside an argparse Namespace) loads as
    ``--source FILE --source-arch timm:NAME``; its classifier ``fc`` becomes the head."""
    torch.manual_seed(2)
    net = timm.create_model("resnet18", num_classes=7).eval()
    ckpt = {"epoch": 3, "arch": "resnet18", "state_dict": net.state_dict(),
            "args": argparse.Namespace(lr=0.1, model="resnet18")}
    torch.save(ckpt, tmp_path / "checkpoint.pth.tar")
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    model = load_model(tmp_path / "checkpoint.pth", arch="timm:resnet18")
    x = torch.rand(2, 3, 32, 32)
    assert model.info.num_classes == 7
    assert torch.equal(_logits(model, x), _logits(net, model.input_adapter(x)))


def test_torchvision_pretrained_from_its_cache_and_state_dict(no_caches):
    torch.manual_seed(3)
    net = torchvision.models.resnet18().eval()
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    checkpoints = no_caches / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(net.state_dict(), checkpoints / weights.url.rsplit("/", 1)[1])
    model = create_model("torchvision:resnet18", num_classes=1000, pretrained=True)
    x = torch.rand(2, 3, 48, 48)
    assert torch.equal(_logits(model, x), _logits(net, model.input_adapter(x)))
    # preprocessing is the weights' transforms(): resize 256, crop 224, bilinear
    assert model.info.crop_pct == pytest.approx(224 / 256) and model.info.interpolation == "bilinear"
    # a plain state dict file with the architecture named
    torch.save(net.state_dict(), no_caches / "r18.pth")
    again = load_model(no_caches / "r18.pth", arch="torchvision:resnet18")
    assert torch.equal(_logits(again, x), _logits(net, again.input_adapter(x)))


def test_adapter_crop_matches_the_library_transform():
    """The input adapter's resize + centre crop equals torchvision's own evaluation transform."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    model = create_model("torchvision:resnet18", num_classes=3)
    x = torch.rand(2, 3, 300, 300)
    ours = model.input_adapter(x)
    theirs = weights.transforms(antialias=True)(x)
    assert ours.shape == theirs.shape == (2, 3, 224, 224)
    assert (ours - theirs).abs().max() < 0.05  # same geometry; resampling kernels differ slightly


def test_hugging_face_save_pretrained_folder(tmp_path):
    torch.manual_seed(4)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=96)
    vit = transformers.ViTModel(config).eval()
    vit.save_pretrained(tmp_path / "vit")
    proc = transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
                                          image_std=[0.2, 0.25, 0.3], resample=3)
    proc.save_pretrained(tmp_path / "vit")
    model = create_model(f"hf:{tmp_path / 'vit'}", num_classes=5, pretrained=True).eval()
    assert model.info.mean == pytest.approx((0.5, 0.4, 0.3)) and model.info.interpolation == "bicubic"
    assert model.info.input_size == (3, 32, 32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = vit(pixel_values=model.input_adapter(x)).pooler_output
        assert torch.allclose(model.forward_features(x), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("spec", "host"),
    [("timm:resnet18", "huggingface.co"), ("torchvision:resnet18", "download.pytorch.org"),
     ("hf:google/vit-base-patch16-224", "huggingface.co")],
)
def test_pretrained_weights_offline_fail_at_once(no_caches, spec, host, monkeypatch):
    """No network and nothing cached: one line naming the way out, within seconds (timm retried for
    about 50 s before). The host check is real: this machine has no network."""
    monkeypatch.setattr("transferkit.models.hub._reachable", lambda url, timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="--no-pretrained") as info:
        create_model(spec, pretrained=True)
    assert time.perf_counter() - start < 10
    assert host in str(info.value) and "\n" not in str(info.value)


def test_cli_offline_hub_source_is_one_line_and_no_pretrained_runs(no_caches, monkeypatch):
    monkeypatch.setattr("transferkit.models.hub._reachable", lambda url, timeout=3.0: False)
    start = time.perf_counter()
    result = run("rank", "--candidates", "timm:resnet18", "--data", "digits", "--shots", "2")
    assert_one_line_error(result, "timm:resnet18", "--no-pretrained")
    assert time.perf_counter() - start < 15
    ok = run("rank", "--candidates", "timm:resnet18", "--no-pretrained", "--data", "digits", "--shots", "2",
             "--scores", "logme")
    assert ok.exit_code == 0, ok.output
    assert "timm:resnet18" in ok.output


def test_hub_models_take_the_image_size_asked_for():
    cnn = create_model("timm:resnet18", num_classes=4, image_size=64)
    assert cnn.info.input_size == (3, 64, 64) and cnn.info.kwargs == {"image_size": 64}
    assert _logits(cnn, torch.rand(2, 1, 28, 28)).shape == (2, 4)
    vit = create_model("timm:vit_tiny_patch16_224", num_classes=4, image_size=32)
    assert vit.backbone.patch_embed.img_size == (32, 32)  # the ViT itself is built for 32 px
    assert _logits(vit, torch.rand(2, 3, 32, 32)).shape == (2, 4)
    tv = create_model("torchvision:vit_b_16", num_classes=4, image_size=32)
    assert tv.backbone.image_size == 32 and tv.info.input_size == (3, 32, 32)
    assert create_model("torchvision:resnet18", num_classes=4, image_size=96).info.input_size == (3, 96, 96)


def test_evaluation_batches_shrink_with_the_input_size():
    """At 224 px one evaluation pass holds at most 64 images (EVAL_BUDGET), whatever the configured
    batch size; at 64 px the configured size stands. Same predictions either way."""
    from transferkit.data.base import TensorDataset
    from transferkit.evaluation import evaluate

    torch.manual_seed(5)
    data = TensorDataset(torch.rand(70, 1, 16, 16), torch.randint(0, 3, (70,)), ["a", "b", "c"], "toy")
    seen: list[int] = []
    for size, largest in ((224, 64), (64, 70)):
        model = create_model("timm:resnet18", num_classes=3, image_size=size).eval()
        hook = model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
        evaluate(model, data, batch_size=512)
        hook.remove()
        assert max(seen) == largest, (size, seen)
        seen.clear()


def test_finetune_target_takes_the_preprocessing_given_for_its_source(tmp_path):
    """--mean/--std given for a hub source reach the fine-tuned model (and its saved folder)."""
    result = run("finetune", "--source", "timm:resnet18", "--no-pretrained", "--mean", "0.1,0.2,0.3",
                 "--std", "0.4,0.5,0.6", "--data", "digits", "--shots", "2", "--epochs", "1",
                 "--no-baseline", "model.kwargs.image_size=32", "--out", tmp_path / "ft")
    assert result.exit_code == 0, result.output
    saved = load_model(tmp_path / "ft" / "model")
    assert saved.info.mean == pytest.approx((0.1, 0.2, 0.3))
    assert saved.info.std == pytest.approx((0.4, 0.5, 0.6))
    assert saved.info.input_size == (3, 32, 32)
