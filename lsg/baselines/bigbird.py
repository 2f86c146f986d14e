"""RoBERTa/BERT weights in transformers' own BigBird classes: the "Big Bird (64)" row of Table 1.

BigBird's layers are BERT's; only the names around them differ (`bert.` prefix, `cls.predictions.*` MLM
head, a pooler that is a bare Linear). BigBird numbers positions from 0, so RoBERTa's two offset rows are
dropped before tiling as in LSG (design §2.2).

Behaviour of transformers' BigBird to know about (5.23):

* block-sparse attention needs more than (5 + 2 * num_random_blocks) * block_size tokens (704 with the
  paper's 64 / 3); shorter inputs run full attention, which is why the paper's 512 column equals RoBERTa;
* transformers makes that fallback sticky (it calls `set_attention_type("original_full")` on the model and
  never switches back); `keep_block_sparse` (installed by `to_bigbird`, and by the pipeline on any BigBird it
  builds) restores the configured type before every forward, so the fallback holds for that call only;
* in eval mode the random blocks are deterministic (transformers fixes them), in training they are drawn
  from the global RNG;
* `BigBirdForSequenceClassification`'s head applies `config.hidden_act` where RoBERTa's/BERT's apply
  tanh: its weights are copied but its logits differ; the encoder (and the MLM head) are exact.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch.utils.hooks import RemovableHandle
from transformers import BigBirdConfig, PreTrainedModel

from lsg.baselines import transfer
from lsg.validation import check_int

BIGBIRD_HEADS: tuple[str, ...] = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification")

_MLM_HEAD: transfer.Renames = [
    ("lm_head.dense.", "cls.predictions.transform.dense."),
    ("lm_head.layer_norm.", "cls.predictions.transform.LayerNorm."),
    ("lm_head.decoder.", "cls.predictions.decoder."),
    ("lm_head.bias", "cls.predictions.bias"),
]
_RENAMES: dict[str, transfer.Renames] = {
    "roberta": [("roberta.pooler.dense.", "bert.pooler."), ("pooler.dense.", "pooler."), ("roberta.", "bert."),
                *_MLM_HEAD],
    "bert": [("bert.pooler.dense.", "bert.pooler."), ("pooler.dense.", "pooler.")],
}


def to_bigbird(model: PreTrainedModel, *, max_length: int = 4096, block_size: int = 64,
               num_random_blocks: int = 3) -> PreTrainedModel:
    """A transformers `BigBird<Head>` (block-sparse attention) carrying `model`'s weights.

    Args:
        model: a `RobertaModel`/`BertModel` or its `ForMaskedLM`, `ForSequenceClassification` or
            `ForTokenClassification` head (not modified).
        max_length: L, new maximum number of tokens (>= the model's own); positions tiled as in LSG.
        block_size: BigBird's block size (paper: 64, printed "Big Bird (64)").
        num_random_blocks: random blocks per query block (BigBird's default 3; not stated in the paper).

    Returns:
        `BigBirdModel`/`ForMaskedLM`/`ForSequenceClassification`/`ForTokenClassification`, same dtype,
        device and train/eval mode as `model`. Its pooler is new (random) when the source has none.
    """
    check_int("block_size", block_size, 1)
    check_int("num_random_blocks", num_random_blocks, 0)
    family, suffix = transfer.check_source_model(model, BIGBIRD_HEADS, "to_bigbird", max_length)
    config = model.config
    target_config = BigBirdConfig(**transfer.config_dict(
        model, max_position_embeddings=max_length, attention_type="block_sparse", block_size=block_size,
        num_random_blocks=num_random_blocks, use_bias=True, rescale_embeddings=False,
        position_embedding_type="absolute",
        sep_token_id=getattr(config, "sep_token_id", None) or getattr(config, "eos_token_id", None),
    ))
    target = getattr(transformers, f"BigBird{suffix}")._from_config(target_config, dtype=model.dtype)

    state = transfer.renamed(model.state_dict(), transfer.head_rules(family, suffix, _RENAMES))
    for key in list(state):
        if key.endswith("embeddings.position_embeddings.weight"):
            state[key] = transfer.position_rows(state[key], max_length, family.position_offset, 0)
    transfer.load_exactly(target, state, may_miss=("bert.pooler.",))
    target = transfer.finish(target, model)
    keep_block_sparse(target)
    return target


def keep_block_sparse(model: PreTrainedModel) -> RemovableHandle:
    """Run block-sparse attention on every input long enough for it, whatever ran before.

    transformers' `BigBirdModel` switches itself to `original_full` after one input of at most
    (5 + 2 * num_random_blocks) * block_size tokens and never switches back; with dynamic padding one short
    batch would make every later step dense. This pre-hook restores the configured type before each forward
    (short inputs still fall back, for that call only). The swapped attention modules share the Q/K/V
    Linear layers, so optimizers keep updating the same parameters. Hooks are not saved: call this again on
    a reloaded model.

    Args:
        model: a `BigBirdModel` or one of its heads.

    Returns:
        The hook's handle (`.remove()` restores transformers' behaviour).
    """
    base = model.base_model
    wanted = base.config.attention_type

    def restore(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module.attention_type != wanted:
            module.set_attention_type(wanted)

    return base.register_forward_pre_hook(restore, with_kwargs=True)
