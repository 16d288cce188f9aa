"""Validated run configurations, YAML loading and ``key=value`` overrides.

A :class:`FinetuneConfig` is everything ``transferkit finetune`` needs. It is plain data: the Python
API (:func:`transferkit.workflows.finetune`) takes it, and the CLI only builds it from a YAML file and
overrides. Unknown keys are errors, all reported at once, each with its dotted path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from transferkit.engine.config import TrainConfig
from transferkit.errors import ConfigError, DataNotFoundError, TransferkitError

if TYPE_CHECKING:
    from transferkit.models.storage import SourceSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _FileOptions(_Strict):
    """How a data file is read: its ``text_column`` (text classification) and ``label_column``
    (csv, tsv, jsonl), and whether its rows are in time order (``ordered``: test and validation
    are its last rows, see :func:`~transferkit.data.load_dataset`). Each is passed to the loader
    only when it differs from its default, so a built-in dataset refuses an option it can't take."""

    text_column: str = Field("text", min_length=1)
    label_column: str = Field("label", min_length=1)
    ordered: bool = False

    def file_options(self) -> dict[str, Any]:
        """The options that differ from their defaults, as :func:`load_dataset` arguments."""
        return {k: getattr(self, k) for k in ("text_column", "label_column", "ordered")
                if getattr(self, k) != type(self).model_fields[k].default}


class DataConfig(_FileOptions):
    """Target data.

    Attributes:
        dataset: A built-in name (``digits``, ``mnist5k``, ``fashion-mnist``) or a path (image folder,
            ``.npz``, ``.csv``).
        root: Folder holding the dataset's files, for built-ins that read from disk.
        val_fraction: Share of the training split held out for model choice (never the test split).
        shots: Labelled training examples per class (few-shot target); ``None`` uses all.
        val_shots: Validation examples per class; ``None`` uses the same number as ``shots``
            (a realistic few-label setting) or the whole validation split when ``shots`` is ``None``.
        classes: Keep only these classes of the dataset (train and test), relabelled in this order.
        source_dataset: The *source* task's data (built-in name or path). When given, every run
            reports the source-task accuracy before and after fine-tuning (source retention), and
            regularisers that need source data (EWC) use its training split.
        source_root: Folder holding the source dataset's files.
        unlabeled: Unlabelled target data for the methods that learn from it (``pseudo_label``,
            ``fixmatch``, ``mean_teacher``; ``kd`` in ``distill``): ``"rest"``, the target's own
            training split with its labels dropped (the labelled examples included, as in FixMatch;
            never the validation or test split), or another dataset (built-in name or path) whose
            training split's inputs are used, brought to the target's input shape.
        unlabeled_size: Use this many unlabelled examples (drawn with the first seed); ``None``: all.
        text_column, label_column: The text and label columns of a ``.csv`` / ``.tsv`` / ``.jsonl``
            target (a numeric ``.csv``: its label column), also the text column of an ``unlabeled``
            text file (which may be a ``.txt`` file, one text a line).
        ordered: The target file's rows are in time order: its test split is the last 20 % of rows
            and validation the last ``val_fraction`` of the rest (files only).
    """

    dataset: str = "digits"
    root: str | None = None
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    shots: int | None = Field(None, ge=1)
    val_shots: int | None = Field(None, ge=1)
    classes: list[str] | None = Field(None, min_length=2)
    source_dataset: str | None = None
    source_root: str | None = None
    unlabeled: str | None = None
    unlabeled_size: int | None = Field(None, ge=1)


class _SourceOptions(_Strict):
    """How to load a source model beyond its name (shared by :class:`ModelConfig` and
    :class:`TeacherConfig`); see :class:`~transferkit.models.SourceSpec`."""

    pretrained: bool = True
    head: str | None = None
    input_size: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1, max_length=3)
    mean: list[float] | None = None
    std: list[Annotated[float, Field(gt=0)]] | None = None
    init: dict[str, Any] = Field(default_factory=dict)

    def _spec(self, source: str, arch: str | None) -> SourceSpec:
        from transferkit.models.storage import SourceSpec

        return SourceSpec(source, arch, self.pretrained, self.head, self.input_size, self.mean, self.std,
                          self.init)


