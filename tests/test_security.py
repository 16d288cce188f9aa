"""Nothing read from a file runs code (issue 12, section 1).

Every payload here WOULD create a marker file if it ran; each test checks that the marker is absent
and that the one-line error names the offending key. The tests with explicit permission show that the
same payloads do run when allowed, so the checks can fail.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cli_helpers import assert_one_line_error, run
from transferkit.errors import CheckpointError, ConfigError
from transferkit.io import load_state_dict
from transferkit.models import (
    allow_remote_code,
    create_model,
    load_model,
    remote_code_allowed,
    save_model,
)

# ----------------------------------------------------------------------------------------- payloads


class _OpensMarker:
    """Pickles as ``open(marker, "w")``: unpickling it with full pickle creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled_payload(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _OpensMarker(marker)}, path)
    return path


def _fake_old_timm(monkeypatch) -> list[dict]:
    """A stand-in for a timm that unpickles ``checkpoint_path`` (as timm < 1.0.26 did)."""
    calls: list[dict] = []

    def create(name, pretrained=False, **kwargs):
        calls.append(kwargs)
        if "checkpoint_path" in kwargs:
            torch.load(kwargs["checkpoint_path"], weights_only=False)
        raise AssertionError("the stand-in timm was reached")

    fake = types.ModuleType("timm")
    fake.create_model = create
    monkeypatch.setitem(sys.modules, "timm", fake)
    return calls


