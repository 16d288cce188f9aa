"""The frozen teacher every distillation objective reads from.

A :class:`Teacher` is deliberately *not* an ``nn.Module`` attribute of the objectives: its weights
stay out of the optimiser, out of the student's checkpoints and out of any DDP wrapping. It runs in
eval mode under ``torch.no_grad`` and computes its outputs once per training step, however many
objectives (logit KD, hints, attention, ...) ask for them. When nothing but its logits is needed and
the data pipeline is deterministic, it computes them once for the whole training set
(``precompute=True``) and looks them up by ``batch.index``.

A text teacher whose tokenizer differs from the student's reads the same examples tokenised its own
way: in :meth:`Teacher.setup` the training texts are tokenised for it (cached like every
tokenisation), and each batch's ids are looked up by ``batch.index``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from transferkit.engine.batches import move
from transferkit.errors import ConfigError
from transferkit.models.surgery import LayerTap

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext
    from transferkit.engine.objectives import Batch

logger = logging.getLogger(__name__)


@dataclass
class TeacherOutput:
    """What the teacher produced for one batch.

    Attributes:
        logits: ``(N, C_teacher)``, detached.
        taps: Outputs of the requested teacher layers by name, detached.
    """

    logits: torch.Tensor
    taps: dict[str, torch.Tensor] = field(default_factory=dict)


def _own_tokens(model: nn.Module, data: Any) -> Any:
    """``data`` (token ids of the student's tokenizer) tokenised for a text teacher with another
    tokenizer, or ``None`` when the teacher reads the student's inputs as they are."""
    from transferkit.data.tokens import TokenDataset, model_inputs

    if getattr(model, "tokenizer", None) is None or not isinstance(data, TokenDataset):
        return None
    own = model_inputs(data, model)
    return None if own is data else own


class Teacher:
    """A frozen model whose outputs distillation objectives learn from.

    Args:
        model: The teacher (any ``nn.Module`` mapping inputs to logits; a TransferNet usually). Its
            parameters are frozen (``requires_grad=False``) and it is kept in eval mode.
        layers: Teacher layers (names as in ``model.named_modules()``) to record on every forward.
            Objectives add theirs with :meth:`request`.
        precompute: Compute the logits for the whole training set once in :meth:`setup` when no
            layers are requested (the data must be fed unaugmented, as transferkit's engine does).
        name: Name used in logs and reports.

    Example:
        >>> teacher = Teacher(big_model)                               # doctest: +SKIP
        >>> objectives = [CrossEntropy(), LogitKD(teacher, temperature=4.0)]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] = (),
        precompute: bool = False,
        name: str = "teacher",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Teacher needs an nn.Module, got {type(model).__name__}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.layers: list[str] = []
        self.precompute = bool(precompute)
        self.name = name
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self._cache_key: tuple[Any, ...] | None = None
        self._cache: TeacherOutput | None = None
        self._table: torch.Tensor | None = None
        self._table_for: weakref.ref | None = None
        self._own: Any = None  # the training texts as this teacher's own token ids
        self._own_target: Any = None  # the same for the unlabelled (target) texts
        self._target_table: torch.Tensor | None = None
        self._target_for: weakref.ref | None = None
        self.request(layers)

    def request(self, layers: Iterable[str]) -> None:
        """Record these teacher layers on every forward (unknown names raise with suggestions)."""
        names = [str(n) for n in layers]
        if names:
            LayerTap(self.model, names)  # validates the names now, with close-match suggestions
        for n in names:
            if n not in self.layers:
                self.layers.append(n)
                self._table, self._table_for = None, None  # layer outputs need a live forward

    @property
    def num_classes(self) -> int | None:
        """The teacher head's output size when it is known from ``model.info``."""
        info = getattr(self.model, "info", None)
        return int(info.num_classes) if info is not None and info.num_classes else None

    def setup(self, ctx: FitContext) -> None:
        """Move to the training device; with ``precompute`` compute the training set's logits once.

        Safe to call once per objective that shares this teacher: the work is done once per
        training set.
        """
        self.device = ctx.device
        self.model.to(self.device).eval()
        self._cache_key, self._cache = None, None
        data = ctx.train_data
        self._own = _own_tokens(self.model, data)
        self._own_target = _own_tokens(self.model, ctx.target_data)
        if self.precompute and ctx.target_data is not None:
            self._target_table, self._target_for = self._table_of(ctx, ctx.target_data, self._own_target,
                                                                   self._target_table, self._target_for,
                                                                   "unlabelled")
        if not self.precompute or self.layers or data is None:
            return
        self._table, self._table_for = self._table_of(ctx, data, self._own, self._table, self._table_for,
                                                      "training")

    def _table_of(self, ctx: FitContext, data: Any, own: Any, table: torch.Tensor | None,
                  made_for: weakref.ref | None, what: str) -> tuple[torch.Tensor, weakref.ref | None]:
        """The logits of every example of ``data`` (``own``: its ids in this teacher's tokens), kept
        while ``data`` is the same object (a weak reference: a new object never matches)."""
        if table is not None and made_for is not None and made_for() is data:
            return table, made_for
        with torch.no_grad():
            table = torch.cat([self.model(move(x, self.device)).float().cpu()
                               for x in ctx.input_batches(own if own is not None else data)])
        logger.info("%s: precomputed logits of %d %s examples", self.name, len(data), what)
        try:
            return table, weakref.ref(data)
        except TypeError:
            return table, None

    def target_logits(self, batch: Batch) -> torch.Tensor:
        """The teacher's logits for the batch's unlabelled (target) examples: looked up by
        ``batch.target_index`` when precomputed, else one forward pass."""
        if batch.target_x is None:
            raise ConfigError(f"{self.name}: the batch has no unlabelled examples; pass "
                              "Trainer.fit(..., target=<unlabelled dataset>)")
        device = batch.target_logits.device if batch.target_logits is not None else self.device
        if self._target_table is not None and batch.target_index is not None:
            return self._target_table[batch.target_index.cpu()].to(device)
        x = batch.target_x
        if self._own_target is not None:
            if batch.target_index is None:
                raise ConfigError(f"{self.name} tokenises text its own way and needs the unlabelled "
                                  "batch's dataset positions, which this batch lacks")
            x = self._own_target.x[batch.target_index.cpu()].to(self.device)
        self.model.eval()
        with torch.no_grad():
            return self.model(x).detach().float().to(device)

    def outputs(self, batch: Batch) -> TeacherOutput:
        """The teacher's logits (and requested layer outputs) for ``batch``, computed once per step."""
        xs = batch.x.values() if isinstance(batch.x, dict) else [batch.x]
        key = (batch.epoch, batch.step, tuple((t.data_ptr(), tuple(t.shape)) for t in xs))
        if self._cache is not None and self._cache_key == key:
            return self._cache
        if self._table is not None and batch.index is not None and not self.layers and not batch.augmented:
            out = TeacherOutput(self._table[batch.index].to(batch.x.device))
        else:
            x = batch.x
            if self._own is not None:  # the same texts, in this teacher's own token ids
                if batch.index is None:
                    raise ConfigError(
                        f"{self.name} tokenises text its own way and looks its ids up by the batch's "
                        "dataset positions, which this batch lacks; pass the data as a TextDataset"
                    )
                x = self._own.x[batch.index.cpu()].to(self.device)
            self.model.eval()
            with torch.no_grad():
                if self.layers:
                    with LayerTap(self.model, self.layers, detach=True) as tap:
                        logits = self.model(x)
                    out = TeacherOutput(logits.detach(), dict(tap.features))
                else:
                    out = TeacherOutput(self.model(x).detach())
        self._cache_key, self._cache = key, out
        return out

    def __repr__(self) -> str:
        arch = getattr(getattr(self.model, "info", None), "arch", type(self.model).__name__)
        return f"Teacher({self.name!r}, arch={arch!r}, layers={self.layers}, precompute={self.precompute})"
