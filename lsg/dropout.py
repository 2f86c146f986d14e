"""Counter-based attention dropout: each (query, key) pair's keep/drop decision is a hash of its coordinates.

The CPU generator (mt19937) draws numbers one after another, about 3 ns each, and a mask drawn from it depends
on the order of the draws, so on how a kernel splits its work. Here the decision for the pair (batch row b, head
h, query position q, key column c) is a pure function of (seed, b, h, q, c), computed for a whole key set at once
in vectorised int64 operations, the way counter-based generators (Philox, SplitMix) work:

    row = mix(seed + ((b * H + h) * 2**40 + q) * GAMMA),     z = mix(row + (c // 4) * GAMMA)

`mix` is SplitMix64's finaliser (two multiply-xorshift rounds): `row` seeds one SplitMix64 stream per query row,
computed on the small (B, H, rows) tensor, and the key columns walk that stream. Each 64-bit z gives the 16-bit
numbers of four consecutive key columns (c % 4 picks one), and the pair is dropped when its number falls below
p·2**16. Two rows' streams overlap only if their 64-bit row values fall within a few hundred steps of each other.

Semantics:

* deterministic given the seed: the backward pass regenerates exactly the forward pass's mask;
* independent of chunking: the coordinates are absolute (query position in the padded layer input, key column in
  the layout of `lsg.attention`), so any split of the queries or keys into chunks gives the same mask;
* p is rounded to a multiple of 2**-16 and kept values are scaled by 1 / (1 - rounded p), so dropout stays
  unbiased (E[output] is the output without dropout); at p = 0.1 the rounded rate is 0.100006;
* one mask per head and batch row, as torch's dropout on the (B, H, L, K) probabilities;
* the lane order within z follows the machine's byte order, so masks are the same on every little-endian machine.

Not bit-identical to torch's dropout (no kernel draws the same numbers), and not a cryptographic hash.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_LEVELS = 1 << 16  # resolution of the drop probability
_ROW_BITS = 40  # query positions per (batch row, head): far beyond any sequence


def _signed(x: int) -> int:
    """A 64-bit constant as torch's int64 holds it."""
    return x - (1 << 64) if x >= 1 << 63 else x


_GAMMA = _signed(0x9E3779B97F4A7C15)  # SplitMix64's increment
_MIX1, _MIX2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)
_LOW_33 = (1 << 33) - 1


def _mix(z: Tensor) -> Tensor:
    """SplitMix64's finaliser, in place, on int64 (multiplication wraps). torch's >> on int64 is arithmetic: the
    two inner shifts therefore fold the sign into the top bits (harmless for mixing), and the last one is masked
    to be logical, so every 16-bit lane of the result is uniform."""
    z ^= z >> 30
    z *= _MIX1
    z ^= z >> 27
    z *= _MIX2
    z ^= (z >> 31) & _LOW_33
    return z


@dataclass(frozen=True)
class CounterDropout:
    """Dropout of attention probabilities with a counter-based mask (module docstring).

    Attributes:
        p: drop probability, in [0, 1).
        seed: any int; the same seed gives the same mask.
    """

    p: float
    seed: int

    def __post_init__(self) -> None:
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {self.p}")

    @property
    def threshold(self) -> int:
        """Dropped 16-bit numbers: those below this (p rounded to a multiple of 2**-16)."""
        return min(round(self.p * _LEVELS), _LEVELS - 1)

    @property
    def scale(self) -> float:
        """1 / keep probability, the factor of the kept values."""
        return _LEVELS / (_LEVELS - self.threshold)

    def keep(self, batch: int, heads: int, rows: Tensor, first_column: int, columns: int,
             dtype: torch.dtype = torch.float32) -> Tensor:
        """The keep mask, 1 for a kept pair and 0 for a dropped one: (batch, heads, *rows.shape, columns) `dtype`.

        Args:
            batch, heads: B and H (every batch row and head gets its own mask).
            rows: absolute query positions, int64 of any shape (e.g. (n, bs): n blocks of bs queries).
            first_column, columns: the key columns [first_column, first_column + columns).
        """
        device = rows.device
        streams = torch.arange(batch * heads, device=device).view(batch, heads, *[1] * rows.dim()) << _ROW_BITS
        row_keys = _mix((streams + rows).mul_(_GAMMA).add_(_signed(self.seed % (1 << 64))))  # (B, H, *rows)
        first_group, last_group = first_column // 4, (first_column + columns + 3) // 4
        steps = torch.arange(first_group, last_group, device=device).mul_(_GAMMA)
        lanes = _mix(row_keys.unsqueeze(-1) + steps).view(torch.int16)  # 4 lanes per int64
        start = first_column - 4 * first_group
        # In floating point, x >= t becomes clamp(x, t - 1, t) - (t - 1): on CPU this is several times faster than
        # a comparison to bool and a masked fill (both exact: the lanes are integers below 2**16). Converted whole
        # and then cut: converting the strided cut is slower still.
        low = self.threshold - _LEVELS // 2 - 1
        keep = lanes.to(torch.float32)[..., start : start + columns].clamp_(low, low + 1).sub_(low)
        return keep.to(dtype)  # fp32 above: half precision does not hold the lanes exactly
