"""Loss terms the one training loop sums: the plug-in point of every transfer method.

A method (distillation, L2-SP, EWC, ...) contributes an :class:`Objective`: an ``nn.Module``
holding its hyper-parameters (and any trainable parts, such as distillation adapters) whose
``forward`` maps a :class:`Batch` to an unweighted scalar loss. The trainer computes
``loss = sum(o.weight * o(batch) for o in objectives)``, logs every term, backpropagates and steps.
Two methods at once is a list of two objectives, not new code.

Domain adaptation and semi-supervised methods add unlabelled *target* examples: an objective with
``uses_target = True`` gets a target batch (``TrainConfig.unlabeled_ratio`` times the size of the
source batch, 1 by default) forwarded with the source batch in one pass, in the ``target_*`` fields
of :class:`Batch`. A method that alternates updates of different parts of the
model (MCD's three steps) overrides :meth:`Objective.training_step` and composes the step's
operations itself (:class:`~transferkit.engine.step.StepRunner`).

Objectives see the run through a :class:`~transferkit.engine.context.FitContext`, never the trainer.

Every objective class declares its options as a pydantic model, ``Options`` (a subclass of
:class:`ObjectiveOptions`: extra keys forbidden, each field documented and constrained, the
trade-off weight marked with ``json_schema_extra={"trade_off": True}``). The base constructor
validates them once, so ``LogitKD(teacher, temperature=-1)`` raises a :class:`ConfigError` naming
the option and value, and :func:`validate_method_spec` checks a config entry
(``{name: kd, temperature: 4}``) without building anything, which is how run configs are validated.
Objects a workflow passes (a teacher, a source model, source data) are constructor arguments, not
options.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
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


# --------------------------------------------------------------------------- options
def _plain_real(v: object) -> object:
    """A real number of any kind (a NumPy scalar too) as a Python float; anything else unchanged,
    for the strict check to refuse (booleans, strings)."""
    return float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v


def _plain_int(v: object) -> object:
    """An integer of any kind as a Python int; anything else unchanged (refused: 2.0, True)."""
    return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v


#: A finite number; booleans and strings refused. Bounds go in the type, so NaN is reported as not
#: finite: ``Annotated[FiniteFloat, Field(ge=0, lt=1)]``.
FiniteFloat = Annotated[float, BeforeValidator(_plain_real), Field(strict=True, allow_inf_nan=False)]
#: An integer; booleans and floats such as 2.0 refused (bounds as for :data:`FiniteFloat`).
Integer = Annotated[int, BeforeValidator(_plain_int), Field(strict=True)]
#: A finite number >= 0 (loss weights, penalty strengths).
Coefficient = Annotated[FiniteFloat, Field(ge=0)]
#: A finite number > 0 (temperatures, bandwidths, ratios).
PositiveFloat = Annotated[FiniteFloat, Field(gt=0)]
#: An integer >= 1 (counts, widths).
PositiveInt = Annotated[Integer, Field(ge=1)]
#: A module name as in ``model.named_modules()`` (``"backbone.conv2"``).
LayerName = Annotated[str, Field(min_length=1)]
#: Two module names, e.g. ``("backbone.conv1", "backbone.conv2")``.
LayerPair = tuple[LayerName, LayerName]

#: Marks the option a trade-off grid varies (``Field(..., json_schema_extra=TRADE_OFF)``).
TRADE_OFF: dict[str, Any] = {"trade_off": True}

#: Constructor arguments that are objects a workflow passes (``build_objectives(..., teacher=)``),
#: never options of a config entry.
CONTEXT_ARGS = ("teacher", "source", "source_data", "fisher", "task_objectives")


class ObjectiveOptions(BaseModel):
    """The options of an objective: what a config entry ``{name: ..., <option>: ...}`` may set.

    Every objective class declares its own subclass as ``Options`` (extra keys forbidden, each field
    with a ``description`` and its constraints); exactly one field is marked as the trade-off weight
    with ``json_schema_extra={"trade_off": True}`` (see :meth:`Objective.trade_off_option`). A
    field's ``json_schema_extra`` may also carry a ``"hint"`` shown after an error about it. Objects
    (a teacher, a source model, source data) are constructor arguments, not options.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: Coefficient = Field(
        1.0, description="Multiplier of this term in the total loss.", json_schema_extra=TRADE_OFF
    )


def _extra(field_info: Any) -> dict[str, Any]:
    extra = field_info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _number(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
           "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}
_TYPES = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
          "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
          "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
          "list_type": "a list", "tuple_type": "a pair such as [a, b]", "dict_type": "a mapping"}


