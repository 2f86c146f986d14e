"""Table 1 sweep (tasks/table1.py) and the smoke-scale pretraining (tasks/pretrain.py), on tiny settings."""

import json
from pathlib import Path

import pytest
import torch

from lsg.assets import minilm_dir
from tasks import table1
from tasks.pretrain import PretrainConfig, _minilm_model, byte_bpe_tokenizer, pretrain
from tasks.report import RECORD_KEYS

TINY = PretrainConfig(length=32, hidden_size=32, layers=2, heads=2, intermediate_size=64, steps=3, batch_size=4,
                      warmup_steps=1)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain(tmp_path_factory.mktemp("table1") / "model", TINY)


def test_tokenizer_has_roberta_special_ids_over_gpt2_merges():
    tokenizer = byte_bpe_tokenizer()
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.mask_token_id == len(tokenizer) - 1 == 50261
    ids = tokenizer("a <mask> b")["input_ids"]
    assert ids[2] == tokenizer.mask_token_id and len(ids) == 5  # no stray space token before <mask>


def test_pretraining_learns_and_is_reused(pretrained: Path):
    summary = json.loads((pretrained / "pretrain.json").read_text())
    assert len(summary["losses"]) == TINY.steps and all(loss > 0 for loss in summary["losses"])
    stamp = (pretrained / "model.safetensors").stat().st_mtime_ns
    assert pretrain(pretrained, TINY) == pretrained
    assert (pretrained / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="pretrained with"):
        pretrain(pretrained, PretrainConfig(length=32, steps=5))


def test_rows_follow_the_paper_and_scale_their_sizes():
    rows = table1.rows_for(512)
    assert [row.paper_label for row in rows if row.paper_label] == list(table1.paper_numbers())
    assert all(row.label == row.paper_label for row in rows if row.paper_label)  # paper scale: same labels
    smoke = {row.paper_label: row.label for row in table1.rows_for(128)}
    assert smoke["Longformer (512)"] == "Longformer (128)" and smoke["LSG-Norm (128/2)"] == "LSG-Norm (32/2)"


def test_sweep_writes_records_resumes_and_reports(pretrained: Path, tmp_path: Path):
    scale = table1.Scale("smoke", lengths=(32, 64), eval_tokens=500, batch_size=4, corpus="wiki")
    chosen = ["roberta_full", "lsg_norm_8_2", "longformer_32"]
    records = table1.run(scale, tmp_path, checkpoint=str(pretrained), rows=chosen)
    assert len(records) == 6 and {r["max_length"] for r in records} == {32, 64}
    for record in records:
        assert record["metrics"]["bpc"] > 0 and 0 <= record["metrics"]["mlm_accuracy"] <= 1
        assert record["metrics"]["masked_tokens"] > 0
        assert tuple(record) == RECORD_KEYS and record["higher_is_better"] == {"bpc": False, "mlm_accuracy": True}
    metrics = tmp_path / "lsg_norm_8_2-L64" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    again = table1.run(scale, tmp_path, checkpoint=str(pretrained), rows=chosen)
    assert metrics.stat().st_mtime_ns == stamp and again == records
    old = tmp_path / "roberta_full-L32" / "metrics.json"  # a cell written before the shared record schema
    old.write_text(json.dumps({"model": "RoBERTa (full)", "metrics": {"bpc": 1.0, "accuracy": 0.5}}))
    rescored = table1.run(scale, tmp_path, checkpoint=str(pretrained), rows=chosen)
    assert rescored[0]["metrics"] == records[0]["metrics"] and rescored[1:] == records[1:]  # only that cell reran
    assert tuple(json.loads(old.read_text())) == RECORD_KEYS
    check = json.loads((tmp_path / table1.ORDER_CHECK).read_text())
    assert check["length"] == 32 and check["bpc"] > 0 and check["bpc_context_shuffled"] > 0
    table = table1.table_markdown(records, scale, check)
    assert "| LSG-Norm (8/2) |" in table and "1.919" in table  # ours beside the paper's LSG-Norm 512 BPC
    assert "Word-order check" in table


def test_full_attention_row_equals_the_base_model_at_its_own_length(pretrained: Path):
    """The "RoBERTa (full)" row at the base length is the pretrained model itself (no tiling, SDPA)."""
    from transformers import AutoModelForMaskedLM

    base = AutoModelForMaskedLM.from_pretrained(pretrained).eval()
    row = next(r for r in table1.rows_for(32) if r.slug == "roberta_full")
    ids = torch.randint(4, 1000, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(row.build(base, None, 32)(input_ids=ids).logits, base(input_ids=ids).logits)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="--rows"):
        table1.main(["--rows", "nope"])
    with pytest.raises(ValueError, match="--lengths"):
        table1.main(["--lengths", "0"])


def test_local_corpus_file_replaces_the_hub(tmp_path: Path):
    corpus = tmp_path / "sample.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"document {i} " + "word " * 40}) for i in range(10)))
    scale = table1.Scale("paper", lengths=(512, 4096), eval_tokens=100, batch_size=1, corpus=str(corpus))
    texts = table1.evaluation_texts(scale)
    assert texts[0].startswith("document 0 ") and len(texts) == 3  # stops once 100 words are collected
    bad = tmp_path / "sample.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="--corpus"):
        table1.evaluation_texts(table1.Scale("paper", lengths=(512,), eval_tokens=1, batch_size=1, corpus=str(bad)))


def test_shuffled_context_permutes_only_the_visible_tokens():
    tokenizer = byte_bpe_tokenizer()
    data = table1.masked_blocks(["one two three four five six seven eight nine ten " * 20], tokenizer, 64)
    shuffled = table1.shuffled_context(data, tokenizer)["input_ids"]
    original = data["input_ids"]
    fixed = (data["labels"] != -100) | torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert torch.equal(shuffled[fixed], original[fixed])
    assert not torch.equal(shuffled, original)
    for before, after in zip(original, shuffled, strict=True):
        assert sorted(before.tolist()) == sorted(after.tolist())


def test_minilm_start_is_the_real_encoder_cut_to_its_first_positions():
    from transformers import BertModel

    original = BertModel.from_pretrained(minilm_dir(), add_pooling_layer=False).eval()
    cut = _minilm_model(32).eval()
    assert cut.config.max_position_embeddings == 32
    ids = torch.randint(1000, 2000, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(cut.bert(input_ids=ids).last_hidden_state, original(input_ids=ids).last_hidden_state)
    assert cut.cls.predictions.decoder.weight.data_ptr() == cut.bert.embeddings.word_embeddings.weight.data_ptr()
    with pytest.raises(ValueError, match="length=600"):
        _minilm_model(600)


def test_minilm_mlm_training_keeps_the_vocabulary_fixed(tmp_path: Path):
    from transformers import AutoModelForMaskedLM, BertModel

    out = pretrain(tmp_path / "mlm", PretrainConfig(start="minilm", length=32, steps=2, batch_size=2))
    trained = AutoModelForMaskedLM.from_pretrained(out)
    original = BertModel.from_pretrained(minilm_dir())
    assert torch.equal(trained.bert.embeddings.word_embeddings.weight, original.embeddings.word_embeddings.weight)
    assert not torch.equal(trained.bert.encoder.layer[0].attention.self.query.weight,
                           original.encoder.layer[0].attention.self.query.weight)
    with pytest.raises(ValueError, match="start="):
        PretrainConfig(start="bert")
