"""Train-time augmentation in few-shot fine-tuning: Fashion-MNIST, 10 labels per class.

Every arm trains on the same few-shot splits as ``finetune_recipes.py`` (10 labelled training and 10
validation images per class, drawn with the seed; the full 10,000-image test set), with the same
epochs, seeds, model initialisation and batch order; only ``TrainConfig.augment`` differs between the
policies of one starting point. The model of each run is its best-validation epoch (the engine's
default); the test set is only scored at the end.

Policies (``transferkit.data.augment`` names, applied batched on the training device):
    none    []
    light   hflip, crop:scale=0.6
    strong  hflip, crop:scale=0.6, trivialaugment
    mixup   hflip, crop:scale=0.6, mixup:alpha=0.2   (the light policy plus mixup)

Starting points: ``small_cnn`` from scratch, and ``small_cnn`` fully fine-tuned from the MNIST CNN
(4 source epochs, backbone lr x1: ``finetune_recipes.py``'s best 4-epoch fine-tune), all four
policies each, ``--epochs`` epochs; then EfficientNet-Lite0 (ImageNet) fully fine-tuned at 64 px with
BatchNorm statistics kept (the demo's recipe and ``--effnet-epochs``), with no and with the light
policy, only with ``--effnet`` (it adds about 4 minutes on 2 idle cores, 12 on busy ones).

Gains are paired by seed (same split, same initialisation): mean ± std of the per-seed difference in
points; "(n.s.)" when the mean is within two standard errors of zero.

Run by hand (not a test; about 4 minutes on 2 idle cores, 10 on busy ones, without ``--effnet``):
    .venv/bin/python bench/augment.py --out bench/results/augment.md
On cores shared with other jobs add ``--threads 1`` (torch's 2 threads ran 3.5x slower there).
A results file's text after the line ``<!-- hand-written below -->`` is kept when it is rewritten.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune_recipes import BASE, EFF, mnist_source  # noqa: E402  (the house few-shot recipes)

from transferkit.data import few_shot, load_dataset  # noqa: E402
from transferkit.engine import TrainConfig, Trainer  # noqa: E402
from transferkit.evaluation import evaluate  # noqa: E402
from transferkit.models import create_model, load_model  # noqa: E402
from transferkit.transfer import transfer_parameters  # noqa: E402

LIGHT = ["hflip", "crop:scale=0.6"]
POLICIES = {
    "none": [],
    "light": LIGHT,
    "strong": [*LIGHT, "trivialaugment"],
    "mixup": [*LIGHT, "mixup:alpha=0.2"],
}
MARK = "<!-- hand-written below -->"


def arms(epochs: int, effnet_epochs: int, effnet: bool) -> list[tuple[str, str, str | None, dict, dict]]:
    """(start, policy, source key, model kwargs, train config) for every arm, in run order."""
    small = dict(BASE, epochs=epochs, backbone_lr_scale=1.0)
    out = [(start, pol, src, {}, dict(small, augment=POLICIES[pol]))
           for start, src in (("scratch small_cnn", None), ("mnist-cnn (4 ep) full", "mnist4"))
           for pol in POLICIES]
    if effnet:
        eff = dict(EFF, epochs=effnet_epochs, freeze_bn=True)
        out += [("effnet 64px full, BN kept", pol, "effnet", {"image_size": 64},
                 dict(eff, augment=POLICIES[pol])) for pol in ("none", "light")]
    return out


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def gain(accs: list[float], base: list[float]) -> str:
    diffs = [(a - b) * 100 for a, b in zip(accs, base, strict=True)]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return f"{mean:+.1f}"
    sd = statistics.stdev(diffs)
    ns = " (n.s.)" if abs(mean) < 2 * sd / math.sqrt(len(diffs)) else ""
    return f"{mean:+.1f} ± {sd:.1f}{ns}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/augment.md")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=50, help="small-CNN epochs, every arm")
    parser.add_argument("--effnet-epochs", type=int, default=15, help="EfficientNet epochs, both arms")
    parser.add_argument("--effnet", action="store_true", help="add the EfficientNet rows (slow)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset of "
                        f"{', '.join(POLICIES)} (gains need 'none')")
    parser.add_argument("--starts", default="scratch,mnist,effnet",
                        help="comma-separated starting points to run (text in the start's name)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start, load_start = time.perf_counter(), load_note()
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")

    fm = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    sources, notes = {}, []
    sources["mnist4"], acc = mnist_source(4)
    notes.append(f"MNIST source: small CNN trained 4 epochs on 3,600 images, test accuracy {acc:.3f}")
    if args.effnet and "effnet" in args.starts:
        sources["effnet"] = load_model("efficientnet_lite0", pretrained=True)

    rows = []  # (start, policy, augment, accs, best epochs, seconds)
    policies, starts = args.policies.split(","), args.starts.split(",")
    for start, policy, src, kwargs, train in arms(args.epochs, args.effnet_epochs, args.effnet):
        if policy not in policies or not any(s and s in start for s in starts):
            continue
        arch = "efficientnet_lite0" if src == "effnet" else "small_cnn"
        accs, best, secs = [], [], []
        for seed in range(args.seeds):
            train_set, val_set = few_shot(fm.train, 10, seed), few_shot(fm.val, 10, seed)
            torch.manual_seed(seed)
            model = create_model(arch, num_classes=10, **kwargs)
            if src is not None:
                transfer_parameters(sources[src], model, exclude=["head.*"])
            t0 = time.perf_counter()
            history = Trainer(model, TrainConfig(**train, seed=seed)).fit(train_set, val_set)
            accs.append(evaluate(model, fm.test, batch_size=64).accuracy)
            secs.append(time.perf_counter() - t0)
            best.append(history.best_epoch)
        rows.append((start, policy, ", ".join(train["augment"]) or "-", accs, best, statistics.mean(secs)))
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{start:28s} {policy:7s} {statistics.mean(accs):.3f} ± {sd:.3f}  {accs}  "
              f"best epochs {best}  {rows[-1][5]:.1f} s/run", flush=True)

    base = {r[0]: r[3] for r in rows if r[1] == "none"}
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    total = time.perf_counter() - t_start
    table = []
    for start, policy, aug, accs, best, sec in rows:
        mean, sd = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        g = "(baseline)" if policy == "none" else gain(accs, base[start]) if start in base else "-"
        epochs = args.effnet_epochs if start.startswith("effnet") else args.epochs
        table.append(f"| {start} | {policy} | {aug} | {mean * 100:.1f} ± {sd * 100:.1f} % "
                     f"| {', '.join(f'{a * 100:.1f}' for a in accs)} | {g} "
                     f"| {', '.join(map(str, best))} / {epochs} | {sec:.1f} |")
    lines = [
        "# Train-time augmentation: few-shot Fashion-MNIST, 10 labels per class",
        "",
        f"- command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`",
        f"- date: {started}; machine: `nproc` {nproc}, {platform.machine()}, torch {torch.__version__}, "
        f"torch threads: {torch.get_num_threads()}; load average (1/5/15 min) {load_start} at the start, "
        f"{load_note()} at the end",
        f"- whole bench: {total / 60:.1f} min",
        f"- target: Fashion-MNIST, 10 labelled training + 10 validation images per class per seed "
        f"(`few_shot(..., 10, seed)`), seeds {', '.join(map(str, range(args.seeds)))}; "
        f"test on all {len(fm.test)} test images",
        *([f"- small CNN arms: {args.epochs} epochs, batch 32, AdamW lr 3e-3, backbone lr x1, cosine; "
           "the fine-tune starts from the MNIST CNN's backbone (head re-initialised)"]
          if any(not r[0].startswith("effnet") for r in rows) else []),
        *([f"- EfficientNet-Lite0 arms: ImageNet weights, 64 px, {args.effnet_epochs} epochs, lr 1e-3, "
           "backbone lr x0.1, BatchNorm statistics kept (freeze_bn), channels-last"]
          if any(r[0].startswith("effnet") for r in rows) else []),
        f"- {notes[0]}",
        "- model choice: each run keeps its best-validation epoch (100 validation images); "
        "the test set is scored once at the end",
        "- gain: paired per seed vs `none` of the same starting point, mean ± std in points; "
        "(n.s.) = within two standard errors of zero",
        "",
        "| start | policy | augment | test accuracy (mean ± std) | per seed | gain vs none (pp) "
        "| best epoch per seed | train+eval s / run |",
        "|---|---|---|---|---|---|---|---|",
        *table,
        "",
    ]
    kept = ""
    if os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as fh:
            old = fh.read()
        if MARK in old:
            kept = old[old.index(MARK):]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + ("\n" + kept if kept else ""))
    print(f"wrote {args.out} ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
