"""Grow a trained small CNN (Net2Net widen + deepen) and keep training, against two baselines.

Issue 6's evidence on Fashion-MNIST. Per seed: a small CNN (widths (16, 32), feature_dim 64) is
trained for ``--small-epochs`` epochs on a fixed 10,000-image training subset, then

* (a) ``grown``: every conv block and the feature layer widened 2x (:func:`widen`) and one identity
  conv block inserted after the last conv block (:func:`deepen`), trained ``--epochs`` more epochs;
* (b) ``scratch large``: the grown architecture with re-initialised weights (deep copy, then
  ``reset_parameters`` on every module that has it), trained ``small + epochs`` epochs;
* (c) ``small, continued``: the small model trained ``--epochs`` more epochs.

Test accuracy is measured after every epoch on the full 10,000-image test set as a learning curve
only: no epoch or model is chosen with it (fixed epochs, no validation-based selection, the model
after the last epoch is the result).

Run by hand (not a test):
    OMP_NUM_THREADS=1 .venv/bin/python bench/grow.py --out bench/results/grow.md
"""

from __future__ import annotations

import argparse
import copy
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
from transferkit.models import create_model
from transferkit.transfer.structure import deepen, widen

TRAIN = dict(batch_size=64, lr=3e-3, backbone_lr_scale=1.0, eval_batch_size=1000)


class CurveTrainer(Trainer):
    """Trainer that also records test accuracy after every epoch (a learning curve, no selection)."""

    def __init__(self, model, config, test) -> None:
        super().__init__(model, config)
        self.test = test

    def _run_epoch(self, epoch, train, val, train_feats, val_feats, history, best_state, progress):
        out = super()._run_epoch(epoch, train, val, train_feats, val_feats, history, best_state,
                                 progress)
        history.epochs[-1]["test_accuracy"] = evaluate(self.model, self.test, batch_size=1000).accuracy
        return out


def train(model, epochs: int, data, test, seed: int) -> tuple[list[float], list[float]]:
    """Train ``epochs`` epochs (no val set: last epoch kept); per-epoch test acc and train seconds."""
    hist = CurveTrainer(model, TrainConfig(**TRAIN, epochs=epochs, seed=seed), test).fit(data)
    return [e["test_accuracy"] for e in hist.epochs], [e["seconds"] for e in hist.epochs]