def _reason(err: Mapping[str, Any]) -> str:
    """One pydantic error as ``must be ...`` (``greater_than`` -> ``must be > 0``)."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        return f"must be {op} {_number(ctx[key])}"
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}"
    if kind == "missing":
        return "is missing"
    if kind == "literal_error":
        return f"must be one of {ctx['expected'].replace(' or ', ', ')}"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must have at least {n} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return re.sub(r"^Input should", "must", str(err["msg"]))


def _options_error(owner: str, cls: type[Objective], given: Mapping[str, object],
                   exc: ValidationError) -> ConfigError:
    """Every problem of ``exc`` in one :class:`ConfigError`: ``objective 'kd': temperature=-1: must
    be > 0; does not take 'temprature' (did you mean 'temperature'?); known options: ...``."""
    fields = cls.Options.model_fields
    params = inspect.signature(cls.__init__).parameters
    problems: list[str] = []
    unknown = False
    for err in exc.errors():
        loc = err["loc"]
        if not loc:  # a model validator: a rule between options
            problems.append(_reason(err))
            continue
        key = str(loc[0])
        if err["type"] == "extra_forbidden":
            if key in CONTEXT_ARGS:
                problems.append(f"{key!r} is not an option: the workflow passes it")
                continue
            if key in params and key != "self":
                problems.append(f"{key!r} is an argument {cls.__name__}.Options does not declare; "
                                "declare it there to set it from a config")
                continue
            unknown = True
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            problems.append(f"does not take {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        where = f"item {'.'.join(map(str, loc[1:]))} " if len(loc) > 1 else ""
        shown = f"{key}={given[key]!r}" if key in given else key
        hint = _extra(fields[key]).get("hint") if key in fields else None
        problems.append(f"{shown}: {where}{_reason(err)}" + (f"; {hint}" if hint else ""))
    if unknown:
        problems.append(f"known options: {', '.join(fields) or 'none'}")
    return ConfigError(f"objective {owner!r}: " + "; ".join(dict.fromkeys(problems)))


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
        **options: The subclass's other options, validated with its :attr:`Options` model.

    Attributes:
        Options: The pydantic model of the class's options (a subclass of
            :class:`ObjectiveOptions`); a config entry is checked against it by
            :func:`validate_method_spec` before anything is built.
        options: This objective's options as validated at construction (an ``Options`` instance).
        taps: Names of student modules (as in ``model.named_modules()``) whose outputs this
            objective reads from ``batch.taps``; the trainer records them with forward hooks.
        head_only: True when the objective needs only ``batch.logits`` computed from backbone
            features (and ``y``, ``index``), never the inputs, gradients into the backbone or taps.
            With a frozen backbone this lets the trainer cache the features once (``batch.x`` is
            then an empty tensor).
        name: Short name used for logging the term (``"loss_<name>"``); defaults to the name the
            class is registered under in :data:`OBJECTIVES` (``"rkd"``), else the class name in
            snake case.
        uses_target: True when the objective reads the unlabelled target fields of the batch
            (domain adaptation); the trainer then needs ``fit(..., target=...)``.
        needs_views: True when the objective reads ``batch.target_views``, a weak and a strong
            augmentation of every unlabelled example (``TrainConfig.weak_augment`` /
            ``strong_augment``).
    """

    Options: ClassVar[type[ObjectiveOptions]] = ObjectiveOptions
    taps: tuple[str, ...] = ()
    head_only: ClassVar[bool] = False
    uses_target: ClassVar[bool] = False
    needs_views: ClassVar[bool] = False

    def __init__(self, weight: float = 1.0, **options: object) -> None:
        super().__init__()
        self.options = type(self).validate_options({"weight": weight, **options})
        self.weight = float(self.options.weight)

    @classmethod
    def validate_options(cls, values: Mapping[str, object]) -> ObjectiveOptions:
        """``values`` validated with :attr:`Options` (defaults filled in).

        Raises:
            ConfigError: one message naming every bad option with its value, every unknown one
                (with a close known name) and the known options.
        """
        try:
            return cls.Options.model_validate(dict(values))
        except ValidationError as exc:
            raise _options_error(_registered_name(cls), cls, values, exc) from None

    @classmethod
    def trade_off_option(cls) -> str:
        """The option a trade-off grid varies: the :attr:`Options` field marked
        ``json_schema_extra={"trade_off": True}`` (``"weight"``; MCD's ``"trade_off"``).

        Raises:
            TypeError: the ``Options`` model marks no field, or several.
        """
        marked = [k for k, f in cls.Options.model_fields.items() if _extra(f).get("trade_off")]
        if len(marked) != 1:
            raise TypeError(f"{cls.__name__}.Options must mark exactly one field as the trade-off "
                            f"(json_schema_extra={{'trade_off': True}}), found {marked or 'none'}")
        return marked[0]

    @property
    def name(self) -> str:
        """Name of the term in logs (``"cross_entropy"``)."""
        explicit = getattr(self, "_name", None)
        if explicit:
            return explicit
        return _registered_name(type(self))

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

    class Options(ObjectiveOptions):
        """Cross-entropy's options."""

        label_smoothing: Annotated[FiniteFloat, Field(ge=0.0, lt=1.0)] = Field(
            0.0, description="Label smoothing in [0, 1).",
            json_schema_extra={"hint": "0.1 is a common value"},
        )

    head_only: ClassVar[bool] = True

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight, label_smoothing=label_smoothing)
        self.label_smoothing = float(self.options.label_smoothing)

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
    modules=("transferkit.transfer.distill", "transferkit.transfer.regularize", "transferkit.transfer.adapt",
             "transferkit.transfer.semi", "transferkit.multitask"),
)
OBJECTIVES.register("cross_entropy", CrossEntropy)


