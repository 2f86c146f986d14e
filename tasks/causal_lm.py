"""A small decoder-only language model for experiments, trained from scratch (docs/lex.md).

GPT-style pre-LayerNorm blocks (causal self-attention + 4x GELU MLP), output projection tied to the token
embeddings. What the experiments vary is plugged in from the library by name:

* positions: a scheme of `lsg.position_schemes.POSITION_SCHEMES` ("learned", "sinusoidal", "rope", "alibi", "xpos");
* attention: any variant of `lsg.variants.ATTENTION_VARIANTS` that has a causal form (a `causal` parameter):
  "lsg_causal_dense", "lsg_blockwise_causal", and causal LSG where the kernels provide it. It can be swapped
  after training (`set_attention`), which is how blockwise attention is applied at inference only.

With `global_tokens` = G > 0 (LSG), G learned rows are put in front of the tokens and removed at the output; all
rows take positions 0, 1, ... in order, so the tokens start at position G.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsg.attention import AttentionVariant
from lsg.position_schemes import POSITION_SCHEMES, PositionScheme, position_scheme
from lsg.settings import LSGSettings
from lsg.validation import check_choice, check_int, check_range
from lsg.variants import ATTENTION_VARIANTS


def causal_variant(name: str) -> AttentionVariant:
    """The registered attention `name`, if it has a causal form; else a ValueError listing those that do."""
    variant = ATTENTION_VARIANTS.get(name)
    if "causal" not in inspect.signature(variant).parameters:
        causal = [n for n in ATTENTION_VARIANTS if "causal" in inspect.signature(ATTENTION_VARIANTS.get(n)).parameters]
        raise ValueError(f"attention={name!r} has no causal form (no `causal` parameter); use one of {causal}")
    return variant


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of the decoder. `max_length` is the training length L (the learned position table's rows)."""

    vocab_size: int = 256
    layers: int = 4
    width: int = 128
    heads: int = 4
    max_length: int = 128
    positions: str = "xpos"
    global_tokens: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "layers", "width", "heads", "max_length"):
            check_int(name, getattr(self, name), 1)
        check_int("global_tokens", self.global_tokens, 0)
        check_range("dropout", self.dropout, 0.0, 1.0)
        check_choice("positions", self.positions, POSITION_SCHEMES.names())
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be a multiple of heads={self.heads}")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: DecoderConfig, layer_index: int) -> None:
        super().__init__()
        self.heads, self.layer_index, self.dropout = config.heads, layer_index, config.dropout
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.out = nn.Linear(config.width, config.width)

    def forward(self, x: Tensor, positions: Tensor, scheme: PositionScheme, attention: AttentionVariant,
                settings: LSGSettings, token_valid: Tensor) -> Tensor:
        B, T, W = x.shape
        D = W // self.heads
        query, key, value = self.qkv(x).view(B, T, 3, self.heads, D).permute(2, 0, 3, 1, 4)
        scaling = D ** -0.5
        query, key = scheme.transform(query, key, positions, scaling)
        out = attention(query, key, scheme.align_values(value), token_valid, settings, scaling=scaling,
                        dropout=self.dropout, training=self.training, layer_index=self.layer_index, causal=True)
        return self.out(out[..., :D].transpose(1, 2).reshape(B, T, W))


class Block(nn.Module):
    def __init__(self, config: DecoderConfig, layer_index: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(config.width), nn.LayerNorm(config.width)
        self.attention = CausalSelfAttention(config, layer_index)
        self.mlp = nn.Sequential(nn.Linear(config.width, 4 * config.width), nn.GELU(),
                                 nn.Linear(4 * config.width, config.width), nn.Dropout(config.dropout))

    def forward(self, x: Tensor, *args: object) -> Tensor:
        x = x + self.attention(self.norm1(x), *args)
        return x + self.mlp(self.norm2(x))


class CausalLM(nn.Module):
    """The decoder: token ids (B, T) -> next-token logits (B, T, vocab). See the module docstring."""

    def __init__(self, config: DecoderConfig, attention: str = "lsg_causal_dense",
                 settings: LSGSettings | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.width)
        self.positions = position_scheme(config.positions, width=config.width, heads=config.heads,
                                         max_length=config.max_length)
        self.global_rows = nn.Parameter(torch.randn(config.global_tokens, config.width))
        self.blocks = nn.ModuleList(Block(config, index) for index in range(config.layers))
        self.norm = nn.LayerNorm(config.width)
        self.drop = nn.Dropout(config.dropout)
        # Token embeddings enter at rms ~1 (scaled by sqrt(width), as in the original Transformer), the scale of
        # absolute position vectors: at GPT-2's 0.02 a sinusoidal table (rms 0.7) would drown the tokens. The
        # tied output projection sees the unscaled table (std width^-0.5): logits start at std ~1.
        nn.init.normal_(self.tokens.weight, std=config.width ** -0.5)
        self.set_attention(attention, settings)

    def set_attention(self, name: str, settings: LSGSettings | None = None) -> None:
        """Run attention variant `name` (with its `settings`; LSG defaults when None) from now on."""
        settings = settings or LSGSettings(num_global_tokens=max(1, self.config.global_tokens))
        if self.config.global_tokens and settings.num_global_tokens != self.config.global_tokens:
            raise ValueError(f"settings.num_global_tokens={settings.num_global_tokens} must equal the model's "
                             f"global_tokens={self.config.global_tokens}")
        self.attention, self.attention_name, self.settings = causal_variant(name), name, settings

    def forward(self, ids: Tensor) -> Tensor:
        B, T = ids.shape
        G = self.config.global_tokens
        x = torch.cat([self.global_rows.expand(B, G, -1), self.tokens(ids) * self.config.width ** 0.5], dim=1)
        positions = torch.arange(G + T, device=ids.device)
        x = self.drop(self.positions.embed(x, positions))
        valid = torch.ones(B, T, dtype=torch.bool, device=ids.device)
        for block in self.blocks:
            x = block(x, positions, self.positions, self.attention, self.settings, valid)
        return F.linear(self.norm(x[:, G:]), self.tokens.weight)

    def nll(self, ids: Tensor, targets: Tensor) -> Tensor:
        """Summed next-token negative log-likelihood (nats) of `targets` (B, T) given `ids` (B, T)."""
        logits = self(ids)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
