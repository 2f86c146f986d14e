"""The flex_attention LSG kernel ("lsg_flex", the CUDA path of "lsg"): one fused call per layer for the tokens.

The token queries (B, H, T', D) attend to one concatenated key sequence (the G global queries, dense over
every key, take one SDPA call)

    [ tokens (T') | sparse tokens S (T'/f, produced by the selector first) | globals (G) ]

through `torch.nn.attention.flex_attention`, with LSG's layout (design §3.2) written as a `mask_mod` on
indices. The block mask is built directly from the layout at tile level (`lsg_block_mask`), so nothing of
size T x T ever exists, not even while the mask is built (`create_block_mask` would evaluate the mask_mod
on the full grid). Every tile is marked partial, so the mask_mod, which also reads the padding and the
sparse validity per batch row and head, is applied everywhere.

flex_attention has no dropout, and no backward pass on CPU (torch 2.13): "lsg" uses this kernel on CUDA
without dropout, and `lsg_fast` otherwise. The compiled forward runs on CPU too and is tested there.

Compilation is for static shapes, so every distinct padded length T' would be a new compile, and past
torch's recompile limit flex would silently run eagerly with the full T x T score matrix. Dynamic shapes are
no way out: in torch 2.13 they fail to compile or give wrong outputs for flex on CPU. So T' is padded further,
to a bucket (`flex_length`: two per octave), which is exact because trailing padding changes no valid
output; and the compiled function raises past its own limit, where this kernel falls back to `lsg_fast`
(memory-linear) with a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch._dynamo.exc import FailOnRecompileLimitHit
from torch.nn.attention.flex_attention import BlockMask, flex_attention, or_masks

from lsg.attention import KeyLayout, attend, block_variant
from lsg.fast import fast_attention
from lsg.layout import local_window, sees_local, sees_sparse, sparse_margin, sparse_windows
from lsg.settings import LSGSettings

TILE = 128  # flex_attention's default block size (query and key tiles)


# Compiled variants kept per process: buckets, plus the batch size, dtype and head count of each model in use.
FLEX_COMPILE_LIMIT = 32


@functools.cache
def compiled_flex_attention() -> Callable[..., Tensor]:
    """flex_attention compiled once per process (uncompiled it materialises the full score matrix).

    fullgraph with its own limit: past FLEX_COMPILE_LIMIT shapes it raises instead of running eagerly.
    """
    return torch.compile(flex_attention, dynamic=False, fullgraph=True, recompile_limit=FLEX_COMPILE_LIMIT,
                         isolate_recompiles=True)


def flex_length(tokens: int, block_size: int) -> int:
    """The compile bucket of a padded length: the smallest unit * m >= tokens, m in 1, 2, 3, 4, 6, 8, 12, ...

    unit = lcm(block_size, TILE), so a bucket is whole blocks and whole tiles; at most 1.5x the padded length.
    """
    unit = math.lcm(block_size, TILE)
    units = -(-tokens // unit)
    octave = 1 << max(units - 1, 0).bit_length()  # the power of two >= units
    return unit * (octave * 3 // 4 if units <= octave * 3 // 4 and octave >= 4 else octave)


def _pad_length(x: Tensor, length: int, dim: int, value: float | bool = 0) -> Tensor:
    shape = list(x.shape)
    shape[dim] = length - x.shape[dim]
    return torch.cat([x, x.new_full(shape, value)], dim=dim) if shape[dim] else x


@functools.cache
def _warn_recompile_limit() -> None:
    warnings.warn(f"lsg_flex: more than FLEX_COMPILE_LIMIT={FLEX_COMPILE_LIMIT} input shapes in this process; "
                  "the new ones run the lsg_fast kernel (exact, memory-linear, slower on GPU). Pad inputs to few "
                  "lengths (e.g. padding='max_length') to stay compiled", stacklevel=3)


def _key_ranges(settings: LSGSettings, first: Tensor, last: Tensor, tokens: int, sparse: int
                ) -> list[tuple[Tensor, Tensor]]:
    """[lo, hi) ranges of the concatenated keys seen by query rows whose blocks run from `first` to `last`,
    each clipped to its own segment (a window falling off the sequence sees nothing, not the next segment).

    The windows only move right from one block to the next, so the range of blocks first..last runs from the
    start of block `first`'s window to the end of block `last`'s."""
    G = settings.num_global_tokens
    ranges = [(local_window(first, settings.block_size)[0], local_window(last, settings.block_size)[1], 0, tokens)]
    if sparse:  # the left windows, then the right ones, in S
        for (low, _), (_, high) in zip(sparse_windows(first, settings), sparse_windows(last, settings), strict=True):
            ranges.append((low + tokens, high + tokens, tokens, tokens + sparse))
    globals_ = tokens + sparse
    ranges.append((torch.full_like(first, globals_), torch.full_like(first, globals_ + G), globals_, globals_ + G))
    return [(lo.clamp(a, b), hi.clamp(a, b)) for lo, hi, a, b in ranges]


def lsg_block_mask(settings: LSGSettings, tokens: int, sparse: int, mask_mod: Callable, device: torch.device
                   ) -> BlockMask:
    """Tile-level block mask of the layout for T' = `tokens` queries and `sparse` sparse keys.

    A (query tile, key tile) pair is kept when the key tile meets a key range of some query row of the tile.
    """
    keys = tokens + sparse + settings.num_global_tokens
    q_tiles, k_tiles = -(-tokens // TILE), -(-keys // TILE)
    rows = torch.arange(q_tiles, device=device) * TILE
    first = rows // settings.block_size
    last = (torch.clamp(rows + TILE, max=tokens) - 1) // settings.block_size
    tile_lo = torch.arange(k_tiles, device=device)[None] * TILE
    seen = torch.zeros(q_tiles, k_tiles, dtype=torch.bool, device=device)
    for lo, hi in _key_ranges(settings, first, last, tokens, sparse):
        seen |= (tile_lo < hi[:, None]) & (tile_lo + TILE > lo[:, None]) & (hi > lo)[:, None]
    counts = seen.sum(-1, dtype=torch.int32)
    order = torch.argsort((~seen).to(torch.int8), dim=-1, stable=True).to(torch.int32)  # kept tiles first
    return BlockMask.from_kv_blocks(counts[None, None], order[None, None], BLOCK_SIZE=TILE, mask_mod=mask_mod,
                                    seq_lengths=(tokens, keys))


def lsg_mask_mod(settings: LSGSettings, token_valid: Tensor, sparse_valid: Tensor | None, causal: bool = False
                 ) -> Callable:
    """The layout as a flex `mask_mod(b, h, q, kv)` over the keys [tokens | S | globals] (`lsg.layout`'s predicates
    plus validity): token_valid (B, T'), sparse_valid (B, H, S) or None. The causal form needs no block mask of
    its own: it only removes keys from the bidirectional one, whose tiles are all partial."""
    tokens = token_valid.shape[1]
    sparse = 0 if sparse_valid is None else sparse_valid.shape[2]

    def local_keys(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        token = kv.clamp(max=tokens - 1)
        return (kv < tokens) & sees_local(q, token, settings.block_size, causal) & token_valid[b, token]

    def sparse_keys(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        entry = kv - tokens
        inside = (entry >= 0) & (entry < sparse)
        return inside & sees_sparse(q, entry, settings, causal) & sparse_valid[b, h, entry.clamp(0, sparse - 1)]

    def global_keys(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (kv >= tokens + sparse) & (kv < tokens + sparse + settings.num_global_tokens)

    return or_masks(local_keys, sparse_keys, global_keys) if sparse else or_masks(local_keys, global_keys)


def flex_attention_kernel(query: Tensor, key: Tensor, value: Tensor, layout: KeyLayout, dropout: float, *,
                          compiled: bool = True) -> Tensor:
    """Kernel of "lsg_flex": query (B, H, G+T', D) -> (B, H, G+T', D); the token queries in one flex_attention
    call, the G global queries (dense over every key) in one SDPA call.

    `compiled=False` runs flex_attention eagerly (dense scores: small inputs and tests only). Compiled, the
    inputs are padded to their `flex_length` bucket and the output cut back.
    """
    if dropout:
        raise ValueError("lsg_flex has no attention dropout (flex_attention has none); use attn_implementation "
                         "'lsg' (it switches to 'lsg_fast' when dropout is active) or set the dropout to 0")
    if not compiled:
        return _flex_kernel(query, key, value, layout, flex_attention)
    G, padded = layout.settings.num_global_tokens, query.shape[2]
    target = G + flex_length(padded - G, layout.settings.block_size)
    bucketed = dataclasses.replace(layout, valid=_pad_length(layout.valid, target - G, dim=1, value=False))
    inputs = [_pad_length(x, target, dim=2) for x in (query, key, value)]
    try:
        return _flex_kernel(*inputs, bucketed, compiled_flex_attention())[:, :, :padded]
    except FailOnRecompileLimitHit:
        _warn_recompile_limit()
        return fast_attention(query, key, value, layout, dropout)


def _flex_kernel(query: Tensor, key: Tensor, value: Tensor, layout: KeyLayout, attention: Callable) -> Tensor:
    keys, settings, scaling = layout.block_keys(query, key, value), layout.settings, layout.scaling
    G, B, H = settings.num_global_tokens, query.shape[0], query.shape[1]
    tokens = query.shape[2] - G
    out_global = attend(query[:, :, :G], keys.key, keys.value, keys.all_valid[:, None, None], scaling, 0.0)
    parts_k, parts_v = [keys.key[:, :, G:]], [keys.value[:, :, G:]]
    sparse_valid = None
    if keys.sparse_key is not None:
        margin = sparse_margin(settings)  # `BlockKeys` pads S by this much
        parts_k.append(keys.sparse_key[:, :, margin:-margin])
        parts_v.append(keys.sparse_value[:, :, margin:-margin])
        sparse_valid = keys.sparse_valid.expand(B, H, -1)  # (B, H, S)
    parts_k.append(keys.key[:, :, :G])
    parts_v.append(keys.value[:, :, :G])
    mask_mod = lsg_mask_mod(settings, layout.valid, sparse_valid, layout.causal)
    sparse = 0 if sparse_valid is None else sparse_valid.shape[2]
    block_mask = lsg_block_mask(settings, tokens, sparse, mask_mod, query.device)
    out_tokens = attention(query[:, :, G:].contiguous(), torch.cat(parts_k, 2), torch.cat(parts_v, 2),
                           block_mask=block_mask, scale=scaling)
    return torch.cat([out_global, out_tokens], dim=2)


lsg_flex_attention = block_variant(
    flex_attention_kernel, "lsg_flex_attention",
    "LSG attention with compiled flex_attention (forward and backward on CUDA, forward only on CPU); raises "
    "ValueError when dropout is active.",
)
