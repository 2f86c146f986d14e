"""Every attention variant by name: the one module that registers them.

`ATTENTION_VARIANTS` maps each name to its function (the `lsg.attention.AttentionVariant` signature) and hands
every entry on to `lsg.hf.register_with_transformers`, so the same name works as `attn_implementation=` in
transformers. The kernels themselves (`lsg.attention`, `lsg.fast`, `lsg.flex`, `lsg.reference`,
`lsg.invariants`, `lsg.baselines`) are plain functions that know nothing of names.

Importing this module (`import lsg` does) registers the LSG variants:

| name | function | what |
| --- | --- | --- |
| "lsg" | `lsg_attention` | default of converted models: "lsg_flex" on CUDA without dropout, else "lsg_fast" |
| "lsg_fast" | `lsg.fast` | chunked flash-style kernel, memory linear in the length (CPU; CUDA with dropout) |
| "lsg_flex" | `lsg.flex` | compiled flex_attention with a block mask (CUDA) |
| "lsg_blocked" | `lsg.attention` | the plain kernel, every block's keys gathered at once: the tested baseline |
| "lsg_reference" | `lsg.reference` | dense float64 reference, for checking |
| "lsg_tokens_only" | `lsg.invariants` | dense over the real tokens, globals hidden (invariant I3) |
| "lsg_causal_dense" | `lsg.blockwise` | ordinary causal attention, for decoders (no global tokens) |
| "lsg_blockwise_causal" | `lsg.blockwise` | LEX's blockwise causal attention, block = `block_size` (no global tokens) |

The paper's Table-1 comparison attentions (`lsg.baselines`) are opt-in: `register_table1_variants`, which
importing `lsg.baselines` calls, registers them under the prefix "table1_" ("table1_full", "table1_local", ...),
so that no generic name such as "full" enters transformers' process-wide attention interface.

`describe_kernel` names the kernel (and `lsg_fast`'s core) "lsg" runs for a device, dtype and dropout; "lsg" logs
that line once per combination (logger "lsg", INFO).
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from lsg.attention import AttentionVariant, lsg_blocked_attention
from lsg.blockwise import blockwise_causal_attention, causal_dense_attention
from lsg.fast import SdpaCore, core_name, lsg_fast_attention
from lsg.flex import lsg_flex_attention
from lsg.hf import register_with_transformers
from lsg.invariants import TOKENS_ONLY, tokens_only_attention
from lsg.reference import reference_lsg_attention
from lsg.registry import Registry
from lsg.settings import LSGSettings

logger = logging.getLogger("lsg")

ATTENTION_VARIANTS: Registry[AttentionVariant] = Registry("attention variant", on_add=register_with_transformers)

# Prefix of the Table-1 attentions' registered names. transformers 5.23 treats a name as special when it holds
# "/" (a hub kernel), "flash", "sdpa" or "flex_attention", or starts with "paged|": this one does none of that.
TABLE1_PREFIX = "table1_"


def default_variant_name(query: Tensor, dropout: float, training: bool) -> str:
    """The variant "lsg" runs: compiled flex_attention on CUDA without dropout (it has none, and no CPU
    backward), the chunked kernel `lsg_fast` everywhere else."""
    return _variant_name(query.is_cuda, dropout if training else 0.0)


def _variant_name(cuda: bool, dropout: float) -> str:
    return "lsg_flex" if cuda and not dropout else "lsg_fast"


_CORES = {
    "flash_cpu": "torch's fused CPU flash-attention kernels",
    "matmul": "batched matmuls, fp32 softmax, counter-based dropout masks of lsg.dropout",
    "sdpa_cuda": "torch's CUDA SDPA kernels, which take dropout_p",
}


def describe_kernel(device: torch.device | str, dtype: torch.dtype, dropout: float, training: bool) -> str:
    """What "lsg" runs on `device` for inputs of `dtype`, as one line (the table of docs/performance.md), e.g.
    "lsg_fast, core matmul (batched matmuls, ...)". "lsg" logs it (logger "lsg", level INFO) the first time
    each combination runs in a process."""
    device = torch.device(device)
    dropout = dropout if training else 0.0
    if _variant_name(device.type == "cuda", dropout) == "lsg_flex":
        return "lsg_flex (compiled flex_attention, no dropout)"
    core = core_name(device, dropout)
    description = f"lsg_fast, core {core} ({_CORES[core]})"
    if core == "sdpa_cuda":
        if SdpaCore.kernel(dtype, masked=False) == "flash":
            return description + ": flash for key sets without a mask, memory-efficient for the others"
        return description + ": memory-efficient"
    return description


@functools.cache
def _log_kernel(device: torch.device, dtype: torch.dtype, dropout: float) -> None:
    logger.info("lsg attention on %s, %s, dropout %g: %s", device, str(dtype).removeprefix("torch."), dropout,
                describe_kernel(device, dtype, dropout, training=True))


def lsg_attention(
    query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
    scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0, causal: bool = False,
) -> Tensor:
    """LSG attention for one layer on the fastest correct path for the device (see `default_variant_name`).

    This is the default `attn_implementation` of converted models. Shapes as `AttentionVariant`.
    """
    _log_kernel(query.device, query.dtype, dropout if training else 0.0)
    variant = ATTENTION_VARIANTS.get(default_variant_name(query, dropout, training))
    return variant(query, key, value, token_valid, settings, scaling=scaling, dropout=dropout, training=training,
                   layer_index=layer_index, causal=causal)


ATTENTION_VARIANTS.register("lsg")(lsg_attention)
ATTENTION_VARIANTS.register("lsg_fast")(lsg_fast_attention)
ATTENTION_VARIANTS.register("lsg_flex")(lsg_flex_attention)
ATTENTION_VARIANTS.register("lsg_blocked")(lsg_blocked_attention)
ATTENTION_VARIANTS.register("lsg_reference")(reference_lsg_attention)
ATTENTION_VARIANTS.register(TOKENS_ONLY)(tokens_only_attention)
ATTENTION_VARIANTS.register("lsg_causal_dense")(causal_dense_attention)
ATTENTION_VARIANTS.register("lsg_blockwise_causal")(blockwise_causal_attention)


def register_table1_variants() -> tuple[str, ...]:
    """Register the Table-1 attentions with their default parameters as "table1_<name>" (again: nothing happens).

    Returns:
        Their names without the prefix, in the paper's row order: what `lsg.baselines.swap_attention` takes.
    """
    # Imported here rather than at the top: the baselines are built on the core modules and stay opt-in.
    from lsg.baselines.attentions import (
        LinformerAttention,
        LocalAttention,
        PerformerAttention,
        efficient_attention,
        full_attention,
        linear_attention,
    )
    from lsg.baselines.reformer import ReformerAttention

    table: dict[str, AttentionVariant] = {
        "full": full_attention,
        "linear": linear_attention,
        "efficient": efficient_attention,
        "performer": PerformerAttention(),
        "linformer": LinformerAttention(),
        "reformer": ReformerAttention(),
        "local": LocalAttention(),
    }
    for name, variant in table.items():
        if TABLE1_PREFIX + name not in ATTENTION_VARIANTS:  # a fresh PerformerAttention() is another object
            ATTENTION_VARIANTS.register(TABLE1_PREFIX + name)(variant)
    return tuple(table)
