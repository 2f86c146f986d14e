"""Conversion of tiny models of every family: every head, transfer rules (I9, I10), equivalence, save/load."""

import pytest
import torch
import transformers
from conftest import main_output, tiny_config_kwargs, tiny_inputs, tiny_model
from transformers import BertConfig

import lsg
from lsg.convert import ConversionSettings
from lsg.families import FAMILIES
from lsg.positions import global_positions
from lsg.settings import LSGSettings

HEADS = [(family, suffix) for family in FAMILIES for suffix in FAMILIES[family].heads]
LEARNED_POSITIONS = [name for name, family in FAMILIES.items()
                     if family.position_tables and not family.sinusoidal_positions]
ENCODERS = [name for name, family in FAMILIES.items() if not family.is_encoder_decoder]
# Decoder-only families have a key/value prefix instead of global rows (test_causal_models).
GLOBAL_ROWS = [name for name, family in FAMILIES.items() if not family.causal_lm]
SMALL = dict(block_size=8, sparse_block_size=8, sparsity_factor=2, bos_token_id=0, mask_token_id=4)


def build(family: str, suffix: str = "ForMaskedLM", **config_overrides):
    return tiny_model(family, suffix if suffix in FAMILIES[family].heads else None, **config_overrides)


def inputs_for(suffix: str, length: int, batch: int = 2, pad: int = 3, family: str = "bert"):
    return tiny_inputs(family, suffix, length, batch, pad)


@pytest.mark.parametrize(("family", "suffix"), HEADS)
def test_every_head_converts_and_keeps_output_shapes(family, suffix):
    model = build(family, suffix)
    converted = lsg.convert(model, max_length=200, **SMALL)
    assert type(converted).__name__ == f"LSG{type(model).__name__}"
    assert isinstance(converted, type(model))
    inputs = inputs_for(suffix, 150, family=family)
    with torch.no_grad():
        out = main_output(converted(**inputs))
        short = main_output(model(**inputs_for(suffix, 40, family=family)))
    assert out.shape[0] == short.shape[0] and out.shape[2:] == short.shape[2:]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", LEARNED_POSITIONS)
def test_position_tables_are_tiled(family):
    """I9: each table has L + offset rows and new[off + k] == W[off + k mod n] (defect D1 fixed).

    BART-like models tile the encoder and the decoder tables; the saved max_position_embeddings is L + 2 for
    the RoBERTa family (its config counts the offset rows) and L for BART (its embedding class adds them).
    """
    model = build(family)
    spec = FAMILIES[family]
    offset = spec.position_offset
    for length in (64, 65, 130, 1000):
        converted = lsg.convert(model, max_length=length, **SMALL)
        assert converted.config.max_position_embeddings == length + spec.saved_position_offset
        for path in spec.position_tables:
            old = model.base_model.get_submodule(path).weight
            new = converted.base_model.get_submodule(path).weight
            assert new.shape[0] == length + offset
            index = torch.arange(length) % (old.shape[0] - offset) + offset
            assert torch.equal(new[:offset], old[:offset]) and torch.equal(new[offset:], old[index])


@pytest.mark.parametrize("family", GLOBAL_ROWS)
def test_global_rows_follow_the_reference_formula(family):
    """I10: row g = P[pos(g)] + s * W[bos if g == 0 else mask] (+ token-type row 0 for the BERT family, D14).

    s is the model's own word-embedding scale (sqrt(d_model) for mBART/Pegasus: D13); rotary ModernBERT has
    no position term; the table sits at the authors' weight name (embeddings, or the encoder for seq2seq).
    """
    model = build(family)
    spec = FAMILIES[family]
    converted = lsg.convert(model, max_length=128, **SMALL)
    base = model.base_model
    words = base.get_submodule(spec.word_embeddings).weight * spec.word_scale(model.config)
    table = converted.base_model.get_submodule(spec.global_table_owner).global_embeddings.weight
    assert table.shape == (512, words.shape[1])
    expected = words[4].expand(512, -1).clone()
    expected[0] = words[0]
    if spec.position_tables:
        positions = base.get_submodule(spec.position_tables[0]).weight[spec.position_offset:]
        pos = global_positions(512, positions.shape[0], 64)
        # tiny table (64 rows < 512): stride 64 gives one group, wrapped modulo 64 -> 0, 1, 2, ... (D10)
        assert pos[:4] == [0, 1, 2, 3] and max(pos) < 64
        expected = expected + positions[pos]
    if spec.token_type_in_globals:
        expected = expected + base.embeddings.token_type_embeddings.weight[0]
    torch.testing.assert_close(table, expected, atol=0, rtol=0)


def test_global_positions_of_full_size_tables_match_the_authors():
    """Spec §2.3, confirmed on the reference: RoBERTa/BERT (512 rows) and BART (1024 rows)."""
    assert global_positions(10, 512, 64) == [0, 64, 128, 192, 256, 320, 384, 448, 1, 65]
    assert global_positions(18, 1024, 64)[15:] == [960, 2, 66]


