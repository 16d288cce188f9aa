"""The validated training configuration shared by every transfer method.

One :class:`TrainConfig` drives the one training loop (:class:`transferkit.engine.Trainer`):
the optimiser, learning rates (with per-layer decay), the schedule, the freezing strategy, early
stopping and mixed precision all come from here. Values are checked when the config is built, and
:meth:`TrainConfig.from_dict` turns pydantic's errors into one
:class:`~transferkit.errors.ConfigError` naming every bad key and value at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from transferkit.errors import ConfigError


class LoraOptions(BaseModel):
    """Options of ``strategy: lora`` (the ``lora`` key of :class:`TrainConfig`): which adapter the
    `peft <https://github.com/huggingface/peft>`_ library puts on which backbone layers, and what
    the end of :meth:`Trainer.fit <transferkit.engine.Trainer.fit>` does with it. See
    :mod:`transferkit.engine.parameter_efficient`. Ignored by the other strategies.

    Attributes:
        method: ``"lora"`` (low-rank update ``W + alpha/rank * B A``, Hu et al., 2022), ``"dora"``
            (LoRA with a learned per-output magnitude, Liu et al., 2024), ``"loha"`` (Hadamard
            product of two low-rank updates), ``"lokr"`` (Kronecker product) or ``"ia3"`` (a learned
            scale per output channel; no rank, alpha or dropout). All of them adapt ``nn.Linear``
            and ``nn.Conv2d`` layers (and, except ``ia3``, ``nn.Conv1d``) and merge exactly.
        rank: Rank of the update (>= 1).
        alpha: Scale of the update: it is multiplied by ``alpha / rank`` (> 0).
        dropout: Dropout on the adapter's input (``lora``, ``dora``); for ``loha`` / ``lokr`` peft's
            ``rank_dropout`` (drops rows of the update). In [0, 1).
        target_modules: Backbone layers that get an adapter: exact names (``"fc.2"``; the
            ``"backbone."`` prefix is optional), any module (all its Linear/Conv layers, e.g. a block
            ``"conv2"``) or glob patterns (``"*.fc*"``). ``None``: every ``nn.Linear`` and
            ``nn.Conv2d`` (and ``nn.Conv1d``) of the backbone, leaving out grouped (depthwise)
            convolutions, which peft cannot merge. The head is never adapted: it trains fully.
        save: ``"merged"``: at the end of the fit the adapters are merged into the base weights,
            and the model is a plain TransferNet again (same architecture and state-dict keys).
            ``"adapters"``: the model keeps its adapters; write them beside the base with
            :func:`~transferkit.engine.parameter_efficient.save_adapters`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Literal["lora", "dora", "loha", "lokr", "ia3"] = "lora"
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None
    save: Literal["merged", "adapters"] = "merged"

    @field_validator("target_modules", mode="before")
    @classmethod
    def _one_pattern(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError(
                "target_modules is empty; leave it out (null) to adapt every Linear and Conv layer "
                "of the backbone, or name some, e.g. ['fc.2']"
            )
        if isinstance(value, (list, tuple)) and any(isinstance(v, str) and not v.strip() for v in value):
            raise ValueError("target_modules holds an empty name; name backbone layers, e.g. ['fc.2']")
        return value

    @model_validator(mode="after")
    def _check_method(self) -> LoraOptions:
        if self.method == "ia3":
            fields = type(self).model_fields
            set_ = [k for k in ("rank", "alpha", "dropout") if getattr(self, k) != fields[k].default]
            if set_:
                raise ValueError(
                    f"method 'ia3' learns one scale per output channel and has no rank, alpha or "
                    f"dropout, but {', '.join(f'{k}={getattr(self, k)!r}' for k in set_)} is set; "
                    "remove it or pick method 'lora'"
                )
        return self


class TrainConfig(BaseModel):
    """How to train: optimiser, schedule, strategy, stopping and runtime settings.

    Attributes:
        epochs: Number of passes over the training set (>= 1).
        batch_size: Examples per optimisation step (>= 1).
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: Learning rate of the head (and of objectives' own parameters), > 0.
        backbone_lr_scale: The backbone trains at ``lr * backbone_lr_scale``; 0 freezes it.
        layer_decay: Per-layer learning-rate decay in (0, 1]: backbone block ``i`` counted from the
            head (the top block is ``i = 0``) trains at ``lr * backbone_lr_scale * layer_decay**i``.
            ``None`` gives every backbone block the same rate.
        weight_decay: Weight decay of every parameter group (>= 0).
        momentum: SGD momentum in [0, 1) (ignored by Adam/AdamW).
        scheduler: ``"none"``, ``"cosine"`` (to 0 over ``epochs``) or ``"step"`` (x0.1 every
            ``max(1, epochs // 3)`` epochs); stepped once per epoch.
        warmup_epochs: Linear warm-up epochs before the schedule (>= 0, < ``epochs``).
        strategy: ``"full"`` (everything trains), ``"linear_probe"`` (frozen backbone, only the head
            trains), ``"gradual"`` (head first, then one more backbone block from the top every
            ``unfreeze_every`` epochs) or ``"lora"`` (the backbone's weights are frozen and peft
            adapters on its Linear/Conv layers train, with the head; options in ``lora``). Under
            ``lora`` the adapters train at ``lr`` (``backbone_lr_scale`` scales the backbone's own
            weights, which stay frozen; ``layer_decay`` still applies per block) and the
            backbone's BatchNorm statistics stay as they are.
        lora: :class:`LoraOptions` of ``strategy: lora`` (method, rank, alpha, dropout, target
            modules, how the result is saved).
        unfreeze_every: Epochs between unfreezing steps of the gradual strategy (>= 1).
        patience: Stop when validation accuracy has not improved for this many epochs; needs a
            validation set. ``None`` disables early stopping.
        grad_clip: Clip the global gradient norm to this value (> 0); ``None`` disables clipping.
        amp: Use mixed precision (autocast in ``amp_dtype``): on CUDA in either dtype, on the CPU in
            ``"bfloat16"`` only (CPU float16 autocast is slower than float32, so the default stays
            float32 there). Weights, optimiser state and checkpoints stay float32.
        amp_dtype: ``"float16"`` (with gradient scaling) or ``"bfloat16"`` (no scaling needed; on a CPU
            with AVX512-BF16 it trained MiniLM 2.3x, the small text transformer 2.1x and a ResNet-18
            2.7x faster than float32, bench/results/precision.md).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        seed: Seed of the global torch RNG and of the per-epoch shuffling.
        eval_batch_size: Batch size for validation and feature caching (>= 1).
        cache_features: For frozen backbones whose objectives need only logits, compute the backbone
            features once and train the head on them.
        num_workers: DataLoader worker processes that read and decode examples of datasets that
            are not in memory (>= 0); an in-memory TensorDataset is indexed directly.
        pin_memory: Page-locked batches from those workers, copied to the GPU without blocking
            (CUDA only).
        progress: Show a rich progress bar instead of one log line per epoch.
        freeze_bn: Keep the backbone's BatchNorm layers in eval mode while it trains, so they keep
            the source's statistics (their affine weights still train). Usually better when
            fine-tuning on few examples or with small batches.
        channels_last: Convert convolutional models to the channels-last memory format; on CPU
            this speeds up depthwise/pointwise convolutions (1.4-1.8x measured on EfficientNet) and
            plain ones too (small_cnn 1.7-1.8x in training, 3x in inference; ResNet-18 1.1-1.5x,
            bench/results/precision_channels_last.md).
        select_metric: The per-epoch value that picks the epoch whose weights the model ends with
            (and that early stopping watches): ``"val_accuracy"`` or any key of the epoch row, such
            as a monitor's (``"target_snd"``, ``"dev_risk"``). Epochs where it is ``None`` are not
            candidates; when no epoch has it the model keeps the last epoch's weights.
        select_mode: ``"max"`` or ``"min"``; ``"auto"`` minimises names containing ``loss``,
            ``risk``, ``entropy`` or ``error`` and maximises the rest.
        augment: Train-time augmentation of the training inputs, by name, applied in order on the
            training device (:mod:`transferkit.data.augment`): ``["hflip", "crop:scale=0.5"]``,
            ``randaugment``, ``trivialaugment``, ``noise:std=0.05``, ``mixup:alpha=0.2``, ...
            Empty: none.
        weak_augment, strong_augment: The two views of every unlabelled example given to
            objectives that ask for them (``Objective.needs_views``); ``None`` uses
            :data:`~transferkit.data.augment.WEAK` / :data:`~transferkit.data.augment.STRONG`.
        unlabeled_ratio: Unlabelled (target) examples paired with every labelled one in a step:
            the target batch is ``unlabeled_ratio * batch_size`` (FixMatch's ``mu``, 7 in the paper;
            1 for domain adaptation).
        divergence_factor: Stop with a :class:`~transferkit.errors.TrainingError` when training
            diverges: a step's total loss is more than this many times its first step's (at least
            1 in magnitude), or the weights' norm grows to more than this many times its start.
            The last good checkpoint is kept. ``None`` disables the check (> 1).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    backbone_lr_scale: float = Field(0.1, ge=0)
    layer_decay: float | None = Field(None, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["none", "cosine", "step"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    strategy: Literal["full", "linear_probe", "gradual", "lora"] = "full"
    unfreeze_every: int = Field(1, ge=1)
    lora: LoraOptions = Field(default_factory=LoraOptions)
    patience: int | None = Field(None, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    device: str = "auto"
    seed: int = 0
    eval_batch_size: int = Field(512, ge=1)
    cache_features: bool = True
    num_workers: int = Field(0, ge=0)
    pin_memory: bool = True
    progress: bool = False
    freeze_bn: bool = False
    channels_last: bool = False
    select_metric: str = "val_accuracy"
    select_mode: Literal["auto", "max", "min"] = "auto"
    divergence_factor: float | None = Field(100.0, gt=1)
    augment: list[str | dict[str, Any]] = Field(default_factory=list)
    weak_augment: list[str | dict[str, Any]] | None = None
    strong_augment: list[str | dict[str, Any]] | None = None
    unlabeled_ratio: int = Field(1, ge=1)

    @field_validator("augment", "weak_augment", "strong_augment")
    @classmethod
    def _check_augment(cls, value: list | None) -> list | None:
        if value:
            from transferkit.data.augment import parse_spec  # imports kornia: only when used

            for spec in value:
                try:
                    parse_spec(spec)
                except ConfigError as exc:
                    raise ValueError(str(exc)) from None
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value == "auto":
            return value
        try:
            torch.device(value)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(
                f"device {value!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from exc
        return value

    @model_validator(mode="after")
    def _check_warmup(self) -> TrainConfig:
        if self.warmup_epochs > 0 and self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} must be smaller than epochs={self.epochs}; "
                "lower warmup_epochs or raise epochs"
            )
        return self

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TrainConfig:
        """Build a config from a plain mapping (e.g. parsed YAML).

        Raises:
            ConfigError: Unknown keys (all named, with the known ones listed) or invalid values
                (each named with the bad value and the rule it broke).
        """
        d = dict(d or {})
        unknown = sorted(k for k in d if k not in cls.model_fields)
        if unknown:
            raise ConfigError(
                f"unknown training config key(s) {', '.join(repr(k) for k in unknown)}; "
                f"known keys: {', '.join(cls.model_fields)}"
            )
        try:
            return cls(**d)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from exc

    def selection_mode(self) -> Literal["max", "min"]:
        """``select_mode`` with ``"auto"`` resolved from the metric's name."""
        if self.select_mode != "auto":
            return self.select_mode
        lowered = self.select_metric.lower()
        return "min" if any(w in lowered for w in ("loss", "risk", "entropy", "error")) else "max"

    def resolve_device(self) -> torch.device:
        """The device training runs on: ``"auto"`` picks CUDA when available, else CPU.

        Raises:
            ConfigError: the device named by ``device`` is not available on this machine.
        """
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        problem = _unavailable(device)
        if problem:
            raise ConfigError(
                f"device={self.device!r} is not available: {problem}; use device='auto' (CUDA "
                "when present, else CPU) or device='cpu'"
            )
        return device


def _unavailable(device: torch.device) -> str | None:
    """Why ``device`` can't be used on this machine, or ``None`` when it can (or can't be told)."""
    kind = device.type
    if kind == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                return "this torch build has no CUDA support"
            return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})"
        return None
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return "no Apple MPS GPU is available (torch.backends.mps.is_available() is False)"
        return None
    backend = getattr(torch, kind, None)  # e.g. torch.xpu
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and not is_available():
        return f"torch reports no {kind!r} device (torch.{kind}.is_available() is False)"
    return None


def format_validation_error(exc: ValidationError) -> str:
    """One message listing every field pydantic rejected, with its bad value."""
    parts = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        field = ".".join(str(p) for p in loc) or "config"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden" and len(loc) == 2 and loc[0] == "lora":
            parts.append(f"unknown LoRA option {field!r}; known options: "
                         f"{', '.join(LoraOptions.model_fields)}")
        elif "input" in err and field != "config":
            parts.append(f"{field}={err['input']!r}: {msg}")
        else:
            parts.append(msg if field == "config" else f"{field}: {msg}")
    return "invalid training config: " + "; ".join(parts)


__all__ = ["LoraOptions", "TrainConfig", "format_validation_error"]