def _tk_config(folder: Path, arch: str, kwargs: dict, **fields) -> Path:
    """A transferkit model folder's config.json (no weights needed: configs are checked first)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": "transferkit",
        "version": "0.1.0",
        "arch": arch,
        "kwargs": kwargs,
        "num_classes": 10,
        "feature_dim": 512,
        "input_size": [3, 224, 224],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "data_shape": None,
        "source": "",
        "growth": [],
        **fields,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_pickled_payload_really_runs_when_unpickled(tmp_path):
    """Sanity check of the payload the timm tests rely on: full unpickling creates the marker."""
    marker = tmp_path / "RAN"
    payload = _pickled_payload(tmp_path / "evil.pt", marker)
    torch.load(payload, weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------ transformers folders


@pytest.fixture(scope="module")
def transformers_mod():
    import transformers  # in the dev extra, so these tests always run

    return transformers


@pytest.fixture
def hf_modules(transformers_mod, tmp_path, monkeypatch):
    """transformers copies remote code into HF_MODULES_CACHE and imports it from there: keep that
    inside ``tmp_path`` and forget the imported modules afterwards."""
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [m for m in sys.modules if m.startswith("transformers_modules")]:
        del sys.modules[name]


def _hf_folder(root: Path, marker: Path, *, custom_type: bool = False) -> Path:
    """A tiny ViT saved by transformers, plus ``payload.py`` named by an ``auto_map``.

    With ``custom_type`` the config's ``model_type`` is one transformers does not know, so the
    folder cannot be loaded at all without running its code.
    """
    from transformers import ViTConfig, ViTModel

    folder = root / f"hf_{root.name}{'_custom' if custom_type else ''}"
    cfg = ViTConfig(
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        image_size=8,
        patch_size=4,
    )
    ViTModel(cfg).save_pretrained(folder)
    model_type = "payload_vit" if custom_type else "vit"
    (folder / "payload.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import ViTConfig, ViTModel\n\n\n"
        "class PayloadConfig(ViTConfig):\n"
        f"    model_type = {model_type!r}\n\n\n"
        "class PayloadModel(ViTModel):\n"
        "    config_class = PayloadConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "payload.PayloadConfig", "AutoModel": "payload.PayloadModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_model_folder_asking_for_remote_code_is_refused_by_cli(tmp_path, hf_modules):
    marker = tmp_path / "RAN"
    hf = _hf_folder(tmp_path, marker)
    folder = save_model(create_model(f"hf:{hf}", num_classes=3), tmp_path / "tk")
    assert not marker.exists()  # built from transformers' own ViT classes: the auto_map is ignored
    config = json.loads((folder / "config.json").read_text())
    config["kwargs"]["trust_remote_code"] = True
    (folder / "config.json").write_text(json.dumps(config))
    result = run("inspect", folder)
    assert_one_line_error(result, "trust_remote_code", "config.json", "refused")
    assert not marker.exists()
    # not even the flag lets a file turn remote code on
    result = run("inspect", folder, "--trust-remote-code")
    assert_one_line_error(result, "trust_remote_code", "config.json")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="'trust_remote_code'"):
        load_model(folder, trust_remote_code=True)
    assert not marker.exists()


def test_hf_folder_with_its_own_code_is_refused_without_permission(tmp_path, hf_modules):
    marker = tmp_path / "RAN"
    hf = _hf_folder(tmp_path, marker, custom_type=True)
    with pytest.raises(ConfigError, match="needs the Python code shipped with it.*--trust-remote-code"):
        create_model(f"hf:{hf}", num_classes=3)
    with pytest.raises(ConfigError, match="auto_map"):
        load_model(f"hf:{hf}")  # pretrained: AutoModel.from_pretrained
    assert_one_line_error(run("inspect", f"hf:{hf}"), "--trust-remote-code")
    assert not marker.exists()


def test_hf_folder_of_a_known_type_uses_transformers_own_classes(tmp_path, hf_modules):
    marker = tmp_path / "RAN"
    hf = _hf_folder(tmp_path, marker)
    model = load_model(f"hf:{hf}", num_classes=3)
    assert type(model.backbone.model).__name__ == "ViTModel"
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 3)
    assert not marker.exists()


def test_explicit_permission_runs_the_shipped_code(tmp_path, hf_modules):
    """The same folders with permission: the payload runs (so the refusals above are real)."""
    marker = tmp_path / "RAN"
    hf = _hf_folder(tmp_path, marker, custom_type=True)
    model = load_model(f"hf:{hf}", num_classes=3, trust_remote_code=True)
    assert marker.exists() and type(model.backbone.model).__name__ == "PayloadModel"
    assert "trust_remote_code" not in model.info.kwargs  # never saved into the model's config
    marker.unlink()
    result = run("inspect", f"hf:{_hf_folder(tmp_path / 'b', marker)}", "--trust-remote-code")
    assert result.exit_code == 0, result.output
    assert marker.exists()


def test_remote_code_permission_is_scoped():
    assert not remote_code_allowed()
    with allow_remote_code():
        assert remote_code_allowed()
        with allow_remote_code(False):
            assert not remote_code_allowed()
        assert remote_code_allowed()
    assert not remote_code_allowed()
    with pytest.raises(ConfigError, match="True or False"):
        with allow_remote_code("yes"):  # type: ignore[arg-type]
            pass
    with pytest.raises(ConfigError, match="trust_remote_code must be True or False"):
        load_model("mlp", trust_remote_code="false")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- hub options


@pytest.mark.parametrize("key", ["checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay"])
def test_timm_loader_options_in_a_model_folder_are_refused(tmp_path, monkeypatch, key):
    marker = tmp_path / "RAN"
    calls = _fake_old_timm(monkeypatch)
    evil = _pickled_payload(tmp_path / "evil.pt", marker)
    value = str(evil) if key == "checkpoint_path" else {"file": str(evil)}
    folder = _tk_config(tmp_path / "tk", "timm:resnet18", {key: value})
    with pytest.raises(CheckpointError, match=rf"config.json.*does not take option '{key}'"):
        load_model(folder)
    assert_one_line_error(run("inspect", folder), key, "config.json", "allowed: drop_rate")
    # the same options through the API / a YAML config's model.kwargs
    with pytest.raises(ConfigError, match=rf"'timm:resnet18' does not take option '{key}'"):
        create_model("timm:resnet18", **{key: value})
    assert not calls and not marker.exists()


def test_timm_checkpoint_path_message_says_why(monkeypatch, tmp_path):
    _fake_old_timm(monkeypatch)
    with pytest.raises(ConfigError) as info:
        create_model("timm:resnet18", checkpoint_path=str(tmp_path / "x.pt"))
    message = str(info.value)
    assert "'checkpoint_path' (it can load pickled files); allowed: drop_rate, drop_path_rate" in message
    assert "\n" not in message


def test_config_beside_a_weights_file_cannot_ask_for_remote_code(tmp_path):
    model = create_model("mlp", num_classes=3, hidden=(4,))
    folder = save_model(model, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["kwargs"]["trust_remote_code"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.*'trust_remote_code'"):
        load_model(folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="config.json.*'trust_remote_code'"):
        load_model(folder)


def test_hub_options_are_an_allow_list_checked_before_import(monkeypatch):
    for module in ("timm", "torchvision", "transformers"):
        monkeypatch.setitem(sys.modules, module, None)  # an import would fail: refusals come first
    with pytest.raises(ConfigError, match=r"'hf:org/model' does not take option 'trust_remote_code' \(it "):
        create_model("hf:org/model", trust_remote_code=True)
    with pytest.raises(ConfigError, match="'code_revision' \\(it picks Python code"):
        create_model("hf:org/model", code_revision="main")
    with pytest.raises(ConfigError, match="'torchvision:resnet18' does not take option 'weights'"):
        create_model("torchvision:resnet18", weights="DEFAULT")
    with pytest.raises(ConfigError, match="option 'drop_rate' of model 'timm:resnet18' must be a number"):
        create_model("timm:resnet18", drop_rate="0.1")
    with pytest.raises(ConfigError, match="does not take options 'bogus', 'other'; allowed: image_size"):
        create_model("torchvision:resnet18", bogus=1, other=2)


def test_hf_loaders_get_explicit_trust_and_local_files_only(tmp_path, monkeypatch):
    calls: list[tuple[str, str, dict]] = []

    class _Net(torch.nn.Module):
        config = types.SimpleNamespace(hidden_size=4, image_size=8, num_channels=3)

    def loader(kind):
        def load(model_id, **kwargs):
            calls.append((kind, model_id, kwargs))
            if kind == "processor":
                raise OSError("no preprocessor_config.json")
            return _Net() if kind == "model" else _Net.config

        return types.SimpleNamespace(from_pretrained=load, from_config=lambda cfg, **kw: (
            calls.append(("from_config", "", kw)) or _Net()
        ))

    fake = types.ModuleType("transformers")
    fake.AutoModel = loader("model")
    fake.AutoConfig = loader("config")
    fake.AutoImageProcessor = loader("processor")
    monkeypatch.setitem(sys.modules, "transformers", fake)
    monkeypatch.setattr("transferkit.models.hub.check_downloadable", lambda spec, where: None)
    create_model(f"hf:{tmp_path}", num_classes=2, pretrained=True)
    create_model(f"hf:{tmp_path}", num_classes=2)
    with allow_remote_code():
        create_model("hf:org/model", num_classes=2, revision="v1")
    local = [kw for _, mid, kw in calls if mid == str(tmp_path)]
    # pretrained: config (text or vision?), model, image processor; random init: config, processor
    assert len(local) == 5 and all(
        kw["trust_remote_code"] is False and kw["local_files_only"] is True for kw in local
    )
    remote = [kw for _, mid, kw in calls if mid == "org/model"]
    assert remote and all(kw["trust_remote_code"] is True and "local_files_only" not in kw for kw in remote)
    from_config = [kw for kind, _, kw in calls if kind == "from_config"]
    assert from_config == [{"trust_remote_code": False}, {"trust_remote_code": True}]


def test_hf_text_model_and_tokenizer_loaders_get_explicit_trust(tmp_path, monkeypatch):
    calls: list[tuple[str, str, dict]] = []

    class _Net(torch.nn.Module):
        config = types.SimpleNamespace(hidden_size=4, vocab_size=10, max_position_embeddings=64)

    tokenizer = types.SimpleNamespace(pad_token_id=0, eos_token=None, unk_token="[UNK]")

    def loader(kind):
        def load(model_id, **kwargs):
            calls.append((kind, model_id, kwargs))
            return {"model": _Net(), "config": _Net.config, "tokenizer": tokenizer}[kind]

        return types.SimpleNamespace(from_pretrained=load)

    fake = types.ModuleType("transformers")
    fake.AutoModel, fake.AutoConfig, fake.AutoTokenizer = (
        loader(k) for k in ("model", "config", "tokenizer"))
    monkeypatch.setitem(sys.modules, "transformers", fake)
    monkeypatch.setattr("transferkit.models.hub.check_downloadable", lambda spec, where: None)
    model = create_model(f"hf:{tmp_path}", num_classes=2, pretrained=True)
    assert model.tokenizer is tokenizer and model.info.text["tokenizer"] == f"hf:{tmp_path}"
    assert [k for k, _, _ in calls] == ["config", "model", "tokenizer"]
    assert all(kw["trust_remote_code"] is False and kw["local_files_only"] is True for _, _, kw in calls)
    calls.clear()
    with allow_remote_code():
        create_model("hf:org/text-model", num_classes=2, pretrained=True)
    assert calls and all(kw["trust_remote_code"] is True and "local_files_only" not in kw
                         for _, _, kw in calls)


# ------------------------------------------------------------------------------------- YAML config


@pytest.mark.parametrize("route", ["source", "arch"])
def test_yaml_model_kwargs_cannot_turn_code_on(tmp_path, hf_modules, monkeypatch, route):
    marker = tmp_path / "RAN"
    calls = _fake_old_timm(monkeypatch)
    if route == "source":  # the target is built from the source's arch with model.kwargs
        hf = _hf_folder(tmp_path, marker)
        model = f"  source: 'hf:{hf}'\n  kwargs: {{trust_remote_code: true}}\n"
        key = "trust_remote_code"
    else:
        evil = _pickled_payload(tmp_path / "evil.pt", marker)
        model = f"  arch: 'timm:resnet18'\n  kwargs: {{checkpoint_path: '{evil}'}}\n"
        key = "checkpoint_path"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"out: '{tmp_path / 'out'}'\n"
        "data:\n  dataset: digits\n  shots: 2\n"
        f"model:\n{model}"
        "train:\n  epochs: 1\n"
    )
    result = run("finetune", "--config", config)
    assert_one_line_error(result, f"does not take option '{key}'")
    assert not marker.exists() and not calls


# ---------------------------------------------------------------------------------- weights values


def test_non_finite_weights_are_refused(tmp_path):
    model = create_model("mlp", num_classes=3, in_features=4, hidden=(5,))
    folder = save_model(model, tmp_path / "m")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["backbone.fc1.0.weight"][0, :] = float("nan")  # 4 values
    state["head.weight"][:2, :4] = float("inf")  # 8 values
    save_file(state, str(folder / "model.safetensors"))
    names = r"backbone\.fc1\.0\.weight, head\.weight"
    with pytest.raises(CheckpointError, match=rf"holds 12 non-finite values \(NaN/inf, e\.g\. in {names}\)"):
        load_model(folder)
    assert_one_line_error(run("inspect", folder), "12 non-finite values", "backbone.fc1.0.weight")
    torch.save({"w": torch.tensor([1.0, float("-inf")]), "step": torch.tensor(3)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="holds 1 non-finite values"):
        load_state_dict(tmp_path / "w.pt")
    assert load_state_dict(tmp_path / "w.pt", check_finite=False)["step"].item() == 3


# ------------------------------------------------------------------------------ malformed configs


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("kwargs", [1, 2], "an object of architecture arguments"),
        ("input_size", "1,28,28", "a list of 1 or 3 positive integers"),
        ("input_size", [1, 28], "a list of 1 or 3 positive integers"),
        ("num_classes", "10", "an integer >= 1"),
        ("num_classes", True, "an integer >= 1"),
        ("growth", {"op": "widen"}, "a list of objects"),
        ("mean", [0.5, 0.5], "1 number (one per channel of input_size [1, 28, 28])"),
        ("std", "0.3", "null or a list of finite numbers"),
        ("std", [0.0], "positive numbers"),
        ("arch", 7, "a non-empty string"),
        ("data_shape", [0, 28], "null or a list of positive integers"),
        ("feature_dim", 1.5, "an integer >= 0"),
        ("class_names", "a,b,c", "null or a list of class names (strings)"),
    ],
)
def test_malformed_config_fields_are_one_clear_error(tmp_path, field, value, expected):
    model = create_model("small_cnn", num_classes=3, widths=(4,), feature_dim=8)
    folder = save_model(model, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message and f"field {field!r} must be {expected}" in message
    assert_one_line_error(run("inspect", folder), f"field {field!r}", "config.json")
    with pytest.raises(CheckpointError, match=f"field {field!r}"):
        load_model(folder / "model.safetensors")  # the config beside a weights file is checked too


def test_missing_required_field_is_named(tmp_path):
    folder = save_model(create_model("mlp", num_classes=3), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    del config["input_size"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="field 'input_size' is missing"):
        load_model(folder)


def test_model_args_can_be_checked_without_building(monkeypatch):
    from transferkit.models import check_model_args

    monkeypatch.setitem(sys.modules, "transformers", None)
    check_model_args("hf:org/model", {"image_size": 32})
    check_model_args("mlp", {"hidden": [4]})
    with pytest.raises(ConfigError, match="'trust_remote_code'"):
        check_model_args("hf:org/model", {"trust_remote_code": True})
    with pytest.raises(ConfigError, match="takes no argument"):
        check_model_args("mlp", {"trust_remote_code": True})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a torch file", "could not be read (UnpicklingError: Unsupported operand"),
        (b"hello world, not a checkpoint\n", "could not be read (KeyError"),
    ],
)
def test_unreadable_torch_file_is_one_clear_line_and_never_suggests_unpickling(tmp_path, content, expected):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert expected in message and "weights_only" not in message and "\n" not in message
