"""Learning from unlabelled target images: the demo's settings chosen on validation data, every method on
two targets, and the gain with the amount of unlabelled data.

``--part choose``: the settings of the demo's EfficientNet arms (where to cut the backbone, the linear
probe's L2 strength, the pseudo-labels' confidence threshold) chosen on Fashion-MNIST *training-split*
images only: per seed, 10 labelled images per class and 1,000 other training images whose labels
score the choice (validation); the official test images are never read. Features of the frozen
EfficientNet-Lite0 (96 px, pooled after stage 5, stage 6 and the head convolution) are computed once;
each setting trains a linear probe through the engine (``Trainer.fit`` on the cached features, 200
full-batch AdamW epochs, the last kept), with ``PseudoLabel`` on 5,000 unlabelled training images for
the threshold sweep.

``--part methods``: through the product's own arms (:func:`transferkit.workflows.run_arms`), 10 labels per
class, 3 seeds, every test image: (a) Fashion-MNIST: the small CNN from scratch alone and with each
method (pseudo-labels, FlexMatch thresholds, FixMatch, Mean Teacher) on 5,000 unlabelled training
images, and the demo's EfficientNet stage-6 probe alone and with pseudo-labels (fixed / FlexMatch
thresholds); (b) MNIST -> scikit-learn digits: the demo's MNIST CNN fine-tuned alone, with each method
and with L2-SP + pseudo-labels, beside scratch with each method (the other training digits unlabelled).
Methods that forward the unlabelled images through the network every step (FixMatch, Mean Teacher)
run on the small CNN only: through EfficientNet they are GPU work.

``--part finetune``: EfficientNet-Lite0 (stage-6 cut, 64 px, ImageNet BatchNorm statistics kept) fully
fine-tuned 15 epochs on the 10 labels per class, alone and with pseudo-labels, FixMatch and Mean Teacher on
5,000 unlabelled images: the methods that forward the unlabelled images through the whole network.

``--part kd``: the demo's best arm (per seed) as the teacher of the small CNN, which learns from its soft
labels on the 5,000 unlabelled images (logit KD, ``unlabeled=True``) and the few labels: a chained arm.

``--part amount``: the demo's best arm (EfficientNet stage-6 probe + pseudo-labels, tau 0.7) with 1,000,
10,000 and all 54,000 unlabelled training images (settings fixed before; test accuracy reported).

Run (2 cores):
    python bench/semi.py --part choose --out bench/results/semi.md
    python bench/semi.py --part methods --out bench/results/semi.md
    python bench/semi.py --part finetune --out bench/results/semi.md
    python bench/semi.py --part kd --out bench/results/semi.md
    python bench/semi.py --part amount --out bench/results/semi.md
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

from transferkit.data import TensorDataset, load_dataset, without_labels
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


def _arms_table(result, minutes: float) -> str:
    return f"({minutes:.1f} min)\n\n```\n{result.table()}\n```\n"


def _fashion_setup() -> tuple:
    """(demo settings, Fashion-MNIST splits, the demo's 5,000-image unlabelled pool, EfficientNet-Lite0,
    the demo's probe settings, its stage-6 model arguments)."""
    from transferkit.demo import DemoSettings
    from transferkit.models import load_model

    demo = DemoSettings()
    data = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    pool = without_labels(data.train, demo.unlabeled, seed=0)
    effnet = load_model("efficientnet_lite0", pretrained=True)
    probe = TrainConfig(strategy="linear_probe", lr=1e-2, epochs=demo.probe_epochs, batch_size=100,
                        weight_decay=demo.probe_weight_decay, eval_batch_size=64, channels_last=True,
                        unlabeled_ratio=10, seed=0)
    return demo, data, pool, effnet, probe, {"image_size": demo.effnet_size, "features": demo.effnet_features}


def methods(seeds: list[int], work: Path) -> str:
    from transferkit.demo import train_mnist_source
    from transferkit.transfer.regularize import L2SP
    from transferkit.transfer.semi import FixMatch, MeanTeacher
    from transferkit.workflows import Arm, run_arms

    small = TrainConfig(epochs=30, batch_size=32, lr=3e-3, backbone_lr_scale=1.0, seed=0)
    semi = {
        "pseudo_label": lambda: [CrossEntropy(), PseudoLabel(tau=0.7)],
        "pseudo_label (flex)": lambda: [CrossEntropy(), PseudoLabel(tau=0.95, flex=True)],
        "fixmatch": lambda: [CrossEntropy(), FixMatch(tau=0.95)],
        "mean_teacher": lambda: [CrossEntropy(), MeanTeacher(weight=10.0)],
    }
    ratio = {"pseudo_label": 3, "pseudo_label (flex)": 3, "fixmatch": 3, "mean_teacher": 3}
    out = []
    # (a) Fashion-MNIST
    t0 = time.perf_counter()
    demo, data, pool, effnet, probe, effnet_args = _fashion_setup()
    arms = [Arm("scratch", "from scratch", "small_cnn", small)]
    for name, make in semi.items():
        arms.append(Arm(f"scratch+{name}", f"from scratch + {name}", "small_cnn",
                        small.model_copy(update={"unlabeled_ratio": ratio[name]}), objectives=make,
                        target=pool, reference="no source"))
    arms.append(Arm("effnet/probe", "linear probe", "efficientnet_lite0", probe, source=effnet,
                    kwargs=effnet_args))
    for name in ("pseudo_label", "pseudo_label (flex)"):
        arms.append(Arm(f"effnet/probe+{name}", f"linear probe + {name}", "efficientnet_lite0", probe,
                        source=effnet, kwargs=effnet_args, objectives=semi[name], target=pool))
    result = run_arms(arms, data, seeds=seeds, shots=10, out_dir=work / "fashion", baseline="scratch",
                      title="semi: fashion-mnist", resume=True)
    out.append(f"### Fashion-MNIST, 10 labels per class, {len(pool):,} unlabelled training images "
               + _arms_table(result, (time.perf_counter() - t0) / 60))
    print(out[-1], flush=True)
    # (b) MNIST -> digits
    t0 = time.perf_counter()
    digits = load_dataset("digits", val_fraction=0.2, seed=0)
    dpool = without_labels(digits.train)
    source, _ = train_mnist_source(work, demo.source_epochs)
    full = small.model_copy(update={"backbone_lr_scale": 0.3})
    arms = [Arm("scratch", "from scratch", "small_cnn", small),
            Arm("mnist/full", "full fine-tune", "small_cnn", full, source=source)]
    for name, make in semi.items():
        cfg = {"unlabeled_ratio": ratio[name]}
        arms.append(Arm(f"scratch+{name}", f"from scratch + {name}", "small_cnn",
                        small.model_copy(update=cfg), objectives=make, target=dpool, reference="no source"))
        arms.append(Arm(f"mnist/full+{name}", f"full fine-tune + {name}", "small_cnn",
                        full.model_copy(update=cfg), source=source, objectives=make, target=dpool))
    src_state = {k: v.clone() for k, v in source.state_dict().items()}
    arms.append(Arm("mnist/full+l2sp+pseudo_label", "full fine-tune + L2-SP + pseudo_label", "small_cnn",
                    full.model_copy(update={"unlabeled_ratio": 3}), source=source,
                    objectives=lambda: [CrossEntropy(), L2SP(alpha=0.01, beta=0.01, source=src_state),
                                        PseudoLabel(tau=0.7)], target=dpool))
    result = run_arms(arms, digits, seeds=seeds, shots=10, out_dir=work / "digits", baseline="scratch",
                      title="semi: mnist -> digits", resume=True)
    out.append(f"### MNIST CNN -> scikit-learn digits, 10 labels per class, {len(dpool):,} unlabelled "
               "training digits " + _arms_table(result, (time.perf_counter() - t0) / 60))
    print(out[-1], flush=True)
    return "\n".join(out)


def kd(seeds: list[int], work: Path) -> str:
    """The demo's best arm as a teacher, distilled into the small CNN on the unlabelled images."""
    from transferkit.transfer.distill import LogitKD, Teacher
    from transferkit.workflows import Arm, run_arms

    demo, data, pool, effnet, probe, effnet_args = _fashion_setup()
    small = TrainConfig(epochs=30, batch_size=32, lr=3e-3, backbone_lr_scale=1.0, seed=0, unlabeled_ratio=3)
    teacher_name = "effnet/probe+pseudo_label (teacher)"

    def student(earlier: dict) -> list:
        # the preflight check has no teacher yet: any 10-class model stands in
        model = earlier.get(teacher_name) or create_model("small_cnn", num_classes=10)
        kd_term = LogitKD(Teacher(model, precompute=True), temperature=2.0, weight=0.9, unlabeled=True)
        return [CrossEntropy(weight=0.1), kd_term]

    arms = [Arm("scratch", "from scratch", "small_cnn", small.model_copy(update={"unlabeled_ratio": 1})),
            Arm(teacher_name, "linear probe + pseudo_label", "efficientnet_lite0", probe, source=effnet,
                kwargs=effnet_args, target=pool,
                objectives=lambda: [CrossEntropy(), PseudoLabel(tau=demo.tau)]),
            Arm("small-cnn student (KD on the unlabelled images)", "small CNN + KD from the teacher",
                "small_cnn", small, objectives=student, chained=True, target=pool)]
    t0 = time.perf_counter()
    result = run_arms(arms, data, seeds=seeds, shots=10, out_dir=work / "kd", baseline="scratch",
                      title="semi: distillation on the unlabelled images", resume=True)
    return ("### Fashion-MNIST: the demo's best arm distilled into the small CNN on 5,000 unlabelled images "
            + _arms_table(result, (time.perf_counter() - t0) / 60))


def finetune_part(seeds: list[int], work: Path) -> str:
    """EfficientNet fine-tuned (stage-6 cut, 64 px, BatchNorm statistics kept) alone and with each method."""
    from transferkit.transfer.semi import FixMatch, MeanTeacher
    from transferkit.workflows import Arm, run_arms

    demo, data, pool, effnet, _, _ = _fashion_setup()
    full = TrainConfig(epochs=15, batch_size=32, lr=1e-3, backbone_lr_scale=0.1, freeze_bn=True,
                       eval_batch_size=64, channels_last=True, seed=0)
    args = {"image_size": 64, "features": demo.effnet_features}
    methods = {"pseudo_label": lambda: [CrossEntropy(), PseudoLabel(tau=demo.tau)],
               "fixmatch": lambda: [CrossEntropy(), FixMatch(tau=0.95)],
               "mean_teacher": lambda: [CrossEntropy(), MeanTeacher(weight=10.0)]}
    arms = [Arm("scratch", "from scratch", "small_cnn",
                TrainConfig(epochs=30, batch_size=32, lr=3e-3, backbone_lr_scale=1.0, seed=0)),
            Arm("effnet/full", "full fine-tune", "efficientnet_lite0", full, source=effnet, kwargs=args)]
    arms += [Arm(f"effnet/full+{name}", f"full fine-tune + {name}", "efficientnet_lite0", full, source=effnet,
                 kwargs=args, objectives=make, target=pool) for name, make in methods.items()]
    t0 = time.perf_counter()
    result = run_arms(arms, data, seeds=seeds, shots=10, out_dir=work / "finetune", baseline="scratch",
                      title="semi: EfficientNet fine-tuned with each method", resume=True)
    return ("### Fashion-MNIST: EfficientNet-Lite0 (stage 6, 64 px, BatchNorm kept) fine-tuned 15 epochs, "
            f"alone and with each method on {len(pool):,} unlabelled images (1 per labelled image a step) "
            + _arms_table(result, (time.perf_counter() - t0) / 60))


def amount(seeds: list[int], work: Path) -> str:
    from transferkit.workflows import Arm, run_arms

    demo, data, _, effnet, probe, effnet_args = _fashion_setup()
    arms = [Arm("effnet/probe", "linear probe (no unlabelled images)", "efficientnet_lite0", probe,
                source=effnet, kwargs=effnet_args)]
    for n in (1000, 10000, None):
        pool = without_labels(data.train, n, seed=0)
        arms.append(Arm(f"effnet/probe+pseudo_label/{len(pool)}", f"+ pseudo_label, {len(pool):,} unlabelled",
                        "efficientnet_lite0", probe, source=effnet, kwargs=effnet_args, target=pool,
                        objectives=lambda: [CrossEntropy(), PseudoLabel(tau=demo.tau)]))
    t0 = time.perf_counter()
    result = run_arms(arms, data, seeds=seeds, shots=10, out_dir=work / "amount", baseline="effnet/probe",
                      title="semi: amount of unlabelled data", resume=True)
    return ("### Fashion-MNIST, EfficientNet stage-6 probe + pseudo-labels (tau 0.7) by unlabelled images "
            + _arms_table(result, (time.perf_counter() - t0) / 60))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("choose", "methods", "finetune", "kd", "amount"), default="choose")
    ap.add_argument("--work", type=Path, default=Path("bench/.cache/semi"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=6000, help="training images sampled (choose)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/semi.md"))
    args = ap.parse_args()
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.part == "choose":
        body, title = choose(seeds, args.n), "the demo's EfficientNet settings, chosen on validation"
    elif args.part == "methods":
        body, title = methods(seeds, args.work), "every method, 10 labels per class"
    elif args.part == "finetune":
        body, title = finetune_part(seeds, args.work), "EfficientNet fine-tuned with each method"
    elif args.part == "kd":
        body, title = kd(seeds, args.work), "distilling the best arm into a small CNN on unlabelled images"
    else:
        body, title = amount(seeds, args.work), "the gain with the amount of unlabelled data"
    head = (f"## {args.part}: {title}\n\n"
            f"`python bench/semi.py --part {args.part} --seeds {args.seeds} --n {args.n}` on "
            f"{os.cpu_count()} cores, {date.today().isoformat()}, "
            f"{(time.perf_counter() - start) / 60:.1f} min in all.\n\n")
    print(head + body)
    with args.out.open("a") as fh:
        fh.write(head + body + "\n")


if __name__ == "__main__":
    main()
