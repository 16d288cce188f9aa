"""LwF: learning without forgetting, by distilling the source head's old outputs.

Li & Hoiem (2017), "Learning without Forgetting" (TPAMI). The network keeps its source head
(``θ_o``) beside the new head (``θ_n``). Before training, the source model's outputs
``Y_o = f_source(x)`` on every *target* training example are recorded once; during training the
old head, fed the student's (shared, changing) backbone features, is held to those outputs by
knowledge distillation while the new head learns the target task::

    L = CE(new_head(φ(x)), y) + λ_o · T² · KL(softmax(Y_o / T) || softmax(old_head(φ(x)) / T))

with ``T = 2`` in the paper. The old head trains jointly. No source data is needed. The paper's
warm-up (train only the new head first) is the trainer's ``strategy: gradual``.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import torch
from pydantic import Field
from torch import nn

from transferkit.engine.batches import first_input
from transferkit.engine.objectives import OBJECTIVES, Batch, Objective, ObjectiveOptions, PositiveFloat
from transferkit.errors import ConfigError, ShapeError
from transferkit.transfer.distill.logits import kd_loss

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext

logger = logging.getLogger(__name__)


class LwF(Objective):
    """Learning without Forgetting (Li & Hoiem, 2017) as a loss term.

    Use beside the task loss: ``[CrossEntropy(), LwF(source, temperature=2.0, weight=1.0)]``.

    Args:
        source: The source TransferNet (backbone + old head), as before fine-tuning; it is only
            read (kept out of the optimiser and of checkpoints).
        temperature: Softmax temperature ``T`` > 0 of the distillation (2 in the paper).
        weight: ``λ_o``, the multiplier of this term in the total loss.

    Attributes:
        old_head: After :meth:`setup`, a trainable copy of ``source.head`` on the training device,
            mapping student features ``(N, D)`` to old-task logits ``(N, C_old)``.
        targets: After :meth:`setup`, the recorded source logits ``Y_o`` ``(N_train, C_old)``
            (a plain tensor), row ``i`` for training example ``i``.

    Raises:
        ConfigError: ``source`` missing or without a ``head``; ``temperature`` not > 0.
    """

    class Options(ObjectiveOptions):
        """LwF's options."""

        temperature: PositiveFloat = Field(
            2.0, description="Softmax temperature T of the distillation (2 in the paper).",
        )

    def __init__(
        self,
        source: nn.Module | None = None,
        temperature: float = 2.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight, temperature=temperature)
        if source is None:
            raise ConfigError(
                "LwF needs the source model (backbone + its source head) to remember: pass "
                "source= (e.g. --source path/to/model)"
            )
        if not isinstance(source, nn.Module) or not isinstance(
            getattr(source, "head", None), nn.Module
        ):
            raise ConfigError(
                f"LwF source must be a TransferNet with a 'head' (the source classifier), got a "
                f"{type(source).__name__}; load it with transferkit.models.load_model"
            )
        self.temperature = self.options.temperature
        # Kept out of the module tree on purpose: the source itself is never trained or saved.
        self.__dict__["_source"] = source
        self.old_head: nn.Module | None = None
        self.targets: torch.Tensor | None = None
        self.name = "lwf"

    def extra_repr(self) -> str:
        return f"weight={self.weight}, temperature={self.temperature}"

    @torch.no_grad()
    def _record(self, ctx: FitContext) -> torch.Tensor:
        """Source logits on every training example, in order, eval mode: ``(N, C_old)``."""
        source: nn.Module = self.__dict__["_source"]
        src_device = next((p.device for p in source.parameters()), ctx.device)
        was_training = source.training
        source.eval()
        try:
            outs = [source(x.to(src_device)).float().to(ctx.device) for x in ctx.input_batches()]
        finally:
            source.train(was_training)
        return torch.cat(outs)

    def _check_features(self, ctx: FitContext) -> None:
        """The student's features must fit the old head's input (probe with one example)."""
        source: nn.Module = self.__dict__["_source"]
        model = ctx.model
        x = first_input(ctx.train_data)
        src_device = next((p.device for p in source.parameters()), ctx.device)
        modes = (model.training, source.training)
        model.eval()
        source.eval()
        try:
            with torch.no_grad():
                mine = model.forward_features(x.to(ctx.device))
                theirs = source.forward_features(x.to(src_device))
        finally:
            model.train(modes[0])
            source.train(modes[1])
        if tuple(mine.shape[1:]) != tuple(theirs.shape[1:]):
            raise ShapeError(
                f"LwF: the student's backbone gives features of shape {tuple(mine.shape[1:])} but "
                f"the source head takes {tuple(theirs.shape[1:])}; LwF shares the backbone, so "
                "the student must have the source's backbone (transfer its parameters first)"
            )

    def setup(self, ctx: FitContext) -> None:
        """Copy the old head (trainable) and record the source's outputs on the training set.

        Raises:
            ShapeError: the student's feature size differs from the old head's input.
            ConfigError: the trainer has no training data.
        """
        if ctx.train_data is None or len(ctx.train_data) == 0:
            raise ConfigError("LwF.setup needs ctx.train_data (call it through Trainer.fit)")
        source: nn.Module = self.__dict__["_source"]
        if not hasattr(source, "forward_features") or not hasattr(ctx.model,
                                                                   "forward_features"):
            raise ConfigError("LwF needs TransferNets (forward_features + head) for student and "
                              "source; wrap them with transferkit.models.wrap_model")
        self._check_features(ctx)
        head = copy.deepcopy(source.head).to(ctx.device)
        for p in head.parameters():
            p.requires_grad_(True)
        self.old_head = head.train()
        self.targets = self._record(ctx)
        logger.info("LwF: recorded the source's %d-class outputs on %d training examples",
                    self.targets.shape[1], self.targets.shape[0])

    def source_head(self) -> nn.Module:
        """The old head as trained jointly with the student (after :meth:`setup`).

        Put it on the fine-tuned backbone to measure the source task after fine-tuning:
        ``head(student.forward_features(x))``.

        Raises:
            ConfigError: :meth:`setup` has not run yet.
        """
        if self.old_head is None:
            raise ConfigError("LwF has no old head yet: it is made in setup (Trainer.fit)")
        return self.old_head

    def forward(self, batch: Batch) -> torch.Tensor:
        """``T² KL(softmax(Y_o/T) || softmax(old_head(features)/T))`` of the batch, a scalar."""
        if self.old_head is None or self.targets is None:
            raise ConfigError("LwF.forward before setup; train through Trainer.fit")
        if batch.index is None:
            raise ConfigError("LwF needs batch.index to look up the recorded source outputs")
        old = self.old_head(batch.features)
        return kd_loss(old, self.targets[batch.index.to(self.targets.device)], self.temperature)


OBJECTIVES.register("lwf", LwF)

__all__ = ["LwF"]
