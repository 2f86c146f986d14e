"""Longformer / BigBird baselines from RoBERTa and BERT weights: equivalence where they degenerate to full
attention, tiled positions, long inputs, save/load, error paths (integration notes §5)."""

import pytest
import torch
import transformers
from conftest import tiny_config_kwargs
from transformers import AutoModel, BertConfig, RobertaConfig

from lsg.baselines import BIGBIRD_HEADS, LONGFORMER_HEADS, first_token_global_mask, to_bigbird, to_longformer
from lsg.families import FAMILIES

CONFIGS = {
    "roberta": lambda: RobertaConfig(**tiny_config_kwargs(max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                                          eos_token_id=2, type_vocab_size=1)),
    "bert": lambda: BertConfig(**tiny_config_kwargs()),
}
WINDOW = 16  # Longformer sees 8 tokens on each side: T <= 9 is full attention
BIGBIRD = dict(block_size=8, num_random_blocks=1)  # block-sparse only above (5 + 2) * 8 = 56 tokens


def build(family, suffix):
    return getattr(transformers, FAMILIES[family].name + suffix)(CONFIGS[family]()).eval()


def batch(length, pad=3, batch_size=2):
    ids = torch.randint(5, 99, (batch_size, length))
    mask = torch.ones_like(ids)
    mask[-1, length - pad:] = 0
    return ids, mask


def outputs(model, ids, mask, **kwargs):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kwargs)
    return out.hidden_states[-1], getattr(out, "logits", None)


def assert_real_close(actual, expected, mask, atol=1e-5):
    real = mask.bool()
    if actual.dim() == 2:  # sequence-level logits
        real = torch.ones(actual.shape[0], dtype=torch.bool)
    torch.testing.assert_close(actual[real], expected[real], atol=atol, rtol=0)


@pytest.mark.parametrize("family", CONFIGS)
@pytest.mark.parametrize("suffix", LONGFORMER_HEADS)
def test_longformer_equals_the_source_when_the_window_covers_the_input(family, suffix):
    model = build(family, suffix)
    converted = to_longformer(model, max_length=256, attention_window=WINDOW)
    assert type(converted).__name__ == f"Longformer{suffix}"
    ids, mask = batch(9)
    hidden, logits = outputs(model, ids, mask)
    for extra in ({}, {"global_attention_mask": first_token_global_mask(mask)}):
        long_hidden, long_logits = outputs(converted, ids, mask, **extra)
        assert long_hidden.shape == hidden.shape  # Longformer pads to 16 internally and cuts back
        assert_real_close(long_hidden, hidden, mask)
        if logits is not None:
            assert_real_close(long_logits, logits, mask)


@pytest.mark.parametrize("family", CONFIGS)
@pytest.mark.parametrize("suffix", BIGBIRD_HEADS)
def test_bigbird_equals_the_source_when_it_falls_back_to_full_attention(family, suffix):
    model = build(family, suffix)
    converted = to_bigbird(model, max_length=256, **BIGBIRD)
    assert type(converted).__name__ == f"BigBird{suffix}" and converted.config.attention_type == "block_sparse"
    ids, mask = batch(40)
    hidden, logits = outputs(model, ids, mask)
    long_hidden, long_logits = outputs(converted, ids, mask)
    assert_real_close(long_hidden, hidden, mask)
    if suffix == "ForSequenceClassification":  # BigBird's head: act(dense) where the source uses tanh
        head = converted.classifier
        expected = head.out_proj(transformers.activations.ACT2FN[converted.config.hidden_act](head.dense(hidden[:, 0])))
        assert_real_close(long_logits, expected, mask)
    elif logits is not None:
        assert_real_close(long_logits, logits, mask)


