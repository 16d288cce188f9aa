"""Merging benchmarks (issue 18), recorded in bench/results/merge.md.

Parts (``--part``):

* ``rebasin``: two MLPs (784-512-512-10) trained on MNIST-5k from different initialisations; loss and
  accuracy along the straight line between them (11 points, test and training images), before and after
  Git Re-Basin alignment (weight matching; activation matching on 2,000 training images); 3 pairs.
* ``tasks``: three image tasks (MNIST-5k, scikit-learn digits, Fashion-MNIST's last five classes;
  ``--shots`` training images a class, all 28x28 gray) from one pretrained model (a small CNN trained on
  Fashion-MNIST's first five classes; BatchNorm statistics kept); per-task test accuracy of each
  single-task fine-tune, of the pretrained backbone with each task's linear probe, of one multi-task
  model (each weighting, PCGrad, CAGrad; and with the single-task fine-tunes as its teachers) and of
  the single-task models merged with each method (each task's head kept); scales chosen on validation;
  task arithmetic's accuracy as a function of its scale; 3 seeds.

Run: ``.venv/bin/python bench/merge.py --part rebasin`` (about 5 min on 2 cores) and ``--part tasks``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from transferkit.data import TensorDataset, few_shot, load_dataset
from transferkit.data.tasks import TaskSet
from transferkit.engine import TrainConfig, Trainer
from transferkit.engine.objectives import CrossEntropy
from transferkit.evaluation import evaluate
from transferkit.models import create_model, replace_head, set_task_heads, task_model
from transferkit.multitask import MultiTask
from transferkit.transfer.distill import LogitKD, Teacher
from transferkit.transfer.merge import merge
from transferkit.transfer.merge.rebasin import loss_barrier

RESULTS = Path(__file__).parent / "results"


def _ms(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _header(part: str, extra: str = "") -> list[str]:
    cmd = " ".join([".venv/bin/python", "bench/merge.py", *sys.argv[1:]])
    return [
        f"## {part}",
        "",
        f"Command: `{cmd}`; {os.cpu_count()} cores; {datetime.date.today()}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. {extra}",
        "",
    ]


# ------------------------------------------------------------------------------------------ rebasin
def _train_mlp(train: TensorDataset, seed: int, epochs: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("mlp", num_classes=10, hidden=(512, 512))
    Trainer(model, TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, backbone_lr_scale=1.0, seed=seed)).fit(
        train
    )
    return model.eval()


def part_rebasin(pairs: int, epochs: int) -> tuple[list[str], dict]:
    data = load_dataset("mnist5k", val_fraction=0.0)
    train_probe = TensorDataset(data.train.x[:2000], data.train.y[:2000], name="mnist5k-train-2000")
    rows: dict[str, dict[str, list[float]]] = {"naive (no alignment)": {}}
    curves = {}
    for p in range(pairs):
        a = _train_mlp(data.train, 2 * p + 1, epochs)
        b = _train_mlp(data.train, 2 * p + 2, epochs)
        variants = {"naive (no alignment)": b}
        for how in ("weight", "activation"):
            start = time.perf_counter()
            aligned = merge([a, b], weights=[0, 1], align=how, align_data=train_probe.x).model.eval()
            variants[f"{how} matching"] = aligned
            rows.setdefault(f"{how} matching", {}).setdefault("seconds", []).append(
                time.perf_counter() - start
            )
        for name, other in variants.items():
            test = loss_barrier(a, other, data.test, steps=11)
            tr = loss_barrier(a, other, train_probe, steps=11)
            r = rows.setdefault(name, {})
            for key, value in (
                ("test_loss_barrier", test["loss_barrier"]),
                ("train_loss_barrier", tr["loss_barrier"]),
                ("test_acc_barrier", test["accuracy_barrier"]),
                ("midpoint_acc", test["accuracy"][5]),
                ("end_acc", (test["accuracy"][0] + test["accuracy"][-1]) / 2),
            ):
                r.setdefault(key, []).append(value)
            curves.setdefault(name, []).append(test["accuracy"])
        print(
            f"pair {p}: "
            + ", ".join(f"{n}: barrier {rows[n]['test_loss_barrier'][-1]:.3f}" for n in variants),
            flush=True,
        )
    lines = _header(
        "Git Re-Basin: the barrier between two independently trained MLPs",
        f"MNIST-5k (4,000 training / 1,000 test images), MLP 784-512-512-10, {epochs} epochs of Adam "
        f"(lr 1e-3, batch 64), {pairs} pairs of initialisations. Barrier = the largest rise of the loss "
        "(fall of the accuracy) above (below) the straight line between the two ends, over 11 points "
        "of (1-t) A + t B.",
    )
    lines += [
        "| B aligned to A by | test loss barrier | training loss barrier | test accuracy barrier (pp) | "
        "accuracy at the midpoint (%) | accuracy of the ends (%) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {_ms(r['test_loss_barrier'], 1, 3)} | {_ms(r['train_loss_barrier'], 1, 3)} | "
            f"{_ms(r['test_acc_barrier'])} | {_ms(r['midpoint_acc'])} | {_ms(r['end_acc'])} |"
        )
    lines += ["", "Test accuracy (%) along the line, mean over pairs (t = 0, 0.1, ..., 1):", ""]
    for name, cs in curves.items():
        mean = [statistics.mean(c[i] for c in cs) * 100 for i in range(11)]
        lines.append(f"- {name}: " + " ".join(f"{v:.1f}" for v in mean))
    secs = ", ".join(
        f"{n} {statistics.mean(rows[n]['seconds']):.1f} s" for n in ("weight matching", "activation matching")
    )
    lines += ["", f"Alignment time per pair: {secs}.", ""]
    return lines, {"rows": rows, "curves": curves}


# ------------------------------------------------------------------------------------------- tasks
#: The pretraining task of the shared base: Fashion-MNIST's first five classes; the third target task is
#: the other five.
BASE_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
TASK_CLASSES = ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _gray28(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) images at 28 x 28 (the 8 x 8 digits upsampled)."""
    if x.shape[-1] == 28:
        return x.float()
    return F.interpolate(x.float(), size=(28, 28), mode="bilinear", align_corners=False)


