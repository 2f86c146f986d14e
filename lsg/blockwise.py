"""Causal attention for decoders: dense, and LEX's blockwise causal attention (docs/lex.md).

Blockwise causal attention (Sun et al. 2023, LEX) cuts the queries into blocks of w tokens; a query of block b sees
the keys of block b - 1 and those of block b up to itself::

    query n sees key m  <=>  m <= n  and  m // w >= n // w - 1

so a query sees between w and 2w keys and no query-key distance reaches 2w. With w = L/2 for a model trained at
length L, attention at any length stays within the distances seen in training, and at T <= L it is exactly
ordinary causal attention (every earlier key is in the same or the previous block). It is LSG's causal local window
(block j sees blocks j-1 and j) without global or sparse keys.

Both functions have the `lsg.attention.AttentionVariant` signature; `lsg.variants` registers them as
"lsg_causal_dense" and "lsg_blockwise_causal" (w = `settings.block_size`). Like the Table-1 attentions
(`lsg.baselines`), they take no global tokens: leading rows beyond `token_valid` count as real tokens. They are
causal only: `causal=False` raises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lsg.layout import local_windows
from lsg.settings import LSGSettings


def blockwise_visible(query: Tensor | int, key: Tensor | int, block: int) -> Tensor | bool:
    """Mask predicate of blockwise causal attention: query token `query` sees key token `key` (ints or tensors)."""
    return (key <= query) & (key // block >= query // block - 1)


def _check_causal(name: str, causal: bool) -> None:
    if not causal:
        raise ValueError(f"{name} is causal attention for decoders; it was called with causal=False")


def _row_validity(token_valid: Tensor, rows: int) -> Tensor:
    """(B, rows) validity: leading rows beyond `token_valid` (B, T) count as real tokens."""
    return F.pad(token_valid.bool(), (rows - token_valid.shape[1], 0), value=True)


def _attend(query: Tensor, key: Tensor, value: Tensor, visible: Tensor, scaling: float, dropout: float) -> Tensor:
    # A query whose keys are all padding (a padded query at the start of a row) sees every key of its window:
    # its output is discarded, where an empty softmax row would be NaN.
    visible = visible | ~visible.any(-1, keepdim=True)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=visible, dropout_p=dropout, scale=scaling)


def causal_dense_attention(
    query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
    scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0, causal: bool = True,
) -> Tensor:
    """Ordinary causal attention: query n sees the valid keys m <= n. Shapes as `AttentionVariant`."""
    _check_causal("lsg_causal_dense", causal)
    rows = key.shape[-2]
    visible = torch.ones(rows, rows, dtype=torch.bool, device=key.device).tril()
    visible = visible & _row_validity(token_valid, rows)[:, None, None, :]
    return _attend(query, key, value, visible, scaling, dropout if training else 0.0)


def blockwise_causal_attention(
    query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
    scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0, causal: bool = True,
) -> Tensor:
    """Blockwise causal attention with w = `settings.block_size` (`blockwise_visible`). Shapes as
    `AttentionVariant`; time and memory linear in the length: each block of w queries attends to 2w keys."""
    _check_causal("lsg_blockwise_causal", causal)
    B, H, rows, D = query.shape
    w = settings.block_size
    blocks = -(-rows // w)
    padded = blocks * w
    valid = F.pad(_row_validity(token_valid, rows), (0, padded - rows), value=False)
    query, key, value = (F.pad(x, (0, 0, 0, padded - rows)) for x in (query, key, value))
    # local_windows gives blocks b-1, b, b+1 of every block b (3w keys); keep b-1 and b.
    keys, values = (local_windows(x, w)[:, :, :, : 2 * w] for x in (key, value))  # (B, H, N, 2w, D)
    key_valid = local_windows(valid[:, None], w, fill=False)[:, :, :, : 2 * w]  # (B, 1, N, 2w)
    offsets = torch.arange(w, device=key.device)
    pattern = torch.cat([torch.ones(w, w, dtype=torch.bool, device=key.device),
                           offsets[None, :] <= offsets[:, None]], dim=1)  # (w queries, 2w keys): previous, own
    visible = (key_valid[:, :, :, None, :] & pattern).expand(B, H, blocks, w, 2 * w)
    # SDPA's fused kernels take 4-D inputs: fold (H, N) into one batch dimension.
    out = _attend(query.reshape(B, H * blocks, w, D), keys.reshape(B, H * blocks, 2 * w, D),
                  values.reshape(B, H * blocks, 2 * w, values.shape[-1]), visible.reshape(B, H * blocks, w, 2 * w),
                  scaling, dropout if training else 0.0)
    return out.reshape(B, H, padded, -1)[:, :, :rows]
