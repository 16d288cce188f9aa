"""Fine-tuning that keeps what the source knew: regularisers against forgetting.

Each is an :class:`~transferkit.engine.Objective` registered in ``transferkit.engine.OBJECTIVES``
(importing this package registers them), so they combine with each other and with distillation
through configuration alone (``regularizers: [{name: l2sp}, {name: kd, ...}]``):

* ``l2sp`` — :class:`L2SP`, weights pulled toward their starting point (Li et al., 2018);
* ``delta`` — :class:`DELTA`, feature maps pulled toward the source's, channels weighted by
  supervised attention (Li et al., 2019);
* ``bss`` — :class:`BSS`, batch spectral shrinkage of the features (Chen et al., 2019);
* ``ewc`` — :class:`EWC`, Fisher-weighted pull toward the source weights, Fisher estimated on source
  data and stored with the model (Kirkpatrick et al., 2017);
* ``lwf`` — :class:`LwF`, the source head kept and its old outputs distilled (Li & Hoiem, 2017).

What the source task lost is measured by the workflows (``data.source_dataset``): the source-task
accuracy of the fine-tuned backbone with the source head, before and after.
"""

from transferkit.transfer.regularize.bss import BSS, bss_penalty
from transferkit.transfer.regularize.delta import DELTA, delta_penalty
from transferkit.transfer.regularize.ewc import EWC, ewc_penalty, fisher_diagonal, load_fisher, save_fisher
from transferkit.transfer.regularize.l2sp import L2SP, l2sp_penalty
from transferkit.transfer.regularize.lwf import LwF

__all__ = [
    "BSS",
    "DELTA",
    "EWC",
    "L2SP",
    "LwF",
    "bss_penalty",
    "delta_penalty",
    "ewc_penalty",
    "fisher_diagonal",
    "l2sp_penalty",
    "load_fisher",
    "save_fisher",
]