class SourceEntry(_SourceOptions):
    """One of several sources of ``finetune`` with options of its own (a YAML mapping in the
    ``model.source`` list); options it leaves unset are the model section's.

    Attributes:
        model: Model folder, weights file, built-in or hub name (as ``model.source``).
        arch: Architecture of a bare weights file (as ``model.source_arch``).
        label: The arm names' part for this source (default: from ``model``).
        kwargs: Target-architecture arguments for this source's arms only, over ``model.kwargs``
            (e.g. ``{image_size: 64}`` for a large network beside a small one).
        pretrained, head, input_size, mean, std, init: As in :class:`ModelConfig`.
    """

    model: str
    arch: str | None = None
    label: str | None = Field(None, min_length=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_SourceOptions):
    """Source and target models.

    Attributes:
        source: The source model: a model folder, a weights file (with ``source_arch``), a built-in name
            or a hub spec (``timm:resnet18``, ``torchvision:resnet18``). ``None`` trains from scratch.
            ``finetune`` also takes a list: every source is transferred and compared with one baseline;
            an item may be a :class:`SourceEntry` mapping with options of its own
            (``{model: efficientnet_lite0, kwargs: {image_size: 64}}``).
        source_arch: Architecture of a bare weights file given as ``source``: a registered name, a
            hub spec, or the user's own class (``my_cnn.py:MyCNN``, ``package.module:MyCNN``), which
            is imported only when the command line names it too (``--source-arch``).
        arch: Target architecture; ``None`` reuses the source's architecture with a new head.
        kwargs: Arguments for the target architecture (``image_size``, ``widths`` ...).
        baseline_arch: Architecture of ``finetune``'s from-scratch baseline (e.g. ``small_cnn`` when
            the source is a large network); default: the (first) source's architecture, or ``arch``.
        pretrained: Load pretrained weights when ``source`` is a built-in or hub name.
        head: The source's classifier (dotted module name) when it is the user's own class;
            default: a module called ``head``, else the last ``nn.Linear``.
        input_size: The source's input ``[C, H, W]`` where its files can't tell.
        mean: Per-channel normalisation mean of the source's input (raw values in [0, 1]).
        std: Per-channel normalisation std of the source's input.
        init: Constructor arguments of the source's own class.
    """

    source: str | list[str | SourceEntry] | None = None
    source_arch: str | None = None
    arch: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    baseline_arch: str | None = None

    @field_validator("source")
    @classmethod
    def _sources_distinct(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("source lists no model; give one or more, or leave it out")
            seen = [x if isinstance(x, str) else x.model_dump_json(exclude_unset=True) for x in v]
            if len(set(seen)) != len(seen):
                raise ValueError(f"source repeats a model ({seen}); give each one once")
        return v

    @property
    def entries(self) -> list[SourceEntry]:
        """``source`` as a list of :class:`SourceEntry` (a name becomes an entry with no options)."""
        if self.source is None:
            return []
        items = [self.source] if isinstance(self.source, str) else list(self.source)
        return [SourceEntry(model=x) if isinstance(x, str) else x for x in items]

    @property
    def sources(self) -> list[str]:
        """The source models' names or paths (empty when there is none)."""
        return [e.model for e in self.entries]

    def source_spec(self) -> SourceSpec | None:
        """What :func:`~transferkit.models.load_source` needs to load ``source`` (``None``: no source).

        Raises:
            ConfigError: ``source`` lists several models (only ``finetune`` compares several).
        """
        if len(self.sources) > 1:
            raise ConfigError(f"this run takes one source model, got {len(self.sources)}: {self.sources}")
        return self._spec(self.sources[0], self.source_arch) if self.sources else None

    def source_specs(self) -> list[SourceSpec]:
        """One :class:`~transferkit.models.SourceSpec` per source: an entry's own options over the
        shared ones."""
        specs = []
        for entry in self.entries:
            own = {k: getattr(entry, k) for k in entry.model_fields_set if k in _SourceOptions.model_fields}
            options = self.model_copy(update=own)
            specs.append(options._spec(entry.model, entry.arch if "arch" in entry.model_fields_set
                                       else self.source_arch))
        return specs


class TransferConfig(_Strict):
    """How parameters move from source to target (see :func:`transferkit.transfer.transfer_parameters`)."""

    shape_mismatch: Literal["slice", "skip"] = "slice"
    exclude: list[str] = Field(default_factory=lambda: ["head.*"])


def _check_method(spec: dict[str, Any]) -> dict[str, Any]:
    """Check one objective entry with its ``Options`` model
    (:func:`~transferkit.engine.objectives.validate_method_spec`); the entry is kept as written, so
    a run's recorded config stays what the user gave."""
    from transferkit.engine.objectives import validate_method_spec

    try:
        validate_method_spec(spec)
    except TransferkitError as exc:  # a bad option, no name, or an unknown name (close ones named)
        raise PydanticCustomError("method_spec", "{problem}", {"problem": str(exc)}) from None
    return spec


def adapt_method_name(name: Any) -> str:
    """A domain-adaptation method's registered name as the adapt workflow reads it: ``cdan+e`` and
    ``cdan-e`` are ``cdan_e``."""
    return str(name or "").replace("+", "_").replace("-", "_")


def _check_adapt_method(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`_check_method` for a domain-adaptation method: the name as the adapt workflow reads it
    (``cdan+e`` is ``cdan_e``), and the objective must use target data."""
    from transferkit.engine.objectives import OBJECTIVES

    name = adapt_method_name(spec.get("name"))
    _check_method({**spec, "name": name} if name else spec)
    if not OBJECTIVES.get(name).uses_target:
        adapting = ", ".join(n for n, cls in OBJECTIVES.items() if cls.uses_target)
        problem = f"method {name!r} does not adapt to target data; use one of {adapting}"
        raise PydanticCustomError("method_spec", "{problem}", {"problem": problem})
    return spec


#: An objective entry ``{name: ..., <option>: ...}`` whose options are checked when the config is.
MethodSpec = Annotated[dict[str, Any], AfterValidator(_check_method)]
#: A domain-adaptation method entry, checked the same way.
AdaptMethodSpec = Annotated[dict[str, Any], AfterValidator(_check_adapt_method)]


def _check_seeds(v: list[int]) -> list[int]:
    if not v:
        raise ValueError("seeds must list at least one seed, e.g. [0]")
    return v


class FinetuneConfig(_Strict):
    """A fine-tuning run: source -> target data, with an optional from-scratch baseline.

    Attributes:
        name: Run name used in reports.
        out: Output folder (``metrics.json``, ``report.html``, ``model/``, ``runs/``).
        seeds: One training run per seed; results are averaged.
        baseline: Also train the target architecture from scratch on the same data and budget.
        resume: Continue runs killed part-way from their last checkpoint (finished runs are
            reloaded, not retrained); the result equals an uninterrupted run.
            Refused when the folder's ``run.json`` records other settings, data or source.
        overwrite: Replace the results already in ``out``; they stay until the new run finishes.
            Without ``resume`` or ``overwrite`` a folder holding results is refused.
        regularizers: Objectives added to cross-entropy for the transferred model, each
            ``{name: l2sp|delta|bss|ewc|lwf|kd|..., weight: ..., <options>}``; they combine freely.
            Each entry's options are checked against the objective's ``Options`` here.
        recipe: Training settings that fit the data (:mod:`transferkit.recipes`): ``auto`` (picked
            by strategy and labelled examples per class), a built-in name (``few-shot``,
            ``linear-probe``, ``full``, ``lora``) or a YAML file. It fills only the ``train``
            values (and ``min_steps``, ``lr_sweep``) left unset here.
        min_steps: Every arm trains at least this many optimisation steps: ``train.epochs`` is
            raised on a small training set, unless ``train.epochs`` is set. ``None``: the recipe's.
        lr_sweep: Learning rates tried for every arm and seed; the one whose run is best on
            validation (the selection metric) is kept, the test split never looked at. ``None``:
            the recipe's (the built-in ones don't sweep); ``[]``: no sweep.
    """

    name: str = "finetune"
    out: str = "runs/finetune"
    seeds: list[int] = Field(default_factory=lambda: [0])
    baseline: bool = True
    recipe: str = "auto"
    min_steps: int | None = Field(None, ge=1)
    lr_sweep: list[Annotated[float, Field(gt=0)]] | None = None
    resume: bool = False
    overwrite: bool = False
    regularizers: list[MethodSpec] = Field(default_factory=list)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    _seeds_not_empty = field_validator("seeds")(_check_seeds)

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, v: str) -> str:
        if v != "auto":
            from transferkit.recipes import load_recipe

            try:
                load_recipe(v)
            except ConfigError as exc:
                raise PydanticCustomError("recipe", "{problem}", {"problem": str(exc)}) from None
        return v


def _format_validation_error(exc: ValidationError, what: str) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {loc!r}")
        else:
            bad = err.get("input")
            shown = "" if isinstance(bad, dict) else f" (got {bad!r})"
            problems.append(f"{loc}: {err['msg']}{shown}")
    return f"invalid {what}: " + "; ".join(problems)


def build_config(data: dict[str, Any] | None = None, cls: type[BaseModel] = FinetuneConfig) -> Any:
    """Validate a nested dict into ``cls``; every problem is reported in one :class:`ConfigError`."""
    try:
        return cls.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, "config")) from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in a few words: ``line 3, column 5: mapping values are not allowed here``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``"train.lr=0.01"`` into ``(["train", "lr"], 0.01)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value; write e.g. train.lr=0.01")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key; write e.g. train.lr=0.01")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {item!r}: the value is not valid YAML ({yaml_problem(exc)}); quote it or fix it"
        ) from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``dotted.key=value`` override set."""
    out: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"override {item!r}: {part!r} holds a value, not a section, so it has no keys"
                )
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with clear errors."""
    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"config file {str(p)!r} does not exist; check the path")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file {str(p)!r} is not valid YAML ({yaml_problem(exc)}); fix that line"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {str(p)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys, got a {type(data).__name__}")
    return data


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    cls: type[BaseModel] = FinetuneConfig,
) -> Any:
    """Load a config from YAML (optional), apply ``key=value`` overrides, validate.

    Example:
        >>> cfg = load_config(None, ["data.dataset=digits", "train.epochs=3"])
        >>> cfg.train.epochs
        3
    """
    data = read_yaml(path) if path is not None else {}
    return build_config(apply_overrides(data, overrides or []), cls)


def dump_config(cfg: BaseModel) -> str:
    """The config as YAML text (round-trips through :func:`load_config`)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _scratch_rate(v: Any) -> Any:
    """A ``train`` section of a run whose model trains from scratch: the whole network at ``lr``
    (``backbone_lr_scale`` 1) unless the section sets it (TrainConfig's 0.1 is for a pretrained backbone)."""
    if isinstance(v, dict) and "backbone_lr_scale" not in v:
        return {**v, "backbone_lr_scale": 1.0}
    return v


