"""`lsg.extend` (design §2.5, I15): growing an LSG model's length and global tokens, for every family."""

import pytest
import torch
from conftest import main_output, tiny_inputs, tiny_model

import lsg
from lsg.convert import main as convert_main
from lsg.families import FAMILIES
from lsg.invariants import global_keys_hidden
from lsg.positions import global_positions

IDS = dict(bos_token_id=0, mask_token_id=4)
# Local-only (the paper's 256/0) with a block wide enough that the short rule covers the test inputs.
LOCAL = dict(block_size=32, sparse_block_size=0, sparsity_factor=0, sparsity_type="none", **IDS)
# ModernBERT's tokens take rotary positions after the G globals: adding globals shifts them (design §2.4).
FIXED_TOKEN_POSITIONS = [name for name, family in FAMILIES.items() if not family.rotary and not family.causal_lm]
# Decoder-only families keep their globals as a key/value prefix per layer (design §3.7): no table to grow.
GLOBAL_TABLES = [name for name, family in FAMILIES.items() if not family.causal_lm]
CAUSAL = [name for name, family in FAMILIES.items() if family.causal_lm]
LEARNED = [name for name, family in FAMILIES.items() if family.position_tables and not family.sinusoidal_positions]


def _lsg(family: str, suffix: str = "Model", **settings):
    return lsg.convert(tiny_model(family, suffix), max_length=64, **{**LOCAL, **settings})


def _real_outputs(model, inputs, tokens: int):
    """The outputs at the real token positions (an encoder-decoder's encoder keeps its globals in front)."""
    if model.config.is_encoder_decoder:
        states = model.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return states.last_hidden_state[:, -tokens:]
    return main_output(model(**inputs))


@pytest.mark.parametrize("family", FAMILIES)
def test_growing_the_length_only_leaves_every_output_unchanged(family):
    """I15: an input the 64-token model reads gives bit-identical outputs at 256 tokens (globals visible)."""
    model = _lsg(family, num_global_tokens=2)
    extended = lsg.extend(model, max_length=256)
    assert type(extended) is type(model) and extended.config.num_global_tokens == 2
    assert extended.config.max_position_embeddings == 256 + FAMILIES[family].saved_position_offset
    inputs = tiny_inputs(family, "Model", 40)
    with torch.no_grad():
        torch.testing.assert_close(main_output(extended(**inputs)), main_output(model(**inputs)), atol=0, rtol=0)


