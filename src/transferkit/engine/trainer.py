"""The one training loop every transfer method plugs into.

:class:`Trainer` sums the objectives' loss terms, backpropagates and steps; the config picks the
optimiser, schedule, freezing strategy, early stopping and mixed precision. Methods only contribute
:class:`~transferkit.engine.objectives.Objective` terms, so two methods at once is a list of two
objectives. With a ``run_dir`` every epoch leaves a resumable checkpoint and one line of metrics.

The loop is assembled from parts with one job each: :mod:`~transferkit.engine.batches` (where
batches come from: in-memory tensors, any Dataset through a DataLoader, source/target pairing),
:mod:`~transferkit.engine.step` (what one step does; a method may bring its own step),
:mod:`~transferkit.engine.context` (what objectives and monitors may read),
:mod:`~transferkit.engine.checks` (what is refused before training),
:mod:`~transferkit.engine.guard` (divergence), :mod:`~transferkit.engine.history` (epoch choice),
:mod:`~transferkit.engine.distributed` (data-parallel processes) and
:mod:`~transferkit.engine.checkpoint` (the run folder).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from transferkit.data.base import TensorDataset
from transferkit.data.tasks import TaskSet
from transferkit.data.tokens import model_inputs
from transferkit.engine import distributed
from transferkit.engine.batches import (
    Batches,
    TensorBatches,
    augmenter,
    data_name,
    epoch_seed,
    labels_of,
    make_batches,
    view_maker,
)
from transferkit.engine.checkpoint import RunDir, TrainingState, cpu_state_dict
from transferkit.engine.checks import attach_taps, check_batch_labels, check_fit
from transferkit.engine.config import TrainConfig
from transferkit.engine.context import FitContext
from transferkit.engine.guard import DivergenceGuard, divergence_message
from transferkit.engine.history import History, Progress, is_best
from transferkit.engine.objectives import CrossEntropy, Objective
from transferkit.engine.parameter_efficient import (
    add_adapters,
    check_objectives,
    check_targets,
    merge_adapters,
)
from transferkit.engine.predict import evaluate, pool_features, predict_features
from transferkit.engine.step import StepRunner
from transferkit.engine.strategies import (
    apply_strategy,
    backbone_frozen_throughout,
    build_optimizer,
    build_param_groups,
    build_scheduler,
    count_parameters,
)
from transferkit.errors import ConfigError, TrainingError

logger = logging.getLogger(__name__)

Monitor = Callable[[FitContext], Mapping[str, "float | None"]]


#: A checkpoint written faster than this (seconds) is written after every epoch.
CHEAP_CHECKPOINT_S = 0.25
#: Otherwise the next write waits until this many times the last write's duration has passed.
CHECKPOINT_SPACING = 10.0


class Trainer:
    """Trains a TransferNet on the sum of its objectives' losses.

    Args:
        model: A :class:`~transferkit.models.TransferNet` (``input_adapter``, ``backbone``,
            ``head``, ``info.num_classes``); the backbone's direct children are its blocks.
        config: A :class:`TrainConfig`, a plain mapping of its fields, or ``None`` for defaults.
        objectives: Loss terms; ``None`` means ``[CrossEntropy()]``. At most one may bring its own
            :meth:`~transferkit.engine.objectives.Objective.training_step`.
        run_dir: Folder for ``metrics.jsonl`` and checkpoints; ``None`` keeps everything in memory.
        monitors: Callables ``monitor(ctx: FitContext) -> {name: value}`` run after every epoch
            (after validation); their values join the epoch's row, where ``config.select_metric``
            can pick them (label-free model choice in domain adaptation).
        cache_dir: A folder shared by several runs for what objectives compute once, keyed by
            what it depends on (``FitContext.cache_dir``); ``None`` keeps such caches in ``run_dir``.

    Attributes:
        device: The device training runs on (``config.device`` resolved).
        use_amp: Whether mixed precision is on (``config.amp`` on a CUDA device, or with
            ``amp_dtype="bfloat16"`` on the CPU).
        optimizer, scheduler, scaler: Built by :meth:`fit`.
        context: The :class:`FitContext` of the current (or last) :meth:`fit`.
        history: The :class:`History` of the last :meth:`fit`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig | Mapping[str, Any] | None = None,
        objectives: Sequence[Objective] | None = None,
        run_dir: str | os.PathLike | None = None,
        monitors: Sequence[Monitor] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        for part in ("backbone", "head", "forward_features"):
            if not hasattr(model, part):
                raise ConfigError(
                    f"Trainer needs a TransferNet (with backbone, head, forward_features); got a "
                    f"{type(model).__name__} without {part!r}: wrap it with transferkit.models"
                )
        if config is None:
            config = TrainConfig()
        elif isinstance(config, Mapping):
            config = TrainConfig.from_dict(config)
        elif not isinstance(config, TrainConfig):
            raise ConfigError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
        objectives = [CrossEntropy()] if objectives is None else list(objectives)
        if not objectives:
            raise ConfigError("objectives is empty; pass at least one, e.g. [CrossEntropy()]")
        for obj in objectives:
            if not isinstance(obj, Objective):
                raise ConfigError(
                    f"objectives must be Objective instances, got a {type(obj).__name__}; "
                    "subclass transferkit.engine.Objective"
                )
        owners = [o for o in objectives if o.owns_step()]
        if len(owners) > 1:
            raise ConfigError(
                f"objectives {', '.join(repr(o.name) for o in owners)} each bring their own training "
                "step; at most one objective of a run may (e.g. one MCD)"
            )
        self.step_owner: Objective | None = owners[0] if owners else None
        self.monitors = list(monitors or [])
        self.model = model
        self.config = config
        self.objectives: list[Objective] = objectives
        self.term_names = _unique_names([o.name for o in objectives])
        self.run_dir = RunDir(run_dir) if run_dir is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = config.resolve_device()
        cpu_bf16 = self.device.type == "cpu" and config.amp_dtype == "bfloat16"
        self.use_amp = bool(config.amp and (self.device.type == "cuda" or cpu_bf16))
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.context = FitContext(model, self.device, config)
        self.procs = distributed.Processes()
        self.history = History()
        self._guard = DivergenceGuard(config.divergence_factor)

    # the datasets of the current fit (FitContext holds them)
    @property
    def train_data(self) -> Any:
        return self.context.train_data

    @property
    def val_data(self) -> Any:
        return self.context.val_data

    @property
    def target_data(self) -> Any:
        return self.context.target_data

    def check(self, train: Any, val: Any = None, *, target: Any = None) -> None:
        """Everything :meth:`fit` checks before it trains, without training or writing anything:
        data sizes and labels, target data, one forward pass (input shape), the objectives' taps.

        Workflows call it for every arm before they touch the output folder, so a bad input never
        leaves a half-written run behind.

        Raises:
            The errors of :meth:`fit` that come before training (``DataError``, ``LabelError``,
            ``ShapeError``, ``ConfigError``, ``UnknownNameError``).
        """
        if self.config.strategy == "lora":
            check_targets(self.model, self.config.lora)
        train, val, target = (model_inputs(d, self.model) for d in (train, val, target))
        check_fit(self.model, self.objectives, self.config, self.device, train, val, target)

    # ------------------------------------------------------------------ fit
    def fit(self, train: Any, val: Any = None, *, target: Any = None, resume: bool = False) -> History:
        """Train ``self.model`` on ``train``, validating on ``val`` after every epoch.

        Args:
            train: Training data: a :class:`~transferkit.data.TensorDataset` (the in-memory fast
                path), any map-style ``Dataset`` whose items are ``(x, y)`` or dicts of tensors
                (``pixel_values`` / ``input_ids`` ..., ``label``), loaded with ``config.num_workers``
                workers, or a ``DataLoader`` of your own; or a :class:`~transferkit.data.tasks.TaskSet`
                of several tasks for a multi-head model with the ``multitask`` objective (the history
                then records each task's ``val_accuracy_<task>``; ``val_accuracy`` is their mean).
            val: Validation data for best-epoch selection and early stopping (same kinds).
            target: Unlabelled target-domain data for the objectives that use it (``uses_target``);
                its labels are never read. Every step pairs the source batch with a target batch
                ``config.unlabeled_ratio`` times its size (1: the same size); an epoch is one pass
                over ``train`` and the target set cycles.
            resume: Continue after the last finished epoch of ``run_dir``'s checkpoint (starts
                fresh, with a logged note, when there is none).

        Returns:
            The :class:`History`. The model ends with the weights of the epoch ``select_metric``
            chose (the best validation accuracy by default), else the last epoch's. Under
            ``strategy: lora`` peft adapters are added to the backbone first (seeded by
            ``config.seed``) and, with ``lora.save: merged``, merged into its weights at the end;
            with ``lora.save: adapters`` the model keeps them (see
            :mod:`~transferkit.engine.parameter_efficient`).

        Raises:
            DataError: ``train``, ``val`` or ``target`` is empty, or ``train`` holds one class
                while an objective learns from labels.
            LabelError: labels do not fit the model's head.
            ShapeError: inputs do not fit the model (from the first forward pass), or target
                inputs differ in shape from the source's.
            ConfigError: ``patience`` without a selection metric, ``resume`` without ``run_dir``,
                target-using objectives without ``target``, or an unknown ``select_metric``.
            TrainingError: the loss became NaN or infinite, or training diverged (see
                ``TrainConfig.divergence_factor``); the last good checkpoint is kept.
            CheckpointError: ``resume`` finds a checkpoint that is unreadable, of the old two-file
                format, or does not fit this model/optimiser/objectives.
        """
        cfg = self.config
        if resume and self.run_dir is None:
            raise ConfigError("resume=True needs a run_dir to read checkpoints from; pass run_dir=")
        train, val, target = (model_inputs(d, self.model) for d in (train, val, target))
        self.procs = distributed.processes(self.device.type)
        if self.procs.parallel and self.device.type == "cuda":
            self.device = torch.device("cuda", self.procs.local_rank)
        self.check(train, val, target=target)
        batches = make_batches(train, target if any(o.uses_target for o in self.objectives) else None,
                               cfg, self.procs.rank, self.procs.world_size, self.device.type == "cuda")
        model = self.model.to(self.device)
        if cfg.channels_last and any(p.ndim == 4 for p in model.parameters()):
            model = model.to(memory_format=torch.channels_last)
        ctx = self.context = FitContext(
            model, self.device, cfg, train, val, target, steps_per_epoch=len(batches),
            run_dir=None if self.run_dir is None else self.run_dir.root, cache_dir=self.cache_dir,
            rank=self.procs.rank, world_size=self.procs.world_size,
        )

        torch.manual_seed(cfg.seed)
        if cfg.strategy == "lora":
            add_adapters(model, cfg.lora)
        for obj in self.objectives:
            obj.to(self.device)
            obj.setup(ctx)
        if cfg.strategy == "lora":
            check_objectives(model, self.objectives)
        model_ids = {id(p) for p in model.parameters()}
        extra = [p for o in self.objectives for p in o.parameters()
                 if p.requires_grad and id(p) not in model_ids]
        self.optimizer = build_optimizer(build_param_groups(model, cfg, extra), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.use_amp and cfg.amp_dtype == "float16")
        self._guard = DivergenceGuard(cfg.divergence_factor)
        self._state = TrainingState(model, self.optimizer, self.scheduler, self.scaler, self.objectives,
                                    cfg, self._guard, self.device)
        history, best_state = self._start(resume)
        self._last_save, self._save_cost, self._best_unsaved = time.perf_counter(), 0.0, False
        self._guard.start(model)
        self.history = history

        # features are cached for a frozen backbone, unless augmentation changes the inputs every step
        # (and of the unlabelled set, for objectives that read only its logits: pseudo-labelling)
        paired = any(o.uses_target for o in self.objectives)
        cached = (cfg.cache_features and backbone_frozen_throughout(cfg) and not cfg.augment
                  and not isinstance(train, DataLoader)
                  and all(o.head_only and not o.taps and not o.needs_views for o in self.objectives)
                  and (not paired or isinstance(target, TensorDataset))
                  and self.step_owner is None)
        train_feats = val_feats = None
        if cached and not history.stopped_early and len(history.epochs) < cfg.epochs:
            train_feats = predict_features(model, train, cfg.eval_batch_size, self.device, cfg.num_workers,
                                           self._autocast)
            if val is not None:
                val_feats = predict_features(model, val, cfg.eval_batch_size, self.device, cfg.num_workers,
                                             self._autocast)
            logger.info("cached backbone features of %d training examples", len(train_feats))

        runner = StepRunner(
            ctx, self.objectives, self.term_names, self.optimizer, self.scaler, self._guard,
            self._autocast, tap=attach_taps(model, self.objectives), kept=self._kept,
            grad_sync=distributed.average_gradients if self.procs.parallel else None,
            reduce=distributed.mean_across if self.procs.parallel else None,
            augment=augmenter(cfg.augment, _head_size(model), self.device),
            views=view_maker(cfg, self.objectives, self.device),
        )
        runner.cached_features = train_feats
        if train_feats is not None and paired:  # one pass over the pool, shared by the fits of a process
            runner.cached_target_features = pool_features(model, target, cfg.eval_batch_size, self.device)
        # with cached features only the head trains: the rest of the state can't change in this fit
        head_keys = {f"head.{k}" for k in model.head.state_dict()}
        self._fixed = frozenset(k for k in model.state_dict() if cached and k not in head_keys)
        if train_feats is not None and isinstance(batches, TensorBatches):
            batches.inputs = False  # the head reads cached features; no need to gather the images
        start = len(history.epochs)
        progress = Progress(cfg.progress and self.procs.is_main, cfg.epochs, start)
        t0 = time.perf_counter()
        try:
            for epoch in range(start, cfg.epochs):
                if history.stopped_early:
                    break
                best_state = self._run_epoch(epoch, runner, batches, val_feats, history, best_state, progress)
        finally:
            if runner.tap is not None:
                runner.tap.remove()
            progress.close()
            history.seconds += time.perf_counter() - t0
        if best_state is not None:
            model.load_state_dict(best_state)
        if cfg.strategy == "lora" and cfg.lora.save == "merged":
            merge_adapters(model)
        model.eval()
        return history

    def _checkpoint_due(self, epoch: int, history: History) -> bool:
        """Whether this epoch writes the checkpoint: always at the last epoch and on early stopping,
        and after every epoch when writing is cheap (under :data:`CHEAP_CHECKPOINT_S`), except in a
        fit on cached features whose epochs are shorter than a write; otherwise once the time since
        the last write is :data:`CHECKPOINT_SPACING` times what that write took. So writing a large
        model's state (a 22M-parameter text encoder: about 2 s), or a frozen backbone's after each of
        a linear probe's millisecond epochs on cached features (EfficientNet: 50 ms a write, 200
        epochs), takes at most about a tenth of the run, while a killed run loses only a few epochs."""
        if epoch + 1 >= self.config.epochs or history.stopped_early:
            return True
        epoch_seconds = history.epochs[-1].get("seconds", 0.0) if history.epochs else 0.0
        head_only = bool(getattr(self, "_fixed", ()))  # cached features: only the head trains
        if self._save_cost < CHEAP_CHECKPOINT_S and not (head_only and self._save_cost > epoch_seconds):
            return True
        return time.perf_counter() - self._last_save >= CHECKPOINT_SPACING * self._save_cost

    def _start(self, resume: bool) -> tuple[History, dict[str, torch.Tensor] | None]:
        """A fresh history, or the checkpoint's on resume; an old checkpoint is cleared otherwise."""
        history, best_state = History(), None
        run_dir, main = self.run_dir, self.procs.is_main
        if run_dir is not None and main:
            for path in run_dir.remove_stale_temporaries():
                logger.info("removed %s, left by an interrupted write", path)
        if resume:
            # every rank reads the checkpoint rank 0 wrote: wait until no rank is still writing it
            distributed.barrier()
            restored = self._state.restore(run_dir)
            if restored is not None:
                history, best_state = restored
                if main and best_state is not None and history.best_epoch is not None:
                    # a kill between last.ckpt and best.safetensors leaves the latter out of step
                    run_dir.save_best(best_state, history.best_epoch)
        elif run_dir is not None and main and (run_dir.has_checkpoint() or run_dir.old_checkpoint_files()):
            logger.info("starting a fresh run in %s; its old checkpoint is deleted", run_dir.root)
            run_dir.clear()
        distributed.barrier()
        if run_dir is not None and main:
            run_dir.write_metrics(history.epochs)
        return history, best_state

    def _run_epoch(
        self,
        epoch: int,
        runner: StepRunner,
        batches: Batches,
        val_feats: torch.Tensor | None,
        history: History,
        best_state: dict[str, torch.Tensor] | None,
        progress: Progress,
    ) -> dict[str, torch.Tensor] | None:
        cfg, ctx = self.config, self.context
        t_epoch = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update(self._train_epoch(epoch, runner, batches, progress))
        problem = self._guard.weight_problem(self.model)
        if problem is not None:
            where = f"the end of epoch {epoch + 1}"
            raise TrainingError(divergence_message(where, problem, cfg, self._kept()))
        if isinstance(ctx.val_data, TaskSet):  # several tasks: each with its head, then their mean
            scores = self.evaluate_tasks(ctx.val_data)
            row["val_loss"] = sum(loss for loss, _ in scores.values()) / len(scores)
            row["val_accuracy"] = sum(acc for _, acc in scores.values()) / len(scores)
            row.update({f"val_accuracy_{t}": acc for t, (_, acc) in scores.items()})
        elif ctx.val_data is not None:
            row["val_loss"], row["val_accuracy"] = self.evaluate(ctx.val_data, val_feats)
        else:
            row["val_loss"] = row["val_accuracy"] = None
        for monitor in self.monitors:
            row.update(monitor(ctx))
        row["lr"] = lr
        self.scheduler.step()
        row["seconds"] = time.perf_counter() - t_epoch
        history.epochs.append(row)
        new_best = is_best(row, history, cfg)
        if new_best:
            history.best_epoch, history.best_val_accuracy = epoch + 1, row["val_accuracy"]
            history.best_value = float(row[cfg.select_metric])
            best_state = cpu_state_dict(self.model, self._fixed)
        if (cfg.patience is not None and history.best_epoch is not None
                and epoch + 1 - history.best_epoch >= cfg.patience and epoch + 1 < cfg.epochs):
            history.stopped_early = True
            logger.info("early stopping after epoch %d: %s has not improved since epoch %d",
                        epoch + 1, cfg.select_metric, history.best_epoch)
        self._best_unsaved = self._best_unsaved or new_best
        if self.run_dir is not None and self.procs.is_main and self._checkpoint_due(epoch, history):
            # last.ckpt alone is the resumable state; best.safetensors and metrics.jsonl follow it
            # (and are rewritten from it on resume), so a kill between the writes loses nothing
            t_save = time.perf_counter()
            self._state.save(self.run_dir, epoch + 1, history, best_state, self._fixed)
            if self._best_unsaved:
                self.run_dir.save_best(best_state, history.best_epoch)
            self.run_dir.write_metrics(history.epochs)
            self._best_unsaved = False
            self._last_save = time.perf_counter()
            self._save_cost = self._last_save - t_save
        progress.end_epoch()
        if self.procs.is_main:
            logger.info(
                "epoch %d/%d: train_loss=%.4f train_acc=%s val_loss=%s val_acc=%s lr=%.3g (%.1fs)",
                epoch + 1, cfg.epochs, row["train_loss"], _fmt(row["train_accuracy"]),
                _fmt(row["val_loss"]), _fmt(row["val_accuracy"]), lr, row["seconds"],
            )
        return best_state

    def _train_epoch(
        self,
        epoch: int,
        runner: StepRunner,
        batches: Batches,
        progress: Progress,
    ) -> dict[str, float]:
        cfg, ctx, model = self.config, self.context, self.model
        if runner.cached_features is None or not runner.strategy_applied:
            apply_strategy(model, cfg, epoch)
            runner.strategy_applied = True
        else:  # only the head runs on cached features: the backbone's flags and modes stay as set
            model.head.train()
        trained = count_parameters(model)
        for obj in self.objectives:
            obj.on_epoch_start(ctx, epoch)
        progress.start_epoch(epoch, len(batches))
        head = _head_size(model) or 0
        # labels seen only batch by batch (a TaskSet's were checked task by task before training)
        check_labels = labels_of(ctx.train_data) is None and not isinstance(ctx.train_data, TaskSet)
        learns = any(isinstance(o, CrossEntropy) for o in self.objectives)
        non_blocking = self.device.type == "cuda"
        sums: dict[str, float] = defaultdict(float)
        counts = [0, 0, 0]  # examples, labelled, correct
        for step, ex in enumerate(batches.epoch(epoch)):
            if check_labels:
                check_batch_labels(ex.y, head, data_name(ctx.train_data), learns)
            out = runner.run(ex.to(self.device, non_blocking), epoch, step, self.step_owner)
            n = len(ex)
            sums["train_loss"] += out.total * n
            for name, value in out.terms.items():
                sums[name] += value * n
            counts = [counts[0] + n, counts[1] + out.labelled, counts[2] + out.correct]
            progress.advance_batch()
        names = sorted(sums)
        totals = torch.tensor([*(sums[k] for k in names), *counts], dtype=torch.float64)
        if self.procs.parallel:
            torch.distributed.all_reduce(totals)
        seen, labelled, correct = (float(v) for v in totals[-3:])
        out = {k: float(v) / seen for k, v in zip(names, totals[: len(names)], strict=True)}
        out["train_accuracy"] = correct / labelled if labelled else None
        out.update(trained.to_dict())
        return out

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.use_amp:
            dtype = torch.bfloat16 if self.config.amp_dtype == "bfloat16" else torch.float16
            return torch.autocast(device_type=self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def _kept(self) -> str:
        """Where the last good checkpoint is, for error messages (empty without one)."""
        if self.run_dir is None or not self.run_dir.has_checkpoint():
            return ""
        return (f"; the last good checkpoint (epoch {len(self.history.epochs)}) in "
                f"{str(self.run_dir.root)!r} is kept")

    def evaluate(self, data: Any, feats: torch.Tensor | None = None) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of the model on ``data`` (eval mode, no gradients).

        Args:
            data: Examples to score (a TensorDataset, any Dataset or a DataLoader).
            feats: Precomputed backbone features ``(N, D)`` of ``data``; only the head runs.
        """
        model = self.model
        data = model_inputs(data, model)
        first = next(model.parameters(), None)
        if first is not None and first.device != self.device:  # called outside fit
            model = model.to(self.device)
        return evaluate(model, data, self.config.eval_batch_size, self.device, feats,
                        self._autocast, self.config.num_workers)

    def evaluate_tasks(self, data: TaskSet) -> dict[str, tuple[float, float]]:
        """Mean cross-entropy and accuracy of each task of ``data`` with its own head."""
        from transferkit.models.heads import task_model

        first = next(self.model.parameters(), None)
        if first is not None and first.device != self.device:  # called outside fit
            self.model.to(self.device)
        data = model_inputs(data, self.model)
        return {t: evaluate(task_model(self.model, t), d, self.config.eval_batch_size, self.device, None,
                            self._autocast, self.config.num_workers) for t, d in data.items()}


def _head_size(model: torch.nn.Module) -> int | None:
    """The head's number of classes when the model's info tells it."""
    return int(getattr(getattr(model, "info", None), "num_classes", 0) or 0) or None


def _unique_names(names: list[str]) -> list[str]:
    out, counts = [], defaultdict(int)
    for n in names:
        counts[n] += 1
        out.append(n if counts[n] == 1 else f"{n}_{counts[n]}")
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


__all__ = ["History", "Trainer", "epoch_seed", "predict_features"]
