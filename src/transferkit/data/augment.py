"""Train-time augmentation configured by name, run batched on the training device with kornia.

A spec is a string ``"name"`` or ``"name:key=value,key=value"`` (``"crop:scale=0.5"``) or a mapping
``{"name": "crop", "scale": 0.5}`` (the form YAML gives). Every name maps to a kornia module; the list
is applied in order by :class:`Augmentation`.

Determinism: kornia draws every random parameter from torch's global RNG (CPU generator for the
parameters, the device generator for noise), so the trainer seeds it with ``torch.manual_seed``;
the same seed and batch give the same output.

Mixup / cutmix targets: kornia 0.9's ``RandomMixUpV2`` returns class labels ``(N, 3)`` holding
``(label, paired label, lam)`` with ``image = (1 - lam) * x + lam * x[pair]``; ``RandomCutMixV2``
returns ``(num_mix, N, 3)`` and, with ``use_correct_lambda=True``, ``lam = 1 - pasted area fraction``
(the weight of the *original* label). We pass row indices as the "labels", so the returned triple
is ``(row, paired row, lam)``, and mix the rows of the running soft-target matrix with
:func:`mix_soft_targets`; this composes when both mixup and cutmix are listed. Unlabelled rows
(label ``-1``) start as all-zero target rows, so the weight an image takes from an unlabelled image
is dropped: a row sums to 1 only when both sources are labelled, to 0 when both are unlabelled.
Callers should weight the loss by the row sum (or mask rows summing to 0).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import kornia.augmentation as K
import torch
from kornia.augmentation.auto import RandAugment, TrivialAugment
from kornia.augmentation.random_generator import MixupGenerator
from torch import Tensor, nn

from transferkit.errors import ConfigError, LabelError, ShapeError

__all__ = [
    "AUGMENTATIONS", "STRONG", "WEAK", "Augmentation", "TwoViews", "build_augmentation", "build_views",
    "mix_soft_targets", "one_hot_targets", "parse_spec", "spec_names",
]

# name -> {option: default}
AUGMENTATIONS: dict[str, dict[str, float]] = {
    "hflip": {"p": 0.5},
    "vflip": {"p": 0.5},
    "crop": {"scale": 0.08, "p": 1.0},
    "rotate": {"degrees": 15.0, "p": 0.5},
    "shift": {"fraction": 0.1, "p": 1.0},
    "randaugment": {"n": 2, "m": 9},
    "trivialaugment": {},
    "noise": {"std": 0.05, "p": 1.0},
    "color": {"strength": 0.5, "p": 0.8},
    "erase": {"p": 0.5},
    "mixup": {"alpha": 0.2, "p": 1.0},
    "cutmix": {"alpha": 1.0, "p": 1.0},
}
MIXING = ("mixup", "cutmix")
WEAK: list[str] = ["hflip", "crop:scale=0.8"]
STRONG: list[str] = ["hflip", "crop:scale=0.8", "randaugment", "erase"]

# option -> (low, high, low is exclusive, must be an integer)
_RANGES = {
    "p": (0, 1, False, False), "scale": (0, 1, True, False), "degrees": (0, 180, False, False),
    "n": (1, 15, False, True), "m": (1, 29, False, True), "std": (0, 1, False, False),
    "strength": (0, 1, False, False), "alpha": (0, 100, True, False),
    "fraction": (0, 0.5, True, False),
}
Spec = str | Mapping[str, object]


def _number(name: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"augmentation {name!r}: option {key}={value!r} is not a number; "
                          f"give e.g. {key}=0.5")
    try:
        num = float(value)
    except ValueError:
        raise ConfigError(f"augmentation {name!r}: option {key}={value!r} is not a number; "
                          f"give e.g. '{name}:{key}=0.5'") from None
    low, high, open_low, integer = _RANGES[key]
    if integer and num != int(num):
        raise ConfigError(f"augmentation {name!r}: option {key}={value!r} must be a whole number")
    if num > high or num < low or (open_low and num == low):
        bound = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise ConfigError(f"augmentation {name!r}: option {key}={value!r} is out of range; "
                          f"use a value in {bound}")
    return int(num) if integer else num


def parse_spec(spec: Spec) -> tuple[str, dict[str, float]]:
    """Parse one spec into ``(name, options given)``; values become numbers.

    Raises:
        ConfigError: unknown name (with suggestions), unknown option key (naming the known ones),
            a malformed ``key=value`` pair or a value that is not a number in range.
    """
    if isinstance(spec, str):
        name, _, rest = spec.strip().partition(":")
        raw: dict[str, object] = {}
        for pair in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = pair.partition("=")
            if not eq:
                raise ConfigError(f"augmentation option {pair!r} in {spec!r} is not key=value; "
                                  "write e.g. 'crop:scale=0.5'")
            raw[key.strip()] = value.strip()
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(f"augmentation spec {dict(spec)!r} has no 'name'; "
                              "write e.g. {'name': 'crop', 'scale': 0.5}")
        name, raw = str(spec["name"]), {str(k): v for k, v in spec.items() if k != "name"}
    else:
        raise ConfigError(f"augmentation spec {spec!r} must be a string 'name:key=value' "
                          "or a mapping with 'name'")
    name = name.strip().lower()
    if name not in AUGMENTATIONS:
        score = {k: difflib.SequenceMatcher(None, name, k).ratio() for k in AUGMENTATIONS}
        close = [k for k in AUGMENTATIONS if score[k] == max(score.values()) >= 0.6]
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ConfigError(f"unknown augmentation {name!r}; {hint}known: {', '.join(AUGMENTATIONS)}")
    known = AUGMENTATIONS[name]
    for key in raw:
        if key not in known:
            raise ConfigError(f"augmentation {name!r} has no option {key!r}; "
                              f"known: {', '.join(known) or 'none (it takes no options)'}")
    return name, {key: _number(name, key, value) for key, value in raw.items()}


def _parse_all(specs: Sequence[Spec]) -> list[tuple[str, dict[str, float]]]:
    if isinstance(specs, str | Mapping):
        raise ConfigError(f"augmentations must be a list of specs, got {specs!r}; write e.g. [{specs!r}]")
    return [parse_spec(s) for s in specs]


def spec_names(specs: Sequence[Spec]) -> list[str]:
    """Short names for reports, options as given: ``["hflip", "crop(scale=0.5)"]``."""
    out = []
    for name, opts in _parse_all(specs):
        out.append(f"{name}({', '.join(f'{k}={v:g}' for k, v in opts.items())})" if opts else name)
    return out


def one_hot_targets(y: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot rows ``(N, num_classes)`` of labels ``y`` ``(N,)``; label ``-1`` gives an all-zero row."""
    soft = torch.zeros(len(y), num_classes, dtype=dtype, device=y.device)
    keep = y >= 0
    soft[keep] = nn.functional.one_hot(y[keep], num_classes).to(dtype)
    return soft


