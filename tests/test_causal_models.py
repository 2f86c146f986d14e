"""Decoder-only models (GPT-2, Llama) converted to causal LSG: no output depends on a later token, cached and
uncached decoding agree with the plain forward, the global prefix starts as the source's own keys and values,
and MASFormer plans (design §9) are applied, saved and restored."""

import pytest
import torch
import transformers
from conftest import main_output, tiny_model

import lsg
from lsg.plans import attention_flops, layer_plan, masformer_plan
from lsg.settings import SPARSITY_TYPES, LSGSettings

DECODERS = ["gpt2", "llama"]
SMALL = dict(block_size=8, sparse_block_size=8, sparsity_factor=2, num_global_tokens=2, bos_token_id=0)


def converted(family: str, sparsity_type: str = "pooling", **keywords):
    return lsg.convert(tiny_model(family), max_length=256, sparsity_type=sparsity_type, **{**SMALL, **keywords})


def left_padded(length: int, pad: int = 6):
    ids = torch.randint(5, 99, (2, length))
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    ids[1, :pad] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids as `generate` derives them from a left-padded mask."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("sparsity_type", ["norm", "bos_pooling", "lsh"])
def test_no_logit_depends_on_a_later_token(family, sparsity_type):
    """I6 through the whole model (several layers, LSG beyond 2*bs), padding included."""
    model = converted(family, sparsity_type)
    ids, mask = left_padded(70)
    cut = 45
    changed_ids, changed_mask = ids.clone(), mask.clone()
    changed_ids[:, cut:] = torch.randint(5, 99, (2, 70 - cut))
    changed_mask[0, cut + 3 :] = 0  # later padding too
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        after = model(input_ids=changed_ids, attention_mask=changed_mask).logits
    torch.testing.assert_close(after[:, :cut], before[:, :cut], atol=1e-5, rtol=0)
    assert (after[:, cut:] - before[:, cut:]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["gpt2", pytest.param("llama", marks=pytest.mark.slow)])
