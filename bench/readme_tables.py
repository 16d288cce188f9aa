"""Write the README's demo tables from the recorded demo results (never by hand).

Each recorded ``metrics.json`` of a demo (``bench/results/<name>_metrics.json``, copied from the demo's
output folder by whoever records a run, with the command, machine and date in ``<name>.md``) is turned
into a markdown table by :func:`transferkit.demo.markdown_table` and put between the README's markers
``<!-- table:<name> -->`` and ``<!-- /table:<name> -->``. ``tests/test_readme.py`` fails when the README
and the recorded results drift apart.

Run: ``python bench/readme_tables.py`` (``--check`` only reports a difference).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from transferkit.demo import markdown_table

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"demo": ROOT / "bench/results/demo_metrics.json"}


def render(readme: str) -> str:
    """``readme`` with every marked table rewritten from its recorded results."""
    for name, path in TABLES.items():
        table = markdown_table(json.loads(path.read_text()))
        block = re.compile(rf"(<!-- table:{name} -->\n)(?:.*?\n)?(<!-- /table:{name} -->)", re.S)
        if not block.search(readme):
            raise SystemExit(f"README.md has no <!-- table:{name} --> ... <!-- /table:{name} --> block")
        readme = block.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), readme)
    return readme


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report whether the README is current")
    args = ap.parse_args()
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if args.check:
        sys.exit(0 if new == old else "README.md's demo tables differ from bench/results: run "
                                      "python bench/readme_tables.py")
    path.write_text(new)
    print("README.md tables written" if new != old else "README.md tables already current")


if __name__ == "__main__":
    main()
