"""Sparse selectors (design §3.4): summarise the non-global keys/values into T'/f sparse tokens.

Each selector receives the padded token keys/values (B, H, T', D) with T' a multiple of block_size,
and returns `SparseTokens` of length S = T'/f whose entries [b*r, (b+1)*r) summarise token block b
(r = block_size / sparsity_factor). Values always get the same weights as keys. Validity is a bool
tensor broadcastable to (B, H, S): a sparse token is valid iff it holds at least one valid token.

Numerics: everything stays in the activation dtype except reductions that could overflow in half
precision (norms, pooling scores), which run in float32 and are cast back (design D5). Counts are
divided with `clamp_min(1)` rather than `+ eps` so an empty group gives 0, not NaN, in float16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lsg.registry import Registry
from lsg.settings import LSGSettings


@dataclass
class SelectorInputs:
    """What a selector may look at. Shapes: keys/values (B, H, T', D), valid (B, T'), first_query (B, H, D)."""

    keys: Tensor
    values: Tensor
    valid: Tensor
    first_query: Tensor
    scaling: float
    settings: LSGSettings
    layer_index: int = 0
    training: bool = False


@dataclass
class SparseTokens:
    """Sparse keys/values (B, H, S, D) and their validity, broadcastable to (B, H, S).

    `index` (B, H, S) is set by the selectors that pick tokens rather than mix them (stride, block_stride,
    norm): sparse token s of head h is token index[b, h, s]. A kernel may then send the sparse keys' gradients
    straight to those tokens instead of through autograd (`lsg.fast`)."""

    keys: Tensor
    values: Tensor
    valid: Tensor
    index: Tensor | None = None


Selector = Callable[[SelectorInputs], SparseTokens]
SPARSE_SELECTORS: Registry[Selector] = Registry("sparsity_type")


def select_sparse_tokens(inputs: SelectorInputs) -> SparseTokens:
    """Run the selector named by `settings.sparsity_type`; f == 1 keeps every token (design §3.4)."""
    if inputs.settings.sparsity_factor == 1:
        return SparseTokens(inputs.keys, inputs.values, inputs.valid[:, None])
    sparse = SPARSE_SELECTORS.get(inputs.settings.sparsity_type)(inputs)
    # Under autocast a selector's einsums return the autocast dtype; the kernels need the keys' own.
    return SparseTokens(sparse.keys.to(inputs.keys.dtype), sparse.values.to(inputs.values.dtype), sparse.valid,
                        sparse.index)


def _gather_tokens(inputs: SelectorInputs, index: Tensor) -> SparseTokens:
    """Pick tokens by index (H, S) or (B, H, S) along the length, for keys, values and validity."""
    B, H, _, D = inputs.keys.shape
    index = index.expand(B, H, -1)
    pick = index.unsqueeze(-1).expand(-1, -1, -1, D)
    valid = inputs.valid[:, None].expand(B, H, -1).gather(-1, index)
    return SparseTokens(inputs.keys.gather(2, pick), inputs.values.gather(2, pick), valid, index)


@SPARSE_SELECTORS.register("stride")
def select_stride(inputs: SelectorInputs) -> SparseTokens:
    """Head h keeps every f-th token from offset h mod f: S_h[k] = K_h[k*f + (h mod f)]."""
    _, H, T, _ = inputs.keys.shape
    f = inputs.settings.sparsity_factor
    device = inputs.keys.device
    index = torch.arange(T // f, device=device)[None] * f + (torch.arange(H, device=device) % f)[:, None]
    return _gather_tokens(inputs, index)


@SPARSE_SELECTORS.register("block_stride")
def select_block_stride(inputs: SelectorInputs) -> SparseTokens:
    """In block b, head h keeps r contiguous tokens from offset (h*r) mod bs: K_h[b*bs + ((h*r + i) mod bs)]."""
    _, H, T, _ = inputs.keys.shape
    bs, r = inputs.settings.block_size, inputs.settings.sparse_per_block
    device = inputs.keys.device
    within = (torch.arange(H, device=device)[:, None] * r + torch.arange(r, device=device)[None]) % bs  # (H, r)
    starts = torch.arange(T // bs, device=device) * bs  # (N,)
    index = (starts[None, :, None] + within[:, None, :]).reshape(H, -1)  # (H, N*r)
    return _gather_tokens(inputs, index)


def _group_mean(x: Tensor, weights: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """Weighted sum over consecutive groups along the length. x (B, H, T, D), weights (B, 1|H, T).

    Returns the per-group sums (B, H, T/group, D) and total weights (B, 1|H, T/group).
    """
    B, H, T, D = x.shape
    w = weights.to(x.dtype)
    sums = (x * w.unsqueeze(-1)).view(B, H, T // group, group, D).sum(3)
    return sums, w.view(*w.shape[:2], T // group, group).sum(-1)


@SPARSE_SELECTORS.register("pooling")
def select_pooling(inputs: SelectorInputs) -> SparseTokens:
    """Mean of the valid tokens of each group of f consecutive tokens; valid iff the group has one."""
    f = inputs.settings.sparsity_factor
    weights = inputs.valid[:, None]
    keys, count = _group_mean(inputs.keys, weights, f)
    values, _ = _group_mean(inputs.values, weights, f)
    denominator = count.clamp_min(1).unsqueeze(-1)
    return SparseTokens(keys / denominator, values / denominator, count > 0)


@SPARSE_SELECTORS.register("bos_pooling")
def select_bos_pooling(inputs: SelectorInputs) -> SparseTokens:
    """Attention pooling of each group of f tokens, queried by the first real token (CLS/<s>) per head."""
    B, H, T, D = inputs.keys.shape
    f = inputs.settings.sparsity_factor
    keys = inputs.keys.view(B, H, T // f, f, D)
    values = inputs.values.view(B, H, T // f, f, D)
    valid = inputs.valid.view(B, 1, T // f, f)
    # float32 scores: a masked fill of finfo.min keeps fully padded groups finite (uniform weights);
    # the group is then marked invalid, so those weights never reach an output (fixes D4).
    accumulate = torch.promote_types(keys.dtype, torch.float32)
    scores = torch.einsum("bhd,bhgfd->bhgf", inputs.first_query.to(accumulate), keys.to(accumulate)) * inputs.scaling
    scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)  # bf16 under autocast
    weights = scores.softmax(-1).to(keys.dtype)
    pooled_keys = torch.einsum("bhgf,bhgfd->bhgd", weights, keys)
    pooled_values = torch.einsum("bhgf,bhgfd->bhgd", weights, values)
    return SparseTokens(pooled_keys, pooled_values, valid.any(-1))


@SPARSE_SELECTORS.register("norm")
def select_norm(inputs: SelectorInputs) -> SparseTokens:
    """In each chunk of B' = min(bs, sbs) tokens, keep the B'/f keys of largest L2 norm (padding scores 0)."""
    B, H, T, _ = inputs.keys.shape
    chunk = inputs.settings.selection_chunk
    keep = chunk // inputs.settings.sparsity_factor
    with torch.no_grad():  # the choice is discrete; gradients flow through the gathered keys/values
        scores = inputs.keys.to(torch.promote_types(inputs.keys.dtype, torch.float32)).norm(dim=-1)
        scores = scores * inputs.valid[:, None]
        # Kept in sequence order, as every other selector keeps its entries: a sparse window whose width is not
        # a multiple of B'/f ends inside a chunk, and must then take the same keys as the reference (design §3.4).
        top = scores.view(B, H, T // chunk, chunk).topk(keep, dim=-1).indices.sort(dim=-1).values
        offsets = torch.arange(0, T, chunk, device=top.device).view(1, 1, -1, 1)
        index = (top + offsets).view(B, H, -1)
    return _gather_tokens(inputs, index)


def lsh_projections(
    settings: LSGSettings, *, layer_index: int, round_index: int, heads: int, dim: int, buckets: int,
    training: bool, device: torch.device, dtype: torch.dtype,
) -> Tensor:
    """Random hyperplanes (H, D, ceil(buckets/2)) for one LSH round.

    In training they are drawn from the global RNG (so the trainer's seed governs them); in eval they
    come from a generator seeded by (lsh_seed, layer, round), so two identical calls agree (fixes D7).
    """
    shape = (heads, dim, (buckets + 1) // 2)
    if training:
        return torch.randn(shape, device=device, dtype=dtype)
    seed = (settings.lsh_seed * 1_000_003 + layer_index * 1_009 + round_index) % (2**63)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)


def lsh_buckets(points: Tensor, weights: Tensor, projections: Tensor, buckets: int) -> Tensor:
    """Bucket of every point: argmax over [xR, -xR] truncated to `buckets` columns (odd counts waste none).

    points (B, H, C, P, D), weights (B, H, C, P), projections (H, D, ceil(buckets/2)) -> (B, H, C, P) long.
    """
    unit = F.normalize(points, dim=-1) * (weights > 0).unsqueeze(-1).to(points.dtype)
    logits = torch.einsum("bhcpd,hdk->bhcpk", unit, projections)
    return torch.cat([logits, -logits], dim=-1)[..., :buckets].argmax(-1)


def _scatter_sum(x: Tensor, index: Tensor, buckets: int) -> Tensor:
    """Sum the entries of x (B, H, C, P, ...) falling into each of `buckets` indices (B, H, C, P)."""
    out = x.new_zeros(*x.shape[:3], buckets, *x.shape[4:])
    index = index.view(*index.shape, *([1] * (x.dim() - 4))).expand_as(x)
    return out.scatter_add(3, index, x)


@SPARSE_SELECTORS.register("lsh")
def select_lsh(inputs: SelectorInputs) -> SparseTokens:
    """Cluster each chunk of B' tokens into c = B'/f buckets by random-hyperplane hashing; emit bucket means.

    `lsh_num_pre_rounds` rounds with B' buckets merge tokens first, then one final round with c buckets.
    A bucket is valid iff it received a valid token; c == 1 is the masked mean of the chunk.
    """
    B, H, T, D = inputs.keys.shape
    settings = inputs.settings
    chunk = settings.selection_chunk
    clusters = chunk // settings.sparsity_factor
    weights = inputs.valid[:, None].expand(B, H, T).to(inputs.keys.dtype).reshape(B, H, T // chunk, chunk)
    keys = inputs.keys.reshape(B, H, T // chunk, chunk, D) * weights.unsqueeze(-1)
    values = inputs.values.reshape(B, H, T // chunk, chunk, D) * weights.unsqueeze(-1)
    rounds = [chunk] * settings.lsh_num_pre_rounds + [clusters]
    for round_index, buckets in enumerate(rounds):
        with torch.no_grad():
            projections = lsh_projections(
                settings, layer_index=inputs.layer_index, round_index=round_index, heads=H, dim=D,
                buckets=buckets, training=inputs.training, device=keys.device, dtype=keys.dtype,
            )
            index = lsh_buckets(keys, weights, projections, buckets)
        keys = _scatter_sum(keys, index, buckets)
        values = _scatter_sum(values, index, buckets)
        weights = _scatter_sum(weights, index, buckets)
    denominator = weights.clamp_min(1).unsqueeze(-1)
    return SparseTokens(
        (keys / denominator).reshape(B, H, -1, D),
        (values / denominator).reshape(B, H, -1, D),
        (weights > 0).reshape(B, H, -1),
    )
