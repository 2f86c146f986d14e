"""Build the model a run trains from its `ModelConfig`: hub id or local dir, converted on the fly or loaded.

* `attention=original`: the checkpoint as is (inputs truncated to model.max_length, e.g. 512).
* `attention=lsg`: `lsg.convert(base, tokenizer, model.lsg, max_length=..., conversion=model.conversion)`
  (paper §3), unless the checkpoint already is an LSG model (ours, `lsg_*`, or the authors' marked config, e.g.
  a 4K run's `final/`), which `lsg.load` reads and `lsg.extend` grows to model.max_length and
  model.lsg.num_global_tokens when they exceed the saved values (the paper's 16K rows); its other LSG
  settings are the saved ones.
* `attention=longformer|bigbird`: `lsg.baselines.to_longformer` / `to_bigbird` (imported lazily).
* `architecture=bart`: AutoModelForSeq2SeqLM, encoder converted by `lsg.convert` when attention=lsg.
* `architecture=bert2bert`: transformers' EncoderDecoderModel warm-started from one encoder checkpoint
  (the offline seq2seq: no BART weights ship on PyPI); the encoder is converted to LSG. A trained bert2bert
  directory (a run's `final/`) is loaded whole, its LSG encoder extended as above.

Also `apply_tuning`: which parameters learn (trainer.tune, trainer.freeze_layers).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import transformers
from transformers import AutoConfig, AutoTokenizer, EncoderDecoderModel, PreTrainedModel, PreTrainedTokenizerBase

import lsg
from lsg.convert import is_lsg_model
from lsg.hub import offline_hint
from tasks.config import ModelConfig, TrainerConfig

log = logging.getLogger(__name__)
SEQ2SEQ_HEAD = "ForConditionalGeneration"  # the head class of a task kind's head "seq2seq"
_LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")


class CheckpointUnavailableError(RuntimeError):
    """A checkpoint could not be read (hub unreachable, wrong path)."""


def _checkpoint_error(checkpoint: str, error: Exception) -> CheckpointUnavailableError:
    return CheckpointUnavailableError(
        f"could not load checkpoint {checkpoint!r}: {offline_hint() or f'{type(error).__name__}: {str(error)[:200]}'}\n"
        f"Point the model at a local copy: python run.py ... model.checkpoint=/path/to/dir "
        f"(offline, the real MiniLM is model.checkpoint=${{lsg_asset:minilm}}; the offline tasks use it by default)"
    )


def load_tokenizer(cfg: ModelConfig, max_length: int) -> PreTrainedTokenizerBase:
    """The model's tokenizer (model.tokenizer, else the checkpoint's), truncating at `max_length`."""
    source = cfg.tokenizer or cfg.checkpoint
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise _checkpoint_error(source, error) from error
    tokenizer.model_max_length = max_length
    return tokenizer


def _source_config(checkpoint: str) -> transformers.PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(checkpoint, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise _checkpoint_error(checkpoint, error) from error


def _to_lsg(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: ModelConfig) -> PreTrainedModel:
    return lsg.convert(model, tokenizer, cfg.lsg_settings(), max_length=cfg.max_length,
                       conversion=cfg.conversion_settings())


# Rows in front of the position table of the public long checkpoints (Table 2's Longformer/BigBird rows), which
# `lsg.families` does not know: longformer-base-4096 has 4098 rows for 4096 tokens, bigbird-roberta-base 4096.
_BASELINE_POSITION_OFFSETS = {"longformer": 2, "big_bird": 0}


def check_original_length(cfg: ModelConfig, config: transformers.PretrainedConfig) -> None:
    """attention=original reads at most the checkpoint's own length: the family table's rule (`lsg.families`)."""
    if config.model_type in _BASELINE_POSITION_OFFSETS:
        capacity = config.max_position_embeddings - _BASELINE_POSITION_OFFSETS[config.model_type]
    else:
        capacity = lsg.families.family_of(config).original_length(config)
    if cfg.max_length > capacity:
        raise ValueError(f"model.max_length={cfg.max_length} exceeds what {cfg.checkpoint} can read ({capacity} "
                         f"positions) with its original attention; use an lsg_* model or model.max_length<={capacity}")


def build_model(cfg: ModelConfig, head: str, tokenizer: PreTrainedTokenizerBase, **head_kwargs: Any) -> PreTrainedModel:
    """The model of `cfg` with the task's head (`head` = "ForSequenceClassification", "ForMaskedLM" or "seq2seq")."""
    source = _source_config(cfg.checkpoint)
    if cfg.architecture == "bert2bert":
        return _bert2bert(cfg, tokenizer, source)
    if is_lsg_model(source):  # already converted (ours or the authors'): its LSG settings are the saved ones
        log.info("loading the LSG checkpoint %s (model.lsg other than num_global_tokens is ignored)", cfg.checkpoint)
        family = lsg.families.family_of(source)
        suffix = SEQ2SEQ_HEAD if head == "seq2seq" else head
        return _extended(lsg.load(cfg.checkpoint, architecture=f"{family.name}{suffix}", **head_kwargs), tokenizer,
                         cfg)
    auto = transformers.AutoModelForSeq2SeqLM if cfg.architecture == "bart" else getattr(
        transformers, lsg.families.AUTO_CLASS_OF_SUFFIX[head])
    try:
        base = auto.from_pretrained(cfg.checkpoint, trust_remote_code=False, **head_kwargs)
    except (OSError, ValueError) as error:
        raise _checkpoint_error(cfg.checkpoint, error) from error
    if cfg.attention == "original":
        check_original_length(cfg, base.config)
        if base.config.model_type == "big_bird":  # a BigBird checkpoint: hooks are not saved, install it again
            from lsg.baselines import keep_block_sparse

            keep_block_sparse(base)
        return base
    if cfg.attention == "lsg":
        return _to_lsg(base, tokenizer, cfg)
    from lsg import baselines  # lazy: the Table-1 baselines register extra attention variants on import

    if cfg.attention == "longformer":
        return baselines.to_longformer(base, max_length=cfg.max_length, attention_window=cfg.attention_window)
    return baselines.to_bigbird(base, max_length=cfg.max_length, block_size=cfg.bigbird_block_size,
                                num_random_blocks=cfg.num_random_blocks)


