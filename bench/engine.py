"""The training engine against hand-written PyTorch loops, measured side by side in one run.

Each comparison runs its arms interleaved (A B, B A, A B, ...; three arms rotate), ``--reps`` times
each, with ``torch.set_num_threads`` fixed, the same model, optimiser, seed and batches; the table
gives the medians and the ratio of the medians. Every arm is timed from the call that starts
training to its return, so the engine's per-fit set-up (checks, shape probe, optimiser, divergence
guard) counts against it; one untimed run of every arm first takes the one-time imports and oneDNN
warm-up out of the numbers. Wall time is the measure; the main process's CPU time (all its threads,
not its DataLoader workers) is given beside it, as it is less disturbed by other processes.

1. ``inmem``: ``Trainer.fit`` on an in-memory ``TensorDataset`` (``--n`` Fashion-MNIST images,
   ``small_cnn``, batch 64, full fine-tune, AdamW, no validation, scheduler none, CPU, no AMP) vs a
   hand-written loop over the engine's own batches (``torch.randperm`` with the generator seeded by
   ``epoch_seed(seed, epoch)``, ``batch_slices``), the same AdamW parameter groups
   (``build_param_groups`` / ``build_optimizer``) and ``model(x) -> F.cross_entropy -> backward ->
   step``. Both end with identical weights (checked, reported). Target: >= 0.97.
2. ``loader``: the same images written as 28x28 PNGs in class folders, read by
   ``transferkit.data.folder.ImageFolder`` (a minimal PIL dataset here when that module is missing);
   ``Trainer.fit`` with ``num_workers=2`` vs ``DataLoader(ds, batch_size=64, shuffle=True,
   num_workers=2, persistent_workers=True)`` and the same step (worker start-up and shutdown inside
   the timed call on both sides). Target: >= 0.9.
3. ``probe``: ``Trainer.fit`` with ``strategy="linear_probe"`` (cached features, the default) for
   ``--probe-epochs`` epochs vs ONE ``predict_features`` pass of the backbone over the same data
   (same model, ``eval_batch_size`` and memory format), and a hand-written cached probe (that one
   pass, then the head trained on the cached features over the engine's batches with AdamW on the
   head's parameters: the engine's arithmetic, checked). Rows: EfficientNet-Lite0 with ImageNet
   weights at the demo's probe settings (``--probe-size`` px, channels-last, eval batch 64;
   ``--probe-n`` images, as this backbone is slow on 2 cores); the demo's few-shot probe arm (100
   training + 100 validation images, batch 32, ``--fewshot-epochs`` epochs; the pass covers both
   sets, the hand probe validates every epoch and keeps the best head); ``small_cnn`` on ``--n``
   images (a cheap backbone, where the per-step cost of training the head shows). Target: fit <=
   1.2x the pass.
4. ``ddp``: the engine in 2 gloo CPU processes under ``torchrun --standalone`` (1 torch thread each)
   vs 1 process with 1 thread (``--ddp-2threads`` adds 1 process with 2 threads), the same global
   batch of 64 over ``--ddp-n`` images; every run a fresh process (or pair) with its own untimed
   warm-up fit; examples/s from rank 0's fit wall time, and rank 0's seconds inside the engine's
   collectives (``distributed.average_gradients`` / ``mean_across``, timed by wrapping them here).
5. ``cold``: the first call in a fresh process (what a CLI run pays): the cached small_cnn probe fit
   (``Trainer(...)`` construction timed apart) vs the first backbone pass vs a hand-written cached
   probe, ``--cold-n`` images.

Run by hand (not a test; 8-10 minutes on 2 busy cores):
    .venv/bin/python bench/engine.py --out bench/results/engine.md
A results file's text after the line ``<!-- hand-written below -->`` is kept when it is rewritten.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

# transferkit is imported inside the functions, so `--ddp-worker` children import only what they use

KEEP = "<!-- hand-written below -->"


# ------------------------------------------------------------------------------------ helpers
def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Clock:
    """Wall and CPU seconds of a block (this process's CPU time, every thread; not child processes)."""

    def __enter__(self) -> Clock:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def interleave(arms: dict[str, Callable[[], Clock]], reps: int, label: str) -> dict[str, dict]:
    """Every arm once per repeat, the order rotated each repeat (A B, B A, ... / A B C, B C A, ...)."""
    names = list(arms)
    got: dict[str, list[Clock]] = {k: [] for k in names}
    for r in range(reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            got[name].append(arms[name]())
        say(f"  {label} rep {r + 1}: " + ", ".join(
            f"{k} {got[k][-1].wall:.2f} s (cpu {got[k][-1].cpu:.2f})" for k in names) + f" (load {load()})")
    return {k: {"wall": [c.wall for c in v], "cpu": [c.cpu for c in v],
                "med": statistics.median(c.wall for c in v), "cpu_med": statistics.median(c.cpu for c in v)}
            for k, v in got.items()}


def fashion_subset(n: int):
    """The first ``n`` Fashion-MNIST training images (x in [0, 1], (n, 1, 28, 28)) as a TensorDataset."""
    from transferkit.data.base import TensorDataset
    from transferkit.data.builtin import load_fashion_mnist

    train, _ = load_fashion_mnist()
    return TensorDataset(train.x[:n].clone(), train.y[:n].clone(), list(train.classes), "fashion-mnist")


def small_cnn_state(seed: int = 0) -> tuple[dict, Callable[[], torch.nn.Module]]:
    from transferkit.models import create_model

    torch.manual_seed(seed)
    state = copy.deepcopy(create_model("small_cnn", num_classes=10).state_dict())

    def fresh() -> torch.nn.Module:
        model = create_model("small_cnn", num_classes=10)
        model.load_state_dict(state)
        return model

    return state, fresh


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in
               zip(a.state_dict().values(), b.state_dict().values(), strict=True) if p.is_floating_point())


def hand_step(model, opt, x, y) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def timed(fn: Callable[[], object]) -> Clock:
    with Clock() as c:
        fn()
    return c


# ------------------------------------------------------------------------ 1. in-memory path
def bench_inmem(args, ds) -> dict:
    from transferkit.data.base import TensorDataset
    from transferkit.engine import TrainConfig, Trainer
    from transferkit.engine.batches import batch_slices, epoch_seed
    from transferkit.engine.strategies import build_optimizer, build_param_groups

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, strategy="full", scheduler="none",
                      device="cpu", amp=False, seed=0)
    _, fresh = small_cnn_state()
    slices = batch_slices(len(ds), cfg.batch_size)

    def hand(model, data=ds) -> None:
        torch.manual_seed(cfg.seed)
        opt = build_optimizer(build_param_groups(model, cfg), cfg)
        model.train()
        x_all, y_all = data.x, data.y
        for epoch in range(cfg.epochs):
            gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
            order = torch.randperm(len(data), generator=gen)
            for sl in batch_slices(len(data), cfg.batch_size):
                idx = order[sl]
                hand_step(model, opt, x_all[idx], y_all[idx])
        model.eval()

    # warm-up on the first 10 batches, and the check that both sides train alike
    m_e, m_h = fresh(), fresh()
    Trainer(m_e, cfg).fit(TensorDataset(ds.x[:640], ds.y[:640]))
    hand(m_h, TensorDataset(ds.x[:640], ds.y[:640]))
    diff = max_diff(m_e, m_h)
    say(f"inmem: warm-up done; max |engine - hand| weight difference {diff:.3g}")
    res = interleave({"engine": lambda: timed(lambda: Trainer(fresh(), cfg).fit(ds)),
                      "hand": lambda: timed(lambda: hand(fresh()))}, args.reps, "inmem")
    return {"arms": res, "steps": cfg.epochs * len(slices), "weight_diff": diff}


