"""Knowledge distillation: the student learns what a frozen teacher knows.

Every method is an :class:`~transferkit.engine.Objective` registered in
``transferkit.engine.OBJECTIVES`` (importing this package registers them), so methods combine with
each other and with any other objective (a fine-tuning regulariser, say) as a list:

* ``kd`` — :class:`LogitKD`, softened logits (Hinton et al., 2015), one or several teachers;
* ``hint`` — :class:`Hint`, intermediate features through an adapter (FitNets, Romero et al., 2015);
* ``attention`` — :class:`AttentionTransfer` (Zagoruyko & Komodakis, 2017);
* ``rkd`` — :class:`RKD`, distances and angles between samples (Park et al., 2019);
* ``fsp`` — :class:`FSP`, the flow between layers (Yim et al., 2017).

A :class:`Teacher` wraps the frozen model: eval mode, no gradients, outside the optimiser and the
checkpoints, one forward per step shared by all objectives, logits precomputed when possible.
"""

from transferkit.transfer.distill.adapters import build_adapter
from transferkit.transfer.distill.attention import AttentionTransfer, at_loss, attention_map
from transferkit.transfer.distill.features import Hint, LayerHints, hint_loss, uniform_layer_map
from transferkit.transfer.distill.logits import LogitKD, kd_loss
from transferkit.transfer.distill.relations import (
    FSP,
    RKD,
    fsp_loss,
    fsp_matrix,
    rkd_angle_loss,
    rkd_distance_loss,
)
from transferkit.transfer.distill.self_attention import SelfAttentionKD
from transferkit.transfer.distill.teacher import Teacher, TeacherOutput

__all__ = [
    "FSP",
    "RKD",
    "AttentionTransfer",
    "Hint",
    "LayerHints",
    "SelfAttentionKD",
    "LogitKD",
    "Teacher",
    "TeacherOutput",
    "at_loss",
    "attention_map",
    "build_adapter",
    "fsp_loss",
    "fsp_matrix",
    "hint_loss",
    "uniform_layer_map",
    "kd_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
]
