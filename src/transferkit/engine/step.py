"""What one training step does: forward, taps, summed objective terms, update.

:class:`StepRunner` holds the pieces of a step (model, objectives, optimiser, gradient scaler, the
taps, the divergence guard) and offers them as small operations -- :meth:`~StepRunner.forward`,
:meth:`~StepRunner.losses`, :meth:`~StepRunner.update` -- from which :meth:`~StepRunner.default_step`
is built. A method that needs its own update sequence (MCD's three updates per batch) overrides
:meth:`Objective.training_step <transferkit.engine.objectives.Objective.training_step>` and composes
the same operations, as Lightning's manual optimisation does; the loop itself has one plain step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from transferkit.engine.batches import Examples, concat, data_name
from transferkit.engine.config import TrainConfig
from transferkit.engine.context import FitContext
from transferkit.engine.guard import DivergenceGuard, divergence_message, nan_message
from transferkit.engine.objectives import Batch, Objective
from transferkit.errors import TrainingError
from transferkit.models.surgery import LayerTap


@dataclass
class StepOutput:
    """What a step reports: the total loss, every term (``loss_<name>``), and correct / counted
    labelled examples for the training accuracy."""

    total: float
    terms: dict[str, float] = field(default_factory=dict)
    correct: int = 0
    labelled: int = 0


class StepRunner:
    """The operations a training step is made of.

    Attributes:
        context: The run's :class:`FitContext`.
        objectives, term_names: The loss terms and their logged names.
        optimizer, scaler: Built by the trainer before the first step.
        head_params: ``id`` s of the parameters a ``"heads"`` update steps: the model's head and
            the objectives' own trainable parameters. ``backbone_params``: the model's others.
    """

    def __init__(
        self,
        context: FitContext,
        objectives: Sequence[Objective],
        term_names: Sequence[str],
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        guard: DivergenceGuard,
        autocast: Callable[[], contextlib.AbstractContextManager],
        tap: LayerTap | None = None,
        grad_sync: Callable[[list[torch.Tensor], int], None] | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        augment: Callable[[Examples], Examples] | None = None,
        views: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        kept: Callable[[], str] = lambda: "",
    ) -> None:
        self.context, self.objectives, self.term_names = context, list(objectives), list(term_names)
        self.optimizer, self.scaler, self.guard, self.autocast = optimizer, scaler, guard, autocast
        self.tap, self.grad_sync, self.augment, self.kept = tap, grad_sync, augment, kept
        self.reduce, self.views = reduce, views
        self.count = 0
        model = context.model
        model_ids = {id(p) for p in model.parameters()}
        extra = {id(p) for o in self.objectives for p in o.parameters() if id(p) not in model_ids}
        self.head_params = {id(p) for p in model.head.parameters()} | extra
        self.backbone_params = {id(p) for p in model.parameters()} - self.head_params
        self.cached_features: torch.Tensor | None = None
        self.cached_target_features: torch.Tensor | None = None
        self._params: list[torch.Tensor] | None = None
        self.strategy_applied = False
        self.epoch = self.step = 0
        self.steps_per_epoch = max(1, context.steps_per_epoch)

    @property
    def model(self) -> nn.Module:
        return self.context.model

    @property
    def config(self) -> TrainConfig:
        return self.context.config

    def where(self) -> str:
        return f"epoch {self.epoch + 1}, step {self.step}"

    # ------------------------------------------------------------------ operations
    def forward(self, ex: Examples, phase: str = "main", frozen_features: bool = False) -> Batch:
        """One forward pass of the batch (and its target batch, concatenated after it so
        BatchNorm sees both domains) into a :class:`Batch`; with ``frozen_features`` the backbone
        runs without gradients."""
        model = self.model
        total = max(1, self.config.epochs * self.steps_per_epoch)
        common = dict(x=ex.x, y=ex.y, model=model, epoch=self.epoch, step=self.step, index=ex.index,
                      phase=phase, progress=(self.epoch * self.steps_per_epoch + self.step) / total,
                      y_soft=ex.soft, augmented=self.augment is not None)
        with self.autocast():
            if self.cached_features is not None:
                features = self.cached_features[ex.index.to(self.cached_features.device)]
                if ex.target is None or self.cached_target_features is None:
                    return Batch(logits=model.head(features), features=features, **common)
                cache, t = self.cached_target_features, ex.target
                target_features = cache[t.index.to(cache.device)]
                logits = model.head(torch.cat([features, target_features]))
                n = len(features)
                return Batch(logits=logits[:n], features=features, target_x=t.x, target_logits=logits[n:],
                             target_features=target_features, target_index=t.index, **common)
            x = ex.x if ex.target is None else concat(ex.x, ex.target.x)
            if self.tap is not None:
                self.tap.features.clear()
            with torch.no_grad() if frozen_features else contextlib.nullcontext():
                features = model.forward_features(x)
            logits = model.head(features)
            taps = dict(self.tap.features) if self.tap is not None else {}
        if ex.target is None:
            return Batch(logits=logits, features=features, taps=taps, **common)
        n, t = len(ex), ex.target
        if self.views is not None:
            with torch.no_grad():
                common["target_views"] = self.views(t.x)
        return Batch(
            logits=logits[:n], features=features[:n], taps={k: v[:n] for k, v in taps.items()},
            target_x=t.x, target_logits=logits[n:], target_features=features[n:],
            target_taps={k: v[n:] for k, v in taps.items()}, target_index=t.index, **common,
        )

    def losses(self, batch: Batch, objectives: Sequence[Objective] | None = None) -> list[torch.Tensor]:
        """Each objective's unweighted loss on ``batch`` (float32 scalars)."""
        objectives = self.objectives if objectives is None else objectives
        with self.autocast():
            values = [o(batch).float() for o in objectives]
        for obj, v in zip(objectives, values, strict=True):
            if v.ndim != 0:
                raise TrainingError(
                    f"objective {obj.name!r} returned a loss of shape {tuple(v.shape)}; "
                    "forward(batch) must return a scalar (reduce with .mean())"
                )
        return values

    def check(self, ex: Examples, names: Sequence[str], values: Sequence[torch.Tensor],
              total: torch.Tensor, diverge: bool = True) -> float:
        """The total loss as a float, after refusing a non-finite one or (with ``diverge``) one the
        divergence guard flags -- before any update, so the weights stay good."""
        total = total.detach() if self.reduce is None else self.reduce(total)  # every rank decides alike
        value = float(total)
        if not math.isfinite(value):
            ctx = self.context
            inputs = [(data_name(ctx.train_data), ex.x)]
            if ex.target is not None and ctx.target_data is not None:
                inputs.append((data_name(ctx.target_data), ex.target.x))
            raise TrainingError(nan_message(self.where(), names, values, inputs, self.config, self.kept()))
        problem = self.guard.loss_problem(value) if diverge else None
        if problem is not None:
            raise TrainingError(divergence_message(self.where(), problem, self.config, self.kept()))
        return value

    def update(self, loss: torch.Tensor, only: set[int] | None = None,
               adjust: Callable[[], None] | None = None) -> None:
        """Backpropagate ``loss`` and step the optimiser; with ``only``, parameters outside it
        (by ``id``) lose their gradient first, so the optimiser leaves them untouched; ``adjust`` is
        called after the backward pass to change gradients in place (gradient surgery) before they
        are synchronised, clipped and applied (scaled by the gradient scaler, as ``loss`` was)."""
        opt, cfg = self.optimizer, self.config
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if adjust is not None:
            adjust()
        params = self._params
        if params is None:  # the optimiser's groups are fixed for the fit
            params = self._params = [p for g in opt.param_groups for p in g["params"]]
        if only is not None:
            for p in params:
                if id(p) not in only:
                    p.grad = None
        if self.grad_sync is not None:
            self.grad_sync([p.grad for p in params if p.grad is not None], self.count)
        if cfg.grad_clip is not None:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()

    # ------------------------------------------------------------------ steps
    def default_step(self, ex: Examples) -> StepOutput:
        """Forward -> taps -> the weighted sum of every objective's term -> one update."""
        batch = self.forward(ex)
        terms = self.losses(batch)
        weighted = [t if o.weight == 1.0 else o.weight * t  # 1.0 * t is t: skip the multiplication
                    for o, t in zip(self.objectives, terms, strict=True)]
        loss = weighted[0] if len(weighted) == 1 else sum(weighted)
        value = self.check(ex, self.term_names, terms, loss)
        self.update(loss)
        with torch.no_grad():  # a prediction is never -1, so unlabelled rows never count as correct
            correct = int((batch.logits.argmax(1) == ex.y).sum())
            labelled = len(ex) if ex.all_labelled else int((ex.y >= 0).sum())
        return StepOutput(
            total=value,
            terms={f"loss_{n}": float(t.detach()) for n, t in zip(self.term_names, terms, strict=True)},
            correct=correct,
            labelled=labelled,
        )

    def run(self, ex: Examples, epoch: int, step: int, owner: Objective | None) -> StepOutput:
        """One step on ``ex`` (augmented first when configured): the ``owner`` objective's own
        :meth:`~transferkit.engine.objectives.Objective.training_step` if it has one, else the default."""
        self.epoch, self.step, self.count = epoch, step, len(ex)
        if self.augment is not None:
            ex = self.augment(ex)
        if owner is None:
            return self.default_step(ex)
        return owner.training_step(self, ex)


__all__ = ["StepOutput", "StepRunner"]
