"""Table-1 baselines of the LSG paper: what RoBERTa-base's full attention is compared with (issue #7).

* `to_longformer`, `to_bigbird`: the pretrained weights in transformers' own Longformer and BigBird
  classes (the maintained implementations users compare against), positions tiled as in LSG.
* the Table-1 attentions (`TABLE1_ATTENTIONS`: full, linear, efficient, performer, linformer, reformer,
  local) registered in `lsg.ATTENTION_VARIANTS`, hence selectable as `attn_implementation=<name>`;
  `swap_attention` puts one into a plain model, `tile_model_positions` extends its positions.

Importing this package registers the variants. See docs/baselines.md.
"""

import lsg  # noqa: F401  (registers the transformers listener before the variants below are added)
from lsg.baselines import attentions, reformer  # noqa: F401  (register the Table-1 variants)
from lsg.baselines.bigbird import BIGBIRD_HEADS, to_bigbird
from lsg.baselines.longformer import LONGFORMER_HEADS, first_token_global_mask, to_longformer
from lsg.baselines.swap import TABLE1_ATTENTIONS, attention_name, swap_attention, tile_model_positions

__all__ = [
    "BIGBIRD_HEADS",
    "LONGFORMER_HEADS",
    "TABLE1_ATTENTIONS",
    "attention_name",
    "first_token_global_mask",
    "swap_attention",
    "tile_model_positions",
    "to_bigbird",
    "to_longformer",
]
