"""The systems `tools.bench` compares, built with random weights in the shape of RoBERTa-base (no downloads).

Each system is a `System`: a name, a builder returning (model, extra forward kwargs) for a length, and
analytic cost models (attention pairs per head for the FLOP count, and a rough memory bound used to skip
runs that could not fit). Attention dropout is 0 unless `Shape.attention_dropout` sets it (the bench's dropout
column); hidden dropout is always 0.

`floor` is the dense floor: RoBERTa with its attention replaced by a no-op of the same shapes (q + k + v), so a
step is what every system spends outside attention (embeddings, projections, feed-forward, norms, backward of
all of it). A system's step minus the floor is its attention share.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AttentionInterface,
    BigBirdConfig,
    BigBirdModel,
    LongformerConfig,
    LongformerModel,
    RobertaConfig,
    RobertaModel,
)
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import lsg
from lsg.layout import padded_length, uses_short_rule
from lsg.settings import LSGSettings

SELECTORS = ("norm", "pooling", "stride", "block_stride", "lsh", "bos_pooling")


@dataclass(frozen=True)
class Shape:
    """Encoder shape: RoBERTa-base by default (the benchmark's smoke test shrinks it). `attention_dropout` is the
    attention-probability dropout of every system (0 by default: then a step measures the kernels, not the RNG)."""

    layers: int = 2
    hidden: int = 768
    heads: int = 12
    vocab: int = 50265
    attention_dropout: float = 0.0

    def roberta(self, positions: int = 514) -> RobertaConfig:
        return RobertaConfig(
            vocab_size=self.vocab, hidden_size=self.hidden, num_hidden_layers=self.layers,
            num_attention_heads=self.heads, intermediate_size=4 * self.hidden, max_position_embeddings=positions,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=self.attention_dropout, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, type_vocab_size=1,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


Builder = Callable[[Shape, int], tuple[nn.Module, dict[str, Any]]]


@dataclass(frozen=True)
class System:
    """One benchmarked system. `pairs(length)`: (query, key) pairs per head and layer (attention FLOPs);
    `quadratic_bytes(shape, batch, length, device)`: memory that grows faster than linearly (0 if none)."""

    name: str
    build: Builder
    pairs: Callable[[int], float]
    quadratic_bytes: Callable[[Shape, int, int, torch.device], float] = lambda shape, batch, length, device: 0.0


def _full(implementation: str) -> Builder:
    def build(shape: Shape, length: int) -> tuple[nn.Module, dict[str, Any]]:
        # Positions are tiled in a real conversion; with random weights only the table's size matters.
        config = shape.roberta(positions=length + 2)
        config._attn_implementation = implementation
        return RobertaModel(config, add_pooling_layer=False), {}

    return build


def _longformer(window: int) -> Builder:
    def build(shape: Shape, length: int) -> tuple[nn.Module, dict[str, Any]]:
        config = LongformerConfig(**shape.roberta(positions=length + 2).to_dict())
        config.attention_window = window
        return LongformerModel(config, add_pooling_layer=False), {"global_tokens": 1}  # CLS is global

    return build


def _bigbird(shape: Shape, length: int) -> tuple[nn.Module, dict[str, Any]]:
    settings = shape.roberta(positions=length).to_dict()
    config = BigBirdConfig(**{**settings, "attention_type": "block_sparse", "block_size": 64,
                              "num_random_blocks": 3, "sep_token_id": 2})
    return BigBirdModel(config, add_pooling_layer=False), {}


def _lsg(settings: LSGSettings, implementation: str = "lsg") -> Builder:
    def build(shape: Shape, length: int) -> tuple[nn.Module, dict[str, Any]]:
        base = RobertaModel(shape.roberta())  # the converter transfers every weight, the pooler's included
        model = lsg.convert(base, bos_token_id=0, mask_token_id=4, max_length=max(length, 512),
                            **settings.to_dict())
        model.set_attn_implementation(implementation)
        return model, {}

    return build


def lsg_pairs(settings: LSGSettings) -> Callable[[int], float]:
    """(query, key) pairs of LSG per head (design §4): T'·K + G·(G+T'), or dense below 2·bs."""
    G = settings.num_global_tokens

    def pairs(length: int) -> float:
        if uses_short_rule(length, settings):
            return float((G + length) ** 2)
        padded = padded_length(length, settings)
        return float(padded * settings.keys_per_query() + G * (G + padded))

    return pairs


def _eager_bytes(shape: Shape, batch: int, length: int, device: torch.device) -> float:
    # eager keeps scores and probabilities per layer for the backward pass, fp32
    return 2.0 * shape.layers * batch * shape.heads * length**2 * 4


def _sdpa_bytes(shape: Shape, batch: int, length: int, device: torch.device) -> float:
    # with dropout on CPU, SDPA leaves the fused kernels for its math path, which is eager's memory (CUDA's flash and
    # memory-efficient kernels take dropout)
    return _eager_bytes(shape, batch, length, device) if shape.attention_dropout and device.type != "cuda" else 0.0


FLOOR = "floor"
_FLOOR_ATTENTION = "bench_floor"  # its name in transformers' attention tables


def _no_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                  **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The floor's attention: q + k + v (B, H, T, D) returned as transformers' (B, T, H, D), so the q, k and v
    projections stay in the forward and backward passes."""
    return (query + key + value).transpose(1, 2).contiguous(), None


