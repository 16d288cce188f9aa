"""Source selection: do transferability scores rank candidates the way fine-tuning does?

Six real candidates — the ImageNet EfficientNet-Lite0, CNNs trained on MNIST-5k, on Fashion-MNIST
and on scikit-learn digits, a Fashion-MNIST CNN after a single epoch (partially trained), and a
randomly initialised CNN — and two few-label targets (Fashion-MNIST and digits, 10 labelled images
per class). Each candidate is scored on the target's labelled images in closed form, then fine-tuned
with the same budget; each score's Kendall tau (and weighted tau) with the fine-tuned accuracies is
reported, with the time of scoring against the time of fine-tuning.

Run by hand (not a test):
    .venv/bin/python bench/rank.py --out bench/results/rank.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from scipy.stats import kendalltau, weightedtau

from transferkit.data import few_shot, load_dataset
from transferkit.engine import TrainConfig, Trainer
from transferkit.evaluation import evaluate
from transferkit.models import create_model, load_model, save_model
from transferkit.selection import rank
from transferkit.transfer import transfer_parameters

CACHE = Path("bench/.cache/rank")
SCORES = ("logme", "leep", "nce", "h_score", "gbc", "knn")


def trained_cnn(name: str, dataset: str, epochs: int, **kwargs):
    folder = CACHE / name
    if (folder / "model.safetensors").is_file():
        return load_model(folder)
    data = load_dataset(dataset, val_fraction=0.1, seed=0)
    train = data.train if len(data.train) <= 10000 else few_shot(data.train, 1000, 0)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=data.num_classes, **kwargs)
    if epochs:
        cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, backbone_lr_scale=1.0, seed=0)
        Trainer(model, cfg).fit(train, data.val)
    save_model(model, folder)
    return model


def candidates():
    return {
        "effnet-lite0 (ImageNet)": load_model("efficientnet_lite0", pretrained=True, image_size=64),
        "cnn mnist5k": trained_cnn("cnn-mnist5k", "mnist5k", 4),
        "cnn fashion-mnist": trained_cnn("cnn-fmnist", "fashion-mnist", 4),
        "cnn digits": trained_cnn("cnn-digits", "digits", 10),
        "cnn fashion-mnist, 1 epoch": trained_cnn("cnn-fmnist-1ep", "fashion-mnist", 1),
        "cnn random init": trained_cnn("cnn-random", "fashion-mnist", 0),
    }


def finetune(source, target, seed: int) -> tuple[float, float]:
    train, val = few_shot(target.train, 10, seed), few_shot(target.val, 10, seed)
    torch.manual_seed(seed)
    kwargs = dict(source.info.kwargs)
    model = create_model(source.info.arch, num_classes=target.num_classes, **kwargs)
    transfer_parameters(source, model, exclude=["head.*"])
    effnet = source.info.arch == "efficientnet_lite0"
    cfg = TrainConfig(epochs=15, batch_size=32, lr=1e-3 if effnet else 3e-3,
                      backbone_lr_scale=0.1 if effnet else 0.3, freeze_bn=effnet,
                      channels_last=effnet, eval_batch_size=64, seed=seed)
    t0 = time.perf_counter()
    Trainer(model, cfg).fit(train, val)
    seconds = time.perf_counter() - t0
    return evaluate(model, target.test, batch_size=64).accuracy, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/rank.md")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    pool = candidates()
    targets = {"fashion-mnist": load_dataset("fashion-mnist", val_fraction=0.1, seed=0),
               "digits": load_dataset("digits", val_fraction=0.2, seed=0)}
    lines = [
        "# Source selection: transferability scores vs fine-tuning",
        "",
        f"- command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, torch {torch.__version__}",
        "- scores on each target's 100 labelled training images (10 per class, seed 0); fine-tuning: "
        f"the same images + 10/class validation, 15 epochs, full fine-tune, {args.seeds} seeds, "
        "accuracy on the target's full test set",
        "",
    ]
    for tname, target in targets.items():
        labelled = few_shot(target.train, 10, 0)
        t0 = time.perf_counter()
        result = rank(pool, labelled, scores=SCORES)
        score_seconds = time.perf_counter() - t0
        acc, ft_seconds = {}, 0.0
        for cname, model in pool.items():
            runs = [finetune(model, target, s) for s in range(args.seeds)]
            acc[cname] = statistics.mean(a for a, _ in runs)
            ft_seconds += sum(t for _, t in runs)
            print(f"{tname:14s} {cname:28s} fine-tuned {acc[cname]:.4f}", flush=True)
        rows = {r["name"]: r for r in result.rows}
        names = list(pool)
        lines += [f"## target: {tname} (10 labels per class)", "",
                  "| candidate | fine-tuned acc | " + " | ".join(SCORES) + " |",
                  "|---|---|" + "---|" * len(SCORES)]
        for n in sorted(names, key=lambda n: -acc[n]):
            lines.append(f"| {n} | {100 * acc[n]:.1f} % | "
                         + " | ".join(f"{rows[n][s]:.4g}" for s in SCORES) + " |")
        lines += ["", "| score | Kendall tau | weighted tau |", "|---|---|---|"]
        truth = [acc[n] for n in names]
        for s in SCORES:
            pred = [rows[n][s] for n in names]
            lines.append(f"| {s} | {kendalltau(pred, truth).statistic:+.2f} | "
                         f"{weightedtau(pred, truth).statistic:+.2f} |")
        lines += ["", f"Time: scoring all {len(names)} candidates (features + every score) "
                  f"{score_seconds:.1f} s; fine-tuning them ({args.seeds} seeds each) {ft_seconds:.0f} s.",
                  ""]
        print("\n".join(lines[-12:]), flush=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
