"""Reformer-style LSH attention (Kitaev et al. 2020, §2) as the `reformer` Table-1 variant.

Per hash round: every row gets the bucket argmax([x R ; -x R]) of its query x under a random rotation R
(D x nb/2, angular LSH); rows are sorted by (bucket, position) and cut into chunks of `chunk_size`; the
queries of a chunk attend to the rows of their own chunk and of the previous one. Attention is shared-QK,
as in the paper: the key of row j is its unit-normalised query q_j / |q_j| (the pretrained key projection
is not used), and a row attends to itself only when no other key is available. With several rounds the
outputs are averaged with weights softmax_r(logsumexp of round r's scores) (eq. 4, without the
duplicate-pair correction).

Two deliberate choices, both so that padding appended to a batch leaves the real rows' outputs unchanged:
padding rows always sort after the real rows, and the first chunk has no previous chunk (no wrap-around
to the last one). That invariance needs a fixed `num_buckets`: by default the bucket count follows the
input length (Kitaev's nb = length / chunk_size), padding included.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lsg.baselines.attentions import layer_generator, padded_rows
from lsg.settings import LSGSettings
from lsg.validation import check_int


@functools.lru_cache(maxsize=128)
def _rotations(rounds: int, heads: int, dim: int, buckets: int, seed: int, layer_index: int) -> Tensor:
    return torch.randn(rounds, heads, dim, buckets // 2, generator=layer_generator(seed, layer_index),
                       dtype=torch.float64)


@dataclass(frozen=True)
class ReformerAttention:
    """Shared-QK LSH attention; see the module docstring.

    Attributes:
        chunk_size: rows per sorted chunk (Reformer's 64); a query sees at most 2 * chunk_size keys.
        num_buckets: even number of hash buckets; None = Kitaev's rule, the input length (G+T rows, padding
            included) divided by `chunk_size`, rounded up to an even number >= 2.
        num_hashes: hash rounds (transformers' Reformer default: 1).
        seed: base seed of the rotations, drawn once per layer and head.
    """

    chunk_size: int = 64
    num_buckets: int | None = None
    num_hashes: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("chunk_size", self.chunk_size, 1)
        check_int("num_hashes", self.num_hashes, 1)
        if self.num_buckets is not None:
            check_int("num_buckets", self.num_buckets, 2)
            if self.num_buckets % 2:
                raise ValueError(f"num_buckets={self.num_buckets} must be even (buckets come from [xR ; -xR])")

    def bucket_count(self, length: int) -> int:
        """Buckets used for an input of `length` rows."""
        if self.num_buckets is not None:
            return self.num_buckets
        return max(2, 2 * -(-length // (2 * self.chunk_size)))

    def rotations(self, heads: int, dim: int, length: int, layer_index: int) -> Tensor:
        """(num_hashes, heads, dim, buckets / 2) float64 random rotations of layer `layer_index`."""
        return _rotations(self.num_hashes, heads, dim, self.bucket_count(length), self.seed, layer_index)

    def __call__(
        self, query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
        scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0,
    ) -> Tensor:
        """Shapes as `AttentionVariant`; `key` is not used (shared QK)."""
        c, (B, H, L, D) = self.chunk_size, query.shape
        padded, valid = padded_rows(token_valid, L, c)
        valid, C = valid[:, None], padded // c  # (B, 1, L'), chunks
        buckets = self.bucket_count(L)
        rotation = self.rotations(H, D, L, layer_index).to(query.device, query.dtype)
        query, value = (F.pad(x, (0, 0, 0, padded - L)) for x in (query, value))
        shared_key = F.normalize(query, dim=-1)

        rotated = torch.einsum("bhld,rhdk->rbhlk", query, rotation)  # (R, B, H, L', nb/2)
        bucket = torch.cat([rotated, -rotated], dim=-1).argmax(-1).masked_fill(~valid, buckets)  # padding last
        position = torch.arange(padded, device=query.device)
        order = (bucket * padded + position).argsort(dim=-1)  # (R, B, H, L'): by bucket, then position

        def chunked(x: Tensor) -> Tensor:  # (B, H, L', ...) -> sorted, (R, B, H, C, c, ...)
            index = order.reshape(*order.shape, *([1] * (x.dim() - 3))).expand(*order.shape, *x.shape[3:])
            return x.expand(self.num_hashes, *x.shape).gather(3, index).unflatten(3, (C, c))

        def with_previous(x: Tensor, fill: float | bool) -> Tensor:  # keys of chunk j-1 then chunk j
            previous = F.pad(x, [0, 0] * (x.dim() - 4) + [1, 0], value=fill)[:, :, :, :-1]
            return torch.cat([previous, x], dim=4)

        q_sorted = chunked(query)  # (R, B, H, C, c, D)
        rows = chunked(position.expand(B, H, padded))  # (R, B, H, C, c)
        keys, values = with_previous(chunked(shared_key), 0), with_previous(chunked(value), 0)  # (..., 2c, D)
        key_rows = with_previous(rows, -1)
        key_valid = with_previous(chunked(valid.expand(B, H, padded)), False)  # (R, B, H, C, 2c)

        scores = (q_sorted @ keys.transpose(-2, -1)) * scaling  # (R, B, H, C, c, 2c)
        is_self = rows[..., :, None] == key_rows[..., None, :]
        visible = key_valid[..., None, :] & ~is_self
        visible = visible | (is_self & key_valid[..., None, :] & ~visible.any(-1, keepdim=True))  # alone: self
        visible = visible | ~visible.any(-1, keepdim=True)  # a padding row with no valid key: finite, discarded
        scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
        lse = scores.logsumexp(-1, keepdim=True)
        probs = F.dropout((scores - lse).exp(), dropout, training)
        out = torch.cat([probs @ values, lse], dim=-1).flatten(3, 4)  # (R, B, H, L', D + 1), sorted order

        unsorted = torch.empty_like(out).scatter_(3, order[..., None].expand_as(out), out)
        out, lse = unsorted[..., :D], unsorted[..., D:]
        out = (lse.softmax(dim=0) * out).sum(0)  # rounds weighted by their total attention mass
        return out[:, :, :L]

