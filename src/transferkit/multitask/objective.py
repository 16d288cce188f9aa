"""The multi-task step: every task's objectives through its own head, weighted, one shared update.

:class:`MultiTask` is an objective that owns the training step (as MCD does), so multi-task learning
runs in the one engine: the trainer's batches come from a :class:`~transferkit.data.tasks.TaskSet`
(a batch of every task per step, or of one task drawn by the set's sampling), the model is a multi-head
:class:`~transferkit.models.TransferNet` (:func:`~transferkit.models.set_task_heads`), and each step

1. runs each task's batch through the backbone and that task's head, and its objectives (cross-entropy
   by default; any registered objective per task, e.g. an auxiliary source task kept with LwF or KD);
2. weights the task losses (``weighting``: equal, uncertainty, DWA, GradNorm; see
   :mod:`~transferkit.multitask.weighting`);
3. adds the run's other objectives once (regularisers such as L2-SP), on the first task's batch;
4. updates once; with ``surgery`` (PCGrad, CAGrad; :mod:`~transferkit.multitask.surgery`) the shared
   parameters' gradient is the tasks' gradients combined, the heads' their own task's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import nn

from transferkit.engine.objectives import OBJECTIVES, CrossEntropy, Objective, ObjectiveOptions
from transferkit.errors import ConfigError
from transferkit.multitask.surgery import cagrad, pcgrad
from transferkit.multitask.weighting import dwa_weights, gradnorm_loss, uncertainty_loss

if TYPE_CHECKING:
    from transferkit.engine.batches import Examples
    from transferkit.engine.context import FitContext
    from transferkit.engine.step import StepOutput, StepRunner

__all__ = ["MultiTask"]


class MultiTask(Objective):
    """Several tasks, one backbone (see the module docstring).

    Args:
        weight: Multiplier of the combined task loss.
        weighting, surgery, task_weights, temperature, alpha, c: See :class:`MultiTask.Options`.
        task_objectives: Task name -> that task's objectives (default: cross-entropy for every task);
            built objects a workflow passes, not options.
    """

    class Options(ObjectiveOptions):
        """How the tasks' losses combine: weighting, gradient surgery and their settings."""

        weighting: Literal["equal", "uncertainty", "dwa", "gradnorm"] = Field(
            "equal", description="How the task losses are weighted.")
        surgery: Literal["pcgrad", "cagrad"] | None = Field(
            None, description="Gradient surgery on the shared parameters (needs sampling 'all').")
        task_weights: dict[str, float] | None = Field(
            None, description="Fixed weight per task (default 1), multiplied into any weighting.")
        temperature: float = Field(2.0, gt=0, description="DWA's temperature T.")
        alpha: float = Field(1.5, ge=0, description="GradNorm's asymmetry alpha.")
        c: float = Field(0.4, ge=0, lt=1, description="CAGrad's conflict aversion c.")

    def __init__(self, weight: float = 1.0, *, weighting: str = "equal", surgery: str | None = None,
                 task_weights: Mapping[str, float] | None = None, temperature: float = 2.0,
                 alpha: float = 1.5, c: float = 0.4,
                 task_objectives: Mapping[str, Sequence[Objective]] | None = None) -> None:
        super().__init__(weight, weighting=weighting, surgery=surgery, task_weights=task_weights,
                         temperature=temperature, alpha=alpha, c=c)
        o = self.options
        self.weighting, self.surgery = o.weighting, o.surgery
        self.task_objectives = nn.ModuleDict({t: nn.ModuleList(list(objs))
                                              for t, objs in (task_objectives or {}).items()})
        self.taps = tuple(dict.fromkeys(tap for objs in self.task_objectives.values() for obj in objs
                                        for tap in obj.taps))
        self.tasks: list[str] = []
        self._generator = torch.Generator()

    def extra_repr(self) -> str:
        return f"weighting={self.weighting!r}, surgery={self.surgery!r}, tasks={self.tasks}"

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: FitContext) -> None:
        from transferkit.data.tasks import TaskSet
        from transferkit.models.heads import TaskHeads, select_task

        data = ctx.train_data
        if not isinstance(data, TaskSet):
            raise ConfigError("the multitask objective trains on several tasks: pass a TaskSet as the "
                              "training data (transferkit.data.tasks.TaskSet({name: dataset, ...}))")
        if not isinstance(ctx.model.head, TaskHeads) or set(data) - set(ctx.model.head.heads):
            missing = sorted(set(data) - set(getattr(ctx.model.head, "heads", {}) or {}))
            raise ConfigError(f"the model needs a head per task ({', '.join(missing) or 'all'} missing): "
                              "build it with transferkit.models.set_task_heads(model, {task: classes, ...})")
        if (self.surgery or self.weighting == "gradnorm") and data.sampling != "all":
            what = self.surgery or "gradnorm"
            raise ConfigError(f"{what} combines every task's gradient at each step: use sampling='all' "
                              f"(a batch of every task per step), not {data.sampling!r}")
        unknown = sorted(set(self.task_objectives) - set(data))
        if unknown:
            raise ConfigError(f"objectives given for task(s) {', '.join(unknown)}, which the data does not "
                              f"have; its tasks: {', '.join(data)}")
        weights = self.options.task_weights or {}
        if set(weights) - set(data):
            raise ConfigError(f"task_weights names unknown task(s) {sorted(set(weights) - set(data))}; "
                              f"its tasks: {', '.join(data)}")
        self.tasks = list(data)
        k = len(self.tasks)
        device = ctx.device
        for t in self.tasks:
            if t not in self.task_objectives:
                self.task_objectives[t] = nn.ModuleList([CrossEntropy()])
        self.register_buffer("fixed", torch.tensor([float(weights.get(t, 1.0)) for t in self.tasks],
                                                   device=device))
        if self.weighting == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(k, device=device))
        if self.weighting == "gradnorm":
            self.loss_weights = nn.Parameter(torch.ones(k, device=device))
            self.register_buffer("initial", torch.zeros(k, device=device))
            shared = [p for p in ctx.model.backbone.parameters() if p.requires_grad and p.ndim >= 2]
            if not shared:
                raise ConfigError("gradnorm needs a trainable backbone layer (it measures gradient norms "
                                  "there)")
            self._last_shared = shared[-1]
        if self.weighting == "dwa":
            for name in ("dwa_sum", "dwa_count", "dwa_last", "dwa_before"):
                self.register_buffer(name, torch.zeros(k, device=device, dtype=torch.float64))
        self.to(device)
        for t, objs in self.task_objectives.items():  # each task's objectives see its data and head
            val = ctx.val_data[t] if isinstance(ctx.val_data, TaskSet) else None
            task_ctx = dataclasses.replace(ctx, train_data=data[t], val_data=val)
            select_task(ctx.model, t)
            for obj in objs:
                obj.to(device)
                obj.setup(task_ctx)
        select_task(ctx.model, self.tasks[0])
        self._generator.manual_seed(int(ctx.config.seed))

    def on_epoch_start(self, ctx: FitContext, epoch: int) -> None:
        if self.weighting == "dwa" and epoch > 0 and bool((self.dwa_count > 0).all()):
            self.dwa_before.copy_(self.dwa_last)
            self.dwa_last.copy_(self.dwa_sum / self.dwa_count)
            self.dwa_sum.zero_()
            self.dwa_count.zero_()
        for objs in self.task_objectives.values():
            for obj in objs:
                obj.on_epoch_start(ctx, epoch)

    # ------------------------------------------------------------------ the step
    def current_weights(self) -> torch.Tensor:
        """The tasks' weights this step (before uncertainty's learned scaling)."""
        if self.weighting == "dwa":
            return self.fixed * dwa_weights(self.dwa_last, self.dwa_before, self.options.temperature).to(
                self.fixed)
        if self.weighting == "gradnorm":
            return self.fixed * self.loss_weights.detach()
        return self.fixed

    def training_step(self, runner: StepRunner, ex: Examples) -> StepOutput:
        from transferkit.engine.step import StepOutput
        from transferkit.models.heads import select_task

        model = runner.model
        parts = ex.tasks if ex.tasks is not None else {ex.task: ex}
        index = {t: i for i, t in enumerate(self.tasks)}
        losses, names, values = {}, [], []
        correct = labelled = 0
        first_batch = None
        for t, part in parts.items():
            select_task(model, t)
            batch = runner.forward(part)
            if first_batch is None:
                first_batch = batch
            objs = list(self.task_objectives[t])
            terms = runner.losses(batch, objs)
            losses[t] = sum(o.weight * v for o, v in zip(objs, terms, strict=True))
            names += [f"{t}/{o.name}" for o in objs]
            values += terms
            with torch.no_grad():
                correct += int((batch.logits.argmax(1) == part.y).sum())
                labelled += len(part)
        others = [o for o in runner.objectives if o is not self]
        extra_terms = runner.losses(first_batch, others) if others else []
        extra = sum(o.weight * v for o, v in zip(others, extra_terms, strict=True)) if others else None
        order = list(parts)
        stacked = torch.stack([losses[t] for t in order])
        picked = torch.tensor([index[t] for t in order], device=stacked.device)
        weights = self.current_weights()[picked].to(stacked)
        if self.weighting == "uncertainty":
            log_vars = self.log_vars[picked]
            per_task = torch.exp(-log_vars) * stacked * weights
            combined = uncertainty_loss(stacked * weights, log_vars)
        else:
            per_task = stacked * weights
            combined = per_task.sum()
        adjust = None
        if self.weighting == "gradnorm":
            adjust = self._gradnorm(runner, stacked, picked)
        if self.surgery is not None:
            adjust = self._surgery(runner, per_task, adjust)
        total = self.weight * combined + (extra if extra is not None else 0.0)
        value = runner.check(ex, [*names, *(o.name for o in others)], [*values, *extra_terms], total)
        runner.update(total, adjust=adjust)
        with torch.no_grad():
            if self.weighting == "gradnorm":  # renormalised to sum to K after every step
                w = self.loss_weights.clamp_min(1e-4)
                self.loss_weights.copy_(len(w) * w / w.sum())
            if self.weighting == "dwa":
                self.dwa_sum.index_add_(0, picked, stacked.detach().double())
                self.dwa_count.index_add_(0, picked, torch.ones_like(stacked, dtype=torch.float64))
        select_task(model, self.tasks[0])
        log = {}
        if ex.tasks is not None:  # every task in every step: per-task terms average sensibly
            log = {f"loss_{t}": float(losses[t].detach()) for t in order}
            w = (torch.exp(-self.log_vars.detach()) if self.weighting == "uncertainty"
                 else self.current_weights())
            log.update({f"weight_{t}": float(w[index[t]]) for t in order})
        log.update({f"loss_{o.name}": float(v.detach()) for o, v in zip(others, extra_terms, strict=True)})
        return StepOutput(total=value, terms=log, correct=correct, labelled=labelled)

    def _shared(self, runner: StepRunner) -> list[torch.Tensor]:
        return [p for p in runner.model.backbone.parameters() if p.requires_grad]

    def _gradnorm(self, runner: StepRunner, losses: torch.Tensor, picked: torch.Tensor):  # type: ignore[no-untyped-def]
        """GradNorm's update of the weights: their gradient, set after the backward pass."""
        if not self._last_shared.requires_grad:  # the backbone is frozen (now): the weights stay
            return None
        if bool((self.initial[picked] == 0).any()):
            self.initial[picked] = losses.detach()
        norms = torch.stack([
            torch.autograd.grad(loss, self._last_shared, retain_graph=True)[0].norm() for loss in losses])
        gn = gradnorm_loss(self.loss_weights[picked] * self.fixed[picked] * norms, losses,
                           self.initial[picked], self.options.alpha)
        grad_w = torch.autograd.grad(gn, self.loss_weights)[0]

        def adjust() -> None:
            self.loss_weights.grad = grad_w

        return adjust

    def _surgery(self, runner: StepRunner, per_task: torch.Tensor, then):  # type: ignore[no-untyped-def]
        """The tasks' gradients on the shared parameters, combined by PCGrad or CAGrad, replace their
        sum in those parameters' gradients after the backward pass."""
        shared = self._shared(runner)
        if not shared:  # a frozen backbone: nothing is shared that the tasks could pull apart
            return then
        scaler = runner.scaler
        grads = []
        for loss in per_task:
            g = torch.autograd.grad(scaler.scale(self.weight * loss), shared, retain_graph=True,
                                    allow_unused=True)
            grads.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                                    for gi, p in zip(g, shared, strict=True)]))
        stacked = torch.stack(grads)
        combined = pcgrad(stacked, self._generator) if self.surgery == "pcgrad" else cagrad(stacked,
                                                                                             self.options.c)
        replace = combined - stacked.sum(0)

        def adjust() -> None:
            if then is not None:
                then()
            offset = 0
            for p in shared:
                n = p.numel()
                delta = replace[offset:offset + n].view_as(p)
                p.grad = delta.clone() if p.grad is None else p.grad + delta
                offset += n

        return adjust


OBJECTIVES.register("multitask", MultiTask)
