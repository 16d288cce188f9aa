"""ONNX export: onnxruntime runs the exported file and gives PyTorch's outputs (to 1e-4) on real images,
at any batch size; a failed export or check writes nothing; bad input is one error line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cli_helpers import assert_one_line_error, run
from transferkit.errors import ConfigError, MissingDependencyError, ShapeError
from transferkit.io import export_onnx
from transferkit.io.export import ExportError, parse_input_shape

ATOL = 1e-4


@pytest.fixture(scope="module")
def ort():
    """onnxruntime (make test installs it with onnx and onnxscript: these tests never skip)."""
    import onnx  # noqa: F401
    import onnxruntime
    import onnxscript  # noqa: F401

    return onnxruntime


def _session(ort, path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(x).numpy()


@pytest.fixture(scope="module")
def cnn_folder(tmp_path_factory, digits):
    """A small CNN trained for a few epochs on the real digits, saved as a model folder."""
    from transferkit.engine import TrainConfig, Trainer
    from transferkit.models import create_model, save_model

    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, image_size=8, widths=(16, 32), feature_dim=32)
    config = TrainConfig(epochs=3, lr=1e-2, backbone_lr_scale=1.0, seed=0)
    Trainer(model, config).fit(digits.train, digits.val)
    return save_model(model, tmp_path_factory.mktemp("export") / "digits-cnn")


@pytest.fixture(scope="module")
def cnn_onnx(ort, cnn_folder):
    """``transferkit export FOLDER --data digits``: the file lands at FOLDER/model.onnx."""
    result = run("export", cnn_folder, "--data", "digits", "--samples", "32")
    assert result.exit_code == 0, result.output
    return cnn_folder / "model.onnx", result


def test_cli_export_of_trained_small_cnn_matches_torch_on_real_digits(ort, cnn_onnx, cnn_folder, digits):
    from transferkit.models import load_model

    path, result = cnn_onnx
    assert path.is_file()
    # the write was atomic: no temporary left beside the model's files
    assert sorted(p.name for p in cnn_folder.iterdir()) == ["config.json", "model.onnx", "model.safetensors"]
    out = " ".join(result.stdout.split())
    assert "max abs difference" in out and "32 digits/test inputs" in out and "batch sizes 32 and 1" in out
    assert "predictions agree on 32/32" in out

    x = digits.test.x  # all 540 real test digits, (N, 1, 8, 8) in [0, 1]
    got = _session(ort, path).run(None, {"input": x.numpy()})[0]
    want = _torch_logits(load_model(cnn_folder), x)
    diff = float(np.abs(got - want).max())
    print(f"small_cnn: max abs difference {diff:.2e} on {len(x)} digits")
    assert got.shape == (len(x), 10)
    assert diff < ATOL
    assert (got.argmax(1) == want.argmax(1)).all()
    accuracy = float((got.argmax(1) == digits.test.y.numpy()).mean())
    assert accuracy > 0.5  # the trained weights went into the file, not a fresh initialisation


def test_exported_file_has_a_dynamic_batch_axis(ort, cnn_onnx, cnn_folder, digits):
    from transferkit.models import load_model

    path, _ = cnn_onnx
    session = _session(ort, path)
    assert session.get_inputs()[0].shape == ["batch", 1, 8, 8]
    model = load_model(cnn_folder)
    for rows in (slice(100, 101), slice(200, 207)):  # batch sizes 1 and 7, neither the traced 2
        x = digits.test.x[rows]
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (len(x), 10)
        assert float(np.abs(got - _torch_logits(model, x)).max()) < ATOL


def _real_images(n: int) -> tuple[str, torch.Tensor]:
    """The first ``n`` Fashion-MNIST test images when installed, else real digits."""
    from transferkit.data import load_dataset, read_idx
    from transferkit.data.builtin import FASHION_MNIST_ROOT

    file = FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte.gz"
    if file.is_file():
        images = read_idx(file, ndim=3)[:n]
        return "fashion-mnist", torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return "digits", load_dataset("digits").test.x[:n]


def test_pretrained_efficientnet_lite0_matches_torch_on_real_images(ort, tmp_path):
    from transferkit.models import load_model

    name, x = _real_images(6)
    model = load_model("efficientnet_lite0")  # ImageNet weights from the installed package
    path = tmp_path / "effnet.onnx"
    path.write_bytes(b"old")
    report = export_onnx(model, path, inputs=x, overwrite=True)
    print(f"efficientnet_lite0 on {name}: export {report.export_seconds:.1f} s, max abs difference "
          f"{report.max_abs_diff:.2e}")
    assert report.verified and report.input_shape == tuple(x.shape[1:]) and report.batch_sizes == (6, 1)
    assert report.max_abs_diff < ATOL and report.agree == 6

    session = _session(ort, path)
    assert session.get_inputs()[0].shape == ["batch", *x.shape[1:]]
    got = session.run(None, {"input": x.numpy()})[0]
    want = _torch_logits(model, x)
    assert got.shape == (6, 1000)
    assert float(np.abs(got - want).max()) < ATOL
    assert (got.argmax(1) == want.argmax(1)).all()
    one = session.run(None, {"input": x[3:4].numpy()})[0]  # batch of one
    assert float(np.abs(one - want[3:4]).max()) < ATOL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["effnet.onnx"]


class _DiffersWhenExported(nn.Module):
    """Adds 1 to its output in the exported graph only: an export whose check must fail."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y + 1.0 if torch.compiler.is_exporting() else y


