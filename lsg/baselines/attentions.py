"""The attentions of the paper's Table 1 (RoBERTa-base with its attention swapped, no training), as plain functions
and classes with the `lsg.attention.AttentionVariant` signature.

`lsg.variants` registers them as "table1_<name>", which `lsg.hf` makes selectable as `attn_implementation=` for
every supported architecture. Table-1 models have no global tokens: the
G leading rows the interface hands over (a converted model's globals, or the first token of a plain model,
see `lsg.baselines.swap`) are treated as ordinary, always-valid tokens, and every row attends under the
variant's own rule. Padded keys never contribute to a real query's output.

| name | rule | parameters (paper / default) |
| --- | --- | --- |
| `full` | softmax attention over all keys (the "RoBERTa" row) | – |
| `linear` | Katharopoulos et al. 2020, phi(x) = elu(x) + 1 | – |
| `efficient` | Shen et al. 2018, softmax(Q over features) (softmax(K over length)^T V) | – |
| `performer` | Choromanski et al. 2021, FAVOR+ positive orthogonal random features | 256 features, seeded per layer |
| `linformer` | Wang et al. 2020, K and V projected along the length by E, F (k x n) | k = 128, E, F ~ N(0, 1/k) |
| `reformer` | Kitaev et al. 2020, shared-QK angular LSH (in `lsg.baselines.reformer`) | chunk 64, 1 hash round |
| `local` | block j sees blocks j-1, j, j+1 (LSG's local pattern, no sparse, no global) | block 128 |

Kernel attentions (`linear`, `efficient`, `performer`) build no attention-probability matrix, so attention
dropout does not apply to them; they also compute in float32 when given half precision, since their sums
over thousands of keys are what low precision gets wrong.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lsg.layout import local_windows
from lsg.settings import LSGSettings
from lsg.validation import check_int

__all__ = [
    "LinformerAttention", "LocalAttention", "PerformerAttention", "efficient_attention", "full_attention",
    "layer_generator", "linear_attention", "padded_rows", "row_validity", "softmax_attention",
]


def row_validity(token_valid: Tensor, rows: int) -> Tensor:
    """(B, G+T) validity of every row: the G leading rows count as real tokens, then `token_valid` (B, T)."""
    return F.pad(token_valid.bool(), (rows - token_valid.shape[1], 0), value=True)


def padded_rows(token_valid: Tensor, rows: int, multiple: int) -> tuple[int, Tensor]:
    """L' = `rows` rounded up to a multiple of `multiple`, and the (B, L') validity of the rows padded to it."""
    padded = -(-rows // multiple) * multiple
    return padded, F.pad(row_validity(token_valid, rows), (0, padded - rows), value=False)


def softmax_attention(query: Tensor, key: Tensor, value: Tensor, visible: Tensor, scaling: float,
                      dropout: float) -> Tensor:
    """Masked softmax attention; `visible` (bool) broadcasts to (..., Lq, Lk).

    A row that sees no key at all (a padding query whose window holds only padding) is let see every key:
    its output is finite and discarded, where an empty softmax would give NaN.
    """
    visible = visible | ~visible.any(-1, keepdim=True)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=visible, dropout_p=dropout, scale=scaling)


def _upcast(*tensors: Tensor) -> list[Tensor]:
    """Half-precision inputs computed in float32 (kernel attentions sum over every key)."""
    return [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors]


def layer_generator(seed: int, layer_index: int, stream: int = 0) -> torch.Generator:
    """CPU generator for one layer's fixed random draws: same seed and layer, same draws on every run."""
    return torch.Generator().manual_seed(1_000_003 * seed + 101 * layer_index + stream)


def full_attention(
    query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
    scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0,
) -> Tensor:
    """Plain softmax attention over all G+T rows: the "RoBERTa (full)" row. Shapes as `AttentionVariant`."""
    visible = row_validity(token_valid, key.shape[2])[:, None, None]  # (B, 1, 1, G+T)
    return softmax_attention(query, key, value, visible, scaling, dropout if training else 0.0)