AttentionInterface.register(_FLOOR_ATTENTION, _no_attention)
AttentionMaskInterface.register(_FLOOR_ATTENTION, sdpa_mask)


LSG_NORM = LSGSettings(block_size=128, sparse_block_size=128, sparsity_factor=4, sparsity_type="norm")
LSG_LOCAL = LSGSettings(block_size=256, sparse_block_size=0, sparsity_factor=4, sparsity_type=None)
REFERENCE = "lsg_norm"  # the ratios of the report are system / this


def all_systems() -> dict[str, System]:
    """Every system by name, in the order of the report."""
    systems = [
        System(FLOOR, _full(_FLOOR_ATTENTION), lambda n: 0.0),
        System("full_eager", _full("eager"), lambda n: float(n * n), _eager_bytes),
        System("full_sdpa", _full("sdpa"), lambda n: float(n * n), _sdpa_bytes),
        System("longformer_512", _longformer(512), lambda n: float(n * 513 + 2 * n)),
        System("longformer_256", _longformer(256), lambda n: float(n * 257 + 2 * n)),
        System("bigbird", _bigbird, lambda n: float(n * 8 * 64 + 2 * 64 * n) if n > 11 * 64 else float(n * n)),
    ]
    for selector in SELECTORS:
        settings = LSGSettings(**{**LSG_NORM.to_dict(), "sparsity_type": selector})
        systems.append(System(f"lsg_{selector}", _lsg(settings), lsg_pairs(settings)))
    systems.append(System("lsg_local_256", _lsg(LSG_LOCAL), lsg_pairs(LSG_LOCAL)))
    systems.append(System("lsg_norm_blocked", _lsg(LSG_NORM, "lsg_blocked"), lsg_pairs(LSG_NORM)))
    return {system.name: system for system in systems}


def make_inputs(model: nn.Module, extra: dict[str, Any], batch: int, length: int, device: torch.device,
                ) -> dict[str, torch.Tensor]:
    """Random token ids and an all-ones mask (plus Longformer's global mask on the first token)."""
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (batch, length), device=device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if extra.get("global_tokens"):
        inputs["global_attention_mask"] = torch.zeros_like(ids)
        inputs["global_attention_mask"][:, : extra["global_tokens"]] = 1
    return inputs


def build_system(system: System, shape: Shape, length: int, device: torch.device, dtype: torch.dtype,
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh model of `system` for one length (BigBird's short-input fallback is sticky, so never reuse)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Longformer/BigBird padding notices, once per model
        model, extra = system.build(copy.deepcopy(shape), length)
    return model.to(device=device, dtype=dtype).train(), extra
