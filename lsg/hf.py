"""The only module that touches transformers internals (docs/design.md §3.8).

* Every attention variant of `lsg.variants.ATTENTION_VARIANTS` is registered by name in
  `AttentionInterface` (`register_with_transformers`), together with a mask function in
  `AttentionMaskInterface` (without it, transformers silently drops the padding mask for custom
  implementations). The mask function hands
  the (B, T) padding mask through unchanged for bidirectional attention, so no T x T mask is built.
* Calls from modules LSG does not own (no `lsg_layer_index` stamp: decoder self-attention,
  cross-attention) go to transformers' SDPA unchanged, after left-padding a 2-D mask to the key
  length; that padding is exactly "the encoder mask extended with G ones" for cross-attention.
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
from transformers.masking_utils import AttentionMaskInterface, bidirectional_mask_function, sdpa_mask
from transformers.utils import ModelOutput

from lsg.attention import AttentionVariant
from lsg.families import Family, family_of
from lsg.settings import LSG_MARKER, MAX_GLOBAL_TOKENS, LSGSettings

logger = logging.getLogger(__name__)
_warn_once = functools.cache(logger.warning)  # once per message, not once per layer and step


def lsg_mask(*, attention_mask: Tensor | None = None, mask_function: Any = None, **kwargs: Any) -> Tensor | None:
    """Mask function registered next to every LSG variant: 2-D padding masks pass through untouched."""
    if mask_function is bidirectional_mask_function:  # encoder self-attention and cross-attention
        return attention_mask
    return sdpa_mask(attention_mask=attention_mask, mask_function=mask_function, **kwargs)


def _left_pad_mask(mask: Tensor, length: int) -> Tensor:
    """Extend a (B, T) mask with valid entries in front up to `length` keys (the G global tokens)."""
    return F.pad(mask.bool(), (length - mask.shape[-1], 0), value=True)


def _dense_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                     **kwargs: Any) -> tuple[Tensor, None]:
    if attention_mask is not None and attention_mask.dim() == 2:
        if getattr(module, "lsg_cross_attention", False) and module.config.mask_first_token:
            # The authors' encoder zeroes the first source token in the caller's mask, which hides it from
            # cross-attention too (design §3.6); reproduced explicitly, on a copy (D11).
            attention_mask = attention_mask.bool().clone()
            attention_mask[:, 0] = False
        attention_mask = _left_pad_mask(attention_mask, key.shape[-2])[:, None, None, :]
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
        # A plain model running a registered variant (lsg.baselines.swap_attention) has no global rows.
        is_lsg = getattr(module.config, "base_model_prefix", None) == LSG_MARKER
        tokens = key.shape[-2] - (settings.num_global_tokens if is_lsg else 0)
        valid = _token_validity(attention_mask, key.shape[0], tokens, key.device)
        output = variant(
            query, key, value, valid, settings,
            scaling=scaling if scaling is not None else query.shape[-1] ** -0.5,
            dropout=dropout, training=module.training, layer_index=layer_index,
        )
        return output.transpose(1, 2).contiguous(), None

    attention_forward.__name__ = f"{variant_name}_attention_forward"
    return attention_forward


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


def install_lsg(model: PreTrainedModel) -> None:
    """Turn a freshly built model of a supported family into an LSG model, in place.

    Adds the 512-row global table (the authors' weight name: `<base>.embeddings.global_embeddings`, or
    `<base>.encoder.global_embeddings` for encoder-decoders), the hooks that prepend the G global rows and
    remove them from encoder-only outputs, and stamps `lsg_layer_index` on every self-attention module LSG
    owns. Decoder self- and cross-attention are left to transformers' SDPA (design §3.6).
    """
    config = model.config
    family = family_of(config)
    base = model.base_model
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
        module.lsg_layer_index = index
    for module in family.cross_attention_modules(base):
        module.lsg_cross_attention = True
