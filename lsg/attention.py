"""The LSG attention kernel (spec §3.1-3.3) as pure tensor functions, plus the registry of variants.

Layout for one layer, T real tokens after G global tokens (q, k, v: (B, H, G+T, D)):

* T <= 2*bs: every query (globals included) attends densely to all G+T keys (short rule, invariant I1).
* otherwise the tokens are padded to T' = ceil(T/bs)*bs, global queries attend to all G+T' keys, and
  the queries of token block j (N = T'/bs blocks) attend to, in this order::

      [ G globals | sbs sparse left | sbs sparse right | blocks j-1, j, j+1 (3*bs) ]

  where "sparse" are the entries S[(j-1)r - sbs, (j-1)r) and S[(j+2)r, (j+2)r + sbs) of the sequence
  S built by a selector (r = bs/f per block). Out-of-range keys are zeros marked invalid.

Every query row always sees the G >= 1 global keys, which are never masked, so no softmax row is
empty: fully padded queries give finite outputs in every dtype. Masks are booleans end to end.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from lsg.registry import Registry
from lsg.selectors import SelectorInputs, select_sparse_tokens
from lsg.settings import LSGSettings


class AttentionVariant(Protocol):
    """Signature every registered attention variant implements.

    Args:
        query, key, value: (B, H, G+T, D), the G global tokens first.
        token_valid: (B, T) bool, True for real (non-padding) tokens.
        settings: LSG parameters of the model.
        scaling: score multiplier (1/sqrt(D) for BERT-style models).
        dropout: attention-probability dropout, applied only when `training`.
        training: whether the module is in training mode.
        layer_index: index of the layer (seeds the LSH projections).

    Returns:
        (B, H, G+T, D) attention output.
    """

    def __call__(
        self, query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
        scaling: float, dropout: float, training: bool, layer_index: int,
    ) -> Tensor: ...


ATTENTION_VARIANTS: Registry[AttentionVariant] = Registry("attention variant")


def attend(query: Tensor, key: Tensor, value: Tensor, visible: Tensor, scaling: float, dropout: float) -> Tensor:
    """Masked softmax attention. query (..., Lq, D), key/value (..., Lk, D), visible bool broadcastable
    to (..., Lq, Lk). Every row must see at least one key (the LSG layout guarantees it)."""
    return F.scaled_dot_product_attention(query, key, value, attn_mask=visible, dropout_p=dropout, scale=scaling)


def key_validity(token_valid: Tensor, settings: LSGSettings) -> Tensor:
    """(B, T) validity of the token keys; `mask_first_token` hides token 0 as a key (on a copy, D11)."""
    if settings.mask_first_token:
        token_valid = token_valid.clone()
        token_valid[:, 0] = False
    return token_valid


def padded_length(length: int, settings: LSGSettings) -> int:
    """T' for T real tokens: unchanged under the short rule, else the next block multiple (spec §3.1).

    Raises ValueError when padding is needed but `adaptive=False` (spec D15).
    """
    bs = settings.block_size
    if length <= 2 * bs or length % bs == 0:
        return length
    if not settings.adaptive:
        raise ValueError(
            f"sequence length {length} is not a multiple of block_size={bs} and adaptive=False; "
            f"pad inputs to a multiple of {bs} or set adaptive=True"
        )
    return -(-length // bs) * bs


def _pad_length(x: Tensor, target: int, dim: int, value: float | bool = 0) -> Tensor:
    missing = target - x.shape[dim]
    if missing == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, missing]
    return F.pad(x, pad, value=value)


def local_windows(x: Tensor, block_size: int, fill: float | bool = 0) -> Tensor:
    """Blocks j-1, j, j+1 of every block j along dim 2: (B, H, T', ...) -> (B, H, N, 3*bs, ...)."""
    pad = [0, 0] * (x.dim() - 3) + [block_size, block_size]
    windows = F.pad(x, pad, value=fill).unfold(2, 3 * block_size, block_size)  # (B, H, N, ..., 3bs)
    return windows.movedim(-1, 3)


def sparse_window_index(blocks: int, settings: LSGSettings, device: torch.device) -> Tensor:
    """Indices into S padded by sbs + r on both sides: the sparse keys of every block, (N, 2*sbs).

    Left window S[(j-1)r - sbs, (j-1)r), right window S[(j+2)r, (j+2)r + sbs), valid for every r >= 1
    (the reference crashes for odd r and shifts the right window for r == 1, D3).
    """
    r, sbs = settings.sparse_per_block, settings.sparse_block_size
    j = torch.arange(blocks, device=device)[:, None] * r
    i = torch.arange(sbs, device=device)[None]
    offset = sbs + r
    return torch.cat([j - r - sbs + i, j + 2 * r + i], dim=1) + offset


@ATTENTION_VARIANTS.register("lsg")
def lsg_attention(
    query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
    scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0,
) -> Tensor:
    """LSG attention for one layer; see the module docstring for the layout. Shapes as `AttentionVariant`."""
    B, H, total, D = query.shape
    G, bs = settings.num_global_tokens, settings.block_size
    T = total - G
    dropout = dropout if training else 0.0
    valid = key_validity(token_valid, settings)
    global_valid = valid.new_ones(B, G)
    if 2 * bs >= T:
        visible = torch.cat([global_valid, valid], dim=1)[:, None, None]  # (B, 1, 1, G+T)
        return attend(query, key, value, visible, scaling, dropout)

    padded = padded_length(T, settings)
    query, key, value = (_pad_length(x, G + padded, dim=2) for x in (query, key, value))
    valid = _pad_length(valid, padded, dim=1, value=False)
    all_valid = torch.cat([global_valid, valid], dim=1)  # (B, G+T')

    out_global = attend(query[:, :, :G], key, value, all_valid[:, None, None], scaling, dropout)

    N = padded // bs
    token_keys, token_values = key[:, :, G:], value[:, :, G:]
    parts_k = [key[:, :, None, :G].expand(B, H, N, G, D)]
    parts_v = [value[:, :, None, :G].expand(B, H, N, G, D)]
    parts_m = [global_valid[:, None, None].expand(B, 1, N, G)]
    if settings.sparse_enabled:
        sparse = select_sparse_tokens(
            SelectorInputs(token_keys, token_values, valid, query[:, :, G], scaling, settings, layer_index, training)
        )
        margin = settings.sparse_block_size + settings.sparse_per_block
        index = sparse_window_index(N, settings, query.device)  # (N, 2*sbs)
        sparse_k = F.pad(sparse.keys, (0, 0, margin, margin))[:, :, index]  # (B, H, N, 2sbs, D)
        sparse_v = F.pad(sparse.values, (0, 0, margin, margin))[:, :, index]
        sparse_m = F.pad(sparse.valid, (margin, margin), value=False)[:, :, index]  # (B, 1|H, N, 2sbs)
        parts_k.append(sparse_k)
        parts_v.append(sparse_v)
        parts_m.append(sparse_m)
    parts_k.append(local_windows(token_keys, bs))
    parts_v.append(local_windows(token_values, bs))
    parts_m.append(local_windows(valid[:, None], bs, fill=False))  # (B, 1, N, 3bs)

    keys = torch.cat(parts_k, dim=3)  # (B, H, N, K, D), K = G (+ 2sbs) + 3bs
    values = torch.cat(parts_v, dim=3)
    heads_in_mask = max(m.shape[1] for m in parts_m)
    visible = torch.cat([m.expand(B, heads_in_mask, N, m.shape[-1]) for m in parts_m], dim=3)
    K = keys.shape[3]
    # SDPA's fused CPU/GPU kernels take 4-D inputs: fold (H, N) into one batch dimension.
    out_tokens = attend(
        query[:, :, G:].reshape(B, H * N, bs, D),
        keys.reshape(B, H * N, K, D),
        values.reshape(B, H * N, K, D),
        visible.expand(B, H, N, K).reshape(B, H * N, 1, K),
        scaling,
        dropout,
    ).view(B, H, padded, D)
    return torch.cat([out_global, out_tokens[:, :, :T]], dim=2)
