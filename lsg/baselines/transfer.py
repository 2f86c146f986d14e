"""Weight transfer shared by the baseline converters: source checks, key renames, position tables, loading.

A converter builds the target model fresh from a config, then copies every source tensor by name (with an
explicit rename table) and refuses to return a model whose weights did not all arrive (gpt-fast's and
nanoGPT's pattern). Positions follow LSG's rule (design §2.2, `lsg.positions.tile_positions`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from lsg.convert import _DROPPED_CONFIG_KEYS, check_source
from lsg.families import FAMILIES, Family
from lsg.positions import tile_positions

Renames = Sequence[tuple[str, str]]

# BertForSequenceClassification computes classifier(tanh(pooler.dense(h0))); Longformer's and BigBird's
# heads compute out_proj(act(dense(h0))) on the same first token: the pooler becomes the head's dense layer.
BERT_CLASSIFIER_TO_HEAD: Renames = [
    ("bert.pooler.dense.", "classifier.dense."),
    ("classifier.", "classifier.out_proj."),
]


def head_rules(family: Family, suffix: str, rules: dict[str, Renames]) -> list[tuple[str, str]]:
    """The rename rules for one source: the family's, preceded by the BERT classifier rules when they apply."""
    classifier = BERT_CLASSIFIER_TO_HEAD if (family.model_type, suffix) == ("bert", "ForSequenceClassification") else []
    return [*classifier, *rules[family.model_type]]


def check_source_model(model: PreTrainedModel, heads: Sequence[str], converter: str, max_length: int) -> tuple[
        Family, str]:
    """(family, head suffix) of a source model `converter` accepts; ValueError naming the supported classes.

    Runs before any weight is read: the class, then (via `lsg.convert.check_source`) the family, decoders and
    `max_length` >= the model's own length.
    """
    supported = [f"{family.name}{suffix}" for family in FAMILIES.values() for suffix in heads if suffix in family.heads]
    family = FAMILIES.get(str(getattr(model.config, "model_type", "")))
    suffix = family.suffix_of(type(model).__name__) if family else None
    if suffix not in heads or type(model) is not family.head_class(suffix):
        raise ValueError(f"{converter} cannot convert {type(model).__name__}; supported source classes: {supported}")
    check_source(model.config, max_length)
    return family, suffix


def config_dict(model: PreTrainedModel, **updates: Any) -> dict[str, Any]:
    """The source config as keyword arguments for a target config class, with `updates` applied."""
    source = {k: v for k, v in model.config.to_dict().items() if k not in _DROPPED_CONFIG_KEYS}
    return {**source, **updates}


def position_rows(table: Tensor, max_length: int, source_offset: int, target_offset: int) -> Tensor:
    """(target_offset + max_length, d) position table: the source's usable rows tiled (design §2.2).

    The rows below the offset are only ever read by padding tokens (RoBERTa/Longformer give every pad the
    position `padding_idx`), whose outputs are discarded: the source's own special rows are kept when it
    has enough of them, else its first row fills them.
    """
    tiled = tile_positions(table, max_length, source_offset)[source_offset:]
    if source_offset >= target_offset:
        special = table[source_offset - target_offset:source_offset]
    else:
        special = table[:1].expand(target_offset, -1)
    return torch.cat([special, tiled], dim=0)  # new storage: never aliases the source model


def renamed(state: Mapping[str, Tensor], rules: Renames) -> dict[str, Tensor]:
    """`state` with each key renamed by the first rule (old prefix, new prefix) matching it; others unchanged."""
    out = {}
    for key, value in state.items():
        for old, new in rules:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def load_exactly(target: PreTrainedModel, state: Mapping[str, Tensor], may_miss: Sequence[str] = ()) -> None:
    """Load `state` into `target`; RuntimeError unless every key is used and every missing key starts with
    one of `may_miss` (weights the target has but no source gives, e.g. an unused pooler)."""
    result = target.load_state_dict(dict(state), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(tuple(may_miss))]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"weight transfer to {type(target).__name__} incomplete: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")


def finish(target: PreTrainedModel, source: PreTrainedModel) -> PreTrainedModel:
    """Put the converted model on the source's device and in its train/eval mode."""
    target.to(source.device)
    target.train(source.training)
    return target
