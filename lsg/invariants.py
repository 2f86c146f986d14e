"""Checks that a converted model still computes what the original did (design §6, invariants I3 and I3').

I3: at T <= 2*bs, with the global keys hidden and `pool_with_global=False`, the LSG model's real-token
outputs equal the original model's. Hiding the global keys needs an attention variant of its own,
`tokens_only_attention`, registered as "lsg_tokens_only" by `lsg.variants`.
Only the short rule is covered: beyond 2*bs the LSG layout differs from dense attention by design.

I3' does not hold exactly (every token also attends to the globals, and the first token's output is
global 0's when `pool_with_global`), so `embedding_cosines` measures how close the two stay.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from lsg.attention import attend
from lsg.layout import uses_short_rule
from lsg.settings import LSGSettings

TOKENS_ONLY = "lsg_tokens_only"


def tokens_only_attention(
    query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
    scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0, causal: bool = False,
) -> Tensor:
    """Dense attention from every query (globals included) to the valid REAL token keys only (causal: the tokens
    up to the query; a global query of a causal model then sees no key).

    Same signature and shapes as `lsg.attention.AttentionVariant`. Key grid for G=1, T=3, last token
    padding (rows: queries g, t0, t1, t2; columns: keys g, t0, t1, t2)::

        0 1 1 0
        0 1 1 0
        0 1 1 0
        0 1 1 0

    A batch row without any valid token has no visible key and gives NaN.

    Raises:
        ValueError: T > 2*block_size, where LSG is not dense attention and no such equivalence exists.
    """
    G, bs = settings.num_global_tokens, settings.block_size
    T = key.shape[2] - G
    if not uses_short_rule(T, settings):
        raise ValueError(
            f"{TOKENS_ONLY} covers only the short rule T <= 2*block_size = {2 * bs}, got T={T}; "
            "use shorter inputs or convert with a larger block_size"
        )
    visible = F.pad(token_valid.bool(), (G, 0), value=False)[:, None, None]  # (B, 1, 1, G+T)
    if causal:
        visible = visible & torch.ones(G + T, G + T, dtype=torch.bool, device=key.device).tril()
    return attend(query, key, value, visible, scaling, dropout if training else 0.0)


@contextmanager
def global_keys_hidden(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """Run `model` with the "lsg_tokens_only" variant inside the block, then restore its variant."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(TOKENS_ONLY)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Sentence-transformers mean pooling: hidden (B, T, d), attention_mask (B, T) -> (B, d)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


@torch.no_grad()
def tokens_only_max_diff(original: PreTrainedModel, converted: PreTrainedModel, batch: Mapping[str, Tensor]) -> float:
    """I3: max |original - converted| over the real tokens of `batch`, global keys hidden.

    `converted` must come from `original` with `pool_with_global=False`, and the inputs must have
    T <= 2*block_size tokens.
    """
    if converted.config.pool_with_global:
        raise ValueError("convert with pool_with_global=False: otherwise the first token's output is global 0's")
    expected = original(**batch).last_hidden_state
    with global_keys_hidden(converted):
        actual = converted(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    return (expected - actual).abs()[real].max().item()


@torch.no_grad()
def embedding_cosines(original: PreTrainedModel, converted: PreTrainedModel, batch: Mapping[str, Tensor]) -> Tensor:
    """I3': cosine similarity (B,) between the two models' mean-pooled embeddings of each text in `batch`."""
    mask = batch["attention_mask"]
    expected = mean_pool(original(**batch).last_hidden_state, mask)
    actual = mean_pool(converted(**batch).last_hidden_state, mask)
    return F.cosine_similarity(expected, actual, dim=-1)