def test_generate_with_and_without_cache_equals_the_uncached_forward(family):
    """Greedy decoding past 2*bs and across block boundaries: cached steps, uncached steps and plain full forwards
    of the growing sequence pick the same tokens with the same logits."""
    model = converted(family, "norm")
    prompt, mask = left_padded(30)  # steps see the last 4 of up to 6 blocks (the cached keys are cut)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=1, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        cached = model.generate(input_ids=prompt, attention_mask=mask, use_cache=True, **kwargs)
        uncached = model.generate(input_ids=prompt, attention_mask=mask, use_cache=False, **kwargs)
        assert torch.equal(cached.sequences, uncached.sequences)
        sequence = cached.sequences
        full_mask = torch.cat([mask, torch.ones(2, sequence.shape[1] - 30, dtype=mask.dtype)], dim=1)
        forward = model(input_ids=sequence, attention_mask=full_mask, position_ids=positions(full_mask)).logits
    for step, (with_cache, without) in enumerate(zip(cached.logits, uncached.logits, strict=True)):
        torch.testing.assert_close(with_cache, forward[:, 29 + step], atol=1e-5, rtol=0)
        torch.testing.assert_close(without, forward[:, 29 + step], atol=1e-5, rtol=0)
    assert torch.equal(sequence[:, 30:], forward[:, 29:-1].argmax(-1))


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_a_cached_step_equals_the_full_forward_for_every_selector(sparsity_type):
    """A step after a 70-token prefill sees only the last blocks of the cache (`lsg.hf._causal_reach`): the same
    logits as the full forward of the 73 tokens (a 3-token chunk, left padding in one row)."""
    model = converted("gpt2", sparsity_type)
    ids, mask = left_padded(73)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
        prefill = model(
            input_ids=ids[:, :70], attention_mask=mask[:, :70], position_ids=positions(mask)[:, :70], use_cache=True
        )
        step = model(
            input_ids=ids[:, 70:],
            attention_mask=mask,
            position_ids=positions(mask)[:, 70:],
            past_key_values=prefill.past_key_values,
            use_cache=True,
        ).logits
    torch.testing.assert_close(prefill.logits, full[:, :70], atol=1e-5, rtol=0)
    torch.testing.assert_close(step, full[:, 70:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", DECODERS)
def test_global_prefix_starts_as_the_source_keys_of_bos_tokens(family):
    source = tiny_model(family)
    model = lsg.convert(source, max_length=128, **SMALL)
    cache = source.base_model(input_ids=torch.tensor([[0, 0]]), use_cache=True).past_key_values
    for index, module in enumerate(m for m in model.modules() if hasattr(m, "lsg_global_keys")):
        torch.testing.assert_close(module.lsg_global_keys.data, cache.layers[index].keys[0], atol=0, rtol=0)
        torch.testing.assert_close(module.lsg_global_values.data, cache.layers[index].values[0], atol=0, rtol=0)


@pytest.mark.parametrize("family", DECODERS)
def test_an_all_full_plan_is_the_source_model(family):
    """I14 for decoders: full layers carry no prefix and run the source's causal attention, at any length."""
    source = tiny_model(family)
    model = lsg.convert(source, max_length=128, layers=["full", "full"], **SMALL)
    assert not any(hasattr(m, "lsg_global_keys") for m in model.modules())
    ids, mask = left_padded(60)
    with torch.no_grad():
        expected = source(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(
            model(input_ids=ids, attention_mask=mask).logits[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=0
        )


def test_an_all_full_plan_is_the_short_rule_of_an_encoder():
    """I14 for encoders: a full layer attends densely to the globals and the tokens, as LSG's short rule does."""
    source = tiny_model("bert", "ForMaskedLM")
    keywords = dict(bos_token_id=0, mask_token_id=4, sparsity_type="norm", num_global_tokens=2)
    planned = lsg.convert(source, max_length=128, block_size=8, sparse_block_size=8, full_every=1, **keywords)
    dense = lsg.convert(source, max_length=128, block_size=64, sparse_block_size=64, **keywords)
    ids = torch.randint(5, 99, (2, 100))
    mask = torch.ones_like(ids)
    mask[1, 80:] = 0
    with torch.no_grad():
        torch.testing.assert_close(
            planned(input_ids=ids, attention_mask=mask).logits,
            dense(input_ids=ids, attention_mask=mask).logits,
            atol=1e-5,
            rtol=0,
        )


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_a_plan_is_saved_and_restored(family, tmp_path):
    keywords = dict(SMALL, mask_token_id=4)
    model = lsg.convert(tiny_model(family), max_length=128, full_layers=[1], **keywords)
    assert model.config.layer_attention == ["lsg", "full"]
    model.save_pretrained(tmp_path)
    loaded = lsg.load(tmp_path).eval()
    assert loaded.config.layer_attention == ["lsg", "full"]
    stamped = [
        hasattr(m, "lsg_layer_index")
        for m in lsg.families.family_of(loaded.config).attention_modules(loaded.base_model)
    ]
    assert stamped == [True, False]
    ids = torch.randint(5, 99, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(
            main_output(loaded(input_ids=ids)), main_output(model(input_ids=ids)), atol=0, rtol=0
        )


def test_a_saved_plan_of_the_wrong_length_is_refused(tmp_path):
    model = lsg.convert(tiny_model("gpt2"), max_length=128, full_layers=[0], **SMALL)
    model.config.layer_attention = ["full", "lsg", "lsg"]
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="layers has 3 entries, the model has 2 attention layers"):
        lsg.load(tmp_path)


def test_plan_spellings_and_errors():
    assert layer_plan(6, full_every=3) == ["full", "lsg", "lsg", "full", "lsg", "lsg"]
    assert layer_plan(3, full_layers=[2]) == ["lsg", "lsg", "full"]
    assert layer_plan(2, layers=["full", "lsg"]) == ["full", "lsg"]
    assert layer_plan(4) is None
    assert masformer_plan(6, 2) == ["full", "full", "lsg", "lsg", "lsg", "lsg"]
    assert masformer_plan(6, 2, "top")[-2:] == ["full", "full"]
    assert masformer_plan(6, 2, "spread") == ["full", "lsg", "lsg", "full", "lsg", "lsg"]
    with pytest.raises(ValueError, match="one way"):
        layer_plan(4, full_every=2, full_layers=[1])
    with pytest.raises(ValueError, match="full_layers entry=4"):
        layer_plan(4, full_layers=[4])
    with pytest.raises(ValueError, match="3 entries"):
        layer_plan(4, layers=["lsg"] * 3)
    with pytest.raises(ValueError, match="'dense'"):
        layer_plan(2, layers=["lsg", "dense"])


def test_plan_flops_interpolate_between_lsg_and_full():
    settings = LSGSettings()  # K = 641 keys per query
    kwargs = dict(tokens=4096, settings=settings, heads=12, head_dim=64)
    lsg_only = attention_flops(None, 12, **kwargs)
    full = attention_flops(["full"] * 12, 12, **kwargs)
    two = attention_flops(masformer_plan(12, 2), 12, **kwargs)
    assert lsg_only / full == pytest.approx((4096 * 641 + 4097) / 4097**2)
    assert two == pytest.approx(lsg_only * 10 / 12 + full * 2 / 12)


def test_decoding_past_max_length_is_refused_clearly():
    model = lsg.convert(tiny_model("gpt2"), max_length=64, **SMALL)
    ids = torch.randint(5, 99, (1, 60))
    with torch.no_grad():
        past = model(input_ids=ids, use_cache=True).past_key_values
        with pytest.raises(ValueError, match="input length 65 exceeds max_length=64"):
            model(input_ids=ids[:, :5], past_key_values=past, use_cache=True)


def test_decoder_only_conversion_refuses_an_lsg_source():
    model = converted("gpt2")
    with pytest.raises(ValueError, match="already an LSG model"):
        lsg.convert(model, max_length=256, **SMALL)


def test_rotary_models_keep_their_rotary_positions():
    source = tiny_model("llama")
    model = lsg.convert(source, max_length=256, **SMALL)
    assert model.config.max_position_embeddings == 256
    assert type(model.model.rotary_emb) is type(source.model.rotary_emb)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, source.model.rotary_emb.inv_freq)
    assert isinstance(model, transformers.LlamaForCausalLM)


def lsg_bart():
    return lsg.convert(
        tiny_model("bart"), max_length=128, sparsity_type="norm", mask_token_id=4, lsg_decoder=True, **SMALL
    )


def bart_inputs():
    source = torch.randint(5, 99, (2, 50))
    source[:, -1] = 2
    return source, torch.randint(5, 99, (2, 40))


def test_bart_decoder_self_attention_becomes_causal_lsg(tmp_path):
    """`lsg_decoder=True`: the decoder's self-attention is causal LSG with its own prefix, and the choice survives a
    save and reload."""
    model = lsg_bart()
    assert model.config.lsg_decoder
    source, target = bart_inputs()
    changed = target.clone()
    changed[:, 30:] = 7
    with torch.no_grad():
        logits = model(input_ids=source, decoder_input_ids=target).logits
        torch.testing.assert_close(
            model(input_ids=source, decoder_input_ids=changed).logits[:, :30], logits[:, :30], atol=1e-6, rtol=0
        )
    model.save_pretrained(tmp_path)
    loaded = lsg.load(tmp_path).eval()
    assert loaded.config.lsg_decoder
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=source, decoder_input_ids=target).logits, logits, atol=0, rtol=0)


@pytest.mark.slow
def test_bart_lsg_decoder_generates_the_same_with_and_without_cache():
    model = lsg_bart()
    source, _ = bart_inputs()
    kwargs = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False, num_beams=2)
    with torch.no_grad():
        cached = model.generate(input_ids=source, use_cache=True, **kwargs)
        assert torch.equal(cached, model.generate(input_ids=source, use_cache=False, **kwargs))


def test_swap_attention_follows_a_plan_and_finds_it_again_after_a_reload(tmp_path):
    """The full layers of a swapped plain BERT keep SDPA: with the plan all full, the model is the original."""
    from lsg import baselines

    source = tiny_model("bert", "ForMaskedLM")
    ids = torch.randint(5, 99, (2, 40))
    with torch.no_grad():
        expected = source(input_ids=ids).logits
        swapped = baselines.swap_attention(source, "linear", full_layers=[0, 1])
        torch.testing.assert_close(swapped(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
        all_linear = baselines.swap_attention(source, "linear", layers=["lsg", "lsg"])(input_ids=ids).logits
        baselines.swap_attention(source, "linear", layers=["full", "lsg"])
        assert source.config.layer_attention == ["full", "lsg"]
        mixed = source(input_ids=ids).logits
        assert (mixed - expected).abs().max() > 1e-6 and (mixed - all_linear).abs().max() > 1e-6
        source.save_pretrained(tmp_path)
        reloaded = baselines.swap_attention(transformers.BertForMaskedLM.from_pretrained(tmp_path).eval(), "linear")
        torch.testing.assert_close(reloaded(input_ids=ids).logits, mixed, atol=1e-6, rtol=0)
