"""MASFormer-style per-layer attention plans (design §9): full attention in a few layers, LSG in the rest.

A plan is a list with one entry per attention layer, "full" or "lsg". It is saved in the model's config as
`layer_attention` (None = every layer LSG) and applied when the model is built: only the "lsg" layers are
stamped for LSG (`lsg.hf.install_lsg`, `lsg.baselines.swap_attention`), so the "full" ones run transformers'
SDPA over every key: the globals and the tokens of an LSG encoder, the tokens up to the query in a decoder.

    layer_plan(6, full_every=3)          -> ["full", "lsg", "lsg", "full", "lsg", "lsg"]
    layer_plan(6, full_layers=[5])       -> ["lsg", "lsg", "lsg", "lsg", "lsg", "full"]
    masformer_plan(12, 2)                -> 2 full layers at the bottom (the MASFormer placement)
"""

from __future__ import annotations

from collections.abc import Sequence

from lsg.layout import padded_length, uses_short_rule
from lsg.settings import LSGSettings
from lsg.validation import check_choice, check_int

LAYER_KINDS: tuple[str, ...] = ("lsg", "full")
PLACEMENTS: tuple[str, ...] = ("bottom", "top", "spread")


def layer_plan(
    num_layers: int,
    *,
    layers: Sequence[str] | None = None,
    full_every: int | None = None,
    full_layers: Sequence[int] | None = None,
) -> list[str] | None:
    """The plan given in one of three spellings, validated; None when none is given (every layer LSG).

    Args:
        num_layers: attention layers of the model.
        layers: the plan written out, one of `LAYER_KINDS` per layer.
        full_every: every k-th layer is full, starting with the first (0, k, 2k, ...).
        full_layers: indices of the full layers.

    Raises:
        ValueError: more than one spelling, a wrong length, an unknown kind or an index out of range.
    """
    given = [
        name
        for name, value in (("layers", layers), ("full_every", full_every), ("full_layers", full_layers))
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give the layer plan one way, got {given}; use one of layers=, full_every=, full_layers=")
    check_int("num_layers", num_layers, 1)
    if layers is not None:
        if len(layers) != num_layers:
            raise ValueError(f"layers has {len(layers)} entries, the model has {num_layers} attention layers")
        for kind in layers:
            check_choice("layers entry", kind, LAYER_KINDS)
        return list(layers)
    if full_every is not None:
        check_int("full_every", full_every, 1)
        return ["full" if index % full_every == 0 else "lsg" for index in range(num_layers)]
    if full_layers is not None:
        for index in full_layers:
            check_int("full_layers entry", index, 0, num_layers - 1)
        return ["full" if index in set(full_layers) else "lsg" for index in range(num_layers)]
    return None


def masformer_plan(num_layers: int, num_full: int, placement: str = "bottom") -> list[str]:
    """`num_full` full layers among `num_layers`: at the bottom (MASFormer's choice, per secondary summaries of the
    paper), at the top, or spread evenly (the first layer full)."""
    check_int("num_full", num_full, 0, num_layers)
    check_choice("placement", placement, PLACEMENTS)
    if placement == "bottom":
        full = set(range(num_full))
    elif placement == "top":
        full = set(range(num_layers - num_full, num_layers))
    else:
        full = {index * num_layers // num_full for index in range(num_full)} if num_full else set()
    return ["full" if index in full else "lsg" for index in range(num_layers)]


def is_full_layer(plan: Sequence[str] | None, index: int) -> bool:
    """Whether layer `index` runs full attention under `plan` (None: no layer does)."""
    return plan is not None and plan[index] == "full"


def attention_flops(
    plan: Sequence[str] | None, num_layers: int, tokens: int, settings: LSGSettings, *, heads: int, head_dim: int
) -> float:
    """Attention-core FLOPs of one sequence through every layer (QK^T and PV, a multiply-add counted as 2).

    An LSG layer computes T'·K + G·(G + T') scores (K = G + 2·sbs + 3·bs key slots, design §4; causal kernels mask
    their future slots rather than skip them, so the count is the same); a full layer, and an LSG layer under the
    short rule, (G + T)^2. The projections and MLPs, the same under every plan, are not counted.
    """
    G = settings.num_global_tokens
    if uses_short_rule(tokens, settings):
        lsg_scores = (G + tokens) ** 2
    else:
        padded = padded_length(tokens, settings)
        lsg_scores = padded * settings.keys_per_query() + G * (G + padded)
    full = sum(is_full_layer(plan, index) for index in range(num_layers))
    scores = full * (G + tokens) ** 2 + (num_layers - full) * lsg_scores
    return 4.0 * head_dim * heads * scores