# ----------------------------------------------------------------------- 2. DataLoader path
class PngFolder(torch.utils.data.Dataset):
    """Fallback when transferkit.data.folder is missing: PNGs in class folders, decoded by PIL."""

    def __init__(self, root: Path) -> None:
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.files = [str(f) for k in self.classes for f in sorted((root / k).glob("*.png"))]
        self.targets = torch.tensor([c for c, k in enumerate(self.classes) for _ in (root / k).glob("*.png")])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import numpy as np
        from PIL import Image

        with Image.open(self.files[i]) as im:
            arr = np.array(im.convert("L"), dtype=np.uint8)
        return torch.from_numpy(arr).unsqueeze(0).float() / 255.0, self.targets[i]


def write_pngs(ds, root: Path) -> float:
    import numpy as np
    from PIL import Image

    t0 = time.perf_counter()
    pix = (ds.x[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    for k in range(10):
        (root / f"{k}").mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(pix, ds.y.tolist(), strict=True)):
        Image.fromarray(np.ascontiguousarray(img), mode="L").save(root / f"{label}" / f"{i:05d}.png")
    return time.perf_counter() - t0


def bench_loader(args, ds, tmp: Path) -> dict:
    from torch.utils.data import DataLoader

    from transferkit.engine import TrainConfig, Trainer
    from transferkit.engine.batches import batch_slices
    from transferkit.engine.strategies import build_optimizer, build_param_groups

    torch.set_num_threads(args.loader_threads)
    root = tmp / "png"
    write_s = write_pngs(ds, root)
    try:
        from transferkit.data.folder import ImageFolder

        folder, kind = ImageFolder(root, name="fmnist-png"), "`transferkit.data.folder.ImageFolder`"
    except ImportError:
        folder, kind = PngFolder(root), "the bench's PngFolder (transferkit.data.folder is missing)"
    say(f"loader: wrote {len(folder)} PNGs in {write_s:.1f} s; dataset {kind}")
    workers = args.workers
    cfg = TrainConfig(epochs=args.loader_epochs, batch_size=64, strategy="full", scheduler="none",
                      device="cpu", amp=False, seed=0, num_workers=workers)
    _, fresh = small_cnn_state()

    def hand(model, folder=folder) -> None:
        torch.manual_seed(cfg.seed)
        opt = build_optimizer(build_param_groups(model, cfg), cfg)
        loader = DataLoader(folder, batch_size=64, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
        model.train()
        for _ in range(cfg.epochs):
            for x, y in loader:
                hand_step(model, opt, x, y)
        model.eval()
        # the loader and its persistent workers go away on return, as the engine's do

    warm = torch.utils.data.Subset(folder, range(min(640, len(folder))))  # worker start-up, imports
    Trainer(fresh(), cfg).fit(warm)
    hand(fresh(), warm)
    res = interleave({"engine": lambda: timed(lambda: Trainer(fresh(), cfg).fit(folder)),
                      "hand": lambda: timed(lambda: hand(fresh()))}, args.loader_reps, "loader")
    return {"arms": res, "steps": cfg.epochs * len(batch_slices(len(folder), 64)), "dataset": kind,
            "write_s": write_s, "n": len(folder)}


# ------------------------------------------------------------------------ 3. cached probe
def bench_probe(args, ds) -> list[dict]:
    from transferkit.data.base import TensorDataset
    from transferkit.models import create_model

    torch.set_num_threads(args.threads)
    arms = []
    if args.probe_n > 0:
        try:
            effnet = create_model("efficientnet_lite0", num_classes=10, pretrained=True,
                                  image_size=args.probe_size)
            n = args.probe_n
            eff = dict(eval_batch_size=64, channels_last=True)
            arms.append((f"efficientnet_lite0 (ImageNet), {args.probe_size} px, channels-last, eval batch 64",
                         effnet, TensorDataset(ds.x[:n], ds.y[:n], list(ds.classes), "fm"), eff, None))
            if args.fewshot_epochs > 0:  # the demo's probe arm: 10 shots per class, validation every epoch
                tr = TensorDataset(ds.x[:100], ds.y[:100], list(ds.classes), "fm-train")
                va = TensorDataset(ds.x[100:200], ds.y[100:200], list(ds.classes), "fm-val")
                arms.append((f"efficientnet_lite0 (ImageNet), {args.probe_size} px, the demo's few-shot "
                             "probe: 100 train + 100 validation images, batch 32",
                             effnet, tr, {**eff, "batch_size": 32, "epochs": args.fewshot_epochs}, va))
        except Exception as exc:  # noqa: BLE001 -- its packages may be missing; the small CNN row still runs
            say(f"probe: efficientnet_lite0 not available ({type(exc).__name__}: {exc}); small_cnn only")
    torch.manual_seed(0)
    arms.append(("small_cnn, eval batch 512", create_model("small_cnn", num_classes=10), ds, {}, None))
    return [probe_row(args, *arm) for arm in arms]


def probe_row(args, label: str, model: torch.nn.Module, data, extra: dict, val=None) -> dict:
    """One backbone: fit vs one pass (over train and val) vs the hand-written cached probe, interleaved."""
    from transferkit.data.base import TensorDataset
    from transferkit.engine import TrainConfig, Trainer
    from transferkit.engine.batches import batch_slices, epoch_seed
    from transferkit.engine.predict import predict_features

    cfg = TrainConfig(**{"epochs": args.probe_epochs, "batch_size": 64, "strategy": "linear_probe",
                         "lr": 1e-2, "scheduler": "none", "device": "cpu", "amp": False, "seed": 0, **extra})
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = copy.deepcopy(model.state_dict())
    slices = batch_slices(len(data), cfg.batch_size)
    cpu = torch.device("cpu")
    epochs_s: list[float] = []  # the fit's epoch seconds (History), per timed run
    hand_epochs_s: list[float] = []  # the hand probe's head phase, per timed run

    def one_pass(data=data, val=val) -> None:
        for part in (data, val):
            if part is not None:
                predict_features(model, part, cfg.eval_batch_size, cpu)

    def fit(data=data, val=val) -> None:
        model.load_state_dict(state)
        hist = Trainer(model, cfg).fit(data, val)
        epochs_s.append(sum(r["seconds"] for r in hist.epochs))

    def hand_probe(data=data, val=val) -> None:
        slices = batch_slices(len(data), cfg.batch_size)
        model.load_state_dict(state)
        torch.manual_seed(cfg.seed)
        feats = predict_features(model, data, cfg.eval_batch_size, cpu)
        val_feats = None if val is None else predict_features(model, val, cfg.eval_batch_size, cpu)
        head, y_all = model.head, data.y
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        t0 = time.perf_counter()
        best, best_state = -1.0, None
        for epoch in range(cfg.epochs):
            head.train()
            gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
            order = torch.randperm(len(data), generator=gen)
            for sl in slices:
                idx = order[sl]
                hand_step(head, opt, feats[idx], y_all[idx])
            if val_feats is not None:  # validation accuracy every epoch; keep the best epoch's head
                head.eval()
                with torch.no_grad():
                    acc = float((head(val_feats).argmax(1) == val.y).float().mean())
                if acc > best:
                    best, best_state = acc, copy.deepcopy(head.state_dict())
        if best_state is not None:
            head.load_state_dict(best_state)
        model.eval()
        hand_epochs_s.append(time.perf_counter() - t0)

    # warm-up (imports, oneDNN) and the check that the hand probe trains the engine's head, on the
    # first 128 examples (and validation examples)
    small = TensorDataset(data.x[:128], data.y[:128])
    small_val = None if val is None else TensorDataset(val.x[:128], val.y[:128])
    fit(small, small_val)
    engine_head = copy.deepcopy(model.head.state_dict())
    hand_probe(small, small_val)
    diff = max(float((engine_head[k] - v).abs().max()) for k, v in model.head.state_dict().items())
    one_pass(small, small_val)
    epochs_s.clear(), hand_epochs_s.clear()
    short = label.split(",")[0]
    say(f"probe {short}: warm-up done; max |engine - hand| head weight difference {diff:.3g}")
    res = interleave({"fit": lambda: timed(fit), "pass": lambda: timed(one_pass),
                      "hand": lambda: timed(hand_probe)}, args.probe_reps, f"probe {short}")
    return {"label": label, "n": len(data) + (0 if val is None else len(val)), "epochs": cfg.epochs,
            "steps": cfg.epochs * len(slices), "arms": res,
            "head_diff": diff, "epochs_s": epochs_s, "hand_epochs_s": hand_epochs_s}


# ------------------------------------------------------------------------------- 4. ddp
def ddp_worker(args) -> None:
    """One rank (or the single process): fit ``args.epochs`` epochs on the saved data, print JSON."""
    torch.set_num_threads(args.threads)
    from transferkit.data.base import TensorDataset
    from transferkit.engine import TrainConfig, Trainer
    from transferkit.models import create_model

    blob = torch.load(args.data)
    ds = TensorDataset(blob["x"], blob["y"])
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, strategy="full", scheduler="none", device="cpu",
                      amp=False, seed=0)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10)
    out: dict = {"world": int(os.environ.get("WORLD_SIZE", "1")), "threads": torch.get_num_threads()}
    from transferkit.engine import distributed

    comm = {"s": 0.0, "calls": 0}

    def timed_comm(fn):  # bench-side timing of the engine's collectives (looked up at fit time)
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                comm["s"] += time.perf_counter() - t
                comm["calls"] += 1
        return wrapper

    distributed.average_gradients = timed_comm(distributed.average_gradients)
    distributed.mean_across = timed_comm(distributed.mean_across)
    try:
        # warm-up: the engine's imports, the process group and oneDNN on 4 batches, not counted
        Trainer(copy.deepcopy(model), cfg.model_copy(update={"epochs": 1})).fit(
            TensorDataset(ds.x[:256], ds.y[:256]))
        comm.update(s=0.0, calls=0)
        with Clock() as c:
            hist = Trainer(model, cfg).fit(ds)
        out.update(fit_s=c.wall, cpu_s=c.cpu, comm_s=comm["s"], comm_calls=comm["calls"],
                   loss=hist.epochs[-1]["train_loss"], acc=hist.epochs[-1]["train_accuracy"])
    except Exception as exc:  # noqa: BLE001 -- reported, not fixed here
        out["error"] = f"{type(exc).__name__}: {exc}"
    rank = int(os.environ.get("RANK", "0"))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