@pytest.mark.parametrize("family", FIXED_TOKEN_POSITIONS)
def test_with_the_globals_hidden_growing_length_and_globals_leaves_the_tokens_unchanged(family):
    """I15: the new global rows are the only change a token could see; hidden, the first positions are equal."""
    model = _lsg(family, num_global_tokens=2)
    extended = lsg.extend(model, max_length=256, num_global_tokens=5, **IDS)
    inputs = tiny_inputs(family, "Model", 40)
    with torch.no_grad(), global_keys_hidden(model), global_keys_hidden(extended):
        before, after = _real_outputs(model, inputs, 40), _real_outputs(extended, inputs, 40)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(after[real], before[real], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", LEARNED)
def test_positions_are_tiled_from_the_current_table(family):
    """4096 -> 16384 in the paper: four copies of the (fine-tuned) table, special rows kept (§2.2)."""
    model = _lsg(family)
    spec = FAMILIES[family]
    with torch.no_grad():  # stand-in for fine-tuning: the extension must tile these rows, not the source's
        for path in spec.position_tables:
            model.base_model.get_submodule(path).weight.add_(1.0)
    extended = lsg.extend(model, max_length=4 * 64 + 3)
    for path in spec.position_tables:
        old = model.base_model.get_submodule(path).weight
        new = extended.base_model.get_submodule(path).weight
        off = spec.position_offset
        index = torch.arange(4 * 64 + 3) % 64 + off
        assert new.shape[0] == 4 * 64 + 3 + off
        assert torch.equal(new[:off], old[:off]) and torch.equal(new[off:], old[index])


@pytest.mark.parametrize("family", CAUSAL)
def test_a_causal_model_grows_its_length_but_not_its_global_prefix(family):
    model = _lsg(family, num_global_tokens=2)
    with pytest.raises(ValueError, match=r"num_global_tokens=5: a causal LSG model keeps its 2 global tokens"):
        lsg.extend(model, max_length=256, num_global_tokens=5, **IDS)
    extended = lsg.extend(model, max_length=256)
    for name, prefix in model.state_dict().items():
        if "lsg_global" in name:
            assert torch.equal(extended.state_dict()[name], prefix)


@pytest.mark.parametrize("family", GLOBAL_TABLES)
def test_used_global_rows_are_kept_and_new_ones_follow_the_conversion_formula(family):
    model = _lsg(family, num_global_tokens=3)
    spec = FAMILIES[family]
    owner = spec.global_table_owner
    with torch.no_grad():  # trained rows: they must survive the extension as they are
        model.base_model.get_submodule(owner).global_embeddings.weight[:3].mul_(3.0)
    extended = lsg.extend(model, max_length=128, num_global_tokens=9, **IDS)
    old = model.base_model.get_submodule(owner).global_embeddings.weight
    new = extended.base_model.get_submodule(owner).global_embeddings.weight
    assert torch.equal(new[:3], old[:3]) and extended.config.num_global_tokens == 9
    base = model.base_model  # the formula of §2.3 over the tables before the extension (D9: not the tiled ones)
    words = base.get_submodule(spec.word_embeddings).weight * spec.word_scale(model.config)
    expected = words[4].expand(512, -1).clone()
    if spec.position_tables:
        positions = base.get_submodule(spec.position_tables[0]).weight[spec.position_offset:]
        expected = expected + positions[global_positions(512, positions.shape[0], 64)]
    if spec.token_type_in_globals:
        expected = expected + base.embeddings.token_type_embeddings.weight[0]
    torch.testing.assert_close(new[3:], expected[3:], atol=1e-6, rtol=0)


def test_extension_refuses_to_shrink_or_a_plain_model_before_copying():
    model = _lsg("roberta", num_global_tokens=4)
    with pytest.raises(ValueError, match=r"max_length=32 .*64 is the model's maximum length; extend only grows"):
        lsg.extend(model, max_length=32)
    with pytest.raises(ValueError, match=r"num_global_tokens=2 .*4 global tokens are in use"):
        lsg.extend(model, num_global_tokens=2)
    with pytest.raises(ValueError, match=r"num_global_tokens=513"):
        lsg.extend(model, num_global_tokens=513, **IDS)
    with pytest.raises(ValueError, match="not an LSG one; use lsg.convert"):
        lsg.extend(tiny_model("roberta"), max_length=128)


def test_a_saved_extension_round_trips_and_the_cli_extends_lsg_checkpoints(tmp_path):
    """`python -m lsg.convert --model <LSG dir>` extends; the saved result loads as the in-memory one."""
    from transformers import AutoTokenizer

    from lsg.assets import minilm_dir

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    source = tmp_path / "lsg4k"
    plain = tiny_model("bert", "ForMaskedLM", vocab_size=len(tokenizer))
    lsg.convert(plain, tokenizer, max_length=64, **{**LOCAL, **IDS}, num_global_tokens=2).save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "lsg16k"
    assert convert_main(["--model", str(source), "--out", str(out), "--max-length", "256",
                         "--num-global-tokens", "6"]) == out
    loaded = lsg.load(out)
    expected = lsg.extend(lsg.load(source), tokenizer, max_length=256, num_global_tokens=6)
    assert (loaded.config.num_global_tokens, loaded.config.max_position_embeddings) == (6, 256)
    for (name, a), (_, b) in zip(loaded.state_dict().items(), expected.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    kept = tmp_path / "same_globals"  # the flag left at its default keeps the saved count
    convert_main(["--model", str(source), "--out", str(kept), "--max-length", "128"])
    assert lsg.load(kept).config.num_global_tokens == 2