def _registered_name(cls: type) -> str:
    """The name ``cls`` is registered under (the canonical one, ``"rkd"``), else its class name in
    snake case."""
    return OBJECTIVES.name_of(cls) or _snake(cls.__name__)


def validate_method_spec(spec: Mapping[str, object]) -> dict[str, object]:
    """Check a config entry such as ``{"name": "kd", "temperature": 4}`` without building anything.

    ``name`` picks the class from :data:`OBJECTIVES`; every other key must be an option of its
    :attr:`Objective.Options` model, with a valid value.

    Returns:
        ``{"name": <registered name>, **options}``: the options given, as validated (defaults are
        not filled in, so a workflow's context and the constructor's defaults still apply).

    Raises:
        ConfigError: no ``name``, or bad options: one message names every bad key and value, e.g.
            ``objective 'kd': temperature=-1: must be > 0; does not take 'temprature' (did you
            mean 'temperature'?); known options: weight, temperature, teacher_weights``.
        UnknownNameError: ``name`` is not registered (close names suggested).
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"an objective is a mapping such as {{name: kd, temperature: 4}}, got {spec!r}")
    args = dict(spec)
    name = args.pop("name", None)
    if not name:
        raise ConfigError(f"objective {dict(spec)!r} has no 'name'; e.g. {{name: kd}}")
    cls = OBJECTIVES.get(str(name))
    options = cls.validate_options(args)
    return {"name": _registered_name(cls), **options.model_dump(exclude_unset=True)}


def build_objectives(specs: Sequence[Mapping[str, object]], **context: object) -> list[Objective]:
    """Objectives from config entries such as ``{"name": "kd", "weight": 0.9, "temperature": 4}``.

    Each entry is checked by :func:`validate_method_spec` (``name`` picks the class from
    :data:`OBJECTIVES`, the other keys are its options). ``context`` entries (``teacher=...``,
    ``source=...``) are passed to the constructors that take them, so a config never has to name
    objects.

    Raises:
        ConfigError: an entry has no ``name`` or bad options (all named, with their values).
        UnknownNameError: ``name`` is not registered (close names suggested).
    """
    out: list[Objective] = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or not spec.get("name"):
            raise ConfigError(f"objective #{i + 1} ({spec!r}) has no 'name'; e.g. {{name: kd}}")
        args = validate_method_spec(spec)
        cls = OBJECTIVES.get(str(args.pop("name")))
        params = inspect.signature(cls.__init__).parameters
        for key, value in context.items():
            if key in params and key not in args:
                args[key] = value
        try:
            out.append(cls(**args))
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"objective {_registered_name(cls)!r}: {exc}; check its options") from None
    return out


__all__ = [
    "CONTEXT_ARGS",
    "OBJECTIVES",
    "TRADE_OFF",
    "Batch",
    "Coefficient",
    "CrossEntropy",
    "FiniteFloat",
    "Integer",
    "LayerName",
    "LayerPair",
    "Objective",
    "ObjectiveOptions",
    "PositiveFloat",
    "PositiveInt",
    "build_objectives",
    "check_coefficient",
    "validate_method_spec",
]
