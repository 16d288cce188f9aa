"""The README's demo tables are what the recorded demo results say (bench/readme_tables.py writes them)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

from transferkit.demo import markdown_table

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_demo_tables_are_generated_from_the_recorded_results():
    module = runpy.run_path(str(ROOT / "bench" / "readme_tables.py"))
    readme = (ROOT / "README.md").read_text()
    assert module["render"](readme) == readme, "run: python bench/readme_tables.py"
    for path in module["TABLES"].values():  # and every table is really there
        assert markdown_table(json.loads(path.read_text())) in readme


def test_markdown_table_writes_the_flags_the_report_shows():
    row = {"name": "mnist-cnn/full", "method": "full fine-tune", "accuracy_mean": 0.63, "accuracy_std": 0.03,
           "macro_f1_mean": 0.623, "macro_f1_std": 0.042, "gain": -0.023, "negative_transfer": True,
           "significant": False, "is_baseline": False}
    base = {"name": "scratch", "method": "from scratch", "accuracy_mean": 0.652, "accuracy_std": 0.007,
            "macro_f1_mean": 0.637, "macro_f1_std": 0.006, "is_baseline": True}
    semi = {**base, "name": "scratch+pseudo_label", "is_baseline": False, "gain": -0.015,
            "reference": "no source: what the unlabelled images bring", "significant": False}
    lines = markdown_table({"summary": [base, row, semi]}).splitlines()
    assert lines[2] == "| from scratch | — | 65.2 ± 0.7 % | 63.7 ± 0.6 % | baseline |"
    assert lines[3] == ("| full fine-tune | MNIST CNN | 63.0 ± 3.0 % | 62.3 ± 4.2 % | −2.3 pp, negative "
                        "transfer (not significant) |")
    assert lines[4].endswith("| −1.5 pp (no source: what the unlabelled images bring) (not significant) |")
