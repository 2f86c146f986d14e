"""Dense reference of LSG attention (design §3.3), written from the definitions, slow and obviously right.

It shares no code with the fast kernel except the seeded LSH projections (random numbers have to be
the same to compare) and the validated settings. Sparse tokens are built with explicit loops over
groups and chunks; the attention builds augmented keys [globals | tokens | sparse S] per head and an
explicit boolean visibility matrix (G+T') x (G+T'+S) from the index rules, then runs one float64
masked softmax. Used by the tests, and registered as the attention variant "lsg_reference" (`lsg.variants`)
so whole models can be run against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lsg.selectors import lsh_projections
from lsg.settings import LSGSettings


def reference_sparse_tokens(
    keys: Tensor, values: Tensor, valid: Tensor, first_query: Tensor, settings: LSGSettings, *,
    scaling: float, layer_index: int = 0, training: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sparse sequence S of one layer from the definitions (design §3.4).

    keys/values (B, H, T', D), valid (B, T') bool, first_query (B, H, D).
    Returns S keys, S values (B, H, T'/f, D) and validity (B, H, T'/f).
    """
    B, H, T, D = keys.shape
    f, bs, r, kind = settings.sparsity_factor, settings.block_size, settings.sparse_per_block, settings.sparsity_type
    S = T // f
    out_k, out_v = keys.new_zeros(B, H, S, D), values.new_zeros(B, H, S, D)
    out_m = torch.zeros(B, H, S, dtype=torch.bool)
    if f == 1:
        return keys.clone(), values.clone(), valid[:, None].expand(B, H, T).clone()
    for b in range(B):
        for h in range(H):
            if kind in ("stride", "block_stride"):
                for s in range(S):
                    t = s * f + h % f if kind == "stride" else (s // r) * bs + (h * r + s % r) % bs
                    out_k[b, h, s], out_v[b, h, s], out_m[b, h, s] = keys[b, h, t], values[b, h, t], valid[b, t]
            elif kind in ("pooling", "bos_pooling"):
                for s in range(S):
                    group = range(s * f, (s + 1) * f)
                    members = [t for t in group if valid[b, t]]
                    out_m[b, h, s] = bool(members)
                    if kind == "pooling":
                        if members:
                            out_k[b, h, s] = keys[b, h, members].mean(0)
                            out_v[b, h, s] = values[b, h, members].mean(0)
                    elif members:  # a fully padded group is invalid: its value never matters
                        scores = keys[b, h, members] @ first_query[b, h] * scaling
                        weights = scores.softmax(0)
                        out_k[b, h, s] = weights @ keys[b, h, members]
                        out_v[b, h, s] = weights @ values[b, h, members]
            elif kind == "norm":
                chunk = settings.selection_chunk
                keep = chunk // f
                for c in range(T // chunk):
                    tokens = range(c * chunk, (c + 1) * chunk)
                    ranked = sorted(tokens, key=lambda t: -(keys[b, h, t].norm().item() * bool(valid[b, t])))
                    for i, t in enumerate(sorted(ranked[:keep])):
                        s = c * keep + i
                        out_k[b, h, s], out_v[b, h, s], out_m[b, h, s] = keys[b, h, t], values[b, h, t], valid[b, t]
            elif kind == "lsh":
                _reference_lsh(keys, values, valid, settings, b, h, out_k, out_v, out_m, layer_index, training)
    return out_k, out_v, out_m


def _reference_lsh(keys, values, valid, settings, b, h, out_k, out_v, out_m, layer_index, training) -> None:
    """Bucket means of one (batch, head) row, one chunk and one token at a time."""
    _, H, T, D = keys.shape
    chunk = settings.selection_chunk
    clusters = chunk // settings.sparsity_factor
    rounds = [chunk] * settings.lsh_num_pre_rounds + [clusters]
    projections = [
        lsh_projections(settings, layer_index=layer_index, round_index=i, heads=H, dim=D, buckets=n,
                        training=training, device=keys.device, dtype=keys.dtype)[h]
        for i, n in enumerate(rounds)
    ]
    for c in range(T // chunk):
        # each point: (key sum, value sum, weight); padding enters with weight 0 and zero vectors
        points = [
            (keys[b, h, t] * valid[b, t], values[b, h, t] * valid[b, t], float(valid[b, t]))
            for t in range(c * chunk, (c + 1) * chunk)
        ]
        for R, buckets in zip(projections, rounds, strict=True):
            merged = [(torch.zeros(D, dtype=keys.dtype), torch.zeros(D, dtype=keys.dtype), 0.0)] * buckets
            for k, v, w in points:
                unit = k / k.norm().clamp_min(1e-12) if w > 0 else torch.zeros_like(k)
                logits = unit @ R
                bucket = int(torch.cat([logits, -logits])[:buckets].argmax())
                mk, mv, mw = merged[bucket]
                merged[bucket] = (mk + k, mv + v, mw + w)
            points = merged
        for i, (k, v, w) in enumerate(points):
            s = c * clusters + i
            out_m[b, h, s] = w > 0
            if w > 0:
                out_k[b, h, s], out_v[b, h, s] = k / w, v / w


def reference_visibility(length: int, settings: LSGSettings, causal: bool = False) -> tuple[Tensor, Tensor]:
    """Which keys each query may see, from the layout rules, ignoring padding.

    Returns bool matrices over queries [globals; tokens] (G+T') x keys [globals; tokens] (G+T') and
    x sparse keys (T'/f), for T' = `length` (already padded when T > 2*bs).

    Causal (design §3.7): a global query sees the globals only; a token query sees the globals, the tokens
    of its own and the previous block up to itself (every token up to itself under the short rule), and
    only the LEFT sparse window, which summarises blocks that end before the previous block starts.
    """
    G, bs = settings.num_global_tokens, settings.block_size
    total = G + length
    dense = torch.zeros(total, total, dtype=torch.bool)
    S = length // settings.sparsity_factor if settings.sparse_enabled else 0
    sparse = torch.zeros(total, S, dtype=torch.bool)
    dense[:, :G] = True  # everything sees the globals
    if length <= 2 * bs:
        for i in range(G, total):
            dense[i, G : i + 1 if causal else total] = True
        if not causal:
            dense[:G] = True
        return dense, sparse
    if not causal:
        dense[:G] = True  # global queries see everything
    r, sbs = (settings.sparse_per_block, settings.sparse_block_size) if S else (0, 0)
    for i in range(length):
        j = i // bs
        lo, hi = max(0, (j - 1) * bs), min(length, i + 1 if causal else (j + 2) * bs)
        dense[G + i, G + lo : G + hi] = True
        if S:
            windows = [((j - 1) * r - sbs, (j - 1) * r)] + ([] if causal else [((j + 2) * r, (j + 2) * r + sbs)])
            for start, stop in windows:
                sparse[G + i, max(0, start) : max(0, min(S, stop))] = True
    return dense, sparse


def reference_lsg_attention(
    query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
    scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0, causal: bool = False,
    compute_dtype: torch.dtype = torch.float64,
) -> Tensor:
    """LSG attention computed densely from the rules (signature of `AttentionVariant`).

    Causal: `bos_pooling` pools with the first token's key instead of its query (a KV cache keeps keys only).

    `compute_dtype` defaults to float64 (the truth); tests also run it in bf16/fp16 to measure the error
    a plain low-precision implementation makes, the yardstick for the fast kernel's half-precision error.
    """
    dtype = query.dtype
    q, k, v = (x.to(compute_dtype).cpu() for x in (query, key, value))
    B, H, total, D = q.shape
    G, bs = settings.num_global_tokens, settings.block_size
    T = total - G
    valid = token_valid.cpu().bool().clone()
    if settings.mask_first_token:
        valid[:, 0] = False
    padded = T if 2 * bs >= T else -(-T // bs) * bs
    if padded != T and not settings.adaptive:
        raise ValueError(f"sequence length {T} is not a multiple of block_size={bs} and adaptive=False")
    pad = padded - T
    q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    valid = torch.nn.functional.pad(valid, (0, pad), value=False)
    dense, sparse = reference_visibility(padded, settings, causal)
    keys, values = k, v
    visible = dense[None, None] & torch.cat([torch.ones(B, G, dtype=torch.bool), valid], 1)[:, None, None]
    if sparse.shape[1] and padded > 2 * bs:
        s_k, s_v, s_m = reference_sparse_tokens(
            k[:, :, G:], v[:, :, G:], valid, (k if causal else q)[:, :, G], settings, scaling=scaling,
            layer_index=layer_index, training=training,
        )
        keys, values = torch.cat([k, s_k], 2), torch.cat([v, s_v], 2)
        visible = torch.cat([visible.expand(B, H, -1, -1), sparse[None, None] & s_m[:, :, None]], dim=3)
    scores = (q @ keys.transpose(-1, -2)) * scaling
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1).to(compute_dtype)
    probs = torch.nn.functional.dropout(probs, dropout, training=training)
    return (probs @ values)[:, :, : G + T].to(device=query.device, dtype=dtype)
