"""Per-family invariants on tiny random models: I3 (global keys hidden == original), I4 (padding), I12.

`test_convert.py` covers conversion rules and round trips for every head; this file checks that the
hooks each family needs put the global tokens in and take them out at the right places.
"""

import pytest
import torch
from conftest import main_output, tiny_inputs, tiny_model

import lsg
from lsg.families import FAMILIES
from lsg.invariants import tokens_only_max_diff

SMALL = dict(block_size=16, sparse_block_size=8, sparsity_factor=2, bos_token_id=0, mask_token_id=4)
# ModernBERT's sliding layers see +-32 tokens in the tiny config: I3 needs inputs they see whole.
I3_LENGTH = {"modernbert": 30}


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_global_keys_give_the_original_model(family):
    """I3: at T <= 2*bs, with global keys hidden and no pooling, the converted model is the original one.

    Encoder-decoders drop the globals from the encoder output for this check
    (pass_global_tokens_to_decoder=False), so the decoder sees exactly the original encoder states.
    """
    original = tiny_model(family, "Model")
    converted = lsg.convert(original, max_length=256, num_global_tokens=3, pool_with_global=False,
                            pass_global_tokens_to_decoder=False, **SMALL)
    batch = tiny_inputs(family, "Model", I3_LENGTH.get(family, 32), pad=5)
    if "decoder_input_ids" in batch:  # decoder outputs then line up with the padding mask of the inputs
        batch["decoder_input_ids"] = batch["input_ids"]
    assert tokens_only_max_diff(original, converted, batch) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_appended_padding_leaves_real_outputs_unchanged(family):
    """I4 through the whole model, past the short rule (T > 2*bs), for every family's hook placement."""
    head = FAMILIES[family].default_head
    model = lsg.convert(tiny_model(family, head), max_length=256, num_global_tokens=2, **SMALL)
    batch = tiny_inputs(family, head, 70, batch=1, pad=0)
    padded = {k: v.clone() for k, v in batch.items()}
    padded["input_ids"] = torch.cat([batch["input_ids"], torch.full((1, 20), 3)], dim=1)
    padded["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros(1, 20, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = model(**batch, output_hidden_states=True)
        longer = model(**padded, output_hidden_states=True)
    states = "encoder_last_hidden_state" if FAMILIES[family].is_encoder_decoder else "hidden_states"
    expected = plain[states][-1] if states == "hidden_states" else plain[states]
    actual = longer[states][-1] if states == "hidden_states" else longer[states]
    torch.testing.assert_close(actual[:, : expected.shape[1]], expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_rows_are_independent(family):
    """I12 through the whole model: a row's output does not depend on the other rows of the batch."""
    head = FAMILIES[family].default_head
    model = lsg.convert(tiny_model(family, head), max_length=256, **SMALL)
    batch = tiny_inputs(family, head, 60, batch=3, pad=11)
    with torch.no_grad():
        together = main_output(model(**batch))
        alone = main_output(model(**{k: v[2:] for k, v in batch.items()}))
    torch.testing.assert_close(together[2:], alone, atol=2e-5, rtol=0)


def test_albert_shares_one_lsg_attention_module_across_depth():
    """ALBERT reuses one layer for all depths: it is stamped once, and the model still matches the reference."""
    model = lsg.convert(tiny_model("albert", "Model"), max_length=256, **SMALL)
    stamped = [m for m in model.modules() if hasattr(m, "lsg_layer_index")]
    assert len(stamped) == 1 and model.config.num_hidden_layers == 2
    batch = tiny_inputs("albert", "Model", 90)
    with torch.no_grad():
        fast = model(**batch).last_hidden_state
        model.set_attn_implementation("lsg_reference")
        torch.testing.assert_close(model(**batch).last_hidden_state, fast, atol=2e-5, rtol=0)


def test_modernbert_rotary_positions_move_up_by_the_number_of_globals():
    """Global rows take rotary positions 0..G-1 and tokens G..G+T-1: token-to-token scores are unchanged."""
    model = lsg.convert(tiny_model("modernbert", "Model"), max_length=4096, num_global_tokens=3, **SMALL)
    seen = []
    model.base_model.rotary_emb.register_forward_hook(lambda module, args, out: seen.append(args[1]))
    with torch.no_grad():
        model(**tiny_inputs("modernbert", "Model", 100))
    assert all(torch.equal(ids[0], torch.arange(103)) for ids in seen)


def test_modernbert_runs_past_its_own_maximum_length():
    """Rotary positions need no tiling: the converted model reads 4x its original 64 positions."""
    model = lsg.convert(tiny_model("modernbert", "ForMaskedLM"), max_length=256, **SMALL)
    assert model.config.max_position_embeddings == 256
    with torch.no_grad():
        logits = model(**tiny_inputs("modernbert", "ForMaskedLM", 256)).logits
    assert logits.shape == (2, 256, 99) and torch.isfinite(logits).all()


def test_electra_and_albert_globals_live_before_the_embedding_projection():
    """Their embeddings are `embedding_size` wide (16 here) and projected to hidden (32) afterwards."""
    for family in ("electra", "albert"):
        model = lsg.convert(tiny_model(family, "Model"), max_length=256, **SMALL)
        assert model.base_model.embeddings.global_embeddings.weight.shape == (512, 16)
