"""Texts as token ids: the data seam between a :class:`~transferkit.data.TextDataset` and a text model.

A text model (:mod:`transferkit.models.text`) carries its tokenizer (``model.tokenizer``) and its
maximum length (``model.info.input_size == (max_length,)``). :func:`model_inputs` turns a
``TextDataset`` into a :class:`TokenDataset` for that model: an in-memory
:class:`~transferkit.data.TensorDataset` whose ``x`` is int64 token ids ``(N, L)``, right-padded with
:data:`PAD` (``-1``, never a token id) to the dataset's longest text. Everything the engine does with
in-memory tensors (seeded batches, caches keyed by position, evaluation, feature caches) then works on
text unchanged; the model's :class:`~transferkit.models.text.TokenAdapter` trims every batch to its
own longest text (dynamic padding: a batch of tweets costs tweet-length compute even beside long
documents) and builds ``input_ids`` + ``attention_mask``.

Tokenisation happens once per (tokenizer, maximum length, texts): results are kept in memory for the
process and on disk (``$TRANSFERKIT_CACHE/tokens``, default ``~/.cache/transferkit/tokens``) as
safetensors files named by a hash of the three, so several arms, seeds and runs over the same data
tokenise it once. Nothing is read back but tensors.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transferkit.data.base import TensorDataset
from transferkit.data.text import TextDataset
from transferkit.errors import DataError

logger = logging.getLogger(__name__)

PAD = -1
"""The padding value of token-id tensors (never a token id); the model's adapter masks it."""

_MEMORY: OrderedDict[str, torch.Tensor] = OrderedDict()
_MEMORY_ITEMS = 32


@dataclass
class TokenDataset(TensorDataset):
    """A :class:`TextDataset` tokenised for one tokenizer: ``x`` is int64 ids ``(N, L)`` padded with
    :data:`PAD`.

    Attributes:
        texts: The dataset the ids were made from (re-tokenised for a model with another tokenizer).
        tokenizer_key: Fingerprint of the tokenizer that made ``x`` (:func:`tokenizer_key`).
        max_length: The truncation length used.
    """

    texts: TextDataset | None = None
    tokenizer_key: str = ""
    max_length: int = 0

    def __post_init__(self) -> None:
        if self.x.dtype != torch.long:
            raise DataError(f"token dataset {self.name!r} needs int64 token ids, got {self.x.dtype}")
        x = self.x
        super().__post_init__()  # checks labels and classes; it would make x float
        self.x = x

    def subset(self, indices: Sequence[int] | torch.Tensor, name: str | None = None) -> TokenDataset:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        texts = None if self.texts is None else self.texts.subset(idx, name)
        x = self.x[idx]
        width = max(1, int((x != PAD).sum(1).max())) if len(idx) else 1
        return TokenDataset(x[:, :width], self.y[idx], list(self.classes), name or self.name, texts,
                            self.tokenizer_key, self.max_length)

    def lengths(self) -> torch.Tensor:
        """Tokens per text ``(N,)`` (special tokens included)."""
        return (self.x != PAD).sum(1)


def cache_root() -> Path:
    """``$TRANSFERKIT_CACHE`` or ``~/.cache/transferkit``: where computed values are kept across runs."""
    env = os.environ.get("TRANSFERKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transferkit"


def tokenizer_key(tokenizer: Any) -> str:
    """A fingerprint of what ``tokenizer`` does to a text: its class and its full serialised form
    (a fast tokenizer's JSON: vocabulary, normaliser, pre-tokeniser, special tokens), else its
    vocabulary and special tokens. Computed once per tokenizer object."""
    cached = getattr(tokenizer, "_transferkit_key", None)
    if cached:
        return cached
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        vocab = tokenizer.get_vocab()
        h.update("\n".join(f"{k}\t{v}" for k, v in sorted(vocab.items(), key=lambda kv: kv[1])).encode())
    h.update(repr(sorted((getattr(tokenizer, "special_tokens_map", None) or {}).items())).encode())
    key = h.hexdigest()[:24]
    try:
        tokenizer._transferkit_key = key
    except AttributeError:  # a tokenizer refusing attributes: recompute next time
        pass
    return key


def _texts_key(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:24]


def _encode(texts: Sequence[str], tokenizer: Any, max_length: int) -> torch.Tensor:
    enc = tokenizer(list(texts), truncation=True, max_length=int(max_length), padding=False,
                    return_attention_mask=False, return_token_type_ids=False)
    rows = [torch.as_tensor(ids, dtype=torch.long) for ids in enc["input_ids"]]
    fill = getattr(tokenizer, "unk_token_id", None)
    fill = 0 if fill is None else int(fill)
    rows = [r if len(r) else torch.tensor([fill]) for r in rows]  # a text with no token: one unknown
    if not rows:
        return torch.empty(0, 1, dtype=torch.long)
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=PAD)


