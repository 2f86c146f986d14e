"""The fast blocked LSG kernel ("lsg_fast", the CPU path of "lsg"): flash-style, memory linear in the length.

Same layout and numbers as the plain kernel (`lsg.attention.gathered_attention`), computed
differently. The plain kernel gathers the keys and values of all N blocks at once, (B, H, N, K, D) each
(about 5x the K tensor at the defaults, spec §4), and autograd keeps them for the backward pass. Here a
custom autograd function walks over chunks of a few blocks (sized by `GATHER_BUDGET`, a handful per
sequence, never one block at a time). For each chunk it gathers the K keys of its blocks (globals, sparse
windows and local windows together) and makes one fused attention call; it keeps only the output and the
row log-sum-exp, and gathers the chunk again in the backward pass, as FlashAttention recomputes its scores.
The gradients of the gathered keys are added back into their sources (`_scatter_block_grads`). The sparse
keys and values are not kept either: the backward pass runs the selector again, so the step holds no more
activations than full attention with SDPA (`make bench` measures both).

Two interchangeable cores do a chunk's attention:

* `FlashCore` (CPU, no dropout): torch's fused flash-attention CPU kernels, forward and backward, called
  directly so the log-sum-exp can be kept. Fastest on CPU; they do not support dropout.
* `MatmulCore` (any device, dropout): one batched matmul for the scores, an fp32 softmax and one for the
  output. Dropout masks come from a generator reseeded per chunk, so the backward pass draws them again and
  training with `attention_probs_dropout_prob > 0` keeps the same memory profile.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from lsg.attention import ATTENTION_VARIANTS, BlockKeys, KeyLayout, block_variant, sparse_window_index

# Gathered key elements per chunk: 2**21 fp32 elements (8 MiB; 4 blocks of RoBERTa-base at the defaults, so 8
# chunks at 4096 tokens). A chunk's backward holds about eight chunk-sized temporaries (gathered K/V, their
# gradients, the fused kernel's own gradient buffers). With 2**22 they were the step's memory peak at 4096 tokens
# (2 RoBERTa-base layers, +18 MiB over the peak of the dense layers' backward); with 2**21 they stay under it, in
# the same time at 4096 and 16384 (2 cores, torch 2.13; the fused CPU kernels cost ~30 ms per call, so much
# smaller chunks would be slower). The temporaries of a chunk stay a fixed size, so memory stays linear in the
# length.
GATHER_BUDGET = 2**21


def chunk_ranges(blocks: int, elements_per_block: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) ranges of blocks with about `GATHER_BUDGET` gathered key elements each.

    `elements_per_block` is B * H * K * D, the size of one block's gathered keys.
    """
    step = max(1, GATHER_BUDGET // max(1, elements_per_block))
    return [(start, min(blocks, start + step)) for start in range(0, blocks, step)]


def _softmax_dtype(x: Tensor) -> torch.dtype:
    """Softmax statistics run in fp32 at least: half-precision exp/sum lose too much (spec D5)."""
    return torch.promote_types(x.dtype, torch.float32)


class ChunkCore(Protocol):
    """Attention of one chunk of n blocks. query/grad_out/out (B, H, n, bs, D), key/value (B, H, n, K, D),
    visible (B, 1|H, n, K) bool, lse (B, H, n, bs) in `_softmax_dtype`. `chunk` numbers the chunk (dropout)."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, chunk: int
                ) -> tuple[Tensor, Tensor]: ...

    def backward(self, grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, out: Tensor,
                 lse: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]: ...


def _fold_heads(x: Tensor) -> Tensor:
    """(B, H, n, L, D) -> (B, H*n, L, D): the fused kernels take 4-D inputs."""
    return x.reshape(x.shape[0], -1, *x.shape[3:])


class FlashCore:
    """torch's fused flash-attention CPU kernels (`aten._scaled_dot_product_flash_attention_for_cpu`)."""

    def __init__(self, scaling: float) -> None:
        self.scaling = scaling

    def _bias(self, visible: Tensor, heads: int, dtype: torch.dtype) -> Tensor | None:
        # No mask when every key is visible (inside unpadded documents), which the kernel runs faster. Else an
        # additive mask (B, H*n, 1, K); -inf is safe since every row sees a global key.
        if bool(visible.all()):
            return None
        bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))
        B, _, n, K = visible.shape
        return bias.expand(B, heads, n, K).reshape(B, heads * n, 1, K)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, chunk: int
                ) -> tuple[Tensor, Tensor]:
        B, H, n, bs, D = query.shape
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            _fold_heads(query), _fold_heads(key), _fold_heads(value),
            attn_mask=self._bias(visible, H, query.dtype), scale=self.scaling,
        )
        return out.view(B, H, n, bs, D), lse.view(B, H, n, bs)

    def backward(self, grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, out: Tensor,
                 lse: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
        B, H, n, bs, D = query.shape
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            _fold_heads(grad_out), _fold_heads(query), _fold_heads(key), _fold_heads(value), _fold_heads(out),
            lse.reshape(B, H * n, bs), 0.0, False, attn_mask=self._bias(visible, H, query.dtype), scale=self.scaling,
        )
        return tuple(g.view(B, H, n, -1, D) for g in grads)


