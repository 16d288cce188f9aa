"""Distillation on Fashion-MNIST: a CNN teacher trained on the full training set, small students
trained on a limited budget, every method against the same student from scratch.

Students: the teacher's architecture 4x narrower (same family) and the MLP 784-64-64-10
(cross-architecture). Budget: ``--shots`` labelled images per class, ``--epochs`` epochs, same for
every arm. Test: all 10,000 test images. Results: a markdown table (``--out``) and, per student, the
usual run folder (metrics.json, report.html) under ``bench/.cache/``.

Run by hand (not a test):
    .venv/bin/python bench/distill.py --out bench/results/distill.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

from transferkit.data import load_dataset
from transferkit.engine import TrainConfig, Trainer, build_objectives
from transferkit.evaluation import evaluate
from transferkit.models import create_model, load_model, narrow_model, save_model
from transferkit.transfer.distill import Teacher
from transferkit.workflows import Arm, run_arms

CACHE = Path("bench/.cache")
CE = {"name": "cross_entropy", "weight": 1.0}

# name -> objectives besides cross-entropy; None marks the baseline
METHODS: dict[str, list[dict] | None] = {
    "scratch": None,
    "kd": [{"name": "kd", "weight": 1.0, "temperature": 4.0}],
    "hint": [{"name": "hint", "weight": 1.0}],
    "attention": [{"name": "attention", "weight": 100.0}],
    "rkd": [{"name": "rkd", "weight": 1.0}],
    "fsp": [{"name": "fsp", "weight": 1.0}],
    "fsp w=0.01": [{"name": "fsp", "weight": 0.01}],
    "kd+hint": [{"name": "kd", "weight": 1.0, "temperature": 4.0}, {"name": "hint", "weight": 1.0}],
    "kd+attention": [{"name": "kd", "weight": 1.0, "temperature": 4.0},
                     {"name": "attention", "weight": 100.0}],
    "kd+rkd": [{"name": "kd", "weight": 1.0, "temperature": 4.0}, {"name": "rkd", "weight": 1.0}],
}
SPATIAL_ONLY = {"attention", "fsp", "fsp w=0.01", "kd+attention"}


def teacher_model(epochs: int):
    folder = CACHE / f"teacher-fmnist-cnn-{epochs}ep"
    data = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    if (folder / "model.safetensors").is_file():
        model = load_model(folder)
    else:
        torch.manual_seed(0)
        model = create_model("small_cnn", num_classes=10, widths=(64, 128), feature_dim=512)
        cfg = TrainConfig(epochs=epochs, batch_size=128, lr=2e-3, backbone_lr_scale=1.0, seed=0,
                          channels_last=True, progress=False)
        Trainer(model, cfg).fit(data.train, data.val)
        save_model(model, folder)
    return model, data


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/distill.md")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated method names to run")
    args = parser.parse_args()

    cached = (CACHE / f"teacher-fmnist-cnn-{args.teacher_epochs}ep" / "model.safetensors").is_file()
    t0 = time.perf_counter()
    teacher_net, data = teacher_model(args.teacher_epochs)
    t_teacher = "loaded from bench/.cache" if cached else f"{time.perf_counter() - t0:.0f} s"
    t_acc = evaluate(teacher_net, data.test).accuracy
    teacher = Teacher(teacher_net, precompute=True)
    students = {
        "cnn-narrow4": narrow_model(teacher_net, 4),
        "mlp-784-64-64": create_model("mlp", num_classes=10),
    }
    wanted = set(filter(None, args.only.split(","))) or set(METHODS)
    train = TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-3, backbone_lr_scale=1.0)
    sections = []
    for sname, proto in students.items():
        arms = []
        for mname, extra in METHODS.items():
            if mname not in wanted and mname != "scratch":
                continue
            if sname.startswith("mlp") and mname in SPATIAL_ONLY:
                continue  # attention maps and FSP need (N, C, H, W) student features
            specs = None if extra is None else [CE, *extra]
            arms.append(Arm(
                name=mname, method=mname, arch=proto.info.arch, train=train,
                kwargs=dict(proto.info.kwargs),
                objectives=None if specs is None else (lambda s=specs: build_objectives(s, teacher=teacher)),
            ))
        result = run_arms(arms, data, seeds=range(args.seeds), shots=args.shots, val_shots=args.shots,
                          out_dir=CACHE / f"distill-{sname}", baseline="scratch",
                          title=f"distillation into {sname}",
                          on_run=lambda r, s=sname: print(f"{s:14s} {r.name:14s} seed {r.seed}: "
                                                 f"{r.metrics.accuracy:.4f} ({r.seconds:.1f} s)", flush=True))
        sections.append((sname, params(proto), result))

    lines = [
        "# Distillation: Fashion-MNIST teacher -> small students",
        "",
        f"- command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, torch {torch.__version__}",
        f"- teacher: small_cnn widths (64, 128), feature_dim 512, {params(teacher_net):,} parameters, "
        f"trained {args.teacher_epochs} epochs on {len(data.train):,} images ({t_teacher}): "
        f"test accuracy {t_acc:.4f}",
        f"- students' budget: {args.shots} labelled images per class ({10 * args.shots} in all) + as many "
        f"for validation, {args.epochs} epochs, Adam-W lr 3e-3, batch 64; seeds 0..{args.seeds - 1}; "
        f"test: all {len(data.test):,} test images",
        "- every arm = cross-entropy + the named objective(s) (weights: kd 1.0 at T=4, hint 1.0, "
        "attention 100 (sum of squared map differences is tiny), rkd 1.0 (distance 1, angle 2), fsp 1.0); "
        "layers paired by default (last blocks; spatial blocks from the top)",
        "",
    ]
    for sname, n, result in sections:
        lines += [f"## student {sname} ({n:,} parameters, {params(teacher_net) / n:.1f}x smaller)", "",
                  "| method | accuracy (mean ± std) | macro-F1 | gain vs scratch | seconds / run |",
                  "|---|---|---|---|---|"]
        for row in result.summary:
            gain = "baseline" if row["gain"] is None else f"{row['gain'] * 100:+.1f} pp" + (
                "" if row["significant"] else " (n.s.)")
            lines.append(f"| {row['name']} | {row['accuracy_mean'] * 100:.1f} ± "
                         f"{row['accuracy_std'] * 100:.1f} % | {row['macro_f1_mean'] * 100:.1f} % | {gain} "
                         f"| {row['seconds_mean']:.1f} |")
        lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
