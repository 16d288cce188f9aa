"""Per-epoch label-free model-choice criteria for domain adaptation, as a trainer monitor.

Target labels are unknown in domain adaptation, so neither the checkpoint nor the method's trade-off
weight may be chosen by target accuracy. :class:`AdaptationMonitor` computes, after every epoch,
criteria that need only source labels and unlabelled target inputs (see
:mod:`transferkit.evaluation.unsupervised`):

* ``dev_risk`` -- Deep Embedded Validation (You et al., 2019), lower is better;
* ``target_snd`` -- Soft Neighborhood Density of the target predictions (Saito et al., 2021),
  higher is better;
* ``target_entropy`` -- mean prediction entropy on the target (Morerio et al., 2018), lower is better;
* ``domain_gap`` -- accuracy of a linear classifier telling source features from target features
  (0.5 = aligned); recorded for the report, not a selection criterion on its own.

A labelled target *test* set may be given as ``oracle``: its accuracy is recorded as
``oracle_accuracy`` so a report can show how far the label-free choice fell from the best possible
one. It is never read by the criteria; selecting on it (``select_metric="oracle_accuracy"``) is the
oracle baseline, which a user without target labels cannot run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F

from transferkit.data.base import TensorDataset
from transferkit.engine.trainer import predict_features
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.unsupervised import dev_risk, domain_gap, prediction_entropy, snd_score
from transferkit.registry import Registry

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext

logger = logging.getLogger(__name__)

class Criterion(NamedTuple):
    """A label-free model-choice criterion: the epoch-row key it is recorded under and the direction
    that is better (declared, never guessed from the name). A tuple, so ``key, mode = criterion``."""

    key: str
    mode: Literal["max", "min"]


#: Label-free criteria a user can select on: name -> :class:`Criterion` (epoch-row key, mode).
CRITERIA: Registry[Criterion] = Registry("model-choice criterion")
CRITERIA.register("dev", Criterion("dev_risk", "min"))
CRITERIA.register("snd", Criterion("target_snd", "max"))
CRITERIA.register("entropy", Criterion("target_entropy", "min"))


def criterion_key(name: str) -> str:
    """The epoch-row key of criterion ``name`` (``"dev"`` -> ``"dev_risk"``).

    Raises:
        UnknownNameError: ``name`` is not a criterion (close names and the known ones are listed).
    """
    key, _ = CRITERIA.get(name)
    return key


def _subsample(data: TensorDataset, limit: int, seed: int) -> TensorDataset:
    if len(data) <= limit:
        return data
    gen = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=gen)[:limit].sort().values)


class AdaptationMonitor:
    """Computes the label-free criteria (and optionally the oracle accuracy) after every epoch.

    Args:
        source_train: Labelled source training data (DEV's domain classifier is fit on its
            features against the target's).
        source_val: Labelled source validation data (DEV's importance-weighted loss).
        target: Unlabelled target data (its labels are never read).
        criteria: Which of ``"dev"``, ``"snd"``, ``"entropy"`` to compute.
        oracle: Labelled target test data; only its accuracy is recorded (``oracle_accuracy``).
        gap: Also record ``domain_gap``.
        max_examples: Each set is subsampled (once, with ``seed``) to at most this many examples,
            which bounds the cost per epoch (SND is quadratic in the target size).
        seed: Seed of the subsampling and of DEV's / the gap's classifiers.
        batch_size: Examples per forward pass.

    Calling the monitor with a trainer returns ``{"dev_risk": ..., "target_snd": ...,
    "target_entropy": ..., "domain_gap": ..., "oracle_accuracy": ...}`` (the requested ones);
    ``dev_risk`` is ``None`` in an epoch where the domains are perfectly separable (DEV's weights
    overflow), so that epoch is no candidate under DEV.
    """

    def __init__(
        self,
        source_train: TensorDataset,
        source_val: TensorDataset,
        target: TensorDataset,
        *,
        criteria: Sequence[str] = ("dev", "snd", "entropy"),
        oracle: TensorDataset | None = None,
        gap: bool = True,
        max_examples: int = 2000,
        seed: int = 0,
        batch_size: int = 512,
    ) -> None:
        criteria = tuple(str(name).lower() for name in criteria)  # names are case-insensitive
        for name in criteria:
            criterion_key(name)
        if max_examples < 10:
            raise ConfigError(f"max_examples must be >= 10, got {max_examples}")
        self.criteria = tuple(criteria)
        self.source_train = _subsample(source_train, max_examples, seed)
        self.source_val = _subsample(source_val, max_examples, seed + 1)
        self.target = _subsample(target, max_examples, seed + 2)
        self.oracle = oracle
        self.gap = gap
        self.seed = seed
        self.batch_size = batch_size

    @torch.no_grad()
    def _outputs(self, ctx: FitContext, data: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features and logits of ``data`` (eval mode), on the CPU in float32."""
        model = ctx.model
        feats = predict_features(model, data, self.batch_size, ctx.device)
        model.head.eval()
        logits = torch.cat([model.head(f) for f in feats.split(self.batch_size)]) if len(feats) else feats
        return feats.float().cpu(), logits.float().cpu()

    def __call__(self, ctx: FitContext) -> dict[str, float | None]:
        was_training = ctx.model.training
        try:
            src_f, _ = self._outputs(ctx, self.source_train)
            tgt_f, tgt_logits = self._outputs(ctx, self.target)
            out: dict[str, float | None] = {}
            if "dev" in self.criteria:
                val_f, val_logits = self._outputs(ctx, self.source_val)
                losses = F.cross_entropy(val_logits, self.source_val.y, reduction="none")
                try:
                    out["dev_risk"] = dev_risk(src_f, tgt_f, val_f, losses, seed=self.seed)
                except DataError as exc:  # domains perfectly separable: no usable weights
                    logger.warning("dev_risk unavailable this epoch: %s", exc)
                    out["dev_risk"] = None
            if "snd" in self.criteria:
                out["target_snd"] = snd_score(tgt_logits)
            if "entropy" in self.criteria:
                out["target_entropy"] = prediction_entropy(tgt_logits)
            if self.gap:
                out["domain_gap"] = domain_gap(src_f, tgt_f, seed=self.seed, max_per_domain=1000)
            if self.oracle is not None:
                _, logits = self._outputs(ctx, self.oracle)
                out["oracle_accuracy"] = float((logits.argmax(1) == self.oracle.y).double().mean())
        finally:
            ctx.model.train(was_training)
        return out


__all__ = ["CRITERIA", "AdaptationMonitor", "Criterion", "criterion_key"]