def _default_methods() -> list[dict[str, Any]]:
    return [{"name": "cross_entropy", "weight": 1.0}, {"name": "kd", "weight": 1.0, "temperature": 4.0}]


class TeacherConfig(_SourceOptions):
    """The teacher of a distillation run.

    Attributes:
        model: Model folder, weights file (with ``arch``), built-in or hub name.
        arch: Architecture of a bare weights file (a user class as in :class:`ModelConfig`).
        pretrained, head, input_size, mean, std, init: As in :class:`ModelConfig`, for the teacher.
        precompute: Compute the teacher's logits once for the training set when only logits are
            needed (saves a teacher forward per step).
    """

    model: str
    arch: str | None = None
    precompute: bool = True

    def source_spec(self) -> SourceSpec:
        """What :func:`~transferkit.models.load_source` needs to load the teacher."""
        return self._spec(self.model, self.arch)


class StudentConfig(_Strict):
    """The student: ``narrow:N`` (the teacher's architecture, N times narrower, fresh weights), a
    built-in name (``mlp``, ``small_cnn``) with ``kwargs``, or a model folder to start from."""

    model: str = "narrow:4"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DistillConfig(_Strict):
    """A distillation run: the student trained with ``methods`` against the same student trained
    from scratch (cross-entropy only) on the same data and budget.

    Attributes:
        methods: The distilled student's objectives, each ``{name: ..., weight: ..., <args>}``
            (names from ``transferkit.engine.OBJECTIVES``: ``cross_entropy``, ``kd``, ``hint``,
            ``attention``, ``rkd``, ``fsp``). Without ``cross_entropy`` the student learns from the
            teacher alone. Each entry's options are checked against the objective's ``Options``.
        rounds: Noisy-student rounds (Xie et al., 2020): round 1 distils the teacher into a fresh
            student; each later round distils the previous round's student into another fresh one
            (the student's noise: ``train.augment`` and its dropout; the teacher reads clean inputs).
            Every round is an arm of the report; useful with ``data.unlabeled``.
    """

    name: str = "distill"
    out: str = "runs/distill"
    seeds: list[int] = Field(default_factory=lambda: [0])
    baseline: bool = True
    resume: bool = False
    overwrite: bool = False
    teacher: TeacherConfig
    student: StudentConfig = Field(default_factory=StudentConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    methods: list[MethodSpec] = Field(default_factory=_default_methods)
    rounds: int = Field(1, ge=1)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(backbone_lr_scale=1.0))

    _seeds_not_empty = field_validator("seeds")(_check_seeds)
    _scratch_rate = field_validator("train", mode="before")(_scratch_rate)

    @field_validator("methods")
    @classmethod
    def _methods_given(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not v:
            raise ValueError("methods must list at least one objective, e.g. [{name: kd}]")
        return v


class DomainDataConfig(_FileOptions):
    """One domain's data in a domain-adaptation run.

    Attributes:
        dataset: A built-in name (``mnist5k``, ``digits``, ``fashion-mnist``) or a path.
        root: Folder holding the dataset's files, for built-ins that read from disk.
        val_fraction: Share of the training split held out (source: DEV's validation set; target:
            only the oracle baseline's validation set).
        classes: Keep only these classes (train and test), relabelled in this order; give the same
            list for both domains.
        text_column, label_column, ordered: As in :class:`DataConfig`.
        unlabeled: Target only: the unlabelled target inputs the methods adapt to, instead of the
            target's training split without labels: a text file (``.txt``, one text a line, or a
            table's ``text_column``) or a dataset (its training split) of the target's kind; its
            labels, if any, are never read. The target's labelled test split still gives the
            reported accuracy (and its training split the oracle).
        unlabeled_size: Use this many of the unlabelled inputs (drawn with the first seed).
    """

    dataset: str
    root: str | None = None
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    classes: list[str] | None = Field(None, min_length=2)
    unlabeled: str | None = None
    unlabeled_size: int | None = Field(None, ge=1)


def _default_adapt_methods() -> list[dict[str, Any]]:
    return [{"name": "dann"}]


class AdaptConfig(_Strict):
    """A domain-adaptation run: labelled source data, unlabelled target data, the same task.

    Every method is trained for every trade-off weight in ``weights`` and every seed, next to a
    source-only model and (with ``oracle``) a model trained on the labelled target. The checkpoint
    and the weight are chosen by the label-free criterion ``select``; the report shows the accuracy
    every criterion's choice gave next to the choice target labels would have made.

    Attributes:
        source_data: The labelled source domain.
        target_data: The target domain; its training inputs are used without labels, its test
            split gives the reported accuracy.
        image_size: Both domains' images are resized to this (square) size; ``None`` uses the
            larger of the two.
        methods: Objectives adapting to the target, each ``{name: ..., <args>}`` (``dann``,
            ``cdan``, ``cdan_e``, ``dan``, ``jan``, ``coral``, ``mcd``); cross-entropy on the source
            is always added. Each entry's options are checked against the objective's ``Options``.
        weights: Grid of the methods' trade-off weight (the option its ``Options`` marks: the
            objective's ``weight``; MCD's ``trade_off``), unless a method sets it itself.
        select: Label-free criterion picking checkpoint and weight: ``dev`` (importance-weighted
            source validation loss), ``snd`` (soft neighbourhood density) or ``entropy``.
        source_only: Also train on the source alone (the baseline of the report).
        oracle: Also train on the labelled target (an upper bound no user without target labels
            can reach).
        model: The network: ``arch`` (default ``small_cnn``) with ``kwargs``, or a ``source``
            model folder to start from.
    """

    name: str = "adapt"
    out: str = "runs/adapt"
    seeds: list[int] = Field(default_factory=lambda: [0])
    resume: bool = False
    overwrite: bool = False
    source_data: DomainDataConfig = Field(default_factory=lambda: DomainDataConfig(dataset="mnist5k"))
    target_data: DomainDataConfig = Field(default_factory=lambda: DomainDataConfig(dataset="digits"))
    image_size: int | None = Field(None, ge=4)
    methods: list[AdaptMethodSpec] = Field(default_factory=_default_adapt_methods)
    weights: list[float] = Field(default_factory=lambda: [1.0])
    select: Literal["dev", "snd", "entropy"] = "dev"
    source_only: bool = True
    oracle: bool = True
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(arch="small_cnn"))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(backbone_lr_scale=1.0))

    _seeds_not_empty = field_validator("seeds")(_check_seeds)
    _scratch_rate = field_validator("train", mode="before")(_scratch_rate)

    @field_validator("weights")
    @classmethod
    def _weights_ok(cls, v: list[float]) -> list[float]:
        if not v or any(not w >= 0 for w in v):
            raise ValueError(f"weights must be a non-empty list of numbers >= 0, got {v}")
        return v

    @field_validator("source_data")
    @classmethod
    def _source_is_labelled(cls, v: DomainDataConfig) -> DomainDataConfig:
        if v.unlabeled is not None or v.unlabeled_size is not None:
            raise ValueError("the source domain is labelled; give unlabelled target inputs as "
                             "target_data.unlabeled (--unlabeled)")
        return v