def mix_soft_targets(soft: Tensor, mix: Tensor) -> Tensor:
    """Mix soft-target rows as kornia mixed the images.

    Args:
        soft: Current targets ``(N, K)``.
        mix: ``(N, 3)`` rows ``(a, b, lam)``: row indices and the weight of ``b``, so the new row
            is ``(1 - lam) * soft[a] + lam * soft[b]`` (kornia's mixup convention).

    Returns:
        The mixed targets ``(N, K)``.
    """
    a, b, lam = mix[:, 0].round().long(), mix[:, 1].round().long(), mix[:, 2:3].to(soft.dtype)
    return (1 - lam) * soft[a] + lam * soft[b]


class _BetaMixupGenerator(MixupGenerator):
    """kornia's mixup parameters with ``lam ~ Beta(alpha, alpha)`` (kornia samples it uniformly)."""

    def __init__(self, alpha: float) -> None:
        super().__init__(None, p=1.0)
        self.alpha = alpha

    def make_samplers(self, device: torch.device, dtype: torch.dtype) -> None:
        super().make_samplers(device, dtype)
        alpha = torch.tensor(self.alpha, device=device, dtype=dtype)
        self.lambda_sampler = torch.distributions.Beta(alpha, alpha)


class _ResizedCrop(nn.Module):
    """kornia ``RandomResizedCrop`` back to the input's own size (built once per size)."""

    def __init__(self, scale: float, p: float) -> None:
        super().__init__()
        self.scale, self.p, self._ops = scale, p, {}

    def forward(self, x: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        if size not in self._ops:
            self._ops[size] = K.RandomResizedCrop(size, scale=(self.scale, 1.0), p=self.p)
        return self._ops[size](x)


class _AsRGB(nn.Module):
    """Run an RGB-only kornia op on 1-channel images: repeat to 3 channels, apply, average back."""

    def __init__(self, name: str, op: nn.Module) -> None:
        super().__init__()
        self.name, self.op = name, op

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 3:
            return self.op(x)
        if x.shape[1] == 1:
            return self.op(x.expand(-1, 3, -1, -1).contiguous()).mean(dim=1, keepdim=True)
        raise ConfigError(f"augmentation {self.name!r} needs 1- or 3-channel images, got {x.shape[1]} "
                          "channels; drop it from the list for these inputs")


def _module(name: str, o: dict[str, float]) -> nn.Module:
    if name == "hflip":
        return K.RandomHorizontalFlip(p=o["p"])
    if name == "vflip":
        return K.RandomVerticalFlip(p=o["p"])
    if name == "crop":
        return _ResizedCrop(o["scale"], o["p"])
    if name == "shift":  # translation only: no rescaling, aspect change or flip
        return K.RandomAffine(degrees=0.0, translate=(o["fraction"], o["fraction"]), p=o["p"])
    if name == "rotate":
        return K.RandomRotation(degrees=o["degrees"], p=o["p"])
    if name == "randaugment":
        return _AsRGB(name, RandAugment(n=int(o["n"]), m=int(o["m"])))
    if name == "trivialaugment":
        return _AsRGB(name, TrivialAugment())
    if name == "noise":
        return K.RandomGaussianNoise(mean=0.0, std=o["std"], p=o["p"])
    if name == "color":  # SimCLR's jitter scaled by strength
        s = o["strength"]
        return _AsRGB(name, K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=o["p"]))
    if name == "erase":
        return K.RandomErasing(p=o["p"])
    if name == "mixup":
        op = K.RandomMixUpV2(p=o["p"], data_keys=["input", "class"])
        op._param_generator = _BetaMixupGenerator(o["alpha"])
        return op
    return K.RandomCutMixV2(beta=o["alpha"], p=o["p"], data_keys=["input", "class"], use_correct_lambda=True)


