"""`lsg.layout` against brute-force key lists, one query at a time, at lengths that are not block multiples.

The brute force spells the rule the way design §3.2 words it (blocks j-1..j+1; the sbs entries of S just before the
ones summarising block j-1 and just after the ones summarising block j+1) with Python lists, and the dense
reference's own visibility (`lsg.reference.reference_visibility`) is checked against the same predicates.
"""

import pytest
import torch

from lsg import layout
from lsg.reference import reference_visibility
from lsg.settings import LSGSettings

# (bs, sbs, f): r = bs/f even, odd, 1 and bs; sbs smaller than, equal to and larger than bs and r; no sparse keys.
SHAPES = [(4, 4, 2), (6, 5, 2), (6, 7, 6), (5, 3, 1), (8, 12, 4), (3, 1, 3), (4, 0, 2)]
LENGTHS = [7, 13, 26, 97, 130]


def settings_for(bs: int, sbs: int, f: int) -> LSGSettings:
    return LSGSettings(block_size=bs, sparse_block_size=sbs, sparsity_factor=f, sparsity_type="stride")


def brute_local_keys(query: int, length: int, bs: int) -> list[int]:
    block = query // bs
    return [t for t in range(length) if t // bs in (block - 1, block, block + 1)]


def brute_sparse_entries(query: int, entries: int, settings: LSGSettings) -> list[int]:
    r, sbs = settings.sparse_per_block, settings.sparse_block_size
    block = query // settings.block_size
    first_of_previous = (block - 1) * r  # S[b*r : (b+1)*r] summarises block b
    after_next = (block + 2) * r
    left = [first_of_previous - 1 - i for i in range(sbs)]
    right = [after_next + i for i in range(sbs)]
    return sorted(s for s in left + right if 0 <= s < entries)


def cases() -> list[tuple[tuple[int, int, int], int]]:
    return [(shape, length) for shape in SHAPES for length in LENGTHS if length > 2 * shape[0]]


@pytest.mark.parametrize(("shape", "length"), cases())
def test_predicates_give_the_brute_force_key_lists(shape, length):
    settings = settings_for(*shape)
    padded = layout.padded_length(length, settings)
    entries = padded // settings.sparsity_factor if settings.sparse_enabled else 0
    keys, sparse = torch.arange(padded), torch.arange(entries)
    for query in range(padded):
        local = layout.sees_local(torch.tensor(query), keys, settings.block_size)
        assert keys[local].tolist() == brute_local_keys(query, padded, settings.block_size), query
        if entries:
            seen = layout.sees_sparse(torch.tensor(query), sparse, settings)
            assert sparse[seen].tolist() == brute_sparse_entries(query, entries, settings), query


@pytest.mark.parametrize(("shape", "length"), cases())
def test_kernel_windows_hold_exactly_the_brute_force_keys(shape, length):
    """`local_windows` over any range of blocks and `sparse_window_index` give each block its keys, no others."""
    settings = settings_for(*shape)
    bs = settings.block_size
    padded = layout.padded_length(length, settings)
    blocks = padded // bs
    tokens = torch.arange(padded)[None, None, :, None]  # (1, 1, T', 1): each key is its own index
    for start, stop in [(0, blocks), (0, 1), (blocks - 1, blocks), (1, blocks - 1), (blocks // 2, blocks // 2 + 1)]:
        windows = layout.local_windows(tokens, bs, start, stop, fill=-1)  # (1, 1, n, 3bs, 1)
        assert windows.shape == (1, 1, stop - start, 3 * bs, 1)
        for j in range(start, stop):
            seen = [t for t in windows[0, 0, j - start, :, 0].tolist() if t >= 0]
            assert seen == brute_local_keys(j * bs, padded, bs), (start, stop, j)
    if not settings.sparse_enabled:
        return
    entries = padded // settings.sparsity_factor
    margin = layout.sparse_margin(settings)
    index = layout.sparse_window_index(blocks, settings)  # (N, 2*sbs) into S padded by the margin
    assert index.min() >= 0 and index.max() < entries + 2 * margin
    for j in range(blocks):
        seen = [s - margin for s in index[j].tolist() if 0 <= s - margin < entries]
        assert seen == brute_sparse_entries(j * bs, entries, settings), j


@pytest.mark.parametrize(("shape", "length"), cases())
def test_dense_reference_draws_the_same_layout(shape, length):
    """The reference writes the rule out on its own; both must agree on every (query, key) pair."""
    settings = settings_for(*shape)
    G, padded = settings.num_global_tokens, layout.padded_length(length, settings)
    dense, sparse = reference_visibility(padded, settings)
    queries, keys, entries = torch.arange(padded)[:, None], torch.arange(padded)[None], torch.arange(sparse.shape[1])
    torch.testing.assert_close(dense[G:, G:], layout.sees_local(queries, keys, settings.block_size))
    if settings.sparse_enabled:
        torch.testing.assert_close(sparse[G:], layout.sees_sparse(queries, entries[None], settings))


def test_local_windows_are_views_away_from_the_ends():
    """The fast kernel relies on it: no copy of the keys for a chunk inside the sequence."""
    tokens = torch.randn(2, 3, 64, 8)
    inner = layout.local_windows(tokens, 8, 2, 5)
    assert inner.untyped_storage().data_ptr() == tokens.untyped_storage().data_ptr()
    assert layout.local_windows(tokens, 8, 0, 2).untyped_storage().data_ptr() != tokens.untyped_storage().data_ptr()


@pytest.mark.parametrize(("length", "expected"), [(1, 1), (16, 16), (17, 24), (24, 24), (97, 104)])
def test_short_rule_and_padding(length, expected):
    settings = LSGSettings(block_size=8, sparse_block_size=8, sparsity_factor=2)
    assert layout.uses_short_rule(length, settings) == (length <= 16)
    assert layout.padded_length(length, settings) == expected


def test_padding_refused_when_not_adaptive():
    settings = LSGSettings(block_size=8, sparse_block_size=8, sparsity_factor=2, adaptive=False)
    assert layout.padded_length(24, settings) == 24
    with pytest.raises(ValueError, match="sequence length 17 is not a multiple of block_size=8 and adaptive=False"):
        layout.padded_length(17, settings)
