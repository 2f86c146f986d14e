"""Task kinds by name: `classification`, `mlm`, `seq2seq` (the `task.kind` value in conf/task/*.yaml).

A kind turns raw rows into model inputs and model outputs into metrics; the training loop (tasks/train.py)
is the same for all of them. `TaskKind` lists what a kind provides, with the defaults most kinds share, so
each kind (tasks/classification.py, tasks/mlm.py, tasks/summarization.py) states only what differs. Kind
modules are imported on first use, so a config check does not import every kind. ("Kind", not "family":
a family is an architecture, `lsg.families`.)
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from typing import Any

import datasets
from transformers import (
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from lsg.registry import Registry
from tasks.config import TaskConfig

KIND_MODULES = {"classification": "tasks.classification", "mlm": "tasks.mlm", "seq2seq": "tasks.summarization"}


class TaskKind(ABC):
    """What a task kind provides to tasks/train.py; subclasses override what differs from these defaults."""

    head: str  # head-class suffix the model builder needs: "ForSequenceClassification", "ForMaskedLM", "seq2seq"
    trainer_class: type[Trainer] = Trainer

    def training_arguments(self, **options: Any) -> TrainingArguments:
        """The Trainer's arguments built from `options` (seq2seq adds generation at evaluation)."""
        return TrainingArguments(**options)

    def head_kwargs(self, splits: datasets.DatasetDict, task: TaskConfig) -> dict[str, Any]:
        """Arguments of the head (num_labels, problem_type, ...) read from the task and the data."""
        return {}

    @abstractmethod
    def encode(self, splits: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, task: TaskConfig,
               max_length: int) -> datasets.DatasetDict:
        """Tokenized splits, with `labels`, and no column the model does not take."""

    def prepare_model(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TaskConfig) -> None:
        """Last settings on the built model (generation config for seq2seq); none by default."""
        return None

    def collator(self, tokenizer: PreTrainedTokenizerBase, task: TaskConfig, model: PreTrainedModel) -> Callable:
        """Batches encoded rows: padded to the longest row of the batch."""
        return DataCollatorWithPadding(tokenizer)

    @abstractmethod
    def scores(self, prediction: EvalPrediction, task: TaskConfig,
               tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        """Metrics in the paper's units (tasks/metrics.py) of one evaluation's predictions."""

    def compute_metrics(self, task: TaskConfig, tokenizer: PreTrainedTokenizerBase,
                        rows: datasets.Dataset | None = None) -> Callable:
        """EvalPrediction -> `scores`, the callable the Trainer takes; `rows` are the evaluated split's raw rows,
        in order (seq2seq scores against their full gold targets)."""
        return partial(self.scores, task=task, tokenizer=tokenizer)

    def preprocess_logits(self) -> Callable | None:
        """Shrinks logits per batch before they are gathered (MLM: vocabulary-sized logits do not fit)."""
        return None


def map_splits(splits: datasets.DatasetDict, tokenize: Callable[[dict[str, list]], dict[str, list]]
               ) -> datasets.DatasetDict:
    """Every split through `tokenize` in batches, keeping only the columns it returns."""
    return datasets.DatasetDict({
        split: rows.map(tokenize, batched=True, remove_columns=rows.column_names, desc=f"tokenize {split}")
        for split, rows in splits.items()
    })


TASK_KINDS: Registry[TaskKind] = Registry("task kind")


def load_kind(name: str) -> TaskKind:
    """The registered kind `name`; unknown names raise KeyError listing the available ones."""
    if name in KIND_MODULES:
        importlib.import_module(KIND_MODULES[name])
    if name not in TASK_KINDS:
        raise KeyError(f"Unknown task kind {name!r}. Available: {sorted(KIND_MODULES)}")
    return TASK_KINDS.get(name)