# The kernel is the same for every family (test_attention covers every type); what differs per family is
# the wiring around it, so each family runs two selector types, rotating so that every type is used.
_TYPES = ["none", "stride", "norm", "lsh", "bos_pooling", "pooling", "block_stride"]
REFERENCE_CASES = [(family, _TYPES[(i + k) % len(_TYPES)]) for i, family in enumerate(FAMILIES) for k in (0, 3)]


@pytest.mark.parametrize(("family", "sparsity_type"), REFERENCE_CASES)
def test_model_matches_dense_reference_variant(family, sparsity_type):
    """The whole model under "lsg" equals the same weights under the dense "lsg_reference" variant."""
    head = FAMILIES[family].default_head
    model = lsg.convert(build(family, head), max_length=300, num_global_tokens=3, sparsity_type=sparsity_type,
                        **SMALL)
    inputs = inputs_for(head, 203, pad=50, family=family)
    with torch.no_grad():
        fast = main_output(model(**inputs))
        model.set_attn_implementation("lsg_reference")
        reference = main_output(model(**inputs))
    torch.testing.assert_close(fast, reference, atol=2e-5, rtol=0)


@pytest.mark.parametrize(("family", "suffix"), HEADS)
def test_save_and_reload_round_trip(family, suffix, tmp_path):
    converted = lsg.convert(build(family, suffix), max_length=128, sparsity_type="pooling", num_global_tokens=2,
                            **SMALL)
    converted.save_pretrained(tmp_path)
    inputs = inputs_for(suffix, 90, family=family)
    auto = getattr(transformers, lsg.families.AUTO_CLASS_OF_SUFFIX[suffix]).from_pretrained(tmp_path).eval()
    loaded = lsg.load(tmp_path).eval()
    assert type(loaded) is type(converted) is type(auto)
    assert loaded.config.sparsity_type == "pooling" and loaded.config.num_global_tokens == 2
    assert loaded.config._attn_implementation == "lsg"
    with torch.no_grad():
        expected = main_output(converted(**inputs))
        torch.testing.assert_close(main_output(loaded(**inputs)), expected, atol=0, rtol=0)
        torch.testing.assert_close(main_output(auto(**inputs)), expected, atol=0, rtol=0)


def test_load_can_pick_another_head(tmp_path):
    lsg.convert(build("bert", "ForMaskedLM"), max_length=128, **SMALL).save_pretrained(tmp_path)
    classifier = lsg.load(tmp_path, architecture="ForSequenceClassification", num_labels=3)
    assert type(classifier).__name__ == "LSGBertForSequenceClassification"
    assert classifier.config.num_labels == 3
    with pytest.raises(ValueError, match="architecture"):
        lsg.load(tmp_path, architecture="ForCausalLM")


def test_load_rejects_a_plain_checkpoint(tmp_path):
    build("bert").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an LSG one"):
        lsg.load(tmp_path)


def test_only_used_global_rows_get_gradients():
    """I13: gradients reach global rows < G and no others."""
    model = lsg.convert(build("roberta"), max_length=128, num_global_tokens=3, **SMALL).train()
    inputs = inputs_for("ForMaskedLM", 100)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    grad = model.base_model.embeddings.global_embeddings.weight.grad
    assert grad[:3].abs().sum(1).gt(0).all() and grad[3:].abs().sum() == 0


def test_hidden_states_and_pooler_see_real_tokens_only():
    model = lsg.convert(build("bert", "Model"), max_length=128, num_global_tokens=4, **SMALL)
    inputs = inputs_for("Model", 70)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 70, 32)
    assert [h.shape[1] for h in out.hidden_states] == [70, 70, 70]
    torch.testing.assert_close(out.pooler_output, model.pooler(out.last_hidden_state))
    with torch.no_grad():
        as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (2, 70, 32)


def test_pool_with_global_puts_global_zero_in_the_first_token():
    model = lsg.convert(build("bert", "Model"), max_length=128, **SMALL)
    inputs = inputs_for("Model", 40)
    with torch.no_grad():
        pooled = model(**inputs, output_hidden_states=True)
        model.config.pool_with_global = False
        plain = model(**inputs)
    torch.testing.assert_close(pooled.last_hidden_state[:, 1:], plain.last_hidden_state[:, 1:])
    assert not torch.allclose(pooled.last_hidden_state[:, 0], plain.last_hidden_state[:, 0])


