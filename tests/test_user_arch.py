"""A user's own architecture: a CNN class in a file and its state dict from another project, used
through every command with --source-arch FILE.py:Class; its code runs only when the command line
names it."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import torch
import yaml

from cli_helpers import assert_one_line_error, run
from transferkit.errors import ConfigError
from transferkit.models import allow_code, create_model, load_model, save_model, wrap_model

CODE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class MyCNN(nn.Module):
        def __init__(self, classes=10, width=8):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.fc_layers = nn.Sequential(
                nn.Flatten(), nn.Linear(2 * width * 7 * 7, 32), nn.ReLU(), nn.Linear(32, classes))

        def forward(self, x):
            return self.fc_layers(self.features(x))
    """
)


@pytest.fixture()
def project(tmp_path):
    """``my_cnn.py`` and ``weights.pth`` (a bare state dict), as another project left them."""
    (tmp_path / "my_cnn.py").write_text(CODE)
    spec = importlib.util.spec_from_file_location("other_project_cnn", tmp_path / "my_cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.MyCNN().eval()
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    return tmp_path, net, f"{tmp_path / 'my_cnn.py'}:MyCNN"


def test_weights_load_into_the_class_with_the_same_outputs(project):
    root, net, spec = project
    with allow_code(spec):
        model = load_model(root / "weights.pth", arch=spec, input_size=[1, 28, 28])
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model.eval()(x), net(x))
    assert model.info.classifier == "fc_layers.3" and model.info.num_classes == 10
    # the saved folder records how to rebuild it, and loads back when the code is named again
    folder = save_model(model, root / "saved")
    config = json.loads((folder / "config.json").read_text())
    assert config["arch"] == spec and config["kwargs"]["head"] == "fc_layers.3"
    with allow_code(spec):
        assert torch.equal(load_model(folder).eval()(x), net(x))
    with pytest.raises(ConfigError, match="--source-arch"):
        load_model(folder)  # a saved config.json alone never runs code


def test_code_runs_only_when_named(project, tmp_path):
    root, _, spec = project
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')\nfrom torch.nn import Linear as Net\n"
    (root / "evil.py").write_text(code)
    with pytest.raises(ConfigError, match="runs code only when you name it"):
        create_model(f"{root / 'evil.py'}:Net", input_size=[4])
    assert not marker.exists()
    with pytest.raises(ConfigError, match="runs code only when you name it"):
        load_model(root / "weights.pth", arch=spec)


def test_named_head_missing_input_size_and_wrapped_models(project):
    root, net, spec = project
    with allow_code(spec):
        with pytest.raises(ConfigError, match="--input-size"):
            create_model(spec)
        model = create_model(spec, num_classes=3, head="fc_layers.3", input_size=[1, 28, 28])
        with pytest.raises(ConfigError, match="no submodule 'fc_layers.9'"):
            create_model(spec, head="fc_layers.9", input_size=[1, 28, 28])
    assert model.info.feature_dim == 32 and model.head.out_features == 3
    # a model wrapped in Python saves and loads back once its class is named
    wrapped = wrap_model(type(net)(), input_size=(1, 28, 28))
    folder = save_model(wrapped, root / "wrapped")
    x = torch.rand(2, 1, 28, 28)
    again = load_model(folder, arch=type(net))
    again.load_state_dict(wrapped.state_dict())
    assert torch.equal(again.eval()(x), wrapped.eval()(x))


def test_cli_inspect_finetune_evaluate_rank_grow_distill(project):
    root, _, spec = project
    weights = root / "weights.pth"
    # a bare state dict with no architecture known: its tensors are listed
    listed = run("inspect", weights)
    assert listed.exit_code == 0, listed.output
    assert "fc_layers.3.weight" in listed.output and "10x32" in listed.output
    assert "--source-arch" in listed.output
    shown = run("inspect", weights, "--source-arch", spec, "--input-shape", "1,28,28")
    assert shown.exit_code == 0, shown.output
    assert "preprocessing: input 1x28x28" in shown.output and "MyCNN" in shown.output
    out = root / "ft"
    ft = run("finetune", "--source", weights, "--source-arch", spec, "--input-size", "1,28,28",
             "--data", "digits", "--shots", "3", "--epochs", "1", "--out", out)
    assert ft.exit_code == 0, ft.output
    metrics = json.loads((out / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert "scratch" in text  # its own baseline: the same class from scratch
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["arch"] == spec
    assert_one_line_error(run("evaluate", out / "model", "--data", "digits"), "--source-arch")
    ev = run("evaluate", out / "model", "--data", "digits", "--arch", spec)
    assert ev.exit_code == 0, ev.output
    rk = run("rank", "--candidates", weights, "--source-arch", spec, "--input-size", "1,28,28",
             "--data", "digits", "--shots", "3", "--scores", "logme")
    assert rk.exit_code == 0, rk.output
    gr = run("grow", weights, "--source-arch", spec, "--input-size", "1,28,28",
             "--widen", "backbone.fc_layers.1=48", "--out", root / "grown")
    assert gr.exit_code == 0, gr.output
    ds = run("distill", "--teacher", weights, "--source-arch", spec, "--input-size", "1,28,28",
             "--student", "small_cnn", "--data", "digits", "--shots", "3", "--epochs", "1",
             "--out", root / "ds", "--no-baseline")
    assert ds.exit_code == 0, ds.output


def test_a_config_file_cannot_name_code(project):
    root, _, spec = project
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"source": str(root / "weights.pth"), "source_arch": spec,
                                             "input_size": [1, 28, 28]},
                                   "data": {"dataset": "digits", "shots": 2}, "out": str(root / "o")}))
    assert_one_line_error(run("finetune", "--config", cfg, "--epochs", "1"), "--source-arch")
    assert not (root / "o" / "metrics.json").exists()