class TaskConfig(_FileOptions):
    """One task of a multi-task run.

    Attributes:
        dataset: A built-in name or a path (as ``data.dataset``).
        root, val_fraction, shots, val_shots, classes, text_column, label_column, ordered: As in
            :class:`DataConfig`.
        weight: The task's fixed weight in the shared loss (below 1 for an auxiliary task, e.g. the
            source task kept while learning the target).
    """

    dataset: str
    root: str | None = None
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    shots: int | None = Field(None, ge=1)
    val_shots: int | None = Field(None, ge=1)
    classes: list[str] | None = Field(None, min_length=2)
    weight: float = Field(1.0, ge=0.0)


class MultitaskConfig(_Strict):
    """A multi-task run: one model with a head per task, against one single-task model per task.

    Attributes:
        name, out, seeds, overwrite: As in :class:`FinetuneConfig`.
        tasks: Task name -> :class:`TaskConfig` (at least two).
        model: The shared model: ``arch`` (from scratch) or ``source`` (its backbone transferred), as
            in :class:`ModelConfig`.
        sampling: How steps draw tasks: ``all`` (a batch of every task per step), ``proportional``,
            ``uniform`` or ``temperature`` (see :class:`~transferkit.data.tasks.TaskSet`).
        temperature: T of ``temperature`` sampling.
        weighting: ``equal``, ``uncertainty``, ``dwa`` or ``gradnorm``.
        surgery: ``pcgrad``, ``cagrad`` or none.
        baseline: Also train one single-task model per task (same model, data, budget) and compare.
        train: The training settings, the same for the multi-task and the single-task models.
    """

    name: str = "multitask"
    out: str = "runs/multitask"
    seeds: list[int] = Field(default_factory=lambda: [0])
    overwrite: bool = False
    tasks: dict[str, TaskConfig]
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(arch="small_cnn"))
    sampling: Literal["all", "proportional", "uniform", "temperature"] = "all"
    temperature: float = Field(2.0, gt=0)
    weighting: Literal["equal", "uncertainty", "dwa", "gradnorm"] = "equal"
    surgery: Literal["pcgrad", "cagrad"] | None = None
    baseline: bool = True
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(backbone_lr_scale=1.0))

    _seeds_not_empty = field_validator("seeds")(_check_seeds)
    _scratch_rate = field_validator("train", mode="before")(_scratch_rate)

    @model_validator(mode="after")
    def _surgery_needs_all(self) -> MultitaskConfig:
        what = self.surgery or ("gradnorm" if self.weighting == "gradnorm" else None)
        if what and self.sampling != "all":
            raise ValueError(f"{what} combines every task's gradient at each step: use sampling='all' "
                             f"(a batch of every task per step), not {self.sampling!r}")
        return self

    @field_validator("tasks")
    @classmethod
    def _two_tasks(cls, v: dict[str, TaskConfig]) -> dict[str, TaskConfig]:
        if len(v) < 2:
            raise ValueError(f"a multi-task run needs at least two tasks, got {len(v)}")
        bad = [t for t in v if not t or "." in t or "/" in t]
        if bad:
            raise ValueError(f"task names must be non-empty without '.' or '/', got {bad[0]!r}")
        return v


def config_class(data: dict[str, Any]) -> type[BaseModel]:
    """The kind of run a config describes, from its keys: :class:`DistillConfig` (a ``teacher``),
    :class:`MultitaskConfig` (``tasks``),
    :class:`AdaptConfig` (``source_data``, ``target_data``, ``weights`` or ``select``) or
    :class:`FinetuneConfig`."""
    if "teacher" in data:
        return DistillConfig
    if "tasks" in data:
        return MultitaskConfig
    if any(k in data for k in ("source_data", "target_data", "weights", "select", "source_only", "oracle")):
        return AdaptConfig
    return FinetuneConfig