def grow(model, probe: torch.Tensor, noise: float = 0.0):
    """Widen conv1, conv2 and the feature layer 2x, then deepen after the last conv block.

    Without noise the copies of a unit stay identical under training (same incoming and outgoing
    weights give them the same gradients), so ``noise`` is what lets the added width be used.
    """
    for name in ("backbone.conv1", "backbone.conv2", "backbone.fc"):
        layer = model.get_submodule(name)
        conv = next(m for m in layer.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
        width = conv.out_channels if isinstance(conv, torch.nn.Conv2d) else conv.out_features
        model = widen(model, name, 2 * width, noise=noise, example=probe[:64])
    return deepen(model, "backbone.conv2", data=probe)


def reinit(model):
    """Same architecture, fresh weights: reset_parameters (and BN running stats) everywhere."""
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh


def reach(curve: list[float], secs: list[float], goal: float, offset: int = 0, t0: float = 0.0):
    """(epochs, seconds) until ``curve`` first reaches ``goal``; None when it never does."""
    for i, acc in enumerate(curve):
        if acc >= goal:
            return offset + i + 1, t0 + sum(secs[: i + 1])
    return None


def fmt_ms(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    m = statistics.mean(values) * scale
    s = (statistics.stdev(values) if len(values) > 1 else 0.0) * scale
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/grow.md")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--small-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.05, help="widen noise of arm (a)")
    parser.add_argument("--per-class", type=int, default=1000)
    args = parser.parse_args()
    t_start = time.perf_counter()
    e0, e1 = args.small_epochs, args.epochs

    fm = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    test = fm.test
    runs = []
    for seed in range(args.seeds):
        data = few_shot(fm.train, args.per_class, seed)
        torch.manual_seed(seed)
        small = create_model("small_cnn", num_classes=10, widths=(16, 32), feature_dim=64)
        small_curve, small_secs = train(small, e0, data, test, seed)
        acc_small = evaluate(small, test, batch_size=1000).accuracy

        t0 = time.perf_counter()
        exact = grow(small, data.x[:256])
        grow_secs = time.perf_counter() - t0
        grown = grow(small, data.x[:256], args.noise)
        acc_exact = evaluate(exact, test, batch_size=1000).accuracy
        acc_grown = evaluate(grown, test, batch_size=1000).accuracy
        with torch.no_grad():
            small.eval()
            exact.eval()
            x = test.x[:1000]
            diff = float((small(x) - exact(x)).abs().max())
        n_small = sum(p.numel() for p in small.parameters())
        n_big = sum(p.numel() for p in grown.parameters())
        torch.manual_seed(1000 + seed)
        scratch = reinit(exact)

        a_curve, a_secs = train(grown, e1, data, test, seed)
        c_model = copy.deepcopy(small)
        c_curve, c_secs = train(c_model, e1, data, test, seed)
        b_curve, b_secs = train(scratch, e0 + e1, data, test, seed)
        runs.append(dict(
            acc_small=acc_small, acc_exact=acc_exact, acc_grown=acc_grown, diff=diff, grow_secs=grow_secs,
            n_small=n_small, n_big=n_big,
            a=small_curve + a_curve, a_secs=small_secs + a_secs,
            b=b_curve, b_secs=b_secs,
            c=small_curve + c_curve, c_secs=small_secs + c_secs,
        ))
        print(f"seed {seed}: small {acc_small:.4f} grown {acc_exact:.4f} (max|dlogit| {diff:.2e}), "
              f"with noise {acc_grown:.4f}; "
              f"final a {a_curve[-1]:.4f} b {b_curve[-1]:.4f} c {c_curve[-1]:.4f}", flush=True)

    total = e0 + e1
    arms = [("a", f"(a) grown after epoch {e0} (noise {args.noise}), then trained"),
            ("b", "(b) large (grown architecture) from scratch"),
            ("c", "(c) small, continued")]
    header = "| arm | " + " | ".join(f"ep {i + 1}" for i in range(total)) + " |"
    lines = [
        "# Net2Net growth (widen 2x + deepen) vs training the large model from scratch",
        "",
        f"- command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} "
        f"{' '.join([os.path.basename(sys.executable), *sys.argv])}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, torch {torch.__version__}, torch threads {torch.get_num_threads()}",
        f"- data: Fashion-MNIST, training subset of {len(data)} images "
        f"(`few_shot(train, {args.per_class}, seed)`), test: all {len(test)} test images; "
        f"seeds: {args.seeds}; AdamW lr {TRAIN['lr']}, batch {TRAIN['batch_size']}, cosine "
        "schedule per `fit` call",
        f"- small: small_cnn widths (16, 32), feature_dim 64 ({runs[0]['n_small']:,} parameters); "
        f"grown/large: widths (32, 64), feature_dim 128 + an inserted 64-channel 3x3 conv + BN + "
        f"ReLU block after conv2 ({runs[0]['n_big']:,} parameters)",
        f"- schedule: small trained {e0} epochs, then (a) and (c) {e1} more epochs each (a fresh "
        f"`fit`), (b) {total} epochs in one `fit`",
        "- test accuracy is evaluated after every epoch only to draw the learning curves below; "
        "no model or epoch is chosen with test data (there is no choice: fixed epochs, no "
        "validation-based best-epoch restore, the last epoch's model is reported)",
        f"- whole script: {time.perf_counter() - t_start:.0f} s",
        "",
        "## Function preservation at growth (on real test data)",
        "",
        "| seed | small test acc | grown, noise 0 (before training) | max abs logit diff, noise 0 "
        f"(1,000 test images) | grown, noise {args.noise} (trained in arm a) | growth seconds |",
        "|---|---|---|---|---|---|",
        *[f"| {i} | {r['acc_small'] * 100:.2f} % | {r['acc_exact'] * 100:.2f} % | {r['diff']:.1e} "
          f"| {r['acc_grown'] * 100:.2f} % | {r['grow_secs']:.2f} |" for i, r in enumerate(runs)],
        "",
        f"## Test accuracy per epoch (%, mean ± std over {args.seeds} seeds)",
        "",
        f"Epochs count from the start of training; for (a) and (c), epochs 1-{e0} are the small "
        f"model's (identical), growth happens after epoch {e0}.",
        "",
        header,
        "|---" * (total + 1) + "|",
        *[f"| {label} | " + " | ".join(fmt_ms([r[k][i] for r in runs]) for i in range(total))
          + " |" for k, label in arms],
        "",
        "## Epochs and training seconds to reach the small model's final accuracy",
        "",
        f"Goal per seed: arm (c)'s test accuracy after {total} epochs (the small model's final "
        f"accuracy; mean {statistics.mean(r['c'][-1] for r in runs) * 100:.2f} %). Epochs and "
        "seconds count from the start (for (a) and (c) including the small model's first "
        f"{e0} epochs; (a) excludes the growth itself, see above). Seconds are training time only "
        "(the per-epoch test evaluation is not counted).",
        "",
        "| arm | seeds reaching the goal | epochs (mean ± std over those) | seconds "
        "(mean ± std) | final test acc (%) | train seconds, all epochs |",
        "|---|---|---|---|---|---|",
    ]
    for k, label in arms:
        hits = [reach(r[k], r[k + "_secs"], r["c"][-1]) for r in runs]
        got = [h for h in hits if h is not None]
        ep = fmt_ms([float(h[0]) for h in got], 1.0, 1) if got else "-"
        sec = fmt_ms([h[1] for h in got], 1.0, 1) if got else "-"
        lines.append(
            f"| {label} | {len(got)}/{len(runs)} | {ep} | {sec} | "
            f"{fmt_ms([r[k][-1] for r in runs])} | "
            f"{fmt_ms([sum(r[k + '_secs']) for r in runs], 1.0, 1)} |"
        )
    lines += ["", "READING", ""]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
