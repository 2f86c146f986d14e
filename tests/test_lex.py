"""The small decoder (tasks.causal_lm) and the length-extrapolation experiment (tasks.lex)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import lsg
from lsg.settings import LSGSettings
from tasks import lex
from tasks.causal_lm import CausalLM, DecoderConfig, causal_variant

SCHEMES = ("learned", "sinusoidal", "rope", "alibi", "xpos")


def tiny(positions: str, **overrides) -> CausalLM:
    config = DecoderConfig(vocab_size=31, layers=2, width=16, heads=2, max_length=8, positions=positions)
    return CausalLM(config, **overrides).eval()


@pytest.mark.parametrize("positions", SCHEMES)
@pytest.mark.parametrize("attention", ["lsg_causal_dense", "lsg_blockwise_causal"])
def test_no_output_depends_on_a_later_token(positions, attention):
    model = tiny(positions)
    model.set_attention(attention, LSGSettings(block_size=4, sparsity_type=None))
    ids = torch.randint(0, 31, (2, 21))  # past the training length (8): positions are extrapolated
    changed = ids.clone()
    changed[:, 13:] = torch.randint(0, 31, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(changed)[:, :13], model(ids)[:, :13], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", SCHEMES)
def test_blockwise_is_ordinary_causal_attention_up_to_the_training_length(positions):
    """With blocks of L/2, training (at L) is unchanged: LEX applies blockwise attention at inference only."""
    model = tiny(positions)
    ids = torch.randint(0, 31, (2, 8))
    with torch.no_grad():
        dense = model(ids)
        model.set_attention("lsg_blockwise_causal", LSGSettings(block_size=4, sparsity_type=None))
        torch.testing.assert_close(model(ids), dense, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(torch.randint(0, 31, (2, 20))), dense[:, :1])  # and it runs past L


def test_only_attentions_with_a_causal_form_are_accepted():
    def bidirectional_only(query, key, value, token_valid, settings, *, scaling, dropout=0.0, training=False,
                           layer_index=0):
        return value

    if "lsg_test_bidirectional" not in lsg.ATTENTION_VARIANTS:
        lsg.ATTENTION_VARIANTS.register("lsg_test_bidirectional")(bidirectional_only)
    with pytest.raises(ValueError, match="'lsg_test_bidirectional' has no causal form.*lsg_blockwise_causal"):
        causal_variant("lsg_test_bidirectional")
    with pytest.raises(KeyError, match="Unknown attention variant"):
        causal_variant("lsg_blockwise")
    with pytest.raises(ValueError, match="positions='xops' is not supported"):
        DecoderConfig(positions="xops")


def test_global_rows_must_match_the_settings():
    config = DecoderConfig(vocab_size=31, layers=1, width=16, heads=2, max_length=8, global_tokens=2)
    with pytest.raises(ValueError, match="num_global_tokens=1 must equal the model's global_tokens=2"):
        CausalLM(config, "lsg_causal_dense", LSGSettings(num_global_tokens=1))
    model = CausalLM(config).eval()  # the two global rows lead, the output keeps the tokens only
    assert model(torch.randint(0, 31, (1, 5))).shape == (1, 5, 31)


def test_packed_windows_score_every_token_once():
    tokenizer = lex.Tokenizer("bytes")
    texts = ["abcdefg", "hij"]
    windows = list(lex.packed(iter(texts), tokenizer, 4))
    stream = list(b"abcdefg\n\nhij\n\n")
    assert [w.tolist() for w in windows] == [stream[i: i + 5] for i in range(0, len(stream) - 4, 4)]
    targets = list(itertools.chain.from_iterable(w[1:].tolist() for w in windows))
    assert targets == stream[1: 1 + len(targets)]


def test_perplexity_scores_the_same_tokens_at_every_length():
    """A decoder with zero token embeddings predicts uniformly: perplexity = vocabulary size at every length."""
    model = tiny("rope")
    torch.nn.init.zeros_(model.tokens.weight)
    segments = torch.randint(0, 31, (3, 17))
    for length in (2, 4, 8, 16):
        assert lex.perplexity(model, segments, length, batch_size=2) == pytest.approx(31, rel=1e-5)


def test_configs_compose_and_bad_values_name_the_key():
    smoke, paper = lex.load_config("smoke"), lex.load_config("paper")
    assert smoke.train.length == 128 and smoke.eval_lengths == [128, 256, 512, 1024]
    assert paper.train.length == 1024 and paper.eval_lengths == [256, 512, 1024, 2048, 4096]
    assert paper.data.tokenizer == "gpt3" and paper.model.layers == 24
    assert {row.paper for row in smoke.rows} >= {"Absolute", "RoPE", "LEX"}
    assert smoke.lsg_settings().num_global_tokens == 1
    with pytest.raises(ValueError, match="eval_lengths: 384 must divide the longest length 1024"):
        lex.load_config("smoke", ["eval_lengths=[128,384,1024]"])
    with pytest.raises(ValueError, match="train.micro_batch_size=5 must divide train.batch_size=16"):
        lex.load_config("smoke", ["train.micro_batch_size=5"])
    with pytest.raises(ValueError, match="scale='large' is not supported"):
        lex.load_config("large")


def test_unavailable_attention_is_reported_not_run(monkeypatch):
    """Every row runs where its attention has a causal form (causal LSG included); one that has none is reported."""
    for attention in ("dense", "blockwise", "lsg"):
        assert lex.unavailable(lex.LexRow(name="x", positions="xpos", attention=attention)) is None
    monkeypatch.setitem(lex.ROW_ATTENTIONS, "lsg", "no_such_attention")
    assert lex.unavailable(lex.LexRow(name="x", positions="xpos", attention="lsg")).startswith("not available yet")


@pytest.mark.slow
def test_the_experiment_writes_table_plot_and_results(tmp_path):
    """The whole pipeline on the shipped Wikipedia text, at toy size (about 10 s on 2 cores)."""
    cfg = lex.load_config("smoke", [
        f"out_dir={tmp_path}", "train.length=16", "train.steps=3", "train.batch_size=4", "train.micro_batch_size=2",
        "eval_lengths=[16,32,64]", "data.eval_tokens=256", "model.layers=1", "model.width=16", "model.heads=2",
        "lsg.block_size=4", "lsg.sparse_block_size=4",
    ])
    results = lex.run(cfg)
    done = [row for row in results["rows"] if row["status"] == "done"]
    assert len(done) >= 8 and all(set(row["perplexity"]) == {"16", "32", "64"} for row in done)
    assert all(math.isfinite(value) and value > 1 for row in done for value in row["perplexity"].values())
    assert results["eval_tokens_per_length"] == 256
    table = (tmp_path / "table.md").read_text()
    assert "XPOS + blockwise (LEX)" in table and "1283.79" in table and "20.73" in table
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == results["rows"]
    assert (tmp_path / "ppl_vs_length.png").stat().st_size > 10_000
    models = sorted(p.name for p in (tmp_path / "smoke" / "models").iterdir())
    assert "xpos-causal.pt" in models and "rope-causal.pt" in models
    again = lex.run(cfg)  # trained decoders are reused: same numbers
    assert math.isclose(again["rows"][0]["perplexity"]["64"], results["rows"][0]["perplexity"]["64"])


@pytest.mark.slow
def test_document_segments_take_the_start_of_long_documents_in_bpe_tokens():
    """LEX's protocol (paper scale): each segment is the first E + 1 tokens of one document long enough."""
    tokenizer = lex.Tokenizer("gpt3")
    # GPT-2's ids (15496, 995) after the 4 special ids of tasks.pretrain.byte_bpe_tokenizer
    assert tokenizer.vocab_size > 50_000 and tokenizer.encode("Hello world") == [15500, 999]
    data = lex.LexData(tokenizer="gpt3", eval_split="train", eval_segments="documents", eval_tokens=512)
    segments = lex.eval_segments(data, tokenizer, 256)
    assert segments.shape == (2, 257)
    long_enough = (ids for ids in map(tokenizer.encode, lex.wiki_texts("train")) if len(ids) > 256)
    assert segments.tolist() == [next(long_enough)[:257], next(long_enough)[:257]]