class Augmentation(nn.Module):
    """An ordered list of kornia augmentations, built by :func:`build_augmentation`.

    Randomness comes from torch's global RNG (seed it with ``torch.manual_seed``). RandAugment and
    TrivialAugment choose their operations once per batch (kornia); magnitudes vary per image.
    """

    def __init__(self, specs: Sequence[Spec], num_classes: int | None = None) -> None:
        super().__init__()
        self.parsed = _parse_all(specs)
        self.names = [name for name, _ in self.parsed]
        self.mixing = any(n in MIXING for n in self.names)
        if self.mixing and (num_classes is None or num_classes < 1):
            raise ConfigError(f"mixup/cutmix need num_classes (got {num_classes!r}); "
                              "pass build_augmentation(specs, num_classes=...)")
        self.num_classes = num_classes
        self.ops = nn.ModuleList(_module(n, {**AUGMENTATIONS[n], **o}) for n, o in self.parsed)

    def describe(self) -> str:
        """Short string for reports: ``"hflip, crop(scale=0.5), mixup(alpha=0.2)"``."""
        return ", ".join(spec_names([{"name": n, **o} for n, o in self.parsed]))

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Augment a batch.

        Args:
            x: Images ``(N, C, H, W)``, floating point in ``[0, 1]``.
            y: Labels ``(N,)`` int64 (``-1`` = unlabelled) or None; needed with mixup/cutmix.

        Returns:
            ``(images, soft)``: images ``(N, C, H, W)`` with ``x``'s dtype and device, clamped to
            ``[0, 1]``; ``soft`` is ``(N, num_classes)`` float32 targets on ``x``'s device when
            mixup/cutmix are in the list (see the module docstring for unlabelled rows), else None.

        Raises:
            ConfigError: ``x`` is not a 4-D floating batch, or mixup/cutmix get no labels.
            ShapeError: ``y`` is not ``(N,)``.
            LabelError: a label is outside ``[-1, num_classes)``.
        """
        if x.dim() != 4:
            raise ConfigError(f"augmentation needs images (N, C, H, W), got shape {tuple(x.shape)}; "
                              "drop 'augment' for non-image data")
        if not x.is_floating_point():
            raise ConfigError(f"augmentation needs float images in [0, 1], got {x.dtype}; "
                              "convert with x.float() / 255")
        soft = None
        if self.mixing:
            if y is None:
                raise ConfigError(f"{self.describe()} mixes labels and needs y; "
                                  "pass labels (-1 for unlabelled)")
            if y.shape != (x.shape[0],):
                raise ShapeError(f"labels have shape {tuple(y.shape)}, expected ({x.shape[0]},) "
                                 f"for {x.shape[0]} images")
            if len(y) and (int(y.min()) < -1 or int(y.max()) >= self.num_classes):
                raise LabelError(f"labels span [{int(y.min())}, {int(y.max())}] but mixup/cutmix know "
                                 f"{self.num_classes} classes; use labels in [0, {self.num_classes}) or -1")
            soft = one_hot_targets(y.to(x.device, torch.long), self.num_classes)
        out = x if x.dtype in (torch.float32, torch.float64) else x.float()
        rows = torch.arange(x.shape[0], device=x.device)
        for name, op in zip(self.names, self.ops, strict=True):
            if name in MIXING:
                out, mix = op(out, rows)
                for m in mix.reshape(-1, x.shape[0], 3):  # cutmix: (num_mix, N, 3)
                    if name == "cutmix":  # its lam is the weight of the original row
                        m = torch.cat([m[:, :2], 1 - m[:, 2:]], dim=1)
                    soft = mix_soft_targets(soft, m.to(soft.device))
            else:
                out = op(out)
        return out.clamp(0, 1).to(x.dtype), soft


def build_augmentation(specs: Sequence[Spec], num_classes: int | None = None) -> Augmentation | None:
    """Build the augmentation for ``specs`` (applied in order); None for an empty list.

    Raises:
        ConfigError: a bad spec, or mixup/cutmix without ``num_classes``.
    """
    return Augmentation(specs, num_classes) if len(_parse_all(specs)) else None


class TwoViews(nn.Module):
    """A weak and a strong view of the same batch, for semi-supervised methods (FixMatch)."""

    def __init__(self, weak: Augmentation | None, strong: Augmentation | None) -> None:
        super().__init__()
        self.weak, self.strong = weak, strong

    def describe(self) -> str:
        """``"weak: hflip, crop(scale=0.8); strong: ..."`` (``none`` for an empty list)."""
        views = (("weak", self.weak), ("strong", self.strong))
        return "; ".join(f"{k}: {a.describe() if a else 'none'}" for k, a in views)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``(N, C, H, W)`` -> ``(weak_x, strong_x)``, each ``(N, C, H, W)``."""
        return (self.weak(x)[0] if self.weak else x), (self.strong(x)[0] if self.strong else x)


def build_views(weak: Sequence[Spec] = WEAK, strong: Sequence[Spec] = STRONG) -> TwoViews:
    """Build :class:`TwoViews`; mixup/cutmix are refused (views carry no labels).

    Raises:
        ConfigError: a bad spec, or mixup/cutmix in either list.
    """
    for which, specs in (("weak", weak), ("strong", strong)):
        bad = [n for n, _ in _parse_all(specs) if n in MIXING]
        if bad:
            raise ConfigError(f"{which} view cannot use {bad[0]!r} (it mixes labels); "
                              f"remove it from the {which} list")
    return TwoViews(build_augmentation(weak), build_augmentation(strong))
