"""``transferkit grow`` in process: grown model saved, reloads, same outputs; one-line errors."""

from __future__ import annotations

import torch

from cli_helpers import assert_one_line_error, run
from transferkit.models import load_model


def test_grow_saves_a_function_preserving_model(digits_source, digits, tmp_path):
    out = tmp_path / "grown"
    result = run(
        "grow", digits_source, "--widen", "backbone.fc1=48", "--widen", "backbone.fc2.0=40",
        "--deepen", "backbone.fc1", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "widen backbone.fc1.0: 32 -> 48 units, consumer backbone.fc2.0" in result.stdout
    assert "widen backbone.fc2.0: 32 -> 40 units, consumer head" in result.stdout
    assert "deepen after backbone.fc1: inserted backbone.fc1_deep1 (48 units)" in result.stdout
    # mlp 64-32-32-10: 2080+1056+330 = 3466; grown 64-48-[48]-40-10: 3120+2352+1960+410 = 7842
    assert "parameters: 3,466 -> 7,842" in result.stdout
    original, grown = load_model(digits_source), load_model(out)
    assert [s["op"] for s in grown.info.growth] == ["widen", "widen", "deepen"]
    assert grown.backbone.fc1_deep1[0].weight.shape == (48, 48)
    x = digits.test.x
    original.eval()
    grown.eval()
    with torch.no_grad():
        assert float((original(x) - grown(x)).abs().max()) < 1e-5


def test_grow_errors_are_one_line(digits_source, tmp_path):
    result = run("grow", digits_source, "--widen", "backbone.fc9=40", "--out", tmp_path / "o")
    assert_one_line_error(result, "backbone.fc9", "Did you mean")
    result = run("grow", digits_source, "--deepen", "backbone.fc7", "--out", tmp_path / "o")
    assert_one_line_error(result, "backbone.fc7")
    result = run("grow", digits_source, "--widen", "backbone.fc1:40", "--out", tmp_path / "o")
    assert_one_line_error(result, "'backbone.fc1:40' is not LAYER=WIDTH")
    result = run("grow", digits_source, "--widen", "backbone.fc1=8", "--out", tmp_path / "o")
    assert_one_line_error(result, "larger than 'backbone.fc1.0'")
    result = run("grow", digits_source, "--out", tmp_path / "o")
    assert_one_line_error(result, "nothing to do")
    assert not (tmp_path / "o").exists()
