"""The LSG attention kernel (design §3.1-3.3) as pure tensor functions.

One layer, T real tokens after G global tokens (q, k, v: (B, H, G+T, D)). Which keys a query sees (short rule,
padding to block multiples, local and sparse windows) is `lsg.layout`'s rule; here the queries of token block j
take their K keys in this order::

    [ G globals | sbs sparse left | sbs sparse right | blocks j-1, j, j+1 (3*bs) ]

where out-of-range keys are zeros marked invalid. Causal attention (design §3.7) keeps these slots and marks
invalid what lies in the future: the right sparse window, block j+1, and within block j the keys after the
query (`lsg.layout.causal_local_rows`); global queries then see only the global keys.

Every query row always sees the G >= 1 global keys, which are never masked, so no softmax row is
empty: fully padded queries give finite outputs in every dtype. Masks are booleans end to end.

`lsg_layer` does what every kernel shares (short rule, padding, `KeyLayout`, from which a kernel builds its
`BlockKeys`); the kernels differ only in how they attend: `gathered_attention` here (the plain kernel of
"lsg_blocked", the tested baseline), `lsg.fast` and `lsg.flex`. This module knows nothing of names:
`lsg.variants` registers the variants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from lsg.layout import (
    causal_local_rows,
    local_width,
    local_windows,
    padded_length,
    short_rule_visibility,
    sparse_margin,
    sparse_window_index,
    sparse_windows,
    uses_short_rule,
)
from lsg.selectors import SelectorInputs, SparseTokens, select_sparse_tokens
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
        causal: decoder attention, no query sees a later token (design §3.7).

    Returns:
        (B, H, G+T, D) attention output.
    """

    def __call__(
        self, query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
        scaling: float, dropout: float, training: bool, layer_index: int, causal: bool = False,
    ) -> Tensor: ...


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


def _pad_length(x: Tensor, target: int, dim: int, value: float | bool = 0) -> Tensor:
    missing = target - x.shape[dim]
    if missing == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, missing]
    return F.pad(x, pad, value=value)


