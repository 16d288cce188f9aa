"""Learning from unlabelled target images: the demo's settings chosen on validation data.

``--part choose``: the settings of the demo's EfficientNet arms (where to cut the backbone, the linear
probe's L2 strength, the pseudo-labels' confidence threshold) chosen on Fashion-MNIST *training-split*
images only: per seed, 10 labelled images per class and 1,000 other training images whose labels
score the choice (validation); the official test images are never read. Features of the frozen
EfficientNet-Lite0 (96 px, pooled after stage 5, stage 6 and the head convolution) are computed once;
each setting trains a linear probe through the engine (``Trainer.fit`` on the cached features, 200
full-batch AdamW epochs, the last kept), with ``PseudoLabel`` on 5,000 unlabelled training images for
the threshold sweep.

Run (2 cores):
    python bench/semi.py --part choose --out bench/results/semi.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from torch import nn

from transferkit.data import TensorDataset, load_dataset
from transferkit.engine import CrossEntropy, TrainConfig, Trainer
from transferkit.evaluation import evaluate
from transferkit.models import create_model, wrap_model
from transferkit.transfer.semi import PseudoLabel

CUTS = ("stage5", "stage6", "head")


def features(x: torch.Tensor, size: int = 96, batch: int = 128) -> dict[str, torch.Tensor]:
    """Pooled EfficientNet-Lite0 features of ``x`` after each cut, one pass."""
    model = create_model("efficientnet_lite0", num_classes=10, pretrained=True, image_size=size).eval()
    out: dict[str, list[torch.Tensor]] = {c: [] for c in CUTS}
    with torch.no_grad():
        for i in range(0, len(x), batch):
            h = model.input_adapter(x[i : i + batch])
            for name, block in model.backbone.named_children():
                h = block(h)
                key = "head" if name == "head_conv" else name
                if key in out:
                    out[key].append(h.mean((2, 3)))
    return {k: torch.cat(v) for k, v in out.items()}


def probe(train: TensorDataset, wd: float, seed: int, pool: TensorDataset | None = None,
          tau: float = 0.7) -> nn.Module:
    """A linear probe on features through the engine: 200 full-batch epochs, the last kept."""
    torch.manual_seed(seed)
    dim = train.x.shape[1]
    model = wrap_model(nn.Sequential(nn.Identity(), nn.Linear(dim, 10)), head="1", input_size=(dim,))
    cfg = TrainConfig(epochs=200, batch_size=len(train), lr=1e-2, weight_decay=wd, seed=seed,
                      unlabeled_ratio=10)
    objectives = [CrossEntropy(), PseudoLabel(tau=tau)] if pool is not None else None
    Trainer(model, cfg, objectives).fit(train, None, target=pool)
    return model


def _split(y: torch.Tensor, seed: int, shots: int = 10, val: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labelled = torch.cat([torch.where(y == c)[0][torch.randperm(int((y == c).sum()), generator=g)[:shots]]
                          for c in range(10)])
    rest = torch.tensor(sorted(set(range(len(y))) - set(labelled.tolist())))
    return labelled, rest[torch.randperm(len(rest), generator=g)[:val]]


def _pct(v: list[float]) -> str:
    return f"{100 * statistics.fmean(v):.1f} ± {100 * statistics.stdev(v):.1f}"


def choose(seeds: list[int], n: int) -> str:
    data = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(data.train), generator=g)[:n]
    x, y = data.train.x[pick], data.train.y[pick]
    t0 = time.perf_counter()
    feats = features(x)
    seconds = time.perf_counter() - t0
    lines = [f"Features of {n:,} Fashion-MNIST training images (96 px) in {seconds:.0f} s. Scores: "
             "accuracy on 1,000 held-out *training* images per seed (labelled 10 per class from the rest); "
             f"mean ± std over seeds {seeds}. No test image is read.", ""]
    lines += ["| cut | weight decay | validation accuracy |", "|---|---|---|"]
    best: tuple[float, str, float] | None = None
    for cut in CUTS:
        for wd in (1e-4, 1.0, 10.0, 30.0):
            accs = []
            for seed in seeds:
                lab, val = _split(y, seed)
                model = probe(TensorDataset(feats[cut][lab], y[lab]), wd, seed)
                accs.append(evaluate(model, TensorDataset(feats[cut][val], y[val])).accuracy)
            lines.append(f"| {cut} | {wd:g} | {_pct(accs)} % |")
            if best is None or statistics.fmean(accs) > best[0]:
                best = (statistics.fmean(accs), cut, wd)
            print(lines[-1], flush=True)
    assert best is not None
    _, cut, wd = best
    lines += ["", f"Best on validation: cut {cut}, weight decay {wd:g}. Pseudo-labels on that probe "
              f"(the other {n - 10 * 10 - 1000:,}+ training images of the sample, labels unread):", "",
              "| confidence threshold | validation accuracy |", "|---|---|"]
    for tau in (None, 0.5, 0.7, 0.9, 0.95):
        accs = []
        for seed in seeds:
            lab, val = _split(y, seed)
            keep = torch.ones(len(y), dtype=torch.bool)
            keep[val] = False  # the validation images are not in the unlabelled pool
            pool = TensorDataset(feats[cut][keep], torch.zeros(int(keep.sum()), dtype=torch.long))
            model = probe(TensorDataset(feats[cut][lab], y[lab]), wd, seed, pool if tau else None, tau or 0.0)
            accs.append(evaluate(model, TensorDataset(feats[cut][val], y[val])).accuracy)
        lines.append(f"| {'none (probe alone)' if tau is None else tau} | {_pct(accs)} % |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("choose",), default="choose")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=6000, help="training images sampled (choose)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/semi.md"))
    args = ap.parse_args()
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    body = choose(seeds, args.n)
    head = (f"## {args.part}: the demo's EfficientNet settings, chosen on validation\n\n"
            f"`python bench/semi.py --part {args.part} --seeds {args.seeds} --n {args.n}` on "
            f"{os.cpu_count()} cores, {date.today().isoformat()}, "
            f"{(time.perf_counter() - start) / 60:.1f} min in all.\n\n")
    print(head + body)
    with args.out.open("a") as fh:
        fh.write(head + body + "\n")


if __name__ == "__main__":
    main()