def _kernel_attention(phi_query: Tensor, phi_key: Tensor, value: Tensor, valid: Tensor) -> Tensor:
    """phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1) with padded keys removed; phi(.) >= 0, (B, H, L, F)."""
    phi_key = phi_key * valid[:, None, :, None]
    context = phi_key.transpose(-2, -1) @ value  # (B, H, F, D)
    normaliser = phi_query @ phi_key.sum(-2).unsqueeze(-1)  # (B, H, L, 1)
    # tiny clamp: a batch row with no valid key gives 0 instead of 0/0
    return (phi_query @ context) / normaliser.clamp_min(torch.finfo(normaliser.dtype).tiny)


def linear_attention(
    query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
    scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0,
) -> Tensor:
    """Linear attention (Katharopoulos et al. 2020, eq. 6), phi(x) = elu(x) + 1 on the raw q and k.

    The feature map replaces exp(q.k * scaling), so `scaling` is not used (as in the paper). Shapes as
    `AttentionVariant`.
    """
    dtype = query.dtype
    query, key, value = _upcast(query, key, value)
    valid = row_validity(token_valid, key.shape[2])
    return _kernel_attention(F.elu(query) + 1, F.elu(key) + 1, value, valid).to(dtype)


def efficient_attention(
    query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
    scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0,
) -> Tensor:
    """Efficient (factorized) attention (Shen et al. 2018): softmax_features(Q) (softmax_length(K)^T V).

    The softmax over the length runs over valid keys only. As in the paper no `scaling` is applied.
    Shapes as `AttentionVariant`.
    """
    dtype = query.dtype
    query, key, value = _upcast(query, key, value)
    valid = row_validity(token_valid, key.shape[2])[:, None, :, None]  # (B, 1, L, 1)
    keys = key.masked_fill(~valid, torch.finfo(key.dtype).min).softmax(dim=-2)  # over the length
    return (query.softmax(dim=-1) @ (keys.transpose(-2, -1) @ value)).to(dtype)


