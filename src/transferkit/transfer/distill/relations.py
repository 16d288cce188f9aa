"""Relational distillation: relations *between samples* (RKD) and *between layers* (FSP).

* **RKD** — Park, Kim, Lu & Cho (2019), "Relational Knowledge Distillation", CVPR. The student's
  embeddings of a batch should form the same *structure* as the teacher's: the same pairwise
  distances (normalised by their mean, so the scale of the space does not matter) and the same
  angles in every triplet. Student and teacher embeddings may have different sizes.
* **FSP** — Yim, Joo, Bae & Kim (2017), "A Gift from Knowledge Distillation: Fast Optimization,
  Network Minimization and Transfer Learning", CVPR. The "flow of solution procedure" between two
  layers is the Gram matrix of their feature maps over spatial positions, ``(N, C1, C2)``; the
  student matches the teacher's matrices.

Each: pure loss functions -> an :class:`~transferkit.engine.objectives.Objective` holding the
hyper-parameters -> registered in :data:`transferkit.engine.objectives.OBJECTIVES` (``"rkd"``,
``"fsp"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from transferkit.engine.objectives import (
    OBJECTIVES,
    Batch,
    Coefficient,
    LayerName,
    LayerPair,
    Objective,
    ObjectiveOptions,
)
from transferkit.errors import ConfigError, ShapeError
from transferkit.models.surgery import backbone_blocks
from transferkit.transfer.distill.adapters import AdapterKind
from transferkit.transfer.distill.layers import (
    first_example,
    probe_shapes,
    spatial_blocks,
    teacher_tap,
)
from transferkit.transfer.distill.teacher import Teacher

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext

logger = logging.getLogger(__name__)


def _check_teacher(teacher: object, who: str) -> None:
    if not isinstance(teacher, Teacher):
        raise ConfigError(
            f"{who} needs a Teacher, got {type(teacher).__name__}; wrap the model with "
            "transferkit.transfer.distill.teacher.Teacher(model)"
        )


def _check_embeddings(student: torch.Tensor, teacher: torch.Tensor) -> None:
    for which, e in (("student", student), ("teacher", teacher)):
        if e.ndim != 2:
            raise ShapeError(
                f"RKD needs embeddings of shape (N, D), got {which} shape {tuple(e.shape)}; "
                "flatten feature maps with .flatten(1) first"
            )
    if student.shape[0] != teacher.shape[0]:
        raise ShapeError(
            f"student and teacher embeddings hold different batch sizes ({student.shape[0]} vs "
            f"{teacher.shape[0]}); both must embed the same examples"
        )


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A scalar 0 still attached to ``like``'s graph (so backward works on it alone)."""
    return like.float().sum() * 0.0


