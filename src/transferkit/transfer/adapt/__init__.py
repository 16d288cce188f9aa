"""Domain adaptation: labelled source, unlabelled target.

Every method is an :class:`~transferkit.engine.Objective` registered in
``transferkit.engine.OBJECTIVES`` (importing this package registers them) and is trained beside
``cross_entropy`` on the source with ``Trainer.fit(source, target=unlabelled_target)``:

* ``dann`` -- :class:`DANN`, adversarial domain discriminator through gradient reversal
  (Ganin et al., 2016);
* ``cdan`` / ``cdan_e`` -- :class:`CDAN` / :class:`CDANE`, the discriminator conditioned on the
  predictions, optionally entropy-weighted (Long et al., 2018);
* ``dan`` -- :class:`DAN`, multi-kernel MMD of the features (Long et al., 2015);
* ``jan`` -- :class:`JAN`, joint MMD of features and predictions (Long et al., 2017);
* ``coral`` -- :class:`CORAL`, covariance alignment (Sun & Saenko, 2016);
* ``mcd`` -- :class:`MCD`, maximum classifier discrepancy with two extra update phases
  (Saito et al., 2018).

:class:`AdaptationMonitor` records label-free model-choice criteria (DEV, SND, entropy) and the
domain gap after every epoch, so ``TrainConfig.select_metric`` can choose a checkpoint without
target labels.
"""

from transferkit.transfer.adapt.cdan import (
    CDAN,
    CDANE,
    RandomizedMultilinearMap,
    entropy_weights,
    multilinear_map,
)
from transferkit.transfer.adapt.coral import CORAL
from transferkit.transfer.adapt.dann import DANN, DomainDiscriminator, grl_coefficient
from transferkit.transfer.adapt.losses import (
    GradientReversal,
    coral_loss,
    grad_reverse,
    jmmd_loss,
    mmd_loss,
)
from transferkit.transfer.adapt.mcd import MCD, classifier_discrepancy
from transferkit.transfer.adapt.mmd import DAN, JAN
from transferkit.transfer.adapt.monitor import CRITERIA, AdaptationMonitor, criterion_key

__all__ = [
    "CRITERIA",
    "AdaptationMonitor",
    "CDAN",
    "CDANE",
    "CORAL",
    "DAN",
    "DANN",
    "JAN",
    "MCD",
    "DomainDiscriminator",
    "GradientReversal",
    "RandomizedMultilinearMap",
    "classifier_discrepancy",
    "criterion_key",
    "coral_loss",
    "entropy_weights",
    "grad_reverse",
    "grl_coefficient",
    "jmmd_loss",
    "mmd_loss",
    "multilinear_map",
]