@functools.lru_cache(maxsize=128)
def _orthogonal_features(count: int, dim: int, seed: int, layer_index: int) -> Tensor:
    """(count, dim) FAVOR+ projection: stacked orthogonal blocks with chi(dim)-distributed row norms, so each
    row is marginally N(0, I) while rows within a block are exactly orthogonal (Choromanski et al., §4.2)."""
    generator = layer_generator(seed, layer_index)
    blocks = [torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))[0].T
              for _ in range(-(-count // dim))]
    norms = torch.randn(count, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return torch.cat(blocks)[:count] * norms[:, None]


@dataclass(frozen=True)
class PerformerAttention:
    """FAVOR+ attention (Choromanski et al. 2021) with positive orthogonal random features.

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m) with x = q * scaling^(1/2) (resp. k), so that
    E[phi(q) . phi(k)] = exp(scaling * q.k), the softmax kernel. W (m x D) is drawn once per layer from
    (`seed`, layer index) and shared by the heads: every run sees the same features and no redraw happens.

    Attributes:
        num_features: m, random features per layer (the paper does not state it; 256 by default).
        seed: base seed of the projections.
    """

    num_features: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("num_features", self.num_features, 1)

    def features(self, dim: int, layer_index: int) -> Tensor:
        """The (num_features, dim) float64 projection W of layer `layer_index`."""
        return _orthogonal_features(self.num_features, dim, self.seed, layer_index)

    def __call__(
        self, query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
        scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0,
    ) -> Tensor:
        """Shapes as `AttentionVariant`."""
        dtype = query.dtype
        query, key, value = _upcast(query, key, value)
        valid = row_validity(token_valid, key.shape[2])
        projection = self.features(query.shape[-1], layer_index).to(query.device, query.dtype)
        query, key = query * scaling**0.5, key * scaling**0.5
        q_logits = query @ projection.T - query.square().sum(-1, keepdim=True) / 2  # (B, H, L, m)
        k_logits = key @ projection.T - key.square().sum(-1, keepdim=True) / 2
        # Stabilisers cancel in the ratio: a per-query-row max, and one max over the valid keys of each head.
        # Padded keys get -inf logits (exp = 0) so a large padded key can never overflow into inf * 0 = NaN.
        q_logits = q_logits - q_logits.amax(-1, keepdim=True)
        k_logits = k_logits.masked_fill(~valid[:, None, :, None], -torch.inf)
        k_max = k_logits.amax((-2, -1), keepdim=True)
        k_logits = k_logits - k_max.masked_fill(k_max == -torch.inf, 0.0)
        scale = self.num_features**-0.5
        return _kernel_attention(q_logits.exp() * scale, k_logits.exp() * scale, value, valid).to(dtype)


_PROJECTION_BLOCK = 512  # positions drawn per generator call: E[:, :n] is the same prefix for every n


@functools.lru_cache(maxsize=128)
def _length_projection(rank: int, length: int, seed: int, layer_index: int, stream: int) -> Tensor:
    """(rank, length) float64 matrix with N(0, 1/rank) entries; column j depends on j only, not on `length`."""
    generator = layer_generator(seed, layer_index, stream)
    blocks = -(-length // _PROJECTION_BLOCK)
    draws = [torch.randn(_PROJECTION_BLOCK, rank, generator=generator, dtype=torch.float64) for _ in range(blocks)]
    return torch.cat(draws)[:length].T / math.sqrt(rank)


@dataclass(frozen=True)
class LinformerAttention:
    """Linformer attention (Wang et al. 2020): softmax(Q (E K)^T * scaling) (F V), E and F (k x n).

    Table 1 uses it without training, so E and F cannot be learned: they are drawn from N(0, 1/k), the
    Johnson-Lindenstrauss projection of the Linformer paper's Theorem 1 (the distribution its analysis is
    about), once per layer from (`seed`, layer index), shared by the heads ("headwise sharing"), E and F
    independent. Column j of E only depends on position j, so sequences of any length n use the first n
    columns and padded keys (zeroed before projecting) change nothing.

    Attributes:
        projection_dim: k, the projected length (paper: "128 proj.").
        seed: base seed of E and F.
    """

    projection_dim: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("projection_dim", self.projection_dim, 1)

    def projections(self, length: int, layer_index: int) -> tuple[Tensor, Tensor]:
        """(E, F), each (projection_dim, length) float64, for layer `layer_index`."""
        return tuple(_length_projection(self.projection_dim, length, self.seed, layer_index, stream)
                     for stream in (0, 1))

    def __call__(
        self, query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
        scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0,
    ) -> Tensor:
        """Shapes as `AttentionVariant`."""
        valid = row_validity(token_valid, key.shape[2])[:, None, :, None]  # (B, 1, L, 1)
        e, f = (p.to(key.device, key.dtype) for p in self.projections(key.shape[2], layer_index))
        keys, values = e @ (key * valid), f @ (value * valid)  # (B, H, k, D)
        # every projected key mixes all valid rows: no mask
        return F.scaled_dot_product_attention(query, keys, values, dropout_p=dropout if training else 0.0,
                                              scale=scaling)


@dataclass(frozen=True)
class LocalAttention:
    """Local-only attention: the queries of block j (bs rows) see the keys of blocks j-1, j and j+1.

    This is LSG's local pattern (`lsg.layout.local_windows`) without sparse or global keys
    (`sparsity_type=None` and no globals), so a query sees between 2*bs and 3*bs keys whatever the length.

    Attributes:
        block_size: bs (default 128, the paper's LSG block size).
    """

    block_size: int = 128

    def __post_init__(self) -> None:
        check_int("block_size", self.block_size, 1)

    def __call__(
        self, query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
        scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0,
    ) -> Tensor:
        """Shapes as `AttentionVariant`."""
        B, H, L, D = query.shape
        bs = self.block_size
        padded, valid = padded_rows(token_valid, L, bs)  # valid: (B, L')
        N = padded // bs
        query, key, value = (F.pad(x, (0, 0, 0, padded - L)) for x in (query, key, value))
        keys, values = local_windows(key, bs), local_windows(value, bs)  # (B, H, N, 3bs, D)
        visible = local_windows(valid[:, None], bs, fill=False)  # (B, 1, N, 3bs)
        # SDPA's fused kernels take 4-D inputs: fold (H, N) into one batch dimension.
        out = softmax_attention(
            query.reshape(B, H * N, bs, D), keys.reshape(B, H * N, 3 * bs, D), values.reshape(B, H * N, 3 * bs, D),
            visible.expand(B, H, N, 3 * bs).reshape(B, H * N, 1, 3 * bs), scaling, dropout if training else 0.0,
        )
        return out.view(B, H, padded, D)[:, :, :L]

