"""Document classification, single- and multi-label (paper §4.2, Table 2; offline: bbc_topic, bbc_longdoc).

Text is truncated to the input length (min of task.max_length and model.max_length): that truncation is
what the 512-token baselines lose. A text field holding a list of paragraphs (LexGLUE ECtHR facts) is
joined with newlines. Labels may be ClassLabel ids, strings (named in sorted order) or, for multi-label,
lists of ids turned into 0/1 float rows (BCE loss).
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
from transformers import EvalPrediction, PreTrainedTokenizerBase

from tasks.config import TaskConfig
from tasks.metrics import classification_scores, main_output
from tasks.registry import TASK_KINDS, TaskKind, map_splits


def label_names(splits: datasets.DatasetDict, task: TaskConfig) -> list[str]:
    """Names of the model's outputs: ClassLabel names, sorted string labels, or "0".."N-1"."""
    feature = splits["train"].features[task.data.label_field]
    inner = getattr(feature, "feature", feature)  # Sequence(ClassLabel) for multi-label
    if isinstance(inner, datasets.ClassLabel):
        return list(inner.names)
    values = splits["train"][task.data.label_field][:]
    flat = [v for row in values for v in row] if task.multi_label else list(values)
    if flat and isinstance(flat[0], str):
        return sorted(set(flat))
    count = task.num_labels or int(max(flat)) + 1
    return [str(i) for i in range(count)]


class Classification(TaskKind):
    """Sequence classification with a fresh head on the encoder (BERT/RoBERTa pooler + linear)."""

    head = "ForSequenceClassification"

    def head_kwargs(self, splits: datasets.DatasetDict, task: TaskConfig) -> dict[str, Any]:
        names = label_names(splits, task)
        if task.num_labels is not None and task.num_labels != len(names):
            raise ValueError(f"task.num_labels={task.num_labels} but the data has {len(names)} labels: {names[:20]}")
        return {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
            "problem_type": "multi_label_classification" if task.multi_label else "single_label_classification",
        }

    def encode(self, splits: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, task: TaskConfig,
               max_length: int) -> datasets.DatasetDict:
        names = label_names(splits, task)
        index = {name: i for i, name in enumerate(names)}
        text_field, label_field = task.data.text_field, task.data.label_field

        def to_id(value: Any) -> int:
            return index[value] if isinstance(value, str) else int(value)

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            texts = [t if isinstance(t, str) else "\n".join(t) for t in batch[text_field]]
            encoded = tokenizer(texts, truncation=True, max_length=max_length)
            if task.multi_label:
                rows = []
                for labels in batch[label_field]:
                    row = [0.0] * len(names)
                    for label in labels:
                        row[to_id(label)] = 1.0
                    rows.append(row)
                encoded["labels"] = rows
            else:
                encoded["labels"] = [to_id(label) for label in batch[label_field]]
            return encoded

        encoded = map_splits(splits, tokenize)
        if task.multi_label:  # BCE needs float targets; a source column also named "labels" would keep its int type
            encoded = encoded.cast_column("labels", datasets.Sequence(datasets.Value("float32")))
        return encoded

    def scores(self, prediction: EvalPrediction, task: TaskConfig,
               tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        return classification_scores(main_output(prediction.predictions), np.asarray(prediction.label_ids),
                                     multi_label=task.multi_label, none_label=task.none_label,
                                     threshold=task.threshold)


TASK_KINDS.register("classification")(Classification())
