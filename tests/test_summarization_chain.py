"""Tables 4-7 plumbing (issue defects 1, 2, 4): a 4K LSG run's `final/` continues at a longer length with more
global tokens, and ROUGE scores against the full gold summaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from transformers import AutoTokenizer, EvalPrediction

from lsg.assets import minilm_dir
from tasks.config import DataConfig, TaskConfig, to_run_config
from tasks.metrics import rouge_scores
from tasks.summarization import Seq2Seq
from tasks.train import run

REPO = Path(__file__).resolve().parents[1]


def _configure(tmp_path: Path, *overrides: str):
    base = [f"runs_dir={tmp_path}", "logger=none", "trainer=cpu", "trainer.max_steps=1",
            "trainer.per_device_batch_size=2", "task=aclsum", "task.batch_size=2", "task.data.max_train_samples=2",
            "task.data.max_eval_samples=2",
            "model=lsg_bart", "model.lsg.block_size=32", "task.generation.num_beams=1",
            "task.generation.max_target_length=4"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_run_config(compose(config_name="config", overrides=base + list(overrides)))


def test_a_4k_run_continues_longer_with_more_globals_tuning_only_them(tmp_path, tiny_bart):
    """Defect 1 (head "seq2seq" -> ForConditionalGeneration) and 2 (the LSG checkpoint is extended as asked)."""
    first = _configure(tmp_path, f"model.checkpoint={tiny_bart}", "model.max_length=512")
    run(first)
    final = Path(first.run_dir) / "final"
    second = _configure(tmp_path, f"model.checkpoint={final}", "model.max_length=1024",
                        "model.lsg.num_global_tokens=4", "trainer.tune=global_tokens")
    assert second.run_dir != first.run_dir
    record = run(second)
    saved = json.loads((Path(second.run_dir) / "final" / "config.json").read_text())
    assert (saved["model_type"], saved["max_position_embeddings"], saved["num_global_tokens"]) == ("lsg_bart", 1024, 4)
    assert record["max_length"] == 1024 and record["trainable_parameters"] == 512 * 32  # the global table only


def test_rouge_references_are_the_full_gold_summaries():
    """Defect 4: labels are cut to max_target_length for training; the references are not."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    gold = ["the model reads long documents. it then writes a summary of every section in the paper."]
    data = DataConfig(builder="aclsum", target_field="abstract")
    task = TaskConfig(name="t", kind="seq2seq", metric="rougeL", data=data)
    generated = tokenizer(["the model reads long documents."], return_tensors="np")["input_ids"]
    truncated_labels = tokenizer(gold, truncation=True, max_length=8, return_tensors="np")["input_ids"]
    kind = Seq2Seq()
    score = kind.compute_metrics(task, tokenizer, rows={"abstract": gold})
    scores = score(EvalPrediction(predictions=generated, label_ids=truncated_labels))
    assert scores["rougeL"] == pytest.approx(rouge_scores(["the model reads long documents."], gold)["rougeL"])
    assert scores["rougeL"] < 60  # against the 8-token label it would be ~100
    with pytest.raises(ValueError, match="needs the evaluated split's raw rows"):
        kind.compute_metrics(task, tokenizer)
    assert np.asarray(truncated_labels).shape[1] == 8


def test_global_tuning_of_a_bert2bert_trains_the_global_embeddings_only():
    """bert2bert names no base model, so "outside the base model" (an encoder's new head) would be every weight."""
    from transformers import BertConfig, BertLMHeadModel, BertModel, EncoderDecoderModel

    import lsg
    from tasks.config import TrainerConfig
    from tasks.models import apply_tuning

    small = dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    encoder = lsg.convert(BertModel(BertConfig(**small)), max_length=1024, bos_token_id=0, mask_token_id=4,
                          num_global_tokens=4)
    decoder = BertLMHeadModel(BertConfig(**small, is_decoder=True, add_cross_attention=True))
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    counts = apply_tuning(model, TrainerConfig(name="cpu", tune="global_tokens"))
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable == ["encoder.embeddings.global_embeddings.weight"]
    assert counts["trainable_parameters"] == 512 * 32


def test_a_bert2bert_4k_run_continues_longer(tmp_path, tiny_bert):
    """The offline chain's model: a saved bert2bert (model_type "encoder-decoder") is checked through its LSG
    encoder, so the 16K rows start from the 4K run's final/ instead of failing the length check."""
    bert2bert = ["model=lsg_bert2bert", "model.lsg.block_size=16", "model.lsg.num_global_tokens=1"]
    first = _configure(tmp_path, *bert2bert, f"model.checkpoint={tiny_bert}", "model.max_length=256")
    run(first)
    final = Path(first.run_dir) / "final"
    second = _configure(tmp_path, *bert2bert, f"model.checkpoint={final}", "model.max_length=1024",
                        "model.lsg.num_global_tokens=4", "trainer.tune=global_tokens")
    record = run(second)
    saved = json.loads((Path(second.run_dir) / "final" / "config.json").read_text())
    assert saved["model_type"] == "encoder-decoder" and saved["encoder"]["model_type"] == "lsg_bert"
    assert (saved["encoder"]["max_position_embeddings"], saved["encoder"]["num_global_tokens"]) == (1024, 4)
    assert record["max_length"] == 1024 and record["trainable_parameters"] == 512 * 32
