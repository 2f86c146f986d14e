"""The only module that touches transformers internals (docs/design.md §3.8).

* Every attention variant of `lsg.variants.ATTENTION_VARIANTS` is registered by name in
  `AttentionInterface` (`register_with_transformers`), together with a mask function in
  `AttentionMaskInterface` (without it, transformers silently drops the padding mask for custom
  implementations). The mask function hands
  the (B, T) padding mask through unchanged for bidirectional attention, so no T x T mask is built.
* Calls from modules LSG does not own (no `lsg_layer_index` stamp: decoder self-attention,
  cross-attention, the "full" layers of a MASFormer plan) go to transformers' SDPA unchanged, after
  left-padding a 2-D mask to the key length; that padding is exactly "the encoder mask extended with G
  ones" for cross-attention. Causal modules (`module.is_causal`) get the causal mask built from it.
* Decoder-only families (`Family.causal_lm`: GPT-2, Llama) run causal LSG; their G global tokens are
  a learned key/value prefix of every LSG layer (`lsg_global_keys`/`lsg_global_values` on the attention
  module), attended by every token and attending to nothing (design §3.7). A KV cache then holds the
  tokens only; a decoding step's few queries are placed at the end of the cached length.
* Where the global rows join and leave the hidden states is a per-family table (`lsg.families`):
  after the embeddings (BERT-like), after `layernorm_embedding` (BART, mBART), before the first
  encoder layer (Pegasus); ModernBERT also shifts its rotary position ids by G.
* Global tokens are added by forward hooks rather than copied modeling code: one on the embeddings
  (append the G global rows after LayerNorm/dropout, which act per token), one on the encoder
  (pool into the first token, drop the globals) and one on the base model (drop the globals from
  `hidden_states`). Hooks get their state through `functools.partial`, which `copy.deepcopy` copies
  along with the model (a closure would keep pointing at the original model).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import (
    AttentionMaskInterface,
    bidirectional_mask_function,
    causal_mask_function,
    sdpa_mask,
)
from transformers.utils import ModelOutput

from lsg.attention import AttentionVariant
from lsg.families import Family, family_of
from lsg.layout import uses_short_rule
from lsg.plans import is_full_layer, layer_plan
from lsg.settings import LSG_MARKER, MAX_GLOBAL_TOKENS, LSGSettings

logger = logging.getLogger(__name__)
_warn_once = functools.cache(logger.warning)  # once per message, not once per layer and step


def lsg_mask(*, attention_mask: Tensor | None = None, mask_function: Any = None, **kwargs: Any) -> Tensor | None:
    """Mask function registered next to every LSG variant: 2-D padding masks pass through untouched.

    Also for plain causal masks: LSG's causal kernels take the padding mask, and `_dense_attention` builds the
    causal mask of the modules LSG does not own. Other mask functions (packed sequences) get transformers' mask.
    """
    if mask_function is bidirectional_mask_function or mask_function is causal_mask_function:
        return attention_mask
    return sdpa_mask(attention_mask=attention_mask, mask_function=mask_function, **kwargs)


def _left_pad_mask(mask: Tensor, length: int) -> Tensor:
    """Extend a (B, T) mask with valid entries in front up to `length` keys (the G global tokens)."""
    return F.pad(mask.bool(), (length - mask.shape[-1], 0), value=True)


def _causal_band(queries: int, keys: int, device: torch.device) -> Tensor:
    """(queries, keys) bool: the queries are the last `queries` of `keys` positions and see no later key."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)


