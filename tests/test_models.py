"""tasks/models.py: the composed `model` config reaches the built model (every LSG/conversion field, the
position limit of `attention=original`). Tiny random checkpoints saved to a temp dir, no downloads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertModel,
)

import lsg
from lsg.assets import minilm_dir
from lsg.settings import LSGSettings
from tasks.config import ModelConfig, to_run_config
from tasks.models import build_model, load_tokenizer

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def model_config():
    """compose(overrides) -> the validated `model` node."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda *overrides: to_run_config(compose(config_name="config", overrides=list(overrides))).model
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A 2-layer BERT (128 positions) and a 1+1-layer BART with BART-base's 1024 positions, with MiniLM's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    bert = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=128)
    bart = BartConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                      max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.sep_token_id)
    paths = {}
    for name, model in (("bert", BertModel(bert)), ("bart", BartForConditionalGeneration(bart))):
        paths[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def _build(cfg: ModelConfig, head: str = "ForSequenceClassification", **head_kwargs):
    return build_model(cfg, head, load_tokenizer(cfg, cfg.max_length), **head_kwargs)


def test_every_lsg_and_conversion_field_reaches_the_converted_model(model_config, checkpoints):
    cfg = model_config("model=lsg_norm", f"model.checkpoint={checkpoints['bert']}", "model.max_length=256",
                       "model.lsg.block_size=16", "model.lsg.sparse_block_size=16", "model.lsg.mask_first_token=true",
                       "model.lsg.lsh_seed=5", "model.lsg.adaptive=false", "model.lsg.num_global_tokens=3",
                       "model.conversion.random_global_init=true", "model.conversion.seed=9")
    model = _build(cfg, num_labels=3)
    assert LSGSettings.from_object(model.config) == cfg.lsg_settings()
    assert (model.config.mask_first_token, model.config.lsh_seed, model.config.adaptive) == (True, 5, False)
    tokenizer = load_tokenizer(cfg, 256)
    source = AutoModelForSequenceClassification.from_pretrained(checkpoints["bert"], num_labels=3)
    reference = lsg.convert(source, tokenizer, cfg.lsg_settings(), max_length=256,
                            conversion=cfg.conversion_settings())
    # the seeded random global rows (random_global_init, seed 9) differ from any other conversion's
    default = lsg.convert(source, tokenizer, cfg.lsg_settings(), max_length=256)
    table = model.bert.embeddings.global_embeddings.weight
    assert table.equal(reference.bert.embeddings.global_embeddings.weight)
    assert not table.equal(default.bert.embeddings.global_embeddings.weight)


def test_original_attention_reads_up_to_the_family_length_bart_included(model_config, checkpoints):
    """BART's table has 1024 + 2 rows and reads 1024 tokens (lsg.families), not RoBERTa's 1024 - 2."""
    overrides = ("model=bart_base", "task=aclsum", f"model.checkpoint={checkpoints['bart']}")
    model = _build(model_config(*overrides, "model.max_length=1024"), "seq2seq")
    assert model.model.encoder.embed_positions.weight.shape[0] == 1026
    with pytest.raises(ValueError, match=r"model.max_length=1025 exceeds what .* can read \(1024 positions\)"):
        _build(model_config(*overrides, "model.max_length=1025"), "seq2seq")


def test_original_attention_refuses_lengths_past_the_encoder_positions(model_config, checkpoints):
    overrides = ("model=truncated", "task=bbc_topic", f"model.checkpoint={checkpoints['bert']}")
    assert _build(model_config(*overrides, "model.max_length=128"), num_labels=2).config.max_position_embeddings == 128
    with pytest.raises(ValueError, match=r"model.max_length=129 exceeds .*\(128 positions\)"):
        _build(model_config(*overrides, "model.max_length=129"), num_labels=2)


@pytest.mark.parametrize(("model", "config_class", "expected"), [
    ("longformer", "LongformerConfig", "longformer"), ("bigbird", "BigBirdConfig", "bigbird"),
    ("truncated", "BertConfig", "full"), ("lsg_norm", "BertConfig", "lsg")])
def test_the_attention_tag_names_what_the_checkpoint_computes(model_config, model, config_class, expected):
    """Public Longformer/BigBird checkpoints run with attention=original; their W&B tag must still say which."""
    import transformers

    from tasks.models import attention_label

    config = getattr(transformers, config_class)(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=37, vocab_size=99)
    tiny = transformers.AutoModel.from_config(config)
    assert attention_label(model_config(f"model={model}", "task=bbc_longdoc"), tiny) == expected
