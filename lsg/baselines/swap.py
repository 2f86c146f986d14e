"""Run a plain (unconverted) BERT/RoBERTa with a Table-1 attention, and extend its positions.

`swap_attention` selects a registered variant through transformers' attention interface (`lsg.hf`): it
stamps `lsg_layer_index` on the self-attention modules, which is what makes `lsg.hf` hand the calls to
the variant instead of SDPA, and calls `set_attn_implementation` with the variant's registered name,
"table1_<name>" (`lsg.variants`). The stamps are not saved: a reloaded model runs SDPA until swapped again.
A MASFormer plan (`lsg.plans`) leaves its "full" layers unstamped (SDPA); it is saved in the config as
`layer_attention`, where the next `swap_attention` on the reloaded model finds it.

A plain model has no global tokens: `lsg.hf` hands the variant every row as a token, with the padding
mask covering all of them, so left and right padding both work.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import fields, is_dataclass, replace
from typing import Any

from transformers import PreTrainedModel

from lsg.baselines import transfer
from lsg.families import FAMILIES, family_of
from lsg.plans import is_full_layer, layer_plan
from lsg.variants import ATTENTION_VARIANTS, TABLE1_PREFIX, register_table1_variants

# The names users pass ("full", "linear", ...); registering them (once) puts them in the interface as "table1_<name>".
TABLE1_ATTENTIONS: tuple[str, ...] = register_table1_variants()


def attention_name(name: str, **params: Any) -> str:
    """Registered name of Table-1 attention `name` with `params`, registering the configured variant once.

    Without params, or with only default values, that is "table1_<name>"; otherwise e.g.
    "table1_performer:num_features=128" (sorted, non-default parameters only).

    Raises:
        ValueError: unknown attention, or a parameter it does not take, or a bad value.
    """
    if name not in TABLE1_ATTENTIONS:
        raise ValueError(f"attention {name!r} is not a Table-1 attention; use one of {list(TABLE1_ATTENTIONS)}")
    registered = TABLE1_PREFIX + name
    variant = ATTENTION_VARIANTS.get(registered)
    accepted = [f.name for f in fields(variant)] if is_dataclass(variant) else []
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"attention {name!r} takes no parameter {unknown}; accepted: {accepted or 'none'}")
    changed = {k: v for k, v in sorted(params.items()) if v != getattr(variant, k)}
    if not changed:
        return registered
    configured = replace(variant, **changed)  # validates the values
    full_name = f"{registered}:" + ",".join(f"{k}={v}" for k, v in changed.items())
    if full_name not in ATTENTION_VARIANTS:
        ATTENTION_VARIANTS.register(full_name)(configured)
    return full_name


def swap_attention(model: PreTrainedModel, name: str, *, layers: Sequence[str] | None = None,
                   full_every: int | None = None, full_layers: Sequence[int] | None = None,
                   **params: Any) -> PreTrainedModel:
    """Make `model` (BERT/RoBERTa family, plain or LSG-converted) use Table-1 attention `name`, in place.

    Args:
        model: the model; its weights are untouched.
        name: one of `TABLE1_ATTENTIONS`.
        layers, full_every, full_layers: a MASFormer plan (`lsg.plans.layer_plan`): its "full" layers keep
            transformers' SDPA. Default: the plan saved in the config (`layer_attention`), else every layer.
        **params: the variant's parameters (e.g. `num_features=128` for "performer"), see
            `lsg.baselines.attentions` and `lsg.baselines.reformer`.

    Returns:
        `model`, now running `attention_name(name, **params)` (its `config._attn_implementation`).
    """
    full_name = attention_name(name, **params)
    family = family_of(model.config)
    modules = family.attention_modules(model.base_model)
    plan = layer_plan(len(modules), layers=layers, full_every=full_every, full_layers=full_layers)
    if plan is None:
        plan = getattr(model.config, "layer_attention", None)
    for index, attention in enumerate(modules):
        if is_full_layer(plan, index):
            attention.__dict__.pop("lsg_layer_index", None)
        elif getattr(attention, "lsg_layer_index", None) is None:
            attention.lsg_layer_index = index
    model.config.layer_attention = plan
    model.set_attn_implementation(full_name)
    return model


def tile_model_positions(model: PreTrainedModel, max_length: int) -> PreTrainedModel:
    """A copy of a plain BERT/RoBERTa model reading `max_length` tokens: positions tiled as in LSG.

    This is the "position embeddings duplicated 8 times" of Table 1 (`max_length=4096` on RoBERTa-base).
    Call it before `swap_attention` (the copy has fresh modules, without the stamps).
    """
    family, _ = transfer.check_source_model(model, tuple(sorted({s for f in FAMILIES.values() for s in f.heads})),
                                            "tile_model_positions", max_length)
    config = copy.deepcopy(model.config)
    config.max_position_embeddings = max_length + family.saved_position_offset
    target = type(model)._from_config(config, dtype=model.dtype)
    state = dict(model.state_dict())
    for key in state:
        if key.endswith("embeddings.position_embeddings.weight"):
            offset = family.position_offset
            state[key] = transfer.position_rows(state[key], max_length, offset, offset)
    transfer.load_exactly(target, state)
    return transfer.finish(target, model)