def _dense_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                     **kwargs: Any) -> tuple[Tensor, None]:
    causal = getattr(module, "is_causal", False) and not getattr(module, "lsg_cross_attention", False)
    queries, keys = query.shape[-2], key.shape[-2]
    if attention_mask is not None and attention_mask.dim() == 2:
        if getattr(module, "lsg_cross_attention", False) and module.config.mask_first_token:
            # The authors' encoder zeroes the first source token in the caller's mask, which hides it from
            # cross-attention too (design §3.6); reproduced explicitly, on a copy (D11).
            attention_mask = attention_mask.bool().clone()
            attention_mask[:, 0] = False
        attention_mask = _left_pad_mask(attention_mask, keys)[:, None, None, :]
        if causal:
            attention_mask = attention_mask & _causal_band(queries, keys, query.device)
            # A left-padding query that sees no key would give NaN; its output is never used.
            attention_mask = attention_mask | ~attention_mask.any(-1, keepdim=True)
    elif attention_mask is None and causal and 1 < queries < keys:  # SDPA's own is_causal aligns top-left
        attention_mask = _causal_band(queries, keys, query.device)[None, None]
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _token_validity(attention_mask: Tensor | None, batch: int, tokens: int, device: torch.device) -> Tensor:
    if attention_mask is None:
        return torch.ones(batch, tokens, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2:
        raise ValueError(
            f"LSG attention takes a 2-D (batch, length) padding mask; got shape {tuple(attention_mask.shape)}. "
            "Pass the tokenizer's attention_mask, not a prepared 4-D mask."
        )
    if attention_mask.shape[-1] < tokens:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions but the input has {tokens}")
    return attention_mask[:, -tokens:].bool()


def _interface_for(variant_name: str, variant: AttentionVariant) -> Callable[..., tuple[Tensor, None]]:
    """The transformers attention function running `variant` on the modules LSG owns."""

    def attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                          attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs: Any) -> tuple[Tensor, None]:
        layer_index = getattr(module, "lsg_layer_index", None)
        if layer_index is None:  # decoder self-attention, cross-attention: not LSG's
            return _dense_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    **kwargs)
        if kwargs.get("output_attentions"):
            _warn_once("LSG attention does not return attention weights; `attentions` will be empty")
        settings = LSGSettings.from_object(module.config)
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        if getattr(module, "lsg_global_keys", None) is not None:
            output = _causal_prefix_attention(variant, module, query, key, value, attention_mask, settings,
                                              scaling=scaling, dropout=dropout, layer_index=layer_index)
            return output.transpose(1, 2).contiguous(), None
        # A plain model running a registered variant (lsg.baselines.swap_attention) has no global rows.
        is_lsg = getattr(module.config, "base_model_prefix", None) == LSG_MARKER
        tokens = key.shape[-2] - (settings.num_global_tokens if is_lsg else 0)
        valid = _token_validity(attention_mask, key.shape[0], tokens, key.device)
        output = variant(query, key, value, valid, settings, scaling=scaling, dropout=dropout,
                         training=module.training, layer_index=layer_index)
        return output.transpose(1, 2).contiguous(), None

    attention_forward.__name__ = f"{variant_name}_attention_forward"
    return attention_forward