def _load_cached(path: Path) -> torch.Tensor | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        ids = load_file(str(path))["ids"]
    except (OSError, KeyError, SafetensorError) as exc:
        logger.info("ignoring the unreadable token cache %s (%s)", path, exc)
        return None
    return ids if ids.dtype == torch.long and ids.ndim == 2 else None


def _store(path: Path, ids: torch.Tensor) -> None:
    from safetensors.torch import save

    from transferkit.io.files import atomic_write_bytes

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save({"ids": ids.contiguous()}))
    except OSError as exc:  # a read-only home: the in-memory copy still serves this process
        logger.info("could not keep the token cache at %s (%s)", path, exc)


def tokenize(data: TextDataset, tokenizer: Any, max_length: int, *, cache: bool = True) -> TokenDataset:
    """``data`` as token ids for ``tokenizer``, truncated to ``max_length`` tokens.

    Args:
        data: The texts and labels.
        tokenizer: A Hugging Face tokenizer (called on a list of strings, returning ``input_ids``).
        max_length: Longest kept sequence, special tokens included.
        cache: Keep / reuse the ids in memory and under :func:`cache_root` ``/tokens``.

    Returns:
        A :class:`TokenDataset` (ids padded with :data:`PAD` to the longest text).
    """
    if not isinstance(data, TextDataset):
        raise DataError(f"tokenize takes a TextDataset, got {type(data).__name__}")
    key_tok = tokenizer_key(tokenizer)
    key = f"{key_tok}-{int(max_length)}-{_texts_key(data.texts)}"
    ids = _MEMORY.get(key) if cache else None
    path = cache_root() / "tokens" / f"{key}.safetensors"
    if ids is None and cache and path.is_file():
        ids = _load_cached(path)
        if ids is not None and ids.shape[0] != len(data):
            ids = None
    if ids is None:
        ids = _encode(data.texts, tokenizer, max_length)
        logger.info("tokenised %d texts of %s (longest %d tokens)", len(data), data.name, ids.shape[1])
        if cache:
            _store(path, ids)
    if cache:
        _MEMORY[key] = ids
        _MEMORY.move_to_end(key)
        while len(_MEMORY) > _MEMORY_ITEMS:
            _MEMORY.popitem(last=False)
    return TokenDataset(ids, data.y, list(data.classes), data.name, data, key_tok, int(max_length))


def is_text_model(model: Any) -> bool:
    """Whether ``model`` takes token ids (it carries a tokenizer)."""
    return getattr(model, "tokenizer", None) is not None


def model_inputs(data: Any, model: Any) -> Any:
    """``data`` in the form ``model`` takes: a :class:`TextDataset` (or ids made by another
    tokenizer) tokenised with the model's tokenizer and length; anything else unchanged.

    Raises:
        DataError: text data for a model without a tokenizer (an image or vector model).
    """
    from transferkit.data.tasks import TaskSet

    if isinstance(data, TaskSet):  # several tasks: each task's data as the model takes it
        return data.map(lambda d: model_inputs(d, model))
    if not isinstance(data, (TextDataset, TokenDataset)):
        return data
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        arch = getattr(getattr(model, "info", None), "arch", type(model).__name__)
        raise DataError(
            f"{getattr(data, 'name', '') or 'the data'} holds text but model {arch!r} takes no text; "
            "use a text model: minilm, hf:<encoder id or folder>, or text_transformer"
        )
    max_length = int(model.info.input_size[0])
    if isinstance(data, TokenDataset):
        if data.tokenizer_key == tokenizer_key(tok) and data.max_length == max_length:
            return data
        if data.texts is None:
            raise DataError(
                f"{data.name or 'the data'} holds token ids of another tokenizer and not its texts; "
                "pass the TextDataset so it is tokenised for this model"
            )
        data = data.texts
    return tokenize(data, tok, max_length)


__all__ = ["PAD", "TokenDataset", "cache_root", "is_text_model", "model_inputs", "tokenize",
           "tokenizer_key"]
