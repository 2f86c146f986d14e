"""The only module that touches transformers internals (integration notes: shared docs, §1-§3).

* Every attention variant of `lsg.attention.ATTENTION_VARIANTS` is registered by name in
  `AttentionInterface`, together with a mask function in `AttentionMaskInterface` (without it,
  transformers silently drops the padding mask for custom implementations). The mask function hands
  the (B, T) padding mask through unchanged for bidirectional attention, so no T x T mask is built.
* Calls from modules LSG does not own (no `lsg_layer_index` stamp: decoder self-attention,
  cross-attention) go to transformers' SDPA unchanged, after left-padding a 2-D mask to the key
  length; that padding is exactly "the encoder mask extended with G ones" for cross-attention.
* Global tokens are added by forward hooks rather than copied modeling code: one on the embeddings
  (append the G global rows after LayerNorm/dropout, which act per token), one on the encoder
  (pool into the first token, drop the globals) and one on the base model (drop the globals from
  `hidden_states`). Hooks get their state through `functools.partial`, which `copy.deepcopy` copies
  along with the model (a closure would keep pointing at the original model).
"""

from __future__ import annotations

import functools
import logging
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, bidirectional_mask_function, sdpa_mask
from transformers.utils import ModelOutput

from lsg.attention import ATTENTION_VARIANTS
from lsg.families import family_of
from lsg.settings import MAX_GLOBAL_TOKENS, LSGSettings

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


def _interface_for(variant_name: str):
    variant = ATTENTION_VARIANTS.get(variant_name)

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
        tokens = key.shape[-2] - settings.num_global_tokens
        valid = _token_validity(attention_mask, key.shape[0], tokens, key.device)
        output = variant(
            query, key, value, valid, settings,
            scaling=scaling if scaling is not None else query.shape[-1] ** -0.5,
            dropout=dropout, training=module.training, layer_index=layer_index,
        )
        return output.transpose(1, 2).contiguous(), None

    attention_forward.__name__ = f"{variant_name}_attention_forward"
    return attention_forward


def _register_with_transformers(name: str, variant: object) -> None:
    AttentionInterface.register(name, _interface_for(name))
    AttentionMaskInterface.register(name, lsg_mask)


def register_attention_variants() -> None:
    """Make every variant, including ones registered later, selectable as `attn_implementation=<name>`."""
    ATTENTION_VARIANTS.on_register(_register_with_transformers)


# --- global tokens -------------------------------------------------------------------------------------------

def _check_length(config: PretrainedConfig, offset: int, embeddings: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook on the embeddings: a clear error instead of an index error past the table (D17)."""
    inputs = kwargs.get("input_ids", args[0] if args else None)
    if inputs is None:
        inputs = kwargs.get("inputs_embeds")
    limit = config.max_position_embeddings - offset
    if inputs is not None and inputs.shape[1] > limit:
        raise ValueError(
            f"input length {inputs.shape[1]} exceeds max_length={limit} of this LSG model; truncate the input "
            f"or convert the checkpoint again with a larger max_length"
        )


def _prepend_global_tokens(config: PretrainedConfig, embeddings: nn.Module, args: tuple, kwargs: dict,
                           output: Tensor) -> Tensor:
    """Forward hook on the embeddings: LN/dropout act per token, so LN(cat(g, x)) == cat(LN(g), LN(x))."""
    rows = embeddings.global_embeddings.weight[: config.num_global_tokens]
    rows = embeddings.dropout(embeddings.LayerNorm(rows)).to(output.dtype)
    return torch.cat([rows.unsqueeze(0).expand(output.shape[0], -1, -1), output], dim=1)


def _drop_global_tokens(config: PretrainedConfig, encoder: nn.Module, args: tuple, kwargs: dict,
                        output: ModelOutput) -> ModelOutput:
    """Forward hook on the encoder: pool global 0 into the first token (spec §3.5), then keep T rows."""
    G = config.num_global_tokens
    hidden = output.last_hidden_state
    if config.pool_with_global:  # a copy, never in place: hidden is also the last entry of hidden_states
        hidden = torch.cat([hidden[:, :G], hidden[:, :1], hidden[:, G + 1:]], dim=1)
    output.last_hidden_state = hidden[:, G:]
    return output


def _slice_hidden_states(config: PretrainedConfig, base: nn.Module, args: tuple, kwargs: dict,
                         output: Any) -> Any:
    """Forward hook on the base model: every `hidden_states` entry gets the same T rows as the output."""
    hidden_states = output.get("hidden_states") if isinstance(output, ModelOutput) else None
    if hidden_states:
        G, T = config.num_global_tokens, output.last_hidden_state.shape[1]
        output.hidden_states = tuple(h[:, G:] if h.shape[1] == G + T else h for h in hidden_states)
    return output


def install_lsg(model: PreTrainedModel) -> None:
    """Turn a freshly built model of a supported family into an LSG model, in place.

    Adds the 512-row global table at `<base>.embeddings.global_embeddings` (the authors' weight name),
    the three hooks, and stamps `lsg_layer_index` on every self-attention module LSG owns.
    """
    config = model.config
    family = family_of(config)
    base = model.base_model
    embeddings = base.get_submodule(family.embeddings)
    width = embeddings.word_embeddings.embedding_dim
    embeddings.global_embeddings = nn.Embedding(MAX_GLOBAL_TOKENS, width)
    embeddings.register_forward_pre_hook(partial(_check_length, config, family.position_offset), with_kwargs=True)
    embeddings.register_forward_hook(partial(_prepend_global_tokens, config), with_kwargs=True)
    base.get_submodule(family.encoder).register_forward_hook(partial(_drop_global_tokens, config), with_kwargs=True)
    base.register_forward_hook(partial(_slice_hidden_states, config), with_kwargs=True)
    for index, layer in enumerate(base.get_submodule(family.layers)):
        layer.get_submodule(family.self_attention).lsg_layer_index = index
