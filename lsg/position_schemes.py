"""Position schemes for decoders trained from scratch (docs/lex.md): learned absolute, sinusoidal, RoPE, ALiBi, XPOS.

A scheme acts at one of two places, and the other is the identity:

* `embed(hidden, positions)`: absolute schemes add a position vector to the token embeddings;
* `transform(query, key, positions, scaling)`: relative schemes change the per-head queries and keys (B, H, T, D)
  so that the attention score q'.k' depends on the query-key distance. ALiBi is written this way too: its bias
  -slope*(n - m) splits into slope*m, one extra key feature against a constant query feature, and -slope*n, which
  is the same for every key of query n and so leaves the softmax unchanged. Every scheme then runs on every
  attention kernel of `lsg.variants` unchanged (dense, blockwise, LSG), which sees only queries and keys.

`transform` may return queries and keys with more features than the values (ALiBi: one); `align_values` pads the
values with zero features to match, and the caller drops them from the output (`PositionScheme.extra_features`).

Positions are absolute token indices in the whole sequence (`torch.arange(T)` for a plain forward), also beyond
the training length: that is what extrapolation evaluates. `POSITION_SCHEMES` maps each name to its class; every
class is built as `cls(width=..., heads=..., max_length=...)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsg.positions import tile_positions
from lsg.registry import Registry
from lsg.validation import check_int, check_range

XPOS_GAMMA = 0.4  # LEX's gamma: zeta_i = (2i/D + gamma) / (1 + gamma)
XPOS_SCALE_BASE = 512  # LEX's B: the decay exponent is distance / B
ROTARY_BASE = 10000.0


class PositionScheme(nn.Module):
    """Base class: no position information (every method is the identity). Subclasses override one place."""

    extra_features: int = 0  # features `transform` appends to queries and keys (ALiBi: 1)

    def __init__(self, *, width: int, heads: int, max_length: int) -> None:
        """`width` = model width, `heads` = attention heads, `max_length` = training length L (learned rows)."""
        super().__init__()
        check_int("width", width, 1)
        check_int("heads", heads, 1)
        check_int("max_length", max_length, 1)
        if width % heads:
            raise ValueError(f"width={width} must be a multiple of heads={heads}")
        self.width, self.heads, self.max_length = width, heads, max_length

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def embed(self, hidden: Tensor, positions: Tensor) -> Tensor:
        """hidden (B, T, width) at `positions` (T,) -> the input of the first layer."""
        return hidden

    def transform(self, query: Tensor, key: Tensor, positions: Tensor, scaling: float) -> tuple[Tensor, Tensor]:
        """query, key (B, H, T, D) at `positions` (T,); `scaling` multiplies the scores q.k in the kernel."""
        return query, key

    def align_values(self, value: Tensor) -> Tensor:
        """value (B, H, T, D) padded with the `extra_features` zero features that queries and keys gained."""
        return F.pad(value, (0, self.extra_features)) if self.extra_features else value


POSITION_SCHEMES: Registry[type[PositionScheme]] = Registry("position scheme")
POSITION_SCHEMES.register("none")(PositionScheme)


@POSITION_SCHEMES.register("learned")
class LearnedPositions(PositionScheme):
    """Learned absolute positions (GPT-2): hidden[n] + P[n], P a (L, width) table trained with the model, drawn
    from N(0, 1) (nn.Embedding's default).

    Beyond the L trained rows the table is tiled (`lsg.positions.tile_positions`, the rule LSG conversion uses):
    position n reads row n mod L.
    """

    def __init__(self, *, width: int, heads: int, max_length: int) -> None:
        super().__init__(width=width, heads=heads, max_length=max_length)
        self.table = nn.Embedding(max_length, width)

    def embed(self, hidden: Tensor, positions: Tensor) -> Tensor:
        rows = tile_positions(self.table.weight, int(positions.max()) + 1, offset=0)
        return hidden + rows[positions]


def sinusoids(positions: Tensor, width: int) -> Tensor:
    """(T, width) sinusoidal table (Vaswani et al. 2017): PE[n, 2i] = sin(n w_i), PE[n, 2i+1] = cos(n w_i),
    w_i = 10000^(-2i/width); computed in float64, returned in float32."""
    frequencies = ROTARY_BASE ** (-torch.arange(0, width, 2, dtype=torch.float64, device=positions.device) / width)
    angles = positions.to(torch.float64)[:, None] * frequencies
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[:, :width].float()


@POSITION_SCHEMES.register("sinusoidal")
class SinusoidalPositions(PositionScheme):
    """Fixed absolute positions (the original Transformer; LEX's "Absolute" row): hidden[n] + PE[n] (`sinusoids`).
    Defined at every position, but positions past L were never seen in training."""

    def embed(self, hidden: Tensor, positions: Tensor) -> Tensor:
        return hidden + sinusoids(positions, self.width).to(hidden.dtype)


def rotate_pairs(x: Tensor, factors: Tensor) -> Tensor:
    """Multiply the interleaved pairs (x_2i, x_2i+1) of x (..., T, D), read as complex numbers x_2i + i x_2i+1, by
    `factors` (T, D/2) complex: with factors = s e^{i a}, pair i is rotated by a and scaled by s, i.e.
    s (x_2i cos a - x_2i+1 sin a, x_2i sin a + x_2i+1 cos a). One complex product: cheap in time and memory."""
    dtype = torch.promote_types(x.dtype, torch.float32)  # no complex half on every device: compute in float32+
    pairs = torch.view_as_complex(x.to(dtype).unflatten(-1, (-1, 2)).contiguous())
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return torch.view_as_real(pairs * factors.to(complex_dtype)).flatten(-2).to(x.dtype)


def rotary_angles(positions: Tensor, head_dim: int) -> Tensor:
    """(T, D/2) angles n * theta_i with theta_i = 10000^(-2i/D), in float64."""
    theta = ROTARY_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    return positions.to(torch.float64)[:, None] * theta


class _Rotary(PositionScheme):
    def __init__(self, *, width: int, heads: int, max_length: int) -> None:
        super().__init__(width=width, heads=heads, max_length=max_length)
        if self.head_dim % 2:
            raise ValueError(f"{type(self).__name__} rotates pairs of features: width/heads={self.head_dim} "
                             "must be even")


@POSITION_SCHEMES.register("rope")
class RotaryPositions(_Rotary):
    """RoPE (Su et al. 2021): q' = R(n theta) q, k' = R(m theta) k per interleaved pair i (`rotate_pairs`), so
    q'.k' = sum_i Re(q_i conj(k_i) e^{i (n - m) theta_i}) depends on n - m only."""

    def transform(self, query: Tensor, key: Tensor, positions: Tensor, scaling: float) -> tuple[Tensor, Tensor]:
        angles = rotary_angles(positions, self.head_dim)
        rotation = torch.polar(torch.ones_like(angles), angles)
        return rotate_pairs(query, rotation), rotate_pairs(key, rotation)


def xpos_decay(head_dim: int, gamma: float = XPOS_GAMMA) -> Tensor:
    """(D/2,) zeta_i = (2i/D + gamma) / (1 + gamma), in float64: in (0, 1), smallest for the fastest-turning pairs."""
    return (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim + gamma) / (1 + gamma)


@POSITION_SCHEMES.register("xpos")
class XPosPositions(_Rotary):
    """XPOS (Sun et al. 2023, LEX): RoPE whose pair i also decays as zeta_i^(distance / B).

        q' = zeta^(+n/B) * R(n theta) q        k' = zeta^(-m/B) * R(m theta) k
        q'.k' = sum_i zeta_i^((n - m)/B) Re(q_i conj(k_i) e^{i (n - m) theta_i})

    with zeta = `xpos_decay` (gamma 0.4), B = 512: queries are scaled up and keys down, so a key m < n behind the
    query is damped by zeta_i^((n - m)/B) < 1. The exponents use positions centred on the middle of the sequence,
    which cancels in q'.k' and keeps zeta^(+-n/B) representable in half precision.
    """

    def __init__(self, *, width: int, heads: int, max_length: int, gamma: float = XPOS_GAMMA,
                 scale_base: float = XPOS_SCALE_BASE) -> None:
        super().__init__(width=width, heads=heads, max_length=max_length)
        check_range("gamma", gamma, 0.0)
        check_range("scale_base", scale_base, 1e-9)
        # Plain numbers, not buffers: `model.half()` would round the decay of every pair.
        self.gamma, self.scale_base = float(gamma), float(scale_base)

    def transform(self, query: Tensor, key: Tensor, positions: Tensor, scaling: float) -> tuple[Tensor, Tensor]:
        angles = rotary_angles(positions, self.head_dim)
        centre = (int(positions.min()) + int(positions.max())) // 2
        exponent = (positions.to(torch.float64) - centre)[:, None] / self.scale_base
        decay = xpos_decay(self.head_dim, self.gamma).to(positions.device)
        scale = decay ** exponent  # (T, D/2): both features of pair i decay alike
        return rotate_pairs(query, torch.polar(scale, angles)), rotate_pairs(key, torch.polar(1 / scale, angles))


def alibi_slopes(heads: int) -> Tensor:
    """ALiBi's head slopes (Press et al. 2022), float64.

    For a power of two h: 2^(-8/h), 2^(-16/h), ..., 2^(-8). Otherwise, with p the largest power of two below h:
    the p slopes of p heads, then every other slope of 2p heads (the 1st, 3rd, ...) until h slopes.
    """
    check_int("heads", heads, 1)

    def geometric(count: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / count) for i in range(count)]

    power = 2 ** int(math.floor(math.log2(heads)))
    slopes = geometric(power) + geometric(2 * power)[0::2][: heads - power]
    return torch.tensor(slopes, dtype=torch.float64)


@POSITION_SCHEMES.register("alibi")
class ALiBiPositions(PositionScheme):
    """ALiBi (Press et al. 2022): causal scores get -slope_h * (n - m), no position embedding (`alibi_slopes`).

    Written as one extra feature (see the module docstring): q'_n = [q_n, 1], k'_m = [k_m, slope_h (m - c) /
    scaling] with c the middle position, so scaling * q'.k' = scaling * q.k + slope_h (m - c), which differs from
    scaling * q.k - slope_h (n - m) by slope_h (n - c), a constant of query n. Scores then carry a term of size up
    to slope_h * T / 2: float32 keeps the bias exact to ~1e-4 at T = 4096; run it in float32 or wider.
    """

    extra_features = 1

    def transform(self, query: Tensor, key: Tensor, positions: Tensor, scaling: float) -> tuple[Tensor, Tensor]:
        centre = (int(positions.min()) + int(positions.max())) // 2
        slopes = alibi_slopes(self.heads).to(positions.device)
        bias = slopes[:, None] * (positions.to(torch.float64) - centre) / scaling  # (H, T)
        ones = query.new_ones(*query.shape[:-1], 1)
        key_feature = bias[:, :, None].to(key.dtype).expand(*key.shape[:-1], 1)
        return torch.cat([query, ones], dim=-1), torch.cat([key, key_feature], dim=-1)


def position_scheme(name: str, *, width: int, heads: int, max_length: int) -> PositionScheme:
    """The registered scheme `name` for a model of `width`, `heads` heads and training length `max_length`."""
    return POSITION_SCHEMES.get(name)(width=width, heads=heads, max_length=max_length)
