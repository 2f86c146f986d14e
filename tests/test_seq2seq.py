"""Encoder-decoders (BART, mBART, Pegasus; design §3.6): LSG encoder, dense decoder, G-padded cross mask, generate."""

import pytest
import torch
from conftest import tiny_inputs, tiny_model

import lsg

SMALL = dict(block_size=16, sparse_block_size=16, sparsity_factor=4, bos_token_id=0, mask_token_id=4)
SEQ2SEQ = ["bart", "mbart", "pegasus"]


def long_batch(family: str, length: int, pad: int = 9) -> dict:
    batch = tiny_inputs(family, "ForConditionalGeneration", length, pad=pad)
    batch["input_ids"][-1, length - pad - 1] = tiny_model(family).config.eos_token_id  # EOS before the padding
    return batch


@pytest.mark.parametrize("family", SEQ2SEQ)
def test_encoder_output_keeps_the_global_tokens(family):
    """pass_global_tokens_to_decoder=True: G + T rows (globals in front), hidden states too; False: T rows."""
    model = lsg.convert(tiny_model(family), max_length=512, num_global_tokens=3, **SMALL)
    batch = long_batch(family, 150)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    assert out.encoder_last_hidden_state.shape == (2, 153, 32)
    assert {h.shape[1] for h in out.encoder_hidden_states} == {153}
    model.config.pass_global_tokens_to_decoder = False
    dropped = lsg.convert(tiny_model(family), max_length=512, num_global_tokens=3,
                          pass_global_tokens_to_decoder=False, **SMALL)
    with torch.no_grad():
        assert dropped(**batch).encoder_last_hidden_state.shape == (2, 150, 32)
        as_tuple = dropped.get_encoder()(batch["input_ids"], batch["attention_mask"], return_dict=False)
    assert as_tuple[0].shape == (2, 150, 32)


@pytest.mark.parametrize("family", SEQ2SEQ)
def test_decoder_sees_the_globals_through_the_padded_cross_mask(family):
    """Decoder logits == a plain SDPA model fed the same encoder states and the mask left-padded with G ones."""
    source = tiny_model(family)
    model = lsg.convert(source, max_length=512, num_global_tokens=3, **SMALL)
    batch = long_batch(family, 150)
    with torch.no_grad():
        out = model(**batch)
        extended = torch.cat([torch.ones(2, 3, dtype=torch.long), batch["attention_mask"]], dim=1)
        plain = source(encoder_outputs=(out.encoder_last_hidden_state,), attention_mask=extended,
                       decoder_input_ids=batch["decoder_input_ids"])
        hidden = source(encoder_outputs=(out.encoder_last_hidden_state,),
                        attention_mask=torch.cat([torch.zeros_like(extended[:, :3]), batch["attention_mask"]], 1),
                        decoder_input_ids=batch["decoder_input_ids"])
    error = (out.logits - plain.logits).abs().max()
    assert error < 1e-5
    assert (out.logits - hidden.logits).abs().max() > 20 * error  # the globals do reach the decoder


def test_mask_first_token_also_hides_the_first_source_token_from_cross_attention():
    """Spec §3.6: the authors' in-place mask edit hid token 0 from the decoder; reproduced on a copy (D11)."""
    source = tiny_model("bart")
    model = lsg.convert(source, max_length=512, num_global_tokens=2, mask_first_token=True, **SMALL)
    batch = long_batch("bart", 100)
    before = batch["attention_mask"].clone()
    with torch.no_grad():
        out = model(**batch)
        extended = torch.cat([torch.ones(2, 2, dtype=torch.long), batch["attention_mask"]], dim=1)
        extended[:, 2] = 0
        plain = source(encoder_outputs=(out.encoder_last_hidden_state,), attention_mask=extended,
                       decoder_input_ids=batch["decoder_input_ids"])
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-5, rtol=0)
    assert torch.equal(batch["attention_mask"], before)


def test_beam_search_generation_reads_4096_tokens():
    """generate() with beams on a 4,100-token input equals the plain decoder over the same encoder states."""
    source = tiny_model("bart")
    model = lsg.convert(source, max_length=4200, sparsity_type="norm", block_size=64, sparse_block_size=32,
                        sparsity_factor=4, num_global_tokens=2, bos_token_id=0, mask_token_id=4)
    batch = long_batch("bart", 4100, pad=300)
    del batch["decoder_input_ids"]
    settings = dict(num_beams=3, max_new_tokens=6, min_new_tokens=6, length_penalty=2.0, do_sample=False)
    with torch.no_grad():
        beams = model.generate(**batch, **settings)
        uncached = model.generate(**batch, **settings, use_cache=False)
        encoder = model.get_encoder()(**batch)
        extended = torch.cat([torch.ones(2, 2, dtype=torch.long), batch["attention_mask"]], dim=1)
        reference = source.generate(encoder_outputs=encoder, attention_mask=extended, **settings)
    assert beams.shape == (2, 7)
    assert torch.equal(beams, uncached) and torch.equal(beams, reference)


def test_decoder_positions_are_tiled_for_long_targets():
    source = tiny_model("bart")
    model = lsg.convert(source, max_length=300, **SMALL)
    batch = long_batch("bart", 40)
    batch["decoder_input_ids"] = torch.randint(5, 99, (2, 250))  # past the source's 64 decoder positions
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 250, 99) and torch.isfinite(logits).all()


def test_pegasus_sinusoids_are_rebuilt_for_the_new_length():
    source = tiny_model("pegasus")
    model = lsg.convert(source, max_length=300, **SMALL)
    for table in (model.model.encoder.embed_positions, model.model.decoder.embed_positions):
        assert table.weight.shape == (300, 32)
        torch.testing.assert_close(table.weight[:64], source.model.encoder.embed_positions.weight)
        torch.testing.assert_close(table.weight, table.create_weight())


def test_pegasus_layerdrop_is_refused_before_conversion():
    """The globals enter before Pegasus' first encoder layer, which LayerDrop could skip."""
    with pytest.raises(ValueError, match="encoder_layerdrop=0.1"):
        lsg.convert(tiny_model("pegasus", encoder_layerdrop=0.1), max_length=300, **SMALL)


def test_conversion_keeps_the_generation_settings():
    source = tiny_model("bart")
    source.generation_config.num_beams = 5
    source.generation_config.length_penalty = 2.0
    model = lsg.convert(source, max_length=300, **SMALL)
    assert model.generation_config.num_beams == 5 and model.generation_config.length_penalty == 2.0
