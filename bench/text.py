"""Text transfer through the product's own workflow (``transferkit.finetune``): MiniLM (all-MiniLM-L6-v2)
as a linear probe, fully fine-tuned and with LoRA, against the from-scratch text transformer and TF-IDF +
logistic regression on the same examples (the rows every text report has), mean of 3 seeds.

Each setting is one ``finetune`` call per strategy; the scratch baseline and the TF-IDF row come with
it. The table is what ``finetune`` printed, with the setting above it.

``--part distill``: MiniLM as a linear-probe teacher (the few labels) distilled into the small text
transformer on the rest of the training texts with their labels unused (logit KD; + layer hints; +
self-attention), against that student trained on the few labels alone: accuracy, parameters and
examples/s of each.

``--part rank``: five text encoders scored by LogME (and the other scores) on the few labelled texts,
against the accuracy of a linear probe on each encoder's features (the same examples, all test texts):
Kendall's tau between the two rankings.

``--part adapt``: tweet sentiment from airline tweets (labelled) to Apple tweets (unlabelled) through
``transferkit.adapt``: a small text transformer trained on the airline tweets (``--encoder small``) or the
pretrained MiniLM encoder with a new head (``--encoder minilm``) is the source model; every arm starts from
it (source only, each adaptation method at each trade-off weight, the target oracle); checkpoint and
weight chosen without target labels (DEV) next to the oracle choice.

Run (2 cores; the MiniLM test passes dominate):
    python bench/text.py --setting 20ng4 --strategies linear_probe,full,lora --out bench/results/text.md
    python bench/text.py --setting 20ng --strategies linear_probe --out bench/results/text.md
    python bench/text.py --setting 20ng-full --strategies linear_probe --epochs 3 --bf16
    python bench/text.py --setting 20ng-full --strategies lora,full --epochs 1 --bf16
    python bench/text.py --setting 20ng-full --strategies linear_probe --patience 5 --bf16
        (and --work bench-out/text-full: the recipe's 50 epochs, arm and baseline stopped on validation)
    python bench/text.py --setting 20ng-full --strategies full,lora --bf16   (the recipes' 10 / 30 epochs:
        hours a seed on 2 cores, not yet run; GPU work)
    python bench/text.py --part distill --out bench/results/text.md
    python bench/text.py --part distill --seeds 0,1,2 --bf16 --out bench/results/text_parts.md
    python bench/text.py --part rank --out bench/results/text.md
    python bench/text.py --part adapt --out bench/results/text_adapt.md
    python bench/text.py --part adapt --encoder minilm --out bench/results/text_adapt.md
    python bench/text.py --part adapt --encoder minilm --methods dann,dan,coral --weights 0.1,0.3
        (and --source-size 800 --epochs 2 --no-oracle --bf16 --out bench/results/text_adapt.md; then
        --methods cdan_e and --methods jan,mcd, each with its own --work folder)
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from transferkit import finetune
from transferkit.data import DataSplits, few_shot, load_dataset
from transferkit.engine import TrainConfig, Trainer
from transferkit.engine.predict import examples_per_second
from transferkit.evaluation import evaluate
from transferkit.models import create_model, replace_head

SETTINGS = {
    # four well-separated newsgroups (the text demo's target), first 64 tokens of each post
    "20ng4": {"dataset": "20newsgroups", "shots": 10, "max_length": 64,
              "classes": ["comp.graphics", "rec.sport.hockey", "sci.space", "talk.religion.misc"]},
    # all 20 newsgroups, 10 labels per class, first 128 tokens
    "20ng": {"dataset": "20newsgroups", "shots": 10, "max_length": 128, "classes": None},
    # all 20 newsgroups, every training post
    "20ng-full": {"dataset": "20newsgroups", "shots": None, "max_length": 128, "classes": None},
}


def _pct(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f} %" if len(values) > 1 else f"{mean:.1f} %"


def _precision(bf16: bool) -> dict[str, str]:
    """The TrainConfig entries of ``--bf16``: bfloat16 mixed precision (on the CPU too)."""
    return {"amp_dtype": "bfloat16"} if bf16 else {}


def _splits(setting: dict, seed: int) -> tuple[DataSplits, DataSplits]:
    """(all splits, few-shot splits) of a setting for one seed."""
    data = load_dataset(setting["dataset"], val_fraction=0.1, seed=seed, classes=setting["classes"])
    few = DataSplits(few_shot(data.train, setting["shots"], seed), few_shot(data.val, setting["shots"], seed),
                     data.test)
    return data, few


def distill_part(setting: dict, seeds: list[int], epochs: int, bf16: bool = False) -> str:
    """Teacher (MiniLM linear probe on the few labels) -> small student on the unlabelled rest.

    ``bf16``: teacher and students train (and the teacher's per-step forwards run) in bfloat16 mixed
    precision; the examples/s column is measured in float32 either way."""
    from transferkit.engine import CrossEntropy
    from transferkit.transfer.distill import LayerHints, LogitKD, SelfAttentionKD, Teacher

    length = setting["max_length"]
    student_kwargs = {"hidden": 128, "heads": 4, "layers": 2, "max_length": length}
    rows: dict[str, dict[str, list[float]]] = {}
    params: dict[str, int] = {}
    speed: dict[str, float] = {}
    amp = _precision(bf16)
    for seed in seeds:
        data, few = _splits(setting, seed)
        torch.manual_seed(seed)
        teacher = create_model("minilm", num_classes=data.num_classes, pretrained=True, max_length=length)
        Trainer(teacher, TrainConfig(epochs=50, lr=1e-2, batch_size=16, strategy="linear_probe",
                                     seed=seed, **amp)).fit(few.train, few.val)
        arms = {"teacher: MiniLM linear probe": None}
        arms["student, few labels only"] = lambda t: [CrossEntropy()]
        arms["student, KD on the unlabelled rest"] = lambda t: [LogitKD(t, temperature=2.0)]
        arms["student, KD + layer hints"] = lambda t: [LogitKD(t, temperature=2.0), LayerHints(t, weight=0.1)]
        arms["student, KD + self-attention"] = lambda t: [LogitKD(t, temperature=2.0),
                                                          SelfAttentionKD(t, weight=1.0)]
        for name, make in arms.items():
            start = time.perf_counter()
            if make is None:
                model = teacher
            else:
                torch.manual_seed(seed)
                model = create_model("text_transformer", num_classes=data.num_classes, **student_kwargs)
                unlabelled = make is not arms["student, few labels only"]
                train, val = (data.train, few.val) if unlabelled else (few.train, few.val)
                cfg = TrainConfig(epochs=epochs if unlabelled else 30, lr=1e-3, batch_size=32,
                                  backbone_lr_scale=1.0, seed=seed, **amp)
                Trainer(model, cfg, objectives=make(Teacher(teacher, precompute=True))).fit(train, val)
            metrics = evaluate(model, data.test)
            row = rows.setdefault(name, {"acc": [], "f1": [], "s": []})
            row["acc"].append(metrics.accuracy)
            row["f1"].append(metrics.macro_f1)
            row["s"].append(time.perf_counter() - start)
            params[name] = sum(p.numel() for p in model.parameters())
            speed[name] = examples_per_second(model, data.test)
            print(name, seed, metrics.accuracy, flush=True)
    lines = ["| arm | accuracy | macro-F1 | parameters | examples/s (CPU, batches of 64) | seconds a seed |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {_pct(row['acc'])} | {_pct(row['f1'])} | {params[name]:,} | "
                     f"{speed[name]:,.0f} | {statistics.fmean(row['s']):.0f} |")
    return "\n".join(lines) + "\n"


def rank_part(setting: dict, seeds: list[int]) -> str:
    """LogME (and the other scores) of five text encoders against a linear probe's accuracy, per seed
    (each seed its own few-shot sample, scored examples and probe); the table gives means over seeds and
    Kendall's tau is computed within each seed."""
    from scipy.stats import kendalltau

    from transferkit.selection import rank

    length = setting["max_length"]
    scores = ("logme", "h_score_shrinkage", "knn")
    table: dict[str, dict[str, list[float]]] = {}
    taus: dict[str, list[float]] = {s: [] for s in scores}
    for seed in seeds:
        data, few = _splits(setting, seed)
        n = data.num_classes
        torch.manual_seed(seed)
        trained = create_model("text_transformer", num_classes=n, max_length=length)
        Trainer(trained, TrainConfig(epochs=30, lr=1e-3, batch_size=16, backbone_lr_scale=1.0,
                                     seed=seed)).fit(few.train, few.val)
        minilm = {"num_classes": n, "pretrained": True, "max_length": length}
        candidates = {
            "minilm (mean pooling)": create_model("minilm", **minilm),
            "minilm (CLS pooling)": create_model("minilm", **minilm, pooling="cls"),
            "minilm, random weights": create_model("minilm", num_classes=n, pretrained=False,
                                                   max_length=length),
            "text_transformer, random weights": create_model("text_transformer", num_classes=n,
                                                             max_length=length),
            "text_transformer trained on the few labels": trained,
        }
        result = rank(candidates, few.train, scores=scores)
        probe_acc = {}
        for name, model in candidates.items():
            model = copy.deepcopy(model)
            replace_head(model, n)
            probe = TrainConfig(epochs=50, lr=1e-2, batch_size=16, strategy="linear_probe", seed=seed)
            Trainer(model, probe).fit(few.train, few.val)
            probe_acc[name] = evaluate(model, data.test).accuracy
            print(seed, name, probe_acc[name], flush=True)
        for row in result.rows:
            entry = table.setdefault(row["name"], {k: [] for k in (*scores, "probe")})
            for k in scores:
                entry[k].append(row[k])
            entry["probe"].append(probe_acc[row["name"]])
        names = [r["name"] for r in result.rows]
        for k in scores:
            taus[k].append(kendalltau([r[k] for r in result.rows], [probe_acc[nm] for nm in names])[0])

    def mean(values: list[float], digits: int = 3) -> str:
        text = f"{statistics.fmean(values):.{digits}f}"
        return text + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")

    lines = ["| encoder | LogME | H-score (shrinkage) | k-NN | linear-probe test accuracy |",
             "|---|---|---|---|---|"]
    for name, entry in table.items():
        lines.append(f"| {name} | {mean(entry['logme'])} | {mean(entry['h_score_shrinkage'])} | "
                     f"{mean(entry['knn'])} | {_pct(entry['probe'])} |")
    lines.append("")
    lines.append("Kendall's tau with the linear probe's accuracy, within each seed "
                 f"({', '.join(str(s) for s in seeds)}): "
                 + "; ".join(f"{k} {', '.join(f'{t:+.2f}' for t in v)} (mean {statistics.fmean(v):+.2f})"
                             for k, v in taus.items()) + ".")
    return "\n".join(lines) + "\n"


ADAPT_METHODS = ["dann", "cdan", "cdan_e", "dan", "jan", "coral", "mcd"]


def adapt_part(seeds: list[int], epochs: int, weights: list[float], work: Path, source_size: int,
               encoder: str = "small", methods: list[str] | None = None, oracle: bool = True,
               bf16: bool = False) -> str:
    """tweets:airline -> tweets:apple with every adaptation method; model choice without target labels.

    ``encoder`` "small": every arm starts from a small text transformer trained here on the airline
    tweets; "minilm": every arm starts from the pretrained MiniLM encoder with a new head (the usual
    domain-adaptation setting: a pretrained backbone fine-tuned on the labelled source while adapting).
    ``bf16``: every arm trains in bfloat16 mixed precision (its own work folder).
    """
    import json

    from transferkit.models import save_model
    from transferkit.workflows import adapt

    methods = methods or ADAPT_METHODS
    kwargs = {"hidden": 128, "heads": 4, "layers": 2, "max_length": 48}
    folder = work / "source-airline"
    start = time.perf_counter()
    airline = load_dataset("tweets:airline", val_fraction=0.1, seed=0)
    if encoder == "small" and not (folder / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = create_model("text_transformer", num_classes=airline.num_classes, **kwargs)
        Trainer(model, TrainConfig(epochs=3, lr=1e-3, batch_size=64, backbone_lr_scale=1.0, seed=0)).fit(
            airline.train, airline.val)
        save_model(model, folder)
    source_s = time.perf_counter() - start
    # the adaptation runs read a seeded sample of the airline training tweets (an epoch over all 10,540
    # is ~1 min per arm on 2 cores); the file's own test split (20 %) is not used by adapt
    sample = work / f"airline-{source_size}.jsonl"
    if not sample.is_file():
        work.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(airline.train), generator=g)[:source_size].tolist()
        sample.write_text("".join(json.dumps({"text": airline.train.texts[i],
                                              "label": airline.classes[int(airline.train.y[i])]}) + "\n"
                                  for i in pick))
    out = work / f"airline-to-apple-{encoder}{'-bf16' if bf16 else ''}"
    # the small model trains whole at 3e-4 in batches of 64; MiniLM's encoder at 1e-4 (BERT-style
    # fine-tuning, at the high end for a few dozen steps), the new head and the adaptation objectives' own
    # layers at 2e-3, in batches of 32 (twice the steps for the same compute)
    train = ({"lr": 3e-4, "backbone_lr_scale": 1.0, "batch_size": 64} if encoder == "small"
             else {"lr": 2e-3, "backbone_lr_scale": 0.05, "batch_size": 32})
    result = adapt({
        "name": "airline-to-apple", "out": str(out),
        "source_data": {"dataset": str(sample)}, "target_data": {"dataset": "tweets:apple"},
        "model": {"source": str(folder) if encoder == "small" else "minilm"},
        "methods": [{"name": m} for m in methods], "weights": weights, "seeds": seeds,
        "select": "dev", "resume": True, "oracle": oracle,
        "train": {"epochs": epochs, "scheduler": "none", **train, **_precision(bf16)},
    })
    choice = (out / "report.html").read_text().split("Model choice without target labels</h2>\n<pre>")[1]
    choice = choice.split("</pre>")[0].replace("&amp;", "&").replace("&#x27;", "'").replace("&gt;", ">")
    test = load_dataset("tweets:apple", val_fraction=0.1, seed=0).test
    counts = test.class_counts().tolist()
    spread = ", ".join(f"{c} {n}" for c, n in zip(test.classes, counts, strict=True))
    if encoder == "small":
        what = (f"Source model: text_transformer {kwargs} trained 3 epochs on the {len(airline.train):,} "
                f"airline training tweets ({source_s:.0f} s here; 0 s: cached in {folder}). Every arm: "
                f"{epochs} epochs from it")
        rates = f"batch {train['batch_size']}, AdamW lr {train['lr']:g}"
    else:
        what = ("Source model: MiniLM (all-MiniLM-L6-v2, pretrained, mean pooling) with a new 3-way head. "
                f"Every arm: {epochs} epochs from it")
        rates = (f"batch {train['batch_size']}, AdamW lr {train['lr']:g} (head, adaptation layers), "
                 f"{train['lr'] * train['backbone_lr_scale']:g} (encoder)")
    return (
        f"{what} over a seeded sample of {source_size:,} of the airline training tweets ({sample.name}, "
        f"split 80/20 by the file loader: its training part is the labelled source), {rates}, "
        f"{'bfloat16 mixed precision, ' if bf16 else ''}methods {', '.join(methods)}, "
        f"trade-off weights {weights}. Apple test tweets: {len(test)} "
        f"({spread}; always predicting the largest class scores {100 * max(counts) / len(test):.1f} %).\n\n"
        f"### Model choice (target test accuracy, %)\n\n```\n{choice}\n```\n\n"
        f"### Every arm, checkpoint chosen by DEV\n\n```\n{result.table()}\n```\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("finetune", "distill", "rank", "adapt"), default="finetune")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="20ng4")
    parser.add_argument("--strategies", default="linear_probe,full,lora")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--patience", type=int, default=None,
                        help="finetune parts: stop an arm (and its baseline) when validation accuracy "
                             "has not improved for this many epochs")
    parser.add_argument("--weights", default="0.3,1", help="--part adapt: trade-off weights")
    parser.add_argument("--source-size", type=int, default=3750, help="--part adapt: airline tweets sampled")
    parser.add_argument("--encoder", choices=("small", "minilm"), default="small",
                        help="--part adapt: the model every arm starts from")
    parser.add_argument("--methods", default=",".join(ADAPT_METHODS), help="--part adapt: methods compared")
    parser.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=True,
                        help="--part adapt: train the target oracle (on the target's labels) too")
    parser.add_argument("--work", type=Path, default=Path("bench-out/text"))
    parser.add_argument("--bf16", action="store_true",
                        help="finetune, distill and adapt parts: bfloat16 mixed precision (on the CPU too; "
                             "amp_dtype=bfloat16)")
    parser.add_argument("--resume", action="store_true",
                        help="finetune parts: continue the runs in --work (finished seeds are kept)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/text.md"))
    args = parser.parse_args()
    s = SETTINGS[args.setting]
    if args.patience and args.part != "finetune":
        parser.error("--patience applies to the finetune part only; drop it or use --part finetune")
    # the flags after each part's own that reproduce the run (a non-default work folder among them)
    tail = (f"{f' --epochs {args.epochs}' if args.epochs else ''}"
            f"{f' --patience {args.patience}' if args.patience else ''}{' --bf16' if args.bf16 else ''}"
            f"{'' if args.work == parser.get_default('work') else f' --work {args.work}'}")
    if args.part != "finetune":
        start = time.perf_counter()
        seeds = [int(x) for x in args.seeds.split(",")]
        if args.part == "adapt":
            body = adapt_part(seeds, args.epochs or 3, [float(w) for w in args.weights.split(",")],
                              args.work / "adapt", args.source_size, args.encoder, args.methods.split(","),
                              args.oracle, args.bf16)
            title = f"adapt ({args.encoder} encoder): tweets:airline -> tweets:apple"
            flags = (f"--encoder {args.encoder} --methods {args.methods} --seeds {args.seeds} "
                     f"--weights {args.weights} --source-size {args.source_size}"
                     f"{'' if args.oracle else ' --no-oracle'}")
        else:
            body = (distill_part(s, seeds, args.epochs or 10, args.bf16) if args.part == "distill"
                    else rank_part(s, seeds))
            classes = ", ".join(s["classes"]) if s["classes"] else "all 20"
            title = (f"{args.part}: {s['dataset']} ({classes}), {s['shots']} labels per class, first "
                     f"{s['max_length']} tokens")
            flags = f"--setting {args.setting} --seeds {args.seeds}"
        head = (f"## {title}, seeds {args.seeds}\n\n"
                f"`python bench/text.py --part {args.part} {flags}{tail}` on {os.cpu_count()} cores, "
                f"{date.today().isoformat()}, {(time.perf_counter() - start) / 60:.1f} min in all.\n\n")
        print(head + body, flush=True)
        with args.out.open("a") as fh:
            fh.write(head + body + "\n")
        return
    shots = f"{s['shots']} labels per class" if s["shots"] else "all training examples"
    classes = ", ".join(s["classes"]) if s["classes"] else "all 20"
    header = (
        f"## {args.setting}: {s['dataset']} ({classes}), {shots}, first {s['max_length']} tokens, "
        f"seeds {args.seeds}\n\n"
        f"`python bench/text.py --setting {args.setting} --strategies {args.strategies}{tail}` "
        f"on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), {date.today().isoformat()}. Training settings: "
        "the recipe the workflow picks (few-shot / linear-probe / lora); baseline: text_transformer with "
        "MiniLM's tokenizer, new weights; TF-IDF + logistic regression on the same examples.\n\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(header)
    for strategy in args.strategies.split(","):  # each strategy's table is kept as soon as it is done
        start = time.perf_counter()
        data = {"dataset": s["dataset"], "shots": s["shots"]}
        if s["classes"]:
            data["classes"] = s["classes"]
        train = {"strategy": strategy, **({"epochs": args.epochs} if args.epochs else {}),
                 **({"patience": args.patience} if args.patience else {}), **_precision(args.bf16)}
        cfg = {
            "name": strategy,
            "data": data,
            "model": {"source": "minilm", "kwargs": {"max_length": s["max_length"]}},
            "train": train,
            "seeds": [int(x) for x in args.seeds.split(",")],
            "out": str(args.work / args.setting / strategy),
            **({"resume": True} if args.resume else {"overwrite": True}),
        }
        result = finetune(cfg)
        minutes = (time.perf_counter() - start) / 60
        block = (f"### {args.setting}, strategy {strategy} ({minutes:.1f} min in all)\n\n```\n"
                 f"{result.table()}\n```\n\n")
        print(block, flush=True)
        with args.out.open("a") as fh:
            fh.write(block)


if __name__ == "__main__":
    main()
