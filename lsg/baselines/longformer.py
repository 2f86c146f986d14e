"""RoBERTa/BERT weights in transformers' own Longformer classes: the "Longformer (512)" row of Table 1.

Longformer's layers are RoBERTa's plus a second set of projections (`query_global`, `key_global`,
`value_global`) used by globally attending tokens: both sets get the pretrained Q/K/V, so a global token
is computed exactly as full attention would. Positions are tiled as in LSG. Longformer runs its own
(eager) attention; it pads the input to a multiple of `attention_window` with `pad_token_id` (warning
once) and returns T rows.

Global attention is chosen per call with `global_attention_mask` (1 = global). As Longformer users do,
give the first token (<s>/[CLS]) global attention: `first_token_global_mask(attention_mask)`.
`LongformerForSequenceClassification` does so by itself when no mask is passed; the other heads
attend locally only unless told.
"""

from __future__ import annotations

import transformers
from torch import Tensor
from transformers import LongformerConfig, PreTrainedModel

from lsg.baselines import transfer

LONGFORMER_HEADS: tuple[str, ...] = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification")

_RENAMES: dict[str, transfer.Renames] = {
    "roberta": [("roberta.", "longformer.")],
    "bert": [
        ("bert.", "longformer."),
        ("cls.predictions.transform.dense.", "lm_head.dense."),
        ("cls.predictions.transform.LayerNorm.", "lm_head.layer_norm."),
        ("cls.predictions.decoder.", "lm_head.decoder."),
        ("cls.predictions.bias", "lm_head.bias"),
    ],
}


def first_token_global_mask(attention_mask: Tensor) -> Tensor:
    """(B, T) `global_attention_mask` giving global attention to the first token only (<s>/[CLS])."""
    mask = attention_mask.new_zeros(attention_mask.shape)
    mask[:, 0] = 1
    return mask


def to_longformer(model: PreTrainedModel, *, max_length: int = 4096, attention_window: int = 512) -> PreTrainedModel:
    """A transformers `Longformer<Head>` carrying `model`'s weights, reading up to `max_length` tokens.

    Args:
        model: a `RobertaModel`/`BertModel` or its `ForMaskedLM`, `ForSequenceClassification` or
            `ForTokenClassification` head (not modified).
        max_length: L, new maximum number of tokens (>= the model's own); positions tiled as in LSG.
        attention_window: Longformer's window, w/2 tokens on each side of a query; even (paper: 512).

    Returns:
        `LongformerModel`/`ForMaskedLM`/`ForSequenceClassification`/`ForTokenClassification`, same dtype,
        device and train/eval mode as `model`.
    """
    if isinstance(attention_window, bool) or not isinstance(attention_window, int) or attention_window < 2 \
            or attention_window % 2:
        raise ValueError(f"attention_window={attention_window!r} must be an even integer >= 2 (Longformer "
                         "attends attention_window / 2 tokens on each side)")
    family, suffix = transfer.check_source_model(model, LONGFORMER_HEADS, "to_longformer", max_length)
    config = model.config
    # Longformer numbers real tokens from padding_idx + 1 (RoBERTa's rule) whatever the source's offset.
    offset = config.pad_token_id + 1
    target_config = LongformerConfig(**transfer.config_dict(
        model, max_position_embeddings=max_length + offset, attention_window=attention_window,
        sep_token_id=getattr(config, "sep_token_id", None) or getattr(config, "eos_token_id", None),
    ))
    target = getattr(transformers, f"Longformer{suffix}")._from_config(target_config, dtype=model.dtype)

    state = transfer.renamed(model.state_dict(), transfer.head_rules(family, suffix, _RENAMES))
    for key in list(state):
        if key.endswith("embeddings.position_embeddings.weight"):
            state[key] = transfer.position_rows(state[key], max_length, family.position_offset, offset)
        for projection in ("query", "key", "value"):  # global tokens use the same pretrained projections
            if f".attention.self.{projection}." in key:
                state[key.replace(f".{projection}.", f".{projection}_global.")] = state[key].clone()
    transfer.load_exactly(target, state)
    return transfer.finish(target, model)