def bench_ddp(args, ds, tmp: Path) -> dict:
    data = tmp / "ddp.pt"
    n = min(args.ddp_n, len(ds))
    torch.save({"x": ds.x[:n].clone(), "y": ds.y[:n].clone()}, data)
    me = str(Path(__file__).resolve())
    common = ["--ddp-worker", "--data", str(data), "--epochs", str(args.epochs)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    arms = {
        "2 processes x 1 thread (torchrun, gloo)": [sys.executable, "-m", "torch.distributed.run",
                                                    "--standalone", "--nproc_per_node", "2", me, *common,
                                                    "--threads", "1"],
        "1 process x 1 thread": [sys.executable, me, *common, "--threads", "1"],
    }
    if args.ddp_2threads:
        arms["1 process x 2 threads"] = [sys.executable, me, *common, "--threads", "2"]
    names = list(arms)
    results: dict[str, list[dict]] = {k: [] for k in names}
    for r in range(args.ddp_reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            proc = subprocess.run(arms[name], capture_output=True, text=True, env=env, timeout=300)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if lines:
                res = json.loads(lines[-1][len("RESULT "):])
            else:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
                res = {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
            if proc.returncode != 0 and "error" not in res:
                res["error"] = f"exit {proc.returncode}"
            res["process_s"] = time.perf_counter() - t0
            results[name].append(res)
            msg = res.get("error") or f"fit {res['fit_s']:.2f} s, loss {res['loss']:.4f}"
            say(f"  ddp rep {r + 1} {name}: {msg} (whole run {res['process_s']:.1f} s, load {load()})")
    return {"arms": results, "n": n, "epochs": args.epochs}


# ------------------------------------------------------------------------- 5. cold start
def cold_worker(args) -> None:
    """A fresh process: imports, then the FIRST probe fit (or the first backbone pass); print JSON."""
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    from transferkit.data.base import TensorDataset
    from transferkit.engine import TrainConfig, Trainer
    from transferkit.engine.predict import predict_features
    from transferkit.models import create_model

    out: dict = {"import_s": time.perf_counter() - t0}
    blob = torch.load(args.data)
    ds = TensorDataset(blob["x"], blob["y"])
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10)
    cfg = TrainConfig(epochs=args.probe_epochs, batch_size=64, strategy="linear_probe", lr=1e-2,
                      scheduler="none", device="cpu", amp=False, seed=0)
    if args.cold_worker == "pass":
        t0 = time.perf_counter()
        predict_features(model, ds, cfg.eval_batch_size, torch.device("cpu"))
        out["s"] = time.perf_counter() - t0
    elif args.cold_worker == "hand":
        from transferkit.engine.batches import batch_slices, epoch_seed

        t0 = time.perf_counter()
        feats = predict_features(model, ds, cfg.eval_batch_size, torch.device("cpu"))
        opt = torch.optim.AdamW(model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        for epoch in range(cfg.epochs):
            gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
            order = torch.randperm(len(ds), generator=gen)
            for sl in batch_slices(len(ds), cfg.batch_size):
                idx = order[sl]
                hand_step(model.head, opt, feats[idx], ds.y[idx])
        out["s"] = time.perf_counter() - t0
    else:
        sk = "sklearn" in sys.modules
        t0 = time.perf_counter()
        trainer = Trainer(model, cfg)
        out["init_s"] = time.perf_counter() - t0
        out["sklearn_by_init"] = not sk and "sklearn" in sys.modules
        trainer.fit(ds)
        out["s"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(out), flush=True)


def bench_cold(args, ds, tmp: Path) -> dict:
    data = tmp / "cold.pt"
    n = min(args.cold_n, len(ds))
    torch.save({"x": ds.x[:n].clone(), "y": ds.y[:n].clone()}, data)
    me = str(Path(__file__).resolve())
    runs: dict[str, list[dict]] = {"fit": [], "pass": [], "hand": []}
    kinds = list(runs)
    for r in range(args.cold_reps):
        shift = r % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            cmd = [sys.executable, me, "--cold-worker", kind, "--data", str(data),
                   "--threads", str(args.threads), "--probe-epochs", str(args.probe_epochs)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if not lines:
                raise RuntimeError(f"cold {kind} failed: {proc.stderr[-2000:]}")
            runs[kind].append(json.loads(lines[-1][len("RESULT "):]))
        say(f"  cold rep {r + 1}: first fit {runs['fit'][-1]['s']:.2f} s (Trainer() "
            f"{runs['fit'][-1]['init_s']:.2f} s), first pass {runs['pass'][-1]['s']:.2f} s, hand-written "
            f"probe {runs['hand'][-1]['s']:.2f} s (load {load()})")
    return {"runs": runs, "n": n}


# ------------------------------------------------------------------------------ report
def fmt_list(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def report(args, out: dict, total_s: float, started: str, loads: list[str]) -> str:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    cmd = " ".join(["python", "bench/engine.py", *sys.argv[1:]])
    lines = [
        "# Training engine vs hand-written loops (side by side)",
        "",
        f"- command: `{cmd}`",
        f"- date: {started}; machine: `nproc` {nproc}, {platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}",
        f"- load (`uptime` 1-/5-minute averages) at the start of each section and the end: "
        f"{', '.join(loads)}; other engineers' test runs shared the 2 cores, hence the interleaving "
        "and the medians",
        f"- torch threads: {args.threads} (in-memory, probe); {args.loader_threads} in the main process of "
        f"the DataLoader comparison, beside its {args.workers} workers; repeats of every arm: {args.reps} "
        f"(DataLoader {args.loader_reps}, probe {args.probe_reps}, ddp {args.ddp_reps}, "
        f"cold {args.cold_reps}), after one untimed run of "
        f"each; whole script {total_s:.0f} s",
        "- ratio = reference median s / engine median s (= engine steps/s / reference steps/s); "
        "cpu ratio: the same from the main process's CPU seconds",
        "",
        "| comparison | steps | engine s: median (each repeat) | reference s: median (each repeat) | "
        "engine steps/s | reference steps/s | ratio | cpu ratio | median of per-repeat ratios; ratio of the "
        "fastest runs | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, title, target in (("inmem", f"1. in-memory `Trainer.fit` vs hand loop ({args.n:,} images, "
                                          f"{args.epochs} epoch(s), threads {args.threads})", 0.97),
                               ("loader", f"2. ImageFolder PNGs, `Trainer.fit` `num_workers={args.workers}` "
                                          f"vs hand `DataLoader` ({args.loader_epochs} epoch(s))", 0.9)):
        if key not in out:
            continue
        r = out[key]
        e, h = r["arms"]["engine"], r["arms"]["hand"]
        ratio, cpu_ratio = h["med"] / e["med"], h["cpu_med"] / e["cpu_med"]
        pairs = statistics.median(b / a for a, b in zip(e["wall"], h["wall"], strict=True))
        best = min(h["wall"]) / min(e["wall"])
        lines.append(
            f"| {title} | {r['steps']} | {e['med']:.2f} ({fmt_list(e['wall'])}) | {h['med']:.2f} "
            f"({fmt_list(h['wall'])}) | {r['steps'] / e['med']:.2f} | {r['steps'] / h['med']:.2f} | "
            f"**{ratio:.3f}** | {cpu_ratio:.3f} | {pairs:.3f}; {best:.3f} | >= {target} | "
            f"{'yes' if ratio >= target else '**no**'} |")
    if out.get("probe"):
        lines += [
            "",
            "## 3. Cached linear probe (AdamW lr 1e-2, scheduler none) vs one backbone pass over the data",
            "",
            "fit = `Trainer(model, TrainConfig(strategy='linear_probe', ...)).fit(data)` (features cached: "
            "one pass, then the head); pass = one `predict_features` over the same data; hand = a "
            "hand-written cached probe (that pass + the head trained on the cached features, same batches); "
            "head-training s = the fit's epoch seconds (its `History`) and the hand loop's head phase; "
            "fit - pass - head-training = the fit's set-up (checks, optimiser, guard).",
            "",
            "| backbone | images | epochs | steps | pass s: median (each) | fit s: median (each) | "
            "hand s: median (each) | **fit / pass** | hand / pass | fit / hand | cpu fit / pass | "
            "head training s: engine, hand (ms/step) | target | met |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in out["probe"]:
            p, f, h = r["arms"]["pass"], r["arms"]["fit"], r["arms"]["hand"]
            ratio = f["med"] / p["med"]
            ee, he = statistics.median(r["epochs_s"]), statistics.median(r["hand_epochs_s"])
            lines.append(
                f"| {r['label']} | {r['n']:,} | {r['epochs']} | {r['steps']} | "
                f"{p['med']:.2f} ({fmt_list(p['wall'])}) | "
                f"{f['med']:.2f} ({fmt_list(f['wall'])}) | {h['med']:.2f} ({fmt_list(h['wall'])}) | "
                f"**{ratio:.3f}** | {h['med'] / p['med']:.3f} | {f['med'] / h['med']:.3f} | "
                f"{f['cpu_med'] / p['cpu_med']:.3f} | {ee:.2f} ({1000 * ee / r['steps']:.2f}), {he:.2f} "
                f"({1000 * he / r['steps']:.2f}) | <= 1.2 | {'yes' if ratio <= 1.2 else '**no**'} |")
    if "ddp" in out:
        d = out["ddp"]
        n_ex = d["n"] * d["epochs"]
        lines += ["", f"## 4. Data-parallel throughput: `Trainer.fit`, small_cnn, {d['n']:,} images x "
                      f"{d['epochs']} epoch(s), global batch 64", "",
                  "| arm | fit s: median (each) | examples/s | vs 1 process x 1 thread | rank 0 CPU s | "
                  "rank 0 in collectives s (calls) | whole run s (start-up, warm-up) | "
                  "final train loss, accuracy |",
                  "|---|---|---|---|---|---|---|---|"]
        ok = {k: [x for x in v if "error" not in x] for k, v in d["arms"].items()}
        base_runs = ok.get("1 process x 1 thread") or []
        base = statistics.median(x["fit_s"] for x in base_runs) if base_runs else None
        for name, runs in d["arms"].items():
            good = ok[name]
            if not good:
                err = runs[0].get("error", "?")[:600]
                lines.append(f"| {name} | failed: `{err}` | - | - | - | - | - | - |")
                continue
            s = statistics.median(x["fit_s"] for x in good)
            rel = f"{base / s:.2f}x" if base else "-"
            whole = statistics.median(x["process_s"] for x in good)
            cpu = statistics.median(x["cpu_s"] for x in good)
            comm = statistics.median(x["comm_s"] for x in good)
            calls = good[-1]["comm_calls"]
            lines.append(f"| {name} | {s:.2f} ({fmt_list([x['fit_s'] for x in good])}) | {n_ex / s:,.0f} | "
                         f"**{rel}** | {cpu:.2f} | {comm:.2f} ({calls}) | {whole:.1f} | "
                         f"{good[-1]['loss']:.4f}, {good[-1]['acc']:.3f} |")
            if len(good) < len(runs):
                lines.append(f"| {name}: {len(runs) - len(good)} failed run(s) | "
                             f"`{[x for x in runs if 'error' in x][0]['error'][:600]}` | | | | | | |")
    if "cold" in out:
        c = out["cold"]
        fit = statistics.median(x["s"] for x in c["runs"]["fit"])
        one = statistics.median(x["s"] for x in c["runs"]["pass"])
        hand = statistics.median(x["s"] for x in c["runs"]["hand"])
        init = statistics.median(x["init_s"] for x in c["runs"]["fit"])
        imp = statistics.median(x["import_s"] for v in c["runs"].values() for x in v)
        sk = all(x["sklearn_by_init"] for x in c["runs"]["fit"])
        each = {k: fmt_list([x["s"] for x in v]) for k, v in c["runs"].items()}
        inits = fmt_list([x["init_s"] for x in c["runs"]["fit"]])
        lines += ["", "## 5. Cold start: the first call in a fresh process "
                      f"(small_cnn probe, {c['n']:,} images, {args.probe_epochs} epochs)", "",
                  "| first call | s: median (each) | of which `Trainer(...)` construction | "
                  "ratio to the first pass |",
                  "|---|---|---|---|",
                  f"| `predict_features` (one pass) | {one:.2f} ({each['pass']}) | - | 1 |",
                  f"| `Trainer(...)` + `.fit` (cached probe) | {fit:.2f} ({each['fit']}) | "
                  f"{init:.2f} ({inits}) | **{fit / one:.3f}** |",
                  "| hand-written cached probe (the pass, `AdamW` on the head, the same batches) | "
                  f"{hand:.2f} ({each['hand']}) | - | {hand / one:.3f} |",
                  "",
                  f"Importing torch and transferkit.engine before either: {imp:.2f} s (median). "
                  + ("The first `Trainer(...)` imported scikit-learn in every run." if sk else "")]
    lines += ["", "Checks:", ""]
    if "inmem" in out:
        lines.append(f"- in-memory: the engine and the hand loop end with the same weights (max abs "
                     f"difference {out['inmem']['weight_diff']:.3g}, on the first 640 images): the same "
                     "training on the same batches.")
    if "loader" in out:
        r = out["loader"]
        lines.append(f"- DataLoader: {r['n']:,} 28x28 gray PNGs written in {r['write_s']:.1f} s; dataset "
                     f"{r['dataset']}. The hand loop shuffles with its own seeded generator (another "
                     "permutation, the same batch sizes).")
    for r in out.get("probe", []):
        lines.append(f"- probe, {r['label'].split(',')[0]}: the hand-written probe's head ends equal to the "
                     f"engine's (max abs difference {r['head_diff']:.3g}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="inmem,loader,probe,ddp,cold")
    ap.add_argument("--reps", type=int, default=4, help="repeats of each arm (in-memory)")
    ap.add_argument("--loader-reps", type=int, default=3)
    ap.add_argument("--probe-reps", type=int, default=3)
    ap.add_argument("--ddp-reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=5000, help="Fashion-MNIST images")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the in-memory and ddp runs")
    ap.add_argument("--loader-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--loader-threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--probe-epochs", type=int, default=10)
    ap.add_argument("--probe-n", type=int, default=300, help="images of the EfficientNet row (0: skip it)")
    ap.add_argument("--probe-size", type=int, default=96, help="EfficientNet input size (the demo's: 96)")
    ap.add_argument("--fewshot-epochs", type=int, default=30, help="epochs of the demo-like row (0: skip)")
    ap.add_argument("--ddp-2threads", action="store_true", help="also 1 process with 2 threads")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    ap.add_argument("--cold-n", type=int, default=1000, help="images of the cold-start probe")
    ap.add_argument("--ddp-n", type=int, default=2560, help="images of the data-parallel runs")
    ap.add_argument("--cold-reps", type=int, default=3)
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cold-worker", choices=["fit", "pass", "hand"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ddp_worker:
        ddp_worker(args)
        return
    if args.cold_worker:
        cold_worker(args)
        return
    sections = args.sections.split(",")
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    loads = []
    t_start = time.perf_counter()
    ds = fashion_subset(args.n)
    out: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    try:
        for name, fn in (("inmem", lambda: bench_inmem(args, ds)),
                         ("loader", lambda: bench_loader(args, ds, tmp)),
                         ("probe", lambda: bench_probe(args, ds)),
                         ("ddp", lambda: bench_ddp(args, ds, tmp)),
                         ("cold", lambda: bench_cold(args, ds, tmp))):
            if name in sections:
                loads.append(f"{name} {load()}")
                say(f"{name}: start (load {load()})")
                out[name] = fn()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loads.append(f"end {load()}")
    text = report(args, out, time.perf_counter() - t_start, started, loads)
    print(text)
    if args.out is not None:
        kept = ""
        if args.out.exists() and KEEP in args.out.read_text():
            kept = "\n" + KEEP + args.out.read_text().split(KEEP, 1)[1]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + kept)


if __name__ == "__main__":
    main()
