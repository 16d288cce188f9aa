"""Fine-tuning recipes on Fashion-MNIST with 10 labels per class, against training from scratch.

Measures what the demo's choices rest on: BatchNorm statistics kept from the source (``freeze_bn``)
vs re-estimated, input resolution for the ImageNet EfficientNet-Lite0, and how much the MNIST source's
own quality matters. Every run: few-shot train/val subsets drawn with the seed, the full 10,000-image
test set, same epochs for every recipe unless the recipe says otherwise.

Run by hand (not a test):
    .venv/bin/python bench/finetune_recipes.py --out bench/results/finetune_recipes.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

from transferkit.data import few_shot, load_dataset
from transferkit.engine import TrainConfig, Trainer
from transferkit.evaluation import evaluate
from transferkit.models import create_model, load_model
from transferkit.transfer import transfer_parameters

BASE = dict(epochs=30, batch_size=32, lr=3e-3)
EFF = dict(BASE, eval_batch_size=64, channels_last=True, epochs=15, lr=1e-3, backbone_lr_scale=0.1)

# (name, source, target kwargs, train config)
RECIPES = [
    ("scratch small_cnn", None, {}, dict(BASE, backbone_lr_scale=1.0)),
    ("mnist-cnn (4 ep) full, backbone lr x0.3", "mnist4", {}, dict(BASE, backbone_lr_scale=0.3)),
    ("mnist-cnn (4 ep) full, backbone lr x1", "mnist4", {}, dict(BASE, backbone_lr_scale=1.0)),
    ("mnist-cnn (12 ep) full, backbone lr x1", "mnist12", {}, dict(BASE, backbone_lr_scale=1.0)),
    ("mnist-cnn (4 ep) linear probe", "mnist4", {}, dict(BASE, strategy="linear_probe", lr=1e-2)),
    ("effnet 64px full, BN re-estimated", "effnet", {"image_size": 64}, dict(EFF)),
    ("effnet 64px full, BN kept (freeze_bn)", "effnet", {"image_size": 64}, dict(EFF, freeze_bn=True)),
    ("effnet 64px gradual, BN kept", "effnet", {"image_size": 64},
     dict(EFF, strategy="gradual", unfreeze_every=2, lr=3e-3, freeze_bn=True)),
    ("effnet 64px linear probe", "effnet", {"image_size": 64},
     dict(EFF, strategy="linear_probe", lr=1e-2, epochs=30)),
    ("effnet 96px linear probe", "effnet", {"image_size": 96},
     dict(EFF, strategy="linear_probe", lr=1e-2, epochs=30)),
]


def mnist_source(epochs: int):
    mn = load_dataset("mnist5k", val_fraction=0.1, seed=0)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, backbone_lr_scale=1.0, seed=0)
    Trainer(model, cfg).fit(mn.train, mn.val)
    return model, evaluate(model, mn.test).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/finetune_recipes.md")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default="", help="run recipes whose name contains this text")
    args = parser.parse_args()

    fm = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    sources, notes = {}, []
    for key, ep in (("mnist4", 4), ("mnist12", 12)):
        sources[key], acc = mnist_source(ep)
        notes.append(f"MNIST source trained {ep} epochs on 3,600 images: test accuracy {acc:.3f}")
    sources["effnet"] = load_model("efficientnet_lite0", pretrained=True)

    rows = []
    for name, src, kwargs, train in RECIPES:
        if args.only and args.only not in name:
            continue
        arch = "efficientnet_lite0" if src == "effnet" else "small_cnn"
        accs, secs = [], []
        for seed in range(args.seeds):
            train_set, val_set = few_shot(fm.train, 10, seed), few_shot(fm.val, 10, seed)
            torch.manual_seed(seed)
            model = create_model(arch, num_classes=10, **kwargs)
            if src is not None:
                transfer_parameters(sources[src], model, exclude=["head.*"])
            t0 = time.perf_counter()
            Trainer(model, TrainConfig(**train, seed=seed)).fit(train_set, val_set)
            accs.append(evaluate(model, fm.test, batch_size=64).accuracy)
            secs.append(time.perf_counter() - t0)
        rows.append((name, statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     accs, statistics.mean(secs)))
        print(f"{name:45s} {rows[-1][1]:.3f} ± {rows[-1][2]:.3f}  {accs}", flush=True)

    lines = [
        "# Fine-tuning recipes: Fashion-MNIST, 10 labels per class",
        "",
        f"- command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, torch {torch.__version__}",
        f"- seeds: {args.seeds}; test: all {len(fm.test)} Fashion-MNIST test images",
        *[f"- {n}" for n in notes],
        "",
        "| recipe | test accuracy (mean ± std) | per seed | train+eval seconds / seed |",
        "|---|---|---|---|",
        *[f"| {n} | {m * 100:.1f} ± {s * 100:.1f} % | {', '.join(f'{a * 100:.1f}' for a in accs)} "
          f"| {t:.1f} |" for n, m, s, accs, t in rows],
        "",
    ]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
