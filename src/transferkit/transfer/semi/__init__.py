"""Learning from the target's unlabelled examples (semi-supervised transfer).

Every method is an :class:`~transferkit.engine.Objective` registered in
``transferkit.engine.OBJECTIVES`` that reads the unlabelled batches the engine pairs with every
labelled batch (``Trainer.fit(train, target=unlabelled)``, ``TrainConfig.unlabeled_ratio`` of them
per labelled example; their labels are never read), trained beside ``cross_entropy``:

* ``pseudo_label`` -- :class:`PseudoLabel`, the model's own confident predictions as labels (Lee,
  2013), with FlexMatch's per-class curriculum thresholds as an option (Zhang et al., 2021);
* ``fixmatch`` -- :class:`FixMatch`, a weak view's confident prediction as the label of a strong
  view (Sohn et al., 2020), also with FlexMatch's thresholds;
* ``mean_teacher`` -- :class:`MeanTeacher`, consistency with an exponential moving average of the
  student (Tarvainen & Valpola, 2017).

Distillation from a fine-tuned teacher on an unlabelled transfer set is ``kd``
(:mod:`transferkit.transfer.distill`) over the labelled and unlabelled examples together
(``transferkit distill --unlabeled``).
"""

from transferkit.transfer.semi.fixmatch import FixMatch
from transferkit.transfer.semi.mean_teacher import MeanTeacher
from transferkit.transfer.semi.pseudo_label import ConfidenceMask, PseudoLabel

__all__ = ["ConfidenceMask", "FixMatch", "MeanTeacher", "PseudoLabel"]
