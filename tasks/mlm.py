"""Masked language modelling: BPC and accuracy (paper §4.1, Table 1; offline: wiki_mlm).

Texts are tokenized without special tokens, concatenated and cut into blocks of `max_length - 2`
tokens, and each block is framed by [CLS] ... [SEP] (BERT) or <s> ... </s> (RoBERTa); the last
partial block is dropped unless it is the only one. Masking (BERT/RoBERTa rule): 15% of the
non-special tokens are chosen; of those 80% become the mask token, 10% a random token, 10% stay;
special tokens and padding are never chosen. Training batches are masked afresh by the collator;
validation/test blocks are masked once at encoding with a fixed seed, so every model is scored on
the same positions. Table 1 (tasks/table1.py) masks and scores its blocks with the same functions
(`masked_blocks`, `reduce_logits`, `reduced_scores`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    DataCollatorForLanguageModeling,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    default_data_collator,
)

from tasks.config import TaskConfig
from tasks.metrics import mlm_scores
from tasks.registry import TASK_KINDS, TaskKind

EVAL_MASK_SEED = 1234


def blocks(texts: list[str], tokenizer: PreTrainedTokenizerBase, length: int) -> list[list[int]]:
    """Concatenated token ids cut into blocks of `length` ids, special tokens added around each block."""
    ids = [i for row in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] for i in row]
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    body = length - 2
    count = max(len(ids) // body, 1)
    return [[first, *ids[k * body:(k + 1) * body], last] for k in range(count)]


def masked_blocks(texts: list[str], tokenizer: PreTrainedTokenizerBase, length: int,
                  probability: float = 0.15) -> dict[str, torch.Tensor]:
    """Evaluation blocks of exactly `length` tokens, masked once with a fixed seed (same positions for every model).

    Returns:
        input_ids, attention_mask and labels (original id at masked positions, -100 elsewhere), each (N, length).
    """
    masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability, seed=EVAL_MASK_SEED)
    return masker([{"input_ids": row} for row in blocks(texts, tokenizer, length)])


def reduce_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What MLM scoring keeps of a batch: (B, T, V) logits -> (B, T, 2), the argmax id and the token cross-entropy.

    Gathering the logits whole would take 4096 x 30522 floats = 0.5 GB per sequence. Both values are float32
    (exact for ids < 2**24); labels are the (B, T) ids at masked positions, -100 elsewhere.
    """
    logits = logits.float()
    losses = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return torch.stack([logits.argmax(dim=-1).float(), losses], dim=-1)


def reduced_scores(reduced: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """BPC and accuracy (tasks.metrics.mlm_scores) of `reduce_logits` outputs (N, T, 2) against (N, T) labels."""
    return mlm_scores(reduced[..., 1], reduced[..., 0].astype(np.int64), labels)


class MLMCollator:
    """Masks training batches; passes pre-masked evaluation batches (they carry `labels`) through."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, probability: float) -> None:
        self.masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if "labels" in features[0]:
            return default_data_collator(features)
        return self.masker(features)


class MaskedLM(TaskKind):
    """MLM head on the encoder; all-MiniLM-L6-v2 ships none, so its head starts untrained."""

    head = "ForMaskedLM"

    def encode(self, splits: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, task: TaskConfig,
               max_length: int) -> datasets.DatasetDict:
        out = {}
        for split, rows in splits.items():
            texts = list(rows[task.data.text_field])
            if split == "train":
                out[split] = datasets.Dataset.from_dict({"input_ids": blocks(texts, tokenizer, max_length)})
                continue
            masked = masked_blocks(texts, tokenizer, max_length, task.mlm_probability)
            out[split] = datasets.Dataset.from_dict({key: masked[key].tolist()
                                                     for key in ("input_ids", "attention_mask", "labels")
                                                     if key in masked})
        return datasets.DatasetDict(out)

    def collator(self, tokenizer: PreTrainedTokenizerBase, task: TaskConfig, model: PreTrainedModel) -> Callable:
        return MLMCollator(tokenizer, task.mlm_probability)

    def scores(self, prediction: EvalPrediction, task: TaskConfig,
               tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        return reduced_scores(np.asarray(prediction.predictions), np.asarray(prediction.label_ids))

    def preprocess_logits(self) -> Callable:
        return reduce_logits


TASK_KINDS.register("mlm")(MaskedLM())