class MatmulCore:
    """Batched matmuls and an explicit fp32 softmax; supports dropout on any device."""

    def __init__(self, scaling: float, dropout: float, seed: int) -> None:
        self.scaling, self.dropout, self.seed = scaling, dropout, seed

    def _probabilities(self, query: Tensor, key: Tensor, visible: Tensor, lse: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
        """Softmax (B, H, n, bs, K) and its log-sum-exp; pass `lse` to recompute the same probabilities."""
        scores = (query @ key.transpose(-1, -2)).to(_softmax_dtype(query)).mul_(self.scaling)
        scores.masked_fill_(~visible.unsqueeze(-2), float("-inf"))  # every row keeps its global keys
        if lse is None:
            lse = torch.logsumexp(scores, dim=-1)
        return scores.sub_(lse.unsqueeze(-1)).exp_(), lse

    def _keep(self, shape: torch.Size, chunk: int, device: torch.device) -> Tensor:
        """Dropout keep-mask of one chunk, scaled by 1/(1-p); drawn identically again in the backward pass."""
        generator = torch.Generator(device=device).manual_seed(self.seed + chunk)
        return (torch.rand(shape, generator=generator, device=device) >= self.dropout) / (1 - self.dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, chunk: int
                ) -> tuple[Tensor, Tensor]:
        probs, lse = self._probabilities(query, key, visible)
        if self.dropout:
            probs *= self._keep(probs.shape, chunk, probs.device)
        return probs.to(value.dtype) @ value, lse

    def backward(self, grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, visible: Tensor, out: Tensor,
                 lse: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
        dtype = lse.dtype
        probs, _ = self._probabilities(query, key, visible, lse)
        d_probs = (grad_out @ value.transpose(-1, -2)).to(dtype)  # (B, H, n, bs, K)
        dropped = probs  # the probabilities the forward pass multiplied V with
        if self.dropout:
            keep = self._keep(probs.shape, chunk, probs.device)
            d_probs *= keep
            dropped = probs * keep
        grad_value = dropped.to(grad_out.dtype).transpose(-1, -2) @ grad_out
        # rowsum(dP * P) == rowsum(dO * O), with or without dropout (FlashAttention-2's D_i).
        delta = (grad_out.to(dtype) * out.to(dtype)).sum(-1, keepdim=True)
        d_scores = d_probs.sub_(delta).mul_(probs).mul_(self.scaling).to(query.dtype)
        return d_scores @ key, d_scores.transpose(-1, -2) @ query, grad_value


def _scatter_block_grads(grad: Tensor, keys: BlockKeys, into: Tensor, into_sparse: Tensor | None, start: int,
                         stop: int) -> None:
    """Add the gradient of the gathered keys (or values) of token blocks [start, stop), (B, H, n, K, D), back
    into the gradients of their sources, `into` (B, H, G+T', D) and the padded sparse `into_sparse`: the
    adjoint of `BlockKeys.gather`."""
    settings = keys.settings
    G, bs, N = settings.num_global_tokens, settings.block_size, keys.blocks
    into[:, :, :G].add_(grad[:, :, :, :G].sum(2))  # add_ on the view: `x[i] += y` would copy x[i] back into x
    if into_sparse is not None:
        width = 2 * settings.sparse_block_size
        index = sparse_window_index(N, settings, grad.device)[start:stop].flatten()
        into_sparse.index_add_(2, index, grad[:, :, :, G : G + width].flatten(2, 3))
        G += width
    blocks = keys.token_blocks(into)  # (B, H, N, bs, D) view
    for offset in range(3):  # block j's window holds blocks j-1, j, j+1: a loop over offsets, not blocks
        low, high = max(start, 1 - offset), min(stop, N + 1 - offset)  # blocks j whose j-1+offset exists
        if low < high:
            columns = slice(G + offset * bs, G + (offset + 1) * bs)
            blocks[:, :, low - 1 + offset : high - 1 + offset].add_(grad[:, :, low - start : high - start, columns])


@dataclass(frozen=True)
class _RngState:
    """The RNG state a sparse selection starts from, so the backward pass selects the same tokens again
    (LSH draws its hyperplanes from the global RNG in training)."""

    device: torch.device
    state: Tensor

    @classmethod
    def capture(cls, device: torch.device) -> _RngState:
        state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
        return cls(device, state)

    @contextmanager
    def restored(self) -> Iterator[None]:
        """Run the block from the captured state, leaving the RNG as it was afterwards."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            if cuda:
                torch.cuda.set_rng_state(self.state, self.device)
            else:
                torch.set_rng_state(self.state)
            yield


class _BlockedAttention(torch.autograd.Function):
    """LSG attention of all queries over their `BlockKeys`, chunk by chunk, with recomputation (module docstring).

    The global queries are one more chunk whose window is the whole sequence; chunk ids (0 for the globals,
    1.. for token chunks) number the dropout masks. The sparse selection runs inside the function, so its keys
    and values are not kept for the backward pass: it selects them again there, from the same RNG state, and
    sends their gradients back through the selector with autograd.
    """

    @staticmethod
    def forward(ctx: Any, query: Tensor, key: Tensor, value: Tensor, layout: KeyLayout, core: ChunkCore) -> Tensor:
        rng = _RngState.capture(query.device)
        keys = layout.block_keys(query, key, value)
        B, H, _, D = query.shape
        G, bs, N = layout.settings.num_global_tokens, layout.settings.block_size, keys.blocks
        out = torch.empty_like(query)
        out_global, lse_global = core.forward(query[:, :, None, :G], key[:, :, None], value[:, :, None],
                                              keys.all_valid[:, None, None], 0)
        out[:, :, :G] = out_global[:, :, 0]
        lse = query.new_empty(B, H, N, bs, dtype=_softmax_dtype(query))
        ranges = chunk_ranges(N, B * H * keys.visible.shape[-1] * D)
        blocks_q, blocks_out = keys.token_blocks(query), keys.token_blocks(out)  # (B, H, N, bs, D) views
        for chunk, (start, stop) in enumerate(ranges, start=1):
            chunk_key, chunk_value = keys.gather(start, stop)  # (B, H, n, K, D)
            blocks_out[:, :, start:stop], lse[:, :, start:stop] = core.forward(
                blocks_q[:, :, start:stop], chunk_key, chunk_value, keys.visible[:, :, start:stop], chunk
            )
        ctx.save_for_backward(query, key, value, out, lse, lse_global)
        ctx.layout, ctx.core, ctx.ranges, ctx.rng = layout, core, ranges, rng
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        query, key, value, out, lse, lse_global = ctx.saved_tensors
        sources = tuple(x.detach().requires_grad_() for x in (query, key, value))
        with torch.enable_grad(), ctx.rng.restored():
            keys = ctx.layout.block_keys(*sources)
        query, key, value = sources
        G, core = ctx.layout.settings.num_global_tokens, ctx.core
        grad_q = torch.empty_like(query)
        grad_sk, grad_sv = (None if x is None else torch.zeros_like(x) for x in (keys.sparse_key, keys.sparse_value))
        # The global queries' backward yields full-size key/value gradients: the token chunks add into them.
        grad_q[:, :, :G], grad_k, grad_v = (g[:, :, 0] for g in core.backward(
            grad_out[:, :, None, :G], query[:, :, None, :G], key[:, :, None], value[:, :, None],
            keys.all_valid[:, None, None], out[:, :, None, :G], lse_global, 0))
        blocks = [keys.token_blocks(x) for x in (grad_out, query, out, grad_q)]  # (B, H, N, bs, D) views
        for chunk, (start, stop) in enumerate(ctx.ranges, start=1):
            chunk_key, chunk_value = keys.gather(start, stop)  # (B, H, n, K, D)
            rows = slice(start, stop)
            blocks[3][:, :, rows], dk, dv = core.backward(
                blocks[0][:, :, rows], blocks[1][:, :, rows], chunk_key, chunk_value, keys.visible[:, :, rows],
                blocks[2][:, :, rows], lse[:, :, rows], chunk,
            )
            _scatter_block_grads(dk, keys, grad_k, grad_sk, start, stop)
            _scatter_block_grads(dv, keys, grad_v, grad_sv, start, stop)
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


lsg_fast_attention = ATTENTION_VARIANTS.register("lsg_fast")(block_variant(
    fast_attention, "lsg_fast_attention", "LSG attention with the chunked, recomputing kernel of `lsg.fast`."
))
