"""The classical text baseline on the built-in text data: TF-IDF + logistic regression
(:func:`transferkit.data.text.tfidf_baseline`, C chosen on validation), the row every text report will
show. 20 Newsgroups at 10 labels per class (3 seeds) and in full; tweet sentiment in domain and across
domains (airline -> apple, source only: what domain adaptation has to beat).

Run: python bench/text_tfidf.py --out bench/results/text_tfidf.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from transferkit.data import DataSplits, few_shot, load_dataset
from transferkit.data.text import tfidf_baseline


def _pct(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f} %"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/text_tfidf.md"))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    rows: list[tuple[str, str, str, str]] = []

    def row(task: str, setting: str, accs: list[float], f1s: list[float], seconds: float) -> None:
        rows.append((task, setting, _pct(accs), f"{_pct(f1s)} | {seconds:.1f}"))
        print(rows[-1], flush=True)

    for name in ("20newsgroups", "tweets:airline", "tweets:apple"):
        accs, f1s, t0 = [], [], time.perf_counter()
        for seed in range(args.seeds):
            d = load_dataset(name, val_fraction=0.1, seed=seed)
            few = DataSplits(few_shot(d.train, 10, seed), few_shot(d.val, 10, seed), d.test)
            r = tfidf_baseline(few)
            accs.append(r["accuracy"])
            f1s.append(r["macro_f1"])
        setting = f"10 labels per class (+10 validation), {args.seeds} seeds, test {len(d.test):,}"
        row(name, setting, accs, f1s, (time.perf_counter() - t0) / args.seeds)
        t0 = time.perf_counter()
        r = tfidf_baseline(d)
        row(name, f"all {len(d.train):,} training examples (val {len(d.val):,}), test {len(d.test):,}",
            [r["accuracy"]], [r["macro_f1"]], time.perf_counter() - t0)

    airline = load_dataset("tweets:airline", val_fraction=0.1, seed=0)
    apple = load_dataset("tweets:apple", val_fraction=0.1, seed=0)
    t0 = time.perf_counter()
    r = tfidf_baseline(DataSplits(airline.train, airline.val, apple.test))
    setting = "source only: trained and C chosen on airline, tested on apple's test split"
    row("tweets airline -> apple", setting, [r["accuracy"]], [r["macro_f1"]], time.perf_counter() - t0)

    lines = [
        "# Text baseline: TF-IDF + logistic regression on the built-in text data",
        "",
        f"- command: `python bench/text_tfidf.py --out {args.out}`",
        f"- date: {time.strftime('%a %b %d %H:%M:%S %Z %Y')}; machine: {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, Python {platform.python_version()}",
        "- model: word 1-2-gram TF-IDF (sublinear tf, at most 50,000 features) + scikit-learn "
        "LogisticRegression, C from (0.1, 1, 10) chosen on the validation split; test splits fixed "
        "(20newsgroups: the package's bydate test files; tweets: a stratified 20 % split)",
        "",
        "| data | setting | test accuracy | macro-F1 | seconds |",
        "|---|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
