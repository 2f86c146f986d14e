"""Table-1 baselines of the LSG paper: what RoBERTa-base's full attention is compared with.

* `to_longformer`, `to_bigbird`: the pretrained weights in transformers' own Longformer and BigBird
  classes (the maintained implementations users compare against), positions tiled as in LSG.
* the Table-1 attentions (`TABLE1_ATTENTIONS`: full, linear, efficient, performer, linformer, reformer,
  local): `swap_attention` puts one into a plain model, `tile_model_positions` extends its positions.

Importing this package registers the Table-1 attentions in `lsg.ATTENTION_VARIANTS`, and so with
transformers, under namespaced names: `attn_implementation="table1_full"`, ... (`lsg.variants`).
See docs/baselines.md.
"""

from lsg.baselines.bigbird import BIGBIRD_HEADS, keep_block_sparse, to_bigbird
from lsg.baselines.longformer import LONGFORMER_HEADS, first_token_global_mask, to_longformer
from lsg.baselines.swap import TABLE1_ATTENTIONS, attention_name, swap_attention, tile_model_positions

__all__ = [
    "BIGBIRD_HEADS",
    "LONGFORMER_HEADS",
    "TABLE1_ATTENTIONS",
    "attention_name",
    "first_token_global_mask",
    "keep_block_sparse",
    "swap_attention",
    "tile_model_positions",
    "to_bigbird",
    "to_longformer",
]
