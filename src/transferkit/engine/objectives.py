"""Loss terms the one training loop sums: the plug-in point of every transfer method.

A method (distillation, L2-SP, EWC, ...) contributes an :class:`Objective`: an ``nn.Module``
holding its hyper-parameters (and any trainable parts, such as distillation adapters) whose
``forward`` maps a :class:`Batch` to an unweighted scalar loss. The trainer computes
``loss = sum(o.weight * o(batch) for o in objectives)``, logs every term, backpropagates and steps.
Two methods at once is a list of two objectives, not new code.

Domain adaptation adds unlabelled *target* examples: an objective with ``uses_target = True`` gets a
target batch (same size as the source batch) forwarded with the source batch in one pass, in the
``target_*`` fields of :class:`Batch`. A method that alternates updates of different parts of the
model (MCD's three steps) overrides :meth:`Objective.training_step` and composes the step's
operations itself (:class:`~transferkit.engine.step.StepRunner`).

Objectives see the run through a :class:`~transferkit.engine.context.FitContext`, never the trainer.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.engine.batches import UNLABELLED, Examples
from transferkit.engine.context import FitContext
from transferkit.errors import ConfigError
from transferkit.registry import Registry

if TYPE_CHECKING:
    from transferkit.engine.step import StepOutput, StepRunner


@dataclass
class Batch:
    """Everything an objective may need about one training step.

    Attributes:
        x: Raw inputs of the batch, ``(N, ...)`` (or a dict of such tensors), on the training
            device, after train-time augmentation.
        y: Labels, ``(N,)`` int64; -1 marks an unlabelled example.
        logits: Student logits, ``(N, num_classes)``.
        features: Student backbone output, ``(N, D)``.
        taps: Outputs of the student modules the objectives asked for (``Objective.taps``), by
            module name (``"backbone.block2"``); empty when none were asked for.
        model: The student model being trained.
        epoch: 0-based epoch index.
        step: 0-based step index within the epoch.
        index: Positions of the batch's examples in the training dataset, ``(N,)`` int64 on the
            CPU; lets an objective look up per-example values it precomputed once (e.g. teacher
            outputs).
        progress: Fraction of training done before this step, in ``[0, 1)``: ``(epoch *
            steps_per_epoch + step) / (epochs * steps_per_epoch)`` (schedules such as DANN's).
        phase: ``"main"`` in the ordinary step; a method's own step may name its extra passes
            (MCD's ``"classifiers"``, ``"generator"``).
        target_x: Unlabelled target inputs ``(M, ...)`` when an objective uses target data.
        target_logits: Student logits of ``target_x`` ``(M, num_classes)``, same forward pass.
        target_features: Student backbone output of ``target_x`` ``(M, D)``.
        target_taps: The tapped modules' outputs for ``target_x``, by module name.
        target_index: Positions of the target examples in the target dataset, ``(M,)``.
        y_soft: Soft targets ``(N, num_classes)`` when augmentation mixed examples (mixup,
            cutmix), else ``None``; ``y`` then holds each example's dominant label.
        augmented: Whether ``x`` went through train-time augmentation (values precomputed on the
            stored examples, looked up by ``index``, then describe other inputs).
        target_views: A weak and a strong augmentation ``(weak, strong)`` of the unlabelled
            ``target_x`` (each ``(M, C, H, W)``) when an objective asks for them
            (``Objective.needs_views``); semi-supervised methods compare predictions across them.
    """

    x: torch.Tensor | dict[str, torch.Tensor]
    y: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor
    taps: dict[str, torch.Tensor] = field(default_factory=dict)
    model: nn.Module | None = None
    epoch: int = 0
    step: int = 0
    index: torch.Tensor | None = None
    progress: float = 0.0
    phase: str = "main"
    target_x: torch.Tensor | None = None
    target_logits: torch.Tensor | None = None
    target_features: torch.Tensor | None = None
    target_taps: dict[str, torch.Tensor] = field(default_factory=dict)
    target_index: torch.Tensor | None = None
    y_soft: torch.Tensor | None = None
    augmented: bool = False
    target_views: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def domain(self) -> torch.Tensor:
        """Explicit domain labels of the source examples then the target examples: 0 = source,
        1 = target, ``(N + M,)`` int64 (``(N,)`` zeros without target data)."""
        n = len(self.features)
        m = 0 if self.target_features is None else len(self.target_features)
        dev = self.features.device
        return torch.cat([torch.zeros(n, dtype=torch.long, device=dev),
                          torch.ones(m, dtype=torch.long, device=dev)])


def check_coefficient(owner: str, name: str, value: object, hint: str = "") -> float:
    """``value`` as a float, checked to be a finite number >= 0 (loss weights, penalty strengths).

    Raises:
        ConfigError: ``value`` is not a real number (booleans included), is negative, NaN or
            infinite; the message names ``owner``, ``name`` and the value, plus ``hint`` if given.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{owner} {name} must be a number >= 0, got {value!r}")
    v = float(value)
    if not (v >= 0 and math.isfinite(v)):
        raise ConfigError(
            f"{owner} {name} must be a finite number >= 0, got {v!r}" + (f"; {hint}" if hint else "")
        )
    return v


def _snake(name: str) -> str:
    """``CrossEntropy`` -> ``cross_entropy``; acronyms stay whole (``MyRKDLoss`` -> ``my_rkd_loss``)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class Objective(nn.Module):
    """One term of the training loss.

    Subclasses implement :meth:`forward` and may override :meth:`setup`, :meth:`on_epoch_start` and,
    for an update sequence of their own, :meth:`training_step`.
    An objective manages the train/eval mode of its own sub-modules (a frozen teacher stays in eval
    mode); the trainer only moves it to the training device before :meth:`setup`. Parameters of the
    objective that require gradients (adapters, ...) are trained in an extra optimiser group at
    ``config.lr``.

    Args:
        weight: Multiplier of this term in the total loss (finite, >= 0).

    Attributes:
        taps: Names of student modules (as in ``model.named_modules()``) whose outputs this
            objective reads from ``batch.taps``; the trainer records them with forward hooks.
        head_only: True when the objective needs only ``batch.logits`` computed from backbone
            features (and ``x``, ``y``), never gradients into the backbone or taps. With a frozen
            backbone this lets the trainer cache the features once.
        name: Short name used for logging the term (``"loss_<name>"``); defaults to the name the
            class is registered under in :data:`OBJECTIVES` (``"rkd"``), else the class name in
            snake case.
        uses_target: True when the objective reads the unlabelled target fields of the batch
            (domain adaptation); the trainer then needs ``fit(..., target=...)``.
        needs_views: True when the objective reads ``batch.target_views``, a weak and a strong
            augmentation of every unlabelled example (``TrainConfig.weak_augment`` /
            ``strong_augment``).
    """

    taps: tuple[str, ...] = ()
    head_only: ClassVar[bool] = False
    uses_target: ClassVar[bool] = False
    needs_views: ClassVar[bool] = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = check_coefficient(type(self).__name__, "weight", weight)

    @property
    def name(self) -> str:
        """Name of the term in logs (``"cross_entropy"``)."""
        explicit = getattr(self, "_name", None)
        if explicit:
            return explicit
        for registered in OBJECTIVES.names():  # the registry name is the canonical one ("rkd")
            if OBJECTIVES.get(registered) is type(self):
                return registered
        return _snake(type(self).__name__)

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)

    def setup(self, ctx: FitContext) -> None:
        """Prepare once before training (store start weights, compute Fisher, ...).

        Called after the model and this objective were moved to ``ctx.device`` and before the
        optimiser is built; on resume it is called before the checkpoint's weights are loaded, so it
        sees the same starting model as the original run.
        """

    def on_epoch_start(self, ctx: FitContext, epoch: int) -> None:
        """Hook called at the start of every epoch (0-based ``epoch``)."""

    def training_step(self, runner: StepRunner, ex: Examples) -> StepOutput:
        """One training step on the batch ``ex``, for a method with an update sequence of its own.

        The default is ``runner.default_step(ex)``: forward, every objective's weighted term, one
        update. Override it (at most one objective of a run may) to compose the runner's
        ``forward``, ``losses``, ``check`` and ``update(loss, only=runner.head_params)`` in another
        order, as MCD does; return a :class:`~transferkit.engine.step.StepOutput` whose ``terms``
        name any extra losses (``loss_<name>_<pass>``).
        """
        return runner.default_step(ex)

    @classmethod
    def owns_step(cls) -> bool:
        """Whether this objective brings its own :meth:`training_step`."""
        return cls.training_step is not Objective.training_step

    def forward(self, batch: Batch) -> torch.Tensor:
        """The unweighted scalar loss of ``batch``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch)")


class CrossEntropy(Objective):
    """Plain cross-entropy between the student's logits and the labels.

    Args:
        weight: Multiplier in the total loss.
        label_smoothing: Label smoothing in [0, 1) (Szegedy et al., 2016).
    """

    head_only: ClassVar[bool] = True

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(
                f"label_smoothing must lie in [0, 1), got {label_smoothing!r}; "
                "0.1 is a common value"
            )
        self.label_smoothing = float(label_smoothing)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, label_smoothing={self.label_smoothing}"

    def forward(self, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy of ``batch.logits`` ``(N, C)`` against ``batch.y`` ``(N,)``
        (unlabelled examples, -1, left out), or against ``batch.y_soft`` after mixup / cutmix."""
        logits = batch.logits.float()
        if batch.y_soft is not None:
            return F.cross_entropy(logits, batch.y_soft.float(), label_smoothing=self.label_smoothing)
        return F.cross_entropy(logits, batch.y, ignore_index=UNLABELLED,
                               label_smoothing=self.label_smoothing)


# Every method's module registers its objectives on import; the registry imports them all before its
# first lookup, so `-m kd -m l2sp` works whichever command built the objectives.
OBJECTIVES: Registry[type[Objective]] = Registry(
    "objective",
    modules=("transferkit.transfer.distill", "transferkit.transfer.regularize", "transferkit.transfer.adapt"),
)
OBJECTIVES.register("cross_entropy", CrossEntropy)


def build_objectives(specs: Sequence[Mapping[str, object]], **context: object) -> list[Objective]:
    """Objectives from config entries such as ``{"name": "kd", "weight": 0.9, "temperature": 4}``.

    ``name`` picks the class from :data:`OBJECTIVES`; the other keys are its constructor's
    arguments. ``context`` entries (``teacher=...``, ``source=...``) are passed to the constructors
    that take them, so a config never has to name objects.

    Raises:
        ConfigError: an entry has no ``name`` or has keys its objective does not take (all named).
        UnknownNameError: ``name`` is not registered (close names suggested).
    """
    out: list[Objective] = []
    for i, spec in enumerate(specs):
        args = dict(spec)
        name = args.pop("name", None)
        if not name:
            raise ConfigError(f"objective #{i + 1} ({spec!r}) has no 'name'; e.g. {{name: kd}}")
        cls = OBJECTIVES.get(str(name))
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        accepted = sorted(k for k in params if k != "self")
        unknown = [k for k in args if k not in params and not takes_any]
        if unknown:
            raise ConfigError(
                f"objective {name!r} does not take {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(accepted) or 'no arguments'}"
            )
        hints = _option_types(cls)
        for key, value in args.items():
            _check_option(str(name), key, value, hints.get(key))
        for key, value in context.items():
            if key in params and key not in args:
                args[key] = value
        try:
            out.append(cls(**args))
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"objective {name!r}: {exc}; check its options") from None
    return out


def _option_types(cls: type) -> dict[str, object]:
    """The type annotations of ``cls.__init__`` that resolve (those naming types imported only for
    type checking are left out)."""
    import sys
    import typing

    init = cls.__init__
    namespace = {**vars(typing), **vars(sys.modules[init.__module__])}
    out: dict[str, object] = {}
    for key, ann in getattr(init, "__annotations__", {}).items():
        try:
            out[key] = eval(ann, namespace) if isinstance(ann, str) else ann  # our own source text
        except Exception:
            continue
    return out


def _check_option(name: str, key: str, value: object, hint: object | None) -> None:
    """Refuse an option value of the wrong type (``kd:weight=[1,2]``, ``label_smoothing=abc``)
    against the constructor's annotation ``hint``, before the objective is built."""
    if hint is None:
        return
    from pydantic import TypeAdapter, ValidationError
    from pydantic.errors import PydanticSchemaGenerationError

    try:
        adapter = TypeAdapter(hint)
    except (PydanticSchemaGenerationError, TypeError, NameError):
        return  # a type pydantic can't check (a Teacher, a module): the constructor checks it
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        expected = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        reason = exc.errors()[0]["msg"] if exc.errors() else "wrong type"
        raise ConfigError(
            f"objective {name!r} option {key}={value!r} is not a valid {expected} ({reason}); "
            f"e.g. {name}:{key}=<a {expected}>"
        ) from None


__all__ = [
    "OBJECTIVES",
    "Batch",
    "CrossEntropy",
    "Objective",
    "build_objectives",
    "check_coefficient",
]
