"""Text transfer through the product's own workflow (``transferkit.finetune``): MiniLM (all-MiniLM-L6-v2)
as a linear probe, fully fine-tuned and with LoRA, against the from-scratch text transformer and TF-IDF +
logistic regression on the same examples (the rows every text report has), mean of 3 seeds.

Each setting is one ``finetune`` call per strategy; the scratch baseline and the TF-IDF row come with
it. The table is what ``finetune`` printed, with the setting above it.

Run (2 cores; the MiniLM test passes dominate):
    python bench/text.py --setting 20ng4 --strategies linear_probe,full,lora --out bench/results/text.md
    python bench/text.py --setting 20ng --strategies linear_probe --out bench/results/text.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date
from pathlib import Path

from transferkit import finetune

SETTINGS = {
    # four well-separated newsgroups (the text demo's target), first 64 tokens of each post
    "20ng4": {"dataset": "20newsgroups", "shots": 10, "max_length": 64,
              "classes": ["comp.graphics", "rec.sport.hockey", "sci.space", "talk.religion.misc"]},
    # all 20 newsgroups, 10 labels per class, first 128 tokens
    "20ng": {"dataset": "20newsgroups", "shots": 10, "max_length": 128, "classes": None},
    # all 20 newsgroups, every training post
    "20ng-full": {"dataset": "20newsgroups", "shots": None, "max_length": 128, "classes": None},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="20ng4")
    parser.add_argument("--strategies", default="linear_probe,full,lora")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--work", type=Path, default=Path("bench-out/text"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/text.md"))
    args = parser.parse_args()
    s = SETTINGS[args.setting]
    blocks = []
    for strategy in args.strategies.split(","):
        start = time.perf_counter()
        data = {"dataset": s["dataset"], "shots": s["shots"]}
        if s["classes"]:
            data["classes"] = s["classes"]
        train = {"strategy": strategy, **({"epochs": args.epochs} if args.epochs else {})}
        cfg = {
            "name": strategy,
            "data": data,
            "model": {"source": "minilm", "kwargs": {"max_length": s["max_length"]}},
            "train": train,
            "seeds": [int(x) for x in args.seeds.split(",")],
            "out": str(args.work / args.setting / strategy),
            "overwrite": True,
        }
        result = finetune(cfg)
        minutes = (time.perf_counter() - start) / 60
        blocks.append(f"### {args.setting}, strategy {strategy} ({minutes:.1f} min in all)\n\n```\n"
                      f"{result.table()}\n```\n")
        print(blocks[-1], flush=True)
    shots = f"{s['shots']} labels per class" if s["shots"] else "all training examples"
    classes = ", ".join(s["classes"]) if s["classes"] else "all 20"
    header = (
        f"## {args.setting}: {s['dataset']} ({classes}), {shots}, first {s['max_length']} tokens, "
        f"seeds {args.seeds}\n\n"
        f"`python bench/text.py --setting {args.setting} --strategies {args.strategies}"
        f"{f' --epochs {args.epochs}' if args.epochs else ''}` on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), {date.today().isoformat()}. Training settings: "
        "the recipe the workflow picks (few-shot / linear-probe / lora); baseline: text_transformer with "
        "MiniLM's tokenizer, new weights; TF-IDF + logistic regression on the same examples.\n\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(header + "\n".join(blocks) + "\n")


if __name__ == "__main__":
    main()
