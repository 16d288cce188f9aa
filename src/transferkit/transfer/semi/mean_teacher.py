"""Mean Teacher: the student agrees with an exponential moving average of itself.

Tarvainen & Valpola (2017), "Mean teachers are better role models: Weight-averaged consistency
targets improve semi-supervised deep learning results" (NeurIPS): the teacher's weights are
``theta'_t = alpha * theta'_{t-1} + (1 - alpha) * theta_t`` (``alpha`` = 0.99, 0.999 later in training
in the paper) and the consistency cost is the mean squared difference between the student's and the
teacher's class probabilities on the unlabelled examples, each under its own noise (averaged over
examples and classes, as the authors' code does). Here the teacher
sees the weak view of every unlabelled image and the student the strong one (``views=True``, the
engine's augmentation seam); for inputs that have no views (text) or with ``views=False`` both see
the unlabelled batch as it is, the student with its dropout, the teacher without.

The averaged model is kept out of the optimiser like a distillation ``Teacher`` (its parameters do
not require gradients) but in this objective's state, so checkpoints hold it and a resumed run
continues with it. It is updated from the student at the start of each step, i.e. after every
optimiser step. Use beside ``cross_entropy``: ``[CrossEntropy(), MeanTeacher(weight=10)]``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import Field
from torch import nn

from transferkit.engine.objectives import OBJECTIVES, Batch, Objective, ObjectiveOptions
from transferkit.errors import ConfigError
from transferkit.transfer.semi.pseudo_label import require_unlabelled

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext


def _without_hooks(model: nn.Module) -> nn.Module:
    """``model`` with every forward hook removed (a deep copy keeps the student's layer taps)."""
    for module in model.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return model


class MeanTeacher(Objective):
    """Mean squared difference between the student's and its weight-averaged teacher's class
    probabilities on unlabelled examples (Tarvainen & Valpola, 2017)."""

    class Options(ObjectiveOptions):
        """Mean Teacher's options."""

        decay: float = Field(0.99, ge=0.0, lt=1.0, description="alpha: the teacher keeps this share of "
                             "its weights at every step (0.99; 0.999 for long runs).")
        views: bool = Field(True, description="The teacher sees the weak view and the student the strong "
                            "one (image batches); false: both see the unlabelled batch as it is.")

    uses_target: ClassVar[bool] = True

    def __init__(self, weight: float = 1.0, decay: float = 0.99, views: bool = True) -> None:
        super().__init__(weight, decay=decay, views=views)
        self.needs_views = bool(self.options.views)
        self.teacher: nn.Module | None = None

    def setup(self, ctx: FitContext) -> None:
        if getattr(ctx.model, "tokenizer", None) is not None:  # token ids have no augmented views
            self.needs_views = False
        self.teacher = _without_hooks(copy.deepcopy(ctx.model)).to(ctx.device)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """``teacher = decay * teacher + (1 - decay) * student``; buffers (BatchNorm statistics) copied."""
        if self.teacher is None:
            raise ConfigError("mean_teacher has no teacher yet: it is set up by Trainer.fit")
        decay = self.options.decay
        for t, s in zip(self.teacher.parameters(), student.parameters(), strict=True):
            t.lerp_(s.detach(), 1.0 - decay)
        for t, s in zip(self.teacher.buffers(), student.buffers(), strict=True):
            t.copy_(s)

    def forward(self, batch: Batch) -> torch.Tensor:
        logits = require_unlabelled(batch, self.name)
        model = batch.model
        if batch.phase == "main":
            self.update(model)
        assert self.teacher is not None
        self.teacher.eval()
        if self.needs_views and batch.target_views is not None:
            weak, strong = batch.target_views
            with torch.no_grad():
                target = torch.softmax(self.teacher(weak).float(), dim=1)
            logits = model(strong)
        else:
            with torch.no_grad():
                target = torch.softmax(self.teacher(batch.target_x).float(), dim=1)
        return ((torch.softmax(logits.float(), dim=1) - target) ** 2).mean()  # the paper's code: / (M * C)


OBJECTIVES.register("mean_teacher", MeanTeacher)

__all__ = ["MeanTeacher"]
