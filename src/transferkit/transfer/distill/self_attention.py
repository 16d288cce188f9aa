"""Self-attention distillation between transformers: the student's attention distributions learn the
teacher's (MiniLM, Wang et al., 2020; MiniLMv2, Wang et al., 2021).

For one layer of each model (the last transformer layer by default), the queries and keys are read
from the layer's query / key projections, split into ``R`` relation heads (the same ``R`` on both
sides, so a student with fewer heads or another width still compares: MiniLMv2's relation heads), and
turned into attention distributions ``softmax(Q K^T / sqrt(d))`` over the real tokens of each text.
The loss is the KL divergence from the teacher's distributions to the student's, averaged over the
real query tokens, the heads and the batch. Token by token, so both models must use one tokenizer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field

from transferkit.engine.objectives import OBJECTIVES, Batch, LayerName, Objective, ObjectiveOptions
from transferkit.errors import ConfigError, ShapeError, TrainingError
from transferkit.transfer.distill.features import layer_names
from transferkit.transfer.distill.teacher import Teacher

if TYPE_CHECKING:
    from torch import nn

    from transferkit.engine.context import FitContext

_QUERY = ("query", "q_lin", "q_proj")
_KEY = ("key", "k_lin", "k_proj")


def projections(model: nn.Module, layer: str) -> tuple[str, str]:
    """Names of the query and key projections inside transformer ``layer`` of ``model``.

    Raises:
        ConfigError: the layer has no module named like a query / key projection.
    """
    names = [n for n, _ in model.named_modules() if n.startswith(layer + ".")]
    query = next((n for n in names if n.rsplit(".", 1)[-1] in _QUERY), None)
    key = next((n for n in names if n.rsplit(".", 1)[-1] in _KEY), None)
    if query is None or key is None:
        raise ConfigError(
            f"layer {layer!r} has no query / key projection (looked for modules named "
            f"{', '.join(_QUERY)} and {', '.join(_KEY)}); self-attention distillation needs transformer "
            "layers: name them with student_layer= / teacher_layer="
        )
    return query, key


def attention_distributions(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor,
                            heads: int) -> torch.Tensor:
    """Log attention distributions ``(N, heads, L, L)`` from queries and keys ``(N, L, D)`` split into
    ``heads`` heads; keys at padding positions (``mask`` 0) get no attention."""
    n, length, width = query.shape
    if width % heads:
        raise ShapeError(f"a width of {width} does not split into {heads} relation heads")
    d = width // heads
    q = query.float().view(n, length, heads, d).transpose(1, 2)
    k = key.float().view(n, length, heads, d).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(~mask[:, None, None, :].bool(), -1e4)  # exp(-1e4) is 0: no inf, no NaN
    return F.log_softmax(scores, dim=-1)


def relation_heads(student_width: int, teacher_width: int, wanted: int) -> int:
    """The most relation heads, at most ``wanted``, that divide both widths."""
    for r in range(max(1, wanted), 0, -1):
        if student_width % r == 0 and teacher_width % r == 0:
            return r
    return 1


class SelfAttentionKD(Objective):
    """KL divergence between the teacher's and the student's self-attention distributions (MiniLM).

    Args:
        teacher: The :class:`Teacher` (a transformer with the student's tokenizer).
        student_layer: Student transformer layer; default its last.
        teacher_layer: Teacher transformer layer; default its last.
        heads: Relation heads (default: the student's attention heads, lowered until both widths
            divide).
        weight: Multiplier of this term in the total loss.
    """

    class Options(ObjectiveOptions):
        """Self-attention distillation's options."""

        student_layer: LayerName | None = Field(None, description="Student transformer layer; None: last.")
        teacher_layer: LayerName | None = Field(None, description="Teacher transformer layer; None: last.")
        heads: int | None = Field(None, ge=1, description="Relation heads; None: the student's heads.")

    def __init__(self, teacher: Teacher, student_layer: str | None = None, teacher_layer: str | None = None,
                 heads: int | None = None, weight: float = 1.0) -> None:
        super().__init__(weight, student_layer=student_layer, teacher_layer=teacher_layer, heads=heads)
        if not isinstance(teacher, Teacher):
            raise ConfigError(f"SelfAttentionKD needs a Teacher, got a {type(teacher).__name__}; "
                              "wrap the model")
        self.teacher = teacher
        self.teacher_layer = self.options.teacher_layer or layer_names(teacher.model)[-1]
        self.teacher_qk = projections(teacher.model, self.teacher_layer)
        teacher.request(self.teacher_qk)
        self.student_qk: tuple[str, str] = ("", "")
        self.heads = 1
        self.taps: tuple[str, ...] = ()
        self.name = "self_attention"

    def setup(self, ctx: FitContext) -> None:
        """Find the student's projections and the number of relation heads."""
        if getattr(ctx.model, "tokenizer", None) is None:
            raise ConfigError("self_attention distillation is for text transformers (the student has no "
                              "tokenizer)")
        self.teacher.setup(ctx)
        if self.teacher._own is not None:
            raise ShapeError("self_attention compares attention token by token, but the teacher tokenises "
                             "differently from the student; use a teacher with the student's tokenizer")
        layer = self.options.student_layer or layer_names(ctx.model)[-1]
        self.student_qk = projections(ctx.model, layer)
        self.taps = self.student_qk
        modules = dict(ctx.model.named_modules())
        t_modules = dict(self.teacher.model.named_modules())
        s_width = int(modules[self.student_qk[0]].out_features)
        t_width = int(t_modules[self.teacher_qk[0]].out_features)
        config = getattr(getattr(ctx.model.backbone, "model", None), "config", None)
        wanted = self.options.heads or int(getattr(config, "num_attention_heads", 1) or 1)
        self.heads = relation_heads(s_width, t_width, wanted)

    def forward(self, batch: Batch) -> torch.Tensor:
        """KL(teacher || student) of the attention rows of real tokens, a scalar."""
        if not self.taps:
            raise TrainingError("SelfAttentionKD.forward called before setup(ctx); train with a Trainer")
        taps = self.teacher.outputs(batch).taps
        s_q, s_k = (batch.taps[n] for n in self.student_qk)
        t_q, t_k = (taps[n] for n in self.teacher_qk)
        length = s_q.shape[1]
        ids = batch.x if isinstance(batch.x, torch.Tensor) else batch.x["attention_mask"]
        mask = (ids[:, :length] >= 0) if isinstance(batch.x, torch.Tensor) else ids[:, :length].bool()
        log_s = attention_distributions(s_q, s_k, mask, self.heads)
        log_t = attention_distributions(t_q, t_k, mask, self.heads)
        p_t = log_t.exp()
        kl = (p_t * (log_t - log_s)).sum(-1)  # (N, heads, L); padding keys have p_t = 0
        rows = mask[:, None, :].expand_as(kl).float()
        return (kl * rows).sum() / rows.sum().clamp_min(1.0)


OBJECTIVES.register("self_attention", SelfAttentionKD)

__all__ = ["SelfAttentionKD", "attention_distributions", "projections", "relation_heads"]