def _extended(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: ModelConfig) -> PreTrainedModel:
    """The LSG `model` grown to model.max_length / model.lsg.num_global_tokens where they exceed its own."""
    config = model.config
    saved = {"max_length": lsg.families.family_of(config).original_length(config),
             "num_global_tokens": config.num_global_tokens}
    asked = {"max_length": cfg.max_length, "num_global_tokens": cfg.lsg.num_global_tokens}
    grow = {key: asked[key] for key in saved if asked[key] > saved[key]}
    for key in sorted(set(saved) - set(grow)):
        if asked[key] < saved[key]:
            log.info("%s=%d asked, the checkpoint has %d: kept (extension only grows)", key, asked[key], saved[key])
    if not grow:
        return model
    log.info("extending the LSG checkpoint: %s -> %s", saved, grow)
    return lsg.extend(model, tokenizer, **grow, conversion=cfg.conversion_settings())


def _bert2bert(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase,
               source: transformers.PretrainedConfig) -> EncoderDecoderModel:
    """EncoderDecoderModel from one BERT checkpoint (LSG encoder, causal decoder with new cross-attention), or
    a trained bert2bert directory whose LSG encoder is extended as asked."""
    try:
        model = (EncoderDecoderModel.from_pretrained(cfg.checkpoint) if source.model_type == "encoder-decoder"
                 else EncoderDecoderModel.from_encoder_decoder_pretrained(cfg.checkpoint, cfg.checkpoint))
    except (OSError, ValueError) as error:
        raise _checkpoint_error(cfg.checkpoint, error) from error
    encoder = model.encoder
    if is_lsg_model(encoder.config):
        encoder = _extended(encoder, tokenizer, cfg)
    elif cfg.attention == "lsg":
        encoder = _to_lsg(encoder, tokenizer, cfg)
    else:
        check_original_length(cfg, encoder.config)
    model = EncoderDecoderModel(encoder=encoder, decoder=model.decoder)
    # BERT has no BOS/EOS: the decoder starts from [CLS] and stops at [SEP] (the usual bert2bert recipe).
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    model.config.decoder_start_token_id = start
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = end
    model.generation_config.decoder_start_token_id = start
    model.generation_config.bos_token_id = start
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = end
    return model


# Model types whose own attention is sparse: a public Longformer or BigBird checkpoint run with attention=original.
_SPARSE_MODEL_TYPES = {"longformer": "longformer", "big_bird": "bigbird"}


def attention_label(cfg: ModelConfig, model: PreTrainedModel) -> str:
    """The attention a run computes, for W&B tags: `attention=original` resolves to the checkpoint's own
    (`longformer`, `bigbird`, else `full`), so a dashboard filter on `attention:longformer` finds the public
    Longformer checkpoint as well as the one converted from RoBERTa."""
    if cfg.attention != "original":
        return cfg.attention
    config = getattr(model.config, "encoder", model.config)  # encoder-decoders: the encoder reads the document
    return _SPARSE_MODEL_TYPES.get(config.model_type, "full")


def is_head_parameter(model: PreTrainedModel, name: str) -> bool:
    """Whether a parameter belongs to the task head: outside the base model, or its pooler."""
    return not name.startswith(f"{model.base_model_prefix}.") or ".pooler." in name


def apply_tuning(model: PreTrainedModel, cfg: TrainerConfig) -> dict[str, int]:
    """Freeze what trainer.tune / trainer.freeze_layers say; returns trainable and total parameter counts.

    * tune=global_tokens (paper Tables 4-7, "+ global tuning"): only the global-token embeddings learn, plus,
      for encoders, the task head (everything outside the base model, plus the pooler), which is new; a
      seq2seq model's LM head is pretrained (and bert2bert names no base model: every weight would be "head").
    * freeze_layers=N: the embeddings (global ones included) and encoder layers 0..N-1 are frozen, so
      backward stops at layer N: the CPU budget of `make run`.
    """
    seq2seq = model.config.is_encoder_decoder
    for name, parameter in model.named_parameters():
        in_head = is_head_parameter(model, name)
        if cfg.tune == "global_tokens":
            parameter.requires_grad = "global_embeddings" in name or (in_head and not seq2seq)
        elif cfg.freeze_layers and not in_head:
            layer = _LAYER_INDEX.search(name)
            parameter.requires_grad = layer is not None and int(layer.group(1)) >= cfg.freeze_layers
    counts = {"trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "parameters": sum(p.numel() for p in model.parameters())}
    if cfg.tune == "global_tokens" and not any("global_embeddings" in n for n, _ in model.named_parameters()):
        raise ValueError("trainer.tune=global_tokens but the model has no global_embeddings (is it an LSG model?)")
    return counts
