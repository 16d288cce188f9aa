"""The text demo (``transferkit demo --task text``) on a small text file."""

from __future__ import annotations

import json

from cli_helpers import assert_one_line_error, run
from test_text_models import _sentiment, write_csv
from transferkit.demo import TextDemoSettings, run_text_demo


def test_text_demo_compares_minilm_with_scratch_and_tfidf(tmp_path):
    path = tmp_path / "reviews.csv"
    data = _sentiment(160, 7, "reviews")
    write_csv(path, data.texts, [data.classes[int(y)] for y in data.y])
    lines: list[str] = []
    result = run_text_demo(tmp_path / "out", TextDemoSettings(seeds=(0,), shots=4, epochs=2, data=str(path),
                                                                     classes=None),
                           echo=lines.append)
    rows = {r["name"]: r for r in result.summary}
    assert set(rows) == {"scratch", "minilm/linear-probe", "minilm/full", "tfidf+lr"}
    assert rows["scratch"]["is_baseline"] and rows["tfidf+lr"]["reference"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["about"]["kind"] == "demo"
    assert "transferkit text demo: MiniLM" in (tmp_path / "out" / "report.html").read_text()
    assert [s["spec"] for s in metrics["about"]["sources"]] == ["minilm"]
    assert {r["arch"] for r in metrics["runs"] if r["name"] == "scratch"} == {"text_transformer"}
    assert any("4 labelled texts per class" in line for line in lines)
    assert (tmp_path / "out" / "report.html").is_file()


def test_demo_task_must_be_image_or_text(tmp_path):
    result = run("demo", "--task", "audio", "--out", tmp_path / "o")
    assert_one_line_error(result, "--task must be image or text")
