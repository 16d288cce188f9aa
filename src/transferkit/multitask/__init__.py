"""Multi-task learning in the one engine: one backbone, one head per task.

* data: :class:`~transferkit.data.tasks.TaskSet` (task name -> dataset; sampling ``all``,
  ``proportional``, ``uniform``, ``temperature``);
* the model: a multi-head :class:`~transferkit.models.TransferNet`
  (:func:`~transferkit.models.set_task_heads`);
* :class:`MultiTask`, the objective that owns the multi-task step: per-task objectives, loss weighting
  (:mod:`~transferkit.multitask.weighting`: equal, uncertainty, DWA, GradNorm) and gradient surgery
  (:mod:`~transferkit.multitask.surgery`: PCGrad, CAGrad).

Example::

    from transferkit.data.tasks import TaskSet
    from transferkit.models import set_task_heads
    from transferkit.multitask import MultiTask

    model = set_task_heads(tk.create_model("small_cnn", num_classes=10), {"mnist": 10, "fashion": 10})
    train = TaskSet({"mnist": mnist.train, "fashion": fashion.train}, sampling="all")
    val = TaskSet({"mnist": mnist.val, "fashion": fashion.val})
    tk.Trainer(model, cfg, [MultiTask(weighting="uncertainty", surgery="pcgrad")]).fit(train, val)
"""

from transferkit.multitask.objective import MultiTask
from transferkit.multitask.surgery import cagrad, pcgrad
from transferkit.multitask.weighting import dwa_weights, gradnorm_loss, uncertainty_loss

__all__ = ["MultiTask", "cagrad", "dwa_weights", "gradnorm_loss", "pcgrad", "uncertainty_loss"]
