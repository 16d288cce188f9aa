"""Token embeddings across tokenizers: rows moved by token string.

Two text models with different vocabularies (BERT's uncased WordPiece and a model of its own, a
tokenizer trained on another corpus) number their tokens differently: row ``i`` of one input-embedding
matrix is not token ``i`` of the other, so copying by position (or slicing to the smaller vocabulary)
would give every token another token's vector. :func:`token_row_map` pairs the rows by the token's
string instead; :func:`transfer_parameters <transferkit.transfer.transfer_parameters>` copies those rows
and reports how many of the target's tokens found theirs (the others keep their new values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class VocabularyMap:
    """Which input-embedding rows of the source go to which rows of the target.

    Attributes:
        source_name: State-dict name of the source's input-embedding weight.
        target_name: State-dict name of the target's.
        source_rows: Source row of each shared token ``(K,)``.
        target_rows: Target row of each shared token ``(K,)``.
        target_tokens: Tokens in the target's vocabulary (rows that have a token).
    """

    source_name: str
    target_name: str
    source_rows: torch.Tensor
    target_rows: torch.Tensor
    target_tokens: int

    @property
    def shared(self) -> int:
        return int(self.target_rows.numel())

    def reason(self) -> str:
        missing = self.target_tokens - self.shared
        return (f"{self.shared:,} of the target's {self.target_tokens:,} token embeddings copied by token "
                f"string (the tokenizers differ); {missing:,} tokens the source's vocabulary lacks keep new "
                "values")


def _embedding_name(model: nn.Module) -> tuple[str, nn.Embedding] | None:
    """The state-dict name (without ``.weight``) and module of a text model's input embeddings."""
    for module in model.modules():
        get = getattr(module, "get_input_embeddings", None)
        if callable(get) and module is not model:
            emb = get()
            if isinstance(emb, nn.Embedding):
                names = {id(m): n for n, m in model.named_modules()}
                return names[id(emb)], emb
    return None


def token_row_map(source: Any, target: nn.Module) -> VocabularyMap | None:
    """The row pairing of two text models' input embeddings when their tokenizers differ;
    ``None`` when either is not a text model (no ``tokenizer``) or they tokenise alike."""
    from transferkit.data.tokens import tokenizer_key

    s_tok, t_tok = getattr(source, "tokenizer", None), getattr(target, "tokenizer", None)
    if not isinstance(source, nn.Module) or s_tok is None or t_tok is None:
        return None
    if tokenizer_key(s_tok) == tokenizer_key(t_tok):
        return None
    found_s, found_t = _embedding_name(source), _embedding_name(target)
    if found_s is None or found_t is None:
        return None
    (s_name, s_emb), (t_name, t_emb) = found_s, found_t
    if s_emb.embedding_dim != t_emb.embedding_dim:
        return None  # another width: the structure stage decides (slice or leave new)
    s_vocab = s_tok.get_vocab()
    pairs = [(t_row, s_vocab[token]) for token, t_row in t_tok.get_vocab().items()
             if token in s_vocab and t_row < t_emb.num_embeddings and s_vocab[token] < s_emb.num_embeddings]
    pairs.sort()
    t_rows = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    s_rows = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    tokens = sum(1 for row in t_tok.get_vocab().values() if row < t_emb.num_embeddings)
    return VocabularyMap(f"{s_name}.weight", f"{t_name}.weight", s_rows, t_rows, tokens)


__all__ = ["VocabularyMap", "token_row_map"]
