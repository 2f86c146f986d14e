"""Position-table extension and global-token initialisation (design §2.2, §2.3).

`tile_positions` implements the corrected tiling rule (defect D1): the usable rows are repeated
ceil(L/n) times and cut to L, after the `offset` special rows, so the table always has L + offset rows.
`global_positions` picks which original position each global token borrows, from the original period
only (D9), deterministic for tables shorter than 512 (D10).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lsg.validation import check_int


def tile_positions(table: Tensor, max_length: int, offset: int) -> Tensor:
    """Extend a learned position table to `max_length` usable rows.

    Args:
        table: (offset + n, d) original table; rows [0, offset) are special (RoBERTa: 2).
        max_length: L, the new number of usable positions.
        offset: number of special rows kept unchanged in front.

    Returns:
        (offset + L, d) table with new[offset + k] = table[offset + (k mod n)].
    """
    usable = table.shape[0] - offset
    if usable <= 0:
        raise ValueError(f"position table has {table.shape[0]} rows, not more than its offset {offset}")
    index = torch.arange(max_length, device=table.device) % usable + offset
    return torch.cat([table[:offset], table[index]], dim=0)


def global_positions(count: int, usable: int, stride: int) -> list[int]:
    """Original position row (relative to the offset) given to each of `count` global tokens.

    With phi = max(1, usable // 512) and m = 512 * phi usable rows (all of them when usable < 512),
    groups gamma = ceil(m / stride); global g takes (stride * (g mod gamma) + phi * (g // gamma)) mod m.
    For BERT/RoBERTa (512 rows, stride 64): 0, 64, ..., 448, 1, 65, ...; for BART (1024): 0, 64, ..., 960, 2, ...
    """
    check_int("global_positional_stride", stride, 1)
    phi = max(1, usable // 512)
    span = usable if usable < 512 else 512 * phi
    groups = -(-span // stride)
    return [(stride * (g % groups) + phi * (g // groups)) % span for g in range(count)]


def sample_like_embeddings(words: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """`count` vectors from a normal with the mean and full covariance of the word-embedding matrix."""
    x = words.detach().double()
    mean = x.mean(0)
    centered = x - mean
    covariance = centered.T @ centered / max(1, x.shape[0] - 1)
    jitter = 1e-6 * covariance.diagonal().mean().clamp_min(1e-12)
    factor = torch.linalg.cholesky(covariance + jitter * torch.eye(x.shape[1], dtype=x.dtype))
    noise = torch.randn(count, x.shape[1], generator=generator, dtype=x.dtype)
    return (mean + noise @ factor.T).to(words.dtype)


def initial_global_table(
    *, positions: Tensor | None, words: Tensor, rows: int, first_token_id: int, mask_token_id: int, stride: int,
    token_type_row: Tensor | None = None, random_init: bool = False, seed: int = 123,
) -> Tensor:
    """Global-embedding table (rows, d) as the authors' converter builds it (design §2.3).

    Row g = P[pos(g)] + W[first_token_id if g == 0 else mask_token_id] (+ token_type_row), where P are
    the usable original position rows (no position term when `positions` is None: rotary models). With
    `random_init`, rows >= 1 use a random "word" vector drawn
    from the word embeddings' distribution (seeded by `seed`, D8) instead of the mask embedding.
    """
    if random_init:
        word_part = sample_like_embeddings(words, rows, torch.Generator().manual_seed(seed))
    else:
        word_part = words[mask_token_id].expand(rows, -1).clone()
    word_part[0] = words[first_token_id]
    table = word_part
    if positions is not None:
        table = table + positions[global_positions(rows, positions.shape[0], stride)]
    if token_type_row is not None:
        table = table + token_type_row
    return table