# --------------------------------------------------------------------------- RKD
def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` Euclidean distances divided by their mean over the distinct pairs ``i != j``."""
    d = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")
    off = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d / d[off].mean().clamp_min(1e-12)


def rkd_distance_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """RKD distance loss (Park et al., 2019, Eq. 4-5).

    ``psi_D(i, j) = ||e_i - e_j||_2 / mu`` with ``mu`` the mean distance over the distinct pairs
    ``i != j`` of the batch; the loss is the Huber (smooth L1, ``beta = 1``) difference between
    the student's and teacher's ``psi_D``, averaged over all ``N x N`` entries as in the authors'
    code (github.com/lenscloth/RKD; the zero diagonal is part of the mean). Invariant to scaling
    either embedding by a positive constant.

    Args:
        student_emb: ``(N, D_s)``.
        teacher_emb: ``(N, D_t)``; ``D_t`` may differ from ``D_s``.

    Returns:
        Scalar float32 loss. With ``N < 2`` there is no pair and the loss is 0 (documented, not an
        error: a training set's last batch may be that small).

    Raises:
        ShapeError: an input is not 2-D or the batch sizes differ.
    """
    _check_embeddings(student_emb, teacher_emb)
    if student_emb.shape[0] < 2:
        return _zero(student_emb)
    with torch.no_grad():
        t = _normalised_distances(teacher_emb.float())
    s = _normalised_distances(student_emb.float())
    return F.smooth_l1_loss(s, t)


def _triplet_cosines(e: torch.Tensor) -> torch.Tensor:
    """``(N, N, N)``: entry ``[i, j, k]`` is the cosine of the angle at ``e_i`` between
    ``e_j - e_i`` and ``e_k - e_i`` (0 when ``j == i`` or ``k == i``)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2.0, dim=2)  # [i, j] = e_j - e_i
    return torch.bmm(diff, diff.transpose(1, 2))


def rkd_angle_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """RKD angle loss (Park et al., 2019, Eq. 6-7).

    ``psi_A(i, j, k) = <(e_j - e_i)/||e_j - e_i||, (e_k - e_i)/||e_k - e_i||>``, the cosine of
    the angle at ``e_i`` in the triplet; the loss is the Huber (smooth L1, ``beta = 1``)
    difference between the student's and teacher's cosines averaged over all ``N^3`` index
    triples, as in the authors' code (degenerate triples give 0 or 1 on both sides). Invariant to
    scaling, translating or rotating either embedding.

    Args:
        student_emb: ``(N, D_s)``.
        teacher_emb: ``(N, D_t)``.

    Returns:
        Scalar float32 loss. With ``N < 3`` no triplet of distinct points exists and the loss is
        0 (documented, not an error; :class:`RKD` refuses a configured batch size below 3).

    Raises:
        ShapeError: an input is not 2-D or the batch sizes differ.
    """
    _check_embeddings(student_emb, teacher_emb)
    if student_emb.shape[0] < 3:
        return _zero(student_emb)
    with torch.no_grad():
        t = _triplet_cosines(teacher_emb.float())
    s = _triplet_cosines(student_emb.float())
    return F.smooth_l1_loss(s, t)


class RKD(Objective):
    """Relational knowledge distillation (Park et al., 2019); registered as ``"rkd"``.

    ``loss = distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss`` on the batch's
    student and teacher embeddings (4-D outputs are flattened to ``(N, C*H*W)``). The paper's
    weights are 25 and 50 (ratio 1:2, kept by the defaults; scale with ``weight``).

    Args:
        teacher: The frozen :class:`~transferkit.transfer.distill.teacher.Teacher`.
        student_layer: Student layer whose output is the embedding; ``None``: the backbone
            features ``batch.features`` ``(N, feature_dim)``.
        teacher_layer: Teacher layer; ``None``: the teacher's last backbone block (its features).
        distance_weight: Weight of the distance term (>= 0).
        angle_weight: Weight of the angle term (>= 0).
        weight: Multiplier of the whole term in the total loss.

    Raises:
        ConfigError: negative weights, both term weights 0 (see :attr:`Options`), no teacher
            backbone for the default ``teacher_layer``, or (in :meth:`setup`) a batch size below 3
            with the angle term on.
        UnknownNameError: a layer name does not exist.
    """

    class Options(ObjectiveOptions):
        """RKD's options."""

        student_layer: LayerName | None = Field(
            None, description="Student layer whose output is the embedding; None: the backbone "
                              "features.",
        )
        teacher_layer: LayerName | None = Field(
            None, description="Teacher layer whose output is the embedding; None: its last "
                              "backbone block.",
        )
        distance_weight: Coefficient = Field(1.0, description="Weight of the distance term.")
        angle_weight: Coefficient = Field(2.0, description="Weight of the angle term.")

        @model_validator(mode="after")
        def _some_term(self) -> RKD.Options:
            if self.distance_weight == 0 and self.angle_weight == 0:
                raise ValueError(
                    "distance_weight and angle_weight are both 0, so the term is always 0; "
                    "set at least one above 0 (the paper uses 25 and 50)"
                )
            return self

    def __init__(
        self,
        teacher: Teacher,
        student_layer: str | None = None,
        teacher_layer: str | None = None,
        distance_weight: float = 1.0,
        angle_weight: float = 2.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight, student_layer=student_layer, teacher_layer=teacher_layer,
                         distance_weight=distance_weight, angle_weight=angle_weight)
        _check_teacher(teacher, "RKD")
        opts = self.options
        self.distance_weight = opts.distance_weight
        self.angle_weight = opts.angle_weight
        student_layer, teacher_layer = opts.student_layer, opts.teacher_layer
        if teacher_layer is None:
            if not hasattr(teacher.model, "backbone"):
                raise ConfigError(
                    f"the teacher ({type(teacher.model).__name__}) has no 'backbone'; pass "
                    "teacher_layer= naming the layer whose output is its embedding"
                )
            teacher_layer = backbone_blocks(teacher.model)[-1][0]
        self.teacher = teacher
        self.student_layer = student_layer
        self.teacher_layer = str(teacher_layer)
        teacher.request([self.teacher_layer])
        self.taps = (student_layer,) if student_layer else ()

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, student_layer={self.student_layer or 'features'!r}, "
            f"teacher_layer={self.teacher_layer!r}, distance_weight={self.distance_weight}, "
            f"angle_weight={self.angle_weight}"
        )

    def setup(self, ctx: FitContext) -> None:
        """Check the student layer and the batch size; set up the teacher."""
        bs = int(ctx.config.batch_size)
        if self.angle_weight > 0 and bs < 3:
            raise ConfigError(
                f"RKD's angle term needs batches of at least 3 examples (triplets), but "
                f"batch_size={bs}; raise batch_size (RKD works best with 32 or more) or set "
                "angle_weight=0"
            )
        if self.student_layer:
            shape = probe_shapes(ctx.model, [self.student_layer], first_example(ctx))
            if shape[self.student_layer] is None:
                raise ShapeError(
                    f"student layer {self.student_layer!r} does not output a tensor; pick a layer "
                    "whose output is (N, D) or (N, C, H, W)"
                )
        self.teacher.setup(ctx)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Weighted RKD distance + angle loss of the batch's embeddings."""
        s = batch.taps[self.student_layer] if self.student_layer else batch.features
        t = teacher_tap(self.teacher.outputs(batch), self.teacher_layer)
        s, t = s.flatten(1), t.flatten(1)
        loss = _zero(s)
        if self.distance_weight:
            loss = loss + self.distance_weight * rkd_distance_loss(s, t)
        if self.angle_weight:
            loss = loss + self.angle_weight * rkd_angle_loss(s, t)
        return loss


# --------------------------------------------------------------------------- FSP
def fsp_matrix(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Flow-of-solution-procedure matrix between two feature maps (Yim et al., 2017, Eq. 1).

    ``G[n, a, b] = sum_{h, w} f1[n, a, h, w] * f2[n, b, h, w] / (H * W)``. When the spatial sizes
    differ, the larger map is adaptive-average-pooled to the smaller one's ``(H, W)`` first (the
    paper pairs layers of equal size; pooling is this library's extension).

    Args:
        f1: ``(N, C1, H1, W1)``.
        f2: ``(N, C2, H2, W2)``.

    Returns:
        ``(N, C1, C2)`` float32.

    Raises:
        ShapeError: an input is not 4-D or the batch sizes differ.
    """
    for which, f in (("first", f1), ("second", f2)):
        if f.ndim != 4:
            raise ShapeError(
                f"FSP matrices need (N, C, H, W) feature maps, got {which} map of shape "
                f"{tuple(f.shape)}; pick convolutional layers (an MLP has none: use 'rkd')"
            )
    if f1.shape[0] != f2.shape[0]:
        raise ShapeError(f"FSP maps hold different batch sizes ({f1.shape[0]} vs {f2.shape[0]})")
    size = (min(f1.shape[2], f2.shape[2]), min(f1.shape[3], f2.shape[3]))
    f1, f2 = (
        f if tuple(f.shape[2:]) == size else F.adaptive_avg_pool2d(f, size)
        for f in (f1.float(), f2.float())
    )
    return torch.bmm(f1.flatten(2), f2.flatten(2).transpose(1, 2)) / (size[0] * size[1])


def fsp_loss(
    student_fsps: Sequence[torch.Tensor] | torch.Tensor,
    teacher_fsps: Sequence[torch.Tensor] | torch.Tensor,
) -> torch.Tensor:
    """FSP loss (Yim et al., 2017, Eq. 2) with equal weights ``lambda_i = 1 / n_pairs``.

    ``mean_i mean_n ||G_s[i][n] - G_t[i][n]||_F^2``: the squared Frobenius distance of each
    example's matrices (summed over ``C1 x C2``), averaged over the batch, then over the pairs.

    Args:
        student_fsps: One ``(N, C1_i, C2_i)`` matrix per layer pair (or one tensor).
        teacher_fsps: The teacher's, same shapes and order.

    Returns:
        Scalar float32 loss.

    Raises:
        ShapeError: the numbers of matrices or their shapes differ.
    """
    if isinstance(student_fsps, torch.Tensor):
        student_fsps = [student_fsps]
    if isinstance(teacher_fsps, torch.Tensor):
        teacher_fsps = [teacher_fsps]
    if len(student_fsps) != len(teacher_fsps) or not student_fsps:
        raise ShapeError(
            f"got {len(student_fsps)} student and {len(teacher_fsps)} teacher FSP matrices; "
            "pass one (non-empty) list per model with one matrix per layer pair"
        )
    terms = []
    for i, (gs, gt) in enumerate(zip(student_fsps, teacher_fsps, strict=True)):
        if gs.shape != gt.shape:
            raise ShapeError(
                f"FSP pair {i}: student matrix {tuple(gs.shape)} vs teacher {tuple(gt.shape)}; "
                "the (C1, C2) channel counts must match: pick layers with matching channels or "
                "let FSP adapt the student's maps (adapter='conv1x1')"
            )
        terms.append((gs.float() - gt.float()).pow(2).sum(dim=(1, 2)).mean())
    return torch.stack(terms).mean()


def _consecutive(blocks: list[str]) -> list[tuple[str, str]]:
    return list(zip(blocks[:-1], blocks[1:], strict=True))


class FSP(Objective):
    """FSP distillation (Yim et al., 2017): match the flow between layers; registered ``"fsp"``.

    The loss is :func:`fsp_loss` over the layer pairs. The paper trains in two stages (FSP alone,
    then the task loss); here FSP is one term: for the two stages run the trainer twice, first
    with ``[FSP(teacher)]`` and then with ``[CrossEntropy()]``.

    Args:
        teacher: The frozen :class:`~transferkit.transfer.distill.teacher.Teacher`.
        student_pairs: ``(layer_a, layer_b)`` student layers whose flow is matched, each giving a
            4-D map; pairs with ``teacher_pairs`` one to one. ``None`` (with ``teacher_pairs``
            ``None``): pairs of consecutive 4-D backbone blocks of each model, taken from the top,
            as many as both models have.
        teacher_pairs: The teacher's pairs, same count.
        weight: Multiplier in the total loss.
        adapter: When a student map's channel count differs from the teacher's, map it with a
            trainable :func:`~transferkit.transfer.distill.adapters.build_adapter` of this kind
            (``"conv1x1"``, ``"mlp"`` or ``"auto"``; built in :meth:`setup` and trained with the
            student; not in the paper). ``None``: channel mismatches raise :class:`ShapeError`.

    Attributes:
        student_pairs_, teacher_pairs_: The pairs in use (set by :meth:`setup`).
        adapters: ``nn.ModuleDict`` of the adapters built, keyed ``"pair<i>_<a|b>"``.

    Raises:
        ConfigError: only one of the pair lists given, or lists of different lengths.
        UnknownNameError: a layer name does not exist.
        ShapeError: a layer is not 4-D, a model has fewer than two 4-D blocks, or (with
            ``adapter=None``) the channel counts differ.
    """

    class Options(ObjectiveOptions):
        """FSP's options."""

        student_pairs: list[LayerPair] | None = Field(
            None, min_length=1,
            description="(layer_a, layer_b) student layers whose flow is matched; None (with "
                        "teacher_pairs None): consecutive 4-D backbone blocks from the top.",
        )
        teacher_pairs: list[LayerPair] | None = Field(
            None, min_length=1, description="The teacher's pairs, one per student pair.",
        )
        adapter: AdapterKind | None = Field(
            "conv1x1", description="Adapter kind mapping a student map whose channel count differs "
                                   "from the teacher's; None: such a mismatch is an error.",
        )

        @model_validator(mode="after")
        def _pairs_match(self) -> FSP.Options:
            s, t = self.student_pairs, self.teacher_pairs
            if (s is None) != (t is None):
                raise ValueError(
                    "give both student_pairs and teacher_pairs, or neither (for the default "
                    f"pairing); got student_pairs={s!r}, teacher_pairs={t!r}"
                )
            if s is not None and t is not None and len(s) != len(t):
                raise ValueError(
                    f"student_pairs has {len(s)} pair(s) but teacher_pairs {len(t)}; they pair one "
                    "to one"
                )
            return self

    def __init__(
        self,
        teacher: Teacher,
        student_pairs: Sequence[tuple[str, str]] | None = None,
        teacher_pairs: Sequence[tuple[str, str]] | None = None,
        weight: float = 1.0,
        adapter: str | None = "conv1x1",
    ) -> None:
        super().__init__(weight, student_pairs=student_pairs, teacher_pairs=teacher_pairs,
                         adapter=adapter)
        _check_teacher(teacher, "FSP")
        s, t = self.options.student_pairs, self.options.teacher_pairs
        self.teacher = teacher
        self.adapter = self.options.adapter
        self._given = (s, t) if s is not None else None
        self.student_pairs_: list[tuple[str, str]] | None = None
        self.teacher_pairs_: list[tuple[str, str]] | None = None
        self.adapters = nn.ModuleDict()
        if t is not None:
            teacher.request([n for pair in t for n in pair])

    def extra_repr(self) -> str:
        pairs = self._given or (self.student_pairs_, self.teacher_pairs_)
        return f"weight={self.weight}, adapter={self.adapter!r}, pairs={pairs}"

    def _default_pairs(self, ctx: FitContext, example: torch.Tensor):
        pairs = []
        for role, model in (("student", ctx.model), ("teacher", self.teacher.model)):
            blocks = spatial_blocks(model, example, role)
            if len(blocks) < 2:
                arch = getattr(getattr(model, "info", None), "arch", type(model).__name__)
                raise ShapeError(
                    f"FSP needs two backbone blocks with 4-D (N, C, H, W) outputs on each model, "
                    f"but the {role} ({arch}) has {len(blocks)} ({blocks}); pass student_pairs "
                    "and teacher_pairs, or use 'rkd' for models without feature maps (an MLP)"
                )
            pairs.append(_consecutive(blocks))
        k = min(len(pairs[0]), len(pairs[1]))
        return pairs[0][-k:], pairs[1][-k:]

    def setup(self, ctx: FitContext) -> None:
        """Resolve and check the pairs on one training example; build channel adapters."""
        example = first_example(ctx)
        s_pairs, t_pairs = self._given or self._default_pairs(ctx, example)
        s_shapes = probe_shapes(ctx.model, [n for p in s_pairs for n in p], example)
        t_shapes = probe_shapes(self.teacher.model, [n for p in t_pairs for n in p], example)
        for role, pairs, shapes in (("student", s_pairs, s_shapes), ("teacher", t_pairs,
                                                                       t_shapes)):
            for name in (n for p in pairs for n in p):
                shape = shapes[name]
                if shape is None or len(shape) != 3:
                    dims = "not a tensor" if shape is None else f"(N, {', '.join(map(str, shape))})"
                    raise ShapeError(
                        f"FSP needs (N, C, H, W) feature maps, but {role} layer {name!r} gives "
                        f"{dims}; pick convolutional layers (an MLP has none: use 'rkd')"
                    )
        from transferkit.transfer.distill.adapters import build_adapter

        adapters: dict[str, nn.Module] = {}
        for i, (sp, tp) in enumerate(zip(s_pairs, t_pairs, strict=True)):
            for end, s_name, t_name in (("a", sp[0], tp[0]), ("b", sp[1], tp[1])):
                s_shape, t_shape = s_shapes[s_name], t_shapes[t_name]
                if s_shape[0] == t_shape[0]:
                    continue
                if self.adapter is None:
                    raise ShapeError(
                        f"FSP pair {i}: student layer {s_name!r} has {s_shape[0]} channels but "
                        f"teacher layer {t_name!r} has {t_shape[0]}; the FSP matrices must have "
                        "the same (C1, C2): pick layers with matching channels or pass "
                        "adapter='conv1x1'"
                    )
                adapters[f"pair{i}_{end}"] = build_adapter(
                    s_shape, (t_shape[0], *s_shape[1:]), kind=self.adapter
                )
        self.adapters = nn.ModuleDict(adapters).to(ctx.device)
        self.student_pairs_, self.teacher_pairs_ = list(s_pairs), list(t_pairs)
        self.taps = tuple(dict.fromkeys(n for p in s_pairs for n in p))
        self.teacher.request([n for p in t_pairs for n in p])
        self.teacher.setup(ctx)
        logger.info("FSP on student pairs %s, teacher pairs %s, %d adapters",
                    s_pairs, t_pairs, len(adapters))

    def forward(self, batch: Batch) -> torch.Tensor:
        """:func:`fsp_loss` of the student's (adapted) and the teacher's FSP matrices."""
        if self.student_pairs_ is None:
            raise ConfigError("FSP.setup(ctx) has not run; train it with Trainer")
        out = self.teacher.outputs(batch)
        s_fsps, t_fsps = [], []
        for i, (sp, tp) in enumerate(zip(self.student_pairs_, self.teacher_pairs_, strict=True)):
            maps = []
            for end, name in (("a", sp[0]), ("b", sp[1])):
                f = batch.taps[name]
                key = f"pair{i}_{end}"
                maps.append(self.adapters[key](f) if key in self.adapters else f)
            s_fsps.append(fsp_matrix(*maps))
            t_fsps.append(fsp_matrix(teacher_tap(out, tp[0]), teacher_tap(out, tp[1])))
        return fsp_loss(s_fsps, t_fsps)


OBJECTIVES.register("rkd", RKD)
OBJECTIVES.register("fsp", FSP)


__all__ = [
    "FSP",
    "RKD",
    "fsp_loss",
    "fsp_matrix",
    "rkd_angle_loss",
    "rkd_distance_loss",
]
