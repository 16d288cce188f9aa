"""Finding and probing layers for objectives that compare student and teacher layers.

Shared by attention transfer, FSP, RKD and DELTA: output shapes of named layers from one example,
the spatial (4-D) backbone blocks, the first training example of a fit and a teacher's recorded
layer. (Layer pairs are options, validated by each objective's ``Options`` model.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from transferkit.engine.batches import first_input
from transferkit.errors import ConfigError
from transferkit.models.surgery import LayerTap, backbone_blocks
from transferkit.transfer.distill.teacher import TeacherOutput

if TYPE_CHECKING:
    from transferkit.engine.context import FitContext


def probe_shapes(
    model: nn.Module, layers: Sequence[str], example: torch.Tensor
) -> dict[str, tuple[int, ...] | None]:
    """Output shapes of named layers for one example (eval mode, no gradients, mode restored).

    Args:
        model: Any module; names as in ``model.named_modules()``.
        layers: Layer names to probe.
        example: An input batch ``(n, ...)`` on any device (moved to the model's device).

    Returns:
        ``name -> shape without the batch dimension``, or ``None`` for a layer whose output is not
        a tensor (or that did not run).

    Raises:
        UnknownNameError: a name is not a submodule of ``model`` (close names suggested).
    """
    tap = LayerTap(model, list(layers), detach=True)
    first = next(model.parameters(), None)
    device = first.device if first is not None else example.device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tap:
            model(example.to(device))
    finally:
        model.train(was_training)
    shapes: dict[str, tuple[int, ...] | None] = {}
    for name in layers:
        out = tap.features.get(name)
        shapes[name] = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None
    return shapes


def spatial_blocks(model: nn.Module, example: torch.Tensor, role: str = "model") -> list[str]:
    """Names of the backbone blocks whose output is a 4-D ``(N, C, H, W)`` map, bottom first.

    Args:
        model: A TransferNet (anything with a ``backbone`` whose children are its blocks).
        example: One input batch to probe the shapes with.
        role: ``"student"`` or ``"teacher"``, used in error messages.

    Raises:
        ConfigError: ``model`` has no ``backbone`` (pass the layer names explicitly then).
    """
    if not hasattr(model, "backbone"):
        raise ConfigError(
            f"the {role} ({type(model).__name__}) has no 'backbone', so its blocks cannot be found "
            "automatically; pass the layer names explicitly"
        )
    names = [name for name, _ in backbone_blocks(model)]
    shapes = probe_shapes(model, names, example)
    return [n for n in names if shapes[n] is not None and len(shapes[n]) == 3]


def first_example(ctx: FitContext) -> torch.Tensor:
    """The first training input ``(1, ...)`` of the trainer's current fit (for shape probes)."""
    data = getattr(ctx, "train_data", None)
    if data is None or len(data) == 0:
        raise ConfigError(
            "this objective probes layer shapes on the training data in setup(ctx); run it "
            "through Trainer.fit(train, ...) with a non-empty training set"
        )
    return first_input(data)


def teacher_tap(out: TeacherOutput, name: str) -> torch.Tensor:
    """The teacher's recorded output of layer ``name`` from :meth:`Teacher.outputs`."""
    if name not in out.taps:
        raise ConfigError(
            f"the teacher did not record layer {name!r}; objectives must call "
            "teacher.request([...]) for their teacher layers before training starts"
        )
    return out.taps[name]
