"""Structure transfer by cloning: the source's architecture with fresh or copied weights.

:func:`clone_structure` rebuilds a model built by name (architecture, arguments and recorded growth
steps replayed) or, for any other module, copies it and re-initialises its parameters — the
``S_t = S_s`` of structure transfer, with a new head when the target has other classes.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.transfer.structure import apply_growth


def clone_structure(
    model: nn.Module,
    *,
    num_classes: int | None = None,
    weights: Literal["fresh", "source"] = "fresh",
    seed: int | None = None,
) -> nn.Module:
    """The same architecture as ``model`` (arch, kwargs and growth replayed) as a new model.

    Args:
        model: A :class:`~transferkit.models.TransferNet` built by name (rebuilt from its
            architecture, growth replayed), or any module whose modules can be copied (deep copy,
            then ``reset_parameters()`` for fresh weights).
        num_classes: Head size of the clone; defaults to ``model``'s.
        weights: ``"fresh"``: newly initialised weights; ``"source"``: a copy of ``model``'s
            weights (all but the head when ``num_classes`` differs, via
            :func:`transferkit.transfer.transfer_parameters` with ``exclude=["head.*"]``).
        seed: Seed of the fresh initialisation (``None``: torch's global generator).

    Returns:
        The clone, on ``model``'s device and dtype, in ``model``'s train/eval mode, with a copy of
        its ``info`` (input size, normalisation, growth) and its ``num_classes``/``source`` set.

    Raises:
        ConfigError: bad ``weights`` or ``num_classes``; a copied module with parameters but no
            ``reset_parameters()`` when ``weights="fresh"``.
    """
    from transferkit.models.zoo import create_model

    if weights not in ("fresh", "source"):
        raise ConfigError(f"weights must be 'fresh' or 'source', got {weights!r}")
    info = getattr(model, "info", None)
    if info is None or getattr(info, "arch", "custom") == "custom":
        return _clone_by_copy(model, num_classes=num_classes, weights=weights, seed=seed)
    n = info.num_classes if num_classes is None else num_classes
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        clone = create_model(info.arch, num_classes=n, pretrained=False, **info.kwargs)
        clone = apply_growth(clone, list(info.growth))
    ref = next(model.parameters(), None)
    if ref is not None:
        clone = clone.to(device=ref.device, dtype=ref.dtype)
    new_info = copy.deepcopy(info)
    new_info.num_classes = n
    new_info.class_names = None
    new_info.source = f"clone_structure({info.source or info.arch}, weights={weights!r})"
    clone.info = new_info
    clone.input_adapter = copy.deepcopy(model.input_adapter)
    clone.__dict__.pop("growth_report", None)
    if weights == "source":
        if n == info.num_classes:
            clone.load_state_dict(model.state_dict(), strict=True)
        else:
            from transferkit.transfer.parameters import transfer_parameters

            transfer_parameters(model, clone, exclude=["head.*"])
    clone.train(model.training)
    return clone


# --------------------------------------------------------------------------- helpers


def _clone_by_copy(
    model: nn.Module, *, num_classes: int | None, weights: str, seed: int | None
) -> nn.Module:
    """Clone a model with no registered architecture: copy its modules, then re-initialise.

    ``"fresh"`` calls ``reset_parameters()`` on every submodule that has one (Linear, Conv,
    BatchNorm, ...); a parameter held by a module without it cannot be re-initialised and is refused.
    A different ``num_classes`` needs a TransferNet (its ``head`` is replaced).
    """
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        if weights == "fresh":
            for name, module in clone.named_modules():
                own = list(module.parameters(recurse=False))
                if not own:
                    continue
                if not callable(getattr(module, "reset_parameters", None)):
                    raise ConfigError(
                        f"cannot re-initialise module {name!r} ({type(module).__name__}): it has "
                        "parameters but no reset_parameters(); clone with weights='source' instead"
                    )
                module.reset_parameters()
        info = getattr(clone, "info", None)
        if num_classes is not None and info is not None and num_classes != info.num_classes:
            from transferkit.models.surgery import replace_head

            replace_head(clone, num_classes)
        elif num_classes is not None and info is None:
            raise ConfigError(
                "a new num_classes needs a TransferNet (with a 'head'); wrap the model with "
                "transferkit.models.wrap_model first"
            )
    return clone


__all__ = ["clone_structure"]
