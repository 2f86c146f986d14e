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
bench` measures both), and sends their gradients to the tokens a picking selector chose (`_scatter_picked_grads`).

Splitting the keys cut the kernel's step by about 20 % against one gathered set of K = G + 2sbs + 3bs keys
(RoBERTa-base heads, 4096 tokens, 2 cores): the local keys are no longer copied, and torch's CPU flash
backward runs sets of 257 and 384 keys faster than one of 641.

Three interchangeable cores do a chunk's attention (`core_name` picks one per device and dropout):

* `FlashCore` (CPU, no dropout): torch's fused flash-attention CPU kernels, forward and backward, called
  directly so the log-sum-exp can be kept. Fastest on CPU; they do not support dropout.
* `MatmulCore` (CPU with dropout, other devices): one batched matmul for the scores, an fp32 softmax and one
  for the output. Its dropout masks are counter-based (`lsg.dropout`): the backward pass hashes them again, so
  training with `attention_probs_dropout_prob > 0` keeps the same memory profile.
* `SdpaCore` (CUDA): torch's fused CUDA SDPA kernels, which take dropout; their RNG state is kept per key set
  for the backward pass.
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
from lsg.dropout import CounterDropout
from lsg.layout import LOCAL_BLOCK_OFFSETS, sparse_margin, sparse_window_index

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


class Placement(NamedTuple):
    """Where a key set's scores sit in the layer's grid of (query position, key column): query rows first_row,
    first_row + 1, ... (positions in the padded G+T' input; a chunk's blocks are consecutive) and key columns
    from first_column on (the layout order of `lsg.attention` for token queries, the sequence order for the
    global queries). The dropout masks are numbered by it, so they do not depend on the chunking."""

    first_row: int
    first_column: int

    def rows(self, blocks: int, rows_per_block: int, device: torch.device) -> Tensor:
        """(blocks, rows_per_block) absolute query positions."""
        return torch.arange(self.first_row, self.first_row + blocks * rows_per_block, device=device).view(
            blocks, rows_per_block)


class ChunkCore(Protocol):
    """Attention of the queries of n blocks over one set of their keys. query/grad_out/out (B, H, n, bs, D),
    key/value (B, H, n, K, D) (possibly strided views), visible (B, 1|H, n, 1|bs, K) bool (per query row only
    for the local keys of causal attention), lse (B, H, n, bs) in `_softmax_dtype`; `place` locates the key set
    (dropout masks).

    `forward` returns the output and log-sum-exp over this key set alone; a row that sees none of its keys gets
    a finite output (its lse is fixed by the caller, `_merge`). `backward` takes the output and lse over all
    key sets of the rows, so it yields this set's share of the gradients (the split of ring attention). With
    dropout this split stays exact: each set's output is already normalised by its own lse before the merge, and
    the backward pass's rowsum(dO * O) uses the merged, dropped-out output."""

    name: str

    def forward(self, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, place: Placement
                ) -> tuple[Tensor, Tensor]: ...

    def backward(self, grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, out: Tensor,
                 lse: Tensor, place: Placement) -> tuple[Tensor, Tensor, Tensor]: ...


def _stack(parts: list[Tensor]) -> Tensor:
    return parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)


def _additive_mask(visible: Tensor, dtype: torch.dtype, columns: int | None = None) -> Tensor | None:
    """0 / -inf bias of the shape of `visible`; None when every key is visible (the usual case inside a document),
    which the fused kernels run faster. `columns` pads the last dimension of the storage (sliced back) for
    kernels that want aligned rows."""
    if bool(visible.all()):
        return None
    width = visible.shape[-1]
    bias = torch.zeros(*visible.shape[:-1], columns or width, dtype=dtype, device=visible.device)[..., :width]
    return bias.masked_fill_(~visible, float("-inf"))


class FlashCore:
    """torch's fused flash-attention CPU kernels (`aten._scaled_dot_product_flash_attention_for_cpu`), no dropout.

    They take 4-D inputs. Each batch element gets one call on (H, n, L, D) views, H as the kernel's batch and n
    as its heads: the query blocks and the strided local windows go in as they are, where folding (H, n) into
    one dimension would copy them.
    """

    name = "flash_cpu"

    def __init__(self, scaling: float) -> None:
        self.scaling = scaling

    def forward(self, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, place: Placement
                ) -> tuple[Tensor, Tensor]:
        results = [
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query[b], key[b], value[b], attn_mask=_additive_mask(visible[b], query.dtype), scale=self.scaling)
            for b in range(query.shape[0])
        ]
        return _stack([out for out, _ in results]), _stack([lse for _, lse in results])

    def backward(self, grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, out: Tensor,
                 lse: Tensor, place: Placement) -> tuple[Tensor, Tensor, Tensor]:
        results = [
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad_out[b], query[b], key[b], value[b], out[b], lse[b], 0.0, False,
                attn_mask=_additive_mask(visible[b], query.dtype), scale=self.scaling)
            for b in range(query.shape[0])
        ]
        return tuple(_stack(list(grads)) for grads in zip(*results, strict=True))


class MatmulCore:
    """Batched matmuls and an explicit fp32 softmax, with counter-based dropout (`lsg.dropout`); any device.

    Each (bs, K) score tile is written once per pass and every elementwise step runs in place on it: the score
    scale goes on the (bs, D) queries and gradients, the 1/(1-p) dropout scale on the (bs, D) outputs and output
    gradients, never on a (bs, K) tile. No mask is kept: the backward pass hashes it again.
    """

    name = "matmul"

    def __init__(self, scaling: float, dropout: CounterDropout | None = None) -> None:
        self.scaling, self.dropout = scaling, dropout

    def _keep(self, query: Tensor, key: Tensor, place: Placement, dtype: torch.dtype) -> Tensor:
        """The set's keep mask (B, H, n, bs, K) of 0 and 1; the same in the forward and the backward pass."""
        B, H, n, L, _ = query.shape
        assert self.dropout is not None
        return self.dropout.keep(B, H, place.rows(n, L, query.device), place.first_column, key.shape[-2], dtype)

    def _scores(self, query: Tensor, key: Tensor, visible: Tensor) -> Tensor:
        """Scaled scores (B, H, n, bs, K) in `_softmax_dtype`, -inf where a key is not visible."""
        scores = ((query * self.scaling) @ key.transpose(-1, -2)).to(_softmax_dtype(query))
        if not bool(visible.all()):
            scores.masked_fill_(~visible, float("-inf"))  # every row keeps its global keys
        return scores

    def forward(self, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, place: Placement
                ) -> tuple[Tensor, Tensor]:
        scores = self._scores(query, key, visible)
        # Clamped, a row that sees no key of this set gets exp(-inf) = 0 everywhere rather than NaN.
        peak = scores.amax(-1, keepdim=True).clamp_min_(torch.finfo(scores.dtype).min)
        weights = scores.sub_(peak).exp_()  # softmax numerators, the largest 1 in every row that sees a key
        total = weights.sum(-1, keepdim=True)
        lse = (peak + total.log()).squeeze(-1)  # -inf for a row that sees no key
        factor = 1 / total.clamp_min_(1)  # normalised on the (bs, D) output; an empty row's output stays 0
        if self.dropout is not None:
            weights.mul_(self._keep(query, key, place, weights.dtype))
            factor.mul_(self.dropout.scale)
        return (weights.to(value.dtype) @ value).mul_(factor.to(value.dtype)), lse

    def backward(self, grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, out: Tensor,
                 lse: Tensor, place: Placement) -> tuple[Tensor, Tensor, Tensor]:
        dtype = lse.dtype
        # The probabilities over all key sets of the rows: exp(score - merged lse).
        probs = self._scores(query, key, visible).sub_(lse.clamp_min(torch.finfo(dtype).min).unsqueeze(-1)).exp_()
        # rowsum(dP * P) == rowsum(dO * O), with or without dropout (FlashAttention-2's D_i).
        delta = (grad_out.to(dtype) * out.to(dtype)).sum(-1, keepdim=True)
        keep = None
        if self.dropout is not None:
            grad_out = grad_out * self.dropout.scale
            keep = self._keep(query, key, place, dtype)
        d_scores = (grad_out @ value.transpose(-1, -2)).to(dtype)  # dP, (B, H, n, bs, K)
        if keep is not None:
            d_scores.mul_(keep)
        # dS = P * (dP - D); a dropped pair still gets -P * D, through the normalisation of its row.
        d_scores = d_scores.sub_(delta).mul_(probs).to(query.dtype)
        if keep is not None:
            probs.mul_(keep)  # now the probabilities the forward pass multiplied V with
        grad_value = probs.to(grad_out.dtype).transpose(-1, -2) @ grad_out
        return ((d_scores @ key).mul_(self.scaling), (d_scores.transpose(-1, -2) @ query).mul_(self.scaling),
                grad_value)


class SdpaCore:
    """CUDA: torch's fused SDPA kernels, which take `dropout_p` there, through their aten ops so that the
    log-sum-exp comes back. A key set that every query sees whole runs the flash kernel in fp16/bf16; any other
    (a padding or sparse-validity mask, or fp32) runs the memory-efficient kernel with an additive mask.

    The kernels draw their masks from the CUDA generator (Philox): each call returns its RNG state, kept here per
    key set (`Placement`) until the backward pass hands it back. So the masks follow torch's semantics, not
    `lsg.dropout`'s: deterministic given the CUDA seed, but they depend on the chunking. (B, H, n) fold into the
    kernels' head dimension, which copies the strided local windows (cheap on a GPU).

    Unverified on hardware (no GPU was available): the tests run this class on CPU with stand-ins for the two
    CUDA ops that follow their documented contracts.
    """

    name = "sdpa_cuda"
    # (forward, backward) aten ops of each kernel; the tests swap in CPU stand-ins with the same contracts
    ops: dict[str, tuple[Any, Any]] = {
        "flash": (torch.ops.aten._scaled_dot_product_flash_attention,
                  torch.ops.aten._scaled_dot_product_flash_attention_backward),
        "efficient": (torch.ops.aten._scaled_dot_product_efficient_attention,
                      torch.ops.aten._scaled_dot_product_efficient_attention_backward),
    }
    LSE_ALIGN = 32  # the memory-efficient kernel pads its log-sum-exp rows to a multiple of this
    BIAS_ALIGN = 16  # ... and wants the rows of its additive mask aligned to this many elements

    def __init__(self, scaling: float, dropout: float) -> None:
        self.scaling, self.dropout = scaling, dropout
        self._saved: dict[Placement, tuple[Any, ...]] = {}  # per key set: what the kernel's backward needs again

    @staticmethod
    def kernel(dtype: torch.dtype, masked: bool) -> str:
        """Which fused kernel a key set runs: "flash" (no mask, half precision) or "efficient"."""
        return "flash" if dtype in (torch.float16, torch.bfloat16) and not masked else "efficient"

    def _fold(self, query: Tensor, key: Tensor, value: Tensor, visible: Tensor
              ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(B, H, n, L, D) -> (B, H*n, L, D) contiguous, and the additive mask (B, H*n, L, K) or None."""
        B, H, n, L, _ = query.shape
        K, rows = key.shape[-2], visible.shape[-2]  # rows: 1, or L for causal local keys
        q, k, v = (x.reshape(B, H * n, *x.shape[3:]).contiguous() for x in (query, key, value))
        visible = visible.expand(B, H, n, rows, K).reshape(B, H * n, rows, K)
        bias = _additive_mask(visible, query.dtype, columns=-(-K // self.BIAS_ALIGN) * self.BIAS_ALIGN)
        return q, k, v, None if bias is None else bias.expand(B, H * n, L, K)  # row stride: aligned or 0

    def forward(self, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, place: Placement
                ) -> tuple[Tensor, Tensor]:
        B, H, n, L, D = query.shape
        q, k, v, bias = self._fold(query, key, value, visible)
        kernel = self.kernel(query.dtype, bias is not None)
        if kernel == "flash":
            # (cumulative lengths, max lengths, RNG state, offset): passed back to the backward as returned
            out, lse, *saved, _ = self.ops[kernel][0](q, k, v, self.dropout, scale=self.scaling)
        else:
            out, lse, *saved = self.ops[kernel][0](q, k, v, bias, True, self.dropout, scale=self.scaling)
        self._saved[place] = tuple(saved)
        # A row that sees no key of this set: finite output (its lse is replaced by -inf in `_merge`).
        return out.nan_to_num_(0.0).reshape(B, H, n, L, D), lse[..., :L].reshape(B, H, n, L)

    def backward(self, grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, out: Tensor,
                 lse: Tensor, place: Placement) -> tuple[Tensor, Tensor, Tensor]:
        B, H, n, L, D = query.shape
        q, k, v, bias = self._fold(query, key, value, visible)
        grad, o = (x.reshape(B, H * n, L, D).contiguous() for x in (grad_out, out))
        lse = lse.reshape(B, H * n, L).contiguous()
        saved = self._saved[place]  # kept: a retained graph may run its backward again
        kernel = self.kernel(query.dtype, bias is not None)
        if kernel == "flash":
            cum_q, cum_k, max_q, max_k, seed, offset = saved
            grads = self.ops[kernel][1](grad, q, k, v, o, lse, cum_q, cum_k, max_q, max_k, self.dropout, False,
                                        seed, offset, scale=self.scaling)
        else:
            seed, offset = saved
            rows = -(-L // self.LSE_ALIGN) * self.LSE_ALIGN
            lse = torch.nn.functional.pad(lse, (0, rows - L))
            grads = self.ops[kernel][1](grad, q, k, v, bias, o, lse, seed, offset, self.dropout,
                                        [True, True, True, False], scale=self.scaling)[:3]
        return tuple(g.reshape(B, H, n, *g.shape[2:]) for g in grads)  # the kernels' layouts may be transposed


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


def _scatter_picked_grads(grad: Tensor, keys: BlockKeys, into: Tensor) -> None:
    """Add the gradient of the padded sparse keys (or values) `grad` (B, H, S + 2*margin, D) into `into`
    (B, H, G+T', D) at the tokens the selector picked (`BlockKeys.sparse_index`): the adjoint of the pick and
    the padding, without autograd's full-size zero buffers for the gather and the slice of the globals."""
    G, margin = keys.settings.num_global_tokens, sparse_margin(keys.settings)
    index = keys.sparse_index
    picked = grad[:, :, margin : margin + index.shape[-1]]
    into[:, :, G:].scatter_add_(2, index.unsqueeze(-1).expand_as(picked), picked)


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
    place: Placement
    remote: bool


def _key_sets(keys: BlockKeys, start: int, stop: int) -> list[_KeySet]:
    """The keys of blocks [start, stop) as two sets attended separately: the local windows stay strided views of
    the keys, so only the remote keys are copied."""
    visible, width = keys.visible[:, :, start:stop], keys.remote_width
    first_row = keys.settings.num_global_tokens + start * keys.settings.block_size
    return [
        _KeySet(*keys.remote(start, stop), keys.row_visible(visible[..., :width], local=False),
                Placement(first_row, 0), True),
        _KeySet(*keys.local(start, stop), keys.row_visible(visible[..., width:], local=True),
                Placement(first_row, width), False),
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

    The global queries are one more chunk whose window is the whole sequence. The sparse
    selection runs inside the function, so its keys and values are not kept for the backward pass: it selects
    them again there, from the same RNG and autocast state. Their gradients go back to the tokens a picking
    selector chose (stride, block_stride, norm) by one scatter, and through a mixing one with autograd.
    """

    @staticmethod
    def forward(ctx: Any, query: Tensor, key: Tensor, value: Tensor, layout: KeyLayout, core: ChunkCore) -> Tensor:
        selection = _SelectionState.capture(query.device)
        keys = layout.block_keys(query, key, value)
        B, H, _, D = query.shape
        G, bs, N = layout.settings.num_global_tokens, layout.settings.block_size, keys.blocks
        out = torch.empty_like(query)
        out_global, lse_global = core.forward(query[:, :, None, :G], key[:, :, None], value[:, :, None],
                                              keys.all_valid[:, None, None, None], Placement(0, 0))
        out[:, :, :G] = out_global[:, :, 0]
        lse = query.new_empty(B, H, N, bs, dtype=_softmax_dtype(query))
        ranges = chunk_ranges(N, B * H * keys.visible.shape[-1] * D)
        blocks_q, blocks_out = keys.token_blocks(query), keys.token_blocks(out)  # (B, H, N, bs, D) views
        for start, stop in ranges:
            sets = _key_sets(keys, start, stop)
            parts = [core.forward(blocks_q[:, :, start:stop], s.key, s.value, s.visible, s.place) for s in sets]
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
            keys.all_valid[:, None, None, None], out[:, :, None, :G], lse_global, Placement(0, 0)))
        blocks = [keys.token_blocks(x) for x in (grad_out, query, out, grad_q)]  # (B, H, N, bs, D) views
        for start, stop in ctx.ranges:
            rows = slice(start, stop)
            for s in _key_sets(keys, start, stop):  # the remote set first: it writes dq
                dq, dk, dv = core.backward(blocks[0][:, :, rows], blocks[1][:, :, rows], s.key, s.value, s.visible,
                                           blocks[2][:, :, rows], lse[:, :, rows], s.place)
                if s.remote:
                    blocks[3][:, :, rows] = dq
                    _scatter_remote_grads(dk, keys, grad_k, grad_sk, start, stop)
                    _scatter_remote_grads(dv, keys, grad_v, grad_sv, start, stop)
                else:
                    blocks[3][:, :, rows].add_(dq)
                    _scatter_local_grads(dk, keys, grad_k, start, stop)
                    _scatter_local_grads(dv, keys, grad_v, start, stop)
        if keys.sparse_index is not None:  # picked tokens: their gradients go straight back to them
            _scatter_picked_grads(grad_sk, keys, grad_k)
            _scatter_picked_grads(grad_sv, keys, grad_v)
        elif keys.sparse_key is not None:  # through the selector, into whichever of q, k, v it read
            through = torch.autograd.grad((keys.sparse_key, keys.sparse_value), sources, (grad_sk, grad_sv),
                                          allow_unused=True)
            for total, part in zip((grad_q, grad_k, grad_v), through, strict=True):
                if part is not None:
                    total += part
        return grad_q, grad_k, grad_v, None, None


def core_name(device: torch.device, dropout: float) -> str:
    """The chunk core `fast_attention` runs by default: "flash_cpu" (CPU, no dropout), "sdpa_cuda" (CUDA, with
    or without dropout) or "matmul" (CPU with dropout, and every other device)."""
    if device.type == "cuda":
        return "sdpa_cuda"
    return "flash_cpu" if device.type == "cpu" and not dropout else "matmul"


def default_core(device: torch.device, scaling: float, dropout: float) -> ChunkCore:
    """A fresh core of `core_name`'s kind. Dropout seeds are drawn from the global CPU RNG (the matmul core) or
    the CUDA generator (the SDPA kernels), so the trainer's seed governs the masks."""
    name = core_name(device, dropout)
    if name == "flash_cpu":
        return FlashCore(scaling)
    if name == "sdpa_cuda":
        return SdpaCore(scaling, dropout)
    return MatmulCore(scaling, CounterDropout(dropout, int(torch.randint(2**62, ()))) if dropout else None)


def fast_attention(query: Tensor, key: Tensor, value: Tensor, layout: KeyLayout, dropout: float, *,
                   core: ChunkCore | None = None) -> Tensor:
    """Kernel of "lsg_fast": query/key/value (B, H, G+T', D) -> (B, H, G+T', D).

    `core` defaults to `default_core` for the device and dropout.
    """
    core = core or default_core(query.device, layout.scaling, dropout)
    return _BlockedAttention.apply(query, key, value, layout, core)


lsg_fast_attention = block_variant(
    fast_attention, "lsg_fast_attention", "LSG attention with the chunked, recomputing kernel of `lsg.fast`."
)