@pytest.mark.parametrize("family", CONFIGS)
def test_pooler_is_copied_to_both_base_models(family):
    model = build(family, "Model")
    ids, mask = batch(9)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).pooler_output
        for converted in (to_longformer(model, max_length=128, attention_window=WINDOW),
                          to_bigbird(model, max_length=128, **BIGBIRD)):
            torch.testing.assert_close(converted(input_ids=ids, attention_mask=mask).pooler_output, expected,
                                       atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", CONFIGS)
def test_position_tables_are_tiled_like_lsg(family):
    """Rows of real tokens: Longformer from padding_idx + 1, BigBird from 0; new[k] = old[k mod 64]."""
    model = build(family, "ForMaskedLM")
    source_offset = FAMILIES[family].position_offset
    old = model.base_model.embeddings.position_embeddings.weight
    expected = old[source_offset + torch.arange(300) % 64]
    longformer = to_longformer(model, max_length=300, attention_window=WINDOW)
    offset = model.config.pad_token_id + 1
    table = longformer.longformer.embeddings.position_embeddings.weight
    assert table.shape[0] == 300 + offset == longformer.config.max_position_embeddings
    torch.testing.assert_close(table[offset:], expected, atol=0, rtol=0)
    bigbird = to_bigbird(model, max_length=300, **BIGBIRD)
    assert bigbird.config.max_position_embeddings == 300
    torch.testing.assert_close(bigbird.bert.embeddings.position_embeddings.weight, expected, atol=0, rtol=0)


def test_longformer_global_projections_are_the_pretrained_ones():
    model = build("roberta", "ForMaskedLM")
    converted = to_longformer(model, max_length=128, attention_window=WINDOW)
    source, target = model.roberta.encoder.layer[1].attention.self, converted.longformer.encoder.layer[1].attention.self
    for name in ("query", "key", "value"):
        for copy in (getattr(target, name), getattr(target, f"{name}_global")):
            assert torch.equal(copy.weight, getattr(source, name).weight)
            assert copy.weight.data_ptr() != getattr(source, name).weight.data_ptr()  # copies, not aliases


@pytest.mark.parametrize("converter", [to_longformer, to_bigbird])
def test_long_inputs_run_beyond_the_original_length(converter):
    options = {"attention_window": WINDOW} if converter is to_longformer else BIGBIRD
    model = build("roberta", "ForMaskedLM")
    converted = converter(model, max_length=256, **options)
    ids, mask = batch(203, pad=50)
    _, logits = outputs(converted, ids, mask)
    assert logits.shape == (2, 203, 99) and torch.isfinite(logits).all()
    if converter is to_bigbird:
        assert converted.bert.attention_type == "block_sparse"  # 203 tokens > 56: no fallback happened


def test_longformer_padding_leaves_real_tokens_unchanged():
    """(BigBird has no such invariance: its last block is global, so padding moves it.)"""
    converted = to_longformer(build("roberta", "ForMaskedLM"), max_length=256, attention_window=WINDOW)
    ids, mask = batch(150, pad=0, batch_size=1)
    alone, _ = outputs(converted, ids, mask)
    padded_ids = torch.cat([ids, torch.full((1, 53), converted.config.pad_token_id)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros_like(mask[:, :53])], dim=1)
    in_batch, _ = outputs(converted, padded_ids, padded_mask)
    torch.testing.assert_close(in_batch[:, :150], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("converter", [to_longformer, to_bigbird])
def test_save_and_reload_round_trip(converter, tmp_path):
    options = {"attention_window": WINDOW} if converter is to_longformer else BIGBIRD
    converted = converter(build("roberta", "ForMaskedLM"), max_length=256, **options)
    converted.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(converted)
    assert type(AutoModel.from_pretrained(tmp_path)).__name__ in ("LongformerModel", "BigBirdModel")
    ids, mask = batch(150)
    torch.testing.assert_close(outputs(loaded, ids, mask)[1], outputs(converted, ids, mask)[1], atol=0, rtol=0)


@pytest.mark.parametrize("converter", [to_longformer, to_bigbird])
def test_unsupported_sources_are_refused_with_the_supported_list(converter):
    with pytest.raises(ValueError, match=r"cannot convert RobertaForQuestionAnswering; supported source classes: "
                                         r"\[.*'BertModel'.*'RobertaForMaskedLM'"):
        converter(build("roberta", "ForQuestionAnswering"))
    with pytest.raises(ValueError, match="max_length=32"):
        converter(build("roberta", "ForMaskedLM"), max_length=32)


@pytest.mark.parametrize(("converter", "options", "message"), [
    (to_longformer, {"attention_window": 15}, "attention_window=15 must be an even integer"),
    (to_longformer, {"attention_window": 0}, "attention_window=0"),
    (to_bigbird, {"block_size": 0}, "block_size=0 is out of range: it must be >= 1"),
    (to_bigbird, {"num_random_blocks": -1}, "num_random_blocks=-1"),
])
def test_bad_settings_raise(converter, options, message):
    with pytest.raises(ValueError, match=message):
        converter(build("roberta", "ForMaskedLM"), max_length=128, **options)


def test_source_model_is_left_unchanged():
    model = build("roberta", "ForMaskedLM")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    to_longformer(model, max_length=128, attention_window=WINDOW)
    to_bigbird(model, max_length=128, **BIGBIRD)
    assert model.config.max_position_embeddings == 66 and model.config.model_type == "roberta"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _attention_classes(model, ids, mask):
    """The self-attention class each BigBird layer ran for one forward (recorded by a probe hook)."""
    ran = []
    probes = [layer.attention.register_forward_pre_hook(lambda module, args: ran.append(type(module.self).__name__))
              for layer in model.base_model.encoder.layer]
    model(input_ids=ids, attention_mask=mask)
    for probe in probes:
        probe.remove()
    return ran


def _short_then_long(model):
    """A training step on a short batch (full-attention fallback), then the classes run on a long batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    ids, mask = batch(20)
    model(input_ids=ids, attention_mask=mask, labels=torch.zeros(2, dtype=torch.long)).loss.backward()
    optimizer.step()
    return _attention_classes(model, *batch(112))


def test_bigbird_runs_block_sparse_after_a_short_batch():
    model = to_bigbird(build("roberta", "ForSequenceClassification"), max_length=256, **BIGBIRD)
    layers = len(model.base_model.encoder.layer)
    assert _short_then_long(model) == ["BigBirdBlockSparseAttention"] * layers
    model.eval()
    with torch.no_grad():  # the fallback itself is kept, for the short call only
        assert _attention_classes(model, *batch(20)) == ["BigBirdSelfAttention"] * layers
        assert _attention_classes(model, *batch(112)) == ["BigBirdBlockSparseAttention"] * layers


def test_pipeline_keeps_a_bigbird_checkpoint_block_sparse(tmp_path):
    from tasks.config import ModelConfig
    from tasks.models import build_model

    source = to_bigbird(build("roberta", "ForSequenceClassification"), max_length=256, **BIGBIRD)
    source.save_pretrained(tmp_path)  # hooks are not saved: the pipeline must install it again
    cfg = ModelConfig(name="bigbird", checkpoint=str(tmp_path), attention="original", max_length=256)
    model = build_model(cfg, "ForSequenceClassification", tokenizer=None, num_labels=2)
    assert _short_then_long(model) == ["BigBirdBlockSparseAttention"] * len(model.base_model.encoder.layer)
