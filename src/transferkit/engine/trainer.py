"""The one training loop every transfer method plugs into.

:class:`Trainer` sums the objectives' loss terms, backpropagates and steps; the config picks the
optimiser, schedule, freezing strategy, early stopping and mixed precision. Methods only contribute
:class:`~transferkit.engine.objectives.Objective` terms, so two methods at once is a list of two
objectives. With a ``run_dir`` every epoch leaves a resumable checkpoint and one line of metrics.

Domain adaptation uses the same loop: ``fit(..., target=...)`` draws an unlabelled target batch
beside every source batch (the smaller set cycles, reshuffled, so unequal sizes need nothing
special), objectives declaring extra :class:`~transferkit.engine.objectives.Phase` s get those
updates on the same batch, and monitors (label-free criteria) can pick the epoch to keep.

Training that diverges stops with a :class:`~transferkit.errors.TrainingError` before the loss
overflows (see ``TrainConfig.divergence_factor``); a diverged epoch is never checkpointed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data.base import TensorDataset
from transferkit.engine.checkpoint import RunDir, cpu_state_dict, load_training_state
from transferkit.engine.config import TrainConfig
from transferkit.engine.objectives import Batch, CrossEntropy, Objective, Phase
from transferkit.engine.strategies import (
    apply_strategy,
    backbone_frozen_throughout,
    build_optimizer,
    build_param_groups,
    build_scheduler,
)
from transferkit.errors import (
    ConfigError,
    DataError,
    LabelError,
    ShapeError,
    TrainingError,
)
from transferkit.models.surgery import LayerTap

logger = logging.getLogger(__name__)


@dataclass
class History:
    """What happened during :meth:`Trainer.fit`.

    Attributes:
        epochs: One dict per finished epoch: ``epoch`` (1-based), ``train_loss``, ``loss_<term>``
            for every objective, ``train_accuracy``, ``val_loss``, ``val_accuracy`` (``None``
            without a validation set), ``lr`` (head learning rate used in the epoch) and ``seconds``.
        best_epoch: 1-based epoch chosen by ``config.select_metric`` (highest validation accuracy
            by default; ``None`` when no epoch had the metric).
        best_val_accuracy: Validation accuracy of that epoch.
        best_value: The selection metric's value at that epoch.
        seconds: Total training time, summed over resumed runs.
        stopped_early: Whether early stopping ended training.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    best_value: float | None = None
    seconds: float = 0.0
    stopped_early: bool = False

    def to_list(self) -> list[dict[str, Any]]:
        """The per-epoch rows (copies)."""
        return [dict(row) for row in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-serialisable data."""
        return asdict(self)


def predict_features(
    model: nn.Module,
    data: TensorDataset | torch.Tensor,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Backbone features of every example, in eval mode and without gradients.

    Args:
        model: A TransferNet (``model.forward_features``), already on ``device``.
        data: A dataset or raw inputs ``(N, ...)``.
        batch_size: Examples per forward pass.
        device: Where inputs go and features stay; defaults to the model's device.

    Returns:
        Features ``(N, feature_dim)`` on ``device``. The model's train/eval mode is restored.
    """
    x = data.x if isinstance(data, TensorDataset) else data
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                chunks.append(model.forward_features(x[start : start + batch_size].to(device)))
    finally:
        model.train(was_training)
    if not chunks:
        dim = getattr(getattr(model, "info", None), "feature_dim", 0)
        return torch.empty(0, dim, device=device)
    return torch.cat(chunks)


def _batch_slices(n: int, batch_size: int) -> list[slice]:
    """Batch boundaries over ``n`` examples; a last batch of one joins the previous batch
    (a single example breaks BatchNorm in train mode)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    ends = starts[1:] + [n]
    return [slice(s, e) for s, e in zip(starts, ends, strict=True)]


class _Progress:
    """A rich progress bar over epochs and batches, or nothing."""

    def __init__(self, enabled: bool, epochs: int, start: int) -> None:
        self.bar = None
        if enabled:
            from rich.progress import Progress

            self.bar = Progress(transient=False)
            self.bar.start()
            self.epoch_task = self.bar.add_task("epochs", total=epochs, completed=start)
            self.batch_task = self.bar.add_task("batches", total=0)

    def start_epoch(self, epoch: int, batches: int) -> None:
        if self.bar is not None:
            self.bar.reset(self.batch_task, total=batches, description=f"epoch {epoch + 1}")

    def advance_batch(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.batch_task)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.epoch_task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _DivergenceGuard:
    """Tells when training diverges, before the loss overflows to inf/NaN.

    Two signs, both relative to where the run started (kept in the checkpoint, so a resumed run
    compares with the same start): a step's total loss more than ``factor`` times the first step's
    in magnitude, the first counted as at least 1 (terms that start near 0, such as L2-SP's or
    a distillation term's, would make any rise look huge); or the model's weight norm more than
    ``factor`` times its start. Non-finite weights are always a problem, even with ``factor=None``.

    Attributes:
        loss0: The first step's total loss. ``norm0``: the model's weight norm before training.
        peak_loss_ratio, peak_norm_ratio: The largest ratios seen by this fit (diagnostics).
    """

    def __init__(self, factor: float | None) -> None:
        self.factor = factor
        self.loss0: float | None = None
        self.norm0: float | None = None
        self.peak_loss_ratio = 0.0
        self.peak_norm_ratio = 0.0

    def start(self, model: nn.Module) -> None:
        """Record the weight norm to compare with (unless a resumed checkpoint brought it)."""
        if self.norm0 is None:
            self.norm0 = _weight_norm(model)

    def loss_problem(self, value: float) -> str | None:
        """What is wrong with a step's finite total loss ``value``, or ``None``."""
        if self.loss0 is None:
            self.loss0 = value
        scale = max(abs(self.loss0), 1.0)
        ratio = abs(value) / scale
        self.peak_loss_ratio = max(self.peak_loss_ratio, ratio)
        if self.factor is None or ratio <= self.factor:
            return None
        return (f"the total loss reached {value:.3g}, over {self.factor:g}x the first step's "
                f"{self.loss0:.3g} (counted as at least 1)")

    def weight_problem(self, model: nn.Module) -> str | None:
        """What is wrong with the model's weights, or ``None``."""
        norm = _weight_norm(model)
        if not math.isfinite(norm):
            return "the weights hold NaN/inf values"
        ratio = norm / self.norm0 if self.norm0 else 0.0
        self.peak_norm_ratio = max(self.peak_norm_ratio, ratio)
        if self.factor is None or ratio <= self.factor:
            return None
        return (f"the weights' norm grew from {self.norm0:.3g} to {norm:.3g}, over "
                f"{self.factor:g}x")

    def state_dict(self) -> dict[str, float | None]:
        return {"loss0": self.loss0, "norm0": self.norm0}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loss0, self.norm0 = state.get("loss0"), state.get("norm0")


def _weight_norm(model: nn.Module) -> float:
    """The L2 norm of all the model's parameters (in float64, so 1e30-sized weights don't overflow)."""
    with torch.no_grad():
        norms = [float(torch.linalg.vector_norm(p.detach(), dtype=torch.float64))
                 for p in model.parameters()]
    return math.sqrt(math.fsum(n * n for n in norms))


class Trainer:
    """Trains a TransferNet on the sum of its objectives' losses.

    Args:
        model: A :class:`~transferkit.models.TransferNet` (``input_adapter``, ``backbone``,
            ``head``, ``info.num_classes``); the backbone's direct children are its blocks.
        config: A :class:`TrainConfig`, a plain mapping of its fields, or ``None`` for defaults.
        objectives: Loss terms; ``None`` means ``[CrossEntropy()]``.
        run_dir: Folder for ``metrics.jsonl`` and checkpoints; ``None`` keeps everything in memory.
        monitors: Callables ``monitor(trainer) -> {name: value}`` run after every epoch (after
            validation); their values join the epoch's row, where ``config.select_metric`` can pick
            them (label-free model choice in domain adaptation).

    Attributes:
        device: The device training runs on (``config.device`` resolved).
        use_amp: Whether mixed precision is on (``config.amp`` and a CUDA device).
        optimizer, scheduler, scaler: Built by :meth:`fit`.
        train_data, val_data, target_data: The datasets of the current :meth:`fit` (for
            objectives' ``setup`` and monitors).
        history: The :class:`History` of the last :meth:`fit`.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | Mapping[str, Any] | None = None,
        objectives: Sequence[Objective] | None = None,
        run_dir: str | os.PathLike | None = None,
        monitors: Sequence[Callable[[Trainer], Mapping[str, float | None]]] | None = None,
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
            raise ConfigError(
                f"config must be a TrainConfig or a dict, got {type(config).__name__}"
            )
        objectives = [CrossEntropy()] if objectives is None else list(objectives)
        if not objectives:
            raise ConfigError("objectives is empty; pass at least one, e.g. [CrossEntropy()]")
        for obj in objectives:
            if not isinstance(obj, Objective):
                raise ConfigError(
                    f"objectives must be Objective instances, got a {type(obj).__name__}; "
                    "subclass transferkit.engine.Objective"
                )
        phased = [o for o in objectives if o.phases]
        if len(phased) > 1:
            raise ConfigError(
                f"objectives {', '.join(repr(o.name) for o in phased)} each declare extra update "
                "phases; at most one objective of a run may (e.g. one MCD)"
            )
        self.phases: tuple[Phase, ...] = tuple(phased[0].phases) if phased else ()
        self._phase_owner: Objective | None = phased[0] if phased else None
        self.monitors = list(monitors or [])
        self.model = model
        self.config = config
        self.objectives: list[Objective] = objectives
        self.term_names = _unique_names([o.name for o in objectives])
        self.run_dir = RunDir(run_dir) if run_dir is not None else None
        self.device = config.resolve_device()
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.train_data: TensorDataset | None = None
        self.val_data: TensorDataset | None = None
        self.target_data: TensorDataset | None = None
        self.steps_per_epoch = 0
        self.history = History()
        self._tap: LayerTap | None = None
        self._guard = _DivergenceGuard(config.divergence_factor)

    # ------------------------------------------------------------------ checks
    def _check_data(self, train: TensorDataset, val: TensorDataset | None) -> None:
        if len(train) == 0:
            raise DataError(
                f"training set {train.name!r} is empty; pass a dataset with at least one example"
            )
        if val is not None and len(val) == 0:
            raise DataError(
                f"validation set {val.name!r} is empty; pass val=None or a non-empty set"
            )
        if any(isinstance(o, CrossEntropy) for o in self.objectives):
            classes = torch.unique(train.y)
            if len(classes) == 1:
                raise DataError(
                    f"training set {train.name!r} has one class (label {int(classes[0])}); a "
                    "classifier needs examples of at least two classes: add examples of the others"
                )
        head = int(getattr(getattr(self.model, "info", None), "num_classes", 0) or 0)
        if head > 0:
            self._check_labels(train, val, head)

    def _check_target(self, train: TensorDataset, target: TensorDataset | None) -> None:
        users = [o.name for o in self.objectives if o.uses_target]
        if target is None:
            if users:
                raise ConfigError(
                    f"objective(s) {', '.join(map(repr, users))} adapt to unlabelled target data; "
                    "pass it with fit(train, val, target=target_data)"
                )
            return
        if len(target) == 0:
            raise DataError(
                f"target set {target.name!r} is empty; domain adaptation needs unlabelled target "
                "examples (at least one batch)"
            )
        if target.input_shape != train.input_shape:
            hint = ""
            if len(target.input_shape) == len(train.input_shape) == 3:
                hint = (f" (target has {target.input_shape[0]} channel(s), source "
                        f"{train.input_shape[0]})")
            raise ShapeError(
                f"target inputs have shape {target.input_shape} but source inputs "
                f"{train.input_shape}{hint}; bring them to one shape first, e.g. "
                f"transferkit.data.match_shape(target, {train.input_shape})"
            )

    def _check_labels(self, train: TensorDataset, val: TensorDataset | None, head: int) -> None:
        for split, ds in (("train", train), ("val", val)):
            if ds is None:
                continue
            top = int(ds.y.max())
            if top >= head:
                raise LabelError(
                    f"{split} labels go up to {top} but the model's head predicts {head} classes "
                    f"(labels 0..{head - 1}); give the model a head of {top + 1} outputs with "
                    f"replace_head(model, {top + 1}) or build it with num_classes={top + 1}"
                )

    def _probe(self, train: TensorDataset, val: TensorDataset | None) -> None:
        """One forward pass on one example so shape problems surface before training."""
        self.model.eval()
        with torch.no_grad():
            out = self.model(train.x[:1].to(self.device))
        if out.ndim != 2:
            raise ShapeError(
                f"the model returned logits of shape {tuple(out.shape)} for one example; "
                "expected (1, num_classes): check the head"
            )
        if not getattr(getattr(self.model, "info", None), "num_classes", 0):
            self._check_labels(train, val, int(out.shape[1]))

    def _attach_taps(self) -> LayerTap | None:
        """Forward hooks on the modules the objectives tap (unknown names raise with suggestions)."""
        names = sorted({t for o in self.objectives for t in o.taps})
        return LayerTap(self.model, names).attach() if names else None

    def check(
        self, train: TensorDataset, val: TensorDataset | None = None, *, target: TensorDataset | None = None
    ) -> None:
        """Everything :meth:`fit` checks before it trains, without training or writing anything:
        data sizes and labels, target data, one forward pass (input shape), the objectives' taps.

        Workflows call it for every arm before they touch the output folder, so a bad input never
        leaves a half-written run behind.

        Raises:
            The errors of :meth:`fit` that come before training (``DataError``, ``LabelError``,
            ``ShapeError``, ``ConfigError``, ``UnknownNameError``).
        """
        cfg = self.config
        if cfg.patience is not None and val is None and cfg.select_metric.startswith("val_"):
            raise ConfigError(
                f"patience={cfg.patience} (early stopping) needs a validation set; pass val= or "
                "set patience=None"
            )
        self._check_data(train, val)
        self._check_target(train, target)
        self.model.to(self.device)
        self._probe(train, val)
        taps = self._attach_taps()
        if taps is not None:
            taps.remove()

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        train: TensorDataset,
        val: TensorDataset | None = None,
        *,
        target: TensorDataset | None = None,
        resume: bool = False,
    ) -> History:
        """Train ``self.model`` on ``train``, validating on ``val`` after every epoch.

        Args:
            train: Training data.
            val: Validation data for best-epoch selection and early stopping.
            target: Unlabelled target-domain data for the objectives that use it (``uses_target``);
                its labels are never read. Every step pairs the source batch with a target batch
                of the same size; an epoch is one pass over ``train`` and the target set cycles.
            resume: Continue after the last finished epoch of ``run_dir``'s checkpoint (starts
                fresh, with a logged note, when there is none).

        Returns:
            The :class:`History`. The model ends with the weights of the epoch ``select_metric``
            chose (the best validation accuracy by default), else the last epoch's.

        Raises:
            DataError: ``train``, ``val`` or ``target`` is empty.
            LabelError: labels do not fit the model's head.
            ShapeError: inputs do not fit the model (from the first forward pass), or target
                inputs differ in shape from the source's.
            ConfigError: ``patience`` without a selection metric, ``resume`` without ``run_dir``,
                target-using objectives without ``target``, or an unknown ``select_metric``.
            DataError: ``train`` holds one class while an objective learns from labels.
            TrainingError: the loss became NaN or infinite, or training diverged (see
                ``TrainConfig.divergence_factor``); the last good checkpoint is kept.
            CheckpointError: ``resume`` finds a checkpoint that is unreadable, of the old two-file
                format, or does not fit this model/optimiser/objectives.
        """
        cfg = self.config
        if resume and self.run_dir is None:
            raise ConfigError("resume=True needs a run_dir to read checkpoints from; pass run_dir=")
        self.check(train, val, target=target)
        self.train_data, self.val_data, self.target_data = train, val, target
        self.steps_per_epoch = len(_batch_slices(len(train), cfg.batch_size))
        model = self.model.to(self.device)
        if cfg.channels_last and any(p.ndim == 4 for p in model.parameters()):
            model = model.to(memory_format=torch.channels_last)

        torch.manual_seed(cfg.seed)
        for obj in self.objectives:
            obj.to(self.device)
            obj.setup(self)
        model_ids = {id(p) for p in model.parameters()}
        extra = [
            p for o in self.objectives for p in o.parameters()
            if p.requires_grad and id(p) not in model_ids
        ]
        head_ids = {id(p) for p in model.head.parameters()}
        self._update_sets = {
            "heads": head_ids | {id(p) for p in extra},
            "backbone": {id(p) for p in model.parameters() if id(p) not in head_ids},
        }
        self.optimizer = build_optimizer(build_param_groups(model, cfg, extra), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)

        history, best_state = History(), None
        self._guard = _DivergenceGuard(cfg.divergence_factor)
        if self.run_dir is not None:
            for path in self.run_dir.remove_stale_temporaries():
                logger.info("removed %s, left by an interrupted write", path)
        if resume:
            restored = self._restore()
            if restored is not None:
                history, best_state = restored
                if best_state is not None and history.best_epoch is not None:
                    # a kill between last.ckpt and best.safetensors leaves the latter out of step
                    self.run_dir.save_best(best_state, history.best_epoch)
        elif self.run_dir is not None and (self.run_dir.has_checkpoint()
                                           or self.run_dir.old_checkpoint_files()):
            logger.info("starting a fresh run in %s; its old checkpoint is deleted",
                        self.run_dir.root)
            self.run_dir.clear()
        self._guard.start(model)
        self.history = history
        if self.run_dir is not None:
            self.run_dir.write_metrics(history.epochs)

        cached = (
            cfg.cache_features
            and backbone_frozen_throughout(cfg)
            and all(o.head_only and not o.taps and not o.uses_target for o in self.objectives)
            and not self.phases
        )
        train_feats = val_feats = None
        if cached and not history.stopped_early and len(history.epochs) < cfg.epochs:
            train_feats = predict_features(model, train, cfg.eval_batch_size, self.device)
            if val is not None:
                val_feats = predict_features(model, val, cfg.eval_batch_size, self.device)
            logger.info("cached backbone features of %d training examples", len(train))

        start = len(history.epochs)
        self._tap = self._attach_taps()
        progress = _Progress(cfg.progress, cfg.epochs, start)
        t0 = time.perf_counter()
        try:
            for epoch in range(start, cfg.epochs):
                if history.stopped_early:
                    break
                best_state = self._run_epoch(epoch, train, val, train_feats, val_feats,
                                             history, best_state, progress)
        finally:
            if self._tap is not None:
                self._tap.remove()
                self._tap = None
            progress.close()
            history.seconds += time.perf_counter() - t0
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        return history

    def _run_epoch(
        self,
        epoch: int,
        train: TensorDataset,
        val: TensorDataset | None,
        train_feats: torch.Tensor | None,
        val_feats: torch.Tensor | None,
        history: History,
        best_state: dict[str, torch.Tensor] | None,
        progress: _Progress,
    ) -> dict[str, torch.Tensor] | None:
        cfg = self.config
        t_epoch = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update(self._train_epoch(epoch, train, train_feats, progress))
        problem = self._guard.weight_problem(self.model)
        if problem is not None:
            raise TrainingError(self._divergence_message(f"the end of epoch {epoch + 1}", problem))
        if val is not None:
            row["val_loss"], row["val_accuracy"] = self.evaluate(val, val_feats)
        else:
            row["val_loss"] = row["val_accuracy"] = None
        for monitor in self.monitors:
            row.update(monitor(self))
        row["lr"] = lr
        self.scheduler.step()
        row["seconds"] = time.perf_counter() - t_epoch
        history.epochs.append(row)
        new_best = self._is_best(row, history)
        if new_best:
            history.best_epoch, history.best_val_accuracy = epoch + 1, row["val_accuracy"]
            history.best_value = float(row[cfg.select_metric])
            best_state = cpu_state_dict(self.model)
        if (cfg.patience is not None and history.best_epoch is not None
                and epoch + 1 - history.best_epoch >= cfg.patience):
            if epoch + 1 < cfg.epochs:
                history.stopped_early = True
                logger.info("early stopping after epoch %d: %s has not improved since epoch %d",
                            epoch + 1, cfg.select_metric, history.best_epoch)
        if self.run_dir is not None:
            # last.ckpt alone is the resumable state; best.safetensors and metrics.jsonl follow it
            # (and are rewritten from it on resume), so a kill between the writes loses nothing
            self._save(epoch + 1, history, best_state)
            if new_best:
                self.run_dir.save_best(best_state, epoch + 1)
            self.run_dir.write_metrics(history.epochs)
        progress.end_epoch()
        logger.info(
            "epoch %d/%d: train_loss=%.4f train_acc=%.4f val_loss=%s val_acc=%s lr=%.3g (%.1fs)",
            epoch + 1, cfg.epochs, row["train_loss"], row["train_accuracy"],
            _fmt(row["val_loss"]), _fmt(row["val_accuracy"]), lr, row["seconds"],
        )
        return best_state

    def _is_best(self, row: dict[str, Any], history: History) -> bool:
        """Whether this epoch's ``select_metric`` beats every earlier epoch's."""
        key = self.config.select_metric
        if key not in row:
            raise ConfigError(
                f"select_metric {key!r} is not among the epoch's values "
                f"({', '.join(sorted(row))}); pass a monitor that reports it or pick one of these"
            )
        value = row[key]
        if value is None or not math.isfinite(float(value)):
            return False
        if history.best_value is None:
            return True
        if self.config.selection_mode() == "max":
            return float(value) > history.best_value
        return float(value) < history.best_value

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def _train_epoch(
        self,
        epoch: int,
        train: TensorDataset,
        feats: torch.Tensor | None,
        progress: _Progress,
    ) -> dict[str, float]:
        cfg, model = self.config, self.model
        apply_strategy(model, cfg, epoch)
        for obj in self.objectives:
            obj.on_epoch_start(self, epoch)
        gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        order = torch.randperm(len(train), generator=gen)
        target_order = self._target_order(epoch, len(train))
        slices = _batch_slices(len(train), cfg.batch_size)
        progress.start_epoch(epoch, len(slices))
        sums: dict[str, float] = defaultdict(float)
        correct = seen = 0
        for step, sl in enumerate(slices):
            idx = order[sl]
            idx_t = target_order[sl] if target_order is not None else None
            x, y = train.x[idx].to(self.device), train.y[idx].to(self.device)
            batch = self._forward(x, y, idx, idx_t, feats, epoch, step, "main")
            terms = self._losses(batch, self.objectives)
            loss = sum(o.weight * t for o, t in zip(self.objectives, terms, strict=True))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(
                    self._nan_message(epoch, step, self.term_names, terms, idx, idx_t))
            problem = self._guard.loss_problem(value)
            if problem is not None:
                raise TrainingError(
                    self._divergence_message(f"epoch {epoch + 1}, step {step}", problem))
            self._update(loss, None)
            n = len(idx)
            sums["train_loss"] += value * n
            for name, t in zip(self.term_names, terms, strict=True):
                sums[f"loss_{name}"] += float(t.detach()) * n
            correct += int((batch.logits.argmax(1) == y).sum())
            seen += n
            for phase in self.phases:
                sums[f"loss_{self._phase_owner.name}_{phase.name}"] += n * self._run_phase(
                    phase, x, y, idx, idx_t, epoch, step
                )
            progress.advance_batch()
        out = {k: v / seen for k, v in sums.items()}
        out["train_accuracy"] = correct / seen
        return out

    def _target_order(self, epoch: int, needed: int) -> torch.Tensor | None:
        """Target positions for one epoch: ``needed`` entries, whole reshuffled passes over the
        target set back to back (the smaller set cycles), seeded per epoch so resume repeats them."""
        if self.target_data is None or not any(o.uses_target for o in self.objectives):
            return None
        n = len(self.target_data)
        gen = torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch) ^ 0x7A5C3)
        passes = -(-needed // n)
        return torch.cat([torch.randperm(n, generator=gen) for _ in range(passes)])[:needed]

    def _forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        idx: torch.Tensor,
        idx_t: torch.Tensor | None,
        feats: torch.Tensor | None,
        epoch: int,
        step: int,
        phase: str,
        frozen_features: bool = False,
    ) -> Batch:
        """One forward pass of the source batch (and the target batch, concatenated after it, so
        BatchNorm sees both domains) into a :class:`Batch`."""
        model = self.model
        total = max(1, self.config.epochs * self.steps_per_epoch)
        common = dict(x=x, y=y, model=model, epoch=epoch, step=step, index=idx, phase=phase,
                      progress=(epoch * self.steps_per_epoch + step) / total)
        with self._autocast():
            if feats is not None:
                features = feats[idx.to(feats.device)]
                return Batch(logits=model.head(features), features=features, **common)
            xt = None
            if idx_t is not None:
                xt = self.target_data.x[idx_t].to(self.device)
                x = torch.cat([x, xt])
            if self._tap is not None:
                self._tap.features.clear()
            with torch.no_grad() if frozen_features else contextlib.nullcontext():
                features = model.forward_features(x)
            logits = model.head(features)
            taps = dict(self._tap.features) if self._tap is not None else {}
        if xt is None:
            return Batch(logits=logits, features=features, taps=taps, **common)
        n = len(y)
        return Batch(
            logits=logits[:n], features=features[:n], taps={k: v[:n] for k, v in taps.items()},
            target_x=xt, target_logits=logits[n:], target_features=features[n:],
            target_taps={k: v[n:] for k, v in taps.items()}, target_index=idx_t, **common,
        )

    def _losses(self, batch: Batch, objectives: Sequence[Objective]) -> list[torch.Tensor]:
        """Each objective's unweighted loss on ``batch`` (float32 scalars)."""
        with self._autocast():
            values = [o(batch).float() for o in objectives]
        for obj, v in zip(objectives, values, strict=True):
            if v.ndim != 0:
                raise TrainingError(
                    f"objective {obj.name!r} returned a loss of shape {tuple(v.shape)}; "
                    "forward(batch) must return a scalar (reduce with .mean())"
                )
        return values

    def _update(self, loss: torch.Tensor, only: set[int] | None) -> None:
        """Backpropagate ``loss`` and step the optimiser; with ``only``, parameters outside it
        (by ``id``) lose their gradient first, so the optimiser leaves them untouched."""
        opt, cfg = self.optimizer, self.config
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        params = [p for g in opt.param_groups for p in g["params"]]
        if only is not None:
            for p in params:
                if id(p) not in only:
                    p.grad = None
        if cfg.grad_clip is not None:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()

    def _run_phase(
        self,
        phase: Phase,
        x: torch.Tensor,
        y: torch.Tensor,
        idx: torch.Tensor,
        idx_t: torch.Tensor | None,
        epoch: int,
        step: int,
    ) -> float:
        """Run an extra update phase ``phase.repeat`` times on the batch; returns its mean loss."""
        owner = self._phase_owner
        only = None if phase.update == "all" else self._update_sets[phase.update]
        total = 0.0
        for _ in range(phase.repeat):
            batch = self._forward(x, y, idx, idx_t, None, epoch, step, phase.name,
                                  frozen_features=phase.update == "heads")
            (loss,) = self._losses(batch, [owner])
            if not torch.isfinite(loss):
                raise TrainingError(self._nan_message(
                    epoch, step, [f"{owner.name}_{phase.name}"], [loss], idx, idx_t))
            self._update(owner.weight * loss, only)
            total += float(loss.detach())
        return total / phase.repeat

    def _nan_message(
        self,
        epoch: int,
        step: int,
        names: Sequence[str],
        values: Sequence[torch.Tensor],
        idx: torch.Tensor,
        idx_t: torch.Tensor | None,
    ) -> str:
        """Says which terms went non-finite and why: the batch's inputs when they hold NaN/inf,
        else the step size (or inputs too large for the model)."""
        pairs = zip(names, values, strict=True)
        terms = ", ".join(f"{n}={float(v.detach()):.4g}" for n, v in pairs)
        where = f"the loss became non-finite at epoch {epoch + 1}, step {step} ({terms})"
        inputs = [(self.train_data, self.train_data.x[idx])]
        if idx_t is not None and self.target_data is not None:
            inputs.append((self.target_data, self.target_data.x[idx_t]))
        largest = 0.0
        for data, x in inputs:
            if not x.is_floating_point():
                continue
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                return (
                    f"{where}: this batch of {data.name!r} holds {bad} NaN/inf input value(s); "
                    f"remove or impute them before training{self._kept()}"
                )
            if x.numel():
                largest = max(largest, float(x.abs().max()))
        return (
            f"{where}; lower the learning rate (lr={self.config.lr:g}) or set grad_clip (now "
            f"{self.config.grad_clip}), or, if the inputs are far from unit scale (largest |x| in "
            f"this batch: {largest:.3g}), normalise them{self._kept()}"
        )

    def _divergence_message(self, where: str, problem: str) -> str:
        cfg = self.config
        allow = ""
        if cfg.divergence_factor is not None and "NaN" not in problem:
            allow = (f"; if this is expected, raise divergence_factor (now "
                     f"{cfg.divergence_factor:g}) or set it to None")
        return (
            f"training diverged at {where}: {problem}; lower the learning rate (lr={cfg.lr:g}) "
            f"or set grad_clip (now {cfg.grad_clip}){self._kept()}{allow}"
        )

    def _kept(self) -> str:
        """Where the last good checkpoint is, for error messages (empty without one)."""
        if self.run_dir is None or not self.run_dir.has_checkpoint():
            return ""
        return (f"; the last good checkpoint (epoch {len(self.history.epochs)}) in "
                f"{str(self.run_dir.root)!r} is kept")

    @torch.no_grad()
    def evaluate(
        self, data: TensorDataset, feats: torch.Tensor | None = None
    ) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of the model on ``data`` (eval mode, no gradients).

        Args:
            data: Examples to score.
            feats: Precomputed backbone features ``(N, D)`` of ``data``; only the head runs.
        """
        model = self.model.to(self.device)
        model.eval()
        total = correct = 0.0
        bs = self.config.eval_batch_size
        for start in range(0, len(data), bs):
            y = data.y[start : start + bs].to(self.device)
            with self._autocast():
                if feats is not None:
                    logits = model.head(feats[start : start + bs])
                else:
                    logits = model(data.x[start : start + bs].to(self.device))
            total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
        n = max(1, len(data))
        return total / n, correct / n

    # ------------------------------------------------------------------ checkpoints
    def _save(self, epoch: int, history: History, best_state: dict | None) -> None:
        state = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "history": history.to_dict(),
            "best_model": best_state,
            "objectives": [o.state_dict() for o in self.objectives],
            "config": self.config.model_dump(),
            "guard": self._guard.state_dict(),
        }
        self.run_dir.save_checkpoint(cpu_state_dict(self.model), state)

    def _restore(self) -> tuple[History, dict[str, torch.Tensor] | None] | None:
        loaded = self.run_dir.load_checkpoint()
        if loaded is None:
            logger.info("resume=True but %s has no checkpoint; starting fresh", self.run_dir.root)
            return None
        weights, state = loaded
        path = self.run_dir.last
        load_training_state(
            state, weights, self.model, self.optimizer, self.scheduler, self.scaler,
            self.objectives, where=str(path),
        )
        self._guard.load_state_dict(state.get("guard", {}))
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        old = state.get("config", {})
        changed = sorted(k for k, v in self.config.model_dump().items()
                         if k in old and old[k] != v and k not in ("epochs", "progress"))
        if changed:
            logger.warning("resuming with changed config values: %s", ", ".join(changed))
        history = History(**state["history"])
        if history.best_value is None and self.config.select_metric == "val_accuracy":
            history.best_value = history.best_val_accuracy  # checkpoints written before best_value
        logger.info("resuming from %s after epoch %d", path, int(state["epoch"]))
        return history, state.get("best_model")


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the shuffling generator of 0-based ``epoch`` (same batches on resume)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63)


def _unique_names(names: list[str]) -> list[str]:
    out, counts = [], defaultdict(int)
    for n in names:
        counts[n] += 1
        out.append(n if counts[n] == 1 else f"{n}_{counts[n]}")
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


__all__ = ["History", "Trainer", "epoch_seed", "predict_features"]
