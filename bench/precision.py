"""float32 vs bfloat16 mixed precision on the CPU, through ``Trainer.fit`` (``amp_dtype="bfloat16"``).

Each row trains one model for one epoch over the same examples twice per repetition, float32 and
bfloat16 interleaved (A B, B A, ...), ``--reps`` times, from the same seed and initial weights; the
table gives the median examples/s of each, their ratio, and the mean training loss of the epoch (the
two should agree to about bfloat16's precision: a sign that mixed precision trains the same), plus
inference (``predict_features``) examples/s. A fit is timed from the call to its return, so the
engine's per-fit checks count. Rows:

* ``small_cnn`` on Fashion-MNIST 28x28 (the demo's from-scratch model), batch 64;
* ``timm:resnet18`` (new weights) on the first ``--n-resnet`` of those images resized to 3x64x64, batch 64;
* ``text_transformer`` (2 layers, 256 wide) on 20 Newsgroups posts, first 128 tokens, batch 32;
* ``minilm`` (all-MiniLM-L6-v2, pretrained) on the same posts, batch 32, full fine-tune.

Whether bfloat16 pays depends on the CPU: with AVX512-BF16 or AMX it runs natively, without them
it is emulated and can be slower than float32. The flags this machine has are in the output.

``--channels-last``: the same with ``channels_last=True`` (the convolutional rows run in the channels-last
memory format; the text rows have no 4-D weights and are unchanged).

Run: ``python bench/precision.py --out bench/results/precision.md`` (alone on the machine), and
``python bench/precision.py --channels-last --out bench/results/precision_channels_last.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from transferkit.data import load_dataset
from transferkit.data.base import TensorDataset
from transferkit.engine import TrainConfig, Trainer, predict_features
from transferkit.models import create_model


def _cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    keep = [f for f in flags if "bf16" in f or f.startswith("amx") or f == "avx512f"]
    return ", ".join(keep) or "no AVX512 / BF16 / AMX flags"


def _rows(n_image: int, n_resnet: int, n_text: int) -> list[tuple[str, object, object, int]]:
    """(name, model, training data, batch size) of each row."""
    fashion = load_dataset("fashion-mnist").train
    images = TensorDataset(fashion.x[:n_image], fashion.y[:n_image], list(fashion.classes), "fashion")
    big = F.interpolate(images.x[:n_resnet], size=64, mode="bilinear", align_corners=False)
    big = big.expand(-1, 3, -1, -1)
    big = TensorDataset(big.contiguous(), images.y[:n_resnet], list(images.classes), "fashion-64")
    posts = load_dataset("20newsgroups", val_fraction=0.1, seed=0).train
    text = posts.subset(list(range(n_text)))
    torch.manual_seed(0)
    return [
        ("small_cnn", create_model("small_cnn", num_classes=10), images, 64),
        ("timm:resnet18", create_model("timm:resnet18", num_classes=10), big, 64),
        ("text_transformer", create_model("text_transformer", num_classes=20, max_length=128), text, 32),
        ("minilm", create_model("minilm", num_classes=20, pretrained=True, max_length=128), text, 32),
    ]


def _fit(model, data, batch: int, bf16: bool, channels_last: bool = False) -> tuple[float, float, float]:
    """(training examples/s, mean training loss, inference examples/s) of one fresh fit."""
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-4, strategy="full", backbone_lr_scale=1.0,
                      scheduler="none", weight_decay=0.0, device="cpu", amp=bf16, amp_dtype="bfloat16",
                      seed=0, progress=False, divergence_factor=None, channels_last=channels_last)
    model = copy.deepcopy(model)
    trainer = Trainer(model, cfg)
    start = time.perf_counter()
    hist = trainer.fit(data)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    predict_features(model, data, 64, "cpu", autocast=trainer._autocast)
    infer_s = time.perf_counter() - start
    return len(data) / train_s, hist.epochs[-1]["train_loss"], len(data) / infer_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-image", type=int, default=2048)
    ap.add_argument("--n-resnet", type=int, default=256)
    ap.add_argument("--n-text", type=int, default=256)
    ap.add_argument("--channels-last", action="store_true",
                    help="every arm with channels_last=True (convolutional models only; text rows unchanged)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cl = args.channels_last
    lines = ["| model | examples | float32 train ex/s | bfloat16 train ex/s | speed-up | loss float32 | "
             "loss bfloat16 | float32 infer ex/s | bfloat16 infer ex/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    start_all = time.perf_counter()
    for name, model, data, batch in _rows(args.n_image, args.n_resnet, args.n_text):
        _fit(model, data.subset(list(range(batch * 2))), batch, True, cl)  # warm-up (oneDNN kernels, caches)
        _fit(model, data.subset(list(range(batch * 2))), batch, False, cl)
        runs: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
        for rep in range(args.reps):
            for bf16 in ((False, True) if rep % 2 == 0 else (True, False)):
                runs[bf16].append(_fit(model, data, batch, bf16, cl))
        med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in runs.items()}
        lines.append(f"| {name} | {len(data):,} | {med[False][0]:.1f} | {med[True][0]:.1f} | "
                     f"{med[True][0] / med[False][0]:.2f}x | {med[False][1]:.4f} | {med[True][1]:.4f} | "
                     f"{med[False][2]:.1f} | {med[True][2]:.1f} |")
        print(lines[-1], flush=True)
    minutes = (time.perf_counter() - start_all) / 60
    title = ("channels-last memory format on the CPU (bench/precision.py --channels-last)" if cl
             else "float32 vs bfloat16 mixed precision on the CPU (bench/precision.py)")
    text = (f"# {title}\n\n"
            f"`python bench/precision.py --reps {args.reps} --n-image {args.n_image} "
            f"--n-resnet {args.n_resnet} "
            f"--n-text {args.n_text}{' --channels-last' if cl else ''}` "
            f"on {os.cpu_count()} cores ({_cpu_flags()}), torch {torch.__version__}, "
            f"{date.today().isoformat()}, "
            f"{minutes:.1f} min in all. Medians of {args.reps} one-epoch fits per arm, interleaved.\n\n"
            + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