@dataclass
class BlockKeys:
    """The keys of every query, kept as their sources instead of one gathered tensor.

    A kernel takes the keys of a range of token blocks only when it needs them: `gather` copies all K of them
    into one (B, H, n, K, D) tensor (the plain kernel, for all blocks at once); `remote` and `local` give the
    globals and sparse windows (copied) and the local windows (strided views) separately (`lsg.fast`). So the
    full gathered tensor (~5x the size of K at the defaults, design §4) need not exist, and the keys and values
    are not copied up front.

    Attributes:
        key, value: (B, H, G+T', D), the G globals first (T' a multiple of bs).
        sparse_key, sparse_value: (B, H, S + 2*margin, D) sparse tokens from the selector padded by
            margin = `lsg.layout.sparse_margin` zeros on both sides (indexed by `sparse_window_index`), or None
            without sparse.
        visible: (B, 1|H, N, K) bool, which of the K keys of token block j its queries may see.
        all_valid: (B, G+T') bool, the keys global queries may see (globals and valid tokens; causal: the
            globals only).
        sparse_valid: (B, 1|H, S) validity of the sparse tokens, or None; with `all_valid`, what kernels
            that apply the layout themselves need (`lsg.flex`).
        sparse_index: (B, H, S) the token (0 = the first after the globals) each sparse token is, when the
            selector picks tokens (`SparseTokens.index`); None otherwise.
        local_rows: causal attention only, (bs, 3*bs) bool: which local slots each query row of a block may see
            (`lsg.layout.causal_local_rows`), on top of `visible`; None when bidirectional.
    """

    key: Tensor
    value: Tensor
    sparse_key: Tensor | None
    sparse_value: Tensor | None
    visible: Tensor
    all_valid: Tensor
    settings: LSGSettings
    sparse_valid: Tensor | None = None
    sparse_index: Tensor | None = None
    local_rows: Tensor | None = None

    @property
    def causal(self) -> bool:
        return self.local_rows is not None

    def row_visible(self, visible: Tensor, local: bool) -> Tensor:
        """`visible` (..., K') of some blocks' remote or local keys, with a query-row dimension: (..., 1|bs, K')."""
        visible = visible.unsqueeze(-2)
        return visible & self.local_rows if local and self.local_rows is not None else visible

    @property
    def blocks(self) -> int:
        return self.visible.shape[2]

    def token_blocks(self, x: Tensor) -> Tensor:
        """(B, H, G+T', ...) -> view of the tokens as (B, H, N, bs, ...)."""
        return x[:, :, self.settings.num_global_tokens :].unflatten(2, (self.blocks, self.settings.block_size))

    @property
    def remote_width(self) -> int:
        """How many of a block's K keys lie outside its local window: the G globals and the 2*sbs sparse keys."""
        return self.visible.shape[-1] - local_width(self.settings.block_size)

    def gather(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Keys and values of token blocks [start, stop), each (B, H, n, K, D) in layout order, one copy each."""
        keys, values = self._remote_parts(start, stop)
        local_keys, local_values = self.local(start, stop)
        return torch.cat([*keys, local_keys], dim=3), torch.cat([*values, local_values], dim=3)

    def remote(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """The first `remote_width` keys and values of blocks [start, stop), (B, H, n, G+2sbs, D): copied with
        sparse keys, an expanded view of the globals without."""
        keys, values = self._remote_parts(start, stop)
        if len(keys) == 1:
            return keys[0], values[0]
        return torch.cat(keys, dim=3), torch.cat(values, dim=3)

    def local(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """The local-window keys and values of blocks [start, stop), (B, H, n, 3bs, D) strided views (only chunks
        touching either end of the sequence get a small zero-padded copy)."""
        G, bs = self.settings.num_global_tokens, self.settings.block_size
        return tuple(local_windows(x[:, :, G:], bs, start, stop) for x in (self.key, self.value))

    def _remote_parts(self, start: int, stop: int) -> tuple[list[Tensor], list[Tensor]]:
        G = self.settings.num_global_tokens
        B, H, _, D = self.key.shape
        n = stop - start
        keys = [self.key[:, :, None, :G].expand(B, H, n, G, D)]
        values = [self.value[:, :, None, :G].expand(B, H, n, G, D)]
        if self.sparse_key is not None:
            keys += self._sparse_windows(self.sparse_key, start, stop)
            values += self._sparse_windows(self.sparse_value, start, stop)
        return keys, values

    def _sparse_windows(self, x: Tensor, start: int, stop: int) -> list[Tensor]:
        """Left and right sparse windows of blocks [start, stop) as strided views (B, H, n, sbs, D) of S padded
        by `sparse_margin`: consecutive blocks' windows start r entries apart."""
        r, margin = self.settings.sparse_per_block, sparse_margin(self.settings)
        windows = zip(sparse_windows(start, self.settings), sparse_windows(stop - 1, self.settings), strict=True)
        return [x[:, :, first_low + margin : last_high + margin].unfold(2, self.settings.sparse_block_size, r)
                .movedim(-1, 3) for (first_low, _), (_, last_high) in windows]


def build_block_keys(
    key: Tensor, value: Tensor, valid: Tensor, sparse: SparseTokens | None, settings: LSGSettings,
    causal: bool = False,
) -> BlockKeys:
    """Key sources and visibility of all queries. key/value (B, H, G+T', D), valid (B, T') token validity."""
    G, bs = settings.num_global_tokens, settings.block_size
    B, _, total, _ = key.shape
    N = (total - G) // bs
    visible = [valid.new_ones(B, 1, N, G)]
    margin = sparse_margin(settings) if sparse is not None else 0
    if sparse is not None:
        index = sparse_window_index(N, settings, key.device)  # (N, 2*sbs) into S padded by margin
        sparse_visible = F.pad(sparse.valid, (margin, margin), value=False)[:, :, index]  # (B, 1|H, N, 2sbs)
        if causal:  # the right window summarises later blocks
            sparse_visible = sparse_visible.clone()
            sparse_visible[..., settings.sparse_block_size :] = False
        visible.append(sparse_visible)
    visible.append(local_windows(valid[:, None], bs, fill=False))  # (B, 1, N, 3bs)
    heads_in_mask = max(m.shape[1] for m in visible)
    return BlockKeys(
        key=key,
        value=value,
        sparse_key=None if sparse is None else F.pad(sparse.keys, (0, 0, margin, margin)),
        sparse_value=None if sparse is None else F.pad(sparse.values, (0, 0, margin, margin)),
        visible=torch.cat([m.expand(B, heads_in_mask, N, m.shape[-1]) for m in visible], dim=3),
        all_valid=torch.cat([valid.new_ones(B, G), torch.zeros_like(valid) if causal else valid], dim=1),
        settings=settings,
        sparse_valid=None if sparse is None else sparse.valid,
        sparse_index=None if sparse is None else sparse.index,
        local_rows=causal_local_rows(bs, key.device) if causal else None,
    )


@dataclass(frozen=True)
class KeyLayout:
    """What a kernel needs, besides the padded query/key/value, to build the keys of every query.

    Kernels call `block_keys` themselves (rather than receiving `BlockKeys`) so that one which recomputes
    instead of keeping its inputs (`lsg.fast`) can run the sparse selection again in its backward pass.

    Attributes:
        valid: (B, T') validity of the token keys (padding and `mask_first_token` applied).
        settings, scaling, layer_index, training, causal: as `AttentionVariant`; the selectors read them.
    """

    valid: Tensor
    settings: LSGSettings
    scaling: float
    layer_index: int
    training: bool
    causal: bool = False

    def sparse_tokens(self, query: Tensor, key: Tensor, value: Tensor) -> SparseTokens | None:
        """The selector's sparse tokens of the padded (B, H, G+T', D) inputs, or None without sparse keys."""
        if not self.settings.sparse_enabled:
            return None
        G = self.settings.num_global_tokens
        # bos_pooling's pooling query: the first token's query, or under causal attention its key, which a KV
        # cache keeps (the first token is in every query's past either way).
        first = (key if self.causal else query)[:, :, G]
        return select_sparse_tokens(SelectorInputs(
            key[:, :, G:], value[:, :, G:], self.valid, first, self.scaling, self.settings,
            self.layer_index, self.training,
        ))

    def block_keys(self, query: Tensor, key: Tensor, value: Tensor) -> BlockKeys:
        """`BlockKeys` of the padded (B, H, G+T', D) inputs: runs the sparse selection."""
        return build_block_keys(key, value, self.valid, self.sparse_tokens(query, key, value), self.settings,
                                self.causal)


# A block kernel computes the outputs of all queries (B, H, G+T', D) from the padded query, key and value, their
# `KeyLayout` (which also holds the scaling) and the dropout (already 0.0 outside training).
BlockKernel = Callable[[Tensor, Tensor, Tensor, KeyLayout, float], Tensor]


def lsg_layer(
    query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
    scaling: float, dropout: float, training: bool, layer_index: int, kernel: BlockKernel, causal: bool = False,
) -> Tensor:
    """The part of LSG attention every kernel shares: short rule, padding, the `KeyLayout`.

    Sequences longer than 2*bs go to `kernel(query, key, value, layout, dropout)`, padded to (B, H, G+T', D);
    the kernel runs the sparse selection through `layout`. Shapes otherwise as `AttentionVariant`.
    """
    B, H, total, D = query.shape
    G = settings.num_global_tokens
    T = total - G
    dropout = dropout if training else 0.0
    valid = key_validity(token_valid, settings)
    if uses_short_rule(T, settings):
        return dense_layer(query, key, value, valid, G, scaling=scaling, dropout=dropout, causal=causal)

    padded = padded_length(T, settings)
    query, key, value = (_pad_length(x, G + padded, dim=2) for x in (query, key, value))
    valid = _pad_length(valid, padded, dim=1, value=False)
    layout = KeyLayout(valid, settings, scaling, layer_index, training, causal)
    return kernel(query, key, value, layout, dropout)[:, :, : G + T]


def dense_layer(query: Tensor, key: Tensor, value: Tensor, valid: Tensor, globals_: int, *, scaling: float,
                dropout: float, causal: bool = False) -> Tensor:
    """The short rule (design §3.1): every query over all G+T keys with the token validity `valid` (B, T);
    causal: the globals see the globals, a token the globals and the tokens up to itself. Also what a "full"
    layer of a MASFormer plan runs at any length (`lsg.plans`)."""
    B = query.shape[0]
    visible = torch.cat([valid.new_ones(B, globals_), valid], dim=1)[:, None, None]  # (B, 1, 1, G+T)
    rule = short_rule_visibility(valid.shape[1], globals_, causal, query.device)
    return attend(query, key, value, visible if rule is None else visible & rule, scaling, dropout)


def gathered_attention(query: Tensor, key: Tensor, value: Tensor, layout: KeyLayout, dropout: float) -> Tensor:
    """Plain kernel: SDPA for the global queries, then every block's K keys gathered at once and one masked
    SDPA call for the token queries. query/key/value (B, H, G+T', D) -> (B, H, G+T', D)."""
    keys = layout.block_keys(query, key, value)
    B, H, total, D = query.shape
    G, bs, N, scaling = layout.settings.num_global_tokens, layout.settings.block_size, keys.blocks, layout.scaling
    out_global = attend(query[:, :, :G], key, value, keys.all_valid[:, None, None], scaling, dropout)
    key, value = keys.gather(0, N)  # (B, H, N, K, D)
    K, width = key.shape[3], keys.remote_width
    visible = torch.cat([keys.row_visible(keys.visible[..., :width], local=False).expand(B, -1, N, bs, width),
                         keys.row_visible(keys.visible[..., width:], local=True).expand(B, -1, N, bs, K - width)],
                        dim=-1) if keys.causal else keys.visible.unsqueeze(-2)  # (B, 1|H, N, 1|bs, K)
    rows = visible.shape[-2]
    # SDPA's fused CPU/GPU kernels take 4-D inputs: fold (H, N) into one batch dimension.
    out_tokens = attend(
        query[:, :, G:].reshape(B, H * N, bs, D),
        key.reshape(B, H * N, K, D),
        value.reshape(B, H * N, K, D),
        visible.expand(B, H, N, rows, K).reshape(B, H * N, rows, K),
        scaling,
        dropout,
    ).view(B, H, N * bs, D)
    return torch.cat([out_global, out_tokens], dim=2)


def block_variant(kernel: BlockKernel, name: str, doc: str) -> AttentionVariant:
    """An `AttentionVariant` running `kernel` inside `lsg_layer` (short rule, padding, selectors)."""

    def variant(
        query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
        scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0, causal: bool = False,
    ) -> Tensor:
        return lsg_layer(query, key, value, token_valid, settings, scaling=scaling, dropout=dropout,
                         training=training, layer_index=layer_index, kernel=kernel, causal=causal)

    variant.__name__ = variant.__qualname__ = name
    variant.__doc__ = doc + " Shapes as `AttentionVariant`."
    return variant


lsg_blocked_attention = block_variant(
    gathered_attention, "lsg_blocked_attention",
    "The plain blocked kernel (design §3.2 pseudocode), kept as the tested baseline: its gathered keys and values, "
    "(B, H, N, K, D) each, stay alive for the backward pass.",
)