def test_a_failed_check_leaves_the_old_file_and_no_temporary(ort, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    model = _DiffersWhenExported().train()
    with pytest.raises(ExportError, match="differ from PyTorch's by up to 1 .*not written"):
        export_onnx(model, path, input_shape=(4,), overwrite=True)
    assert model.training  # its mode is given back
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_cli_errors_are_one_line(ort, tmp_path, cnn_folder):
    out = tmp_path / "m.onnx"
    assert_one_line_error(run("export", "no_such_model", "--out", out), "no_such_model")
    out.write_bytes(b"keep")
    assert_one_line_error(run("export", cnn_folder, "--out", out), "already exists", "--overwrite")
    assert out.read_bytes() == b"keep"
    assert_one_line_error(run("export", cnn_folder, "--out", tmp_path), "is a folder")
    new = tmp_path / "new.onnx"
    for shape in ("1,x,8", "0,8,8", "", "1,2,3,4,5"):
        assert_one_line_error(run("export", cnn_folder, "--out", new, "--input-shape", shape), "input shape")
    assert_one_line_error(  # 2 channels: the model takes 1 (gray) and converts only RGB
        run("export", cnn_folder, "--out", new, "--input-shape", "2,8,8"), "2 channels"
    )
    assert_one_line_error(  # the data's images are 1,8,8
        run("export", cnn_folder, "--out", new, "--input-shape", "1,28,28", "--data", "digits"),
        "differs from the shape of the data",
    )
    assert_one_line_error(run("export", cnn_folder, "--out", new, "--format", "tflite"), "--format", "tflite")
    assert_one_line_error(run("export", cnn_folder, "--out", new, "--atol", "-1"), "atol")
    assert not new.exists()


def test_missing_onnxruntime_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert_one_line_error(
        run("export", "small_cnn", "--out", tmp_path / "m.onnx"),
        "onnxruntime", "pip install 'transferkit[export]'",
    )
    with pytest.raises(MissingDependencyError, match=r"transferkit\[export\]"):
        export_onnx(nn.Linear(4, 2), tmp_path / "m.onnx", input_shape=(4,))
    assert not (tmp_path / "m.onnx").exists()


def test_parse_input_shape():
    assert parse_input_shape("1,28,28") == (1, 28, 28)
    assert parse_input_shape(" 3, 32 ,32 ") == (3, 32, 32)
    assert parse_input_shape("64") == (64,)
    assert parse_input_shape((1, 8, 8)) == (1, 8, 8)
    for bad in ("", "1,,2", "a", "-1,2", "1,2,3,4,5", (1.5, 2)):
        with pytest.raises(ConfigError, match="input shape"):
            parse_input_shape(bad)


def test_api_refuses_bad_arguments_before_exporting(ort, tmp_path):
    with pytest.raises(ConfigError, match="atol"):
        export_onnx(nn.Linear(4, 2), tmp_path / "m.onnx", input_shape=(4,), atol=float("nan"))
    with pytest.raises(ConfigError, match="samples"):
        export_onnx(nn.Linear(4, 2), tmp_path / "m.onnx", input_shape=(4,), samples=0)
    with pytest.raises(ConfigError, match="input shape"):  # a plain module has no info to default from
        export_onnx(nn.Linear(4, 2), tmp_path / "m.onnx")
    with pytest.raises(ShapeError, match="cannot take inputs of shape"):
        export_onnx(nn.Linear(4, 2), tmp_path / "m.onnx", input_shape=(5,))
    assert list(tmp_path.iterdir()) == []
