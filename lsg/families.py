"""Per-architecture facts LSG needs (design §2.4): where modules live, position tables, head classes.

A family is a small table, not a modeling copy: the attention itself runs through transformers'
attention interface, and global tokens are added by hooks at the points a family names here, so
adding an architecture means adding one entry. Module paths are relative to the base model
(`model.base_model`), so every head class of a family shares them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import transformers
from torch import nn
from transformers import PretrainedConfig

# Head class suffix -> the Auto class that should resolve it for an LSG config.
AUTO_CLASS_OF_SUFFIX: dict[str, str] = {
    "Model": "AutoModel",
    "ForPreTraining": "AutoModelForPreTraining",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForMultipleChoice": "AutoModelForMultipleChoice",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForNextSentencePrediction": "AutoModelForNextSentencePrediction",
    "ForConditionalGeneration": "AutoModelForSeq2SeqLM",
    "ForCausalLM": "AutoModelForCausalLM",
    "LMHeadModel": "AutoModelForCausalLM",
}


@dataclass(frozen=True)
class Family:
    """How LSG plugs into one architecture family.

    Attributes:
        name: transformers class prefix ("Bert", "Roberta", "Bart").
        model_type: `config.model_type` of the source checkpoints.
        default_head: head built by the CLI when the source config names none (design §1.2).
        heads: head-class suffixes the family supports.
        position_offset: special rows in front of each learned position table (RoBERTa: padding_idx + 1 = 2;
            BART: 2, added inside its embedding class).
        saved_position_offset: what the saved `max_position_embeddings` adds to L (RoBERTa 2, BART 0).
        position_tables: learned (or sinusoidal) position tables to extend to L.
        sinusoidal_positions: the tables are functions of the length (Pegasus): rebuilt, not tiled.
        token_type_in_globals: whether the global rows include token-type row 0 (BERT family; design D14).
        word_embeddings: the token embedding table the global rows start from.
        global_table_owner: module that holds `global_embeddings` (the authors' weight name lives there).
        globals_point: module around which the global rows are prepended to the hidden states.
        globals_before_point: prepend before `globals_point` runs (forward pre-hook) instead of after it.
        globals_norm: modules applied to the global rows, in order, so they are treated as the tokens were
            at `globals_point` (LayerNorm and dropout act per token, so this equals running them jointly).
        globals_functional_dropout: also apply `config.dropout` functionally (Pegasus has no dropout module).
        entry: module whose `input_ids`/`inputs_embeds` are length-checked against L.
        encoder: module whose output holds the last encoder states ("" = the base model itself).
        attention: regular expression (full match) of the self-attention modules LSG owns, in layer order.
        cross_attention: regular expression of the decoder's cross-attention modules (encoder-decoders).
        decoder_attention: regular expression of the decoder's self-attention modules (encoder-decoders), which
            become causal LSG when the config's `lsg_decoder` is set.
        rotary: positions are rotary, nothing to tile; in an encoder (ModernBERT) the global rows get position ids
            in front of the tokens.
        causal_lm: decoder-only (GPT-2, Llama): causal LSG in every self-attention, whose G global tokens are a
            learned key/value prefix of each layer (design §3.7) instead of rows of the hidden states, so the
            global-row fields above do not apply.
    """

    name: str
    model_type: str
    default_head: str
    heads: tuple[str, ...]
    position_offset: int = 0
    saved_position_offset: int = 0
    position_tables: tuple[str, ...] = ("embeddings.position_embeddings",)
    sinusoidal_positions: bool = False
    token_type_in_globals: bool = False
    word_embeddings: str = "embeddings.word_embeddings"
    global_table_owner: str = "embeddings"
    globals_point: str = "embeddings"
    globals_before_point: bool = False
    globals_norm: tuple[str, ...] = ("embeddings.LayerNorm", "embeddings.dropout")
    globals_functional_dropout: bool = False
    entry: str = "embeddings"
    encoder: str = "encoder"
    attention: str = r"encoder\.layer\.\d+\.attention\.self"
    cross_attention: str | None = None
    decoder_attention: str | None = None
    rotary: bool = False
    causal_lm: bool = False

    @property
    def lsg_model_type(self) -> str:
        return f"lsg_{self.model_type}"

    @property
    def is_encoder_decoder(self) -> bool:
        return self.cross_attention is not None

    @property
    def config_class(self) -> type[PretrainedConfig]:
        return getattr(transformers, f"{self.name}Config")

    def head_class(self, suffix: str) -> type[nn.Module]:
        return getattr(transformers, f"{self.name}{suffix}")

    def suffix_of(self, class_name: str) -> str | None:
        """Head suffix named by a class name of this family, with or without the family and LSG prefixes.

        "LSGBertForMaskedLM", "BertForMaskedLM" and "ForMaskedLM" all give "ForMaskedLM"; None if not a head.
        """
        stem = class_name.removeprefix("LSG")
        suffix = stem[len(self.name):] if stem.startswith(self.name) else stem
        return suffix if suffix in self.heads else None

    def original_length(self, config: PretrainedConfig) -> int:
        """Number of real tokens the source model accepts (its usable position rows).

        The one rule for every caller (conversion, the pipeline's `attention=original` limit): RoBERTa's
        config counts its 2 offset rows (514 -> 512); BART's does not (1024, in a table of 1026 rows).
        """
        return config.max_position_embeddings - self.saved_position_offset

    def word_scale(self, config: PretrainedConfig) -> float:
        """Multiplier the model applies to word embeddings (mBART/Pegasus `scale_embedding`: sqrt(d_model))."""
        return math.sqrt(config.d_model) if getattr(config, "scale_embedding", False) else 1.0

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        """The self-attention modules LSG owns, in layer order (a shared module is listed once: ALBERT)."""
        return _matching_modules(base, self.attention)

    def cross_attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return _matching_modules(base, self.cross_attention) if self.cross_attention else []

    def decoder_attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return _matching_modules(base, self.decoder_attention) if self.decoder_attention else []


def _matching_modules(base: nn.Module, pattern: str) -> list[nn.Module]:
    compiled = re.compile(pattern)
    # named_modules() lists a shared module once (ALBERT shares one layer across depth).
    return [module for name, module in base.named_modules() if compiled.fullmatch(name)]


_ENCODER_HEADS = (
    "Model", "ForMaskedLM", "ForSequenceClassification", "ForMultipleChoice",
    "ForTokenClassification", "ForQuestionAnswering",
)
_BERT_HEADS = (*_ENCODER_HEADS, "ForPreTraining")
_SEQ2SEQ_HEADS = ("Model", "ForConditionalGeneration", "ForSequenceClassification", "ForQuestionAnswering")


def _roberta_like(name: str, model_type: str) -> Family:
    return Family(name, model_type, default_head="ForMaskedLM", heads=_ENCODER_HEADS, position_offset=2,
                  saved_position_offset=2)


def _bart_like(name: str, model_type: str, heads: tuple[str, ...] = _SEQ2SEQ_HEADS) -> Family:
    # BART/mBART: globals join after `layernorm_embedding`; the encoder's functional dropout then covers them.
    return Family(
        name, model_type, default_head="ForConditionalGeneration", heads=heads, position_offset=2,
        position_tables=("encoder.embed_positions", "decoder.embed_positions"),
        word_embeddings="encoder.embed_tokens", global_table_owner="encoder",
        globals_point="encoder.layernorm_embedding", globals_norm=("encoder.layernorm_embedding",),
        entry="encoder", attention=r"encoder\.layers\.\d+\.self_attn",
        cross_attention=r"decoder\.layers\.\d+\.encoder_attn", decoder_attention=r"decoder\.layers\.\d+\.self_attn",
    )


FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("Bert", "bert", default_head="ForPreTraining", heads=(*_BERT_HEADS, "ForNextSentencePrediction"),
               token_type_in_globals=True),
        _roberta_like("Roberta", "roberta"),
        _roberta_like("XLMRoberta", "xlm-roberta"),
        _roberta_like("Camembert", "camembert"),
        # ELECTRA and ALBERT embed at `embedding_size` and project afterwards: the globals join before it.
        Family("Electra", "electra", default_head="ForPreTraining", heads=_BERT_HEADS, token_type_in_globals=True),
        Family("Albert", "albert", default_head="ForPreTraining", heads=_BERT_HEADS, token_type_in_globals=True,
               attention=r"encoder\.albert_layer_groups\.\d+\.albert_layers\.\d+\.attention"),
        Family("DistilBert", "distilbert", default_head="ForMaskedLM", heads=_ENCODER_HEADS, encoder="transformer",
               attention=r"transformer\.layer\.\d+\.attention"),
        _bart_like("Bart", "bart"),
        _bart_like("MBart", "mbart"),
        # Pegasus: sinusoidal positions, no embedding LayerNorm, functional dropout before the first layer.
        Family("Pegasus", "pegasus", default_head="ForConditionalGeneration",
               heads=("Model", "ForConditionalGeneration"),
               position_tables=("encoder.embed_positions", "decoder.embed_positions"), sinusoidal_positions=True,
               word_embeddings="encoder.embed_tokens", global_table_owner="encoder", globals_point="encoder.layers.0",
               globals_before_point=True, globals_norm=(), globals_functional_dropout=True, entry="encoder",
               attention=r"encoder\.layers\.\d+\.self_attn", cross_attention=r"decoder\.layers\.\d+\.encoder_attn",
               decoder_attention=r"decoder\.layers\.\d+\.self_attn"),
        # Decoder-only (beyond the authors' converter): GPT-2's learned positions are tiled, Llama's rotary kept.
        Family("GPT2", "gpt2", default_head="LMHeadModel", heads=("Model", "LMHeadModel", "ForSequenceClassification"),
               position_tables=("wpe",), word_embeddings="wte", entry="", encoder="", attention=r"h\.\d+\.attn",
               causal_lm=True),
        Family("Llama", "llama", default_head="ForCausalLM",
               heads=("Model", "ForCausalLM", "ForSequenceClassification"),
               position_tables=(), word_embeddings="embed_tokens", entry="", encoder="",
               attention=r"layers\.\d+\.self_attn", rotary=True, causal_lm=True),
        # ModernBERT (beyond the authors' converter): rotary positions need no tiling.
        Family("ModernBert", "modernbert", default_head="ForMaskedLM", heads=_ENCODER_HEADS, position_tables=(),
               word_embeddings="embeddings.tok_embeddings", globals_norm=("embeddings.norm", "embeddings.drop"),
               encoder="", attention=r"layers\.\d+\.attn", rotary=True),
    )
}


def supported_architectures() -> list[str]:
    """Every head class `lsg.convert` accepts, e.g. "BertForMaskedLM"."""
    return [f"{family.name}{suffix}" for family in FAMILIES.values() for suffix in family.heads]


def family_of(config: PretrainedConfig) -> Family:
    """The family of a (source or LSG) config; ValueError listing the supported ones otherwise."""
    model_type = str(getattr(config, "model_type", "")).removeprefix("lsg_")
    if model_type not in FAMILIES:
        raise ValueError(
            f"architecture model_type={config.model_type!r} is not supported by lsg; supported model types: "
            f"{sorted(FAMILIES)} (head classes: {supported_architectures()})"
        )
    return FAMILIES[model_type]
