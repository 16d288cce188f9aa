"""Why distillation on the labelled set alone gains little, and what a larger transfer set does.

Student: MLP 784-64-64-10; teacher: the CNN from ``bench/distill.py`` (run that first, it caches the
teacher). Three arms, one seed: cross-entropy on 1,000 labelled images; logit KD alone (no labels) on
the same 1,000 images; logit KD alone on 10,000 training images the student never sees labels for.

Run by hand (not a test):
    .venv/bin/python bench/distill_transfer_set.py --out bench/results/distill_transfer_set.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

from transferkit.data import few_shot, load_dataset
from transferkit.engine import CrossEntropy, TrainConfig, Trainer
from transferkit.evaluation import evaluate
from transferkit.models import create_model, load_model
from transferkit.transfer.distill import LogitKD, Teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/distill_transfer_set.md")
    parser.add_argument("--teacher", default="bench/.cache/teacher-fmnist-cnn-3ep")
    args = parser.parse_args()
    data = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    teacher_net = load_model(args.teacher)
    labelled, val = few_shot(data.train, 100, 0), few_shot(data.val, 100, 0)
    transfer_set = few_shot(data.train, 1000, 1)
    cfg = TrainConfig(epochs=20, batch_size=64, lr=3e-3, backbone_lr_scale=1.0, seed=0)
    arms = [
        ("cross-entropy, 1,000 labelled images", labelled, cfg, lambda t: [CrossEntropy()]),
        ("KD only (no labels), the same 1,000 images", labelled, cfg,
         lambda t: [LogitKD(t, temperature=4.0)]),
        ("KD only (no labels), 10,000 teacher-labelled images", transfer_set,
         cfg.model_copy(update={"epochs": 10}), lambda t: [LogitKD(t, temperature=4.0)]),
    ]
    rows = []
    for name, train, c, objectives in arms:
        torch.manual_seed(0)
        student = create_model("mlp", num_classes=10)
        Trainer(student, c, objectives(Teacher(teacher_net, precompute=True))).fit(train, val)
        rows.append((name, evaluate(student, data.test).accuracy, c.epochs))
        print(rows[-1], flush=True)
    lines = [
        "# Distillation: labelled set vs a larger transfer set",
        "",
        f"- command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, torch {torch.__version__}",
        f"- teacher: {args.teacher} (test accuracy {evaluate(teacher_net, data.test).accuracy:.4f}); "
        "student MLP 784-64-64-10; seed 0; validation: 1,000 labelled images; test: all 10,000",
        "",
        "| arm | epochs | test accuracy |",
        "|---|---|---|",
        *[f"| {n} | {e} | {100 * a:.1f} % |" for n, a, e in rows],
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