def _tasks(seed: int, shots: int) -> dict[str, dict[str, TensorDataset]]:
    out = {}
    for name, spec in (("mnist", "mnist5k"), ("fashion", "fashion-mnist"), ("digits", "digits")):
        d = load_dataset(spec, val_fraction=0.1, seed=0, classes=TASK_CLASSES if name == "fashion" else None)
        train = few_shot(d.train, k=shots, seed=seed)
        val = d.val if len(d.val) <= 500 else few_shot(d.val, k=50, seed=seed)
        test = d.test if len(d.test) <= 2000 else few_shot(d.test, k=200, seed=0)
        out[name] = {
            k: TensorDataset(_gray28(v.x), v.y, classes=v.classes, name=f"{name}-{k}")
            for k, v in (("train", train), ("val", val), ("test", test))
        }
    return out


def _base() -> torch.nn.Module:
    """A small CNN pretrained on Fashion-MNIST's first five classes (27,000 images, 3 epochs)."""
    d = load_dataset("fashion-mnist", val_fraction=0.1, seed=0, classes=BASE_CLASSES)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=5, widths=(32, 64), feature_dim=128)
    Trainer(model, TrainConfig(epochs=3, batch_size=128, lr=1e-3, backbone_lr_scale=1.0, seed=0)).fit(d.train)
    print(f"  base: {evaluate(model, d.test).accuracy:.3f} on its own five classes", flush=True)
    return model.eval()


def _finetune(
    base: torch.nn.Module, train: TensorDataset, seed: int, epochs: int, probe: bool
) -> torch.nn.Module:
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    replace_head(model, train.num_classes)
    cfg = (
        TrainConfig(
            strategy="linear_probe", epochs=100, batch_size=len(train), lr=1e-2, weight_decay=1e-4, seed=seed
        )
        if probe
        else TrainConfig(
            epochs=epochs, batch_size=32, lr=1e-3, backbone_lr_scale=1.0, freeze_bn=True, seed=seed
        )
    )
    Trainer(model, cfg).fit(train)
    return model.eval()


MULTITASK = [
    ("equal", None),
    ("uncertainty", None),
    ("dwa", None),
    ("gradnorm", None),
    ("equal", "pcgrad"),
    ("equal", "cagrad"),
]