def test_conversion_keeps_mode_dtype_and_does_not_touch_the_source():
    model = build("bert").train().to(torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = lsg.convert(model, max_length=128, **SMALL)
    assert converted.training and converted.dtype == torch.float64
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not hasattr(model.base_model.embeddings, "global_embeddings")


def test_ids_come_from_the_tokenizer_next_to_the_model_or_fail_clearly(tmp_path):
    model = build("bert")
    with pytest.raises(ValueError, match="mask_token_id"):
        lsg.convert(model, max_length=128)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lsg.convert(model, max_length=128, bos_token_id=0, mask_token_id=500)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 0}, "block_size=0"),
        ({"sparsity_factor": 16}, "sparsity_factor=16"),
        ({"sparsity_factor": 3}, "sparsity_factor=3"),
        ({"sparsity_type": "dense"}, "sparsity_type='dense'"),
        ({"num_global_tokens": 0}, "num_global_tokens=0"),
        ({"num_global_tokens": 513}, "num_global_tokens=513"),
        ({"max_length": 32}, "max_length=32"),
        ({"mask_first_token": True, "pool_with_global": False}, "pool_with_global"),
        ({"global_positional_stride": 0}, "global_positional_stride=0"),
    ],
)
def test_bad_parameters_raise_a_clear_value_error(kwargs, message):
    settings = {**SMALL, "max_length": 128, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        lsg.convert(build("bert"), **settings)


def _same_model(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return a.config.to_dict() == b.config.to_dict() and sa.keys() == sb.keys() and all(
        torch.equal(sa[k], sb[k]) for k in sa)


def test_settings_objects_and_the_authors_keywords_convert_alike():
    """`convert(model, tokenizer, settings, conversion=...)` equals the same values given as keywords."""
    model = build("bart", "ForConditionalGeneration")
    keywords = dict(block_size=16, sparse_block_size=8, sparsity_factor=4, sparsity_type="lsh", num_global_tokens=3,
                    mask_first_token=True, lsh_num_pre_rounds=2, lsh_seed=5, adaptive=False)
    extra = dict(random_global_init=True, global_positional_stride=7, pass_global_tokens_to_decoder=False, seed=9)
    by_keywords = lsg.convert(model, max_length=256, bos_token_id=0, mask_token_id=4, **keywords, **extra)
    by_objects = lsg.convert(model, None, LSGSettings(**keywords), max_length=256, bos_token_id=0, mask_token_id=4,
                             conversion=ConversionSettings(**extra))
    assert _same_model(by_keywords, by_objects)
    assert by_objects.config.lsh_seed == 5 and by_objects.config.pass_global_tokens_to_decoder is False
    # the authors' length keyword, and keywords replacing single fields of the objects
    mixed = lsg.convert(model, settings=LSGSettings(**{**keywords, "block_size": 64}), conversion=ConversionSettings(),
                        max_sequence_length=256, bos_token_id=0, mask_token_id=4, block_size=16, **extra)
    assert _same_model(mixed, by_objects)


def test_unknown_keywords_name_the_settings_fields():
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['block_sise'\].*'block_size'.*'seed'"):
        lsg.convert(build("bert"), max_length=128, block_sise=8, **SMALL)


def test_unsupported_architectures_are_named():
    opt = transformers.OPTModel(transformers.OPTConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                                                       ffn_dim=37, vocab_size=99, word_embed_proj_dim=32))
    with pytest.raises(ValueError, match="model_type='opt' is not supported.*BertForMaskedLM"):
        lsg.convert(opt, max_length=128, **SMALL)
    with pytest.raises(ValueError, match="is_decoder=True"):
        lsg.convert(transformers.BertLMHeadModel(BertConfig(**tiny_config_kwargs(is_decoder=True))), **SMALL)
    with pytest.raises(ValueError, match="BertLMHeadModel is not supported"):
        lsg.convert(transformers.BertLMHeadModel(BertConfig(**tiny_config_kwargs())), **SMALL)
    with pytest.raises(ValueError, match="already an LSG model"):
        lsg.convert(lsg.convert(build("bert"), max_length=128, **SMALL), max_length=256, **SMALL)


def test_inputs_longer_than_max_length_are_refused():
    """D17: a clear error with the limit instead of an index error in the position table."""
    model = lsg.convert(build("bert"), max_length=100, **SMALL)
    with pytest.raises(ValueError, match="exceeds max_length=100"):
        model(input_ids=torch.randint(5, 99, (1, 101)))


def test_prepared_4d_masks_are_refused():
    model = lsg.convert(build("bert"), max_length=100, **SMALL)
    with pytest.raises(ValueError, match="2-D"):
        model(input_ids=torch.randint(5, 99, (1, 30)), attention_mask=torch.ones(1, 1, 30, 30, dtype=torch.bool))


@pytest.mark.parametrize(
    ("name", "suffix"),
    [("LSGBertForMaskedLM", "ForMaskedLM"), ("BertForMaskedLM", "ForMaskedLM"), ("ForMaskedLM", "ForMaskedLM"),
     ("Model", "Model"), ("RobertaForMaskedLM", None), ("BertLMHeadModel", None), ("ForCausalLM", None)],
)
def test_head_names_resolve_with_or_without_prefixes(name, suffix):
    assert FAMILIES["bert"].suffix_of(name) == suffix
