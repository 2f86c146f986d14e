"""The fast blocked LSG kernel ("lsg_fast", the CPU path of "lsg"): flash-style, memory linear in the length.

Same layout and numbers as the plain kernel (`lsg.attention.gathered_attention`), computed
differently. The plain kernel gathers the keys and values of all N blocks at once, (B, H, N, K, D) each
(about 5x the K tensor at the defaults, design §4), and autograd keeps them for the backward pass. Here a
custom autograd function walks over chunks of a few blocks (sized by `GATHER_BUDGET`, a handful per
sequence, never one block at a time). A chunk's queries attend to two key sets in two fused calls: the remote
set (globals and sparse windows, gathered into one copy) and the local set (blocks j-1, j, j+1, a strided view
of the keys, not copied). The two results are merged by their log-sum-exp (`_merge`), and the backward pass
hands each set the merged output and log-sum-exp, which gives exactly that set's gradients (the split ring
attention uses). Only the output and the row log-sum-exp are kept; the backward pass gathers the remote keys
again, as FlashAttention recomputes its scores, and adds the key gradients back into their sources
(`_scatter_remote_grads`, `_scatter_local_grads`). The sparse keys and values are not kept either: the backward
pass runs the selector again, so the step holds no more activations than full attention with SDPA (`make
bench` measures both).

Splitting the keys cut the kernel's step by about 20 % against one gathered set of K = G + 2sbs + 3bs keys
(RoBERTa-base heads, 4096 tokens, 2 cores): the local keys are no longer copied, and torch's CPU flash
backward runs sets of 257 and 384 keys faster than one of 641.

Two interchangeable cores do a chunk's attention:

* `FlashCore` (CPU, no dropout): torch's fused flash-attention CPU kernels, forward and backward, called
  directly so the log-sum-exp can be kept. Fastest on CPU; they do not support dropout.
* `MatmulCore` (any device, dropout): one batched matmul for the scores, an fp32 softmax and one for the
  output. Dropout masks come from a generator reseeded per key set, so the backward pass draws them again and
  training with `attention_probs_dropout_prob > 0` keeps the same memory profile.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lsg.attention import BlockKeys, KeyLayout, block_variant
from lsg.layout import LOCAL_BLOCK_OFFSETS, sparse_window_index

# Key elements (remote and local) per chunk: 2**20 fp32 elements, 2 blocks of RoBERTa-base at the defaults, so 16
# chunks at 4096 tokens. Measured on 2 cores (torch 2.13, RoBERTa-base heads, fwd+bwd of one layer's attention):
# 2**20 ran 0.22 s at 4096 and 0.87 s at 16384 tokens, 2**21 +2 %, 2**22 +7 %, 2**19 +5 % (more kernel calls);
# the whole step's peak memory at 4096 was the same (the dense layers' backward) up to 2**22 and +24 MiB at 2**23,
# where a chunk's backward temporaries (remote K/V, their gradients, the kernel's gradient buffers) became the peak.
# A chunk's temporaries stay a fixed size, so memory stays linear in the length.
GATHER_BUDGET = 2**20


def chunk_ranges(blocks: int, elements_per_block: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) ranges of blocks with about `GATHER_BUDGET` gathered key elements each.

    `elements_per_block` is B * H * K * D, the size of one block's keys (remote and local).
    """
    step = max(1, GATHER_BUDGET // max(1, elements_per_block))
    return [(start, min(blocks, start + step)) for start in range(0, blocks, step)]


def _softmax_dtype(x: Tensor) -> torch.dtype:
    """Softmax statistics run in fp32 at least: half-precision exp/sum lose too much (design D5)."""
    return torch.promote_types(x.dtype, torch.float32)


class ChunkCore(Protocol):
    """Attention of the queries of n blocks over one set of their keys. query/grad_out/out (B, H, n, bs, D),
    key/value (B, H, n, K, D) (possibly strided views), visible (B, 1|H, n, 1|bs, K) bool (per query row only
    for the local keys of causal attention), lse (B, H, n, bs) in
    `_softmax_dtype`; `chunk` numbers the key set (dropout masks).

    `forward` returns the output and log-sum-exp over this key set alone; a row that sees none of its keys gets
    a finite output (its lse is fixed by the caller, `_merge`). `backward` takes the output and lse over all
    key sets of the rows, so it yields this set's share of the gradients (the split of ring attention)."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, chunk: int
                ) -> tuple[Tensor, Tensor]: ...

    def backward(self, grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, out: Tensor,
                 lse: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]: ...


def _stack(parts: list[Tensor]) -> Tensor:
    return parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)


class FlashCore:
    """torch's fused flash-attention CPU kernels (`aten._scaled_dot_product_flash_attention_for_cpu`).

    They take 4-D inputs. Each batch element gets one call on (H, n, L, D) views, H as the kernel's batch and n
    as its heads: the query blocks and the strided local windows go in as they are, where folding (H, n) into
    one dimension would copy them.
    """

    def __init__(self, scaling: float) -> None:
        self.scaling = scaling

    def _bias(self, visible: Tensor, dtype: torch.dtype) -> Tensor | None:
        """Additive mask (1|H, n, 1|bs, K) of one batch element; None when every key is visible (the usual case
        inside a document), which the kernel runs faster."""
        if bool(visible.all()):
            return None
        return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, chunk: int
                ) -> tuple[Tensor, Tensor]:
        results = [
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query[b], key[b], value[b], attn_mask=self._bias(visible[b], query.dtype), scale=self.scaling)
            for b in range(query.shape[0])
        ]
        return _stack([out for out, _ in results]), _stack([lse for _, lse in results])

    def backward(self, grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, out: Tensor,
                 lse: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
        results = [
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad_out[b], query[b], key[b], value[b], out[b], lse[b], 0.0, False,
                attn_mask=self._bias(visible[b], query.dtype), scale=self.scaling)
            for b in range(query.shape[0])
        ]
        return tuple(_stack(list(grads)) for grads in zip(*results, strict=True))


class MatmulCore:
    """Batched matmuls and an explicit fp32 softmax; supports dropout on any device."""

    def __init__(self, scaling: float, dropout: float, seed: int) -> None:
        self.scaling, self.dropout, self.seed = scaling, dropout, seed

    def _probabilities(self, query: Tensor, key: Tensor, visible: Tensor, lse: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
        """Softmax (B, H, n, bs, K) and its log-sum-exp; pass `lse` to recompute the same probabilities."""
        scores = (query @ key.transpose(-1, -2)).to(_softmax_dtype(query)).mul_(self.scaling)
        scores.masked_fill_(~visible, float("-inf"))  # every row keeps its global keys
        if lse is None:
            lse = torch.logsumexp(scores, dim=-1)  # -inf for a row that sees no key of this set
        # Clamped, an empty row's probabilities are exp(-inf) = 0 rather than NaN.
        return scores.sub_(lse.clamp_min(torch.finfo(lse.dtype).min).unsqueeze(-1)).exp_(), lse

    def _keep(self, shape: torch.Size, chunk: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Dropout keep-mask (0 or 1) of one key set; drawn identically again in the backward pass. The 1/(1-p)
        scale is applied to the (bs, D) outputs and output gradients, not to this (bs, K) mask."""
        generator = torch.Generator(device=device).manual_seed(self.seed + chunk)
        return torch.rand(shape, generator=generator, dtype=dtype, device=device).ge_(self.dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, chunk: int
                ) -> tuple[Tensor, Tensor]:
        probs, lse = self._probabilities(query, key, visible)
        if not self.dropout:
            return probs.to(value.dtype) @ value, lse
        probs.mul_(self._keep(probs.shape, chunk, probs.dtype, probs.device))
        return (probs.to(value.dtype) @ value).mul_(1 / (1 - self.dropout)), lse

    def backward(self, grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, out: Tensor,
                 lse: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
        dtype = lse.dtype
        probs, _ = self._probabilities(query, key, visible, lse)
        # rowsum(dP * P) == rowsum(dO * O), with or without dropout (FlashAttention-2's D_i).
        delta = (grad_out.to(dtype) * out.to(dtype)).sum(-1, keepdim=True)
        dropped = probs  # the probabilities the forward pass multiplied V with, before the 1/(1-p) scale
        if self.dropout:
            grad_out = grad_out * (1 / (1 - self.dropout))
            keep = self._keep(probs.shape, chunk, dtype, probs.device)
            dropped = probs * keep
        d_probs = (grad_out @ value.transpose(-1, -2)).to(dtype)  # (B, H, n, bs, K)
        if self.dropout:
            d_probs.mul_(keep)
        grad_value = dropped.to(grad_out.dtype).transpose(-1, -2) @ grad_out
        d_scores = d_probs.sub_(delta).mul_(probs).mul_(self.scaling).to(query.dtype)
        return d_scores @ key, d_scores.transpose(-1, -2) @ query, grad_value


def _scatter_remote_grads(grad: Tensor, keys: BlockKeys, into: Tensor, into_sparse: Tensor | None, start: int,
                          stop: int) -> None:
    """Add the gradient of the remote keys (or values) of token blocks [start, stop), (B, H, n, G+2sbs, D), into
    the gradients of their sources, `into` (B, H, G+T', D) and the padded sparse `into_sparse`: the adjoint of
    `BlockKeys.remote`."""
    settings = keys.settings
    G = settings.num_global_tokens
    into[:, :, :G].add_(grad[:, :, :, :G].sum(2))  # add_ on the view: `x[i] += y` would copy x[i] back into x
    if into_sparse is not None:
        index = sparse_window_index(keys.blocks, settings, grad.device)[start:stop].flatten()
        into_sparse.index_add_(2, index, grad[:, :, :, G:].flatten(2, 3))


def _scatter_local_grads(grad: Tensor, keys: BlockKeys, into: Tensor, start: int, stop: int) -> None:
    """Add the gradient of the local-window keys (or values) of token blocks [start, stop), (B, H, n, 3bs, D),
    into `into` (B, H, G+T', D): the adjoint of `BlockKeys.local`."""
    bs, N = keys.settings.block_size, keys.blocks
    blocks = keys.token_blocks(into)  # (B, H, N, bs, D) view
    # Column c of block j's window is block j + LOCAL_BLOCK_OFFSETS[c]: a loop over the offsets, not the blocks.
    for column, offset in enumerate(LOCAL_BLOCK_OFFSETS):
        low, high = max(start, -offset), min(stop, N - offset)  # the blocks j whose block j + offset exists
        if low < high:
            columns = slice(column * bs, (column + 1) * bs)
            blocks[:, :, low + offset : high + offset].add_(grad[:, :, low - start : high - start, columns])


class _KeySet(NamedTuple):
    """One of the two key sets of a chunk: remote (globals and sparse windows) or local (the 3 blocks around)."""

    key: Tensor
    value: Tensor
    visible: Tensor
    number: int  # numbers the dropout masks: 0 is the global queries' set, then 2 per chunk
    remote: bool


def _key_sets(keys: BlockKeys, start: int, stop: int, chunk: int) -> list[_KeySet]:
    """The keys of blocks [start, stop) as two sets attended separately: the local windows stay strided views of
    the keys, so only the remote keys are copied."""
    visible, width = keys.visible[:, :, start:stop], keys.remote_width
    return [
        _KeySet(*keys.remote(start, stop), keys.row_visible(visible[..., :width], local=False), 2 * chunk - 1, True),
        _KeySet(*keys.local(start, stop), keys.row_visible(visible[..., width:], local=True), 2 * chunk, False),
    ]


def _merge(parts: list[tuple[Tensor, Tensor]], sets: list[_KeySet]) -> tuple[Tensor, Tensor]:
    """Output and log-sum-exp of the rows over all key sets from their (out, lse) over each set:
    lse = log(sum_i exp(lse_i)), out = sum_i exp(lse_i - lse) * out_i.

    A row that sees no key of a set (a local window that is all padding, or all padding up to a causal query)
    takes nothing from it: its lse there is set to -inf whatever the core returned. The remote set always holds
    the globals, so lse stays finite."""
    lses = [lse.masked_fill(~keys.visible.any(-1), float("-inf")) for (_, lse), keys in
            zip(parts, sets, strict=True)]
    total = torch.logsumexp(torch.stack(lses), dim=0)
    out = sum((lse - total).exp_().unsqueeze(-1) * part for (part, _), lse in zip(parts, lses, strict=True))
    return out, total


@dataclass(frozen=True)
class _SelectionState:
    """What the forward pass's sparse selection depended on besides its inputs, so that the backward pass selects
    the same tokens again: the device's RNG state (LSH draws its hyperplanes from it in training) and autocast
    (it sets the precision of the selectors' scores, and autograd turns it off in the backward pass)."""

    device: torch.device
    rng: Tensor
    autocast: bool
    autocast_dtype: torch.dtype

    @classmethod
    def capture(cls, device: torch.device) -> _SelectionState:
        kind = device.type
        rng = torch.get_rng_state() if kind == "cpu" else torch.get_device_module(kind).get_rng_state(device)
        return cls(device, rng, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))

    @contextmanager
    def restored(self) -> Iterator[None]:
        """Run the block as the forward pass ran, leaving the RNG as it was afterwards."""
        kind = self.device.type
        with torch.random.fork_rng(devices=[] if kind == "cpu" else [self.device], device_type=kind), \
                torch.autocast(kind, dtype=self.autocast_dtype, enabled=self.autocast):
            if kind == "cpu":
                torch.set_rng_state(self.rng)
            else:
                torch.get_device_module(kind).set_rng_state(self.rng, self.device)
            yield


class _BlockedAttention(torch.autograd.Function):
    """LSG attention of all queries over their `BlockKeys`, chunk by chunk, with recomputation (module docstring).

    The global queries are one more chunk whose window is the whole sequence. Key-set numbers (0 for the globals'
    set, then 2c-1 and 2c for the remote and local sets of token chunk c) number the dropout masks. The sparse
    selection runs inside the function, so its keys and values are not kept for the backward pass: it selects
    them again there, from the same RNG and autocast state, and sends their gradients back through the selector
    with autograd.
    """

    @staticmethod
    def forward(ctx: Any, query: Tensor, key: Tensor, value: Tensor, layout: KeyLayout, core: ChunkCore) -> Tensor:
        selection = _SelectionState.capture(query.device)
        keys = layout.block_keys(query, key, value)
        B, H, _, D = query.shape
        G, bs, N = layout.settings.num_global_tokens, layout.settings.block_size, keys.blocks
        out = torch.empty_like(query)
        out_global, lse_global = core.forward(query[:, :, None, :G], key[:, :, None], value[:, :, None],
                                              keys.all_valid[:, None, None, None], 0)
        out[:, :, :G] = out_global[:, :, 0]
        lse = query.new_empty(B, H, N, bs, dtype=_softmax_dtype(query))
        ranges = chunk_ranges(N, B * H * keys.visible.shape[-1] * D)
        blocks_q, blocks_out = keys.token_blocks(query), keys.token_blocks(out)  # (B, H, N, bs, D) views
        for chunk, (start, stop) in enumerate(ranges, start=1):
            sets = _key_sets(keys, start, stop, chunk)
            parts = [core.forward(blocks_q[:, :, start:stop], s.key, s.value, s.visible, s.number) for s in sets]
            blocks_out[:, :, start:stop], lse[:, :, start:stop] = _merge(parts, sets)
        ctx.save_for_backward(query, key, value, out, lse, lse_global)
        ctx.layout, ctx.core, ctx.ranges, ctx.selection = layout, core, ranges, selection
        return out

    @staticmethod
    @once_differentiable  # the backward works on detached inputs: a double backward must raise, not be wrong
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        query, key, value, out, lse, lse_global = ctx.saved_tensors
        sources = tuple(x.detach().requires_grad_() for x in (query, key, value))
        with torch.enable_grad(), ctx.selection.restored():
            keys = ctx.layout.block_keys(*sources)
        query, key, value = sources
        G, core = ctx.layout.settings.num_global_tokens, ctx.core
        grad_q = torch.empty_like(query)
        grad_sk, grad_sv = (None if x is None else torch.zeros_like(x) for x in (keys.sparse_key, keys.sparse_value))
        # The global queries' backward yields full-size key/value gradients: the token chunks add into them.
        grad_q[:, :, :G], grad_k, grad_v = (g[:, :, 0] for g in core.backward(
            grad_out[:, :, None, :G], query[:, :, None, :G], key[:, :, None], value[:, :, None],
            keys.all_valid[:, None, None, None], out[:, :, None, :G], lse_global, 0))
        blocks = [keys.token_blocks(x) for x in (grad_out, query, out, grad_q)]  # (B, H, N, bs, D) views
        for chunk, (start, stop) in enumerate(ctx.ranges, start=1):
            rows = slice(start, stop)
            for s in _key_sets(keys, start, stop, chunk):  # the remote set first: it writes dq
                dq, dk, dv = core.backward(blocks[0][:, :, rows], blocks[1][:, :, rows], s.key, s.value, s.visible,
                                           blocks[2][:, :, rows], lse[:, :, rows], s.number)
                if s.remote:
                    blocks[3][:, :, rows] = dq
                    _scatter_remote_grads(dk, keys, grad_k, grad_sk, start, stop)
                    _scatter_remote_grads(dv, keys, grad_v, grad_sv, start, stop)
                else:
                    blocks[3][:, :, rows].add_(dq)
                    _scatter_local_grads(dk, keys, grad_k, start, stop)
                    _scatter_local_grads(dv, keys, grad_v, start, stop)
        if keys.sparse_key is not None:  # through the selector, into whichever of q, k, v it read
            through = torch.autograd.grad((keys.sparse_key, keys.sparse_value), sources, (grad_sk, grad_sv),
                                          allow_unused=True)
            for total, part in zip((grad_q, grad_k, grad_v), through, strict=True):
                if part is not None:
                    total += part
        return grad_q, grad_k, grad_v, None, None


def fast_attention(query: Tensor, key: Tensor, value: Tensor, layout: KeyLayout, dropout: float, *,
                   core: ChunkCore | None = None) -> Tensor:
    """Kernel of "lsg_fast": query/key/value (B, H, G+T', D) -> (B, H, G+T', D).

    `core` defaults to `FlashCore` on CPU without dropout and to `MatmulCore` otherwise.
    """
    if core is None and query.device.type == "cpu" and not dropout:
        core = FlashCore(layout.scaling)
    elif core is None:
        # The seed comes from the global RNG, so the trainer's seed governs the dropout masks.
        core = MatmulCore(layout.scaling, dropout, seed=int(torch.randint(2**62, ())) if dropout else 0)
    return _BlockedAttention.apply(query, key, value, layout, core)


lsg_fast_attention = block_variant(
    fast_attention, "lsg_fast_attention", "LSG attention with the chunked, recomputing kernel of `lsg.fast`."
)