def _multitask(
    base: torch.nn.Module,
    tasks: dict,
    seed: int,
    epochs: int,
    weighting: str,
    surgery: str | None,
    teachers: dict | None = None,
) -> torch.nn.Module:
    """One model for the three tasks (a head each), trained with the single-task fine-tunes' settings
    on a batch of every task per step (an epoch: one pass over the largest task); with ``teachers``,
    each task's loss is half cross-entropy, half KD (T = 4) from that task's teacher."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    set_task_heads(model, {t: d["train"].num_classes for t, d in tasks.items()})
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, backbone_lr_scale=1.0, freeze_bn=True, seed=seed)
    train = TaskSet({t: d["train"] for t, d in tasks.items()})
    val = TaskSet({t: d["val"] for t, d in tasks.items()})
    per_task = None
    if teachers is not None:
        per_task = {
            t: [CrossEntropy(weight=0.5), LogitKD(Teacher(m), weight=0.5, temperature=4.0)]
            for t, m in teachers.items()
        }
    Trainer(model, cfg, [MultiTask(weighting=weighting, surgery=surgery, task_objectives=per_task)]).fit(
        train, val
    )
    return model.eval()


def _refit_heads(model: torch.nn.Module, tasks: dict, seed: int) -> torch.nn.Module:
    """Each task's head trained again (a linear probe, the probes' settings) on the merged backbone."""
    model = copy.deepcopy(model)
    for t, d in tasks.items():
        view = task_model(model, t)
        torch.manual_seed(seed)
        view.head.reset_parameters()
        cfg = TrainConfig(
            strategy="linear_probe",
            epochs=100,
            batch_size=len(d["train"]),
            lr=1e-2,
            weight_decay=1e-4,
            seed=seed,
        )
        Trainer(view, cfg).fit(d["train"])
    return model.eval()


def _accs(model: torch.nn.Module, tasks: dict, split: str, kept: bool = True) -> dict[str, float]:
    return {t: evaluate(task_model(model, t) if kept else model, d[split]).accuracy for t, d in tasks.items()}


def part_tasks(seeds: int, shots: int, epochs: int) -> tuple[list[str], dict]:
    base = _base()
    names = ["mnist", "fashion", "digits"]
    table: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, list[float]] = {}
    scale_curve: dict[float, dict[str, list[float]]] = {}
    chosen: dict[str, list[float]] = {}
    scales = [0.2, 0.4, 0.6, 0.8, 1.0]

    def record(row: str, accs: dict[str, float]) -> None:
        for t, v in accs.items():
            table.setdefault(row, {}).setdefault(t, []).append(v)
        table[row].setdefault("mean", []).append(statistics.mean(accs.values()))
        print(f"  {row}: {table[row]['mean'][-1]:.3f} ({time.strftime('%H:%M:%S')})", flush=True)

    for seed in range(seeds):
        tasks = _tasks(seed, shots)
        start = time.perf_counter()
        singles = {t: _finetune(base, tasks[t]["train"], seed, epochs, probe=False) for t in names}
        seconds.setdefault("fine-tune (3 tasks)", []).append(time.perf_counter() - start)
        start = time.perf_counter()
        probes = {t: _finetune(base, tasks[t]["train"], seed, epochs, probe=True) for t in names}
        seconds.setdefault("linear probes (3 tasks)", []).append(time.perf_counter() - start)
        record(
            "single-task fine-tunes (each on its own task)",
            {t: evaluate(singles[t], tasks[t]["test"]).accuracy for t in names},
        )
        record(
            "pretrained backbone + linear probe per task",
            {t: evaluate(probes[t], tasks[t]["test"]).accuracy for t in names},
        )

        for weighting, surgery in MULTITASK:
            row = f"multi-task: {weighting}" + (f" + {surgery}" if surgery else "")
            start = time.perf_counter()
            model = _multitask(base, tasks, seed, epochs, weighting, surgery)
            seconds.setdefault(row, []).append(time.perf_counter() - start)
            record(row, _accs(model, tasks, "test"))

        start = time.perf_counter()
        model = _multitask(base, tasks, seed, epochs, "equal", None, teachers=singles)
        seconds.setdefault("multi-teacher distillation", []).append(time.perf_counter() - start)
        record(
            "multi-teacher distillation (each fine-tune teaches its task's head)", _accs(model, tasks, "test")
        )

        def timed(row: str, singles: dict = singles, **kw) -> torch.nn.Module:
            start = time.perf_counter()
            model = merge(singles, **kw).model.eval()
            seconds.setdefault(row, []).append(time.perf_counter() - start)
            return model

        record(
            "average (= task arithmetic, scale 1/3)", _accs(timed("average", method="average"), tasks, "test")
        )
        for method, grid, extra in (
            ("task_arithmetic", scales, {}),
            ("ties", [0.6, 0.8, 1.0, 1.2, 1.5], {}),
            ("dare", scales, {"density": 0.5}),
        ):
            best, best_val = None, -1.0
            for s in grid:
                model = timed(method, method=method, base=base, scale=s, **extra)
                val = statistics.mean(_accs(model, tasks, "val").values())
                if method == "task_arithmetic":
                    for t, v in _accs(model, tasks, "test").items():
                        scale_curve.setdefault(s, {}).setdefault(t, []).append(v)
                    scale_curve[s].setdefault("val_mean", []).append(val)
                if val > best_val:
                    best, best_val, best_scale = model, val, s
            chosen.setdefault(method, []).append(best_scale)
            if method == "task_arithmetic":
                ta_best = best
            record(f"{method} (scale chosen on validation)", _accs(best, tasks, "test"))
        fisher = timed(
            "fisher", method="fisher", data=[tasks[t]["train"] for t in names], examples=64, kind="empirical"
        )
        record("fisher (empirical, 64 examples a task)", _accs(fisher, tasks, "test"))
        refit = _refit_heads(ta_best, tasks, seed)
        record(
            "task arithmetic, then each head re-fit on the merged backbone (linear probe)",
            _accs(refit, tasks, "test"),
        )
        print(f"seed {seed}: " + "; ".join(f"{r}: {table[r]['mean'][-1]:.3f}" for r in table), flush=True)

    lines = _header(
        "Three tasks, one model: single-task, multi-task, merged, distilled",
        f"Tasks MNIST-5k (10 classes), Fashion-MNIST's Sandal, Shirt, Sneaker, Bag, Ankle boot (5) and "
        f"scikit-learn digits (10, upsampled to 28 x 28), {shots} training images a class; validation (the "
        "scales' choice): MNIST-5k's 400, digits' 126, Fashion-MNIST 50 a class; test: MNIST-5k 1,000, "
        "Fashion-MNIST 1,000 (200 a class), digits 540. Base: a small CNN (32-64 channels, 128 features) "
        "trained on Fashion-MNIST's other five classes (27,000 images, 3 epochs); each task fine-tuned in "
        f"full from it ({epochs} epochs, Adam lr 1e-3, batch 32, BatchNorm statistics kept), its new head "
        "kept in the merged model; the multi-task models train with the same settings on a batch of every "
        f"task per step. Mean ± std over {seeds} seeds (training images, initialisation of the heads).",
    )
    lines += ["| model | MNIST-5k | Fashion-MNIST 5-9 | digits | mean |", "|---|---|---|---|---|"]
    for row, accs in table.items():
        lines.append(f"| {row} | " + " | ".join(_ms(accs[t]) for t in [*names, "mean"]) + " |")
    lines += [
        "",
        "Scales chosen on validation (per seed): "
        + "; ".join(f"{m} {', '.join(f'{s:g}' for s in v)}" for m, v in chosen.items())
        + ".",
        "",
        "Task arithmetic's test accuracy (%) by scale (the sum of the three task vectors times the scale):",
        "",
        "| scale | MNIST-5k | Fashion-MNIST 5-9 | digits | validation mean |",
        "|---|---|---|---|---|",
    ]
    for s, accs in scale_curve.items():
        lines.append(f"| {s:g} | " + " | ".join(_ms(accs[t]) for t in [*names, "val_mean"]) + " |")
    lines += [
        "",
        "Seconds (mean per seed): "
        + "; ".join(f"{k} {statistics.mean(v):.1f}" for k, v in seconds.items())
        + " (a merge per scale tried; each merge's time is one call).",
        "",
    ]
    return lines, {
        "table": table,
        "scale_curve": {str(k): v for k, v in scale_curve.items()},
        "chosen": chosen,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["rebasin", "tasks"], required=True)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, default=100)
    args = parser.parse_args()
    if args.part == "rebasin":
        lines, raw = part_rebasin(args.pairs, args.epochs)
    else:
        lines, raw = part_tasks(args.seeds, args.shots, args.epochs)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"merge_{args.part}.md"
    out.write_text("\n".join(lines) + "\n")
    (RESULTS / f"merge_{args.part}.json").write_text(json.dumps(raw, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
