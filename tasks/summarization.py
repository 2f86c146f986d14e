"""Sequence-to-sequence summarization: ROUGE-1/2/L/Lsum (paper §4.3, Tables 4-7; offline: aclsum, bbc_headline).

Sources are truncated to the input length; training labels, and generation, to task.generation.max_target_length.
Evaluation generates with the paper's decoding (beam 5, length penalty 2.0) and scores with tasks/metrics.py
against the full gold summaries of the raw rows (a truncated label would shorten the reference and inflate
precision-based ROUGE). Both
RL conventions are reported because the paper's RL column is ROUGE-Lsum on PubMed/arXiv and sentence-level
ROUGE-L on Multi-News.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import datasets
import numpy as np
from transformers import (
    DataCollatorForSeq2Seq,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

from tasks.config import TaskConfig
from tasks.metrics import main_output, require_rouge, rouge_scores
from tasks.registry import TASK_KINDS, TaskKind, map_splits


class Seq2Seq(TaskKind):
    """Encoder-decoder models: (LSG-)BART or the offline bert2bert warm start (tasks/models.py)."""

    head = "seq2seq"
    trainer_class = Seq2SeqTrainer

    def training_arguments(self, **options: Any) -> Seq2SeqTrainingArguments:
        return Seq2SeqTrainingArguments(predict_with_generate=True, **options)  # ROUGE scores generated text

    def head_kwargs(self, splits: datasets.DatasetDict, task: TaskConfig) -> dict[str, Any]:
        if not task.data.target_field:
            raise ValueError(f"task={task.name} is seq2seq: set task.data.target_field (the summary column)")
        return {}

    def encode(self, splits: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, task: TaskConfig,
               max_length: int) -> datasets.DatasetDict:
        source, target = task.data.text_field, task.data.target_field

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(batch[source], truncation=True, max_length=max_length)
            encoded["labels"] = tokenizer(text_target=batch[target], truncation=True,
                                          max_length=task.generation.max_target_length)["input_ids"]
            return encoded

        return map_splits(splits, tokenize)

    def prepare_model(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TaskConfig) -> None:
        require_rouge()  # the scores run after the whole training: a missing package must fail here
        generation = model.generation_config
        generation.num_beams = task.generation.num_beams
        beams = task.generation.num_beams > 1  # greedy decoding: transformers refuses beam-only flags at save
        generation.length_penalty = task.generation.length_penalty if beams else 1.0
        generation.max_new_tokens = task.generation.max_target_length
        generation.max_length = None  # max_new_tokens rules; a stale max_length would cut beams early
        generation.min_length = task.generation.min_length
        generation.early_stopping = beams

    def collator(self, tokenizer: PreTrainedTokenizerBase, task: TaskConfig, model: PreTrainedModel) -> Callable:
        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)

    def compute_metrics(self, task: TaskConfig, tokenizer: PreTrainedTokenizerBase,
                        rows: datasets.Dataset | None = None) -> Callable:
        if rows is None:
            raise ValueError("seq2seq scoring needs the evaluated split's raw rows (their full gold summaries)")
        return partial(self.scores, task=task, tokenizer=tokenizer, references=list(rows[task.data.target_field]))

    def scores(self, prediction: EvalPrediction, task: TaskConfig, tokenizer: PreTrainedTokenizerBase,
               references: list[str] | None = None) -> dict[str, float]:
        """ROUGE of the generated texts against `references` (the full gold targets, in the split's order)."""
        generated = main_output(prediction.predictions)
        generated = np.where(generated < 0, tokenizer.pad_token_id, generated)
        predictions = tokenizer.batch_decode(generated, skip_special_tokens=True)
        if references is None or len(references) != len(predictions):
            raise ValueError(f"{len(predictions)} generated summaries but "
                             f"{'no' if references is None else len(references)} gold references")
        scores = rouge_scores(predictions, references)
        scores["generated_tokens"] = float(np.mean([(row != tokenizer.pad_token_id).sum() for row in generated]))
        return scores


TASK_KINDS.register("seq2seq")(Seq2Seq())
