"""NCE (Tran et al., 2019): negative conditional entropy of target labels given source labels."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from transferkit.selection._checks import (
    _check_labels,
    _check_target,
    _joint,
    _log_conditional,
)

logger = logging.getLogger(__name__)


def nce(source_labels: Any, labels: Any) -> float:
    """NCE: negative conditional entropy of the target labels given the source labels.

    Tran et al. 2019, "Transferability and Hardness of Supervised Classification Tasks"
    (ICCV). From the empirical joint ``P(y, z)`` of hard source predictions z and target labels
    y, ``NCE = -H(Y | Z) = sum_{y,z} P(y, z) log P(y | z)``.

    Args:
        source_labels: (N,) integer source predictions in [0, Z).
        labels: (N,) integer target labels in [0, C).

    Returns:
        ``-H(Y | Z)`` in nats, <= 0; 0 when z determines y. Higher = better.

    Raises:
        ShapeError, LabelError, DataError: on malformed input.
    """
    z = _check_labels(source_labels, None, "source_labels")
    y = _check_target(labels, z.shape[0])
    _, z = np.unique(z, return_inverse=True)
    zhot = (z[:, None] == np.arange(int(z.max()) + 1)[None, :]).astype(np.float64)
    joint = _joint(zhot, y)
    log_cond = _log_conditional(joint)
    return float(np.sum(joint[joint > 0] * log_cond[joint > 0]))


# ----------------------------------------------------------------------------- feature scores
