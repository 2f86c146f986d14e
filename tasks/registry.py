"""Task families by name: `classification`, `mlm`, `seq2seq` (the `task.family` value in conf/task/*.yaml).

A family turns raw rows into model inputs and model outputs into metrics; the training loop
(tasks/train.py) is the same for all of them. Family modules are imported on first use, so a config
check does not import every family.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

from lsg.registry import Registry
from tasks.config import TaskConfig

FAMILY_MODULES = {"classification": "tasks.classification", "mlm": "tasks.mlm", "seq2seq": "tasks.summarization"}


class TaskFamily(Protocol):
    """What a task family provides to tasks/train.py."""

    head: str  # head-class suffix the model builder needs: "ForSequenceClassification", "ForMaskedLM", "seq2seq"
    trainer_class: type[Trainer]

    def head_kwargs(self, splits: datasets.DatasetDict, task: TaskConfig) -> dict[str, Any]:
        """Arguments of the head (num_labels, problem_type, ...) read from the task and the data."""

    def encode(self, splits: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, task: TaskConfig,
               max_length: int) -> datasets.DatasetDict:
        """Tokenized splits, with `labels`, and no column the model does not take."""

    def prepare_model(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TaskConfig) -> None:
        """Last settings on the built model (generation config for seq2seq)."""

    def collator(self, tokenizer: PreTrainedTokenizerBase, task: TaskConfig, model: PreTrainedModel) -> Callable:
        """Batches encoded rows (padding, masking)."""

    def compute_metrics(self, task: TaskConfig, tokenizer: PreTrainedTokenizerBase) -> Callable:
        """EvalPrediction -> metrics in the paper's units (tasks/metrics.py)."""

    def preprocess_logits(self) -> Callable | None:
        """Shrinks logits per batch before they are gathered (MLM: vocabulary-sized logits do not fit)."""


TASK_FAMILIES: Registry[TaskFamily] = Registry("task family")


def load_family(name: str) -> TaskFamily:
    """The registered family `name`; unknown names raise KeyError listing the available ones."""
    if name in FAMILY_MODULES:
        importlib.import_module(FAMILY_MODULES[name])
    if name not in TASK_FAMILIES:
        raise KeyError(f"Unknown task family {name!r}. Available: {sorted(FAMILY_MODULES)}")
    return TASK_FAMILIES.get(name)
