"""Every attention variant by name: the one module that registers them.

`ATTENTION_VARIANTS` maps each name to its function (the `lsg.attention.AttentionVariant` signature) and hands
every entry on to `lsg.hf.register_with_transformers`, so the same name works as `attn_implementation=` in
transformers. The kernels themselves (`lsg.attention`, `lsg.fast`, `lsg.flex`, `lsg.reference`,
`lsg.invariants`, `lsg.baselines`) are plain functions that know nothing of names.

Importing this module (`import lsg` does) registers the LSG variants:

| name | function | what |
| --- | --- | --- |
| "lsg" | `lsg_attention` | default of converted models: "lsg_flex" on CUDA without dropout, else "lsg_fast" |
| "lsg_fast" | `lsg.fast` | chunked flash-style kernel, memory linear in the length (CPU, dropout) |
| "lsg_flex" | `lsg.flex` | compiled flex_attention with a block mask (CUDA) |
| "lsg_blocked" | `lsg.attention` | the plain kernel, every block's keys gathered at once: the tested baseline |
| "lsg_reference" | `lsg.reference` | dense float64 reference, for checking |
| "lsg_tokens_only" | `lsg.invariants` | dense over the real tokens, globals hidden (invariant I3) |
| "lsg_causal_dense" | `lsg.blockwise` | ordinary causal attention, for decoders (no global tokens) |
| "lsg_blockwise_causal" | `lsg.blockwise` | LEX's blockwise causal attention, block = `block_size` (no global tokens) |

The paper's Table-1 comparison attentions (`lsg.baselines`) are opt-in: `register_table1_variants`, which
importing `lsg.baselines` calls, registers them under the prefix "table1_" ("table1_full", "table1_local", ...),
so that no generic name such as "full" enters transformers' process-wide attention interface.
"""

from __future__ import annotations

from torch import Tensor

from lsg.attention import AttentionVariant, lsg_blocked_attention
from lsg.blockwise import blockwise_causal_attention, causal_dense_attention
from lsg.fast import lsg_fast_attention
from lsg.flex import lsg_flex_attention
from lsg.hf import register_with_transformers
from lsg.invariants import TOKENS_ONLY, tokens_only_attention
from lsg.reference import reference_lsg_attention
from lsg.registry import Registry
from lsg.settings import LSGSettings

ATTENTION_VARIANTS: Registry[AttentionVariant] = Registry("attention variant", on_add=register_with_transformers)

# Prefix of the Table-1 attentions' registered names. transformers 5.23 treats a name as special when it holds
# "/" (a hub kernel), "flash", "sdpa" or "flex_attention", or starts with "paged|": this one does none of that.
TABLE1_PREFIX = "table1_"


def default_variant_name(query: Tensor, dropout: float, training: bool) -> str:
    """The variant "lsg" runs: compiled flex_attention on CUDA (it has no dropout and no CPU backward),
    the memory-efficient blocked kernel everywhere else."""
    if query.is_cuda and not (training and dropout > 0):
        return "lsg_flex"
    return "lsg_fast"


def lsg_attention(
    query: Tensor, key: Tensor, value: Tensor, token_valid: Tensor, settings: LSGSettings, *,
    scaling: float, dropout: float = 0.0, training: bool = False, layer_index: int = 0, causal: bool = False,
) -> Tensor:
    """LSG attention for one layer on the fastest correct path for the device (see `default_variant_name`).

    This is the default `attn_implementation` of converted models. Shapes as `AttentionVariant`.
    """
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