def _causal_prefix_attention(variant: AttentionVariant, module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                              attention_mask: Tensor | None, settings: LSGSettings, *, scaling: float, dropout: float,
                              layer_index: int) -> Tensor:
    """Causal LSG of a decoder-only layer: (B, H, q, D) queries over (B, H_kv, T, D) keys (T >= q: a KV cache
    holds the earlier ones), with the layer's G-row global prefix in front. Returns (B, H, q, D).

    The kernels take queries and keys of one length, so a decoding step's q queries are placed at the end of the
    keys, after zero rows whose outputs are dropped. The keys are first cut to `_causal_reach`, so a step costs
    the few blocks its queries can see, not the whole sequence.
    """
    batch, heads, queries, _ = query.shape
    valid = _token_validity(attention_mask, batch, key.shape[-2], key.device)
    start = _causal_reach(key.shape[-2] - queries, key.shape[-2], settings)
    key, value, valid = key[:, :, start:], value[:, :, start:], valid[:, start:]
    tokens = key.shape[-2]
    prefix_k, prefix_v = (p.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
                          for p in (module.lsg_global_keys, module.lsg_global_values))
    key, value = torch.cat([prefix_k, key], dim=2), torch.cat([prefix_v, value], dim=2)
    if key.shape[1] != heads:  # grouped-query attention: each key head serves heads / H_kv query heads
        key, value = (x.repeat_interleave(heads // x.shape[1], dim=1) for x in (key, value))
    query = F.pad(query, (0, 0, settings.num_global_tokens + tokens - queries, 0))
    output = variant(query, key, value, valid, settings, scaling=scaling, dropout=dropout, training=module.training,
                     layer_index=layer_index, causal=True)
    return output[:, :, -queries:]


def _causal_reach(first_query: int, tokens: int, settings: LSGSettings) -> int:
    """First token (a block start) that causal queries from `first_query` on can see, through their local window
    (the previous block) or their left sparse window (sbs entries, r per block, before that).

    Dropping the tokens before it changes no output of those queries: the layout and every selector repeat from
    block to block, except `bos_pooling` (it pools with token 0's key) and the short rule (it applies to the
    whole sequence), which are not cut. What is left is longer than 2*bs whenever sparse keys are on; without,
    the short rule over blocks j-1 and j is exactly their causal local window.
    """
    bs = settings.block_size
    if settings.sparsity_type == "bos_pooling" or uses_short_rule(tokens, settings):
        return 0
    reach = -(-settings.sparse_block_size // settings.sparse_per_block) if settings.sparse_enabled else 0
    return max(0, first_query // bs - 1 - reach) * bs


def register_with_transformers(name: str, variant: AttentionVariant) -> None:
    """Make `variant` selectable as `attn_implementation=name`: its attention and mask functions, under one name.

    transformers keeps them in process-wide tables, where a name registered again silently replaces the first.
    """
    AttentionInterface.register(name, _interface_for(name, variant))
    AttentionMaskInterface.register(name, lsg_mask)


# --- global tokens -------------------------------------------------------------------------------------------

def _input_length(args: tuple, kwargs: dict) -> int | None:
    inputs = kwargs.get("input_ids", args[0] if args else None)
    for name in ("inputs_embeds", "input_embeds"):  # DistilBERT spells it input_embeds
        if inputs is None:
            inputs = kwargs.get(name)
    return None if inputs is None else inputs.shape[1]


def _check_length(config: PretrainedConfig, family: Family, module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook on the family's entry module: a clear error instead of an index error past the table (D17)."""
    length = _input_length(args, kwargs)
    past = kwargs.get("past_key_values")
    if length is not None and past is not None and hasattr(past, "get_seq_length"):  # decoding: the cached tokens too
        length += past.get_seq_length()
    limit = family.original_length(config)
    if length is not None and length > limit:
        raise ValueError(
            f"input length {length} exceeds max_length={limit} of this LSG model; truncate the input "
            f"or convert the checkpoint again with a larger max_length"
        )


def _global_rows(config: PretrainedConfig, family: Family, base: nn.Module, batch: int, dtype: torch.dtype) -> Tensor:
    """The G global rows as the hidden states hold them at `globals_point`, expanded over the batch."""
    rows = base.get_submodule(family.global_table_owner).global_embeddings.weight[: config.num_global_tokens]
    for path in family.globals_norm:
        rows = base.get_submodule(path).forward(rows)  # .forward: calling the module would re-enter our own hook
    if family.globals_functional_dropout:
        rows = F.dropout(rows, p=config.dropout, training=base.training)
    return rows.to(dtype).unsqueeze(0).expand(batch, -1, -1)


def _prepend_after(config: PretrainedConfig, family: Family, base: nn.Module, module: nn.Module, args: tuple,
                   kwargs: dict, output: Tensor) -> Tensor:
    """Forward hook at `globals_point`: per-token modules (LayerNorm, dropout) commute with the concatenation."""
    return torch.cat([_global_rows(config, family, base, output.shape[0], output.dtype), output], dim=1)


def _prepend_before(config: PretrainedConfig, family: Family, base: nn.Module, module: nn.Module, args: tuple,
                    kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook at `globals_point` (Pegasus' first encoder layer, which has no embedding LayerNorm)."""
    hidden = args[0] if args else kwargs.pop("hidden_states")
    hidden = torch.cat([_global_rows(config, family, base, hidden.shape[0], hidden.dtype), hidden], dim=1)
    return (hidden, *args[1:]), kwargs


def _drop_global_tokens(config: PretrainedConfig, encoder: nn.Module, args: tuple, kwargs: dict,
                        output: Any) -> Any:
    """Forward hook on the encoder: pool global 0 into the first token (design §3.5), then keep T rows."""
    G = config.num_global_tokens
    hidden = output[0]
    if config.pool_with_global:  # a copy, never in place: hidden is also the last entry of hidden_states
        hidden = torch.cat([hidden[:, :G], hidden[:, :1], hidden[:, G + 1:]], dim=1)
    if not isinstance(output, ModelOutput):  # a seq2seq encoder called with return_dict=False
        return (hidden[:, G:], *output[1:])
    output.last_hidden_state = hidden[:, G:]
    return _slice_hidden_states(config, encoder, args, kwargs, output)


def _slice_hidden_states(config: PretrainedConfig, base: nn.Module, args: tuple, kwargs: dict,
                         output: Any) -> Any:
    """Forward hook on the base model: every `hidden_states` entry gets the same T rows as the output."""
    hidden_states = output.get("hidden_states") if isinstance(output, ModelOutput) else None
    if hidden_states:
        G, T = config.num_global_tokens, output.last_hidden_state.shape[1]
        output.hidden_states = tuple(h[:, G:] if h.shape[1] == G + T else h for h in hidden_states)
    return output


def _shared_padding_mask(config: PretrainedConfig, base: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """ModernBERT pre-hook: hand the 2-D padding mask to both layer types (it would build a dense sliding mask)."""
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    if not isinstance(mask, dict):
        kwargs["attention_mask"] = {"full_attention": mask, "sliding_attention": mask}
        args = args[:1]
    return args, kwargs


def _rotary_positions_with_globals(config: PretrainedConfig, rotary: nn.Module, args: tuple,
                                   kwargs: dict) -> tuple[tuple, dict] | None:
    """Rotary pre-hook: the G global rows take positions 0..G-1 and the tokens move up by G.

    Rotary attention only sees position differences, so token-to-token scores are unchanged (I3 holds).
    """
    hidden, position_ids, *rest = args
    G = config.num_global_tokens
    if position_ids.shape[-1] != hidden.shape[1] - G:
        return None
    front = torch.arange(G, device=position_ids.device).expand(*position_ids.shape[:-1], G)
    return (hidden, torch.cat([front, position_ids + G], dim=-1), *rest), kwargs


def _install_causal(config: PretrainedConfig, modules: list[nn.Module], plan: list[str] | None) -> None:
    """Causal LSG on `modules` (layer order): a G-row key/value prefix on each LSG layer, which `lsg.convert`
    initialises, and the `lsg_layer_index` stamp."""
    for index, module in enumerate(modules):
        if is_full_layer(plan, index):
            continue
        kv_heads = getattr(config, "num_key_value_heads", None) or module.num_heads  # Llama: grouped queries
        shape = (kv_heads, config.num_global_tokens, module.head_dim)
        module.lsg_global_keys = nn.Parameter(torch.zeros(shape))
        module.lsg_global_values = nn.Parameter(torch.zeros(shape))
        module.lsg_layer_index = index


def install_lsg(model: PreTrainedModel) -> None:
    """Turn a freshly built model of a supported family into an LSG model, in place.

    Adds the 512-row global table (the authors' weight name: `<base>.embeddings.global_embeddings`, or
    `<base>.encoder.global_embeddings` for encoder-decoders), the hooks that prepend the G global rows and
    remove them from encoder-only outputs, and stamps `lsg_layer_index` on every self-attention module LSG
    owns. Decoder self- and cross-attention are left to transformers' SDPA (design §3.6). Decoder-only
    families get a key/value prefix per layer instead of global rows (`Family.causal_lm`). The "full" layers
    of the config's `layer_attention` plan (`lsg.plans`) are not stamped: they run SDPA.
    """
    config = model.config
    family = family_of(config)
    base = model.base_model
    plan = getattr(config, "layer_attention", None)
    if plan is not None:  # a hand-edited config.json: a clear error before any layer is touched
        layer_plan(len(family.attention_modules(base)), layers=plan)
    if family.causal_lm:  # no global rows, no hooks but the length check
        base.register_forward_pre_hook(partial(_check_length, config, family), with_kwargs=True)
        _install_causal(config, family.attention_modules(base), plan)
        return
    if getattr(config, "lsg_decoder", False):  # the decoder's layers follow no plan: it is for the encoder's
        _install_causal(config, family.decoder_attention_modules(base), None)
    width = base.get_submodule(family.word_embeddings).embedding_dim
    base.get_submodule(family.global_table_owner).global_embeddings = nn.Embedding(MAX_GLOBAL_TOKENS, width)
    base.get_submodule(family.entry).register_forward_pre_hook(partial(_check_length, config, family),
                                                               with_kwargs=True)
    point = base.get_submodule(family.globals_point)
    if family.globals_before_point:
        point.register_forward_pre_hook(partial(_prepend_before, config, family, base), with_kwargs=True)
    else:
        point.register_forward_hook(partial(_prepend_after, config, family, base), with_kwargs=True)
    if not (family.is_encoder_decoder and config.pass_global_tokens_to_decoder):
        base.get_submodule(family.encoder).register_forward_hook(partial(_drop_global_tokens, config),
                                                                 with_kwargs=True)
    if not family.is_encoder_decoder:
        base.register_forward_hook(partial(_slice_hidden_states, config), with_kwargs=True)
    if family.rotary:
        base.register_forward_pre_hook(partial(_shared_padding_mask, config), with_kwargs=True)
        base.rotary_emb.register_forward_pre_hook(partial(_rotary_positions_with_globals, config), with_kwargs=True)
    for index, module in enumerate(family.attention_modules(base)):
        if not is_full_layer(plan, index):
            module.lsg_layer_index = index
    for module in family.cross_attention_modules(base):
        module.lsg_cross_attention = True
